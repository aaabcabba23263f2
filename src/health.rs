//! Sensor health: flags on accepted readings that feed sensor-fault alerts.
//!
//! A spike (a jump faster than the kind can physically change), a stuck sensor (the same
//! value again and again) and a reading after a silence are stored, not rejected: the reading
//! may be true, and the flag tells staff to look. State is per series, owned by the writer.

use std::time::Duration;

use crate::model::{Flags, Kind, TimestampMs};

/// How fast a kind can really change: a fixed step plus a rate per hour.
fn max_change(kind: Kind) -> Option<(f64, f64)> {
    Some(match kind {
        Kind::AirTemperature => (3.0, 12.0),
        Kind::SoilTemperature => (2.0, 5.0),
        Kind::RelativeHumidity => (15.0, 60.0),
        // Irrigation and heavy rain raise soil moisture fast; drying is slow.
        Kind::SoilMoisture => (8.0, 40.0),
        Kind::SoilEc => (0.5, 2.0),
        Kind::SoilPh => (0.5, 1.0),
        Kind::BatteryV => (0.3, 0.5),
        _ => return None,
    })
}

/// Kinds for which an unchanging value means a fault; rain, sunshine at night or a battery
/// are constant for hours when all is well.
fn can_be_stuck(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::AirTemperature
            | Kind::SoilTemperature
            | Kind::RelativeHumidity
            | Kind::SoilMoisture
            | Kind::SoilEc
            | Kind::SoilPh
    )
}

/// What is known of one series' recent past.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Last {
    pub ts: TimestampMs,
    pub value: f64,
    /// How many readings in a row ended with this value.
    pub repeats: u32,
    /// While the newest readings are spikes, the reading before them: the next one is
    /// judged against it, so the reading after a lone glitch is not a spike too.
    pub before_spike: Option<(TimestampMs, f64)>,
}

/// The judge; the state it judges by is kept with each series (the writer's
/// `store::series::Slot`).
#[derive(Debug)]
pub struct Health {
    stuck_after: u32,
}

impl Health {
    pub fn new(stuck_after: u32) -> Self {
        Self { stuck_after }
    }

    pub fn stuck_after(&self) -> u32 {
        self.stuck_after
    }

    /// A series' state from the store (its newest readings, newest first); None without any.
    pub fn seed(&self, newest_first: &[(i64, f64)]) -> Option<Last> {
        let (ts, value) = newest_first.first()?;
        let repeats = newest_first.iter().take_while(|(_, v)| v == value).count() as u32;
        Some(Last {
            ts: TimestampMs(*ts),
            value: *value,
            repeats,
            before_spike: None,
        })
    }

