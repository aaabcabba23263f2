//! Notifiers: each alert event delivered once per channel, from the outbox the writer fills
//! in the readings' transaction. One task per channel, so a failing channel delays no other;
//! each attempt is logged (status, error, the start of the answer), and a failed delivery is
//! retried with capped back-off, in order.
//!
//! - `mqtt`: `orchards/{orchard}/alerts`, QoS 1, JSON, through orchardd's own endpoint (an
//!   event counts as delivered once the endpoint has taken it, and stored it for offline
//!   persistent sessions), or to the external broker (delivered at its PUBACK).
//! - `webhook:{name}`: a JSON POST, signed `X-Orchardd-Signature: sha256=<hex HMAC-SHA256 of
//!   the body>` when the webhook has a secret; any 2xx answer is delivered.
//! - `dingtalk:{name}`, `wecom:{name}`, `feishu:{name}`: group robots, a message worded for
//!   staff ([`message`]) taken when the robot answers code 0.
//!
//! A restart neither re-sends a delivered event nor drops an undelivered one. When a service
//! asks to be left alone for a while (DingTalk's "sent too fast"), the outbox keeps when the
//! next attempt is due, so a restart waits as long. A service that takes only so many
//! messages a minute gets no more ([`window`]): what the minute cannot take goes as a digest.

mod dingtalk;
mod feishu;
mod http;
pub mod message;
mod mqtt;
mod robot;
mod webhook;
mod wecom;
pub mod window;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::store::{self as alerts, Attempt, Pending, Sent};
use crate::alerts::rules::Rule;
use crate::config::AlertSettings;
use crate::model::TimestampMs;
use crate::store::Admin;
use message::Style;
use window::{MINUTE_MS, Rate, Step, Window};

pub use dingtalk::DingTalk;
pub use feishu::Feishu;
pub use mqtt::{Broker, Mqtt};
pub use webhook::{Webhook, signature};
pub use wecom::WeCom;

/// Looked at again this often even without news from the writer (after a restart, say).
const POLL: Duration = Duration::from_secs(5);
/// Back-off after a failed attempt: doubling from the first, capped at the last.
const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(300);

/// The JSON an alert event is delivered as.
pub fn payload(p: &Pending) -> serde_json::Value {
    json!({
        "event": p.kind,
        "event_id": p.event,
        "at": crate::model::TimestampMs(p.at).to_rfc3339(),
        "alert": p.alert,
    })
}

/// A way to deliver alert events.
pub trait Channel: Send + Sync + 'static {
    fn name(&self) -> String;

    /// How many messages the service takes; `None`: as many as come.
    fn rate(&self) -> Option<Rate> {
        None
    }

    fn deliver(&self, p: &Pending) -> impl Future<Output = Attempt> + Send;

    /// One message naming the first of `events` (at least one; as many as it can): how many
    /// it named, and how it went. Without digests of its own, a channel sends the first.
    fn deliver_digest(&self, events: &[Pending]) -> impl Future<Output = (usize, Attempt)> + Send {
        async move { (1, self.deliver(&events[0]).await) }
    }
}

/// Local hours in which a channel delivers only critical alerts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QuietHours {
    pub from: u8,
    pub to: u8,
    pub utc_offset_ms: i64,
}

impl QuietHours {
    pub fn of(settings: &AlertSettings, utc_offset_ms: i64) -> Option<Self> {
        settings.quiet_hours.map(|[from, to]| Self {
            from,
            to: to % 24,
            utc_offset_ms,
        })
    }

    pub fn holds(&self, now: i64) -> bool {
        crate::alerts::rules::in_local_hours(now, self.utc_offset_ms, self.from, self.to)
    }
}

/// The channels over HTTP of this run, from `[alerts]`: webhooks and group robots.
pub struct Notifiers {
    quiet: Option<QuietHours>,
    webhooks: Vec<Webhook>,
    dingtalk: Vec<DingTalk>,
    wecom: Vec<WeCom>,
    feishu: Vec<Feishu>,
}

