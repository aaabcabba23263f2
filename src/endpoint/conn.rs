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
use super::hub::{Delivery, Message, Properties, QoS, Registration, SessionRequest};
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
    /// Publishes of this connection being handled (read, not yet answered).
    inflight: Cell<u32>,
    /// Counted in `mqtt_paused_connections` right now.
    paused: Cell<bool>,
    /// Woken when a publish of this connection has been answered, if `waiting`.
    answered: tokio::sync::Notify,
    waiting: Cell<bool>,
}

impl Conn {
    /// Opens a connection that passed its handshake, whatever its protocol version: takes
    /// over its client id in the hub and starts the loop that delivers to `sink`. `will` gets
    /// the connection's id (the origin of its will). Returns the connection and whether the
    /// hub had its session.
    pub fn open<S: Outbound + 'static>(
        shared: &Arc<Shared>,
        client: String,
        request: SessionRequest,
        user: Option<Arc<User>>,
        will: impl FnOnce(u64) -> Option<Message>,
        sink: S,
    ) -> (Rc<Conn>, bool) {
        let registration = shared.hub.connect(&client, request);
        let conn = Rc::new(Self {
            shared: shared.clone(),
            client,
            id: registration.conn,
            user,
            will: RefCell::new(will(registration.conn)),
            closed: CancellationToken::new(),
            deliveries: registration.sender.clone(),
            inflight: Cell::new(0),
            paused: Cell::new(false),
            answered: tokio::sync::Notify::new(),
            waiting: Cell::new(false),
        });
        let session_present = registration.session_present;
        ntex_rt::spawn(deliver(sink, conn.clone(), registration));
        shared.metrics.mqtt_connects.inc();
        (conn, session_present)
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
                .quarantine(topic, payload, rejection)
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

    /// The connection is being closed for a packet MQTT does not allow (a malformed frame, a
    /// topic that is not UTF-8, a packet over `broker.max_packet_bytes`): nothing of it can be
    /// stored, so it is counted and logged with the client and the reason.
    pub fn protocol_error(&self, error: &dyn std::fmt::Display) {
        self.shared.metrics.mqtt_protocol_errors.inc();
        tracing::warn!(client = %self.client, %error, "mqtt endpoint: protocol error; closing the connection");
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
    /// Admits one more publish of this connection. The client is held back by the MQTT
    /// in-flight window: a PUBACK comes only after the commit, and the writer's queue is
    /// bounded, so a client that waits for its acknowledgements (its own window under 3.1.1,
    /// the receive maximum orchardd announces and ntex-mqtt enforces under 5) sends no more.
    /// A 3.1.1 client is also held back by [`Conn::room`], the publish service's readiness;
    /// one that still gets [`INFLIGHT_CAP`] ahead is disconnected rather than buffered
    /// without bound, and resends after reconnecting.
    pub fn admit(&self) -> Result<Admitted<'_>, super::EndpointError> {
        let n = self.inflight.get();
        if n >= INFLIGHT_CAP {
            tracing::warn!(client = %self.client, inflight = n, "mqtt endpoint: the client sent far more publishes ahead of their PUBACKs than any in-flight window; disconnecting it (it resends after reconnecting)");
            return Err(super::EndpointError::Overrun);
        }
        self.inflight.set(n + 1);
        if n + 1 >= self.shared.max_inflight && !self.paused.replace(true) {
            self.shared.metrics.mqtt_paused_connections.inc();
        }
        Ok(Admitted(self))
    }

    /// Waits until fewer than `broker.max_inflight` publishes of this connection are being
    /// handled. A 3.1.1 client has no receive maximum to keep to; while this waits ntex-mqtt
    /// reads nothing more from the socket, so TCP holds the client back. Without it a client
    /// that sends its whole backlog at once after a reconnect (paho-mqtt 1.6 for Python does,
    /// ignoring its own in-flight limit) would reach [`INFLIGHT_CAP`], be disconnected with
    /// its publishes unacknowledged, resend the same backlog, and never get on.
    pub async fn room(&self) {
        while self.inflight.get() >= self.shared.max_inflight {
            // Registered before the check, so an answer between the two is not missed.
            let answered = self.answered.notified();
            self.waiting.set(true);
            if self.inflight.get() < self.shared.max_inflight {
                break;
            }
            answered.await;
        }
    }
}

/// Publishes of one connection handled at once before orchardd closes it.
pub const INFLIGHT_CAP: u32 = 1000;

/// One admitted publish; dropping it answers for it.
pub struct Admitted<'a>(&'a Conn);

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        let conn = self.0;
        let n = conn.inflight.get() - 1;
        conn.inflight.set(n);
        if n < conn.shared.max_inflight {
            if conn.paused.replace(false) {
                conn.shared.metrics.mqtt_paused_connections.dec();
            }
            if conn.waiting.replace(false) {
                conn.answered.notify_waiters();
            }
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
