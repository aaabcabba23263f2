//! The servers a bench run starts for itself: orchardd and Mosquitto as child processes, each
//! in a temp directory of its own and on free loopback ports. Every wait is bounded, and a
//! server is killed when its handle is dropped, so that a failed run leaves nothing behind.

use std::fmt::Display;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::config::{Settings, Synchronous};

const READY_LIMIT: Duration = Duration::from_secs(30);
const STOP_LIMIT: Duration = Duration::from_secs(30);

/// A child process that is killed when dropped.
pub struct Process {
    child: Child,
    name: &'static str,
}

impl Process {
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    fn check_alive(&mut self) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!("{} exited unexpectedly ({status})", self.name)),
            Err(e) => Err(format!("{}: {e}", self.name)),
        }
    }

    /// SIGTERM, then a bounded wait for the exit.
    pub fn terminate(&mut self) -> Result<ExitStatus, String> {
        if let Some(status) = self.child.try_wait().map_err(|e| e.to_string())? {
            return Ok(status);
        }
        let pid = self.id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .map_err(|e| format!("kill -TERM {pid}: {e}"))?;
        if !sent.success() {
            return Err(format!("kill -TERM {pid} failed ({sent})"));
        }
        let start = Instant::now();
        while start.elapsed() < STOP_LIMIT {
            if let Some(status) = self.child.try_wait().map_err(|e| e.to_string())? {
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(format!(
            "{} did not exit within {STOP_LIMIT:?} of SIGTERM",
            self.name
        ))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// orchardd under test, with its own config, store, ports and log.
pub struct Daemon {
    pub process: Process,
    http: SocketAddr,
    /// Where the simulator publishes: orchardd's own endpoint or Mosquitto.
    pub mqtt_port: u16,
    log: PathBuf,
}

impl Daemon {
    /// Writes `base` with the bench's store, ports and broker into `dir`, and starts
    /// `orchardd run`: subscribed to `mosquitto` when given, else serving MQTT itself.
    pub fn start(
        exe: &Path,
        dir: &Path,
        base: &Settings,
        sync: Synchronous,
        mosquitto: Option<&Mosquitto>,
        env: &[(String, String)],
    ) -> Result<Self, String> {
        let http = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let mut settings = base.clone();
        settings.store.path = dir.join("store").join("orchardd.db");
        settings.store.synchronous = sync;
        settings.http.listen = http;
        settings.mqtt.client_id = "orchardd-bench".into();
        // The limit stays off here, on purpose. Each simulated device sends tens of messages a
        // second stamped with the publish time (the publish → commit latency is measured from
        // that stamp), so thousands of its readings fall in each minute of reading time: a
        // flood by design, which the per-device limit (readings per minute of reading time)
        // would rightly quarantine, and the bench measures ingest, not the quarantine.
        settings.ingest.device_rate_limit = 0;
        let mqtt_port = match mosquitto {
            Some(m) => {
                settings.broker.embedded = false;
                settings.mqtt.url = format!("mqtt://127.0.0.1:{}", m.port);
                m.port
            }
            None => {
                let port = free_port()?;
                settings.broker.embedded = true;
                settings.broker.listen = SocketAddr::from(([127, 0, 0, 1], port));
                port
            }
        };
        let config = dir.join("orchardd.toml");
        let toml = toml::to_string(&settings).map_err(|e| format!("bench: config: {e}"))?;
        write_file(&config, &toml)?;
        let log = dir.join("orchardd.log");
        let out = File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let mut command = Command::new(exe);
        command.arg("run").arg("--config").arg(&config);
        // Only the file configures the daemon under test: no RUST_LOG, no ORCHARDD_* overrides.
        command.env_remove("RUST_LOG");
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("ORCHARDD") {
                command.env_remove(key);
            }
        }
        command.envs(env.iter().map(|(k, v)| (k, v)));
        let child = command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("bench: cannot start {}: {e}", exe.display()))?;
        Ok(Self {
            process: Process {
                child,
                name: "orchardd",
            },
            http,
            mqtt_port,
            log,
        })
    }

    /// Waits (bounded) until `/readyz` answers 200: store open and subscribed.
    pub fn wait_ready(&mut self) -> Result<(), String> {
        let start = Instant::now();
        while start.elapsed() < READY_LIMIT {
            self.check_alive()?;
            if matches!(http_get(self.http, "/readyz"), Ok((200, _))) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(self.with_log(format!("orchardd was not ready within {READY_LIMIT:?}")))
    }

    pub fn check_alive(&mut self) -> Result<(), String> {
        let alive = self.process.check_alive();
        alive.map_err(|e| self.with_log(e))
    }

    /// The body of `GET /metrics`.
    pub fn metrics(&self) -> Result<String, String> {
        match http_get(self.http, "/metrics") {
            Ok((200, body)) => Ok(body),
            Ok((status, _)) => Err(self.with_log(format!("GET /metrics answered {status}"))),
            Err(e) => Err(self.with_log(format!("GET /metrics: {e}"))),
        }
    }

    /// SIGTERM and wait: the daemon commits and acknowledges what it holds, then exits 0.
    pub fn stop(&mut self) -> Result<(), String> {
        match self.process.terminate() {
            Ok(status) if status.success() => Ok(()),
            Ok(status) => Err(self.with_log(format!("orchardd exited with {status} on SIGTERM"))),
            Err(e) => Err(self.with_log(e)),
        }
    }

    /// `problem`, followed by the end of the daemon's log.
    fn with_log(&self, problem: String) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let tail = &lines[lines.len().saturating_sub(20)..];
        format!(
            "bench: {problem}\n--- last lines of {} ---\n{}",
            self.log.display(),
            tail.join("\n")
        )
    }
}

/// A Mosquitto broker with persistence, in its own directory, on its own port.
pub struct Mosquitto {
    pub process: Process,
    port: u16,
}

impl Mosquitto {
    pub fn start(dir: &Path, max_inflight: u32) -> Result<Self, String> {
        let binary = find_binary("mosquitto").ok_or(
            "bench: `mosquitto` is not installed; install it with: apt-get install -y mosquitto",
        )?;
        let dir = dir.join("mosquitto");
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let port = free_port()?;
        let conf = dir.join("mosquitto.conf");
        write_file(&conf, &mosquitto_config(port, dir.display(), max_inflight))?;
        let child = Command::new(binary)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("bench: cannot start mosquitto: {e}"))?;
        let mut process = Process {
            child,
            name: "mosquitto",
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let start = Instant::now();
        while TcpStream::connect(addr).is_err() {
            process.check_alive()?;
            if start.elapsed() > READY_LIMIT {
                return Err(format!("bench: mosquitto did not listen on {addr}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Self { process, port })
    }
}

/// An InfluxDB 1.x or VictoriaMetrics server for the forwarding benchmark, started on a port
/// chosen before orchardd, so that orchardd can build a backlog against it first.
pub struct TimeSeriesServer {
    pub process: Process,
}

impl TimeSeriesServer {
    pub fn start_influxd(dir: &Path, port: u16) -> Result<Self, String> {
        let binary = find_binary("influxd").ok_or(
            "bench: `influxd` is not installed; install it with: apt-get install -y influxdb",
        )?;
        let dir = dir.join("influxd");
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let conf = dir.join("influxd.conf");
        let d = dir.display();
        write_file(
            &conf,
            &format!(
                "reporting-disabled = true\nbind-address = \"127.0.0.1:{rpc}\"\n\
                 [meta]\ndir = \"{d}/meta\"\n[data]\ndir = \"{d}/data\"\nwal-dir = \"{d}/wal\"\n\
                 [http]\nbind-address = \"127.0.0.1:{port}\"\nlog-enabled = false\n\
                 [monitor]\nstore-enabled = false\n",
                rpc = free_port()?
            ),
        )?;
        let server = Self::spawn(
            Command::new(binary).arg("-config").arg(&conf),
            "influxd",
            port,
        )?;
        let created = http_post(
            SocketAddr::from(([127, 0, 0, 1], port)),
            "/query?q=CREATE%20DATABASE%20orchardd",
        )
        .map_err(|e| format!("bench: influxd: {e}"))?;
        if created != 200 {
            return Err(format!(
                "bench: influxd: CREATE DATABASE answered {created}"
            ));
        }
        Ok(server)
    }

    pub fn start_victoria_metrics(dir: &Path, port: u16) -> Result<Self, String> {
        let binary = find_binary("victoria-metrics").ok_or(
            "bench: `victoria-metrics` is not installed; install it with: apt-get install -y victoria-metrics",
        )?;
        let data = dir.join("victoria-metrics");
        let mut cmd = Command::new(binary);
        cmd.arg(format!("-httpListenAddr=127.0.0.1:{port}"))
            .arg(format!("-storageDataPath={}", data.display()))
            .arg("-retentionPeriod=100y")
            .arg("-loggerLevel=ERROR");
        Self::spawn(&mut cmd, "victoria-metrics", port)
    }

    fn spawn(cmd: &mut Command, name: &'static str, port: u16) -> Result<Self, String> {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("bench: cannot start {name}: {e}"))?;
        let mut process = Process { child, name };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let start = Instant::now();
        while !matches!(http_get(addr, "/ping"), Ok((204 | 200 | 404, _))) {
            process.check_alive()?;
            if start.elapsed() > READY_LIMIT {
                return Err(format!("bench: {name} did not answer on {addr}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Self { process })
    }
}

/// A POST with no body; its status.
fn http_post(addr: SocketAddr, path: &str) -> std::io::Result<u16> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut head = String::new();
    stream.read_to_string(&mut head)?;
    Ok(head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0))
}

/// The broker settings the README asks of production (persistence, queues long enough to hold
/// a burst while orchardd restarts), with the in-flight window under test.
pub fn mosquitto_config(port: impl Display, dir: impl Display, max_inflight: u32) -> String {
    format!(
        "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n\
         persistence_location {dir}/\nmax_queued_messages 1000000\n\
         max_inflight_messages {max_inflight}\nlog_dest file {dir}/mosquitto.log\n"
    )
}

/// "2.0.11", from the first line of `mosquitto -h`.
pub fn mosquitto_version() -> Option<String> {
    let output = Command::new(find_binary("mosquitto")?)
        .arg("-h")
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    let version = text.lines().next()?.strip_prefix("mosquitto version ")?;
    Some(version.trim().to_owned())
}

pub(super) fn find_binary(name: &str) -> Option<PathBuf> {
    ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"]
        .iter()
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.is_file())
}

/// A directory of its own under the system temp dir, removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn create(label: &str) -> Result<Self, String> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        let path = std::env::temp_dir().join(format!(
            "orchardd-bench-{}-{label}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Self(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A loopback port nobody listens on right now.
pub(super) fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("bench: no free loopback port: {e}"))
}

fn write_file(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

/// One HTTP/1.1 GET on a fresh connection: status and body. Enough for `/readyz` and
/// `/metrics`, which answer with a Content-Length body.
fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw)?;
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_owned()))
}
