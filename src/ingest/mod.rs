//! Ingest: MQTT messages in, [`Envelope`]s of validated readings and rejections out.
//!
//! [`mqtt`] owns the broker connection and the acknowledgements; [`Decoder`] turns one
//! message into an envelope: topic to source, size check, payload format, identity (from the
//! topic or the device registry), validation. [`RateLimiter`] keeps one device from flooding.

pub mod chirpstack;
pub mod fields;
pub mod json;
pub mod lorawan;
pub mod mqtt;
pub mod native;
mod rate;
pub mod senml;
pub mod topic;
pub mod tts;

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::watch;

use crate::config::{Format, Settings};
use crate::model::{Ident, TimestampMs, truncate};
use crate::registry::{DeviceEntry, Snapshot};
use crate::store::writer::Envelope;
use crate::validate::{self, Limits, Origin, RawReading, Reason, Rejection};
use fields::FieldMap;
pub use rate::RateLimiter;
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
    /// The LoRaWAN gateway that heard the device best, when the uplink names it.
    pub gateway: Option<String>,
}

/// One stream of messages: a topic pattern and how to read its payloads.
#[derive(Debug, Clone)]
struct Source {
    name: Arc<str>,
    format: Format,
    pattern: TopicPattern,
    fields: FieldMap,
    separator: char,
}

/// Everything needed to judge a message; cheap to clone into the API for replays.
#[derive(Debug, Clone)]
pub struct Decoder {
    sources: Vec<Source>,
    limits: Limits,
    max_payload_bytes: usize,
    registry: watch::Receiver<Snapshot>,
    expected_interval: std::time::Duration,
    /// Harvest lots on their own topic.
    lots: crate::harvest::Intake,
}

impl Decoder {
    pub fn from_settings(
        s: &Settings,
        registry: watch::Receiver<Snapshot>,
    ) -> Result<Self, topic::PatternError> {
        let mut sources = Vec::new();
        for t in &s.mqtt.topics {
            sources.push(Source {
                name: Arc::from("native"),
                format: Format::Native,
                pattern: TopicPattern::parse(t)?,
                fields: FieldMap::default(),
                separator: ':',
            });
        }
        for src in &s.sources {
            let defaults = match src.format {
                Format::Senml => FieldMap::senml_defaults(),
                _ => FieldMap::lorawan_defaults(),
            };
            sources.push(Source {
                name: Arc::from(src.name.as_str()),
                format: src.format,
                pattern: TopicPattern::parse_filter(&src.topic)?,
                fields: defaults.with(&src.fields),
                separator: src.separator,
            });
        }
        Ok(Self {
            sources,
            limits: Limits {
                max_future_skew: s.validate.max_future_skew,
                max_age: s.validate.max_age,
            },
            max_payload_bytes: s.ingest.max_payload_bytes,
            registry,
            expected_interval: s.health.expected_interval,
            lots: crate::harvest::Intake::new(
                &s.lots.topic,
                s.grading.clone(),
                s.aggregate.utc_offset_ms().unwrap_or(0),
            ),
        })
    }

    /// How lots are read and graded, for the API's own lot intake.
    pub fn lots(&self) -> &crate::harvest::Intake {
        &self.lots
    }

    /// The subscription filters, one per source.
    pub fn filters(&self) -> Vec<String> {
        let mut filters: Vec<String> = self.sources.iter().map(|s| s.pattern.filter()).collect();
        filters.push(self.lots.filter());
        filters.dedup();
        filters
    }

    /// Judges one message. Never fails: what cannot be stored is quarantined with a reason.
    /// `received_at` is also the clock that timestamps are judged against.
    pub fn envelope(&self, topic: &str, payload: Bytes, received_at: TimestampMs) -> Envelope {
        let mut env = Envelope {
            source: None,
            topic: topic.to_owned(),
            received_at,
            device: None,
            gateway: None,
            readings: Vec::new(),
            rejections: Vec::new(),
            payload: None,
            expected_interval: self.expected_interval,
            device_intervals: Vec::new(),
            lot: None,
        };
        if let Some(place) = self.lots.place(topic) {
            self.lot(place, &payload, &mut env);
            return env;
        }
        if let Err(whole) = self.judge(topic, &payload, &mut env) {
            env.rejections.push(whole);
        }
        if !env.rejections.is_empty() || clashes(&env.readings) {
            env.payload = Some(payload);
        }
        env
    }