impl Notifiers {
    /// Each robot words its messages in its language, with times at `utc_offset_ms`.
    pub fn new(
        settings: &AlertSettings,
        utc_offset_ms: i64,
        rules: watch::Receiver<Arc<Vec<Rule>>>,
    ) -> Result<Self, String> {
        let style = |language| Style {
            language,
            utc_offset_ms,
            rules: rules.clone(),
        };
        Ok(Self {
            quiet: QuietHours::of(settings, utc_offset_ms),
            webhooks: settings
                .webhooks
                .iter()
                .map(|w| Webhook::new(w.clone()))
                .collect::<Result<_, _>>()?,
            dingtalk: settings
                .dingtalk
                .iter()
                .map(|d| DingTalk::new(d.clone(), style(d.language)))
                .collect::<Result<_, _>>()?,
            wecom: settings
                .wecom
                .iter()
                .map(|w| WeCom::new(w.clone(), style(w.language)))
                .collect::<Result<_, _>>()?,
            feishu: settings
                .feishu
                .iter()
                .map(|f| Feishu::new(f.clone(), style(f.language)))
                .collect::<Result<_, _>>()?,
        })
    }

    /// The channels' names, as the outbox and the delivery log know them.
    pub fn names(&self) -> Vec<String> {
        let mut out: Vec<String> = self.webhooks.iter().map(Channel::name).collect();
        out.extend(self.dingtalk.iter().map(Channel::name));
        out.extend(self.wecom.iter().map(Channel::name));
        out.extend(self.feishu.iter().map(Channel::name));
        out
    }

    /// One delivery task per channel, each keeping the quiet hours.
    pub fn spawn(self, admin: &Admin, changed: &watch::Sender<u64>, shutdown: &CancellationToken) {
        let quiet = self.quiet;
        let args = || (admin.clone(), changed.subscribe(), shutdown.clone());
        for c in self.webhooks {
            let (a, ch, s) = args();
            tokio::spawn(run(c, quiet, a, ch, s));
        }
        for c in self.dingtalk {
            let (a, ch, s) = args();
            tokio::spawn(run(c, quiet, a, ch, s));
        }
        for c in self.wecom {
            let (a, ch, s) = args();
            tokio::spawn(run(c, quiet, a, ch, s));
        }
        for c in self.feishu {
            let (a, ch, s) = args();
            tokio::spawn(run(c, quiet, a, ch, s));
        }
    }
}

/// Delivers the outbox of one channel until `shutdown`; in `quiet` hours, only the events of
/// critical alerts (the others wait, in order, for the hours to end).
pub async fn run<C: Channel>(
    channel: C,
    quiet: Option<QuietHours>,
    admin: Admin,
    mut changed: watch::Receiver<u64>,
    shutdown: CancellationToken,
) {
    let mut task = Task::start(channel, quiet, admin).await;
    loop {
        let batch = task.outbox().await;
        if batch.is_empty() {
            tokio::select! {
                _ = changed.changed() => {}
                _ = tokio::time::sleep(POLL) => {}
                _ = shutdown.cancelled() => return,
            }
            continue;
        }
        let now = TimestampMs::now().0;
        match task.step(&batch, now) {
            Step::WaitUntil(until) => {
                let wait = Duration::from_millis((until - now).max(1) as u64);
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.cancelled() => return,
                }
            }
            step => task.send(&batch, step).await,
        }
    }
}

/// One channel's delivery task and what it keeps between messages.
struct Task<C> {
    channel: C,
    name: String,
    admin: Admin,
    /// The wait after the next failure.
    retry: Duration,
    window: Option<Window>,
    /// The due time this task set after its last failure: one it did not set (from a run
    /// before a restart) is worth a line in the log.
    own_hold: Option<i64>,
    quiet: Option<QuietHours>,
}

impl<C: Channel> Task<C> {
    async fn start(channel: C, quiet: Option<QuietHours>, admin: Admin) -> Self {
        let name = channel.name();
        let window = match channel.rate() {
            Some(rate) => Some(Window::new(rate, sent_last_minute(&admin, &name).await)),
            None => None,
        };
        Self {
            channel,
            name,
            admin,
            retry: FIRST_RETRY,
            window,
            own_hold: None,
            quiet,
        }
    }

