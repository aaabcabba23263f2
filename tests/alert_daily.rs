//! Daily-index rules through the real endpoint: a wet, mild day raises a melanose-risk alert
//! for its block and a dry, hot day an irrigation alert whose depth is the water balance's;
//! a day that does not hold raises nothing; staff resolving an alert and a restart bring no
//! second alert for the same day.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::{Daemon, DaemonConfig, mosquitto_pub_lines, wait_for};

const DAY_MS: i64 = 86_400_000;
const STEP_MS: i64 = 15 * 60_000;

// The test's own rules, without `months`, so that the test holds in any month; the shipped
// pack's melanose and irrigation rules watch their months only.
const RULES: &str = r#"
[[rule]]
id = "melanose"
kind = "daily"
severity = "major"
when.leaf_wet_hours = { above = 10.0 }
when.t_mean_c = { above = 20.0, below = 28.0 }
action.en = "Melanose risk in {block}: leaves wet {leaf_wet_hours:.0} h at {t_mean_c:.1} °C on {date}."
action.zh = "{block} 砂皮病风险：{date} 叶面湿润 {leaf_wet_hours:.0} 小时。"

[[rule]]
id = "irrigate"
kind = "daily"
severity = "major"
when.irrigation_needed_mm = { above = 0.5 }
not_before_harvest = "30d"
action.en = "Irrigate {block} with about {irrigation_needed_mm:.1} mm today ({date})."
action.zh = "{block} 今天请灌溉约 {irrigation_needed_mm:.1} 毫米（{date}）。"
"#;

/// Yesterday's local (UTC, as shipped) midnight.
fn yesterday() -> i64 {
    let now = support::now_ms();
    now - now.rem_euclid(DAY_MS) - DAY_MS
}

/// A reading every 15 minutes through yesterday, of `kind`, valued by the time of day (ms).
fn day_of(kind: &str, value: impl Fn(i64) -> f64) -> Vec<String> {
    let start = yesterday();
    (0..DAY_MS / STEP_MS)
        .map(|i| {
            let ts = start + i * STEP_MS;
            json!({"ts": ts, "readings": {kind: value(ts - start)}}).to_string()
        })
        .collect()
}

