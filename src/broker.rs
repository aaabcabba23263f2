//! The embedded MQTT broker (rumqttd), for a server that is its own broker.
//!
//! It holds messages in memory: a device's QoS 1 publish is acknowledged once the broker has
//! it, so a crash of orchardd loses what the broker held and the store had not committed.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};

use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};

use crate::config::BrokerSettings;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error(
        "broker.listen {addr}: cannot listen there ({source}); is another MQTT broker running? Stop it, choose another address, or set broker.embedded = false to use it"
    )]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("embedded broker: {0}")]
    Start(String),
}

/// Messages the broker keeps per topic for a subscriber that falls behind, in bytes.
const SEGMENT_BYTES: usize = 4 * 1024 * 1024;
const SEGMENTS: usize = 8;

/// Starts the broker on its own threads; it runs until the process exits.
pub fn start(settings: &BrokerSettings) -> Result<(), BrokerError> {
    // rumqttd reports a failed bind only in its log; check first so that orchardd never
    // silently subscribes to some other broker that holds the port.
    TcpListener::bind(settings.listen).map_err(|source| BrokerError::Bind {
        addr: settings.listen,
        source,
    })?;

    let server = ServerSettings {
        name: "orchardd-v4".into(),
        listen: settings.listen,
        tls: None,
        next_connection_delay_ms: 1,
        connections: ConnectionSettings {
            connection_timeout_ms: 60_000,
            max_payload_size: settings.max_packet_bytes,
            max_inflight_count: 1000,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        },
    };
    let config = Config {
        router: RouterConfig {
            max_connections: 10_000,
            max_outgoing_packet_count: 1000,
            max_segment_size: SEGMENT_BYTES,
            max_segment_count: SEGMENTS,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4: Some(HashMap::from([("1".to_owned(), server)])),
        ..Config::default()
    };
    let mut broker = Broker::new(config);
    std::thread::Builder::new()
        .name("broker".into())
        .spawn(move || {
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "embedded broker stopped");
            }
        })
        .map_err(|e| BrokerError::Start(e.to_string()))?;
    tracing::info!(listen = %settings.listen, "embedded MQTT broker started");
    Ok(())
}
