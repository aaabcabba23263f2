//! `webhook:{name}`: each alert event POSTed as JSON, signed `X-Orchardd-Signature` when the
//! webhook has a secret; any 2xx answer is delivered.

use super::{Channel, http, payload};
use crate::alerts::store::{Attempt, Pending};
use crate::config::WebhookSettings;

/// A generic webhook.
pub struct Webhook {
    settings: WebhookSettings,
    client: reqwest::Client,
}

impl Webhook {
    pub fn new(settings: WebhookSettings) -> Result<Self, String> {
        let client = http::client(http::TIMEOUT, &format!("webhook {}", settings.name))?;
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
        match http::post(request.body(body), http::TIMEOUT).await {
            Ok(answer) => answer.attempt(),
            Err(failed) => failed,
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
