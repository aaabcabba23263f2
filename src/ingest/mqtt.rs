//! The MQTT subscription: QoS 1, persistent session, manual acknowledgements.
//!
//! A message is acknowledged to the broker only after the writer has committed it, in the
//! order it arrived. Acknowledgements of a connection that has since dropped are never sent:
//! the broker redelivers those messages on the new connection and they are acknowledged then.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, Publish, QoS, Transport};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::Decoder;
use crate::config::MqttSettings;
use crate::metrics::Metrics;
use crate::model::TimestampMs;
use crate::store::writer::Envelope;

/// What the writer hands back once a message is committed.
#[derive(Debug)]
pub struct AckToken {
    generation: u64,
    publish: Publish,
}

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

/// Parses `mqtt://host[:port]` or `mqtts://host[:port]`.
pub fn parse_url(url: &str) -> Result<Endpoint, String> {
    let (rest, tls) = if let Some(r) = url.strip_prefix("mqtt://").or(url.strip_prefix("tcp://")) {
        (r, false)
    } else if let Some(r) = url.strip_prefix("mqtts://").or(url.strip_prefix("ssl://")) {
        (r, true)
    } else {
        return Err(format!("`{url}` must start with mqtt:// or mqtts://"));
    };
    let rest = rest.trim_end_matches('/');
    let default_port = if tls { 8883 } else { 1883 };
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && !p.contains(']') => (
            h,
            p.parse::<u16>()
                .map_err(|_| format!("`{url}`: port `{p}` is not a number from 1 to 65535"))?,
        ),
        _ => (rest, default_port),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || host.contains('/') {
        return Err(format!("`{url}` has no host"));
    }
    Ok(Endpoint {
        host: host.to_owned(),
        port,
        tls,
    })
}

/// The filters to subscribe to: as they are, or each as `$share/{group}/{filter}`. A broker
/// hands a shared subscription's messages to one member of the group each, with their own
/// topic, so decoding does not change.
fn shared(filters: Vec<String>, group: Option<&str>) -> Vec<String> {
    match group {
        None => filters,
        Some(g) => filters
            .into_iter()
            .map(|f| format!("$share/{g}/{f}"))
            .collect(),
    }
}

/// Everything the subscription loop needs besides its channels.
pub struct Subscription {
    pub settings: MqttSettings,
    pub endpoint: Endpoint,
    pub decoder: Decoder,
    pub limiter: super::RateLimiter,
    pub metrics: Arc<Metrics>,
}

/// The largest packet MQTT can carry: the broker's own limit is the one that counts, and
/// orchardd quarantines oversized payloads itself rather than dropping the connection,
/// which would make the broker redeliver the same message forever.
const MQTT_MAX_PACKET: usize = 268_435_455;

/// How to reach the broker of settings `s` at `endpoint` as `client_id`: credentials, TLS,
/// keep-alive.
pub fn options(
    s: &MqttSettings,
    endpoint: &Endpoint,
    client_id: &str,
) -> Result<MqttOptions, String> {
    let mut o = MqttOptions::new(client_id, &endpoint.host, endpoint.port);
    o.set_keep_alive(s.keep_alive)
        .set_max_packet_size(MQTT_MAX_PACKET, 64 * 1024);
    if let Some(user) = &s.username {
        o.set_credentials(user, s.password.as_deref().unwrap_or_default());
    }
    if endpoint.tls {
        let transport = match &s.ca_file {
            Some(path) => {
                let ca = std::fs::read(path)
                    .map_err(|e| format!("mqtt.ca_file {}: {e}", path.display()))?;
                Transport::tls(ca, None, None)
            }
            None => Transport::tls_with_default_config(),
        };
        o.set_transport(transport);
    }
    Ok(o)
}

impl Subscription {
    fn options(&self) -> Result<MqttOptions, String> {
        let mut o = options(&self.settings, &self.endpoint, &self.settings.client_id)?;
        o.set_clean_session(false).set_manual_acks(true);
        Ok(o)
    }

