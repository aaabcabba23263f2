//! A block's season in numbers, from the season start to a harvest day: what the
//! traceability record, the public page, the listing and the season report tell of how the
//! fruit was grown. Computed from the stored readings each time, like the daily indices, so a
//! late reading is in it.

use std::time::Duration;

use rusqlite::{Connection, params};
use serde::Serialize;

use crate::aggregate::indices::{self, Agronomy, Day, DayIndices};
use crate::model::Ident;
use crate::store::StoreError;
use crate::store::block::BlockSeries;
use crate::store::irrigation;

/// `v` to `places` decimals, for people to read; an empty sum's `-0.0` reads as `0`.
pub(crate) fn round(v: f64, places: i32) -> f64 {
    let f = 10f64.powi(places);
    (v * f).round() / f + 0.0
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Season {
    /// The season's first day and the last day counted (the harvest), local dates.
    pub from: String,
    pub to: String,
    pub days: u32,
    /// Growing degree days above the block's base.
    pub gdd: f64,
    pub gdd_base_c: f64,
    pub frost_hours: f64,
    pub heat_hours: f64,
    pub rain_mm: f64,
    pub irrigation_mm: f64,
    /// Days whose water balance ended deeper than the target depletion (irrigation called for).
    pub water_deficit_days: u32,
    /// Days without any air temperature reading: the sums above leave them out.
    pub days_without_temperature: u32,
    /// The mean TSS and acidity of the fruit samples taken in the block this season.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub samples_tss_brix: Option<f64>,
    pub alerts: Vec<AlertCount>,
}

/// The alerts of one rule in the block this season, and how staff handled them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlertCount {
    pub rule: String,
    pub severity: String,
    /// What the rule recommends, from its latest alert.
    pub action_en: String,
    pub action_zh: String,
    pub fired: u32,
    pub acknowledged: u32,
    /// Resolved by staff; the rest of the resolved ones cleared by themselves.
    pub resolved_by_staff: u32,
    pub resolved_automatically: u32,
    pub still_open: u32,
}

impl Season {
    /// The block's season through `last` (inclusive).
    pub fn of(
        conn: &Connection,
        agronomy: &Agronomy,
        orchard: &Ident,
        block: &Ident,
        last: Day,
        default_interval: Duration,
    ) -> Result<Season, StoreError> {
        let params = agronomy.params(orchard.as_str(), block.as_str());
        let offset = params.utc_offset_ms;
        let first = params.season_start_of(last);
        let end = Day(last.0 + 1);
        let entered = irrigation::per_day(conn, orchard, block, first, end)?;
        let series = BlockSeries::of(conn, orchard, block, default_interval)?;
        let days = indices::compute(
            &params,
            first,
            end,
            |day: Day, each: &mut dyn FnMut(_)| series.around(conn, day, offset, each),
            &entered,
        )?;
        let from_ms = first.start_ms(offset);
        let to_ms = end.start_ms(offset);
        let mut season = Season::sum(&days, first, last, params.gdd_base_c);
        season.alerts = alert_counts(conn, orchard, block, from_ms, to_ms)?;
        Ok(season)
    }

    fn sum(days: &[DayIndices], first: Day, last: Day, gdd_base_c: f64) -> Season {
        let total = |f: fn(&DayIndices) -> Option<f64>| days.iter().filter_map(f).sum::<f64>();
        let samples: Vec<f64> = days.iter().filter_map(|d| d.tss_brix).collect();
        Season {
            from: first.date().to_string(),
            to: last.date().to_string(),
            days: days.len() as u32,
            gdd: round(days.last().map_or(0.0, |d| d.gdd_season), 1),
            gdd_base_c,
            frost_hours: round(total(|d| d.frost_hours), 1),
            heat_hours: round(total(|d| d.heat_hours), 1),
            rain_mm: round(total(|d| d.rain_mm), 1),
            irrigation_mm: round(days.iter().map(|d| d.irrigation_mm).sum(), 1),
            water_deficit_days: days
                .iter()
                .filter(|d| d.irrigation_needed_mm.is_some_and(|mm| mm > 0.0))
                .count() as u32,
            days_without_temperature: days.iter().filter(|d| d.t_mean_c.is_none()).count() as u32,
            samples_tss_brix: (!samples.is_empty())
                .then(|| round(samples.iter().sum::<f64>() / samples.len() as f64, 2)),
            alerts: Vec::new(),
        }
    }
}

/// Per rule, the alerts of the block (its devices', and the block's own) whose condition began
/// to hold in `[from, to)`, reading time: a daily rule's alert for the harvest day counts even
/// when it was judged the morning after.
fn alert_counts(
    conn: &Connection,
    orchard: &Ident,
    block: &Ident,
    from_ms: i64,
    to_ms: i64,
) -> Result<Vec<AlertCount>, StoreError> {
    // The severity and action of each rule's latest alert in the block speak for the rule.
    let mut stmt = conn.prepare(
        "SELECT a.rule, l.severity, l.action_en, l.action_zh, count(*), count(a.acked_by), \
                sum(a.state = 'resolved' AND a.resolved_by IS NOT NULL), \
                sum(a.state = 'resolved' AND a.resolved_by IS NULL), \
                sum(a.state != 'resolved') \
         FROM alerts a JOIN alerts l ON l.id = (SELECT max(id) FROM alerts m \
              WHERE m.rule = a.rule AND m.orchard = a.orchard AND m.block = a.block \
              AND m.since >= ?3 AND m.since < ?4) \
         WHERE a.orchard = ?1 AND a.block = ?2 AND a.since >= ?3 AND a.since < ?4 \
         GROUP BY a.rule ORDER BY count(*) DESC, a.rule",
    )?;
    let rows = stmt
        .query_map(
            params![orchard.as_str(), block.as_str(), from_ms, to_ms],
            |r| {
                Ok(AlertCount {
                    rule: r.get(0)?,
                    severity: r.get(1)?,
                    action_en: r.get(2)?,
                    action_zh: r.get(3)?,
                    fired: r.get(4)?,
                    acknowledged: r.get(5)?,
                    resolved_by_staff: r.get(6)?,
                    resolved_automatically: r.get(7)?,
                    still_open: r.get(8)?,
                })
            },
        )?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}
