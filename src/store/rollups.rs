//! Hourly and daily rollups per series: count, min, max, sum (hence mean) and last.
//!
//! Maintained in the writer's transaction from the readings that transaction really inserted,
//! so a late reading updates the window it belongs to and a redelivered one changes nothing.
//! A batch is folded in memory first and written as one upsert per touched window. Days are
//! local days at the configured UTC offset, so a frost night is not split at UTC midnight.

use std::collections::HashMap;

use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, Transaction, params, params_from_iter};
use serde::Serialize;

use super::StoreError;
use crate::model::{Ident, Kind, TimestampMs};

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 86_400_000;

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

    /// The start of the window holding `ts`, with days starting at local midnight.
    pub fn start(self, ts: i64, utc_offset_ms: i64) -> i64 {
        let (len, shift) = match self {
            Period::Hour => (HOUR_MS, 0),
            Period::Day => (DAY_MS, utc_offset_ms),
        };
        (ts + shift).div_euclid(len) * len - shift
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
    let mut clauses = vec!["r.period = ?"];
    let mut args = vec![SqlValue::Text(period.as_str().into())];
    let mut add = |clause: &'static str, v: Option<SqlValue>| {
        if let Some(v) = v {
            clauses.push(clause);
            args.push(v);
        }
    };
    let text = |i: &Option<Ident>| i.as_ref().map(|i| SqlValue::Text(i.to_string()));
    add("s.orchard = ?", text(&f.orchard));
    add("s.block = ?", text(&f.block));
    add("s.device = ?", text(&f.device));
    add(
        "s.kind = ?",
        f.kind.map(|k| SqlValue::Text(k.name().into())),
    );
    add("r.start >= ?", f.from.map(|t| SqlValue::Integer(t.0)));
    add("r.start < ?", f.to.map(|t| SqlValue::Integer(t.0)));
    args.push(SqlValue::Integer(f.limit as i64));
    let sql = format!(
        "SELECT s.orchard, s.block, s.device, s.kind, s.depth_cm, r.start, r.count, r.min, r.max, r.sum, r.last \
         FROM rollups r JOIN series s ON s.id = r.series WHERE {} \
         ORDER BY r.start, s.orchard, s.block, s.device, s.kind, s.depth_cm LIMIT ?",
        clauses.join(" AND ")
    );
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt
        .query_map(params_from_iter(args), |r| {
            let count: i64 = r.get(6)?;
            let sum: f64 = r.get(9)?;
            Ok(Rollup {
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
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(rows)
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
