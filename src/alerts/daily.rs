//! Daily-index rules: conditions on a block's daily indices (the water balance's irrigation
//! need, wet hours at a mean temperature, frost and heat hours), judged on yesterday's
//! finished day and today's so far.
//!
//! The indices are computed from the raw readings each time, as `GET /api/v1/indices` does, so
//! a late or redelivered reading changes the next judgement and nothing else: judging the same
//! readings twice gives the same alerts. A block is judged when orchardd starts, after each
//! local midnight, and at most every `alerts.daily_every` while its devices report.
//!
//! A day whose conditions hold opens the rule's alert for the block, once per day (staff
//! resolving it do not bring it back for that day). The alert resolves when yesterday's day
//! does not hold and today's does not either. A day without a figure for a tested index
//! follows the rule's `on_no_data`: `hold` neither fires nor resolves, `fire` counts as
//! holding, `ignore` as not.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{OptionalExtension, Transaction, params};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::absence::SharedActivity;
use super::rules::{Daily, Filled, OnNoData, Rule};
use super::store::{self as alerts, Firing, Subject};
use crate::aggregate::indices::{self, Agronomy, Day, DayIndices};
use crate::model::{Ident, TimestampMs};
use crate::store::block::BlockSeries;
use crate::store::{Admin, ReadPool, StoreError, irrigation};

/// How often blocks are looked at to see whether one is due.
const TICK: Duration = Duration::from_secs(10);

/// Whether a day meets a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holds {
    Yes,
    No,
    /// A tested index has no figure and the rule holds (`on_no_data = "hold"`).
    Unknown,
}

/// Whether day `day` of a block, with indices `d`, meets the rule; `harvest` is the month
/// and day the block's harvest begins, if its `[[blocks]]` entry says.
pub fn holds(
    rule: &Rule,
    daily: &Daily,
    (day, d): (Day, &DayIndices),
    harvest: Option<(time::Month, u8)>,
    utc_offset_ms: i64,
) -> Holds {
    // Noon, so that the day's month is the day's own at any offset.
    if !rule.in_months(day.start_ms(utc_offset_ms) + 43_200_000, utc_offset_ms) {
        return Holds::No;
    }
    if let (Some(n), Some(h)) = (daily.not_before_harvest_days, harvest)
        && days_to_harvest(day, h) < n
    {
        return Holds::No;
    }
    let mut unknown = false;
    for (name, bound) in &daily.when {
        match d.value(name).flatten() {
            Some(v) if !bound.holds(v) => return Holds::No,
            Some(_) => {}
            None => unknown = true,
        }
    }
    match (unknown, rule.on_no_data) {
        (false, _) | (true, OnNoData::Fire) => Holds::Yes,
        (true, OnNoData::Hold) => Holds::Unknown,
        (true, OnNoData::Ignore) => Holds::No,
    }
}

/// Whole days from `day` to the next start of harvest on or after it (0 on the day itself).
fn days_to_harvest(day: Day, (month, dom): (time::Month, u8)) -> i64 {
    let date = day.date();
    let on = |year: i32| time::Date::from_calendar_date(year, month, dom).ok();
    match on(date.year())
        .filter(|h| *h >= date)
        .or_else(|| on(date.year() + 1))
    {
        Some(h) => (h - date).whole_days(),
        None => i64::MAX,
    }
}

/// What a judgement of one rule and block does.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Open the alert for this day, unless one was opened for it before.
    Fire(Day),
    /// Resolve the open alert.
    Resolve,
}

/// The verdicts for yesterday's and today's figures.
pub fn judge(yesterday: (Day, Holds), today: (Day, Holds)) -> Vec<Verdict> {
    let mut out: Vec<Verdict> = [yesterday, today]
        .into_iter()
        .filter(|(_, h)| *h == Holds::Yes)
        .map(|(d, _)| Verdict::Fire(d))
        .collect();
    if yesterday.1 == Holds::No && today.1 != Holds::Yes {
        out.push(Verdict::Resolve);
    }
    out
}

/// Whether a block last judged at `last` (wall clock, and the local day it was) is due at
/// `now`, on `today`, its devices last heard at `touched`.
pub fn due(last: Option<(i64, Day)>, touched: i64, now: i64, today: Day, every: Duration) -> bool {
    match last {
        None => true,
        Some((at, day)) => day != today || (touched > at && now - at >= every.as_millis() as i64),
    }
}

/// A verdict, with the indices of the day it fires for.
type Judged = (Verdict, Option<DayIndices>);

