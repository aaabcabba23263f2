//! `GET /api/v1/alerts/stream`: alert events as server-sent events, for phones and screens that
//! follow alerts live and catch up with `Last-Event-ID` after a reconnect. Each stream reads
//! the store itself, a page at a time, at its client's pace ([`feed`]): a slow client makes
//! only its own stream wait, and a stream holds at most one page.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::stream::{self, Stream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_util::sync::CancellationToken;

use super::AppState;
use super::alerts::SEVERITIES;
use super::error::ApiError;
use super::params::Params;
use crate::alerts::feed::{self, Only};
use crate::alerts::notify::payload;
use crate::alerts::store::Pending;
use crate::model::truncate;
use crate::store::ReadPool;

/// Streams open at once; one more is answered 503. Each holds a connection and a page.
pub const MAX_STREAMS: usize = 64;
/// Events read from the store at a time.
const PAGE: usize = 100;
/// Looked at again this often without a bump of `alerts_changed` (events it does not announce).
const POLL: Duration = Duration::from_secs(5);
/// A comment this often when nothing happens, so proxies and phones keep the connection.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// How long a client waits before reconnecting, told in the first message.
const RETRY: Duration = Duration::from_secs(3);

#[utoipa::path(
    get,
    path = "/api/v1/alerts/stream",
    tag = "alerts",
    summary = "Server-sent events of alert changes",
    params(("orchard" = Option<String>, Query, description = "orchard id"), ("block" = Option<String>, Query, description = "block id")),
    responses((status = 200, description = "text/event-stream"), (status = 503, description = "too many streams open"))
)]
pub async fn stream(
    State(s): State<AppState>,
    headers: HeaderMap,
    Query(raw): Query<HashMap<String, String>>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let p = Params::new(
        raw,
        &["orchard", "block", "severity", "last_event_id", "since"],
    )?;
    let only = Only {
        orchard: p.ident("orchard")?.map(|i| i.to_string()),
        block: p.ident("block")?.map(|i| i.to_string()),
        severity: match p.get("severity") {
            None => None,
            Some(v) if SEVERITIES.contains(&v) => Some(v.to_owned()),
            Some(_) => {
                return Err(ApiError::bad_request(format!(
                    "`severity` must be one of {}",
                    SEVERITIES.join(", ")
                )));
            }
        },
    };
    let resume = resume_after(
        headers.get("last-event-id"),
        p.get("last_event_id"),
        p.get("since"),
    )?;
    let permit = admit(&s.alert_streams)?;
    // Subscribed before the newest id is read: an event committed in between is announced.
    let changed = s.alerts_changed.subscribe();
    let newest = s.pool.read(feed::newest).await?;
    let cursor = feed::start_after(resume, newest);
    tracing::debug!(after = cursor, ?only, "alert stream opened");
    let follow = Follow {
        pool: s.pool.clone(),
        only,
        cursor,
        queue: VecDeque::new(),
        more: true,
        greeted: false,
        changed,
        shutdown: s.shutdown.clone(),
        _permit: permit,
    };
    Ok(Sse::new(follow.into_stream()).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}

/// After which event the stream starts. The `Last-Event-ID` header, which an EventSource sends
/// on reconnecting, wins over `last_event_id` (for clients that cannot set headers), which wins
/// over `since`. An empty header is a client that has had no event yet: none.
fn resume_after(
    header: Option<&HeaderValue>,
    last_event_id: Option<&str>,
    since: Option<&str>,
) -> Result<Option<i64>, ApiError> {
    if let Some(h) = header {
        let text = String::from_utf8_lossy(h.as_bytes());
        if !text.trim().is_empty() {
            return event_id("Last-Event-ID", text.trim()).map(Some);
        }
    }
    match (last_event_id, since) {
        (Some(v), _) => event_id("last_event_id", v).map(Some),
        (None, Some(v)) => event_id("since", v).map(Some),
        (None, None) => Ok(None),
    }
}

fn event_id(name: &str, raw: &str) -> Result<i64, ApiError> {
    raw.parse::<i64>()
        .ok()
        .filter(|id| *id >= 0)
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "`{name}` must be an alert event id (a whole number: the `id:` of the last message \
             received), not `{}`",
                truncate(raw, 20)
            ))
        })
}

/// A place among the open streams, or 503 when all are taken.
fn admit(streams: &Arc<Semaphore>) -> Result<OwnedSemaphorePermit, ApiError> {
    streams.clone().try_acquire_owned().map_err(|_| ApiError {
        status: StatusCode::SERVICE_UNAVAILABLE,
        code: "too_many_streams",
        message: format!(
            "{MAX_STREAMS} alert streams are open, as many as orchardd serves at once; \
             close one or try again later"
        ),
    })
}

