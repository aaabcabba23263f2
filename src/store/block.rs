//! The raw readings one block's daily indices are made from, read a day at a time.

use std::collections::HashMap;
use std::time::Duration;

use rusqlite::{Connection, params};

use super::StoreError;
use crate::aggregate::indices::{self, DAY_MS, HOUR_MS, SeriesReadings};
use crate::model::{Flags, Ident, Kind};

/// The shortest gap limit: readings an hour apart always cover the hour between them.
const MIN_GAP_LIMIT_MS: i64 = HOUR_MS;

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
            let interval_ms = interval_ms.unwrap_or(default_interval.as_millis() as i64);
            let gap_limit_ms = (2 * interval_ms).clamp(MIN_GAP_LIMIT_MS, 2 * DAY_MS);
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

    /// Each series' readings in `[from_ms, to_ms)` and a gap limit either side, in time
    /// order, with those flagged as spikes or stuck marked.
    pub fn around(
        &self,
        conn: &Connection,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<SeriesReadings>, StoreError> {
        if self.series.is_empty() {
            return Ok(Vec::new());
        }
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
        let bad = Flags(Flags::SPIKE.0 | Flags::STUCK.0);
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
                });
            }
            let flagged = Flags(flags & bad.0) != Flags::default();
            if let Some(last) = out.last_mut() {
                last.readings.push((ts, value, flagged));
            }
        }
        Ok(out)
    }
}
