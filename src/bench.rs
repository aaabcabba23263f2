//! `orchardd bench`: ingest measured the way a deployment runs it. orchardd (and Mosquitto,
//! when asked) run as child processes on private ports and temp directories, the library
//! simulator publishes at QoS 1, and the daemon's own `/metrics` and `/proc` tell throughput,
//! publish-to-commit latency, batch sizes, memory and where the CPU went.

use std::collections::BTreeMap;
use std::fmt::{Display, Write as _};
use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rumqttc::QoS;
use tokio::runtime::Handle;
use tokio::task::JoinHandle;

use crate::cli::{BenchArgs, BenchBroker};
use crate::config::{Settings, Synchronous};
use crate::simulate::{self, READINGS_PER_MESSAGE};

/// The simulated co-operative: devices are spread over this many orchards and blocks.
const ORCHARDS: usize = 4;
const BLOCKS: usize = 5;
/// How often `/metrics` and the daemon's RSS are sampled during a run.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// A run gives up when no reading was committed for this long...
const STALL_LIMIT: Duration = Duration::from_secs(30);
/// ...or this long after the simulator has published everything.
const DRAIN_LIMIT: Duration = Duration::from_secs(300);
const READY_LIMIT: Duration = Duration::from_secs(30);
const STOP_LIMIT: Duration = Duration::from_secs(30);
/// The unit of utime and stime in /proc: USER_HZ, 100 on every Linux ABI orchardd targets.
const CLOCK_TICKS_PER_S: f64 = 100.0;
/// The goal of the issue: sustained readings/s through Mosquitto, and peak RSS.
const GOAL_READINGS_PER_S: f64 = 100_000.0;
const GOAL_RSS_MIB: f64 = 50.0;

/// Runs every broker × synchronous combination, prints the Markdown report and writes it to
/// `--output` when given.
pub async fn run(args: BenchArgs) -> Result<(), String> {
    let runtime = Handle::current();
    // Everything but the simulator blocks (child processes, HTTP polls, sleeps): it runs on the
    // blocking pool, so that the simulator has the runtime's workers to itself.
    tokio::task::spawn_blocking(move || run_blocking(&args, &runtime))
        .await
        .map_err(|e| format!("bench: {e}"))?
}

fn run_blocking(args: &BenchArgs, runtime: &Handle) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| format!("bench: cannot find orchardd: {e}"))?;
    let load = Load::plan(args);
    let mut outcomes = Vec::new();
    for &broker in &args.broker {
        for &sync in &args.synchronous {
            let scenario = Scenario { broker, sync };
            eprintln!(
                "bench: {scenario}: {} messages from {} devices…",
                load.messages(),
                load.devices()
            );
            let outcome = measure(&exe, args, &load, scenario, runtime)?;
            eprintln!(
                "bench: {scenario}: {} readings/s sustained",
                grouped(outcome.sustained_rate())
            );
            outcomes.push(outcome);
        }
    }
    let report = render(args, &load, &outcomes);
    print!("{report}");
    if let Some(path) = &args.output {
        std::fs::write(path, &report)
            .map_err(|e| format!("bench: cannot write {}: {e}", path.display()))?;
    }
    Ok(())
}

/// One run's broker and store mode.
#[derive(Debug, Clone, Copy)]
struct Scenario {
    broker: BenchBroker,
    sync: Synchronous,
}

impl Scenario {
    fn broker_name(&self) -> &'static str {
        match self.broker {
            BenchBroker::Embedded => "embedded",
            BenchBroker::Mosquitto => "mosquitto",
        }
    }

    fn sync_name(&self) -> &'static str {
        match self.sync {
            Synchronous::Full => "full",
            Synchronous::Normal => "normal",
        }
    }
}

impl Display for Scenario {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} broker, synchronous={}",
            self.broker_name(),
            self.sync_name()
        )
    }
}

/// What the simulator publishes in every run.
struct Load {
    devices_per_block: usize,
    per_device: u64,
    /// Between two messages of one device; zero for a saturation run.
    interval: Duration,
    connections: usize,
}

