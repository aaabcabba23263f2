//! Lots in the embedded store: one row per lot, kept as it arrived with its grade, and the
//! lot's later steps (packed, shipped) appended as events, never overwriting it.

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use super::grade::Graded;
use super::lot::Lot;
use crate::aggregate::indices::Day;
use crate::model::TimestampMs;
use crate::store::StoreError;

/// How a lot reached the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Arrived {
    /// `mqtt` or `http`.
    pub via: &'static str,
    /// The MQTT topic, or who entered it through the API.
    pub from: String,
    pub at: TimestampMs,
}

/// What storing a lot did.
#[derive(Debug, Clone, PartialEq)]
pub enum Stored {
    New,
    /// The same lot was already stored: a redelivery or a repeated POST.
    Same,
    /// A different lot is stored under this id; nothing changed.
    Conflict(Box<Lot>),
}

/// A lot as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Kept {
    #[serde(flatten)]
    pub lot: Lot,
    pub grading: Graded,
    pub received: Arrived,
    pub events: Vec<Event>,
}

/// A later step of a lot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    /// `packed`, `shipped`, `delivered`, `sold`, `recalled` or `note`.
    pub step: String,
    /// When it happened, RFC 3339; by default when it was entered.
    #[serde(default)]
    pub at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boxes: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    pub id: i64,
    #[serde(flatten)]
    pub step: Step,
    pub entered_by: String,
    pub entered_at: String,
}

/// The lot's content as compared for sameness: its canonical JSON.
fn content(lot: &Lot) -> String {
    serde_json::to_string(lot).expect("a lot serialises")
}

pub fn insert(
    conn: &Connection,
    lot: &Lot,
    graded: &Graded,
    arrived: &Arrived,
) -> Result<Stored, StoreError> {
    let text = content(lot);
    if let Some(stored) = conn
        .prepare_cached("SELECT content FROM lots WHERE lot_id = ?1")?
        .query_row([&lot.lot_id], |r| r.get::<_, String>(0))
        .optional()?
    {
        if stored == text {
            return Ok(Stored::Same);
        }
        let old: Lot = serde_json::from_str(&stored).map_err(corrupt)?;
        return Ok(Stored::Conflict(Box::new(old)));
    }
    let harvest = harvest_day(lot);
    conn.prepare_cached(
        "INSERT INTO lots (lot_id, orchard, block, harvest_day, gtin, grade, content, graded, \
         via, arrived_from, received_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )?
    .execute(params![
        lot.lot_id,
        lot.orchard.as_str(),
        lot.block.as_str(),
        harvest.0,
        lot.gtin,
        graded.grade,
        text,
        serde_json::to_string(graded).expect("a grade serialises"),
        arrived.via,
        arrived.from,
        arrived.at.0,
    ])?;
    Ok(Stored::New)
}

pub fn harvest_day(lot: &Lot) -> Day {
    let d = time::Date::parse(
        &lot.harvest_date,
        &time::format_description::well_known::Iso8601::DATE,
    )
    .expect("a checked lot's harvest date parses");
    Day::from_date(d)
}

fn corrupt(e: serde_json::Error) -> StoreError {
    StoreError::Sqlite(rusqlite::Error::FromSqlConversionFailure(
        0,
        rusqlite::types::Type::Text,
        Box::new(e),
    ))
}

const COLUMNS: &str = "content, graded, via, arrived_from, received_at, lot_id";

fn kept_of(
    r: &rusqlite::Row<'_>,
) -> rusqlite::Result<(String, String, String, String, i64, String)> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
    ))
}

fn kept(
    conn: &Connection,
    row: (String, String, String, String, i64, String),
) -> Result<Kept, StoreError> {
    let (content, graded, via, from, at, lot_id) = row;
    Ok(Kept {
        lot: serde_json::from_str(&content).map_err(corrupt)?,
        grading: serde_json::from_str(&graded).map_err(corrupt)?,
        received: Arrived {
            via: if via == "mqtt" { "mqtt" } else { "http" },
            from,
            at: TimestampMs(at),
        },
        events: events(conn, &lot_id)?,
    })
}

