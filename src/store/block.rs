//! The raw readings one block's daily indices are made from, read a day at a time, and the
//! summaries of the days whose readings retention has deleted (`series_days`).

use std::collections::BTreeMap;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};

use super::StoreError;
use crate::aggregate::daily::Window;
use crate::aggregate::indices::{self, DAY_MS, Day, DeviceDay, HOUR_MS, SeriesReadings};
use crate::model::{Flags, Ident, Kind};

/// The shortest gap limit: readings an hour apart always cover the hour between them.
const MIN_GAP_LIMIT_MS: i64 = HOUR_MS;

/// Readings of a device that reports every `interval_ms` further apart than this leave the
/// time between them uncovered: twice the interval, at least an hour, at most two days.
pub fn gap_limit_ms(interval_ms: i64) -> i64 {
    (2 * interval_ms).clamp(MIN_GAP_LIMIT_MS, 2 * DAY_MS)
}

/// Flags that leave a reading out of the indices.
fn left_out(flags: u8) -> bool {
    flags & (Flags::SPIKE.0 | Flags::STUCK.0) != 0
}

/// One series' readings in `[from_ms, to_ms)`, in time order, those to leave out marked.
pub fn readings_of(
    conn: &Connection,
    series: i64,
    from_ms: i64,
    to_ms: i64,
) -> Result<Vec<(i64, f64, bool)>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT ts, value, flags FROM readings WHERE series = ?1 AND ts >= ?2 AND ts < ?3 ORDER BY ts",
    )?;
    let rows = stmt
        .query_map(params![series, from_ms, to_ms], |r| {
            Ok((r.get(0)?, r.get(1)?, left_out(r.get(2)?)))
        })?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}

/// Keeps the summary of one series' day, unless one is kept already.
pub fn keep_summary(
    conn: &Connection,
    series: i64,
    day: Day,
    utc_offset_ms: i64,
    d: &DeviceDay,
) -> Result<(), StoreError> {
    let w = &d.window;
    let finite = |v: f64| v.is_finite().then_some(v);
    conn.prepare_cached(
        "INSERT OR IGNORE INTO series_days (series, day, utc_offset_ms, covered_hours, readings, \
         left_out, min, max, sum, mean, frost_hours, heat_hours) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
    )?
    .execute(params![
        series,
        day.0,
        utc_offset_ms,
        w.covered_hours,
        w.readings,
        d.left_out,
        finite(w.min),
        finite(w.max),
        w.sum,
        finite(w.mean),
        d.frost_hours,
        d.heat_hours
    ])?;
    Ok(())
}

/// Whether a summary of the series' day is kept.
pub fn has_summary(
    conn: &Connection,
    series: i64,
    day: Day,
    utc_offset_ms: i64,
) -> Result<bool, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM series_days WHERE series = ?1 AND day = ?2 AND utc_offset_ms = ?3)",
        )?
        .query_row(params![series, day.0, utc_offset_ms], |r| r.get(0))?)
}

struct Series {
    /// The device as the indices average it.
    device: String,
    kind: Kind,
    gap_limit_ms: i64,
}

impl Series {
    /// An empty day of this series, or its kept summary.
    fn readings(&self, summary: Option<DeviceDay>) -> SeriesReadings {
        SeriesReadings {
            device: self.device.clone(),
            kind: self.kind,
            gap_limit_ms: self.gap_limit_ms,
            readings: Vec::new(),
            summary,
        }
    }
}

/// The block's series of the kinds the indices use.
pub struct BlockSeries {
    series: BTreeMap<i64, Series>,
}

impl BlockSeries {
    /// `default_interval` is how often a device reports when the registry does not say
    /// (`health.expected_interval`); readings more than twice its interval apart (and at
    /// least an hour) leave the time between them uncovered.
    pub fn of(
        conn: &Connection,
        orchard: &Ident,
        block: &Ident,
        default_interval: Duration,
    ) -> Result<Self, StoreError> {
        let mut stmt = conn.prepare(
            "SELECT s.id, s.device, s.depth_cm, s.kind, d.expected_interval_ms FROM series s \
             LEFT JOIN devices d ON d.id = lower(s.device) \
             WHERE s.orchard = ?1 AND s.block = ?2",
        )?;
        let rows = stmt.query_map(params![orchard.as_str(), block.as_str()], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<i64>>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, Option<i64>>(4)?,
            ))
        })?;
        let mut series = BTreeMap::new();
        for row in rows {
            let (id, device, depth, kind, interval_ms) = row?;
            let Some(kind) = kind
                .parse::<Kind>()
                .ok()
                .filter(|k| indices::KINDS.contains(k))
            else {
                continue;
            };
            // A probe at several depths is several devices as far as averaging goes.
            let device = match depth {
                Some(d) => format!("{device}@{d}cm"),
                None => device,
            };
            let gap_limit_ms =
                gap_limit_ms(interval_ms.unwrap_or(default_interval.as_millis() as i64));
            series.insert(
                id,
                Series {
                    device,
                    kind,
                    gap_limit_ms,
                },
            );
        }
        Ok(Self { series })
    }

    /// Each series' readings of the local day `day` and its gap limit either side, in time
    /// order, with those flagged as spikes or stuck marked, or the kept summary of the day
    /// where retention has deleted its readings: handed to `each` one series at a time, so a
    /// block's day is never in memory at once.
    ///
    /// One small statement per series rather than one naming every series of the block: a
    /// block of 5 000 series made a 5 MB statement, kept in each connection's cache.
    pub fn around(
        &self,
        conn: &Connection,
        day: Day,
        utc_offset_ms: i64,
        each: &mut dyn FnMut(SeriesReadings),
    ) -> Result<(), StoreError> {
        let from_ms = day.start_ms(utc_offset_ms);
        let to_ms = from_ms + DAY_MS;
        let mut summaries = conn.prepare_cached(
            "SELECT covered_hours, readings, left_out, min, max, sum, mean, frost_hours, \
             heat_hours FROM series_days WHERE series = ?1 AND day = ?2 AND utc_offset_ms = ?3",
        )?;
        let mut readings = conn.prepare_cached(
            "SELECT ts, value, flags FROM readings WHERE series = ?1 AND ts >= ?2 AND ts < ?3 \
             ORDER BY ts",
        )?;
        for (&id, s) in &self.series {
            let summary = summaries
                .query_row(params![id, day.0, utc_offset_ms], summary_of)
                .optional()?;
            if summary.is_some() {
                each(s.readings(summary));
                continue;
            }
            let mut out = s.readings(None);
            let rows = readings.query_map(
                params![id, from_ms - s.gap_limit_ms, to_ms + s.gap_limit_ms],
                |r| Ok((r.get(0)?, r.get(1)?, left_out(r.get(2)?))),
            )?;
            for row in rows {
                out.readings.push(row?);
            }
            if !out.readings.is_empty() {
                each(out);
            }
        }
        Ok(())
    }
}

/// A day as `series_days` keeps it.
fn summary_of(r: &rusqlite::Row<'_>) -> rusqlite::Result<DeviceDay> {
    let nan = |v: Option<f64>| v.unwrap_or(f64::NAN);
    Ok(DeviceDay {
        window: Window {
            covered_hours: r.get(0)?,
            readings: r.get(1)?,
            min: nan(r.get(3)?),
            max: nan(r.get(4)?),
            sum: r.get(5)?,
            mean: nan(r.get(6)?),
        },
        left_out: r.get(2)?,
        frost_hours: r.get(7)?,
        heat_hours: r.get(8)?,
    })
}
