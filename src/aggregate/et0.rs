//! Reference evapotranspiration ET0 (FAO Irrigation and Drainage Paper 56, daily time step).
//!
//! Penman–Monteith (FAO-56 eq. 6) when temperature, humidity, wind and solar radiation are
//! measured; Hargreaves (eq. 52) when only temperature is. Every step follows the paper's
//! equation numbers so the worked examples can be checked line by line.

use std::f64::consts::PI;

/// Where the block is: what the radiation terms need.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Site {
    /// Degrees, north positive.
    pub latitude_deg: f64,
    /// Metres above sea level.
    pub elevation_m: f64,
}

/// One day's weather as the block's sensors measured it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DayWeather {
    /// Day of the year, 1–366.
    pub day_of_year: u32,
    pub t_max_c: f64,
    pub t_min_c: f64,
    /// Daily maximum and minimum relative humidity, %.
    pub rh_max: f64,
    pub rh_min: f64,
    /// Mean wind speed at 2 m, m/s (see [`wind_at_2m`]).
    pub wind_2m: f64,
    /// Incoming solar radiation, MJ m⁻² day⁻¹ (a pyranometer's mean W/m² × 0.0864).
    pub solar_mj: f64,
}

/// Which equation produced an ET0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    PenmanMonteith,
    Hargreaves,
}

/// Atmospheric pressure, kPa (eq. 7).
pub fn pressure_kpa(elevation_m: f64) -> f64 {
    101.3 * ((293.0 - 0.0065 * elevation_m) / 293.0).powf(5.26)
}

/// Psychrometric constant, kPa/°C (eq. 8).
pub fn psychrometric(pressure_kpa: f64) -> f64 {
    0.000665 * pressure_kpa
}

/// Saturation vapour pressure at `t` °C, kPa (eq. 11).
pub fn sat_vapour_pressure(t: f64) -> f64 {
    0.6108 * (17.27 * t / (t + 237.3)).exp()
}

/// Slope of the saturation vapour pressure curve at `t` °C, kPa/°C (eq. 13).
pub fn slope(t: f64) -> f64 {
    4098.0 * sat_vapour_pressure(t) / (t + 237.3).powi(2)
}

/// Extraterrestrial radiation, MJ m⁻² day⁻¹ (eqs. 21–25).
pub fn extraterrestrial_radiation(latitude_deg: f64, day_of_year: u32) -> f64 {
    let phi = latitude_deg.to_radians();
    let j = f64::from(day_of_year);
    let dr = 1.0 + 0.033 * (2.0 * PI * j / 365.0).cos();
    let delta = 0.409 * (2.0 * PI * j / 365.0 - 1.39).sin();
    let ws = (-phi.tan() * delta.tan()).clamp(-1.0, 1.0).acos();
    24.0 * 60.0 / PI
        * 0.0820
        * dr
        * (ws * phi.sin() * delta.sin() + phi.cos() * delta.cos() * ws.sin())
}

/// Wind speed at 2 m from a measurement at `height_m` (eq. 47).
pub fn wind_at_2m(speed: f64, height_m: f64) -> f64 {
    speed * 4.87 / (67.8 * height_m - 5.42).ln()
}

/// The net radiation terms of eqs. 37–40, MJ m⁻² day⁻¹: (Rso, Rnl, Rn).
pub fn net_radiation(site: Site, w: &DayWeather, ea: f64) -> (f64, f64, f64) {
    let ra = extraterrestrial_radiation(site.latitude_deg, w.day_of_year);
    let rso = (0.75 + 2e-5 * site.elevation_m) * ra;
    let rns = (1.0 - 0.23) * w.solar_mj;
    let k4 = |t: f64| (t + 273.16).powi(4);
    let relative = (w.solar_mj / rso).min(1.0);
    let rnl = 4.903e-9 * (k4(w.t_max_c) + k4(w.t_min_c)) / 2.0
        * (0.34 - 0.14 * ea.sqrt())
        * (1.35 * relative - 0.35);
    (rso, rnl, rns - rnl)
}

/// FAO-56 Penman–Monteith ET0, mm/day (eq. 6), with soil heat flux G = 0 for a day.
pub fn penman_monteith(site: Site, w: &DayWeather) -> f64 {
    let t_mean = (w.t_max_c + w.t_min_c) / 2.0;
    let gamma = psychrometric(pressure_kpa(site.elevation_m));
    let es = (sat_vapour_pressure(w.t_max_c) + sat_vapour_pressure(w.t_min_c)) / 2.0;
    // eq. 17: actual vapour pressure from the daily humidity extremes.
    let ea = (sat_vapour_pressure(w.t_min_c) * w.rh_max / 100.0
        + sat_vapour_pressure(w.t_max_c) * w.rh_min / 100.0)
        / 2.0;
    let delta = slope(t_mean);
    let (_, _, rn) = net_radiation(site, w, ea);
    let numerator = 0.408 * delta * rn + gamma * 900.0 / (t_mean + 273.0) * w.wind_2m * (es - ea);
    (numerator / (delta + gamma * (1.0 + 0.34 * w.wind_2m))).max(0.0)
}

