//! `[http]`: where the API listens, and the tokens that open it. A token is given once to a
//! person or a device; the config keeps only its SHA-256, so a leaked config opens nothing.

use std::net::SocketAddr;

use ring::digest::{SHA256, digest};
use serde::{Deserialize, Serialize};

/// What a token may do (DESIGN.md, "Security"). `operator` and `agronomist` each include what
/// a `viewer` may; `admin` may do everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Alerts, lots, the latest readings, the dashboard.
    Viewer,
    /// And acknowledge and resolve alerts, enter lots and irrigation, assign devices, the
    /// quarantine and its replay, labels and listings.
    Operator,
    /// And every query and export: readings, rollups, indices, the season report.
    Agronomist,
    /// Everything, `/metrics` included.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Agronomist => "agronomist",
            Role::Admin => "admin",
        }
    }

    /// Whether a token of this role may do what `needed` may.
    pub fn may(self, needed: Role) -> bool {
        self == needed || self == Role::Admin || needed == Role::Viewer
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    /// Who or what holds it ("packing-shed tablet"): recorded with everything it does.
    pub name: String,
    pub role: Role,
    /// `sha256:` and 64 hex digits, as `orchardd token new` prints it.
    pub hash: String,
}

impl TokenEntry {
    /// The 32 bytes of `hash`, or what is wrong with it.
    pub fn digest(&self) -> Result<[u8; 32], String> {
        let hex = self.hash.strip_prefix("sha256:").ok_or_else(|| {
            "must start with `sha256:`, as `orchardd token new` prints it".to_owned()
        })?;
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("must be `sha256:` and 64 hex digits".into());
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("checked hex");
        }
        Ok(out)
    }
}

/// Whether `name` can name a token's holder in the record of who did what.
pub fn check_token_name(name: &str) -> Result<(), &'static str> {
    if name.trim().is_empty() || name.len() > 100 {
        return Err("must name who or what holds the token, in at most 100 bytes");
    }
    Ok(())
}

/// The stored form of a token.
pub fn token_hash(token: &str) -> String {
    let d = digest(&SHA256, token.as_bytes());
    let hex: String = d.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSettings {
    /// With no API tokens configured, only a loopback address is accepted.
    pub listen: SocketAddr,
    /// API tokens (`[[http.tokens]]`); none: the API is open, on loopback only.
    pub tokens: Vec<TokenEntry>,
    /// Largest request body, bytes; a larger one is answered 413.
    pub max_body_bytes: usize,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            tokens: Vec::new(),
            max_body_bytes: 1024 * 1024,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_include_a_viewers_rights_and_admin_includes_all() {
        use Role::*;
        for r in [Viewer, Operator, Agronomist, Admin] {
            assert!(r.may(Viewer));
            assert!(Admin.may(r));
        }
        assert!(!Viewer.may(Operator));
        assert!(!Operator.may(Agronomist));
        assert!(!Agronomist.may(Operator));
        assert!(!Operator.may(Admin));
    }

    #[test]
    fn a_hash_round_trips_and_a_bad_one_says_why() {
        let e = TokenEntry {
            name: "t".into(),
            role: Role::Viewer,
            hash: token_hash("od_secret"),
        };
        assert_eq!(
            e.digest().unwrap().as_ref(),
            digest(&SHA256, b"od_secret").as_ref()
        );
        let bad = TokenEntry {
            hash: "md5:abc".into(),
            ..e
        };
        assert!(bad.digest().unwrap_err().contains("sha256:"));
    }
}
