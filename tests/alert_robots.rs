//! Group robots through the real daemon: orchardd as shipped (the built-in citrus pack's
//! frost warning fires on air temperature at or below 0 °C held 10 minutes of reading
//! time), readings published with `mosquitto_pub` to its own endpoint, and DingTalk, WeCom
//! and Feishu robots played by Python servers that check what the real ones check (the
//! signatures, the keyword, WeCom's byte limits) and answer as the real ones do, failures
//! included.

mod support;

use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Duration;

use serde_json::{Value, json};
use support::{Daemon, DaemonConfig, http_request, mosquitto_pub_lines, require_binary, wait_for};

const MIN: i64 = 60_000;

/// A robot in Python's standard library. `sys.argv[1]` is its JSON config: `kind`
/// (dingtalk, wecom, feishu), `secret`, `keyword`, `script` (the answers to the first
/// requests, in order), and `then` (the answer after them, until `POST /open` makes it
/// "ok"). Answers: "ok", "ok-old" (Feishu's older `StatusCode`), "500", "130101" (DingTalk:
/// sent too fast), "timeout" (no answer for 3 s). A request that fails the robot's own
/// checks is refused as the service would, whatever the script says. One JSON line per
/// request on stdout.
const ROBOT: &str = r#"
import base64, hashlib, hmac, http.server, json, sys, threading, time, urllib.parse
conf = json.loads(sys.argv[1])
kind, secret, keyword = conf["kind"], conf.get("secret"), conf.get("keyword")
script, then = list(conf.get("script", [])), conf.get("then", "ok")
lock = threading.Lock()

def b64_hmac(key, msg):
    return base64.b64encode(hmac.new(key, msg, hashlib.sha256).digest()).decode()

def check(path, body):
    """What the real robot would refuse, as (code, message), or None."""
    if kind == "dingtalk":
        q = urllib.parse.parse_qs(urllib.parse.urlparse(path).query)
        if secret is not None:
            ts = q.get("timestamp", ["0"])[0]
            want = b64_hmac(secret.encode(), (ts + "\n" + secret).encode())
            if q.get("sign", [""])[0] != want or abs(time.time() * 1000 - int(ts)) > 3600_000:
                return (310000, "sign not match")
        m = body.get(body.get("msgtype"), {})
        shown = m.get("content", "") + m.get("title", "") + m.get("text", "")
        if keyword is not None and keyword not in shown:
            return (310000, "keywords not in content")
    if kind == "wecom":
        limit = {"text": 2048, "markdown": 4096}.get(body.get("msgtype"))
        content = body.get(body.get("msgtype"), {}).get("content", "")
        if limit is None or len(content.encode()) > limit:
            return (40058, "content exceed max length")
    if kind == "feishu":
        if secret is not None:
            ts = body.get("timestamp", "0")
            want = b64_hmac((ts + "\n" + secret).encode(), b"")
            if body.get("sign") != want or abs(time.time() - int(ts)) > 3600:
                return (19021, "sign match fail or timestamp is not within one hour from current time")
        if keyword is not None and keyword not in body.get("content", {}).get("text", ""):
            return (19024, "Key Words Not Found")
    return None

def verdict(code, msg):
    if kind == "feishu":
        return {"code": code, "msg": msg, "data": {}}
    return {"errcode": code, "errmsg": msg}

class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        global then
        raw = self.rfile.read(int(self.headers["content-length"]))
        if self.path == "/open":
            then = "ok"
            self.send_response(200); self.end_headers(); return
        body = json.loads(raw)
        with lock:
            answer = script.pop(0) if script else then
        refused = check(self.path, body)
        if refused and answer.startswith("ok"):
            answer = "refused"
        m = body.get(body.get("msgtype") or body.get("msg_type"), {})
        line = {"answer": answer, "refused": refused,
                "msgtype": body.get("msgtype") or body.get("msg_type"),
                "title": m.get("title"), "at_all": (body.get("at") or {}).get("isAtAll"),
                "content": m.get("content") or m.get("text") or body.get("content", {}).get("text")}
        print(json.dumps(line, ensure_ascii=False), flush=True)
        if answer == "timeout":
            time.sleep(3)
        if answer == "500":
            status, out = 500, b"busy"
        elif answer == "130101":
            status, out = 200, json.dumps(verdict(130101, "send too fast, exceed 20 times per minute")).encode()
        elif answer == "refused":
            status, out = 200, json.dumps(verdict(*refused)).encode()
        elif answer == "ok-old":
            status, out = 200, json.dumps({"Extra": None, "StatusCode": 0, "StatusMessage": "success"}).encode()
        else:
            status, out = 200, json.dumps(verdict(0, "ok" if kind != "feishu" else "success")).encode()
        try:
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.end_headers()
            self.wfile.write(out)
        except OSError:
            pass
    def log_message(self, *args):
        pass

