//! Scale-out: two orchardd instances share one subscription on Mosquitto and one InfluxDB,
//! and split a burst between them; together they store every message once.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use support::influx::{DATABASE, Influxd};
use support::{Daemon, DaemonConfig, Mosquitto, Publisher, now_ms, wait_for};

const BURST: u64 = 20_000;
const DEVICES: u64 = 100;
const STEP_MS: i64 = 10_000;

fn message(base: i64, i: u64) -> (String, String, (String, i64)) {
    let device = format!("probe-{}", i % DEVICES);
    let ts = base + (i / DEVICES) as i64 * STEP_MS;
    let topic = format!("orchards/fengjie/B4/{device}/telemetry");
    let payload = format!(r#"{{"ts":{ts},"readings":{{"soil_moisture":{}}}}}"#, i % 90);
    (topic, payload, (device, ts))
}

/// An instance of the group: the shipped defaults with an external broker, but its own
/// client id (the broker must tell the instances apart: one session each), the group, and
/// forwarding to the one InfluxDB they share.
fn instance(mosquitto: &Mosquitto, influxd: &Influxd, name: &str) -> DaemonConfig {
    DaemonConfig {
        client_id: format!("orchardd-{name}"),
        mqtt_extra: "share_group = \"orchardd\"".into(),
        extra: format!(
            "[influx]\nenabled = true\napi = \"v1\"\nurl = \"{}\"\ndatabase = \"{DATABASE}\"\n",
            influxd.url()
        ),
        ..DaemonConfig::shipped_defaults_external(mosquitto.port)
    }
}

/// Points in InfluxDB, counted with InfluxQL.
fn influx_count(influxd: &Influxd) -> u64 {
    let v = influxd.query(DATABASE, "SELECT count(\"value\") FROM \"soil_moisture\"");
    v["results"][0]["series"][0]["values"][0][1]
        .as_u64()
        .unwrap_or(0)
}

fn keys(daemon: &Daemon) -> Vec<(String, i64)> {
    daemon
        .stored_readings()
        .into_iter()
        .map(|(d, ts, _)| (d, ts))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_sharing_a_subscription_store_a_burst_exactly_once_between_them() {
    let dir = tempfile::tempdir().unwrap();
    let mosquitto = Mosquitto::start(dir.path());
    let influxd = Influxd::start(dir.path());
    let (dir_a, dir_b) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&dir_a).unwrap();
    std::fs::create_dir_all(&dir_b).unwrap();
    let a = Daemon::start(&dir_a, &instance(&mosquitto, &influxd, "a"));
    let b = Daemon::start(&dir_b, &instance(&mosquitto, &influxd, "b"));
    a.wait_ready();
    b.wait_ready();
    for d in [&a, &b] {
        assert!(
            d.log_text()
                .contains("$share/orchardd/orchards/+/+/+/telemetry"),
            "subscribed through the share group\n{}",
            d.log_text()
        );
    }

    // Three hours of 10-second readings from 100 devices, delivered at once.
    let base = now_ms() - 3 * 3_600_000;
    let mut publisher = Publisher::connect(mosquitto.port, "scale-out-gateway").await;
    for i in 0..BURST {
        let (topic, payload, _) = message(base, i);
        publisher.publish(&topic, payload).await;
    }
    publisher.wait_acked(BURST).await;

    let total = || a.stored_readings().len() + b.stored_readings().len();
    wait_for(
        Duration::from_secs(120),
        "the two instances to store the burst",
        || (total() as u64 >= BURST).then_some(()),
    );
    // Let a redelivery still in flight land before counting.
    std::thread::sleep(Duration::from_secs(1));

    let (ka, kb) = (keys(&a), keys(&b));
    let (sa, sb): (HashSet<_>, HashSet<_>) =
        (ka.iter().cloned().collect(), kb.iter().cloned().collect());
    assert_eq!(ka.len(), sa.len(), "instance a stored a reading twice");
    assert_eq!(kb.len(), sb.len(), "instance b stored a reading twice");
    let both: Vec<_> = sa.intersection(&sb).collect();
    assert!(
        both.is_empty(),
        "{} readings were stored by both instances, e.g. {:?}",
        both.len(),
        &both[..both.len().min(3)]
    );
    let expected: HashSet<_> = (0..BURST).map(|i| message(base, i).2).collect();
    let union: HashSet<_> = sa.union(&sb).cloned().collect();
    assert_eq!(union.len(), expected.len());
    assert!(union == expected, "the union is exactly the burst");
    // Mosquitto hands a shared subscription's messages round robin: both did real work.
    for (name, n) in [("a", sa.len()), ("b", sb.len())] {
        assert!(
            n as u64 >= BURST / 4,
            "instance {name} stored only {n} of {BURST}"
        );
    }
    for (name, d) in [("a", &a), ("b", &b)] {
        assert_eq!(
            d.metric_sum("orchardd_rejected_total"),
            0.0,
            "instance {name} quarantined none of a backlog on the shipped defaults"
        );
    }

    // InfluxDB, which both forward to, holds the burst too: one point per reading.
    wait_for(Duration::from_secs(60), "the burst in InfluxDB", || {
        (influx_count(&influxd) >= BURST).then_some(())
    });
    assert_eq!(influx_count(&influxd), BURST);
}
