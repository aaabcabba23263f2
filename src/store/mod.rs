//! The embedded store: one SQLite file in WAL mode.
//!
//! One writer thread owns the ingest's writing connection ([`writer`]); HTTP handlers read
//! through a small pool of read-only connections ([`ReadPool`]), which WAL lets run beside the
//! writer. The few other writing connections (the [`Admin`] one, the endpoint's session store)
//! take turns with the writer through one [`WriteGate`].

pub mod backup;
pub mod block;
pub mod devices;
pub mod irrigation;
pub mod outbox;
pub mod quarantine;
pub mod readings;
pub mod replay;
pub mod retention;
pub mod rollups;
pub mod schema;
mod series;
pub mod writer;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OpenFlags};

use crate::config::{StoreSettings, Synchronous};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("store {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the store has schema version {found}, newer than this orchardd knows ({supported}): upgrade orchardd"
    )]
    TooNew { found: i64, supported: i64 },
    #[error("the store's reader was lost: {0}")]
    Task(String),
    /// A streamed answer stopped because its client went away or stopped reading.
    #[error("the answer was abandoned: {0}")]
    Abandoned(&'static str),
}

/// Opens (creating when missing) and migrates the writing connection.
pub fn open_writer(settings: &StoreSettings) -> Result<Connection, StoreError> {
    if let Some(dir) = settings.path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Open {
            path: settings.path.clone(),
            source,
        })?;
    }
    let mut conn = Connection::open(&settings.path)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    let sync = match settings.synchronous {
        Synchronous::Full => "FULL",
        Synchronous::Normal => "NORMAL",
    };
    conn.pragma_update(None, "synchronous", sync)?;
    conn.pragma_update(None, "cache_size", -4096)?;
    // Checkpoint every ~32 MiB of WAL instead of SQLite's 4 MiB: under a backlog the writer
    // commits ~10 000-reading batches, and the default made it checkpoint after nearly every one.
    conn.pragma_update(None, "wal_autocheckpoint", 8000)?;
    schema::migrate(&mut conn)?;
    Ok(conn)
}

/// The turn to write, taken by each of this process's writing connections around its
/// transaction, and handed over first come, first served.
///
/// SQLite lets one connection write at a time and makes the others poll: its busy handler
/// sleeps up to 100 ms between tries, so a connection waiting beside a writer that commits
/// back to back can miss every gap for a second or more (the alert notifier's outbox update
/// did, behind ingest). Waiting here instead, in order, a writer waits for at most the
/// transactions queued before it. The busy timeout stays for other processes (`orchardd`
/// commands run against the live store).
#[derive(Clone, Default)]
pub struct WriteGate(Arc<tokio::sync::Mutex<()>>);

impl WriteGate {
    /// Waits for the turn on a thread outside the async runtime.
    pub fn blocking(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.0.blocking_lock()
    }

    /// Waits for the turn without holding a thread.
    pub async fn turn(&self) -> tokio::sync::OwnedMutexGuard<()> {
        self.0.clone().lock_owned().await
    }
}

/// A second writing connection for the API's and the background tasks' writes (device
/// registry, replays, alert deliveries), so they need not queue behind ingest's batches;
/// it takes turns with the writer thread through the [`WriteGate`].
#[derive(Clone)]
pub struct Admin {
    conn: Arc<Mutex<Connection>>,
    gate: WriteGate,
}

impl Admin {
    pub fn open(settings: &StoreSettings, gate: WriteGate) -> Result<Self, StoreError> {
        let conn = Connection::open(&settings.path)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            gate,
        })
    }

    /// Runs `f` with the admin connection on the blocking thread pool, in its turn.
    pub async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = self.conn.clone();
        let turn = self.gate.turn().await;
        tokio::task::spawn_blocking(move || {
            let _turn = turn;
            let mut conn = conn.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut conn)
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
    }
}

/// Read-only connections for queries, handed out one per request.
#[derive(Clone)]
pub struct ReadPool {
    path: Arc<PathBuf>,
    idle: Arc<Mutex<Vec<Connection>>>,
}

impl ReadPool {
    /// Keeps at most this many idle connections; busier moments open extra ones briefly.
    const MAX_IDLE: usize = 4;

    pub fn new(path: &Path) -> Self {
        Self {
            path: Arc::new(path.to_owned()),
            idle: Arc::default(),
        }
    }

    /// Runs `f` with a read connection on the blocking thread pool.
    pub async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let pool = self.clone();
        tokio::task::spawn_blocking(move || pool.blocking(f))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }

    /// Runs `f` with a read connection on this thread, which may block.
    pub fn blocking<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let conn = self.take()?;
        let out = f(&conn);
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < Self::MAX_IDLE {
            idle.push(conn);
        }
        out
    }

    fn take(&self) -> Result<Connection, StoreError> {
        if let Some(c) = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop() {
            return Ok(c);
        }
        let conn = Connection::open_with_flags(
            self.path.as_path(),
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        Ok(conn)
    }

    /// The store's size on disk: the database and its WAL.
    pub fn bytes_on_disk(&self) -> u64 {
        let wal = PathBuf::from(format!("{}-wal", self.path.display()));
        [self.path.as_path(), wal.as_path()]
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum()
    }

    /// True when the store answers a query: what `/readyz` checks.
    pub async fn is_ready(&self) -> bool {
        self.read(|c| Ok(c.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))?))
            .await
            .is_ok()
    }
}
