//! `orchardd bench`: ingest measured the way a deployment runs it. orchardd (and Mosquitto,
//! when asked) run as child processes on private ports and temp directories ([`servers`]),
//! the library simulator publishes at QoS 1, and the daemon's own `/metrics` and /proc
//! ([`probe`]) tell throughput, publish-to-commit latency, batch sizes, memory and where the
//! CPU went ([`report`]).

mod alerts;
mod forward;
mod probe;
mod report;
mod servers;

use std::path::Path;
use std::time::{Duration, Instant};

use rumqttc::QoS;
use tokio::runtime::Handle;
use tokio::task::JoinHandle;

use crate::cli::{BenchArgs, BenchBroker, Switch};
use crate::config::{Settings, Synchronous};
use crate::simulate::{self, READINGS_PER_MESSAGE};
use probe::{CpuSnapshot, CpuUse, Scrape};
use servers::{Daemon, Mosquitto, TempDir};

/// The simulated co-operative: devices are spread over this many orchards and blocks.
const ORCHARDS: usize = 4;
const BLOCKS: usize = 5;
/// How often `/metrics` and the daemon's RSS are sampled during a run.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// A run gives up when no reading was committed for this long...
const STALL_LIMIT: Duration = Duration::from_secs(30);
/// ...or this long after the simulator has published everything.
const DRAIN_LIMIT: Duration = Duration::from_secs(300);

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
    let base = base_settings(args.config.as_deref())?;
    let load = Load::plan(args);
    if !args.forward.is_empty() {
        return run_forwarding(args, &exe, &base, &load, runtime);
    }
    let mut outcomes = Vec::new();
    for &broker in &args.broker {
        for &sync in &args.synchronous {
            for (&rollups, &rules) in args
                .rollups
                .iter()
                .flat_map(|r| args.rules.iter().map(move |p| (r, p)))
            {
                let scenario = Scenario {
                    broker,
                    sync,
                    rollups: rollups == Switch::On,
                    rules: rules == Switch::On,
                };
                eprintln!(
                    "bench: {scenario}: {} messages from {} devices…",
                    load.messages(),
                    load.devices()
                );
                let mut settings = base.clone();
                settings.aggregate.rollups = scenario.rollups;
                if !scenario.rules {
                    // A rules directory with no files in it: no rules at all.
                    let none = std::env::temp_dir().join("orchardd-bench-no-rules");
                    std::fs::create_dir_all(&none)
                        .map_err(|e| format!("bench: {}: {e}", none.display()))?;
                    settings.alerts.rules_dir = Some(none);
                } else if args.alert_latency {
                    // The citrus pack and the latency probe's own rule.
                    let dir = std::env::temp_dir().join("orchardd-bench-probe-rules");
                    let write = |name: &str, text: &str| {
                        std::fs::create_dir_all(&dir)
                            .and_then(|()| std::fs::write(dir.join(name), text))
                            .map_err(|e| format!("bench: {}: {e}", dir.display()))
                    };
                    write("citrus.toml", crate::alerts::rules::CITRUS)?;
                    write("probe.toml", alerts::RULE)?;
                    settings.alerts.rules_dir = Some(dir);
                }
                let outcome = measure(&exe, &settings, args, &load, scenario, runtime)?;
                eprintln!(
                    "bench: {scenario}: {} readings/s sustained",
                    report::grouped(outcome.sustained_rate())
                );
                outcomes.push(outcome);
            }
        }
    }
    let report = report::render(args, &load, &outcomes);
    print!("{report}");
    if let Some(path) = &args.output {
        std::fs::write(path, &report)
            .map_err(|e| format!("bench: cannot write {}: {e}", path.display()))?;
    }
    Ok(())
}

/// Forwarding throughput into each target, as a Markdown table.
fn run_forwarding(
    args: &BenchArgs,
    exe: &Path,
    base: &Settings,
    load: &Load,
    runtime: &Handle,
) -> Result<(), String> {
    let mut outcomes = Vec::new();
    for &target in &args.forward {
        eprintln!(
            "bench: forwarding {} readings to {}…",
            load.readings(),
            forward::name(target)
        );
        let outcome = forward::measure(exe, base, load, target, &args.daemon_env, runtime)?;
        eprintln!(
            "bench: {} points/s",
            report::grouped(outcome.points_per_second())
        );
        outcomes.push(outcome);
    }
    let report = forward::render(load, &outcomes);
    print!("{report}");
    if let Some(path) = &args.output {
        std::fs::write(path, &report)
            .map_err(|e| format!("bench: cannot write {}: {e}", path.display()))?;
    }
    Ok(())
}

/// The configuration under test: the file alone (no environment), or the defaults.
fn base_settings(file: Option<&Path>) -> Result<Settings, String> {
    match file {
        Some(path) => Settings::load_with_env(Some(path), std::iter::empty())
            .map_err(|e| format!("bench: {}: {e}", path.display())),
        None => Ok(Settings::default()),
    }
}

