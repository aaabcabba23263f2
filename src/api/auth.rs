//! The API's doors: which role each route needs, the bearer token that proves it, and the
//! headers and error shape every response carries. With no tokens configured the API is
//! open (and the config check keeps it on loopback); the public lot pages never need one.

use std::sync::Arc;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ring::digest::{SHA256, digest};
use subtle::ConstantTimeEq;

use super::ApiError;
use crate::config::{Role, TokenEntry};

/// Who a request acts for: recorded with every acknowledgement, resolve, device assignment,
/// irrigation entry and lot it makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// The token's name, or `api` when no tokens are configured.
    pub name: String,
    pub role: Role,
    /// False when the API is open (no tokens configured).
    pub authenticated: bool,
}

impl Actor {
    /// What the record says did it: the token's name, with the person a body names.
    pub fn record(&self, person: Option<&str>) -> String {
        match person.map(str::trim).filter(|p| !p.is_empty()) {
            Some(p) if self.authenticated => format!("{p} ({})", self.name),
            Some(p) => p.to_owned(),
            None => self.name.clone(),
        }
    }
}

/// What a route asks of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Health, metrics, the OpenAPI document, the dashboard's assets and the buyers' pages.
    Public,
    Needs(Role),
}

/// The access of each route (by its matched path), the one table of DESIGN.md's roles.
/// A route missing here needs `admin`, so a new route is closed until it is listed.
pub fn access(method: &Method, path: &str) -> Access {
    use Access::{Needs, Public};
    use Role::*;
    let write = method != Method::GET && method != Method::HEAD;
    match path {
        "/healthz" | "/readyz" | "/metrics" | "/api/v1/openapi.json" => Public,
        "/01/{gtin}/10/{lot_id}" | "/lot/{lot_id}" => Public,
        "/" | "/assets/{*file}" => Public,
        "/api/v1/latest" | "/api/v1/alerts" | "/api/v1/alerts/stream" | "/api/v1/alerts/{id}" => {
            Needs(Viewer)
        }
        "/api/v1/alerts/{id}/ack" | "/api/v1/alerts/{id}/resolve" => Needs(Operator),
        "/api/v1/readings" | "/api/v1/rollups" | "/api/v1/indices" | "/api/v1/reports/season" => {
            Needs(Agronomist)
        }
        "/api/v1/irrigation" if write => Needs(Operator),
        "/api/v1/irrigation" => Needs(Agronomist),
        "/api/v1/quarantine" | "/api/v1/quarantine/replay" => Needs(Operator),
        "/api/v1/devices" | "/api/v1/devices/{id}" => Needs(Operator),
        "/api/v1/lots" | "/api/v1/lots/{lot_id}" if write => Needs(Operator),
        "/api/v1/lots" | "/api/v1/lots/{lot_id}" => Needs(Viewer),
        "/api/v1/lots/{lot_id}/events"
        | "/api/v1/lots/{lot_id}/listing"
        | "/api/v1/lots/{lot_id}/label.svg"
        | "/api/v1/lots/{lot_id}/label.png" => Needs(Operator),
        _ => Needs(Admin),
    }
}

/// The configured tokens, by the SHA-256 of each.
pub struct Tokens {
    entries: Vec<(String, Role, [u8; 32])>,
}

impl Tokens {
    /// From checked config entries (a bad hash was refused at start-up).
    pub fn new(entries: &[TokenEntry]) -> Self {
        Self {
            entries: entries
                .iter()
                .filter_map(|e| Some((e.name.clone(), e.role, e.digest().ok()?)))
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The token presented, if it is one of ours. Every entry is compared, in constant time,
    /// so the time taken says nothing of how near a guess came.
    fn find(&self, presented: &str) -> Option<(&str, Role)> {
        let d = digest(&SHA256, presented.as_bytes());
        let mut found = None;
        for (name, role, hash) in &self.entries {
            if bool::from(d.as_ref().ct_eq(hash)) {
                found = Some((name.as_str(), *role));
            }
        }
        found
    }
}

fn unauthorized(message: &str) -> Response {
    let mut r = ApiError {
        status: StatusCode::UNAUTHORIZED,
        code: "unauthorized",
        message: message.to_owned(),
    }
    .into_response();
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"orchardd\""),
    );
    r
}

