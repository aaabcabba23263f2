//! `GET /api/v1/alerts`, `GET /api/v1/alerts/{id}`, `POST /api/v1/alerts/{id}/ack` and
//! `/resolve`: what the rules found, and staff's answer to it.

use std::collections::HashMap;

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
use crate::alerts::store::{self as alerts, ActionError, Filter, StaffAction};

const STATES: &[&str] = &["open", "firing", "acknowledged", "resolved"];
pub(super) const SEVERITIES: &[&str] = &["critical", "major", "minor", "warning"];

#[utoipa::path(
    get,
    path = "/api/v1/alerts",
    tag = "alerts",
    summary = "Alerts by state, place and severity",
    params(("state" = Option<String>, Query, description = "open, firing, acknowledged or resolved"), ("orchard" = Option<String>, Query, description = "orchard id"), ("block" = Option<String>, Query, description = "block id"), ("severity" = Option<String>, Query, description = "critical, major, minor or warning"), ("limit" = Option<u32>, Query, description = "most rows to answer")),
    responses((status = 200, description = "the answer"))
)]
pub async fn list(
    State(s): State<AppState>,
    Query(raw): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let p = Params::new(raw, &["state", "orchard", "block", "severity", "limit"])?;
    let one_of = |name: &str, allowed: &[&str]| -> Result<Option<String>, ApiError> {
        match p.get(name) {
            None => Ok(None),
            Some(v) if allowed.contains(&v) => Ok(Some(v.to_owned())),
            Some(_) => Err(ApiError::bad_request(format!(
                "`{name}` must be one of {}",
                allowed.join(", ")
            ))),
        }
    };
    let filter = Filter {
        state: one_of("state", STATES)?,
        severity: one_of("severity", SEVERITIES)?,
        orchard: p.ident("orchard")?.map(|i| i.to_string()),
        block: p.ident("block")?.map(|i| i.to_string()),
        limit: p.limit(100, 10_000)?,
    };
    let found = s.pool.read(move |c| alerts::list(c, &filter)).await?;
    Ok(Json(json!({ "alerts": found })))
}

#[utoipa::path(
    get,
    path = "/api/v1/alerts/{id}",
    tag = "alerts",
    summary = "One alert with its events and deliveries",
    params(("id" = String, Path, description = "alert id")),
    responses((status = 200, description = "the alert"), (status = 404, description = "not found"))
)]
pub async fn get(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = alert_id(&id)?;
    match s.pool.read(move |c| alerts::get(c, id)).await? {
        Some((alert, events)) => {
            let mut v = json!(alert);
            v["events"] = json!(events);
            Ok(Json(v))
        }
        None => Err(ApiError::not_found(format!("no alert {id}"))),
    }
}

/// The body of an acknowledgement or a resolve.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Answer {
    /// The person answering; with tokens it may be left out (the token's name is recorded).
    #[serde(default)]
    by: Option<String>,
    #[serde(default)]
    note: Option<String>,
}

#[utoipa::path(
    post,
    path = "/api/v1/alerts/{id}/ack",
    tag = "alerts",
    summary = "Acknowledge an alert",
    params(("id" = String, Path, description = "alert id")),
    request_body(content = String, content_type = "application/json", description = "{by?, note?}"),
    responses((status = 200, description = "the alert after the answer"), (status = 404, description = "not found"), (status = 409, description = "conflicts with what is stored; nothing changed"))
)]
pub async fn ack(
    state: State<AppState>,
    actor: Extension<Actor>,
    id: Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    act(state, actor, id, body, StaffAction::Acknowledge).await
}

#[utoipa::path(
    post,
    path = "/api/v1/alerts/{id}/resolve",
    tag = "alerts",
    summary = "Resolve an alert",
    params(("id" = String, Path, description = "alert id")),
    request_body(content = String, content_type = "application/json", description = "{by?, note?}"),
    responses((status = 200, description = "the alert after the answer"), (status = 404, description = "not found"), (status = 409, description = "conflicts with what is stored; nothing changed"))
)]
pub async fn resolve(
    state: State<AppState>,
    actor: Extension<Actor>,
    id: Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    act(state, actor, id, body, StaffAction::Resolve).await
}

async fn act(
    State(s): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
    body: Bytes,
    action: StaffAction,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let id = alert_id(&id)?;
    let a: Answer = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("the body must be JSON {{by, note?}}: {e}")))?;
    let person = a.by.as_deref().map(str::trim).filter(|b| !b.is_empty());
    if person.is_none() && !actor.authenticated {
        return Err(ApiError::bad_request(
            "`by` must name who answers (with API tokens, the token's name is recorded instead)",
        ));
    }
    if person.is_some_and(|p| p.len() > 200) {
        return Err(ApiError::bad_request("`by` is longer than 200 bytes"));
    }
    let by = actor.record(person);
    if a.note.as_ref().is_some_and(|n| n.len() > 2000) {
        return Err(ApiError::bad_request("`note` is longer than 2000 bytes"));
    }
    let done = s
        .admin
        .write(move |c| Ok(alerts::act(c, id, action, &by, a.note.as_deref())))
        .await?;
    match done {
        Ok(()) => {
            tracing::info!(alert = id, ?action, "alert answered by staff");
            s.alerts_changed.send_modify(|generation| *generation += 1);
            let (alert, events) = s
                .pool
                .read(move |c| alerts::get(c, id))
                .await?
                .ok_or_else(|| ApiError::not_found(format!("no alert {id}")))?;
            let mut v = json!(alert);
            v["events"] = json!(events);
            Ok((StatusCode::OK, Json(v)))
        }
        Err(ActionError::NotFound(_)) => Err(ApiError::not_found(format!("no alert {id}"))),
        Err(e @ (ActionError::Resolved(_) | ActionError::Acknowledged(_))) => Err(ApiError {
            status: StatusCode::CONFLICT,
            code: "conflict",
            message: e.to_string(),
        }),
        Err(ActionError::Store(e)) => Err(e.into()),
    }
}

fn alert_id(raw: &str) -> Result<i64, ApiError> {
    raw.parse::<i64>().ok().filter(|i| *i > 0).ok_or_else(|| {
        ApiError::bad_request(format!(
            "`{}` is not an alert id",
            crate::model::truncate(raw, 20)
        ))
    })
}
