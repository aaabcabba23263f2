//! `orchardd backup FILE`: a copy of the live store as it was at one moment.
//!
//! The copy is made with `VACUUM INTO` from a read transaction. SQLite's page-by-page backup
//! API starts over whenever another connection writes to the source, which a running orchardd
//! does several times a second, so under steady ingest it may never finish; `VACUUM INTO`
//! reads one snapshot (WAL lets the writer go on beside it) and writes a compact file. The
//! copy is written beside the target, checked, synced and only then renamed into place, so a
//! file with the target's name is always a whole, checked backup.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("there is no store at {0} (store.path): nothing to back up")]
    NoStore(PathBuf),
    #[error("{0} exists already: give a new file name (a backup never overwrites)")]
    Exists(PathBuf),
    #[error("the directory of {0} does not exist")]
    NoDirectory(PathBuf),
    #[error("the backup failed the integrity check: {0}")]
    Corrupt(String),
    #[error("backup: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("backup {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What a backup holds.
#[derive(Debug, Clone)]
pub struct Backup {
    pub bytes: u64,
    pub readings: i64,
    pub lots: i64,
    pub alerts: i64,
    pub elapsed: Duration,
}

/// Copies the store at `store` to `to`, which must not exist yet.
pub fn backup(store: &Path, to: &Path) -> Result<Backup, BackupError> {
    let started = Instant::now();
    if !store.exists() {
        return Err(BackupError::NoStore(store.to_owned()));
    }
    if to.exists() {
        return Err(BackupError::Exists(to.to_owned()));
    }
    let dir = match to.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    if !dir.is_dir() {
        return Err(BackupError::NoDirectory(to.to_owned()));
    }
    let name = to
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let partial = dir.join(format!(".{name}.partial"));
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| BackupError::Io { path, source }
    };
    let _ = std::fs::remove_file(&partial);
    let result = (|| {
        let source = Connection::open_with_flags(store, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        source.busy_timeout(Duration::from_secs(10))?;
        source.execute("VACUUM INTO ?1", [partial.to_string_lossy()])?;
        drop(source);
        let copy = Connection::open_with_flags(&partial, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        let check: String = copy.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
        if check != "ok" {
            return Err(BackupError::Corrupt(check));
        }
        let count = |table: &str| -> Result<i64, rusqlite::Error> {
            copy.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
        };
        let (readings, lots, alerts) = (count("readings")?, count("lots")?, count("alerts")?);
        drop(copy);
        std::fs::File::open(&partial)
            .and_then(|f| f.sync_all())
            .map_err(io(&partial))?;
        std::fs::rename(&partial, to).map_err(io(to))?;
        std::fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(io(&dir))?;
        let bytes = std::fs::metadata(to).map_err(io(to))?.len();
        Ok(Backup {
            bytes,
            readings,
            lots,
            alerts,
            elapsed: started.elapsed(),
        })
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    result
}
