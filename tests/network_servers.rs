//! Real orchard networks: LoRaWAN uplinks from ChirpStack v4 and The Things Stack v3, and SenML,
//! taken as the network servers send them (their documentation's examples, with orchard fields),
//! published through a real broker and read back in canonical units.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::{Daemon, DaemonConfig, Publisher, http_request, wait_for};

const CHIRPSTACK_UP: &str = include_str!("fixtures/chirpstack_up.json");
const TTS_UP: &str = include_str!("fixtures/tts_up.json");
const SENML: &str = include_str!("fixtures/senml_orchard.json");

const CHIRPSTACK_EUI: &str = "0101010101010101";
const TTS_EUI: &str = "0004a30b001c0530";

fn start(dir: &std::path::Path, devices: &str) -> (Daemon, DaemonConfig) {
    std::fs::write(dir.join("devices.toml"), devices).unwrap();
    let cfg = DaemonConfig {
        extra: r#"
[[sources]]
name = "chirpstack"
format = "chirpstack"
topic = "application/+/device/+/event/up"
[[sources]]
name = "things-stack"
format = "tts"
topic = "v3/+/devices/+/up"
[[sources]]
name = "senml-gateway"
format = "senml"
topic = "senml/#"
"#
        .into(),
        ..DaemonConfig::embedded()
    };
    let daemon = Daemon::start(dir, &cfg);
    daemon.wait_ready();
    (daemon, cfg)
}

fn device(id: &str, block: &str) -> String {
    format!("[[device]]\nid = \"{id}\"\norchard = \"fengjie\"\nblock = \"{block}\"\n")
}

/// The documented example, stamped now so that the clock check passes.
fn fresh(fixture: &str, time_fields: &[&str]) -> Value {
    let mut v: Value = serde_json::from_str(fixture).unwrap();
    let now = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    for path in time_fields {
        let mut node = &mut v;
        for key in path.split('.') {
            node = node.get_mut(key).unwrap();
        }
        *node = json!(now);
    }
    v
}

fn readings_of(d: &Daemon, device: &str) -> Vec<Value> {
    d.get_ok(&format!("/api/v1/readings?device={device}"))["readings"]
        .as_array()
        .unwrap()
        .clone()
}

