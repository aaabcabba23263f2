//! Raw-data retention: deletes readings older than `store.raw_retention`, but never one the
//! InfluxDB forwarder has not delivered yet.
//!
//! The oldest unforwarded reading is read in the same write transaction as the delete it
//! bounds. Read once before the pass, it would miss a late reading that the writer commits
//! (and puts in the outbox) while the pass runs, and that reading could go unforwarded.

use std::time::Duration;

use rusqlite::{Connection, Transaction, TransactionBehavior, params};

use super::{StoreError, block, outbox};
use crate::aggregate::indices::{self, Agronomy, DAY_MS, Day, DeviceDay, SeriesReadings};
use crate::model::{Kind, TimestampMs};

/// What retention needs to keep the day summaries of the series the daily indices use
/// before it deletes their readings.
pub struct Summaries<'a> {
    pub agronomy: &'a Agronomy,
    /// `health.expected_interval`, for devices whose entry does not say.
    pub default_interval: Duration,
}

/// Deletes readings before `cutoff` (or before the oldest unforwarded reading, if earlier),
/// one series at a time so each delete walks the primary key and the writer waits for no
/// more than one series. A series the indices use first has each day it is about to lose
/// summarised, and keeps the readings a gap limit before its first whole kept day, so that
/// day's edge stays covered. Returns how many readings went.
pub fn apply(
    conn: &mut Connection,
    cutoff: TimestampMs,
    summaries: Option<&Summaries<'_>>,
) -> Result<u64, StoreError> {
    type Row = (
        i64,
        String,
        String,
        String,
        String,
        Option<i64>,
        Option<i64>,
    );
    let series: Vec<Row> = {
        let mut stmt = conn.prepare(
            "SELECT s.id, s.orchard, s.block, s.kind, s.device, s.depth_cm, d.expected_interval_ms \
             FROM series s LEFT JOIN devices d ON d.id = lower(s.device)",
        )?;
        stmt.query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
            ))
        })?
        .collect::<Result<_, _>>()?
    };
    let mut deleted = 0u64;
    for (id, orchard, block_name, kind, device, _, interval_ms) in series {
        // Immediate: the write lock first, so no commit lands between the read and the delete.
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut keep_from = match outbox::oldest_pending_ts(&tx)? {
            Some(pending) => cutoff.0.min(pending),
            None => cutoff.0,
        };
        let kind = kind
            .parse::<Kind>()
            .ok()
            .filter(|k| indices::KINDS.contains(k));
        if let (Some(s), Some(kind)) = (summaries, kind) {
            let p = s.agronomy.params(&orchard, &block_name);
            let interval = interval_ms.unwrap_or(s.default_interval.as_millis() as i64);
            let series = SeriesReadings {
                device,
                kind,
                gap_limit_ms: block::gap_limit_ms(interval),
                readings: Vec::new(),
                summary: None,
            };
            keep_from = summarise(&tx, id, &p, series, keep_from)?;
        }
        deleted += tx.execute(
            "DELETE FROM readings WHERE series = ?1 AND ts < ?2",
            params![id, keep_from],
        )? as u64;
        tx.commit()?;
    }
    Ok(deleted)
}