impl Load {
    fn plan(args: &BenchArgs) -> Self {
        let devices_per_block = (args.devices / (ORCHARDS * BLOCKS)).max(1);
        let devices = (devices_per_block * ORCHARDS * BLOCKS) as u64;
        let interval = match args.rate {
            Some(rate) if rate > 0 => {
                Duration::from_secs_f64((devices * READINGS_PER_MESSAGE) as f64 / rate as f64)
            }
            _ => Duration::ZERO,
        };
        Self {
            devices_per_block,
            per_device: args.messages.div_ceil(devices).max(1),
            interval,
            connections: args.connections,
        }
    }

    fn devices(&self) -> usize {
        self.devices_per_block * ORCHARDS * BLOCKS
    }

    fn messages(&self) -> u64 {
        self.per_device * self.devices() as u64
    }

    fn readings(&self) -> u64 {
        self.messages() * READINGS_PER_MESSAGE
    }

    fn options(&self, port: u16) -> simulate::Options {
        simulate::Options {
            url: format!("mqtt://127.0.0.1:{port}"),
            orchards: ORCHARDS,
            blocks: BLOCKS,
            devices: self.devices_per_block,
            interval: self.interval,
            count: Some(self.per_device),
            qos: QoS::AtLeastOnce,
            connections: self.connections,
            username: None,
            password: None,
            progress: None,
        }
    }
}

/// Everything one run measured.
struct Outcome {
    scenario: Scenario,
    expected: u64,
    committed: u64,
    /// `None` when the simulator had not finished when the bench gave up.
    published: Option<simulate::Report>,
    /// First publish to the last commit seen.
    wall: Duration,
    samples: Vec<Sample>,
    scrape: Scrape,
    peak_rss_kib: Option<u64>,
    broker_peak_rss_kib: Option<u64>,
    cpu: CpuUse,
}

impl Outcome {
    fn overall_rate(&self) -> f64 {
        self.committed as f64 / self.wall.as_secs_f64().max(1e-9)
    }

    /// The commit rate over the middle 80 % of the run: without the ramp-up (connections,
    /// first series inserts) and the tail (the last partial batches).
    fn sustained_rate(&self) -> f64 {
        let (from, to) = (self.wall.mul_f64(0.1), self.wall.mul_f64(0.9));
        let seconds = (to - from).as_secs_f64().max(1e-9);
        (committed_at(&self.samples, to) - committed_at(&self.samples, from)) / seconds
    }

    fn median_rss_kib(&self) -> Option<u64> {
        let mut rss: Vec<u64> = self.samples.iter().filter_map(|s| s.rss_kib).collect();
        rss.sort_unstable();
        rss.get(rss.len() / 2).copied()
    }
}

/// Sets up the servers of one scenario, drives the load, measures, and tears down.
fn measure(
    exe: &Path,
    args: &BenchArgs,
    load: &Load,
    scenario: Scenario,
    runtime: &Handle,
) -> Result<Outcome, String> {
    let dir = TempDir::create(&format!(
        "{}-{}",
        scenario.broker_name(),
        scenario.sync_name()
    ))?;
    let mut mosquitto = match scenario.broker {
        BenchBroker::Mosquitto => Some(Mosquitto::start(dir.path(), args.mosquitto_max_inflight)?),
        BenchBroker::Embedded => None,
    };
    let mut daemon = Daemon::start(exe, dir.path(), scenario.sync, mosquitto.as_ref())?;
    daemon.wait_ready()?;

    let broker_pid = mosquitto.as_ref().map(|m| m.process.id());
    let cpu_before = CpuSnapshot::take(daemon.process.id(), broker_pid);
    let started = Instant::now();
    let mut publisher = Publisher::start(runtime, load.options(daemon.mqtt_port));
    let watched = watch_commits(
        &mut daemon,
        &mut publisher,
        runtime,
        load.readings(),
        started,
    )?;
    // Every reading committed means every message published; the last PUBACKs follow at once.
    let published = publisher.collect(runtime, Duration::from_secs(10))?;
    let cpu = CpuSnapshot::take(daemon.process.id(), broker_pid).since(&cpu_before);
    let scrape = daemon.scrape()?;
    let peak_rss_kib = proc_status_kib(daemon.process.id(), "VmHWM");
    let broker_peak_rss_kib = broker_pid.and_then(|pid| proc_status_kib(pid, "VmHWM"));

    daemon.stop()?;
    if let Some(m) = &mut mosquitto {
        m.process.terminate()?;
    }
    Ok(Outcome {
        scenario,
        expected: load.readings(),
        committed: watched.committed,
        published,
        wall: watched.wall,
        samples: watched.samples,
        scrape,
        peak_rss_kib,
        broker_peak_rss_kib,
        cpu,
    })
}

