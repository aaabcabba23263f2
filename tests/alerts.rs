//! Alert rules through the real endpoint: a frost night fires one critical alert that a real
//! MQTT subscriber (Debian's `mosquitto_sub`) hears, and resolves it after sunrise; a value
//! oscillating around the threshold gives one alert; `kill -9` in the middle of a duration
//! neither loses nor restarts it; staff acknowledge and resolve through the API.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use support::{Daemon, DaemonConfig, http_request, mosquitto_pub_lines, require_binary, wait_for};

const MIN: i64 = 60_000;

const RULES: &str = r#"
[[rule]]
id = "frost"
kind = "threshold"
measure = "air_temperature"
severity = "critical"
below = 0.0
for = "30m"
clear_above = 1.0
clear_for = "30m"
action.en = "Frost in {block} ({device}): {value:.1} °C, below {threshold} °C since {since}. Start frost protection."
action.zh = "{block}（{device}）霜冻：{value:.1} °C。请启动防霜措施。"
source = "test"
"#;

/// One air-temperature message every 10 minutes from `start`.
fn every_10_min(start: i64, values: &[f64]) -> Vec<String> {
    values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            json!({"ts": start + i as i64 * 10 * MIN, "readings": {"air_temperature": v}})
                .to_string()
        })
        .collect()
}

fn start(dir: &std::path::Path) -> (Daemon, DaemonConfig) {
    start_with(
        dir,
        &[("frost.toml", RULES)],
        "",
        DaemonConfig::shipped_defaults_embedded(),
    )
}

/// orchardd as `base` has it (the shipped defaults) but for its rules: `rules` (file name and
/// text) are the only rule files, in `dir/rules`, and `more` config follows the `[alerts]`
/// key that points there. Started and ready.
fn start_with(
    dir: &std::path::Path,
    rules: &[(&str, &str)],
    more: &str,
    base: DaemonConfig,
) -> (Daemon, DaemonConfig) {
    let rules_dir = dir.join("rules");
    std::fs::create_dir_all(&rules_dir).unwrap();
    for (file, text) in rules {
        std::fs::write(rules_dir.join(file), text).unwrap();
    }
    let cfg = DaemonConfig {
        extra: format!("[alerts]\nrules_dir = \"{}\"\n{more}", rules_dir.display()),
        ..base
    };
    let daemon = Daemon::start(dir, &cfg);
    daemon.wait_ready();
    (daemon, cfg)
}

/// Debian's `mosquitto_sub` on fengjie's alerts, at QoS 1, leaving after `count` messages
/// (or 60 s); `session` makes it a persistent session of that client id.
fn listen(port: u16, count: u32, session: Option<&str>) -> Child {
    let mut sub = Command::new(require_binary("mosquitto_sub", "mosquitto-clients"));
    sub.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
        .args([
            "-t",
            "orchards/fengjie/alerts",
            "-C",
            &count.to_string(),
            "-W",
            "60",
        ]);
    if let Some(id) = session {
        sub.args(["-c", "-i", id]);
    }
    sub.stdout(Stdio::piped()).spawn().unwrap()
}

