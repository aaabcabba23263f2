//! The writer: the one thread that commits to the embedded store.
//!
//! It takes decoded messages from a bounded queue, commits whatever has gathered as one
//! transaction, and only then hands the messages' acknowledgement tokens back. A failed
//! commit is retried and nothing is acknowledged, so the broker redelivers whatever a crash
//! interrupts; the `(series, ts)` key turns redeliveries into no-ops.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rusqlite::{Connection, OptionalExtension, Transaction, params};
use tokio::sync::mpsc;

use super::rollups::Fold;
use super::series::Series;
use super::{StoreError, WriteGate};
use crate::alerts::absence::{SharedActivity, remember_gateway};
use crate::alerts::rules::Rule;
use crate::alerts::store as alerts;
use crate::alerts::threshold::{Change, Progress};
use crate::harvest::{self, store::Stored};
use crate::health::Health;
use crate::metrics::Metrics;
use crate::model::{Flags, Ident, Reading, SeriesKey, TimestampMs};
use crate::validate::Rejection;

/// Payload bytes kept for a rejected message whose size was the problem.
const KEPT_OF_OVERSIZED: usize = 1024;

/// One MQTT message after decoding and validation: what to store, what to quarantine.
#[derive(Debug)]
pub struct Envelope {
    /// The configured source the topic matched, when one did.
    pub source: Option<String>,
    pub topic: String,
    pub received_at: TimestampMs,
    /// The device the message is from, when the topic or payload says.
    pub device: Option<String>,
    /// The LoRaWAN gateway that heard it best, when the uplink says.
    pub gateway: Option<String>,
    pub readings: Vec<Reading>,
    pub rejections: Vec<Rejection>,
    /// The raw payload, kept only when something in it was rejected.
    pub payload: Option<Bytes>,
    /// How often a device normally reports, for the `after_gap` health flag...
    pub expected_interval: Duration,
    /// ...unless its registry entry says otherwise: one entry per device of the message
    /// that has its own interval (a SenML pack can name several).
    pub device_intervals: Vec<(Ident, Duration)>,
    /// A harvest lot, checked and graded, when the message was one.
    pub lot: Option<Box<crate::harvest::Incoming>>,
}

impl Envelope {
    /// How often the device of `r` normally reports.
    pub fn interval_of(&self, r: &Reading) -> Duration {
        self.device_intervals
            .iter()
            .find(|(d, _)| *d == r.series.device)
            .map_or(self.expected_interval, |(_, i)| *i)
    }
}

/// Progress the watchdog can see: when the writer started its current commit, or 0 when idle.
#[derive(Debug, Default)]
pub struct Heartbeat {
    busy_since_ms: AtomicI64,
    /// Since when commits fail, and the last error: a full disk, a read-only store.
    failing: std::sync::Mutex<Option<(i64, String)>>,
}

impl Heartbeat {
    /// Since when (ms) and why commits have been failing, while they do.
    pub fn failing(&self) -> Option<(i64, String)> {
        self.failing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set_failing(&self, error: Option<String>) {
        let mut f = self.failing.lock().unwrap_or_else(|e| e.into_inner());
        *f = match (f.take(), error) {
            (_, None) => None,
            (Some((since, _)), Some(e)) => Some((since, e)),
            (None, Some(e)) => Some((TimestampMs::now().0, e)),
        };
    }

    /// True unless a commit has been running for longer than `limit`.
    pub fn is_healthy(&self, limit: Duration) -> bool {
        let since = self.busy_since_ms.load(Ordering::Relaxed);
        since == 0 || TimestampMs::now().0 - since < limit.as_millis() as i64
    }
}

/// What one committed batch contained.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BatchOutcome {
    pub accepted: u64,
    pub duplicates: u64,
    pub quarantined: u64,
    /// Readings quarantined as `conflicting_value` (also in `quarantined`).
    pub conflicts: u64,
    /// Alerts opened or resolved.
    pub alert_changes: u64,
    /// Harvest lots stored, and lots the store already had (redelivered).
    pub lots: u64,
    pub lot_duplicates: u64,
}