fn value_of(rows: &[Value], kind: &str) -> f64 {
    rows.iter()
        .find(|r| r["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in {rows:#?}"))["value"]
        .as_f64()
        .unwrap()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uplinks_from_chirpstack_and_the_things_stack_arrive_in_canonical_units() {
    let dir = tempfile::tempdir().unwrap();
    let devices = device(CHIRPSTACK_EUI, "B3") + &device("0004A30B001C0530", "B5");
    let (daemon, cfg) = start(dir.path(), &devices);
    let publisher = Publisher::connect(cfg.broker_port(), "network-server").await;

    let up = fresh(CHIRPSTACK_UP, &["time"]);
    let topic = format!(
        "application/17c82e96-be03-4f38-aef3-f83d48582d97/device/{CHIRPSTACK_EUI}/event/up"
    );
    publisher.publish(&topic, up.to_string()).await;
    let up = fresh(TTS_UP, &["received_at", "uplink_message.received_at"]);
    publisher
        .publish("v3/app1@tenant1/devices/dev1/up", up.to_string())
        .await;

    let cs = wait_for(Duration::from_secs(20), "the ChirpStack uplink", || {
        let rows = readings_of(&daemon, CHIRPSTACK_EUI);
        (rows.len() == 6).then_some(rows)
    });
    assert!(
        cs.iter()
            .all(|r| r["orchard"] == "fengjie" && r["block"] == "B3"),
        "placed by the registry"
    );
    assert!(close(value_of(&cs, "soil_temperature"), 21.62));
    assert!(close(value_of(&cs, "soil_moisture"), 25.83));
    assert!(
        close(value_of(&cs, "soil_ec"), 0.312),
        "312 µS/cm is 0.312 dS/m"
    );
    assert!(close(value_of(&cs, "battery_v"), 3.05));
    assert!(
        close(value_of(&cs, "rssi_dbm"), -36.0),
        "the gateway's signal is a reading too"
    );
    assert!(close(value_of(&cs, "snr_db"), 10.5));

    let tts = wait_for(Duration::from_secs(20), "The Things Stack uplink", || {
        let rows = readings_of(&daemon, TTS_EUI);
        (rows.len() == 7).then_some(rows)
    });
    assert!(tts.iter().all(|r| r["block"] == "B5"));
    assert!(close(value_of(&tts, "air_temperature"), 18.42));
    assert!(close(value_of(&tts, "relative_humidity"), 71.3));
    assert!(close(value_of(&tts, "soil_temperature"), 17.9));
    assert!(close(value_of(&tts, "soil_moisture"), 27.14));
    assert!(close(value_of(&tts, "rssi_dbm"), -35.0));
    assert!(close(value_of(&tts, "snr_db"), 5.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_senml_pack_from_rfc_8428_arrives_resolved_and_converted() {
    let dir = tempfile::tempdir().unwrap();
    let (daemon, cfg) = start(dir.path(), &device("10e2073a01080063", "B2"));
    let publisher = Publisher::connect(cfg.broker_port(), "senml-gateway").await;
    publisher.publish("senml/gateway-1", SENML).await;

    let rows = wait_for(Duration::from_secs(20), "the SenML pack", || {
        let rows = readings_of(&daemon, "10e2073a01080063");
        (rows.len() == 7).then_some(rows)
    });
    // Relative times: six records ten minutes ago, the last temperature now.
    let temps: Vec<f64> = rows
        .iter()
        .filter(|r| r["kind"] == "air_temperature")
        .map(|r| r["value"].as_f64().unwrap())
        .collect();
    assert_eq!(temps, [18.4, 18.9], "ordered by time");
    assert!(close(value_of(&rows, "relative_humidity"), 71.2));
    assert!(close(value_of(&rows, "soil_temperature"), 17.6), "290.75 K");
    assert!(
        close(value_of(&rows, "soil_moisture"), 27.4),
        "0.274 as a ratio"
    );
    assert!(close(value_of(&rows, "soil_ec"), 0.31), "0.031 S/m");
    assert!(close(value_of(&rows, "battery_v"), 3.61));

    // A string value is not a measurement: quarantined with its reason, not dropped.
    let pack = r#"[{"bn":"urn:dev:ow:10e2073a01080063:","n":"temp","u":"Cel","v":19.0},{"n":"status","vs":"door open"}]"#;
    publisher.publish("senml/gateway-1", pack).await;
    let q = wait_for(Duration::from_secs(20), "the non-numeric record", || {
        let q = daemon.get_ok("/api/v1/quarantine?reason=non_numeric");
        (!q["quarantine"].as_array().unwrap().is_empty()).then_some(q)
    });
    assert_eq!(q["quarantine"][0]["payload"], pack);
    wait_for(Duration::from_secs(20), "its numeric neighbour", || {
        (readings_of(&daemon, "10e2073a01080063").len() == 8).then_some(())
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uplink_without_a_codec_is_quarantined_with_its_raw_data() {
    let dir = tempfile::tempdir().unwrap();
    let (daemon, cfg) = start(dir.path(), &device(CHIRPSTACK_EUI, "B3"));
    let publisher = Publisher::connect(cfg.broker_port(), "network-server").await;
    let mut up = fresh(CHIRPSTACK_UP, &["time"]);
    up.as_object_mut().unwrap().remove("object");
    let topic = format!("application/x/device/{CHIRPSTACK_EUI}/event/up");
    publisher.publish(&topic, up.to_string()).await;
    let q = wait_for(Duration::from_secs(20), "the undecoded uplink", || {
        let q = daemon.get_ok("/api/v1/quarantine?reason=undecoded_uplink");
        (!q["quarantine"].as_array().unwrap().is_empty()).then_some(q)
    });
    let entry = &q["quarantine"][0];
    assert!(
        entry["detail"].as_str().unwrap().contains("qg=="),
        "{entry}"
    );
    assert_eq!(entry["topic"], topic);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_device_is_held_assigned_by_staff_and_replayed_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let (daemon, cfg) = start(dir.path(), "");
    let publisher = Publisher::connect(cfg.broker_port(), "network-server").await;
    let topic = format!("application/x/device/{CHIRPSTACK_EUI}/event/up");
    // Three uplinks a minute apart from a probe nobody has registered yet.
    let base = time::OffsetDateTime::now_utc() - time::Duration::minutes(10);
    for i in 0..3 {
        let mut up: Value = serde_json::from_str(CHIRPSTACK_UP).unwrap();
        let t = base + time::Duration::minutes(i);
        up["time"] = json!(
            t.format(&time::format_description::well_known::Rfc3339)
                .unwrap()
        );
        up["object"]["water_SOIL"] = json!(20 + i);
        publisher.publish(&topic, up.to_string()).await;
    }
    let unassigned = wait_for(
        Duration::from_secs(20),
        "the unknown device to be listed",
        || {
            let v = daemon.get_ok("/api/v1/devices?unassigned=true");
            let list = v["unassigned"].as_array().unwrap().clone();
            (list.first().is_some_and(|d| d["messages"] == 3)).then_some(list)
        },
    );
    assert_eq!(unassigned[0]["id"], CHIRPSTACK_EUI);
    assert_eq!(unassigned[0]["source"], "chirpstack");
    assert!(
        unassigned[0]["last_payload"]
            .as_str()
            .unwrap()
            .contains("\"water_SOIL\":22")
    );
    assert!(
        readings_of(&daemon, CHIRPSTACK_EUI).is_empty(),
        "nothing stored for an unknown device"
    );

    // Assigning does not rewrite history by itself.
    let (status, body) = http_request(
        daemon.http,
        "PUT",
        &format!("/api/v1/devices/{CHIRPSTACK_EUI}"),
        r#"{"orchard":"fengjie","block":"B6","depths_cm":[30]}"#,
    )
    .unwrap();
    assert_eq!(status, 201, "{body}");
    assert!(readings_of(&daemon, CHIRPSTACK_EUI).is_empty());

    let replay = |device: &str| {
        let (status, body) = http_request(
            daemon.http,
            "POST",
            &format!("/api/v1/quarantine/replay?device={device}"),
            "",
        )
        .unwrap();
        assert_eq!(status, 200, "{body}");
        serde_json::from_str::<Value>(&body).unwrap()
    };
    let report = replay(CHIRPSTACK_EUI);
    assert_eq!(report["messages"], 3);
    assert_eq!(
        report["readings_recovered"], 18,
        "6 readings in each of 3 uplinks: {report}"
    );
    let rows = readings_of(&daemon, CHIRPSTACK_EUI);
    assert_eq!(rows.len(), 18);
    assert!(
        rows.iter()
            .all(|r| r["block"] == "B6" && r["depth_cm"] == 30),
        "the probe's single depth applies"
    );
    let moisture: Vec<f64> = rows
        .iter()
        .filter(|r| r["kind"] == "soil_moisture")
        .map(|r| r["value"].as_f64().unwrap())
        .collect();
    assert_eq!(moisture, [20.0, 21.0, 22.0]);

    // Once: a second replay finds nothing left, and the device is no longer unassigned.
    let again = replay(CHIRPSTACK_EUI);
    assert_eq!(
        (
            again["messages"].as_u64(),
            again["readings_recovered"].as_u64()
        ),
        (Some(0), Some(0))
    );
    assert_eq!(readings_of(&daemon, CHIRPSTACK_EUI).len(), 18);
    assert!(
        daemon.get_ok("/api/v1/devices?unassigned=true")["unassigned"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    // New uplinks now flow straight in.
    let mut up = fresh(CHIRPSTACK_UP, &["time"]);
    up["object"]["water_SOIL"] = json!(30);
    publisher.publish(&topic, up.to_string()).await;
    wait_for(
        Duration::from_secs(20),
        "a live uplink after assignment",
        || (readings_of(&daemon, CHIRPSTACK_EUI).len() == 24).then_some(()),
    );
}
