//! Harvest lots: `POST /api/v1/lots` (staff), the lot list, the traceability record, later
//! steps, the box label, the shop listing, and the public page at the lot's GS1 Digital Link.

use std::collections::HashMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use serde_json::{Value, json};

use super::Actor;
use super::AppState;
use super::error::ApiError;
use super::export::{self, Out};
use super::params::Params;
use super::readings::csv_response;
use crate::aggregate::indices::Day;
use crate::harvest::label::{self, Bilingual, LabelData};
use crate::harvest::lot::is_lot_id;
use crate::harvest::public::{self, Lang, Published, Sources};
use crate::harvest::season::Season;
use crate::harvest::store::{self as lots, Appended, Arrived, Kept, Step, Stored};
use crate::model::{TimestampMs, truncate};
use crate::store::StoreError;
use crate::store::readings::Each;

#[utoipa::path(
    post,
    path = "/api/v1/lots",
    tag = "harvest",
    summary = "Enter a harvest lot",
    request_body(content = String, content_type = "application/json", description = "a lot (README, Harvest lots)"),
    responses((status = 201, description = "new"), (status = 200, description = "the same lot was stored already"), (status = 400, description = "a parameter or the body is wrong; the error names it"), (status = 409, description = "conflicts with what is stored; nothing changed"))
)]
pub async fn create(
    State(s): State<AppState>,
    Extension(actor): Extension<Actor>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let incoming = s.decoder.lots().by_http(&body).map_err(|problems| {
        ApiError::bad_request(
            problems
                .iter()
                .map(|p| format!("{}: {}", p.reason.as_str(), p.detail))
                .collect::<Vec<_>>()
                .join("; "),
        )
    })?;
    let lot_id = incoming.lot.lot_id.clone();
    let arrived = Arrived {
        via: "http",
        from: actor.name,
        at: TimestampMs::now(),
    };
    let stored = {
        let incoming = incoming.clone();
        s.admin
            .write(move |c| lots::insert(c, &incoming.lot, &incoming.graded, &arrived))
            .await?
    };
    let status = match stored {
        Stored::New => {
            s.metrics.lots_accepted.inc();
            tracing::info!(lot = %lot_id, orchard = %incoming.lot.orchard, block = %incoming.lot.block, grade = ?incoming.graded.grade, "lot entered");
            StatusCode::CREATED
        }
        Stored::Same => {
            s.metrics.lots_duplicate.inc();
            StatusCode::OK
        }
        Stored::Conflict(kept) => {
            return Err(ApiError::conflict(
                "lot_exists",
                format!(
                    "lot {lot_id} is already stored with other content (harvested {} in {}/{}, {} kg); nothing was changed. Give the new lot its own lot_id, or append later steps with POST /api/v1/lots/{lot_id}/events",
                    kept.harvest_date, kept.orchard, kept.block, kept.net_weight_kg
                ),
            ));
        }
    };
    let kept = s
        .pool
        .read(move |c| lots::get(c, &lot_id))
        .await?
        .ok_or_else(|| ApiError::not_found("the lot was stored but cannot be read back"))?;
    Ok((status, Json(json!(kept))))
}