/// The alert events a [`listen`]er heard.
fn heard(sub: Child) -> Vec<Value> {
    let out = sub.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn alerts(daemon: &Daemon, query: &str) -> Vec<Value> {
    daemon.get_ok(&format!("/api/v1/alerts?{query}"))["alerts"]
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn a_frost_night_fires_one_critical_alert_that_a_subscriber_hears_and_resolves_after_sunrise() {
    let dir = tempfile::tempdir().unwrap();
    let (daemon, cfg) = start(dir.path());
    let port = cfg.broker_port();
    let sub = listen(port, 2, None);
    // Let the subscription be in place before the night begins.
    std::thread::sleep(Duration::from_millis(500));

    let night = support::now_ms() - 24 * 60 * MIN;
    mosquitto_pub_lines(
        port,
        "orchards/fengjie/B1/ws1/telemetry",
        &frost_night(night),
    );

    let heard = heard(sub);
    assert_eq!(heard.len(), 2, "fired and resolved: {heard:?}");
    assert_eq!(heard[0]["event"], "fired");
    assert_eq!(heard[1]["event"], "resolved");
    let fired = &heard[0]["alert"];
    assert_eq!(fired["id"], heard[1]["alert"]["id"]);
    assert_eq!(fired["severity"], "critical");
    assert_eq!(fired["scope"], "fengjie/B1/ws1");
    // It fired at 01:30 (30 minutes below 0 from 01:00) with the reading then.
    let at = |i: i64| support::rfc3339(night + i * 10 * MIN);
    assert_eq!(fired["since"], at(18));
    assert_eq!(fired["fired_at"], at(21));
    let action = fired["action"]["en"].as_str().unwrap();
    assert!(action.starts_with("Frost in B1 (ws1): -"), "{action}");
    assert!(action.contains("below 0 °C"), "{action}");
    assert!(fired["action"]["zh"].as_str().unwrap().contains("霜冻"));
    // Resolved when 1 °C or more had held for 30 minutes: from 06:10, at 06:40.
    assert_eq!(heard[1]["alert"]["resolved_at"], at(52));

    let all = alerts(&daemon, "");
    assert_eq!(all.len(), 1, "one cause, one alert: {all:?}");
    let id = all[0]["id"].as_i64().unwrap();
    // The subscriber can hear an event a moment before its delivery is recorded.
    let detail = wait_for(Duration::from_secs(10), "both deliveries recorded", || {
        let d = daemon.get_ok(&format!("/api/v1/alerts/{id}"));
        d["events"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["deliveries"][0]["delivered_at"].is_string())
            .then_some(d)
    });
    let events: Vec<&str> = detail["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(events, ["fired", "resolved"]);
    for e in detail["events"].as_array().unwrap() {
        assert_eq!(e["deliveries"][0]["channel"], "mqtt");
        assert!(e["deliveries"][0]["delivered_at"].is_string(), "{e}");
    }
    assert!(alerts(&daemon, "state=open").is_empty());
}

#[test]
fn oscillation_gives_one_alert_kill_9_keeps_a_duration_and_staff_answer_it() {
    let dir = tempfile::tempdir().unwrap();
    let (mut daemon, cfg) = start(dir.path());
    let port = cfg.broker_port();
    let base = support::now_ms() - 12 * 60 * MIN;

    // Below 0 for half an hour, then ±0.3 °C around 0 for six hours: one alert, still
    // firing (it never reaches the 1 °C that clears it), no flapping.
    let mut wobble = vec![-0.5, -0.6, -0.5, -0.6];
    wobble.extend((0..36).map(|i| if i % 2 == 0 { 0.3 } else { -0.3 }));
    mosquitto_pub_lines(
        port,
        "orchards/fengjie/B2/ws2/telemetry",
        &every_10_min(base, &wobble),
    );
    wait_for(Duration::from_secs(20), "the wobble's alert", || {
        (alerts(&daemon, "state=firing").len() == 1).then_some(())
    });
    let open = alerts(&daemon, "state=open");
    assert_eq!(open.len(), 1, "{open:?}");
    assert_eq!(open[0]["scope"], "fengjie/B2/ws2");

    // 20 of the 30 minutes below 0 on ws3, then kill -9.
    let cold = base + 7 * 60 * MIN;
    mosquitto_pub_lines(
        port,
        "orchards/fengjie/B3/ws3/telemetry",
        &every_10_min(cold, &[-1.0, -1.1, -1.2]),
    );
    wait_for(Duration::from_secs(20), "three readings stored", || {
        (daemon.metric("orchardd_readings_accepted_total") >= 43.0).then_some(())
    });
    daemon.kill9();
    daemon.restart();
    daemon.wait_ready();
    assert_eq!(alerts(&daemon, "block=B3").len(), 0, "not yet");
    // The fourth reading completes the 30 minutes counted before the kill.
    let fourth = json!({"ts": cold + 30 * MIN, "readings": {"air_temperature": -1.3}}).to_string();
    mosquitto_pub_lines(port, "orchards/fengjie/B3/ws3/telemetry", &[fourth]);
    wait_for(Duration::from_secs(20), "ws3's alert", || {
        (alerts(&daemon, "block=B3").len() == 1).then_some(())
    });
    let b3 = &alerts(&daemon, "block=B3")[0];
    assert_eq!(
        b3["since"],
        support::rfc3339(cold),
        "the duration kept its start"
    );

    // Staff acknowledge the wobble's alert (it stays open), then resolve it.
    let id = open[0]["id"].as_i64().unwrap();
    let post = |path: &str, body: &str| {
        http_request(
            daemon.http,
            "POST",
            &format!("/api/v1/alerts/{id}/{path}"),
            body,
        )
        .unwrap()
    };
    let (status, body) = post("ack", r#"{"by": "Li Wei", "note": "fans on"}"#);
    assert_eq!(status, 200, "{body}");
    let acked: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(acked["state"], "acknowledged");
    assert_eq!(acked["acknowledged"]["by"], "Li Wei");
    assert_eq!(acked["acknowledged"]["note"], "fans on");
    let (status, _) = post("ack", r#"{"by": "Li Wei"}"#);
    assert_eq!(status, 409, "acknowledged already");
    assert_eq!(alerts(&daemon, "state=open").len(), 2);
    let (status, body) = post("resolve", r#"{"by": "Li Wei", "note": "sun up"}"#);
    assert_eq!(status, 200, "{body}");
    let (status, _) = post("resolve", r#"{"by": "Li Wei"}"#);
    assert_eq!(status, 409, "resolved already");
    let (status, _) = post("ack", "not json");
    assert_eq!(status, 400);
    let (status, _) = daemon.get("/api/v1/alerts/999999");
    assert_eq!(status, 404);
    let (status, _) = daemon.get("/api/v1/alerts?state=sleeping");
    assert_eq!(status, 400);
    let events: Vec<String> = daemon.get_ok(&format!("/api/v1/alerts/{id}"))["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            format!(
                "{} {}",
                e["event"].as_str().unwrap(),
                e["by"].as_str().unwrap_or("-")
            )
        })
        .collect();
    assert_eq!(
        events,
        ["fired -", "acknowledged Li Wei", "resolved Li Wei"]
    );

    // Still freezing after staff resolved it: a new alert, linked to the last.
    let later = every_10_min(base + 40 * 10 * MIN, &[-1.0, -1.1, -1.2, -1.3]);
    mosquitto_pub_lines(port, "orchards/fengjie/B2/ws2/telemetry", &later);
    wait_for(Duration::from_secs(20), "the re-fire", || {
        (alerts(&daemon, "block=B2&state=firing").len() == 1).then_some(())
    });
    let again = &alerts(&daemon, "block=B2&state=firing")[0];
    assert_ne!(again["id"], id);
    assert_eq!(again["previous"], id);
}

/// Last night: 3 °C at 22:00, below 0 from 01:00 to 05:50, warming by 0.5 °C each ten minutes
/// after sunrise; one reading every ten minutes.
fn frost_night(night: i64) -> Vec<String> {
    let values: Vec<f64> = (0..60)
        .map(|i| match i {
            0..18 => 3.0 - i as f64 * 0.15,
            18..48 => -0.5 - ((i - 18) % 5) as f64 * 0.3,
            _ => 0.5 + (i - 48) as f64 * 0.5,
        })
        .collect();
    every_10_min(night, &values)
}

#[test]
fn late_readings_complete_a_duration_once_and_redelivery_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (mut daemon, cfg) = start(dir.path());
    let port = cfg.broker_port();
    let topic = "orchards/fengjie/B4/ws4/telemetry";
    let night = support::now_ms() - 24 * 60 * MIN;
    let at = |i: i64| support::rfc3339(night + i * 10 * MIN);
    let all = frost_night(night);

    // A gateway's buffer sends 01:00, then 02:00 and 02:10, before what lies between: after an
    // hour unheard the condition is unknown, and twenty minutes below 0 fire nothing yet.
    let mut first = all[..19].to_vec();
    first.extend_from_slice(&all[24..26]);
    mosquitto_pub_lines(port, topic, &first);
    assert!(alerts(&daemon, "block=B4").is_empty());

    // orchardd restarts before the rest arrives: the late readings are judged against the
    // progress on disk, and close the gap. Below 0 since 01:00, for 30 minutes at 01:30.
    assert!(daemon.sigterm().success());
    daemon.restart();
    daemon.wait_ready();
    mosquitto_pub_lines(port, topic, &all[19..24]);
    let fired = wait_for(
        Duration::from_secs(20),
        "the alert the late readings complete",
        || {
            let a = alerts(&daemon, "block=B4");
            (a.len() == 1).then(|| a[0].clone())
        },
    );
    assert_eq!(fired["since"], at(18));
    assert_eq!(fired["fired_at"], at(21));
    assert_eq!(fired["state"], "firing");

    // The broker redelivers all of it; the rest of the night comes; a reading of the frost
    // that is over arrives late; and then the whole night once more.
    mosquitto_pub_lines(port, topic, &all[..26]);
    mosquitto_pub_lines(port, topic, &all[26..]);
    let straggler = json!({"ts": night + 305 * MIN, "readings": {"air_temperature": -2.4}});
    mosquitto_pub_lines(port, topic, &[straggler.to_string()]);
    mosquitto_pub_lines(port, topic, &all);

    wait_for(Duration::from_secs(20), "the resolve", || {
        (alerts(&daemon, "block=B4&state=resolved").len() == 1).then_some(())
    });
    let after = alerts(&daemon, "block=B4");
    assert_eq!(after.len(), 1, "one frost, one alert: {after:?}");
    assert_eq!(after[0]["id"], fired["id"]);
    assert_eq!(after[0]["resolved_at"], at(52));
    let id = fired["id"].as_i64().unwrap();
    let events: Vec<Value> = daemon.get_ok(&format!("/api/v1/alerts/{id}"))["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].clone())
        .collect();
    assert_eq!(events, ["fired", "resolved"]);
    assert_eq!(daemon.metric("orchardd_readings_duplicate_total"), 86.0);
}

#[test]
fn with_an_external_broker_alerts_go_to_its_subscribers_and_wait_out_its_outage() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = support::Mosquitto::start(dir.path());
    let (daemon, _) = start_with(
        dir.path(),
        &[("frost.toml", RULES)],
        "",
        DaemonConfig::shipped_defaults_external(broker.port),
    );
    // A persistent subscriber of the alerts, as a co-op's own software would be: it keeps its
    // subscription at the broker while it is away.
    let port = broker.port;
    let watch = move || listen(port, 1, Some("alert-watch"));
    let sub = watch();
    std::thread::sleep(Duration::from_millis(500));

    let night = support::now_ms() - 24 * 60 * MIN;
    mosquitto_pub_lines(
        broker.port,
        "orchards/fengjie/B5/ws5/telemetry",
        &frost_night(night)[..30],
    );
    let fired = heard(sub);
    assert_eq!(fired.len(), 1, "{fired:?}");
    assert_eq!(fired[0]["event"], "fired");
    assert_eq!(fired[0]["alert"]["scope"], "fengjie/B5/ws5");
    let id = fired[0]["alert"]["id"].as_i64().unwrap();

    // The broker goes down; staff acknowledge meanwhile. The event waits, each attempt logged.
    broker.stop();
    let (status, body) = http_request(
        daemon.http,
        "POST",
        &format!("/api/v1/alerts/{id}/ack"),
        r#"{"by": "Li Wei", "note": "fans on"}"#,
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let mqtt_delivery = |d: &Value| d["events"][1]["deliveries"][0].clone();
    let waiting = wait_for(Duration::from_secs(20), "a failed attempt", || {
        let d = mqtt_delivery(&daemon.get_ok(&format!("/api/v1/alerts/{id}")));
        (d["attempts"].as_i64() >= Some(1)).then_some(d)
    });
    assert_eq!(waiting["channel"], "mqtt");
    assert!(waiting["delivered_at"].is_null(), "{waiting}");
    assert!(waiting["last_error"].is_string(), "{waiting}");

    // Back: the event is delivered once, to the subscriber that was away.
    broker.start_again();
    let d = wait_for(Duration::from_secs(30), "the delivery", || {
        let d = mqtt_delivery(&daemon.get_ok(&format!("/api/v1/alerts/{id}")));
        d["delivered_at"].is_string().then_some(d)
    });
    let log = d["log"].as_array().unwrap();
    assert!(log.len() >= 2, "{d}");
    assert!(
        log[..log.len() - 1].iter().all(|a| a["error"].is_string()),
        "{d}"
    );
    assert!(log[log.len() - 1]["error"].is_null(), "{d}");
    let acked = heard(watch());
    assert_eq!(acked.len(), 1, "{acked:?}");
    assert_eq!(acked[0]["event"], "acknowledged");
    assert_eq!(acked[0]["alert"]["id"], id);
    assert_eq!(acked[0]["alert"]["acknowledged"]["by"], "Li Wei");
}

const NO_DATA_RULES: &str = r#"
[[rule]]
id = "frost-failsafe"
kind = "threshold"
measure = "air_temperature"
severity = "critical"
below = 0.0
clear_above = 1.0
devices = ["ws6"]
on_no_data = "fire"
action.en = "Frost in {block} ({device}): start frost protection."
action.zh = "{block}（{device}）霜冻：请启动防霜措施。"

[[rule]]
id = "heat"
kind = "threshold"
measure = "air_temperature"
severity = "major"
above = 35.0
devices = ["ws7"]
on_no_data = "ignore"
action.en = "Heat in {block} ({device}): {value:.1} °C."
action.zh = "{block}（{device}）高温：{value:.1} °C。"
"#;

#[test]
fn no_data_fires_a_frost_rule_that_asks_for_it_and_resolves_a_heat_rule_that_ignores_it() {
    let dir = tempfile::tempdir().unwrap();
    // Stations that report every second, so that the gap limit (two reports) takes seconds
    // rather than the half hour of the shipped 15-minute interval.
    std::fs::write(
        dir.path().join("devices.toml"),
        "[[device]]\nid = \"ws6\"\norchard = \"fengjie\"\nblock = \"B6\"\nexpected_interval = \"1s\"\n\
         [[device]]\nid = \"ws7\"\norchard = \"fengjie\"\nblock = \"B6\"\nexpected_interval = \"1s\"\n",
    )
    .unwrap();
    let (daemon, cfg) = start_with(
        dir.path(),
        &[("no-data.toml", NO_DATA_RULES)],
        "",
        DaemonConfig::shipped_defaults_embedded(),
    );
    let port = cfg.broker_port();
    let now = support::now_ms();
    let reading =
        |ts: i64, v: f64| json!({"ts": ts, "readings": {"air_temperature": v}}).to_string();
    mosquitto_pub_lines(
        port,
        "orchards/fengjie/B6/ws6/telemetry",
        &[reading(now - 1000, 0.6), reading(now, 0.5)],
    );
    mosquitto_pub_lines(
        port,
        "orchards/fengjie/B6/ws7/telemetry",
        &[reading(now - 1000, 36.1), reading(now, 36.4)],
    );
    assert_eq!(alerts(&daemon, "state=open&block=B6").len(), 1, "the heat");

    // Both fall silent: ws6's frost rule counts no data as frost, ws7's heat alert resolves.
    let fired = wait_for(Duration::from_secs(20), "the failsafe frost alert", || {
        let a = alerts(&daemon, "state=firing&block=B6");
        (a.len() == 1 && a[0]["rule"] == "frost-failsafe").then(|| a[0].clone())
    });
    assert_eq!(fired["scope"], "fengjie/B6/ws6");
    assert_eq!(fired["severity"], "critical");
    assert_eq!(fired["value"], 0.5, "the last reading");
    let en = fired["action"]["en"].as_str().unwrap();
    assert!(
        en.starts_with("No data from ws6 since") && en.ends_with("start frost protection."),
        "{en}"
    );
    assert!(fired["action"]["zh"].as_str().unwrap().contains("无数据"));
    let heat: Vec<Value> = alerts(&daemon, "block=B6")
        .into_iter()
        .filter(|a| a["rule"] == "heat")
        .collect();
    assert_eq!(heat.len(), 1, "{heat:?}");
    assert_eq!(heat[0]["state"], "resolved");
    // One silence, one alert.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(alerts(&daemon, "block=B6").len(), 2);

    // ws6 reads again, above the clear threshold: the readings resolve what no data fired.
    mosquitto_pub_lines(
        port,
        "orchards/fengjie/B6/ws6/telemetry",
        &[reading(support::now_ms(), 2.5)],
    );
    wait_for(Duration::from_secs(10), "the resolve", || {
        alerts(&daemon, "state=open&block=B6")
            .is_empty()
            .then_some(())
    });
    assert_eq!(alerts(&daemon, "block=B6").len(), 2);
}

#[test]
fn a_condition_already_true_when_a_rule_arrives_fires_once() {
    let dir = tempfile::tempdir().unwrap();
    let (mut daemon, cfg) = start_with(
        dir.path(),
        &[],
        "",
        DaemonConfig::shipped_defaults_embedded(),
    );
    let rules = dir.path().join("rules");
    let port = cfg.broker_port();
    // 40 minutes below 0 while no rule watches.
    let t = support::now_ms() - 6 * 60 * MIN;
    let cold = every_10_min(t, &[-1.0, -1.1, -1.2, -1.3, -1.4]);
    mosquitto_pub_lines(port, "orchards/fengjie/B1/ws1/telemetry", &cold);
    wait_for(Duration::from_secs(20), "stored", || {
        (daemon.stored_readings().len() == 5).then_some(())
    });
    // The frost rule arrives with a restart; the next reading finds it already true.
    assert!(daemon.sigterm().success());
    std::fs::write(rules.join("frost.toml"), RULES).unwrap();
    daemon.restart();
    daemon.wait_ready();
    let next = every_10_min(t + 50 * MIN, &[-1.5]);
    mosquitto_pub_lines(port, "orchards/fengjie/B1/ws1/telemetry", &next);
    wait_for(Duration::from_secs(20), "the alert", || {
        (alerts(&daemon, "state=firing").len() == 1).then_some(())
    });
    let a = &alerts(&daemon, "")[0];
    assert_eq!(a["since"], support::rfc3339(t));
    assert_eq!(a["fired_at"], support::rfc3339(t + 30 * MIN));
    // Once: another restart and reading change nothing.
    assert!(daemon.sigterm().success());
    daemon.restart();
    daemon.wait_ready();
    mosquitto_pub_lines(
        port,
        "orchards/fengjie/B1/ws1/telemetry",
        &every_10_min(t + 60 * MIN, &[-1.6]),
    );
    wait_for(Duration::from_secs(20), "stored", || {
        (daemon.stored_readings().len() == 7).then_some(())
    });
    assert_eq!(alerts(&daemon, "").len(), 1);
}

#[test]
fn the_shipped_citrus_pack_warns_of_frost_and_then_of_a_damaging_one() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = DaemonConfig::shipped_defaults_embedded();
    let daemon = Daemon::start(dir.path(), &cfg);
    daemon.wait_ready();
    // Four and a half hours between -2.5 and -3.3 °C.
    let t = support::now_ms() - 8 * 60 * MIN;
    let values: Vec<f64> = (0..28).map(|i| -2.5 - (i % 5) as f64 * 0.2).collect();
    mosquitto_pub_lines(
        cfg.broker_port(),
        "orchards/fengjie/B1/ws1/telemetry",
        &every_10_min(t, &values),
    );
    wait_for(Duration::from_secs(20), "both frost alerts", || {
        (alerts(&daemon, "state=firing").len() == 2).then_some(())
    });
    let open = alerts(&daemon, "state=firing");
    // Most severe first.
    assert_eq!(open[0]["rule"], "frost-critical");
    assert_eq!(open[0]["severity"], "critical");
    assert_eq!(open[0]["fired_at"], support::rfc3339(t + 4 * 60 * MIN));
    assert_eq!(open[1]["rule"], "frost-warning");
    assert_eq!(open[1]["fired_at"], support::rfc3339(t + 10 * MIN));
}

#[test]
fn sighup_reloads_the_rules_keeping_progress_and_refuses_a_broken_file() {
    let dir = tempfile::tempdir().unwrap();
    let (daemon, cfg) = start(dir.path());
    let port = cfg.broker_port();
    let topic = "orchards/fengjie/B1/ws1/telemetry";
    let t = support::now_ms() - 6 * 60 * MIN;
    mosquitto_pub_lines(port, topic, &every_10_min(t, &[-1.0, -1.1, -1.2]));
    wait_for(Duration::from_secs(20), "stored", || {
        (daemon.stored_readings().len() == 3).then_some(())
    });
    // The rule changes (a new severity), its id does not: its 20 minutes are kept.
    let file = dir.path().join("rules").join("frost.toml");
    std::fs::write(
        &file,
        RULES.replace("severity = \"critical\"", "severity = \"major\""),
    )
    .unwrap();
    support::signal(daemon.pid(), "HUP");
    wait_for(Duration::from_secs(10), "the reload", || {
        daemon
            .log_text()
            .contains("SIGHUP: configuration reloaded")
            .then_some(())
    });
    mosquitto_pub_lines(port, topic, &every_10_min(t + 30 * MIN, &[-1.3]));
    wait_for(Duration::from_secs(20), "the alert", || {
        (alerts(&daemon, "state=firing").len() == 1).then_some(())
    });
    let a = &alerts(&daemon, "")[0];
    assert_eq!(a["severity"], "major");
    assert_eq!(a["since"], support::rfc3339(t));

    // A broken file is refused, with its problem, and the running rules stay.
    std::fs::write(&file, RULES.replace("below = 0.0", "below = \"cold\"")).unwrap();
    support::signal(daemon.pid(), "HUP");
    wait_for(Duration::from_secs(10), "the refusal", || {
        daemon
            .log_text()
            .contains("everything keeps running as it was")
            .then_some(())
    });
    assert!(daemon.log_text().contains("frost.toml: rule[0]"));
    mosquitto_pub_lines(
        port,
        topic,
        &every_10_min(t + 40 * MIN, &[2.0, 2.1, 2.2, 2.3]),
    );
    wait_for(
        Duration::from_secs(20),
        "resolved by the running rule",
        || (alerts(&daemon, "state=resolved").len() == 1).then_some(()),
    );
}

/// A webhook receiver in Python's standard library: it checks each body's HMAC-SHA256 with
/// the shared secret, answers the first POST with 500 and the rest with 200, and prints a
/// JSON line per request.
const RECEIVER: &str = r#"
import hashlib, hmac, http.server, json, sys
SECRET = b"s3cret"
seen = 0
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        global seen
        body = self.rfile.read(int(self.headers["content-length"]))
        want = "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest()
        ok = hmac.compare_digest(want, self.headers.get("x-orchardd-signature", ""))
        seen += 1
        status = 500 if seen == 1 else 200
        self.send_response(status)
        self.end_headers()
        self.wfile.write(b"busy" if status == 500 else b"ok")
        print(json.dumps({"status": status, "verified": ok, "event": json.loads(body)["event"]}), flush=True)
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(("127.0.0.1", 0), H)
print(server.server_port, flush=True)
server.serve_forever()
"#;

#[test]
fn a_signed_webhook_is_retried_after_a_500_and_delays_no_other_channel() {
    use std::io::BufRead;
    let python = require_binary("python3", "python3");
    let mut receiver = Command::new(python)
        .args(["-c", RECEIVER])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // The receiver's lines, read on a thread so that every wait below is bounded.
    let (tx, lines) = std::sync::mpsc::channel();
    let stdout = receiver.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let next = || {
        lines
            .recv_timeout(Duration::from_secs(30))
            .expect("the receiver said nothing in 30 s")
    };
    let port: u16 = next().trim().parse().unwrap();

    let dir = tempfile::tempdir().unwrap();
    let (daemon, cfg) = start_with(
        dir.path(),
        &[("frost.toml", RULES)],
        &format!(
            "[[alerts.webhooks]]\nname = \"ops\"\nurl = \"http://127.0.0.1:{port}/hook\"\nsecret = \"s3cret\"\n"
        ),
        DaemonConfig::shipped_defaults_embedded(),
    );
    let t = support::now_ms() - 6 * 60 * MIN;
    mosquitto_pub_lines(
        cfg.broker_port(),
        "orchards/fengjie/B1/ws1/telemetry",
        &every_10_min(t, &[-1.0, -1.1, -1.2, -1.3]),
    );
    // The receiver sees the fired event twice: refused once, then taken, both signed.
    let mut seen = Vec::new();
    for _ in 0..2 {
        seen.push(serde_json::from_str::<Value>(&next()).unwrap());
    }
    receiver.kill().unwrap();
    let _ = receiver.wait();
    assert_eq!(
        seen,
        [
            json!({"status": 500, "verified": true, "event": "fired"}),
            json!({"status": 200, "verified": true, "event": "fired"}),
        ]
    );
    let id = alerts(&daemon, "")[0]["id"].as_i64().unwrap();
    let deliveries = wait_for(Duration::from_secs(10), "both deliveries logged", || {
        let d = daemon.get_ok(&format!("/api/v1/alerts/{id}"))["events"][0]["deliveries"].clone();
        d.as_array()
            .unwrap()
            .iter()
            .all(|c| c["delivered_at"].is_string())
            .then_some(d)
    });
    let by = |name: &str| {
        deliveries
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["channel"] == name)
            .unwrap()
            .clone()
    };
    let (mqtt, hook) = (by("mqtt"), by("webhook:ops"));
    assert_eq!(mqtt["attempts"], 1);
    assert_eq!(hook["attempts"], 2);
    let log: Vec<(Value, Value)> = hook["log"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["status"].clone(), a["body"].clone()))
        .collect();
    assert_eq!(
        log,
        [(json!(500), json!("busy")), (json!(200), json!("ok"))]
    );
    assert_eq!(hook["log"][0]["error"], "HTTP 500 Internal Server Error");
    // The webhook's retry did not hold the MQTT delivery back.
    assert!(mqtt["delivered_at"].as_str() < hook["delivered_at"].as_str());
}

const RATE_RULES: &str = r#"
[[rule]]
id = "falling-at-night"
kind = "rate"
measure = "air_temperature"
severity = "warning"
falling_faster_than = 1.0
over = "1h"
hours = [18, 7]
for = "20m"
action.en = "{block}: falling {value:.1} °C/h."
action.zh = "{block}：每小时下降 {value:.1} °C。"
"#;

#[test]
fn a_fast_fall_at_night_fires_a_rate_rule_and_the_same_fall_by_day_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let (daemon, cfg) = start_with(
        dir.path(),
        &[("rate.toml", RATE_RULES)],
        // China's clock, for the rule's local hours.
        "[aggregate]\nutc_offset = \"+08:00\"\n",
        DaemonConfig::shipped_defaults_embedded(),
    );
    let port = cfg.broker_port();
    // Local midnight two days ago, at +08:00.
    let day = 86_400_000;
    let midnight = ((support::now_ms() + 8 * 3_600_000) / day - 2) * day - 8 * 3_600_000;
    // 1.5 °C an hour down from 12:00 to 15:00 (by day) and from 20:00 to 23:00 (at night).
    let fall = |from_hour: i64| {
        let values: Vec<f64> = (0..19).map(|i| 20.0 - 1.5 * i as f64 / 6.0).collect();
        every_10_min(midnight + from_hour * 3_600_000, &values)
    };
    mosquitto_pub_lines(port, "orchards/fengjie/B1/ws1/telemetry", &fall(12));
    mosquitto_pub_lines(port, "orchards/fengjie/B1/ws1/telemetry", &fall(20));
    wait_for(Duration::from_secs(20), "all stored", || {
        (daemon.stored_readings().len() == 38).then_some(())
    });
    let found = alerts(&daemon, "");
    assert_eq!(found.len(), 1, "{found:?}");
    let a = &found[0];
    // The first reading with an hour behind it is 21:00; 20 minutes of falling from then.
    assert_eq!(a["since"], support::rfc3339(midnight + 21 * 3_600_000));
    assert_eq!(
        a["fired_at"],
        support::rfc3339(midnight + 21 * 3_600_000 + 20 * MIN)
    );
    assert!((a["value"].as_f64().unwrap() + 1.5).abs() < 1e-9, "{a}");
    assert_eq!(a["action"]["en"], "B1: falling -1.5 °C/h.");
}

#[test]
fn a_stuck_probe_raises_one_alert_until_it_reads_again() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = DaemonConfig::shipped_defaults_embedded();
    let daemon = Daemon::start(dir.path(), &cfg);
    daemon.wait_ready();
    // The same 23.4 % fourteen times (health.stuck_after is 12), then 25.1 %.
    let t = support::now_ms() - 6 * 60 * MIN;
    let mut lines: Vec<String> = (0..14)
        .map(|i| json!({"ts": t + i * 10 * MIN, "readings": {"soil_moisture": 23.4}}).to_string())
        .collect();
    lines.push(json!({"ts": t + 14 * 10 * MIN, "readings": {"soil_moisture": 25.1}}).to_string());
    mosquitto_pub_lines(
        cfg.broker_port(),
        "orchards/fengjie/B4/probe-9/telemetry",
        &lines,
    );
    wait_for(Duration::from_secs(20), "stuck and resolved", || {
        (alerts(&daemon, "state=resolved").len() == 1).then_some(())
    });
    let all = alerts(&daemon, "");
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(all[0]["rule"], "sensor-stuck-soil-moisture");
    assert_eq!(all[0]["fired_at"], support::rfc3339(t + 11 * 10 * MIN));
    assert_eq!(all[0]["resolved_at"], support::rfc3339(t + 14 * 10 * MIN));
    assert!(
        all[0]["action"]["en"]
            .as_str()
            .unwrap()
            .contains("probe-9 in B4")
    );
}