    /// The oldest events waiting for the channel (in quiet hours, of critical alerts).
    async fn outbox(&self) -> Vec<Pending> {
        let n = self.name.clone();
        let critical_only = self.quiet.is_some_and(|q| q.holds(TimestampMs::now().0));
        match self
            .admin
            .write(move |c| alerts::pending(c, &n, 100, critical_only))
            .await
        {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, channel = %self.name, "alert notifier: cannot read the outbox");
                Vec::new()
            }
        }
    }

    /// What to do with `batch` at `now`: wait while an attempt is not due (the events of
    /// the last failed message carry its due time), else what the window allows.
    fn step(&mut self, batch: &[Pending], now: i64) -> Step {
        let hold = batch.iter().filter_map(|p| p.next_attempt_at).max();
        match (hold, self.window.as_mut()) {
            (Some(until), _) if until > now => {
                if self.own_hold != Some(until) {
                    tracing::info!(channel = %self.name, until = %TimestampMs(until).to_rfc3339(), "alert notifier: waiting until the next attempt is due");
                    self.own_hold = Some(until);
                }
                Step::WaitUntil(until)
            }
            (_, Some(w)) => w.plan(now, batch.len()),
            (_, None) => Step::One,
        }
    }

    /// Sends one message, the oldest event or a digest, and records how it went.
    async fn send(&mut self, batch: &[Pending], step: Step) {
        let digest = step == Step::Digest;
        let (covered, attempt) = if digest {
            let (n, attempt) = self.channel.deliver_digest(batch).await;
            (n.clamp(1, batch.len()), attempt)
        } else {
            (1, self.channel.deliver(&batch[0]).await)
        };
        let next_attempt_at = attempt.error.as_ref().map(|_| {
            let wait = attempt
                .retry_after
                .map_or(self.retry, |r| r.max(self.retry));
            self.retry = (self.retry * 2).min(MAX_RETRY);
            TimestampMs::now().0 + wait.as_millis() as i64
        });
        self.own_hold = next_attempt_at;
        let events: Vec<i64> = batch[..covered].iter().map(|p| p.event).collect();
        let (n, a) = (self.name.clone(), attempt.clone());
        let recorded = self
            .admin
            .write(move |c| {
                let sent = Sent {
                    events: &events,
                    digest,
                };
                alerts::attempted(c, &n, sent, &a, next_attempt_at)
            })
            .await;
        if let Err(e) = recorded {
            tracing::error!(error = %e, channel = %self.name, "alert notifier: cannot record a delivery");
        }
        let (first, channel) = (&batch[0], &self.name);
        match &attempt.error {
            None => {
                self.retry = FIRST_RETRY;
                if let Some(w) = self.window.as_mut() {
                    w.took(TimestampMs::now().0);
                }
                if digest {
                    tracing::info!(%channel, events = covered, "alert digest delivered");
                } else {
                    tracing::info!(alert = first.alert.id, event = %first.kind, %channel, "alert delivered");
                }
            }
            Some(error) => {
                let retry_at = next_attempt_at.map(|t| TimestampMs(t).to_rfc3339());
                tracing::warn!(alert = first.alert.id, event = %first.kind, events = covered, %channel, %error, code = ?attempt.code, retry_at = ?retry_at, "alert delivery failed; retrying");
            }
        }
    }
}

/// When the service took the channel's messages of the last minute, from the attempt log.
async fn sent_last_minute(admin: &Admin, channel: &str) -> Vec<i64> {
    let since = TimestampMs::now().0 - MINUTE_MS;
    let n = channel.to_owned();
    match admin
        .write(move |c| alerts::delivered_since(c, &n, since))
        .await
    {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(error = %e, %channel, "alert notifier: cannot read the attempt log");
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quiet_hours_span_midnight_at_the_local_offset() {
        let settings = AlertSettings {
            quiet_hours: Some([22, 7]),
            ..AlertSettings::default()
        };
        let q = QuietHours::of(&settings, 8 * 3_600_000).unwrap();
        let utc = |h: i64| h * 3_600_000;
        // 22:00 and 06:59 local (+08:00) are quiet; 07:00 and 21:59 are not.
        assert!(q.holds(utc(14)) && q.holds(utc(23) - 60_000));
        assert!(!q.holds(utc(23)) && !q.holds(utc(14) - 60_000));
        assert_eq!(QuietHours::of(&AlertSettings::default(), 0), None);
    }
}
