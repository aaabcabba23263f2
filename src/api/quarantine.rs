//! `GET /api/v1/quarantine`: what was rejected, why, and the payload as it arrived.

use std::collections::HashMap;
use std::fmt::Write;

use axum::Json;
use axum::extract::{Query, State};
use serde_json::json;

use super::AppState;
use super::error::ApiError;
use super::params::Params;
use crate::store::quarantine::{self, Filter};
use crate::validate::Reason;

pub async fn list(
    State(s): State<AppState>,
    Query(raw): Query<HashMap<String, String>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let p = Params::new(raw, &["reason", "from", "to", "limit"])?;
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
        limit: p.limit(100, 10_000)?,
    };
    let entries = s.pool.read(move |c| quarantine::list(c, &filter)).await?;
    let entries: Vec<_> = entries
        .into_iter()
        .map(|e| {
            let (payload, encoding) = match String::from_utf8(e.payload) {
                Ok(text) => (text, "utf8"),
                Err(bytes) => (hex(bytes.as_bytes()), "hex"),
            };
            json!({
                "id": e.id,
                "received_at": e.received_at.to_rfc3339(),
                "topic": e.topic,
                "reason": e.reason,
                "detail": e.detail,
                "payload": payload,
                "payload_encoding": encoding,
                "payload_truncated": e.truncated,
            })
        })
        .collect();
    Ok(Json(json!({ "quarantine": entries })))
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}