/// Opens or resolves one rule's alert for a block by `verdicts`; true if it changed one.
fn apply(
    tx: &Transaction<'_>,
    rule: &Rule,
    (orchard, block): (&Ident, &Ident),
    verdicts: &[Judged],
    utc_offset_ms: i64,
    now: i64,
) -> Result<bool, StoreError> {
    let scope = format!("{orchard}/{block}");
    let mut changed = false;
    for (verdict, d) in verdicts {
        match (verdict, d) {
            (Verdict::Resolve, _) => {
                changed |= alerts::close(tx, &rule.id, &scope, now, None)?.is_some();
            }
            (Verdict::Fire(day), Some(d)) => {
                let since = day.start_ms(utc_offset_ms);
                let before: Option<i64> = tx
                    .prepare_cached(
                        "SELECT id FROM alerts WHERE rule = ?1 AND scope = ?2 AND since = ?3",
                    )?
                    .query_row(params![rule.id, scope, since], |r| r.get(0))
                    .optional()?;
                if before.is_some() {
                    continue;
                }
                // The alert's value: the first tested index that has a figure (SQLite would
                // store a NaN as NULL).
                let first = rule
                    .daily
                    .iter()
                    .flat_map(|r| &r.when)
                    .find_map(|(name, _)| d.value(name).flatten());
                let subject = Subject {
                    scope: &scope,
                    orchard: orchard.as_str(),
                    block: block.as_str(),
                    device: "",
                    kind: "",
                };
                let firing = Firing {
                    since,
                    at: now,
                    value: first.unwrap_or(0.0),
                    threshold: rule.threshold.enter,
                };
                let more = |name: &str| match name {
                    "date" => Some(Filled::Text(d.date.clone())),
                    _ => d.value(name).map(|v| match v {
                        Some(v) => Filled::Number(v),
                        None => Filled::Text("?".into()),
                    }),
                };
                changed |= alerts::open(tx, rule, &subject, firing, more)?.is_some();
            }
            (Verdict::Fire(_), None) => {}
        }
    }
    Ok(changed)
}

/// The indices of yesterday and today for one block, from the store. The season is walked
/// from its start only when `seasonal` (a rule tests the water balance or a season sum) and
/// the block has a site, without which the balance is unknown anyway.
async fn two_days(
    pool: &ReadPool,
    agronomy: &Agronomy,
    (orchard, block): (&Ident, &Ident),
    today: Day,
    default_interval: Duration,
    seasonal: bool,
) -> Result<Vec<DayIndices>, StoreError> {
    let params = agronomy.params(orchard.as_str(), block.as_str());
    let (o, b) = (orchard.clone(), block.clone());
    let (first, end) = (Day(today.0 - 1), Day(today.0 + 1));
    let walk = seasonal && params.site.is_some();
    pool.read(move |c| {
        let offset = params.utc_offset_ms;
        let from = if walk {
            params.season_start_of(first)
        } else {
            first
        };
        let entered = irrigation::per_day(c, &o, &b, from, end)?;
        let series = BlockSeries::of(c, &o, &b, default_interval)?;
        let readings_of = |day: Day, each: &mut dyn FnMut(_)| series.around(c, day, offset, each);
        if walk {
            indices::compute(&params, first, end, readings_of, &entered)
        } else {
            indices::compute_without_season(&params, first, end, readings_of, &entered)
        }
    })
    .await
}

/// Everything the daily rules' task needs.
pub struct DailyRules {
    pub pool: ReadPool,
    pub admin: Admin,
    pub agronomy: Arc<Agronomy>,
    pub activity: SharedActivity,
    pub rules: watch::Receiver<Arc<Vec<Rule>>>,
    pub every: Duration,
    pub default_interval: Duration,
    pub changed: Arc<watch::Sender<u64>>,
}

