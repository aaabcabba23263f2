//! Per-device flood guard: at most `ingest.device_rate_limit` readings per device per minute
//! of *reading time*.
//!
//! What is counted is the readings' own timestamps, in UTC minute buckets
//! (`ts.div_euclid(60_000)`), not the wall clock at which they arrive. A backlog never exceeds
//! such a limit: a device that reports every 10 s with 11 readings has 66 readings in each
//! minute of its own time however late, and however fast, a broker or gateway delivers them
//! after an outage. A flood does exceed it: a gateway repeating its messages, or a sensor whose
//! clock is stuck and stamps everything with the same minute. The readings beyond the limit in
//! one minute are quarantined as `rate_limited`; the device's readings in other minutes, and
//! the other devices, flow on unslowed.
//!
//! The limiter decides per reading. One message whose readings fall in several minutes can have
//! some stored and some quarantined; each (device, minute) of a message that went over the
//! limit gets one quarantine entry, with the count in its detail and the message's payload.
//!
//! # Memory
//!
//! Per device the limiter keeps the counts of at most [`SLOTS`] reading-time minutes (8 bytes
//! each) in a fixed array; a minute not among them takes the slot of the minute farthest from
//! it, which in a stream delivered in time order is the oldest. Devices from which nothing came
//! for [`IDLE`] (wall clock) are forgotten. The bound is therefore
//! `devices heard from in the last IDLE × (SLOTS × 8 + 16 (last seen) + 24 (name) bytes + the
//! name's characters + the map's overhead)`, about 150 bytes a device, whatever the traffic:
//! 1.5 MB for 10 000 devices.
//!
//! Forgetting only ever makes the limiter more permissive: a forgotten minute starts again at
//! zero, so a legitimate backlog is never limited because of it. A device that spreads a flood
//! over more than [`SLOTS`] minutes at a time, or pauses for [`IDLE`], can get more than the
//! limit into a minute; the guard is for the floods that happen by accident (a repeating
//! gateway, a stuck clock), not a defence against a publisher that means harm, which is what
//! MQTT credentials and topic permissions are for.
//!
//! # Duplicates
//!
//! A redelivered message counts again: the limiter runs before the store and cannot know that
//! the store already has a reading. That is acceptable because the default limit (600) is high
//! relative to normal traffic: a station reporting 11 readings every 10 s puts 66 readings in a
//! minute, so each of its minutes would have to be delivered nine times over before one reading
//! was limited, and an external broker redelivers only what it had in flight, once per
//! reconnection. It matters only for a device whose normal traffic is more than about half the
//! limit: where such devices report, raise `ingest.device_rate_limit` (one setting for all
//! devices) rather than let a redelivery after a reconnect quarantine part of a minute. After a restart of orchardd the counts start from
//! zero, so a broker's redelivery of a session's backlog is counted once. It is also what still
//! catches a gateway stuck repeating one message: its copies are duplicates, and they add up.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::model::TimestampMs;
use crate::store::writer::Envelope;
use crate::validate::{Reason, Rejection};

/// Reading-time minutes remembered per device.
pub const SLOTS: usize = 8;

/// Devices silent for this long (wall clock) are forgotten.
pub const IDLE: Duration = Duration::from_secs(600);

const MINUTE_MS: i64 = 60_000;

pub struct RateLimiter {
    per_minute: u32,
    devices: HashMap<String, Minutes>,
    last_sweep: Instant,
}

/// One device's counts of readings let through, per reading-time minute.
struct Minutes {
    slots: [Slot; SLOTS],
    seen: Instant,
}

/// `count == 0` marks a free slot.
#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    /// Minutes since the Unix epoch, UTC (fits an `i32` for ±4000 years).
    minute: i32,
    count: u32,
}

impl Minutes {
    fn new(seen: Instant) -> Self {
        Self {
            slots: [Slot::default(); SLOTS],
            seen,
        }
    }

    /// Counts one reading in `minute`; false when the minute already holds `limit`.
    fn take(&mut self, minute: i32, limit: u32) -> bool {
        if let Some(slot) = self
            .slots
            .iter_mut()
            .find(|s| s.count > 0 && s.minute == minute)
        {
            if slot.count >= limit {
                return false;
            }
            slot.count += 1;
            return true;
        }
        let slot = match self.slots.iter_mut().find(|s| s.count == 0) {
            Some(free) => free,
            None => self
                .slots
                .iter_mut()
                .max_by_key(|s| (i64::from(s.minute) - i64::from(minute)).abs())
                .expect("SLOTS > 0"),
        };
        *slot = Slot { minute, count: 1 };
        true
    }
}

