//! The one typed configuration of orchardd.
//!
//! Layers, later wins: built-in defaults (documented key by key in `config/orchardd.toml`),
//! the file given with `--config`, then `ORCHARDD__SECTION__KEY` environment variables.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ingest::topic::TopicPattern;

mod alerts;
mod http;
mod lots;
pub use alerts::{
    AlertSettings, DingTalkSecurity, DingTalkSettings, EscalationSettings, FeishuSettings,
    Language, MessageFormat, WeComSettings, WebhookSettings,
};
pub use http::{HttpSettings, Role, TokenEntry, check_token_name, token_hash};
pub use lots::{LotSettings, PUBLISHABLE};

/// The shipped, documented configuration file. Parsing it must give [`Settings::default`].
pub const SHIPPED_TOML: &str = include_str!("../config/orchardd.toml");

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub broker: BrokerSettings,
    pub mqtt: MqttSettings,
    pub ingest: IngestSettings,
    pub validate: ValidateSettings,
    pub store: StoreSettings,
    pub http: HttpSettings,
    pub log: LogSettings,
    pub sources: Vec<SourceSettings>,
    pub registry: RegistrySettings,
    pub health: HealthSettings,
    pub influx: InfluxSettings,
    pub query: QuerySettings,
    pub aggregate: AggregateSettings,
    /// Where each block is and how it is grown, for its daily indices.
    pub blocks: Vec<BlockSettings>,
    pub alerts: AlertSettings,
    pub lots: LotSettings,
    /// The grading standard `lots.grading_file` names, read when the settings were loaded.
    #[serde(skip)]
    pub grading: std::sync::Arc<crate::harvest::grade::Standard>,
    /// The alert rules read from `alerts.rules_dir` when the settings were loaded.
    #[serde(skip)]
    pub rules: std::sync::Arc<Vec<crate::alerts::rules::Rule>>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            broker: Default::default(),
            mqtt: Default::default(),
            ingest: Default::default(),
            validate: Default::default(),
            store: Default::default(),
            http: Default::default(),
            log: Default::default(),
            sources: vec![
                SourceSettings::new(
                    "chirpstack",
                    Format::Chirpstack,
                    "application/+/device/+/event/up",
                ),
                SourceSettings::new("things-stack", Format::Tts, "v3/+/devices/+/up"),
            ],
            registry: Default::default(),
            health: Default::default(),
            influx: Default::default(),
            query: Default::default(),
            aggregate: Default::default(),
            blocks: Vec::new(),
            alerts: AlertSettings::default(),
            lots: LotSettings::default(),
            // Checked by a test: the shipped table always parses.
            grading: std::sync::Arc::new(
                crate::harvest::grade::load(None).expect("the shipped grading table parses"),
            ),
            // Checked by a test: the pack always parses.
            rules: std::sync::Arc::new(crate::alerts::rules::built_in().unwrap_or_default()),
        }
    }
}

/// The payload formats orchardd decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Native,
    Senml,
    Chirpstack,
    Tts,
}

/// One more stream of messages besides the native `mqtt.topics`: a topic filter and its format.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSettings {
    /// Named in logs and in the quarantine.
    pub name: String,
    pub format: Format,
    /// MQTT filter (`+`, `#`), optionally with `{orchard}`, `{block}`, `{device}` placeholders
    /// (all three or none). Without them, the payload names the device and the registry places it.
    pub topic: String,
    /// Field name to kind, unit and depth, laid over the built-in table of the format.
    #[serde(default)]
    pub fields: std::collections::BTreeMap<String, crate::ingest::fields::FieldTarget>,
    /// SenML only: where a record's name splits into device and field.
    #[serde(default = "default_separator")]
    pub separator: char,
}

fn default_separator() -> char {
    ':'
}

impl SourceSettings {
    fn new(name: &str, format: Format, topic: &str) -> Self {
        Self {
            name: name.into(),
            format,
            topic: topic.into(),
            fields: Default::default(),
            separator: default_separator(),
        }
    }
}

/// The device registry: which orchard and block a device EUI or id belongs to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistrySettings {
    /// TOML file of `[[device]]` entries, applied to the store at start-up. A missing file is
    /// no error: devices can also be assigned through the API.
    pub file: PathBuf,
}

impl Default for RegistrySettings {
    fn default() -> Self {
        Self {
            file: PathBuf::from("config/devices.toml"),
        }
    }
}

/// Which InfluxDB HTTP API to speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InfluxApi {
    /// InfluxDB 1.x: `/write` and `/query`, database and retention policy.
    V1,
    /// InfluxDB 2.x, 3.x, Cloud, or anything that takes `/api/v2/write`: org, bucket, token.
    V2,
}

