//! Queries over stored readings, for the HTTP API.

use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, params_from_iter};
use serde::Serialize;

use super::{StoreError, rollups};
use crate::model::{Flags, Ident, Kind, TimestampMs};

/// How readings in one `every` window are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Agg {
    Mean,
    Min,
    Max,
    Sum,
    Count,
    Last,
}

impl Agg {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "mean" => Agg::Mean,
            "min" => Agg::Min,
            "max" => Agg::Max,
            "sum" => Agg::Sum,
            "count" => Agg::Count,
            "last" => Agg::Last,
            _ => return None,
        })
    }

    fn sql(self) -> &'static str {
        match self {
            Agg::Mean => "avg(r.value)",
            Agg::Min => "min(r.value)",
            Agg::Max => "max(r.value)",
            Agg::Sum => "sum(r.value)",
            Agg::Count => "count(*)",
            // SQLite takes the bare column from the row that holds max(): the last value.
            Agg::Last => "r.value",
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub orchard: Option<Ident>,
    pub block: Option<Ident>,
    pub device: Option<Ident>,
    pub kind: Option<Kind>,
    /// Inclusive.
    pub from: Option<TimestampMs>,
    /// Exclusive.
    pub to: Option<TimestampMs>,
    /// Window length in ms and how to combine a window, for downsampled answers.
    pub every: Option<(i64, Agg)>,
    /// Windows are aligned to local midnight at this offset from UTC, as the rollups are,
    /// so `every=1d` means local days.
    pub utc_offset_ms: i64,
    /// Only readings carrying this sensor-health flag.
    pub flagged: Option<Flags>,
    pub limit: usize,
}

/// One row of the readings API; for downsampled answers `ts` is the window's start.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    pub orchard: String,
    pub block: String,
    pub device: String,
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub depth_cm: Option<i64>,
    pub ts: TimestampMs,
    pub value: f64,
    /// Sensor-health flags; always empty in downsampled answers.
    #[serde(skip)]
    pub flags: Flags,
}

pub(super) struct Where {
    clauses: Vec<&'static str>,
    pub(super) params: Vec<SqlValue>,
}

impl Where {
    pub(super) fn new() -> Self {
        Self {
            clauses: vec!["1"],
            params: Vec::new(),
        }
    }

    pub(super) fn add(&mut self, clause: &'static str, value: Option<SqlValue>) {
        if let Some(v) = value {
            self.clauses.push(clause);
            self.params.push(v);
        }
    }

    pub(super) fn sql(&self) -> String {
        self.clauses.join(" AND ")
    }
}

pub(super) fn text(id: &Option<Ident>) -> Option<SqlValue> {
    id.as_ref().map(|i| SqlValue::Text(i.as_str().to_owned()))
}

pub(super) fn series_where(
    orchard: &Option<Ident>,
    block: &Option<Ident>,
    device: &Option<Ident>,
    kind: Option<Kind>,
) -> Where {
    let mut w = Where::new();
    w.add("s.orchard = ?", text(orchard));
    w.add("s.block = ?", text(block));
    w.add("s.device = ?", text(device));
    w.add("s.kind = ?", kind.map(|k| SqlValue::Text(k.name().into())));
    w
}

/// What a query hands each row to as it reads it: a collector, or an export writing the row
/// out; an error stops the query.
pub type Each<'a, T> = &'a mut dyn FnMut(T) -> Result<(), StoreError>;

/// Readings, or windows of them. Hourly and daily windows come from the rollups when the
/// question allows (see [`rollups::answers`]); the answer is the same as from raw readings.
pub fn query(conn: &Connection, f: &Filter) -> Result<Vec<Row>, StoreError> {
    collect(|each| query_each(conn, f, each))
}

/// [`query`], handing each row to `each` in order instead of collecting them.
pub fn query_each(conn: &Connection, f: &Filter, each: Each<Row>) -> Result<(), StoreError> {
    match rollups::answers(f) {
        Some(period) => rollups::as_readings(conn, period, f, each),
        None => query_raw_each(conn, f, each),
    }
}

