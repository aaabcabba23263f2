//! The forwarder's outbox: every reading committed while forwarding is on gets a row here, in
//! the same transaction, numbered in commit order. A row leaves only when InfluxDB has accepted
//! its batch (or refused it as bad data, which sets the batch aside in `forward_dead_letters`),
//! so the outbox is the persisted cursor: an outage or a restart leaves a backlog, never a gap.

use rusqlite::{Connection, params};

use super::StoreError;
use crate::model::TimestampMs;
use crate::store::readings::Row;

/// The one forwarding target so far.
pub const TARGET: &str = "influx";

/// The next `limit` rows after `after`, with everything a line of line protocol needs.
pub fn next(conn: &Connection, after: i64, limit: usize) -> Result<Vec<(i64, Row)>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT o.seq, s.orchard, s.block, s.device, s.kind, s.depth_cm, o.ts, r.value \
         FROM outbox o JOIN series s ON s.id = o.series \
         JOIN readings r ON r.series = o.series AND r.ts = o.ts \
         WHERE o.seq > ?1 ORDER BY o.seq LIMIT ?2",
    )?;
    let rows = stmt
        .query_map(params![after, limit as i64], |r| {
            Ok((
                r.get(0)?,
                Row {
                    orchard: r.get(1)?,
                    block: r.get(2)?,
                    device: r.get(3)?,
                    kind: r.get(4)?,
                    depth_cm: r.get(5)?,
                    ts: TimestampMs(r.get(6)?),
                    value: r.get(7)?,
                    flags: Default::default(),
                },
            ))
        })?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}

/// How many rows wait, and when the oldest of them was committed.
pub fn backlog(conn: &Connection) -> Result<(u64, Option<TimestampMs>), StoreError> {
    // Rows leave from the front only, so the sequence span is the count, without a scan.
    Ok(conn.query_row(
        "SELECT ifnull(max(seq) - min(seq) + 1, 0), \
                (SELECT committed_at FROM outbox ORDER BY seq LIMIT 1) FROM outbox",
        [],
        |r| {
            Ok((
                r.get::<_, i64>(0)? as u64,
                r.get::<_, Option<i64>>(1)?.map(TimestampMs),
            ))
        },
    )?)
}

/// InfluxDB accepted everything up to `seq`: drop it from the outbox and record progress.
pub fn accepted(conn: &mut Connection, seq: i64, points: u64) -> Result<(), StoreError> {
    let tx = conn.transaction()?;
    tx.execute("DELETE FROM outbox WHERE seq <= ?1", [seq])?;
    record_progress(&tx, seq, points)?;
    tx.commit()?;
    Ok(())
}

/// InfluxDB refused the batch up to `seq` as bad data: keep it, with InfluxDB's word, aside.
pub fn dead_letter(
    conn: &mut Connection,
    seq: i64,
    points: u64,
    status: u16,
    message: &str,
    lines: &str,
) -> Result<(), StoreError> {
    let tx = conn.transaction()?;
    tx.execute(
        "INSERT INTO forward_dead_letters (created_at, status, message, points, lines) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![TimestampMs::now().0, status, message, points as i64, lines],
    )?;
    tx.execute("DELETE FROM outbox WHERE seq <= ?1", [seq])?;
    record_progress(&tx, seq, 0)?;
    tx.commit()?;
    Ok(())
}

fn record_progress(
    tx: &rusqlite::Transaction<'_>,
    seq: i64,
    points: u64,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO forward_progress (target, last_seq, forwarded, updated_at) VALUES (?1, ?2, ?3, ?4) \
         ON CONFLICT (target) DO UPDATE SET last_seq = ?2, forwarded = forwarded + ?3, updated_at = ?4",
        params![TARGET, seq, points as i64, TimestampMs::now().0],
    )?;
    Ok(())
}

/// Records a reading for forwarding; called in the transaction that stores it.
pub fn add(
    tx: &rusqlite::Transaction<'_>,
    series: i64,
    ts: TimestampMs,
    committed_at: TimestampMs,
) -> Result<(), StoreError> {
    tx.prepare_cached("INSERT INTO outbox (series, ts, committed_at) VALUES (?1, ?2, ?3)")?
        .execute(params![series, ts.0, committed_at.0])?;
    Ok(())
}

/// The oldest reading time still waiting to be forwarded: retention must keep everything
/// from there on.
pub fn oldest_pending_ts(conn: &Connection) -> Result<Option<i64>, StoreError> {
    Ok(conn.query_row("SELECT min(ts) FROM outbox", [], |r| r.get(0))?)
}
