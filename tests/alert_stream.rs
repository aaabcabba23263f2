//! The alert event stream (`GET /api/v1/alerts/stream`) as a phone follows it, read by Debian's
//! `curl -N` as an independent client, with readings published by `mosquitto_pub` through
//! orchardd's own endpoint: a frost night and staff's answers arrive live, with ids; a phone
//! that reconnects with `Last-Event-ID` gets exactly what it missed; filters keep other
//! orchards out; a stopping orchardd ends every stream, and one past the limit is told 503.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Daemon, DaemonConfig, http_request, mosquitto_pub_lines, require_binary, wait_for};

const MIN: i64 = 60_000;

const RULES: &str = r#"
[[rule]]
id = "frost"
kind = "threshold"
measure = "air_temperature"
severity = "critical"
below = 0.0
for = "30m"
clear_above = 1.0
clear_for = "30m"
action.en = "Frost in {block} ({device}): {value:.1} °C, below {threshold} °C since {since}. Start frost protection."
action.zh = "{block}（{device}）霜冻：{value:.1} °C。请启动防霜措施。"
source = "test"
"#;

fn start(dir: &std::path::Path) -> (Daemon, DaemonConfig) {
    let rules = dir.join("rules");
    std::fs::create_dir_all(&rules).unwrap();
    std::fs::write(rules.join("frost.toml"), RULES).unwrap();
    let cfg = DaemonConfig {
        // The test's own rule file; everything else as shipped.
        extra: format!("[alerts]\nrules_dir = \"{}\"\n", rules.display()),
        ..DaemonConfig::shipped_defaults_embedded()
    };
    let daemon = Daemon::start(dir, &cfg);
    daemon.wait_ready();
    (daemon, cfg)
}

/// Three mild readings, then below 0 °C for 40 minutes: the frost rule fires at the sixth
/// (30 minutes below 0 from the third), and nothing clears it.
fn frost_night(port: u16, block: &str, device: &str) {
    let night = support::now_ms() - 12 * 60 * MIN;
    let lines: Vec<String> = [3.0, 2.0, -0.5, -0.8, -1.0, -1.2, -1.1]
        .iter()
        .enumerate()
        .map(|(i, v)| {
            json!({"ts": night + i as i64 * 10 * MIN, "readings": {"air_temperature": v}})
                .to_string()
        })
        .collect();
    mosquitto_pub_lines(
        port,
        &format!("orchards/fengjie/{block}/{device}/telemetry"),
        &lines,
    );
}

/// One event of the stream: its `id:`, `event:` and `data:` (JSON).
#[derive(Debug, Clone)]
struct Message {
    id: i64,
    event: String,
    data: Value,
}

impl Message {
    fn alert(&self) -> i64 {
        self.data["alert"]["id"].as_i64().unwrap()
    }
}

/// What a client saw of one message block: the fields it cares about.
#[derive(Default)]
struct Block {
    id: Option<String>,
    event: Option<String>,
    data: Option<String>,
    retry: Option<String>,
}

/// `curl -N` following the stream, its output read line by line on a thread.
struct Curl {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Curl {
    /// Follows `/api/v1/alerts/stream{query}` for at most `max_time` seconds.
    fn follow(daemon: &Daemon, query: &str, headers: &[String], max_time: u64) -> Curl {
        let mut cmd = Command::new(require_binary("curl", "curl"));
        cmd.args(["-sN", "--max-time", &max_time.to_string()]);
        for h in headers {
            cmd.args(["-H", h]);
        }
        let mut child = cmd
            .arg(format!(
                "http://{}/api/v1/alerts/stream{query}",
                daemon.http
            ))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Curl { child, lines }
    }

    /// The next block, until `deadline`; `None` when curl has ended or the time is up.
    fn block(&self, deadline: Instant) -> Option<Block> {
        let mut b = Block::default();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match self.lines.recv_timeout(left) {
                Ok(l) => l,
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return None,
            };
            if line.is_empty() {
                return Some(b);
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = line.split_once(": ").unwrap_or((&line, ""));
            let value = Some(value.to_owned());
            match field {
                "id" => b.id = value,
                "event" => b.event = value,
                "data" => b.data = value,
                "retry" => b.retry = value,
                other => panic!("unexpected field `{other}` in {line:?}"),
            }
        }
    }

    /// Waits (bounded) for the first message, which tells how long to wait before reconnecting.
    fn wait_open(&self) {
        let b = self
            .block(Instant::now() + Duration::from_secs(20))
            .expect("the stream's first message");
        assert_eq!(b.retry.as_deref(), Some("3000"), "retry: a few seconds");
        assert!(b.id.is_none() && b.data.is_none());
    }

