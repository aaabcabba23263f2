//! The MQTT notifier: each alert event to `orchards/{orchard}/alerts`, QoS 1, JSON, through
//! orchardd's own endpoint, from the outbox the writer fills in the readings' transaction.
//!
//! An event is marked delivered only once the endpoint has taken it (and stored it for
//! offline persistent sessions), so a restart neither re-sends a delivered event nor drops an
//! undelivered one.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::json;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::store::{self as alerts, Pending};
use crate::endpoint::Shared;
use crate::endpoint::hub::{Message, QoS};
use crate::store::Admin;

const CHANNEL: &str = "mqtt";
/// Looked at again this often even without news from the writer (after a restart, say).
const POLL: Duration = Duration::from_secs(5);

/// The JSON an alert event is published as.
pub fn payload(p: &Pending) -> serde_json::Value {
    json!({
        "event": p.kind,
        "event_id": p.event,
        "at": crate::model::TimestampMs(p.at).to_rfc3339(),
        "alert": p.alert,
    })
}

pub async fn run(
    endpoint: Arc<Shared>,
    admin: Admin,
    changed: Arc<Notify>,
    shutdown: CancellationToken,
) {
    loop {
        let batch = match admin.write(|c| alerts::pending(c, CHANNEL, 100)).await {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "alert notifier: cannot read the outbox");
                Vec::new()
            }
        };
        for p in &batch {
            let topic = format!("orchards/{}/alerts", p.alert.orchard);
            let message = Message {
                topic: Arc::from(topic.as_str()),
                payload: Bytes::from(payload(p).to_string()),
                qos: QoS::AtLeastOnce,
                retain: false,
                properties: None,
                origin: 0,
            };
            if let Some(stored) = endpoint.hub.publish(message) {
                let _ = stored.await;
            }
            let event = p.event;
            if let Err(e) = admin
                .write(move |c| alerts::attempted(c, event, CHANNEL, Ok(())))
                .await
            {
                tracing::error!(error = %e, event, "alert notifier: cannot record a delivery");
            }
            tracing::info!(alert = p.alert.id, event = %p.kind, %topic, "alert published");
        }
        if !batch.is_empty() {
            continue;
        }
        tokio::select! {
            _ = changed.notified() => {}
            _ = tokio::time::sleep(POLL) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}