/// Forwarding to InfluxDB, and reading back from it when `query.backend = "influx"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InfluxSettings {
    /// Forward every accepted reading to InfluxDB.
    pub enabled: bool,
    pub api: InfluxApi,
    /// Base URL, `http://` or `https://`.
    pub url: String,
    /// v2: organisation, bucket and API token.
    pub org: String,
    pub bucket: String,
    pub token: Option<String>,
    /// v1: database and retention policy (empty: the database's default).
    pub database: String,
    pub retention_policy: String,
    pub username: Option<String>,
    pub password: Option<String>,
    /// v2 with InfluxQL queries (`query.backend = "influx"`): the database a DBRP mapping
    /// gives the bucket; defaults to the bucket's name.
    pub query_database: Option<String>,
    /// Points per write request.
    pub batch_size: usize,
    /// Longest a committed reading waits before a partial batch is sent.
    #[serde(with = "humantime_serde")]
    pub flush_interval: Duration,
    /// Per request.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Upper bound of the retry back-off; retries go on for ever.
    #[serde(with = "humantime_serde")]
    pub max_retry_delay: Duration,
    pub gzip: bool,
}

impl Default for InfluxSettings {
    fn default() -> Self {
        Self {
            enabled: false,
            api: InfluxApi::V2,
            url: "http://127.0.0.1:8086".into(),
            org: "orchard".into(),
            bucket: "orchardd".into(),
            token: None,
            database: "orchardd".into(),
            retention_policy: String::new(),
            username: None,
            password: None,
            query_database: None,
            batch_size: 5000,
            flush_interval: Duration::from_secs(1),
            timeout: Duration::from_secs(10),
            max_retry_delay: Duration::from_secs(60),
            gzip: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum QueryBackend {
    /// The embedded SQLite store.
    #[default]
    Embedded,
    /// InfluxDB through InfluxQL on `/query` (1.x, 2.x with a DBRP mapping, 3.x).
    Influx,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct QuerySettings {
    /// Where `GET /api/v1/readings` and `/latest` answer from.
    pub backend: QueryBackend,
}

/// Rollups and daily indices.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AggregateSettings {
    /// The orchard's offset from UTC, `+08:00` for China: daily rollups run from local midnight
    /// to local midnight, so a frost night is not split at UTC midnight.
    pub utc_offset: String,
    /// Keep hourly and daily rollups as readings commit. They answer `/api/v1/rollups`,
    /// `/api/v1/indices` and hourly or daily `/api/v1/readings` questions; turning them off
    /// saves about a tenth of the ingest path's work (see BENCHMARKS.md).
    pub rollups: bool,
    /// Base temperature for growing degree days, °C (citrus: 13).
    pub gdd_base_c: f64,
    /// Month and day the season starts, `MM-DD`: degree days and the water balance are summed
    /// from here.
    pub season_start: String,
    /// Hours of a local day a device's readings must cover for the device to count in that
    /// day's indices; a day no device covers this well says so instead of giving a number.
    pub min_hours: u32,
    /// Crop coefficient Kc for each month, January first (FAO-56 table 12, citrus with about
    /// 70 % canopy and no ground cover: 0.65–0.70).
    pub kc: Vec<f64>,
    /// Total available water of the root zone, mm: field capacity minus wilting point over
    /// the rooting depth.
    pub root_zone_mm: f64,
    /// The depletion irrigation should bring the root zone back to, mm (0: field capacity).
    pub target_depletion_mm: f64,
    /// Height of the anemometers above ground, m (FAO-56 wants wind at 2 m).
    pub wind_height_m: f64,
    /// W/m² of solar radiation per lux, to let an illuminance sensor stand in for a
    /// pyranometer in ET0 on days a block has no solar radiation readings. Unset (the
    /// default): illuminance is stored in lux and never used for ET0. Daylight gives about
    /// 0.0079 (1 W/m² ≈ 127 lux); a sensor that saturates below full sun reads low.
    pub illuminance_to_solar: Option<f64>,
}

impl Default for AggregateSettings {
    fn default() -> Self {
        Self {
            utc_offset: "+00:00".into(),
            rollups: true,
            gdd_base_c: 13.0,
            season_start: "01-01".into(),
            min_hours: 20,
            kc: vec![0.7; 12],
            root_zone_mm: 100.0,
            target_depletion_mm: 0.0,
            wind_height_m: 2.0,
            illuminance_to_solar: None,
        }
    }
}

/// One block's place and growing details (`[[blocks]]`); unset fields take `[aggregate]`'s.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockSettings {
    pub orchard: String,
    pub block: String,
    /// Degrees, north positive.
    pub latitude: f64,
    /// Metres above sea level.
    pub elevation_m: f64,
    /// Degrees, east positive; tells when the sun is up. By default the meridian of
    /// `aggregate.utc_offset`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub longitude: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gdd_base_c: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub season_start: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kc: Option<Vec<f64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_zone_mm: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_depletion_mm: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wind_height_m: Option<f64>,
    /// `MM-DD` the block's harvest usually begins: daily rules with `not_before_harvest`
    /// (irrigation advice) fall silent that many days before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub harvest_from: Option<String>,
}

/// `MM-DD` to a month and day that exist in every year (so not 02-29).
pub fn parse_month_day(s: &str) -> Result<(time::Month, u8), String> {
    let bad = || format!("`{s}` must be a month and day such as 03-01 (and not 02-29)");
    let (m, d) = s.split_once('-').ok_or_else(bad)?;
    let (m, d) = (
        m.parse::<u8>().map_err(|_| bad())?,
        d.parse::<u8>().map_err(|_| bad())?,
    );
    let month = time::Month::try_from(m).map_err(|_| bad())?;
    time::Date::from_calendar_date(2025, month, d).map_err(|_| bad())?;
    Ok((month, d))
}

impl AggregateSettings {
    /// Problems with the agronomy values, shared by `[aggregate]` and each `[[blocks]]` entry.
    fn agronomy_problems(
        prefix: &str,
        season_start: Option<&str>,
        kc: Option<&[f64]>,
        root_zone_mm: Option<f64>,
        target_depletion_mm: Option<f64>,
        wind_height_m: Option<f64>,
        problem: &mut dyn FnMut(&str, String),
    ) {
        if let Some(Err(e)) = season_start.map(parse_month_day) {
            problem(&format!("{prefix}.season_start"), e);
        }
        if let Some(kc) = kc
            && (kc.len() != 12 || kc.iter().any(|k| !(0.0..=2.0).contains(k)))
        {
            problem(
                &format!("{prefix}.kc"),
                "must be 12 numbers from 0 to 2, one a month from January".into(),
            );
        }
        if let Some(z) = root_zone_mm
            && !(z > 0.0 && z <= 1000.0)
        {
            problem(
                &format!("{prefix}.root_zone_mm"),
                "must be above 0 and at most 1000".into(),
            );
        }
        if let Some(t) = target_depletion_mm
            && !(t >= 0.0 && t < root_zone_mm.unwrap_or(f64::MAX))
        {
            problem(
                &format!("{prefix}.target_depletion_mm"),
                "must be at least 0 and below root_zone_mm".into(),
            );
        }
        if let Some(h) = wind_height_m
            && !(0.5..=20.0).contains(&h)
        {
            problem(
                &format!("{prefix}.wind_height_m"),
                "must be from 0.5 to 20 m".into(),
            );
        }
    }
}

impl AggregateSettings {
    /// The offset in milliseconds; `Err` says what is wrong with the text.
    pub fn utc_offset_ms(&self) -> Result<i64, String> {
        let s = self.utc_offset.trim();
        let (sign, rest) = match s.split_at_checked(1) {
            Some(("+", rest)) => (1, rest),
            Some(("-", rest)) => (-1, rest),
            _ => return Err(format!("`{s}` must look like +08:00 or -03:30")),
        };
        let parsed = rest
            .split_once(':')
            .and_then(|(h, m)| Some((h.parse::<i64>().ok()?, m.parse::<i64>().ok()?)))
            .filter(|(h, m)| *h <= 14 && *m < 60 && rest.len() == 5);
        match parsed {
            Some((h, m)) => Ok(sign * (h * 60 + m) * 60_000),
            None => Err(format!("`{s}` must look like +08:00 or -03:30")),
        }
    }
}

/// Sensor-health flags on accepted readings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthSettings {
    /// The same value this many times in a row flags a sensor as stuck.
    pub stuck_after: u32,
    /// How often a device normally reports, unless its registry entry says otherwise; a
    /// reading after a silence of more than twice this is flagged `after_gap`.
    #[serde(with = "humantime_serde")]
    pub expected_interval: Duration,
}

impl Default for HealthSettings {
    fn default() -> Self {
        Self {
            stuck_after: 12,
            expected_interval: Duration::from_secs(15 * 60),
        }
    }
}

/// orchardd's own MQTT endpoint, for a server that is its own broker: devices publish to
/// orchardd, which acknowledges a publish only once it is committed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerSettings {
    /// Serve MQTT inside orchardd; `false` subscribes to the broker at `mqtt.url` instead.
    pub embedded: bool,
    /// Where the endpoint listens for sensors and gateways. Anything but a loopback address
    /// needs `users`.
    pub listen: SocketAddr,
    /// Largest MQTT packet the endpoint takes, in bytes.
    pub max_packet_bytes: usize,
    /// The MQTT 5 receive maximum: publishes one client may have waiting for their PUBACK,
    /// which comes after the commit. A connection at it counts as paused.
    pub max_inflight: u16,
    /// Messages in flight to one subscriber at a time.
    pub max_send: u16,
    /// QoS 1/2 messages kept for one subscriber session (online or offline); more are dropped,
    /// counted and logged.
    pub session_queue_messages: usize,
    /// Users with hashed passwords and the topics each may use; empty means anonymous clients
    /// on a loopback listener only.
    pub users: Vec<BrokerUser>,
    /// A second listener that speaks MQTT over TLS (usually on port 8883).
    pub tls: Option<BrokerTls>,
}

