//! `GET /api/v1/indices`: daily agronomic indices of one block; `GET` and `POST
//! /api/v1/irrigation`: irrigation entered by staff where no flow meter measures it.

use std::collections::HashMap;
use std::fmt::Write;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Extension, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use time::Date;
use time::format_description::well_known::Iso8601;

use super::Actor;
use super::AppState;
use super::error::ApiError;
use super::params::Params;
use super::readings::csv_response;
use crate::aggregate::indices::{self, Day, DayIndices};
use crate::model::{Ident, TimestampMs, truncate};
use crate::store::block::BlockSeries;
use crate::store::irrigation;

/// The longest span one request may ask for.
const MAX_DAYS: i64 = 3660;
/// Without `from`, this many days before `to`.
const DEFAULT_DAYS: i64 = 30;

#[utoipa::path(
    get,
    path = "/api/v1/indices",
    tag = "agronomy",
    summary = "A block's daily agronomic indices",
    params(("orchard" = String, Query, description = "orchard id"), ("block" = String, Query, description = "block id"), ("from" = Option<String>, Query, description = "start, inclusive: RFC 3339, epoch ms or a local date"), ("to" = Option<String>, Query, description = "end, exclusive"), ("format" = Option<String>, Query, description = "`csv` for CSV instead of JSON")),
    responses((status = 200, description = "one entry per local day"), (status = 400, description = "a parameter or the body is wrong; the error names it"))
)]
pub async fn indices(
    State(s): State<AppState>,
    Query(raw): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let p = Params::new(raw, &["orchard", "block", "from", "to", "format"])?;
    let (orchard, block) = block_of(&p)?;
    let csv = p.csv()?;
    let params = s.agronomy.params(orchard.as_str(), block.as_str());
    let offset = params.utc_offset_ms;
    let (first, end) = days(&p, offset)?;
    let season = params.season_start_of(first);
    let (site, gdd_base_c, (month, day), min_hours) = (
        params.site,
        params.gdd_base_c,
        params.season_start,
        params.min_hours,
    );
    let (o, b) = (orchard.clone(), block.clone());
    let default_interval = s.expected_interval;
    let days = s
        .pool
        .read(move |c| {
            let entered = irrigation::per_day(c, &o, &b, season, end)?;
            let series = BlockSeries::of(c, &o, &b, default_interval)?;
            let readings_of =
                |day: Day, each: &mut dyn FnMut(_)| series.around(c, day, offset, each);
            indices::compute(&params, first, end, readings_of, &entered)
        })
        .await?;
    if csv {
        return Ok(csv_response(to_csv(&orchard, &block, &days)));
    }
    Ok(Json(json!({
        "orchard": orchard,
        "block": block,
        "site": site.map(|s| json!({"latitude": s.latitude_deg, "elevation_m": s.elevation_m})),
        "gdd_base_c": gdd_base_c,
        "season_start": format!("{:02}-{day:02}", u8::from(month)),
        "min_hours": min_hours,
        "days": days,
    }))
    .into_response())
}

fn block_of(p: &Params) -> Result<(Ident, Ident), ApiError> {
    match (p.ident("orchard")?, p.ident("block")?) {
        (Some(o), Some(b)) => Ok((o, b)),
        _ => Err(ApiError::bad_request(
            "`orchard` and `block` are both needed: indices are per block",
        )),
    }
}

/// A local date (`2026-03-01`) or a time (RFC 3339, epoch ms) as a local day, and whether a
/// time falls inside its day rather than at its local midnight.
fn day_param(p: &Params, name: &str, offset: i64) -> Result<Option<(Day, bool)>, ApiError> {
    let Some(v) = p.get(name) else {
        return Ok(None);
    };
    // Only a whole `YYYY-MM-DD` is a date: the ISO 8601 date parser also takes the date off
    // the front of a full time, which would lose the time.
    if v.len() == 10
        && let Ok(d) = Date::parse(v, &Iso8601::DATE)
    {
        return Ok(Some((Day::from_date(d), false)));
    }
    let t = TimestampMs::parse(v).ok_or_else(|| {
        ApiError::bad_request(format!(
            "`{name}`: `{}` is not a date (2026-03-01), an RFC 3339 time or epoch milliseconds",
            truncate(v, 40)
        ))
    })?;
    let day = Day::of(t.0, offset);
    Ok(Some((day, day.start_ms(offset) != t.0)))
}

/// `[first, end)`: `from` and `to` as local days, `to` exclusive (a time inside a day keeps
/// that day); by default the 30 days through today.
fn days(p: &Params, offset: i64) -> Result<(Day, Day), ApiError> {
    let end = match day_param(p, "to", offset)? {
        Some((day, inside)) => Day(day.0 + i64::from(inside)),
        None => Day(Day::of(TimestampMs::now().0, offset).0 + 1),
    };
    let first = match day_param(p, "from", offset)? {
        Some((day, _)) => day,
        None => Day(end.0 - DEFAULT_DAYS),
    };
    if first >= end {
        return Err(ApiError::bad_request("`from` must be before `to`"));
    }
    if end.0 - first.0 > MAX_DAYS {
        return Err(ApiError::bad_request(format!(
            "at most {MAX_DAYS} days at a time; ask for a shorter span"
        )));
    }
    Ok((first, end))
}