/// The readings of one device and minute that one message had over the limit.
struct Over {
    device: String,
    minute: i32,
    readings: u32,
}

impl RateLimiter {
    /// `per_minute == 0` turns the limit off.
    pub fn new(per_minute: u32) -> Self {
        Self {
            per_minute,
            devices: HashMap::new(),
            last_sweep: Instant::now(),
        }
    }

    /// Moves the envelope's readings that are over their device's limit for their minute of
    /// reading time into `rate_limited` rejections (one per device and minute), keeping the
    /// payload for the quarantine. The other readings stay accepted.
    pub fn apply(&mut self, env: &mut Envelope, payload: &bytes::Bytes, now: Instant) {
        if self.per_minute == 0 || env.readings.is_empty() {
            return;
        }
        self.sweep(now);
        let limit = self.per_minute;
        let devices = &mut self.devices;
        let mut over: Vec<Over> = Vec::new();
        env.readings.retain(|r| {
            let device = r.series.device.as_str();
            let minute = minute_of(r.ts);
            let counts = match devices.get_mut(device) {
                Some(m) => m,
                None => devices
                    .entry(device.to_owned())
                    .or_insert_with(|| Minutes::new(now)),
            };
            counts.seen = now;
            if counts.take(minute, limit) {
                return true;
            }
            match over
                .iter_mut()
                .find(|o| o.minute == minute && o.device == device)
            {
                Some(o) => o.readings += 1,
                None => over.push(Over {
                    device: device.to_owned(),
                    minute,
                    readings: 1,
                }),
            }
            false
        });
        if over.is_empty() {
            return;
        }
        for o in over {
            let from = TimestampMs(i64::from(o.minute) * MINUTE_MS).to_rfc3339();
            let detail = format!(
                "{n} reading{s} of device `{device}` stamped in the minute from {from} {are} over \
                 the {limit} readings a device may store per minute of reading time \
                 (ingest.device_rate_limit)",
                n = o.readings,
                s = if o.readings == 1 { "" } else { "s" },
                are = if o.readings == 1 { "is" } else { "are" },
                device = o.device,
            );
            env.rejections.push(
                Rejection::new(Reason::RateLimited, detail).for_device(Some(o.device.as_str())),
            );
        }
        env.payload = Some(payload.clone());
    }

    /// Forgets the devices silent for [`IDLE`]; runs at most once per [`IDLE`].
    fn sweep(&mut self, now: Instant) {
        if now.duration_since(self.last_sweep) < IDLE {
            return;
        }
        self.devices
            .retain(|_, m| now.duration_since(m.seen) < IDLE);
        self.last_sweep = now;
    }

    #[cfg(test)]
    fn devices_remembered(&self) -> usize {
        self.devices.len()
    }
}