pub struct Writer {
    conn: Connection,
    /// Each series' id and health state.
    series: Series,
    health: Health,
    /// Record each new reading in the forwarder's outbox.
    outbox: bool,
    /// Maintain the hourly and daily rollups (`aggregate.rollups`).
    rollups: bool,
    /// Local days for the daily rollups start at this offset from UTC.
    utc_offset_ms: i64,
    metrics: Arc<Metrics>,
    heartbeat: Arc<Heartbeat>,
    max_batch_readings: usize,
    /// The alert rules, evaluated on each new reading in the transaction that stores it.
    rules: Arc<Vec<Rule>>,
    /// New rules, on SIGHUP.
    reloaded: Option<tokio::sync::watch::Receiver<Arc<Vec<Rule>>>>,
    progress: RuleProgress,
    /// Told after a commit that opened or resolved an alert: the notifiers have work.
    alerts_changed: Option<Arc<tokio::sync::watch::Sender<u64>>>,
    /// What was last heard of each device, for the absence rules.
    activity: Option<SharedActivity>,
    /// Taken around each transaction when other connections of this process write too.
    gate: Option<WriteGate>,
    /// `store.max_bytes`; marked changed until applied to the connection.
    max_bytes: Option<tokio::sync::watch::Receiver<u64>>,
}

impl Writer {
    pub fn new(
        conn: Connection,
        metrics: Arc<Metrics>,
        heartbeat: Arc<Heartbeat>,
        max_batch_readings: usize,
        stuck_after: u32,
    ) -> Self {
        Self {
            conn,
            series: Series::default(),
            health: Health::new(stuck_after),
            outbox: false,
            rollups: true,
            utc_offset_ms: 0,
            metrics,
            heartbeat,
            max_batch_readings,
            rules: Arc::default(),
            reloaded: None,
            progress: RuleProgress::default(),
            alerts_changed: None,
            activity: None,
            gate: None,
            max_bytes: None,
        }
    }

    /// Take turns with this process's other writing connections through `gate`.
    pub fn with_gate(mut self, gate: WriteGate) -> Self {
        self.gate = Some(gate);
        self
    }

    /// Evaluate the alert rules `rules` holds (taking new ones between batches), and tell
    /// `changed` after a commit that fired or resolved an alert.
    pub fn with_rules(
        mut self,
        mut rules: tokio::sync::watch::Receiver<Arc<Vec<Rule>>>,
        changed: Arc<tokio::sync::watch::Sender<u64>>,
    ) -> Self {
        self.rules = rules.borrow_and_update().clone();
        self.reloaded = Some(rules);
        self.alerts_changed = Some(changed);
        self
    }

    /// Note in `activity` what is heard of each device, before each commit.
    pub fn with_activity(mut self, activity: SharedActivity) -> Self {
        self.activity = Some(activity);
        self
    }

    /// Takes reloaded rules. Progress is kept in the store by rule id, so a rule whose id
    /// stays goes on where it was; the in-memory part is read again.
    fn take_reloaded_rules(&mut self) {
        if let Some(rx) = &mut self.reloaded
            && rx.has_changed().unwrap_or(false)
        {
            self.rules = rx.borrow_and_update().clone();
            self.progress.clear();
            tracing::info!(rules = self.rules.len(), "writer: alert rules reloaded");
        }
    }

    /// Also record every new reading for the InfluxDB forwarder.
    pub fn with_outbox(mut self, on: bool) -> Self {
        self.outbox = on;
        self
    }

    /// Daily rollups follow local days at this offset from UTC.
    pub fn with_utc_offset(mut self, offset_ms: i64) -> Self {
        self.utc_offset_ms = offset_ms;
        self
    }

    /// `store.max_bytes`, which a reload may change.
    pub fn with_max_bytes(mut self, mut max_bytes: tokio::sync::watch::Receiver<u64>) -> Self {
        // Applied at the first commit, as after a reload.
        max_bytes.mark_changed();
        self.max_bytes = Some(max_bytes);
        self
    }