/// One client's stream: where it is in the events, and the page it is sending.
struct Follow {
    pool: ReadPool,
    only: Only,
    /// Every event up to this id has been sent or skipped by the filter.
    cursor: i64,
    queue: VecDeque<Pending>,
    /// The last page was full: read on without waiting.
    more: bool,
    /// The first message (with `retry:`) is out.
    greeted: bool,
    changed: watch::Receiver<u64>,
    shutdown: CancellationToken,
    /// Held while the stream lives: dropping the stream frees its place.
    _permit: OwnedSemaphorePermit,
}

impl Follow {
    fn into_stream(self) -> impl Stream<Item = Result<Event, Infallible>> {
        stream::unfold(self, |mut f| async move {
            let event = f.next().await?;
            Some((Ok(event), f))
        })
    }

    /// The next message, waiting as long as it takes; `None` ends the stream (shutdown).
    async fn next(&mut self) -> Option<Event> {
        if self.shutdown.is_cancelled() {
            return None;
        }
        if !self.greeted {
            self.greeted = true;
            return Some(
                Event::default()
                    .retry(RETRY)
                    .comment("orchardd alert events"),
            );
        }
        loop {
            if let Some(p) = self.queue.pop_front() {
                return Some(message(&p));
            }
            if !self.more {
                self.wait().await?;
            }
            self.read_page().await;
        }
    }

    /// Until the store may have news: `alerts_changed` moved, or the poll is due.
    async fn wait(&mut self) -> Option<()> {
        tokio::select! {
            Ok(()) = self.changed.changed() => Some(()),
            () = tokio::time::sleep(POLL) => Some(()),
            () = self.shutdown.cancelled() => None,
        }
    }

    async fn read_page(&mut self) {
        // A bump from now on is news this page may not hold.
        self.changed.mark_unchanged();
        let (cursor, only) = (self.cursor, self.only.clone());
        match self
            .pool
            .read(move |c| feed::after(c, cursor, &only, PAGE))
            .await
        {
            Ok(page) => {
                self.cursor = page.cursor;
                self.more = page.more;
                self.queue.extend(page.events);
            }
            Err(e) => {
                tracing::warn!(error = %e, "alert stream: cannot read the events; trying again");
                self.more = false;
            }
        }
    }
}

/// One event as the notifiers deliver it (the same JSON), with its id and kind as SSE fields.
fn message(p: &Pending) -> Event {
    Event::default()
        .id(p.event.to_string())
        .event(&p.kind)
        .data(payload(p).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resume(
        header: Option<&str>,
        last: Option<&str>,
        since: Option<&str>,
    ) -> Result<Option<i64>, String> {
        let h = header.map(|h| HeaderValue::from_str(h).unwrap());
        resume_after(h.as_ref(), last, since)
            .map_err(|e| format!("{} {}", e.status.as_u16(), e.message))
    }

    #[test]
    fn the_header_an_event_source_sends_wins_and_a_bad_one_is_refused() {
        assert_eq!(resume(None, None, None), Ok(None), "from the newest");
        assert_eq!(resume(Some("42"), None, None), Ok(Some(42)));
        assert_eq!(resume(Some(" 42 "), None, None), Ok(Some(42)));
        // An EventSource reconnecting to a URL with `last_event_id` sends the newer id.
        assert_eq!(resume(Some("57"), Some("42"), Some("3")), Ok(Some(57)));
        assert_eq!(resume(None, Some("42"), Some("3")), Ok(Some(42)));
        assert_eq!(resume(None, None, Some("0")), Ok(Some(0)));
        assert_eq!(
            resume(Some(""), None, Some("3")),
            Ok(Some(3)),
            "no event yet"
        );
        let bad = resume(Some("abc"), None, None).unwrap_err();
        assert!(
            bad.starts_with("400 `Last-Event-ID` must be an alert event id"),
            "{bad}"
        );
        assert!(resume(Some("-1"), None, None).is_err());
        assert!(resume(None, Some("1.5"), None).is_err());
        assert!(resume(None, None, Some("yesterday")).is_err());
    }

    #[test]
    fn past_the_limit_of_open_streams_the_next_is_told_503_until_one_closes() {
        let streams = Arc::new(Semaphore::new(2));
        let first = admit(&streams).unwrap();
        let _second = admit(&streams).unwrap();
        let refused = admit(&streams).unwrap_err();
        assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(refused.code, "too_many_streams");
        drop(first);
        assert!(admit(&streams).is_ok());
    }
}
