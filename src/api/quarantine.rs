//! `GET /api/v1/quarantine`: what was rejected, why, and the payload as it arrived.

use std::collections::HashMap;
use std::fmt::Write;

use axum::Json;
use axum::extract::{Query, State};
use axum::response::Response;
use serde::Serialize;

use super::AppState;
use super::error::ApiError;
use super::export::{self, Out, csv_field};
use super::params::Params;
use crate::store::quarantine::{self, Entry, Filter};
use crate::store::readings::Each;
use crate::validate::Reason;

#[utoipa::path(
    get,
    path = "/api/v1/quarantine",
    tag = "quarantine",
    summary = "Rejected payloads with their reasons",
    params(("reason" = Option<String>, Query, description = "rejection reason"), ("from" = Option<String>, Query, description = "start, inclusive: RFC 3339, epoch ms or a local date"), ("to" = Option<String>, Query, description = "end, exclusive"), ("limit" = Option<u32>, Query, description = "most rows to answer"), ("format" = Option<String>, Query, description = "`csv` for CSV instead of JSON")),
    responses((status = 200, description = "the answer"))
)]
pub async fn list(
    State(s): State<AppState>,
    Query(raw): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let p = Params::new(raw, &["reason", "from", "to", "limit", "format"])?;
    let reason = p
        .get("reason")
        .map(|r| {
            Reason::parse(r).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "`reason` must be one of {}",
                    Reason::ALL
                        .iter()
                        .map(|r| r.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })
        })
        .transpose()?;
    let filter = Filter {
        reason,
        from: p.time("from")?,
        to: p.time("to")?,
        // Streamed, so a large limit costs no more memory than a small one.
        limit: p.limit(100, 1_000_000)?,
    };
    let csv = p.csv()?;
    let pool = s.pool.clone();
    let query = move |each: Each<Shown>| {
        pool.blocking(|c| quarantine::list_each(c, &filter, &mut |e| each(Shown::from(e))))
    };
    if csv {
        let header =
            "id,received_at,topic,reason,detail,payload,payload_encoding,payload_truncated\n";
        let line = |out: &mut Out, e: &Shown| {
            writeln!(
                out,
                "{},{},{},{},{},{},{},{}",
                e.id,
                e.received_at,
                csv_field(&e.topic),
                e.reason,
                csv_field(&e.detail),
                csv_field(&e.payload),
                e.payload_encoding,
                e.payload_truncated
            )
        };
        return Ok(export::csv(&s, header, query, line).await);
    }
    Ok(export::json_array(&s, "quarantine", query).await)
}

/// A quarantine entry as the API shows it: the payload as text when it is UTF-8, in hex
/// when it is not.
#[derive(Serialize)]
struct Shown {
    id: i64,
    received_at: String,
    topic: String,
    reason: String,
    detail: String,
    payload: String,
    payload_encoding: &'static str,
    payload_truncated: bool,
}

impl From<Entry> for Shown {
    fn from(e: Entry) -> Self {
        let (payload, payload_encoding) = match String::from_utf8(e.payload) {
            Ok(text) => (text, "utf8"),
            Err(bytes) => (hex(bytes.as_bytes()), "hex"),
        };
        Self {
            id: e.id,
            received_at: e.received_at.to_rfc3339(),
            topic: e.topic,
            reason: e.reason,
            detail: e.detail,
            payload,
            payload_encoding,
            payload_truncated: e.truncated,
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// `POST /api/v1/quarantine/replay?device=ID`: decode the device's held messages again.
#[utoipa::path(
    post,
    path = "/api/v1/quarantine/replay",
    tag = "quarantine",
    summary = "Re-decode a device's held messages",
    params(("device" = String, Query, description = "device id")),
    responses((status = 200, description = "what was recovered"), (status = 400, description = "a parameter or the body is wrong; the error names it"), (status = 409, description = "conflicts with what is stored; nothing changed"))
)]
pub async fn replay(
    State(s): State<AppState>,
    Query(raw): Query<HashMap<String, String>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let p = Params::new(raw, &["device"])?;
    let Some(device) = p.ident("device")? else {
        return Err(ApiError::bad_request("`device` is required"));
    };
    let device =
        crate::registry::normalise(device.as_str()).expect("an ident stays valid lowercase");
    if s.registry.borrow().get(device.as_str()).is_none() {
        return Err(ApiError {
            status: axum::http::StatusCode::CONFLICT,
            code: "device_unassigned",
            message: format!(
                "device `{device}` is not in the registry yet: assign it with PUT /api/v1/devices/{device} first"
            ),
        });
    }
    let decoder = s.decoder.clone();
    let forwarding = s.forwarding;
    let rollups = s.rollups.then_some(s.utc_offset_ms);
    let report = s
        .admin
        .write(move |c| {
            crate::store::replay::replay(
                c,
                device.as_str(),
                forwarding,
                rollups,
                |topic, payload, received_at| decoder.envelope(topic, payload, received_at),
            )
        })
        .await?;
    tracing::info!(device = %report.device, messages = report.messages, recovered = report.readings_recovered, "quarantine replayed");
    Ok(Json(serde_json::json!(report)))
}
