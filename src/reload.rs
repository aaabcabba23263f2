//! SIGHUP (`systemctl reload orchardd`): the configuration is read again and what can change
//! without a restart is applied: the alert rules, the devices file, the notification channels,
//! the MQTT users, the API tokens and `store.max_bytes`. Ingest never stops, so no message is dropped.
//!
//! A configuration with any problem is refused whole, each problem logged with its key, and
//! everything keeps running as it was. Changes to settings that need a restart (listeners, the
//! store, the broker address...) are named in the log and wait for the next start.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::alerts::notify::Notifiers;
use crate::alerts::rules::Rule;
use crate::api::Tokens;
use crate::config::{ConfigError, Settings};
use crate::endpoint::users::Users;
use crate::registry::Snapshot;
use crate::store::Admin;

/// A value that a reload may replace while readers hold the one they took.
#[derive(Debug, Default)]
pub struct Live<T>(RwLock<Arc<T>>);

impl<T> Live<T> {
    pub fn new(value: T) -> Self {
        Self(RwLock::new(Arc::new(value)))
    }

    pub fn get(&self) -> Arc<T> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set(&self, value: T) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(value);
    }
}

/// The notification channels' tasks, which a reload stops and starts again.
pub struct Channels {
    pub admin: Admin,
    pub changed: Arc<watch::Sender<u64>>,
    pub shutdown: CancellationToken,
    running: CancellationToken,
}

impl Channels {
    /// Starts `notifiers` and registers them, with `mqtt`, as the channels new events go to.
    pub async fn start(
        admin: Admin,
        changed: Arc<watch::Sender<u64>>,
        shutdown: CancellationToken,
        settings: &Settings,
        notifiers: Notifiers,
    ) -> Result<Self, crate::store::StoreError> {
        let mut c = Self {
            admin,
            changed,
            running: shutdown.child_token(),
            shutdown,
        };
        c.replace(settings, notifiers).await?;
        Ok(c)
    }

    async fn replace(
        &mut self,
        settings: &Settings,
        notifiers: Notifiers,
    ) -> Result<(), crate::store::StoreError> {
        let names = channel_names(settings, &notifiers);
        self.admin
            .write(move |c| crate::alerts::store::set_channels(c, &names))
            .await?;
        // What an old channel task had not delivered stays in the outbox, and the new task
        // of the same name delivers it.
        self.running.cancel();
        self.running = self.shutdown.child_token();
        notifiers.spawn(&self.admin, &self.changed, &self.running);
        Ok(())
    }
}

/// The channels alert events are delivered on: MQTT in either mode, and each notifier, less
/// those kept for escalations only.
pub fn channel_names(settings: &Settings, notifiers: &Notifiers) -> Vec<String> {
    let mut channels: Vec<String> = vec!["mqtt".into()];
    channels.extend(notifiers.names());
    if let Some(e) = &settings.alerts.escalation
        && e.exclusive
    {
        channels.retain(|c| !e.channels.contains(c));
    }
    channels
}

/// Everything a reload replaces.
pub struct Reloader {
    /// The file orchardd was started with, read again on each SIGHUP.
    pub file: Option<PathBuf>,
    pub running: Settings,
    pub rules: watch::Sender<Arc<Vec<Rule>>>,
    pub registry: Arc<watch::Sender<Snapshot>>,
    pub tokens: Arc<Live<Tokens>>,
    /// The endpoint's users, in embedded mode.
    pub users: Option<Arc<Live<Users>>>,
    pub channels: Channels,
    /// `store.max_bytes`, for the writer.
    pub max_bytes: watch::Sender<u64>,
    pub utc_offset_ms: i64,
}