/// Keeps a summary of each day of the series before the day holding `keep_from`; returns how
/// far the delete may go.
fn summarise(
    tx: &Transaction<'_>,
    id: i64,
    p: &indices::BlockParams,
    mut s: SeriesReadings,
    keep_from: i64,
) -> Result<i64, StoreError> {
    let offset = p.utc_offset_ms;
    let keep_day = Day::of(keep_from, offset);
    let oldest: Option<i64> = tx.query_row(
        "SELECT min(ts) FROM readings WHERE series = ?1",
        [id],
        |r| r.get(0),
    )?;
    let Some(oldest) = oldest else {
        return Ok(keep_from);
    };
    let mut day = Day::of(oldest, offset);
    while day < keep_day {
        if !block::has_summary(tx, id, day, offset)? {
            let from = day.start_ms(offset);
            s.readings = block::readings_of(
                tx,
                id,
                from - s.gap_limit_ms,
                from + DAY_MS + s.gap_limit_ms,
            )?;
            let d = DeviceDay::of(p, day, &s);
            if d.window.readings > 0 || d.left_out > 0 {
                block::keep_summary(tx, id, day, offset, &d)?;
            }
        }
        day = Day(day.0 + 1);
    }
    Ok(keep_from.min(keep_day.start_ms(offset) - s.gap_limit_ms))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
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
            gateway: None,
            readings,
            rejections: Vec::new(),
            payload: None,
            expected_interval: Duration::from_secs(600),
            device_intervals: Vec::new(),
            lot: None,
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
        // The writer commits until retention has made 20 passes beside it (bounded).
        let done = Arc::new(AtomicBool::new(false));
        let passes = Arc::new(AtomicU32::new(0));
        let (stop, made) = (done.clone(), passes.clone());
        let retention = std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                apply(&mut retention, TimestampMs(CUTOFF), None).unwrap();
                made.fetch_add(1, Ordering::Relaxed);
            }
        });
        let mut rounds = 1;
        while passes.load(Ordering::Relaxed) < 20 && rounds < 20_000 {
            writer.commit(&[batch(rounds)]).unwrap();
            rounds += 1;
        }
        done.store(true, Ordering::Relaxed);
        retention.join().unwrap();
        assert!(passes.load(Ordering::Relaxed) >= 20);

        let conn = Connection::open(&settings.path).unwrap();
        let count = |sql: &str| conn.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap();
        assert_eq!(count("SELECT count(*) FROM outbox"), rounds * 40);
        assert_eq!(
            count(
                "SELECT count(*) FROM outbox o WHERE NOT EXISTS \
                 (SELECT 1 FROM readings r WHERE r.series = o.series AND r.ts = o.ts)"
            ),
            0,
            "unforwarded readings deleted"
        );
    }

    #[test]
    fn a_seasons_indices_outlive_its_raw_readings() {
        use crate::aggregate::indices::{Agronomy, Day, compute};
        use crate::config::{AggregateSettings, BlockSettings};
        use crate::store::block::BlockSeries;

        let dir = tempfile::tempdir().unwrap();
        let settings = StoreSettings {
            path: dir.path().join("o.db"),
            ..StoreSettings::default()
        };
        let offset = 8 * 3_600_000;
        let agronomy = Agronomy {
            aggregate: AggregateSettings {
                utc_offset: "+08:00".into(),
                ..AggregateSettings::default()
            },
            blocks: vec![BlockSettings {
                orchard: "o".into(),
                block: "b".into(),
                latitude: 31.0,
                elevation_m: 240.0,
                longitude: None,
                gdd_base_c: None,
                season_start: None,
                kc: None,
                root_zone_mm: None,
                target_depletion_mm: None,
                wind_height_m: None,
                harvest_from: None,
            }],
        };
        let p = agronomy.params("o", "b");
        let first = Day::of(CUTOFF, offset);
        let mut writer = Writer::new(
            open_writer(&settings).unwrap(),
            Arc::new(Metrics::default()),
            Arc::new(Heartbeat::default()),
            100_000,
            12,
        )
        .with_utc_offset(offset);
        // Six days of a weather station every 10 minutes, with a glitch on day 2.
        let start = first.start_ms(offset);
        let readings: Vec<Reading> = (0..6 * 144)
            .flat_map(|i| {
                let ts = start + i * 600_000;
                let h = (i % 144) as f64 / 6.0;
                let wave = ((h - 15.0) / 24.0 * std::f64::consts::TAU).cos();
                let sun = if (6.0..19.0).contains(&h) {
                    700.0 * ((h - 6.0) / 13.0 * std::f64::consts::PI).sin()
                } else {
                    0.0
                };
                let t = if i == 144 + 78 {
                    45.0
                } else {
                    12.0 + 8.0 * wave + 0.01 * (i % 7) as f64
                };
                [
                    (Kind::AirTemperature, t),
                    (Kind::RelativeHumidity, 70.0 - 20.0 * wave),
                    (Kind::WindSpeed, 2.0 + wave),
                    (Kind::SolarRadiation, sun),
                    (Kind::Rainfall, if i % 144 == 30 { 4.0 } else { 0.0 }),
                ]
                .map(|(kind, value)| Reading {
                    series: SeriesKey {
                        orchard: "o".parse().unwrap(),
                        block: "b".parse().unwrap(),
                        device: "ws".parse().unwrap(),
                        kind,
                        depth_cm: None,
                    },
                    ts: TimestampMs(ts),
                    value,
                })
            })
            .collect();
        let mut env = batch(0);
        env.readings = readings;
        writer.commit(&[env]).unwrap();

        let end = Day(first.0 + 6);
        let indices = |conn: &Connection| {
            let series = BlockSeries::of(
                conn,
                &"o".parse().unwrap(),
                &"b".parse().unwrap(),
                Duration::from_secs(900),
            )
            .unwrap();
            let days = compute(
                &p,
                first,
                end,
                |d, each: &mut dyn FnMut(_)| series.around(conn, d, offset, each),
                &Default::default(),
            )
            .unwrap();
            serde_json::to_value(days).unwrap()
        };
        let mut conn = open_writer(&settings).unwrap();
        let before = indices(&conn);
        assert_eq!(before[1]["left_out"]["air_temperature"], 1);

        // Retention to the middle of day 4: days 0-3 live on as summaries.
        let cutoff = TimestampMs(Day(first.0 + 4).start_ms(offset) + 12 * 3_600_000);
        let summaries = Summaries {
            agronomy: &agronomy,
            default_interval: Duration::from_secs(900),
        };
        let deleted = apply(&mut conn, cutoff, Some(&summaries)).unwrap();
        let left: i64 = conn
            .query_row(
                "SELECT count(*) FROM readings WHERE ts < ?1",
                [Day(first.0 + 4).start_ms(offset) - 3_600_000],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(left, 0);
        // Four days of five kinds, less the hour kept before day 4 for its edge.
        assert_eq!(deleted, (4 * 144 - 6) * 5);
        assert_eq!(indices(&conn), before);
        // A second pass finds nothing new to summarise and changes nothing.
        apply(&mut conn, cutoff, Some(&summaries)).unwrap();
        assert_eq!(indices(&conn), before);
    }
}