impl DailyRules {
    /// Judges the blocks as they fall due, until `shutdown`.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut last: HashMap<(Ident, Ident), (i64, Day)> = HashMap::new();
        let mut current: Arc<Vec<Rule>> = self.rules.borrow_and_update().clone();
        let mut ticks = tokio::time::interval(TICK);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = shutdown.cancelled() => return,
            }
            if self.rules.has_changed().unwrap_or(false) {
                current = self.rules.borrow_and_update().clone();
                // New rules: every block is judged by them at once.
                last.clear();
            }
            if !current.iter().any(|r| r.daily.is_some()) {
                continue;
            }
            let blocks = self
                .activity
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .blocks();
            for ((orchard, block), touched) in blocks {
                let offset = self
                    .agronomy
                    .params(orchard.as_str(), block.as_str())
                    .utc_offset_ms;
                let now = TimestampMs::now().0;
                let today = Day::of(now, offset);
                let key = (orchard, block);
                if !due(last.get(&key).copied(), touched, now, today, self.every) {
                    continue;
                }
                last.insert(key.clone(), (now, today));
                if let Err(e) = self.judge_block(&current, &key, today, offset).await {
                    tracing::error!(error = %e, orchard = %key.0, block = %key.1, "daily alert rules: cannot judge the block; trying again");
                    last.remove(&key);
                }
            }
        }
    }

    async fn judge_block(
        &self,
        rules: &Arc<Vec<Rule>>,
        (orchard, block): &(Ident, Ident),
        today: Day,
        offset: i64,
    ) -> Result<(), StoreError> {
        let watching: Vec<&Rule> = rules
            .iter()
            // A daily rule names no devices, so any stands in for one.
            .filter(|r| r.daily.is_some() && r.covers(orchard, block, block))
            .collect();
        if watching.is_empty() {
            return Ok(());
        }
        // A season index tested, or named in an action text.
        let seasonal = watching.iter().any(|r| {
            let named = |n: &&str| {
                let p = format!("{{{n}");
                r.action.en.contains(&p) || r.action.zh.contains(&p)
            };
            r.daily.as_ref().is_some_and(|d| {
                d.when
                    .iter()
                    .any(|(name, _)| indices::SEASONAL.contains(&name.as_str()))
            }) || indices::SEASONAL.iter().any(named)
        });
        let days = two_days(
            &self.pool,
            &self.agronomy,
            (orchard, block),
            today,
            self.default_interval,
            seasonal,
        )
        .await?;
        let [yesterday, now_day] = &days[..] else {
            return Ok(());
        };
        let harvest = self
            .agronomy
            .params(orchard.as_str(), block.as_str())
            .harvest_from;
        let mut work: Vec<(usize, Vec<Judged>)> = Vec::new();
        for (i, rule) in rules.iter().enumerate() {
            let Some(daily) = &rule.daily else { continue };
            if !watching.iter().any(|r| r.id == rule.id) {
                continue;
            }
            let y = (
                Day(today.0 - 1),
                holds(rule, daily, (Day(today.0 - 1), yesterday), harvest, offset),
            );
            let t = (today, holds(rule, daily, (today, now_day), harvest, offset));
            let verdicts: Vec<_> = judge(y, t)
                .into_iter()
                .map(|v| {
                    let d = match v {
                        Verdict::Fire(day) if day == today => Some(now_day.clone()),
                        Verdict::Fire(_) => Some(yesterday.clone()),
                        Verdict::Resolve => None,
                    };
                    (v, d)
                })
                .collect();
            if !verdicts.is_empty() {
                work.push((i, verdicts));
            }
        }
        if work.is_empty() {
            return Ok(());
        }
        let (rules, o, b) = (rules.clone(), orchard.clone(), block.clone());
        let changed = self
            .admin
            .write(move |conn| {
                let tx = conn.transaction()?;
                let now = TimestampMs::now().0;
                let mut changed = false;
                for (i, verdicts) in &work {
                    changed |= apply(&tx, &rules[*i], (&o, &b), verdicts, offset, now)?;
                }
                tx.commit()?;
                Ok(changed)
            })
            .await?;
        if changed {
            self.changed.send_modify(|g| *g += 1);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Day = Day(20_000);

    #[test]
    fn days_to_harvest_count_to_the_next_start_of_harvest_on_or_after_the_day() {
        let day = |y, m, d| Day::from_date(time::Date::from_calendar_date(y, m, d).unwrap());
        let nov_15 = (time::Month::November, 15);
        assert_eq!(
            days_to_harvest(day(2026, time::Month::October, 16), nov_15),
            30
        );
        assert_eq!(
            days_to_harvest(day(2026, time::Month::November, 15), nov_15),
            0
        );
        // Harvest has begun: the next one is a year away.
        assert_eq!(
            days_to_harvest(day(2026, time::Month::November, 16), nov_15),
            364
        );
        let jan_10 = (time::Month::January, 10);
        assert_eq!(
            days_to_harvest(day(2026, time::Month::December, 31), jan_10),
            10
        );
    }

    #[test]
    fn a_day_that_holds_fires_once_and_a_finished_day_that_does_not_resolves() {
        use Holds::*;
        let y = |h| (Day(DAY.0 - 1), h);
        let t = |h| (DAY, h);
        assert_eq!(judge(y(Yes), t(Unknown)), [Verdict::Fire(Day(DAY.0 - 1))]);
        assert_eq!(judge(y(No), t(Yes)), [Verdict::Fire(DAY)]);
        assert_eq!(judge(y(No), t(Unknown)), [Verdict::Resolve]);
        assert_eq!(judge(y(No), t(No)), [Verdict::Resolve]);
        // Unknown is not resolved.
        assert_eq!(judge(y(Unknown), t(No)), []);
    }

    #[test]
    fn on_the_shipped_default_a_reporting_block_is_judged_every_five_minutes_and_at_midnight() {
        let every = crate::config::AlertSettings::default().daily_every;
        assert_eq!(every, Duration::from_secs(300));
        let at = 1_000_000;
        assert!(due(None, 0, at, DAY, every), "first look");
        assert!(!due(Some((at, DAY)), at + 1, at + 60_000, DAY, every));
        assert!(due(Some((at, DAY)), at + 1, at + 300_000, DAY, every));
        // Nothing new from the block: no need, until the day turns.
        assert!(!due(Some((at, DAY)), at - 1, at + 3_600_000, DAY, every));
        assert!(due(
            Some((at, DAY)),
            at - 1,
            at + 60_000,
            Day(DAY.0 + 1),
            every
        ));
    }
}
