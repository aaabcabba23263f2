//! Silence through the real endpoint, on the shipped rule pack: ChirpStack uplinks from five
//! devices heard through two gateways, each device a long-running `mosquitto_pub -l`. A
//! gateway that goes quiet is one alert, not one per device; a device silent on its own is
//! its own alert; when nothing arrives at all, one stall alert stands for everything; and
//! every one of them resolves when the readings come back.

mod support;

use std::io::Write;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use support::{Daemon, DaemonConfig, require_binary, wait_for};

const GATEWAY_A: [&str; 3] = ["a1a1a1a1a1a1a1a1", "a2a2a2a2a2a2a2a2", "a3a3a3a3a3a3a3a3"];
const GATEWAY_B: [&str; 2] = ["b1b1b1b1b1b1b1b1", "b2b2b2b2b2b2b2b2"];

/// One device: a `mosquitto_pub -l` that publishes each line it is given.
struct Device {
    eui: &'static str,
    gateway: &'static str,
    child: Child,
    stdin: ChildStdin,
}

impl Device {
    fn start(port: u16, eui: &'static str, gateway: &'static str) -> Device {
        let mut child = Command::new(require_binary("mosquitto_pub", "mosquitto-clients"))
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1", "-l"])
            .args(["-i", &format!("dev-{eui}")])
            .args(["-t", &format!("application/coop/device/{eui}/event/up")])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        Device {
            eui,
            gateway,
            child,
            stdin,
        }
    }