impl Reloader {
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGHUP; the configuration is read only at start-up");
                return;
            }
        };
        loop {
            tokio::select! {
                got = hup.recv() => if got.is_none() { return },
                _ = shutdown.cancelled() => return,
            }
            tracing::info!(file = ?self.file, "SIGHUP: reading the configuration again");
            match self.reload().await {
                Ok(summary) => tracing::info!("SIGHUP: configuration reloaded: {summary}"),
                Err(problems) => {
                    for p in &problems {
                        tracing::error!(problem = %p, "SIGHUP: configuration refused");
                    }
                    tracing::error!(
                        problems = problems.len(),
                        "SIGHUP: the new configuration has problems; everything keeps running as it was"
                    );
                }
            }
        }
    }

    /// Checks everything first, then applies; returns what it applied.
    pub async fn reload(&mut self) -> Result<String, Vec<String>> {
        let new = match Settings::load(self.file.as_deref()) {
            Ok(s) => s,
            Err(ConfigError::Invalid(problems)) => {
                return Err(problems.iter().map(ToString::to_string).collect());
            }
            Err(e) => return Err(vec![e.to_string()]),
        };
        let users = Users::from_settings(&new.broker.users).map_err(|e| vec![e])?;
        let notifiers = Notifiers::new(&new.alerts, self.utc_offset_ms, self.rules.subscribe())
            .map_err(|e| vec![format!("alerts: {e}")])?;
        // The devices file: read and applied to the store in one go, or refused untouched.
        let file = new.registry.file.clone();
        let registry = self
            .channels
            .admin
            .write(move |c| Ok(crate::daemon::load_registry(c, &file).map_err(|e| e.to_string())))
            .await
            .map_err(|e| vec![e.to_string()])?
            .map_err(|e| vec![e])?;
        let devices = registry.len();
        self.registry.send_replace(Arc::new(registry));
        self.rules.send_replace(new.rules.clone());
        self.tokens.set(Tokens::new(&new.http.tokens));
        self.max_bytes.send_replace(new.store.max_bytes);
        let user_count = users.len();
        if let Some(live) = &self.users {
            live.set(users);
        }
        let channels = channel_names(&new, &notifiers);
        self.channels
            .replace(&new, notifiers)
            .await
            .map_err(|e| vec![e.to_string()])?;
        for section in needs_restart(&self.running, &new) {
            tracing::warn!(
                section,
                "SIGHUP: `{section}` changed; it takes effect when orchardd is restarted"
            );
        }
        let summary = format!(
            "{} rules, {devices} devices, {} tokens, {user_count} MQTT users, channels {}",
            new.rules.len(),
            new.http.tokens.len(),
            channels.join(", ")
        );
        self.running = new;
        Ok(summary)
    }
}

/// The sections that differ between `old` and `new` in what a reload does not apply.
pub fn needs_restart(old: &Settings, new: &Settings) -> Vec<&'static str> {
    // Blank out what a reload applies, then compare the rest.
    let mask = |s: &Settings| {
        let mut s = s.clone();
        s.broker.users.clear();
        s.http.tokens.clear();
        s.registry = Default::default();
        s.store.max_bytes = 0;
        s.alerts.rules_dir = None;
        s.alerts.quiet_hours = None;
        s.alerts.webhooks.clear();
        s.alerts.dingtalk.clear();
        s.alerts.wecom.clear();
        s.alerts.feishu.clear();
        s
    };
    let (a, b) = (mask(old), mask(new));
    let mut out = Vec::new();
    let mut check = |name: &'static str, same: bool| {
        if !same {
            out.push(name);
        }
    };
    check("broker", a.broker == b.broker);
    check("mqtt", a.mqtt == b.mqtt);
    check("ingest", a.ingest == b.ingest);
    check("validate", a.validate == b.validate);
    check("store", a.store == b.store);
    check("http", a.http == b.http);
    check("log", a.log == b.log);
    check("sources", a.sources == b.sources);
    check("health", a.health == b.health);
    check("influx", a.influx == b.influx);
    check("query", a.query == b.query);
    check("aggregate", a.aggregate == b.aggregate);
    check("blocks", a.blocks == b.blocks);
    check("alerts", a.alerts == b.alerts);
    check("lots", a.lots == b.lots && a.grading == b.grading);
    out
}
