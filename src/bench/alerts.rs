//! Reading-to-MQTT-alert latency under load: while the simulator publishes, a probe device of
//! its own orchard publishes a reading that fires a threshold rule, waits until an MQTT
//! subscriber of `orchards/bench-probe/alerts` hears the `fired` event, then one that resolves
//! it and waits for `resolved`, and so on. Each wait is one sample: publish to hearing it, through
//! the commit, the rule, the outbox and the MQTT notifier.

use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::json;
use tokio::sync::{mpsc, watch};

/// The probe's rule: fires at the first reading below 0 °C, resolves at the first above 1 °C.
pub const RULE: &str = r#"
[[rule]]
id = "bench-probe"
kind = "threshold"
measure = "air_temperature"
severity = "warning"
below = 0.0
clear_above = 1.0
orchards = ["bench-probe"]
# It fires and resolves every second by design: not a flapping signal to hold open.
unstable_after = 0
action.en = "bench probe at {value} °C"
action.zh = "基准探针 {value} °C"
"#;

const TOPIC: &str = "orchards/bench-probe/B1/probe-1/telemetry";
/// Between one answer and the next probe.
const PAUSE: Duration = Duration::from_millis(250);
/// A probe whose alert takes longer than this is counted as lost.
const PATIENCE: Duration = Duration::from_secs(30);

/// What the probe measured.
#[derive(Debug, Default, Clone)]
pub struct Latencies {
    /// Publish to hearing the event, ms, one per probe.
    pub ms: Vec<f64>,
    /// Probes whose event was not heard within 30 s.
    pub lost: u32,
}

impl Latencies {
    /// The `q` quantile (nearest rank).
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let mut sorted = self.ms.clone();
        sorted.sort_by(f64::total_cmp);
        let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len().max(1));
        sorted.get(rank - 1).copied()
    }
}

/// Probes until `stop` turns true.
pub async fn probe(port: u16, mut stop: watch::Receiver<bool>) -> Result<Latencies, String> {
    let options = |id: &str| {
        let mut o = MqttOptions::new(id, "127.0.0.1", port);
        o.set_keep_alive(Duration::from_secs(30));
        o
    };
    let (subscriber, mut sub_loop) = AsyncClient::new(options("bench-alert-subscriber"), 64);
    let (publisher, mut pub_loop) = AsyncClient::new(options("bench-alert-probe"), 64);
    // Each event heard: its kind and its alert's id.
    let (heard_tx, mut heard) = mpsc::channel::<(String, i64)>(64);
    let (subscribed_tx, mut subscribed) = mpsc::channel::<()>(1);
    tokio::spawn(async move {
        loop {
            match sub_loop.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    let _ = subscribed_tx.try_send(());
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let v =
                        serde_json::from_slice::<serde_json::Value>(&p.payload).unwrap_or_default();
                    let event = (
                        v["event"].as_str().unwrap_or_default().to_owned(),
                        v["alert"]["id"].as_i64().unwrap_or_default(),
                    );
                    if heard_tx.send(event).await.is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    });
    tokio::spawn(async move {
        loop {
            if pub_loop.poll().await.is_err() {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    });
    subscriber
        .subscribe("orchards/bench-probe/alerts", QoS::AtLeastOnce)
        .await
        .map_err(|e| format!("bench: alert probe: {e}"))?;
    tokio::time::timeout(PATIENCE, subscribed.recv())
        .await
        .map_err(|_| "bench: alert probe: no SUBACK from orchardd".to_owned())?;

    let mut out = Latencies::default();
    // The alert the last probe opened: a `fired` event counts only for a newer one, and a
    // `resolved` only for it, so no event of an earlier probe is taken for this one's.
    let mut last_alert = 0;
    'probing: loop {
        for (value, expect) in [(-1.0, "fired"), (2.0, "resolved")] {
            if *stop.borrow() {
                break 'probing;
            }
            let ts = crate::model::TimestampMs::now().0;
            let payload = json!({"ts": ts, "readings": {"air_temperature": value}}).to_string();
            let sent = Instant::now();
            publisher
                .publish(TOPIC, QoS::AtLeastOnce, false, payload)
                .await
                .map_err(|e| format!("bench: alert probe: {e}"))?;
            let waited = tokio::time::timeout(PATIENCE, async {
                while let Some((event, alert)) = heard.recv().await {
                    let ours = match expect {
                        "fired" => alert > last_alert,
                        _ => alert == last_alert,
                    };
                    if event == expect && ours {
                        return Some(alert);
                    }
                }
                None
            })
            .await;
            match waited {
                Ok(Some(alert)) => {
                    last_alert = alert;
                    out.ms.push(sent.elapsed().as_secs_f64() * 1000.0);
                }
                _ => out.lost += 1,
            }
            tokio::select! {
                _ = tokio::time::sleep(PAUSE) => {}
                _ = stop.changed() => {}
            }
        }
    }
    let _ = subscriber.disconnect().await;
    let _ = publisher.disconnect().await;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_nearest_rank() {
        let l = Latencies {
            ms: (1..=100).rev().map(f64::from).collect(),
            lost: 0,
        };
        assert_eq!(l.quantile(0.5), Some(50.0));
        assert_eq!(l.quantile(0.99), Some(99.0));
        assert_eq!(Latencies::default().quantile(0.5), None);
    }

    #[test]
    fn the_probe_rule_fires_and_resolves_at_once() {
        let mut problems = Vec::new();
        let rules = crate::alerts::rules::parse("bench.toml", RULE, &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        let t = &rules[0].threshold;
        assert_eq!((t.enter_for_ms, t.clear_for_ms), (0, 0));
    }
}
