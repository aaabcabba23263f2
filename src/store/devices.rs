//! The device registry's table, and the devices staff have yet to assign.

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use super::StoreError;
use crate::model::{Ident, TimestampMs};
use crate::registry::DeviceEntry;

/// Who last wrote an entry: the devices file at start-up, or someone through the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdatedBy<'a> {
    File,
    /// The API, for this actor (a token's name).
    Api(&'a str),
}

impl UpdatedBy<'_> {
    fn as_str(&self) -> &str {
        match self {
            UpdatedBy::File => "file",
            UpdatedBy::Api(who) => who,
        }
    }
}

pub fn upsert(conn: &Connection, e: &DeviceEntry, by: UpdatedBy<'_>) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO devices (id, orchard, block, position, depths_cm, installed, expected_interval_ms, updated_at, updated_by) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) \
         ON CONFLICT (id) DO UPDATE SET orchard = ?2, block = ?3, position = ?4, depths_cm = ?5, \
         installed = ?6, expected_interval_ms = ?7, updated_at = ?8, updated_by = ?9",
        params![
            e.id.as_str(),
            e.orchard.as_str(),
            e.block.as_str(),
            e.position,
            serde_json::to_string(&e.depths_cm).expect("a list of numbers serializes"),
            e.installed,
            e.expected_interval.map(|d| d.as_millis() as i64),
            TimestampMs::now().0,
            by.as_str(),
        ],
    )?;
    Ok(())
}

/// The entry as the store has it, and who wrote it last.
pub fn get(conn: &Connection, id: &str) -> Result<Option<(DeviceEntry, String)>, StoreError> {
    Ok(conn
        .query_row(&select("WHERE id = ?1"), [id], row_to_entry)
        .optional()?)
}

pub fn all(conn: &Connection) -> Result<Vec<DeviceEntry>, StoreError> {
    let mut stmt = conn.prepare(&select("ORDER BY orchard, block, id"))?;
    let rows = stmt
        .query_map([], row_to_entry)?
        .map(|r| r.map(|(e, _)| e))
        .collect::<Result<_, _>>()?;
    Ok(rows)
}

fn select(rest: &str) -> String {
    format!(
        "SELECT id, orchard, block, position, depths_cm, installed, expected_interval_ms, updated_by FROM devices {rest}"
    )
}

fn row_to_entry(r: &rusqlite::Row<'_>) -> rusqlite::Result<(DeviceEntry, String)> {
    let ident = |i: usize| -> rusqlite::Result<Ident> {
        let s: String = r.get(i)?;
        Ident::parse(&s).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e))
        })
    };
    let depths: String = r.get(4)?;
    let interval: Option<i64> = r.get(6)?;
    Ok((
        DeviceEntry {
            id: ident(0)?,
            orchard: ident(1)?,
            block: ident(2)?,
            position: r.get(3)?,
            depths_cm: serde_json::from_str(&depths).unwrap_or_default(),
            installed: r.get(5)?,
            expected_interval: interval.map(|ms| std::time::Duration::from_millis(ms as u64)),
        },
        r.get(7)?,
    ))
}

/// The newest reading's time of every device that has readings.
pub fn last_seen(
    conn: &Connection,
) -> Result<std::collections::HashMap<String, TimestampMs>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT lower(s.device), max((SELECT max(ts) FROM readings WHERE series = s.id)) \
         FROM series s GROUP BY lower(s.device)",
    )?;
    let rows = stmt
        .query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, Option<i64>>(1)?))
        })?
        .filter_map(|r| match r {
            Ok((device, Some(ts))) => Some(Ok((device, TimestampMs(ts)))),
            Ok((_, None)) => None,
            Err(e) => Some(Err(e)),
        })
        .collect::<Result<_, _>>()?;
    Ok(rows)
}

/// A device that sent messages but is in no registry entry.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Unassigned {
    pub id: String,
    pub source: Option<String>,
    pub messages: i64,
    pub first_seen: String,
    pub last_seen: String,
    pub last_topic: String,
    pub last_payload: String,
}

/// Devices with quarantined `unknown_device` messages not yet replayed, newest first.
pub fn unassigned(conn: &Connection) -> Result<Vec<Unassigned>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT q.device, q.source, count(DISTINCT q.payload_id), min(q.received_at), max(q.received_at), \
                (SELECT q2.topic FROM quarantine q2 WHERE q2.device = q.device AND q2.reason = 'unknown_device' ORDER BY q2.id DESC LIMIT 1), \
                (SELECT p.payload FROM quarantine q3 JOIN quarantine_payloads p ON p.id = q3.payload_id \
                  WHERE q3.device = q.device AND q3.reason = 'unknown_device' ORDER BY q3.id DESC LIMIT 1) \
         FROM quarantine q \
         WHERE q.reason = 'unknown_device' AND q.replayed_at IS NULL AND q.device IS NOT NULL \
           AND q.device NOT IN (SELECT id FROM devices) \
         GROUP BY q.device ORDER BY max(q.received_at) DESC",
    )?;
    let rows = stmt
        .query_map([], |r| {
            let payload: Vec<u8> = r.get(6)?;
            Ok(Unassigned {
                id: r.get(0)?,
                source: r.get(1)?,
                messages: r.get(2)?,
                first_seen: TimestampMs(r.get(3)?).to_rfc3339(),
                last_seen: TimestampMs(r.get(4)?).to_rfc3339(),
                last_topic: r.get(5)?,
                last_payload: String::from_utf8_lossy(&payload).into_owned(),
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}
