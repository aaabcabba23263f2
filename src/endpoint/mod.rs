//! orchardd's own MQTT endpoint (`broker.embedded = true`): sensors publish to orchardd itself.
//!
//! A QoS 1 or 2 publish on a source's topic is acknowledged (PUBACK, PUBREC) only once the
//! store has committed the batch that holds it, so a PUBACK means "on disk". The protocol is
//! ntex-mqtt's ([`v3`], [`v5`]); what sessions, subscriptions and retained messages are is the
//! [`hub`]'s, kept across restarts by [`store`]; [`ingest`] is the door into the pipeline.
//! Back-pressure is ntex-mqtt's in-flight window: a connection whose window is full of
//! publishes waiting for the store is not read until the store catches up.

pub mod conn;
pub mod hub;
pub mod ingest;
pub mod store;
pub mod topic;
pub mod users;
mod v3;
mod v5;

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use ntex_mqtt::{MqttError, MqttServer, MqttServiceConfig};
use ntex_service::cfg::SharedCfg;
use ntex_service::{fn_factory_with_config, fn_service};

use crate::config::BrokerSettings;
use crate::metrics::Metrics;
use hub::Hub;
use ingest::IngestPort;
use users::Users;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "broker.listen {addr}: cannot listen there ({source}); is another MQTT broker running? Stop it, choose another address, or set broker.embedded = false to use it"
    )]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(
        "broker.listen {0} is not a loopback address and broker.users is empty: anyone on the network could publish. Add users (see README, \"MQTT users\"), or listen on 127.0.0.1"
    )]
    AnonymousOnNetwork(SocketAddr),
    #[error("{0}")]
    Users(String),
    #[error("{0}")]
    Tls(String),
    #[error("mqtt endpoint: {0}")]
    Start(String),
}

/// Why a connection's handler failed; ntex-mqtt then closes the connection, so the client
/// resends whatever it was not acknowledged.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error(transparent)]
    WriterGone(#[from] ingest::WriterGone),
    #[error("reading the payload: {0}")]
    Payload(String),
    #[error("protocol")]
    Protocol,
    #[error("TLS: {0}")]
    Tls(String),
    #[error("the client sent more publishes ahead of their acknowledgements than orchardd holds")]
    Overrun,
}

impl From<()> for EndpointError {
    fn from(_: ()) -> Self {
        EndpointError::Protocol
    }
}

/// What every connection of every worker shares.
pub struct Shared {
    pub hub: Hub,
    pub ingest: IngestPort,
    /// Replaced by a reload (SIGHUP); a connection keeps the user it logged in as.
    pub users: Arc<crate::reload::Live<Users>>,
    pub metrics: Arc<Metrics>,
    /// Publishes one connection may have waiting for the store before it is no longer read.
    pub max_inflight: u32,
    /// Messages in flight to one subscriber.
    pub max_send: u16,
}

/// The bound listeners and who may use them, ready to be served.
pub struct Listeners {
    plain: TcpListener,
    tls: Option<(TcpListener, Arc<rustls::ServerConfig>)>,
    pub users: Users,
}

/// Checks the listeners' doors, loads the TLS certificate and binds, so that a bad address,
/// certificate or user fails start-up at once with what is wrong.
pub fn bind(settings: &BrokerSettings) -> Result<Listeners, StartError> {
    let users = Users::from_settings(&settings.users).map_err(StartError::Users)?;
    let bind = |addr: SocketAddr| {
        if users.is_empty() && !addr.ip().is_loopback() {
            return Err(StartError::AnonymousOnNetwork(addr));
        }
        TcpListener::bind(addr).map_err(|source| StartError::Bind { addr, source })
    };
    let plain = bind(settings.listen)?;
    let tls = match &settings.tls {
        None => None,
        Some(t) => Some((bind(t.listen)?, tls_config(t)?)),
    };
    Ok(Listeners { plain, tls, users })
}

fn tls_config(t: &crate::config::BrokerTls) -> Result<Arc<rustls::ServerConfig>, StartError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |key: &str, path: &std::path::Path, e: &dyn std::fmt::Display| {
        StartError::Tls(format!("broker.tls.{key} {}: {e}", path.display()))
    };
    let certs = CertificateDer::pem_file_iter(&t.cert_file)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| bad("cert_file", &t.cert_file, &e))?;
    if certs.is_empty() {
        return Err(bad("cert_file", &t.cert_file, &"holds no certificate"));
    }
    let key =
        PrivateKeyDer::from_pem_file(&t.key_file).map_err(|e| bad("key_file", &t.key_file, &e))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| StartError::Tls(e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| bad("key_file", &t.key_file, &e))?;
    Ok(Arc::new(config))
}

/// The running endpoint.
pub struct Running {
    server: ntex_server::Server<ntex_server::net::Connection>,
    thread: std::thread::JoinHandle<()>,
}

impl Running {
    /// Stops accepting and closes every connection; what was not acknowledged is resent by
    /// the clients to the next run.
    pub async fn shutdown(self) {
        self.server.stop(false).await;
        let _ = tokio::task::spawn_blocking(move || self.thread.join()).await;
    }
}

