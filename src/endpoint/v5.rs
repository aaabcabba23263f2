//! MQTT 5 on ntex-mqtt: as [`super::v3`], plus reason codes, session expiry, receive maximum,
//! assigned client ids, subscription options and the properties subscribers rely on.
//! (ntex-mqtt itself resolves topic aliases and enforces the maximum packet size.)

use std::num::NonZeroU32;
use std::rc::Rc;
use std::sync::Arc;

use ntex_bytes::ByteString;
use ntex_mqtt::v5::{self, codec};
use ntex_mqtt::{Control, Reason};

use super::conn::{Conn, Outbound, Outcome, qos_of};
use super::hub::{Delivery, Message, Properties, QoS, SessionRequest, SubOptions};
use super::{EndpointError, Shared, users::Login};
use crate::model::TimestampMs;

pub(super) type Session = v5::Session<Rc<Conn>>;

impl TryFrom<EndpointError> for v5::PublishAck {
    type Error = EndpointError;

    /// A failed commit is never acknowledged, not even negatively (a v5 client drops a
    /// message that got an error PUBACK): the connection closes and the client resends.
    fn try_from(e: EndpointError) -> Result<Self, Self::Error> {
        Err(e)
    }
}

/// Control messages: a stopped connection publishes its will and leaves the hub; one stopped
/// for a protocol error is counted.
pub(super) fn control(
    session: &Session,
    c: Control<EndpointError>,
) -> Result<Option<v5::codec::Encoded>, EndpointError> {
    if let Control::Stop(reason) = c {
        if let Reason::Protocol(e) = &reason {
            session.protocol_error(e.get_ref());
        }
        session.ended();
    }
    Ok(None)
}

fn properties_of(
    p: &codec::PublishProperties,
    user: &codec::UserProperties,
    utf8: bool,
) -> Option<Arc<Properties>> {
    let props = Properties {
        payload_utf8: utf8,
        content_type: p.content_type.as_ref().map(|s| s.to_string()),
        response_topic: p.response_topic.as_ref().map(|s| s.to_string()),
        correlation_data: p.correlation_data.as_ref().map(|b| b.to_vec()),
        user: user
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        expires_at_ms: p
            .message_expiry_interval
            .map(|s| TimestampMs::now().0 + i64::from(s.get()) * 1000),
    };
    (!props.is_empty()).then(|| Arc::new(props))
}

pub(super) async fn handshake(
    shared: Arc<Shared>,
    h: v5::Handshake,
) -> Result<v5::HandshakeAck<Rc<Conn>>, EndpointError> {
    let p = h.packet();
    let users = shared.users.get();
    let user = match users
        .login(
            p.username.as_deref(),
            p.password.as_deref(),
            &shared.metrics,
        )
        .await
    {
        Login::Accepted(user) => user,
        Login::BadCredentials => {
            return Ok(h.failed(codec::ConnectAckReason::BadUserNameOrPassword));
        }
        Login::NotAuthorized => return Ok(h.failed(codec::ConnectAckReason::NotAuthorized)),
    };
    let (client, assigned) = if p.client_id.is_empty() {
        (super::assigned_client_id(), true)
    } else {
        (p.client_id.to_string(), false)
    };
    let keep_alive = p.keep_alive;
    tracing::debug!(
        client,
        keep_alive,
        clean_start = p.clean_start,
        session_expiry = p.session_expiry_interval_secs,
        "mqtt endpoint: MQTT 5 client connected"
    );
    let request = SessionRequest {
        clean_start: p.clean_start,
        expiry_secs: p.session_expiry_interval_secs,
    };
    let will = |origin| {
        p.last_will.as_ref().map(|w| {
            let props = codec::PublishProperties {
                correlation_data: w.correlation_data.clone(),
                message_expiry_interval: w.message_expiry_interval,
                content_type: w.content_type.clone(),
                response_topic: w.response_topic.clone(),
                ..Default::default()
            };
            Message {
                topic: Arc::from(&*w.topic),
                payload: bytes::Bytes::copy_from_slice(&w.message),
                qos: qos_of(w.qos),
                retain: w.retain,
                properties: properties_of(
                    &props,
                    &w.user_properties,
                    w.is_utf8_payload.unwrap_or(false),
                ),
                origin,
            }
        })
    };
    let (conn, session_present) =
        Conn::open(&shared, client.clone(), request, user, will, h.sink());
    let max_inflight = shared.max_inflight.min(u32::from(u16::MAX)) as u16;
    let mut ack = h.ack(conn).max_send(Some(shared.max_send)).with(|a| {
        a.session_present = session_present;
        a.retain_available = true;
        a.wildcard_subscription_available = true;
        a.shared_subscription_available = false;
        a.subscription_identifiers_available = false;
        if let Some(n) = std::num::NonZeroU16::new(max_inflight) {
            a.receive_max = n;
        }
        if assigned {
            a.assigned_client_id = Some(ByteString::from(client.as_str()));
        }
    });
    if keep_alive == 0 {
        // The client turned keep-alive off; ntex-mqtt cannot, so tell the client the longest
        // interval MQTT 5 allows (Server Keep Alive, §3.2.2.3.14) and idle out only after it.
        ack = ack
            .keep_alive(u16::MAX)
            .with(|a| a.server_keepalive_sec = Some(u16::MAX));
    }
    Ok(ack)
}