#[utoipa::path(
    get,
    path = "/api/v1/lots",
    tag = "harvest",
    summary = "Harvest lots",
    params(("orchard" = Option<String>, Query, description = "orchard id"), ("block" = Option<String>, Query, description = "block id"), ("from" = Option<String>, Query, description = "harvest date, inclusive"), ("to" = Option<String>, Query, description = "harvest date, exclusive"), ("grade" = Option<String>, Query, description = "grade id"), ("limit" = Option<u32>, Query, description = "most rows to answer"), ("format" = Option<String>, Query, description = "`csv` for CSV instead of JSON")),
    responses((status = 200, description = "the answer"))
)]
pub async fn list(
    State(s): State<AppState>,
    Query(raw): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let p = Params::new(
        raw,
        &["orchard", "block", "from", "to", "grade", "limit", "format"],
    )?;
    let date = |name: &str| -> Result<Option<Day>, ApiError> {
        p.get(name)
            .map(|v| {
                parse_date(v).ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "`{name}`: `{}` is not a date such as 2026-11-28",
                        truncate(v, 20)
                    ))
                })
            })
            .transpose()
    };
    let filter = lots::Filter {
        orchard: p.ident("orchard")?.map(|i| i.to_string()),
        block: p.ident("block")?.map(|i| i.to_string()),
        from: date("from")?,
        // Exclusive, as every `to` of the API.
        to: date("to")?,
        grade: p.get("grade").map(str::to_owned),
        // Streamed, so a large limit costs no more memory than a small one.
        limit: p.limit(1000, 1_000_000)?,
    };
    let csv = p.csv()?;
    let pool = s.pool.clone();
    let query = move |each: Each<Kept>| pool.blocking(|c| lots::list_each(c, &filter, each));
    if csv {
        return Ok(export::csv(&s, LOTS_CSV_HEADER, query, lot_line).await);
    }
    Ok(export::json_array(&s, "lots", query).await)
}

fn parse_date(v: &str) -> Option<Day> {
    let d = time::Date::parse(v, &time::format_description::well_known::Iso8601::DATE).ok()?;
    (v.len() == 10).then(|| Day::from_date(d))
}

const LOTS_CSV_HEADER: &str = "lot_id,orchard,block,harvest_date,net_weight_kg,fruit_count,trees_harvested,grade,size_class,tss_brix,acidity_pct,diameter_mm,colour_pct,standard\n";

fn lot_line(out: &mut Out, k: &Kept) -> Result<(), StoreError> {
    let (l, g) = (&k.lot, &k.grading);
    let num = |v: Option<f64>| v.map(|v| v.to_string()).unwrap_or_default();
    writeln!(
        out,
        "{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
        l.lot_id,
        l.orchard,
        l.block,
        l.harvest_date,
        l.net_weight_kg,
        l.fruit_count.map(|n| n.to_string()).unwrap_or_default(),
        l.trees_harvested.map(|n| n.to_string()).unwrap_or_default(),
        g.grade.as_deref().unwrap_or_default(),
        g.size_class.as_deref().unwrap_or_default(),
        num(l.quality.tss_brix),
        num(l.quality.acidity_pct),
        num(l.quality.diameter_mm),
        num(l.quality.colour_pct),
        export::csv_field(&g.standard),
    )
}

/// A lot with its block's season through the harvest.
async fn lot_and_season(s: &AppState, lot_id: String) -> Result<(Kept, Season), ApiError> {
    if !is_lot_id(&lot_id) {
        return Err(ApiError::not_found(format!(
            "`{}` is not a lot id",
            truncate(&lot_id, 40)
        )));
    }
    let agronomy = s.agronomy.clone();
    let interval = s.expected_interval;
    let found = s
        .pool
        .read(move |c| {
            let Some(kept) = lots::get(c, &lot_id)? else {
                return Ok(Err(lot_id));
            };
            let day = lots::harvest_day(&kept.lot);
            let season = Season::of(
                c,
                &agronomy,
                &kept.lot.orchard,
                &kept.lot.block,
                day,
                interval,
            )?;
            Ok(Ok((kept, season)))
        })
        .await?;
    found.map_err(|id| ApiError::not_found(format!("no lot {id}")))
}