/// Both protocol versions on one listener. A macro, because ntex-mqtt's builder types cannot
/// be named: each version's handlers live in [`v3`] and [`v5`], this only plugs them in.
macro_rules! mqtt_server {
    ($shared:expr) => {{
        let shared: Arc<Shared> = $shared;
        let for_v5 = shared.clone();
        MqttServer::new()
            .v3(ntex_mqtt::v3::MqttServer::new(fn_service(move |h| {
                let shared = shared.clone();
                async move { v3::handshake(shared, h).await }
            }))
            .control(fn_factory_with_config(async |s: v3::Session| {
                Ok::<_, EndpointError>(fn_service(move |c| {
                    let r = v3::control(&s, c);
                    async move { r }
                }))
            }))
            .protocol(fn_factory_with_config(async |s: v3::Session| {
                Ok::<_, EndpointError>(fn_service(move |m| {
                    let r = v3::protocol(s.clone(), m);
                    async move { r }
                }))
            }))
            .publish(fn_factory_with_config(async |s: v3::Session| {
                Ok::<_, EndpointError>(v3::PublishService(s))
            })))
            .v5(ntex_mqtt::v5::MqttServer::new(fn_service(move |h| {
                let shared = for_v5.clone();
                async move { v5::handshake(shared, h).await }
            }))
            .control(fn_factory_with_config(async |s: v5::Session| {
                Ok::<_, EndpointError>(fn_service(move |c| {
                    let r = v5::control(&s, c);
                    async move { r }
                }))
            }))
            .protocol(fn_factory_with_config(async |s: v5::Session| {
                Ok::<_, EndpointError>(fn_service(move |m| {
                    let r = v5::protocol(s.clone(), m);
                    async move { r }
                }))
            }))
            .publish(fn_factory_with_config(async |s: v5::Session| {
                Ok::<_, EndpointError>(v5::PublishService(s))
            })))
    }};
}

/// Starts accepting MQTT connections on `listener`: call it only once the store is open and
/// the writer runs, so that no client ever publishes into a pipeline that is not there yet.
pub fn start(
    listeners: Listeners,
    settings: &BrokerSettings,
    shared: Arc<Shared>,
) -> Result<Running, StartError> {
    let Listeners { plain, tls, .. } = listeners;
    let addr = settings.listen;
    let max_receive = shared.max_inflight.min(u32::from(u16::MAX)) as u16;
    let (max_packet, max_send) = (settings.max_packet_bytes as u32, shared.max_send);
    let config = move || {
        SharedCfg::new("MQTT")
            .add(
                MqttServiceConfig::new()
                    .set_max_qos(ntex_mqtt::QoS::ExactlyOnce)
                    .set_max_receive(max_receive)
                    .set_max_receive_size(0)
                    .set_max_size(max_packet)
                    .set_max_send(max_send)
                    .set_max_topic_alias(32)
                    .set_handshake_timeout(ntex_util::time::Seconds(30))
                    // A sensor that publishes at QoS 0 and disconnects at once (mosquitto_pub
                    // does) must not lose that message; QoS 1/2 messages are handled too (they
                    // are idempotent).
                    .set_handle_qos_after_disconnect(Some(ntex_mqtt::QoS::ExactlyOnce)),
            )
            .add(
                ntex_io::IoConfig::new()
                    .set_read_buf(256 * 1024, 16 * 1024, 16 * 1024)
                    .set_write_buf(256 * 1024, 16 * 1024, 16 * 1024),
            )
    };
    let has_tls = tls.is_some();
    if let Some(t) = &settings.tls {
        tracing::info!(listen = %t.listen, "MQTT endpoint: TLS listener");
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("mqtt-endpoint".into())
        .spawn(move || {
            let runner = ntex_rt::System::build()
                .name("mqtt-endpoint")
                .disable_signals()
                .build(ntex_net::DefaultRuntime);
            runner.block_on(async move {
                let for_tls = shared.clone();
                let built = ntex_server::net::build()
                    .workers(1)
                    .disable_signals()
                    .listen("mqtt", plain, async move |_| mqtt_server!(shared.clone()))
                    .and_then(|b| match tls {
                        None => Ok(b),
                        Some((listener, tls)) => b.listen("mqtts", listener, async move |_| {
                            ntex_service::chain_factory(ntex_tls::rustls::TlsAcceptor::new(
                                tls.clone(),
                            ))
                            .map_err(|e| MqttError::Service(EndpointError::Tls(e.to_string())))
                            .map_init_err(|_| ())
                            .and_then(mqtt_server!(for_tls.clone()))
                        }),
                    })
                    .map(|b| {
                        let b = b.config("mqtt", config());
                        if has_tls {
                            b.config("mqtts", config())
                        } else {
                            b
                        }
                        .run()
                    });
                match built {
                    Ok(server) => {
                        let _ = tx.send(Ok(server.clone()));
                        let _ = server.await;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
            });
        })
        .map_err(|e| StartError::Start(e.to_string()))?;
    let server = rx
        .recv()
        .map_err(|_| StartError::Start("the endpoint thread ended during start-up".into()))?
        .map_err(|e| StartError::Start(e.to_string()))?;
    tracing::info!(listen = %addr, "MQTT endpoint listening (PUBACK after commit)");
    Ok(Running { server, thread })
}

/// Forgets expired MQTT 5 sessions once a minute, until `shutdown`.
pub async fn sweep_sessions(shared: Arc<Shared>, shutdown: tokio_util::sync::CancellationToken) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = tick.tick() => { shared.hub.sweep_expired(); }
            _ = shutdown.cancelled() => return,
        }
    }
}

/// A client id for a client that sent none (a clean session; MQTT 5 tells it the id).
pub fn assigned_client_id() -> String {
    format!("auto-{:016x}", rand::random::<u64>())
}
