//! `GET /api/v1/readings` and `GET /api/v1/latest`.

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::AppState;
use super::error::ApiError;
use super::export::{self, Out};
use super::params::Params;
use crate::model::Flags;
use crate::store::StoreError;
use crate::store::readings::{self, Agg, Each, Filter, Row};
use crate::store::rollups::{self, Period, Rollup};

const DEFAULT_LIMIT: usize = 10_000;
/// Answers are streamed, so a long one costs no more memory than a short one.
const MAX_LIMIT: usize = 1_000_000_000;
/// See `readings`: the InfluxDB backend's answers are built in memory.
const INFLUX_MAX_LIMIT: usize = 100_000;

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
    if let Some(influx) = &s.influx {
        // InfluxDB's answers are merged across measurements in memory, so they are held to
        // a size that stays small; larger exports page with `from`.
        if filter.limit > INFLUX_MAX_LIMIT {
            return Err(ApiError::bad_request(format!(
                "`limit`: with query.backend = \"influx\" at most {INFLUX_MAX_LIMIT} rows are answered at once; page through longer spans with `from`, or use the embedded store's export"
            )));
        }
        let rows = influx.readings(&filter).await?;
        let downsampled = filter.every.is_some();
        let query = move |each: Each<Row>| {
            rows.into_iter()
                .try_for_each(|r| each(tidy(r, downsampled)))
        };
        return Ok(respond(&s, csv, query).await);
    }
    let pool = s.pool.clone();
    let rollups = s.rollups;
    let query = move |each: Each<Row>| {
        let downsampled = filter.every.is_some();
        let each = &mut |r| each(tidy(r, downsampled));
        pool.blocking(|c| match rollups {
            true => readings::query_each(c, &filter, each),
            false => readings::query_raw_each(c, &filter, each),
        })
    };
    Ok(respond(&s, csv, query).await)
}

/// Sums and means depend on the order a backend adds in; twelve significant digits are
/// beyond any sensor and make both backends give the same downsampled answer.
fn tidy(mut r: Row, downsampled: bool) -> Row {
    if downsampled {
        r.value = significant(r.value, 12);
    }
    r
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
    // One row per series: small whatever the store holds.
    Ok(respond(&s, csv, move |each: Each<Row>| {
        rows.into_iter().try_for_each(each)
    })
    .await)
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

async fn respond<Q>(s: &AppState, csv: bool, query: Q) -> Response
where
    Q: FnOnce(Each<Row>) -> Result<(), StoreError> + Send + 'static,
{
    if !csv {
        let query = move |each: Each<RowJson>| query(&mut |r| each(RowJson::from(r)));
        return export::json_array(s, "readings", query).await;
    }
    let header = "orchard,block,device,kind,depth_cm,ts,value,flags\n";
    export::csv(s, header, query, |out, r| {
        // Identifiers are [A-Za-z0-9_-]: nothing in a row needs CSV quoting.
        write!(out, "{},{},{},{},", r.orchard, r.block, r.device, r.kind)?;
        if let Some(d) = r.depth_cm {
            write!(out, "{d}")?;
        }
        writeln!(
            out,
            ",{},{},{}",
            r.ts.to_rfc3339(),
            r.value,
            r.flags.names().join("|")
        )
    })
    .await
}

/// A reading as the JSON answer shows it.
#[derive(Serialize)]
struct RowJson {
    orchard: String,
    block: String,
    device: String,
    kind: String,
    ts: String,
    value: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    depth_cm: Option<i64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    flags: Vec<&'static str>,
}

impl From<Row> for RowJson {
    fn from(r: Row) -> Self {
        Self {
            ts: r.ts.to_rfc3339(),
            flags: r.flags.names(),
            orchard: r.orchard,
            block: r.block,
            device: r.device,
            kind: r.kind,
            value: r.value,
            depth_cm: r.depth_cm,
        }
    }
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
    let pool = s.pool.clone();
    let query =
        move |each: Each<Rollup>| pool.blocking(|c| rollups::list_each(c, period, &filter, each));
    if !csv {
        return Ok(export::json_array(&s, "rollups", query).await);
    }
    let header = "orchard,block,device,kind,depth_cm,period,start,count,min,max,mean,sum,last\n";
    let line = |out: &mut Out, r: &Rollup| {
        write!(out, "{},{},{},{},", r.orchard, r.block, r.device, r.kind)?;
        if let Some(d) = r.depth_cm {
            write!(out, "{d}")?;
        }
        writeln!(
            out,
            ",{},{},{},{},{},{},{},{}",
            r.period, r.start, r.count, r.min, r.max, r.mean, r.sum, r.last
        )
    };
    Ok(export::csv(&s, header, query, line).await)
}

pub(super) fn csv_response(body: String) -> Response {
    ([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], body).into_response()
}
