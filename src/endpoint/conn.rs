//! One client connection, whatever its protocol version: what it may do, and what happens to
//! what it publishes.

use std::cell::{Cell, RefCell};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Shared;
use super::hub::{Delivery, Message, Properties, QoS};
use super::ingest::WriterGone;
use super::users::User;
use crate::validate::{Reason, Rejection};

/// What became of a publish.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Committed (readings) and routed to subscribers.
    Accepted,
    /// Outside the user's topic patterns: kept in the quarantine as `not_authorized`.
    NotAuthorized,
}

pub struct Conn {
    pub shared: Arc<Shared>,
    pub client: String,
    pub id: u64,
    pub user: Option<Arc<User>>,
    /// Published when the connection ends without a DISCONNECT.
    pub will: RefCell<Option<Message>>,
    /// Cancelled when the connection has ended, whatever ended it.
    pub closed: CancellationToken,
    /// Where retained messages for a new subscription go.
    pub deliveries: mpsc::Sender<Delivery>,
    inflight: Cell<u32>,
    /// Payload bytes of the publishes in flight.
    inflight_bytes: Cell<usize>,
    /// Woken whenever a publish of this connection has been answered.
    window: tokio::sync::Notify,
}

impl Conn {
    pub fn new(
        shared: Arc<Shared>,
        client: String,
        id: u64,
        user: Option<Arc<User>>,
        will: Option<Message>,
        deliveries: mpsc::Sender<Delivery>,
    ) -> Self {
        Self {
            shared,
            client,
            id,
            user,
            will: RefCell::new(will),
            closed: CancellationToken::new(),
            deliveries,
            inflight: Cell::new(0),
            inflight_bytes: Cell::new(0),
            window: tokio::sync::Notify::new(),
        }
    }

    /// True when the user may publish to `topic` (anonymous clients, only allowed on a
    /// loopback listener, may publish anywhere).
    pub fn may_publish(&self, topic: &str) -> bool {
        self.user.as_ref().is_none_or(|u| u.may_publish(topic))
    }

    pub fn may_subscribe(&self, filter: &str) -> bool {
        self.user.as_ref().is_none_or(|u| u.may_subscribe(filter))
    }

    /// Handles one PUBLISH: readings are committed before this returns, other messages are
    /// routed to subscribers (and stored first when they must outlive a restart).
    pub async fn publish(
        &self,
        topic: &str,
        payload: Bytes,
        qos: QoS,
        retain: bool,
        properties: Option<Arc<Properties>>,
    ) -> Result<Outcome, WriterGone> {
        let metrics = &self.shared.metrics;
        metrics.mqtt_publishes_in.inc();
        let started = Instant::now();
        let _window = InflightGuard::enter(self, payload.len());
        let outcome = if !self.may_publish(topic) {
            metrics.mqtt_publishes_refused.inc();
            let user = self.user.as_ref().map_or("", |u| u.name.as_str());
            tracing::warn!(client = %self.client, user, topic, "mqtt endpoint: publish outside the user's topic patterns refused");
            let rejection = Rejection::new(
                Reason::NotAuthorized,
                format!(
                    "MQTT user `{user}` (client `{}`) may not publish to `{}` (broker.users)",
                    self.client,
                    crate::model::truncate(topic, 120)
                ),
            );
            self.shared
                .ingest
                .quarantine(topic, payload, None, rejection)
                .await?;
            Outcome::NotAuthorized
        } else {
            if self.shared.ingest.wants(topic) {
                self.shared.ingest.commit(topic, payload.clone()).await?;
            }
            let routed = self.shared.hub.publish(Message {
                topic: Arc::from(topic),
                payload,
                qos,
                retain,
                properties,
                origin: self.id,
            });
            if let Some(stored) = routed {
                stored.await.map_err(|_| WriterGone)?;
            }
            Outcome::Accepted
        };
        if qos != QoS::AtMostOnce {
            metrics
                .mqtt_ack_seconds
                .observe(started.elapsed().as_secs_f64());
        }
        Ok(outcome)
    }

    /// Adds subscriptions; their retained messages follow the SUBACK.
    pub fn subscribe(&self, granted: Vec<(String, super::hub::SubOptions)>) {
        let retained = self.shared.hub.subscribe(&self.client, self.id, &granted);
        if retained.is_empty() {
            return;
        }
        let tx = self.deliveries.clone();
        let shared = self.shared.clone();
        let client = self.client.clone();
        // Spawned, so that the SUBACK this call returns is written first.
        ntex_rt::spawn(async move {
            for d in retained {
                if tx.try_send(d).is_err() {
                    shared.metrics.mqtt_deliveries_dropped.inc();
                    tracing::warn!(
                        client,
                        "mqtt endpoint: a retained message was dropped: the delivery queue is full"
                    );
                }
            }
        });
    }

    /// The connection ended: publish the will unless the client said goodbye.
    pub fn ended(&self) {
        if self.closed.is_cancelled() {
            return;
        }
        if let Some(will) = self.will.borrow_mut().take() {
            tracing::info!(client = %self.client, topic = %will.topic, "mqtt endpoint: connection lost; publishing its will");
            let _ = self.shared.hub.publish(will);
        }
        self.closed.cancel();
    }
}

impl Conn {
    /// Returns once the connection may have one more publish in flight. ntex-mqtt asks this
    /// before it reads the next packet, so a connection whose window is full of publishes
    /// waiting for the store is not read: back-pressure that holds the client, never loss.
    pub async fn window_open(&self) {
        let full = || {
            self.inflight.get() >= self.shared.max_inflight
                || self.inflight_bytes.get() >= WINDOW_BYTES
        };
        if !full() {
            return;
        }
        let paused = &self.shared.metrics.mqtt_paused_connections;
        paused.inc();
        while full() {
            self.window.notified().await;
        }
        paused.dec();
    }
}

/// Payload bytes one connection may have waiting for the store, whatever `max_inflight` says,
/// so that large messages cannot pile up: at most this plus one packet per connection.
const WINDOW_BYTES: usize = 1024 * 1024;

/// Counts a publish against the connection's in-flight window while it waits for the store.
struct InflightGuard<'a>(&'a Conn, usize);

impl<'a> InflightGuard<'a> {
    fn enter(conn: &'a Conn, bytes: usize) -> Self {
        conn.inflight.set(conn.inflight.get() + 1);
        conn.inflight_bytes.set(conn.inflight_bytes.get() + bytes);
        Self(conn, bytes)
    }
}

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        self.0.inflight.set(self.0.inflight.get() - 1);
        self.0
            .inflight_bytes
            .set(self.0.inflight_bytes.get() - self.1);
        self.0.window.notify_one();
    }
}