/// Hargreaves ET0 from temperature alone, mm/day (eq. 52, Ra as evaporation equivalent).
pub fn hargreaves(site: Site, day_of_year: u32, t_max_c: f64, t_min_c: f64) -> f64 {
    let ra_mm = 0.408 * extraterrestrial_radiation(site.latitude_deg, day_of_year);
    let t_mean = (t_max_c + t_min_c) / 2.0;
    (0.0023 * (t_mean + 17.8) * (t_max_c - t_min_c).max(0.0).sqrt() * ra_mm).max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(v: f64, decimals: i32) -> f64 {
        let s = 10f64.powi(decimals);
        (v * s).round() / s
    }

    #[test]
    fn fao56_example_8_extraterrestrial_radiation_at_20_south_on_3_september() {
        assert_eq!(round(extraterrestrial_radiation(-20.0, 246), 1), 32.2);
    }

    #[test]
    fn fao56_example_3_psychrometric_constant_at_1800_m() {
        let p = pressure_kpa(1800.0);
        assert_eq!(round(p, 1), 81.8);
        assert_eq!(round(psychrometric(p), 3), 0.054);
    }

    #[test]
    fn fao56_example_14_wind_at_2m_from_10m() {
        assert_eq!(round(wind_at_2m(3.2, 10.0), 1), 2.4);
    }

    /// FAO-56 example 18: Brussels (50°48' N, 100 m), 6 July, Tmax 21.5, Tmin 12.3 °C,
    /// RHmax 84 %, RHmin 63 %, wind 2.078 m/s at 2 m, Rs 22.07 MJ m⁻² day⁻¹ -> ET0 3.9 mm/day.
    #[test]
    fn fao56_example_18_daily_penman_monteith_in_brussels() {
        let site = Site {
            latitude_deg: 50.0 + 48.0 / 60.0,
            elevation_m: 100.0,
        };
        let day = DayWeather {
            day_of_year: 187,
            t_max_c: 21.5,
            t_min_c: 12.3,
            rh_max: 84.0,
            rh_min: 63.0,
            wind_2m: 2.078,
            solar_mj: 22.07,
        };
        // The intermediate values the paper prints.
        assert_eq!(round(pressure_kpa(100.0), 1), 100.1);
        assert_eq!(round(psychrometric(pressure_kpa(100.0)), 4), 0.0666);
        assert_eq!(round(slope(16.9), 3), 0.122);
        assert_eq!(
            round(extraterrestrial_radiation(site.latitude_deg, 187), 2),
            41.09
        );
        let ea = (sat_vapour_pressure(12.3) * 0.84 + sat_vapour_pressure(21.5) * 0.63) / 2.0;
        assert_eq!(round(ea, 3), 1.409);
        let (rso, rnl, rn) = net_radiation(site, &day, ea);
        assert_eq!(round(rso, 2), 30.90);
        assert_eq!(round(rnl, 2), 3.71);
        assert_eq!(round(rn, 2), 13.28);
        assert_eq!(round(penman_monteith(site, &day), 1), 3.9);
    }

    /// FAO-56 prints no worked example of eq. 52 (PyETo's tests say the same). Its one input
    /// beyond temperature is Ra, which examples 8 and 18 check; here eq. 52 is worked by hand
    /// on example 18's Brussels day: Ra = 41.09 MJ = 16.76 mm (× 0.408), Tmean 16.9 °C,
    /// Tmax − Tmin 9.2 °C: 0.0023 × (16.9 + 17.8) × √9.2 × 16.76 = 4.06 mm/day, against
    /// Penman–Monteith's 3.9 for the same day.
    #[test]
    fn hargreaves_eq_52_on_the_fao56_example_18_day() {
        let site = Site {
            latitude_deg: 50.0 + 48.0 / 60.0,
            elevation_m: 100.0,
        };
        assert_eq!(round(hargreaves(site, 187, 21.5, 12.3), 2), 4.06);
    }

    #[test]
    fn hargreaves_grows_with_temperature_range_and_is_never_negative() {
        let site = Site {
            latitude_deg: 31.0,
            elevation_m: 300.0,
        };
        let narrow = hargreaves(site, 200, 30.0, 24.0);
        let wide = hargreaves(site, 200, 34.0, 20.0);
        assert!(wide > narrow && narrow > 0.0);
        assert_eq!(hargreaves(site, 1, -30.0, -39.0), 0.0);
    }
}
