//! The InfluxQL query backend: with `query.backend = "influx"`, `GET /api/v1/readings` and
//! `/latest` answer from InfluxDB's `/query`, row for row what the embedded store would answer.

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::Value;

use crate::config::{InfluxApi, InfluxSettings};
use crate::model::{Flags, Ident, Kind, TimestampMs};
use crate::store::readings::{Agg, Filter, Row};

/// Largest time InfluxDB stores (2262-04-11), in ms. An explicit upper bound keeps
/// `GROUP BY time()` from stopping at `now()` as it does by default.
const MAX_TIME_MS: i64 = 9_223_372_036_854;

#[derive(Debug, thiserror::Error)]
pub enum InfluxError {
    #[error("InfluxDB is unreachable: {0}")]
    Network(String),
    #[error("InfluxDB answered HTTP {status}: {body}")]
    Status { status: u16, body: String },
    #[error("InfluxDB could not run the query: {0}")]
    Query(String),
    #[error("InfluxDB answered something orchardd cannot read: {0}")]
    Malformed(String),
    /// A filter only the embedded store can answer; the API answers 400 with this message.
    #[error("{0}")]
    Unsupported(&'static str),
    #[error("influx settings: {0}")]
    Settings(String),
}

enum Auth {
    None,
    Basic { user: String, password: String },
    Token(String),
}

/// An InfluxQL client for orchardd's schema, v1 (database + retention policy) or v2 (DBRP).
pub struct InfluxQuery {
    http: reqwest::Client,
    url: String,
    params: Vec<(&'static str, String)>,
    auth: Auth,
}

impl InfluxQuery {
    pub fn new(s: &InfluxSettings) -> Result<Self, InfluxError> {
        let http = reqwest::Client::builder()
            .timeout(s.timeout)
            .build()
            .map_err(|e| InfluxError::Settings(e.to_string()))?;
        let mut params = vec![("epoch", "ms".to_owned()), ("chunked", "true".to_owned())];
        let auth = match s.api {
            InfluxApi::V1 => {
                params.push(("db", s.database.clone()));
                if !s.retention_policy.is_empty() {
                    params.push(("rp", s.retention_policy.clone()));
                }
                match &s.username {
                    Some(user) => Auth::Basic {
                        user: user.clone(),
                        password: s.password.clone().unwrap_or_default(),
                    },
                    None => Auth::None,
                }
            }
            InfluxApi::V2 => {
                let db = s.query_database.as_ref().unwrap_or(&s.bucket);
                params.push(("db", db.clone()));
                s.token.clone().map_or(Auth::None, Auth::Token)
            }
        };
        Ok(Self {
            http,
            url: format!("{}/query", s.url.trim_end_matches('/')),
            params,
            auth,
        })
    }

    /// The rows `store::readings::query` would give for `f`, in the same order.
    pub async fn readings(&self, f: &Filter) -> Result<Vec<Row>, InfluxError> {
        if f.flagged.is_some() {
            return Err(InfluxError::Unsupported(
                "`flagged` needs query.backend = \"embedded\"",
            ));
        }
        if f.limit == 0 {
            return Ok(Vec::new()); // InfluxQL reads `LIMIT 0` as no limit at all
        }
        let mut rows = rows(self.run(&readings_query(f)).await?)?;
        rows.sort_by(|a, b| (a.ts, series_key(a)).cmp(&(b.ts, series_key(b))));
        rows.truncate(f.limit);
        Ok(rows)
    }

    /// The newest reading of every series, as `store::readings::latest` gives it.
    pub async fn latest(
        &self,
        orchard: &Option<Ident>,
        block: &Option<Ident>,
    ) -> Result<Vec<Row>, InfluxError> {
        let mut rows = rows(self.run(&latest_query(orchard, block)).await?)?;
        rows.sort_by(|a, b| series_key(a).cmp(&series_key(b)));
        Ok(rows)
    }

