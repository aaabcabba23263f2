//! The forwarder: embedded store → InfluxDB, loss-free.
//!
//! It reads the outbox in commit order, sends batches by size or by age, and removes a batch
//! from the outbox only after InfluxDB accepted it. Network errors, 5xx and 429 are retried
//! with capped, jittered back-off for ever; a batch InfluxDB calls bad data is set aside in a
//! dead-letter table with InfluxDB's message, so one bad point never blocks the stream.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::write::{InfluxWriter, WriteError};
use crate::config::InfluxSettings;
use crate::metrics::Metrics;
use crate::model::TimestampMs;
use crate::store::outbox::Batch;
use crate::store::{Admin, ReadPool, StoreError, outbox};

pub struct Forwarder {
    pub writer: InfluxWriter,
    pub settings: InfluxSettings,
    pub pool: ReadPool,
    pub admin: Admin,
    pub metrics: Arc<Metrics>,
}

/// How often an idle forwarder looks for new rows.
const IDLE_POLL: Duration = Duration::from_millis(200);

impl Forwarder {
    /// Runs until `shutdown`. What is not yet accepted stays in the outbox for the next start.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut after = 0i64;
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            match self.step(&mut after, &shutdown).await {
                Ok(true) => {}
                Ok(false) => {
                    tokio::select! {
                        _ = tokio::time::sleep(IDLE_POLL) => {}
                        _ = shutdown.cancelled() => return,
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "forwarder: the store failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = shutdown.cancelled() => return,
                    }
                }
            }
        }
    }

    /// Sends one batch if one is due; false when there was nothing to do yet.
    async fn step(
        &self,
        after: &mut i64,
        shutdown: &CancellationToken,
    ) -> Result<bool, StoreError> {
        let limit = self.settings.batch_size;
        let from = *after;
        let batch = self
            .pool
            .read(move |c| outbox::next(c, from, limit))
            .await?;
        let oldest = self.report_backlog().await?;
        let Some(last_seq) = batch.last_seq() else {
            return Ok(false);
        };
        let due = batch.len() >= limit
            || oldest.is_none_or(|t| {
                TimestampMs::now().0 - t.0 >= self.settings.flush_interval.as_millis() as i64
            });
        if !due {
            return Ok(false);
        }
        if self.send(&batch, shutdown).await? {
            *after = last_seq;
        }
        Ok(true)
    }

    /// Sends `batch` until InfluxDB takes or refuses it; false when stopped first.
    async fn send(&self, batch: &Batch, shutdown: &CancellationToken) -> Result<bool, StoreError> {
        let Some(last_seq) = batch.last_seq() else {
            return Ok(true);
        };
        let points = batch.len() as u64;
        let mut attempt = 0u32;
        loop {
            match self.writer.write(batch.lines.clone()).await {
                Ok(()) => {
                    self.admin
                        .write(move |c| outbox::accepted(c, last_seq, points))
                        .await?;
                    self.metrics.forward_batches.inc();
                    self.metrics.forward_points.inc_by(points);
                    return Ok(true);
                }
                Err(WriteError::Rejected { status, message }) => {
                    tracing::error!(status, %message, points, "forwarder: InfluxDB refused a batch as bad data; it is kept in forward_dead_letters");
                    let kept = batch.lines.clone();
                    self.admin
                        .write(move |c| {
                            let kept = String::from_utf8_lossy(&kept);
                            outbox::dead_letter(c, last_seq, points, status, &message, &kept)
                        })
                        .await?;
                    self.metrics.forward_dead_lettered.inc_by(points);
                    return Ok(true);
                }
                Err(WriteError::TooLarge { message }) if batch.len() > 1 => {
                    tracing::warn!(%message, points, "forwarder: batch too large for InfluxDB; sending it in halves");
                    // Halves in order, each acknowledged on its own.
                    let (first, second) = batch.halves();
                    return Ok(Box::pin(self.send(&first, shutdown)).await?
                        && Box::pin(self.send(&second, shutdown)).await?);
                }
                Err(e) => {
                    attempt += 1;
                    self.metrics.forward_retries.inc();
                    let delay = retry_delay(&e, attempt, self.settings.max_retry_delay);
                    // While InfluxDB is away the backlog grows: keep /metrics telling.
                    self.report_backlog().await?;
                    tracing::warn!(error = %e, attempt, retry_in = ?delay, backlog_points = points, "forwarder: InfluxDB write failed; the batch stays in the outbox");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.cancelled() => return Ok(false),
                    }
                }
            }
        }
    }

    /// Publishes the backlog in `/metrics`; returns when its oldest reading was committed.
    async fn report_backlog(&self) -> Result<Option<TimestampMs>, StoreError> {
        let (count, oldest) = self.pool.read(outbox::backlog).await?;
        self.metrics.forward_backlog_readings.set(count as i64);
        let behind = oldest.map_or(0, |t| (TimestampMs::now().0 - t.0).max(0) / 1000);
        self.metrics.forward_backlog_seconds.set(behind);
        Ok(oldest)
    }
}

/// Retry-After when the server gave one, else capped exponential back-off with jitter; a
/// settings problem waits the longest, since only an operator can fix it.
fn retry_delay(e: &WriteError, attempt: u32, max: Duration) -> Duration {
    match e {
        WriteError::Unavailable {
            retry_after: Some(after),
            ..
        } => (*after).min(max),
        WriteError::Settings { .. } => max,
        _ => {
            let base = Duration::from_millis(500)
                .saturating_mul(1 << attempt.saturating_sub(1).min(16))
                .min(max);
            base.mul_f64(rand::random_range(0.8..1.2)).min(max)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_honour_retry_after_and_back_off_to_the_cap() {
        let max = Duration::from_secs(60);
        let unavailable = |after| WriteError::Unavailable {
            message: String::new(),
            retry_after: after,
        };
        assert_eq!(
            retry_delay(&unavailable(Some(Duration::from_secs(7))), 1, max),
            Duration::from_secs(7)
        );
        assert!(retry_delay(&unavailable(None), 1, max) < Duration::from_secs(1));
        let late = retry_delay(&unavailable(None), 20, max);
        assert!(
            late <= max && late >= max.mul_f64(0.8),
            "capped, with jitter: {late:?}"
        );
    }
}
