//! Notifiers: each alert event delivered once per channel, from the outbox the writer fills
//! in the readings' transaction. One task per channel, so a failing channel delays no other;
//! each attempt is logged (status, error, the start of the answer), and a failed delivery is
//! retried with capped back-off, in order.
//!
//! - `mqtt`: `orchards/{orchard}/alerts`, QoS 1, JSON, through orchardd's own endpoint; an
//!   event counts as delivered once the endpoint has taken it (and stored it for offline
//!   persistent sessions).
//! - `webhook:{name}`: a JSON POST, signed `X-Orchardd-Signature: sha256=<hex HMAC-SHA256 of
//!   the body>` when the webhook has a secret; any 2xx answer is delivered.
//!
//! A restart neither re-sends a delivered event nor drops an undelivered one.

mod mqtt;
mod webhook;

use std::future::Future;
use std::time::Duration;

use serde_json::json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::store::{self as alerts, Attempt, Pending};
use crate::store::Admin;

pub use mqtt::Mqtt;
pub use webhook::{Webhook, signature};

/// Looked at again this often even without news from the writer (after a restart, say).
const POLL: Duration = Duration::from_secs(5);
/// Back-off after a failed attempt: doubling from the first, capped at the last.
const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(300);
const TIMEOUT: Duration = Duration::from_secs(10);

/// The JSON an alert event is delivered as.
pub fn payload(p: &Pending) -> serde_json::Value {
    json!({
        "event": p.kind,
        "event_id": p.event,
        "at": crate::model::TimestampMs(p.at).to_rfc3339(),
        "alert": p.alert,
    })
}

/// A way to deliver one event.
pub trait Channel: Send + Sync + 'static {
    fn name(&self) -> String;
    fn deliver(&self, p: &Pending) -> impl Future<Output = Attempt> + Send;
}

/// Delivers the outbox of one channel until `shutdown`.
pub async fn run<C: Channel>(
    channel: C,
    admin: Admin,
    mut changed: watch::Receiver<u64>,
    shutdown: CancellationToken,
) {
    let name = channel.name();
    let mut retry = FIRST_RETRY;
    loop {
        let n = name.clone();
        let batch = match admin.write(move |c| alerts::pending(c, &n, 100)).await {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, channel = %name, "alert notifier: cannot read the outbox");
                Vec::new()
            }
        };
        let mut failed = false;
        for p in &batch {
            let attempt = channel.deliver(p).await;
            let (event, n, a) = (p.event, name.clone(), attempt.clone());
            if let Err(e) = admin
                .write(move |c| alerts::attempted(c, event, &n, &a))
                .await
            {
                tracing::error!(error = %e, event, "alert notifier: cannot record a delivery");
            }
            match &attempt.error {
                None => {
                    retry = FIRST_RETRY;
                    tracing::info!(alert = p.alert.id, event = %p.kind, channel = %name, "alert delivered");
                }
                Some(error) => {
                    tracing::warn!(alert = p.alert.id, event = %p.kind, channel = %name, %error, retry_in = ?retry, "alert delivery failed; retrying");
                    failed = true;
                    break;
                }
            }
        }
        let wait = if failed {
            let w = retry;
            retry = (retry * 2).min(MAX_RETRY);
            w
        } else if batch.is_empty() {
            POLL
        } else {
            continue;
        };
        tokio::select! {
            _ = changed.changed(), if !failed => {}
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}
