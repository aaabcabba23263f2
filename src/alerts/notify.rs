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

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::store::{self as alerts, Attempt, Pending};
use crate::config::WebhookSettings;
use crate::endpoint::Shared;
use crate::endpoint::hub::{Message, QoS};
use crate::model::truncate;
use crate::store::Admin;

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

/// Alerts to MQTT subscribers of orchardd's own endpoint.
pub struct Mqtt(pub Arc<Shared>);

impl Channel for Mqtt {
    fn name(&self) -> String {
        "mqtt".into()
    }

    async fn deliver(&self, p: &Pending) -> Attempt {
        let message = Message {
            topic: Arc::from(format!("orchards/{}/alerts", p.alert.orchard).as_str()),
            payload: Bytes::from(payload(p).to_string()),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: None,
            origin: 0,
        };
        if let Some(stored) = self.0.hub.publish(message) {
            let _ = stored.await;
        }
        Attempt::default()
    }
}

/// A generic webhook.
pub struct Webhook {
    settings: WebhookSettings,
    client: reqwest::Client,
}

impl Webhook {
    pub fn new(settings: WebhookSettings) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .build()
            .map_err(|e| format!("webhook {}: {e}", settings.name))?;
        Ok(Self { settings, client })
    }
}

/// `sha256=` and the hex HMAC-SHA256 of `body` keyed by `secret`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let tag = ring::hmac::sign(&key, body);
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

impl Channel for Webhook {
    fn name(&self) -> String {
        format!("webhook:{}", self.settings.name)
    }

    async fn deliver(&self, p: &Pending) -> Attempt {
        let body = payload(p).to_string();
        let mut request = self
            .client
            .post(&self.settings.url)
            .header("content-type", "application/json")
            .header("x-orchardd-event", &p.kind);
        if let Some(secret) = &self.settings.secret {
            request = request.header("x-orchardd-signature", signature(secret, body.as_bytes()));
        }
        match request.body(body).send().await {
            Ok(answer) => {
                let status = answer.status();
                let text = answer.text().await.unwrap_or_default();
                Attempt {
                    status: Some(status.as_u16()),
                    error: (!status.is_success()).then(|| format!("HTTP {status}")),
                    body: Some(truncate(&text, 500)),
                }
            }
            Err(e) => Attempt {
                status: None,
                error: Some(if e.is_timeout() {
                    format!("no answer within {}s", TIMEOUT.as_secs())
                } else {
                    e.to_string()
                }),
                body: None,
            },
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_rfc_4231_hmac_sha256() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
