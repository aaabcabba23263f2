//! The endpoint's door into the pipeline: a publish on a source's topic is decoded, validated,
//! handed to the store writer, and answered only once the batch that holds it is committed.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::topic;
use crate::ingest::{Decoder, RateLimiter};
use crate::metrics::Metrics;
use crate::model::TimestampMs;
use crate::store::writer::Envelope;
use crate::validate::Rejection;

/// Fired by the writer once the message's batch is committed.
pub type Committed = oneshot::Sender<()>;

/// The store writer stopped: nothing more can be committed, so nothing is acknowledged.
#[derive(Debug, thiserror::Error)]
#[error("the store writer has stopped")]
pub struct WriterGone;

#[derive(Clone)]
pub struct IngestPort {
    decoder: Decoder,
    filters: Arc<[String]>,
    /// Weak: the daemon holds the only strong sender, so that dropping it at shutdown lets the
    /// writer drain and stop even while connections still hold this port.
    queue: mpsc::WeakSender<(Envelope, Committed)>,
    limiter: Arc<Mutex<RateLimiter>>,
    metrics: Arc<Metrics>,
}

impl IngestPort {
    pub fn new(
        decoder: Decoder,
        queue: mpsc::WeakSender<(Envelope, Committed)>,
        limiter: RateLimiter,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            filters: decoder.filters().into(),
            decoder,
            queue,
            limiter: Arc::new(Mutex::new(limiter)),
            metrics,
        }
    }

    /// True when the topic belongs to a configured source: its messages are readings.
    pub fn wants(&self, topic: &str) -> bool {
        self.filters.iter().any(|f| topic::matches(f, topic))
    }

    /// Decodes, validates and commits one message; returns once it is on disk.
    pub async fn commit(&self, topic: &str, payload: Bytes) -> Result<(), WriterGone> {
        self.metrics.messages_received.inc();
        let mut envelope = self
            .decoder
            .envelope(topic, payload.clone(), TimestampMs::now());
        self.limiter
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .apply(&mut envelope, &payload, std::time::Instant::now());
        self.submit(envelope).await
    }

    /// Keeps a refused message in the quarantine, with its reason; returns once committed.
    pub async fn quarantine(
        &self,
        topic: &str,
        payload: Bytes,
        rejection: Rejection,
    ) -> Result<(), WriterGone> {
        let envelope = Envelope {
            source: None,
            topic: topic.to_owned(),
            received_at: TimestampMs::now(),
            device: None,
            gateway: None,
            readings: Vec::new(),
            rejections: vec![rejection],
            payload: Some(payload),
            expected_interval: std::time::Duration::from_secs(15 * 60),
            device_intervals: Vec::new(),
            lot: None,
        };
        self.submit(envelope).await
    }

    async fn submit(&self, envelope: Envelope) -> Result<(), WriterGone> {
        let (tx, rx) = oneshot::channel();
        let queue = self.queue.upgrade().ok_or(WriterGone)?;
        queue.send((envelope, tx)).await.map_err(|_| WriterGone)?;
        rx.await.map_err(|_| WriterGone)
    }
}

/// Fires the writer's commit notices: runs until the writer stops.
pub async fn acknowledge_commits(mut committed: mpsc::UnboundedReceiver<Vec<Committed>>) {
    while let Some(batch) = committed.recv().await {
        for c in batch {
            let _ = c.send(());
        }
    }
}