/// Runs `f` on what a lot's public face is made of: the lot, its season, its block's
/// registry entry, the grading standard and the `[lots]` settings.
fn with_sources<R>(
    s: &AppState,
    kept: &Kept,
    season: &Season,
    f: impl FnOnce(&Sources<'_>) -> R,
) -> R {
    let registry = s.registry.borrow().clone();
    f(&Sources {
        kept,
        season,
        block: registry.block(kept.lot.orchard.as_str(), kept.lot.block.as_str()),
        standard: s.decoder.lots().standard(),
        settings: &s.lots,
    })
}

fn published(s: &AppState, kept: &Kept, season: &Season) -> Published {
    with_sources(s, kept, season, |sources| sources.publish())
}

/// `GET /api/v1/lots/{lot_id}`: the traceability record, everything staff may see.
#[utoipa::path(
    get,
    path = "/api/v1/lots/{lot_id}",
    tag = "harvest",
    summary = "A lot's traceability record",
    params(("lot_id" = String, Path, description = "lot id")),
    responses((status = 200, description = "the lot, its grading, events, URL and season"), (status = 404, description = "not found"))
)]
pub async fn get(
    State(s): State<AppState>,
    Path(lot_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (kept, season) = lot_and_season(&s, lot_id).await?;
    let url = public::digital_link(
        &s.lots.public_url,
        &kept.lot.lot_id,
        kept.lot.gtin.as_deref(),
    );
    let mut record = json!(kept);
    record["url"] = json!(url);
    record["season"] = json!(season);
    Ok(Json(record))
}

#[utoipa::path(
    post,
    path = "/api/v1/lots/{lot_id}/events",
    tag = "harvest",
    summary = "Append a later step of a lot",
    params(("lot_id" = String, Path, description = "lot id")),
    request_body(content = String, content_type = "application/json", description = "{step, at?, destination?, boxes?, note?}"),
    responses((status = 201, description = "new"), (status = 200, description = "the same step was entered"), (status = 400, description = "a parameter or the body is wrong; the error names it"), (status = 404, description = "not found"))
)]
pub async fn append(
    State(s): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(lot_id): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let step: Step = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!(
            "the body must be JSON {{step: packed|shipped|delivered|sold|recalled|note, at?: RFC 3339, destination?, boxes?, note?}}: {e}"
        ))
    })?;
    let step = check_step(step)?;
    let appended = s
        .admin
        .write(move |c| lots::append(c, &lot_id, &step, &actor.name))
        .await?;
    match appended {
        Appended::New(e) => Ok((StatusCode::CREATED, Json(json!(e)))),
        Appended::Same(e) => Ok((StatusCode::OK, Json(json!(e)))),
        Appended::NoSuchLot => Err(ApiError::not_found(
            "no such lot; POST it to /api/v1/lots first",
        )),
    }
}

const STEPS: &[&str] = &["packed", "shipped", "delivered", "sold", "recalled", "note"];

fn check_step(mut step: Step) -> Result<Step, ApiError> {
    if !STEPS.contains(&step.step.as_str()) {
        return Err(ApiError::bad_request(format!(
            "`step`: `{}` is not one of {}",
            truncate(&step.step, 20),
            STEPS.join(", ")
        )));
    }
    step.at = if step.at.is_empty() {
        TimestampMs::now().to_rfc3339()
    } else {
        TimestampMs::parse(&step.at)
            .ok_or_else(|| ApiError::bad_request("`at` must be an RFC 3339 time or epoch ms"))?
            .to_rfc3339()
    };
    for text in [&step.destination, &step.note].into_iter().flatten() {
        if text.chars().count() > 500 {
            return Err(ApiError::bad_request("texts are at most 500 characters"));
        }
    }
    Ok(step)
}

/// `GET /api/v1/lots/{lot_id}/listing`: what an online-shop listing needs, JSON or CSV.
#[utoipa::path(
    get,
    path = "/api/v1/lots/{lot_id}/listing",
    tag = "harvest",
    summary = "The online-shop listing of a lot",
    params(("lot_id" = String, Path, description = "lot id"), ("format" = Option<String>, Query, description = "`csv` for CSV instead of JSON")),
    responses((status = 200, description = "the listing"), (status = 404, description = "not found"))
)]
pub async fn listing(
    State(s): State<AppState>,
    Path(lot_id): Path<String>,
    Query(raw): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let p = Params::new(raw, &["format"])?;
    let csv = p.csv()?;
    let (kept, season) = lot_and_season(&s, lot_id).await?;
    let listing = published(&s, &kept, &season);
    if csv {
        return Ok(csv_response(public::listing_csv(&listing)));
    }
    Ok(Json(json!(listing)).into_response())
}