    /// Points in one measurement, or in all kinds' measurements when `None`.
    pub async fn count(&self, measurement: Option<&str>) -> Result<u64, InfluxError> {
        let from = measurement.map_or_else(|| from_clause(None), ident);
        let series = self
            .run(&format!("SELECT count(\"value\") FROM {from}"))
            .await?;
        let mut total = 0;
        for s in &series {
            for v in &s.values {
                total += v.get(1).and_then(Value::as_u64).unwrap_or(0);
            }
        }
        Ok(total)
    }

    async fn run(&self, q: &str) -> Result<Vec<Series>, InfluxError> {
        tracing::debug!(query = q, "influxql");
        let mut request = self
            .http
            .get(&self.url)
            .query(&self.params)
            .query(&[("q", q)]);
        request = match &self.auth {
            Auth::None => request,
            Auth::Basic { user, password } => request.basic_auth(user, Some(password)),
            Auth::Token(t) => request.header(reqwest::header::AUTHORIZATION, format!("Token {t}")),
        };
        let response = request
            .send()
            .await
            .map_err(|e| InfluxError::Network(e.to_string()))?;
        let status = response.status().as_u16();
        let body = response
            .text()
            .await
            .map_err(|e| InfluxError::Network(e.to_string()))?;
        parse_answer(status, &body)
    }
}

fn series_key(r: &Row) -> (&str, &str, &str, &str, Option<i64>) {
    (&r.orchard, &r.block, &r.device, &r.kind, r.depth_cm)
}

fn readings_query(f: &Filter) -> String {
    let select = match f.every {
        None => "\"value\"".to_owned(),
        Some((_, agg)) => format!("{}(\"value\")", agg_function(agg)),
    };
    let mut conditions = tag_conditions(&f.orchard, &f.block, &f.device);
    if let Some(from) = f.from {
        conditions.push(format!("time >= {}ms", from.0));
    }
    conditions.push(format!("time < {}ms", f.to.map_or(MAX_TIME_MS, |t| t.0)));
    let group = match f.every {
        None => "GROUP BY *".to_owned(),
        // Windows start at local midnight, as the embedded store's do.
        Some((every, _)) => format!(
            "GROUP BY time({every}ms, {}ms), * fill(none)",
            (-f.utc_offset_ms).rem_euclid(every)
        ),
    };
    // Each series' first `limit` points (or windows) are enough for the first `limit` overall.
    format!(
        "SELECT {select} FROM {} WHERE {} {group} LIMIT {}",
        from_clause(f.kind),
        conditions.join(" AND "),
        f.limit
    )
}

fn latest_query(orchard: &Option<Ident>, block: &Option<Ident>) -> String {
    let conditions = tag_conditions(orchard, block, &None);
    let filter = if conditions.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conditions.join(" AND "))
    };
    format!(
        "SELECT last(\"value\") FROM {}{filter} GROUP BY *",
        from_clause(None)
    )
}

fn agg_function(agg: Agg) -> &'static str {
    match agg {
        Agg::Mean => "mean",
        Agg::Min => "min",
        Agg::Max => "max",
        Agg::Sum => "sum",
        Agg::Count => "count",
        Agg::Last => "last",
    }
}

/// One kind's measurement, or a regex matching exactly the kinds' measurements (not rollups).
fn from_clause(kind: Option<Kind>) -> String {
    match kind {
        Some(k) => ident(k.name()),
        None => {
            let names: Vec<&str> = Kind::ALL.iter().map(|k| k.name()).collect();
            debug_assert!(
                names
                    .iter()
                    .all(|n| n.bytes().all(|b| b == b'_' || b.is_ascii_lowercase()))
            );
            format!("/^({})$/", names.join("|"))
        }
    }
}

fn tag_conditions(
    orchard: &Option<Ident>,
    block: &Option<Ident>,
    device: &Option<Ident>,
) -> Vec<String> {
    [("orchard", orchard), ("block", block), ("device", device)]
        .into_iter()
        .filter_map(|(tag, v)| {
            v.as_ref()
                .map(|v| format!("{} = {}", ident(tag), literal(v.as_str())))
        })
        .collect()
}

/// A double-quoted InfluxQL identifier.
fn ident(s: &str) -> String {
    quote(s, '"')
}

