//! Hourly and daily rollups per series: count, min, max, sum (hence mean) and last.
//!
//! Maintained in the writer's transaction from the readings that transaction really inserted,
//! so a late reading updates the window it belongs to and a redelivered one changes nothing.
//! A batch is folded in memory first and written as one upsert per touched window. Days are
//! local days at the configured UTC offset, so a frost night is not split at UTC midnight.

use std::collections::HashMap;

use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, OptionalExtension, Transaction, params, params_from_iter};
use serde::Serialize;

use super::StoreError;
use super::readings::{self, Agg, Each, Row, Where, series_where};
use crate::aggregate::indices::{DAY_MS, HOUR_MS};
use crate::model::{Ident, Kind, TimestampMs};

/// The rollup periods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Period {
    Hour,
    Day,
}

impl Period {
    pub fn as_str(self) -> &'static str {
        match self {
            Period::Hour => "1h",
            Period::Day => "1d",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "1h" => Some(Period::Hour),
            "1d" => Some(Period::Day),
            _ => None,
        }
    }

    pub fn len_ms(self) -> i64 {
        match self {
            Period::Hour => HOUR_MS,
            Period::Day => DAY_MS,
        }
    }

    /// The start of the window holding `ts`, with days starting at local midnight (and hours
    /// on local hours, which differ from UTC hours at offsets such as +05:30).
    pub fn start(self, ts: i64, utc_offset_ms: i64) -> i64 {
        let len = self.len_ms();
        (ts + utc_offset_ms).div_euclid(len) * len - utc_offset_ms
    }
}

/// One window's summary while a batch is folded.
#[derive(Debug, Clone, Copy)]
struct Window {
    count: i64,
    min: f64,
    max: f64,
    sum: f64,
    last_ts: i64,
    last: f64,
}

impl Window {
    fn new(ts: i64, v: f64) -> Self {
        Self {
            count: 1,
            min: v,
            max: v,
            sum: v,
            last_ts: ts,
            last: v,
        }
    }

    fn add(&mut self, ts: i64, v: f64) {
        self.count += 1;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
        self.sum += v;
        if ts >= self.last_ts {
            self.last_ts = ts;
            self.last = v;
        }
    }
}

/// The windows one transaction touches.
#[derive(Default)]
pub struct Fold {
    windows: HashMap<(i64, Period, i64), Window>,
}

impl Fold {
    /// Adds a reading the transaction inserted.
    pub fn add(&mut self, series: i64, ts: TimestampMs, value: f64, utc_offset_ms: i64) {
        for period in [Period::Hour, Period::Day] {
            let key = (series, period, period.start(ts.0, utc_offset_ms));
            self.windows
                .entry(key)
                .and_modify(|w| w.add(ts.0, value))
                .or_insert_with(|| Window::new(ts.0, value));
        }
    }

    /// Merges the folded windows into the stored rollups.
    pub fn write(self, tx: &Transaction<'_>) -> Result<(), StoreError> {
        let mut upsert = tx.prepare_cached(
            "INSERT INTO rollups (series, period, start, count, min, max, sum, last_ts, last) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) \
             ON CONFLICT (series, period, start) DO UPDATE SET \
               count = count + excluded.count, min = min(min, excluded.min), \
               max = max(max, excluded.max), sum = sum + excluded.sum, \
               last = CASE WHEN excluded.last_ts >= last_ts THEN excluded.last ELSE last END, \
               last_ts = max(last_ts, excluded.last_ts)",
        )?;
        for ((series, period, start), w) in self.windows {
            upsert.execute(params![
                series,
                period.as_str(),
                start,
                w.count,
                w.min,
                w.max,
                w.sum,
                w.last_ts,
                w.last
            ])?;
        }
        Ok(())
    }
}

/// The `store_meta` key holding the UTC offset (ms) the stored rollups were cut at.
const OFFSET_KEY: &str = "rollups_utc_offset_ms";

