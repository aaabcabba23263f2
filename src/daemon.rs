//! `orchardd run`: wires broker, ingest, writer and HTTP API together, and takes them
//! down in order on SIGTERM or SIGINT: stop reading, commit, acknowledge, exit 0.

use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::aggregate::indices::Agronomy;
use crate::alerts::absence::Activity;
use crate::api::{self, AppState};
use crate::config::QueryBackend;
use crate::config::Settings;
use crate::endpoint::{self, hub::Hub, ingest::IngestPort, store::SessionStore};
use crate::influx::forward::Forwarder;
use crate::influx::query::InfluxQuery;
use crate::influx::write::InfluxWriter;
use crate::ingest::mqtt::{Subscription, parse_url};
use crate::ingest::{Decoder, RateLimiter};
use crate::metrics::Metrics;
use crate::model::TimestampMs;
use crate::registry::{self, Registry};
use crate::store::devices::{self, UpdatedBy};
use crate::store::rollups::Alignment;
use crate::store::writer::{Heartbeat, Writer};
use crate::store::{self, Admin, ReadPool, StoreError, WriteGate};
use crate::systemd;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Endpoint(#[from] endpoint::StartError),
    #[error("http.listen {addr}: {source}")]
    HttpBind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("mqtt: {0}")]
    Mqtt(String),
    #[error("{0}")]
    Influx(String),
    #[error("alerts: {0}")]
    Alerts(String),
    #[error("registry.file {0}")]
    Registry(#[from] registry::RegistryError),
    #[error("a pipeline task failed: {0}")]
    Task(String),
}