pub fn get(conn: &Connection, lot_id: &str) -> Result<Option<Kept>, StoreError> {
    let row = conn
        .prepare_cached(&format!("SELECT {COLUMNS} FROM lots WHERE lot_id = ?1"))?
        .query_row([lot_id], kept_of)
        .optional()?;
    row.map(|row| kept(conn, row)).transpose()
}

/// Which lots to list.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub orchard: Option<String>,
    pub block: Option<String>,
    /// Harvest days `[from, to)`.
    pub from: Option<Day>,
    pub to: Option<Day>,
    pub grade: Option<String>,
    pub limit: usize,
}

/// Lots by harvest date, newest first.
pub fn list(conn: &Connection, f: &Filter) -> Result<Vec<Kept>, StoreError> {
    crate::store::readings::collect(|each| list_each(conn, f, each))
}

/// [`list`], handing each lot to `each` as it is read.
pub fn list_each(
    conn: &Connection,
    f: &Filter,
    each: crate::store::readings::Each<Kept>,
) -> Result<(), StoreError> {
    let mut sql = format!("SELECT {COLUMNS} FROM lots WHERE 1");
    let mut args: Vec<rusqlite::types::Value> = Vec::new();
    let mut arg = |sql: &mut String, clause: &str, v: rusqlite::types::Value| {
        args.push(v);
        sql.push_str(&format!(" AND {clause} ?{}", args.len()));
    };
    if let Some(o) = &f.orchard {
        arg(&mut sql, "orchard =", o.clone().into());
    }
    if let Some(b) = &f.block {
        arg(&mut sql, "block =", b.clone().into());
    }
    if let Some(d) = f.from {
        arg(&mut sql, "harvest_day >=", d.0.into());
    }
    if let Some(d) = f.to {
        arg(&mut sql, "harvest_day <", d.0.into());
    }
    if let Some(g) = &f.grade {
        arg(&mut sql, "grade =", g.clone().into());
    }
    sql.push_str(&format!(
        " ORDER BY harvest_day DESC, lot_id LIMIT {}",
        f.limit
    ));
    let mut stmt = conn.prepare(&sql)?;
    let mut rows = stmt.query(rusqlite::params_from_iter(args))?;
    while let Some(row) = rows.next()? {
        each(kept(conn, kept_of(row)?)?)?;
    }
    Ok(())
}

/// What appending a step did.
#[derive(Debug, Clone, PartialEq)]
pub enum Appended {
    New(Event),
    /// The same step was already appended: a repeated POST.
    Same(Event),
    NoSuchLot,
}

pub fn append(
    conn: &mut Connection,
    lot_id: &str,
    step: &Step,
    by: &str,
) -> Result<Appended, StoreError> {
    let tx = conn.transaction()?;
    let known: bool = tx
        .query_row("SELECT 1 FROM lots WHERE lot_id = ?1", [lot_id], |_| {
            Ok(true)
        })
        .optional()?
        .unwrap_or(false);
    if !known {
        return Ok(Appended::NoSuchLot);
    }
    let detail = serde_json::to_string(step).expect("a step serialises");
    let same = events(&tx, lot_id)?
        .into_iter()
        .find(|e| serde_json::to_string(&e.step).ok().as_deref() == Some(detail.as_str()));
    if let Some(e) = same {
        return Ok(Appended::Same(e));
    }
    let now = TimestampMs::now();
    tx.execute(
        "INSERT INTO lot_events (lot_id, step, detail, entered_by, entered_at) \
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![lot_id, step.step, detail, by, now.0],
    )?;
    let id = tx.last_insert_rowid();
    tx.commit()?;
    Ok(Appended::New(Event {
        id,
        step: step.clone(),
        entered_by: by.to_owned(),
        entered_at: now.to_rfc3339(),
    }))
}

fn events(conn: &Connection, lot_id: &str) -> Result<Vec<Event>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, detail, entered_by, entered_at FROM lot_events WHERE lot_id = ?1 ORDER BY id",
    )?;
    let rows: Vec<(i64, String, String, i64)> = stmt
        .query_map([lot_id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?
        .collect::<Result<_, _>>()?;
    rows.into_iter()
        .map(|(id, detail, by, at)| {
            Ok(Event {
                id,
                step: serde_json::from_str(&detail).map_err(corrupt)?,
                entered_by: by,
                entered_at: TimestampMs(at).to_rfc3339(),
            })
        })
        .collect()
}