    /// Sends one uplink, heard best by the device's gateway.
    fn uplink(&mut self) {
        let up = json!({
            "deviceInfo": {"devEui": self.eui, "deviceName": self.eui},
            "object": {"BatV": 3.6},
            "rxInfo": [
                {"gatewayId": self.gateway, "rssi": -80, "snr": 7.5},
                {"gatewayId": "far-away", "rssi": -120, "snr": -12.0},
            ],
        });
        writeln!(self.stdin, "{up}").unwrap();
        self.stdin.flush().unwrap();
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every half second for `seconds`, an uplink from each device `talking` says is talking.
fn run(devices: &mut [Device], seconds: f64, talking: impl Fn(&str) -> bool) {
    let rounds = (seconds * 2.0) as usize;
    for _ in 0..rounds {
        for d in devices.iter_mut().filter(|d| talking(d.eui)) {
            d.uplink();
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn alerts(daemon: &Daemon, query: &str) -> Vec<Value> {
    daemon.get_ok(&format!("/api/v1/alerts?{query}"))["alerts"]
        .as_array()
        .unwrap()
        .clone()
}

/// `rule scope` of each alert, sorted.
fn named(alerts: &[Value]) -> Vec<String> {
    let mut out: Vec<String> = alerts
        .iter()
        .map(|a| {
            format!(
                "{} {}",
                a["rule"].as_str().unwrap(),
                a["scope"].as_str().unwrap()
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn a_gateway_outage_is_one_alert_a_lone_silent_device_its_own_and_a_stall_one_for_all() {
    let dir = tempfile::tempdir().unwrap();
    let mut registry = String::new();
    for eui in GATEWAY_A.iter().chain(&GATEWAY_B) {
        // Devices that report every second (the registry's shortest interval), so that three
        // missed reports take seconds rather than the shipped 45 minutes of a 15-minute device.
        registry.push_str(&format!(
            "[[device]]\nid = \"{eui}\"\norchard = \"fengjie\"\nblock = \"B1\"\nexpected_interval = \"1s\"\n"
        ));
    }
    std::fs::write(dir.path().join("devices.toml"), registry).unwrap();
    // The shipped defaults, rule pack included.
    let cfg = DaemonConfig::shipped_defaults_embedded();
    let daemon = Daemon::start(dir.path(), &cfg);
    daemon.wait_ready();
    let port = cfg.broker_port();
    let mut devices: Vec<Device> = GATEWAY_A
        .iter()
        .map(|e| Device::start(port, e, "gw-a"))
        .chain(GATEWAY_B.iter().map(|e| Device::start(port, e, "gw-b")))
        .collect();

    // Everyone talks; then gateway A's devices and b2 stop while b1 goes on.
    run(&mut devices, 3.0, |_| true);
    assert_eq!(named(&alerts(&daemon, "state=open")), Vec::<String>::new());
    let lone = GATEWAY_B[1];
    run(&mut devices, 8.0, |eui| eui == GATEWAY_B[0]);
    let open = alerts(&daemon, "state=open");
    assert_eq!(
        named(&open),
        [
            "gateway-offline gateway/gw-a".to_owned(),
            format!("sensor-offline fengjie/B1/{lone}"),
        ],
        "{open:#?}"
    );
    let gateway = open
        .iter()
        .find(|a| a["rule"] == "gateway-offline")
        .unwrap();
    assert_eq!(gateway["severity"], "major");
    assert_eq!(gateway["orchard"], "fengjie");
    let text = gateway["action"]["en"].as_str().unwrap();
    assert!(
        text.starts_with("Gateway gw-a has heard nothing since")
            && text.contains("its 3 devices in B1"),
        "{text}"
    );
    let device = open.iter().find(|a| a["rule"] == "sensor-offline").unwrap();
    assert_eq!(device["device"], lone);
    assert!(device["action"]["zh"].as_str().unwrap().contains(lone));

    // All talk again: both resolve, as the readings say.
    run(&mut devices, 3.0, |_| true);
    wait_for(Duration::from_secs(10), "both alerts resolved", || {
        alerts(&daemon, "state=open").is_empty().then_some(())
    });
    let resolved = alerts(&daemon, "state=resolved");
    assert_eq!(resolved.len(), 2, "{resolved:#?}");
    assert!(resolved.iter().all(|a| a["resolved_by"].is_null()));

    // Nothing arrives from anyone: one stall alert, no gateway or device alerts under it.
    std::thread::sleep(Duration::from_secs(8));
    let open = alerts(&daemon, "state=open");
    assert_eq!(named(&open), ["ingest-stalled all"], "{open:#?}");
    let text = open[0]["action"]["en"].as_str().unwrap();
    assert!(
        text.starts_with("No readings from any of the 5 devices since"),
        "{text}"
    );
    // Staff resolve it while nothing arrives: the same silence does not fire again...
    let id = open[0]["id"].as_i64().unwrap();
    let (status, _) = support::http_request(
        daemon.http,
        "POST",
        &format!("/api/v1/alerts/{id}/resolve"),
        r#"{"by": "li.wei", "note": "the co-op's router was restarted"}"#,
    )
    .unwrap();
    assert_eq!(status, 200);
    std::thread::sleep(Duration::from_secs(3));
    assert!(alerts(&daemon, "state=open").is_empty());
    // ...nor after a restart, once the devices' allowance has run out again.
    drop(devices);
    let mut daemon = daemon;
    assert!(daemon.sigterm().success());
    daemon.restart();
    daemon.wait_ready();
    std::thread::sleep(Duration::from_secs(6));
    assert!(
        alerts(&daemon, "state=open").is_empty(),
        "{:#?}",
        alerts(&daemon, "state=open")
    );
    // Readings again: the stall is over, and nothing new opens.
    let mut devices: Vec<Device> = GATEWAY_A
        .iter()
        .map(|e| Device::start(port, e, "gw-a"))
        .chain(GATEWAY_B.iter().map(|e| Device::start(port, e, "gw-b")))
        .collect();
    run(&mut devices, 2.0, |_| true);
    assert!(
        alerts(&daemon, "state=open").is_empty(),
        "{:#?}",
        alerts(&daemon, "state=open")
    );
    assert_eq!(alerts(&daemon, "").len(), 3);
}