/// Runs orchardd on `settings`, read from `file` (read again on SIGHUP).
pub async fn run(settings: Settings, file: Option<std::path::PathBuf>) -> Result<(), DaemonError> {
    let metrics = Arc::new(Metrics::default());
    let mut writer_conn = store::open_writer(&settings.store)?;
    let offset = utc_offset_ms(&settings);
    match store::rollups::align(&mut writer_conn, settings.aggregate.rollups, offset)? {
        Alignment::Rebuilt {
            windows,
            windows_lost,
        } => tracing::warn!(
            windows,
            windows_lost,
            utc_offset = %settings.aggregate.utc_offset,
            "rollups rebuilt from the raw readings: the UTC offset changed or rollups were off; \
             windows whose raw readings retention had deleted are gone"
        ),
        Alignment::Kept | Alignment::Off => {}
    }
    tracing::info!(path = %settings.store.path.display(), "store open");
    let pool = ReadPool::new(&settings.store.path);
    let registry = load_registry(&writer_conn, &settings.registry.file)?;
    let (registry_tx, registry_rx) = watch::channel(Arc::new(registry));
    // What each device was last heard of: every device with readings counts as heard now.
    let activity = Arc::new(std::sync::Mutex::new(Activity::load(
        &writer_conn,
        TimestampMs::now().0,
    )?));

    let listener =
        api::bind(settings.http.listen)
            .await
            .map_err(|source| DaemonError::HttpBind {
                addr: settings.http.listen,
                source,
            })?;
    tracing::info!(listen = %settings.http.listen, "HTTP API listening");

    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));

    // Every writing connection of this process takes its turn through one gate.
    let gate = WriteGate::default();
    let admin = Admin::open(&settings.store, gate.clone())?;
    let heartbeat = Arc::new(Heartbeat::default());
    let (max_bytes_tx, max_bytes_rx) = watch::channel(settings.store.max_bytes);
    let writer = Writer::new(
        writer_conn,
        metrics.clone(),
        heartbeat.clone(),
        settings.store.max_batch_readings,
        settings.health.stuck_after,
    )
    .with_outbox(settings.influx.enabled)
    .with_utc_offset(utc_offset_ms(&settings))
    .with_rollups(settings.aggregate.rollups)
    .with_max_bytes(max_bytes_rx)
    .with_gate(gate.clone());
    // Bumped by whoever opens, answers or resolves an alert: the notifiers have work.
    let alerts_changed = Arc::new(watch::Sender::new(0u64));
    let (rules_tx, rules_rx) = watch::channel(settings.rules.clone());
    // The channels alert events are delivered on in this run, registered before the writer
    // writes any event.
    let notifiers = crate::alerts::notify::Notifiers::new(
        &settings.alerts,
        utc_offset_ms(&settings),
        rules_tx.subscribe(),
    )
    .map_err(DaemonError::Alerts)?;
    if let Some(e) = &settings.alerts.escalation {
        let (after_ms, to) = (e.after.as_millis() as i64, e.channels.clone());
        on_the_clock(
            admin.clone(),
            e.after,
            "critical alerts nobody acknowledged: escalated",
            move |c, now| crate::alerts::store::escalate(c, after_ms, &to, now),
            alerts_changed.clone(),
            shutdown.clone(),
        );
    }
    let repeat = settings.alerts.repeat_every;
    if !repeat.is_zero() {
        let every_ms = repeat.as_millis() as i64;
        on_the_clock(
            admin.clone(),
            repeat,
            "alerts still firing: reminded",
            move |c, now| crate::alerts::store::remind(c, every_ms, now),
            alerts_changed.clone(),
            shutdown.clone(),
        );
    }
    // Registered (with `mqtt`, and less those for escalations only) before the writer writes
    // any event; started now, started again by a reload.
    let channels = crate::reload::Channels::start(
        admin.clone(),
        alerts_changed.clone(),
        shutdown.clone(),
        &settings,
        notifiers,
    )
    .await?;
    tokio::spawn(
        crate::alerts::absence::Watch {
            admin: admin.clone(),
            activity: activity.clone(),
            rules: rules_rx.clone(),
            registry: registry_rx.clone(),
            default_interval: settings.health.expected_interval,
            utc_offset_ms: utc_offset_ms(&settings),
            changed: alerts_changed.clone(),
        }
        .run(shutdown.clone()),
    );
    tokio::spawn(
        crate::alerts::daily::DailyRules {
            pool: pool.clone(),
            admin: admin.clone(),
            agronomy: Arc::new(Agronomy {
                aggregate: settings.aggregate.clone(),
                blocks: settings.blocks.clone(),
            }),
            activity: activity.clone(),
            rules: rules_rx.clone(),
            every: settings.alerts.daily_every,
            default_interval: settings.health.expected_interval,
            changed: alerts_changed.clone(),
        }
        .run(shutdown.clone()),
    );
    let writer = writer
        .with_rules(rules_rx, alerts_changed.clone())
        .with_activity(activity);
    {
        let from = settings.alerts.rules_dir.as_ref().map_or_else(
            || "the built-in citrus pack".to_owned(),
            |d| d.display().to_string(),
        );
        tracing::info!(rules = settings.rules.len(), %from, "alert rules loaded");
    }

    let (subscribed_tx, subscribed_rx) = watch::channel(false);
    let decoder = Decoder::from_settings(&settings, registry_rx)
        .map_err(|e| DaemonError::Mqtt(e.to_string()))?;
    let limiter = RateLimiter::new(settings.ingest.device_rate_limit);
    let (ingest, writer, users) = if settings.broker.embedded {
        let (queue_tx, queue_rx) = mpsc::channel(settings.ingest.queue_messages);
        let (committed_tx, committed_rx) = mpsc::unbounded_channel();
        let writer = spawn_writer(writer, queue_rx, committed_tx)?;
        tokio::spawn(endpoint::ingest::acknowledge_commits(committed_rx));
        // The listener opens only now, with the store open and the writer running.
        let (session_store, stored) = SessionStore::open(&settings.store, gate.clone())?;
        let hub = Hub::new(
            session_store,
            stored,
            metrics.clone(),
            settings.broker.session_queue_messages,
        );
        let listeners = endpoint::bind(&settings.broker)?;
        let users = Arc::new(crate::reload::Live::new(listeners.users.clone()));
        let shared = Arc::new(endpoint::Shared {
            hub,
            ingest: IngestPort::new(
                decoder.clone(),
                queue_tx.downgrade(),
                limiter,
                metrics.clone(),
            ),
            users: users.clone(),
            metrics: metrics.clone(),
            max_inflight: u32::from(settings.broker.max_inflight),
            max_send: settings.broker.max_send,
        });
        let running = endpoint::start(listeners, &settings.broker, shared.clone())?;
        tokio::spawn(crate::alerts::notify::run(
            crate::alerts::notify::Mqtt(shared.clone()),
            // A feed for software: never held back by quiet hours.
            None,
            admin.clone(),
            alerts_changed.subscribe(),
            shutdown.clone(),
        ));
        tokio::spawn(endpoint::sweep_sessions(shared, shutdown.clone()));
        metrics.mqtt_connected.set(1);
        subscribed_tx.send_replace(true);
        let shutdown = shutdown.clone();
        let ingest = tokio::spawn(async move {
            shutdown.cancelled().await;
            tracing::info!("mqtt endpoint: stopping; clients resend what was not acknowledged");
            running.shutdown().await;
            // The last strong sender: once it is gone the writer drains its queue and stops.
            drop(queue_tx);
            Ok::<(), String>(())
        });
        (ingest, writer, Some(users))
    } else {
        let (queue_tx, queue_rx) = mpsc::channel(settings.ingest.queue_messages);
        let (committed_tx, committed_rx) = mpsc::unbounded_channel();
        let writer = spawn_writer(writer, queue_rx, committed_tx)?;
        let endpoint = parse_url(&settings.mqtt.url).map_err(DaemonError::Mqtt)?;
        let alerts_client = format!("{}-alerts", settings.mqtt.client_id);
        let options = crate::ingest::mqtt::options(&settings.mqtt, &endpoint, &alerts_client)
            .map_err(DaemonError::Mqtt)?;
        tokio::spawn(crate::alerts::notify::run(
            crate::alerts::notify::Broker::start(
                options,
                settings.mqtt.reconnect_max_delay,
                shutdown.clone(),
            ),
            // A feed for software: never held back by quiet hours.
            None,
            admin.clone(),
            alerts_changed.subscribe(),
            shutdown.clone(),
        ));
        let subscription = Subscription {
            decoder: decoder.clone(),
            limiter,
            settings: settings.mqtt.clone(),
            endpoint,
            metrics: metrics.clone(),
        };
        let ingest =
            tokio::spawn(subscription.run(queue_tx, committed_rx, subscribed_tx, shutdown.clone()));
        (ingest, writer, None)
    };

    let forwarder = if settings.influx.enabled {
        let forwarder = Forwarder {
            writer: InfluxWriter::new(&settings.influx).map_err(DaemonError::Influx)?,
            settings: settings.influx.clone(),
            pool: pool.clone(),
            admin: admin.clone(),
            metrics: metrics.clone(),
        };
        tracing::info!(url = %settings.influx.url, api = ?settings.influx.api, "forwarding to InfluxDB");
        Some(tokio::spawn(forwarder.run(shutdown.clone())))
    } else {
        None
    };
    if !settings.store.raw_retention.is_zero() {
        tokio::spawn(retention(
            admin.clone(),
            settings.store.clone(),
            Arc::new(Agronomy {
                aggregate: settings.aggregate.clone(),
                blocks: settings.blocks.clone(),
            }),
            settings.health.expected_interval,
            shutdown.clone(),
        ));
    }
    let registry_tx = Arc::new(registry_tx);
    let tokens = Arc::new(crate::reload::Live::new(api::Tokens::new(
        &settings.http.tokens,
    )));
    tokio::spawn(
        crate::reload::Reloader {
            file,
            running: settings.clone(),
            rules: rules_tx,
            registry: registry_tx.clone(),
            tokens: tokens.clone(),
            users,
            channels,
            max_bytes: max_bytes_tx,
            utc_offset_ms: utc_offset_ms(&settings),
        }
        .run(shutdown.clone()),
    );
    tokio::spawn(watch_store(
        heartbeat.clone(),
        admin.clone(),
        alerts_changed.clone(),
        shutdown.clone(),
    ));
    let state = AppState {
        pool,
        admin,
        metrics,
        subscribed: subscribed_rx.clone(),
        registry: registry_tx,
        decoder,
        expected_interval: settings.health.expected_interval,
        forwarding: settings.influx.enabled,
        utc_offset_ms: utc_offset_ms(&settings),
        rollups: settings.aggregate.rollups,
        agronomy: Arc::new(Agronomy {
            aggregate: settings.aggregate.clone(),
            blocks: settings.blocks.clone(),
        }),
        alerts_changed: alerts_changed.clone(),
        alert_streams: Arc::new(tokio::sync::Semaphore::new(api::MAX_STREAMS)),
        exports: Arc::new(tokio::sync::Semaphore::new(api::MAX_EXPORTS)),
        heartbeat: heartbeat.clone(),
        shutdown: shutdown.clone(),
        lots: Arc::new(settings.lots.clone()),
        tokens,
        max_body_bytes: settings.http.max_body_bytes,
        influx: match settings.query.backend {
            QueryBackend::Embedded => None,
            QueryBackend::Influx => Some(Arc::new(
                InfluxQuery::new(&settings.influx)
                    .map_err(|e| DaemonError::Influx(e.to_string()))?,
            )),
        },
    };
    let http = tokio::spawn(api::serve(listener, state, shutdown.clone()));
    tokio::spawn(notify_ready(subscribed_rx, shutdown.clone()));
    tokio::spawn(systemd::watchdog(heartbeat, shutdown.clone()));

    let ingest_result = ingest.await;
    // Ingest returns after the writer has committed everything it received.
    let writer_result = tokio::task::spawn_blocking(move || writer.join()).await;
    shutdown.cancel();
    // Alert streams end at the cancel; one whose client stopped reading cannot be told, and
    // must not hold the exit.
    if tokio::time::timeout(std::time::Duration::from_secs(10), http)
        .await
        .is_err()
    {
        tracing::warn!("HTTP API: connections still open after 10 s of shutdown; closing them");
    }
    if let Some(f) = forwarder {
        let _ = f.await;
    }
    if !matches!(writer_result, Ok(Ok(()))) {
        return Err(DaemonError::Task("the store writer panicked".into()));
    }
    match ingest_result {
        Ok(Ok(())) => {
            tracing::info!("orchardd stopped cleanly");
            Ok(())
        }
        Ok(Err(e)) => Err(DaemonError::Mqtt(e)),
        Err(e) => Err(DaemonError::Task(e.to_string())),
    }
}