server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
print(server.server_port, flush=True)
server.serve_forever()
"#;

/// A Python robot and the lines it prints, one per request.
struct Robot {
    child: Child,
    lines: Receiver<String>,
    port: u16,
}

impl Robot {
    fn start(conf: Value) -> Robot {
        use std::io::BufRead;
        let mut child = Command::new(require_binary("python3", "python3"))
            .args(["-c", ROBOT, &conf.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        // Read on a thread, so that every wait below is bounded.
        let (tx, lines) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let port = lines
            .recv_timeout(Duration::from_secs(30))
            .expect("the robot did not start")
            .trim()
            .parse()
            .unwrap();
        Robot { child, lines, port }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The next request the robot had.
    fn next(&self) -> Value {
        let line = self
            .lines
            .recv_timeout(Duration::from_secs(60))
            .expect("the robot had no request in 60 s");
        serde_json::from_str(&line).unwrap()
    }

    /// The requests it had that were not yet read, without waiting.
    fn so_far(&self) -> Vec<Value> {
        std::iter::from_fn(|| match self.lines.recv_timeout(Duration::ZERO) {
            Ok(l) => Some(serde_json::from_str(&l).unwrap()),
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => None,
        })
        .collect()
    }

    /// From now on, every request is answered "ok".
    fn open(&self) {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.port));
        let (status, _) = http_request(addr, "POST", "/open", "{}").unwrap();
        assert_eq!(status, 200);
    }
}

impl Drop for Robot {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Two air temperatures of `device` 10 minutes apart, both `value`: with the shipped pack,
/// a frost warning when `value` ≤ 0 °C.
fn frost(port: u16, device: &str, start: i64, value: f64) {
    let lines: Vec<String> = (0..2)
        .map(|i| {
            json!({"ts": start + i * 10 * MIN, "readings": {"air_temperature": value}}).to_string()
        })
        .collect();
    mosquitto_pub_lines(
        port,
        &format!("orchards/fengjie/B1/{device}/telemetry"),
        &lines,
    );
}

fn start(dir: &std::path::Path, alerts: &str) -> (Daemon, DaemonConfig) {
    let cfg = DaemonConfig {
        extra: alerts.to_owned(),
        ..DaemonConfig::shipped_defaults_embedded()
    };
    let daemon = Daemon::start(dir, &cfg);
    daemon.wait_ready();
    (daemon, cfg)
}

fn alert(daemon: &Daemon, id: i64) -> Value {
    daemon.get_ok(&format!("/api/v1/alerts/{id}"))
}

fn only_alert_id(daemon: &Daemon) -> i64 {
    wait_for(Duration::from_secs(20), "the alert", || {
        let list = daemon.get_ok("/api/v1/alerts")["alerts"].clone();
        list.as_array()
            .unwrap()
            .first()
            .map(|a| a["id"].as_i64().unwrap())
    })
}

/// The delivery of event `event` (0: fired) of alert `id` on `channel`, once `done` holds.
fn delivery(
    daemon: &Daemon,
    id: i64,
    event: usize,
    channel: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    wait_for(
        Duration::from_secs(60),
        &format!("{channel}'s delivery of event {event}"),
        || {
            let a = alert(daemon, id);
            let d = a["events"][event]["deliveries"]
                .as_array()?
                .iter()
                .find(|d| d["channel"] == channel)?
                .clone();
            done(&d).then_some(d)
        },
    )
}

fn delivered(d: &Value) -> bool {
    d["delivered_at"].is_string()
}

fn ms(rfc3339: &Value) -> i64 {
    orchardd::model::TimestampMs::parse(rfc3339.as_str().unwrap())
        .unwrap()
        .0
}

const DINGTALK_SECRET: &str = "SEC0123456789abcdef";

#[test]
fn a_signed_dingtalk_robot_is_retried_after_a_500_and_a_time_out_and_delays_no_other_robot() {
    let ding = Robot::start(json!({
        "kind": "dingtalk", "secret": DINGTALK_SECRET, "script": ["500", "timeout", "ok"]
    }));
    let wecom = Robot::start(json!({"kind": "wecom"}));
    let dir = tempfile::tempdir().unwrap();
    // A 1 s timeout instead of the default 10 s, so the robot that does not answer costs
    // the test one second; the default differs from it in nothing but the wait.
    let (daemon, cfg) = start(
        dir.path(),
        &format!(
            "[[alerts.dingtalk]]\nname = \"field\"\nurl = \"{}\"\nsecret = \"{DINGTALK_SECRET}\"\ntimeout = \"1s\"\n\
             [[alerts.wecom]]\nname = \"office\"\nurl = \"{}\"\n",
            ding.url("/robot/send?access_token=t0ken"),
            wecom.url("/cgi-bin/webhook/send?key=k3y"),
        ),
    );
    frost(
        cfg.broker_port(),
        "ws1",
        support::now_ms() - 6 * 60 * MIN,
        -0.5,
    );

    // WeCom has it at once; DingTalk on the third try, each request signed.
    let w = wecom.next();
    assert_eq!(
        (&w["answer"], &w["msgtype"]),
        (&json!("ok"), &json!("text"))
    );
    let text = w["content"].as_str().unwrap();
    assert!(
        text.starts_with("🔵 【提醒】告警触发 · fengjie/B1/ws1\nB1 有霜冻风险：ws1 气温 -0.5 °C。"),
        "{text}"
    );
    assert!(text.contains("读数：气温 -0.5 °C（阈值 0 °C）"), "{text}");
    let answers: Vec<Value> = (0..3).map(|_| ding.next()).collect();
    for a in &answers {
        assert_eq!(a["refused"], Value::Null, "signed and valid: {a}");
        assert_eq!(a["msgtype"], "markdown");
    }
    assert_eq!(
        answers
            .iter()
            .map(|a| a["answer"].clone())
            .collect::<Vec<_>>(),
        ["500", "timeout", "ok"]
    );
    assert!(
        answers[2]["title"]
            .as_str()
            .unwrap()
            .contains("fengjie/B1/ws1")
    );

    let id = only_alert_id(&daemon);
    let d = delivery(&daemon, id, 0, "dingtalk:field", delivered);
    let log = d["log"].as_array().unwrap();
    assert_eq!(d["attempts"], 3);
    assert_eq!(log[0]["status"], 500);
    assert_eq!(log[0]["error"], "HTTP 500 Internal Server Error");
    assert_eq!(log[0]["body"], "busy");
    assert_eq!(log[1]["status"], Value::Null);
    assert_eq!(log[1]["error"], "no answer within 1s");
    assert_eq!(log[2]["status"], 200);
    assert_eq!(log[2]["code"], 0);
    assert_eq!(log[2]["body"], r#"{"errcode": 0, "errmsg": "ok"}"#);
    assert_eq!(d.get("next_attempt_at"), None, "delivered: nothing due");
    let w = delivery(&daemon, id, 0, "wecom:office", delivered);
    assert_eq!(w["attempts"], 1);
    let m = delivery(&daemon, id, 0, "mqtt", delivered);
    // DingTalk's retries held back neither WeCom nor MQTT.
    assert!(ms(&w["delivered_at"]) < ms(&log[1]["at"]));
    assert!(ms(&m["delivered_at"]) < ms(&log[1]["at"]));
}

#[test]
fn dingtalk_sent_too_fast_holds_the_robot_ten_minutes_even_across_a_restart() {
    let ding = Robot::start(json!({
        "kind": "dingtalk", "secret": DINGTALK_SECRET, "script": ["130101"]
    }));
    let dir = tempfile::tempdir().unwrap();
    let (mut daemon, cfg) = start(
        dir.path(),
        &format!(
            "[[alerts.dingtalk]]\nname = \"field\"\nurl = \"{}\"\nsecret = \"{DINGTALK_SECRET}\"\nformat = \"text\"\n",
            ding.url("/robot/send?access_token=t0ken"),
        ),
    );
    frost(
        cfg.broker_port(),
        "ws1",
        support::now_ms() - 6 * 60 * MIN,
        -0.5,
    );
    assert_eq!(ding.next()["answer"], "130101");
    let id = only_alert_id(&daemon);
    let d = delivery(&daemon, id, 0, "dingtalk:field", |d| d["attempts"] == 1);
    let tried = &d["log"][0];
    assert_eq!(tried["code"], 130101);
    assert!(
        tried["error"]
            .as_str()
            .unwrap()
            .ends_with("not tried again for 10m, as DingTalk asks"),
        "{tried}"
    );
    let due = ms(&d["next_attempt_at"]) - ms(&tried["at"]);
    assert!((590_000..=600_000).contains(&due), "{due} ms");

    // A restart keeps the hold: the robot is left alone.
    assert!(daemon.sigterm().success());
    daemon.restart();
    daemon.wait_ready();
    wait_for(
        Duration::from_secs(20),
        "the hold after the restart",
        || {
            daemon
                .log_text()
                .contains("waiting until the next attempt is due")
                .then_some(())
        },
    );
    assert_eq!(ding.so_far(), Vec::<Value>::new());

    // Ten minutes pass (the test moves the due time back rather than wait them): then the
    // event goes, once.
    assert!(daemon.sigterm().success());
    let conn = rusqlite::Connection::open(&daemon.store).unwrap();
    conn.execute(
        "UPDATE alert_outbox SET next_attempt_at = ?1 WHERE channel = 'dingtalk:field'",
        [support::now_ms() - 1],
    )
    .unwrap();
    drop(conn);
    daemon.restart();
    daemon.wait_ready();
    let retried = ding.next();
    assert_eq!(
        (&retried["answer"], &retried["refused"]),
        (&json!("ok"), &Value::Null)
    );
    let d = delivery(&daemon, id, 0, "dingtalk:field", delivered);
    assert_eq!(d["attempts"], 2);
    assert_eq!(d["log"][1]["code"], 0);
}

#[test]
fn twenty_five_frosts_reach_a_dingtalk_robot_as_eighteen_messages_the_last_a_digest_of_the_rest() {
    // Keyword security: the robot refuses any message without 果园. It answers 500 until
    // the test opens it, so that all 25 events are waiting when it does.
    let ding = Robot::start(json!({"kind": "dingtalk", "keyword": "果园", "then": "500"}));
    let dir = tempfile::tempdir().unwrap();
    let (daemon, cfg) = start(
        dir.path(),
        &format!(
            "[[alerts.dingtalk]]\nname = \"field\"\nurl = \"{}\"\nsecurity = \"keyword\"\nkeyword = \"果园\"\n",
            ding.url("/robot/send?access_token=t0ken"),
        ),
    );
    let t = support::now_ms() - 6 * 60 * MIN;
    let devices: Vec<String> = (1..=25).map(|i| format!("ws{i:02}")).collect();
    for d in &devices {
        frost(cfg.broker_port(), d, t, -0.5);
    }
    wait_for(Duration::from_secs(60), "25 frost warnings", || {
        let open = daemon.get_ok("/api/v1/alerts?state=firing")["alerts"].clone();
        (open.as_array().unwrap().len() == 25).then_some(())
    });
    ding.open();

    let mut messages = Vec::new();
    while messages.len() < 18 {
        let m = ding.next();
        if m["answer"] != "500" {
            assert_eq!(m["answer"], "ok", "{m}");
            messages.push(m);
        }
    }
    let store = daemon.store.clone();
    wait_for(Duration::from_secs(30), "all 25 delivered", || {
        let conn = rusqlite::Connection::open(&store).ok()?;
        let n: i64 = conn
            .query_row(
                "SELECT count(*) FROM alert_outbox WHERE channel = 'dingtalk:field' AND delivered_at IS NOT NULL",
                [],
                |r| r.get(0),
            )
            .ok()?;
        (n == 25).then_some(())
    });
    assert_eq!(ding.so_far(), Vec::<Value>::new(), "18 messages, no more");

    let named = |m: &Value| -> Vec<String> {
        let text = m["content"].as_str().unwrap();
        devices
            .iter()
            .filter(|d| text.contains(&format!("fengjie/B1/{d}")))
            .cloned()
            .collect()
    };
    let mut seen = Vec::new();
    for m in &messages[..17] {
        let one = named(m);
        assert_eq!(one.len(), 1, "one event a message: {m}");
        assert!(m["content"].as_str().unwrap().contains("有霜冻风险"));
        seen.extend(one);
    }
    let digest = &messages[17];
    let text = digest["content"].as_str().unwrap();
    assert!(text.starts_with("#### 果园 📋 另有 8 条告警事件"), "{text}");
    assert!(text.contains("机器人每分钟最多发送 18 条消息"), "{text}");
    let rest = named(digest);
    assert_eq!(rest.len(), 8, "{text}");
    seen.extend(rest);
    seen.sort();
    assert_eq!(seen, devices, "each event once");
    assert!(digest["title"].as_str().unwrap().contains("果园"));

    // The attempt log says which message was a digest, on each of its events.
    let open = daemon.get_ok("/api/v1/alerts?state=firing")["alerts"].clone();
    let mut in_digest = 0;
    for a in open.as_array().unwrap() {
        let d = delivery(
            &daemon,
            a["id"].as_i64().unwrap(),
            0,
            "dingtalk:field",
            delivered,
        );
        let last = d["log"].as_array().unwrap().last().unwrap().clone();
        if last["digest"] == 8 {
            in_digest += 1;
        } else {
            assert_eq!(last.get("digest"), None, "{last}");
        }
    }
    assert_eq!(in_digest, 8);
}

/// A rule with an action text far longer than WeCom takes: 60 times a 24-character sentence,
/// 4 320 bytes of Chinese.
fn long_action_rule() -> String {
    let zh = "请立即启动防霜风机，并在解冻后检查果实是否受冻。".repeat(60);
    format!(
        r#"
[[rule]]
id = "frost-long"
kind = "threshold"
measure = "air_temperature"
severity = "critical"
below = 0.0
for = "10m"
action.en = "Frost in {{block}}."
action.zh = "{zh}"
"#
    )
}

#[test]
fn a_long_chinese_action_is_cut_on_a_character_boundary_for_wecom() {
    let text = Robot::start(json!({"kind": "wecom"}));
    let markdown = Robot::start(json!({"kind": "wecom"}));
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules");
    std::fs::create_dir_all(&rules).unwrap();
    std::fs::write(rules.join("long.toml"), long_action_rule()).unwrap();
    // The test's own rule, whose action is too long for WeCom; everything else as shipped.
    let (daemon, cfg) = start(
        dir.path(),
        &format!(
            "[alerts]\nrules_dir = \"{}\"\n\
             [[alerts.wecom]]\nname = \"office\"\nurl = \"{}\"\n\
             [[alerts.wecom]]\nname = \"packhouse\"\nurl = \"{}\"\nformat = \"markdown\"\n",
            rules.display(),
            text.url("/cgi-bin/webhook/send?key=a"),
            markdown.url("/cgi-bin/webhook/send?key=b"),
        ),
    );
    frost(
        cfg.broker_port(),
        "ws1",
        support::now_ms() - 6 * 60 * MIN,
        -0.5,
    );
    let sentence = "请立即启动防霜风机，并在解冻后检查果实是否受冻。";
    for (robot, msgtype, limit) in [(&text, "text", 2048), (&markdown, "markdown", 4096)] {
        let m = robot.next();
        assert_eq!(
            (&m["answer"], &m["refused"]),
            (&json!("ok"), &Value::Null),
            "{m}"
        );
        assert_eq!(m["msgtype"], msgtype);
        let content = m["content"].as_str().unwrap();
        let bytes = content.len();
        // As much as fits, to within one character and the ellipsis.
        assert!(
            bytes <= limit && bytes > limit - 6,
            "{msgtype}: {bytes} bytes"
        );
        assert!(content.ends_with('…'), "cut");
        assert!(!content.contains('\u{fffd}'), "no broken character");
        let before_cut = content.trim_end_matches('…');
        let action = before_cut.split_once(sentence).unwrap().1;
        assert!(
            sentence.repeat(60).contains(action),
            "whole characters of the action"
        );
    }
    let id = only_alert_id(&daemon);
    for channel in ["wecom:office", "wecom:packhouse"] {
        assert_eq!(delivery(&daemon, id, 0, channel, delivered)["attempts"], 1);
    }
}

#[test]
fn a_restart_between_a_delivered_and_an_undelivered_event_delivers_each_exactly_once() {
    // A signed Feishu bot of an older deployment (StatusCode 0): it takes the first
    // message, then answers 500 until the test opens it.
    let bot = Robot::start(json!({
        "kind": "feishu", "secret": "feishu-secret", "keyword": "orchardd",
        "script": ["ok-old"], "then": "500"
    }));
    let dir = tempfile::tempdir().unwrap();
    let (mut daemon, cfg) = start(
        dir.path(),
        &format!(
            "[[alerts.feishu]]\nname = \"packhouse\"\nurl = \"{}\"\nsecret = \"feishu-secret\"\nkeyword = \"orchardd\"\nlanguage = \"both\"\n",
            bot.url("/open-apis/bot/v2/hook/h00k"),
        ),
    );
    frost(
        cfg.broker_port(),
        "ws1",
        support::now_ms() - 6 * 60 * MIN,
        -0.5,
    );
    let fired = bot.next();
    assert_eq!(
        (&fired["answer"], &fired["refused"]),
        (&json!("ok-old"), &Value::Null)
    );
    let text = fired["content"].as_str().unwrap();
    assert!(
        text.starts_with("orchardd 🔵 【提醒】告警触发 / [Warning] Alert fired"),
        "{text}"
    );
    assert!(text.contains("Get frost protection ready"), "{text}");
    let id = only_alert_id(&daemon);
    delivery(&daemon, id, 0, "feishu:packhouse", delivered);

    // Staff acknowledge; the bot refuses that event; orchardd is killed before it is taken.
    let (status, body) = http_request(
        daemon.http,
        "POST",
        &format!("/api/v1/alerts/{id}/ack"),
        r#"{"by": "李伟", "note": "风机已开"}"#,
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(bot.next()["answer"], "500");
    let d = delivery(&daemon, id, 1, "feishu:packhouse", |d| {
        d["attempts"].as_i64() >= Some(1)
    });
    assert_eq!(d["last_error"], "HTTP 500 Internal Server Error");
    assert!(d["next_attempt_at"].is_string(), "{d}");
    daemon.kill9();

    bot.open();
    let before: Vec<Value> = bot.so_far();
    assert!(before.iter().all(|m| m["answer"] == "500"), "{before:?}");
    daemon.restart();
    daemon.wait_ready();
    let acked = loop {
        let m = bot.next();
        if m["answer"] != "500" {
            break m;
        }
    };
    assert_eq!(
        (&acked["answer"], &acked["refused"]),
        (&json!("ok"), &Value::Null)
    );
    let text = acked["content"].as_str().unwrap();
    assert!(
        text.contains("告警已确认 / [Warning] Alert acknowledged"),
        "{text}"
    );
    assert!(text.contains("李伟 (风机已开)"), "{text}");
    let d = delivery(&daemon, id, 1, "feishu:packhouse", delivered);
    assert_eq!(d["log"].as_array().unwrap().last().unwrap()["code"], 0);
    // The fired event, delivered before the kill, was not sent again.
    assert_eq!(
        delivery(&daemon, id, 0, "feishu:packhouse", delivered)["attempts"],
        1
    );
    assert_eq!(bot.so_far(), Vec::<Value>::new());
}

#[test]
fn check_config_names_the_key_of_every_robot_problem() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("o.toml");
    std::fs::write(
        &config,
        r#"
[[alerts.dingtalk]]
name = "field"
url = "https://oapi.dingtalk.com/robot/send?access_token=x"
[[alerts.dingtalk]]
name = "office"
url = "https://oapi.dingtalk.com/robot/send?access_token=y"
security = "keyword"
[[alerts.wecom]]
name = "field"
url = "not a url"
"#,
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_orchardd"))
        .args(["check-config", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    for key in [
        "`alerts.dingtalk[0].secret`: security = \"sign\" needs the robot's secret",
        "`alerts.dingtalk[1].keyword`",
        "`alerts.wecom[0].name`: `field` is used by alerts.dingtalk[0] too",
        "`alerts.wecom[0].url`",
    ] {
        assert!(stdout.contains(key), "{key}\n{stdout}");
    }
}

#[test]
fn quiet_hours_let_only_the_critical_through_the_rest_follows_them_and_an_unanswered_critical_escalates_once()
 {
    let dir = tempfile::tempdir().unwrap();
    let field = Robot::start(json!({"kind": "dingtalk", "secret": DINGTALK_SECRET}));
    let managers = Robot::start(json!({"kind": "dingtalk", "secret": DINGTALK_SECRET}));
    // Quiet hours that hold now (local time is UTC on the shipped `aggregate.utc_offset`),
    // for two hours so that the test cannot run past their end.
    let hour = (support::now_ms() / 3_600_000 % 24) as u8;
    let quiet = format!("quiet_hours = [{hour}, {}]", (hour + 2) % 24);
    let alerts = format!(
        r#"[alerts]
{quiet}
[alerts.escalation]
after = "3s"
channels = ["dingtalk:managers"]
exclusive = true
[[alerts.dingtalk]]
name = "field"
url = "{}"
secret = "{DINGTALK_SECRET}"
[[alerts.dingtalk]]
name = "managers"
url = "{}"
secret = "{DINGTALK_SECRET}"
"#,
        field.url("/robot/send?access_token=field"),
        managers.url("/robot/send?access_token=managers")
    );
    let (mut daemon, cfg) = start(dir.path(), &alerts);

    // Four hours and ten minutes at −3 °C or so: the pack's frost warning (a warning) and
    // its damaging frost (critical) both fire.
    let start = support::now_ms() - 5 * 60 * MIN;
    let night: Vec<String> = (0..26)
        .map(|i| {
            let v = -3.0 - f64::from(i % 3) * 0.1;
            json!({"ts": start + i64::from(i) * 10 * MIN, "readings": {"air_temperature": v}})
                .to_string()
        })
        .collect();
    mosquitto_pub_lines(
        cfg.broker_port(),
        "orchards/fengjie/B1/ws1/telemetry",
        &night,
    );
    let list = |daemon: &Daemon| daemon.get_ok("/api/v1/alerts")["alerts"].clone();
    let id_of = |daemon: &Daemon, rule: &str| -> i64 {
        wait_for(Duration::from_secs(20), rule, || {
            list(daemon)
                .as_array()
                .unwrap()
                .iter()
                .find(|a| a["rule"] == rule)
                .map(|a| a["id"].as_i64().unwrap())
        })
    };
    let (warning, critical) = (
        id_of(&daemon, "frost-warning"),
        id_of(&daemon, "frost-critical"),
    );

    // In the quiet hours the field robot hears the critical alert only.
    let first = field.next();
    assert_eq!(first["answer"], "ok");
    assert!(
        first["content"]
            .as_str()
            .unwrap()
            .contains("· frost-critical"),
        "{first}"
    );
    // Nobody acknowledges it: after 3 s the managers' robot, which hears escalations only,
    // is told, mentioning everyone.
    let escalated = managers.next();
    assert_eq!(escalated["at_all"], true, "{escalated}");
    assert!(
        escalated["content"]
            .as_str()
            .unwrap()
            .contains("· frost-critical"),
        "{escalated}"
    );
    let events: Vec<Value> = alert(&daemon, critical)["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].clone())
        .collect();
    assert_eq!(events, ["fired", "escalated"]);
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        field.so_far().is_empty(),
        "the warning waits for the quiet hours to end"
    );
    assert!(managers.so_far().is_empty(), "escalated once");
    let waiting = delivery(&daemon, warning, 0, "dingtalk:field", |d| !delivered(d));
    assert_eq!(waiting["attempts"], 0, "{waiting}");

    // The quiet hours end (here: orchardd restarts with hours that do not hold now): the
    // warning goes out, once, and nothing delivered before goes again.
    assert!(daemon.sigterm().success());
    let config = dir.path().join("orchardd.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let later = format!("quiet_hours = [{}, {}]", (hour + 2) % 24, (hour + 3) % 24);
    std::fs::write(&config, text.replace(&quiet, &later)).unwrap();
    daemon.restart();
    daemon.wait_ready();
    let next = field.next();
    assert!(
        next["content"]
            .as_str()
            .unwrap()
            .contains("· frost-warning"),
        "{next}"
    );
    delivery(&daemon, warning, 0, "dingtalk:field", delivered);
    std::thread::sleep(Duration::from_secs(3));
    assert!(field.so_far().is_empty());
    assert!(managers.so_far().is_empty());
}