    /// Sets SQLite's page limit from `store.max_bytes` when it changed (0: SQLite's own).
    fn apply_max_bytes(&mut self) {
        let Some(rx) = &mut self.max_bytes else {
            return;
        };
        if !rx.has_changed().unwrap_or(false) {
            return;
        }
        let max = *rx.borrow_and_update();
        let pages = |conn: &rusqlite::Connection| -> rusqlite::Result<i64> {
            let page: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
            let limit = if max == 0 {
                4_294_967_294
            } else {
                (max as i64 / page).max(1)
            };
            conn.query_row(&format!("PRAGMA max_page_count = {limit}"), [], |r| {
                r.get(0)
            })
        };
        match pages(&self.conn) {
            Ok(n) => tracing::info!(max_bytes = max, pages = n, "store size limit set"),
            Err(e) => tracing::error!(error = %e, "store.max_bytes could not be applied"),
        }
    }

    /// Maintain the rollups (the default), or not.
    pub fn with_rollups(mut self, on: bool) -> Self {
        self.rollups = on;
        self
    }

    /// Runs until the queue is closed and drained. Each committed batch's tokens go to `done`,
    /// in the order the messages arrived.
    pub fn run<A: Send>(
        mut self,
        mut queue: mpsc::Receiver<(Envelope, A)>,
        done: mpsc::UnboundedSender<Vec<A>>,
    ) {
        while let Some(first) = queue.blocking_recv() {
            let mut readings = first.0.readings.len();
            let mut batch = vec![first];
            while readings < self.max_batch_readings {
                match queue.try_recv() {
                    Ok(next) => {
                        readings += next.0.readings.len();
                        batch.push(next);
                    }
                    Err(_) => break,
                }
            }
            let (envelopes, tokens): (Vec<Envelope>, Vec<A>) = batch.into_iter().unzip();
            self.commit_until_done(&envelopes);
            // The receiver is gone only when ingest has stopped; the broker redelivers then.
            let _ = done.send(tokens);
        }
        tracing::debug!("writer: queue closed, all batches committed");
    }