/// The simulator, running on the runtime while the bench watches the daemon.
struct Publisher {
    task: Option<JoinHandle<Result<simulate::Report, String>>>,
    report: Option<simulate::Report>,
}

impl Publisher {
    fn start(runtime: &Handle, options: simulate::Options) -> Self {
        Self {
            task: Some(runtime.spawn(simulate::run(options))),
            report: None,
        }
    }

    /// True once the simulator has published everything; its error if it failed.
    fn is_done(&mut self, runtime: &Handle) -> Result<bool, String> {
        if self.task.as_ref().is_some_and(|t| t.is_finished()) {
            self.collect(runtime, Duration::ZERO)?;
        }
        Ok(self.report.is_some())
    }

    /// Waits up to `limit` for the simulator's report, and stops it after that (`None`).
    fn collect(
        &mut self,
        runtime: &Handle,
        limit: Duration,
    ) -> Result<Option<simulate::Report>, String> {
        if let Some(task) = self.task.take() {
            let abort = task.abort_handle();
            match runtime.block_on(tokio::time::timeout(limit, task)) {
                Ok(joined) => {
                    let report = joined.map_err(|e| format!("bench: simulator: {e}"))??;
                    self.report = Some(report);
                }
                Err(_) => abort.abort(),
            }
        }
        Ok(self.report)
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// `orchardd_readings_accepted_total` and the daemon's RSS at one moment of a run.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Duration,
    committed: f64,
    rss_kib: Option<u64>,
}

struct Watched {
    samples: Vec<Sample>,
    committed: u64,
    wall: Duration,
}

/// Samples the daemon until `target` readings are committed, commits stall, or it dies.
fn watch_commits(
    daemon: &mut Daemon,
    publisher: &mut Publisher,
    runtime: &Handle,
    target: u64,
    started: Instant,
) -> Result<Watched, String> {
    let mut samples = vec![Sample {
        at: Duration::ZERO,
        committed: 0.0,
        rss_kib: None,
    }];
    let mut last_commit = (Duration::ZERO, 0.0);
    let mut published_at = None;
    loop {
        std::thread::sleep(SAMPLE_EVERY);
        daemon.check_alive()?;
        let committed = daemon
            .scrape()?
            .value("orchardd_readings_accepted_total")
            .unwrap_or(0.0);
        let at = started.elapsed();
        let rss_kib = proc_status_kib(daemon.process.id(), "VmRSS");
        samples.push(Sample {
            at,
            committed,
            rss_kib,
        });
        if committed > last_commit.1 {
            last_commit = (at, committed);
        }
        if committed >= target as f64 {
            break;
        }
        // A simulator that failed ends the run now, with its own error.
        if published_at.is_none() && publisher.is_done(runtime)? {
            published_at = Some(at);
        }
        let stalled = at - last_commit.0 > STALL_LIMIT;
        let drained_too_long = published_at.is_some_and(|p| at - p > DRAIN_LIMIT);
        if stalled || drained_too_long {
            eprintln!(
                "bench: giving up with {} of {target} readings committed",
                last_commit.1
            );
            break;
        }
    }
    Ok(Watched {
        samples,
        committed: last_commit.1 as u64,
        wall: last_commit.0,
    })
}

/// Readings committed at `t`, interpolated linearly between the samples around it.
fn committed_at(samples: &[Sample], t: Duration) -> f64 {
    let i = samples.partition_point(|s| s.at < t);
    match (i.checked_sub(1).map(|j| samples[j]), samples.get(i)) {
        (Some(a), Some(b)) if b.at > a.at => {
            let share = (t - a.at).as_secs_f64() / (b.at - a.at).as_secs_f64();
            a.committed + (b.committed - a.committed) * share
        }
        (_, Some(b)) => b.committed,
        (Some(a), None) => a.committed,
        (None, None) => 0.0,
    }
}

/// A child process that is killed when dropped, so that no failed run leaves servers behind.
struct Process {
    child: Child,
    name: &'static str,
}

impl Process {
    fn id(&self) -> u32 {
        self.child.id()
    }

