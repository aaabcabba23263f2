//! Alerts in the store: rule progress, alerts with their lifecycle events, and the outbox of
//! notifications, written in the transaction of the readings that caused them.
//!
//! One open alert per `(rule, scope)` is the schema's (a partial unique index over alerts
//! not yet resolved), not code's: two batches racing for one scope open one alert.

use rusqlite::{Connection, OptionalExtension, Transaction, params};
use serde::Serialize;

use super::rules::{Filled, Rule, render};
use super::threshold::Progress;
use crate::model::{SeriesKey, TimestampMs};
use crate::store::StoreError;

/// Makes `names` the channels new events are delivered on. Events already in the outbox
/// for a channel no longer configured stay there, undelivered, for when it is back.
pub fn set_channels(conn: &mut Connection, names: &[String]) -> Result<(), StoreError> {
    let tx = conn.transaction()?;
    tx.execute("DELETE FROM alert_channels", [])?;
    for n in names {
        tx.execute(
            "INSERT OR IGNORE INTO alert_channels (name) VALUES (?1)",
            [n],
        )?;
    }
    tx.commit()?;
    Ok(())
}

/// What an alert is about: one series of one device.
pub fn scope_of(s: &SeriesKey) -> String {
    let depth = s.depth_cm.map(|d| format!("@{d}cm")).unwrap_or_default();
    format!("{}/{}/{}{depth}", s.orchard, s.block, s.device)
}

pub fn progress(
    tx: &Transaction<'_>,
    rule: &str,
    scope: &str,
) -> Result<Option<Progress>, StoreError> {
    let text: Option<String> = tx
        .prepare_cached("SELECT progress FROM rule_progress WHERE rule = ?1 AND scope = ?2")?
        .query_row(params![rule, scope], |r| r.get(0))
        .optional()?;
    Ok(text.and_then(|t| serde_json::from_str(&t).ok()))
}

pub fn save_progress(
    tx: &Transaction<'_>,
    rule: &str,
    scope: &str,
    p: &Progress,
) -> Result<(), StoreError> {
    let text = serde_json::to_string(p).unwrap_or_default();
    tx.prepare_cached(
        "INSERT INTO rule_progress (rule, scope, progress) VALUES (?1, ?2, ?3) \
         ON CONFLICT (rule, scope) DO UPDATE SET progress = excluded.progress",
    )?
    .execute(params![rule, scope, text])?;
    Ok(())
}

/// Whether an alert of `rule` is open for the scope.
pub fn is_open(tx: &Transaction<'_>, rule: &str, scope: &str) -> Result<bool, StoreError> {
    Ok(open_since(tx, rule, scope)?.is_some())
}

/// When the condition of the open alert of `rule` for `scope` began to hold, if one is open.
pub fn open_since(
    tx: &Transaction<'_>,
    rule: &str,
    scope: &str,
) -> Result<Option<i64>, StoreError> {
    Ok(tx
        .prepare_cached(
            "SELECT since FROM alerts WHERE rule = ?1 AND scope = ?2 AND state != 'resolved'",
        )?
        .query_row(params![rule, scope], |r| r.get(0))
        .optional()?)
}

/// When the last resolved alert of `rule` for `scope` was resolved, if one was.
pub fn resolved_until(
    tx: &Transaction<'_>,
    rule: &str,
    scope: &str,
) -> Result<Option<i64>, StoreError> {
    Ok(tx
        .prepare_cached(
            "SELECT max(resolved_at) FROM alerts WHERE rule = ?1 AND scope = ?2 AND state = 'resolved'",
        )?
        .query_row(params![rule, scope], |r| r.get(0))?)
}

/// What an alert is about, as its row names it.
pub struct Subject<'a> {
    pub scope: &'a str,
    pub orchard: &'a str,
    pub block: &'a str,
    pub device: &'a str,
    /// The kind of reading, or empty (an absence rule reads none).
    pub kind: &'a str,
}

/// What fired an alert: when its condition began to hold, when it had held long enough,
/// the value and the threshold it was past.
#[derive(Debug, Clone, Copy)]
pub struct Firing {
    pub since: i64,
    pub at: i64,
    pub value: f64,
    pub threshold: f64,
}

/// Opens the alert of `rule` for the reading that made it fire, unless one is open for the
/// scope already. Returns the new alert's id.
pub fn fire(
    tx: &Transaction<'_>,
    rule: &Rule,
    series: &SeriesKey,
    since: i64,
    at: i64,
    value: f64,
) -> Result<Option<i64>, StoreError> {
    let scope = scope_of(series);
    let subject = Subject {
        scope: &scope,
        orchard: series.orchard.as_str(),
        block: series.block.as_str(),
        device: series.device.as_str(),
        kind: series.kind.name(),
    };
    let firing = Firing {
        since,
        at,
        value,
        threshold: rule.threshold.enter,
    };
    open(tx, rule, &subject, firing, |_| None)
}

/// Opens the alert of `rule` for `subject` unless one is open for its scope already; the
/// action text takes the subject's names, the firing's numbers and whatever `more` fills.
/// Returns the new alert's id.
pub fn open(
    tx: &Transaction<'_>,
    rule: &Rule,
    subject: &Subject<'_>,
    firing: Firing,
    more: impl Fn(&str) -> Option<Filled>,
) -> Result<Option<i64>, StoreError> {
    open_noted(tx, rule, subject, firing, more, None)
}