/// What [`align`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alignment {
    /// The stored rollups were already cut at this offset.
    Kept,
    /// They were rebuilt from the raw readings: the offset changed, or rollups were off for a
    /// while. `windows_lost` had no raw readings left (retention) to rebuild from.
    Rebuilt { windows: u64, windows_lost: u64 },
    /// Rollups are off: the stored ones are left as they are, and rebuilt when turned on again.
    Off,
}

/// Makes the stored rollups match this run's configuration: cut at `utc_offset_ms` and
/// complete. Rebuilding replaces them with what the raw readings give.
pub fn align(conn: &mut Connection, on: bool, utc_offset_ms: i64) -> Result<Alignment, StoreError> {
    let stored: Option<i64> = conn
        .query_row(
            "SELECT value FROM store_meta WHERE key = ?1",
            [OFFSET_KEY],
            |r| r.get::<_, String>(0),
        )
        .optional()?
        .and_then(|v| v.parse().ok());
    if !on {
        conn.execute("DELETE FROM store_meta WHERE key = ?1", [OFFSET_KEY])?;
        return Ok(Alignment::Off);
    }
    let tx = conn.transaction()?;
    let has_rollups: bool =
        tx.query_row("SELECT EXISTS (SELECT 1 FROM rollups)", [], |r| r.get(0))?;
    let has_readings: bool =
        tx.query_row("SELECT EXISTS (SELECT 1 FROM readings)", [], |r| r.get(0))?;
    let result = if stored == Some(utc_offset_ms) || (!has_rollups && !has_readings) {
        Alignment::Kept
    } else {
        // Windows whose raw readings retention has deleted cannot come back.
        let lost: i64 = tx.query_row(
            &format!(
                "SELECT count(*) FROM rollups r WHERE NOT EXISTS (SELECT 1 FROM readings \
                 WHERE series = r.series AND ts >= r.start AND ts < r.start + \
                 CASE r.period WHEN '1h' THEN {HOUR_MS} ELSE {DAY_MS} END)"
            ),
            [],
            |r| r.get(0),
        )?;
        tx.execute("DELETE FROM rollups", [])?;
        let mut windows = 0u64;
        for period in [Period::Hour, Period::Day] {
            let len = period.len_ms();
            let shift = utc_offset_ms.rem_euclid(len);
            // The bare `value` comes from the row holding max(ts): the window's last reading.
            windows += tx.execute(
                &format!(
                    "INSERT INTO rollups (series, period, start, count, min, max, sum, last_ts, last) \
                     SELECT series, ?1, ts - (((ts + {shift}) % {len}) + {len}) % {len} AS start, \
                            count(*), min(value), max(value), sum(value), max(ts), value \
                     FROM readings GROUP BY series, start"
                ),
                [period.as_str()],
            )? as u64;
        }
        Alignment::Rebuilt {
            windows,
            windows_lost: lost as u64,
        }
    };
    tx.execute(
        "INSERT INTO store_meta (key, value) VALUES (?1, ?2) \
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        params![OFFSET_KEY, utc_offset_ms.to_string()],
    )?;
    tx.commit()?;
    Ok(result)
}

/// A stored rollup, as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rollup {
    pub orchard: String,
    pub block: String,
    pub device: String,
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub depth_cm: Option<i64>,
    pub period: &'static str,
    pub start: String,
    pub count: i64,
    pub min: f64,
    pub max: f64,
    pub mean: f64,
    pub sum: f64,
    pub last: f64,
}

#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub orchard: Option<Ident>,
    pub block: Option<Ident>,
    pub device: Option<Ident>,
    pub kind: Option<Kind>,
    pub from: Option<TimestampMs>,
    pub to: Option<TimestampMs>,
    pub limit: usize,
}

/// Rollups of `period` whose window starts in `[from, to)`, ordered by start then identity.
pub fn list(conn: &Connection, period: Period, f: &Filter) -> Result<Vec<Rollup>, StoreError> {
    readings::collect(|each| list_each(conn, period, f, each))
}