    /// A message on the lot topic: one lot, or the reasons it is refused. Its payload is kept
    /// in any case, so a lot that clashes with a stored one can be quarantined whole.
    fn lot(&self, place: Result<(Ident, Ident), Rejection>, payload: &Bytes, env: &mut Envelope) {
        env.source = Some("lots".into());
        env.payload = Some(payload.clone());
        if payload.len() > self.max_payload_bytes {
            env.rejections.push(Rejection::new(
                Reason::PayloadTooLarge,
                format!(
                    "lot of {} bytes is over the limit of {} bytes (ingest.max_payload_bytes)",
                    payload.len(),
                    self.max_payload_bytes
                ),
            ));
            return;
        }
        let result = place.map_err(|e| vec![e]).and_then(|(orchard, block)| {
            self.lots
                .by_mqtt(&orchard, &block, payload, env.received_at)
        });
        match result {
            Ok(incoming) => env.lot = Some(Box::new(incoming)),
            Err(problems) => env.rejections.extend(problems),
        }
    }

    fn judge(&self, topic: &str, payload: &[u8], env: &mut Envelope) -> Result<(), Rejection> {
        let Some((source, topic_origin)) = self
            .sources
            .iter()
            .find_map(|s| s.pattern.identify(topic).map(|o| (s, o)))
        else {
            return Err(Rejection::new(
                Reason::InvalidIdentifier,
                format!("topic `{}` fits no configured source", truncate(topic, 120)),
            ));
        };
        env.source = Some(source.name.to_string());
        let topic_origin = topic_origin?;
        env.device = topic_origin.as_ref().map(|o| o.device.to_string());
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
        let groups = decode(source, payload, env.received_at)?;
        let registry = self.registry.borrow().clone();
        for group in groups {
            if env.device.is_none() {
                env.device.clone_from(&group.device);
            }
            if env.gateway.is_none() {
                env.gateway.clone_from(&group.gateway);
            }
            match identity(topic_origin.as_ref(), group.device.as_deref(), &registry) {
                Ok((origin, entry)) => self.check_group(group, &origin, entry, env),
                Err(e) => {
                    let device = group.device.clone();
                    env.rejections.push(e.for_device(device.as_deref()));
                    env.rejections.extend(
                        group
                            .problems
                            .into_iter()
                            .map(|p| p.for_device(device.as_deref())),
                    );
                }
            }
        }
        Ok(())
    }

    fn check_group(
        &self,
        group: Decoded,
        origin: &Origin,
        entry: Option<&DeviceEntry>,
        env: &mut Envelope,
    ) {
        let device = Some(origin.device.as_str());
        if let Some(interval) = entry.and_then(|e| e.expected_interval) {
            env.device_intervals.push((origin.device.clone(), interval));
        }
        let default_ts = group.ts.unwrap_or(env.received_at);
        let default_depth = entry.and_then(DeviceEntry::default_depth);
        env.rejections
            .extend(group.problems.into_iter().map(|p| p.for_device(device)));
        for mut raw in group.readings {
            raw.depth_cm = raw.depth_cm.or(default_depth);
            match validate::check(origin, &raw, default_ts, env.received_at, &self.limits) {
                Ok(r) => env.readings.push(r),
                Err(e) => env.rejections.push(e.for_device(device)),
            }
        }
    }
}

/// Whether two readings of one message share a series and time with different values: the
/// writer will quarantine the second as `conflicting_value`, and staff need the payload.
fn clashes(readings: &[crate::model::Reading]) -> bool {
    if readings.len() < 2 {
        return false;
    }
    let mut seen = std::collections::HashMap::with_capacity(readings.len());
    readings.iter().any(|r| {
        seen.insert((&r.series, r.ts), r.value)
            .is_some_and(|v| v != r.value)
    })
}

/// One decoder per format; each yields a group of raw readings per device it names.
fn decode(source: &Source, payload: &[u8], now: TimestampMs) -> Result<Vec<Decoded>, Rejection> {
    match source.format {
        Format::Native => native::decode(payload).map(|d| vec![d]),
        Format::Senml => {
            let opts = senml::SenmlOptions {
                separator: source.separator,
            };
            senml::decode(payload, &opts, &source.fields, now)
        }
        Format::Chirpstack => chirpstack::decode(payload, &source.fields),
        Format::Tts => tts::decode(payload, &source.fields),
    }
}

