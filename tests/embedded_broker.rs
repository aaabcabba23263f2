//! Scenarios through orchardd's own MQTT endpoint: the set-up of a co-operative that
//! runs one small server and points its sensors straight at it.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;
use support::{Daemon, DaemonConfig, Publisher, now_ms, wait_for};

fn readings_of(d: &Daemon, query: &str) -> Vec<Value> {
    d.get_ok(&format!("/api/v1/readings?{query}"))["readings"]
        .as_array()
        .unwrap()
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_readings_from_several_devices_come_back_from_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = DaemonConfig::embedded();
    let daemon = Daemon::start(dir.path(), &cfg);
    daemon.wait_ready();

    let publisher = Publisher::connect(cfg.broker_port(), "field-gateway").await;
    let devices = ["probe-1", "probe-2", "probe-3", "station-A", "station-B"];
    let base = now_ms() - 3_600_000;
    let mut expected = HashMap::new();
    // 5 devices x 20 messages x 10 readings; the list form carries a timestamp per reading.
    for (d, device) in devices.iter().enumerate() {
        for m in 0..20 {
            let mut items = Vec::new();
            for k in 0..10 {
                let ts = base + (m * 10 + k) as i64 * 1000;
                let value = (d * 10) as f64 + m as f64 + k as f64 / 10.0;
                items.push(serde_json::json!({"kind": "soil_moisture", "value": value, "ts": ts}));
                expected.insert((device.to_string(), ts), value);
            }
            let block = if d < 3 { "B1" } else { "B2" };
            let topic = format!("orchards/fengjie/{block}/{device}/telemetry");
            publisher
                .publish(&topic, serde_json::to_vec(&items).unwrap())
                .await;
        }
    }

    let rows = wait_for(Duration::from_secs(30), "1000 readings in the API", || {
        let rows = readings_of(&daemon, "orchard=fengjie&limit=5000");
        (rows.len() >= 1000).then_some(rows)
    });
    assert_eq!(rows.len(), 1000);
    for row in &rows {
        let ts = time::OffsetDateTime::parse(
            row["ts"].as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap();
        let ts_ms = (ts.unix_timestamp_nanos() / 1_000_000) as i64;
        let device = row["device"].as_str().unwrap().to_string();
        let want = expected
            .get(&(device.clone(), ts_ms))
            .unwrap_or_else(|| panic!("unexpected row {row}"));
        assert_eq!(row["value"].as_f64().unwrap(), *want, "{row}");
        assert_eq!(row["kind"], "soil_moisture");
    }

    // Filters narrow the answer; CSV carries the same rows.
    assert_eq!(readings_of(&daemon, "block=B2&limit=5000").len(), 400);
    assert_eq!(readings_of(&daemon, "device=probe-1&limit=5000").len(), 200);
    let from = base + 50_000;
    let to = base + 60_000;
    let window = readings_of(&daemon, &format!("device=probe-2&from={from}&to={to}"));
    assert_eq!(window.len(), 10, "from inclusive, to exclusive");
    let (status, csv) = support::http_get(
        daemon.http,
        "/api/v1/readings?device=station-A&format=csv&limit=5000",
    )
    .unwrap();
    assert_eq!(status, 200);
    assert_eq!(csv.lines().count(), 1 + 200, "header and 200 rows");
    assert!(csv.starts_with("orchard,block,device,kind,depth_cm,ts,value,flags\n"));

    // Downsampled: per-minute counts add up to the raw rows, per-minute maxima are real values.
    let counts = readings_of(&daemon, "device=probe-1&every=1m&agg=count");
    let total: f64 = counts.iter().map(|r| r["value"].as_f64().unwrap()).sum();
    assert_eq!(total, 200.0);
    assert!(
        (4..=5).contains(&counts.len()),
        "200 s span 4 or 5 minutes: {counts:?}"
    );
    let maxima = readings_of(&daemon, "device=probe-1&every=1m&agg=max");
    let overall = maxima
        .iter()
        .map(|r| r["value"].as_f64().unwrap())
        .fold(f64::MIN, f64::max);
    assert_eq!(overall, 19.9);

    // The latest value per device and kind.
    let latest = daemon.get_ok("/api/v1/latest?orchard=fengjie")["readings"].clone();
    let latest = latest.as_array().unwrap();
    assert_eq!(latest.len(), 5);
    let last_ts = base + 199_000;
    for row in latest {
        let device = row["device"].as_str().unwrap().to_string();
        assert_eq!(row["value"].as_f64().unwrap(), expected[&(device, last_ts)]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_quarantined_with_its_reason_and_the_daemon_keeps_running() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = DaemonConfig {
        extra: "[ingest]\nmax_payload_bytes = 2048\n".into(),
        ..DaemonConfig::embedded()
    };
    let daemon = Daemon::start(dir.path(), &cfg);
    daemon.wait_ready();
    let publisher = Publisher::connect(cfg.broker_port(), "bad-gateway").await;

    let good = "orchards/fengjie/B3/probe-9/telemetry";
    let now = now_ms();
    let future = now + 86_400_000;
    let cases: Vec<(&str, String, &str)> = vec![
        (
            good,
            "{\"readings\": {\"soil_moisture\": 21.5".into(),
            "malformed_payload",
        ),
        (
            good,
            format!(r#"{{"ts":{now},"readings":{{"soil_moisture":140}}}}"#),
            "out_of_range",
        ),
        (
            good,
            format!(r#"{{"ts":{now},"readings":{{"leaf_colour":3}}}}"#),
            "unknown_kind",
        ),
        (
            "orchards/feng jie/B3/probe-9/telemetry",
            format!(r#"{{"ts":{now},"readings":{{"rainfall":1}}}}"#),
            "invalid_identifier",
        ),
        (
            good,
            format!(r#"{{"ts":{future},"readings":{{"air_temperature":12}}}}"#),
            "timestamp_in_future",
        ),
        (
            good,
            format!(
                r#"{{"ts":{now},"readings":{{"air_temperature":{{"value":50,"unit":"m/s"}}}}}}"#
            ),
            "unit_mismatch",
        ),
        (
            good,
            format!(r#"{{"ts":{now},"readings":{{"air_temperature":"NaN"}}}}"#),
            "non_finite",
        ),
        (
            good,
            format!(
                r#"{{"ts":{now},"readings":{{"rainfall":{}}}}}"#,
                "1".repeat(3000)
            ),
            "payload_too_large",
        ),
    ];
    for (topic, payload, _) in &cases {
        publisher.publish(topic, payload.clone()).await;
    }
    // One message with a good reading beside a bad one: only the bad one is set aside.
    publisher
        .publish(good, format!(r#"{{"ts":{now},"readings":{{"soil_moisture":140,"air_temperature":{{"value":68,"unit":"°F"}}}}}}"#))
        .await;

    let entries = wait_for(Duration::from_secs(20), "quarantine entries", || {
        let q = daemon.get_ok("/api/v1/quarantine?limit=100")["quarantine"].clone();
        (q.as_array().unwrap().len() > cases.len()).then_some(q)
    });
    let entries = entries.as_array().unwrap();
    assert_eq!(entries.len(), cases.len() + 1, "{entries:#?}");
    for (topic, payload, reason) in &cases {
        let e = entries
            .iter()
            .find(|e| {
                e["reason"] == *reason
                    && (e["payload"] == *payload || e["payload_truncated"] == true)
            })
            .unwrap_or_else(|| panic!("no {reason} entry with its payload in {entries:#?}"));
        assert_eq!(e["topic"], *topic);
        assert!(!e["detail"].as_str().unwrap().is_empty());
        if *reason == "payload_too_large" {
            assert_eq!(e["payload_truncated"], true);
            assert!(payload.starts_with(e["payload"].as_str().unwrap()));
        }
    }
    let out_of_range: Vec<_> = entries
        .iter()
        .filter(|e| e["reason"] == "out_of_range")
        .collect();
    assert_eq!(out_of_range.len(), 2);
    assert!(
        out_of_range
            .iter()
            .any(|e| e["detail"] == "soil_moisture 140 % is out of range 0–100 %")
    );
    let only_out_of_range =
        daemon.get_ok("/api/v1/quarantine?reason=out_of_range")["quarantine"].clone();
    assert_eq!(only_out_of_range.as_array().unwrap().len(), 2);

    // The neighbour of the bad reading was stored, converted to °C, and so is what comes next.
    publisher
        .publish(
            good,
            format!(r#"{{"ts":{},"readings":{{"soil_moisture":22}}}}"#, now + 1),
        )
        .await;
    let rows = wait_for(
        Duration::from_secs(20),
        "good readings after bad ones",
        || {
            let rows = readings_of(&daemon, "device=probe-9");
            (rows.len() >= 2).then_some(rows)
        },
    );
    let air = rows
        .iter()
        .find(|r| r["kind"] == "air_temperature")
        .unwrap();
    assert!((air["value"].as_f64().unwrap() - 20.0).abs() < 1e-9);
    assert!(
        rows.iter()
            .any(|r| r["kind"] == "soil_moisture" && r["value"] == 22.0)
    );
    assert_eq!(rows.len(), 2);

    // Every rejection is counted by reason.
    let (_, metrics) = support::http_get(daemon.http, "/metrics").unwrap();
    assert!(
        metrics.contains("orchardd_rejected_total{reason=\"out_of_range\"} 2"),
        "{metrics}"
    );
    assert!(metrics.contains("orchardd_rejected_total{reason=\"malformed_payload\"} 1"));
    assert_eq!(daemon.get("/healthz").0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_query_parameters_get_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &DaemonConfig::embedded());
    daemon.wait_ready();
    for (query, needle) in [
        ("orchard=a%20b", "`orchard`"),
        ("kind=sunshine", "unknown kind `sunshine`"),
        ("from=yesterday", "`from`"),
        ("limit=0", "`limit`"),
        ("colour=red", "unknown parameter `colour`"),
        (
            "from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z",
            "before",
        ),
        ("agg=mean", "`agg` needs `every`"),
        ("format=xml", "`format`"),
    ] {
        let (status, body) = daemon.get(&format!("/api/v1/readings?{query}"));
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["error"]["code"], "bad_request");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{query}: {message}");
    }
    let (status, body) = daemon.get("/api/v1/nothing-here");
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "not_found");
}
