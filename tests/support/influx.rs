//! Time-series servers the InfluxDB tests start for themselves: InfluxDB 1.x (`influxd`) and
//! VictoriaMetrics, which takes InfluxDB line protocol on `/write` and `/api/v2/write`.
//! Each runs in its own directory on free loopback ports; every wait is bounded.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{free_port, http_request, require_binary, signal, wait_for};

/// The database [`Influxd::start`] creates.
pub const DATABASE: &str = "orchardd";

/// Percent-encodes one query-string component.
pub fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A server process with a log file; shared by both servers below.
struct Process {
    child: Option<Child>,
    log: PathBuf,
}

impl Process {
    fn spawn(&mut self, mut cmd: Command) {
        assert!(self.child.is_none(), "still running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = cmd
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {cmd:?}: {e}"));
        self.child = Some(child);
    }

    /// Waits (bounded) until `ready` holds, failing early with the log if the process died.
    fn wait_ready(&mut self, what: &str, mut ready: impl FnMut() -> bool) {
        wait_for(Duration::from_secs(30), what, || {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("{what}: exited with {status}\n{}", self.log_text());
            }
            ready().then_some(())
        });
    }

    /// SIGTERM, then wait (bounded) for the exit.
    fn stop(&mut self) {
        let mut child = self.child.take().expect("running");
        signal(child.id(), "TERM");
        let start = Instant::now();
        while child.try_wait().unwrap().is_none() {
            if start.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("no exit within 30 s of SIGTERM\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// InfluxDB 1.x with its meta, data and WAL in a temp dir, HTTP and RPC on free ports.
///
/// What influxd 1.6 does, as these tests rely on it:
/// - `/ping` answers 204 once ready (about a second). `/write` answers 204; 404 for an
///   unknown database; 400 `{"error":"partial write: ... dropped=N"}` when some lines are bad
///   or conflict with a field's type, and then the good lines of that body ARE stored.
/// - `/write?precision=ms` takes ms timestamps; a point with the same series and timestamp
///   overwrites the earlier one, so a re-sent batch leaves no duplicates.
/// - `/query` with `epoch=ms` answers times as ms integers; an unknown database is a 200 with
///   `results[].error`, a syntax error a 400 with a top-level `error`.
pub struct Influxd {
    pub port: u16,
    pub dir: PathBuf,
    config: PathBuf,
    process: Process,
}

impl Influxd {
    /// Starts influxd in `dir/influxd` and creates [`DATABASE`].
    pub fn start(dir: &Path) -> Influxd {
        Self::start_with_http(dir, "")
    }

    /// With more settings of the `[http]` section, e.g. `max-body-size = 20000`.
    pub fn start_with_http(dir: &Path, http: &str) -> Influxd {
        let dir = dir.join("influxd");
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port();
        // influxd binds its RPC (backup) service to 127.0.0.1:8088 unless told otherwise,
        // which would collide between tests running in parallel.
        let config = dir.join("influxd.conf");
        std::fs::write(
            &config,
            format!(
                r#"reporting-disabled = true
bind-address = "127.0.0.1:{rpc}"
[meta]
  dir = "{d}/meta"
  logging-enabled = false
[data]
  dir = "{d}/data"
  wal-dir = "{d}/wal"
  query-log-enabled = false
[monitor]
  store-enabled = false
[http]
  bind-address = "127.0.0.1:{port}"
  auth-enabled = false
  log-enabled = false
{http}
[continuous_queries]
  enabled = false
[logging]
  level = "warn"
"#,
                rpc = free_port(),
                d = dir.display(),
            ),
        )
        .unwrap();
        let mut influxd = Influxd {
            port,
            process: Process {
                child: None,
                log: dir.join("influxd.log"),
            },
            dir,
            config,
        };
        influxd.spawn();
        let (status, body) = influxd.post(
            &format!(
                "/query?q={}",
                encode(&format!("CREATE DATABASE {DATABASE}"))
            ),
            "",
        );
        assert_eq!(status, 200, "CREATE DATABASE: {body}");
        influxd
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new(require_binary("influxd", "influxdb"));
        cmd.arg("-config").arg(&self.config);
        self.process.spawn(cmd);
        let addr = self.addr();
        self.process.wait_ready("influxd /ping", || {
            matches!(http_request(addr, "GET", "/ping", ""), Ok((204, _)))
        });
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// SIGTERM and wait; the data stays for [`Influxd::restart`].
    pub fn stop(&mut self) {
        self.process.stop();
    }

    /// Starts again on the same port and data (stopping first if still running).
    pub fn restart(&mut self) {
        if self.process.child.is_some() {
            self.stop();
        }
        self.spawn();
    }

    /// SIGSTOP: connections are accepted by the kernel but never answered, like a hung server.
    pub fn freeze(&self) {
        signal(self.pid(), "STOP");
    }

    pub fn thaw(&self) {
        signal(self.pid(), "CONT");
    }

    pub fn log_text(&self) -> String {
        self.process.log_text()
    }

    fn post(&self, path: &str, body: &str) -> (u16, String) {
        http_request(self.addr(), "POST", path, body)
            .unwrap_or_else(|e| panic!("POST {path}: {e}\n{}", self.log_text()))
    }

    /// Runs InfluxQL with `epoch=ms`; panics unless InfluxDB answers 200.
    pub fn query(&self, db: &str, influxql: &str) -> Value {
        let path = format!("/query?db={}&epoch=ms&q={}", encode(db), encode(influxql));
        let (status, body) = http_request(self.addr(), "GET", &path, "")
            .unwrap_or_else(|e| panic!("GET {path}: {e}\n{}", self.log_text()));
        assert_eq!(status, 200, "{influxql}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{influxql}: {e}: {body}"))
    }

    /// Writes line protocol with ms timestamps; panics unless InfluxDB answers 204.
    pub fn write(&self, db: &str, lines: &str) {
        let (status, body) = self.post(&format!("/write?db={}&precision=ms", encode(db)), lines);
        assert_eq!(status, 204, "write: {body}");
    }
}

/// VictoriaMetrics single-node, storing in a temp dir, on a free port.
///
/// What VictoriaMetrics 1.79 does with InfluxDB line protocol, as found by experiment:
/// - `/api/v2/write` (and `/write`) answer 204, also for lines they cannot parse (those are
///   only logged and skipped), for an empty body, for GET, and whatever `Authorization`.
///   A 204 therefore proves nothing about the data: read it back with [`Self::export`].
/// - `precision=ms` is honoured; without it timestamps are read as ns.
/// - `soil_moisture,orchard=a,depth_cm=30 value=1 <ms>` becomes the metric
///   `soil_moisture_value{orchard="a",depth_cm="30"}`: `{measurement}_{field}`, tags as labels.
///   `/write?db=x` adds a label `db="x"`; `/api/v2/write?bucket=..&org=..` adds none.
///   A string field is stored as 0. Gzip request bodies are taken.
/// - Samples with the same series and timestamp are all kept (no overwrite as in InfluxDB):
///   a re-sent batch shows as duplicates in `export` unless started with deduplication.
/// - Samples more than about 2 days in the future, or older than `-retentionPeriod` (100y
///   here), are dropped with a logged warning, still answering 204.
/// - New samples become searchable only after an in-memory buffer is flushed (a second or
///   more); `GET /internal/force_flush` flushes it at once, so [`Self::export`] calls it first.
pub struct VictoriaMetrics {
    pub port: u16,
    pub dir: PathBuf,
    args: Vec<String>,
    process: Process,
}

/// One exported sample: the labels (with `__name__`), the timestamp in ms and the value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub labels: BTreeMap<String, String>,
    pub ts: i64,
    pub value: f64,
}

impl VictoriaMetrics {
    pub fn start(dir: &Path) -> VictoriaMetrics {
        Self::start_with(dir, &[])
    }

    /// With extra flags, e.g. `-dedup.minScrapeInterval=1ms` to keep one sample per timestamp.
    pub fn start_with(dir: &Path, extra: &[&str]) -> VictoriaMetrics {
        let dir = dir.join("victoria-metrics");
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port();
        let mut args = vec![
            format!("-httpListenAddr=127.0.0.1:{port}"),
            format!("-storageDataPath={}", dir.join("data").display()),
            "-retentionPeriod=100y".into(),
            "-loggerLevel=WARN".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut vm = VictoriaMetrics {
            port,
            args,
            process: Process {
                child: None,
                log: dir.join("victoria-metrics.log"),
            },
            dir,
        };
        vm.spawn();
        vm
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new(require_binary("victoria-metrics", "victoria-metrics"));
        cmd.args(&self.args);
        self.process.spawn(cmd);
        let addr = self.addr();
        self.process.wait_ready(
            "victoria-metrics /health",
            || matches!(http_request(addr, "GET", "/health", ""), Ok((200, b)) if b.trim() == "OK"),
        );
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    pub fn stop(&mut self) {
        self.process.stop();
    }

    pub fn restart(&mut self) {
        if self.process.child.is_some() {
            self.stop();
        }
        self.spawn();
    }

    pub fn log_text(&self) -> String {
        self.process.log_text()
    }

    fn get(&self, path: &str) -> (u16, String) {
        http_request(self.addr(), "GET", path, "")
            .unwrap_or_else(|e| panic!("GET {path}: {e}\n{}", self.log_text()))
    }

    /// Posts line protocol with ms timestamps to `/api/v2/write`; returns the status.
    pub fn write(&self, lines: &str) -> u16 {
        http_request(self.addr(), "POST", "/api/v2/write?precision=ms", lines)
            .unwrap_or_else(|e| panic!("write: {e}\n{}", self.log_text()))
            .0
    }

    /// Makes everything ingested so far visible to searches.
    pub fn flush(&self) {
        let (status, body) = self.get("/internal/force_flush");
        assert_eq!(status, 200, "force_flush: {body}");
    }

    /// `/api/v1/export` of a series selector such as `{__name__=~"soil_.*"}`, after a flush:
    /// one JSON object per series with `metric`, `values` and `timestamps`.
    pub fn export(&self, selector: &str) -> Vec<Value> {
        self.flush();
        let (status, body) = self.get(&format!("/api/v1/export?match[]={}", encode(selector)));
        assert_eq!(status, 200, "export {selector}: {body}");
        body.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("export: {e}: {l}")))
            .collect()
    }

    /// [`Self::export`] flattened to samples, sorted by labels and time.
    pub fn samples(&self, selector: &str) -> Vec<Sample> {
        let mut out = Vec::new();
        for series in self.export(selector) {
            let labels: BTreeMap<String, String> =
                serde_json::from_value(series["metric"].clone()).unwrap();
            let values = series["values"].as_array().unwrap();
            let timestamps = series["timestamps"].as_array().unwrap();
            for (v, t) in values.iter().zip(timestamps) {
                out.push(Sample {
                    labels: labels.clone(),
                    ts: t.as_i64().unwrap(),
                    value: v.as_f64().unwrap(),
                });
            }
        }
        out.sort_by(|a, b| (&a.labels, a.ts).cmp(&(&b.labels, b.ts)));
        out
    }
}