    /// Commits, retrying with back-off: a full disk or a locked file must stall, not lose.
    fn commit_until_done(&mut self, envelopes: &[Envelope]) {
        let mut delay = Duration::from_millis(100);
        loop {
            self.apply_max_bytes();
            match self.commit(envelopes) {
                Ok(_) => {
                    self.heartbeat.set_failing(None);
                    self.metrics.store_writable.set(1);
                    return;
                }
                Err(e) => {
                    self.heartbeat.set_failing(Some(e.to_string()));
                    self.metrics.store_writable.set(0);
                    // Forget what the failed transaction may have taught: re-learn from the store.
                    self.series = Series::default();
                    self.progress.clear();
                    tracing::error!(error = %e, retry_in = ?delay, "store commit failed; nothing is acknowledged until it succeeds");
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
            }
        }
    }

    /// Commits one batch in one transaction.
    pub fn commit(&mut self, envelopes: &[Envelope]) -> Result<BatchOutcome, StoreError> {
        let started = Instant::now();
        self.heartbeat
            .busy_since_ms
            .store(TimestampMs::now().0, Ordering::Relaxed);
        let result = self.commit_inner(envelopes);
        self.heartbeat.busy_since_ms.store(0, Ordering::Relaxed);
        let outcome = result?;
        if outcome.alert_changes > 0
            && let Some(n) = &self.alerts_changed
        {
            n.send_modify(|generation| *generation += 1);
        }

        let now = TimestampMs::now();
        let m = &self.metrics;
        m.commit_seconds.observe(started.elapsed().as_secs_f64());
        m.batch_readings
            .observe((outcome.accepted + outcome.duplicates) as f64);
        m.readings_accepted.inc_by(outcome.accepted);
        m.readings_duplicate.inc_by(outcome.duplicates);
        m.lots_accepted.inc_by(outcome.lots);
        m.lots_duplicate.inc_by(outcome.lot_duplicates);
        for _ in 0..outcome.conflicts {
            m.reject(crate::validate::Reason::ConflictingValue);
        }
        for env in envelopes {
            for r in &env.readings {
                let age = (now.0 - r.ts.0).max(0) as f64 / 1000.0;
                m.reading_age_at_commit_seconds.observe(age);
            }
            for rejection in &env.rejections {
                m.reject(rejection.reason);
            }
        }
        Ok(outcome)
    }

    fn commit_inner(&mut self, envelopes: &[Envelope]) -> Result<BatchOutcome, StoreError> {
        self.take_reloaded_rules();
        let _turn = self.gate.as_ref().map(WriteGate::blocking);
        // Progress the absence task changed (no data opened or closed an alert) is read
        // again from the store.
        if let Some(activity) = &self.activity {
            let stale = activity
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take_stale();
            for series in stale {
                self.progress.forget(series);
            }
        }
        let tx = self.conn.transaction()?;
        let mut outcome = BatchOutcome::default();
        let mut rollups = Fold::default();
        let mut conflicts = Vec::new();
        let mut late = Late::default();
        for env in envelopes {
            for r in &env.readings {
                let slot = self.series.get(&tx, r)?;
                let series = slot.id;
                if slot.health.is_none() {
                    slot.health =
                        self.health
                            .seed(&newest(&tx, series, self.health.stuck_after())?);
                }
                let interval = env.interval_of(r);
                let flags =
                    self.health
                        .judge(&mut slot.health, r.series.kind, r.ts, r.value, interval);
                match insert_reading(&tx, series, r, flags)? {
                    Inserted::New => {
                        outcome.accepted += 1;
                        if !self.rules.is_empty() {
                            let new = NewReading {
                                series,
                                reading: r,
                                gap_limit_ms: 2 * interval.as_millis() as i64,
                                flags,
                            };
                            outcome.alert_changes += evaluate(
                                &self.rules,
                                &mut self.progress,
                                &mut late,
                                &tx,
                                &new,
                                self.utc_offset_ms,
                            )?;
                        }
                        if self.rollups {
                            rollups.add(series, r.ts, r.value, self.utc_offset_ms);
                        }
                        if self.outbox {
                            super::outbox::add(&tx, series, r.ts, env.received_at)?;
                        }
                    }
                    Inserted::Duplicate => outcome.duplicates += 1,
                    Inserted::Conflict(stored) => conflicts.push(conflict(r, stored)),
                }
            }
            if let Some(incoming) = &env.lot {
                let arrived = harvest::store::Arrived {
                    via: "mqtt",
                    from: env.topic.clone(),
                    at: env.received_at,
                };
                match harvest::store::insert(&tx, &incoming.lot, &incoming.graded, &arrived)? {
                    Stored::New => outcome.lots += 1,
                    Stored::Same => outcome.lot_duplicates += 1,
                    Stored::Conflict(kept) => conflicts.push(lot_conflict(&incoming.lot, &kept)),
                }
            }
            if !env.rejections.is_empty() || !conflicts.is_empty() {
                quarantine(&tx, env, &conflicts)?;
                outcome.quarantined += (env.rejections.len() + conflicts.len()) as u64;
                outcome.conflicts += conflicts.len() as u64;
                conflicts.clear();
            }
        }
        if !late.0.is_empty() {
            outcome.alert_changes += rejudge(
                &self.rules,
                &mut self.progress,
                late,
                &tx,
                self.utc_offset_ms,
            )?;
        }
        rollups.write(&tx)?;
        // Noted holding the write lock, before the commit: whoever next takes the lock finds
        // every committed reading in the activity.
        let blocks = match &self.activity {
            Some(activity) => note_activity(&tx, activity, envelopes)?,
            None => Vec::new(),
        };
        tx.commit()?;
        // And noted again after it: a daily judgement that read the store between the two
        // did not see these readings, and must judge their blocks again.
        if let Some(activity) = &self.activity
            && !blocks.is_empty()
        {
            activity
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .committed(&blocks, TimestampMs::now().0);
        }
        Ok(outcome)
    }
}

/// Notes each device of `envelopes` as heard, and stores the gateway of any heard through
/// another one than before. Returns the blocks heard of.
fn note_activity(
    tx: &Transaction<'_>,
    activity: &SharedActivity,
    envelopes: &[Envelope],
) -> Result<Vec<(Ident, Ident)>, StoreError> {
    let mut blocks: Vec<(Ident, Ident)> = Vec::new();
    let mut a = activity.lock().unwrap_or_else(|e| e.into_inner());
    for env in envelopes {
        // A message's readings are mostly of one device: note each run of one device once,
        // by its newest reading.
        for run in env
            .readings
            .chunk_by(|x, y| x.series.device == y.series.device)
        {
            let Some(newest) = run.iter().max_by_key(|r| r.ts) else {
                continue;
            };
            let s = &newest.series;
            if !blocks.iter().any(|(o, b)| *o == s.orchard && *b == s.block) {
                blocks.push((s.orchard.clone(), s.block.clone()));
            }
            if a.heard(newest, env.received_at.0, env.gateway.as_deref())
                && let Some(g) = &env.gateway
            {
                remember_gateway(tx, &newest.series.device, g, env.received_at.0)?;
            }
        }
    }
    Ok(blocks)
}

/// A reading the transaction just inserted, as the alert rules see it.
#[derive(Clone, Copy)]
struct NewReading<'a> {
    series: i64,
    reading: &'a Reading,
    /// Readings further apart leave the condition unknown: twice the device's interval.
    gap_limit_ms: i64,
    flags: Flags,
}

