//! Reading the quarantine back: what was rejected, why, and the payload as it arrived.

use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, params_from_iter};

use super::StoreError;
use crate::model::TimestampMs;
use crate::validate::Reason;

#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub reason: Option<Reason>,
    pub from: Option<TimestampMs>,
    pub to: Option<TimestampMs>,
    pub limit: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub id: i64,
    pub received_at: TimestampMs,
    pub topic: String,
    pub reason: String,
    pub detail: String,
    pub payload: Vec<u8>,
    pub truncated: bool,
}

/// Newest first.
pub fn list(conn: &Connection, f: &Filter) -> Result<Vec<Entry>, StoreError> {
    super::readings::collect(|each| list_each(conn, f, each))
}

/// [`list`], handing each entry to `each` as it is read.
pub fn list_each(
    conn: &Connection,
    f: &Filter,
    each: super::readings::Each<Entry>,
) -> Result<(), StoreError> {
    let mut clauses = vec!["1"];
    let mut params = Vec::new();
    if let Some(r) = f.reason {
        clauses.push("q.reason = ?");
        params.push(SqlValue::Text(r.as_str().into()));
    }
    if let Some(t) = f.from {
        clauses.push("q.received_at >= ?");
        params.push(SqlValue::Integer(t.0));
    }
    if let Some(t) = f.to {
        clauses.push("q.received_at < ?");
        params.push(SqlValue::Integer(t.0));
    }
    params.push(SqlValue::Integer(f.limit as i64));
    let sql = format!(
        "SELECT q.id, q.received_at, q.topic, q.reason, q.detail, p.payload, p.truncated \
         FROM quarantine q JOIN quarantine_payloads p ON p.id = q.payload_id \
         WHERE {} ORDER BY q.id DESC LIMIT ?",
        clauses.join(" AND ")
    );
    let mut stmt = conn.prepare(&sql)?;
    let mut rows = stmt.query(params_from_iter(params))?;
    while let Some(r) = rows.next()? {
        each(Entry {
            id: r.get(0)?,
            received_at: TimestampMs(r.get(1)?),
            topic: r.get(2)?,
            reason: r.get(3)?,
            detail: r.get(4)?,
            payload: r.get(5)?,
            truncated: r.get(6)?,
        })?;
    }
    Ok(())
}
