//! The delivery guarantee against a real external broker (Mosquitto with persistence):
//! whatever happens to orchardd or the broker mid-burst, every reading is stored exactly once.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use support::{Daemon, DaemonConfig, Mosquitto, Publisher, now_ms, wait_for};

const BURST: u64 = 10_000;
const DEVICES: u64 = 10;

/// Each device reports every 10 s: the burst is 1000 readings of each device's backlog, close
/// to three hours of reading time delivered at once (`base` is that long ago).
const STEP_MS: i64 = 10_000;

/// Message `i` of the burst: one reading, identified by device and timestamp.
fn message(base: i64, i: u64) -> (String, Vec<u8>, (String, i64)) {
    let device = format!("probe-{}", i % DEVICES);
    let round = i / DEVICES;
    let ts = base + round as i64 * STEP_MS;
    let value = (round % 100) as f64;
    let topic = format!("orchards/fengjie/B1/{device}/telemetry");
    let payload = format!(r#"{{"ts":{ts},"readings":{{"soil_moisture":{value}}}}}"#);
    (topic, payload.into_bytes(), (device, ts))
}

fn expected(base: i64) -> HashSet<(String, i64)> {
    (0..BURST).map(|i| message(base, i).2).collect()
}

/// Publishes the burst; `interrupt` runs once, after `at` messages were acknowledged.
async fn burst(publisher: &mut Publisher, base: i64, at: u64, interrupt: impl FnOnce()) {
    let mut interrupt = Some(interrupt);
    for i in 0..BURST {
        let (topic, payload, _) = message(base, i);
        publisher.publish(&topic, payload).await;
        if i + 1 == at {
            publisher.wait_acked(at).await;
            (interrupt.take().unwrap())();
        }
    }
    publisher.wait_acked(BURST).await;
}

/// Waits until the store holds the whole burst, then checks it holds nothing else.
fn assert_all_stored_once(daemon: &Daemon, base: i64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while (daemon.stored_readings().len() as u64) < BURST {
        assert!(
            std::time::Instant::now() < deadline,
            "only {} of {BURST} readings stored after 120 s\n{}",
            daemon.stored_readings().len(),
            daemon.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Let any redelivery still in flight land before counting.
    std::thread::sleep(Duration::from_millis(500));
    let rows = daemon.stored_readings();
    let keys: HashSet<_> = rows.iter().map(|(d, ts, _)| (d.clone(), *ts)).collect();
    assert_eq!(rows.len() as u64, BURST, "exactly one row per message");
    assert_eq!(
        keys,
        expected(base),
        "the stored readings are exactly the published ones"
    );
    for (device, ts, value) in &rows {
        let round = ((ts - base) / STEP_MS) as u64;
        assert_eq!(*value, (round % 100) as f64, "{device} at {ts}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_orchardd_mid_burst_loses_nothing_and_doubles_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mosquitto = Mosquitto::start(dir.path());
    let mut daemon = Daemon::start(dir.path(), &DaemonConfig::external(mosquitto.port));
    daemon.wait_ready();
    let mut publisher = Publisher::connect(mosquitto.port, "scale-gateway-1").await;
    let base = now_ms() - 3 * 3_600_000;

    burst(&mut publisher, base, 4_000, || {
        // Some of the burst is committed, some in flight: kill without warning, start again.
        wait_for(
            Duration::from_secs(30),
            "orchardd to commit part of the burst",
            || (daemon.metric("orchardd_readings_accepted_total") >= 1_000.0).then_some(()),
        );
        daemon.kill9();
        daemon.restart();
    })
    .await;
    daemon.wait_ready();
    assert_all_stored_once(&daemon, base);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_mid_burst_loses_nothing_and_doubles_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut mosquitto = Mosquitto::start(dir.path());
    let daemon = Daemon::start(dir.path(), &DaemonConfig::external(mosquitto.port));
    daemon.wait_ready();
    let mut publisher = Publisher::connect(mosquitto.port, "scale-gateway-2").await;
    let base = now_ms() - 3 * 3_600_000;

    burst(&mut publisher, base, 4_000, || mosquitto.restart()).await;
    assert_all_stored_once(&daemon, base);
    assert!(
        daemon.metric("orchardd_mqtt_reconnects_total") >= 1.0,
        "orchardd noticed the restart and reconnected by itself"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_burst_exits_0_and_everything_acknowledged_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let mosquitto = Mosquitto::start(dir.path());
    let cfg = DaemonConfig::external(mosquitto.port);
    let mut daemon = Daemon::start(dir.path(), &cfg);
    daemon.wait_ready();
    let mut publisher = Publisher::connect(mosquitto.port, "scale-gateway-3").await;
    let base = now_ms() - 3 * 3_600_000;

    let mut status = None;
    burst(&mut publisher, base, 5_000, || {
        status = Some(daemon.sigterm())
    })
    .await;
    let status = status.unwrap();
    assert!(
        status.success(),
        "exit status {status:?}\n{}",
        daemon.log_text()
    );

    // What orchardd committed is in the store; what it did not acknowledge, the broker still
    // holds for orchardd's session. Together they are the whole burst, with no overlap: every
    // committed message was acknowledged before orchardd exited.
    let stored: HashSet<_> = daemon
        .stored_readings()
        .into_iter()
        .map(|(d, ts, _)| (d, ts))
        .collect();
    assert!(
        !stored.is_empty(),
        "part of the burst was committed before SIGTERM"
    );
    let pending = drain_session(
        mosquitto.port,
        &cfg.client_id,
        BURST as usize - stored.len(),
    )
    .await;
    let overlap: Vec<_> = stored.intersection(&pending).collect();
    assert!(
        overlap.is_empty(),
        "{} committed messages were not acknowledged\n{}",
        overlap.len(),
        daemon.log_text()
    );
    let all: HashSet<_> = stored.union(&pending).cloned().collect();
    assert_eq!(all, expected(base));
}

/// Takes over orchardd's persistent session and collects what the broker still holds for it.
async fn drain_session(port: u16, client_id: &str, want: usize) -> HashSet<(String, i64)> {
    let mut o = MqttOptions::new(client_id, "127.0.0.1", port);
    o.set_clean_session(false)
        .set_keep_alive(Duration::from_secs(5));
    let (_client, mut eventloop) = AsyncClient::new(o, 10);
    let mut got = HashSet::new();
    let collect = async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    assert_eq!(p.qos, QoS::AtLeastOnce);
                    let v: serde_json::Value = serde_json::from_slice(&p.payload).unwrap();
                    let device = p.topic.split('/').nth(3).unwrap().to_string();
                    got.insert((device, v["ts"].as_i64().unwrap()));
                    // Duplicates of one message count once; stop when all are in (or time out).
                    if got.len() >= want {
                        break;
                    }
                }
                Ok(_) => {}
                Err(e) => panic!("draining the session: {e}"),
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(60), collect).await;
    // Anything more that arrives would be a message both stored and still pending.
    let extra = async {
        loop {
            if let Ok(Event::Incoming(Packet::Publish(p))) = eventloop.poll().await {
                let v: serde_json::Value = serde_json::from_slice(&p.payload).unwrap();
                let device = p.topic.split('/').nth(3).unwrap().to_string();
                got.insert((device, v["ts"].as_i64().unwrap()));
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), extra).await;
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_external_broker_with_tls_and_a_password_works_and_bad_credentials_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let (mosquitto, ca) = Mosquitto::start_tls(dir.path(), "orchardd", "s3cret-pass");
    let credentials = |password: &str| {
        format!(
            "username = \"orchardd\"\npassword = \"{password}\"\nca_file = \"{}\"\n",
            ca.display()
        )
    };
    let cfg = DaemonConfig {
        mqtt_url: format!("mqtts://localhost:{}", mosquitto.port),
        mqtt_extra: credentials("s3cret-pass"),
        ..DaemonConfig::external(mosquitto.port)
    };
    let daemon = Daemon::start(dir.path(), &cfg);
    daemon.wait_ready();

    // A reading published over TLS with credentials arrives.
    let mut o = MqttOptions::new("tls-gateway", "localhost", mosquitto.port);
    o.set_credentials("orchardd", "s3cret-pass");
    o.set_transport(rumqttc::Transport::tls(
        std::fs::read(&ca).unwrap(),
        None,
        None,
    ));
    let (client, mut eventloop) = AsyncClient::new(o, 10);
    let pump = tokio::spawn(async move {
        for _ in 0..200 {
            if eventloop.poll().await.is_err() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });
    let ts = now_ms();
    let payload = format!(r#"{{"ts":{ts},"readings":{{"soil_ec":1.25}}}}"#);
    client
        .publish(
            "orchards/fengjie/B2/tls-probe/telemetry",
            QoS::AtLeastOnce,
            false,
            payload,
        )
        .await
        .unwrap();
    wait_for(Duration::from_secs(20), "the TLS reading", || {
        let v = daemon.get_ok("/api/v1/readings?device=tls-probe");
        (v["readings"].as_array().unwrap().len() == 1).then_some(())
    });
    pump.abort();
    drop(daemon);

    // A wrong password: orchardd keeps retrying, logs why, and is not ready.
    let wrong_dir = tempfile::tempdir().unwrap();
    let wrong = DaemonConfig {
        mqtt_extra: credentials("wrong"),
        client_id: "orchardd-wrong".into(),
        ..cfg
    };
    let daemon = Daemon::start(wrong_dir.path(), &wrong);
    let log = wait_for(
        Duration::from_secs(20),
        "two logged connection failures",
        || {
            let log = daemon.log_text();
            (log.matches("mqtt: connection to").count() >= 2).then_some(log)
        },
    );
    assert!(log.contains("attempt=2"), "{log}");
    assert_eq!(
        daemon.get("/readyz").0,
        503,
        "not ready while the broker refuses orchardd"
    );
}