    /// The next event within `limit`, skipping keep-alive comments.
    fn next(&self, limit: Duration) -> Option<Message> {
        let deadline = Instant::now() + limit;
        loop {
            let b = self.block(deadline)?;
            let Some(id) = b.id else { continue };
            let data = b.data.expect("an event has data");
            return Some(Message {
                id: id.parse().expect("a numeric id"),
                event: b.event.expect("an event has a name"),
                data: serde_json::from_str(&data).expect("data is JSON"),
            });
        }
    }

    fn expect(&self, what: &str) -> Message {
        self.next(Duration::from_secs(60))
            .unwrap_or_else(|| panic!("timed out waiting for {what}"))
    }

    /// Every event until curl ends (its `--max-time`, bounded).
    fn rest(mut self) -> Vec<Message> {
        let mut out = Vec::new();
        while let Some(m) = self.next(Duration::from_secs(60)) {
            out.push(m);
        }
        let _ = self.child.wait();
        out
    }

    /// Stops curl and returns the events it had received.
    fn stop(mut self) -> Vec<Message> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.rest()
    }
}

impl Drop for Curl {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `curl -s` of the stream that should be refused: its status and JSON body.
fn refused(daemon: &Daemon, query: &str, headers: &[&str]) -> (u16, Value) {
    let mut cmd = Command::new(require_binary("curl", "curl"));
    cmd.args(["-s", "--max-time", "20", "-w", "\n%{http_code}"]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    let out = cmd
        .arg(format!(
            "http://{}/api/v1/alerts/stream{query}",
            daemon.http
        ))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').expect("curl's status line");
    let json = serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
    (status.parse().unwrap(), json)
}

fn ids(messages: &[Message]) -> Vec<(i64, String)> {
    messages.iter().map(|m| (m.id, m.event.clone())).collect()
}

#[test]
fn a_phone_hears_a_frost_night_and_staffs_answers_live_and_catches_up_exactly_after_reconnecting() {
    let dir = tempfile::tempdir().unwrap();
    let (daemon, cfg) = start(dir.path());
    let port = cfg.broker_port();
    let live = Curl::follow(&daemon, "", &[], 120);
    let b1 = Curl::follow(&daemon, "?orchard=fengjie&block=B1", &[], 120);
    let elsewhere = Curl::follow(&daemon, "?orchard=wanzhou", &[], 120);
    let warnings = Curl::follow(&daemon, "?severity=warning", &[], 120);
    for c in [&live, &b1, &elsewhere, &warnings] {
        c.wait_open();
    }
    let sub = Command::new(require_binary("mosquitto_sub", "mosquitto-clients"))
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
        .args(["-t", "orchards/fengjie/alerts", "-C", "1", "-W", "60"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Let the subscription be in place before the night begins.
    std::thread::sleep(Duration::from_millis(500));

    // (1) A client connected before the frost night hears it fire, with the event's id and the
    // JSON the MQTT notifier sends.
    frost_night(port, "B1", "ws1");
    let fired = live.expect("the frost alert");
    assert_eq!(fired.event, "fired");
    assert_eq!(fired.data["event"], "fired");
    assert_eq!(fired.data["event_id"], fired.id);
    assert_eq!(fired.data["alert"]["scope"], "fengjie/B1/ws1");
    assert_eq!(fired.data["alert"]["severity"], "critical");
    assert_eq!(fired.data["alert"]["state"], "firing");
    let heard = sub.wait_with_output().unwrap();
    let over_mqtt: Value = serde_json::from_slice(&heard.stdout).unwrap();
    assert_eq!(fired.data, over_mqtt, "one format for both");
    let alert = fired.alert();
    let detail = daemon.get_ok(&format!("/api/v1/alerts/{alert}"));
    assert_eq!(detail["events"][0]["id"], fired.id);

    // (2) Staff acknowledge through the API; the client hears it.
    let answer = |id: i64, what: &str, body: &str| {
        let (status, body) = http_request(
            daemon.http,
            "POST",
            &format!("/api/v1/alerts/{id}/{what}"),
            body,
        )
        .unwrap();
        assert_eq!(status, 200, "{body}");
    };
    answer(alert, "ack", r#"{"by": "Li Wei", "note": "fans on"}"#);
    let acked = live.expect("the acknowledgement");
    assert_eq!(acked.event, "acknowledged");
    assert!(acked.id > fired.id);
    assert_eq!(acked.alert(), alert);
    assert_eq!(acked.data["alert"]["state"], "acknowledged");
    assert_eq!(acked.data["alert"]["acknowledged"]["by"], "Li Wei");

    // More happens while a phone is away: frost in B2, and staff resolve B1's alert.
    frost_night(port, "B2", "ws2");
    let fired_b2 = live.expect("B2's frost alert");
    assert_eq!(fired_b2.event, "fired");
    assert_eq!(fired_b2.data["alert"]["scope"], "fengjie/B2/ws2");
    answer(alert, "resolve", r#"{"by": "Li Wei", "note": "sun up"}"#);
    let resolved = live.expect("the resolve");
    assert_eq!(
        (resolved.event.as_str(), resolved.alert()),
        ("resolved", alert)
    );
    let seen = [fired.clone(), acked, fired_b2.clone(), resolved];
    let mut increasing = ids(&seen);
    increasing.sort();
    assert_eq!(ids(&seen), increasing, "in the order they happened");

    // (3) A phone reconnecting with the id of the fired event gets exactly the later events,
    // oldest first, then live ones.
    let last = format!("Last-Event-ID: {}", fired.id);
    let phone = Curl::follow(&daemon, "", std::slice::from_ref(&last), 15);
    phone.wait_open();
    let caught_up: Vec<Message> = (0..3).map(|_| phone.expect("a missed event")).collect();
    assert_eq!(ids(&caught_up), ids(&seen[1..]));
    answer(fired_b2.alert(), "resolve", r#"{"by": "Zhang Min"}"#);
    let now = phone.expect("the next live event");
    assert_eq!(
        (now.event.as_str(), now.alert()),
        ("resolved", fired_b2.alert())
    );
    assert_eq!(
        ids(&[live.expect("B2's resolve")]),
        ids(std::slice::from_ref(&now))
    );
    assert!(phone.rest().is_empty(), "none twice");
    // Clients that cannot set headers say the same in the query; `since=0` is everything.
    let query = Curl::follow(&daemon, &format!("?last_event_id={}", fired.id), &[], 5);
    let mut everything = seen.to_vec();
    everything.push(now);
    assert_eq!(ids(&query.rest()), ids(&everything[1..]));
    let all = Curl::follow(&daemon, "?since=0", &[], 5);
    assert_eq!(ids(&all.rest()), ids(&everything));
    // Without an id a new client gets nothing old.
    assert!(Curl::follow(&daemon, "", &[], 5).rest().is_empty());

    // (4) Filters: B1's stream has B1's events only; another orchard's, and another
    // severity's, nothing.
    let b1_seen: Vec<Message> = (0..3).map(|_| b1.expect("a B1 event")).collect();
    assert_eq!(
        ids(&b1_seen),
        ids(&[seen[0].clone(), seen[1].clone(), seen[3].clone()])
    );
    assert!(b1.stop().is_empty(), "B2's events are not B1's");
    assert!(
        elsewhere.stop().is_empty(),
        "fengjie's events are not wanzhou's"
    );
    assert!(warnings.stop().is_empty(), "frost is critical");
    assert!(live.stop().is_empty());

    // (5) A bad Last-Event-ID, or a bad filter, is a 400 in the API's error shape.
    let (status, body) = refused(&daemon, "", &["Last-Event-ID: yesterday"]);
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "bad_request");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("Last-Event-ID"), "{message}");
    let (status, _) = refused(&daemon, "?severity=loud", &[]);
    assert_eq!(status, 400);
    let (status, _) = refused(&daemon, "?since=abc", &[]);
    assert_eq!(status, 400);
}

#[test]
fn stopping_orchardd_ends_every_open_stream_and_one_past_the_limit_is_told_503() {
    let dir = tempfile::tempdir().unwrap();
    let (mut daemon, _cfg) = start(dir.path());
    let curl = require_binary("curl", "curl");
    // As many phones as orchardd serves at once (64), each writing what it hears to a file.
    let outputs: Vec<_> = (0..64)
        .map(|i| dir.path().join(format!("phone{i}.txt")))
        .collect();
    let mut phones: Vec<Child> = outputs
        .iter()
        .map(|o| {
            Command::new(&curl)
                .args(["-sN", "--max-time", "120", "-o"])
                .arg(o)
                .arg(format!("http://{}/api/v1/alerts/stream", daemon.http))
                .spawn()
                .unwrap()
        })
        .collect();
    wait_for(Duration::from_secs(60), "64 streams open", || {
        outputs
            .iter()
            .all(|o| std::fs::read_to_string(o).is_ok_and(|t| t.contains("retry: 3000")))
            .then_some(())
    });
    let (status, body) = refused(&daemon, "", &[]);
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "too_many_streams");

    assert!(daemon.sigterm().success(), "{}", daemon.log_text());
    // Each stream ended cleanly (curl exits 0 at the end of the response, 18 when cut).
    for (i, p) in phones.iter_mut().enumerate() {
        let status = wait_for(Duration::from_secs(30), "curl to end", || {
            p.try_wait().unwrap()
        });
        assert!(status.success(), "phone {i}: curl {status}");
    }
    assert!(
        !daemon.log_text().contains("connections still open"),
        "{}",
        daemon.log_text()
    );
}
