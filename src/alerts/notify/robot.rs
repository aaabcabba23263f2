//! What the group robots share: how a message is worded and cut for one robot, the HMAC
//! both DingTalk and Feishu sign with, and how a robot's answer (`{"errcode":0}`,
//! `{"code":0}`) is judged.

use std::future::Future;
use std::time::Duration;

use base64::Engine;
use serde::Deserialize;

use super::Channel;
use super::http::Answer;
use super::message::{Message, Style, cut};
use super::window::Rate;
use crate::alerts::store::{Attempt, Pending};
use crate::config::MessageFormat;

/// How one robot words and sizes its messages.
pub struct Voice {
    pub style: Style,
    pub format: MessageFormat,
    pub keyword: Option<String>,
    /// The most bytes the service takes in a message's content.
    pub max_bytes: usize,
    pub per_minute: u32,
}

/// A group robot: one way to send a worded message. Every robot is a [`Channel`] the same
/// way: named `{service}:{name}`, held to its minute cap, sending single messages and digests
/// in its voice.
pub trait Robot: Send + Sync + 'static {
    /// `dingtalk`, `wecom`, `feishu`.
    const SERVICE: &'static str;
    /// Least time between two messages, beside the minute cap.
    const MIN_GAP: Duration = Duration::ZERO;

    fn robot_name(&self) -> &str;
    fn voice(&self) -> &Voice;
    fn send(&self, m: &Message) -> impl Future<Output = Attempt> + Send;
}

impl<R: Robot> Channel for R {
    fn name(&self) -> String {
        format!("{}:{}", R::SERVICE, self.robot_name())
    }

    fn rate(&self) -> Option<Rate> {
        Some(Rate {
            per_minute: self.voice().per_minute,
            min_gap: R::MIN_GAP,
        })
    }

    async fn deliver(&self, p: &Pending) -> Attempt {
        self.send(&self.voice().single(p)).await
    }

    async fn deliver_digest(&self, events: &[Pending]) -> (usize, Attempt) {
        let (m, n) = self.voice().digest(events);
        (n, self.send(&m).await)
    }
}

/// A digest is kept to what a phone shows in a few screens, whatever the service takes.
const DIGEST_BYTES: usize = 4000;

impl Voice {
    pub fn single(&self, p: &Pending) -> Message {
        self.style.single(p).with_keyword(self.keyword.as_deref())
    }

    /// A digest of as many of `events` as fit, and how many that is.
    pub fn digest(&self, events: &[Pending]) -> (Message, usize) {
        let most = self.max_bytes.min(DIGEST_BYTES);
        let (m, n) = self.style.digest(events, self.per_minute, |m| {
            let m = m.clone().with_keyword(self.keyword.as_deref());
            self.formatted(&m).len() <= most
        });
        (m.with_keyword(self.keyword.as_deref()), n)
    }

    /// The message in the robot's format, cut to what it takes.
    pub fn content(&self, m: &Message) -> String {
        cut(&self.formatted(m), self.max_bytes)
    }

    fn formatted(&self, m: &Message) -> String {
        match self.format {
            MessageFormat::Text => m.text(),
            MessageFormat::Markdown => m.markdown(),
        }
    }
}

/// Base64 of the HMAC-SHA256 of `message` keyed by `key`.
pub fn hmac_base64(key: &[u8], message: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    base64::engine::general_purpose::STANDARD.encode(ring::hmac::sign(&key, message).as_ref())
}

/// A robot's verdict in its answer's body, under any of the names the three use.
#[derive(Debug, Default, Deserialize)]
struct Verdict {
    errcode: Option<i64>,
    errmsg: Option<String>,
    code: Option<i64>,
    msg: Option<String>,
    #[serde(rename = "StatusCode")]
    status_code: Option<i64>,
    #[serde(rename = "StatusMessage")]
    status_message: Option<String>,
}

/// A code the service answers when it wants to be left alone, and for how long.
pub struct SlowDown {
    pub code: i64,
    pub wait: Duration,
}