/// The endpoint's TLS listener: a certificate chain and its key, PEM files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerTls {
    pub listen: SocketAddr,
    /// The server's certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// Its private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
}

impl Default for BrokerSettings {
    fn default() -> Self {
        Self {
            embedded: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 1883)),
            max_packet_bytes: 1024 * 1024,
            max_inflight: 256,
            max_send: 16,
            session_queue_messages: 1000,
            users: Vec::new(),
            tls: None,
        }
    }
}

/// One MQTT user of the endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerUser {
    pub name: String,
    /// A hash as `mosquitto_passwd` or `orchardd passwd` writes it (`$7$...`).
    pub password_hash: String,
    /// Topic filters the user may publish to, e.g. `orchards/fengjie/#`.
    #[serde(default)]
    pub publish: Vec<String>,
    /// Topic filters the user may subscribe within.
    #[serde(default)]
    pub subscribe: Vec<String>,
}

/// How orchardd connects to an MQTT broker as a subscriber.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MqttSettings {
    /// `mqtt://host:port` or `mqtts://host:port` (TLS); used when `broker.embedded = false`.
    pub url: String,
    /// Fixed, so that the broker keeps orchardd's persistent session across restarts.
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<String>,
    /// PEM file of the CA that signed the broker's certificate; system roots when unset.
    pub ca_file: Option<PathBuf>,
    /// Topic patterns; `{orchard}`, `{block}` and `{device}` are placeholders for one level each.
    pub topics: Vec<String>,
    /// Subscribe as `$share/{group}/{filter}` so that several orchardd instances (each with
    /// its own `client_id`) split the messages between them; unset: one instance gets all.
    pub share_group: Option<String>,
    #[serde(with = "humantime_serde")]
    pub keep_alive: Duration,
    /// Upper bound of the reconnect back-off.
    #[serde(with = "humantime_serde")]
    pub reconnect_max_delay: Duration,
}