/// What the writer knows of the rules on the series it has judged: each series' newest
/// reading, and the progress of each rule and series that is not quiet (absent: quiet). Kept
/// this sparse because it is per series of the fleet: at 10 000 devices a map of every rule's
/// progress with its own newest time took 7.5 MiB, this one under 1.
#[derive(Default)]
struct RuleProgress {
    newest: HashMap<i64, i64>,
    moving: HashMap<(usize, i64), Progress>,
}

impl RuleProgress {
    fn clear(&mut self) {
        self.newest.clear();
        self.moving.clear();
    }

    /// The series is read from the store again at its next reading.
    fn forget(&mut self, series: i64) {
        self.newest.remove(&series);
        self.moving.retain(|(_, s), _| *s != series);
    }

    /// Notes where rule `rule` stands on `series`, and a newest reading of it.
    fn set(&mut self, rule: usize, series: i64, p: Progress, newest: Option<i64>) {
        if p == Progress::Quiet {
            self.moving.remove(&(rule, series));
        } else {
            self.moving.insert((rule, series), p);
        }
        if let Some(ts) = newest {
            let at = self.newest.entry(series).or_insert(ts);
            *at = (*at).max(ts);
        }
    }
}

/// Per rule and series that a batch brought late readings of (older than the series' newest):
/// the oldest of them, the series and its gap limit. Judged again once the batch is in.
#[derive(Default)]
struct Late(HashMap<(usize, i64), (i64, SeriesKey, i64)>);

impl Late {
    fn note(&mut self, rule: usize, new: &NewReading<'_>) {
        let ts = new.reading.ts.0;
        self.0
            .entry((rule, new.series))
            .and_modify(|(oldest, _, _)| *oldest = (*oldest).min(ts))
            .or_insert_with(|| (ts, new.reading.series.clone(), new.gap_limit_ms));
    }
}

