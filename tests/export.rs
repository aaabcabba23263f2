//! Exporting a season: two million readings as JSON and as CSV, with curl, while orchardd's
//! memory stays small; and a client that reads slowly does not hold ingest back.

mod support;

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde::Deserialize;
use support::{Daemon, DaemonConfig, mosquitto_pub_lines, require_binary, status_kib, wait_for};

const DEVICES: i64 = 100;
const PER_DEVICE: i64 = 20_000;
const TOTAL: usize = (DEVICES * PER_DEVICE) as usize;
/// What the issue allows orchardd's peak RSS to reach while it answers.
const RSS_LIMIT_KIB: u64 = 64 * 1024;

/// Fills the store with `DEVICES` air-temperature series of `PER_DEVICE` readings a minute
/// apart, ending now, valued `n % 50`. Written straight into the SQLite file (orchardd
/// stopped) because ingesting two million readings through MQTT would take this debug build
/// minutes and is not what the test is about; the ingest path has its own tests and
/// benchmark. Returns the sum of all values.
fn seed(store: &std::path::Path) -> f64 {
    let conn = rusqlite::Connection::open(store).unwrap();
    let start = support::now_ms() - PER_DEVICE * 60_000;
    conn.execute_batch(&format!(
        "BEGIN;
         INSERT INTO series (orchard, block, device, kind, depth_cm, first_seen)
           WITH RECURSIVE d(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM d WHERE n + 1 < {DEVICES})
           SELECT 'fengjie', 'B' || (n % 4 + 1), printf('probe-%03d', n), 'air_temperature', NULL, {start}
           FROM d;
         INSERT INTO readings (series, ts, value, flags)
           WITH RECURSIVE k(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM k WHERE n + 1 < {PER_DEVICE})
           SELECT s.id, {start} + k.n * 60000, k.n % 50, 0 FROM series s, k;
         COMMIT;"
    ))
    .unwrap();
    let sum: f64 = conn
        .query_row("SELECT sum(value) FROM readings", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        conn.query_row("SELECT count(*) FROM readings", [], |r| r.get::<_, i64>(0))
            .unwrap(),
        TOTAL as i64
    );
    sum
}

fn curl(url: &str, out: &std::path::Path) {
    let bin = require_binary("curl", "curl");
    let status = Command::new(bin)
        .args(["-sS", "--fail", "-o"])
        .arg(out)
        .arg(url)
        .status()
        .unwrap();
    assert!(status.success(), "curl {url}");
}

#[derive(Deserialize)]
struct Export {
    readings: Vec<Reading>,
}

#[derive(Deserialize)]
struct Reading {
    ts: String,
    value: f64,
}

#[test]
fn a_two_million_reading_export_streams_in_little_memory_and_a_slow_client_holds_nothing_back() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = DaemonConfig::shipped_defaults_embedded();
    let mut daemon = Daemon::start(dir.path(), &cfg);
    daemon.wait_ready(); // the store now has its schema
    assert!(daemon.sigterm().success());
    let sum = seed(&daemon.store);
    daemon.restart();
    daemon.wait_ready();
    let pid = daemon.pid();
    let at_start = status_kib(pid, "VmHWM");
    let base = format!("http://{}/api/v1/readings?limit=5000000", daemon.http);

    // JSON: every reading, in time order, the values adding up to what is stored.
    let json = dir.path().join("season.json");
    curl(&base, &json);
    let file = std::fs::File::open(&json).unwrap();
    let export: Export = serde_json::from_reader(std::io::BufReader::new(file)).unwrap();
    assert_eq!(export.readings.len(), TOTAL);
    assert!(export.readings.windows(2).all(|w| w[0].ts <= w[1].ts));
    let got: f64 = export.readings.iter().map(|r| r.value).sum();
    assert_eq!(got, sum);
    drop(export);
    let after_json = status_kib(pid, "VmHWM");
    assert!(
        after_json < RSS_LIMIT_KIB,
        "peak RSS {after_json} KiB after the JSON export"
    );

    // CSV: the same rows.
    let csv = dir.path().join("season.csv");
    curl(&format!("{base}&format=csv"), &csv);
    let mut lines = std::io::BufReader::new(std::fs::File::open(&csv).unwrap()).lines();
    assert_eq!(
        lines.next().unwrap().unwrap(),
        "orchard,block,device,kind,depth_cm,ts,value,flags"
    );
    let (mut rows, mut got, mut last_ts) = (0usize, 0.0, String::new());
    for line in lines {
        let line = line.unwrap();
        let fields: Vec<&str> = line.split(',').collect();
        assert_eq!(fields.len(), 8, "{line}");
        assert_eq!(fields[3], "air_temperature");
        assert!(fields[5] >= last_ts.as_str(), "out of order: {line}");
        last_ts = fields[5].to_owned();
        got += fields[6].parse::<f64>().unwrap();
        rows += 1;
    }
    assert_eq!(rows, TOTAL);
    assert_eq!(got, sum);
    let after_csv = status_kib(pid, "VmHWM");
    eprintln!("peak RSS: {at_start} KiB at start, {after_json} after JSON, {after_csv} after CSV");
    assert!(
        after_csv < RSS_LIMIT_KIB,
        "peak RSS {after_csv} KiB after the CSV export"
    );

    // A client reading the export at 50 kB/s: meanwhile a device's readings are stored at
    // once, because the export holds a read snapshot, not the writer.
    let slow_file = dir.path().join("slow.csv");
    let mut slow = Command::new(require_binary("curl", "curl"))
        .args(["-sS", "--limit-rate", "50k", "-o"])
        .arg(&slow_file)
        .arg(format!("{base}&format=csv"))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(Duration::from_secs(30), "the slow export to begin", || {
        std::fs::metadata(&slow_file)
            .is_ok_and(|m| m.len() > 0)
            .then_some(())
    });
    let now = support::now_ms();
    let lines: Vec<String> = (0..300)
        .map(|i| {
            format!(
                r#"{{"ts":{},"readings":{{"air_temperature":{}}}}}"#,
                now - (300 - i) * 1000,
                15.0 + (i % 7) as f64
            )
        })
        .collect();
    mosquitto_pub_lines(
        cfg.broker_port(),
        "orchards/fengjie/B9/late-probe/telemetry",
        &lines,
    );
    wait_for(Duration::from_secs(30), "the new device's readings", || {
        let (_, v) = daemon.get("/api/v1/readings?device=late-probe&limit=1000");
        (v["readings"].as_array().map(Vec::len) == Some(300)).then_some(())
    });
    assert!(
        slow.try_wait().unwrap().is_none(),
        "the slow export is still running while ingest went on"
    );
    let during_slow = status_kib(pid, "VmHWM");
    assert!(
        during_slow < RSS_LIMIT_KIB,
        "peak RSS {during_slow} KiB with a slow export open"
    );
    // The client gives up; orchardd lets the export go and is as ready as before.
    let _ = slow.kill();
    let _ = slow.wait();
    wait_for(
        Duration::from_secs(30),
        "the abandoned export to end",
        || daemon.log_text().contains("export abandoned").then_some(()),
    );
    assert_eq!(daemon.get("/readyz").0, 200);
    assert!(daemon.sigterm().success());
}
