//! One POST of a notifier and what came back, for the channels over HTTP.

use std::time::Duration;

use crate::alerts::store::Attempt;
use crate::model::truncate;

/// How long a notifier waits for an answer unless its settings say otherwise.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// How much of an answer's body the attempt log keeps, in characters.
const BODY_CHARS: usize = 500;

/// A client that gives up on an answer after `timeout`.
pub fn client(timeout: Duration, channel: &str) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .map_err(|e| format!("{channel}: {e}"))
}

/// An answer to a POST.
#[derive(Debug)]
pub struct Answer {
    pub status: reqwest::StatusCode,
    /// `Retry-After`, in seconds, when the answer has one.
    pub retry_after: Option<Duration>,
    pub text: String,
}

impl Answer {
    /// The attempt as far as HTTP tells: delivered on a 2xx, else failed; a 429 waits as
    /// its `Retry-After` says, or a minute.
    pub fn attempt(&self) -> Attempt {
        let status = self.status;
        Attempt {
            status: Some(status.as_u16()),
            error: (!status.is_success()).then(|| format!("HTTP {status}")),
            body: Some(truncate(&self.text, BODY_CHARS)),
            retry_after: (status == reqwest::StatusCode::TOO_MANY_REQUESTS)
                .then(|| self.retry_after.unwrap_or(Duration::from_secs(60))),
            ..Attempt::default()
        }
    }
}

/// Sends `request`; the answer, or the failed attempt when none came within `timeout`.
pub async fn post(request: reqwest::RequestBuilder, timeout: Duration) -> Result<Answer, Attempt> {
    let failed = |error: String| Attempt {
        error: Some(error),
        ..Attempt::default()
    };
    match request.send().await {
        Ok(answer) => {
            let status = answer.status();
            let retry_after = answer
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse().ok())
                .map(Duration::from_secs);
            match answer.text().await {
                Ok(text) => Ok(Answer {
                    status,
                    retry_after,
                    text,
                }),
                Err(e) if e.is_timeout() => Err(Attempt {
                    status: Some(status.as_u16()),
                    ..failed(no_answer(timeout))
                }),
                Err(e) => Err(Attempt {
                    status: Some(status.as_u16()),
                    ..failed(format!("the answer's body could not be read: {e}"))
                }),
            }
        }
        Err(e) if e.is_timeout() => Err(failed(no_answer(timeout))),
        Err(e) => Err(failed(e.to_string())),
    }
}

fn no_answer(timeout: Duration) -> String {
    format!("no answer within {}", humantime::format_duration(timeout))
}