    /// Runs until `shutdown`, then lets the writer finish, sends the last acknowledgements
    /// and disconnects. `subscribed` turns true at the first SUBACK.
    pub async fn run(
        mut self,
        queue: mpsc::Sender<(Envelope, AckToken)>,
        mut committed: mpsc::UnboundedReceiver<Vec<AckToken>>,
        subscribed: watch::Sender<bool>,
        shutdown: CancellationToken,
    ) -> Result<(), String> {
        let (client, mut eventloop) = AsyncClient::new(self.options()?, 1024);
        let mut acks = Acks::default();
        let mut backoff = Backoff::new(self.settings.reconnect_max_delay);
        let mut queue = Some(queue);
        let filters = shared(self.decoder.filters(), self.settings.share_group.as_deref());

        loop {
            acks.flush(&client);
            tokio::select! {
                biased;
                _ = shutdown.cancelled(), if queue.is_some() => {
                    tracing::info!("ingest: stopping; committing and acknowledging what is in flight");
                    queue = None;
                }
                batch = committed.recv() => match batch {
                    Some(tokens) => acks.extend(tokens),
                    // The writer has drained the queue: everything received is committed.
                    None if queue.is_none() => break,
                    None => return Err("the store writer stopped; nothing more can be committed".into()),
                },
                event = eventloop.poll() => match event {
                    Ok(Event::Incoming(Packet::ConnAck(c))) => {
                        acks.new_connection();
                        backoff.reset();
                        self.metrics.mqtt_connected.set(1);
                        tracing::info!(session_present = c.session_present, "mqtt: connected to {}:{}", self.endpoint.host, self.endpoint.port);
                        let subs = filters.iter().map(|f| rumqttc::SubscribeFilter::new(f.clone(), QoS::AtLeastOnce));
                        if let Err(e) = client.try_subscribe_many(subs) {
                            tracing::error!(error = %e, "mqtt: cannot queue the subscription");
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        tracing::info!(topics = ?filters, "mqtt: subscribed");
                        subscribed.send_replace(true);
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let Some(q) = &queue else { continue };
                        self.metrics.messages_received.inc();
                        let mut envelope = self.decoder.envelope(&p.topic, p.payload.clone(), TimestampMs::now());
                        self.limiter.apply(&mut envelope, &p.payload, std::time::Instant::now());
                        let token = acks.token(&p);
                        tokio::select! {
                            sent = q.send((envelope, token)) => if sent.is_err() { break },
                            _ = shutdown.cancelled() => { queue = None; }
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        self.metrics.mqtt_connected.set(0);
                        if queue.is_none() {
                            // Stopping and the broker is gone: what is committed is safe, and
                            // the broker redelivers what it was not told about.
                            tracing::warn!(error = %e, "mqtt: connection lost while stopping");
                            drain_without_broker(&mut committed).await;
                            return Ok(());
                        }
                        let delay = backoff.next();
                        self.metrics.mqtt_reconnects.inc();
                        tracing::warn!(error = %e, attempt = backoff.attempt, retry_in = ?delay, "mqtt: connection to {}:{} failed", self.endpoint.host, self.endpoint.port);
                        tokio::select! {
                            _ = tokio::time::sleep(delay) => {}
                            _ = shutdown.cancelled() => { queue = None; }
                        }
                    }
                },
            }
        }
        self.disconnect(&client, &mut eventloop, &mut acks).await;
        Ok(())
    }

    /// Sends the acknowledgements still queued, then a clean DISCONNECT, then reads until the
    /// broker closes the connection (bounded in time).
    ///
    /// The last step matters: closing a socket that still has unread data (the broker keeps
    /// sending publishes until it sees DISCONNECT) makes the kernel send a reset, and a reset
    /// can make the broker discard our final acknowledgements before it has read them.
    async fn disconnect(&self, client: &AsyncClient, eventloop: &mut EventLoop, acks: &mut Acks) {
        let finish = async {
            while !acks.is_empty() {
                acks.flush(client);
                if eventloop.poll().await.is_err() {
                    return;
                }
            }
            // The client's channel may be full of acknowledgements: make room by polling
            // rather than dropping the DISCONNECT.
            while client.try_disconnect().is_err() {
                if eventloop.poll().await.is_err() {
                    return;
                }
            }
            while eventloop.poll().await.is_ok() {}
        };
        if tokio::time::timeout(Duration::from_secs(10), finish)
            .await
            .is_err()
        {
            tracing::warn!(
                "mqtt: the broker did not close the connection within 10 s of DISCONNECT; it redelivers what it did not take"
            );
        }
        self.metrics.mqtt_connected.set(0);
        tracing::info!("mqtt: disconnected");
    }
}

async fn drain_without_broker(committed: &mut mpsc::UnboundedReceiver<Vec<AckToken>>) {
    while committed.recv().await.is_some() {}
}

/// Acknowledgements waiting to be sent, in arrival order, for the current connection only.
#[derive(Default)]
struct Acks {
    generation: u64,
    pending: VecDeque<Publish>,
}

impl Acks {
    fn new_connection(&mut self) {
        self.generation += 1;
        self.pending.clear();
    }

    fn token(&self, p: &Publish) -> AckToken {
        // Only QoS and packet id matter to an acknowledgement: keep the payload out of memory.
        let mut bare = Publish::new("", p.qos, Vec::new());
        bare.pkid = p.pkid;
        AckToken {
            generation: self.generation,
            publish: bare,
        }
    }

    fn extend(&mut self, tokens: Vec<AckToken>) {
        let current = self.generation;
        self.pending.extend(
            tokens
                .into_iter()
                .filter(|t| t.generation == current && t.publish.qos != QoS::AtMostOnce)
                .map(|t| t.publish),
        );
    }

    /// Queues as many acknowledgements as the client takes without waiting: the loop that
    /// would drain the client's channel is this one, so it must never block on it.
    fn flush(&mut self, client: &AsyncClient) {
        while let Some(p) = self.pending.front() {
            if client.try_ack(p).is_err() {
                return;
            }
            self.pending.pop_front();
        }
    }

    fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

/// Capped exponential back-off with jitter, from 250 ms.
struct Backoff {
    max: Duration,
    attempt: u32,
}

impl Backoff {
    fn new(max: Duration) -> Self {
        Self { max, attempt: 0 }
    }

    fn reset(&mut self) {
        self.attempt = 0;
    }

    fn next(&mut self) -> Duration {
        self.attempt += 1;
        let base = Duration::from_millis(250)
            .saturating_mul(1 << (self.attempt - 1).min(16))
            .min(self.max);
        let jitter = rand::random_range(0.8..1.2);
        base.mul_f64(jitter).min(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_host_port_and_tls() {
        let e = parse_url("mqtt://broker.local:1884").unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.tls),
            ("broker.local", 1884, false)
        );
        let e = parse_url("mqtts://broker.local").unwrap();
        assert_eq!((e.port, e.tls), (8883, true));
        let e = parse_url("mqtt://[::1]:1883").unwrap();
        assert_eq!(e.host, "::1");
        assert!(parse_url("http://x").is_err());
        assert!(parse_url("mqtt://x:99999").is_err());
    }

    #[test]
    fn a_share_group_prefixes_every_filter() {
        let filters = vec!["orchards/+/+/+/telemetry".to_string(), "lots/#".to_string()];
        assert_eq!(shared(filters.clone(), None), filters);
        assert_eq!(
            shared(filters, Some("orchardd")),
            [
                "$share/orchardd/orchards/+/+/+/telemetry",
                "$share/orchardd/lots/#"
            ]
        );
    }

    #[test]
    fn backoff_grows_to_its_cap() {
        let mut b = Backoff::new(Duration::from_secs(5));
        let delays: Vec<_> = (0..10).map(|_| b.next()).collect();
        assert!(delays[0] < Duration::from_millis(400));
        assert!(delays[9] <= Duration::from_secs(5) && delays[9] >= Duration::from_secs(4));
    }

    #[test]
    fn acknowledgements_of_a_dropped_connection_are_never_sent() {
        let mut acks = Acks::default();
        acks.new_connection();
        let mut p = Publish::new("t", QoS::AtLeastOnce, Vec::new());
        p.pkid = 7;
        let old = acks.token(&p);
        acks.new_connection();
        let new = acks.token(&p);
        acks.extend(vec![old, new]);
        assert_eq!(acks.pending.len(), 1);
    }
}
