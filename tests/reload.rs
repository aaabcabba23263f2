//! SIGHUP (`systemctl reload orchardd`): tokens, MQTT users and devices change without a
//! restart and without losing a message; a bad configuration is refused and the old one kept.

mod support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::{Daemon, DaemonConfig, new_token, require_binary, wait_for};

/// `orchardd passwd NAME`, as an administrator runs it: the `[[broker.users]]` entry.
fn mqtt_user(name: &str, password: &str) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_orchardd"))
        .args(["passwd", name, "--publish", "orchards/#"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

fn api_status(daemon: &Daemon, token: &str) -> String {
    let out = Command::new(require_binary("curl", "curl"))
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-H"])
        .arg(format!("Authorization: Bearer {token}"))
        .arg(format!("http://{}/api/v1/devices", daemon.http))
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap()
}

fn publish(port: u16, user: &str, password: &str, topic: &str, payload: &str) -> bool {
    Command::new(require_binary("mosquitto_pub", "mosquitto-clients"))
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
        .args(["-u", user, "-P", password, "-t", topic, "-m", payload])
        .status()
        .unwrap()
        .success()
}

fn device_ids(daemon: &Daemon, token: &str) -> Vec<String> {
    let out = Command::new(require_binary("curl", "curl"))
        .args(["-s", "-H"])
        .arg(format!("Authorization: Bearer {token}"))
        .arg(format!("http://{}/api/v1/devices", daemon.http))
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut ids: Vec<String> = v["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

fn reloaded(daemon: &Daemon, times: usize) {
    wait_for(Duration::from_secs(20), "the reload", || {
        let log = daemon.log_text();
        let done = log.matches("SIGHUP: configuration reloaded").count()
            + log.matches("everything keeps running as it was").count();
        (done >= times).then_some(())
    });
}

const DEVICE: &str = "[[device]]\nid = \"{id}\"\norchard = \"fengjie\"\nblock = \"B1\"\n";

#[test]
fn sighup_swaps_tokens_users_and_devices_keeps_every_message_and_refuses_a_bad_config() {
    let dir = tempfile::tempdir().unwrap();
    let (old_token, old_entry) = new_token("admin", "office-pc");
    let (new_token, new_entry) = new_token("admin", "new-office-pc");
    let gateway = mqtt_user("gateway", "first-secret");
    let second = mqtt_user("gateway-2", "second-secret");
    let devices = dir.path().join("devices.toml");
    std::fs::write(&devices, DEVICE.replace("{id}", "probe-1")).unwrap();
    let cfg = DaemonConfig {
        extra: format!("{old_entry}\n{gateway}"),
        ..DaemonConfig::shipped_defaults_embedded()
    };
    let mut daemon = Daemon::start(dir.path(), &cfg);
    daemon.wait_ready();
    let port = cfg.broker_port();
    assert_eq!(api_status(&daemon, &old_token), "200");
    assert_eq!(api_status(&daemon, &new_token), "401");
    assert_eq!(device_ids(&daemon, &old_token), ["probe-1"]);

    // A gateway publishes 600 readings, one process, while orchardd reloads under it.
    let now = support::now_ms();
    let lines: Vec<String> = (0..600)
        .map(|i| {
            format!(
                r#"{{"ts":{},"readings":{{"soil_moisture":{}}}}}"#,
                now - (600 - i) * 1000,
                20 + i % 9
            )
        })
        .collect();
    let mut feed = Command::new(require_binary("mosquitto_pub", "mosquitto-clients"))
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1", "-l"])
        .args(["-u", "gateway", "-P", "first-secret"])
        .args(["-t", "orchards/fengjie/B1/probe-1/telemetry"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = feed.stdin.take().unwrap();
    for l in &lines[..300] {
        writeln!(stdin, "{l}").unwrap();
    }

    // The new configuration: the new token instead of the old, a second MQTT user, and a
    // second device in the devices file.
    let config = std::fs::read_to_string(&daemon.config).unwrap();
    let next = config.replace(&old_entry, &new_entry) + &second;
    std::fs::write(&daemon.config, &next).unwrap();
    std::fs::write(
        &devices,
        DEVICE.replace("{id}", "probe-1") + &DEVICE.replace("{id}", "probe-2"),
    )
    .unwrap();
    support::signal(daemon.pid(), "HUP");
    reloaded(&daemon, 1);
    for l in &lines[300..] {
        writeln!(stdin, "{l}").unwrap();
    }
    drop(stdin);
    assert!(feed.wait().unwrap().success(), "the gateway's publishes");

    assert_eq!(api_status(&daemon, &new_token), "200");
    assert_eq!(api_status(&daemon, &old_token), "401");
    assert_eq!(device_ids(&daemon, &new_token), ["probe-1", "probe-2"]);
    assert!(publish(
        port,
        "gateway-2",
        "second-secret",
        "orchards/fengjie/B1/probe-2/telemetry",
        r#"{"readings":{"soil_moisture":30}}"#
    ));
    wait_for(Duration::from_secs(20), "all 601 readings", || {
        let rows = daemon.stored_readings();
        (rows.len() == 601).then_some(())
    });

    // A bad file: refused with its key, and everything runs on as before.
    std::fs::write(
        &daemon.config,
        next.replace(&new_entry, &new_entry.replace("sha256:", "sha257:")),
    )
    .unwrap();
    support::signal(daemon.pid(), "HUP");
    reloaded(&daemon, 2);
    let log = daemon.log_text();
    assert!(log.contains("http.tokens"), "the problem names its key");
    assert_eq!(api_status(&daemon, &new_token), "200");
    assert!(publish(
        port,
        "gateway-2",
        "second-secret",
        "orchards/fengjie/B1/probe-2/telemetry",
        r#"{"readings":{"soil_moisture":31}}"#
    ));

    // What only a restart applies is named, not silently ignored.
    std::fs::write(
        &daemon.config,
        next.replace("[http]\n", "[http]\nmax_body_bytes = 2048\n"),
    )
    .unwrap();
    support::signal(daemon.pid(), "HUP");
    reloaded(&daemon, 3);
    assert!(
        daemon
            .log_text()
            .contains("`http` changed; it takes effect when orchardd is restarted")
    );
    assert_eq!(daemon.get("/readyz").0, 200);
    assert!(daemon.sigterm().success());
}
