//! A simulated season replayed through orchardd: the daily indices of the block add up to
//! what its raw readings say.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use support::{
    Daemon, DaemonConfig, close, date_of, day_at_utc8, http_get, http_request, wait_for,
};

const OFFSET_MS: i64 = 8 * 3_600_000;
const DAY_MS: i64 = 86_400_000;
const DAYS: i64 = 60;
const STEP_MIN: i64 = 30;
const DEVICES: usize = 2;
const ROOT_ZONE_MM: f64 = 100.0;

/// Per local day, the block's value as the indices define it: the mean over devices of each
/// device's daily `per_device` figure, from the raw readings of `kind`.
fn raw_daily(
    daemon: &Daemon,
    kind: &str,
    per_device: impl Fn(&[(i64, f64)]) -> f64,
) -> BTreeMap<i64, f64> {
    let rows = daemon.get_ok(&format!(
        "/api/v1/readings?orchard=orchard-1&block=B1&kind={kind}&limit=1000000"
    ))["readings"]
        .as_array()
        .unwrap()
        .clone();
    let mut by: BTreeMap<i64, HashMap<String, Vec<(i64, f64)>>> = BTreeMap::new();
    for r in rows {
        let ts = time::OffsetDateTime::parse(
            r["ts"].as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap();
        let ms = (ts.unix_timestamp_nanos() / 1_000_000) as i64;
        by.entry(day_at_utc8(ms))
            .or_default()
            .entry(r["device"].as_str().unwrap().to_owned())
            .or_default()
            .push((ms, r["value"].as_f64().unwrap()));
    }
    by.into_iter()
        .map(|(day, devices)| {
            let n = devices.len() as f64;
            (
                day,
                devices.values().map(|v| per_device(v)).sum::<f64>() / n,
            )
        })
        .collect()
}

#[test]
fn a_replayed_season_adds_up_to_its_raw_readings() {
    let dir = tempfile::tempdir().unwrap();
    // The season starts at a local midnight 70 days ago and runs for 60 days.
    let today = day_at_utc8(support::now_ms());
    let first = today - 70;
    let start_ms = first * DAY_MS - OFFSET_MS;
    let season_start = &date_of(first)[5..];
    let cfg = DaemonConfig {
        extra: format!(
            r#"
[validate]
max_age = "400d"
[aggregate]
utc_offset = "+08:00"
season_start = "{season_start}"
root_zone_mm = {ROOT_ZONE_MM}
[[blocks]]
orchard = "orchard-1"
block = "B1"
latitude = 31.02
elevation_m = 240.0
"#
        ),
        ..DaemonConfig::embedded()
    };
    let daemon = Daemon::start(dir.path(), &cfg);
    daemon.wait_ready();

    let rounds = DAYS * 24 * 60 / STEP_MIN;
    let out = Command::new(env!("CARGO_BIN_EXE_orchardd"))
        .args(["simulate", "--orchards", "1", "--blocks", "1"])
        .args(["--devices", &DEVICES.to_string()])
        .args(["--interval", &format!("{STEP_MIN}m")])
        .args(["--count", &rounds.to_string()])
        .args(["--start", &start_ms.to_string()])
        .args(["--url", &format!("mqtt://127.0.0.1:{}", cfg.broker_port())])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "simulate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expected = (rounds as usize * DEVICES * 11) as f64;
    wait_for(Duration::from_secs(120), "the season stored", || {
        (daemon.metric("orchardd_readings_accepted_total") >= expected).then_some(())
    });

    // Irrigation entered by hand on day 10, on top of what the flow meters report.
    let (status, body) = http_request(
        daemon.http,
        "POST",
        "/api/v1/irrigation",
        &json!({"orchard": "orchard-1", "block": "B1", "date": date_of(first + 10), "mm": 12.5, "note": "hand line"})
            .to_string(),
    )
    .unwrap();
    assert_eq!(status, 201, "{body}");

    // One day more than the season had: that day has no data and must say so.
    let path = format!(
        "/api/v1/indices?orchard=orchard-1&block=B1&from={}&to={}",
        date_of(first),
        date_of(first + DAYS + 1)
    );
    let answer = daemon.get_ok(&path);
    assert_eq!(answer["season_start"], season_start);
    let days = answer["days"].as_array().unwrap();
    assert_eq!(days.len() as i64, DAYS + 1);
    let (season, after) = days.split_at(DAYS as usize);

    // Every day of the season is complete: both stations, Penman–Monteith.
    for d in season {
        assert_eq!(d["missing"], json!({}), "{}", d["date"]);
        assert_eq!(d["devices"]["air_temperature"], DEVICES, "{}", d["date"]);
        assert_eq!(d["et0_method"], "penman_monteith");
        let et0 = d["et0_mm"].as_f64().unwrap();
        assert!((0.3..10.0).contains(&et0), "{}: ET0 {et0}", d["date"]);
        close(d["etc_mm"].as_f64().unwrap(), 0.7 * et0, "ETc = Kc × ET0");
    }
    let num = |d: &Value, k: &str| d[k].as_f64().unwrap_or_else(|| panic!("{k} in {d}"));

    // Degree days: the season sum is the sum of the days.
    let gdd: f64 = season.iter().map(|d| num(d, "gdd")).sum();
    close(
        num(&season[DAYS as usize - 1], "gdd_season"),
        gdd,
        "season GDD",
    );
    assert!(gdd > 0.0);

    // Temperatures, rain and metered irrigation agree with the raw readings.
    let t_max = raw_daily(&daemon, "air_temperature", |v| {
        v.iter().map(|r| r.1).fold(f64::MIN, f64::max)
    });
    let t_min = raw_daily(&daemon, "air_temperature", |v| {
        v.iter().map(|r| r.1).fold(f64::MAX, f64::min)
    });
    let rain = raw_daily(&daemon, "rainfall", |v| v.iter().map(|r| r.1).sum());
    let metered = raw_daily(&daemon, "irrigation", |v| v.iter().map(|r| r.1).sum());
    for (i, d) in season.iter().enumerate() {
        let day = first + i as i64;
        assert_eq!(d["date"], date_of(day));
        close(num(d, "t_max_c"), t_max[&day], "t_max");
        close(num(d, "t_min_c"), t_min[&day], "t_min");
        let base = 13.0;
        close(
            num(d, "gdd"),
            ((t_max[&day] + t_min[&day]) / 2.0 - base).max(0.0),
            "gdd",
        );
        close(num(d, "rain_mm"), rain[&day], "rain");
        let entered = if i == 10 { 12.5 } else { 0.0 };
        close(
            num(d, "irrigation_mm"),
            metered[&day] + entered,
            "irrigation",
        );
    }
    let total_rain: f64 = season.iter().map(|d| num(d, "rain_mm")).sum();
    close(total_rain, rain.values().sum(), "season rain");
    assert!(total_rain > 0.0, "a season without rain tests nothing");
    assert!(
        metered.values().sum::<f64>() > 0.0,
        "the flow meters reported irrigation"
    );

    // The water balance: each day's depletion follows from the day before, and over the
    // season water in, out and drained adds up to the final depletion.
    let mut depletion = 0.0;
    let (mut etc, mut water_in, mut drained, mut excess) = (0.0, 0.0, 0.0, 0.0);
    for d in season {
        let after = depletion + num(d, "etc_mm") - num(d, "rain_mm") - num(d, "irrigation_mm");
        depletion = after.clamp(0.0, ROOT_ZONE_MM);
        close(num(d, "depletion_mm"), depletion, "depletion");
        close(num(d, "drained_mm"), (-after).max(0.0), "drained");
        close(
            num(d, "irrigation_needed_mm"),
            depletion,
            "irrigation to field capacity",
        );
        etc += num(d, "etc_mm");
        water_in += num(d, "rain_mm") + num(d, "irrigation_mm");
        drained += num(d, "drained_mm");
        excess += (after - ROOT_ZONE_MM).max(0.0);
    }
    close(
        depletion,
        etc - water_in + drained - excess,
        "season balance",
    );

    // The day after the season has no readings: no numbers, reasons instead, and the season
    // sums carry over with the day counted as missing.
    let empty = &after[0];
    assert_eq!(empty["gdd"], Value::Null);
    assert_eq!(empty["missing"]["gdd"], "no air_temperature readings");
    assert_eq!(empty["missing"]["rain_mm"], "no rainfall readings");
    assert_eq!(empty["gdd_season_days_missing"], 1);
    close(num(empty, "gdd_season"), gdd, "season GDD carried over");
    // With nothing known but that no water was entered, the depletion carries over and
    // says what it lacked.
    assert_eq!(empty["balance_days_missing"], 1);
    close(
        num(empty, "depletion_mm"),
        depletion,
        "depletion carried over",
    );
    let why = empty["missing"]["depletion_mm"].as_str().unwrap();
    assert!(
        why.contains("etc_mm unknown") && why.contains("rain_mm unknown"),
        "{why}"
    );

    // The same table as CSV.
    let (status, csv) = http_get(daemon.http, &format!("{path}&format=csv")).unwrap();
    assert_eq!(status, 200);
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len() as i64, DAYS + 2, "header and one line a day");
    assert!(lines[0].starts_with("orchard,block,date,gdd,gdd_season,"));
    assert!(lines[1].starts_with(&format!("orchard-1,B1,{},", date_of(first))));
    assert!(
        lines
            .last()
            .unwrap()
            .contains("gdd: no air_temperature readings")
    );

    // Questions the endpoint cannot answer get a reason.
    let (status, body) = daemon.get("/api/v1/indices?orchard=orchard-1");
    assert_eq!(status, 400, "{body}");
    let (status, body) = daemon.get(&format!(
        "/api/v1/indices?orchard=orchard-1&block=B1&from={}&to={}",
        date_of(first + 5),
        date_of(first)
    ));
    assert_eq!(status, 400, "{body}");
    let (status, body) = http_request(
        daemon.http,
        "POST",
        "/api/v1/irrigation",
        r#"{"orchard": "orchard-1", "block": "B1", "date": "2026-02-30", "mm": 5}"#,
    )
    .unwrap();
    assert_eq!(status, 400, "{body}");
    let listed = daemon.get_ok(&format!(
        "/api/v1/irrigation?orchard=orchard-1&block=B1&from={}&to={}",
        date_of(first),
        date_of(first + DAYS)
    ));
    assert_eq!(listed["irrigation"][0]["mm"], 12.5);
    assert_eq!(listed["irrigation"][0]["note"], "hand line");
}