/// Moves every rule that watches the reading's series on by the reading; returns how many
/// alerts it opened or resolved. A reading older than the series' newest is noted in `late`,
/// whose windows [`rejudge`] judges again after the batch.
fn evaluate(
    rules: &[Rule],
    progress: &mut RuleProgress,
    late: &mut Late,
    tx: &Transaction<'_>,
    new: &NewReading<'_>,
    utc_offset_ms: i64,
) -> Result<u64, StoreError> {
    let NewReading {
        series,
        reading: r,
        gap_limit_ms,
        flags,
    } = *new;
    let s = &r.series;
    let mut changes = 0;
    // Asked once: a series new to the writer is new to every rule, even after the first
    // rule has noted it.
    let known = progress.newest.get(&series).copied();
    for (i, rule) in rules.iter().enumerate() {
        if !rule.applies(s.kind, &s.orchard, &s.block, &s.device) {
            continue;
        }
        // Needed only when the store is asked; most readings of a known series never are.
        let scope = || alerts::scope_of(s);
        let (p, last) = match known {
            Some(newest) => (
                progress
                    .moving
                    .get(&(i, series))
                    .copied()
                    .unwrap_or(Progress::Quiet),
                Some(newest),
            ),
            None => match alerts::progress(tx, &rule.id, &scope())? {
                Some(p) => (p, newest_but(tx, series, r.ts.0)?),
                // A rule new to this series (just added, or orchardd's first start with it)
                // starts from the series' recent readings, this one included: a condition
                // that already holds is not made to wait for readings still to come.
                None => {
                    let from = r.ts.0 - reach(rule, gap_limit_ms);
                    let (p, last, fired) = replay(
                        tx,
                        rule,
                        series,
                        s,
                        from,
                        Progress::Quiet,
                        gap_limit_ms,
                        utc_offset_ms,
                    )?;
                    // No stored progress means quiet; store it only when the replay found
                    // more, so that a restart does not open the same alerts again.
                    if p != Progress::Quiet || fired > 0 {
                        alerts::save_progress(tx, &rule.id, &scope(), &p)?;
                    }
                    changes += fired;
                    progress.set(i, series, p, last);
                    continue;
                }
            },
        };
        if last.is_some_and(|l| r.ts.0 <= l) {
            late.note(i, new);
            progress.set(i, series, p, last);
            continue;
        }
        // Staff may have resolved the alert meanwhile: then the rule starts counting afresh.
        let p = match p {
            Progress::Firing { .. } | Progress::Clearing { .. }
                if !alerts::is_open(tx, &rule.id, &scope())? =>
            {
                Progress::Quiet
            }
            p => p,
        };
        let Some(measured) = measure(tx, rule, series, r.ts.0, r.value, flags, gap_limit_ms)?
        else {
            progress.set(i, series, p, Some(r.ts.0));
            continue;
        };
        let fed = rule.input(r.ts.0, measured, utc_offset_ms);
        let (next, change) = rule.threshold.step(p, last, r.ts.0, fed, gap_limit_ms);
        if next != p {
            alerts::save_progress(tx, &rule.id, &scope(), &next)?;
        }
        changes += u64::from(apply(tx, rule, s, change, r.ts.0, measured)?);
        progress.set(i, series, next, Some(r.ts.0));
    }
    Ok(changes)
}

/// Judges again the window of every rule and series a batch brought late readings of: the
/// rule is stepped through the stored readings from its longest duration before the oldest
/// late one to the newest, so a late reading that completes (or breaks) a duration counts as
/// though it had come in order. Idempotent: judging the same readings again changes nothing.
///
/// What staff were told stands. An open alert stays open until its clear condition holds, and
/// a resolved one is not opened again for the same episode: the replay opens alerts only after
/// the reading time the scope's last alert was resolved at.
fn rejudge(
    rules: &[Rule],
    progress: &mut RuleProgress,
    late: Late,
    tx: &Transaction<'_>,
    utc_offset_ms: i64,
) -> Result<u64, StoreError> {
    let mut changes = 0;
    for ((i, series), (oldest, key, gap_limit_ms)) in late.0 {
        let rule = &rules[i];
        let scope = alerts::scope_of(&key);
        let from = oldest - reach(rule, gap_limit_ms);
        // Firing already when the window opens: the replay may find its clear condition.
        let start = match alerts::open_since(tx, &rule.id, &scope)? {
            Some(since) if since < from => Progress::Firing { since },
            _ => Progress::Quiet,
        };
        let (p, last, n) = replay(
            tx,
            rule,
            series,
            &key,
            from,
            start,
            gap_limit_ms,
            utc_offset_ms,
        )?;
        changes += n;
        let p = match (alerts::open_since(tx, &rule.id, &scope)?, p) {
            (Some(since), Progress::Quiet | Progress::Entering { .. }) => {
                Progress::Firing { since }
            }
            (None, Progress::Firing { .. } | Progress::Clearing { .. }) => Progress::Quiet,
            (_, p) => p,
        };
        alerts::save_progress(tx, &rule.id, &scope, &p)?;
        progress.set(i, series, p, last);
    }
    Ok(changes)
}

/// How far back of a reading a rule's judgement of it reaches: its longest duration and a
/// gap limit.
fn reach(rule: &Rule, gap_limit_ms: i64) -> i64 {
    let t = &rule.threshold;
    t.enter_for_ms.max(t.clear_for_ms) + gap_limit_ms
}

