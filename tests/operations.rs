//! What an operator meets: systemd notification, the unit file, `check-config`, start-up errors.

mod support;

use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::Duration;

use support::{Daemon, DaemonConfig, require_binary};

fn orchardd() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_orchardd"));
    c.env_remove("RUST_LOG");
    c
}

#[test]
fn ready_arrives_on_the_notify_socket_and_stopping_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let env = vec![(
        "NOTIFY_SOCKET".to_string(),
        socket_path.display().to_string(),
    )];
    let mut daemon = Daemon::start_with_env(dir.path(), &DaemonConfig::embedded(), env);

    let mut buf = [0u8; 512];
    let n = socket.recv(&mut buf).expect("a notification within 30 s");
    assert_eq!(std::str::from_utf8(&buf[..n]).unwrap().trim(), "READY=1");
    // READY means ready: the API answers and the subscription is in place.
    assert_eq!(daemon.get("/readyz").0, 200);

    let status = daemon.sigterm();
    let n = socket.recv(&mut buf).expect("STOPPING=1 after SIGTERM");
    assert_eq!(std::str::from_utf8(&buf[..n]).unwrap().trim(), "STOPPING=1");
    assert!(status.success(), "{status:?}");
}

#[test]
fn the_shipped_unit_passes_systemd_analyze_verify() {
    let analyze = require_binary("systemd-analyze", "systemd");
    let dir = tempfile::tempdir().unwrap();
    let shipped = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/orchardd.service"
    ))
    .unwrap();
    assert!(shipped.contains("Type=notify"));
    assert!(
        shipped.contains("ExecStart=/usr/bin/orchardd run --config /etc/orchardd/orchardd.toml")
    );
    // verify insists that ExecStart exists: point it at the binary under test, change nothing else.
    let unit = dir.path().join("orchardd.service");
    std::fs::write(
        &unit,
        shipped.replace(
            "ExecStart=/usr/bin/orchardd",
            &format!("ExecStart={}", env!("CARGO_BIN_EXE_orchardd")),
        ),
    )
    .unwrap();
    let out = Command::new(analyze)
        .arg("verify")
        .arg(&unit)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{stderr}"
    );
    assert!(
        !stderr.contains("orchardd.service"),
        "warnings about the unit:\n{stderr}"
    );
}

#[test]
fn check_config_names_every_bad_key_and_exits_nonzero() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[broker]\nembedded = \"yes please\"\n[mqtt]\ntopics = [\"orchards/+/{block}\"]\n[store]\nfile = \"x.db\"\n",
    )
    .unwrap();
    let out = orchardd()
        .args(["check-config", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    for key in ["`broker.embedded`", "`store.file`"] {
        assert!(stdout.contains(key), "{key} missing from:\n{stdout}");
    }

    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        "[mqtt]\ntopics = [\"farm/{orchard}/{block}/{device}/up\"]\n",
    )
    .unwrap();
    let out = orchardd()
        .args(["check-config", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    let out = orchardd()
        .args(["check-config", "--config"])
        .arg(&good)
        .env("ORCHARDD__HTTP__LISTEN", "not-an-address")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("`http.listen`"));

    let out = orchardd()
        .args(["check-config", "--config"])
        .arg(&good)
        .env("ORCHARDD__MQTT__TOPICS", "a/{orchard}/{block}")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("`mqtt.topics[0]`"));
}

#[test]
fn a_taken_broker_port_stops_start_up_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let cfg = DaemonConfig {
        embedded_broker: Some(taken.local_addr().unwrap().port()),
        ..DaemonConfig::embedded()
    };
    let files = cfg.write(dir.path());
    let out = orchardd()
        .args(["run", "--config"])
        .arg(&files.config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("broker.listen"), "{stderr}");
}

#[test]
fn version_and_help_describe_the_program() {
    let out = orchardd().arg("--version").output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("orchardd {}", env!("CARGO_PKG_VERSION"))
    );
    let out = orchardd().arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for sub in ["run", "check-config", "simulate", "bench"] {
        assert!(help.contains(sub), "{help}");
    }
}
