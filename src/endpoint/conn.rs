//! One client connection, whatever its protocol version: what it may do, and what happens to
//! what it publishes.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Shared;
use super::hub::{Delivery, Message, Properties, QoS, Registration};
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
    /// Publishes read but waiting for a place in the window.
    waiting: Cell<u32>,
    /// Everyone waiting for the window to open, woken whenever a publish is answered: the
    /// dispatcher before it reads the next packet, and each call, which ntex-service checks
    /// for readiness again. Every one of them must be woken, or a call never completes and
    /// holds back the PUBACKs queued behind it.
    window: std::cell::RefCell<Vec<std::task::Waker>>,
    /// Counted in `mqtt_paused_connections` right now.
    paused: Cell<bool>,
    /// A publish whose payload is still arriving in chunks: the window must stay open until
    /// it is whole, or the chunks would never be read.
    streaming: Cell<bool>,
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
            waiting: Cell::new(0),
            window: std::cell::RefCell::new(Vec::new()),
            paused: Cell::new(false),
            streaming: Cell::new(false),
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
    /// Returns once the connection may have one more publish in flight, waiting while
    /// `broker.max_inflight` of its publishes wait for the store. The client is held back by
    /// its own MQTT in-flight window (3.1.1) or by the receive maximum orchardd announced and
    /// ntex-mqtt enforces (5): it gets no PUBACK, so it sends no more. A 3.1.1 client that
    /// sends far more than any window ahead ([`WAITING_CAP`]) is disconnected instead of
    /// buffered without bound; it resends after reconnecting, so nothing is lost.
    ///
    /// (Waiting here rather than in the service's readiness: ntex-mqtt 8.2 stalls a
    /// connection whose publish service reports not-ready while calls are in flight.)
    pub async fn window_open(&self) -> Result<(), super::EndpointError> {
        if self.waiting.get() >= WAITING_CAP {
            tracing::warn!(client = %self.client, waiting = WAITING_CAP, "mqtt endpoint: the client sent far more publishes ahead of their PUBACKs than any in-flight window; disconnecting it (it resends after reconnecting)");
            return Err(super::EndpointError::Overrun);
        }
        self.waiting.set(self.waiting.get() + 1);
        let _waiting = Waiting(self);
        std::future::poll_fn(|cx| {
            if self.window_full() {
                let mut waiting = self.window.borrow_mut();
                if !waiting.iter().any(|w| w.will_wake(cx.waker())) {
                    waiting.push(cx.waker().clone());
                }
                if !self.paused.replace(true) {
                    self.shared.metrics.mqtt_paused_connections.inc();
                }
                std::task::Poll::Pending
            } else {
                std::task::Poll::Ready(())
            }
        })
        .await;
        Ok(())
    }

    fn open_window(&self) {
        for w in self.window.take() {
            w.wake();
        }
    }

    fn window_full(&self) -> bool {
        !self.streaming.get()
            && (self.inflight.get() >= self.shared.max_inflight
                || self.inflight_bytes.get() >= WINDOW_BYTES)
    }

    /// Reads a publish's whole payload, keeping the window open for its chunks meanwhile.
    pub async fn read_payload<F, E>(&self, read: F) -> Result<bytes::Bytes, E>
    where
        F: Future<Output = Result<ntex_bytes::Bytes, E>>,
    {
        self.streaming.set(true);
        self.open_window();
        let payload = read.await;
        self.streaming.set(false);
        payload.map(|p| bytes::Bytes::copy_from_slice(&p))
    }
}

/// Publishes of one connection that may wait for a place in its window before orchardd stops
/// taking them and closes the connection.
pub const WAITING_CAP: u32 = 1000;

/// Counts a publish waiting for a place in the window.
struct Waiting<'a>(&'a Conn);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.set(self.0.waiting.get() - 1);
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
        if !self.0.window_full() {
            if self.0.paused.replace(false) {
                self.0.shared.metrics.mqtt_paused_connections.dec();
            }
            self.0.open_window();
        }
    }
}

/// What the delivery loop needs of one protocol version's sink.
pub trait Outbound {
    fn is_open(&self) -> bool;
    /// Closes the connection because another connection took over its client id.
    fn close_taken_over(&self);
    /// Sends one message, waiting for its acknowledgement at QoS 1 and 2.
    fn send(&self, d: &Delivery) -> impl Future<Output = Result<(), ()>>;
}

/// Sends what the hub routes to a connection, in order, each QoS 1/2 message waiting for its
/// acknowledgement; hands back to the hub what it could not deliver when the connection ends.
pub async fn deliver<S: Outbound>(sink: S, conn: Rc<Conn>, registration: Registration) {
    let Registration {
        mut deliveries,
        kick,
        ..
    } = registration;
    let mut undelivered = Vec::new();
    loop {
        let d = tokio::select! {
            biased;
            _ = conn.closed.cancelled() => break,
            _ = kick.cancelled() => {
                sink.close_taken_over();
                let _ = tokio::time::timeout(std::time::Duration::from_secs(5), conn.closed.cancelled()).await;
                break;
            }
            d = deliveries.recv() => match d { Some(d) => d, None => break },
        };
        if d.message.expired_now() {
            conn.shared.hub.delivered(&d);
            continue;
        }
        match sink.send(&d).await {
            Ok(()) => {
                conn.shared.metrics.mqtt_publishes_out.inc();
                conn.shared.hub.delivered(&d);
            }
            Err(()) if sink.is_open() => {
                // Not the connection: the message itself could not be sent (over the
                // client's maximum packet size, say). Drop it rather than retry forever.
                conn.shared.metrics.mqtt_deliveries_dropped.inc();
                tracing::warn!(client = %conn.client, topic = %d.message.topic, "mqtt endpoint: a message could not be sent to this client and was dropped");
                conn.shared.hub.delivered(&d);
            }
            Err(()) => {
                undelivered.push(d);
                break;
            }
        }
    }
    deliveries.close();
    while let Ok(d) = deliveries.try_recv() {
        undelivered.push(d);
    }
    conn.shared
        .hub
        .disconnect(&conn.client, conn.id, undelivered);
}

/// MQTT's QoS, from the codec's to the hub's.
pub fn qos_of(q: ntex_mqtt::QoS) -> QoS {
    match q {
        ntex_mqtt::QoS::AtMostOnce => QoS::AtMostOnce,
        ntex_mqtt::QoS::AtLeastOnce => QoS::AtLeastOnce,
        ntex_mqtt::QoS::ExactlyOnce => QoS::ExactlyOnce,
    }
}
