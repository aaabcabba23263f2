//! `GET /api/v1/readings` and `GET /api/v1/latest`.

use std::collections::HashMap;
use std::fmt::Write;
use std::time::Duration;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::AppState;
use super::error::ApiError;
use super::params::Params;
use crate::model::Flags;
use crate::store::readings::{self, Agg, Filter, Row};
use crate::store::rollups::{self, Period};

const DEFAULT_LIMIT: usize = 10_000;
const MAX_LIMIT: usize = 1_000_000;

#[utoipa::path(
    get,
    path = "/api/v1/readings",
    tag = "telemetry",
    summary = "Readings, raw or aggregated",
    params(("orchard" = Option<String>, Query, description = "orchard id"), ("block" = Option<String>, Query, description = "block id"), ("device" = Option<String>, Query, description = "device id"), ("kind" = Option<String>, Query, description = "kind of reading"), ("from" = Option<String>, Query, description = "start, inclusive: RFC 3339, epoch ms or a local date"), ("to" = Option<String>, Query, description = "end, exclusive"), ("every" = Option<String>, Query, description = "window such as 15m, 1h, 1d"), ("agg" = Option<String>, Query, description = "mean, min, max, sum, count or last"), ("flagged" = Option<String>, Query, description = "spike, stuck or after_gap"), ("limit" = Option<u32>, Query, description = "most rows to answer"), ("format" = Option<String>, Query, description = "`csv` for CSV instead of JSON")),
    responses((status = 200, description = "readings ordered by time"), (status = 400, description = "a parameter or the body is wrong; the error names it"))
)]
pub async fn readings(
    State(s): State<AppState>,
    Query(raw): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let p = Params::new(
        raw,
        &[
            "orchard", "block", "device", "kind", "from", "to", "every", "agg", "flagged", "limit",
            "format",
        ],
    )?;
    let filter = Filter {
        orchard: p.ident("orchard")?,
        block: p.ident("block")?,
        device: p.ident("device")?,
        kind: p.kind()?,
        from: p.time("from")?,
        to: p.time("to")?,
        every: every(&p)?,
        flagged: p
            .get("flagged")
            .map(|f| {
                Flags::parse(f).ok_or_else(|| {
                    ApiError::bad_request("`flagged` must be spike, stuck or after_gap")
                })
            })
            .transpose()?,
        limit: p.limit(DEFAULT_LIMIT, MAX_LIMIT)?,
        utc_offset_ms: s.utc_offset_ms,
    };
    if let (Some(from), Some(to)) = (filter.from, filter.to)
        && from >= to
    {
        return Err(ApiError::bad_request("`from` must be before `to`"));
    }
    let csv = p.csv()?;
    let downsampled = filter.every.is_some();
    let mut rows = match &s.influx {
        Some(influx) => influx.readings(&filter).await?,
        None if s.rollups => s.pool.read(move |c| readings::query(c, &filter)).await?,
        None => {
            s.pool
                .read(move |c| readings::query_raw(c, &filter))
                .await?
        }
    };
    if downsampled {
        // Sums and means depend on the order a backend adds in; twelve significant digits
        // are beyond any sensor and make both backends give the same answer.
        rows.iter_mut()
            .for_each(|r| r.value = significant(r.value, 12));
    }
    Ok(respond(rows, csv))
}

fn significant(v: f64, digits: i32) -> f64 {
    if v == 0.0 || !v.is_finite() {
        return v;
    }
    let scale = 10f64.powi(digits - 1 - v.abs().log10().floor() as i32);
    (v * scale).round() / scale
}

#[utoipa::path(
    get,
    path = "/api/v1/latest",
    tag = "telemetry",
    summary = "The newest reading per device, kind and depth",
    params(("orchard" = Option<String>, Query, description = "orchard id"), ("block" = Option<String>, Query, description = "block id"), ("format" = Option<String>, Query, description = "`csv` for CSV instead of JSON")),
    responses((status = 200, description = "the answer"))
)]
pub async fn latest(
    State(s): State<AppState>,
    Query(raw): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let p = Params::new(raw, &["orchard", "block", "format"])?;
    let (orchard, block) = (p.ident("orchard")?, p.ident("block")?);
    let csv = p.csv()?;
    let rows = match &s.influx {
        Some(influx) => influx.latest(&orchard, &block).await?,
        None => {
            s.pool
                .read(move |c| readings::latest(c, &orchard, &block))
                .await?
        }
    };
    Ok(respond(rows, csv))
}

