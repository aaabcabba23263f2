//! Forwarding to InfluxDB against real servers: VictoriaMetrics for the v2 write path, InfluxDB
//! 1.x for the v1 path, an outage across a restart of orchardd, bad data, hostile escaping.

mod support;

use std::path::Path;
use std::time::Duration;

use orchardd::config::{InfluxApi, InfluxSettings};
use orchardd::influx::line::{self, FieldValue};
use orchardd::influx::write::{InfluxWriter, WriteError};
use serde_json::json;
use support::influx::{DATABASE, Influxd, VictoriaMetrics};
use support::{Daemon, DaemonConfig, Publisher, now_ms, wait_for};

fn v2_to(url: &str) -> String {
    format!(
        "[influx]\nenabled = true\napi = \"v2\"\nurl = \"{url}\"\norg = \"fengjie\"\nbucket = \"orchardd\"\ntoken = \"t0ken\"\nflush_interval = \"100ms\"\nmax_retry_delay = \"1s\"\n"
    )
}

fn v1_to(url: &str) -> String {
    format!(
        "[influx]\nenabled = true\napi = \"v1\"\nurl = \"{url}\"\ndatabase = \"{DATABASE}\"\nflush_interval = \"100ms\"\nmax_retry_delay = \"1s\"\nbatch_size = 1000\n"
    )
}

/// Publishes `messages` messages of 10 readings each (10 kinds), one station per 100 messages.
async fn publish_burst(publisher: &Publisher, base: i64, messages: i64) {
    for i in 0..messages {
        let payload = json!({"ts": base + i * 1000, "readings": {
            "air_temperature": 10.0 + (i % 20) as f64, "relative_humidity": 50.0 + (i % 40) as f64,
            "soil_temperature": 15.5, "soil_moisture": 20.0 + (i % 10) as f64, "soil_ec": 1.25,
            "leaf_wetness": 0.0, "rainfall": 0.2, "wind_speed": 1.5, "solar_radiation": 400.0,
            "battery_v": 3.6}});
        let topic = format!("orchards/fengjie/B{}/station-{}/telemetry", i % 3, i / 100);
        publisher.publish(&topic, payload.to_string()).await;
    }
}

/// orchardd on its embedded defaults with `extra` (its forwarding), ready, and a publisher
/// connected to its endpoint.
async fn start_forwarding(dir: &Path, extra: String) -> (Daemon, Publisher) {
    let cfg = DaemonConfig {
        extra,
        ..DaemonConfig::embedded()
    };
    let daemon = Daemon::start(dir, &cfg);
    daemon.wait_ready();
    let publisher = Publisher::connect(cfg.broker_port(), "gw").await;
    (daemon, publisher)
}