    fn check_alive(&mut self) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!("{} exited unexpectedly ({status})", self.name)),
            Err(e) => Err(format!("{}: {e}", self.name)),
        }
    }

    /// SIGTERM, then a bounded wait for the exit; SIGKILL after [`STOP_LIMIT`].
    fn terminate(&mut self) -> Result<ExitStatus, String> {
        if let Some(status) = self.child.try_wait().map_err(|e| e.to_string())? {
            return Ok(status);
        }
        let sent = Command::new("kill")
            .args(["-TERM", &self.id().to_string()])
            .status()
            .map_err(|e| format!("kill -TERM {}: {e}", self.id()))?;
        if !sent.success() {
            return Err(format!("kill -TERM {} failed ({sent})", self.id()));
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
struct Daemon {
    process: Process,
    http: SocketAddr,
    mqtt_port: u16,
    log: PathBuf,
}

impl Daemon {
    /// Writes the config into `dir` and starts `orchardd run`; subscribes to `mosquitto` when
    /// given, else runs the embedded broker.
    fn start(
        exe: &Path,
        dir: &Path,
        sync: Synchronous,
        mosquitto: Option<&Mosquitto>,
    ) -> Result<Self, String> {
        let http = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let mut settings = Settings::default();
        settings.store.path = dir.join("store").join("orchardd.db");
        settings.store.synchronous = sync;
        settings.http.listen = http;
        settings.mqtt.client_id = "orchardd-bench".into();
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
    fn wait_ready(&mut self) -> Result<(), String> {
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

    fn check_alive(&mut self) -> Result<(), String> {
        let alive = self.process.check_alive();
        alive.map_err(|e| self.with_log(e))
    }

    fn scrape(&self) -> Result<Scrape, String> {
        match http_get(self.http, "/metrics") {
            Ok((200, body)) => Ok(Scrape(body)),
            Ok((status, _)) => Err(self.with_log(format!("GET /metrics answered {status}"))),
            Err(e) => Err(self.with_log(format!("GET /metrics: {e}"))),
        }
    }

    /// SIGTERM and wait: the daemon commits and acknowledges what it holds, then exits 0.
    fn stop(&mut self) -> Result<(), String> {
        match self.process.terminate() {
            Ok(status) if status.success() => Ok(()),
            Ok(status) => Err(self.with_log(format!("orchardd exited with {status} on SIGTERM"))),
            Err(e) => Err(self.with_log(e)),
        }
    }

    /// `problem`, followed by the end of the daemon's log.
    fn with_log(&self, problem: String) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!(
            "bench: {problem}\n--- last lines of {} ---\n{}",
            self.log.display(),
            tail.join("\n")
        )
    }
}

/// A Mosquitto broker with persistence, in its own directory, on its own port.
struct Mosquitto {
    process: Process,
    port: u16,
}

impl Mosquitto {
    fn start(dir: &Path, max_inflight: u32) -> Result<Self, String> {
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

/// The broker settings the README asks of production (persistence, long queues for orchardd
/// while it restarts), with the in-flight window under test: orchardd acknowledges only after
/// commit, so `max_inflight_messages` is all the broker sends ahead of the store.
fn mosquitto_config(port: impl Display, dir: impl Display, max_inflight: u32) -> String {
    format!(
        "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n\
         persistence_location {dir}/\nmax_queued_messages 1000000\n\
         max_inflight_messages {max_inflight}\nlog_dest file {dir}/mosquitto.log\n"
    )
}

fn find_binary(name: &str) -> Option<PathBuf> {
    ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"]
        .iter()
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.is_file())
}

/// A directory of its own under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn create(label: &str) -> Result<Self, String> {
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

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A loopback port nobody listens on right now.
fn free_port() -> Result<u16, String> {
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

/// One answer of `/metrics`, in the Prometheus text format.
struct Scrape(String);

impl Scrape {
    /// The value of a sample without labels.
    fn value(&self, name: &str) -> Option<f64> {
        self.0.lines().find_map(|line| {
            let (key, value) = line.split_once(' ')?;
            (key == name).then(|| value.trim().parse().ok())?
        })
    }

    /// The cumulative `_bucket{le="…"}` counts of a histogram, in order.
    fn histogram(&self, name: &str) -> Histogram {
        let prefix = format!("{name}_bucket{{le=\"");
        let buckets = self
            .0
            .lines()
            .filter_map(|line| {
                let (le, count) = line.strip_prefix(&prefix)?.split_once("\"} ")?;
                Some((le.parse().ok()?, count.trim().parse().ok()?))
            })
            .collect();
        Histogram { buckets }
    }

    /// `_sum / _count` of a histogram.
    fn mean(&self, name: &str) -> Option<f64> {
        let count = self.value(&format!("{name}_count"))?;
        let sum = self.value(&format!("{name}_sum"))?;
        (count > 0.0).then(|| sum / count)
    }
}

/// Upper bounds with cumulative counts; the last bound is +Inf.
struct Histogram {
    buckets: Vec<(f64, f64)>,
}

impl Histogram {
    /// The `q` quantile, interpolated linearly inside its bucket (as Prometheus'
    /// `histogram_quantile` does). In the +Inf bucket it is the largest finite bound.
    fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.buckets.last()?.1;
        if total <= 0.0 {
            return None;
        }
        let rank = q * total;
        let mut below = (0.0, 0.0);
        for &(le, count) in &self.buckets {
            if count >= rank {
                if le.is_infinite() {
                    return Some(below.0);
                }
                let share = if count > below.1 {
                    (rank - below.1) / (count - below.1)
                } else {
                    1.0
                };
                return Some(below.0 + (le - below.0) * share);
            }
            below = (le, count);
        }
        None
    }
}

/// CPU seconds used so far by orchardd (per thread name), the broker and the bench itself.
struct CpuSnapshot {
    at: Instant,
    daemon: f64,
    daemon_threads: BTreeMap<String, f64>,
    broker: Option<f64>,
    bench: f64,
}

/// CPU use over a run, in cores (1.0 = one core busy all the time).
struct CpuUse {
    daemon: f64,
    /// Busiest first.
    daemon_threads: Vec<(String, f64)>,
    broker: Option<f64>,
    /// The simulator, plus the bench's own sampling (a few HTTP requests per second).
    bench: f64,
}

impl CpuSnapshot {
    fn take(daemon: u32, broker: Option<u32>) -> Self {
        Self {
            at: Instant::now(),
            daemon: process_cpu_seconds(daemon).unwrap_or(0.0),
            daemon_threads: thread_cpu_seconds(daemon),
            broker: broker.and_then(process_cpu_seconds),
            bench: process_cpu_seconds(std::process::id()).unwrap_or(0.0),
        }
    }

    fn since(&self, before: &CpuSnapshot) -> CpuUse {
        let wall = (self.at - before.at).as_secs_f64().max(1e-9);
        let mut daemon_threads: Vec<(String, f64)> = self
            .daemon_threads
            .iter()
            .map(|(name, s)| {
                let earlier = before.daemon_threads.get(name).copied().unwrap_or(0.0);
                (name.clone(), (s - earlier) / wall)
            })
            .filter(|(_, cores)| *cores >= 0.01)
            .collect();
        daemon_threads.sort_by(|a, b| b.1.total_cmp(&a.1));
        CpuUse {
            daemon: (self.daemon - before.daemon) / wall,
            daemon_threads,
            broker: self.broker.zip(before.broker).map(|(a, b)| (a - b) / wall),
            bench: (self.bench - before.bench) / wall,
        }
    }
}

fn process_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat).map(|(_, seconds)| seconds)
}

/// CPU seconds of each live thread of `pid`, summed per thread name (tokio's workers share one).
fn thread_cpu_seconds(pid: u32) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        if let Some((name, seconds)) = parse_stat(&stat) {
            *out.entry(name).or_insert(0.0) += seconds;
        }
    }
    out
}

