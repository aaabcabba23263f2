//! Answers streamed from the store, so that no request costs more memory than a few chunks.
//!
//! A blocking thread runs the query and writes the body as it reads rows, in chunks of
//! [`CHUNK`] bytes, into a channel of [`QUEUED`] chunks that the response body drains. A slow
//! client fills the channel and the query waits for it: the store's other readers and its
//! writer go on (WAL readers hold no lock a writer waits for). A client that reads nothing for
//! [`STALL`] is dropped, so it cannot hold a thread and a read snapshot for ever.

use std::io::Write as _;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tokio::sync::mpsc;

use super::AppState;
use super::error::ApiError;
use crate::store::StoreError;
use crate::store::readings::Each;

/// Exports running at once; more wait their turn.
pub const MAX_EXPORTS: usize = 8;
/// Bytes gathered before a chunk is handed to the client.
const CHUNK: usize = 64 * 1024;
/// Chunks waiting for a slow client before the query waits too.
const QUEUED: usize = 4;
/// How long the query waits for a client that reads nothing.
const STALL: Duration = Duration::from_secs(120);

/// The body being written, a chunk at a time.
pub struct Out {
    buf: Vec<u8>,
    tx: mpsc::Sender<Result<Bytes, StoreError>>,
    rt: tokio::runtime::Handle,
}

impl Out {
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        self.buf.extend_from_slice(bytes);
        self.maybe_flush()
    }

    pub fn write_fmt(&mut self, args: std::fmt::Arguments<'_>) -> Result<(), StoreError> {
        self.buf
            .write_fmt(args)
            .expect("writing to a Vec cannot fail");
        self.maybe_flush()
    }

    pub fn json(&mut self, value: &impl Serialize) -> Result<(), StoreError> {
        serde_json::to_writer(&mut self.buf, value).expect("an answer row serialises");
        self.maybe_flush()
    }

    fn maybe_flush(&mut self) -> Result<(), StoreError> {
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(
            &mut self.buf,
            Vec::with_capacity(CHUNK + 1024),
        ));
        match self
            .rt
            .block_on(tokio::time::timeout(STALL, self.tx.send(Ok(chunk))))
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(StoreError::Abandoned("the client went away")),
            Err(_) => Err(StoreError::Abandoned("the client stopped reading")),
        }
    }
}

/// Streams what `produce` writes, as `content_type`. An error before the first chunk is
/// answered as an error; one later cuts the body short, which the client sees as a broken
/// transfer rather than a complete answer.
pub async fn stream<F>(s: &AppState, content_type: &'static str, produce: F) -> Response
where
    F: FnOnce(&mut Out) -> Result<(), StoreError> + Send + 'static,
{
    let permit = s
        .exports
        .clone()
        .acquire_owned()
        .await
        .expect("the export semaphore is never closed");
    let (tx, mut rx) = mpsc::channel(QUEUED);
    let rt = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let mut out = Out {
            buf: Vec::with_capacity(CHUNK + 1024),
            tx: tx.clone(),
            rt: rt.clone(),
        };
        match produce(&mut out).and_then(|()| out.flush()) {
            Ok(()) => {}
            Err(StoreError::Abandoned(why)) => tracing::info!(why, "export abandoned"),
            Err(e) => {
                tracing::error!(error = %e, "export failed");
                let _ = rt.block_on(tx.send(Err(e)));
            }
        }
    });
    let first = match rx.recv().await {
        None => Bytes::new(),
        Some(Err(e)) => return ApiError::from(e).into_response(),
        Some(Ok(first)) => first,
    };
    let rest = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|chunk| (chunk.map_err(std::io::Error::other), rx))
    });
    let body = futures_util::stream::once(async move { Ok(first) });
    let body = futures_util::StreamExt::chain(body, rest);
    (
        [(header::CONTENT_TYPE, content_type)],
        Body::from_stream(body),
    )
        .into_response()
}

/// `{"<key>": [item, item, ...]}`, with the items `query` hands out.
pub async fn json_array<T, Q>(s: &AppState, key: &'static str, query: Q) -> Response
where
    T: Serialize,
    Q: FnOnce(Each<T>) -> Result<(), StoreError> + Send + 'static,
{
    stream(s, "application/json", move |out| {
        write!(out, "{{\"{key}\":[")?;
        let mut first = true;
        query(&mut |item| {
            if !std::mem::take(&mut first) {
                out.write(b",")?;
            }
            out.json(&item)
        })?;
        out.write(b"]}")
    })
    .await
}

/// A CSV file: `header` (with its newline), then one line per item, written by `line`.
pub async fn csv<T, Q, L>(s: &AppState, header: &'static str, query: Q, line: L) -> Response
where
    Q: FnOnce(Each<T>) -> Result<(), StoreError> + Send + 'static,
    L: Fn(&mut Out, &T) -> Result<(), StoreError> + Send + 'static,
{
    stream(s, "text/csv; charset=utf-8", move |out| {
        out.write(header.as_bytes())?;
        query(&mut |item| line(out, &item))
    })
    .await
}

/// A CSV field, quoted (with inner quotes doubled) as RFC 4180 asks when it must be.
pub fn csv_field(text: &str) -> std::borrow::Cow<'_, str> {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\"")).into()
    } else {
        text.into()
    }
}