/// `aggregate.utc_offset`, which `Settings::load` has already checked.
fn utc_offset_ms(settings: &Settings) -> i64 {
    settings.aggregate.utc_offset_ms().unwrap_or(0)
}

/// Deletes raw readings past `store.raw_retention`, every `store.retention_interval`, keeping
/// the day summaries the daily indices need of what it deletes.
async fn retention(
    admin: Admin,
    store: crate::config::StoreSettings,
    agronomy: Arc<Agronomy>,
    default_interval: std::time::Duration,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(store.retention_interval);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let cutoff = crate::model::TimestampMs(
            crate::model::TimestampMs::now().0 - store.raw_retention.as_millis() as i64,
        );
        let agronomy = agronomy.clone();
        let apply = move |c: &mut rusqlite::Connection| {
            let summaries = store::retention::Summaries {
                agronomy: &agronomy,
                default_interval,
            };
            store::retention::apply(c, cutoff, Some(&summaries))
        };
        match admin.write(apply).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "retention: old raw readings deleted"),
            Err(e) => tracing::error!(error = %e, "retention failed"),
        }
    }
}

/// Applies the devices file to the store, then reads the whole registry back.
pub(crate) fn load_registry(
    conn: &rusqlite::Connection,
    file: &std::path::Path,
) -> Result<Registry, DaemonError> {
    let mut blocks = Vec::new();
    match registry::load_file(file)? {
        None => {
            tracing::info!(file = %file.display(), "no devices file; devices are assigned through the API")
        }
        Some(registry::RegistryFile {
            devices: entries,
            blocks: listed,
        }) => {
            blocks = listed;
            for entry in &entries {
                if let Some((stored, by)) = devices::get(conn, entry.id.as_str())?
                    && by == "api"
                    && stored != *entry
                {
                    tracing::warn!(device = %entry.id, "the devices file replaces the entry last changed through the API");
                }
                devices::upsert(conn, entry, UpdatedBy::File)?;
            }
            tracing::info!(file = %file.display(), devices = entries.len(), "devices file applied");
        }
    }
    Ok(Registry::new(devices::all(conn)?).with_blocks(blocks))
}