/// The command name and utime + stime (in seconds) of a /proc `stat` line.
fn parse_stat(stat: &str) -> Option<(String, f64)> {
    let (head, rest) = stat.rsplit_once(')')?;
    let name = head.split_once('(')?.1.to_owned();
    // After the name: state is field 3, utime field 14 and stime field 15.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((name, (utime + stime) / CLOCK_TICKS_PER_S))
}

/// One `kB` line of /proc/PID/status, such as VmRSS or VmHWM.
fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| {
        let value = line.strip_prefix(field)?.strip_prefix(':')?;
        value.trim().trim_end_matches("kB").trim().parse().ok()
    })
}

/// The Markdown report: machine, command, load, one column per run, and the goal.
fn render(args: &BenchArgs, load: &Load, outcomes: &[Outcome]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "## orchardd bench, {}\n", today());
    let _ = writeln!(out, "- Machine: {}", machine());
    let _ = writeln!(
        out,
        "- Command: `{}`",
        std::env::args().collect::<Vec<_>>().join(" ")
    );
    let offered = match args.rate {
        Some(rate) if !load.interval.is_zero() => {
            format!("{} readings/s offered", grouped(rate as f64))
        }
        _ => "as fast as the broker acknowledges".into(),
    };
    let _ = writeln!(
        out,
        "- Load: {} messages × {READINGS_PER_MESSAGE} readings from {} devices ({ORCHARDS} orchards × \
         {BLOCKS} blocks × {}), QoS 1, {} publishing connections, {offered}",
        grouped(load.messages() as f64),
        load.devices(),
        load.devices_per_block,
        load.connections,
    );
    if args.broker.contains(&BenchBroker::Mosquitto) {
        let conf = mosquitto_config("PORT", "DIR", args.mosquitto_max_inflight);
        let _ = writeln!(
            out,
            "- Mosquitto {}: `{}`",
            mosquitto_version(),
            conf.trim().replace('\n', "; ")
        );
    }
    out.push('\n');
    out.push_str(&table(outcomes));
    out.push('\n');
    for line in goal(outcomes) {
        let _ = writeln!(out, "{line}");
    }
    out
}