fn every(p: &Params) -> Result<Option<(i64, Agg)>, ApiError> {
    let agg = p
        .get("agg")
        .map(|a| {
            Agg::parse(a).ok_or_else(|| {
                ApiError::bad_request("`agg` must be one of mean, min, max, sum, count, last")
            })
        })
        .transpose()?;
    match (p.get("every"), agg) {
        (None, None) => Ok(None),
        (None, Some(_)) => Err(ApiError::bad_request("`agg` needs `every`, e.g. every=1h")),
        (Some(e), agg) => {
            let d: Duration = humantime::parse_duration(e)
                .ok()
                .filter(|d| d.as_millis() >= 1000)
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "`every` must be a duration of at least 1s, e.g. 15m, 1h, 1d",
                    )
                })?;
            Ok(Some((d.as_millis() as i64, agg.unwrap_or(Agg::Mean))))
        }
    }
}

fn respond(rows: Vec<Row>, csv: bool) -> Response {
    if !csv {
        let rows: Vec<_> = rows.iter().map(row_json).collect();
        return Json(json!({ "readings": rows })).into_response();
    }
    let mut out = String::from("orchard,block,device,kind,depth_cm,ts,value,flags\n");
    for r in &rows {
        let depth = r.depth_cm.map(|d| d.to_string()).unwrap_or_default();
        // Identifiers are [A-Za-z0-9_-]: nothing in a row needs CSV quoting.
        let _ = writeln!(
            out,
            "{},{},{},{},{},{},{},{}",
            r.orchard,
            r.block,
            r.device,
            r.kind,
            depth,
            r.ts.to_rfc3339(),
            r.value,
            r.flags.names().join("|")
        );
    }
    csv_response(out)
}

fn row_json(r: &Row) -> serde_json::Value {
    let mut v = json!({
        "orchard": r.orchard,
        "block": r.block,
        "device": r.device,
        "kind": r.kind,
        "ts": r.ts.to_rfc3339(),
        "value": r.value,
    });
    if let Some(d) = r.depth_cm {
        v["depth_cm"] = json!(d);
    }
    if r.flags != Flags::default() {
        v["flags"] = json!(r.flags.names());
    }
    v
}

/// `GET /api/v1/rollups?period=1h|1d`: the stored hourly or daily summaries.
#[utoipa::path(
    get,
    path = "/api/v1/rollups",
    tag = "telemetry",
    summary = "Hourly or daily rollups",
    params(("period" = Option<String>, Query, description = "1h or 1d"), ("orchard" = Option<String>, Query, description = "orchard id"), ("block" = Option<String>, Query, description = "block id"), ("device" = Option<String>, Query, description = "device id"), ("kind" = Option<String>, Query, description = "kind of reading"), ("from" = Option<String>, Query, description = "start, inclusive: RFC 3339, epoch ms or a local date"), ("to" = Option<String>, Query, description = "end, exclusive"), ("limit" = Option<u32>, Query, description = "most rows to answer"), ("format" = Option<String>, Query, description = "`csv` for CSV instead of JSON")),
    responses((status = 200, description = "rollups"), (status = 400, description = "a parameter or the body is wrong; the error names it"), (status = 409, description = "rollups are turned off"))
)]
pub async fn rollups(
    State(s): State<AppState>,
    Query(raw): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let p = Params::new(
        raw,
        &[
            "period", "orchard", "block", "device", "kind", "from", "to", "limit", "format",
        ],
    )?;
    if !s.rollups {
        return Err(ApiError::rollups_off());
    }
    let period = match p.get("period") {
        None => Period::Hour,
        Some(v) => {
            Period::parse(v).ok_or_else(|| ApiError::bad_request("`period` must be 1h or 1d"))?
        }
    };
    let filter = rollups::Filter {
        orchard: p.ident("orchard")?,
        block: p.ident("block")?,
        device: p.ident("device")?,
        kind: p.kind()?,
        from: p.time("from")?,
        to: p.time("to")?,
        limit: p.limit(DEFAULT_LIMIT, MAX_LIMIT)?,
    };
    let csv = p.csv()?;
    let rows = s
        .pool
        .read(move |c| rollups::list(c, period, &filter))
        .await?;
    if !csv {
        return Ok(Json(json!({ "rollups": rows })).into_response());
    }
    let mut out = String::from(
        "orchard,block,device,kind,depth_cm,period,start,count,min,max,mean,sum,last\n",
    );
    for r in &rows {
        let depth = r.depth_cm.map(|d| d.to_string()).unwrap_or_default();
        let _ = writeln!(
            out,
            "{},{},{},{},{},{},{},{},{},{},{},{},{}",
            r.orchard,
            r.block,
            r.device,
            r.kind,
            depth,
            r.period,
            r.start,
            r.count,
            r.min,
            r.max,
            r.mean,
            r.sum,
            r.last
        );
    }
    Ok(csv_response(out))
}

pub(super) fn csv_response(body: String) -> Response {
    ([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], body).into_response()
}
