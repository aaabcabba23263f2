//! What someone on the box runs: `orchardd backup` while readings keep arriving, the restore
//! the README describes, and `orchardd status`.

mod support;

use std::process::{Command, Output};
use std::time::Duration;

use support::{Daemon, DaemonConfig, mosquitto_pub_lines, wait_for};

fn orchardd(args: &[&str], config: &std::path::Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_orchardd"))
        .args(args)
        .arg("--config")
        .arg(config)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

/// `n` readings a second apart, ending `end_ms`.
fn lines(n: i64, end_ms: i64) -> Vec<String> {
    (0..n)
        .map(|i| {
            format!(
                r#"{{"ts":{},"readings":{{"soil_moisture":{}}}}}"#,
                end_ms - (n - i) * 1000,
                20 + i % 10
            )
        })
        .collect()
}

fn stored(daemon: &Daemon) -> usize {
    daemon.get_ok("/api/v1/readings?limit=100000")["readings"]
        .as_array()
        .unwrap()
        .len()
}

#[test]
fn a_backup_taken_during_ingest_restores_to_a_working_store() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = DaemonConfig::shipped_defaults_embedded();
    let mut daemon = Daemon::start(dir.path(), &cfg);
    daemon.wait_ready();
    let port = cfg.broker_port();
    let now = support::now_ms();
    mosquitto_pub_lines(
        port,
        "orchards/fengjie/B1/probe-1/telemetry",
        &lines(2000, now),
    );
    wait_for(Duration::from_secs(30), "2000 readings", || {
        (stored(&daemon) == 2000).then_some(())
    });

    // A second device keeps reporting while the backup runs.
    let feeding = std::thread::spawn(move || {
        for round in 0..10 {
            let end = now - (9 - round) * 60_000;
            mosquitto_pub_lines(
                port,
                "orchards/fengjie/B2/probe-2/telemetry",
                &lines(50, end),
            );
        }
    });
    let backup = dir.path().join("backup.db");
    let out = orchardd(&["backup", backup.to_str().unwrap()], &daemon.config);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("readings"), "{said}");
    assert!(said.contains("checked"), "{said}");
    feeding.join().unwrap();
    wait_for(Duration::from_secs(30), "every reading", || {
        (stored(&daemon) == 2500).then_some(())
    });

    // A backup never overwrites.
    let again = orchardd(&["backup", backup.to_str().unwrap()], &daemon.config);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists already"));

    // The copy is whole: it passes SQLite's integrity check and holds at least what was
    // stored before it began.
    let copy = rusqlite::Connection::open(&backup).unwrap();
    let check: String = copy
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    let in_backup: i64 = copy
        .query_row("SELECT count(*) FROM readings", [], |r| r.get(0))
        .unwrap();
    drop(copy);
    assert!((2000..=2500).contains(&in_backup), "{in_backup}");
    assert!(said.contains(&format!("{in_backup} readings")), "{said}");

    // Restore as the README says: stop, put the backup in place, drop the old WAL, start.
    assert!(daemon.sigterm().success());
    std::fs::copy(&backup, &daemon.store).unwrap();
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", daemon.store.display()));
    }
    daemon.restart();
    daemon.wait_ready();
    assert_eq!(stored(&daemon) as i64, in_backup);
    // The sensors resend what they were not acknowledged; here, everything after the backup.
    mosquitto_pub_lines(
        port,
        "orchards/fengjie/B1/probe-1/telemetry",
        &lines(2000, now),
    );
    wait_for(Duration::from_secs(30), "the first device again", || {
        let v = daemon.get_ok("/api/v1/readings?device=probe-1&limit=100000");
        (v["readings"].as_array().unwrap().len() == 2000).then_some(())
    });
    assert!(daemon.sigterm().success());
}

#[test]
fn status_tells_whether_orchardd_is_ready_and_what_it_has_taken_in() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = DaemonConfig::shipped_defaults_embedded();
    let mut daemon = Daemon::start(dir.path(), &cfg);
    daemon.wait_ready();
    let now = support::now_ms();
    let mut sent = lines(30, now);
    sent.push("not json".into());
    mosquitto_pub_lines(
        cfg.broker_port(),
        "orchards/fengjie/B1/probe-1/telemetry",
        &sent,
    );
    wait_for(Duration::from_secs(30), "30 readings", || {
        (stored(&daemon) == 30).then_some(())
    });
    let out = orchardd(&["status"], &daemon.config);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&format!("orchardd on {}: ready", daemon.http)),
        "{text}"
    );
    assert!(text.contains("31 received"), "{text}");
    assert!(text.contains("30 accepted"), "{text}");
    assert!(text.contains("1 rejected (malformed_payload 1)"), "{text}");
    assert!(text.contains("0 open"), "{text}");
    // The same figures are on /metrics.
    assert_eq!(daemon.metric("orchardd_readings_accepted_total"), 30.0);
    assert!(daemon.metric("orchardd_store_bytes") > 0.0);

    assert!(daemon.sigterm().success());
    let out = orchardd(&["status"], &daemon.config);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not answering"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
