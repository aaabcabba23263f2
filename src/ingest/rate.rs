//! Per-device rate limit: a token bucket per device, one minute's allowance deep.
//!
//! A device (or a misbehaving gateway repeating its messages) that floods is counted and
//! quarantined as `rate_limited`, and the other devices' messages flow on unslowed.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::store::writer::Envelope;
use crate::validate::{Reason, Rejection};

pub struct RateLimiter {
    per_minute: u32,
    buckets: HashMap<String, Bucket>,
    last_sweep: Instant,
}

struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// Buckets idle this long are full again and can be forgotten.
const IDLE: Duration = Duration::from_secs(120);

impl RateLimiter {
    /// `per_minute == 0` turns the limit off.
    pub fn new(per_minute: u32) -> Self {
        Self {
            per_minute,
            buckets: HashMap::new(),
            last_sweep: Instant::now(),
        }
    }

    /// Turns the envelope of a device over its limit into one `rate_limited` rejection.
    pub fn apply(&mut self, env: &mut Envelope, payload: &bytes::Bytes, now: Instant) {
        let Some(device) = env.device.as_deref() else {
            return;
        };
        if self.per_minute == 0 || self.take(device, now) {
            return;
        }
        let rejection = Rejection::new(
            Reason::RateLimited,
            format!(
                "device `{device}` sent more than {} messages in a minute (ingest.device_rate_limit)",
                self.per_minute
            ),
        )
        .for_device(Some(device));
        env.readings.clear();
        env.rejections = vec![rejection];
        env.payload = Some(payload.clone());
    }

    fn take(&mut self, device: &str, now: Instant) -> bool {
        if now.duration_since(self.last_sweep) > IDLE {
            self.buckets
                .retain(|_, b| now.duration_since(b.updated) < IDLE);
            self.last_sweep = now;
        }
        let capacity = f64::from(self.per_minute);
        let bucket = self.buckets.entry(device.to_owned()).or_insert(Bucket {
            tokens: capacity,
            updated: now,
        });
        let refill = now.duration_since(bucket.updated).as_secs_f64() * capacity / 60.0;
        bucket.tokens = (bucket.tokens + refill).min(capacity);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TimestampMs;

    fn envelope(device: &str) -> Envelope {
        Envelope {
            source: None,
            topic: "t".into(),
            received_at: TimestampMs(0),
            device: Some(device.into()),
            readings: Vec::new(),
            rejections: Vec::new(),
            payload: None,
            expected_interval: Duration::from_secs(600),
        }
    }

    #[test]
    fn a_flooding_device_is_limited_and_the_others_are_not() {
        let mut limiter = RateLimiter::new(60);
        let start = Instant::now();
        let payload = bytes::Bytes::from_static(b"{}");
        let mut limited = 0;
        for i in 0..200 {
            let mut e = envelope("chatty");
            limiter.apply(&mut e, &payload, start + Duration::from_millis(i));
            limited += usize::from(e.rejections.iter().any(|r| r.reason == Reason::RateLimited));
            let mut quiet = envelope("quiet");
            if i % 50 == 0 {
                limiter.apply(&mut quiet, &payload, start + Duration::from_millis(i));
                assert!(quiet.rejections.is_empty());
            }
        }
        assert_eq!(limited, 140, "a minute's allowance of 60, then nothing");
        // A second later one more message is allowed again.
        let mut e = envelope("chatty");
        limiter.apply(&mut e, &payload, start + Duration::from_millis(1200));
        assert!(e.rejections.is_empty());
    }
}
