//! What any MQTT client expects of a broker, checked against orchardd's own endpoint with
//! independent clients: Debian's mosquitto_pub/mosquitto_sub and paho-mqtt for Python, over
//! MQTT 3.1.1 and 5, on the shipped defaults.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use support::{Daemon, DaemonConfig, require_binary, wait_for};

const V3: &str = "mqttv311";
const V5: &str = "mqttv5";

fn started() -> (tempfile::TempDir, Daemon, u16) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = DaemonConfig::embedded();
    let daemon = Daemon::start(dir.path(), &cfg);
    daemon.wait_ready();
    (dir, daemon, cfg.broker_port())
}

fn mosquitto_pub(port: u16, args: &[&str]) -> Output {
    let bin = require_binary("mosquitto_pub", "mosquitto-clients");
    Command::new(bin)
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .unwrap()
}

fn published(port: u16, args: &[&str]) {
    let out = mosquitto_pub(port, args);
    assert!(
        out.status.success(),
        "mosquitto_pub {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A running mosquitto_sub whose output lines arrive on a channel.
struct Sub {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Sub {
    fn start(port: u16, args: &[&str]) -> Sub {
        let bin = require_binary("mosquitto_sub", "mosquitto-clients");
        // Line-buffered: mosquitto_sub writes to a pipe here, which stdio would buffer whole.
        let mut child = Command::new("stdbuf")
            .arg("-oL")
            .arg(bin)
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        // SUBACK before anything is published: mosquitto_sub prints nothing on it, so wait
        // for the subscription to be counted.
        Sub { child, lines }
    }

    fn next(&self, within: Duration) -> Option<String> {
        self.lines.recv_timeout(within).ok()
    }

    fn kill9(&mut self) {
        support::signal(self.child.id(), "KILL");
        let _ = self.child.wait();
    }
}

impl Drop for Sub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_subscriptions(daemon: &Daemon, n: f64) {
    wait_for(Duration::from_secs(10), "the subscriptions", || {
        (daemon.metric("orchardd_mqtt_subscriptions") >= n).then_some(())
    });
}

/// Runs a paho-mqtt script with `PORT` set; its stdout is returned, a failure fails the test.
fn paho(port: u16, script: &str) -> String {
    let python = support::require_paho();
    let prelude = "import os, sys, time, threading\nimport paho.mqtt.client as mqtt\nPORT = int(os.environ['PORT'])\n";
    let out = Command::new(python)
        .args(["-c", &format!("{prelude}{script}")])
        .env("PORT", port.to_string())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "paho script failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn keep_alive_0_is_accepted_and_never_times_the_connection_out() {
    let (_dir, _daemon, port) = started();
    // §3.1.2.10: keep-alive 0 turns the mechanism off. Stay silent past the 30 s that a
    // server-side default would allow, then publish on the same connection.
    let out = paho(
        port,
        r#"
results = {}
for proto, name in [(mqtt.MQTTv311, "v3"), (mqtt.MQTTv5, "v5")]:
    c = mqtt.Client(client_id="ka0-" + name, protocol=proto)
    acked = threading.Event()
    c.on_publish = lambda *a: acked.set()
    c.connect("127.0.0.1", PORT, keepalive=0)
    c.loop_start()
    results[name] = c
time.sleep(40)
for name, c in results.items():
    info = c.publish("orchards/o/b/d/telemetry", '{"readings": {"soil_moisture": 20}}', qos=1)
    info.wait_for_publish(timeout=10)
    print(name, "acked" if info.is_published() else "lost")
"#,
    );
    assert_eq!(out.trim(), "v3 acked\nv5 acked", "{out}");
}

#[test]
fn a_zero_length_client_id_gets_a_clean_session_or_an_assigned_id() {
    let (_dir, _daemon, port) = started();
    let out = paho(
        port,
        r#"
def attempt(proto, clean):
    kw = {"clean_session": clean} if proto == mqtt.MQTTv311 else {}
    c = mqtt.Client(client_id="", protocol=proto, **kw)
    got = {}
    done = threading.Event()
    def on_connect(c, u, flags, rc, props=None):
        got["rc"] = int(rc.value) if hasattr(rc, "value") else rc
        got["id"] = getattr(props, "AssignedClientIdentifier", None) if props else None
        done.set()
    c.on_connect = on_connect
    c.connect("127.0.0.1", PORT)
    c.loop_start()
    done.wait(10)
    c.loop_stop()
    return got
print("v3 clean", attempt(mqtt.MQTTv311, True)["rc"])
g = attempt(mqtt.MQTTv5, True)
print("v5", g["rc"], "assigned" if g["id"] else "none")
"#,
    );
    assert_eq!(
        out.trim(),
        "v3 clean 0\nv5 0 assigned",
        "3.1.1: accepted with a clean session; 5: the server assigns an id"
    );
    // paho will not even send a zero-length id without a clean session, so say it by hand:
    // CONNECT, protocol "MQTT" level 4, flags 0 (clean session off), keep-alive 60, id "".
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let connect = [0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x00, 0, 60, 0, 0];
    std::io::Write::write_all(&mut s, &connect).unwrap();
    let mut answer = Vec::new();
    let _ = std::io::Read::read_to_end(&mut s, &mut answer);
    // §3.1.3-8 asks for CONNACK 2 (identifier rejected) and a close. ntex-mqtt's decoder
    // refuses such a CONNECT before orchardd sees it and closes without a CONNACK; either
    // way the client is not connected and no session exists.
    assert!(
        answer.is_empty() || answer == [0x20, 2, 0, 2],
        "refused, not connected: {answer:?}"
    );
}

#[test]
fn a_second_connection_with_the_same_client_id_takes_over() {
    let (_dir, daemon, port) = started();
    for proto in ["MQTTv311", "MQTTv5"] {
        let out = paho(
            port,
            &format!(
                r#"
gone = threading.Event()
a = mqtt.Client(client_id="gateway-7", protocol=mqtt.{proto})
a.on_disconnect = lambda *args: gone.set()
a.connect("127.0.0.1", PORT)
a.loop_start()
time.sleep(0.5)
b = mqtt.Client(client_id="gateway-7", protocol=mqtt.{proto})
b.connect("127.0.0.1", PORT)
b.loop_start()
print("first closed" if gone.wait(10) else "first still open")
a.loop_stop()
info = b.publish("orchards/o/b/gateway-7/telemetry", '{{"readings": {{"soil_moisture": 21}}}}', qos=1)
info.wait_for_publish(timeout=10)
print("second works" if info.is_published() else "second broken")
"#
            ),
        );
        assert_eq!(out.trim(), "first closed\nsecond works", "{proto}: {out}");
    }
    assert!(daemon.metric("orchardd_mqtt_takeovers_total") >= 2.0);
}

#[test]
fn a_will_is_published_when_a_device_drops_off_and_not_when_it_says_goodbye() {
    let (_dir, daemon, port) = started();
    for v in [V3, V5] {
        let watcher = Sub::start(port, &["-V", v, "-t", "devices/+/state", "-v"]);
        wait_subscriptions(&daemon, 1.0);
        // A sensor that says goodbye: no will.
        published(
            port,
            &[
                "-V",
                v,
                "-i",
                "polite",
                "--will-topic",
                "devices/polite/state",
                "--will-payload",
                "offline",
                "-t",
                "x",
                "-m",
                "bye",
            ],
        );
        // A sensor whose link drops: its will goes out.
        let mut sensor = Sub::start(
            port,
            &[
                "-V",
                v,
                "-i",
                "sensor-1",
                "--will-topic",
                "devices/sensor-1/state",
                "--will-payload",
                "offline",
                "--will-qos",
                "1",
                "-t",
                "commands/sensor-1",
            ],
        );
        wait_subscriptions(&daemon, 2.0);
        sensor.kill9();
        assert_eq!(
            watcher.next(Duration::from_secs(10)).as_deref(),
            Some("devices/sensor-1/state offline"),
            "{v}: the dropped sensor's will, and not the polite one's"
        );
        drop(watcher);
        wait_for(Duration::from_secs(10), "subscriptions to end", || {
            (daemon.metric("orchardd_mqtt_subscriptions") == 0.0).then_some(())
        });
    }
}

#[test]
fn a_retained_message_is_kept_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = DaemonConfig::embedded();
    let mut daemon = Daemon::start(dir.path(), &cfg);
    daemon.wait_ready();
    let port = cfg.broker_port();
    published(
        port,
        &[
            "-V",
            V5,
            "-q",
            "1",
            "-r",
            "-t",
            "orchards/fengjie/config",
            "-m",
            "season=2026",
        ],
    );
    published(
        port,
        &[
            "-V",
            V3,
            "-q",
            "1",
            "-r",
            "-t",
            "orchards/fengjie/B3/probe-7/status",
            "-m",
            r#"{"battery_v": 3.61}"#,
        ],
    );
    assert!(daemon.sigterm().success());
    daemon.restart();
    daemon.wait_ready();
    for v in [V3, V5] {
        let sub = Sub::start(
            port,
            &["-V", v, "-t", "orchards/fengjie/#", "-v", "-C", "2"],
        );
        let mut got = vec![
            sub.next(Duration::from_secs(10)).unwrap_or_default(),
            sub.next(Duration::from_secs(10)).unwrap_or_default(),
        ];
        got.sort();
        assert_eq!(
            got,
            [
                r#"orchards/fengjie/B3/probe-7/status {"battery_v": 3.61}"#,
                "orchards/fengjie/config season=2026"
            ],
            "{v}"
        );
    }
    // An empty retained message clears it.
    published(
        port,
        &["-q", "1", "-r", "-t", "orchards/fengjie/config", "-n"],
    );
    let sub = Sub::start(port, &["-t", "orchards/fengjie/config", "-v"]);
    assert_eq!(sub.next(Duration::from_secs(2)), None);
}

#[test]
fn overlapping_subscriptions_deliver_once_at_the_highest_qos_and_unsubscribe_stops_delivery() {
    let (_dir, _daemon, port) = started();
    // Debian 12's paho-mqtt 1.6.1 cannot parse an MQTT 5 PUBREL that carries its reason code
    // (legal, §3.6.2.1, and what ntex-mqtt sends), so its v5 run publishes at QoS 1; QoS 2 to
    // MQTT 5 subscribers is checked with mosquitto_sub below.
    for (proto, qos) in [("MQTTv311", 2), ("MQTTv5", 1)] {
        let out = paho(
            port,
            &format!(
                r#"
got = []
c = mqtt.Client(client_id="overlap", protocol=mqtt.{proto})
c.on_message = lambda c, u, m: got.append((m.topic, m.qos))
c.connect("127.0.0.1", PORT)
c.loop_start()
c.subscribe([("alerts/#", 0), ("alerts/+", 2), ("alerts/frost", 1)])
time.sleep(0.5)
p = mqtt.Client(client_id="pub", protocol=mqtt.{proto})
p.connect("127.0.0.1", PORT)
p.loop_start()
p.publish("alerts/frost", "B3 below 0", qos={qos}).wait_for_publish(timeout=10)
time.sleep(1)
print(got)
c.unsubscribe(["alerts/#", "alerts/+", "alerts/frost"])
time.sleep(0.5)
p.publish("alerts/frost", "again", qos=1).wait_for_publish(timeout=10)
time.sleep(1)
print(len(got))
"#
            ),
        );
        assert_eq!(
            out.trim(),
            format!("[('alerts/frost', {qos})]\n1"),
            "{proto}: once, at the highest QoS the subscriptions and the publish allow"
        );
    }
}

#[test]
fn dollar_topics_are_not_matched_by_a_leading_wildcard() {
    let (_dir, daemon, port) = started();
    let all = Sub::start(port, &["-t", "#", "-v"]);
    let sys = Sub::start(port, &["-t", "$SYS/#", "-v"]);
    wait_subscriptions(&daemon, 2.0);
    published(port, &["-t", "$SYS/orchardd/test", "-m", "internal"]);
    published(port, &["-t", "plain/topic", "-m", "public"]);
    assert_eq!(
        all.next(Duration::from_secs(5)).as_deref(),
        Some("plain/topic public")
    );
    assert_eq!(
        all.next(Duration::from_secs(1)),
        None,
        "`#` does not match `$SYS/...`"
    );
    assert_eq!(
        sys.next(Duration::from_secs(5)).as_deref(),
        Some("$SYS/orchardd/test internal")
    );
}

#[test]
fn qos_2_goes_through_end_to_end_with_both_protocol_versions() {
    let (_dir, daemon, port) = started();
    for v in [V3, V5] {
        let sub = Sub::start(
            port,
            &[
                "-V",
                v,
                "-q",
                "2",
                "-t",
                "orchards/+/+/+/status",
                "-v",
                "-C",
                "1",
            ],
        );
        wait_subscriptions(&daemon, 1.0);
        let out = mosquitto_pub(
            port,
            &[
                "-V",
                v,
                "-q",
                "2",
                "-d",
                "-t",
                "orchards/fengjie/B1/scale-1/status",
                "-m",
                r#"{"battery_v": 12.6}"#,
            ],
        );
        let log = String::from_utf8_lossy(&out.stdout);
        assert!(
            log.contains("received PUBREC") && log.contains("received PUBCOMP"),
            "{v}: {log}"
        );
        assert_eq!(
            sub.next(Duration::from_secs(10)).as_deref(),
            Some(r#"orchards/fengjie/B1/scale-1/status {"battery_v": 12.6}"#),
            "{v}"
        );
        drop(sub);
        wait_for(Duration::from_secs(10), "the subscription to end", || {
            (daemon.metric("orchardd_mqtt_subscriptions") == 0.0).then_some(())
        });
    }
    let stored = daemon.get_ok("/api/v1/readings?device=scale-1&kind=battery_v");
    assert_eq!(stored["readings"].as_array().unwrap().len(), 2, "{stored}");
}

#[test]
fn an_offline_persistent_subscriber_gets_what_it_missed_even_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = DaemonConfig::embedded();
    let mut daemon = Daemon::start(dir.path(), &cfg);
    daemon.wait_ready();
    let port = cfg.broker_port();
    // mosquitto_sub as a phone with a persistent session on the alerts topic.
    let phones: [(&str, &[&str]); 2] = [
        (
            V3,
            &[
                "-V",
                V3,
                "-i",
                "phone-v3",
                "-c",
                "-q",
                "1",
                "-t",
                "orchards/fengjie/alerts",
            ],
        ),
        (
            V5,
            &[
                "-V",
                V5,
                "-i",
                "phone-v5",
                "-c",
                "-x",
                "86400",
                "-q",
                "1",
                "-t",
                "orchards/fengjie/alerts",
            ],
        ),
    ];
    // Each phone subscribes with a persistent session, then goes out of signal.
    for (n, (_, args)) in phones.iter().enumerate() {
        let sub = Sub::start(port, args);
        // An offline persistent session keeps its subscription: the count only grows.
        wait_subscriptions(&daemon, n as f64 + 1.0);
        drop(sub);
        wait_for(Duration::from_secs(10), "the phone to be offline", || {
            (daemon.metric("orchardd_mqtt_connections") == 0.0).then_some(())
        });
    }
    published(
        port,
        &[
            "-q",
            "1",
            "-t",
            "orchards/fengjie/alerts",
            "-m",
            "frost risk B3",
        ],
    );
    assert!(daemon.sigterm().success());
    daemon.restart();
    daemon.wait_ready();
    published(
        port,
        &[
            "-q",
            "1",
            "-t",
            "orchards/fengjie/alerts",
            "-m",
            "irrigate B1 12 mm",
        ],
    );
    for (v, args) in &phones {
        let sub = Sub::start(port, args);
        let got = sub.next(Duration::from_secs(10));
        assert_eq!(got.as_deref(), Some("frost risk B3"), "{v}");
        assert_eq!(
            sub.next(Duration::from_secs(10)).as_deref(),
            Some("irrigate B1 12 mm"),
            "{v}"
        );
    }
}

#[test]
fn mqtt_5_properties_reach_the_subscriber_as_published() {
    let (_dir, daemon, port) = started();
    let sub = Sub::start(port, &["-V", V5, "-t", "replies/#", "-F", "%t|%C|%R|%P|%p"]);
    wait_subscriptions(&daemon, 1.0);
    published(
        port,
        &[
            "-V",
            V5,
            "-t",
            "replies/gw-1",
            "-m",
            "ok",
            "-D",
            "publish",
            "content-type",
            "text/plain",
            "-D",
            "publish",
            "response-topic",
            "requests/gw-1",
            "-D",
            "publish",
            "user-property",
            "block",
            "B3",
        ],
    );
    assert_eq!(
        sub.next(Duration::from_secs(10)).as_deref(),
        Some("replies/gw-1|text/plain|requests/gw-1|block:B3|ok")
    );
}

#[test]
fn an_expired_message_is_not_delivered() {
    let (_dir, _daemon, port) = started();
    published(
        port,
        &[
            "-V",
            V5,
            "-q",
            "1",
            "-r",
            "-t",
            "orchards/fengjie/notice",
            "-m",
            "short-lived",
            "-D",
            "publish",
            "message-expiry-interval",
            "1",
        ],
    );
    published(
        port,
        &[
            "-V",
            V5,
            "-q",
            "1",
            "-r",
            "-t",
            "orchards/fengjie/lasting",
            "-m",
            "kept",
        ],
    );
    std::thread::sleep(Duration::from_millis(2_100));
    let sub = Sub::start(port, &["-V", V5, "-t", "orchards/fengjie/+", "-v"]);
    assert_eq!(
        sub.next(Duration::from_secs(5)).as_deref(),
        Some("orchards/fengjie/lasting kept")
    );
    assert_eq!(
        sub.next(Duration::from_secs(1)),
        None,
        "the retained message past its expiry interval is not sent"
    );
}

fn with_users(passwd_line: &str) -> String {
    format!(
        r#"
[[broker.users]]
name = "gateway-fengjie"
password_hash = "{passwd_line}"
publish = ["orchards/fengjie/#"]
subscribe = ["orchards/fengjie/#"]
"#
    )
}

#[test]
fn users_log_in_with_mosquitto_passwd_hashes_and_stay_within_their_topics() {
    let dir = tempfile::tempdir().unwrap();
    let passwd = dir.path().join("passwd");
    let tool = require_binary("mosquitto_passwd", "mosquitto");
    let made = Command::new(tool)
        .args(["-b", "-c"])
        .arg(&passwd)
        .args(["gateway-fengjie", "s3cret"])
        .output()
        .unwrap();
    assert!(made.status.success());
    let line = std::fs::read_to_string(&passwd).unwrap();
    let hash = line.trim().split_once(':').unwrap().1.to_owned();
    let cfg = DaemonConfig {
        extra: with_users(&hash),
        ..DaemonConfig::embedded()
    };
    let daemon = Daemon::start(dir.path(), &cfg);
    daemon.wait_ready();
    let port = cfg.broker_port();
    let good = ["-u", "gateway-fengjie", "-P", "s3cret"];

    // A wrong password, and no credentials at all, are refused with the right CONNACK codes.
    for (v, want) in [
        (V3, "bad user name or password"),
        (V5, "bad user name or password"),
    ] {
        let out = mosquitto_pub(
            port,
            &[
                "-V",
                v,
                "-u",
                "gateway-fengjie",
                "-P",
                "wrong",
                "-t",
                "orchards/fengjie/x",
                "-m",
                "1",
            ],
        );
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
        assert!(err.contains(want), "{v}: {err}");
    }
    let out = mosquitto_pub(port, &["-t", "orchards/fengjie/x", "-m", "1"]);
    assert!(
        !out.status.success(),
        "anonymous clients are refused once users exist"
    );
    assert!(daemon.metric("orchardd_mqtt_refused_logins_total") >= 3.0);

    // Inside its patterns the gateway's readings are stored.
    let mut args = good.to_vec();
    args.extend([
        "-q",
        "1",
        "-t",
        "orchards/fengjie/B3/probe-1/telemetry",
        "-m",
        r#"{"readings": {"soil_moisture": 24}}"#,
    ]);
    published(port, &args);
    // Outside them the publish is refused (v5: PUBACK 0x87), counted and kept.
    let mut args = good.to_vec();
    args.extend([
        "-V",
        V5,
        "-d",
        "-q",
        "1",
        "-t",
        "orchards/wushan/A1/probe-9/telemetry",
        "-m",
        r#"{"readings": {"soil_moisture": 30}}"#,
    ]);
    let out = mosquitto_pub(port, &args);
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(log.contains("RC:135"), "{log}");
    let q = wait_for(
        Duration::from_secs(10),
        "the refused publish in the quarantine",
        || {
            let q = daemon.get_ok("/api/v1/quarantine?reason=not_authorized");
            (!q["quarantine"].as_array().unwrap().is_empty()).then_some(q)
        },
    );
    let entry = &q["quarantine"][0];
    assert_eq!(entry["topic"], "orchards/wushan/A1/probe-9/telemetry");
    assert!(
        entry["payload"].as_str().unwrap_or_default().contains("30"),
        "{entry}"
    );
    let readings = daemon.get_ok("/api/v1/readings");
    let rows = readings["readings"].as_array().unwrap();
    assert_eq!(
        rows.len(),
        1,
        "only the allowed publish is stored: {readings}"
    );
    assert_eq!(rows[0]["orchard"], "fengjie");
    assert_eq!(
        daemon.metric("orchardd_rejected_total{reason=\"not_authorized\"}"),
        1.0
    );
}

#[test]
fn a_network_listener_without_users_is_refused_at_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = DaemonConfig::embedded();
    let files = cfg.write(dir.path());
    let out = Command::new(env!("CARGO_BIN_EXE_orchardd"))
        .args(["run", "--config"])
        .arg(&files.config)
        .env(
            "ORCHARDD__BROKER__LISTEN",
            format!("0.0.0.0:{}", cfg.broker_port()),
        )
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("broker.listen") && stderr.contains("users"),
        "the refusal says why: {stderr}"
    );
}

