//! The endpoint's shared state: who is connected, what each session subscribed to, the
//! retained messages, and the queues of persistent sessions that are offline.
//!
//! Everything a restart must not forget (persistent sessions and their subscriptions, their
//! queued QoS 1/2 messages, retained messages) is written to the store by [`SessionStore`]'s
//! thread; the hub keeps the same in memory for routing.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::store::{Op, SessionStore, Stored};
use super::topic;
use crate::metrics::Metrics;
use crate::model::TimestampMs;

/// Delivery guarantee of one message, as MQTT numbers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum QoS {
    AtMostOnce = 0,
    AtLeastOnce = 1,
    ExactlyOnce = 2,
}

impl QoS {
    pub fn from_u8(n: u8) -> Option<Self> {
        match n {
            0 => Some(Self::AtMostOnce),
            1 => Some(Self::AtLeastOnce),
            2 => Some(Self::ExactlyOnce),
            _ => None,
        }
    }
}

/// MQTT 5 properties a subscriber relies on, passed through as the publisher sent them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Properties {
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub payload_utf8: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_topic: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_data: Option<Vec<u8>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub user: Vec<(String, String)>,
    /// When the message expires (message expiry interval from its arrival), epoch ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<i64>,
}

impl Properties {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// One application message on its way to subscribers.
#[derive(Debug, Clone)]
pub struct Message {
    pub topic: Arc<str>,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    pub properties: Option<Arc<Properties>>,
    /// The connection that published it (0 for orchardd itself), for `no_local`.
    pub origin: u64,
}

impl Message {
    pub fn expired_now(&self) -> bool {
        self.expired(TimestampMs::now().0)
    }

    fn expired(&self, now_ms: i64) -> bool {
        self.properties
            .as_ref()
            .and_then(|p| p.expires_at_ms)
            .is_some_and(|at| at <= now_ms)
    }
}

/// Subscription options (MQTT 5; a 3.1.1 subscription has only its QoS).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubOptions {
    pub qos: QoS,
    #[serde(default)]
    pub no_local: bool,
    #[serde(default)]
    pub retain_as_published: bool,
    /// 0: send retained messages at subscribe; 1: only for a new subscription; 2: never.
    #[serde(default)]
    pub retain_handling: u8,
}

impl SubOptions {
    pub fn qos(qos: QoS) -> Self {
        Self {
            qos,
            no_local: false,
            retain_as_published: false,
            retain_handling: 0,
        }
    }
}

/// A message handed to one connection, at the QoS its subscription allows.
#[derive(Debug)]
pub struct Delivery {
    pub message: Message,
    pub qos: QoS,
    pub retain: bool,
    /// Its row in the store when it was queued for an offline session: deleted once delivered.
    pub stored: Option<i64>,
}

struct Online {
    conn: u64,
    tx: mpsc::Sender<Delivery>,
    kick: CancellationToken,
}

struct Session {
    subs: BTreeMap<String, SubOptions>,
    online: Option<Online>,
    /// Kept after the connection ends (3.1.1 clean session 0, 5 session expiry > 0).
    persistent: bool,
    expiry_secs: u32,
    offline_since_ms: Option<i64>,
    queue: VecDeque<Delivery>,
}

impl Session {
    fn expired(&self, now_ms: i64) -> bool {
        match self.offline_since_ms {
            Some(since) if self.expiry_secs != u32::MAX => {
                now_ms - since >= i64::from(self.expiry_secs) * 1000
            }
            _ => false,
        }
    }
}

#[derive(Default)]
struct State {
    sessions: HashMap<String, Session>,
    /// Sessions with at least one subscription: the only ones a publish has to look at.
    subscribed: HashSet<String>,
    retained: BTreeMap<String, Message>,
}

/// What a new connection gets from the hub.
pub struct Registration {
    pub conn: u64,
    pub session_present: bool,
    pub deliveries: mpsc::Receiver<Delivery>,
    /// The sending side of `deliveries`, for the retained messages of a new subscription.
    pub sender: mpsc::Sender<Delivery>,
    /// Cancelled when another connection takes over the client id.
    pub kick: CancellationToken,
}

/// The connection's wishes about its session.
#[derive(Debug, Clone, Copy)]
pub struct SessionRequest {
    /// Start afresh, discarding any stored session.
    pub clean_start: bool,
    /// Seconds to keep the session after the connection ends; `u32::MAX` is forever.
    pub expiry_secs: u32,
}

