//! One series over one window (a local day) from its readings: how much of the window they
//! cover, the time-weighted mean, the extremes, the sum, and the time spent past a threshold.
//!
//! Between two readings no more than the series' gap limit apart the value is taken to move
//! linearly from one to the other; that stretch is *covered*. A longer gap is not covered: it
//! counts for no duration, and a mean bridges it by the same straight line (held flat before
//! the first reading and after the last) unless the caller knows the value there, as it does
//! for solar radiation while the sun is below the horizon. Weighting by time rather than by
//! reading means a station that reports more often by day than by night biases nothing.

/// One reading: ms since the epoch and the value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub ts: i64,
    pub value: f64,
}

/// Which side of a threshold counts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Past {
    AtOrBelow(f64),
    AtOrAbove(f64),
}

/// A straight stretch of a series between two readings, clipped to a window.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Piece {
    t0: i64,
    v0: f64,
    t1: i64,
    v1: f64,
}

impl Piece {
    /// The line from `a` to `b`, cut to `[from, to)`; `None` when nothing is left.
    fn between(a: Sample, b: Sample, from: i64, to: i64) -> Option<Self> {
        let (t0, t1) = (a.ts.max(from), b.ts.min(to));
        if t1 <= t0 {
            return None;
        }
        let at = |t: i64| {
            if b.ts == a.ts {
                a.value
            } else {
                a.value + (b.value - a.value) * (t - a.ts) as f64 / (b.ts - a.ts) as f64
            }
        };
        Some(Self {
            t0,
            v0: at(t0),
            t1,
            v1: at(t1),
        })
    }

    fn ms(&self) -> f64 {
        (self.t1 - self.t0) as f64
    }

    /// ∫ value dt, value·ms.
    fn integral(&self) -> f64 {
        (self.v0 + self.v1) / 2.0 * self.ms()
    }

    /// ms of the piece spent at or past the threshold.
    fn time_past(&self, past: Past) -> f64 {
        // Mirror "above" into "below" so one case does both.
        let (v0, v1, c) = match past {
            Past::AtOrBelow(c) => (self.v0, self.v1, c),
            Past::AtOrAbove(c) => (-self.v0, -self.v1, -c),
        };
        match (v0 <= c, v1 <= c) {
            (true, true) => self.ms(),
            (false, false) => 0.0,
            (first, _) => {
                let share = (c - v0) / (v1 - v0);
                if first {
                    share * self.ms()
                } else {
                    (1.0 - share) * self.ms()
                }
            }
        }
    }
}

/// The covered stretches of `samples` (in time order) inside `[from, to)`.
fn covered(
    samples: &[Sample],
    gap_limit_ms: i64,
    from: i64,
    to: i64,
) -> impl Iterator<Item = Piece> + '_ {
    samples.windows(2).filter_map(move |w| {
        (w[1].ts - w[0].ts <= gap_limit_ms)
            .then(|| Piece::between(w[0], w[1], from, to))
            .flatten()
    })
}

/// How long within `[from, to)` the series was at or past the threshold, ms, counting only
/// covered stretches: a gap longer than `gap_limit_ms` is unknown, not "not past".
pub fn time_past(samples: &[Sample], past: Past, gap_limit_ms: i64, from: i64, to: i64) -> f64 {
    covered(samples, gap_limit_ms, from, to)
        .map(|p| p.time_past(past))
        .sum()
}

/// One series' figures for one window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Window {
    /// Hours of the window covered by readings, or known without them (see [`summarize`]).
    pub covered_hours: f64,
    /// Readings inside the window.
    pub readings: u32,
    /// Their extremes and sum; the extremes are NaN when there are none.
    pub min: f64,
    pub max: f64,
    pub sum: f64,
    /// The time-weighted mean over the whole window.
    pub mean: f64,
}

/// Step for walking an uncovered stretch to ask `known` about it, ms.
const STEP_MS: i64 = 5 * 60_000;

