//! The command line: `run`, `check-config`, `passwd`, `token`, `simulate`, `bench`, `backup`,
//! `status`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::Synchronous;

#[derive(Debug, Parser)]
#[command(
    name = "orchardd",
    version,
    about = "Smart-orchard telemetry daemon: MQTT sensor readings in, validated time series out"
)]
pub struct Cli {
    /// Without a subcommand, orchardd runs the daemon on its built-in defaults.
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon (its own MQTT endpoint and store unless configured otherwise).
    Run(ConfigArg),
    /// Check a configuration file and the ORCHARDD__* environment; print every problem.
    CheckConfig(ConfigArg),
    /// Hash a password for an MQTT user of the endpoint and print its `[[broker.users]]` entry
    /// (the password is read from standard input, one line).
    Passwd(PasswdArgs),
    /// Make API tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Publish simulated citrus-orchard telemetry to an MQTT broker.
    Simulate(SimulateArgs),
    /// Measure ingest throughput, latency and memory; print a report.
    Bench(BenchArgs),
    /// Copy the store, while orchardd runs, to a new file: a consistent, checked backup.
    Backup(BackupArgs),
    /// How the running orchardd is doing, at a glance (from its /readyz and /metrics).
    Status(ConfigArg),
}

#[derive(Debug, Args)]
pub struct BackupArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// The backup file to write; it must not exist yet.
    pub file: PathBuf,
}

#[derive(Debug, Args)]
pub struct ConfigArg {
    /// Configuration file (TOML). Without it, /etc/orchardd/orchardd.toml when that exists
    /// (the package's), else the built-in defaults of config/orchardd.toml.
    #[arg(long, short, env = "ORCHARDD_CONFIG")]
    pub config: Option<PathBuf>,
}

/// Where the Debian package puts the configuration.
pub const SYSTEM_CONFIG: &str = "/etc/orchardd/orchardd.toml";

impl ConfigArg {
    /// The configuration file to read: the one given, else the package's when installed.
    pub fn file(&self) -> Option<PathBuf> {
        self.config.clone().or_else(|| {
            let system = PathBuf::from(SYSTEM_CONFIG);
            system.is_file().then_some(system)
        })
    }
}