/// Where a group of readings belongs: the topic says so, or the registry knows the device.
fn identity<'r>(
    topic_origin: Option<&Origin>,
    device: Option<&str>,
    registry: &'r crate::registry::Registry,
) -> Result<(Origin, Option<&'r DeviceEntry>), Rejection> {
    if let Some(origin) = topic_origin {
        // Device ids are case-insensitive: `Probe-7` in a topic is the registry's `probe-7`,
        // and its readings are stored under the registry's spelling, as a DevEUI's are.
        let entry = registry.get(origin.device.as_str());
        let mut origin = origin.clone();
        if let Some(e) = entry {
            origin.device = Ident::clone(&e.id);
        }
        return Ok((origin, entry));
    }
    let Some(id) = device else {
        return Err(Rejection::new(
            Reason::InvalidIdentifier,
            "the topic gives no orchard, block and device, and the payload names no device",
        ));
    };
    let Some(device) = crate::registry::normalise(id) else {
        return Err(Rejection::new(
            Reason::InvalidIdentifier,
            format!(
                "device id `{}` is not [A-Za-z0-9_-]{{1,64}}",
                truncate(id, 80)
            ),
        ));
    };
    match registry.get(device.as_str()) {
        Some(entry) => Ok((
            Origin {
                orchard: entry.orchard.clone(),
                block: entry.block.clone(),
                device: Ident::clone(&entry.id),
            },
            Some(entry),
        )),
        None => Err(Rejection::new(
            Reason::UnknownDevice,
            format!(
                "device `{device}` is in no registry entry; assign it with PUT /api/v1/devices/{device}, then replay its messages"
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decoder() -> Decoder {
        let mut settings = Settings::default();
        settings.sources.push(crate::config::SourceSettings {
            name: "senml".into(),
            format: Format::Senml,
            topic: "senml/#".into(),
            fields: Default::default(),
            separator: ':',
        });
        let registry = crate::registry::Registry::new([crate::registry::DeviceEntry {
            id: "0101010101010101".parse().unwrap(),
            orchard: "o".parse().unwrap(),
            block: "b".parse().unwrap(),
            position: None,
            depths_cm: vec![],
            installed: None,
            expected_interval: None,
        }]);
        let (_tx, rx) = watch::channel(Arc::new(registry));
        Decoder::from_settings(&settings, rx).unwrap()
    }

    const TOPICS: &[&str] = &[
        "orchards/o/b/d/telemetry",
        "orchards/o/b/d/status",
        "application/1/device/0101010101010101/event/up",
        "v3/app@t/devices/d/up",
        "senml/gw",
        "elsewhere/entirely",
    ];

    proptest! {
        /// Whatever arrives on whatever topic ends as readings or as quarantine entries with a
        /// reason, and the raw payload is kept whenever anything was rejected.
        #[test]
        fn no_message_vanishes(topic in prop::sample::select(TOPICS), payload in prop::collection::vec(any::<u8>(), 0..300)) {
            let env = decoder().envelope(topic, Bytes::from(payload.clone()), TimestampMs::now());
            prop_assert!(!env.readings.is_empty() || !env.rejections.is_empty());
            prop_assert!(env.rejections.iter().all(|r| !r.detail.is_empty()));
            if !env.rejections.is_empty() {
                prop_assert_eq!(env.payload.as_deref(), Some(&payload[..]));
            }
        }

        #[test]
        fn no_json_message_vanishes(topic in prop::sample::select(TOPICS), json in json_value()) {
            let payload = json.to_string();
            let env = decoder().envelope(topic, Bytes::from(payload), TimestampMs::now());
            prop_assert!(!env.readings.is_empty() || !env.rejections.is_empty());
        }
    }

    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        let keys = [
            "ts",
            "readings",
            "kind",
            "value",
            "unit",
            "soil_moisture",
            "object",
            "deviceInfo",
            "n",
            "v",
            "bn",
        ];
        json::strategies::json_with_keys(
            prop::sample::select(keys.to_vec()).prop_map(str::to_owned),
        )
    }
}
