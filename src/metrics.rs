//! Counters and histograms behind `GET /metrics` (Prometheus text format).

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::validate::Reason;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: ReasonValue,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct ReasonValue(pub Reason);

impl EncodeLabelValue for ReasonValue {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelValueEncoder,
    ) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.0.as_str(), encoder)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChannelLabel {
    pub channel: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeliveryLabel {
    pub channel: String,
    /// `delivered` or `failed`.
    pub outcome: &'static str,
}

/// Every metric orchardd exports. Cheap to update from any task (atomics inside).
pub struct Metrics {
    registry: Registry,
    pub messages_received: Counter,
    pub readings_accepted: Counter,
    pub readings_duplicate: Counter,
    pub lots_accepted: Counter,
    pub lots_duplicate: Counter,
    pub rejected: Family<ReasonLabel, Counter>,
    pub commit_seconds: Histogram,
    pub batch_readings: Histogram,
    pub reading_age_at_commit_seconds: Histogram,
    pub mqtt_connected: Gauge,
    pub mqtt_reconnects: Counter,
    pub mqtt_connections: Gauge,
    pub mqtt_connects: Counter,
    pub mqtt_refused_logins: Counter,
    pub mqtt_takeovers: Counter,
    pub mqtt_publishes_in: Counter,
    pub mqtt_publishes_refused: Counter,
    pub mqtt_publishes_out: Counter,
    pub mqtt_ack_seconds: Histogram,
    pub mqtt_paused_connections: Gauge,
    pub mqtt_subscriptions: Gauge,
    pub mqtt_retained: Gauge,
    pub mqtt_deliveries_dropped: Counter,
    pub mqtt_protocol_errors: Counter,
    pub forward_backlog_readings: Gauge,
    pub forward_backlog_seconds: Gauge,
    pub forward_batches: Counter,
    pub forward_points: Counter,
    pub forward_retries: Counter,
    pub forward_dead_lettered: Counter,
    // Read from the store when /metrics is scraped (see `Metrics::census`).
    pub alerts: Family<StateLabel, Gauge>,
    pub notification_attempts: Family<DeliveryLabel, Gauge>,
    pub notifications_pending: Family<ChannelLabel, Gauge>,
    pub store_bytes: Gauge,
    /// 0 while commits fail (a full disk, `store.max_bytes` reached, a read-only store).
    pub store_writable: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("orchardd");
        let m = Self {
            messages_received: Counter::default(),
            readings_accepted: Counter::default(),
            readings_duplicate: Counter::default(),
            lots_accepted: Counter::default(),
            lots_duplicate: Counter::default(),
            rejected: Family::default(),
            commit_seconds: Histogram::new(exponential_buckets(0.0001, 1.5, 28)),
            batch_readings: Histogram::new(exponential_buckets(1.0, 2.0, 16)),
            // Fine buckets: the benchmark reads p50 and p99 of publish-to-commit from these.
            reading_age_at_commit_seconds: Histogram::new(exponential_buckets(0.0005, 1.2, 70)),
            mqtt_connected: Gauge::default(),
            mqtt_reconnects: Counter::default(),
            mqtt_connections: Gauge::default(),
            mqtt_connects: Counter::default(),
            mqtt_refused_logins: Counter::default(),
            mqtt_takeovers: Counter::default(),
            mqtt_publishes_in: Counter::default(),
            mqtt_publishes_refused: Counter::default(),
            mqtt_publishes_out: Counter::default(),
            mqtt_ack_seconds: Histogram::new(exponential_buckets(0.0005, 1.2, 70)),
            mqtt_paused_connections: Gauge::default(),
            mqtt_subscriptions: Gauge::default(),
            mqtt_retained: Gauge::default(),
            mqtt_deliveries_dropped: Counter::default(),
            mqtt_protocol_errors: Counter::default(),
            forward_backlog_readings: Gauge::default(),
            forward_backlog_seconds: Gauge::default(),
            forward_batches: Counter::default(),
            forward_points: Counter::default(),
            forward_retries: Counter::default(),
            forward_dead_lettered: Counter::default(),
            alerts: Family::default(),
            notification_attempts: Family::default(),
            notifications_pending: Family::default(),
            store_bytes: Gauge::default(),
            store_writable: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "messages_received",
            "MQTT messages received",
            m.messages_received.clone(),
        );
        registry.register(
            "readings_accepted",
            "Readings validated and committed to the store",
            m.readings_accepted.clone(),
        );
        registry.register(
            "readings_duplicate",
            "Readings dropped because the store already held them (redeliveries)",
            m.readings_duplicate.clone(),
        );
        registry.register(
            "lots_accepted",
            "Harvest lots committed to the store (MQTT and HTTP)",
            m.lots_accepted.clone(),
        );
        registry.register(
            "lots_duplicate",
            "Harvest lots the store already held with the same content (redeliveries, repeated POSTs)",
            m.lots_duplicate.clone(),
        );
        registry.register(
            "rejected",
            "Messages or readings quarantined, by reason",
            m.rejected.clone(),
        );
        registry.register(
            "commit_seconds",
            "Time to commit one batch to the embedded store",
            m.commit_seconds.clone(),
        );
        registry.register(
            "batch_readings",
            "Readings per committed batch",
            m.batch_readings.clone(),
        );
        registry.register(
            "reading_age_at_commit_seconds",
            "Commit time minus the reading's own timestamp (publish-to-commit latency for live sensors)",
            m.reading_age_at_commit_seconds.clone(),
        );
        registry.register(
            "mqtt_connected",
            "1 while the MQTT subscription is connected",
            m.mqtt_connected.clone(),
        );
        registry.register(
            "mqtt_reconnects",
            "Connection attempts to the broker after the first",
            m.mqtt_reconnects.clone(),
        );
        registry.register(
            "mqtt_connections",
            "Clients connected to orchardd's MQTT endpoint",
            m.mqtt_connections.clone(),
        );
        registry.register(
            "mqtt_connects",
            "Connections the MQTT endpoint accepted",
            m.mqtt_connects.clone(),
        );
        registry.register(
            "mqtt_refused_logins",
            "CONNECTs the MQTT endpoint refused (bad credentials, not authorised)",
            m.mqtt_refused_logins.clone(),
        );
        registry.register(
            "mqtt_takeovers",
            "Connections closed because a new one took over their client id",
            m.mqtt_takeovers.clone(),
        );
        registry.register(
            "mqtt_publishes_in",
            "PUBLISH packets the MQTT endpoint received",
            m.mqtt_publishes_in.clone(),
        );
        registry.register(
            "mqtt_publishes_refused",
            "PUBLISH packets outside their user's topic patterns (quarantined as not_authorized)",
            m.mqtt_publishes_refused.clone(),
        );
        registry.register(
            "mqtt_publishes_out",
            "PUBLISH packets the MQTT endpoint sent to subscribers",
            m.mqtt_publishes_out.clone(),
        );
        registry.register(
            "mqtt_ack_seconds",
            "Receipt of a QoS 1/2 PUBLISH to its PUBACK/PUBREC, i.e. to the commit that holds it",
            m.mqtt_ack_seconds.clone(),
        );
        registry.register(
            "mqtt_paused_connections",
            "Connections whose in-flight window is full, waiting for the store (back-pressure)",
            m.mqtt_paused_connections.clone(),
        );
        registry.register(
            "mqtt_subscriptions",
            "Subscriptions held by the MQTT endpoint's sessions",
            m.mqtt_subscriptions.clone(),
        );
        registry.register(
            "mqtt_retained",
            "Retained messages the MQTT endpoint keeps",
            m.mqtt_retained.clone(),
        );
        registry.register(
            "mqtt_deliveries_dropped",
            "Messages for a subscriber dropped because its queue was full",
            m.mqtt_deliveries_dropped.clone(),
        );
        registry.register(
            "mqtt_protocol_errors",
            "Endpoint connections closed because the client sent a packet MQTT does not allow",
            m.mqtt_protocol_errors.clone(),
        );
        registry.register(
            "forward_backlog_readings",
            "Readings committed but not yet accepted by InfluxDB",
            m.forward_backlog_readings.clone(),
        );
        registry.register(
            "forward_backlog_seconds",
            "Age of the oldest reading waiting for InfluxDB",
            m.forward_backlog_seconds.clone(),
        );
        registry.register(
            "forward_batches",
            "Batches InfluxDB accepted",
            m.forward_batches.clone(),
        );
        registry.register(
            "forward_points",
            "Points InfluxDB accepted",
            m.forward_points.clone(),
        );
        registry.register(
            "forward_retries",
            "Failed InfluxDB writes that will be retried",
            m.forward_retries.clone(),
        );
        registry.register(
            "forward_dead_lettered",
            "Points InfluxDB refused as bad data, kept in forward_dead_letters",
            m.forward_dead_lettered.clone(),
        );
        registry.register(
            "alerts",
            "Alerts in the store, by state (open, acknowledged, resolved)",
            m.alerts.clone(),
        );
        registry.register(
            "notification_attempts",
            "Alert notification attempts in the store, by channel and outcome",
            m.notification_attempts.clone(),
        );
        registry.register(
            "notifications_pending",
            "Alert events a channel has not delivered yet",
            m.notifications_pending.clone(),
        );
        registry.register(
            "store_bytes",
            "Size of the embedded store on disk, WAL included",
            m.store_bytes.clone(),
        );
        registry.register(
            "store_writable",
            "1 while store commits succeed; 0 while they fail (disk full, store.max_bytes reached, read-only)",
            m.store_writable.clone(),
        );
        m.store_writable.set(1);
        for reason in Reason::ALL {
            let _ = m.rejected.get_or_create(&label(*reason));
        }
        for state in ["open", "acknowledged", "resolved"] {
            let _ = m.alerts.get_or_create(&StateLabel {
                state: state.into(),
            });
        }
        Self { registry, ..m }
    }
}

fn label(reason: Reason) -> ReasonLabel {
    ReasonLabel {
        reason: ReasonValue(reason),
    }
}

impl Metrics {
    pub fn reject(&self, reason: Reason) {
        self.rejected.get_or_create(&label(reason)).inc();
    }

    /// Sets the gauges that are read from the store.
    pub fn census(&self, c: &crate::alerts::store::Census, store_bytes: u64) {
        for (state, n) in &c.alerts_by_state {
            self.alerts
                .get_or_create(&StateLabel {
                    state: state.clone(),
                })
                .set(*n);
        }
        // Channels come and go with the config: what the store no longer has is not shown.
        self.notification_attempts.clear();
        self.notifications_pending.clear();
        for (channel, delivered, n) in &c.attempts {
            let outcome = if *delivered { "delivered" } else { "failed" };
            self.notification_attempts
                .get_or_create(&DeliveryLabel {
                    channel: channel.clone(),
                    outcome,
                })
                .set(*n);
        }
        for (channel, n) in &c.pending {
            self.notifications_pending
                .get_or_create(&ChannelLabel {
                    channel: channel.clone(),
                })
                .set(*n);
        }
        self.store_bytes.set(store_bytes as i64);
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}
