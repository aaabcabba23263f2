//! `GET /api/v1/reports/season`: per block of an orchard, the season's yield and grades
//! beside its telemetry.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::AppState;
use super::error::ApiError;
use super::params::Params;
use super::readings::csv_response;
use crate::aggregate::indices::Day;
use crate::harvest::report;
use crate::model::{TimestampMs, truncate};

#[utoipa::path(
    get,
    path = "/api/v1/reports/season",
    tag = "harvest",
    summary = "The season report of an orchard",
    params(("orchard" = String, Query, description = "orchard id"), ("season" = i32, Query, description = "the year the season starts in"), ("format" = Option<String>, Query, description = "`csv` for CSV instead of JSON")),
    responses((status = 200, description = "per block: yields, grades, sweetness, telemetry"), (status = 400, description = "a parameter or the body is wrong; the error names it"))
)]
pub async fn season(
    State(s): State<AppState>,
    Query(raw): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let p = Params::new(raw, &["orchard", "season", "format"])?;
    let orchard = p.ident("orchard")?.ok_or_else(|| {
        ApiError::bad_request("`orchard` is needed: the report compares its blocks")
    })?;
    let today = Day::of(TimestampMs::now().0, s.utc_offset_ms);
    let year = match p.get("season") {
        None => today.date().year(),
        Some(v) => v
            .parse::<i32>()
            .ok()
            .filter(|y| (1970..=9999).contains(y))
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "`season`: `{}` is not a year such as 2026 (the season that starts in it)",
                    truncate(v, 20)
                ))
            })?,
    };
    let csv = p.csv()?;
    let agronomy = s.agronomy.clone();
    let registry = s.registry.borrow().clone();
    let interval = s.expected_interval;
    let o = orchard.clone();
    let blocks = s
        .pool
        .read(move |c| report::season_report(c, &agronomy, &registry, &o, year, today, interval))
        .await?;
    if csv {
        return Ok(csv_response(report::to_csv(&blocks)));
    }
    Ok(Json(json!({ "orchard": orchard, "season": year, "blocks": blocks })).into_response())
}
