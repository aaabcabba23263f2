//! The HTTP API (axum): health, metrics and the `/api/v1` queries.

mod alert_stream;
mod alerts;
mod auth;
mod devices;
mod error;
mod export;
mod indices;
mod lots;
mod openapi;
mod params;
mod quarantine;
mod readings;
mod reports;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::{DefaultBodyLimit, Extension};
use axum::http::{StatusCode, header};
use axum::middleware;
use axum::response::IntoResponse;
use serde_json::json;
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use alert_stream::MAX_STREAMS;
pub use auth::{Access, Actor, Tokens, access};
pub use error::ApiError;
pub use export::MAX_EXPORTS;

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
    /// Whether the writer's commits succeed: `/readyz` fails while they do not.
    pub heartbeat: Arc<crate::store::writer::Heartbeat>,
    /// Places for exports streaming at once ([`MAX_EXPORTS`]).
    pub exports: Arc<Semaphore>,
    /// Places for open alert streams ([`MAX_STREAMS`]).
    pub alert_streams: Arc<Semaphore>,
    /// Cancelled at shutdown: open alert streams end, so the server can stop.
    pub shutdown: CancellationToken,
    /// `[lots]`: the public address and what buyers may see.
    pub lots: Arc<crate::config::LotSettings>,
    /// `[[http.tokens]]`: who may open which door; replaced by a reload (SIGHUP).
    pub tokens: Arc<crate::reload::Live<Tokens>>,
    /// `http.max_body_bytes`.
    pub max_body_bytes: usize,
    /// `query.backend = "influx"`: readings and latest answer from InfluxDB.
    pub influx: Option<Arc<InfluxQuery>>,
}

pub fn router(state: AppState) -> Router {
    let tokens = state.tokens.clone();
    let max_body = state.max_body_bytes;
    // Every route comes from its handler's `#[utoipa::path]`, so the OpenAPI document and
    // the routes cannot drift apart.
    let (routes, doc) = OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
        .routes(routes!(openapi_json))
        .routes(routes!(readings::readings))
        .routes(routes!(readings::latest))
        .routes(routes!(readings::rollups))
        .routes(routes!(indices::indices))
        .routes(routes!(indices::list_irrigation, indices::add_irrigation))
        .routes(routes!(quarantine::list))
        .routes(routes!(quarantine::replay))
        .routes(routes!(devices::list))
        .routes(routes!(devices::get, devices::put))
        .routes(routes!(alerts::list))
        .routes(routes!(alert_stream::stream))
        .routes(routes!(alerts::get))
        .routes(routes!(alerts::ack))
        .routes(routes!(alerts::resolve))
        .routes(routes!(lots::list, lots::create))
        .routes(routes!(lots::get))
        .routes(routes!(lots::append))
        .routes(routes!(lots::listing))
        .routes(routes!(lots::label_svg))
        .routes(routes!(lots::label_png))
        .routes(routes!(reports::season))
        .routes(routes!(lots::public_gtin))
        .routes(routes!(lots::public_lot))
        .split_for_parts();
    let doc = OpenApiJson(Bytes::from(
        serde_json::to_vec(&openapi::document(doc)).expect("the document serializes"),
    ));
    routes
        .route("/", axum::routing::get(crate::web::index))
        .route("/assets/{*file}", axum::routing::get(crate::web::asset))
        .route_layer(middleware::from_fn_with_state(tokens, auth::authorize))
        .fallback(|| async { ApiError::not_found("no such endpoint; see /api/v1/openapi.json") })
        .layer(Extension(doc))
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

#[utoipa::path(
    get,
    path = "/healthz",
    tag = "health",
    summary = "Liveness: the process runs",
    responses((status = 200, description = "the answer"))
)]
async fn healthz() -> impl IntoResponse {
    axum::Json(json!({"status": "ok"}))
}

#[utoipa::path(
    get,
    path = "/readyz",
    tag = "health",
    summary = "Readiness: store open and writable, and MQTT in place",
    responses((status = 200, description = "ready"), (status = 503, description = "not ready"))
)]
async fn readyz(State(s): State<AppState>) -> impl IntoResponse {
    let store = s.pool.is_ready().await;
    let broker = *s.subscribed.borrow() && s.metrics.mqtt_connected.get() == 1;
    let failing = s.heartbeat.failing();
    let status = if store && broker && failing.is_none() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut body = json!({
        "store_open": store,
        "store_writable": failing.is_none(),
        "broker_connected": broker,
    });
    if let Some((since, error)) = failing {
        body["store_error"] = json!(error);
        body["store_failing_since"] = json!(crate::model::TimestampMs(since).to_rfc3339());
    }
    (status, axum::Json(body))
}

#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    tag = "health",
    summary = "This document: every route, its parameters and the role it needs",
    responses((status = 200, description = "OpenAPI 3.1"))
)]
async fn openapi_json(Extension(doc): Extension<OpenApiJson>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], doc.0)
}

/// The document, serialized once.
#[derive(Clone)]
struct OpenApiJson(Bytes);

#[utoipa::path(
    get,
    path = "/metrics",
    tag = "health",
    summary = "Prometheus / OpenMetrics text",
    responses((status = 200, description = "the answer"))
)]
async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    // What the store counts (alerts by state, notifications) is read at each scrape; a store
    // that does not answer leaves the last values.
    match s.pool.read(crate::alerts::store::census).await {
        Ok(census) => s.metrics.census(&census, s.pool.bytes_on_disk()),
        Err(e) => tracing::warn!(error = %e, "metrics: the store's counts could not be read"),
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
}