/// One run's broker and store mode.
#[derive(Debug, Clone, Copy)]
struct Scenario {
    broker: BenchBroker,
    sync: Synchronous,
    /// `aggregate.rollups`: the cost of keeping them is the difference between two runs.
    rollups: bool,
    /// The built-in citrus rule pack, or no rules.
    rules: bool,
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

impl std::fmt::Display for Scenario {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (broker, sync) = (self.broker_name(), self.sync_name());
        let on = |b: bool| if b { "on" } else { "off" };
        write!(
            f,
            "{broker} broker, synchronous={sync}, rollups {}, rules {}",
            on(self.rollups),
            on(self.rules)
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
            start: None,
            lots: 0,
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
    /// `/metrics` at the end of the run.
    scrape: Scrape,
    peak_rss_kib: Option<u64>,
    broker_peak_rss_kib: Option<u64>,
    cpu: CpuUse,
    /// With `--alert-latency`: the probe's reading-to-MQTT-alert times.
    alert_latency: Option<alerts::Latencies>,
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

    /// The last RSS sampled while the load ran: what a long run leaves behind.
    fn last_rss_kib(&self) -> Option<u64> {
        self.samples.iter().rev().find_map(|s| s.rss_kib)
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
    base: &Settings,
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
    let mut daemon = Daemon::start(
        exe,
        dir.path(),
        base,
        scenario.sync,
        mosquitto.as_ref(),
        &args.daemon_env,
    )?;
    daemon.wait_ready()?;

    let daemon_pid = daemon.process.id();
    let broker_pid = mosquitto.as_ref().map(|m| m.process.id());
    let cpu_before = CpuSnapshot::take(daemon_pid, broker_pid);
    let started = Instant::now();
    let (stop_probe, stopped) = tokio::sync::watch::channel(false);
    let probe =
        (args.alert_latency && scenario.rules && matches!(scenario.broker, BenchBroker::Embedded))
            .then(|| runtime.spawn(alerts::probe(daemon.mqtt_port, stopped)));
    let mut publisher = Publisher::start(runtime, load.options(daemon.mqtt_port));
    let watched = watch_commits(&mut daemon, &mut publisher, load.readings(), started)?;
    let _ = stop_probe.send(true);
    let alert_latency = match probe {
        Some(task) => Some(
            runtime
                .block_on(task)
                .map_err(|e| format!("bench: alert probe: {e}"))??,
        ),
        None => None,
    };
    // Every reading committed means every message published; the last PUBACKs follow at once.
    let published = publisher.collect(Duration::from_secs(10))?;
    let cpu = CpuSnapshot::take(daemon_pid, broker_pid).since(&cpu_before);
    let scrape = Scrape(daemon.metrics()?);
    let peak_rss_kib = probe::status_kib(daemon_pid, "VmHWM");
    let broker_peak_rss_kib = broker_pid.and_then(|pid| probe::status_kib(pid, "VmHWM"));

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
        alert_latency,
    })
}

/// The simulator, running on the runtime while the bench watches the daemon.
struct Publisher {
    runtime: Handle,
    task: Option<JoinHandle<Result<simulate::Report, String>>>,
    report: Option<simulate::Report>,
}

impl Publisher {
    fn start(runtime: &Handle, options: simulate::Options) -> Self {
        Self {
            runtime: runtime.clone(),
            task: Some(runtime.spawn(simulate::run(options))),
            report: None,
        }
    }

    /// True once the simulator has published everything; its error if it failed.
    fn is_done(&mut self) -> Result<bool, String> {
        if self.task.as_ref().is_some_and(|t| t.is_finished()) {
            self.collect(Duration::ZERO)?;
        }
        Ok(self.report.is_some())
    }

    /// Waits up to `limit` for the simulator's report, and stops it after that (`None`).
    fn collect(&mut self, limit: Duration) -> Result<Option<simulate::Report>, String> {
        if let Some(task) = self.task.take() {
            let abort = task.abort_handle();
            match self.runtime.block_on(tokio::time::timeout(limit, task)) {
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
    /// When the last commit was seen.
    wall: Duration,
}

/// Samples the daemon until `target` readings are committed, commits stall, or it dies.
fn watch_commits(
    daemon: &mut Daemon,
    publisher: &mut Publisher,
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
        let scrape = Scrape(daemon.metrics()?);
        let committed = scrape
            .value("orchardd_readings_accepted_total")
            .unwrap_or(0.0);
        let at = started.elapsed();
        let rss_kib = probe::status_kib(daemon.process.id(), "VmRSS");
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
        if published_at.is_none() && publisher.is_done()? {
            published_at = Some(at);
        }
        let stalled = at - last_commit.0 > STALL_LIMIT;
        if stalled || published_at.is_some_and(|p| at - p > DRAIN_LIMIT) {
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
    fn commits_between_samples_are_interpolated() {
        let samples = [sample(0, 0.0), sample(100, 1000.0), sample(300, 2000.0)];
        assert_eq!(committed_at(&samples, Duration::from_millis(50)), 500.0);
        assert_eq!(committed_at(&samples, Duration::from_millis(200)), 1500.0);
        assert_eq!(committed_at(&samples, Duration::from_millis(900)), 2000.0);
    }

    #[test]
    fn devices_fill_every_block_and_messages_round_up() {
        let args = BenchArgs {
            broker: vec![BenchBroker::Embedded],
            messages: 1000,
            devices: 30,
            connections: 4,
            synchronous: vec![Synchronous::Full],
            rollups: vec![Switch::On],
            rules: vec![Switch::On],
            rate: Some(20 * READINGS_PER_MESSAGE * 100),
            alert_latency: false,
            mosquitto_max_inflight: 1000,
            config: None,
            output: None,
            forward: Vec::new(),
            daemon_env: Vec::new(),
        };
        let load = Load::plan(&args);
        assert_eq!(load.devices(), 20);
        assert_eq!(load.messages(), 1000);
        // 20 devices' messages every 10 ms is 100 rounds a second.
        assert_eq!(load.interval, Duration::from_millis(10));
    }
}
