//! Servers the integration tests start for themselves: orchardd as a real process, Mosquitto,
//! and an MQTT publisher. Each test owns its ports and temp directory; every wait is bounded.
#![allow(dead_code)]
pub mod influx;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::Value;

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `f` every 50 ms until it returns `Some`, or panics with `what` after `limit`.
pub fn wait_for<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Fails the test with the install command when a server binary is missing.
pub fn require_binary(name: &str, package: &str) -> PathBuf {
    for dir in [
        "/usr/sbin",
        "/usr/bin",
        "/usr/local/sbin",
        "/usr/local/bin",
        "/sbin",
    ] {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "`{name}` is not installed; this test needs a real server. Install it with: \
         apt-get update && apt-get install -y {package}  (or run scripts/test.sh, which does)"
    );
}

/// The Python that has paho-mqtt (Debian's python3-paho-mqtt); fails, naming the install
/// command, when it is missing.
pub fn require_paho() -> PathBuf {
    let python = require_binary("python3", "python3");
    let check = Command::new(&python)
        .args(["-c", "import paho.mqtt.client"])
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "paho-mqtt for Python is not installed. Install it with: apt-get install -y python3-paho-mqtt (or run scripts/test.sh)"
    );
    python
}

pub fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig} {pid} failed");
}

/// One HTTP GET over a fresh connection; returns status and body.
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    http_request(addr, "GET", path, "")
}

/// One HTTP request with a JSON body over a fresh connection; returns status and body.
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    Ok((
        status,
        if chunked {
            dechunk(body)
        } else {
            body.to_owned()
        },
    ))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        body = &rest[n + 2..];
    }
    out
}

/// An orchardd process with its own config, store and ports.
pub struct Daemon {
    child: Option<Child>,
    pub http: SocketAddr,
    pub config: PathBuf,
    pub store: PathBuf,
    pub log: PathBuf,
    env: Vec<(String, String)>,
}

pub struct DaemonConfig {
    /// `Some(port)`: orchardd serves MQTT there itself; `None`: use `mqtt_url`.
    pub embedded_broker: Option<u16>,
    pub mqtt_url: String,
    pub client_id: String,
    /// More keys of the `[mqtt]` section, e.g. credentials.
    pub mqtt_extra: String,
    /// More sections, appended at the end.
    pub extra: String,
    /// `mqtt.reconnect_max_delay = "1s"` and `store.synchronous = "normal"`, which make the
    /// tests quicker; `false` leaves orchardd's shipped defaults for both.
    pub test_speedups: bool,
}

impl DaemonConfig {
    pub fn embedded() -> Self {
        Self {
            embedded_broker: Some(free_port()),
            mqtt_url: String::new(),
            client_id: "orchardd-test".into(),
            mqtt_extra: String::new(),
            extra: String::new(),
            test_speedups: true,
        }
    }

    pub fn external(mqtt_port: u16) -> Self {
        Self {
            embedded_broker: None,
            mqtt_url: format!("mqtt://127.0.0.1:{mqtt_port}"),
            client_id: format!("orchardd-test-{mqtt_port}"),
            mqtt_extra: String::new(),
            extra: String::new(),
            test_speedups: true,
        }
    }

    /// orchardd as shipped, with its own MQTT endpoint (on a free port): nothing in the config
    /// but what a test must own (store path, ports, registry file).
    pub fn shipped_defaults_embedded() -> Self {
        Self {
            test_speedups: false,
            ..Self::embedded()
        }
    }

    /// orchardd as shipped, subscribed to an external broker: nothing in the config but the
    /// broker's address and what a test must own (store path, HTTP port, registry file).
    pub fn shipped_defaults_external(mqtt_port: u16) -> Self {
        Self {
            client_id: "orchardd".into(),
            test_speedups: false,
            ..Self::external(mqtt_port)
        }
    }

    pub fn broker_port(&self) -> u16 {
        self.embedded_broker.expect("embedded broker")
    }