/// A single-quoted InfluxQL string literal.
fn literal(s: &str) -> String {
    quote(s, '\'')
}

/// InfluxQL's scanner knows the escapes `\\`, `\'`, `\"` and `\n`; a raw newline ends a
/// string with an error, so it is escaped too.
fn quote(s: &str, q: char) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push(q);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if c == q => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out.push(q);
    out
}

#[derive(Deserialize)]
struct Answer {
    #[serde(default)]
    results: Vec<StatementResult>,
    error: Option<String>,
}

#[derive(Deserialize)]
struct StatementResult {
    #[serde(default)]
    series: Vec<Series>,
    error: Option<String>,
}

#[derive(Deserialize)]
struct Series {
    #[serde(default)]
    name: String,
    #[serde(default)]
    tags: HashMap<String, String>,
    #[serde(default)]
    values: Vec<Vec<Value>>,
}

/// Reads one JSON answer, or the stream of them that `chunked=true` gives.
fn parse_answer(status: u16, body: &str) -> Result<Vec<Series>, InfluxError> {
    let ok = (200..300).contains(&status);
    let mut series = Vec::new();
    for answer in serde_json::Deserializer::from_str(body).into_iter::<Answer>() {
        let answer = match answer {
            Ok(a) => a,
            Err(_) if !ok => break,
            Err(e) => return Err(InfluxError::Malformed(format!("{e}: {}", short(body)))),
        };
        let errors = answer
            .error
            .iter()
            .chain(answer.results.iter().flat_map(|r| &r.error));
        if let Some(message) = errors.into_iter().next() {
            return Err(if ok || status == 400 {
                InfluxError::Query(message.clone())
            } else {
                InfluxError::Status {
                    status,
                    body: message.clone(),
                }
            });
        }
        series.extend(answer.results.into_iter().flat_map(|r| r.series));
    }
    if !ok {
        return Err(InfluxError::Status {
            status,
            body: short(body),
        });
    }
    Ok(series)
}

fn short(s: &str) -> String {
    crate::model::truncate(s.trim(), 500)
}