/// [`open`], with a note `(en, zh)` put before the action text.
pub fn open_noted(
    tx: &Transaction<'_>,
    rule: &Rule,
    subject: &Subject<'_>,
    firing: Firing,
    more: impl Fn(&str) -> Option<Filled>,
    note: Option<(String, String)>,
) -> Result<Option<i64>, StoreError> {
    let fill = |name: &str| {
        Some(match name {
            "orchard" => Filled::Text(subject.orchard.to_owned()),
            "block" => Filled::Text(subject.block.to_owned()),
            "device" => Filled::Text(subject.device.to_owned()),
            "value" => Filled::Number(firing.value),
            "threshold" => Filled::Number(firing.threshold),
            "since" => Filled::Text(TimestampMs(firing.since).to_rfc3339()),
            other => return more(other),
        })
    };
    let previous: Option<i64> = tx
        .prepare_cached("SELECT max(id) FROM alerts WHERE rule = ?1 AND scope = ?2")?
        .query_row(params![rule.id, subject.scope], |r| r.get(0))?;
    // Opened and closed too often of late: one alert that stays open says so, instead of a
    // storm of them.
    let (cycles, within_ms) = rule.unstable;
    let recent: u32 = tx
        .prepare_cached(
            "SELECT count(*) FROM alerts WHERE rule = ?1 AND scope = ?2 AND fired_at >= ?3",
        )?
        .query_row(
            params![rule.id, subject.scope, firing.at - within_ms],
            |r| r.get(0),
        )?;
    let unstable = cycles > 0 && recent >= cycles;
    let (mut en, mut zh) = (
        render(&rule.action.en, &fill),
        render(&rule.action.zh, &fill),
    );
    if let Some((note_en, note_zh)) = note {
        en = format!("{note_en} {en}");
        zh = format!("{note_zh}{zh}");
    }
    if unstable {
        let hours = within_ms as f64 / 3_600_000.0;
        en = format!(
            "Unstable signal: this alert opened and closed {recent} times in {hours} h, so it now stays open until staff resolve it. {en}"
        );
        zh = format!(
            "信号不稳定：此警报在 {hours} 小时内已开启又关闭 {recent} 次，现保持开启，直到工作人员处理。{zh}"
        );
    }
    let inserted = tx
        .prepare_cached(
            "INSERT INTO alerts (rule, rule_version, scope, orchard, block, device, kind, severity, \
             state, since, fired_at, value, threshold, action_en, action_zh, previous, unstable, \
             opened_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'firing', ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, \
             ?17) \
             ON CONFLICT DO NOTHING",
        )?
        .execute(params![
            rule.id,
            rule.version,
            subject.scope,
            subject.orchard,
            subject.block,
            subject.device,
            subject.kind,
            rule.severity.as_str(),
            firing.since,
            firing.at,
            firing.value,
            firing.threshold,
            en,
            zh,
            previous,
            unstable,
            TimestampMs::now().0,
        ])?;
    if inserted == 0 {
        return Ok(None);
    }
    let id = tx.last_insert_rowid();
    event(tx, id, "fired", firing.at, None, None, Some(firing.value))?;
    Ok(Some(id))
}

/// Resolves the open alert of `rule` for the series, if there is one, as the readings say.
pub fn resolve(
    tx: &Transaction<'_>,
    rule: &str,
    series: &SeriesKey,
    at: i64,
    value: f64,
) -> Result<Option<i64>, StoreError> {
    close(tx, rule, &scope_of(series), at, Some(value))
}

/// Resolves the open alert of `rule` for `scope`, if there is one and it is not an unstable
/// signal's (which stays open for staff); `value` is what the resolving reading read.
pub fn close(
    tx: &Transaction<'_>,
    rule: &str,
    scope: &str,
    at: i64,
    value: Option<f64>,
) -> Result<Option<i64>, StoreError> {
    let id: Option<i64> = tx
        .prepare_cached(
            "UPDATE alerts SET state = 'resolved', resolved_at = ?3 \
             WHERE rule = ?1 AND scope = ?2 AND state != 'resolved' AND NOT unstable RETURNING id",
        )?
        .query_row(params![rule, scope, at], |r| r.get(0))
        .optional()?;
    if let Some(id) = id {
        event(tx, id, "resolved", at, None, None, value)?;
    }
    Ok(id)
}

