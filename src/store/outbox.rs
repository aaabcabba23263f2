//! The forwarder's outbox: every reading committed while forwarding is on gets a row here, in
//! the same transaction, numbered in commit order. A row leaves only when InfluxDB has accepted
//! its batch (or refused it as bad data, which sets the batch aside in `forward_dead_letters`),
//! so the outbox is the persisted cursor: an outage or a restart leaves a backlog, never a gap.

use std::fmt::Write as _;

use bytes::Bytes;
use rusqlite::{Connection, params};

use super::StoreError;
use crate::influx::line::{self, FieldValue};
use crate::model::TimestampMs;

/// The one forwarding target so far.
pub const TARGET: &str = "influx";

/// The next rows of the outbox as line protocol, ready to send.
#[derive(Debug)]
pub struct Batch {
    /// One line per row, in outbox order.
    pub lines: Bytes,
    /// Each row's outbox sequence and where its line ends in `lines`.
    pub rows: Vec<(i64, usize)>,
}

impl Batch {
    /// The sequence of the batch's last row: everything up to it is done once it is sent.
    pub fn last_seq(&self) -> Option<i64> {
        self.rows.last().map(|&(seq, _)| seq)
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The first half of the rows and the rest, each a batch of its own (the lines are
    /// shared, not copied).
    pub fn halves(&self) -> (Batch, Batch) {
        let mid = self.rows.len() / 2;
        let cut = mid.checked_sub(1).map_or(0, |i| self.rows[i].1);
        let first = Batch {
            lines: self.lines.slice(..cut),
            rows: self.rows[..mid].to_vec(),
        };
        let second = Batch {
            lines: self.lines.slice(cut..),
            rows: self.rows[mid..]
                .iter()
                .map(|&(seq, end)| (seq, end - cut))
                .collect(),
        };
        (first, second)
    }
}

/// The next `limit` rows after `after`, written as line protocol straight from the store's
/// rows (DESIGN.md: measurement = kind, tags orchard, block, device (+ depth_cm), field
/// value, ms timestamps). Nothing is allocated per row: a full batch is one string and one
/// list of sequences.
pub fn next(conn: &Connection, after: i64, limit: usize) -> Result<Batch, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT o.seq, s.orchard, s.block, s.device, s.kind, s.depth_cm, o.ts, r.value \
         FROM outbox o JOIN series s ON s.id = o.series \
         JOIN readings r ON r.series = o.series AND r.ts = o.ts \
         WHERE o.seq > ?1 ORDER BY o.seq LIMIT ?2",
    )?;
    let mut rows = stmt.query(params![after, limit as i64])?;
    let mut lines = String::new();
    let mut seqs = Vec::new();
    let mut depth = String::new();
    while let Some(r) = rows.next()? {
        let text = |i| -> Result<&str, StoreError> {
            Ok(r.get_ref(i)?.as_str().map_err(rusqlite::Error::from)?)
        };
        depth.clear();
        if let Some(d) = r.get::<_, Option<i64>>(5)? {
            let _ = write!(depth, "{d}");
        }
        line::point(
            &mut lines,
            text(4)?,
            &[
                ("block", text(2)?),
                ("depth_cm", &depth),
                ("device", text(3)?),
                ("orchard", text(1)?),
            ],
            &[("value", FieldValue::Float(r.get(7)?))],
            r.get(6)?,
        );
        seqs.push((r.get(0)?, lines.len()));
    }
    Ok(Batch {
        lines: Bytes::from(lines),
        rows: seqs,
    })
}