fn alerts(daemon: &Daemon, query: &str) -> Vec<Value> {
    daemon.get_ok(&format!("/api/v1/alerts?{query}"))["alerts"]
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn a_wet_mild_day_and_a_dry_hot_one_each_raise_their_blocks_alert_once() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules");
    std::fs::create_dir_all(&rules).unwrap();
    std::fs::write(rules.join("daily.toml"), RULES).unwrap();
    // B4, as dry as B2, is picked from ten days on (a day of the year every year has): the
    // irrigation rule says nothing in the last 30 days before a harvest.
    let harvest = [10, 11]
        .map(|d| support::rfc3339(support::now_ms() + d * DAY_MS)[5..10].to_owned())
        .into_iter()
        .find(|md| md != "02-29")
        .unwrap();
    let cfg = DaemonConfig {
        extra: format!(
            // The test's rules; blocks with a site, so their water balance is known; and
            // `daily_every` of 1 s instead of the shipped 5 min, so that a block is judged
            // again as soon as the test's day of readings is in (the default's schedule has a
            // unit test of its own).
            "[alerts]\nrules_dir = \"{}\"\ndaily_every = \"1s\"\n\
             [[blocks]]\norchard = \"fengjie\"\nblock = \"B2\"\nlatitude = 31.0\nelevation_m = 300.0\n\
             [[blocks]]\norchard = \"fengjie\"\nblock = \"B4\"\nlatitude = 31.0\nelevation_m = 300.0\n\
             harvest_from = \"{harvest}\"\n",
            rules.display()
        ),
        ..DaemonConfig::shipped_defaults_embedded()
    };
    let mut daemon = Daemon::start(dir.path(), &cfg);
    daemon.wait_ready();
    let port = cfg.broker_port();
    let hour = |ms: i64| ms as f64 / 3_600_000.0;

    // Within a few tenths of a degree all day (a value that never changes is a stuck sensor).
    let steady = |c: f64| move |t: i64| c + 0.3 * (hour(t) / 24.0 * std::f64::consts::TAU).sin();
    // B1: wet from midnight to 12:00 at about 24 °C.
    let b1 = "orchards/fengjie/B1/leaf-1/telemetry";
    mosquitto_pub_lines(port, b1, &day_of("air_temperature", steady(24.0)));
    mosquitto_pub_lines(
        port,
        b1,
        &day_of("leaf_wetness", |t| if hour(t) < 12.0 { 100.0 } else { 0.0 }),
    );
    // B3: as wet, but cold (12 °C): no melanose weather.
    let b3 = "orchards/fengjie/B3/leaf-3/telemetry";
    mosquitto_pub_lines(port, b3, &day_of("air_temperature", steady(12.0)));
    mosquitto_pub_lines(
        port,
        b3,
        &day_of("leaf_wetness", |t| if hour(t) < 12.0 { 100.0 } else { 0.0 }),
    );
    // B2 and B4: dry and hot, 18 °C at dawn to 34 °C in the afternoon.
    let (b2, b4) = (
        "orchards/fengjie/B2/air-2/telemetry",
        "orchards/fengjie/B4/air-4/telemetry",
    );
    for topic in [b2, b4] {
        mosquitto_pub_lines(
            port,
            topic,
            &day_of("air_temperature", |t| {
                26.0 - 8.0 * ((hour(t) - 3.0) / 24.0 * std::f64::consts::TAU).cos()
            }),
        );
    }

    let open = wait_for(Duration::from_secs(60), "both daily alerts", || {
        let open = alerts(&daemon, "state=open");
        (open.len() >= 2).then_some(open)
    });
    std::thread::sleep(Duration::from_secs(3));
    let open = {
        let again = alerts(&daemon, "state=open");
        assert_eq!(again.len(), open.len(), "{again:#?}");
        again
    };
    let mut named: Vec<String> = open
        .iter()
        .map(|a| {
            format!(
                "{} {}",
                a["rule"].as_str().unwrap(),
                a["scope"].as_str().unwrap()
            )
        })
        .collect();
    named.sort();
    assert_eq!(named, ["irrigate fengjie/B2", "melanose fengjie/B1"]);
    let date = support::rfc3339(yesterday())[..10].to_owned();
    let today = support::rfc3339(yesterday() + DAY_MS)[..10].to_owned();
    let melanose = open.iter().find(|a| a["rule"] == "melanose").unwrap();
    assert_eq!(
        melanose["action"]["en"],
        format!("Melanose risk in B1: leaves wet 12 h at 24.0 °C on {date}.")
    );
    assert_eq!(melanose["since"], support::rfc3339(yesterday()));

    // The depth is the balance's, as the indices show it.
    let indices = daemon.get_ok(&format!(
        "/api/v1/indices?orchard=fengjie&block=B2&from={date}&to={today}"
    ));
    let needed = indices["days"][0]["irrigation_needed_mm"].as_f64().unwrap();
    assert!(needed > 0.5, "{indices:#}");
    let irrigate = open.iter().find(|a| a["rule"] == "irrigate").unwrap();
    assert_eq!(
        irrigate["action"]["en"],
        format!("Irrigate B2 with about {needed:.1} mm today ({date}).")
    );
    assert_eq!(irrigate["value"].as_f64().unwrap(), needed);

    // Staff resolve the melanose alert: the same day does not raise it again, not even after
    // a restart, which judges every block afresh.
    let id = melanose["id"].as_i64().unwrap();
    let (status, body) = support::http_request(
        daemon.http,
        "POST",
        &format!("/api/v1/alerts/{id}/resolve"),
        r#"{"by": "Wang Fang", "note": "sprayed copper"}"#,
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(daemon.sigterm().success());
    daemon.restart();
    daemon.wait_ready();
    // A reading from each block, so the restarted daemon judges them.
    for topic in [b1, b2, b3, b4] {
        let now = json!({"readings": {"air_temperature": 20.0}}).to_string();
        mosquitto_pub_lines(port, topic, &[now]);
    }
    std::thread::sleep(Duration::from_secs(12));
    let all = alerts(&daemon, "");
    assert_eq!(all.len(), 2, "{all:#?}");
    let open = alerts(&daemon, "state=open");
    assert_eq!(open.len(), 1);
    assert_eq!(open[0]["rule"], "irrigate");
}

#[test]
fn fruit_samples_that_reach_the_shipped_sugar_and_ratio_say_a_block_is_ready_to_pick() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = DaemonConfig {
        // The shipped rule pack. `daily_every` of 1 s instead of the shipped 5 min, so that
        // a block is judged again as soon as its samples are in (the default's schedule has a
        // unit test of its own).
        extra: "[alerts]\ndaily_every = \"1s\"\n".into(),
        ..DaemonConfig::shipped_defaults_embedded()
    };
    let daemon = Daemon::start(dir.path(), &cfg);
    daemon.wait_ready();
    let port = cfg.broker_port();
    let samples = |brix: [f64; 3], acid: [f64; 3]| -> Vec<String> {
        (0..3)
            .map(|i| {
                let ts = yesterday() + 9 * 3_600_000 + i * 600_000;
                json!({"ts": ts, "readings": {"tss": brix[i as usize], "titratable_acidity": acid[i as usize]}})
                    .to_string()
            })
            .collect()
    };
    // B4 is sweet enough and its acid low enough; B5 is not sweet enough yet.
    mosquitto_pub_lines(
        port,
        "orchards/fengjie/B4/refractometer-1/telemetry",
        &samples([11.8, 12.1, 11.6], [0.85, 0.90, 0.80]),
    );
    mosquitto_pub_lines(
        port,
        "orchards/fengjie/B5/refractometer-2/telemetry",
        &samples([10.2, 10.6, 10.1], [0.70, 0.75, 0.72]),
    );
    let open = wait_for(Duration::from_secs(60), "the harvest alert", || {
        let open = alerts(&daemon, "state=open");
        (!open.is_empty()).then_some(open)
    });
    std::thread::sleep(Duration::from_secs(3));
    let open = {
        let again = alerts(&daemon, "state=open");
        assert_eq!(again.len(), open.len(), "{again:#?}");
        again
    };
    assert_eq!(open.len(), 1, "{open:#?}");
    assert_eq!(open[0]["rule"], "harvest-ready");
    assert_eq!(open[0]["scope"], "fengjie/B4");
    let date = support::rfc3339(yesterday())[..10].to_owned();
    // 11.83 °Brix, 0.85 % acid: a ratio of 13.9, BrimA 8.4.
    assert_eq!(
        open[0]["action"]["en"],
        format!(
            "Fruit in B4 is ready to pick: the samples of {date} average 11.8 °Brix at a TSS/acid ratio of 13.9 (BrimA 8.4)."
        )
    );
    let today = support::rfc3339(yesterday() + DAY_MS)[..10].to_owned();
    let day = &daemon.get_ok(&format!(
        "/api/v1/indices?orchard=fengjie&block=B5&from={date}&to={today}"
    ))["days"][0];
    assert!(
        (day["tss_brix"].as_f64().unwrap() - 10.3).abs() < 1e-9,
        "{day:#}"
    );
    // Its ratio is high enough; the sugar is what it lacks.
    let ratio = 10.3 / ((0.70 + 0.75 + 0.72) / 3.0);
    assert!(
        (day["tss_acid_ratio"].as_f64().unwrap() - ratio).abs() < 1e-9,
        "{day:#}"
    );
}