impl Default for MqttSettings {
    fn default() -> Self {
        Self {
            url: "mqtt://127.0.0.1:1883".into(),
            client_id: "orchardd".into(),
            username: None,
            password: None,
            ca_file: None,
            topics: vec![
                "orchards/{orchard}/{block}/{device}/telemetry".into(),
                "orchards/{orchard}/{block}/{device}/status".into(),
            ],
            share_group: None,
            keep_alive: Duration::from_secs(30),
            reconnect_max_delay: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestSettings {
    /// Larger payloads are quarantined as `payload_too_large` (their first KiB is kept).
    pub max_payload_bytes: usize,
    /// Messages decoded and waiting for the store; when full, orchardd stops reading MQTT.
    pub queue_messages: usize,
    /// Readings one device may store per minute of *reading time* (the readings' own
    /// timestamps, UTC minutes); the readings beyond it in one minute are quarantined as
    /// `rate_limited`, the device's other minutes and the other devices are untouched. A
    /// backlog delivered late and fast never exceeds it (a station with 11 readings every 10 s
    /// has 66 in each minute); a repeating gateway or a stuck clock does. 0 turns it off.
    pub device_rate_limit: u32,
}

impl Default for IngestSettings {
    fn default() -> Self {
        Self {
            max_payload_bytes: 256 * 1024,
            queue_messages: 1024,
            device_rate_limit: 600,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ValidateSettings {
    /// How far a sensor's clock may run ahead of the server's.
    #[serde(with = "humantime_serde")]
    pub max_future_skew: Duration,
    /// Oldest reading accepted (gateways that were offline deliver late).
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
}

impl Default for ValidateSettings {
    fn default() -> Self {
        Self {
            max_future_skew: Duration::from_secs(5 * 60),
            max_age: Duration::from_secs(30 * 86_400),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    /// fsync at every commit: an acknowledged reading survives a power cut.
    Full,
    /// fsync at checkpoints only: survives a crash of orchardd, not of the machine.
    Normal,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreSettings {
    /// The SQLite file; its directory is created when missing.
    pub path: PathBuf,
    pub synchronous: Synchronous,
    /// Most readings committed in one transaction. Batches form by themselves under load.
    pub max_batch_readings: usize,
    /// Raw readings older than this are deleted (0s: kept for ever); never one that has not
    /// been forwarded to InfluxDB yet.
    #[serde(with = "humantime_serde")]
    pub raw_retention: Duration,
    /// How often retention runs.
    #[serde(with = "humantime_serde")]
    pub retention_interval: Duration,
    /// The most the store's database file may grow to, in bytes (0: as far as the disk goes).
    /// Reached, it is treated as a full disk: nothing more is acknowledged until there is room.
    pub max_bytes: u64,
}

impl Default for StoreSettings {
    fn default() -> Self {
        Self {
            path: PathBuf::from("data/orchardd.db"),
            synchronous: Synchronous::Full,
            max_batch_readings: 20_000,
            raw_retention: Duration::ZERO,
            retention_interval: Duration::from_secs(3600),
            max_bytes: 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `orchardd=debug,orchardd::endpoint=info`.
    pub level: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

/// One thing wrong with the configuration, at a dotted key path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "config key `{}`: {}", self.key, self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the configuration: {0}")]
    Source(String),
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Problem>),
}

impl Settings {
    /// Loads defaults, then `file`, then the environment, and checks the result.
    pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
        let env: Vec<(String, String)> = std::env::vars().collect();
        Self::load_with_env(file, env)
    }

    /// [`Settings::load`] with the environment given, so tests need not touch the process's.
    pub fn load_with_env(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, ConfigError> {
        let tree = merged_tree(file, env)?;
        let mut problems = unknown_keys(&tree);
        let settings = match serde_path_to_error::deserialize::<_, Settings>(tree.clone()) {
            Ok(s) => Some(s),
            Err(e) => {
                problems.extend(type_problems(&tree));
                if problems.is_empty() {
                    problems.push(Problem {
                        key: e.path().to_string(),
                        message: e.inner().to_string(),
                    });
                }
                None
            }
        };
        let mut settings = settings;
        if let Some(s) = &mut settings {
            problems.extend(s.semantic_problems());
            match crate::alerts::rules::load(s.alerts.rules_dir.as_deref()) {
                Ok(rules) => s.rules = std::sync::Arc::new(rules),
                Err(p) => problems.extend(p),
            }
            match crate::harvest::grade::load(s.lots.grading_file.as_deref()) {
                Ok(standard) => s.grading = std::sync::Arc::new(standard),
                Err(e) => problems.push(Problem {
                    key: "lots.grading_file".into(),
                    message: e.to_string(),
                }),
            }
        }
        problems.sort();
        problems.dedup();
        match settings {
            Some(s) if problems.is_empty() => Ok(s),
            _ => Err(ConfigError::Invalid(problems)),
        }
    }

    /// Rules that types alone cannot express.
    fn semantic_problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        let mut problem = |key: &str, message: String| {
            out.push(Problem {
                key: key.into(),
                message,
            })
        };
        if self.mqtt.topics.is_empty() {
            problem("mqtt.topics", "at least one topic pattern is needed".into());
        }
        if self.store.max_bytes != 0 && self.store.max_bytes < 65_536 {
            problem(
                "store.max_bytes",
                format!(
                    "{} bytes cannot hold even an empty store: give 0 (no limit) or at least 65536",
                    self.store.max_bytes
                ),
            );
        }
        for (key, message) in self.lots.problems() {
            problem(&key, message);
        }
        for (i, t) in self.mqtt.topics.iter().enumerate() {
            if let Err(e) = TopicPattern::parse(t) {
                problem(&format!("mqtt.topics[{i}]"), e.to_string());
            }
        }
        if !self.broker.embedded
            && let Err(e) = crate::ingest::mqtt::parse_url(&self.mqtt.url)
        {
            problem("mqtt.url", e);
        }
        if self.broker.embedded {
            if let Err(e) = crate::endpoint::users::Users::from_settings(&self.broker.users) {
                problem("broker.users", e);
            } else if self.broker.users.is_empty() && !self.broker.listen.ip().is_loopback() {
                problem(
                    "broker.listen",
                    format!(
                        "{} is not a loopback address and broker.users is empty: anyone on the network could publish; add users or listen on 127.0.0.1",
                        self.broker.listen
                    ),
                );
            }
            if let Some(tls) = &self.broker.tls {
                if self.broker.users.is_empty() && !tls.listen.ip().is_loopback() {
                    problem(
                        "broker.tls.listen",
                        format!(
                            "{} is not a loopback address and broker.users is empty: add users or listen on 127.0.0.1",
                            tls.listen
                        ),
                    );
                }
                for (key, path) in [
                    ("broker.tls.cert_file", &tls.cert_file),
                    ("broker.tls.key_file", &tls.key_file),
                ] {
                    if !path.is_file() {
                        problem(key, format!("{} is not a readable file", path.display()));
                    }
                }
            }
            if self.broker.max_inflight == 0 {
                problem("broker.max_inflight", "must be at least 1".into());
            }
            if self.broker.max_send == 0 {
                problem("broker.max_send", "must be at least 1".into());
            }
            if self.broker.session_queue_messages == 0 {
                problem("broker.session_queue_messages", "must be at least 1".into());
            }
        }
        if self.mqtt.client_id.is_empty() || self.mqtt.client_id.len() > 64 {
            problem("mqtt.client_id", "must be 1 to 64 characters".into());
        }
        if let Some(group) = &self.mqtt.share_group
            && (group.is_empty() || group.contains(['/', '+', '#']))
        {
            problem(
                "mqtt.share_group",
                format!("`{group}` must be a non-empty name without `/`, `+` or `#`"),
            );
        }
        if self.mqtt.share_group.is_some() && self.broker.embedded {
            problem(
                "mqtt.share_group",
                "shares an external broker's messages between instances; it needs \
                 `broker.embedded = false`"
                    .into(),
            );
        }
        if self.mqtt.password.is_some() && self.mqtt.username.is_none() {
            problem("mqtt.password", "is set but `mqtt.username` is not".into());
        }
        if let Some(ca) = &self.mqtt.ca_file
            && !ca.is_file()
        {
            problem(
                "mqtt.ca_file",
                format!("{} is not a readable file", ca.display()),
            );
        }
        if self.mqtt.keep_alive < Duration::from_secs(5) {
            problem("mqtt.keep_alive", "must be at least 5s".into());
        }
        for (i, source) in self.sources.iter().enumerate() {
            if let Err(e) = TopicPattern::parse_filter(&source.topic) {
                problem(&format!("sources[{i}].topic"), e.to_string());
            }
            if source.name.is_empty() || self.sources[..i].iter().any(|s| s.name == source.name) {
                problem(
                    &format!("sources[{i}].name"),
                    "must be non-empty and unique".into(),
                );
            }
        }
        if (self.influx.enabled || self.query.backend == QueryBackend::Influx)
            && !(self.influx.url.starts_with("http://") || self.influx.url.starts_with("https://"))
        {
            problem(
                "influx.url",
                format!("`{}` must start with http:// or https://", self.influx.url),
            );
        }
        if self.influx.batch_size == 0 {
            problem("influx.batch_size", "must be at least 1".into());
        }
        if self.query.backend == QueryBackend::Influx && !self.influx.enabled {
            problem(
                "query.backend",
                "\"influx\" needs influx.enabled = true: InfluxDB only has what orchardd forwards"
                    .into(),
            );
        }
        if self.influx.enabled && self.influx.api == InfluxApi::V2 && self.influx.token.is_none() {
            problem("influx.token", "the v2 API needs a token".into());
        }
        if let Err(e) = self.aggregate.utc_offset_ms() {
            problem("aggregate.utc_offset", e);
        }
        let a = &self.aggregate;
        AggregateSettings::agronomy_problems(
            "aggregate",
            Some(&a.season_start),
            Some(&a.kc),
            Some(a.root_zone_mm),
            Some(a.target_depletion_mm),
            Some(a.wind_height_m),
            &mut problem,
        );
        if !(1..=24).contains(&a.min_hours) {
            problem("aggregate.min_hours", "must be from 1 to 24".into());
        }
        if !(-20.0..=40.0).contains(&a.gdd_base_c) {
            problem("aggregate.gdd_base_c", "must be from -20 to 40 °C".into());
        }
        if let Some(f) = a.illuminance_to_solar
            && !(f > 0.0 && f <= 0.1)
        {
            problem(
                "aggregate.illuminance_to_solar",
                "must be above 0 and at most 0.1 W/m² per lux (daylight: about 0.0079)".into(),
            );
        }
        for (i, b) in self.blocks.iter().enumerate() {
            let key = format!("blocks[{i}]");
            for (name, v) in [("orchard", &b.orchard), ("block", &b.block)] {
                if let Err(e) = crate::model::Ident::parse(v) {
                    problem(&format!("{key}.{name}"), e.to_string());
                }
            }
            if self.blocks[..i]
                .iter()
                .any(|o| o.orchard == b.orchard && o.block == b.block)
            {
                problem(
                    &key,
                    format!("block {}/{} is listed twice", b.orchard, b.block),
                );
            }
            if !(-90.0..=90.0).contains(&b.latitude) {
                problem(&format!("{key}.latitude"), "must be from -90 to 90".into());
            }
            if let Some(lon) = b.longitude
                && !(-180.0..=180.0).contains(&lon)
            {
                problem(
                    &format!("{key}.longitude"),
                    "must be from -180 to 180".into(),
                );
            }
            if !(-500.0..=9000.0).contains(&b.elevation_m) {
                problem(
                    &format!("{key}.elevation_m"),
                    "must be from -500 to 9000 m".into(),
                );
            }
            if let Some(g) = b.gdd_base_c
                && !(-20.0..=40.0).contains(&g)
            {
                problem(
                    &format!("{key}.gdd_base_c"),
                    "must be from -20 to 40 °C".into(),
                );
            }
            if let Some(Err(e)) = b.harvest_from.as_deref().map(parse_month_day) {
                problem(&format!("{key}.harvest_from"), e);
            }
            AggregateSettings::agronomy_problems(
                &key,
                b.season_start.as_deref(),
                b.kc.as_deref(),
                Some(b.root_zone_mm.unwrap_or(a.root_zone_mm)),
                b.target_depletion_mm,
                b.wind_height_m,
                &mut problem,
            );
        }
        self.alerts.problems(&mut problem);
        if !self.store.raw_retention.is_zero() && self.store.raw_retention < self.validate.max_age {
            problem(
                "store.raw_retention",
                format!(
                    "{} is shorter than validate.max_age ({}): a reading redelivered after retention deleted it would be stored and counted in the rollups a second time; make it at least as long",
                    humantime::format_duration(self.store.raw_retention),
                    humantime::format_duration(self.validate.max_age)
                ),
            );
        }
        if self.health.stuck_after < 2 {
            problem("health.stuck_after", "must be at least 2".into());
        }
        if self.ingest.max_payload_bytes < 64 {
            problem("ingest.max_payload_bytes", "must be at least 64".into());
        }
        if self.ingest.queue_messages == 0 {
            problem("ingest.queue_messages", "must be at least 1".into());
        }
        if self.store.max_batch_readings == 0 {
            problem("store.max_batch_readings", "must be at least 1".into());
        }
        if self.store.path.as_os_str().is_empty() {
            problem("store.path", "must name a file".into());
        }
        let mut names = std::collections::HashSet::new();
        for (i, t) in self.http.tokens.iter().enumerate() {
            if let Err(e) = t.digest() {
                problem(&format!("http.tokens[{i}].hash"), e);
            }
            if let Err(e) = check_token_name(&t.name) {
                problem(&format!("http.tokens[{i}].name"), e.into());
            } else if !names.insert(t.name.as_str()) {
                problem(
                    &format!("http.tokens[{i}].name"),
                    format!(
                        "`{}` names another token too: each needs its own name, for the record of who did what",
                        t.name
                    ),
                );
            }
        }
        if self.http.max_body_bytes < 1024 {
            problem("http.max_body_bytes", "must be at least 1024".into());
        }
        if self.http.tokens.is_empty() && !self.http.listen.ip().is_loopback() {
            problem(
                "http.listen",
                format!(
                    "{} is not a loopback address, and no API tokens are configured: \
                     the API would be open to the network. Bind to 127.0.0.1 (and put a \
                     reverse proxy with authentication in front) until tokens are configured",
                    self.http.listen
                ),
            );
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            problem("log.level", e.to_string());
        }
        out
    }
}

/// Defaults, file and environment merged into one JSON tree, before typing.
fn merged_tree(
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Value, ConfigError> {
    let defaults = config::File::from_str(SHIPPED_TOML, config::FileFormat::Toml);
    let mut builder = config::Config::builder().add_source(defaults);
    if let Some(path) = file {
        if !path.is_file() {
            return Err(ConfigError::Source(format!(
                "{} does not exist or is not a file",
                path.display()
            )));
        }
        builder = builder.add_source(config::File::from(path).format(config::FileFormat::Toml));
    }
    let env = env
        .into_iter()
        .filter(|(k, _)| k.starts_with("ORCHARDD__"))
        .collect();
    builder = builder.add_source(
        config::Environment::with_prefix("ORCHARDD")
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true)
            .list_separator(",")
            .with_list_parse_key("mqtt.topics")
            .source(Some(env)),
    );
    let cfg = builder
        .build()
        .map_err(|e| ConfigError::Source(e.to_string()))?;
    cfg.try_deserialize::<Value>()
        .map_err(|e| ConfigError::Source(e.to_string()))
}

/// Keys present in `tree` that no field of [`Settings`] takes.
fn unknown_keys(tree: &Value) -> Vec<Problem> {
    let known = serde_json::to_value(Settings::default()).expect("settings serialize");
    let mut out = Vec::new();
    walk_unknown(tree, &known, String::new(), &mut out);
    out
}

fn walk_unknown(tree: &Value, known: &Value, prefix: String, out: &mut Vec<Problem>) {
    let (Value::Object(t), Value::Object(k)) = (tree, known) else {
        return;
    };
    let names: BTreeSet<&str> = k.keys().map(String::as_str).collect();
    for (key, value) in t {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match k.get(key) {
            Some(known_child) => walk_unknown(value, known_child, path, out),
            None => out.push(Problem {
                key: path,
                message: format!(
                    "unknown key; known keys here are {}",
                    names.iter().copied().collect::<Vec<_>>().join(", ")
                ),
            }),
        }
    }
}

/// One type problem per section at most: each section is typed on its own, so that
/// `check-config` can report a wrong type in `mqtt` and another in `store` at once.
fn type_problems(tree: &Value) -> Vec<Problem> {
    fn section<T: serde::de::DeserializeOwned>(tree: &Value, name: &str) -> Option<Problem> {
        let v = tree.get(name)?.clone();
        serde_path_to_error::deserialize::<_, T>(v)
            .err()
            .map(|e| Problem {
                key: format!("{name}.{}", e.path()),
                message: e.inner().to_string(),
            })
    }
    [
        section::<BrokerSettings>(tree, "broker"),
        section::<MqttSettings>(tree, "mqtt"),
        section::<IngestSettings>(tree, "ingest"),
        section::<ValidateSettings>(tree, "validate"),
        section::<StoreSettings>(tree, "store"),
        section::<HttpSettings>(tree, "http"),
        section::<LogSettings>(tree, "log"),
        section::<Vec<SourceSettings>>(tree, "sources"),
        section::<RegistrySettings>(tree, "registry"),
        section::<HealthSettings>(tree, "health"),
        section::<InfluxSettings>(tree, "influx"),
        section::<QuerySettings>(tree, "query"),
        section::<AggregateSettings>(tree, "aggregate"),
        section::<Vec<BlockSettings>>(tree, "blocks"),
        section::<AlertSettings>(tree, "alerts"),
        section::<LotSettings>(tree, "lots"),
    ]
    .into_iter()
    .flatten()
    .filter(|p| !p.message.starts_with("unknown field"))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_shipped_file_documents_exactly_the_defaults() {
        let loaded = Settings::load_with_env(None, env(&[])).unwrap();
        assert_eq!(loaded, Settings::default());
    }

    #[test]
    fn environment_overrides_the_file() {
        let s = Settings::load_with_env(
            None,
            env(&[
                ("ORCHARDD__BROKER__EMBEDDED", "false"),
                ("ORCHARDD__MQTT__URL", "mqtt://10.0.0.5:1883"),
                ("ORCHARDD__STORE__PATH", "/var/lib/orchardd/o.db"),
                (
                    "ORCHARDD__MQTT__TOPICS",
                    "a/{orchard}/{block}/{device},b/{orchard}/{block}/{device}",
                ),
                ("ORCHARDD__VALIDATE__MAX_AGE", "2days"),
            ]),
        )
        .unwrap();
        assert!(!s.broker.embedded);
        assert_eq!(s.mqtt.url, "mqtt://10.0.0.5:1883");
        assert_eq!(s.store.path, PathBuf::from("/var/lib/orchardd/o.db"));
        assert_eq!(s.mqtt.topics.len(), 2);
        assert_eq!(s.validate.max_age, Duration::from_secs(2 * 86_400));
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bad.toml");
        std::fs::write(
            &file,
            "[broker]\nembedded = \"often\"\n[store]\npaht = \"x.db\"\n[http]\nlisten = \"0.0.0.0:8080\"\n[nonsense]\na = 1\n",
        )
        .unwrap();
        let Err(ConfigError::Invalid(problems)) = Settings::load_with_env(Some(&file), env(&[]))
        else {
            panic!("expected problems");
        };
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert!(keys.contains(&"broker.embedded"), "{problems:?}");
        assert!(keys.contains(&"store.paht"), "{problems:?}");
        assert!(keys.contains(&"nonsense"), "{problems:?}");
    }

    #[test]
    fn a_public_listen_address_without_tokens_is_refused() {
        let err = Settings::load_with_env(None, env(&[("ORCHARDD__HTTP__LISTEN", "0.0.0.0:8080")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("http.listen") && err.contains("loopback"),
            "{err}"
        );
    }

    #[test]
    fn a_share_group_needs_an_external_broker_and_a_plain_name() {
        let err = Settings::load_with_env(None, env(&[("ORCHARDD__MQTT__SHARE_GROUP", "a/b")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("without `/`"), "{err}");
        assert!(err.contains("broker.embedded = false"), "{err}");
        let s = Settings::load_with_env(
            None,
            env(&[
                ("ORCHARDD__BROKER__EMBEDDED", "false"),
                ("ORCHARDD__MQTT__SHARE_GROUP", "orchardd"),
            ]),
        )
        .unwrap();
        assert_eq!(s.mqtt.share_group.as_deref(), Some("orchardd"));
    }

    #[test]
    fn block_entries_are_checked_one_by_one() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("blocks.toml");
        std::fs::write(
            &file,
            r#"
[aggregate]
season_start = "02-29"
min_hours = 0
[[blocks]]
orchard = "fengjie"
block = "B2"
latitude = 131.0
elevation_m = 240.0
kc = [0.7, 0.7]
[[blocks]]
orchard = "fengjie"
block = "B2"
latitude = 31.0
elevation_m = 240.0
target_depletion_mm = 150.0
"#,
        )
        .unwrap();
        let Err(ConfigError::Invalid(problems)) = Settings::load_with_env(Some(&file), env(&[]))
        else {
            panic!("expected problems");
        };
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "aggregate.min_hours",
                "aggregate.season_start",
                "blocks[0].kc",
                "blocks[0].latitude",
                "blocks[1]",
                "blocks[1].target_depletion_mm"
            ],
            "{problems:?}"
        );

        std::fs::write(
            &file,
            "[[blocks]]\norchard = \"fengjie\"\nblock = \"B2\"\nlatitude = 31.0\nelevation_m = 240.0\nseason_start = \"03-01\"\n",
        )
        .unwrap();
        let s = Settings::load_with_env(Some(&file), env(&[])).unwrap();
        assert_eq!(s.blocks[0].season_start.as_deref(), Some("03-01"));
    }
}