/// Runs the store writer on its own thread; each committed batch's tokens go to `committed`.
fn spawn_writer<A: Send + 'static>(
    writer: Writer,
    queue: mpsc::Receiver<(crate::store::writer::Envelope, A)>,
    committed: mpsc::UnboundedSender<Vec<A>>,
) -> Result<std::thread::JoinHandle<()>, DaemonError> {
    std::thread::Builder::new()
        .name("store-writer".into())
        .spawn(move || writer.run(queue, committed))
        .map_err(|e| DaemonError::Task(e.to_string()))
}

async fn notify_ready(mut subscribed: watch::Receiver<bool>, shutdown: CancellationToken) {
    tokio::select! {
        r = subscribed.wait_for(|s| *s) => if r.is_ok() {
            systemd::ready();
            tracing::info!("orchardd ready");
        },
        _ = shutdown.cancelled() => {}
    }
}

/// Every tenth of `wait` (1 s to 30 s, so at most that late), runs `task` on the store with
/// the time it is, and tells the notifiers when it changed alerts; `what` says in the log
/// what the changes were.
fn on_the_clock<F>(
    admin: Admin,
    wait: std::time::Duration,
    what: &'static str,
    task: F,
    changed: Arc<watch::Sender<u64>>,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()>
where
    F: Fn(&mut rusqlite::Connection, i64) -> Result<u64, crate::store::StoreError>
        + Clone
        + Send
        + 'static,
{
    let every = (wait / 10).clamp(
        std::time::Duration::from_secs(1),
        std::time::Duration::from_secs(30),
    );
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.cancelled() => return,
            }
            let now = TimestampMs::now().0;
            let task = task.clone();
            match admin.write(move |c| task(c, now)).await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(alerts = n, "{what}");
                    changed.send_modify(|g| *g += 1);
                }
                Err(e) => tracing::error!(error = %e, "{what}: cannot; trying again"),
            }
        }
    })
}