    /// Flags for a new reading of a series whose state is `last`, and remembers it there. A
    /// reading older than the newest one known (late or redelivered) is not judged: its
    /// neighbours in time are not at hand.
    pub fn judge(
        &self,
        last: &mut Option<Last>,
        kind: Kind,
        ts: TimestampMs,
        value: f64,
        expected_interval: Duration,
    ) -> Flags {
        let mut flags = Flags::default();
        let Some(last) = last else {
            *last = Some(Last {
                ts,
                value,
                repeats: 1,
                before_spike: None,
            });
            return flags;
        };
        if ts <= last.ts {
            return flags;
        }
        let gap_ms = (ts.0 - last.ts.0) as f64;
        if gap_ms > 2.0 * expected_interval.as_millis() as f64 {
            flags.insert(Flags::AFTER_GAP);
        }
        if let Some((step, per_hour)) = max_change(kind) {
            let too_far = |(t, v): (TimestampMs, f64)| {
                (value - v).abs() > step + per_hour * (ts.0 - t.0) as f64 / 3_600_000.0
            };
            let reference = last.before_spike.unwrap_or((last.ts, last.value));
            // Far from the reading before a spike, but near the spike: the level really moved.
            let moved = last.before_spike.is_some() && !too_far((last.ts, last.value));
            if too_far(reference) && !moved {
                flags.insert(Flags::SPIKE);
                last.before_spike = Some(reference);
            } else {
                last.before_spike = None;
            }
        }
        last.repeats = if value == last.value {
            last.repeats + 1
        } else {
            1
        };
        if can_be_stuck(kind) && last.repeats >= self.stuck_after {
            flags.insert(Flags::STUCK);
        }
        last.ts = ts;
        last.value = value;
        flags
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;
    const EXPECTED: Duration = Duration::from_secs(600);

    fn series(h: &Health, kind: Kind, values: &[(i64, f64)]) -> Vec<Flags> {
        let mut last = None;
        values
            .iter()
            .map(|(minute, v)| h.judge(&mut last, kind, TimestampMs(minute * MIN), *v, EXPECTED))
            .collect()
    }

    #[test]
    fn a_jump_of_air_temperature_in_ten_minutes_is_a_spike_a_slow_rise_is_not() {
        let h = Health::new(12);
        let flags = series(
            &h,
            Kind::AirTemperature,
            &[(0, 18.0), (10, 19.5), (20, 31.0), (30, 31.5)],
        );
        assert_eq!(flags[1], Flags::default());
        assert!(flags[2].contains(Flags::SPIKE), "+11.5 °C in 10 min");
        assert!(!flags[3].contains(Flags::SPIKE));
    }

    #[test]
    fn after_a_lone_glitch_the_next_reading_is_judged_against_the_one_before_it() {
        let h = Health::new(12);
        let flags = series(
            &h,
            Kind::AirTemperature,
            &[(0, 30.0), (15, 45.0), (30, 30.4), (45, 30.6)],
        );
        assert!(flags[1].contains(Flags::SPIKE));
        assert_eq!(flags[2], Flags::default(), "back at 30.4: no spike");
        assert_eq!(flags[3], Flags::default());
        // A level that stays where it jumped is real from its second reading on.
        let h = Health::new(12);
        let flags = series(
            &h,
            Kind::SoilMoisture,
            &[(0, 20.0), (10, 45.0), (20, 45.2), (30, 45.1)],
        );
        assert!(flags[1].contains(Flags::SPIKE));
        assert_eq!(&flags[2..], &[Flags::default(); 2]);
    }

    #[test]
    fn the_same_soil_moisture_twelve_times_is_stuck_but_no_rain_is_not() {
        let h = Health::new(12);
        let same: Vec<_> = (0..13).map(|i| (i * 10, 23.4)).collect();
        let flags = series(&h, Kind::SoilMoisture, &same);
        assert!(flags[..11].iter().all(|f| !f.contains(Flags::STUCK)));
        assert!(flags[11].contains(Flags::STUCK) && flags[12].contains(Flags::STUCK));
        let h = Health::new(12);
        let dry: Vec<_> = (0..20).map(|i| (i * 10, 0.0)).collect();
        assert!(
            series(&h, Kind::Rainfall, &dry)
                .iter()
                .all(|f| *f == Flags::default())
        );
    }

    #[test]
    fn a_reading_after_a_long_silence_is_flagged_and_late_ones_are_left_alone() {
        let h = Health::new(12);
        let flags = series(
            &h,
            Kind::SoilTemperature,
            &[(0, 15.0), (10, 15.1), (60, 15.3), (5, 15.0)],
        );
        assert!(!flags[1].contains(Flags::AFTER_GAP));
        assert!(flags[2].contains(Flags::AFTER_GAP), "50 min > 2 x 10 min");
        assert_eq!(flags[3], Flags::default(), "late reading");
    }

    #[test]
    fn seeding_from_the_store_continues_a_stuck_run() {
        let h = Health::new(3);
        let mut last = h.seed(&[(20 * MIN, 7.0), (10 * MIN, 7.0), (0, 6.0)]);
        assert_eq!(last.map(|l| l.repeats), Some(2));
        let f = h.judge(
            &mut last,
            Kind::SoilPh,
            TimestampMs(30 * MIN),
            7.0,
            EXPECTED,
        );
        assert!(f.contains(Flags::STUCK));
    }
}
