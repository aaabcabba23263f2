//! Where the sun is: enough to know when a radiation sensor that was silent must have read 0.

use std::f64::consts::PI;

use super::indices::{DAY_MS, Day, HOUR_MS};

/// Whether the sun is above the horizon at `ts_ms` (ms since the epoch) at a place, from
/// FAO-56 eq. 24 (solar declination), eqs. 31–33 (solar time and the hour angle) and the
/// solar elevation they give. Good to a few minutes, which is all a silent hour needs.
pub fn is_up(latitude_deg: f64, longitude_deg: f64, ts_ms: i64) -> bool {
    let day = Day(ts_ms.div_euclid(DAY_MS));
    let j = f64::from(day.date().ordinal());
    let utc_hours = ts_ms.rem_euclid(DAY_MS) as f64 / HOUR_MS as f64;
    // eq. 32: the seasonal correction for solar time, hours.
    let b = 2.0 * PI * (j - 81.0) / 364.0;
    let sc = 0.1645 * (2.0 * b).sin() - 0.1255 * b.cos() - 0.025 * b.sin();
    let solar_time = utc_hours + longitude_deg / 15.0 + sc;
    let omega = PI / 12.0 * (solar_time - 12.0);
    let delta = 0.409 * (2.0 * PI * j / 365.0 - 1.39).sin();
    let phi = latitude_deg.to_radians();
    phi.sin() * delta.sin() + phi.cos() * delta.cos() * omega.cos() > 0.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TimestampMs;

    fn at(rfc3339: &str) -> i64 {
        TimestampMs::parse(rfc3339).unwrap().0
    }

    #[test]
    fn the_sun_is_up_over_fengjie_by_its_day_not_by_the_clock() {
        // Fengjie, 31.0° N 109.5° E, on China's clock (+08:00): in early July the sun rises
        // about 05:50 and sets about 19:45, solar noon being 12:47 by the clock.
        let up = |t: &str| is_up(31.0, 109.5, at(t));
        assert!(!up("2026-07-06T05:30:00+08:00"));
        assert!(up("2026-07-06T06:45:00+08:00"));
        assert!(up("2026-07-06T19:30:00+08:00"));
        assert!(!up("2026-07-06T20:45:00+08:00"));
        assert!(!up("2026-07-06T00:30:00+08:00"));
        // At the winter solstice it rises about 07:35.
        assert!(!up("2026-12-21T07:15:00+08:00"));
        assert!(up("2026-12-21T12:00:00+08:00"));
    }
}
