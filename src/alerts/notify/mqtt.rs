//! `mqtt`: alert events to the subscribers of orchardd's own endpoint, on
//! `orchards/{orchard}/alerts` at QoS 1; delivered once the endpoint has taken the message.

use std::sync::Arc;

use bytes::Bytes;

use super::{Channel, payload};
use crate::alerts::store::{Attempt, Pending};
use crate::endpoint::Shared;
use crate::endpoint::hub::{Message, QoS};

/// Alerts to MQTT subscribers of orchardd's own endpoint.
pub struct Mqtt(pub Arc<Shared>);

impl Channel for Mqtt {
    fn name(&self) -> String {
        "mqtt".into()
    }

    async fn deliver(&self, p: &Pending) -> Attempt {
        let message = Message {
            topic: Arc::from(format!("orchards/{}/alerts", p.alert.orchard).as_str()),
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
