//! The raw readings one block's daily indices are made from, read a day at a time, and the
//! summaries of the days whose readings retention has deleted (`series_days`).

use std::collections::HashMap;
use std::time::Duration;

use rusqlite::{Connection, params};

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

/// The block's series of the kinds the indices use.
pub struct BlockSeries {
    series: HashMap<i64, Series>,
    ids: String,
    /// How far either side of a day to read, so that its edges are covered.
    margin_ms: i64,
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
        let mut series = HashMap::new();
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
        let ids = series
            .keys()
            .map(i64::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let margin_ms = series.values().map(|s| s.gap_limit_ms).max().unwrap_or(0);
        Ok(Self {
            series,
            ids,
            margin_ms,
        })
    }

    /// Each series' readings of the local day `day` and a gap limit either side, in time
    /// order, with those flagged as spikes or stuck marked; and the kept summary of the day
    /// where retention has deleted its readings.
    pub fn around(
        &self,
        conn: &Connection,
        day: Day,
        utc_offset_ms: i64,
    ) -> Result<Vec<SeriesReadings>, StoreError> {
        if self.series.is_empty() {
            return Ok(Vec::new());
        }
        let from_ms = day.start_ms(utc_offset_ms);
        let to_ms = from_ms + DAY_MS;
        // The ids are integers this struct read from the store: safe to write into the SQL.
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT series, ts, value, flags FROM readings \
             WHERE series IN ({}) AND ts >= ?1 AND ts < ?2 ORDER BY series, ts",
            self.ids
        ))?;
        let rows = stmt.query_map(
            params![from_ms - self.margin_ms, to_ms + self.margin_ms],
            |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, f64>(2)?,
                    r.get::<_, u8>(3)?,
                ))
            },
        )?;
        let mut out: Vec<SeriesReadings> = Vec::new();
        let mut current = None;
        for row in rows {
            let (id, ts, value, flags) = row?;
            let s = &self.series[&id];
            // Keep only what this series' own gap limit reaches.
            if ts < from_ms - s.gap_limit_ms || ts >= to_ms + s.gap_limit_ms {
                continue;
            }
            if current != Some(id) {
                current = Some(id);
                out.push(SeriesReadings {
                    device: s.device.clone(),
                    kind: s.kind,
                    gap_limit_ms: s.gap_limit_ms,
                    readings: Vec::new(),
                    summary: None,
                });
            }
            if let Some(last) = out.last_mut() {
                last.readings.push((ts, value, left_out(flags)));
            }
        }
        self.add_summaries(conn, day, utc_offset_ms, &mut out)?;
        Ok(out)
    }

    fn add_summaries(
        &self,
        conn: &Connection,
        day: Day,
        utc_offset_ms: i64,
        out: &mut Vec<SeriesReadings>,
    ) -> Result<(), StoreError> {
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT series, covered_hours, readings, left_out, min, max, sum, mean, frost_hours, \
             heat_hours FROM series_days WHERE series IN ({}) AND day = ?1 AND utc_offset_ms = ?2",
            self.ids
        ))?;
        let rows = stmt.query_map(params![day.0, utc_offset_ms], |r| {
            let nan = |v: Option<f64>| v.unwrap_or(f64::NAN);
            Ok((
                r.get::<_, i64>(0)?,
                DeviceDay {
                    window: Window {
                        covered_hours: r.get(1)?,
                        readings: r.get(2)?,
                        min: nan(r.get(4)?),
                        max: nan(r.get(5)?),
                        sum: r.get(6)?,
                        mean: nan(r.get(7)?),
                    },
                    left_out: r.get(3)?,
                    frost_hours: r.get(8)?,
                    heat_hours: r.get(9)?,
                },
            ))
        })?;
        for row in rows {
            let (id, summary) = row?;
            let s = &self.series[&id];
            match out
                .iter_mut()
                .find(|r| r.device == s.device && r.kind == s.kind)
            {
                Some(r) => r.summary = Some(summary),
                None => out.push(SeriesReadings {
                    device: s.device.clone(),
                    kind: s.kind,
                    gap_limit_ms: s.gap_limit_ms,
                    readings: Vec::new(),
                    summary: Some(summary),
                }),
            }
        }
        Ok(())
    }
}
