//! Replaying the quarantined messages of a device once staff have assigned it.
//!
//! Assigning a device never rewrites history by itself: an operator asks for the replay,
//! which decodes each held message again with today's registry, stores what is now valid,
//! quarantines what still is not (with its new reason), and marks the originals replayed,
//! all in one transaction, so asking twice recovers nothing twice.

use std::collections::BTreeMap;

use bytes::Bytes;
use rusqlite::{Connection, params};
use serde::Serialize;

use super::StoreError;
use super::series::Series;
use super::writer::{Envelope, Inserted, conflict, insert_reading, quarantine};
use crate::model::{Flags, TimestampMs};
use crate::validate::Reason;

#[derive(Debug, Default, Clone, PartialEq, Serialize)]
pub struct ReplayReport {
    pub device: String,
    /// Quarantined messages decoded again.
    pub messages: u64,
    /// Readings stored by this replay.
    pub readings_recovered: u64,
    /// Readings the store already had.
    pub duplicates: u64,
    /// Readings or messages rejected again, by their new reason.
    pub rejected: BTreeMap<String, u64>,
}

/// `rollups`: fold the recovered readings into the rollups at this UTC offset (`None` when
/// `aggregate.rollups` is off). `decode(topic, payload, received_at)` judges a message as ingest would have.
pub fn replay(
    conn: &mut Connection,
    device: &str,
    forwarding: bool,
    rollups: Option<i64>,
    decode: impl Fn(&str, Bytes, TimestampMs) -> Envelope,
) -> Result<ReplayReport, StoreError> {
    let tx = conn.transaction()?;
    let held: Vec<(String, i64, Vec<u8>)> = {
        let mut stmt = tx.prepare(
            "SELECT q.topic, min(q.received_at), p.payload FROM quarantine q \
             JOIN quarantine_payloads p ON p.id = q.payload_id \
             WHERE q.device = ?1 AND q.reason = 'unknown_device' AND q.replayed_at IS NULL \
             GROUP BY q.payload_id ORDER BY q.payload_id",
        )?;
        stmt.query_map([device], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<Result<_, _>>()?
    };
    let mut report = ReplayReport {
        device: device.to_owned(),
        ..ReplayReport::default()
    };
    let mut ids = Series::default();
    let mut fold = super::rollups::Fold::default();
    for (topic, received_at, payload) in held {
        report.messages += 1;
        let mut env = decode(&topic, Bytes::from(payload), TimestampMs(received_at));
        let mut conflicts = Vec::new();
        for r in &env.readings {
            let series = ids.get(&tx, r)?.id;
            match insert_reading(&tx, series, r, Flags::default())? {
                Inserted::New => {
                    report.readings_recovered += 1;
                    if let Some(offset) = rollups {
                        fold.add(series, r.ts, r.value, offset);
                    }
                    if forwarding {
                        super::outbox::add(&tx, series, r.ts, TimestampMs::now())?;
                    }
                }
                Inserted::Duplicate => report.duplicates += 1,
                Inserted::Conflict(stored) => conflicts.push(conflict(r, stored)),
            }
        }
        // What the message holds for other devices was judged, and quarantined where it
        // failed, when it first arrived; only this device's rejections are new.
        env.rejections
            .retain(|r| r.reason != Reason::UnknownDevice && r.device.as_deref() == Some(device));
        for r in env.rejections.iter().chain(&conflicts) {
            *report.rejected.entry(r.reason.to_string()).or_default() += 1;
        }
        if !env.rejections.is_empty() || !conflicts.is_empty() {
            quarantine(&tx, &env, &conflicts)?;
        }
    }
    fold.write(&tx)?;
    tx.execute(
        "UPDATE quarantine SET replayed_at = ?2 \
         WHERE device = ?1 AND reason = 'unknown_device' AND replayed_at IS NULL",
        params![device, TimestampMs::now().0],
    )?;
    tx.commit()?;
    Ok(report)
}
