//! MQTT 3.1.1 on ntex-mqtt: the handshake, the publish handler (whose future completes, and so
//! lets ntex-mqtt send the PUBACK or PUBREC, only after the commit) and the control messages.

use std::rc::Rc;
use std::sync::Arc;

use ntex_bytes::ByteString;
use ntex_mqtt::Control;
use ntex_mqtt::v3::{self, codec};
use ntex_util::time::Seconds;

use super::conn::Conn;
use super::hub::{Delivery, Message, QoS, SessionRequest, SubOptions};
use super::{EndpointError, Shared, users::Login};

pub(super) type Session = v3::Session<Rc<Conn>>;

fn qos_of(q: codec::QoS) -> QoS {
    match q {
        codec::QoS::AtMostOnce => QoS::AtMostOnce,
        codec::QoS::AtLeastOnce => QoS::AtLeastOnce,
        codec::QoS::ExactlyOnce => QoS::ExactlyOnce,
    }
}

/// Control messages: a stopped connection publishes its will and leaves the hub.
pub(super) fn control(
    session: &Session,
    c: Control<EndpointError>,
) -> Result<Option<v3::codec::Encoded>, EndpointError> {
    if let Control::Stop(_) = c {
        session.ended();
    }
    Ok(None)
}

pub(super) async fn handshake(
    shared: Arc<Shared>,
    h: v3::Handshake,
) -> Result<v3::HandshakeAck<Rc<Conn>>, EndpointError> {
    let p = h.packet();
    let user = match shared
        .users
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
    let registration = shared.hub.connect(
        &client,
        SessionRequest {
            clean_start: p.clean_session,
            expiry_secs: if p.clean_session { 0 } else { u32::MAX },
        },
    );
    let will = p.last_will.as_ref().map(|w| Message {
        topic: Arc::from(&*w.topic),
        payload: bytes::Bytes::copy_from_slice(&w.message),
        qos: qos_of(w.qos),
        retain: w.retain,
        properties: None,
        origin: registration.conn,
    });
    let keep_alive = p.keep_alive;
    let session_present = registration.session_present;
    tracing::debug!(
        client,
        keep_alive,
        clean = p.clean_session,
        "mqtt endpoint: v3.1.1 client connected"
    );
    let conn = Rc::new(Conn::new(
        shared.clone(),
        client,
        registration.conn,
        user,
        will,
        registration.sender.clone(),
    ));
    ntex_rt::spawn(deliver(h.sink(), conn.clone(), registration));
    shared.metrics.mqtt_connects.inc();
    let ack = h.ack(conn, session_present).max_send(Some(shared.max_send));
    Ok(if keep_alive == 0 {
        // §3.1.2.10: keep-alive 0 turns the keep-alive mechanism off.
        ack.idle_timeout(Seconds::ZERO)
    } else {
        ack
    })
}

/// The publish handler: each publish first waits for a place in the connection's in-flight
/// window (ntex-mqtt's own count does not hold back a stream of publishes).
pub(super) struct PublishService(pub(super) Session);

impl ntex_service::Service<v3::Publish> for PublishService {
    type Response = ();
    type Error = EndpointError;

    async fn call(
        &self,
        p: v3::Publish,
        _: ntex_service::ServiceCtx<'_, Self>,
    ) -> Result<(), EndpointError> {
        self.0.window_open().await?;
        publish(self.0.clone(), p).await
    }
}

async fn publish(session: Session, p: v3::Publish) -> Result<(), EndpointError> {
    let payload = session
        .read_payload(p.read_all())
        .await
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

/// Sends what the hub routes to this connection, in order, each QoS 1/2 message waiting for
/// its acknowledgement; hands back what it could not deliver when the connection ends.
async fn deliver(sink: v3::MqttSink, conn: Rc<Conn>, registration: super::hub::Registration) {
    let super::hub::Registration {
        mut deliveries,
        kick,
        ..
    } = registration;
    let mut undelivered = Vec::new();
    loop {
        let d = tokio::select! {
            biased;
            _ = conn.closed.cancelled() => break,
            _ = kick.cancelled() => {
                sink.close();
                let _ = tokio::time::timeout(std::time::Duration::from_secs(5), conn.closed.cancelled()).await;
                break;
            }
            d = deliveries.recv() => match d { Some(d) => d, None => break },
        };
        if let Err(d) = send(&sink, &conn, d).await {
            if sink.is_open() {
                // Not the connection: the message itself could not be sent (over the
                // client's maximum packet size, say). Drop it rather than retry forever.
                conn.shared.metrics.mqtt_deliveries_dropped.inc();
                tracing::warn!(client = %conn.client, topic = %d.message.topic, "mqtt endpoint: a message could not be sent to this client and was dropped");
                conn.shared.hub.delivered(&d);
                continue;
            }
            undelivered.push(d);
            break;
        }
    }
    deliveries.close();
    while let Ok(d) = deliveries.try_recv() {
        undelivered.push(d);
    }
    conn.shared
        .hub
        .disconnect(&conn.client, conn.id, undelivered);
}

async fn send(sink: &v3::MqttSink, conn: &Conn, d: Delivery) -> Result<(), Delivery> {
    if d.message.expired_now() {
        conn.shared.hub.delivered(&d);
        return Ok(());
    }
    let mut b = sink.publish(ByteString::from(&*d.message.topic));
    if d.retain {
        b = b.retain();
    }
    let payload = ntex_bytes::Bytes::copy_from_slice(&d.message.payload);
    let sent = match d.qos {
        QoS::AtMostOnce => b.send_at_most_once(payload).map(|_| ()),
        QoS::AtLeastOnce => b.send_at_least_once(payload).await,
        QoS::ExactlyOnce => match b.send_exactly_once(payload).await {
            Ok(rec) => rec.release().await,
            Err(e) => Err(e),
        },
    };
    match sent {
        Ok(()) => {
            conn.shared.metrics.mqtt_publishes_out.inc();
            conn.shared.hub.delivered(&d);
            Ok(())
        }
        Err(_) => Err(d),
    }
}