/// The figures of `samples` (in time order, including readings just outside the window so
/// that its edges are covered) over `[from, to)`. `known(t)` gives the value at a time the
/// readings do not cover when it is known anyway (zero radiation at night); that time then
/// counts as covered.
pub fn summarize(
    samples: &[Sample],
    gap_limit_ms: i64,
    from: i64,
    to: i64,
    known: impl Fn(i64) -> Option<f64>,
) -> Window {
    let inside = samples.iter().filter(|s| (from..to).contains(&s.ts));
    let mut w = Window {
        covered_hours: 0.0,
        readings: 0,
        min: f64::NAN,
        max: f64::NAN,
        sum: 0.0,
        mean: f64::NAN,
    };
    for s in inside {
        w.readings += 1;
        w.sum += s.value;
        w.min = w.min.min(s.value);
        w.max = w.max.max(s.value);
    }
    let Some((first, last)) = samples.first().zip(samples.last()) else {
        return w;
    };
    let mut covered_ms = 0.0;
    let mut integral = 0.0;
    // Walk the window as a chain of stretches: held before the first reading, between each
    // pair, held after the last.
    let before = Sample {
        ts: i64::MIN / 2,
        value: first.value,
    };
    let after = Sample {
        ts: i64::MAX / 2,
        value: last.value,
    };
    let chain = std::iter::once(before)
        .chain(samples.iter().copied())
        .chain(std::iter::once(after));
    let pairs = chain.clone().zip(chain.skip(1));
    for (a, b) in pairs {
        let Some(piece) = Piece::between(a, b, from, to) else {
            continue;
        };
        let real = a.ts != before.ts && b.ts != after.ts;
        if real && b.ts - a.ts <= gap_limit_ms {
            covered_ms += piece.ms();
            integral += piece.integral();
            continue;
        }
        // Uncovered: the bridging line, except where the value is known anyway.
        let mut t = piece.t0;
        while t < piece.t1 {
            let next = (t + STEP_MS).min(piece.t1);
            let mid = t + (next - t) / 2;
            let bridged = Piece::between(a, b, mid, mid + 1).map_or(a.value, |p| p.v0);
            let len = (next - t) as f64;
            match known(mid) {
                Some(v) => {
                    covered_ms += len;
                    integral += v * len;
                }
                None => integral += bridged * len,
            }
            t = next;
        }
    }
    w.covered_hours = covered_ms / 3_600_000.0;
    w.mean = integral / (to - from) as f64;
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;
    const HOUR: i64 = 60 * MIN;

    fn series(points: &[(i64, f64)]) -> Vec<Sample> {
        points
            .iter()
            .map(|&(minute, value)| Sample {
                ts: minute * MIN,
                value,
            })
            .collect()
    }

    #[test]
    fn a_frost_from_23_30_to_05_30_is_six_hours_split_at_midnight() {
        // Every 10 minutes from 22:00 to 07:00; 0 °C at 23:30 and 05:30, below between.
        let points: Vec<(i64, f64)> = (0..=54)
            .map(|i| {
                let minute = 22 * 60 + i * 10;
                let v = if (23 * 60 + 30..=29 * 60 + 30).contains(&minute) {
                    if minute == 23 * 60 + 30 || minute == 29 * 60 + 30 {
                        0.0
                    } else {
                        -1.5
                    }
                } else {
                    1.0
                };
                (minute, v)
            })
            .collect();
        let s = series(&points);
        let frost = |from: i64, to: i64| time_past(&s, Past::AtOrBelow(0.0), HOUR, from, to);
        let midnight = 24 * HOUR;
        assert_eq!(frost(0, 48 * HOUR), 6.0 * HOUR as f64);
        assert_eq!(frost(0, midnight), 0.5 * HOUR as f64);
        assert_eq!(frost(midnight, 48 * HOUR), 5.5 * HOUR as f64);
        // Past the other way: nothing was at or above 35 °C.
        assert_eq!(time_past(&s, Past::AtOrAbove(35.0), HOUR, 0, midnight), 0.0);
    }

    #[test]
    fn a_crossing_between_readings_is_placed_on_the_line_and_a_long_gap_counts_nothing() {
        // 34 → 36 °C over 20 minutes crosses 35 at the midpoint.
        let s = series(&[(0, 34.0), (20, 36.0), (40, 36.0)]);
        assert_eq!(
            time_past(&s, Past::AtOrAbove(35.0), HOUR, 0, HOUR),
            30.0 * MIN as f64
        );
        let gappy = series(&[(0, 36.0), (10, 36.0), (200, 36.0), (210, 36.0)]);
        assert_eq!(
            time_past(&gappy, Past::AtOrAbove(35.0), HOUR, 0, 4 * HOUR),
            20.0 * MIN as f64
        );
    }

    #[test]
    fn the_mean_is_weighted_by_time_not_by_reading() {
        // Readings every 10 minutes by day (value 20), hourly by night (value 10): the day
        // has 12 h of each, so the mean is 15 however many readings each half has.
        let mut points = Vec::new();
        for h in 0..24 {
            if (6..18).contains(&h) {
                points.extend((0..6).map(|i| (h * 60 + i * 10, 20.0)));
            } else {
                points.push((h * 60, 10.0));
            }
        }
        points.push((24 * 60, 10.0));
        // Make the steps at 06:00 and 18:00 sharp.
        points.push((6 * 60 - 1, 10.0));
        points.push((18 * 60 - 1, 20.0));
        points.sort_by_key(|p| p.0);
        let w = summarize(&series(&points), HOUR, 0, 24 * HOUR, |_| None);
        assert!((w.mean - 15.0).abs() < 0.01, "{}", w.mean);
        assert_eq!(w.covered_hours, 24.0);
        assert_eq!((w.min, w.max), (10.0, 20.0));
        let by_reading =
            points[..points.len() - 1].iter().map(|p| p.1).sum::<f64>() / (points.len() - 1) as f64;
        assert!(by_reading > 18.0, "what averaging readings would say");
    }

    #[test]
    fn an_uncovered_stretch_is_bridged_for_the_mean_or_known() {
        // Silent 00:00–04:00: 20 of 24 hours covered; the mean bridges the gap from the last
        // reading before midnight.
        let mut points = vec![(-10, 4.0)];
        points.extend((24..=144).map(|i| (i * 10, 4.0)));
        let s = series(&points);
        let w = summarize(&s, 30 * MIN, 0, 24 * HOUR, |_| None);
        assert!((w.covered_hours - 20.0).abs() < 1e-9, "{}", w.covered_hours);
        assert!((w.mean - 4.0).abs() < 1e-9);
        // Known to be 0 in the gap: covered, and the mean drops by 4 of 24 hours.
        let w = summarize(&s, 30 * MIN, 0, 24 * HOUR, |t| {
            (t < 4 * HOUR).then_some(0.0)
        });
        assert!((w.covered_hours - 24.0).abs() < 1e-9);
        assert!((w.mean - 4.0 * 20.0 / 24.0).abs() < 1e-9, "{}", w.mean);
    }
}