/// The label's content; refused for a lot whose certificate cannot be signed.
fn label_of(
    s: &AppState,
    kept: &Kept,
    season: &Season,
    box_kg: Option<f64>,
) -> Result<LabelData, ApiError> {
    let lot = &kept.lot;
    if let Some(c) = &lot.certificate
        && !c.interval_kept
    {
        return Err(ApiError::conflict(
            "pre_harvest_interval",
            format!(
                "lot {} was harvested {} after its last spray on {}, inside the {}-day pre-harvest interval: it cannot carry the compliance commitment, so no label is made for sale",
                lot.lot_id,
                lot.harvest_date,
                c.last_spray_date.as_deref().unwrap_or("?"),
                c.pre_harvest_interval_days.unwrap_or(0)
            ),
        ));
    }
    Ok(with_sources(s, kept, season, |sources| {
        let (gz, ge) = sources.grade_names();
        let (oz, oe) = sources.origin();
        LabelData {
            lot_id: lot.lot_id.clone(),
            url: public::digital_link(&s.lots.public_url, &lot.lot_id, lot.gtin.as_deref()),
            product: Bilingual {
                zh: s.lots.product_zh.clone(),
                en: s.lots.product_en.clone(),
            },
            grade: Bilingual { zh: gz, en: ge },
            size_class: kept.grading.size_class.as_ref().map(|c| format!("{c} mm")),
            tss_brix: lot.quality.tss_brix,
            net_weight_kg: box_kg.unwrap_or(lot.net_weight_kg),
            harvest_date: lot.harvest_date.clone(),
            origin: Bilingual { zh: oz, en: oe },
            commitment: sources.commitment().map(|(zh, en)| Bilingual { zh, en }),
            gtin: lot.gtin.clone(),
        }
    }))
}

fn box_kg(p: &Params) -> Result<Option<f64>, ApiError> {
    p.get("box_kg")
        .map(|v| match v.parse::<f64>() {
            Ok(kg) if kg > 0.0 && kg <= 1000.0 => Ok(kg),
            _ => Err(ApiError::bad_request(format!(
                "`box_kg`: `{}` is not a weight from 0 to 1000 kg",
                truncate(v, 20)
            ))),
        })
        .transpose()
}

/// `GET /api/v1/lots/{lot_id}/label.svg`; `box_kg` prints the box's weight instead of the lot's.
#[utoipa::path(
    get,
    path = "/api/v1/lots/{lot_id}/label.svg",
    tag = "harvest",
    summary = "The box label, SVG",
    params(("lot_id" = String, Path, description = "lot id"), ("box_kg" = Option<f64>, Query, description = "print this weight instead of the lot's")),
    responses((status = 200, description = "image/svg+xml"), (status = 404, description = "not found"), (status = 409, description = "conflicts with what is stored; nothing changed"))
)]
pub async fn label_svg(
    State(s): State<AppState>,
    Path(lot_id): Path<String>,
    Query(raw): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let p = Params::new(raw, &["box_kg"])?;
    let box_kg = box_kg(&p)?;
    let (kept, season) = lot_and_season(&s, lot_id).await?;
    let data = label_of(&s, &kept, &season, box_kg)?;
    Ok((
        [(header::CONTENT_TYPE, "image/svg+xml; charset=utf-8")],
        label::svg(&data),
    )
        .into_response())
}

/// `GET /api/v1/lots/{lot_id}/label.png`: the same label at `dpi` (default 300).
/// Labels rasterised at once.
static RASTERISING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

