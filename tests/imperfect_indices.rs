//! The daily indices on field data as sensors really send it: a station silent for four night
//! hours, a glitch, a rain gauge short for a day, a frost across midnight. Readings go in
//! through Debian's `mosquitto_pub` to orchardd's own endpoint; the numbers come out of
//! `GET /api/v1/indices` and are checked against an independent FAO-56 computation.

mod support;

use std::f64::consts::{PI, TAU};
use std::time::Duration;

use serde_json::{Value, json};
use support::{Daemon, DaemonConfig, date_of, http_request, mosquitto_pub_lines, wait_for};

const OFFSET_MS: i64 = 8 * 3_600_000;
const DAY_MS: i64 = 86_400_000;
const STEP_MS: i64 = 10 * 60_000;
const LATITUDE: f64 = 31.0;
const ELEVATION_M: f64 = 240.0;

// The weather of the station, by local time of day in hours: coolest and most humid at
// 05:30, warmest at 17:30, windiest at 14:00, sunshine from 06:00 to 19:30.
fn air_c(h: f64) -> f64 {
    26.0 + 5.0 * ((h - 17.5) / 24.0 * TAU).cos()
}
fn rh(h: f64) -> f64 {
    75.0 - 15.0 * ((h - 17.5) / 24.0 * TAU).cos()
}
fn wind(h: f64) -> f64 {
    2.0 + 0.8 * ((h - 14.0) / 24.0 * TAU).cos()
}
fn solar(h: f64) -> f64 {
    if (6.0..19.5).contains(&h) {
        800.0 * ((h - 6.0) / 13.5 * PI).sin()
    } else {
        0.0
    }
}