/// The attempt an answer of `service` makes: delivered on HTTP 2xx with code 0; any other
/// code fails, and a `slow_down` code waits as long as it says.
pub fn judge(service: &str, answer: &Answer, slow_down: &[SlowDown]) -> Attempt {
    let mut attempt = answer.attempt();
    let verdict: Verdict = serde_json::from_str(&answer.text).unwrap_or_default();
    let code = verdict.errcode.or(verdict.code).or(verdict.status_code);
    let message = verdict
        .errmsg
        .or(verdict.msg)
        .or(verdict.status_message)
        .unwrap_or_default();
    attempt.code = code;
    match code {
        Some(0) => {}
        Some(c) => {
            let mut error = format!("{service} error {c}: {message}");
            if let Some(s) = slow_down.iter().find(|s| s.code == c) {
                error.push_str(&format!(
                    "; not tried again for {}, as {service} asks",
                    humantime::format_duration(s.wait)
                ));
                attempt.retry_after = Some(attempt.retry_after.map_or(s.wait, |r| r.max(s.wait)));
            }
            if let Some(http) = attempt.error.take() {
                error = format!("{http}; {error}");
            }
            attempt.error = Some(error);
        }
        None if attempt.error.is_none() => {
            attempt.error = Some(format!(
                "{service} answered without a code: is the url a {service} robot's webhook?"
            ));
        }
        None => {}
    }
    attempt
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, text: &str) -> Answer {
        Answer {
            status: reqwest::StatusCode::from_u16(status).unwrap(),
            retry_after: None,
            text: text.into(),
        }
    }

    const TOO_FAST: &[SlowDown] = &[SlowDown {
        code: 130101,
        wait: Duration::from_secs(600),
    }];

    #[test]
    fn errcode_0_is_delivered_and_any_other_fails() {
        let ok = judge(
            "DingTalk",
            &answer(200, r#"{"errcode":0,"errmsg":"ok"}"#),
            TOO_FAST,
        );
        assert_eq!((ok.error, ok.code, ok.status), (None, Some(0), Some(200)));
        let bad = judge(
            "DingTalk",
            &answer(200, r#"{"errcode":310000,"errmsg":"sign not match"}"#),
            TOO_FAST,
        );
        assert_eq!(
            bad.error.as_deref(),
            Some("DingTalk error 310000: sign not match")
        );
        assert_eq!(bad.retry_after, None);
    }

    #[test]
    fn sent_too_fast_waits_as_long_as_the_service_says() {
        let a = judge(
            "DingTalk",
            &answer(
                200,
                r#"{"errcode":130101,"errmsg":"send too fast, exceed 20 times per minute"}"#,
            ),
            TOO_FAST,
        );
        assert_eq!(a.code, Some(130101));
        assert_eq!(a.retry_after, Some(Duration::from_secs(600)));
        assert!(
            a.error
                .unwrap()
                .ends_with("not tried again for 10m, as DingTalk asks")
        );
    }

    #[test]
    fn feishu_answers_code_or_the_older_status_code() {
        for body in [
            r#"{"code":0,"msg":"success","data":{}}"#,
            r#"{"Extra":null,"StatusCode":0,"StatusMessage":"success"}"#,
        ] {
            assert_eq!(
                judge("Feishu", &answer(200, body), &[]).error,
                None,
                "{body}"
            );
        }
        let a = judge(
            "Feishu",
            &answer(
                400,
                r#"{"code":19021,"msg":"sign match fail or timestamp is not within one hour from current time"}"#,
            ),
            &[],
        );
        assert_eq!(a.code, Some(19021));
        assert!(
            a.error
                .unwrap()
                .starts_with("HTTP 400 Bad Request; Feishu error 19021")
        );
    }

    #[test]
    fn an_answer_without_a_code_is_not_a_delivery() {
        let a = judge("WeCom", &answer(200, "<html>hello</html>"), &[]);
        assert!(a.error.unwrap().contains("without a code"));
        let a = judge("WeCom", &answer(502, "bad gateway"), &[]);
        assert_eq!(a.error.as_deref(), Some("HTTP 502 Bad Gateway"));
    }
}
