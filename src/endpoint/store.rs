//! What the endpoint keeps in the store: persistent sessions with their subscriptions, the
//! QoS 1/2 messages queued for them while offline, and retained messages.
//!
//! One thread owns a connection of its own and applies the hub's changes in order, a batch per
//! transaction, so that a publish never waits on SQLite inside the network loop.

use std::collections::BTreeMap;
use std::sync::Arc;

use rusqlite::{Connection, params};
use tokio::sync::{mpsc, oneshot};

use super::hub::{Message, Properties, QoS, SubOptions};
use crate::config::StoreSettings;
use crate::model::TimestampMs;
use crate::store::{StoreError, WriteGate};

/// One change to the endpoint's stored state.
#[derive(Debug)]
pub enum Op {
    SaveSession {
        client: String,
        expiry_secs: u32,
        subscriptions: BTreeMap<String, SubOptions>,
    },
    /// Forgets a session and its queued messages.
    DropSession {
        client: String,
    },
    /// Keeps (or, with `None`, clears) the retained message of a topic.
    Retain {
        topic: String,
        message: Option<Message>,
    },
    Queue {
        id: i64,
        client: String,
        message: Message,
    },
    Unqueue {
        id: i64,
    },
    /// Changes nothing: its completion says that everything before it is committed.
    Barrier,
}

type Request = (Op, Option<oneshot::Sender<()>>);

/// The handle through which the hub sends its changes to the store thread.
#[derive(Clone)]
pub struct SessionStore {
    tx: mpsc::UnboundedSender<Request>,
}

/// What the store had at start-up.
#[derive(Default)]
pub struct Stored {
    pub sessions: Vec<(String, u32, BTreeMap<String, SubOptions>)>,
    pub queued: Vec<(i64, String, Message)>,
    pub retained: Vec<Message>,
    pub max_queued_id: i64,
}

impl SessionStore {
    /// Opens a connection, reads what is kept, and starts the thread that applies changes.
    /// Its transactions take turns with the process's other writers through `gate`.
    pub fn open(settings: &StoreSettings, gate: WriteGate) -> Result<(Self, Stored), StoreError> {
        let conn = Connection::open(&settings.path)?;
        conn.busy_timeout(std::time::Duration::from_secs(30))?;
        let stored = load(&conn)?;
        let (tx, rx) = mpsc::unbounded_channel();
        std::thread::Builder::new()
            .name("endpoint-store".into())
            .spawn(move || apply_forever(conn, rx, gate))
            .map_err(|e| StoreError::Task(e.to_string()))?;
        Ok((Self { tx }, stored))
    }

    /// Queues a change; `done` fires once it is committed.
    pub fn send(&self, op: Op, done: Option<oneshot::Sender<()>>) {
        if self.tx.send((op, done)).is_err() {
            tracing::error!(
                "mqtt endpoint: the session store thread is gone; session state is not kept"
            );
        }
    }
}

fn apply_forever(mut conn: Connection, mut rx: mpsc::UnboundedReceiver<Request>, gate: WriteGate) {
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < 1000 {
            match rx.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let mut delay = std::time::Duration::from_millis(100);
        loop {
            let turn = gate.blocking();
            let applied = apply(&mut conn, &batch);
            drop(turn);
            match applied {
                Ok(()) => break,
                Err(e) => {
                    tracing::error!(error = %e, retry_in = ?delay, "mqtt endpoint: cannot write session state; retrying");
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(std::time::Duration::from_secs(10));
                }
            }
        }
        for (_, done) in batch {
            if let Some(done) = done {
                let _ = done.send(());
            }
        }
    }
}