/// [`query`] from the raw readings alone.
pub fn query_raw(conn: &Connection, f: &Filter) -> Result<Vec<Row>, StoreError> {
    collect(|each| query_raw_each(conn, f, each))
}

/// The rows a visiting query hands out, collected.
pub fn collect<T>(
    query: impl FnOnce(Each<T>) -> Result<(), StoreError>,
) -> Result<Vec<T>, StoreError> {
    let mut out = Vec::new();
    query(&mut |row| {
        out.push(row);
        Ok(())
    })?;
    Ok(out)
}

/// [`query_raw`], handing each row to `each`.
pub fn query_raw_each(conn: &Connection, f: &Filter, each: Each<Row>) -> Result<(), StoreError> {
    let mut w = series_where(&f.orchard, &f.block, &f.device, f.kind);
    w.add("r.ts >= ?", f.from.map(|t| SqlValue::Integer(t.0)));
    w.add("r.ts < ?", f.to.map(|t| SqlValue::Integer(t.0)));
    w.add(
        "(r.flags & ?) != 0",
        f.flagged.map(|fl| SqlValue::Integer(fl.0.into())),
    );
    let sql = match f.every {
        None => format!(
            "SELECT s.orchard, s.block, s.device, s.kind, s.depth_cm, r.ts, r.value, r.flags \
             FROM series s JOIN readings r ON r.series = s.id WHERE {} \
             ORDER BY r.ts, s.orchard, s.block, s.device, s.kind, s.depth_cm LIMIT ?",
            w.sql()
        ),
        Some((every, agg)) => {
            // The window start: the latest local-midnight-aligned multiple of `every`.
            let shift = f.utc_offset_ms.rem_euclid(every);
            format!(
                "SELECT s.orchard, s.block, s.device, s.kind, s.depth_cm, \
                 r.ts - (((r.ts + {shift}) % {every}) + {every}) % {every} AS bucket, {}, 0, max(r.ts) \
                 FROM series s JOIN readings r ON r.series = s.id WHERE {} \
                 GROUP BY s.id, bucket \
                 ORDER BY bucket, s.orchard, s.block, s.device, s.kind, s.depth_cm LIMIT ?",
                agg.sql(),
                w.sql()
            )
        }
    };
    w.params.push(SqlValue::Integer(f.limit as i64));
    each_row(conn, &sql, w.params, each)
}

/// The newest reading of every series, optionally of one orchard or block.
pub fn latest(
    conn: &Connection,
    orchard: &Option<Ident>,
    block: &Option<Ident>,
) -> Result<Vec<Row>, StoreError> {
    let w = series_where(orchard, block, &None, None);
    let sql = format!(
        "SELECT s.orchard, s.block, s.device, s.kind, s.depth_cm, r.ts, r.value, r.flags \
         FROM series s JOIN readings r ON r.series = s.id \
         AND r.ts = (SELECT max(ts) FROM readings WHERE series = s.id) \
         WHERE {} ORDER BY s.orchard, s.block, s.device, s.kind, s.depth_cm",
        w.sql()
    );
    collect(|each| each_row(conn, &sql, w.params, each))
}

/// Runs `sql`, whose columns are a [`Row`]'s, handing each row to `each` as it is read.
pub(super) fn each_row(
    conn: &Connection,
    sql: &str,
    params: Vec<SqlValue>,
    each: Each<Row>,
) -> Result<(), StoreError> {
    let mut stmt = conn.prepare(sql)?;
    let mut rows = stmt.query(params_from_iter(params))?;
    while let Some(r) = rows.next()? {
        each(Row {
            orchard: r.get(0)?,
            block: r.get(1)?,
            device: r.get(2)?,
            kind: r.get(3)?,
            depth_cm: r.get(4)?,
            ts: TimestampMs(r.get(5)?),
            value: r.get(6)?,
            flags: Flags(r.get(7)?),
        })?;
    }
    Ok(())
}