/// Opens the critical store-unwritable alert once commits have failed for a few seconds, and
/// resolves it when they succeed again. On a really full disk this write may fail too; it is
/// tried again every second, and the log, `/readyz` and `/metrics` say it meanwhile.
async fn watch_store(
    heartbeat: Arc<Heartbeat>,
    admin: Admin,
    changed: Arc<watch::Sender<u64>>,
    shutdown: CancellationToken,
) {
    const GRACE_MS: i64 = 3000;
    // An alert left open by an earlier run is resolved at the first tick if all is well.
    let mut raised = true;
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let now = TimestampMs::now().0;
        let failing = heartbeat.failing();
        let want = match &failing {
            None => false,
            Some((since, _)) if now - since >= GRACE_MS => true,
            Some(_) => continue,
        };
        if want == raised {
            continue;
        }
        let f = failing.clone();
        let write = move |c: &mut rusqlite::Connection| {
            crate::alerts::store::store_alert(c, f.as_ref().map(|(s, e)| (*s, e.as_str())), now)
        };
        match admin.write(write).await {
            Ok(alert_changed) => {
                raised = want;
                if alert_changed {
                    changed.send_modify(|generation| *generation += 1);
                    match &failing {
                        Some((_, error)) => {
                            tracing::error!(%error, "store unwritable: critical alert opened")
                        }
                        None => tracing::info!("store writable again: its alert is resolved"),
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "the store-unwritable alert could not be written yet")
            }
        }
    }
}

async fn stop_on_signal(shutdown: CancellationToken) {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
    systemd::stopping();
    shutdown.cancel();
}