/// [`list`], handing each rollup to `each` as it is read.
pub fn list_each(
    conn: &Connection,
    period: Period,
    f: &Filter,
    each: Each<Rollup>,
) -> Result<(), StoreError> {
    let (sql, args) = select(
        "r.count, r.min, r.max, r.sum, r.last",
        period,
        series_where(&f.orchard, &f.block, &f.device, f.kind),
        (f.from, f.to),
        f.limit,
    );
    let mut stmt = conn.prepare(&sql)?;
    let mut rows = stmt.query(params_from_iter(args))?;
    while let Some(r) = rows.next()? {
        let count: i64 = r.get(6)?;
        let sum: f64 = r.get(9)?;
        each(Rollup {
            orchard: r.get(0)?,
            block: r.get(1)?,
            device: r.get(2)?,
            kind: r.get(3)?,
            depth_cm: r.get(4)?,
            period: period.as_str(),
            start: TimestampMs(r.get(5)?).to_rfc3339(),
            count,
            min: r.get(7)?,
            max: r.get(8)?,
            mean: sum / count as f64,
            sum,
            last: r.get(10)?,
        })?;
    }
    Ok(())
}

/// The rollup period that answers a downsampled readings question exactly, if any: `every`
/// is one hour or one day, nothing filters single readings (`flagged`), and `from` and `to`
/// fall on window boundaries, so no window is cut.
pub fn answers(f: &readings::Filter) -> Option<Period> {
    let (every, _) = f.every?;
    let period = [Period::Hour, Period::Day]
        .into_iter()
        .find(|p| p.len_ms() == every)?;
    let aligned =
        |t: Option<TimestampMs>| t.is_none_or(|t| period.start(t.0, f.utc_offset_ms) == t.0);
    (f.flagged.is_none() && aligned(f.from) && aligned(f.to)).then_some(period)
}

/// A downsampled readings answer read from the rollups of `period`.
pub fn as_readings(
    conn: &Connection,
    period: Period,
    f: &readings::Filter,
    each: Each<Row>,
) -> Result<(), StoreError> {
    let agg = f.every.map_or(Agg::Mean, |(_, agg)| agg);
    let value = match agg {
        Agg::Mean => "r.sum / r.count",
        Agg::Min => "r.min",
        Agg::Max => "r.max",
        Agg::Sum => "r.sum",
        Agg::Count => "r.count",
        Agg::Last => "r.last",
    };
    let (sql, args) = select(
        &format!("{value}, 0"),
        period,
        series_where(&f.orchard, &f.block, &f.device, f.kind),
        (f.from, f.to),
        f.limit,
    );
    readings::each_row(conn, &sql, args, each)
}

/// The rollups of `period` for the series `w` selects, windows starting in `[from, to)`:
/// identity and start, then `columns`, ordered as the readings API orders its rows.
fn select(
    columns: &str,
    period: Period,
    mut w: Where,
    (from, to): (Option<TimestampMs>, Option<TimestampMs>),
    limit: usize,
) -> (String, Vec<SqlValue>) {
    w.add("r.period = ?", Some(SqlValue::Text(period.as_str().into())));
    w.add("r.start >= ?", from.map(|t| SqlValue::Integer(t.0)));
    w.add("r.start < ?", to.map(|t| SqlValue::Integer(t.0)));
    w.params.push(SqlValue::Integer(limit as i64));
    let sql = format!(
        "SELECT s.orchard, s.block, s.device, s.kind, s.depth_cm, r.start, {columns} \
         FROM rollups r JOIN series s ON s.id = r.series WHERE {} \
         ORDER BY r.start, s.orchard, s.block, s.device, s.kind, s.depth_cm LIMIT ?",
        w.sql()
    );
    (sql, w.params)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_days_start_at_local_midnight() {
        let offset = 8 * HOUR_MS;
        // 2026-01-10T23:30+08:00 and 2026-01-11T00:30+08:00 are different local days,
        // though both fall on 2026-01-10 in UTC.
        let before = TimestampMs::parse("2026-01-10T23:30:00+08:00").unwrap().0;
        let after = TimestampMs::parse("2026-01-11T00:30:00+08:00").unwrap().0;
        let day = |t| Period::Day.start(t, offset);
        assert_ne!(day(before), day(after));
        assert_eq!(
            day(after),
            TimestampMs::parse("2026-01-11T00:00:00+08:00").unwrap().0
        );
        assert_eq!(
            Period::Hour.start(after, offset),
            TimestampMs::parse("2026-01-11T00:00:00+08:00").unwrap().0
        );
    }
}

