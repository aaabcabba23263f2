//! Raw-data retention: deletes readings older than `store.raw_retention`, but never one the
//! InfluxDB forwarder has not delivered yet.
//!
//! The oldest unforwarded reading is read in the same write transaction as the delete it
//! bounds. Read once before the pass, it would miss a late reading that the writer commits
//! (and puts in the outbox) while the pass runs, and that reading could go unforwarded.

use rusqlite::{Connection, TransactionBehavior, params};

use super::{StoreError, outbox};
use crate::model::TimestampMs;

/// Deletes readings before `cutoff` (or before the oldest unforwarded reading, if earlier),
/// one series at a time so each delete walks the primary key and the writer waits for no
/// more than one series. Returns how many went.
pub fn apply(conn: &mut Connection, cutoff: TimestampMs) -> Result<u64, StoreError> {
    let series: Vec<i64> = {
        let mut stmt = conn.prepare("SELECT id FROM series")?;
        stmt.query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?
    };
    let mut deleted = 0u64;
    for id in series {
        // Immediate: the write lock first, so no commit lands between the read and the delete.
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let keep_from = match outbox::oldest_pending_ts(&tx)? {
            Some(pending) => cutoff.0.min(pending),
            None => cutoff.0,
        };
        deleted += tx.execute(
            "DELETE FROM readings WHERE series = ?1 AND ts < ?2",
            params![id, keep_from],
        )? as u64;
        tx.commit()?;
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use super::*;
    use crate::config::StoreSettings;
    use crate::metrics::Metrics;
    use crate::model::{Kind, Reading, SeriesKey};
    use crate::store::open_writer;
    use crate::store::writer::{Envelope, Heartbeat, Writer};

    const CUTOFF: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

    /// Late readings, each batch older than the last, for 40 series: every one of them is
    /// older than the cutoff and waits in the outbox.
    fn batch(round: i64) -> Envelope {
        let readings = (0..40)
            .map(|d| Reading {
                series: SeriesKey {
                    orchard: "o".parse().unwrap(),
                    block: "b".parse().unwrap(),
                    device: format!("d{d}").parse().unwrap(),
                    kind: Kind::SoilMoisture,
                    depth_cm: None,
                },
                ts: TimestampMs(CUTOFF - 1_000 - round * 60_000),
                value: 20.0,
            })
            .collect();
        Envelope {
            source: None,
            topic: "t".into(),
            received_at: TimestampMs(CUTOFF),
            device: None,
            readings,
            rejections: Vec::new(),
            payload: None,
            expected_interval: Duration::from_secs(600),
            device_intervals: Vec::new(),
        }
    }

    #[test]
    fn retention_running_beside_the_writer_never_deletes_an_unforwarded_reading() {
        let dir = tempfile::tempdir().unwrap();
        let settings = StoreSettings {
            path: dir.path().join("o.db"),
            ..StoreSettings::default()
        };
        let mut writer = Writer::new(
            open_writer(&settings).unwrap(),
            Arc::new(Metrics::default()),
            Arc::new(Heartbeat::default()),
            10_000,
            12,
        )
        .with_outbox(true);
        // The series exist before retention starts, so every pass walks all of them.
        writer.commit(&[batch(0)]).unwrap();
        let mut retention = open_writer(&settings).unwrap();
        let done = Arc::new(AtomicBool::new(false));
        let stop = done.clone();
        let passes = std::thread::spawn(move || {
            let mut passes = 0;
            while !stop.load(Ordering::Relaxed) || passes == 0 {
                apply(&mut retention, TimestampMs(CUTOFF)).unwrap();
                passes += 1;
            }
            passes
        });
        for round in 1..300 {
            writer.commit(&[batch(round)]).unwrap();
        }
        done.store(true, Ordering::Relaxed);
        let passes = passes.join().unwrap();
        assert!(passes > 1, "retention ran {passes} times");

        let conn = Connection::open(&settings.path).unwrap();
        let count = |sql: &str| conn.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap();
        assert_eq!(count("SELECT count(*) FROM outbox"), 300 * 40);
        assert_eq!(
            count(
                "SELECT count(*) FROM outbox o WHERE NOT EXISTS \
                 (SELECT 1 FROM readings r WHERE r.series = o.series AND r.ts = o.ts)"
            ),
            0,
            "unforwarded readings deleted"
        );
    }
}
