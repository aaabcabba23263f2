//! Query-string parameters, checked one by one so that each mistake gets its own message.

use std::collections::HashMap;
use std::str::FromStr;

use super::error::ApiError;
use crate::model::{Ident, Kind, TimestampMs, truncate};

/// The parameters of one request; unknown names are refused, not ignored.
pub struct Params(HashMap<String, String>);

impl Params {
    pub fn new(raw: HashMap<String, String>, allowed: &[&str]) -> Result<Self, ApiError> {
        if let Some(unknown) = raw.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(ApiError::bad_request(format!(
                "unknown parameter `{}`; this endpoint takes {}",
                truncate(unknown, 40),
                allowed.join(", ")
            )));
        }
        Ok(Self(raw))
    }

    pub fn ident(&self, name: &str) -> Result<Option<Ident>, ApiError> {
        self.0
            .get(name)
            .map(|v| Ident::parse(v).map_err(|e| ApiError::bad_request(format!("`{name}`: {e}"))))
            .transpose()
    }

    pub fn kind(&self) -> Result<Option<Kind>, ApiError> {
        self.0
            .get("kind")
            .map(|v| {
                Kind::from_str(v).map_err(|_| {
                    ApiError::bad_request(format!(
                        "`kind`: unknown kind `{}`; known kinds are {}",
                        truncate(v, 40),
                        Kind::ALL
                            .iter()
                            .map(|k| k.name())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                })
            })
            .transpose()
    }

    pub fn time(&self, name: &str) -> Result<Option<TimestampMs>, ApiError> {
        self.0
            .get(name)
            .map(|v| {
                TimestampMs::parse(v).ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "`{name}`: `{}` is neither RFC 3339 (2026-03-01T06:00:00Z) nor epoch milliseconds",
                        truncate(v, 40)
                    ))
                })
            })
            .transpose()
    }

    pub fn limit(&self, default: usize, max: usize) -> Result<usize, ApiError> {
        match self.0.get("limit") {
            None => Ok(default),
            Some(v) => match v.parse::<usize>() {
                Ok(n) if (1..=max).contains(&n) => Ok(n),
                _ => Err(ApiError::bad_request(format!(
                    "`limit`: `{}` is not a whole number from 1 to {max}",
                    truncate(v, 20)
                ))),
            },
        }
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// `format=json` (the default) or `format=csv`.
    pub fn csv(&self) -> Result<bool, ApiError> {
        match self.get("format") {
            None | Some("json") => Ok(false),
            Some("csv") => Ok(true),
            Some(other) => Err(ApiError::bad_request(format!(
                "`format`: `{}` is not json or csv",
                truncate(other, 20)
            ))),
        }
    }
}
