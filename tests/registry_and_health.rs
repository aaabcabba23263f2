//! Sensor health, flood protection and the device registry API, through orchardd's own MQTT endpoint.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::{Daemon, DaemonConfig, Publisher, http_request, now_ms, wait_for};

fn rows(d: &Daemon, query: &str) -> Vec<Value> {
    d.get_ok(&format!("/api/v1/readings?{query}"))["readings"]
        .as_array()
        .unwrap()
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jump_a_stuck_probe_and_a_silence_are_flagged_and_shown() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = DaemonConfig {
        extra: "[health]\nstuck_after = 5\nexpected_interval = \"10m\"\n".into(),
        ..DaemonConfig::embedded()
    };
    let daemon = Daemon::start(dir.path(), &cfg);
    daemon.wait_ready();
    let publisher = Publisher::connect(cfg.broker_port(), "health-gateway").await;
    let topic = "orchards/fengjie/B4/station-9/telemetry";
    let start = now_ms() - 6 * 3_600_000;
    let minute = 60_000;
    // Air temperature every 10 minutes: a believable rise, then +12 °C in ten minutes.
    let air = [18.0, 18.6, 19.1, 31.1, 31.0];
    // Soil moisture that does not move at all: a stuck probe after 5 equal readings.
    for (i, t) in air.iter().enumerate() {
        let ts = start + i as i64 * 10 * minute;
        let payload = json!({"ts": ts, "readings": {"air_temperature": t, "soil_moisture": 23.4}});
        publisher.publish(topic, payload.to_string()).await;
    }
    // Then nothing for an hour (more than twice the expected 10 minutes).
    let late = start + 4 * 10 * minute + 60 * minute;
    publisher
        .publish(
            topic,
            json!({"ts": late, "readings": {"air_temperature": 30.2}}).to_string(),
        )
        .await;

    wait_for(Duration::from_secs(20), "all readings", || {
        (rows(&daemon, "device=station-9").len() == 11).then_some(())
    });
    let spikes = rows(&daemon, "device=station-9&flagged=spike");
    assert_eq!(spikes.len(), 1, "{spikes:?}");
    assert_eq!(spikes[0]["kind"], "air_temperature");
    assert_eq!(spikes[0]["value"], 31.1);
    assert_eq!(spikes[0]["flags"], json!(["spike"]));

    let stuck = rows(&daemon, "device=station-9&flagged=stuck");
    assert_eq!(stuck.len(), 1, "only the 5th equal reading: {stuck:?}");
    assert_eq!(stuck[0]["kind"], "soil_moisture");

    let gap = rows(&daemon, "device=station-9&flagged=after_gap");
    assert_eq!(gap.len(), 1);
    assert_eq!(gap[0]["value"], 30.2);

    // Unflagged readings carry no flags field; flagged readings are stored, not rejected.
    let all = rows(&daemon, "device=station-9&kind=air_temperature");
    assert_eq!(all.len(), 6);
    assert!(all[0].get("flags").is_none());
    let (status, body) = daemon.get("/api/v1/readings?flagged=wobbly");
    assert_eq!(status, 400, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_flooding_one_minute_of_reading_time_is_quarantined_and_the_others_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = DaemonConfig {
        // A limit of 60 instead of the default 600 keeps the flood short: 200 readings in one
        // minute of reading time are 140 over it.
        extra: "[ingest]\ndevice_rate_limit = 60\n".into(),
        ..DaemonConfig::embedded()
    };
    let daemon = Daemon::start(dir.path(), &cfg);
    daemon.wait_ready();
    let publisher = Publisher::connect(cfg.broker_port(), "flood-gateway").await;
    // The start of a UTC minute an hour ago: the whole flood is stamped inside that minute, as
    // from a gateway repeating itself or a gauge whose clock is stuck.
    let minute = (now_ms() - 3_600_000).div_euclid(60_000) * 60_000;
    for i in 0..200 {
        let payload = json!({"ts": minute + i * 100, "readings": {"rainfall": 0.2}});
        publisher
            .publish(
                "orchards/fengjie/B1/broken-gauge/telemetry",
                payload.to_string(),
            )
            .await;
        if i % 40 == 0 {
            // The neighbour reports in the same minute of reading time, at the same moment.
            let payload = json!({"ts": minute + i * 100, "readings": {"soil_moisture": 25.0}});
            publisher
                .publish(
                    "orchards/fengjie/B1/good-probe/telemetry",
                    payload.to_string(),
                )
                .await;
        }
    }
    // The next minute of the flooding gauge's own time has its allowance again.
    let payload = json!({"ts": minute + 60_000, "readings": {"rainfall": 0.4}});
    publisher
        .publish(
            "orchards/fengjie/B1/broken-gauge/telemetry",
            payload.to_string(),
        )
        .await;
    let (stored, limited) = wait_for(
        Duration::from_secs(20),
        "201 messages accounted for",
        || {
            let stored = rows(&daemon, "device=broken-gauge&limit=1000").len();
            let limited =
                daemon.get_ok("/api/v1/quarantine?reason=rate_limited&limit=1000")["quarantine"]
                    .as_array()
                    .unwrap()
                    .len();
            (stored + limited == 201).then_some((stored, limited))
        },
    );
    assert_eq!(
        stored, 61,
        "the minute's allowance, and the next minute's reading"
    );
    assert_eq!(limited, 140, "nothing lost: stored or quarantined");
    let next = rows(
        &daemon,
        &format!("device=broken-gauge&from={}&limit=10", minute + 60_000),
    );
    assert_eq!(next.len(), 1);
    assert_eq!(next[0]["value"], 0.4);
    assert_eq!(
        rows(&daemon, "device=good-probe").len(),
        5,
        "the neighbour is untouched"
    );
    assert_eq!(
        daemon.metric("orchardd_rejected_total{reason=\"rate_limited\"}"),
        140.0
    );
    let q = daemon.get_ok("/api/v1/quarantine?reason=rate_limited&limit=1");
    let detail = q["quarantine"][0]["detail"].as_str().unwrap();
    assert!(detail.contains("broken-gauge"), "{detail}");
    assert!(detail.contains("minute of reading time"), "{detail}");
}

#[test]
fn staff_assign_devices_through_the_api_with_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("devices.toml"),
        "[[device]]\nid = \"A84041000181C0DE\"\norchard = \"fengjie\"\nblock = \"B3\"\ndepths_cm = [30]\n",
    )
    .unwrap();
    let daemon = Daemon::start(dir.path(), &DaemonConfig::embedded());
    daemon.wait_ready();

    // The devices file was applied, with its id in lowercase; it has sent nothing yet.
    let listed = daemon.get_ok("/api/v1/devices");
    assert_eq!(listed["devices"][0]["id"], "a84041000181c0de");
    assert_eq!(listed["devices"][0]["silent"], true);
    assert_eq!(listed["devices"][0]["last_seen"], Value::Null);
    assert_eq!(
        daemon.get_ok("/api/v1/devices/A84041000181C0DE")["block"],
        "B3"
    );

    let put = |id: &str, body: &str| {
        http_request(daemon.http, "PUT", &format!("/api/v1/devices/{id}"), body).unwrap()
    };
    let (status, body) = put(
        "0004A30B001C0530",
        r#"{"orchard":"fengjie","block":"B7","position":"row 2","installed":"2026-03-01","expected_interval":"15m"}"#,
    );
    assert_eq!(status, 201, "{body}");
    let got = daemon.get_ok("/api/v1/devices/0004a30b001c0530");
    assert_eq!(got["block"], "B7");
    assert_eq!(got["expected_interval"], "15m");
    let (status, _) = put("0004a30b001c0530", r#"{"orchard":"fengjie","block":"B8"}"#);
    assert_eq!(status, 200, "an update of an existing entry");
    assert_eq!(
        daemon.get_ok("/api/v1/devices/0004a30b001c0530")["block"],
        "B8"
    );

    for (id, body, needle) in [
        ("x", "not json", "JSON device entry"),
        ("x", r#"{"orchard":"a b","block":"B1"}"#, "identifier"),
        (
            "x",
            r#"{"orchard":"o","block":"b","installed":"spring"}"#,
            "installed",
        ),
        (
            "x",
            r#"{"orchard":"o","block":"b","colour":"red"}"#,
            "unknown field",
        ),
        ("x", r#"{"id":"y","orchard":"o","block":"b"}"#, "differs"),
        ("bad%20id", r#"{"orchard":"o","block":"b"}"#, "device id"),
    ] {
        let (status, body) = put(id, body);
        assert_eq!(status, 400, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert!(
            v["error"]["message"].as_str().unwrap().contains(needle),
            "{needle}: {body}"
        );
    }
    assert_eq!(daemon.get("/api/v1/devices/ffffffffffffffff").0, 404);
    let (status, body) = http_request(
        daemon.http,
        "POST",
        "/api/v1/quarantine/replay?device=ffffffffffffffff",
        "",
    )
    .unwrap();
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("PUT /api/v1/devices/ffffffffffffffff"));
}