#[test]
fn orchardd_passwd_prints_a_user_entry_that_logs_in() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_orchardd"))
        .args([
            "passwd",
            "packing-shed",
            "--publish",
            "orchards/fengjie/+/yield",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), b"tangerine 42\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let entry = String::from_utf8(out.stdout).unwrap();
    assert!(
        entry.starts_with("[[broker.users]]\nname = \"packing-shed\"\npassword_hash = \"$7$"),
        "{entry}"
    );
    let cfg = DaemonConfig {
        extra: entry,
        ..DaemonConfig::embedded()
    };
    let daemon = Daemon::start(dir.path(), &cfg);
    daemon.wait_ready();
    let port = cfg.broker_port();
    published(
        port,
        &[
            "-u",
            "packing-shed",
            "-P",
            "tangerine 42",
            "-q",
            "1",
            "-t",
            "orchards/fengjie/B3/yield",
            "-m",
            "{}",
        ],
    );
    let refused = mosquitto_pub(
        port,
        &[
            "-u",
            "packing-shed",
            "-P",
            "tangerine",
            "-t",
            "orchards/fengjie/B3/yield",
            "-m",
            "{}",
        ],
    );
    assert!(!refused.status.success());
}

#[test]
fn the_tls_listener_takes_mqtts_and_stores_what_arrives_over_it() {
    let dir = tempfile::tempdir().unwrap();
    let tls = support::test_certificates(dir.path());
    let tls_port = support::free_port();
    let cfg = DaemonConfig {
        extra: format!(
            "[broker.tls]\nlisten = \"127.0.0.1:{tls_port}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            tls.join("server.crt").display(),
            tls.join("server.key").display()
        ),
        ..DaemonConfig::embedded()
    };
    let daemon = Daemon::start(dir.path(), &cfg);
    daemon.wait_ready();
    let ca = tls.join("ca.crt");
    let ca = ca.to_str().unwrap();
    for v in [V3, V5] {
        published(
            tls_port,
            &[
                "-V",
                v,
                "--cafile",
                ca,
                "-q",
                "1",
                "-t",
                "orchards/fengjie/B2/probe-3/telemetry",
                "-m",
                if v == V3 {
                    r#"{"readings": {"soil_ph": 6.1}}"#
                } else {
                    r#"{"readings": {"soil_temperature": 18.5}}"#
                },
            ],
        );
    }
    let out = mosquitto_pub(tls_port, &["-t", "plain/over/tls", "-m", "x"]);
    assert!(
        !out.status.success(),
        "plain MQTT on the TLS port is refused"
    );
    let rows = daemon.get_ok("/api/v1/readings?device=probe-3");
    assert_eq!(rows["readings"].as_array().unwrap().len(), 2, "{rows}");
}