fn influx_count(influxd: &Influxd) -> u64 {
    let v = influxd.query(DATABASE, "SELECT count(\"value\") FROM /.*/");
    v["results"][0]["series"]
        .as_array()
        .map(|series| {
            series
                .iter()
                .map(|s| s["values"][0][1].as_u64().unwrap_or(0))
                .sum()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_reach_victoria_metrics_through_the_v2_write_path() {
    let dir = tempfile::tempdir().unwrap();
    let vm = VictoriaMetrics::start(dir.path());
    let (daemon, publisher) = start_forwarding(dir.path(), v2_to(&vm.url())).await;
    let base = now_ms() - 3_600_000;
    publish_burst(&publisher, base, 30).await;
    // A soil probe at depth: depth_cm becomes a tag.
    let probe =
        json!({"ts": base, "readings": [{"kind": "soil_moisture", "value": 31.5, "depth_cm": 60}]});
    publisher
        .publish("orchards/fengjie/B9/probe-60/telemetry", probe.to_string())
        .await;

    wait_for(
        Duration::from_secs(30),
        "301 points in VictoriaMetrics",
        || (vm.samples("{__name__=~\".+_value\"}").len() >= 301).then_some(()),
    );
    let samples = vm.samples("{__name__=~\".+_value\"}");
    assert_eq!(samples.len(), 301, "each reading once");
    let deep = samples
        .iter()
        .find(|s| s.labels.get("depth_cm").map(String::as_str) == Some("60"))
        .unwrap();
    assert_eq!(deep.labels["__name__"], "soil_moisture_value");
    assert_eq!(deep.labels["device"], "probe-60");
    assert_eq!(
        (deep.ts, deep.value),
        (base, 31.5),
        "ms precision, exact value"
    );
    let air: Vec<_> = samples
        .iter()
        .filter(|s| s.labels["__name__"] == "air_temperature_value")
        .collect();
    assert_eq!(air.len(), 30);
    for s in air {
        let i = (s.ts - base) / 1000;
        assert_eq!(s.value, 10.0 + (i % 20) as f64);
        assert_eq!(s.labels["block"], format!("B{}", i % 3));
        assert_eq!(s.labels["orchard"], "fengjie");
    }
    assert!(daemon.metric("orchardd_forward_points_total") >= 301.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_influxdb_outage_across_a_restart_of_orchardd_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut influxd = Influxd::start(dir.path());
    influxd.stop();
    let (mut daemon, publisher) = start_forwarding(dir.path(), v1_to(&influxd.url())).await;
    let base = now_ms() - 3 * 3_600_000;

    // 10 000 readings arrive while InfluxDB is down.
    publish_burst(&publisher, base, 1_000).await;
    wait_for(Duration::from_secs(60), "10 000 readings committed", || {
        (daemon.stored_readings().len() == 10_000).then_some(())
    });
    wait_for(Duration::from_secs(20), "the backlog to show", || {
        (daemon.metric("orchardd_forward_backlog_readings") == 10_000.0).then_some(())
    });
    assert!(daemon.metric("orchardd_forward_retries_total") >= 1.0);

    // orchardd restarts during the outage; the backlog survives in its store.
    assert!(daemon.sigterm().success());
    daemon.restart();
    daemon.wait_ready();
    assert_eq!(daemon.metric("orchardd_forward_points_total"), 0.0);

    influxd.restart();
    wait_for(
        Duration::from_secs(90),
        "exactly 10 000 points in InfluxDB",
        || (influx_count(&influxd) >= 10_000).then_some(()),
    );
    wait_for(Duration::from_secs(10), "an empty backlog", || {
        (daemon.metric("orchardd_forward_backlog_readings") == 0.0).then_some(())
    });
    assert_eq!(influx_count(&influxd), 10_000, "counted with InfluxQL");
    let v = influxd.query(DATABASE, "SELECT \"value\" FROM \"air_temperature\" WHERE \"device\" = 'station-7' ORDER BY time LIMIT 3");
    let values = v["results"][0]["series"][0]["values"].as_array().unwrap();
    assert_eq!(values[0][0], json!(base + 700_000));
    assert_eq!(values[0][1].as_f64(), Some(10.0 + (700 % 20) as f64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_influxdb_calls_bad_is_set_aside_and_the_stream_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let influxd = Influxd::start(dir.path());
    let base = now_ms() - 600_000;
    // Someone wrote soil_ec as text in this week's shard: orchardd's float soil_ec conflicts.
    influxd.write(
        DATABASE,
        &format!(
            "soil_ec,orchard=x,block=y,device=z value=\"high\" {}\n",
            base - 1
        ),
    );
    let (daemon, publisher) = start_forwarding(
        dir.path(),
        v1_to(&influxd.url()).replace("batch_size = 1000", "batch_size = 1"),
    )
    .await;
    for (i, kind) in ["soil_moisture", "soil_ec", "air_temperature"]
        .iter()
        .enumerate()
    {
        let payload = json!({"ts": base + i as i64, "readings": {*kind: 1.5}});
        publisher
            .publish("orchards/fengjie/B1/probe-1/telemetry", payload.to_string())
            .await;
    }
    // The batches around the bad one arrive; the bad one is set aside, not retried for ever.
    wait_for(
        Duration::from_secs(30),
        "the good points in InfluxDB",
        || (daemon.metric("orchardd_forward_points_total") >= 2.0).then_some(()),
    );
    let v = influxd.query(
        DATABASE,
        "SELECT \"value\" FROM \"air_temperature\", \"soil_moisture\" WHERE \"device\" = 'probe-1'",
    );
    let series = v["results"][0]["series"].as_array().unwrap();
    assert_eq!(series.len(), 2, "{v}");
    assert_eq!(daemon.metric("orchardd_forward_dead_lettered_total"), 1.0);
    let conn = rusqlite::Connection::open(&daemon.store).unwrap();
    let (status, message, lines): (i64, String, String) = conn
        .query_row(
            "SELECT status, message, lines FROM forward_dead_letters",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!(status, 400);
    assert!(
        message.contains("field type conflict"),
        "InfluxDB's own words: {message}"
    );
    assert!(lines.starts_with("soil_ec,"), "{lines}");
    assert_eq!(daemon.metric("orchardd_forward_backlog_readings"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_over_the_servers_body_limit_goes_in_halves_and_arrives_once() {
    let dir = tempfile::tempdir().unwrap();
    // A 2 kB request limit (InfluxDB's default is 25 MB): a 1000-point batch is ~95 kB of
    // lines, ~10 kB gzip'd, so influxd answers 413 and the forwarder halves it until it fits.
    let mut influxd = Influxd::start_with_http(dir.path(), "  max-body-size = 2000");
    // The backlog is built while InfluxDB is away, so that the first batches are full.
    influxd.stop();
    let (daemon, publisher) = start_forwarding(dir.path(), v1_to(&influxd.url())).await;
    let base = now_ms() - 3_600_000;
    publish_burst(&publisher, base, 300).await;
    wait_for(Duration::from_secs(60), "3 000 readings committed", || {
        (daemon.metric("orchardd_forward_backlog_readings") == 3_000.0).then_some(())
    });
    influxd.restart();
    wait_for(Duration::from_secs(60), "3 000 points in InfluxDB", || {
        (influx_count(&influxd) >= 3_000).then_some(())
    });
    wait_for(Duration::from_secs(10), "an empty backlog", || {
        (daemon.metric("orchardd_forward_backlog_readings") == 0.0).then_some(())
    });
    assert_eq!(influx_count(&influxd), 3_000, "counted with InfluxQL");
    assert_eq!(daemon.metric("orchardd_forward_points_total"), 3_000.0);
    assert_eq!(daemon.metric("orchardd_forward_dead_lettered_total"), 0.0);
    let batches = daemon.metric("orchardd_forward_batches_total");
    assert!(
        batches >= 6.0,
        "3 000 points in halves of 1 000: {batches} batches"
    );
    assert!(
        daemon
            .log_text()
            .contains("batch too large for InfluxDB; sending it in halves"),
        "the halving is logged"
    );
    let v = influxd.query(
        DATABASE,
        "SELECT \"value\" FROM \"soil_moisture\" WHERE \"device\" = 'station-2' ORDER BY time LIMIT 1",
    );
    let first = &v["results"][0]["series"][0]["values"][0];
    assert_eq!(first[0], json!(base + 200_000), "{v}");
    assert_eq!(first[1].as_f64(), Some(20.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_names_and_values_survive_the_trip_through_influxdb() {
    let dir = tempfile::tempdir().unwrap();
    let influxd = Influxd::start(dir.path());
    let settings = InfluxSettings {
        enabled: true,
        api: InfluxApi::V1,
        url: influxd.url(),
        database: DATABASE.into(),
        ..InfluxSettings::default()
    };
    let writer = InfluxWriter::new(&settings).unwrap();
    let hostile_measurement = "leaf, wet=ness\\x";
    let hostile_tag = "奉节 \"B3\", row=4\\x";
    let hostile_text = "say \"hi\" \\ and, = bye\nnext line";
    let mut body = String::new();
    line::point(
        &mut body,
        hostile_measurement,
        &[("block", hostile_tag), ("orchard", "fengjie")],
        &[
            ("value", FieldValue::Float(-0.125)),
            ("note", FieldValue::Str(hostile_text)),
        ],
        1_700_000_000_123,
    );
    writer.write(body.into()).await.unwrap();

    let escaped = hostile_measurement
        .replace('\\', "\\\\")
        .replace('"', "\\\"");
    let v = influxd.query(
        DATABASE,
        &format!("SELECT \"value\", \"note\", \"block\" FROM \"{escaped}\""),
    );
    let series = &v["results"][0]["series"][0];
    assert_eq!(series["name"], hostile_measurement, "{v}");
    let row = &series["values"][0];
    assert_eq!(row[0], 1_700_000_000_123i64);
    assert_eq!(row[1], -0.125);
    // Line protocol has no newline in string fields: it travels as the two characters `\n`.
    assert_eq!(row[2], hostile_text.replace('\n', "\\n"));
    assert_eq!(row[3], hostile_tag);

    // A body InfluxDB cannot parse is refused as bad data, not retried for ever.
    let err = writer.write("no fields here 1\n".into()).await.unwrap_err();
    assert!(
        matches!(err, WriteError::Rejected { status: 400, .. }),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_query_api_answers_the_same_from_the_embedded_store_and_from_influxdb() {
    let dir = tempfile::tempdir().unwrap();
    let influxd = Influxd::start(dir.path());
    let (a_dir, b_dir) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&a_dir).unwrap();
    std::fs::create_dir_all(&b_dir).unwrap();
    // A ingests and forwards, answering from its store; B answers the same API from InfluxDB.
    let a_cfg = DaemonConfig {
        extra: v1_to(&influxd.url()),
        ..DaemonConfig::embedded()
    };
    let a = Daemon::start(&a_dir, &a_cfg);
    let b = Daemon::start(
        &b_dir,
        &DaemonConfig {
            extra: v1_to(&influxd.url()) + "[query]\nbackend = \"influx\"\n",
            ..DaemonConfig::embedded()
        },
    );
    a.wait_ready();
    b.wait_ready();
    let publisher = Publisher::connect(a_cfg.broker_port(), "gw").await;
    let base = (now_ms() - 5 * 3_600_000) / 3_600_000 * 3_600_000;
    publish_burst(&publisher, base, 300).await;
    let probe = json!({"ts": base + 5_000, "readings": [
        {"kind": "soil_moisture", "value": 31.5, "depth_cm": 30},
        {"kind": "soil_moisture", "value": 28.25, "depth_cm": 60}]});
    publisher
        .publish("orchards/fengjie/B1/probe-2/telemetry", probe.to_string())
        .await;
    wait_for(Duration::from_secs(60), "everything forwarded", || {
        (influx_count(&influxd) == 3_002).then_some(())
    });

    let from = base + 60_000;
    let to = base + 240_000;
    for query in [
        "limit=100000".to_string(),
        "orchard=fengjie&block=B1&kind=air_temperature".into(),
        "device=station-2&limit=25".into(),
        format!("kind=soil_moisture&from={from}&to={to}"),
        "kind=soil_moisture&device=probe-2".into(),
        "kind=air_temperature&every=1m&agg=mean".into(),
        "kind=relative_humidity&every=2m&agg=max&block=B2".into(),
        "kind=soil_moisture&every=1h&agg=count".into(),
        "kind=air_temperature&every=1m&agg=last&device=station-1".into(),
        "kind=rainfall&every=1m&agg=sum&format=csv".into(),
    ] {
        let path = format!("/api/v1/readings?{query}");
        let (from_store, from_influx) = (
            support::http_get(a.http, &path).unwrap(),
            support::http_get(b.http, &path).unwrap(),
        );
        assert_eq!(from_store.0, 200, "{path}: {}", from_store.1);
        assert!(
            from_store.1.len() > 100,
            "{path} has rows: {}",
            from_store.1
        );
        same(&path, &from_store, &from_influx);
    }
    for path in ["/api/v1/latest", "/api/v1/latest?block=B1&format=csv"] {
        same(
            path,
            &support::http_get(a.http, path).unwrap(),
            &support::http_get(b.http, path).unwrap(),
        );
    }
    let (status, body) = b.get("/api/v1/readings?flagged=spike");
    assert_eq!(status, 400, "{body}");
}

/// Equal answers, or a failure that shows where they part, not two whole bodies.
/// Health flags are the embedded store's own (they are not forwarded), so they are left out
/// of the comparison.
fn same(path: &str, a: &(u16, String), b: &(u16, String)) {
    let without_flags = |body: &str| match serde_json::from_str::<serde_json::Value>(body) {
        Ok(mut v) => {
            if let Some(rows) = v["readings"].as_array_mut() {
                rows.iter_mut().for_each(|r| {
                    r.as_object_mut().unwrap().remove("flags");
                });
            }
            v.to_string()
        }
        // CSV: the flags column is the last one.
        Err(_) => body
            .lines()
            .map(|l| l.rsplit_once(',').map_or(l, |(rest, _)| rest))
            .collect::<Vec<_>>()
            .join("\n"),
    };
    let (a, b) = (&(a.0, without_flags(&a.1)), &(b.0, without_flags(&b.1)));
    if a == b {
        return;
    }
    let at =
        a.1.bytes()
            .zip(b.1.bytes())
            .take_while(|(x, y)| x == y)
            .count();
    let start = at.saturating_sub(200);
    let end = |s: &str| (at + 200).min(s.len());
    panic!(
        "{path}: the answers differ at byte {at} (statuses {} and {}, lengths {} and {})\nembedded: …{}…\ninflux:   …{}…",
        a.0,
        b.0,
        a.1.len(),
        b.1.len(),
        &a.1[start..end(&a.1)],
        &b.1[start..end(&b.1)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_never_deletes_a_reading_influxdb_has_not_taken_yet() {
    let dir = tempfile::tempdir().unwrap();
    let mut influxd = Influxd::start(dir.path());
    influxd.stop();
    let cfg = DaemonConfig {
        extra: v1_to(&influxd.url()),
        ..DaemonConfig::embedded()
    };
    let daemon = Daemon::start(dir.path(), &cfg);
    daemon.wait_ready();
    let publisher = Publisher::connect(cfg.broker_port(), "gw").await;
    let now = now_ms();
    for (ts, value) in [
        (now - 3 * 3_600_000, 21.0),
        (now - 2 * 3_600_000, 22.0),
        (now - 600_000, 23.0),
    ] {
        let payload = json!({"ts": ts, "readings": {"soil_moisture": value}});
        publisher
            .publish("orchards/fengjie/B1/probe-1/telemetry", payload.to_string())
            .await;
    }
    wait_for(Duration::from_secs(20), "three readings stored", || {
        (daemon.stored_readings().len() == 3).then_some(())
    });
    drop(publisher);
    drop(daemon);
    // Back with an hour's retention (and, as check-config requires, readings accepted up to
    // an hour old), so that the first two are past it.
    let retention = vec![
        (
            "ORCHARDD__STORE__RAW_RETENTION".to_string(),
            "1h".to_string(),
        ),
        ("ORCHARDD__VALIDATE__MAX_AGE".to_string(), "1h".to_string()),
        (
            "ORCHARDD__STORE__RETENTION_INTERVAL".to_string(),
            "300ms".to_string(),
        ),
    ];
    let daemon = Daemon::start_with_env(dir.path(), &cfg, retention);
    daemon.wait_ready();
    // Several retention runs while InfluxDB is down: the old readings wait for it.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        daemon.stored_readings().len(),
        3,
        "nothing unforwarded is deleted"
    );

    influxd.restart();
    wait_for(
        Duration::from_secs(30),
        "the old readings deleted once forwarded",
        || (daemon.stored_readings().len() == 1).then_some(()),
    );
    assert_eq!(daemon.stored_readings()[0].2, 23.0, "the recent one stays");
    assert_eq!(influx_count(&influxd), 3, "and InfluxDB has all three");
}
