//! Writing line protocol to InfluxDB: v2 through the `influxdb2` crate, v1 `/write` directly.
//!
//! Both answer the forwarder in one vocabulary: done, try again later (network, 5xx, 429),
//! the data is bad (set it aside), too large (split it), or the settings are wrong.

use std::io::Write as _;
use std::time::Duration;

use bytes::Bytes;

use influxdb2::api::write::TimestampPrecision;
use influxdb2::models::WriteDataPoint;

use crate::config::{InfluxApi, InfluxSettings};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum WriteError {
    /// Worth retrying as it is: the server or the network is the problem.
    #[error("InfluxDB is unavailable: {message}")]
    Unavailable {
        message: String,
        retry_after: Option<Duration>,
    },
    /// InfluxDB says the data itself is bad; sending it again cannot help.
    #[error("InfluxDB rejected the data ({status}): {message}")]
    Rejected { status: u16, message: String },
    /// The request body was over the server's limit.
    #[error("InfluxDB refused a request this large ({message})")]
    TooLarge { message: String },
    /// Wrong token, database or bucket: retried, loudly, until an operator fixes it.
    #[error("InfluxDB refused orchardd ({status}): {message}; check the influx.* settings")]
    Settings { status: u16, message: String },
}

impl WriteError {
    /// Sorts an HTTP answer other than 204 into the forwarder's vocabulary.
    fn from_status(status: u16, message: String, retry_after: Option<Duration>) -> Self {
        match status {
            400 | 422 => WriteError::Rejected { status, message },
            413 => WriteError::TooLarge { message },
            401 | 403 | 404 => WriteError::Settings { status, message },
            _ => WriteError::Unavailable {
                message: format!("HTTP {status}: {message}"),
                retry_after,
            },
        }
    }
}

/// A write client for the configured API.
pub enum InfluxWriter {
    V1 {
        http: reqwest::Client,
        write_url: String,
        query: Vec<(&'static str, String)>,
        gzip: bool,
    },
    V2 {
        client: influxdb2::Client,
        bucket: String,
    },
}

impl InfluxWriter {
    pub fn new(s: &InfluxSettings) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .timeout(s.timeout)
            .build()
            .map_err(|e| format!("influx: {e}"))?;
        let url = s.url.trim_end_matches('/');
        Ok(match s.api {
            InfluxApi::V1 => {
                let mut query = vec![("db", s.database.clone()), ("precision", "ms".into())];
                if !s.retention_policy.is_empty() {
                    query.push(("rp", s.retention_policy.clone()));
                }
                if let Some(u) = &s.username {
                    query.push(("u", u.clone()));
                    query.push(("p", s.password.clone().unwrap_or_default()));
                }
                InfluxWriter::V1 {
                    http,
                    write_url: format!("{url}/write"),
                    query,
                    gzip: s.gzip,
                }
            }
            InfluxApi::V2 => {
                let builder = reqwest::Client::builder().timeout(s.timeout);
                let client = influxdb2::ClientBuilder::with_builder(
                    builder,
                    url,
                    &s.org,
                    s.token.clone().unwrap_or_default(),
                )
                .gzip(s.gzip)
                .build()
                .map_err(|e| format!("influx: {e}"))?;
                InfluxWriter::V2 {
                    client,
                    bucket: s.bucket.clone(),
                }
            }
        })
    }

    /// Writes newline-terminated line protocol with millisecond timestamps.
    pub async fn write(&self, body: Bytes) -> Result<(), WriteError> {
        match self {
            InfluxWriter::V1 {
                http,
                write_url,
                query,
                gzip,
            } => write_v1(http, write_url, query, *gzip, body).await,
            InfluxWriter::V2 { client, bucket } => {
                let lines = futures_util::stream::iter([Lines(body)]);
                client
                    .write_with_precision(bucket, lines, TimestampPrecision::Milliseconds)
                    .await
                    .map_err(|e| match e {
                        influxdb2::RequestError::Http { status, text } => {
                            // influxdb2 keeps no headers: a 429's Retry-After falls back to back-off.
                            WriteError::from_status(status.as_u16(), text, None)
                        }
                        other => WriteError::Unavailable {
                            message: other.to_string(),
                            retry_after: None,
                        },
                    })
            }
        }
    }
}

/// Already-escaped lines, handed to `influxdb2` as one "point" so its gzip path applies.
struct Lines(Bytes);

impl WriteDataPoint for Lines {
    fn write_data_point_to<W: std::io::Write>(&self, mut w: W) -> std::io::Result<()> {
        w.write_all(&self.0)
    }
}

async fn write_v1(
    http: &reqwest::Client,
    url: &str,
    query: &[(&'static str, String)],
    gzip: bool,
    body: Bytes,
) -> Result<(), WriteError> {
    let mut request = http.post(url).query(query);
    request = if gzip {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let compressed = encoder
            .write_all(&body)
            .and_then(|_| encoder.finish())
            .map_err(|e| WriteError::Unavailable {
                message: format!("gzip: {e}"),
                retry_after: None,
            })?;
        request
            .header(reqwest::header::CONTENT_ENCODING, "gzip")
            .body(compressed)
    } else {
        request.body(body)
    };
    let response = request.send().await.map_err(|e| WriteError::Unavailable {
        message: e.to_string(),
        retry_after: None,
    })?;
    let status = response.status().as_u16();
    if status == 204 || status == 200 {
        return Ok(());
    }
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let message = response.text().await.unwrap_or_default();
    Err(WriteError::from_status(status, message, retry_after))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_sort_into_what_the_forwarder_does() {
        let e = |s| WriteError::from_status(s, "x".into(), None);
        assert!(matches!(e(400), WriteError::Rejected { .. }));
        assert!(matches!(e(422), WriteError::Rejected { .. }));
        assert!(matches!(e(413), WriteError::TooLarge { .. }));
        assert!(matches!(e(401), WriteError::Settings { .. }));
        assert!(matches!(e(404), WriteError::Settings { .. }));
        for s in [429, 500, 502, 503] {
            assert!(matches!(e(s), WriteError::Unavailable { .. }), "{s}");
        }
    }
}
