//! The threshold rule's state machine for one series: enter past a threshold for a duration,
//! clear past a second threshold (hysteresis) for a second duration, all on reading time.
//!
//! Pure: the writer feeds it readings in time order and stores the state it returns whenever
//! the state changes, in the transaction that stores the reading, so a restart neither loses
//! nor restarts a duration in progress. A gap longer than the series' gap limit makes the
//! condition unknown: a duration being counted starts again, and a firing alert stays firing
//! (unknown is not resolved).

use serde::{Deserialize, Serialize};

/// Which side of a threshold counts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    Below,
    Above,
}

impl Side {
    /// `value` is at or past `threshold` on this side.
    pub fn past(self, value: f64, threshold: f64) -> bool {
        match self {
            Side::Below => value <= threshold,
            Side::Above => value >= threshold,
        }
    }

    pub fn opposite(self) -> Side {
        match self {
            Side::Below => Side::Above,
            Side::Above => Side::Below,
        }
    }
}

/// A threshold rule's numbers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Threshold {
    pub side: Side,
    pub enter: f64,
    pub enter_for_ms: i64,
    /// Clears when the value is past this on the other side, for `clear_for_ms`.
    pub clear: f64,
    pub clear_for_ms: i64,
}

/// Where one series stands with one rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Progress {
    /// Not firing, and the condition does not hold.
    Quiet,
    /// The condition has held since `since` (reading time, ms), not yet for long enough.
    Entering { since: i64 },
    /// Firing since `since`: the time the condition started to hold.
    Firing { since: i64 },
    /// Firing, and the clear condition has held since `clearing`.
    Clearing { since: i64, clearing: i64 },
}

/// What a reading did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Change {
    /// The alert fires: the condition has held since `since`.
    Fire { since: i64 },
    /// The alert resolves: the clear condition has held since `since`.
    Resolve { since: i64 },
}

impl Threshold {
    /// The next progress after a reading `(ts, value)` whose predecessor in the series was at
    /// `last_ts` (`None`: none known), and the change it makes.
    pub fn step(
        &self,
        p: Progress,
        last_ts: Option<i64>,
        ts: i64,
        value: f64,
        gap_limit_ms: i64,
    ) -> (Progress, Option<Change>) {
        let gap = last_ts.is_none_or(|l| ts - l > gap_limit_ms);
        // Unknown in between: a duration being counted starts again from this reading.
        let p = match p {
            Progress::Entering { .. } if gap => Progress::Quiet,
            Progress::Clearing { since, .. } if gap => Progress::Firing { since },
            p => p,
        };
        let entered = self.side.past(value, self.enter);
        let cleared = self.side.opposite().past(value, self.clear) && !entered;
        match p {
            Progress::Quiet if entered => self.entering(ts, ts),
            Progress::Quiet => (Progress::Quiet, None),
            Progress::Entering { since } if entered => self.entering(since, ts),
            Progress::Entering { .. } => (Progress::Quiet, None),
            Progress::Firing { since } if cleared => self.clearing(since, ts, ts),
            Progress::Firing { since } => (Progress::Firing { since }, None),
            Progress::Clearing { since, clearing } if cleared => self.clearing(since, clearing, ts),
            Progress::Clearing { since, .. } => (Progress::Firing { since }, None),
        }
    }

    fn entering(&self, since: i64, now: i64) -> (Progress, Option<Change>) {
        if now - since >= self.enter_for_ms {
            (Progress::Firing { since }, Some(Change::Fire { since }))
        } else {
            (Progress::Entering { since }, None)
        }
    }

    fn clearing(&self, since: i64, clearing: i64, now: i64) -> (Progress, Option<Change>) {
        if now - clearing >= self.clear_for_ms {
            (Progress::Quiet, Some(Change::Resolve { since: clearing }))
        } else {
            (Progress::Clearing { since, clearing }, None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;

    /// Frost: at or below 0 °C for 30 minutes; clear at or above 1 °C for 30 minutes.
    fn frost() -> Threshold {
        Threshold {
            side: Side::Below,
            enter: 0.0,
            enter_for_ms: 30 * MIN,
            clear: 1.0,
            clear_for_ms: 30 * MIN,
        }
    }

    /// Runs readings every 10 minutes through the rule; returns the changes with their minute.
    fn run(t: &Threshold, values: &[f64]) -> (Progress, Vec<(i64, Change)>) {
        let mut p = Progress::Quiet;
        let mut last = None;
        let mut changes = Vec::new();
        for (i, v) in values.iter().enumerate() {
            let ts = i as i64 * 10 * MIN;
            let (next, change) = t.step(p, last, ts, *v, 20 * MIN);
            if let Some(c) = change {
                changes.push((ts / MIN, c));
            }
            p = next;
            last = Some(ts);
        }
        (p, changes)
    }

    #[test]
    fn a_frost_fires_after_its_duration_and_resolves_after_the_clear_duration() {
        let night = [
            2.0, 0.5, -0.5, -1.0, -1.5, -2.0, -1.0, 0.5, 1.2, 1.5, 2.0, 3.0,
        ];
        let (end, changes) = run(&frost(), &night);
        assert_eq!(
            changes,
            [
                (50, Change::Fire { since: 20 * MIN }),
                (110, Change::Resolve { since: 80 * MIN })
            ]
        );
        assert_eq!(end, Progress::Quiet);
    }

    #[test]
    fn oscillating_around_the_threshold_fires_once_and_does_not_flap() {
        // ±0.3 °C around 0 for six hours: once in, it never rises to the clear threshold.
        let values: Vec<f64> = (0..36)
            .map(|i| if i % 2 == 0 { -0.3 } else { 0.3 })
            .collect();
        let mut t = frost();
        t.enter_for_ms = 0;
        let (end, changes) = run(&t, &values);
        assert_eq!(changes, [(0, Change::Fire { since: 0 })]);
        assert!(matches!(end, Progress::Firing { .. }));
    }

    #[test]
    fn a_gap_makes_the_condition_unknown_not_resolved() {
        let t = frost();
        // Firing, then the clear condition holds, then a silence longer than the gap limit:
        // the alert stays firing and the clear duration starts again.
        let p = Progress::Clearing {
            since: 0,
            clearing: 60 * MIN,
        };
        let (p, change) = t.step(p, Some(80 * MIN), 200 * MIN, 2.0, 20 * MIN);
        assert_eq!(change, None);
        assert_eq!(
            p,
            Progress::Clearing {
                since: 0,
                clearing: 200 * MIN
            }
        );
        // Entering, then a silence: counting starts again from the reading after it.
        let (p, change) = t.step(
            Progress::Entering { since: 0 },
            Some(20 * MIN),
            100 * MIN,
            -1.0,
            20 * MIN,
        );
        assert_eq!(change, None);
        assert_eq!(p, Progress::Entering { since: 100 * MIN });
    }

    #[test]
    fn progress_round_trips_through_json_as_the_store_keeps_it() {
        for p in [
            Progress::Quiet,
            Progress::Entering { since: 5 },
            Progress::Firing { since: 7 },
            Progress::Clearing {
                since: 7,
                clearing: 9,
            },
        ] {
            let text = serde_json::to_string(&p).unwrap();
            assert_eq!(serde_json::from_str::<Progress>(&text).unwrap(), p);
        }
    }
}
