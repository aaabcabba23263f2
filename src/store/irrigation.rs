//! Irrigation entered through the API, for blocks whose water is not metered.

use std::collections::HashMap;

use rusqlite::{Connection, params};
use serde::Serialize;

use super::StoreError;
use crate::aggregate::indices::Day;
use crate::model::{Ident, TimestampMs};

/// One entry as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Entry {
    pub id: i64,
    pub orchard: String,
    pub block: String,
    /// The local date the water was applied, `YYYY-MM-DD`.
    pub date: String,
    pub mm: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    pub entered_at: String,
    /// Who entered it; absent for entries from before orchardd recorded it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entered_by: Option<String>,
}

pub fn add(
    conn: &Connection,
    orchard: &Ident,
    block: &Ident,
    day: Day,
    mm: f64,
    note: Option<&str>,
    by: &str,
) -> Result<Entry, StoreError> {
    let now = TimestampMs::now();
    conn.execute(
        "INSERT INTO irrigation_entries (orchard, block, day, mm, note, entered_at, entered_by) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![orchard.as_str(), block.as_str(), day.0, mm, note, now.0, by],
    )?;
    Ok(Entry {
        id: conn.last_insert_rowid(),
        orchard: orchard.to_string(),
        block: block.to_string(),
        date: day.date().to_string(),
        mm,
        note: note.map(str::to_owned),
        entered_at: now.to_rfc3339(),
        entered_by: Some(by.to_owned()),
    })
}

/// Entries of one block for the days in `[from, to)`, oldest first.
pub fn list(
    conn: &Connection,
    orchard: &Ident,
    block: &Ident,
    from: Day,
    to: Day,
) -> Result<Vec<Entry>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT id, orchard, block, day, mm, note, entered_at, entered_by FROM irrigation_entries \
         WHERE orchard = ?1 AND block = ?2 AND day >= ?3 AND day < ?4 ORDER BY day, id",
    )?;
    let rows = stmt
        .query_map(
            params![orchard.as_str(), block.as_str(), from.0, to.0],
            |r| {
                Ok(Entry {
                    id: r.get(0)?,
                    orchard: r.get(1)?,
                    block: r.get(2)?,
                    date: Day(r.get(3)?).date().to_string(),
                    mm: r.get(4)?,
                    note: r.get(5)?,
                    entered_at: TimestampMs(r.get(6)?).to_rfc3339(),
                    entered_by: r.get(7)?,
                })
            },
        )?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}

/// Entered irrigation per day, mm.
pub fn per_day(
    conn: &Connection,
    orchard: &Ident,
    block: &Ident,
    from: Day,
    to: Day,
) -> Result<HashMap<Day, f64>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT day, sum(mm) FROM irrigation_entries \
         WHERE orchard = ?1 AND block = ?2 AND day >= ?3 AND day < ?4 GROUP BY day",
    )?;
    let rows = stmt
        .query_map(
            params![orchard.as_str(), block.as_str(), from.0, to.0],
            |r| Ok((Day(r.get(0)?), r.get(1)?)),
        )?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}