/// The UTC minute a timestamp falls in. Validation has already bounded the timestamps to
/// `validate.max_age` .. now + `validate.max_future_skew`, well inside `i32` minutes.
fn minute_of(ts: TimestampMs) -> i32 {
    ts.0.div_euclid(MINUTE_MS)
        .clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Kind, Reading, SeriesKey};

    const KINDS: [Kind; 11] = [
        Kind::AirTemperature,
        Kind::RelativeHumidity,
        Kind::SoilTemperature,
        Kind::SoilMoisture,
        Kind::SoilEc,
        Kind::LeafWetness,
        Kind::Rainfall,
        Kind::WindSpeed,
        Kind::SolarRadiation,
        Kind::BatteryV,
        Kind::Irrigation,
    ];

    fn reading(device: &str, kind: Kind, ts: i64) -> Reading {
        Reading {
            series: SeriesKey {
                orchard: "fengjie".parse().unwrap(),
                block: "B1".parse().unwrap(),
                device: device.parse().unwrap(),
                kind,
                depth_cm: None,
            },
            ts: TimestampMs(ts),
            value: 1.0,
        }
    }

    fn envelope(readings: Vec<Reading>) -> Envelope {
        Envelope {
            source: None,
            topic: "t".into(),
            received_at: TimestampMs(0),
            device: readings.first().map(|r| r.series.device.to_string()),
            gateway: None,
            readings,
            rejections: Vec::new(),
            payload: None,
            expected_interval: Duration::from_secs(600),
            device_intervals: Vec::new(),
            lot: None,
        }
    }

    /// A station's message: one reading of each of 11 kinds at `ts`.
    fn station_message(device: &str, ts: i64) -> Envelope {
        envelope(KINDS.iter().map(|k| reading(device, *k, ts)).collect())
    }

    fn limited(e: &Envelope) -> Vec<&Rejection> {
        e.rejections
            .iter()
            .filter(|r| r.reason == Reason::RateLimited)
            .collect()
    }

    static PAYLOAD: bytes::Bytes = bytes::Bytes::from_static(b"{\"ts\":0}");
    /// 2026-11-23T10:15:00Z, on a minute boundary.
    const T0: i64 = 1_795_428_900_000;

    #[test]
    fn a_flood_stamped_in_one_minute_is_limited_to_the_minute_allowance() {
        let mut limiter = RateLimiter::new(600);
        let now = Instant::now();
        let (mut stored, mut quarantined) = (0, 0);
        for i in 0..2_000 {
            // A gateway repeating one reading, and a stuck clock: all in the minute of T0.
            let mut e = envelope(vec![reading(
                "broken-gauge",
                Kind::Rainfall,
                T0 + i % 60_000,
            )]);
            limiter.apply(&mut e, &PAYLOAD, now);
            stored += e.readings.len();
            let l = limited(&e);
            quarantined += l.len();
            if let Some(r) = l.first() {
                assert_eq!(r.device.as_deref(), Some("broken-gauge"));
                assert!(
                    r.detail.contains("2026-11-23T10:15:00.000Z"),
                    "{}",
                    r.detail
                );
                assert_eq!(
                    e.payload.as_ref(),
                    Some(&PAYLOAD),
                    "kept for the quarantine"
                );
            } else {
                assert!(e.payload.is_none());
            }
        }
        assert_eq!(stored, 600, "the minute's allowance");
        assert_eq!(quarantined, 1_400, "the rest, one entry per message");
        // The next minute of reading time has its own allowance, even at the same instant.
        let mut e = envelope(vec![reading("broken-gauge", Kind::Rainfall, T0 + 60_000)]);
        limiter.apply(&mut e, &PAYLOAD, now);
        assert_eq!(e.readings.len(), 1);
        assert!(e.rejections.is_empty());
    }

    #[test]
    fn a_three_hour_backlog_at_10_s_delivered_in_a_burst_is_not_limited_at_all() {
        let mut limiter = RateLimiter::new(600);
        let now = Instant::now();
        let start = T0 - 3 * 3_600_000;
        let mut stored = 0;
        // 1080 messages of 11 readings, all arriving at the same instant.
        for n in 0..1_080 {
            let mut e = station_message("station-1", start + n * 10_000);
            limiter.apply(&mut e, &PAYLOAD, now);
            assert!(e.rejections.is_empty(), "message {n}: {:?}", e.rejections);
            assert!(e.payload.is_none());
            stored += e.readings.len();
        }
        assert_eq!(stored, 1_080 * 11);
        // Delivered again (a redelivery after a reconnect) it still fits: 2 × 66 < 600.
        for n in 0..1_080 {
            let mut e = station_message("station-1", start + n * 10_000);
            limiter.apply(&mut e, &PAYLOAD, now);
            assert!(e.rejections.is_empty());
        }
        // A gateway's day uploaded in one message, a minute per reading: nothing limited.
        let day: Vec<_> = (0..1_440)
            .map(|m| reading("logger-7", Kind::SoilMoisture, T0 - 86_400_000 + m * 60_000))
            .collect();
        let mut e = envelope(day);
        limiter.apply(&mut e, &PAYLOAD, now);
        assert_eq!(e.readings.len(), 1_440);
        assert!(e.rejections.is_empty());
    }

    #[test]
    fn other_devices_are_unaffected_by_a_flooding_neighbour() {
        let mut limiter = RateLimiter::new(60);
        let now = Instant::now();
        for i in 0..500 {
            let mut flood = station_message("chatty", T0 + i);
            limiter.apply(&mut flood, &PAYLOAD, now);
            // The neighbour reports in the very same minute of reading time.
            if i % 100 == 0 {
                let mut quiet = station_message("quiet", T0 + i);
                limiter.apply(&mut quiet, &PAYLOAD, now);
                assert!(quiet.rejections.is_empty());
                assert_eq!(quiet.readings.len(), 11);
            }
        }
        let mut e = station_message("chatty", T0);
        limiter.apply(&mut e, &PAYLOAD, now);
        assert!(e.readings.is_empty());
        assert_eq!(limited(&e).len(), 1);
        assert!(
            limited(&e)[0]
                .detail
                .contains("11 readings of device `chatty`")
        );
    }

    #[test]
    fn a_message_is_judged_per_reading_and_per_device() {
        let mut limiter = RateLimiter::new(3);
        let now = Instant::now();
        // A SenML pack of two devices, readings in two minutes each.
        let mut readings = Vec::new();
        for device in ["a", "b"] {
            for i in 0..5 {
                readings.push(reading(device, Kind::AirTemperature, T0 + i));
            }
            readings.push(reading(device, Kind::AirTemperature, T0 + 60_000));
        }
        let mut e = envelope(readings);
        e.rejections
            .push(Rejection::new(Reason::OutOfRange, "an unrelated one"));
        limiter.apply(&mut e, &PAYLOAD, now);
        let kept: Vec<_> = e
            .readings
            .iter()
            .map(|r| (r.series.device.to_string(), r.ts.0 - T0))
            .collect();
        let want = |d: &str| [0, 1, 2, 60_000].map(|t| (d.to_owned(), t));
        assert_eq!(kept, [want("a"), want("b")].concat());
        let l = limited(&e);
        assert_eq!(l.len(), 2, "one entry per device and minute");
        assert!(
            l[0].detail.starts_with("2 readings of device `a`"),
            "{}",
            l[0].detail
        );
        assert_eq!(l[1].device.as_deref(), Some("b"));
        assert_eq!(e.rejections.len(), 3, "the other rejection stays");
    }

    #[test]
    fn memory_stays_bounded_and_forgetting_never_limits_more() {
        let mut limiter = RateLimiter::new(2);
        let now = Instant::now();
        // Fill one minute, then visit many others: the slots are reused...
        for _ in 0..2 {
            let mut e = envelope(vec![reading("d", Kind::Rainfall, T0)]);
            limiter.apply(&mut e, &PAYLOAD, now);
            assert!(e.rejections.is_empty());
        }
        for m in 1..=SLOTS as i64 {
            let mut e = envelope(vec![reading("d", Kind::Rainfall, T0 + m * 60_000)]);
            limiter.apply(&mut e, &PAYLOAD, now);
            assert!(e.rejections.is_empty());
        }
        // ...and the minute farthest away was forgotten: it has its allowance again.
        let mut e = envelope(vec![reading("d", Kind::Rainfall, T0)]);
        limiter.apply(&mut e, &PAYLOAD, now);
        assert!(e.rejections.is_empty());
        // Idle devices are swept.
        for i in 0..100 {
            let mut e = envelope(vec![reading(&format!("d{i}"), Kind::Rainfall, T0)]);
            limiter.apply(&mut e, &PAYLOAD, now);
        }
        assert_eq!(limiter.devices_remembered(), 101);
        let later = now + IDLE + Duration::from_secs(1);
        let mut e = envelope(vec![reading("fresh", Kind::Rainfall, T0)]);
        limiter.apply(&mut e, &PAYLOAD, later);
        assert_eq!(limiter.devices_remembered(), 1);
    }

    #[test]
    fn zero_turns_the_limit_off() {
        let mut limiter = RateLimiter::new(0);
        let now = Instant::now();
        for i in 0..1_000 {
            let mut e = station_message("chatty", T0 + i);
            limiter.apply(&mut e, &PAYLOAD, now);
            assert_eq!(e.readings.len(), 11);
            assert!(e.rejections.is_empty());
        }
        assert_eq!(limiter.devices_remembered(), 0);
    }

    #[test]
    fn minutes_are_utc_minute_buckets_of_the_reading_time() {
        assert_eq!(minute_of(TimestampMs(0)), 0);
        assert_eq!(minute_of(TimestampMs(59_999)), 0);
        assert_eq!(minute_of(TimestampMs(60_000)), 1);
        assert_eq!(minute_of(TimestampMs(-1)), -1);
        assert_eq!(minute_of(TimestampMs(T0)), (T0 / 60_000) as i32);
    }
}
