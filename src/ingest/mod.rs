//! Ingest: MQTT messages in, [`Envelope`]s of validated readings and rejections out.
//!
//! [`mqtt`] owns the broker connection and the acknowledgements; [`Decoder`] turns one
//! message into an envelope: topic to identity, size check, payload format, validation.

pub mod fields;
pub mod mqtt;
pub mod native;
pub mod topic;

use bytes::Bytes;

use crate::config::Settings;
use crate::model::TimestampMs;
use crate::store::writer::Envelope;
use crate::validate::{self, Limits, RawReading, Reason, Rejection};
use topic::TopicPattern;

/// What a payload held for one device: readings to check, and the entries that could not
/// even be read. Every decoder produces these.
#[derive(Debug, Default, PartialEq)]
pub struct Decoded {
    /// The device the payload itself names (a LoRaWAN DevEUI in lowercase hex, a SenML device
    /// id), to be looked up in the device registry. `None` when the topic gives the identity.
    pub device: Option<String>,
    /// The message-wide time, when the payload has one.
    pub ts: Option<TimestampMs>,
    pub readings: Vec<RawReading>,
    pub problems: Vec<Rejection>,
}

/// Everything needed to judge a message; cheap to share between tasks.
#[derive(Debug, Clone)]
pub struct Decoder {
    patterns: Vec<TopicPattern>,
    limits: Limits,
    max_payload_bytes: usize,
}

impl Decoder {
    pub fn from_settings(s: &Settings) -> Result<Self, topic::PatternError> {
        Ok(Self {
            patterns: s
                .mqtt
                .topics
                .iter()
                .map(|t| TopicPattern::parse(t))
                .collect::<Result<_, _>>()?,
            limits: Limits {
                max_future_skew: s.validate.max_future_skew,
                max_age: s.validate.max_age,
            },
            max_payload_bytes: s.ingest.max_payload_bytes,
        })
    }

    /// The subscription filters, one per pattern.
    pub fn filters(&self) -> Vec<String> {
        self.patterns.iter().map(TopicPattern::filter).collect()
    }

    /// Judges one message. Never fails: what cannot be stored is quarantined with a reason.
    pub fn envelope(&self, topic: &str, payload: Bytes, received_at: TimestampMs) -> Envelope {
        let mut readings = Vec::new();
        let mut rejections = Vec::new();
        match self.judge(topic, &payload, received_at) {
            Ok((good, bad)) => {
                readings = good;
                rejections = bad;
            }
            Err(whole) => rejections.push(whole),
        }
        Envelope {
            topic: topic.to_owned(),
            received_at,
            readings,
            payload: (!rejections.is_empty()).then_some(payload),
            rejections,
        }
    }

    #[allow(clippy::type_complexity)]
    fn judge(
        &self,
        topic: &str,
        payload: &[u8],
        now: TimestampMs,
    ) -> Result<(Vec<crate::model::Reading>, Vec<Rejection>), Rejection> {
        if payload.len() > self.max_payload_bytes {
            return Err(Rejection::new(
                Reason::PayloadTooLarge,
                format!(
                    "payload of {} bytes is over the limit of {} bytes (ingest.max_payload_bytes)",
                    payload.len(),
                    self.max_payload_bytes
                ),
            ));
        }
        let origin = topic::identify(&self.patterns, topic)?;
        let decoded = native::decode(payload)?;
        let default_ts = decoded.ts.unwrap_or(now);
        let mut good = Vec::with_capacity(decoded.readings.len());
        let mut bad = decoded.problems;
        for raw in &decoded.readings {
            match validate::check(&origin, raw, default_ts, now, &self.limits) {
                Ok(r) => good.push(r),
                Err(e) => bad.push(e),
            }
        }
        Ok((good, bad))
    }
}