fn event(
    tx: &Transaction<'_>,
    alert: i64,
    kind: &str,
    at: i64,
    who: Option<&str>,
    note: Option<&str>,
    value: Option<f64>,
) -> Result<i64, StoreError> {
    tx.prepare_cached(
        "INSERT INTO alert_events (alert, event, at, who, note, value) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![alert, kind, at, who, note, value])?;
    let id = tx.last_insert_rowid();
    tx.prepare_cached(
        "INSERT INTO alert_outbox (event, channel) SELECT ?1, name FROM alert_channels",
    )?
    .execute([id])?;
    Ok(id)
}

/// Escalates every critical alert nobody acknowledged within `after_ms` of opening, once:
/// an `escalated` event for `channels` only. Returns how many escalated.
pub fn escalate(
    conn: &mut Connection,
    after_ms: i64,
    channels: &[String],
    now: i64,
) -> Result<u64, StoreError> {
    let tx = conn.transaction()?;
    let due: Vec<i64> = tx
        .prepare_cached(
            "SELECT id FROM alerts WHERE state = 'firing' AND severity = 'critical' \
             AND escalated_at IS NULL AND coalesce(opened_at, fired_at) <= ?1",
        )?
        .query_map([now - after_ms], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for id in &due {
        tx.prepare_cached("UPDATE alerts SET escalated_at = ?2 WHERE id = ?1")?
            .execute(params![id, now])?;
        tx.prepare_cached(
            "INSERT INTO alert_events (alert, event, at) VALUES (?1, 'escalated', ?2)",
        )?
        .execute(params![id, now])?;
        let event = tx.last_insert_rowid();
        for c in channels {
            tx.prepare_cached(
                "INSERT OR IGNORE INTO alert_outbox (event, channel) VALUES (?1, ?2)",
            )?
            .execute(params![event, c])?;
        }
    }
    tx.commit()?;
    Ok(due.len() as u64)
}

/// Reminds of every alert still `firing` (nobody acknowledged it) `every_ms` after it opened
/// or was last reminded of: a `reminder` event on every channel. Acknowledging stops them.
/// Returns how many it reminded of.
pub fn remind(conn: &mut Connection, every_ms: i64, now: i64) -> Result<u64, StoreError> {
    let tx = conn.transaction()?;
    let due: Vec<i64> = tx
        .prepare_cached(
            "SELECT id FROM alerts a WHERE state = 'firing' AND coalesce( \
             (SELECT max(at) FROM alert_events WHERE alert = a.id AND event = 'reminder'), \
             opened_at, fired_at) <= ?1",
        )?
        .query_map([now - every_ms], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for id in &due {
        event(&tx, *id, "reminder", now, None, None, None)?;
    }
    tx.commit()?;
    Ok(due.len() as u64)
}

/// What staff do to an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StaffAction {
    Acknowledge,
    Resolve,
}

/// Why staff could not do it.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    #[error("no alert {0}")]
    NotFound(i64),
    #[error("alert {0} is resolved already")]
    Resolved(i64),
    #[error("alert {0} is acknowledged already")]
    Acknowledged(i64),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<rusqlite::Error> for ActionError {
    fn from(e: rusqlite::Error) -> Self {
        ActionError::Store(e.into())
    }
}

/// Acknowledges (stops repeats, keeps the alert open) or resolves an alert for a person.
pub fn act(
    conn: &mut Connection,
    id: i64,
    action: StaffAction,
    who: &str,
    note: Option<&str>,
) -> Result<(), ActionError> {
    let tx = conn.transaction()?;
    let state: Option<String> = tx
        .query_row("SELECT state FROM alerts WHERE id = ?1", [id], |r| r.get(0))
        .optional()?;
    let now = TimestampMs::now().0;
    match (state.as_deref(), action) {
        (None, _) => return Err(ActionError::NotFound(id)),
        (Some("resolved"), _) => return Err(ActionError::Resolved(id)),
        (Some("acknowledged"), StaffAction::Acknowledge) => {
            return Err(ActionError::Acknowledged(id));
        }
        (Some(_), StaffAction::Acknowledge) => {
            tx.execute(
                "UPDATE alerts SET state = 'acknowledged', acked_by = ?2, acked_at = ?3, ack_note = ?4 WHERE id = ?1",
                params![id, who, now, note],
            )?;
            event(&tx, id, "acknowledged", now, Some(who), note, None)?;
        }
        (Some(_), StaffAction::Resolve) => {
            tx.execute(
                "UPDATE alerts SET state = 'resolved', resolved_at = ?2, resolved_by = ?3, resolve_note = ?4 WHERE id = ?1",
                params![id, now, who, note],
            )?;
            event(&tx, id, "resolved", now, Some(who), note, None)?;
            // The readings' progress forgets the firing, so the rule can fire again.
            tx.execute(
                "DELETE FROM rule_progress WHERE (rule, scope) IN (SELECT rule, scope FROM alerts WHERE id = ?1)",
                [id],
            )?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// An alert as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Alert {
    pub id: i64,
    pub rule: String,
    pub rule_version: String,
    pub scope: String,
    pub orchard: String,
    pub block: String,
    /// Empty for an alert about a gateway or every device.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub device: String,
    /// The kind of reading; empty for an absence alert.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub kind: String,
    pub severity: String,
    pub state: String,
    /// When the condition started to hold, and when it had held long enough (reading time).
    pub since: String,
    pub fired_at: String,
    pub value: f64,
    pub threshold: f64,
    pub action: Action,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acknowledged: Option<ByWhom>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolved_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolved_by: Option<ByWhom>,
    /// The alert of the same rule and scope before this one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous: Option<i64>,
    /// Opened because the rule had fired too often for its scope of late: it does not
    /// resolve by itself.
    pub unstable: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Action {
    pub en: String,
    pub zh: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ByWhom {
    pub by: String,
    pub at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

const COLUMNS: &str = "id, rule, rule_version, scope, orchard, block, device, kind, severity, state, \
     since, fired_at, value, threshold, action_en, action_zh, acked_by, acked_at, ack_note, \
     resolved_at, resolved_by, resolve_note, previous, unstable";

fn alert_of(r: &rusqlite::Row<'_>) -> rusqlite::Result<Alert> {
    let time = |ms: i64| TimestampMs(ms).to_rfc3339();
    let acked_by: Option<String> = r.get(16)?;
    let resolved_by: Option<String> = r.get(20)?;
    let resolved_at: Option<i64> = r.get(19)?;
    Ok(Alert {
        id: r.get(0)?,
        rule: r.get(1)?,
        rule_version: r.get(2)?,
        scope: r.get(3)?,
        orchard: r.get(4)?,
        block: r.get(5)?,
        device: r.get(6)?,
        kind: r.get(7)?,
        severity: r.get(8)?,
        state: r.get(9)?,
        since: time(r.get(10)?),
        fired_at: time(r.get(11)?),
        value: r.get(12)?,
        threshold: r.get(13)?,
        action: Action {
            en: r.get(14)?,
            zh: r.get(15)?,
        },
        acknowledged: match acked_by {
            Some(by) => Some(ByWhom {
                by,
                at: time(r.get(17)?),
                note: r.get(18)?,
            }),
            None => None,
        },
        resolved_at: resolved_at.map(time),
        resolved_by: match (resolved_by, resolved_at) {
            (Some(by), Some(at)) => Some(ByWhom {
                by,
                at: time(at),
                note: r.get(21)?,
            }),
            _ => None,
        },
        previous: r.get(22)?,
        unstable: r.get(23)?,
    })
}

/// Which alerts to list.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// `open` (firing or acknowledged), `firing`, `acknowledged` or `resolved`.
    pub state: Option<String>,
    pub orchard: Option<String>,
    pub block: Option<String>,
    pub severity: Option<String>,
    pub limit: usize,
}

/// Alerts, most severe first, then newest.
pub fn list(conn: &Connection, f: &Filter) -> Result<Vec<Alert>, StoreError> {
    let mut sql = format!("SELECT {COLUMNS} FROM alerts WHERE 1");
    let mut args: Vec<String> = Vec::new();
    match f.state.as_deref() {
        Some("open") => sql.push_str(" AND state != 'resolved'"),
        Some(s) => {
            args.push(s.to_owned());
            sql.push_str(&format!(" AND state = ?{}", args.len()));
        }
        None => {}
    }
    for (col, v) in [
        ("orchard", &f.orchard),
        ("block", &f.block),
        ("severity", &f.severity),
    ] {
        if let Some(v) = v {
            args.push(v.clone());
            sql.push_str(&format!(" AND {col} = ?{}", args.len()));
        }
    }
    sql.push_str(&format!(
        " ORDER BY CASE severity WHEN 'critical' THEN 0 WHEN 'major' THEN 1 WHEN 'minor' THEN 2 ELSE 3 END, \
         id DESC LIMIT {}",
        f.limit
    ));
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt
        .query_map(rusqlite::params_from_iter(args), alert_of)?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}

/// One lifecycle event and its deliveries.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    pub id: i64,
    pub event: String,
    pub at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    pub deliveries: Vec<Delivery>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Delivery {
    pub channel: String,
    pub attempts: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivered_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Not yet delivered: when the next attempt is due (after a back-off, or as long as the
    /// service asked to be left alone).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<String>,
    /// Every attempt, oldest first.
    pub log: Vec<Logged>,
}

/// One logged delivery attempt.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Logged {
    pub at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// The service's own error code (a robot's `errcode`), when it answered with one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// The message was a digest naming this many events, this one among them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<i64>,
}

/// One alert, without its events.
pub(super) fn alert(conn: &Connection, id: i64) -> Result<Option<Alert>, StoreError> {
    Ok(alert_row(conn, id)?)
}

fn alert_row(conn: &Connection, id: i64) -> rusqlite::Result<Option<Alert>> {
    conn.prepare_cached(&format!("SELECT {COLUMNS} FROM alerts WHERE id = ?1"))?
        .query_row([id], alert_of)
        .optional()
}

/// An alert with its events and their deliveries.
pub fn get(conn: &Connection, id: i64) -> Result<Option<(Alert, Vec<Event>)>, StoreError> {
    let Some(alert) = alert(conn, id)? else {
        return Ok(None);
    };
    let mut events: Vec<Event> = conn
        .prepare(
            "SELECT id, event, at, who, note, value FROM alert_events WHERE alert = ?1 ORDER BY id",
        )?
        .query_map([id], |r| {
            Ok(Event {
                id: r.get(0)?,
                event: r.get(1)?,
                at: TimestampMs(r.get(2)?).to_rfc3339(),
                by: r.get(3)?,
                note: r.get(4)?,
                value: r.get(5)?,
                deliveries: Vec::new(),
            })
        })?
        .collect::<Result<_, _>>()?;
    let mut stmt = conn.prepare(
        "SELECT channel, attempts, delivered_at, last_error, next_attempt_at FROM alert_outbox \
         WHERE event = ?1 ORDER BY channel",
    )?;
    let mut log = conn.prepare(
        "SELECT at, status, code, error, body, digest FROM alert_attempts \
         WHERE event = ?1 AND channel = ?2 ORDER BY id",
    )?;
    for e in &mut events {
        e.deliveries = stmt
            .query_map([e.id], |r| {
                let time = |t: Option<i64>| t.map(|t| TimestampMs(t).to_rfc3339());
                let delivered_at = time(r.get(2)?);
                Ok(Delivery {
                    channel: r.get(0)?,
                    attempts: r.get(1)?,
                    next_attempt_at: if delivered_at.is_none() {
                        time(r.get(4)?)
                    } else {
                        None
                    },
                    delivered_at,
                    last_error: r.get(3)?,
                    log: Vec::new(),
                })
            })?
            .collect::<Result<_, _>>()?;
        for d in &mut e.deliveries {
            d.log = log
                .query_map(params![e.id, d.channel], |r| {
                    Ok(Logged {
                        at: TimestampMs(r.get(0)?).to_rfc3339(),
                        status: r.get(1)?,
                        code: r.get(2)?,
                        error: r.get(3)?,
                        body: r.get(4)?,
                        digest: r.get(5)?,
                    })
                })?
                .collect::<Result<_, _>>()?;
        }
    }
    Ok(Some((alert, events)))
}

/// An event waiting for a channel, with its alert.
#[derive(Debug, Clone)]
pub struct Pending {
    pub event: i64,
    pub kind: String,
    pub at: i64,
    /// Who acknowledged or resolved, and their note; the reading's value for an event the
    /// readings caused.
    pub by: Option<String>,
    pub note: Option<String>,
    pub value: Option<f64>,
    /// When the channel may try this event again, if it has tried before.
    pub next_attempt_at: Option<i64>,
    pub alert: Alert,
}

/// An event's columns, of `alert_events e`, as [`pending_of`] reads them.
pub(super) const EVENT_COLUMNS: &str = "e.id, e.event, e.at, e.alert, e.who, e.note, e.value";

/// The event of a row that starts with [`EVENT_COLUMNS`] (then `next_attempt_at`, when
/// `waiting`), with its alert; `None` if the alert is gone.
pub(super) fn pending_of(
    conn: &Connection,
    r: &rusqlite::Row<'_>,
    waiting: bool,
) -> rusqlite::Result<Option<Pending>> {
    let Some(alert) = alert_row(conn, r.get(3)?)? else {
        return Ok(None);
    };
    Ok(Some(Pending {
        event: r.get(0)?,
        kind: r.get(1)?,
        at: r.get(2)?,
        by: r.get(4)?,
        note: r.get(5)?,
        value: r.get(6)?,
        next_attempt_at: if waiting { r.get(7)? } else { None },
        alert,
    }))
}

/// The oldest events not yet delivered on `channel`; with `critical_only` (quiet hours), only
/// those of critical alerts.
pub fn pending(
    conn: &Connection,
    channel: &str,
    limit: usize,
    critical_only: bool,
) -> Result<Vec<Pending>, StoreError> {
    let rows: Vec<Option<Pending>> = conn
        .prepare_cached(&format!(
            "SELECT {EVENT_COLUMNS}, o.next_attempt_at \
             FROM alert_outbox o JOIN alert_events e ON e.id = o.event \
             WHERE o.channel = ?1 AND o.delivered_at IS NULL \
             AND (?3 = 0 OR e.alert IN (SELECT id FROM alerts WHERE severity = 'critical')) \
             ORDER BY e.id LIMIT ?2"
        ))?
        .query_map(params![channel, limit as i64, critical_only], |r| {
            pending_of(conn, r, true)
        })?
        .collect::<Result<_, _>>()?;
    Ok(rows.into_iter().flatten().collect())
}

/// How one delivery attempt went.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Attempt {
    /// The answer's status, where the channel has one (HTTP).
    pub status: Option<u16>,
    /// The service's own error code, where it answers with one (a robot's `errcode`).
    pub code: Option<i64>,
    /// Why it failed; `None` when delivered.
    pub error: Option<String>,
    /// The start of the answer's body.
    pub body: Option<String>,
    /// The service asked not to be tried again before this long (DingTalk's "too fast").
    pub retry_after: Option<std::time::Duration>,
}

/// One message a channel sent: the events it was for, and whether it was a digest of them.
#[derive(Debug, Clone, Copy)]
pub struct Sent<'a> {
    pub events: &'a [i64],
    pub digest: bool,
}

/// Records one attempt at a message on a channel, in the outbox and the attempt log of each
/// event it was for; an undelivered one is tried again no sooner than `next_attempt_at`.
pub fn attempted(
    conn: &mut Connection,
    channel: &str,
    sent: Sent<'_>,
    a: &Attempt,
    next_attempt_at: Option<i64>,
) -> Result<(), StoreError> {
    let now = TimestampMs::now().0;
    let delivered = a.error.is_none().then_some(now);
    let next = if delivered.is_some() {
        None
    } else {
        next_attempt_at
    };
    let digest = sent.digest.then_some(sent.events.len() as i64);
    let tx = conn.transaction()?;
    for &event in sent.events {
        tx.prepare_cached(
            "UPDATE alert_outbox SET attempts = attempts + 1, delivered_at = ?3, last_error = ?4, \
             next_attempt_at = ?5 WHERE event = ?1 AND channel = ?2",
        )?
        .execute(params![event, channel, delivered, a.error, next])?;
        tx.prepare_cached(
            "INSERT INTO alert_attempts (event, channel, at, status, code, error, body, digest) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?
        .execute(params![
            event, channel, now, a.status, a.code, a.error, a.body, digest
        ])?;
    }
    tx.commit()?;
    Ok(())
}

/// When `channel` sent the messages the service took since `since`, oldest first: the
/// attempts of one message are logged at one instant, so each time is one message.
pub fn delivered_since(
    conn: &Connection,
    channel: &str,
    since: i64,
) -> Result<Vec<i64>, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT DISTINCT at FROM alert_attempts \
             WHERE channel = ?1 AND at >= ?2 AND error IS NULL ORDER BY at",
        )?
        .query_map(params![channel, since], |r| r.get(0))?
        .collect::<Result<_, _>>()?)
}

/// Counts for `/metrics`, read when it is scraped: alerts by state, and notification attempts
/// by channel and outcome, with the events still waiting on each channel.
#[derive(Debug, Clone, Default)]
pub struct Census {
    pub alerts_by_state: Vec<(String, i64)>,
    /// `(channel, delivered, attempts)`.
    pub attempts: Vec<(String, bool, i64)>,
    pub pending: Vec<(String, i64)>,
}

pub fn census(conn: &Connection) -> Result<Census, StoreError> {
    let mut c = Census::default();
    let mut stmt = conn.prepare_cached("SELECT state, count(*) FROM alerts GROUP BY state")?;
    c.alerts_by_state = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    let mut stmt = conn.prepare_cached(
        "SELECT channel, error IS NULL, count(*) FROM alert_attempts GROUP BY 1, 2",
    )?;
    c.attempts = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    let mut stmt = conn.prepare_cached(
        "SELECT channel, count(*) FROM alert_outbox WHERE delivered_at IS NULL GROUP BY channel",
    )?;
    c.pending = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    Ok(c)
}

/// Opens the store-unwritable alert (`failing` is since when, and why) or resolves it (`None`).
/// Returns whether an alert changed.
pub fn store_alert(
    conn: &mut Connection,
    failing: Option<(i64, &str)>,
    now: i64,
) -> Result<bool, StoreError> {
    let rule = crate::alerts::rules::store_unwritable();
    let tx = conn.transaction()?;
    let changed = match failing {
        Some((since, error)) => {
            let subject = Subject {
                scope: "store",
                orchard: "",
                block: "",
                device: "",
                kind: "",
            };
            let firing = Firing {
                since,
                at: now,
                value: 0.0,
                threshold: 0.0,
            };
            let error = error.to_owned();
            let more = move |name: &str| (name == "error").then(|| Filled::Text(error.clone()));
            open(&tx, &rule, &subject, firing, more)?.is_some()
        }
        None => close(&tx, &rule.id, "store", now, None)?.is_some(),
    };
    tx.commit()?;
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::rules::parse;
    use crate::config::StoreSettings;
    use crate::model::Kind;

    /// A new store in a temporary directory, kept as long as the directory is.
    fn store() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let settings = StoreSettings {
            path: dir.path().join("o.db"),
            ..StoreSettings::default()
        };
        let c = crate::store::open_writer(&settings).unwrap();
        (dir, c)
    }

    fn series() -> SeriesKey {
        SeriesKey {
            orchard: "o".parse().unwrap(),
            block: "b".parse().unwrap(),
            device: "d".parse().unwrap(),
            kind: Kind::AirTemperature,
            depth_cm: None,
        }
    }

    #[test]
    fn a_rule_that_fires_again_and_again_becomes_one_unstable_alert_that_stays_open() {
        let (_dir, mut c) = store();
        set_channels(&mut c, &["mqtt".into()]).unwrap();
        let rules = crate::alerts::rules::built_in().unwrap();
        let rule = rules.iter().find(|r| r.id == "frost-warning").unwrap();
        // As shipped: more than 4 alerts of one scope within 6 h.
        assert_eq!(rule.unstable, (4, 6 * 3_600_000));
        let min = 60_000;
        let tx = c.transaction().unwrap();
        // Four frosts of twenty minutes each, an hour apart: four alerts, each resolved.
        for i in 0..4 {
            let at = i * 60 * min;
            fire(&tx, rule, &series(), at, at, -0.5).unwrap().unwrap();
            assert!(
                resolve(&tx, &rule.id, &series(), at + 20 * min, 1.5)
                    .unwrap()
                    .is_some()
            );
        }
        // The fifth is the unstable signal's: it does not resolve by itself.
        let fifth = fire(&tx, rule, &series(), 240 * min, 240 * min, -0.5)
            .unwrap()
            .unwrap();
        assert_eq!(
            resolve(&tx, &rule.id, &series(), 260 * min, 1.5).unwrap(),
            None
        );
        assert_eq!(
            fire(&tx, rule, &series(), 300 * min, 300 * min, -0.5).unwrap(),
            None
        );
        tx.commit().unwrap();
        let (alert, events) = get(&c, fifth).unwrap().unwrap();
        assert!(alert.unstable && alert.state == "firing");
        assert!(
            alert
                .action
                .en
                .starts_with("Unstable signal: this alert opened and closed 4 times in 6 h")
        );
        assert_eq!(events.len(), 1, "one notification, not a storm");
        // Staff resolve it; a frost long after is an ordinary alert again.
        act(
            &mut c,
            fifth,
            StaffAction::Resolve,
            "Li Wei",
            Some("fan relay fixed"),
        )
        .unwrap();
        let tx = c.transaction().unwrap();
        let later = fire(&tx, rule, &series(), 1000 * min, 1000 * min, -0.5)
            .unwrap()
            .unwrap();
        tx.commit().unwrap();
        assert!(!get(&c, later).unwrap().unwrap().0.unstable);
    }

    #[test]
    fn a_firing_alert_is_reminded_of_every_four_hours_until_someone_acknowledges_it() {
        let (_dir, mut c) = store();
        set_channels(&mut c, &["mqtt".into()]).unwrap();
        let rules = crate::alerts::rules::built_in().unwrap();
        let warning = rules.iter().find(|r| r.id == "frost-warning").unwrap();
        let tx = c.transaction().unwrap();
        let id = fire(&tx, warning, &series(), 0, 0, -0.5).unwrap().unwrap();
        tx.commit().unwrap();
        let opened: i64 = c
            .query_row("SELECT opened_at FROM alerts WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .unwrap();
        // The shipped default.
        let every = crate::config::AlertSettings::default().repeat_every;
        assert_eq!(every, std::time::Duration::from_secs(4 * 3600));
        let every = every.as_millis() as i64;
        let minute = 60_000;
        assert_eq!(remind(&mut c, every, opened + every - minute).unwrap(), 0);
        assert_eq!(remind(&mut c, every, opened + every).unwrap(), 1);
        assert_eq!(remind(&mut c, every, opened + every + minute).unwrap(), 0);
        assert_eq!(remind(&mut c, every, opened + 2 * every).unwrap(), 1);
        act(&mut c, id, StaffAction::Acknowledge, "Li Wei", None).unwrap();
        assert_eq!(remind(&mut c, every, opened + 5 * every).unwrap(), 0);
        let (_, events) = get(&c, id).unwrap().unwrap();
        let kinds: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
        assert_eq!(kinds, ["fired", "reminder", "reminder", "acknowledged"]);
        assert_eq!(events[1].deliveries[0].channel, "mqtt");
    }

    #[test]
    fn a_critical_alert_nobody_acknowledged_escalates_once_to_its_own_channels() {
        let (_dir, mut c) = store();
        set_channels(&mut c, &["mqtt".into()]).unwrap();
        let rules = crate::alerts::rules::built_in().unwrap();
        let warning = rules.iter().find(|r| r.id == "frost-warning").unwrap();
        let critical = rules.iter().find(|r| r.id == "frost-critical").unwrap();
        let other = SeriesKey {
            device: "e".parse().unwrap(),
            ..series()
        };
        let tx = c.transaction().unwrap();
        let w = fire(&tx, warning, &series(), 0, 0, -0.5).unwrap().unwrap();
        let acked = fire(&tx, critical, &other, 0, 0, -2.5).unwrap().unwrap();
        let left = fire(&tx, critical, &series(), 0, 0, -2.5).unwrap().unwrap();
        tx.commit().unwrap();
        act(&mut c, acked, StaffAction::Acknowledge, "Li Wei", None).unwrap();
        let managers = ["dingtalk:managers".to_owned()];
        let now = TimestampMs::now().0;
        // Not yet due; then due: only the unacknowledged critical one, and only once.
        assert_eq!(escalate(&mut c, 900_000, &managers, now).unwrap(), 0);
        assert_eq!(
            escalate(&mut c, 900_000, &managers, now + 900_000).unwrap(),
            1
        );
        assert_eq!(
            escalate(&mut c, 900_000, &managers, now + 1_800_000).unwrap(),
            0
        );
        let (_, events) = get(&c, left).unwrap().unwrap();
        let last = events.last().unwrap();
        assert_eq!(last.event, "escalated");
        let to: Vec<&str> = last.deliveries.iter().map(|d| d.channel.as_str()).collect();
        assert_eq!(to, ["dingtalk:managers"]);
        assert_eq!(get(&c, w).unwrap().unwrap().1.len(), 1);
    }

    #[test]
    fn in_quiet_hours_a_channel_is_offered_only_critical_alerts_and_the_rest_wait() {
        let (_dir, mut c) = store();
        set_channels(&mut c, &["webhook:ops".into()]).unwrap();
        let rules = crate::alerts::rules::built_in().unwrap();
        let warning = rules.iter().find(|r| r.id == "frost-warning").unwrap();
        let critical = rules.iter().find(|r| r.id == "frost-critical").unwrap();
        let tx = c.transaction().unwrap();
        fire(&tx, warning, &series(), 0, 600_000, -0.5).unwrap();
        fire(&tx, critical, &series(), 0, 900_000, -2.5).unwrap();
        tx.commit().unwrap();
        let rules_of = |quiet| -> Vec<String> {
            pending(&c, "webhook:ops", 10, quiet)
                .unwrap()
                .into_iter()
                .map(|p| p.alert.rule)
                .collect()
        };
        assert_eq!(rules_of(true), ["frost-critical"]);
        assert_eq!(rules_of(false), ["frost-warning", "frost-critical"]);
    }

    #[test]
    fn two_writers_firing_one_rule_for_one_scope_open_one_alert() {
        let dir = tempfile::tempdir().unwrap();
        let settings = StoreSettings {
            path: dir.path().join("o.db"),
            ..StoreSettings::default()
        };
        let mut a = crate::store::open_writer(&settings).unwrap();
        let mut b = crate::store::open_writer(&settings).unwrap();
        set_channels(&mut a, &["mqtt".into(), "webhook:ops".into()]).unwrap();
        let mut problems = Vec::new();
        let rule = parse("r.toml", crate::alerts::rules::CITRUS, &mut problems).remove(0);
        // Two connections, as the writer and a replay would be: the schema lets one in.
        let first = {
            let tx = a.transaction().unwrap();
            let id = fire(&tx, &rule, &series(), 0, 600_000, -1.0).unwrap();
            tx.commit().unwrap();
            id
        };
        let second = {
            let tx = b.transaction().unwrap();
            let id = fire(&tx, &rule, &series(), 0, 1_200_000, -1.5).unwrap();
            tx.commit().unwrap();
            id
        };
        assert!(first.is_some());
        assert_eq!(second, None, "one open alert per rule and scope");
        let count = |sql: &str| a.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap();
        assert_eq!(count("SELECT count(*) FROM alerts"), 1);
        // One event, delivered to each channel of the run.
        assert_eq!(count("SELECT count(*) FROM alert_outbox"), 2);
        // Resolved, the rule may fire again: a new alert naming the last.
        {
            let tx = b.transaction().unwrap();
            assert_eq!(
                resolve(&tx, &rule.id, &series(), 1_800_000, 2.0).unwrap(),
                first
            );
            let again = fire(&tx, &rule, &series(), 2_400_000, 3_000_000, -1.0).unwrap();
            tx.commit().unwrap();
            let (alert, _) = get(&a, again.unwrap()).unwrap().unwrap();
            assert_eq!(alert.previous, first);
        }
        assert_eq!(
            act(&mut a, 99, StaffAction::Acknowledge, "x", None).map_err(|e| e.to_string()),
            Err("no alert 99".to_owned())
        );
    }

    #[test]
    fn a_digest_is_one_message_for_each_of_its_events_and_a_failure_says_when_to_try_again() {
        let (_dir, mut c) = store();
        let channel = "dingtalk:field".to_owned();
        set_channels(&mut c, std::slice::from_ref(&channel)).unwrap();
        let mut problems = Vec::new();
        let rule = parse("r.toml", crate::alerts::rules::CITRUS, &mut problems).remove(0);
        let tx = c.transaction().unwrap();
        for device in ["d1", "d2", "d3"] {
            let s = SeriesKey {
                device: device.parse().unwrap(),
                ..series()
            };
            fire(&tx, &rule, &s, 0, 600_000, -1.0).unwrap();
        }
        tx.commit().unwrap();
        let events: Vec<i64> = pending(&c, &channel, 10, false)
            .unwrap()
            .iter()
            .map(|p| p.event)
            .collect();
        assert_eq!(events.len(), 3);

        let refused = Attempt {
            status: Some(200),
            code: Some(130101),
            error: Some("too fast".into()),
            ..Attempt::default()
        };
        let due = TimestampMs::now().0 + 600_000;
        let first = Sent {
            events: &events[..1],
            digest: false,
        };
        attempted(&mut c, &channel, first, &refused, Some(due)).unwrap();
        let waiting = pending(&c, &channel, 10, false).unwrap();
        assert_eq!(waiting[0].next_attempt_at, Some(due));
        assert_eq!(waiting[1].next_attempt_at, None);

        let taken = Attempt {
            status: Some(200),
            code: Some(0),
            ..Attempt::default()
        };
        let digest = Sent {
            events: &events,
            digest: true,
        };
        attempted(&mut c, &channel, digest, &taken, None).unwrap();
        assert!(pending(&c, &channel, 10, false).unwrap().is_empty());
        // Three events, one message: the window after a restart counts it once.
        assert_eq!(delivered_since(&c, &channel, 0).unwrap().len(), 1);
        let (_, evs) = get(&c, waiting[0].alert.id).unwrap().unwrap();
        let d = &evs[0].deliveries[0];
        assert_eq!(d.next_attempt_at, None, "delivered");
        assert_eq!(d.log.len(), 2);
        assert_eq!((d.log[0].code, d.log[0].digest), (Some(130101), None));
        assert_eq!((d.log[1].code, d.log[1].digest), (Some(0), Some(3)));
    }
}