/// Steps `rule` through the stored readings of `series` from `from` on, starting at `p`, as
/// though it had watched them, opening and resolving alerts as it goes, except that nothing
/// opens at or before the reading time the scope's last alert was resolved at (that episode
/// is over). Returns where that leaves the rule, the newest reading's time, and the alerts it
/// opened or resolved. Reads the rows one at a time: a long window costs time, not memory.
#[allow(clippy::too_many_arguments)]
fn replay(
    tx: &Transaction<'_>,
    rule: &Rule,
    series: i64,
    key: &SeriesKey,
    from: i64,
    mut p: Progress,
    gap_limit_ms: i64,
    utc_offset_ms: i64,
) -> Result<(Progress, Option<i64>, u64), StoreError> {
    let over = alerts::resolved_until(tx, &rule.id, &alerts::scope_of(key))?;
    let mut stmt = tx.prepare_cached(
        "SELECT ts, value, flags FROM readings WHERE series = ?1 AND ts >= ?2 ORDER BY ts",
    )?;
    let mut rows = stmt.query(params![series, from])?;
    let (mut last, mut changes) = (None, 0);
    while let Some(row) = rows.next()? {
        let (ts, value, flags): (i64, f64, u8) = (row.get(0)?, row.get(1)?, row.get(2)?);
        let Some(measured) = measure(tx, rule, series, ts, value, Flags(flags), gap_limit_ms)?
        else {
            last = Some(ts);
            continue;
        };
        let fed = rule.input(ts, measured, utc_offset_ms);
        let (next, change) = rule.threshold.step(p, last, ts, fed, gap_limit_ms);
        let change = change.filter(|c| match c {
            Change::Fire { .. } => over.is_none_or(|over| ts > over),
            Change::Resolve { .. } => true,
        });
        changes += u64::from(apply(tx, rule, key, change, ts, measured)?);
        (p, last) = (next, Some(ts));
    }
    Ok((p, last, changes))
}

/// What `rule` measures of the reading `(ts, value)` of `series`: the value; for a stuck rule
/// 1 if the reading was flagged stuck, else 0; for a rate rule the change per hour, `None`
/// when no earlier reading is close enough to give one.
fn measure(
    tx: &Transaction<'_>,
    rule: &Rule,
    series: i64,
    ts: i64,
    value: f64,
    flags: Flags,
    gap_limit_ms: i64,
) -> Result<Option<f64>, StoreError> {
    Ok(match rule.rate_over_ms {
        None if rule.stuck => Some(f64::from(u8::from(flags.contains(Flags::STUCK)))),
        None => Some(value),
        Some(over) => rate_per_hour(tx, series, ts, value, over, gap_limit_ms)?,
    })
}

/// The time of the series' newest reading other than the one at `ts`.
fn newest_but(tx: &Transaction<'_>, series: i64, ts: i64) -> Result<Option<i64>, StoreError> {
    Ok(tx
        .prepare_cached(
            "SELECT ts FROM readings WHERE series = ?1 AND ts != ?2 ORDER BY ts DESC LIMIT 1",
        )?
        .query_row(params![series, ts], |row| row.get(0))
        .optional()?)
}

/// The change per hour of the series from its reading at least `over_ms` before `(ts, value)`
/// to it; `None` when there is none close enough (within `over_ms` and a gap limit).
fn rate_per_hour(
    tx: &Transaction<'_>,
    series: i64,
    ts: i64,
    value: f64,
    over_ms: i64,
    gap_limit_ms: i64,
) -> Result<Option<f64>, StoreError> {
    let before: Option<(i64, f64)> = tx
        .prepare_cached(
            "SELECT ts, value FROM readings WHERE series = ?1 AND ts <= ?2 ORDER BY ts DESC LIMIT 1",
        )?
        .query_row(params![series, ts - over_ms], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })
        .optional()?;
    Ok(before
        .filter(|(t, _)| ts - t <= over_ms + gap_limit_ms)
        .map(|(t, v)| (value - v) / ((ts - t) as f64 / 3_600_000.0)))
}

/// Opens or resolves the alert a reading `(ts, value)` of `series` changed; true if it did.
fn apply(
    tx: &Transaction<'_>,
    rule: &Rule,
    series: &SeriesKey,
    change: Option<Change>,
    ts: i64,
    value: f64,
) -> Result<bool, StoreError> {
    Ok(match change {
        Some(Change::Fire { since }) => alerts::fire(tx, rule, series, since, ts, value)?.is_some(),
        Some(Change::Resolve { .. }) => alerts::resolve(tx, &rule.id, series, ts, value)?.is_some(),
        None => false,
    })
}