fn table(outcomes: &[Outcome]) -> String {
    let mut out = String::from("| |");
    for o in outcomes {
        let _ = write!(
            out,
            " {} / {} |",
            o.scenario.broker_name(),
            o.scenario.sync_name()
        );
    }
    out.push_str("\n|---|");
    out.push_str(&"---:|".repeat(outcomes.len()));
    out.push('\n');
    for (label, cell) in rows() {
        let _ = write!(out, "| {label} |");
        for o in outcomes {
            let _ = write!(out, " {} |", cell(o));
        }
        out.push('\n');
    }
    out
}

type Cell = fn(&Outcome) -> String;

/// The table's rows: a label and how to fill its cell for one run.
fn rows() -> Vec<(&'static str, Cell)> {
    vec![
        ("readings committed", |o| {
            let shortfall = o.expected - o.committed.min(o.expected);
            if shortfall == 0 {
                grouped(o.committed as f64)
            } else {
                format!(
                    "{} (**{} short**)",
                    grouped(o.committed as f64),
                    grouped(shortfall as f64)
                )
            }
        }),
        ("simulator publish rate, readings/s", |o| {
            or_dash(o.published, |p| {
                grouped(p.readings as f64 / p.elapsed.as_secs_f64().max(1e-9))
            })
        }),
        ("first publish → last commit", |o| {
            format!("{:.2} s", o.wall.as_secs_f64())
        }),
        ("overall, readings/s", |o| grouped(o.overall_rate())),
        ("**sustained (middle 80 %), readings/s**", |o| {
            format!("**{}**", grouped(o.sustained_rate()))
        }),
        ("publish → commit latency p50", |o| latency(o, 0.5)),
        ("publish → commit latency p99", |o| latency(o, 0.99)),
        ("commit batch p50 (mean), readings", |o| {
            let h = o.scrape.histogram("orchardd_batch_readings");
            let mean = o.scrape.mean("orchardd_batch_readings");
            format!(
                "{} ({})",
                or_dash(h.quantile(0.5), |v| grouped(v)),
                or_dash(mean, |v| grouped(v))
            )
        }),
        ("mean commit time", |o| {
            or_dash(o.scrape.mean("orchardd_commit_seconds"), |s| {
                format!("{:.1} ms", s * 1e3)
            })
        }),
        ("**orchardd peak RSS (VmHWM)**", |o| {
            or_dash(o.peak_rss_kib, |k| {
                format!("**{:.1} MiB**", k as f64 / 1024.0)
            })
        }),
        ("orchardd median RSS under load", |o| {
            or_dash(o.median_rss_kib(), |k| {
                format!("{:.1} MiB", k as f64 / 1024.0)
            })
        }),
        ("mosquitto peak RSS", |o| {
            or_dash(o.broker_peak_rss_kib, |k| {
                format!("{:.1} MiB", k as f64 / 1024.0)
            })
        }),
        ("CPU, cores: orchardd / mosquitto / simulator", |o| {
            format!(
                "{:.2} / {} / {:.2}",
                o.cpu.daemon,
                or_dash(o.cpu.broker, |c| format!("{c:.2}")),
                o.cpu.bench
            )
        }),
        ("orchardd threads, cores", |o| {
            let busiest: Vec<String> = o
                .cpu
                .daemon_threads
                .iter()
                .take(4)
                .map(|(name, cores)| format!("{name} {cores:.2}"))
                .collect();
            busiest.join(", ")
        }),
    ]
}

