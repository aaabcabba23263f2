//! Irrigation entered through the API, for blocks whose water is not metered, and the hourly
//! rollups a block's daily indices are made from.

use std::collections::HashMap;

use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, params, params_from_iter};
use serde::Serialize;

use super::StoreError;
use crate::aggregate::indices::{Day, Hour, KINDS};
use crate::model::{Ident, Kind, TimestampMs};

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
}

pub fn add(
    conn: &Connection,
    orchard: &Ident,
    block: &Ident,
    day: Day,
    mm: f64,
    note: Option<&str>,
) -> Result<Entry, StoreError> {
    let now = TimestampMs::now();
    conn.execute(
        "INSERT INTO irrigation_entries (orchard, block, day, mm, note, entered_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![orchard.as_str(), block.as_str(), day.0, mm, note, now.0],
    )?;
    Ok(Entry {
        id: conn.last_insert_rowid(),
        orchard: orchard.to_string(),
        block: block.to_string(),
        date: day.date().to_string(),
        mm,
        note: note.map(str::to_owned),
        entered_at: now.to_rfc3339(),
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
        "SELECT id, orchard, block, day, mm, note, entered_at FROM irrigation_entries \
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

/// The hourly rollups of the kinds the indices use, for one block, windows in `[from, to)` ms.
pub fn block_hours(
    conn: &Connection,
    orchard: &Ident,
    block: &Ident,
    from_ms: i64,
    to_ms: i64,
) -> Result<Vec<Hour>, StoreError> {
    let kinds: Vec<String> = KINDS.iter().map(|k| format!("'{}'", k.name())).collect();
    let sql = format!(
        "SELECT s.device, s.depth_cm, s.kind, r.start, r.count, r.min, r.max, r.sum \
         FROM series s JOIN rollups r ON r.series = s.id AND r.period = '1h' \
         AND r.start >= ? AND r.start < ? \
         WHERE s.orchard = ? AND s.block = ? AND s.kind IN ({})",
        kinds.join(", ")
    );
    let args = [
        SqlValue::Integer(from_ms),
        SqlValue::Integer(to_ms),
        SqlValue::Text(orchard.to_string()),
        SqlValue::Text(block.to_string()),
    ];
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt
        .query_map(params_from_iter(args), |r| {
            let device: String = r.get(0)?;
            let depth: Option<i64> = r.get(1)?;
            let kind: String = r.get(2)?;
            Ok((
                device,
                depth,
                kind,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
                r.get(7)?,
            ))
        })?
        .filter_map(|row| {
            let (device, depth, kind, start_ms, count, min, max, sum) = match row {
                Ok(row) => row,
                Err(e) => return Some(Err(e)),
            };
            let kind: Kind = kind.parse().ok()?;
            // A probe at several depths is several devices as far as averaging goes.
            let device = match depth {
                Some(d) => format!("{device}@{d}cm"),
                None => device,
            };
            Some(Ok(Hour {
                device,
                kind,
                start_ms,
                count,
                min,
                max,
                sum,
            }))
        })
        .collect::<Result<_, _>>()?;
    Ok(rows)
}