/// Lets a request through to its route only with a token of a role that may use it.
pub async fn authorize(
    State(tokens): State<Arc<crate::reload::Live<Tokens>>>,
    matched: Option<MatchedPath>,
    mut req: Request,
    next: Next,
) -> Response {
    let tokens = tokens.get();
    let path = matched.as_ref().map_or("", |m| m.as_str());
    let needed = access(req.method(), path);
    if tokens.is_empty() {
        req.extensions_mut().insert(Actor {
            name: "api".into(),
            role: Role::Admin,
            authenticated: false,
        });
        return next.run(req).await;
    }
    let Access::Needs(role) = needed else {
        return next.run(req).await;
    };
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(presented) = presented else {
        return unauthorized(
            "this needs a token: send `Authorization: Bearer <token>` (orchardd token new makes one)",
        );
    };
    let Some((name, has)) = tokens.find(presented) else {
        return unauthorized("the token is not one of this orchardd's tokens");
    };
    if !has.may(role) {
        return ApiError {
            status: StatusCode::FORBIDDEN,
            code: "forbidden",
            message: format!(
                "the token `{name}` is a {}'s; {} {path} needs {}",
                has.as_str(),
                req.method(),
                role.as_str()
            ),
        }
        .into_response();
    }
    req.extensions_mut().insert(Actor {
        name: name.to_owned(),
        role: has,
        authenticated: true,
    });
    next.run(req).await
}

/// The Content-Security-Policy of every response: the dashboard's own scripts and styles only,
/// no framing, no plugins.
pub const CSP: &str = "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; \
                       script-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; \
                       form-action 'self'; frame-ancestors 'none'";

/// Security headers on every response, and the API's JSON error shape on the errors axum
/// answers itself (a body too large, a method not allowed, a malformed query), which come as
/// plain text or empty.
pub async fn harden(req: Request, next: Next) -> Response {
    let mut response = next.run(req).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if (status.is_client_error() || status.is_server_error()) && !is_json {
        let (parts, body) = response.into_parts();
        let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
        let text = String::from_utf8_lossy(&text).trim().to_owned();
        let (code, message) = match status {
            StatusCode::PAYLOAD_TOO_LARGE => (
                "payload_too_large",
                "the request body is larger than http.max_body_bytes".to_owned(),
            ),
            StatusCode::METHOD_NOT_ALLOWED => (
                "method_not_allowed",
                "this endpoint does not take that method; see /api/v1/openapi.json".to_owned(),
            ),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => ("unsupported_media_type", text),
            _ if status.is_client_error() => ("bad_request", text),
            _ => ("internal", text),
        };
        let mut fixed = ApiError {
            status,
            code,
            message,
        }
        .into_response();
        for (name, value) in parts.headers.iter() {
            if name == header::ALLOW || name == header::WWW_AUTHENTICATE {
                fixed.headers_mut().insert(name.clone(), value.clone());
            }
        }
        response = fixed;
    }
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::token_hash;

    fn tokens() -> Tokens {
        Tokens::new(&[
            TokenEntry {
                name: "shed".into(),
                role: Role::Operator,
                hash: token_hash("od_one"),
            },
            TokenEntry {
                name: "lab".into(),
                role: Role::Agronomist,
                hash: token_hash("od_two"),
            },
        ])
    }

    #[test]
    fn a_token_is_found_by_its_hash_and_nothing_else_is() {
        let t = tokens();
        assert_eq!(t.find("od_one"), Some(("shed", Role::Operator)));
        assert_eq!(t.find("od_two"), Some(("lab", Role::Agronomist)));
        assert_eq!(t.find("od_on"), None);
        assert_eq!(t.find(""), None);
    }

    #[test]
    fn an_unlisted_route_needs_admin() {
        assert_eq!(
            access(&Method::GET, "/api/v1/new-thing"),
            Access::Needs(Role::Admin)
        );
        assert_eq!(
            access(&Method::POST, "/api/v1/irrigation"),
            Access::Needs(Role::Operator)
        );
        assert_eq!(
            access(&Method::GET, "/api/v1/irrigation"),
            Access::Needs(Role::Agronomist)
        );
    }

    #[test]
    fn the_record_names_the_person_and_the_token() {
        let a = Actor {
            name: "shed".into(),
            role: Role::Operator,
            authenticated: true,
        };
        assert_eq!(a.record(Some("Li")), "Li (shed)");
        assert_eq!(a.record(None), "shed");
        let open = Actor {
            name: "api".into(),
            role: Role::Admin,
            authenticated: false,
        };
        assert_eq!(open.record(Some("Li")), "Li");
    }
}