fn latency(o: &Outcome, q: f64) -> String {
    let h = o.scrape.histogram("orchardd_reading_age_at_commit_seconds");
    or_dash(h.quantile(q), |s| {
        if s < 1.0 {
            format!("{:.1} ms", s * 1e3)
        } else {
            format!("{s:.2} s")
        }
    })
}

/// Whether the mosquitto runs met the goal, one line each.
fn goal(outcomes: &[Outcome]) -> Vec<String> {
    outcomes
        .iter()
        .filter(|o| o.scenario.broker == BenchBroker::Mosquitto)
        .map(|o| {
            let rate = o.sustained_rate();
            let rss = o.peak_rss_kib.map(|k| k as f64 / 1024.0);
            let met = rate >= GOAL_READINGS_PER_S
                && rss.is_some_and(|r| r < GOAL_RSS_MIB)
                && o.committed >= o.expected;
            format!(
                "- Goal (≥ {} readings/s sustained through Mosquitto, < {GOAL_RSS_MIB} MiB RSS), \
                 synchronous={}: **{}** ({} readings/s, {})",
                grouped(GOAL_READINGS_PER_S),
                o.scenario.sync_name(),
                if met { "met" } else { "not met" },
                grouped(rate),
                or_dash(rss, |r| format!("{r:.1} MiB")),
            )
        })
        .collect()
}

