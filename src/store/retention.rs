//! Raw-data retention: deletes readings older than `store.raw_retention`, but never one the
//! InfluxDB forwarder has not delivered yet.

use rusqlite::{Connection, params};

use super::{StoreError, outbox};
use crate::model::TimestampMs;

/// Deletes readings before `cutoff` (or before the oldest unforwarded reading, if earlier),
/// one series at a time so each delete walks the primary key. Returns how many went.
pub fn apply(conn: &mut Connection, cutoff: TimestampMs) -> Result<u64, StoreError> {
    let keep_from = match outbox::oldest_pending_ts(conn)? {
        Some(pending) => cutoff.0.min(pending),
        None => cutoff.0,
    };
    let series: Vec<i64> = {
        let mut stmt = conn.prepare("SELECT id FROM series")?;
        stmt.query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?
    };
    let mut deleted = 0u64;
    for id in series {
        let tx = conn.transaction()?;
        deleted += tx.execute(
            "DELETE FROM readings WHERE series = ?1 AND ts < ?2",
            params![id, keep_from],
        )? as u64;
        tx.commit()?;
    }
    Ok(deleted)
}