/// The publish handler, counting the connection's publishes in flight (the receive maximum
/// ntex-mqtt enforces holds an MQTT 5 client to `broker.max_inflight`).
pub(super) struct PublishService(pub(super) Session);

impl ntex_service::Service<v5::Publish> for PublishService {
    type Response = v5::PublishAck;
    type Error = EndpointError;

    async fn call(
        &self,
        p: v5::Publish,
        _: ntex_service::ServiceCtx<'_, Self>,
    ) -> Result<v5::PublishAck, EndpointError> {
        let _admitted = self.0.admit()?;
        publish(self.0.clone(), p).await
    }
}

async fn publish(session: Session, p: v5::Publish) -> Result<v5::PublishAck, EndpointError> {
    let payload = p
        .read_all()
        .await
        .map(|b| bytes::Bytes::copy_from_slice(&b))
        .map_err(|e| EndpointError::Payload(e.to_string()))?;
    let pkt = p.packet();
    let props = properties_of(
        &pkt.properties,
        &pkt.properties.user_properties,
        pkt.properties.is_utf8_payload,
    );
    let outcome = session
        .publish(
            p.publish_topic(),
            payload,
            qos_of(p.qos()),
            p.retain(),
            props,
        )
        .await?;
    Ok(match outcome {
        Outcome::Accepted => p.ack(),
        Outcome::NotAuthorized => p.ack().reason_code(codec::PublishAckReason::NotAuthorized),
    })
}

pub(super) fn protocol(
    session: Session,
    msg: v5::ProtocolMessage,
) -> Result<v5::ProtocolMessageAck, EndpointError> {
    Ok(match msg {
        v5::ProtocolMessage::Subscribe(mut s) => {
            let mut granted = Vec::new();
            for mut sub in s.iter_mut() {
                let filter = sub.topic().to_string();
                let o = *sub.options();
                if filter.starts_with("$share/") {
                    sub.fail(codec::SubscribeAckReason::SharedSubscriptionNotSupported);
                } else if session.may_subscribe(&filter) {
                    sub.confirm(o.qos);
                    granted.push((
                        filter,
                        SubOptions {
                            qos: qos_of(o.qos),
                            no_local: o.no_local,
                            retain_as_published: o.retain_as_published,
                            retain_handling: o.retain_handling as u8,
                        },
                    ));
                } else {
                    tracing::warn!(client = %session.client, filter, "mqtt endpoint: subscription outside the user's patterns refused");
                    sub.fail(codec::SubscribeAckReason::NotAuthorized);
                }
            }
            session.subscribe(granted);
            s.ack()
        }
        v5::ProtocolMessage::Unsubscribe(mut u) => {
            let filters: Vec<String> = u.iter().map(|f| f.to_string()).collect();
            let found = session.shared.hub.unsubscribe(&session.client, &filters);
            for (mut item, found) in u.iter_mut().zip(found) {
                if found {
                    item.success();
                } else {
                    item.fail(codec::UnsubscribeAckReason::NoSubscriptionExisted);
                }
            }
            u.ack()
        }
        v5::ProtocolMessage::Disconnect(d) => {
            let pkt = d.packet();
            // 0x04 "disconnect with will message" keeps the will; any other reason drops it.
            if pkt.reason_code != codec::DisconnectReasonCode::DisconnectWithWillMessage {
                session.will.borrow_mut().take();
            }
            if let Some(expiry) = pkt.session_expiry_interval_secs {
                session
                    .shared
                    .hub
                    .set_expiry(&session.client, session.id, expiry);
            }
            d.ack()
        }
        other => other.ack(),
    })
}

impl Outbound for v5::MqttSink {
    fn is_open(&self) -> bool {
        v5::MqttSink::is_open(self)
    }

    fn close_taken_over(&self) {
        self.close_with_reason(codec::Disconnect {
            reason_code: codec::DisconnectReasonCode::SessionTakenOver,
            ..Default::default()
        });
    }

    async fn send(&self, d: &Delivery) -> Result<(), ()> {
        let now = TimestampMs::now().0;
        let props = d.message.properties.clone();
        let b = self
            .publish(ByteString::from(&*d.message.topic))
            .retain(d.retain)
            .properties(|pp| {
                if let Some(p) = &props {
                    pp.is_utf8_payload = p.payload_utf8;
                    pp.content_type = p.content_type.as_deref().map(ByteString::from);
                    pp.response_topic = p.response_topic.as_deref().map(ByteString::from);
                    pp.correlation_data = p
                        .correlation_data
                        .as_deref()
                        .map(ntex_bytes::Bytes::copy_from_slice);
                    pp.user_properties = p
                        .user
                        .iter()
                        .map(|(k, v)| (ByteString::from(k.as_str()), ByteString::from(v.as_str())))
                        .collect();
                    // What is left of the message's life (§3.3.2.3.3).
                    pp.message_expiry_interval = p
                        .expires_at_ms
                        .and_then(|at| NonZeroU32::new(((at - now + 999) / 1000) as u32));
                }
            });
        let payload = ntex_bytes::Bytes::copy_from_slice(&d.message.payload);
        let sent = match d.qos {
            QoS::AtMostOnce => b.send_at_most_once(payload),
            QoS::AtLeastOnce => b.send_at_least_once(payload).await.map(|_| ()),
            QoS::ExactlyOnce => match b.send_exactly_once(payload).await {
                Ok(rec) => rec.release().await,
                Err(e) => Err(e),
            },
        };
        sent.map_err(|_| ())
    }
}