/// What became of a reading offered to the store.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Inserted {
    New,
    /// The store had this very reading: a redelivery.
    Duplicate,
    /// The store had another value for this series and time, given here; it is kept.
    Conflict(f64),
}

/// Inserts one reading unless the store has one for its series and time already.
pub(crate) fn insert_reading(
    tx: &Transaction<'_>,
    series: i64,
    r: &Reading,
    flags: Flags,
) -> Result<Inserted, StoreError> {
    let inserted = tx
        .prepare_cached(
            "INSERT OR IGNORE INTO readings (series, ts, value, flags) VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![series, r.ts.0, r.value, flags.0])?;
    if inserted == 1 {
        return Ok(Inserted::New);
    }
    let stored: f64 = tx
        .prepare_cached("SELECT value FROM readings WHERE series = ?1 AND ts = ?2")?
        .query_row(params![series, r.ts.0], |row| row.get(0))?;
    // The same payload decodes to the same bits; a unit conversion may differ in the last.
    let same = (stored - r.value).abs() <= 1e-9 * stored.abs().max(1.0);
    Ok(if same {
        Inserted::Duplicate
    } else {
        Inserted::Conflict(stored)
    })
}

/// The quarantine entry of a reading whose series and time hold another value.
pub(crate) fn conflict(r: &Reading, stored: f64) -> Rejection {
    let s = &r.series;
    let depth = s
        .depth_cm
        .map(|d| format!(" at {d} cm"))
        .unwrap_or_default();
    Rejection {
        reason: crate::validate::Reason::ConflictingValue,
        detail: format!(
            "{}{depth} of {} at {}: {} {unit} differs from the {stored} {unit} stored for that time, which is kept (two fields mapped to one kind, or a re-sent changed value)",
            s.kind,
            s.device,
            r.ts.to_rfc3339(),
            r.value,
            unit = s.kind.unit(),
        ),
        device: Some(s.device.to_string()),
    }
}

/// A lot id the store already holds with other content: the stored lot is kept.
fn lot_conflict(new: &harvest::lot::Lot, kept: &harvest::lot::Lot) -> Rejection {
    Rejection::new(
        crate::validate::Reason::ConflictingValue,
        format!(
            "lot {} is already stored with other content (harvested {} in {}/{}, {} kg), which is kept; give the new lot its own lot_id",
            new.lot_id, kept.harvest_date, kept.orchard, kept.block, kept.net_weight_kg
        ),
    )
}

/// The newest `n` readings of a series, newest first, to seed its health state.
fn newest(tx: &Transaction<'_>, series: i64, n: u32) -> Result<Vec<(i64, f64)>, StoreError> {
    let mut stmt = tx.prepare_cached(
        "SELECT ts, value FROM readings WHERE series = ?1 ORDER BY ts DESC LIMIT ?2",
    )?;
    let rows = stmt
        .query_map(params![series, n], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}

/// Quarantines the envelope's rejections and `more` found while storing it, with its payload.
pub(crate) fn quarantine(
    tx: &Transaction<'_>,
    env: &Envelope,
    more: &[Rejection],
) -> Result<(), StoreError> {
    let payload = env.payload.as_deref().unwrap_or_default();
    // Keep a sample, not all of it, of what is too large or a flood.
    let oversized = env.rejections.iter().any(|r| {
        matches!(
            r.reason,
            crate::validate::Reason::PayloadTooLarge | crate::validate::Reason::RateLimited
        )
    });
    let kept = if oversized {
        &payload[..payload.len().min(KEPT_OF_OVERSIZED)]
    } else {
        payload
    };
    tx.prepare_cached("INSERT INTO quarantine_payloads (payload, truncated) VALUES (?1, ?2)")?
        .execute(params![kept, kept.len() < payload.len()])?;
    let payload_id = tx.last_insert_rowid();
    let mut insert = tx.prepare_cached(
        "INSERT INTO quarantine (received_at, topic, reason, detail, payload_id, source, device) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    for r in env.rejections.iter().chain(more) {
        insert.execute(params![
            env.received_at.0,
            env.topic,
            r.reason.as_str(),
            r.detail,
            payload_id,
            env.source,
            r.device,
        ])?;
    }
    Ok(())
}
