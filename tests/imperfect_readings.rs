//! Readings that clash or mislead are kept where staff can see them: two values for one
//! reading key, two codec fields for one quantity, illuminance sent as `illumination`, a
//! device id in a topic spelt with capitals, a SenML pack naming several devices, a replay.
//! Published with Debian's `mosquitto_pub` to orchardd's own endpoint on its shipped defaults.

mod support;

use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use support::{Daemon, DaemonConfig, http_request, require_binary, wait_for};

const CHIRPSTACK_UP: &str = include_str!("fixtures/chirpstack_up.json");
const EUI: &str = "0101010101010101";

fn publish(port: u16, topic: &str, payload: &str) {
    let bin = require_binary("mosquitto_pub", "mosquitto-clients");
    let out = Command::new(bin)
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
        .args(["-t", topic, "-m", payload])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mosquitto_pub: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn rfc3339(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

/// The ChirpStack v4 uplink of its documentation, with `object` as given, stamped `ms`.
fn uplink(object: Value, ms: i64) -> String {
    let mut v: Value = serde_json::from_str(CHIRPSTACK_UP).unwrap();
    v["time"] = json!(rfc3339(ms));
    v["object"] = object;
    v.to_string()
}

fn quarantined(daemon: &Daemon, reason: &str) -> Vec<Value> {
    daemon.get_ok(&format!("/api/v1/quarantine?reason={reason}"))["quarantine"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn readings(daemon: &Daemon, query: &str) -> Vec<Value> {
    daemon.get_ok(&format!("/api/v1/readings?{query}"))["readings"]
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn clashing_and_misleading_readings_stay_visible() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("devices.toml"),
        format!(
            r#"
[[device]]
id = "{EUI}"
orchard = "fengjie"
block = "B1"
[[device]]
id = "Probe-7"
orchard = "fengjie"
block = "B1"
expected_interval = "10m"
[[device]]
id = "hourly-1"
orchard = "fengjie"
block = "B2"
expected_interval = "1h"
[[device]]
id = "fast-1"
orchard = "fengjie"
block = "B2"
expected_interval = "5m"
"#
        ),
    )
    .unwrap();
    let cfg = DaemonConfig {
        // The sources a co-op with ChirpStack and a SenML gateway adds; the rest as shipped.
        extra: r#"
[[sources]]
name = "chirpstack"
format = "chirpstack"
topic = "application/+/device/+/event/up"
[[sources]]
name = "senml-gateway"
format = "senml"
topic = "senml/#"
"#
        .into(),
        ..DaemonConfig::shipped_defaults_embedded()
    };
    let daemon = Daemon::start(dir.path(), &cfg);
    daemon.wait_ready();
    let port = cfg.broker_port();
    let t = support::now_ms() - 3_600_000;

    // Two values for one reading key in one message: the first is stored, the second is
    // quarantined with both values, and nothing counts as a duplicate.
    let clash = json!({"ts": t, "readings": [
        {"kind": "soil_moisture", "value": 21},
        {"kind": "soil_moisture", "value": 35},
    ]})
    .to_string();
    publish(port, "orchards/fengjie/B1/probe-1/telemetry", &clash);
    wait_for(Duration::from_secs(20), "the clash quarantined", || {
        (!quarantined(&daemon, "conflicting_value").is_empty()).then_some(())
    });
    let rows = readings(&daemon, "device=probe-1&kind=soil_moisture");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["value"], 21.0);
    let q = quarantined(&daemon, "conflicting_value");
    assert_eq!(q.len(), 1);
    let detail = q[0]["detail"].as_str().unwrap();
    assert!(detail.contains("35") && detail.contains("21"), "{detail}");
    assert!(q[0]["payload"].as_str().unwrap().contains("35"));
    assert_eq!(daemon.metric("orchardd_readings_duplicate_total"), 0.0);
    // A true redelivery of the stored value is a duplicate, and nothing more.
    let again = json!({"ts": t, "readings": [{"kind": "soil_moisture", "value": 21}]}).to_string();
    publish(port, "orchards/fengjie/B1/probe-1/telemetry", &again);
    wait_for(Duration::from_secs(20), "the redelivery counted", || {
        (daemon.metric("orchardd_readings_duplicate_total") >= 1.0).then_some(())
    });
    assert_eq!(quarantined(&daemon, "conflicting_value").len(), 1);

    // A Dragino LSE01 with its external DS18B20 probe: two soil temperatures, two series.
    // Illumination in lux is illuminance, not W/m² of solar radiation.
    let object = json!({
        "BatV": 3.05,
        "temp_SOIL": "21.62",
        "TempC_DS": 19.5,
        "illumination": 30000,
    });
    publish(
        port,
        &format!("application/app/device/{EUI}/event/up"),
        &uplink(object, t),
    );
    wait_for(Duration::from_secs(20), "the uplink stored", || {
        (!readings(&daemon, "kind=illuminance").is_empty()).then_some(())
    });
    let soil = readings(&daemon, "orchard=fengjie&block=B1&kind=soil_temperature");
    let mut soil: Vec<(String, f64)> = soil
        .iter()
        .map(|r| {
            (
                r["device"].as_str().unwrap().to_owned(),
                r["value"].as_f64().unwrap(),
            )
        })
        .collect();
    soil.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(soil, [(EUI.to_owned(), 21.62), (format!("{EUI}-ds"), 19.5)]);
    let lux = readings(&daemon, "kind=illuminance");
    assert_eq!(lux.len(), 1);
    // Stored in lux, the illuminance kind's unit, as sent.
    assert_eq!(lux[0]["value"], 30000.0);
    assert!(readings(&daemon, "kind=solar_radiation").is_empty());
    assert!(
        quarantined(&daemon, "out_of_range").is_empty(),
        "lux is not out of range"
    );

    // Two codec fields for one quantity with different values: the second is kept in the
    // quarantine, not dropped as a duplicate.
    let object = json!({"temperature": 24.1, "TempC_SHT": 23.2});
    publish(
        port,
        &format!("application/app/device/{EUI}/event/up"),
        &uplink(object, t + 600_000),
    );
    wait_for(
        Duration::from_secs(20),
        "the field clash quarantined",
        || (quarantined(&daemon, "conflicting_value").len() == 2).then_some(()),
    );

    // `Probe-7` in a topic is the registry's `probe-7`: stored under that id, and the device
    // list sees it reporting.
    let now = support::now_ms();
    let msg = json!({"ts": now, "readings": [{"kind": "soil_moisture", "value": 30}]}).to_string();
    publish(port, "orchards/fengjie/B1/Probe-7/telemetry", &msg);
    wait_for(Duration::from_secs(20), "Probe-7 stored", || {
        (!readings(&daemon, "device=probe-7").is_empty()).then_some(())
    });
    assert!(readings(&daemon, "device=Probe-7").is_empty());
    let devices = daemon.get_ok("/api/v1/devices");
    let probe = devices["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == "probe-7")
        .unwrap()
        .clone();
    assert_eq!(probe["silent"], false, "{probe}");
    assert!(probe["last_seen"].is_string());

    // A SenML pack naming an hourly and a five-minute device, twice, 30 minutes apart: only
    // the five-minute device was silent for longer than twice its interval.
    let pack = |secs: i64| {
        json!([
            {"bn": "urn:dev:ow:hourly-1:", "bt": secs, "n": "temp", "u": "Cel", "v": 18.0},
            {"bn": "urn:dev:ow:fast-1:", "n": "temp", "u": "Cel", "v": 18.2},
        ])
        .to_string()
    };
    let secs = (t + 1_200_000) / 1000;
    publish(port, "senml/gw-1", &pack(secs));
    publish(port, "senml/gw-1", &pack(secs + 1800));
    wait_for(Duration::from_secs(20), "both packs stored", || {
        (readings(&daemon, "device=fast-1").len() == 2).then_some(())
    });
    let gap = |device: &str| readings(&daemon, &format!("device={device}&flagged=after_gap")).len();
    assert_eq!(gap("fast-1"), 1, "30 min is more than twice 5 min");
    assert_eq!(gap("hourly-1"), 0, "30 min is less than twice an hour");

    // A SenML pack for a device not yet assigned and one that is, whose value is out of
    // range. Assigning the first and replaying stores its reading and does not quarantine
    // the other's rejection a second time.
    let mixed = json!([
        {"bn": "urn:dev:ow:newcomer:", "bt": secs, "n": "temp", "u": "Cel", "v": 17.0},
        {"bn": "urn:dev:ow:fast-1:", "n": "temp", "u": "Cel", "v": 99.0},
    ])
    .to_string();
    publish(port, "senml/gw-1", &mixed);
    wait_for(Duration::from_secs(20), "the pack quarantined", || {
        (!quarantined(&daemon, "unknown_device").is_empty()).then_some(())
    });
    assert_eq!(quarantined(&daemon, "out_of_range").len(), 1);
    let (status, body) = http_request(
        daemon.http,
        "PUT",
        "/api/v1/devices/newcomer",
        r#"{"orchard": "fengjie", "block": "B2"}"#,
    )
    .unwrap();
    assert!(status == 200 || status == 201, "{status} {body}");
    let (status, body) = http_request(
        daemon.http,
        "POST",
        "/api/v1/quarantine/replay?device=newcomer",
        "",
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let report: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(report["readings_recovered"], 1, "{report}");
    assert_eq!(readings(&daemon, "device=newcomer").len(), 1);
    assert_eq!(
        quarantined(&daemon, "out_of_range").len(),
        1,
        "fast-1's rejection is held once"
    );
}

#[test]
fn check_config_refuses_a_retention_shorter_than_the_oldest_accepted_reading() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("o.toml");
    let check = |toml: &str| {
        std::fs::write(&path, toml).unwrap();
        Command::new(env!("CARGO_BIN_EXE_orchardd"))
            .args(["check-config", "--config"])
            .arg(&path)
            .output()
            .unwrap()
    };
    let out = check("[store]\nraw_retention = \"7d\"\n");
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("`store.raw_retention`") && stdout.contains("validate.max_age"),
        "{stdout}"
    );
    // As long as validate.max_age (30 days by default), or longer, is fine.
    let out = check("[store]\nraw_retention = \"30d\"\n");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
