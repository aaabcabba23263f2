//! A device gone wrong: a flood of malformed messages from one device, beside healthy ones,
//! on the shipped defaults. The other faults of the suite (broker restart, InfluxDB outage,
//! `kill -9`, a full store) live beside the capability they threaten; README, "Fault suite".

mod support;

use std::collections::HashSet;
use std::time::Duration;

use support::{Daemon, DaemonConfig, mosquitto_pub_lines, now_ms, wait_for};

/// Bad messages from the broken device, cycling through what broken firmware sends.
const BAD: usize = 12_000;
/// The broken device still sends good readings between its bad ones, one in every 12 lines.
const EVERY: usize = 12;
const HEALTHY_DEVICES: usize = 4;
const HEALTHY_READINGS: usize = 1_000;
const STEP_MS: i64 = 10_000;

fn bad_line(i: usize, now: i64) -> (String, &'static str) {
    match i % 6 {
        0 => (
            "{\"readings\": {\"soil_moisture\": 21".into(),
            "malformed_payload",
        ),
        1 => (
            "\u{7f}ELF garbage from a reflashed board".into(),
            "malformed_payload",
        ),
        2 => (
            format!(
                r#"{{"ts":{now},"readings":{{"soil_moisture":{}}}}}"#,
                150 + i
            ),
            "out_of_range",
        ),
        3 => (
            format!(r#"{{"ts":{now},"readings":{{"leaf_colour":{i}}}}}"#),
            "unknown_kind",
        ),
        4 => (
            format!(r#"{{"ts":{now},"readings":{{"air_temperature":"NaN"}}}}"#),
            "non_finite",
        ),
        _ => (
            format!(
                r#"{{"ts":{},"readings":{{"air_temperature":12}}}}"#,
                now + 86_400_000
            ),
            "timestamp_in_future",
        ),
    }
}

fn good_line(ts: i64, value: usize) -> String {
    format!(
        r#"{{"ts":{ts},"readings":{{"soil_moisture":{}}}}}"#,
        value % 90
    )
}

#[test]
fn a_flood_of_malformed_messages_from_one_device_is_quarantined_and_every_valid_reading_stored_once()
 {
    let dir = tempfile::tempdir().unwrap();
    let cfg = DaemonConfig::shipped_defaults_embedded();
    let daemon = Daemon::start(dir.path(), &cfg);
    daemon.wait_ready();
    let port = cfg.broker_port();
    let now = now_ms();
    let base = now - 3 * 3_600_000;

    // The broken device: its bad messages with a good reading every EVERY lines.
    let mut broken = Vec::new();
    let mut expected = HashSet::new();
    let mut reasons = std::collections::BTreeMap::<&str, usize>::new();
    let mut good = 0;
    for i in 0..BAD {
        let (line, reason) = bad_line(i, now);
        broken.push(line);
        *reasons.entry(reason).or_default() += 1;
        if i % EVERY == EVERY - 1 {
            let ts = base + good as i64 * STEP_MS;
            broken.push(good_line(ts, good));
            expected.insert(("broken-probe".to_string(), ts));
            good += 1;
        }
    }
    // Healthy devices publish at the same time, each through its own mosquitto_pub.
    let healthy: Vec<_> = (0..HEALTHY_DEVICES)
        .map(|d| {
            let lines: Vec<String> = (0..HEALTHY_READINGS)
                .map(|i| {
                    let ts = base + i as i64 * STEP_MS;
                    expected.insert((format!("probe-{d}"), ts));
                    good_line(ts, i)
                })
                .collect();
            std::thread::spawn(move || {
                let topic = format!("orchards/fengjie/B1/probe-{d}/telemetry");
                mosquitto_pub_lines(port, &topic, &lines);
            })
        })
        .collect();
    mosquitto_pub_lines(port, "orchards/fengjie/B1/broken-probe/telemetry", &broken);
    for h in healthy {
        h.join().unwrap();
    }

    // mosquitto_pub has exited: every message was acknowledged, so every one is on disk.
    let rows = daemon.stored_readings();
    let keys: HashSet<_> = rows.iter().map(|(d, ts, _)| (d.clone(), *ts)).collect();
    assert_eq!(rows.len(), keys.len(), "no reading stored twice");
    assert_eq!(keys.len(), expected.len());
    assert!(
        keys == expected,
        "the stored readings are exactly the valid ones"
    );

    // Every bad message is counted and kept with its reason where staff can see it.
    let counted = daemon.metric_sum("orchardd_rejected_total");
    assert_eq!(counted as usize, BAD, "rejections counted");
    let (status, q) = daemon.get("/api/v1/quarantine?limit=100000");
    assert_eq!(status, 200, "{q}");
    let mut kept = std::collections::BTreeMap::<&str, usize>::new();
    for e in q["quarantine"].as_array().unwrap() {
        assert_eq!(
            e["topic"], "orchards/fengjie/B1/broken-probe/telemetry",
            "{e}"
        );
        assert!(!e["detail"].as_str().unwrap().is_empty(), "{e}");
        let reason = reasons
            .keys()
            .find(|r| e["reason"] == **r)
            .unwrap_or_else(|| panic!("unexpected entry {e}"));
        *kept.entry(reason).or_default() += 1;
    }
    assert_eq!(kept, reasons, "each bad message kept once with its reason");

    // And the daemon is healthy: ready, and the next reading goes straight in.
    assert_eq!(daemon.get("/readyz").0, 200);
    mosquitto_pub_lines(
        port,
        "orchards/fengjie/B1/probe-0/telemetry",
        &[good_line(now, 7)],
    );
    wait_for(Duration::from_secs(10), "a reading after the flood", || {
        daemon
            .stored_readings()
            .iter()
            .any(|(d, ts, _)| d == "probe-0" && *ts == now)
            .then_some(())
    });
}