/// Series of `[time, value]` pairs to rows; null values (fill) are skipped.
fn rows(series: Vec<Series>) -> Result<Vec<Row>, InfluxError> {
    let mut out = Vec::new();
    for s in series {
        if s.name.parse::<Kind>().is_err() {
            continue;
        }
        let tag = |k: &str| s.tags.get(k).cloned().unwrap_or_default();
        let depth_cm = match s.tags.get("depth_cm").map(String::as_str) {
            None | Some("") => None,
            Some(d) => Some(d.parse::<i64>().map_err(|_| {
                InfluxError::Malformed(format!("{}: depth_cm `{}` is not a number", s.name, d))
            })?),
        };
        for point in &s.values {
            let (Some(ts), Some(v)) = (point.first(), point.get(1)) else {
                return Err(InfluxError::Malformed(format!("{}: short row", s.name)));
            };
            if v.is_null() {
                continue;
            }
            let (Some(ts), Some(value)) = (ts.as_i64(), v.as_f64()) else {
                return Err(InfluxError::Malformed(format!(
                    "{}: row [{ts}, {v}] is not [epoch ms, number]",
                    s.name
                )));
            };
            out.push(Row {
                orchard: tag("orchard"),
                block: tag("block"),
                device: tag("device"),
                kind: s.name.clone(),
                depth_cm,
                ts: TimestampMs(ts),
                value,
                flags: Flags::default(),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads a quoted token the way InfluxQL's scanner does; returns the text and the rest.
    fn scan_quoted(s: &str) -> Option<(String, &str)> {
        let q = s.chars().next()?;
        let mut out = String::new();
        let mut chars = s.char_indices().skip(1);
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next()?.1 {
                    'n' => out.push('\n'),
                    e @ ('\\' | '\'' | '"') => out.push(e),
                    _ => return None,
                },
                '\n' => return None,
                c if c == q => return Some((out, &s[i + 1..])),
                c => out.push(c),
            }
        }
        None
    }

    #[test]
    fn a_hostile_value_stays_inside_its_quotes() {
        let hostile = [
            "x' OR 1=1 --",
            "x\\' OR 1=1 --",
            "a\\",
            "\"; DROP DATABASE orchardd; \"",
            "line\nbreak'\"\\\\'",
            "",
        ];
        for v in hostile {
            for quoted in [literal(v), ident(v)] {
                let (text, rest) = scan_quoted(&quoted).expect(&quoted);
                assert_eq!(text, v, "{quoted}");
                assert_eq!(rest, "", "{quoted} ends early");
            }
        }
    }

    #[test]
    fn queries_name_every_filter() {
        let f = Filter {
            orchard: Some(Ident::parse("fengjie").unwrap()),
            kind: Some(Kind::SoilMoisture),
            from: Some(TimestampMs(1000)),
            to: Some(TimestampMs(5000)),
            every: Some((3_600_000, Agg::Last)),
            limit: 10,
            ..Filter::default()
        };
        assert_eq!(
            readings_query(&f),
            "SELECT last(\"value\") FROM \"soil_moisture\" WHERE \"orchard\" = 'fengjie' \
             AND time >= 1000ms AND time < 5000ms GROUP BY time(3600000ms, 0ms), * fill(none) LIMIT 10"
        );
        // Without `to`, GROUP BY time() would stop at now(); the embedded store does not.
        let open = readings_query(&Filter {
            every: Some((60_000, Agg::Mean)),
            limit: 1,
            ..Filter::default()
        });
        assert!(
            open.contains("WHERE time < 9223372036854ms GROUP BY"),
            "{open}"
        );
        let q = latest_query(&None, &Some(Ident::parse("B3").unwrap()));
        assert!(
            q.starts_with("SELECT last(\"value\") FROM /^(air_temperature|"),
            "{q}"
        );
        assert!(q.ends_with(")$/ WHERE \"block\" = 'B3' GROUP BY *"), "{q}");
    }

    #[test]
    fn chunks_become_rows_and_errors_keep_the_servers_message() {
        let body = r#"{"results":[{"statement_id":0,"series":[{"name":"soil_moisture","tags":{"block":"B1","depth_cm":"","device":"p1","orchard":"a"},"columns":["time","value"],"values":[[1000,1.5],[2000,null]]}],"partial":true}]}
{"results":[{"statement_id":0,"series":[{"name":"soil_moisture","tags":{"block":"B1","depth_cm":"30","device":"p1","orchard":"a"},"columns":["time","value"],"values":[[3000,2]]},{"name":"soil_moisture_1h","columns":["time","value"],"values":[[0,9]]}]}]}"#;
        let rows = rows(parse_answer(200, body).unwrap()).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(
            (rows[0].depth_cm, rows[0].ts, rows[0].value),
            (None, TimestampMs(1000), 1.5)
        );
        assert_eq!((rows[1].depth_cm, rows[1].value), (Some(30), 2.0));

        let e = parse_answer(
            200,
            r#"{"results":[{"statement_id":0,"error":"database not found: x"}]}"#,
        );
        assert!(matches!(e, Err(InfluxError::Query(m)) if m == "database not found: x"));
        let e = parse_answer(400, r#"{"error":"error parsing query: found bad"}"#);
        assert!(matches!(e, Err(InfluxError::Query(m)) if m.contains("found bad")));
        let e = parse_answer(401, r#"{"error":"authorization failed"}"#);
        assert!(matches!(e, Err(InfluxError::Status { status: 401, .. })));
        let e = parse_answer(502, "<html>bad gateway</html>");
        assert!(
            matches!(e, Err(InfluxError::Status { status: 502, body }) if body.contains("bad gateway"))
        );
    }

    #[test]
    fn flagged_is_refused_before_any_request() {
        let q = InfluxQuery::new(&InfluxSettings::default()).unwrap();
        let f = Filter {
            flagged: Some(Flags::STUCK),
            limit: 1,
            ..Filter::default()
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let e = rt.block_on(q.readings(&f)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "`flagged` needs query.backend = \"embedded\""
        );
        assert!(matches!(e, InfluxError::Unsupported(_)));
    }
}
