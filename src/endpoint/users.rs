//! Who may connect to the endpoint, and where each user may publish and subscribe.
//!
//! With no users configured the endpoint takes anonymous clients, and orchardd refuses to
//! listen anywhere but on a loopback address. With users, every client logs in.

use std::sync::Arc;

use super::topic;
use crate::config::BrokerUser;
use crate::metrics::Metrics;
use crate::passwd::PasswordHash;

/// One MQTT user, checked at start-up.
#[derive(Debug)]
pub struct User {
    pub name: String,
    hash: PasswordHash,
    publish: Vec<String>,
    subscribe: Vec<String>,
}

impl User {
    pub fn may_publish(&self, topic: &str) -> bool {
        self.publish.iter().any(|p| topic::matches(p, topic))
    }

    pub fn may_subscribe(&self, filter: &str) -> bool {
        self.subscribe.iter().any(|p| topic::covers(p, filter))
    }
}

/// The outcome of a CONNECT's credentials.
pub enum Login {
    /// `None`: an anonymous client, allowed because no users are configured.
    Accepted(Option<Arc<User>>),
    BadCredentials,
    NotAuthorized,
}

#[derive(Debug, Default, Clone)]
pub struct Users(Arc<[Arc<User>]>);

impl Users {
    /// Parses the configured users; the error names the user and what is wrong.
    pub fn from_settings(users: &[BrokerUser]) -> Result<Self, String> {
        let mut out = Vec::new();
        for (i, u) in users.iter().enumerate() {
            let hash = PasswordHash::parse(&u.password_hash)
                .map_err(|e| format!("broker.users[{i}].password_hash (user `{}`): {e}", u.name))?;
            for (key, patterns) in [("publish", &u.publish), ("subscribe", &u.subscribe)] {
                for p in patterns.iter() {
                    if p.is_empty()
                        || p.split('/').enumerate().any(|(n, level)| {
                            (level.contains('#') && (level != "#" || n + 1 != p.split('/').count()))
                                || (level.contains('+') && level != "+")
                        })
                    {
                        return Err(format!(
                            "broker.users[{i}].{key} (user `{}`): `{p}` is not an MQTT topic filter",
                            u.name
                        ));
                    }
                }
            }
            out.push(Arc::new(User {
                name: u.name.clone(),
                hash,
                publish: u.publish.clone(),
                subscribe: u.subscribe.clone(),
            }));
        }
        Ok(Self(out.into()))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Checks a CONNECT's user name and password, counting refusals. A hash costs a few
    /// milliseconds of CPU, so it is checked on the blocking pool, not in the network loop.
    pub async fn login(
        &self,
        username: Option<&str>,
        password: Option<&[u8]>,
        metrics: &Metrics,
    ) -> Login {
        if self.0.is_empty() {
            return Login::Accepted(None);
        }
        let users = self.clone();
        let name = username.map(str::to_owned);
        let password = password.map(<[u8]>::to_vec);
        let outcome =
            ntex_rt::spawn_blocking(move || users.check(name.as_deref(), password.as_deref()))
                .await
                .unwrap_or(Login::NotAuthorized);
        if !matches!(outcome, Login::Accepted(_)) {
            metrics.mqtt_refused_logins.inc();
            tracing::warn!(
                user = username.unwrap_or(""),
                "mqtt endpoint: login refused"
            );
        }
        outcome
    }

    fn check(&self, username: Option<&str>, password: Option<&[u8]>) -> Login {
        match username {
            None => Login::NotAuthorized,
            Some(name) => match self.0.iter().find(|u| u.name == name) {
                Some(u) if u.hash.verify(password.unwrap_or_default()) => {
                    Login::Accepted(Some(u.clone()))
                }
                _ => Login::BadCredentials,
            },
        }
    }
}