    /// Writes `orchardd.toml` into `dir`, with a free HTTP port and a store inside `dir`.
    pub fn write(&self, dir: &Path) -> ConfigFiles {
        let http = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let store = dir.join("store").join("orchardd.db");
        let (embedded, listen) = match self.embedded_broker {
            Some(p) => (true, format!("127.0.0.1:{p}")),
            None => (false, format!("127.0.0.1:{}", free_port())),
        };
        let (reconnect, synchronous) = if self.test_speedups {
            ("reconnect_max_delay = \"1s\"", "synchronous = \"normal\"")
        } else {
            ("", "")
        };
        let toml = format!(
            r#"
[broker]
embedded = {embedded}
listen = "{listen}"
[mqtt]
url = "{url}"
client_id = "{client_id}"
{reconnect}
{mqtt_extra}
[store]
path = "{store}"
{synchronous}
[http]
listen = "{http}"
[log]
level = "info"
[registry]
file = "{devices}"
{extra}
"#,
            url = self.mqtt_url,
            client_id = self.client_id,
            mqtt_extra = self.mqtt_extra,
            devices = dir.join("devices.toml").display(),
            store = store.display(),
            extra = self.extra,
        );
        let config = dir.join("orchardd.toml");
        std::fs::write(&config, toml).unwrap();
        ConfigFiles {
            config,
            http,
            store,
        }
    }
}

pub struct ConfigFiles {
    pub config: PathBuf,
    pub http: SocketAddr,
    pub store: PathBuf,
}

impl Daemon {
    /// Writes the config into `dir` and starts orchardd; does not wait for readiness.
    pub fn start(dir: &Path, cfg: &DaemonConfig) -> Daemon {
        Self::start_with_env(dir, cfg, Vec::new())
    }

    pub fn start_with_env(dir: &Path, cfg: &DaemonConfig, env: Vec<(String, String)>) -> Daemon {
        let files = cfg.write(dir);
        let mut d = Daemon {
            child: None,
            http: files.http,
            config: files.config,
            store: files.store,
            log: dir.join("orchardd.log"),
            env,
        };
        d.spawn();
        d
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_orchardd"))
            .args(["run", "--config"])
            .arg(&self.config)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env_remove("RUST_LOG")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start orchardd");
        self.child = Some(child);
    }