#[cfg(test)]
mod answers_from_rollups {
    //! Whatever order readings arrive in, late or repeated, the rollups give the same windows
    //! as the raw readings do.

    use std::sync::Arc;
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;
    use crate::config::StoreSettings;
    use crate::metrics::Metrics;
    use crate::model::{Reading, SeriesKey};
    use crate::store::open_writer;
    use crate::store::writer::{Envelope, Heartbeat, Writer};

    const START: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

    fn envelope(readings: Vec<Reading>) -> Envelope {
        Envelope {
            source: None,
            topic: "t".into(),
            received_at: TimestampMs(START),
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

    fn reading(device: u8, kind: Kind, ts: i64, value: f64) -> Reading {
        Reading {
            series: SeriesKey {
                orchard: "o1".parse().unwrap(),
                block: "B1".parse().unwrap(),
                device: format!("d{device}").parse().unwrap(),
                kind,
                depth_cm: None,
            },
            ts: TimestampMs(ts),
            value,
        }
    }

    fn batches() -> impl Strategy<Value = Vec<Vec<(u8, bool, i64, f64)>>> {
        // Three days of minutes, two devices, two kinds; small batches so that later ones
        // repeat and backfill earlier ones.
        let one = (0u8..2, any::<bool>(), 0i64..3 * 1440, -5.0f64..40.0);
        prop::collection::vec(prop::collection::vec(one, 1..40), 1..12)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn every_hour_and_day_window_matches_the_raw_readings(
            batches in batches(),
            offset_quarters in -48i64..=56,
            from_day in 0i64..2,
        ) {
            let offset = offset_quarters * 900_000;
            let dir = tempfile::tempdir().unwrap();
            let settings = StoreSettings { path: dir.path().join("o.db"), ..StoreSettings::default() };
            let conn = open_writer(&settings).unwrap();
            let mut writer = Writer::new(
                conn,
                Arc::new(Metrics::default()),
                Arc::new(Heartbeat::default()),
                10_000,
                5,
            )
            .with_utc_offset(offset);
            for batch in &batches {
                let readings = batch
                    .iter()
                    .map(|&(d, air, minute, v)| {
                        let kind = if air { Kind::AirTemperature } else { Kind::Rainfall };
                        reading(d, kind, START + minute * 60_000, v)
                    })
                    .collect();
                writer.commit(&[envelope(readings)]).unwrap();
            }
            let read = rusqlite::Connection::open(&settings.path).unwrap();
            for period in [Period::Hour, Period::Day] {
                for agg in [Agg::Mean, Agg::Min, Agg::Max, Agg::Sum, Agg::Count, Agg::Last] {
                    let from = period.start(START + from_day * DAY_MS, offset);
                    let f = readings::Filter {
                        from: Some(TimestampMs(from)),
                        every: Some((period.len_ms(), agg)),
                        utc_offset_ms: offset,
                        limit: 100_000,
                        ..readings::Filter::default()
                    };
                    prop_assert_eq!(answers(&f), Some(period));
                    let raw = readings::query_raw(&read, &f).unwrap();
                    let rolled = readings::collect(|each| as_readings(&read, period, &f, each)).unwrap();
                    prop_assert_eq!(raw.len(), rolled.len());
                    for (a, b) in raw.iter().zip(&rolled) {
                        prop_assert_eq!((&a.device, &a.kind, a.ts), (&b.device, &b.kind, b.ts));
                        prop_assert!((a.value - b.value).abs() <= 1e-9 * a.value.abs().max(1.0),
                            "{:?} {:?}: raw {} rollup {}", period, agg, a.value, b.value);
                    }
                }
            }
        }
    }

    #[test]
    fn a_cut_window_or_a_flag_filter_is_answered_from_raw_readings() {
        let f = |from: i64, every: i64| readings::Filter {
            from: Some(TimestampMs(from)),
            every: Some((every, Agg::Sum)),
            utc_offset_ms: 8 * HOUR_MS,
            ..readings::Filter::default()
        };
        let local_midnight = START - 8 * HOUR_MS;
        assert_eq!(answers(&f(local_midnight, DAY_MS)), Some(Period::Day));
        assert_eq!(answers(&f(START + 60_000, HOUR_MS)), None);
        // UTC midnight is 08:00 at +08:00: an hour boundary, not a day's.
        assert_eq!(answers(&f(START, HOUR_MS)), Some(Period::Hour));
        assert_eq!(answers(&f(START, DAY_MS)), None);
        assert_eq!(answers(&f(START, 15 * 60_000)), None);
        let flagged = readings::Filter {
            flagged: Some(crate::model::Flags::STUCK),
            ..f(START, HOUR_MS)
        };
        assert_eq!(answers(&flagged), None);
    }

    #[test]
    fn a_changed_offset_or_a_spell_without_rollups_rebuilds_them_from_the_readings() {
        let dir = tempfile::tempdir().unwrap();
        let settings = StoreSettings {
            path: dir.path().join("o.db"),
            ..StoreSettings::default()
        };
        let new_writer = |offset: i64, on: bool| {
            let mut conn = open_writer(&settings).unwrap();
            let aligned = align(&mut conn, on, offset).unwrap();
            let writer = Writer::new(
                conn,
                Arc::new(Metrics::default()),
                Arc::new(Heartbeat::default()),
                10_000,
                5,
            )
            .with_utc_offset(offset)
            .with_rollups(on);
            (writer, aligned)
        };
        let half_hours = |from: i64, n: i64| -> Vec<Reading> {
            (from..from + n)
                .map(|i| reading(0, Kind::AirTemperature, START + i * 1_800_000, i as f64))
                .collect()
        };
        let (mut w, aligned) = new_writer(0, true);
        assert_eq!(
            aligned,
            Alignment::Kept,
            "an empty store has nothing to rebuild"
        );
        w.commit(&[envelope(half_hours(0, 96))]).unwrap();
        drop(w);
        let (_, aligned) = new_writer(0, true);
        assert_eq!(aligned, Alignment::Kept);

        // Moved to +08:00: two days at UTC become three local days.
        let offset = 8 * HOUR_MS;
        let (mut w, aligned) = new_writer(offset, true);
        assert_eq!(
            aligned,
            Alignment::Rebuilt {
                windows: 48 + 3,
                windows_lost: 0
            }
        );
        // Off for a while, then on again: what arrived meanwhile is folded in.
        drop(w);
        let (mut off, aligned) = new_writer(offset, false);
        assert_eq!(aligned, Alignment::Off);
        off.commit(&[envelope(half_hours(96, 48))]).unwrap();
        drop(off);
        (w, _) = new_writer(offset, true);
        w.commit(&[envelope(half_hours(144, 2))]).unwrap();

        let read = rusqlite::Connection::open(&settings.path).unwrap();
        for period in [Period::Hour, Period::Day] {
            let f = readings::Filter {
                every: Some((period.len_ms(), Agg::Sum)),
                utc_offset_ms: offset,
                limit: 10_000,
                ..readings::Filter::default()
            };
            let raw = readings::query_raw(&read, &f).unwrap();
            assert_eq!(
                readings::collect(|each| as_readings(&read, period, &f, each)).unwrap(),
                raw,
                "{period:?}"
            );
        }

        // Retention deleted the first UTC day: its 24 hours and the local day that ended at
        // 16:00 UTC cannot be rebuilt, and the count says so.
        drop(w);
        read.execute("DELETE FROM readings WHERE ts < ?1", [START + DAY_MS])
            .unwrap();
        let (_, aligned) = new_writer(0, true);
        let Alignment::Rebuilt { windows_lost, .. } = aligned else {
            panic!("{aligned:?}");
        };
        assert_eq!(windows_lost, 24 + 1);
    }
}