const CSV_HEADER: &str = "orchard,block,date,gdd,gdd_season,gdd_season_days_missing,t_min_c,t_max_c,\
frost_hours,heat_hours,leaf_wet_hours,rain_mm,irrigation_mm,et0_mm,et0_method,kc,etc_mm,\
depletion_mm,drained_mm,irrigation_needed_mm,balance_days_missing,missing";

fn to_csv(orchard: &Ident, block: &Ident, days: &[DayIndices]) -> String {
    let mut out = String::from(CSV_HEADER);
    out.push('\n');
    let num = |v: Option<f64>| v.map(|v| v.to_string()).unwrap_or_default();
    for d in days {
        let missing: Vec<String> = d.missing.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        let _ = writeln!(
            out,
            "{orchard},{block},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},\"{}\"",
            d.date,
            num(d.gdd),
            d.gdd_season,
            d.gdd_season_days_missing,
            num(d.t_min_c),
            num(d.t_max_c),
            num(d.frost_hours),
            num(d.heat_hours),
            num(d.leaf_wet_hours),
            num(d.rain_mm),
            d.irrigation_mm,
            num(d.et0_mm),
            d.et0_method.unwrap_or_default(),
            d.kc,
            num(d.etc_mm),
            num(d.depletion_mm),
            num(d.drained_mm),
            num(d.irrigation_needed_mm),
            d.balance_days_missing,
            missing.join("; ").replace('"', "\"\""),
        );
    }
    out
}

/// The body of a POST /api/v1/irrigation.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewEntry {
    orchard: Ident,
    block: Ident,
    /// Local date the water was applied.
    date: String,
    mm: f64,
    #[serde(default)]
    note: Option<String>,
}

#[utoipa::path(
    post,
    path = "/api/v1/irrigation",
    tag = "agronomy",
    summary = "Enter irrigation where no flow meter reports",
    request_body(content = String, content_type = "application/json", description = "{orchard, block, date, mm, note?}"),
    responses((status = 201, description = "the entry"), (status = 400, description = "a parameter or the body is wrong; the error names it"))
)]
pub async fn add_irrigation(
    State(s): State<AppState>,
    Extension(actor): Extension<Actor>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let e: NewEntry = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!(
            "the body must be JSON {{orchard, block, date: \"2026-03-01\", mm, note?}}: {e}"
        ))
    })?;
    let date = Date::parse(&e.date, &Iso8601::DATE).map_err(|_| {
        ApiError::bad_request(format!(
            "`date`: `{}` is not a date such as 2026-03-01",
            truncate(&e.date, 40)
        ))
    })?;
    let (lo, hi) = crate::model::Kind::Irrigation.range();
    if !(e.mm > lo && e.mm <= hi) {
        return Err(ApiError::bad_request(format!(
            "`mm` must be above {lo} and at most {hi}"
        )));
    }
    if e.note.as_ref().is_some_and(|n| n.len() > 1000) {
        return Err(ApiError::bad_request("`note` is longer than 1000 bytes"));
    }
    let day = Day::from_date(date);
    let entry = s
        .admin
        .write(move |c| {
            irrigation::add(
                c,
                &e.orchard,
                &e.block,
                day,
                e.mm,
                e.note.as_deref(),
                &actor.name,
            )
        })
        .await?;
    tracing::info!(orchard = %entry.orchard, block = %entry.block, date = %entry.date, mm = entry.mm, "irrigation entered");
    Ok((StatusCode::CREATED, Json(json!(entry))))
}

#[utoipa::path(
    get,
    path = "/api/v1/irrigation",
    tag = "agronomy",
    summary = "Irrigation entered by staff",
    params(("orchard" = Option<String>, Query, description = "orchard id"), ("block" = Option<String>, Query, description = "block id"), ("from" = Option<String>, Query, description = "start, inclusive: RFC 3339, epoch ms or a local date"), ("to" = Option<String>, Query, description = "end, exclusive")),
    responses((status = 200, description = "the answer"))
)]
pub async fn list_irrigation(
    State(s): State<AppState>,
    Query(raw): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let p = Params::new(raw, &["orchard", "block", "from", "to"])?;
    let (orchard, block) = block_of(&p)?;
    let (first, end) = days(&p, s.utc_offset_ms)?;
    let entries = s
        .pool
        .read(move |c| irrigation::list(c, &orchard, &block, first, end))
        .await?;
    Ok(Json(json!({ "irrigation": entries })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_time_inside_a_day_keeps_that_day_and_a_date_is_its_midnight() {
        let p = |v: &str| {
            Params::new(HashMap::from([("to".to_owned(), v.to_owned())]), &["to"]).unwrap()
        };
        let day = Day::from_date(time::macros::date!(2026 - 12 - 01));
        assert_eq!(
            day_param(&p("2026-12-01"), "to", 0).unwrap(),
            Some((day, false))
        );
        assert_eq!(
            day_param(&p("2026-12-01T23:59:59Z"), "to", 0).unwrap(),
            Some((day, true))
        );
        // Epoch milliseconds: 2026-12-01T12:00:00Z.
        assert_eq!(
            day_param(&p("1796126400000"), "to", 0).unwrap(),
            Some((day, true))
        );
    }
}
