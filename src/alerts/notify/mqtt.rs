//! `mqtt`: alert events on `orchards/{orchard}/alerts` at QoS 1, to the subscribers of
//! orchardd's own endpoint ([`Mqtt`]), or published to the external broker orchardd reads
//! from ([`Broker`]).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::{Channel, payload};
use crate::alerts::store::{Attempt, Pending};
use crate::endpoint::Shared;
use crate::endpoint::hub::{Message, QoS};

fn topic(p: &Pending) -> String {
    format!("orchards/{}/alerts", p.alert.orchard)
}

/// Alerts to MQTT subscribers of orchardd's own endpoint; delivered once the endpoint has
/// taken the message (and stored it for offline persistent sessions).
pub struct Mqtt(pub Arc<Shared>);

impl Channel for Mqtt {
    fn name(&self) -> String {
        "mqtt".into()
    }

    async fn deliver(&self, p: &Pending) -> Attempt {
        let message = Message {
            topic: Arc::from(topic(p).as_str()),
            payload: Bytes::from(payload(p).to_string()),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: None,
            origin: 0,
        };
        if let Some(stored) = self.0.hub.publish(message) {
            let _ = stored.await;
        }
        Attempt::default()
    }
}

/// How long a publish may wait for the broker's PUBACK before it counts as failed (and is
/// tried again: a subscriber may then hear it twice, and tells by its `event_id`).
const PUBACK_TIMEOUT: Duration = Duration::from_secs(30);

/// One publish on its way, answered at its PUBACK or with why there was none.
struct Request {
    topic: String,
    payload: Bytes,
    done: oneshot::Sender<Result<(), String>>,
}

/// Alerts published to the external broker, on a connection of their own (a clean session,
/// so nothing is re-sent behind the outbox's back): a publish waiting for its PUBACK holds
/// back no reading's acknowledgement, and a reading's none of its. Delivered at the PUBACK.
pub struct Broker {
    requests: mpsc::Sender<Request>,
}

impl Broker {
    /// Connects (and reconnects, with back-off up to `max_delay`) until `shutdown`.
    pub fn start(
        mut options: MqttOptions,
        max_delay: Duration,
        shutdown: CancellationToken,
    ) -> Self {
        options.set_clean_session(true);
        let (requests, rx) = mpsc::channel(1);
        tokio::spawn(connection(options, max_delay, rx, shutdown));
        Self { requests }
    }
}

impl Channel for Broker {
    fn name(&self) -> String {
        "mqtt".into()
    }

    async fn deliver(&self, p: &Pending) -> Attempt {
        let (done, answer) = oneshot::channel();
        let request = Request {
            topic: topic(p),
            payload: Bytes::from(payload(p).to_string()),
            done,
        };
        let failed = |error: String| Attempt {
            error: Some(error),
            ..Attempt::default()
        };
        if self.requests.send(request).await.is_err() {
            return failed("the connection to the broker has stopped".into());
        }
        match tokio::time::timeout(PUBACK_TIMEOUT, answer).await {
            Ok(Ok(Ok(()))) => Attempt::default(),
            Ok(Ok(Err(e))) => failed(e),
            Ok(Err(_)) => failed("the connection to the broker has stopped".into()),
            Err(_) => failed(format!(
                "no PUBACK from the broker within {}",
                humantime::format_duration(PUBACK_TIMEOUT)
            )),
        }
    }
}

/// Owns the connection: publishes what `requests` bring and answers each at its PUBACK, or
/// with the error when the connection drops first.
async fn connection(
    options: MqttOptions,
    max_delay: Duration,
    mut requests: mpsc::Receiver<Request>,
    shutdown: CancellationToken,
) {
    let server = format!(
        "{}:{}",
        options.broker_address().0,
        options.broker_address().1
    );
    let (client, mut eventloop) = AsyncClient::new(options, 8);
    // Handed to the event loop, waiting to learn their packet id; then waiting for the PUBACK.
    let mut queued: VecDeque<oneshot::Sender<Result<(), String>>> = VecDeque::new();
    let mut sent: HashMap<u16, oneshot::Sender<Result<(), String>>> = HashMap::new();
    let mut delay = Duration::from_millis(500);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                let _ = client.try_disconnect();
                return;
            }
            Some(r) = requests.recv() => {
                match client.publish(r.topic, rumqttc::QoS::AtLeastOnce, false, r.payload).await {
                    Ok(()) => queued.push_back(r.done),
                    Err(e) => { let _ = r.done.send(Err(format!("publish: {e}"))); }
                }
            }
            event = eventloop.poll() => match event {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    delay = Duration::from_millis(500);
                    tracing::info!("alerts: mqtt: connected to {server}");
                }
                // A packet id seen before is a resend of a publish already waiting.
                Ok(Event::Outgoing(Outgoing::Publish(pkid))) if !sent.contains_key(&pkid) => {
                    if let Some(done) = queued.pop_front() {
                        sent.insert(pkid, done);
                    }
                }
                Ok(Event::Incoming(Packet::PubAck(ack))) => {
                    if let Some(done) = sent.remove(&ack.pkid) {
                        let _ = done.send(Ok(()));
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    // A clean session drops what was not acknowledged: the outbox tries it again.
                    let why = format!("no PUBACK from {server}: {e}");
                    for done in queued.drain(..).chain(sent.drain().map(|(_, d)| d)) {
                        let _ = done.send(Err(why.clone()));
                    }
                    tracing::warn!(error = %e, retry_in = ?delay, "alerts: mqtt: cannot reach {server}");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(max_delay);
                }
            }
        }
    }
}
