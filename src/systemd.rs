//! systemd integration: READY=1 once subscribed, WATCHDOG=1 while the pipeline makes
//! progress, STOPPING=1 on shutdown. Without `NOTIFY_SOCKET` every call does nothing.

use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

use crate::store::writer::Heartbeat;

pub fn ready() {
    notify(NotifyState::Ready);
}

pub fn stopping() {
    notify(NotifyState::Stopping);
}

fn notify(state: NotifyState<'_>) {
    if let Err(e) = sd_notify::notify(false, &[state]) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

/// Pings the watchdog at half its interval, but only while no commit is stuck: a hung
/// store should get orchardd restarted, not kept alive by a timer.
pub async fn watchdog(heartbeat: Arc<Heartbeat>, shutdown: CancellationToken) {
    let mut usec = 0;
    if !sd_notify::watchdog_enabled(false, &mut usec) {
        return;
    }
    let limit = Duration::from_micros(usec);
    let mut tick = tokio::time::interval(limit / 2);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        if heartbeat.is_healthy(limit) {
            notify(NotifyState::Watchdog);
        } else {
            tracing::error!(
                ?limit,
                "a store commit has run longer than the watchdog interval; not pinging systemd"
            );
        }
    }
}
