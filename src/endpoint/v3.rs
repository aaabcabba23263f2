//! MQTT 3.1.1 on ntex-mqtt: the handshake, the publish handler (whose future completes, and so
//! lets ntex-mqtt send the PUBACK or PUBREC, only after the commit) and the control messages.

use std::rc::Rc;
use std::sync::Arc;

use ntex_bytes::ByteString;
use ntex_mqtt::v3;
use ntex_mqtt::{Control, Reason};
use ntex_util::time::Seconds;

use super::conn::{Conn, Outbound, qos_of};
use super::hub::{Delivery, Message, QoS, SessionRequest, SubOptions};
use super::{EndpointError, Shared, users::Login};

pub(super) type Session = v3::Session<Rc<Conn>>;

/// Control messages: a stopped connection publishes its will and leaves the hub; one stopped
/// for a protocol error is counted.
pub(super) fn control(
    session: &Session,
    c: Control<EndpointError>,
) -> Result<Option<v3::codec::Encoded>, EndpointError> {
    if let Control::Stop(reason) = c {
        if let Reason::Protocol(e) = &reason {
            session.protocol_error(e.get_ref());
        }
        session.ended();
    }
    Ok(None)
}

pub(super) async fn handshake(
    shared: Arc<Shared>,
    h: v3::Handshake,
) -> Result<v3::HandshakeAck<Rc<Conn>>, EndpointError> {
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
        Login::BadCredentials => return Ok(h.bad_username_or_pwd()),
        Login::NotAuthorized => return Ok(h.not_authorized()),
    };
    let client = if p.client_id.is_empty() {
        if !p.clean_session {
            // §3.1.3-8: a zero-length id needs a clean session.
            return Ok(h.identifier_rejected());
        }
        super::assigned_client_id()
    } else {
        p.client_id.to_string()
    };
    let keep_alive = p.keep_alive;
    tracing::debug!(
        client,
        keep_alive,
        clean = p.clean_session,
        "mqtt endpoint: v3.1.1 client connected"
    );
    let request = SessionRequest {
        clean_start: p.clean_session,
        expiry_secs: if p.clean_session { 0 } else { u32::MAX },
    };
    let will = |origin| {
        p.last_will.as_ref().map(|w| Message {
            topic: Arc::from(&*w.topic),
            payload: bytes::Bytes::copy_from_slice(&w.message),
            qos: qos_of(w.qos),
            retain: w.retain,
            properties: None,
            origin,
        })
    };
    let (conn, session_present) = Conn::open(&shared, client, request, user, will, h.sink());
    let ack = h.ack(conn, session_present).max_send(Some(shared.max_send));
    Ok(if keep_alive == 0 {
        // §3.1.2.10: keep-alive 0 turns the keep-alive mechanism off.
        ack.idle_timeout(Seconds::ZERO)
    } else {
        ack
    })
}

/// The publish handler, counting the connection's publishes in flight.
pub(super) struct PublishService(pub(super) Session);

impl ntex_service::Service<v3::Publish> for PublishService {
    type Response = ();
    type Error = EndpointError;

    async fn ready(&self, _: ntex_service::ServiceCtx<'_, Self>) -> Result<(), EndpointError> {
        self.0.room().await;
        Ok(())
    }

    async fn call(
        &self,
        p: v3::Publish,
        _: ntex_service::ServiceCtx<'_, Self>,
    ) -> Result<(), EndpointError> {
        let _admitted = self.0.admit()?;
        publish(self.0.clone(), p).await
    }
}

async fn publish(session: Session, p: v3::Publish) -> Result<(), EndpointError> {
    let payload = p
        .read_all()
        .await
        .map(|b| bytes::Bytes::copy_from_slice(&b))
        .map_err(|e| EndpointError::Payload(e.to_string()))?;
    session
        .publish(
            p.publish_topic(),
            payload,
            qos_of(p.qos()),
            p.retain(),
            None,
        )
        .await?;
    // Refused publishes are acknowledged too, as Mosquitto does for 3.1.1: they are kept in
    // the quarantine, and a client that is not told would resend them forever.
    Ok(())
}

pub(super) fn protocol(
    session: Session,
    msg: v3::ProtocolMessage,
) -> Result<v3::ProtocolMessageAck, EndpointError> {
    Ok(match msg {
        v3::ProtocolMessage::Subscribe(mut s) => {
            let mut granted = Vec::new();
            for mut sub in s.iter_mut() {
                let filter = sub.topic().to_string();
                if session.may_subscribe(&filter) {
                    let qos = sub.qos();
                    sub.confirm(qos);
                    granted.push((filter, SubOptions::qos(qos_of(qos))));
                } else {
                    tracing::warn!(client = %session.client, filter, "mqtt endpoint: subscription outside the user's patterns refused");
                    sub.fail();
                }
            }
            session.subscribe(granted);
            s.ack()
        }
        v3::ProtocolMessage::Unsubscribe(u) => {
            let filters: Vec<String> = u.iter().map(|f| f.to_string()).collect();
            session.shared.hub.unsubscribe(&session.client, &filters);
            u.ack()
        }
        v3::ProtocolMessage::Disconnect(d) => {
            // A clean goodbye: no will (§3.14.4).
            session.will.borrow_mut().take();
            d.ack()
        }
        other => other.ack(),
    })
}

impl Outbound for v3::MqttSink {
    fn is_open(&self) -> bool {
        v3::MqttSink::is_open(self)
    }

    fn close_taken_over(&self) {
        self.close();
    }

    async fn send(&self, d: &Delivery) -> Result<(), ()> {
        let mut b = self.publish(ByteString::from(&*d.message.topic));
        if d.retain {
            b = b.retain();
        }
        let payload = ntex_bytes::Bytes::copy_from_slice(&d.message.payload);
        let sent = match d.qos {
            QoS::AtMostOnce => b.send_at_most_once(payload),
            QoS::AtLeastOnce => b.send_at_least_once(payload).await,
            QoS::ExactlyOnce => match b.send_exactly_once(payload).await {
                Ok(rec) => rec.release().await,
                Err(e) => Err(e),
            },
        };
        sent.map_err(|_| ())
    }
}