#[utoipa::path(
    get,
    path = "/api/v1/lots/{lot_id}/label.png",
    tag = "harvest",
    summary = "The box label, PNG",
    params(("lot_id" = String, Path, description = "lot id"), ("box_kg" = Option<f64>, Query, description = "print this weight instead of the lot's"), ("dpi" = Option<u32>, Query, description = "72 to 600, default 300")),
    responses((status = 200, description = "image/png"), (status = 404, description = "not found"), (status = 409, description = "conflicts with what is stored; nothing changed"))
)]
pub async fn label_png(
    State(s): State<AppState>,
    Path(lot_id): Path<String>,
    Query(raw): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let p = Params::new(raw, &["box_kg", "dpi"])?;
    let box_kg = box_kg(&p)?;
    let dpi = match p.get("dpi") {
        None => 300,
        Some(v) => v
            .parse::<u32>()
            .ok()
            .filter(|d| (72..=600).contains(d))
            .ok_or_else(|| ApiError::bad_request("`dpi` must be a whole number from 72 to 600"))?,
    };
    let (kept, season) = lot_and_season(&s, lot_id).await?;
    let data = label_of(&s, &kept, &season, box_kg)?;
    // A label at 600 dpi is a 16 MB pixmap for 160 ms of a core: a few at a time keep memory
    // flat however many are asked for at once; the rest wait their turn.
    let _turn = RASTERISING
        .acquire()
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?;
    let png = tokio::task::spawn_blocking(move || label::png(&data, dpi))
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?
        .map_err(|e| ApiError::unavailable(e.to_string()))?;
    Ok(([(header::CONTENT_TYPE, "image/png")], png).into_response())
}

/// `GET /01/{gtin}/10/{lot_id}`: the public page of a lot with a GTIN.
#[utoipa::path(
    get,
    path = "/01/{gtin}/10/{lot_id}",
    tag = "public",
    summary = "The public lot page (GS1 Digital Link)",
    params(("gtin" = String, Path, description = "GTIN-14"), ("lot_id" = String, Path, description = "lot id"), ("lang" = Option<String>, Query, description = "zh or en")),
    responses((status = 200, description = "text/html"), (status = 404, description = "not found"))
)]
pub async fn public_gtin(
    State(s): State<AppState>,
    Path((gtin, lot_id)): Path<(String, String)>,
    Query(raw): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    public_page(s, lot_id, Some(gtin), raw, headers).await
}

/// `GET /lot/{lot_id}`: the public page of a lot without a GTIN.
#[utoipa::path(
    get,
    path = "/lot/{lot_id}",
    tag = "public",
    summary = "The public lot page, for a lot without a GTIN",
    params(("lot_id" = String, Path, description = "lot id"), ("lang" = Option<String>, Query, description = "zh or en")),
    responses((status = 200, description = "text/html"), (status = 404, description = "not found"))
)]
pub async fn public_lot(
    State(s): State<AppState>,
    Path(lot_id): Path<String>,
    Query(raw): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    public_page(s, lot_id, None, raw, headers).await
}

async fn public_page(
    s: AppState,
    lot_id: String,
    gtin: Option<String>,
    raw: HashMap<String, String>,
    headers: HeaderMap,
) -> Response {
    let accept = headers
        .get(header::ACCEPT_LANGUAGE)
        .and_then(|v| v.to_str().ok());
    let lang = Lang::choose(raw.get("lang").map(String::as_str), accept);
    let not_found = |lang: Lang| {
        let text = match lang {
            Lang::Zh => "没有这个批次。请核对包装上的二维码。",
            Lang::En => "No such lot. Please check the code on the box.",
        };
        (
            StatusCode::NOT_FOUND,
            Html(format!(
                "<!doctype html><html><head><meta charset=\"utf-8\"><title>404</title></head><body><p>{text}</p></body></html>"
            )),
        )
            .into_response()
    };
    let (kept, season) = match lot_and_season(&s, lot_id).await {
        Ok(found) => found,
        Err(e) if e.status == StatusCode::NOT_FOUND => return not_found(lang),
        Err(e) => return e.into_response(),
    };
    // The GTIN in the path must be the lot's: a mistyped one finds nothing.
    let gtin = gtin.map(|g| crate::harvest::lot::gtin14(&g).unwrap_or(g));
    if gtin != kept.lot.gtin {
        return not_found(lang);
    }
    let view = published(&s, &kept, &season);
    Html(public::page(&view, lang)).into_response()
}