#[test]
fn check_config_names_the_rule_file_and_key_of_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules");
    std::fs::create_dir_all(&rules).unwrap();
    std::fs::write(
        rules.join("citrus.toml"),
        RULES.replace("below = 0.0", "below = 0.0\nabove = 35.0"),
    )
    .unwrap();
    let config = dir.path().join("o.toml");
    std::fs::write(
        &config,
        format!("[alerts]\nrules_dir = \"{}\"\n", rules.display()),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_orchardd"))
        .args(["check-config", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("`citrus.toml: rule[0].below`"), "{stdout}");
}

#[test]
fn an_alert_nobody_acknowledges_is_sent_again_until_someone_does() {
    let dir = tempfile::tempdir().unwrap();
    let (daemon, cfg) = start_with(
        dir.path(),
        &[("frost.toml", RULES)],
        // Every 2 s rather than the shipped four hours (whose timing the store's unit test
        // checks), so that the test hears reminders.
        "repeat_every = \"2s\"\n",
        DaemonConfig::shipped_defaults_embedded(),
    );
    let port = cfg.broker_port();
    let sub = listen(port, 3, None);
    std::thread::sleep(Duration::from_millis(500));
    let night = support::now_ms() - 24 * 60 * MIN;
    mosquitto_pub_lines(
        port,
        "orchards/fengjie/B8/ws8/telemetry",
        &frost_night(night)[..30],
    );
    let heard = heard(sub);
    let kinds: Vec<&str> = heard.iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["fired", "reminder", "reminder"]);
    let id = heard[0]["alert"]["id"].as_i64().unwrap();
    assert!(heard.iter().all(|e| e["alert"]["id"] == id));
    assert_eq!(heard[2]["alert"]["state"], "firing");

    let (status, body) = http_request(
        daemon.http,
        "POST",
        &format!("/api/v1/alerts/{id}/ack"),
        r#"{"by": "Li Wei", "note": "on my way"}"#,
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    std::thread::sleep(Duration::from_secs(5));
    let events: Vec<String> = daemon.get_ok(&format!("/api/v1/alerts/{id}"))["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap().to_owned())
        .collect();
    let acked = events.iter().position(|e| e == "acknowledged").unwrap();
    assert_eq!(
        acked,
        events.len() - 1,
        "no reminder after the acknowledgement: {events:?}"
    );
    assert!(acked >= 3, "{events:?}");
}