    /// Starts again with the same config, store and ports.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "still running");
        self.spawn();
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Waits until `/readyz` answers 200: store open and subscribed.
    pub fn wait_ready(&self) {
        wait_for(Duration::from_secs(30), "orchardd /readyz", || {
            matches!(http_get(self.http, "/readyz"), Ok((200, _))).then_some(())
        });
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        let (status, body) = http_get(self.http, path)
            .unwrap_or_else(|e| panic!("GET {path}: {e}\n{}", self.log_text()));
        let json = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("GET {path}: not JSON ({e}): {body}"));
        (status, json)
    }

    pub fn get_ok(&self, path: &str) -> Value {
        let (status, v) = self.get(path);
        assert_eq!(status, 200, "GET {path}: {v}");
        v
    }

    /// `/metrics` value of a counter or gauge without labels (0 when absent).
    pub fn metric(&self, name: &str) -> f64 {
        let (_, body) = http_get(self.http, "/metrics").unwrap();
        body.lines()
            .find_map(|l| {
                let (k, v) = l.split_once(' ')?;
                (k == name).then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0.0)
    }

    /// `/metrics` sum of a counter over all its labels (0 when absent).
    pub fn metric_sum(&self, name: &str) -> f64 {
        let (_, body) = http_get(self.http, "/metrics").unwrap();
        body.lines()
            .filter_map(|l| {
                let (k, v) = l.rsplit_once(' ')?;
                (k == name || k.strip_prefix(name)?.starts_with('{'))
                    .then(|| v.trim().parse::<f64>().ok())?
            })
            .sum()
    }

    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("running");
        signal(child.id(), "KILL");
        child.wait().unwrap();
    }

    /// SIGTERM, then wait (bounded) for the exit status.
    pub fn sigterm(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        signal(child.id(), "TERM");
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if start.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
                panic!(
                    "orchardd did not exit within 30 s of SIGTERM\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Readings in the store, read straight from the SQLite file.
    pub fn stored_readings(&self) -> Vec<(String, i64, f64)> {
        let conn = rusqlite::Connection::open(&self.store).unwrap();
        let mut stmt = conn
            .prepare(
                "SELECT s.device, r.ts, r.value FROM readings r JOIN series s ON s.id = r.series",
            )
            .unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A test CA and a server certificate for localhost and 127.0.0.1, made with openssl in
/// `dir/tls`: `ca.crt`, `server.crt`, `server.key`. Returns that directory.
pub fn test_certificates(dir: &Path) -> PathBuf {
    let tls = dir.join("tls");
    std::fs::create_dir_all(&tls).unwrap();
    let openssl = require_binary("openssl", "openssl");
    let run = |args: &[&str]| {
        let out = Command::new(&openssl)
            .args(args)
            .current_dir(&tls)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=orchardd test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    std::fs::write(
        tls.join("san.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "san.ext",
        "-out",
        "server.crt",
    ]);
    tls
}

/// A Mosquitto broker with persistence, in its own directory, on its own port.
pub struct Mosquitto {
    child: Option<Child>,
    pub port: u16,
    conf: PathBuf,
}

impl Mosquitto {
    pub fn start(dir: &Path) -> Mosquitto {
        Self::start_with(dir, "allow_anonymous true\n")
    }

    /// A broker that takes only TLS and a username/password; returns it and its CA file.
    pub fn start_tls(dir: &Path, user: &str, password: &str) -> (Mosquitto, PathBuf) {
        let tls = test_certificates(dir);
        let passwd = tls.join("passwd");
        let ok = Command::new(require_binary("mosquitto_passwd", "mosquitto"))
            .args(["-b", "-c"])
            .arg(&passwd)
            .args([user, password])
            .status()
            .unwrap()
            .success();
        assert!(ok, "mosquitto_passwd failed");
        let conf = format!(
            "allow_anonymous false\npassword_file {p}\ncafile {t}/ca.crt\ncertfile {t}/server.crt\nkeyfile {t}/server.key\n",
            p = passwd.display(),
            t = tls.display()
        );
        (Self::start_with(dir, &conf), tls.join("ca.crt"))
    }

    fn start_with(dir: &Path, listener_conf: &str) -> Mosquitto {
        let dir = dir.join("mosquitto");
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port();
        let conf = dir.join("mosquitto.conf");
        // The settings the README asks of a production broker: persistence, and queues long
        // enough to hold a burst for orchardd while it restarts. `user root` keeps Mosquitto
        // (started as root here) from dropping to a user that cannot write this temp dir.
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\n{listener_conf}persistence true\nuser root\n\
                 persistence_location {}/\nmax_queued_messages 1000000\nmax_inflight_messages 1000\n\
                 log_dest file {}/mosquitto.log\n",
                dir.display(),
                dir.display()
            ),
        )
        .unwrap();
        let mut m = Mosquitto {
            child: None,
            port,
            conf,
        };
        m.spawn();
        m
    }

    fn spawn(&mut self) {
        let bin = require_binary("mosquitto", "mosquitto");
        let child = Command::new(bin)
            .arg("-c")
            .arg(&self.conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto");
        self.child = Some(child);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        wait_for(Duration::from_secs(10), "mosquitto to listen", || {
            TcpStream::connect(addr).ok().map(|_| ())
        });
    }

    /// A clean restart: SIGTERM (Mosquitto saves its persistence file), then start again.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// SIGTERM (Mosquitto saves its persistence file), and wait for it to exit: an outage
    /// that lasts until [`Mosquitto::start_again`].
    pub fn stop(&mut self) {
        let mut child = self.child.take().expect("running");
        signal(child.id(), "TERM");
        child.wait().unwrap();
    }

    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "still running");
        self.spawn();
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A real MQTT client that publishes at QoS 1 and waits for every PUBACK; it keeps its
/// session across broker restarts and retransmits what was not acknowledged.
pub struct Publisher {
    client: AsyncClient,
    acked: tokio::sync::watch::Receiver<u64>,
}

impl Publisher {
    pub async fn connect(port: u16, client_id: &str) -> Publisher {
        let mut o = MqttOptions::new(client_id, "127.0.0.1", port);
        o.set_clean_session(false)
            .set_keep_alive(Duration::from_secs(5))
            .set_inflight(200);
        let (client, mut eventloop) = AsyncClient::new(o, 100);
        let (tx, acked) = tokio::sync::watch::channel(0u64);
        tokio::spawn(async move {
            let mut n = 0;
            let deadline = Instant::now() + Duration::from_secs(300);
            while Instant::now() < deadline {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        n += 1;
                        tx.send_replace(n);
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        Publisher { client, acked }
    }

    pub async fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.into())
            .await
            .unwrap();
    }

    /// Waits (bounded) until the broker has acknowledged `n` publishes.
    pub async fn wait_acked(&mut self, n: u64) {
        let r = tokio::time::timeout(Duration::from_secs(120), self.acked.wait_for(|a| *a >= n))
            .await
            .map(|_| ());
        let acked = *self.acked.borrow();
        assert!(
            r.is_ok(),
            "the broker acknowledged only {acked} of {n} publishes"
        );
    }
}

/// Publishes each line as one QoS 1 message to `topic`, with one `mosquitto_pub -l` process.
pub fn mosquitto_pub_lines(port: u16, topic: &str, lines: &[String]) {
    use std::io::Write;
    let bin = require_binary("mosquitto_pub", "mosquitto-clients");
    let mut child = Command::new(bin)
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-q",
            "1",
            "-l",
            "-t",
            topic,
        ])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    for l in lines {
        writeln!(stdin, "{l}").unwrap();
    }
    drop(stdin);
    assert!(child.wait().unwrap().success(), "mosquitto_pub to {topic}");
}

/// One `kB` line of /proc/PID/status, such as `VmRSS` or `VmHWM` (the peak), in KiB.
pub fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Epoch ms as the API writes times.
pub fn rfc3339(ms: i64) -> String {
    orchardd::model::TimestampMs(ms).to_rfc3339()
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// `orchardd token new`, as an administrator runs it: the token, and the config entry it
/// prints (which holds only the token's hash).
pub fn new_token(role: &str, name: &str) -> (String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_orchardd"))
        .args(["token", "new", "--role", role, "--name", name])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let token = text
        .lines()
        .find_map(|l| l.strip_prefix("token: "))
        .unwrap_or_else(|| panic!("no token in {text}"))
        .to_owned();
    let entry = text[text.find("[[http.tokens]]").unwrap()..].to_owned();
    assert!(
        !entry.contains(&token),
        "the config entry holds only the hash"
    );
    (token, entry)
}

/// Three air temperatures of `celsius`, ten minutes apart up to now: a frost night for the
/// shipped frost rule (ten minutes below 0 °C).
pub fn frost_night(celsius: f64) -> Vec<String> {
    let now = now_ms();
    (0..3)
        .map(|i| {
            format!(
                r#"{{"ts":{},"readings":{{"air_temperature":{celsius}}}}}"#,
                now - (20 - 10 * i) * 60_000
            )
        })
        .collect()
}

/// The day number (days since 1970-01-01) of the local day at UTC+8, Fengjie's offset, which
/// the day-level tests set as `aggregate.utc_offset`, that holds the time `ts` (ms).
pub fn day_at_utc8(ts: i64) -> i64 {
    (ts + 8 * 3_600_000).div_euclid(86_400_000)
}

/// The date of a day number, `YYYY-MM-DD`.
pub fn date_of(day: i64) -> String {
    time::Date::from_julian_day((day + 2_440_588) as i32)
        .unwrap()
        .to_string()
}

/// The day number of a date `YYYY-MM-DD`.
pub fn day_of_date(date: &str) -> i64 {
    let d = time::Date::parse(
        date,
        time::macros::format_description!("[year]-[month]-[day]"),
    )
    .unwrap();
    i64::from(d.to_julian_day()) - 2_440_588
}

/// Asserts that `a` equals `b` up to float rounding (a millionth, relative).
pub fn close(a: f64, b: f64, what: &str) {
    assert!(
        (a - b).abs() <= 1e-6 * b.abs().max(1.0),
        "{what}: {a} ≠ {b}"
    );
}
