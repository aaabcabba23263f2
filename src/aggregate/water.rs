//! Growing degree days and the daily soil-water balance of a block's root zone.
//!
//! The balance follows FAO-56 chapter 8 in its simplest form: the root-zone depletion grows
//! with crop evapotranspiration and shrinks with rain and irrigation, bounded by the soil's
//! capacity; water beyond field capacity drains away. A depletion becomes the irrigation depth
//! that brings the block back to its target.

/// Growing degree days of one day by the averaging method, base `base_c` (citrus: 13 °C).
pub fn growing_degree_days(t_max_c: f64, t_min_c: f64, base_c: f64) -> f64 {
    ((t_max_c + t_min_c) / 2.0 - base_c).max(0.0)
}

/// The root zone of a block.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RootZone {
    /// Total available water between field capacity and wilting point, mm.
    pub capacity_mm: f64,
    /// Depletion staff want to return to when irrigating (0 = field capacity), mm.
    pub target_depletion_mm: f64,
}

/// One day's water in and out, mm.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct DayWater {
    pub rain_mm: f64,
    pub irrigation_mm: f64,
    /// Crop evapotranspiration, Kc × ET0.
    pub etc_mm: f64,
}

/// The state at the end of a day.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Balance {
    /// Root-zone depletion below field capacity, mm (0 = full).
    pub depletion_mm: f64,
    /// Water that left below the root zone, mm.
    pub drained_mm: f64,
    /// The irrigation that would bring the block back to its target, mm.
    pub irrigation_needed_mm: f64,
}

impl RootZone {
    /// Advances the balance by one day from `depletion_mm` at the end of the day before.
    pub fn step(&self, depletion_mm: f64, day: DayWater) -> Balance {
        let after = depletion_mm - day.rain_mm - day.irrigation_mm + day.etc_mm;
        let drained = (-after).max(0.0);
        let depletion = after.clamp(0.0, self.capacity_mm);
        Balance {
            depletion_mm: depletion,
            drained_mm: drained,
            irrigation_needed_mm: (depletion - self.target_depletion_mm).max(0.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn degree_days_count_only_warmth_above_the_base() {
        assert_eq!(growing_degree_days(28.0, 18.0, 13.0), 10.0);
        assert_eq!(growing_degree_days(12.0, 4.0, 13.0), 0.0);
    }

    #[test]
    fn a_dry_week_builds_a_deficit_that_rain_and_irrigation_repay() {
        let zone = RootZone {
            capacity_mm: 80.0,
            target_depletion_mm: 10.0,
        };
        let dry = DayWater {
            etc_mm: 4.5,
            ..DayWater::default()
        };
        let mut depletion = 0.0;
        for _ in 0..7 {
            depletion = zone.step(depletion, dry).depletion_mm;
        }
        assert!((depletion - 31.5).abs() < 1e-9);
        let b = zone.step(depletion, dry);
        assert!((b.irrigation_needed_mm - 26.0).abs() < 1e-9, "{b:?}");
        // A storm fills the root zone; the rest drains.
        let storm = zone.step(
            b.depletion_mm,
            DayWater {
                rain_mm: 50.0,
                etc_mm: 2.0,
                ..DayWater::default()
            },
        );
        assert_eq!(storm.depletion_mm, 0.0);
        assert!((storm.drained_mm - 12.0).abs() < 1e-9);
        // Depletion never exceeds what the soil can hold.
        assert_eq!(zone.step(78.0, dry).depletion_mm, 80.0);
    }
}