#[derive(Debug, Args)]
pub struct PasswdArgs {
    /// The MQTT user name.
    pub user: String,
    /// Topic filter the user may publish to, e.g. `orchards/fengjie/#` (repeat for more).
    #[arg(long)]
    pub publish: Vec<String>,
    /// Topic filter the user may subscribe within (repeat for more).
    #[arg(long)]
    pub subscribe: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make a new API token: print it once, and the `[[http.tokens]]` entry for the config,
    /// which keeps only its hash.
    New {
        /// What the token may do.
        #[arg(long, value_enum)]
        role: crate::config::Role,
        /// Who or what holds it ("packing-shed tablet"): recorded with everything it does.
        #[arg(long)]
        name: String,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Qos {
    #[value(name = "0")]
    AtMostOnce,
    #[value(name = "1")]
    AtLeastOnce,
}

#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// Broker to publish to.
    #[arg(long, default_value = "mqtt://127.0.0.1:1883")]
    pub url: String,
    #[arg(long, default_value_t = 1)]
    pub orchards: usize,
    #[arg(long, default_value_t = 2)]
    pub blocks: usize,
    /// Devices per block.
    #[arg(long, default_value_t = 3)]
    pub devices: usize,
    /// Time between two messages of one device ("10s", "1m"); "0s" publishes as fast as possible.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// Messages per device, then stop. Without it, run until interrupted (or, with --start,
    /// until the simulated clock reaches the present).
    #[arg(long)]
    pub count: Option<u64>,
    /// Simulate from this time (RFC 3339 or epoch ms) on a simulated clock: each device's
    /// messages are --interval apart in simulated time and published as fast as the broker
    /// takes them, so a season replays in seconds.
    #[arg(long)]
    pub start: Option<String>,
    #[arg(long, value_enum, default_value = "1")]
    pub qos: Qos,
    /// Parallel publishing connections.
    #[arg(long, default_value_t = 1)]
    pub connections: usize,
    #[arg(long)]
    pub username: Option<String>,
    #[arg(long, env = "ORCHARDD_SIM_PASSWORD")]
    pub password: Option<String>,
    /// After the readings, each block publishes this many harvest lots on its yield topic,
    /// harvested in the simulated season's last days (needs --start).
    #[arg(long, default_value_t = 0)]
    pub lots: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Switch {
    On,
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BenchBroker {
    Embedded,
    Mosquitto,
}

/// A server the forwarding benchmark writes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ForwardTarget {
    /// InfluxDB 1.x (`influxd`), through the v1 `/write` API.
    Influxdb1,
    /// VictoriaMetrics, through the v2 `/api/v2/write` API (the influxdb2 crate).
    VictoriaMetrics,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Which brokers to measure through (repeat or comma-separate).
    #[arg(long, value_enum, value_delimiter = ',', default_values = ["embedded", "mosquitto"])]
    pub broker: Vec<BenchBroker>,
    /// Messages to publish per run (10 readings each).
    #[arg(long, default_value_t = 100_000)]
    pub messages: u64,
    /// Simulated devices (spread over 4 orchards x 5 blocks).
    #[arg(long, default_value_t = 200)]
    pub devices: usize,
    /// Parallel publishing connections.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Store synchronous modes to measure, "full" and/or "normal" (comma-separate): one run
    /// per broker and mode.
    #[arg(long, value_delimiter = ',', default_value = "full", value_parser = synchronous)]
    pub synchronous: Vec<Synchronous>,
    /// Keep rollups on the ingest path (`on`), skip them (`off`), or `on,off` to measure
    /// what they cost.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "on")]
    pub rollups: Vec<Switch>,
    /// Run the built-in citrus rule pack (`on`, the default), no rules (`off`), or `on,off`
    /// to measure what evaluating alert rules on the ingest path costs.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "on")]
    pub rules: Vec<Switch>,
    /// Offered load in readings/s, spread evenly over the devices. Without it the simulator
    /// publishes as fast as the broker acknowledges (a saturation run).
    #[arg(long)]
    pub rate: Option<u64>,
    /// Also measure reading-to-MQTT-alert latency (orchardd's own endpoint, rules on): a
    /// probe device fires and resolves a threshold rule in turn while the load runs, and an
    /// MQTT subscriber times each event from the probe's publish.
    #[arg(long)]
    pub alert_latency: bool,
    /// Mosquitto's max_inflight_messages: QoS 1 messages it sends orchardd ahead of the
    /// acknowledgements, which orchardd gives only after commit (0: no limit).
    #[arg(long, default_value_t = 1000)]
    pub mosquitto_max_inflight: u32,
    /// orchardd configuration to measure (TOML). The bench replaces its store path, ports
    /// and broker with its own; without it, the built-in defaults.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Also write the report as Markdown to this file.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Measure forwarding instead of ingest: how fast a backlog of `--messages` x 10 readings
    /// drains into these servers (comma-separate).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub forward: Vec<ForwardTarget>,
    /// Environment for the daemon under test (repeatable), e.g. `MALLOC_ARENA_MAX=16`, or a
    /// heap profiler's `LD_PRELOAD` (BENCHMARKS.md, "Where the memory went").
    #[arg(long = "daemon-env", value_name = "KEY=VALUE", value_parser = key_value)]
    pub daemon_env: Vec<(String, String)>,
}

fn key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.into(), value.into())),
        _ => Err(format!("`{s}` is not KEY=VALUE")),
    }
}

fn synchronous(s: &str) -> Result<Synchronous, String> {
    match s {
        "full" => Ok(Synchronous::Full),
        "normal" => Ok(Synchronous::Normal),
        _ => Err(format!("`{s}` is neither full nor normal")),
    }
}
