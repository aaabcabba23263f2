//! `GET /api/v1/devices[?unassigned=true]`, `GET` and `PUT /api/v1/devices/{id}`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::Actor;
use super::AppState;
use super::error::ApiError;
use super::params::Params;
use crate::model::{Ident, TimestampMs, truncate};
use crate::registry::{self, DeviceEntry};
use crate::store::devices::{self, UpdatedBy};

#[utoipa::path(
    get,
    path = "/api/v1/devices",
    tag = "devices",
    summary = "The device registry, or devices waiting to be assigned",
    params(("unassigned" = Option<bool>, Query, description = "true: devices heard but not in the registry")),
    responses((status = 200, description = "the answer"))
)]
pub async fn list(
    State(s): State<AppState>,
    Query(raw): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let p = Params::new(raw, &["unassigned"])?;
    match p.get("unassigned") {
        None | Some("false") => {
            let (all, seen) = s
                .pool
                .read(|c| Ok((devices::all(c)?, devices::last_seen(c)?)))
                .await?;
            let now = TimestampMs::now();
            let listed: Vec<Value> = all
                .into_iter()
                .map(|e| {
                    let interval = e.expected_interval.unwrap_or(s.expected_interval);
                    let last = seen.get(e.id.as_str()).copied();
                    let silent = last.is_none_or(|t| now.0 - t.0 > 2 * interval.as_millis() as i64);
                    let mut v = json!(e);
                    v["last_seen"] = json!(last.map(TimestampMs::to_rfc3339));
                    v["silent"] = json!(silent);
                    v
                })
                .collect();
            Ok(Json(json!({ "devices": listed })))
        }
        Some("true") => {
            let unassigned = s.pool.read(devices::unassigned).await?;
            Ok(Json(json!({ "unassigned": unassigned })))
        }
        Some(_) => Err(ApiError::bad_request("`unassigned` must be true or false")),
    }
}

#[utoipa::path(
    get,
    path = "/api/v1/devices/{id}",
    tag = "devices",
    summary = "One registry entry",
    params(("id" = String, Path, description = "device id")),
    responses((status = 200, description = "the entry"), (status = 404, description = "not found"))
)]
pub async fn get(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = device_id(&id)?;
    let found = s
        .pool
        .read(move |c| devices::get(c, id.as_str()))
        .await?
        .ok_or_else(|| ApiError::not_found("no such device in the registry"))?;
    let mut entry = json!(found.0);
    entry["updated_by"] = json!(found.1);
    Ok(Json(entry))
}

/// The body of a PUT: the entry without its id, which the path gives.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Assignment {
    id: Option<String>,
    orchard: Ident,
    block: Ident,
    #[serde(default)]
    position: Option<String>,
    #[serde(default)]
    depths_cm: Vec<u16>,
    #[serde(default)]
    installed: Option<String>,
    #[serde(default, with = "humantime_serde")]
    expected_interval: Option<std::time::Duration>,
}

#[utoipa::path(
    put,
    path = "/api/v1/devices/{id}",
    tag = "devices",
    summary = "Assign a device to its orchard and block",
    params(("id" = String, Path, description = "device id")),
    request_body(content = String, content_type = "application/json", description = "{orchard, block, position?, depths_cm?, installed?, expected_interval?}"),
    responses((status = 200, description = "changed"), (status = 201, description = "new"), (status = 400, description = "a parameter or the body is wrong; the error names it"))
)]
pub async fn put(
    State(s): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let id = device_id(&id)?;
    let a: Assignment = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!(
            "the body must be a JSON device entry {{orchard, block, position?, depths_cm?, installed?, expected_interval?}}: {e}"
        ))
    })?;
    if a.id
        .as_deref()
        .is_some_and(|b| registry::normalise(b).as_ref() != Some(&id))
    {
        return Err(ApiError::bad_request(
            "the `id` in the body differs from the one in the path",
        ));
    }
    let entry = DeviceEntry {
        id,
        orchard: a.orchard,
        block: a.block,
        position: a.position,
        depths_cm: a.depths_cm,
        installed: a.installed,
        expected_interval: a.expected_interval,
    }
    .checked()
    .map_err(|e| ApiError::bad_request(e.to_string()))?;

    let stored = entry.clone();
    let existed = s
        .admin
        .write(move |c| {
            let existed = devices::get(c, stored.id.as_str())?.is_some();
            devices::upsert(c, &stored, UpdatedBy::Api(&actor.name))?;
            Ok(existed)
        })
        .await?;
    s.registry
        .send_modify(|snapshot| *snapshot = Arc::new(snapshot.with(entry.clone())));
    tracing::info!(device = %entry.id, orchard = %entry.orchard, block = %entry.block, "device assigned through the API");
    let status = if existed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(json!(entry))))
}

fn device_id(raw: &str) -> Result<Ident, ApiError> {
    registry::normalise(raw).ok_or_else(|| {
        ApiError::bad_request(format!(
            "device id `{}` is not [A-Za-z0-9_-]{{1,64}}",
            truncate(raw, 80)
        ))
    })
}
