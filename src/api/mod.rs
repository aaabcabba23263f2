//! The HTTP API (axum): health, metrics and the `/api/v1` queries.

mod alert_stream;
mod alerts;
mod auth;
mod devices;
mod error;
mod indices;
mod lots;
mod params;
mod quarantine;
mod readings;
mod reports;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::middleware;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use serde_json::json;
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;

pub use alert_stream::MAX_STREAMS;
pub use auth::{Access, Actor, Tokens, access};
pub use error::ApiError;

use crate::aggregate::indices::Agronomy;
use crate::influx::query::InfluxQuery;
use crate::ingest::Decoder;
use crate::metrics::Metrics;
use crate::registry::Snapshot;
use crate::store::{Admin, ReadPool};

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub pool: ReadPool,
    /// For the API's own writes: device registry, replays.
    pub admin: Admin,
    pub metrics: Arc<Metrics>,
    /// True once the MQTT subscription is in place.
    pub subscribed: watch::Receiver<bool>,
    /// Publishes registry changes to ingest.
    pub registry: Arc<watch::Sender<Snapshot>>,
    /// Judges replayed messages exactly as ingest does.
    pub decoder: Decoder,
    /// `health.expected_interval`: a device silent for twice this is listed as silent.
    pub expected_interval: std::time::Duration,
    /// Readings recovered by a replay also go to the InfluxDB forwarder.
    pub forwarding: bool,
    /// Daily rollups follow local days at this offset from UTC.
    pub utc_offset_ms: i64,
    /// `aggregate.rollups`: the rollups are kept, and can answer.
    pub rollups: bool,
    /// `[aggregate]` and `[[blocks]]`: what the daily indices depend on.
    pub agronomy: Arc<Agronomy>,
    /// Bumped after every commit that opened, acknowledged or resolved an alert: the
    /// notifiers and the alert streams have news.
    pub alerts_changed: Arc<watch::Sender<u64>>,
    /// Places for open alert streams ([`MAX_STREAMS`]).
    pub alert_streams: Arc<Semaphore>,
    /// Cancelled at shutdown: open alert streams end, so the server can stop.
    pub shutdown: CancellationToken,
    /// `[lots]`: the public address and what buyers may see.
    pub lots: Arc<crate::config::LotSettings>,
    /// `[[http.tokens]]`: who may open which door.
    pub tokens: Arc<Tokens>,
    /// `http.max_body_bytes`.
    pub max_body_bytes: usize,
    /// `query.backend = "influx"`: readings and latest answer from InfluxDB.
    pub influx: Option<Arc<InfluxQuery>>,
}

pub fn router(state: AppState) -> Router {
    let tokens = state.tokens.clone();
    let max_body = state.max_body_bytes;
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/v1/readings", get(readings::readings))
        .route("/api/v1/latest", get(readings::latest))
        .route("/api/v1/rollups", get(readings::rollups))
        .route("/api/v1/indices", get(indices::indices))
        .route(
            "/api/v1/irrigation",
            get(indices::list_irrigation).post(indices::add_irrigation),
        )
        .route("/api/v1/quarantine", get(quarantine::list))
        .route("/api/v1/quarantine/replay", post(quarantine::replay))
        .route("/api/v1/devices", get(devices::list))
        .route("/api/v1/devices/{id}", get(devices::get).put(devices::put))
        .route("/api/v1/alerts", get(alerts::list))
        .route("/api/v1/alerts/stream", get(alert_stream::stream))
        .route("/api/v1/alerts/{id}", get(alerts::get))
        .route("/api/v1/alerts/{id}/ack", post(alerts::ack))
        .route("/api/v1/alerts/{id}/resolve", post(alerts::resolve))
        .route("/api/v1/lots", get(lots::list).post(lots::create))
        .route("/api/v1/lots/{lot_id}", get(lots::get))
        .route("/api/v1/lots/{lot_id}/events", post(lots::append))
        .route("/api/v1/lots/{lot_id}/listing", get(lots::listing))
        .route("/api/v1/lots/{lot_id}/label.svg", get(lots::label_svg))
        .route("/api/v1/lots/{lot_id}/label.png", get(lots::label_png))
        .route("/api/v1/reports/season", get(reports::season))
        .route("/01/{gtin}/10/{lot_id}", get(lots::public_gtin))
        .route("/lot/{lot_id}", get(lots::public_lot))
        .route_layer(middleware::from_fn_with_state(tokens, auth::authorize))
        .fallback(|| async { ApiError::not_found("no such endpoint; see the README for the API") })
        .layer(DefaultBodyLimit::max(max_body))
        .layer(middleware::from_fn(auth::harden))
        .with_state(state)
}

/// Binds `listen` (failing at once when it cannot) and serves until `shutdown`.
pub async fn bind(listen: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(listen).await
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

async fn healthz() -> impl IntoResponse {
    axum::Json(json!({"status": "ok"}))
}

async fn readyz(State(s): State<AppState>) -> impl IntoResponse {
    let store = s.pool.is_ready().await;
    let broker = *s.subscribed.borrow() && s.metrics.mqtt_connected.get() == 1;
    let status = if store && broker {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        axum::Json(json!({"store_open": store, "broker_connected": broker})),
    )
}

async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
}
