//! Forwarding throughput: orchardd builds a backlog of readings while its InfluxDB target is
//! down, then the target starts and the bench times how fast the backlog drains into it.

use std::path::Path;
use std::time::{Duration, Instant};

use tokio::runtime::Handle;

use super::probe::Scrape;
use super::servers::{Daemon, TempDir, TimeSeriesServer, free_port};
use super::{Load, Publisher};
use crate::cli::ForwardTarget;
use crate::config::{InfluxApi, Settings, Synchronous};

/// What one forwarding run measured.
pub struct ForwardOutcome {
    pub target: ForwardTarget,
    pub points: u64,
    pub drained_in: Duration,
    pub batches: u64,
}

impl ForwardOutcome {
    pub fn points_per_second(&self) -> f64 {
        self.points as f64 / self.drained_in.as_secs_f64().max(1e-9)
    }
}

pub fn name(target: ForwardTarget) -> &'static str {
    match target {
        ForwardTarget::Influxdb1 => "InfluxDB 1.6 (v1 /write)",
        ForwardTarget::VictoriaMetrics => {
            "VictoriaMetrics 1.79 (v2 /api/v2/write, influxdb2 crate)"
        }
    }
}

const DRAIN_LIMIT: Duration = Duration::from_secs(600);

pub fn measure(
    exe: &Path,
    base: &Settings,
    load: &Load,
    target: ForwardTarget,
    env: &[(String, String)],
    runtime: &Handle,
) -> Result<ForwardOutcome, String> {
    let dir = TempDir::create("forward")?;
    let port = free_port()?;
    let mut settings = base.clone();
    settings.influx.enabled = true;
    settings.influx.url = format!("http://127.0.0.1:{port}");
    settings.influx.api = match target {
        ForwardTarget::Influxdb1 => InfluxApi::V1,
        ForwardTarget::VictoriaMetrics => InfluxApi::V2,
    };
    settings.influx.token = Some("bench".into());
    settings.influx.max_retry_delay = Duration::from_millis(500);
    let mut daemon = Daemon::start(exe, dir.path(), &settings, Synchronous::Normal, None, env)?;
    daemon.wait_ready()?;

    // The backlog: every reading committed while the target is not there yet.
    let mut publisher = Publisher::start(runtime, load.options(daemon.mqtt_port));
    wait_until(&daemon, "orchardd_readings_accepted_total", load.readings())?;
    publisher.collect(Duration::from_secs(10))?;

    let mut server = match target {
        ForwardTarget::Influxdb1 => TimeSeriesServer::start_influxd(dir.path(), port)?,
        ForwardTarget::VictoriaMetrics => {
            TimeSeriesServer::start_victoria_metrics(dir.path(), port)?
        }
    };
    let started = Instant::now();
    wait_until(&daemon, "orchardd_forward_points_total", load.readings())?;
    let drained_in = started.elapsed();
    let scrape = Scrape(daemon.metrics()?);
    daemon.stop()?;
    server.process.terminate()?;
    Ok(ForwardOutcome {
        target,
        points: load.readings(),
        drained_in,
        batches: scrape
            .value("orchardd_forward_batches_total")
            .unwrap_or(0.0) as u64,
    })
}

fn wait_until(daemon: &Daemon, counter: &str, want: u64) -> Result<(), String> {
    let start = Instant::now();
    loop {
        let have = Scrape(daemon.metrics()?).value(counter).unwrap_or(0.0) as u64;
        if have >= want {
            return Ok(());
        }
        if start.elapsed() > DRAIN_LIMIT {
            return Err(format!(
                "bench: {counter} reached only {have} of {want} in {DRAIN_LIMIT:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The Markdown table of forwarding runs.
pub fn render(load: &Load, outcomes: &[ForwardOutcome]) -> String {
    let mut out = String::from(
        "| target | backlog, points | drained in | points/s | batches |\n|---|---:|---:|---:|---:|\n",
    );
    for o in outcomes {
        out.push_str(&format!(
            "| {} | {} | {:.2} s | {} | {} |\n",
            name(o.target),
            super::report::grouped(load.readings() as f64),
            o.drained_in.as_secs_f64(),
            super::report::grouped(o.points_per_second()),
            o.batches
        ));
    }
    out
}