/// How many rows wait, and when the oldest of them was committed.
pub fn backlog(conn: &Connection) -> Result<(u64, Option<TimestampMs>), StoreError> {
    // Rows leave from the front only, so the sequence span is the count, without a scan.
    // Each end is its own subquery: SQLite reads min() or max() off the b-tree's edge only
    // when it is the one aggregate of its query; `max(seq) - min(seq)` together scanned the
    // whole outbox (3.9 MiB of page cache on every forwarder step, in a heap profile).
    Ok(conn.query_row(
        "SELECT ifnull((SELECT seq FROM outbox ORDER BY seq DESC LIMIT 1) \
                     - (SELECT seq FROM outbox ORDER BY seq LIMIT 1) + 1, 0), \
                (SELECT committed_at FROM outbox ORDER BY seq LIMIT 1)",
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

#[cfg(test)]
mod tests {
    use super::*;

    fn store_with_outbox(rows: i64) -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let settings = crate::config::StoreSettings {
            path: dir.path().join("o.db"),
            ..Default::default()
        };
        let conn = super::super::open_writer(&settings).unwrap();
        conn.execute_batch(
            "INSERT INTO series (id, orchard, block, device, kind, depth_cm, first_seen) \
             VALUES (1, 'fengjie', 'B3', 'probe-1', 'soil_moisture', 30, 0), \
                    (2, 'fengjie', 'B3', 'station-1', 'air_temperature', NULL, 0);",
        )
        .unwrap();
        for i in 0..rows {
            let series = 1 + i % 2;
            conn.execute(
                "INSERT INTO readings (series, ts, value, flags) VALUES (?1, ?2, ?3, 0)",
                params![series, 1_000 + i, 20.0 + i as f64 / 4.0],
            )
            .unwrap();
            conn.execute(
                "INSERT INTO outbox (series, ts, committed_at) VALUES (?1, ?2, ?3)",
                params![series, 1_000 + i, 5 + i],
            )
            .unwrap();
        }
        (dir, conn)
    }

    #[test]
    fn a_batch_is_the_rows_after_the_cursor_as_line_protocol() {
        let (_dir, conn) = store_with_outbox(5);
        let batch = next(&conn, 1, 3).unwrap();
        assert_eq!(
            std::str::from_utf8(&batch.lines).unwrap(),
            "air_temperature,block=B3,device=station-1,orchard=fengjie value=20.25 1001\n\
             soil_moisture,block=B3,depth_cm=30,device=probe-1,orchard=fengjie value=20.5 1002\n\
             air_temperature,block=B3,device=station-1,orchard=fengjie value=20.75 1003\n"
        );
        assert_eq!(batch.last_seq(), Some(4));
        assert_eq!(batch.rows.last().map(|r| r.1), Some(batch.lines.len()));
        assert!(next(&conn, 5, 3).unwrap().is_empty());
    }

    #[test]
    fn the_backlog_is_what_waits_and_when_its_oldest_row_was_committed() {
        let (_dir, mut conn) = store_with_outbox(5);
        assert_eq!(backlog(&conn).unwrap(), (5, Some(TimestampMs(5))));
        accepted(&mut conn, 3, 3).unwrap();
        assert_eq!(backlog(&conn).unwrap(), (2, Some(TimestampMs(8))));
        accepted(&mut conn, 5, 2).unwrap();
        assert_eq!(backlog(&conn).unwrap(), (0, None));
    }

    #[test]
    fn halves_split_at_a_line_and_keep_each_rows_sequence() {
        let (_dir, conn) = store_with_outbox(5);
        let batch = next(&conn, 0, 10).unwrap();
        let (first, second) = batch.halves();
        assert_eq!((first.len(), second.len()), (2, 3));
        assert_eq!((first.last_seq(), second.last_seq()), (Some(2), Some(5)));
        let joined = [&first.lines[..], &second.lines[..]].concat();
        assert_eq!(joined, &batch.lines[..]);
        for half in [&first, &second] {
            let text = std::str::from_utf8(&half.lines).unwrap();
            assert!(text.ends_with('\n') && text.lines().count() == half.len());
            assert_eq!(half.rows.last().map(|r| r.1), Some(half.lines.len()));
        }
        let (one, two) = second.halves();
        assert_eq!((one.len(), two.len()), (1, 2));
        assert_eq!(
            std::str::from_utf8(&one.lines).unwrap(),
            "soil_moisture,block=B3,depth_cm=30,device=probe-1,orchard=fengjie value=20.5 1002\n"
        );
        assert_eq!(one.last_seq(), Some(3));
    }
}