/// Every 10 minutes over `days` local days from `first`, one message of `kinds(t_ms, hour)`
/// readings; `None` leaves that time out.
fn messages(
    first: i64,
    days: i64,
    kinds: impl Fn(i64, f64) -> Option<Vec<(&'static str, f64)>>,
) -> Vec<String> {
    let start = first * DAY_MS - OFFSET_MS;
    (0..days * DAY_MS / STEP_MS)
        .filter_map(|i| {
            let ts = start + i * STEP_MS;
            let hour = ((ts + OFFSET_MS).rem_euclid(DAY_MS)) as f64 / 3_600_000.0;
            let readings: Vec<Value> = kinds(ts, hour)?
                .into_iter()
                .map(|(kind, value)| json!({"kind": kind, "value": (value * 1000.0).round() / 1000.0}))
                .collect();
            Some(json!({"ts": ts, "readings": readings}).to_string())
        })
        .collect()
}

fn station(h: f64) -> Vec<(&'static str, f64)> {
    vec![
        ("air_temperature", air_c(h)),
        ("relative_humidity", rh(h)),
        ("wind_speed", wind(h)),
        ("solar_radiation", solar(h)),
    ]
}

/// FAO-56 Penman–Monteith for one day, written out again from the paper (eqs. 6–8, 11, 13,
/// 17, 21–25, 37–40) rather than through orchardd's code.
fn fao56_et0(
    day_of_year: f64,
    t_max: f64,
    t_min: f64,
    rh_max: f64,
    rh_min: f64,
    u2: f64,
    rs_mj: f64,
) -> f64 {
    let e0 = |t: f64| 0.6108 * (17.27 * t / (t + 237.3)).exp();
    let t_mean = (t_max + t_min) / 2.0;
    let p = 101.3 * ((293.0 - 0.0065 * ELEVATION_M) / 293.0).powf(5.26);
    let gamma = 0.000665 * p;
    let delta = 4098.0 * e0(t_mean) / (t_mean + 237.3).powi(2);
    let es = (e0(t_max) + e0(t_min)) / 2.0;
    let ea = (e0(t_min) * rh_max / 100.0 + e0(t_max) * rh_min / 100.0) / 2.0;
    let phi = LATITUDE.to_radians();
    let dr = 1.0 + 0.033 * (TAU * day_of_year / 365.0).cos();
    let decl = 0.409 * (TAU * day_of_year / 365.0 - 1.39).sin();
    let ws = (-phi.tan() * decl.tan()).acos();
    let ra = 24.0 * 60.0 / PI
        * 0.0820
        * dr
        * (ws * phi.sin() * decl.sin() + phi.cos() * decl.cos() * ws.sin());
    let rso = (0.75 + 2e-5 * ELEVATION_M) * ra;
    let rns = 0.77 * rs_mj;
    let sigma_t4 = |t: f64| 4.903e-9 * (t + 273.16).powi(4);
    let rnl = (sigma_t4(t_max) + sigma_t4(t_min)) / 2.0
        * (0.34 - 0.14 * ea.sqrt())
        * (1.35 * (rs_mj / rso).min(1.0) - 0.35);
    let rn = rns - rnl;
    (0.408 * delta * rn + gamma * 900.0 / (t_mean + 273.0) * u2 * (es - ea))
        / (delta + gamma * (1.0 + 0.34 * u2))
}

fn num(d: &Value, k: &str) -> f64 {
    d[k].as_f64().unwrap_or_else(|| panic!("{k} in {d}"))
}

#[test]
fn the_indices_stay_right_on_a_silent_night_a_glitch_a_missing_gauge_and_a_frost() {
    let dir = tempfile::tempdir().unwrap();
    let blocks: String = ["B1", "B2", "B3", "B4", "B5"]
        .iter()
        .map(|b| {
            format!(
                "[[blocks]]\norchard = \"fengjie\"\nblock = \"{b}\"\nlatitude = {LATITUDE}\nlongitude = 109.5\nelevation_m = {ELEVATION_M}\n"
            )
        })
        .collect();
    let cfg = DaemonConfig {
        // Fengjie keeps China's clock: its local days run from midnight at +08:00. The rest
        // is as shipped (min_hours 20, health.expected_interval 15 min).
        extra: format!("[aggregate]\nutc_offset = \"+08:00\"\n{blocks}"),
        ..DaemonConfig::shipped_defaults_embedded()
    };
    let daemon = Daemon::start(dir.path(), &cfg);
    daemon.wait_ready();
    let port = cfg.broker_port();

    // Three local days; the middle one, `day`, is the one under test.
    let today = (support::now_ms() + OFFSET_MS).div_euclid(DAY_MS);
    let day = today - 3;
    let first = day - 1;
    let in_day = |ts: i64| (ts + OFFSET_MS).div_euclid(DAY_MS) == day;

    let clean = messages(first, 3, |_, h| Some(station(h)));
    // B2's station says nothing from 00:00 to 04:00 of the day.
    let silent = messages(first, 3, |ts, h| {
        (!(in_day(ts) && h < 4.0)).then(|| station(h))
    });
    // B3's reads 45 °C once, at 13:00.
    let glitch = messages(first, 3, |ts, h| {
        let mut r = station(h);
        if in_day(ts) && h == 13.0 {
            r[0].1 = 45.0;
        }
        Some(r)
    });
    // B4's rain gauge reports the day before and the day after, nothing on the day.
    let gauge = messages(first, 3, |ts, _| {
        (!in_day(ts)).then(|| vec![("rainfall", 0.0)])
    });
    // B5: 0 °C at 23:30 of the day and at 05:30 of the next, about -1.5 °C between, about
    // 2 °C otherwise.
    let frost_from = (day + 1) * DAY_MS - OFFSET_MS - 30 * 60_000;
    let frost_to = frost_from + 6 * 3_600_000;
    let frost = messages(first, 3, |ts, _| {
        // A few hundredths up and down, as a real sensor reads, so nothing looks stuck.
        let jitter = 0.01 * ((ts / STEP_MS) % 5) as f64;
        let t = if ts == frost_from || ts == frost_to {
            0.0
        } else if (frost_from..frost_to).contains(&ts) {
            -1.5 - jitter
        } else {
            2.0 + jitter
        };
        Some(vec![("air_temperature", t)])
    });
    let expected_readings = (clean.len() * 3 + silent.len()) * 4 + gauge.len() + frost.len();
    mosquitto_pub_lines(port, "orchards/fengjie/B1/ws1/telemetry", &clean);
    mosquitto_pub_lines(port, "orchards/fengjie/B2/ws2/telemetry", &silent);
    mosquitto_pub_lines(port, "orchards/fengjie/B3/ws3/telemetry", &glitch);
    mosquitto_pub_lines(port, "orchards/fengjie/B4/ws4/telemetry", &clean);
    mosquitto_pub_lines(port, "orchards/fengjie/B4/rg4/telemetry", &gauge);
    mosquitto_pub_lines(port, "orchards/fengjie/B5/t5/telemetry", &frost);
    wait_for(Duration::from_secs(60), "every reading stored", || {
        (daemon.metric("orchardd_readings_accepted_total") >= expected_readings as f64)
            .then_some(())
    });

    // 20 mm of irrigation on B4 on the day the gauge was silent.
    let (status, body) = http_request(
        daemon.http,
        "POST",
        "/api/v1/irrigation",
        &json!({"orchard": "fengjie", "block": "B4", "date": date_of(day), "mm": 20.0}).to_string(),
    )
    .unwrap();
    assert_eq!(status, 201, "{body}");

    let indices = |block: &str| -> Vec<Value> {
        let v = daemon.get_ok(&format!(
            "/api/v1/indices?orchard=fengjie&block={block}&from={}&to={}",
            date_of(first),
            date_of(first + 3)
        ));
        v["days"].as_array().unwrap().clone()
    };

    // The independent figure for the day: extremes as sampled, wind and radiation as the
    // day's time integral of the weather above.
    let minutes: Vec<f64> = (0..1440).map(|m| (m as f64 + 0.5) / 60.0).collect();
    let u2 = minutes.iter().map(|&h| wind(h)).sum::<f64>() / 1440.0;
    let rs_mj = minutes.iter().map(|&h| solar(h)).sum::<f64>() * 60.0 / 1e6;
    let doy = f64::from(
        time::Date::from_julian_day((day + 2_440_588) as i32)
            .unwrap()
            .ordinal(),
    );
    let independent = fao56_et0(doy, air_c(17.5), air_c(5.5), rh(5.5), rh(17.5), u2, rs_mj);

    let b1 = indices("B1");
    let b2 = indices("B2");
    let (full, gap) = (&b1[1], &b2[1]);
    assert_eq!(full["date"], date_of(day));
    assert_eq!(full["et0_method"], "penman_monteith", "{full}");
    assert_eq!(gap["et0_method"], "penman_monteith", "{gap}");
    let (e_full, e_gap) = (num(full, "et0_mm"), num(gap, "et0_mm"));
    assert!(
        (e_full - e_gap).abs() < 0.05,
        "ET0 with the night silent {e_gap:.3} mm, without {e_full:.3} mm"
    );
    for (what, e) in [("full day", e_full), ("silent 00-04", e_gap)] {
        assert!(
            (e - independent).abs() < 0.05,
            "{what}: ET0 {e:.3} mm, FAO-56 by hand {independent:.3} mm"
        );
    }
    assert_eq!(full["left_out"], json!({}));

    // The glitch is stored and flagged, and the indices are the clean day's.
    let b3 = indices("B3");
    let spiky = &b3[1];
    for k in ["t_max_c", "t_min_c", "gdd", "heat_hours"] {
        assert_eq!(spiky[k], full[k], "{k}: {spiky}");
    }
    assert!((num(spiky, "et0_mm") - e_full).abs() < 1e-6, "{spiky}");
    assert_eq!(spiky["left_out"], json!({"air_temperature": 1}));
    let flagged = daemon
        .get_ok("/api/v1/readings?orchard=fengjie&block=B3&kind=air_temperature&flagged=spike");
    let flagged = flagged["readings"].as_array().unwrap();
    assert_eq!(flagged.len(), 1, "{flagged:?}");
    assert_eq!(flagged[0]["value"], 45.0);

    // The balance counts the 20 mm on the day the gauge was silent.
    let b4 = indices("B4");
    let (before, on, after) = (&b4[0], &b4[1], &b4[2]);
    assert_eq!(on["rain_mm"], Value::Null);
    assert_eq!(num(on, "irrigation_mm"), 20.0);
    let expected = (num(before, "depletion_mm") + num(on, "etc_mm") - 20.0).clamp(0.0, 100.0);
    assert!((num(on, "depletion_mm") - expected).abs() < 1e-9, "{on}");
    assert!(
        on["missing"]["depletion_mm"]
            .as_str()
            .unwrap()
            .contains("rain_mm unknown"),
        "{on}"
    );
    let expected = num(on, "depletion_mm") + num(after, "etc_mm") - num(after, "rain_mm");
    assert!(
        (num(after, "depletion_mm") - expected).abs() < 1e-9,
        "{after}"
    );
    assert!((num(after, "irrigation_needed_mm") - expected).abs() < 1e-9);

    // The frost from 23:30 to 05:30 is six hours, split at midnight.
    let b5 = indices("B5");
    let hours: Vec<f64> = b5.iter().map(|d| num(d, "frost_hours")).collect();
    for (got, want) in hours.iter().zip([0.0, 0.5, 5.5]) {
        assert!((got - want).abs() < 1e-9, "frost hours by day: {hours:?}");
    }
}