fn or_dash<T>(value: Option<T>, show: impl FnOnce(T) -> String) -> String {
    value.map(show).unwrap_or_else(|| "–".into())
}

/// A whole number with thin groups of three digits: 123 456.
fn grouped(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

fn today() -> String {
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute] UTC");
    time::OffsetDateTime::now_utc()
        .format(&format)
        .unwrap_or_default()
}

/// CPU model, cores, memory and kernel.
fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")?
                .split_once(':')
                .map(|(_, m)| m.trim())
        })
        .unwrap_or("unknown CPU");
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_gib = proc_meminfo_kib("MemTotal").map_or(0.0, |k| k as f64 / 1024.0 / 1024.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{model}, {cores} CPUs (nproc), {mem_gib:.1} GiB RAM, Linux {}",
        kernel.trim()
    )
}

fn proc_meminfo_kib(field: &str) -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    meminfo.lines().find_map(|line| {
        let value = line.strip_prefix(field)?.strip_prefix(':')?;
        value.trim().trim_end_matches("kB").trim().parse().ok()
    })
}

/// "2.0.11", from the first line of `mosquitto -h`.
fn mosquitto_version() -> String {
    let Some(binary) = find_binary("mosquitto") else {
        return "(not installed)".into();
    };
    let output = Command::new(binary).arg("-h").output();
    let text = output
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    text.lines()
        .next()
        .and_then(|l| l.strip_prefix("mosquitto version "))
        .unwrap_or("(unknown version)")
        .trim()
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(ms: u64, committed: f64) -> Sample {
        Sample {
            at: Duration::from_millis(ms),
            committed,
            rss_kib: None,
        }
    }

    #[test]
    fn quantiles_interpolate_inside_their_bucket() {
        let scrape = Scrape(
            "# TYPE x histogram\nx_sum 1.0\nx_count 100\nx_bucket{le=\"0.1\"} 0\n\
             x_bucket{le=\"0.2\"} 50\nx_bucket{le=\"0.4\"} 100\nx_bucket{le=\"+Inf\"} 100\n"
                .into(),
        );
        let h = scrape.histogram("x");
        assert_eq!(h.buckets.len(), 4);
        assert!((h.quantile(0.5).unwrap() - 0.2).abs() < 1e-9);
        assert!((h.quantile(0.25).unwrap() - 0.15).abs() < 1e-9);
        assert!((h.quantile(0.99).unwrap() - 0.396).abs() < 1e-9);
        assert_eq!(scrape.mean("x"), Some(0.01));
    }

    #[test]
    fn a_quantile_beyond_the_last_bound_is_that_bound() {
        let h = Histogram {
            buckets: vec![(1.0, 1.0), (f64::INFINITY, 10.0)],
        };
        assert_eq!(h.quantile(0.99), Some(1.0));
        assert_eq!(Histogram { buckets: vec![] }.quantile(0.5), None);
    }

    #[test]
    fn commits_between_samples_are_interpolated() {
        let samples = [sample(0, 0.0), sample(100, 1000.0), sample(300, 2000.0)];
        assert_eq!(committed_at(&samples, Duration::from_millis(50)), 500.0);
        assert_eq!(committed_at(&samples, Duration::from_millis(200)), 1500.0);
        assert_eq!(committed_at(&samples, Duration::from_millis(900)), 2000.0);
    }

    #[test]
    fn stat_lines_give_name_and_cpu_seconds() {
        let stat = "4242 (store writer) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 3 0";
        assert_eq!(parse_stat(stat), Some(("store writer".into(), 3.0)));
    }

    #[test]
    fn large_numbers_are_grouped_by_thousands() {
        assert_eq!(grouped(100_000.4), "100 000");
        assert_eq!(grouped(999.0), "999");
        assert_eq!(grouped(1_234_567.0), "1 234 567");
    }
}