pub struct Hub {
    state: Mutex<State>,
    store: SessionStore,
    metrics: Arc<Metrics>,
    queue_limit: usize,
    next_conn: AtomicU64,
    next_stored: AtomicI64,
}

impl Hub {
    /// Loads what the store kept of sessions and retained messages.
    pub fn new(
        store: SessionStore,
        stored: Stored,
        metrics: Arc<Metrics>,
        queue_limit: usize,
    ) -> Self {
        let mut state = State::default();
        let now = TimestampMs::now().0;
        for (client, expiry_secs, subs) in stored.sessions {
            if !subs.is_empty() {
                state.subscribed.insert(client.clone());
            }
            state.sessions.insert(
                client,
                Session {
                    subs,
                    online: None,
                    persistent: true,
                    expiry_secs,
                    offline_since_ms: Some(now),
                    queue: VecDeque::new(),
                },
            );
        }
        for (id, client, message) in stored.queued {
            match state.sessions.get_mut(&client) {
                Some(s) => s.queue.push_back(Delivery {
                    qos: message.qos,
                    retain: message.retain,
                    message,
                    stored: Some(id),
                }),
                None => store.send(Op::Unqueue { id }, None),
            }
        }
        for m in stored.retained {
            state.retained.insert(m.topic.to_string(), m);
        }
        metrics.mqtt_retained.set(state.retained.len() as i64);
        Self {
            state: Mutex::new(state),
            store,
            metrics,
            queue_limit,
            next_conn: AtomicU64::new(1),
            next_stored: AtomicI64::new(stored.max_queued_id + 1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a connection for `client`, taking over from any earlier connection of it.
    pub fn connect(&self, client: &str, request: SessionRequest) -> Registration {
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(self.queue_limit.max(1));
        let kick = CancellationToken::new();
        let now = TimestampMs::now().0;
        let persistent = request.expiry_secs > 0;
        let mut state = self.lock();
        let mut session_present = false;
        if let Some(old) = state.sessions.get_mut(client) {
            if let Some(online) = old.online.take() {
                tracing::info!(
                    client,
                    "mqtt endpoint: a new connection takes over the client id"
                );
                self.metrics.mqtt_takeovers.inc();
                online.kick.cancel();
            }
            if request.clean_start || old.expired(now) {
                let old = state.sessions.remove(client).expect("just seen");
                state.subscribed.remove(client);
                if old.persistent {
                    self.store.send(
                        Op::DropSession {
                            client: client.to_owned(),
                        },
                        None,
                    );
                }
                self.count_subscriptions(&state);
            } else {
                session_present = true;
            }
        }
        let session = state
            .sessions
            .entry(client.to_owned())
            .or_insert_with(|| Session {
                subs: BTreeMap::new(),
                online: None,
                persistent,
                expiry_secs: request.expiry_secs,
                offline_since_ms: None,
                queue: VecDeque::new(),
            });
        session.persistent = persistent;
        session.expiry_secs = request.expiry_secs;
        session.offline_since_ms = None;
        // What was queued while offline, and what an earlier connection left unacknowledged.
        while let Some(d) = session.queue.pop_front() {
            if let Err(e) = tx.try_send(d) {
                let d = match e {
                    mpsc::error::TrySendError::Full(d) | mpsc::error::TrySendError::Closed(d) => d,
                };
                session.queue.push_front(d);
                break;
            }
        }
        session.online = Some(Online {
            conn,
            tx: tx.clone(),
            kick: kick.clone(),
        });
        if persistent {
            let subs = session.subs.clone();
            self.save_session(client, request.expiry_secs, &subs);
        }
        drop(state);
        self.metrics.mqtt_connections.inc();
        Registration {
            conn,
            session_present,
            deliveries: rx,
            sender: tx,
            kick,
        }
    }

    /// The connection `conn` of `client` has ended. A persistent session stays, with what the
    /// connection had not delivered put back at the head of its queue.
    pub fn disconnect(&self, client: &str, conn: u64, undelivered: Vec<Delivery>) {
        let now = TimestampMs::now().0;
        let mut state = self.lock();
        self.metrics.mqtt_connections.dec();
        let Some(session) = state.sessions.get_mut(client) else {
            return;
        };
        if session.online.as_ref().is_none_or(|o| o.conn != conn) {
            // Taken over: the undelivered messages go to the new connection's session.
            if session.persistent {
                for d in undelivered.into_iter().rev() {
                    session.queue.push_front(d);
                }
            }
            return;
        }
        session.online = None;
        if session.persistent && session.expiry_secs > 0 {
            session.offline_since_ms = Some(now);
            for d in undelivered.into_iter().rev() {
                if d.qos == QoS::AtMostOnce {
                    continue;
                }
                let d = self.persist_queued(client, d);
                session.queue.push_front(d);
            }
        } else {
            let old = state.sessions.remove(client).expect("just seen");
            if state.subscribed.remove(client) {
                self.count_subscriptions(&state);
            }
            if old.persistent {
                self.store.send(
                    Op::DropSession {
                        client: client.to_owned(),
                    },
                    None,
                );
            }
        }
    }

    /// Forgets the offline sessions whose expiry has passed, with their queued messages.
    pub fn sweep_expired(&self) -> usize {
        let now = TimestampMs::now().0;
        let mut state = self.lock();
        let expired: Vec<String> = state
            .sessions
            .iter()
            .filter(|(_, s)| s.online.is_none() && s.expired(now))
            .map(|(c, _)| c.clone())
            .collect();
        for client in &expired {
            state.sessions.remove(client);
            state.subscribed.remove(client);
            self.store.send(
                Op::DropSession {
                    client: client.clone(),
                },
                None,
            );
        }
        if !expired.is_empty() {
            self.count_subscriptions(&state);
            tracing::info!(
                sessions = expired.len(),
                "mqtt endpoint: expired sessions forgotten"
            );
        }
        expired.len()
    }

    /// Sets the session expiry a v5 client asked for at DISCONNECT.
    pub fn set_expiry(&self, client: &str, conn: u64, expiry_secs: u32) {
        let mut state = self.lock();
        if let Some(s) = state.sessions.get_mut(client)
            && s.online.as_ref().is_some_and(|o| o.conn == conn)
        {
            s.expiry_secs = expiry_secs;
            s.persistent = expiry_secs > 0;
        }
    }

    /// A delivery to an online connection was acknowledged: forget its stored copy.
    pub fn delivered(&self, d: &Delivery) {
        if let Some(id) = d.stored {
            self.store.send(Op::Unqueue { id }, None);
        }
    }

    /// Adds or replaces subscriptions, and returns the retained messages they ask for (to be
    /// sent after the SUBACK).
    pub fn subscribe(
        &self,
        client: &str,
        conn: u64,
        filters: &[(String, SubOptions)],
    ) -> Vec<Delivery> {
        let mut state = self.lock();
        let State {
            sessions,
            subscribed,
            retained,
        } = &mut *state;
        let mut out = Vec::new();
        let Some(session) = sessions.get_mut(client) else {
            return out;
        };
        if session.online.as_ref().is_none_or(|o| o.conn != conn) {
            return out;
        }
        let now = TimestampMs::now().0;
        for (filter, opts) in filters {
            let existed = session.subs.insert(filter.clone(), *opts).is_some();
            let send_retained = match opts.retain_handling {
                0 => true,
                1 => !existed,
                _ => false,
            };
            if !send_retained {
                continue;
            }
            for m in retained.values() {
                if topic::matches(filter, &m.topic) && !m.expired(now) {
                    out.push(Delivery {
                        qos: m.qos.min(opts.qos),
                        retain: true,
                        message: m.clone(),
                        stored: None,
                    });
                }
            }
        }
        if !filters.is_empty() {
            subscribed.insert(client.to_owned());
        }
        if session.persistent {
            let subs = session.subs.clone();
            let expiry = session.expiry_secs;
            self.save_session(client, expiry, &subs);
        }
        self.count_subscriptions(&state);
        out
    }

    pub fn unsubscribe(&self, client: &str, filters: &[String]) -> Vec<bool> {
        let mut state = self.lock();
        let Some(session) = state.sessions.get_mut(client) else {
            return vec![false; filters.len()];
        };
        let found: Vec<bool> = filters
            .iter()
            .map(|f| session.subs.remove(f).is_some())
            .collect();
        let empty = session.subs.is_empty();
        if session.persistent {
            let subs = session.subs.clone();
            let expiry = session.expiry_secs;
            self.save_session(client, expiry, &subs);
        }
        if empty {
            state.subscribed.remove(client);
        }
        self.count_subscriptions(&state);
        found
    }

    /// Routes a message to every matching subscription, once per session at the highest
    /// matching QoS, and keeps it when retained. Returns a receiver that completes once what
    /// had to be written to the store (a retained message, copies queued for offline
    /// sessions) is committed: a QoS 1/2 publish is acknowledged only after that.
    pub fn publish(&self, message: Message) -> Option<oneshot::Receiver<()>> {
        let now = TimestampMs::now().0;
        let mut durable = false;
        let mut state = self.lock();
        let State {
            sessions,
            subscribed,
            retained,
        } = &mut *state;
        if message.retain {
            durable = true;
            if message.payload.is_empty() {
                retained.remove(&*message.topic);
                self.store.send(
                    Op::Retain {
                        topic: message.topic.to_string(),
                        message: None,
                    },
                    None,
                );
            } else {
                retained.insert(message.topic.to_string(), message.clone());
                self.store.send(
                    Op::Retain {
                        topic: message.topic.to_string(),
                        message: Some(message.clone()),
                    },
                    None,
                );
            }
            self.metrics.mqtt_retained.set(retained.len() as i64);
        }
        for client in subscribed.iter() {
            let Some(session) = sessions.get_mut(client) else {
                continue;
            };
            let own = session
                .online
                .as_ref()
                .is_some_and(|o| o.conn == message.origin);
            let mut best: Option<(QoS, bool)> = None;
            for (filter, opts) in &session.subs {
                if (opts.no_local && own) || !topic::matches(filter, &message.topic) {
                    continue;
                }
                let qos = message.qos.min(opts.qos);
                let keep_retain = opts.retain_as_published && message.retain;
                best = Some(match best {
                    Some((q, r)) => (q.max(qos), r || keep_retain),
                    None => (qos, keep_retain),
                });
            }
            let Some((qos, retain)) = best else { continue };
            let d = Delivery {
                message: message.clone(),
                qos,
                retain,
                stored: None,
            };
            if let Some(online) = &session.online {
                if online.tx.try_send(d).is_err() {
                    self.dropped(client, "its delivery queue is full");
                }
                continue;
            }
            // Offline: only a persistent session keeps QoS 1/2 messages for later.
            if session.persistent && qos > QoS::AtMostOnce && !session.expired(now) {
                if session.queue.len() >= self.queue_limit {
                    self.dropped(
                        client,
                        "its offline queue is full (broker.session_queue_messages)",
                    );
                    continue;
                }
                durable = true;
                let d = self.persist_queued(client, d);
                session.queue.push_back(d);
            }
        }
        drop(state);
        if durable {
            let (tx, rx) = oneshot::channel();
            self.store.send(Op::Barrier, Some(tx));
            Some(rx)
        } else {
            None
        }
    }

    fn persist_queued(&self, client: &str, mut d: Delivery) -> Delivery {
        if d.stored.is_none() {
            let id = self.next_stored.fetch_add(1, Ordering::Relaxed);
            let mut message = d.message.clone();
            message.qos = d.qos;
            message.retain = d.retain;
            self.store.send(
                Op::Queue {
                    id,
                    client: client.to_owned(),
                    message,
                },
                None,
            );
            d.stored = Some(id);
        }
        d
    }

    fn save_session(&self, client: &str, expiry_secs: u32, subs: &BTreeMap<String, SubOptions>) {
        self.store.send(
            Op::SaveSession {
                client: client.to_owned(),
                expiry_secs,
                subscriptions: subs.clone(),
            },
            None,
        );
    }

    fn dropped(&self, client: &str, why: &str) {
        self.metrics.mqtt_deliveries_dropped.inc();
        tracing::warn!(
            client,
            "mqtt endpoint: a message for this client was dropped: {why}"
        );
    }

    fn count_subscriptions(&self, state: &State) {
        let n: usize = state
            .subscribed
            .iter()
            .filter_map(|c| state.sessions.get(c))
            .map(|s| s.subs.len())
            .sum();
        self.metrics.mqtt_subscriptions.set(n as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StoreSettings;

    fn hub(limit: usize) -> (tempfile::TempDir, Hub, Arc<Metrics>) {
        let dir = tempfile::tempdir().unwrap();
        let settings = StoreSettings {
            path: dir.path().join("o.db"),
            ..StoreSettings::default()
        };
        crate::store::open_writer(&settings).unwrap();
        let (store, stored) = SessionStore::open(&settings, Default::default()).unwrap();
        let metrics = Arc::new(Metrics::default());
        (
            dir,
            Hub::new(store, stored, metrics.clone(), limit),
            metrics,
        )
    }

    fn message(topic: &str, qos: QoS, origin: u64) -> Message {
        Message {
            topic: Arc::from(topic),
            payload: Bytes::from_static(b"x"),
            qos,
            retain: false,
            properties: None,
            origin,
        }
    }

    const PERSISTENT: SessionRequest = SessionRequest {
        clean_start: false,
        expiry_secs: u32::MAX,
    };

    #[test]
    fn an_offline_session_keeps_at_most_its_bound_and_counts_what_it_drops() {
        let (_dir, hub, metrics) = hub(3);
        let r = hub.connect("phone", PERSISTENT);
        hub.subscribe(
            "phone",
            r.conn,
            &[("alerts/#".into(), SubOptions::qos(QoS::AtLeastOnce))],
        );
        hub.disconnect("phone", r.conn, Vec::new());
        for _ in 0..5 {
            hub.publish(message("alerts/frost", QoS::AtLeastOnce, 0));
        }
        // QoS 0 is not kept for an offline session, and not counted as dropped.
        hub.publish(message("alerts/frost", QoS::AtMostOnce, 0));
        assert_eq!(metrics.mqtt_deliveries_dropped.get(), 2);
        let mut r = hub.connect("phone", PERSISTENT);
        assert!(r.session_present);
        let mut got = 0;
        while r.deliveries.try_recv().is_ok() {
            got += 1;
        }
        assert_eq!(got, 3);
    }

    #[test]
    fn one_session_gets_a_message_once_at_its_best_qos_and_no_local_skips_its_own() {
        let (_dir, hub, _) = hub(10);
        let mut r = hub.connect(
            "a",
            SessionRequest {
                clean_start: true,
                expiry_secs: 0,
            },
        );
        let no_local = SubOptions {
            no_local: true,
            ..SubOptions::qos(QoS::ExactlyOnce)
        };
        hub.subscribe(
            "a",
            r.conn,
            &[
                ("t/#".into(), SubOptions::qos(QoS::AtMostOnce)),
                ("t/+".into(), SubOptions::qos(QoS::AtLeastOnce)),
                ("t/own".into(), no_local),
            ],
        );
        hub.publish(message("t/x", QoS::ExactlyOnce, 99));
        let d = r.deliveries.try_recv().unwrap();
        assert_eq!(d.qos, QoS::AtLeastOnce);
        assert!(r.deliveries.try_recv().is_err(), "once");
        // Its own publish on t/own matches t/# and t/+ but not the no-local subscription.
        hub.publish(message("t/own", QoS::ExactlyOnce, r.conn));
        assert_eq!(r.deliveries.try_recv().unwrap().qos, QoS::AtLeastOnce);
    }

    #[test]
    fn what_a_dropped_connection_left_unacknowledged_goes_out_again_on_reconnect() {
        let (_dir, hub, _) = hub(10);
        let mut r = hub.connect("phone", PERSISTENT);
        hub.subscribe(
            "phone",
            r.conn,
            &[("alerts/#".into(), SubOptions::qos(QoS::AtLeastOnce))],
        );
        hub.publish(message("alerts/frost", QoS::AtLeastOnce, 0));
        // The delivery task took it, sent it, and the link dropped before the PUBACK.
        let in_flight = r.deliveries.try_recv().unwrap();
        hub.disconnect("phone", r.conn, vec![in_flight]);
        let mut r = hub.connect("phone", PERSISTENT);
        let again = r.deliveries.try_recv().unwrap();
        assert_eq!(&*again.message.topic, "alerts/frost");
        assert!(
            again.stored.is_some(),
            "kept in the store while the phone was away"
        );
    }

    #[test]
    fn a_clean_start_forgets_the_old_session() {
        let (_dir, hub, _) = hub(10);
        let r = hub.connect("gw", PERSISTENT);
        hub.subscribe(
            "gw",
            r.conn,
            &[("a".into(), SubOptions::qos(QoS::AtLeastOnce))],
        );
        hub.disconnect("gw", r.conn, Vec::new());
        let r = hub.connect(
            "gw",
            SessionRequest {
                clean_start: true,
                expiry_secs: 0,
            },
        );
        assert!(!r.session_present);
        hub.disconnect("gw", r.conn, Vec::new());
        hub.publish(message("a", QoS::AtLeastOnce, 0));
        let mut r = hub.connect("gw", PERSISTENT);
        assert!(!r.session_present);
        assert!(r.deliveries.try_recv().is_err());
    }
}