#[test]
fn a_packet_mqtt_does_not_allow_closes_the_connection_and_is_counted() {
    let (_dir, daemon, port) = started();
    // CONNECT 3.1.1, clean session, id "raw", then a PUBLISH whose topic is not UTF-8.
    let connect = [
        0x10, 15, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60, 0, 3, b'r', b'a', b'w',
    ];
    let bad_publish = [0x30, 6, 0, 2, 0xff, 0xfe, b'h', b'i'];
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    std::io::Write::write_all(&mut s, &connect).unwrap();
    let mut connack = [0u8; 4];
    std::io::Read::read_exact(&mut s, &mut connack).unwrap();
    assert_eq!(connack, [0x20, 2, 0, 0]);
    std::io::Write::write_all(&mut s, &bad_publish).unwrap();
    let mut rest = Vec::new();
    let _ = std::io::Read::read_to_end(&mut s, &mut rest);
    assert!(rest.is_empty(), "closed without an answer: {rest:?}");
    wait_for(
        Duration::from_secs(10),
        "the protocol error counted",
        || (daemon.metric("orchardd_mqtt_protocol_errors_total") == 1.0).then_some(()),
    );
    assert!(daemon.log_text().contains("protocol error"));
    // The endpoint goes on serving others.
    published(
        port,
        &[
            "-t",
            "orchards/o/b/d/telemetry",
            "-m",
            r#"{"air_temperature": 20}"#,
        ],
    );
}