fn apply(conn: &mut Connection, batch: &[Request]) -> Result<(), StoreError> {
    let tx = conn.transaction()?;
    let now = TimestampMs::now().0;
    for (op, _) in batch {
        match op {
            Op::SaveSession {
                client,
                expiry_secs,
                subscriptions,
            } => {
                let subs = serde_json::to_string(subscriptions).unwrap_or_else(|_| "{}".into());
                tx.prepare_cached(
                    "INSERT INTO mqtt_sessions (client_id, expiry_secs, subscriptions, updated_at) \
                     VALUES (?1, ?2, ?3, ?4) ON CONFLICT (client_id) DO UPDATE SET \
                     expiry_secs = excluded.expiry_secs, subscriptions = excluded.subscriptions, \
                     updated_at = excluded.updated_at",
                )?
                .execute(params![client, expiry_secs, subs, now])?;
            }
            Op::DropSession { client } => {
                tx.prepare_cached("DELETE FROM mqtt_sessions WHERE client_id = ?1")?
                    .execute(params![client])?;
                tx.prepare_cached("DELETE FROM mqtt_queued WHERE client_id = ?1")?
                    .execute(params![client])?;
            }
            Op::Retain { topic, message } => match message {
                None => {
                    tx.prepare_cached("DELETE FROM mqtt_retained WHERE topic = ?1")?
                        .execute(params![topic])?;
                }
                Some(m) => {
                    tx.prepare_cached(
                        "INSERT OR REPLACE INTO mqtt_retained (topic, payload, qos, properties, updated_at) \
                         VALUES (?1, ?2, ?3, ?4, ?5)",
                    )?
                    .execute(params![topic, &m.payload[..], m.qos as u8, properties_json(m), now])?;
                }
            },
            Op::Queue {
                id,
                client,
                message: m,
            } => {
                tx.prepare_cached(
                    "INSERT OR REPLACE INTO mqtt_queued (id, client_id, topic, payload, qos, retain, properties) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )?
                .execute(params![
                    id,
                    client,
                    &*m.topic,
                    &m.payload[..],
                    m.qos as u8,
                    m.retain,
                    properties_json(m)
                ])?;
            }
            Op::Unqueue { id } => {
                tx.prepare_cached("DELETE FROM mqtt_queued WHERE id = ?1")?
                    .execute(params![id])?;
            }
            Op::Barrier => {}
        }
    }
    tx.commit()?;
    Ok(())
}

fn properties_json(m: &Message) -> Option<String> {
    m.properties
        .as_ref()
        .filter(|p| !p.is_empty())
        .and_then(|p| serde_json::to_string(&**p).ok())
}

fn message(
    topic: String,
    payload: Vec<u8>,
    qos: u8,
    retain: bool,
    props: Option<String>,
) -> Message {
    Message {
        topic: Arc::from(topic),
        payload: payload.into(),
        qos: QoS::from_u8(qos).unwrap_or(QoS::AtLeastOnce),
        retain,
        properties: props
            .and_then(|p| serde_json::from_str::<Properties>(&p).ok())
            .map(Arc::new),
        origin: 0,
    }
}

fn load(conn: &Connection) -> Result<Stored, StoreError> {
    let mut stored = Stored::default();
    let mut stmt =
        conn.prepare("SELECT client_id, expiry_secs, subscriptions FROM mqtt_sessions")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, u32>(1)?,
            r.get::<_, String>(2)?,
        ))
    })?;
    for row in rows {
        let (client, expiry, subs) = row?;
        let subs = serde_json::from_str(&subs).unwrap_or_default();
        stored.sessions.push((client, expiry, subs));
    }
    let mut stmt = conn.prepare(
        "SELECT id, client_id, topic, payload, qos, retain, properties FROM mqtt_queued ORDER BY id",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?,
            message(r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?),
        ))
    })?;
    for row in rows {
        let row = row?;
        stored.max_queued_id = stored.max_queued_id.max(row.0);
        stored.queued.push(row);
    }
    let mut stmt = conn.prepare("SELECT topic, payload, qos, properties FROM mqtt_retained")?;
    let rows = stmt.query_map([], |r| {
        Ok(message(r.get(0)?, r.get(1)?, r.get(2)?, true, r.get(3)?))
    })?;
    for row in rows {
        stored.retained.push(row?);
    }
    Ok(stored)
}
