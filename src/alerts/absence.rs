//! Absence: devices that fall silent, judged on the clock, since silence brings no reading to
//! judge on.
//!
//! The writer notes, per device, its newest reading and when it was last heard (the
//! [`Activity`]); a task looks every second. A device is silent once it has missed `missed`
//! reports (its expected interval each); a gateway's devices, or every device, are silent
//! together once nothing has come through for `missed` reports of the quickest of them that
//! was still reporting.
//!
//! One cause, one message: a silence is *explained* by a wider one (`inhibited_by`) when
//! nothing came through the wider scope after the narrower one was next due. An explained
//! silence does not fire; the wider rule fires in its place. If the wider scope is heard
//! again while the narrower stays silent, the narrower silence is no longer explained and
//! fires then.
//!
//! A rule on readings with `on_no_data = "fire"` or `"ignore"` is judged here too: a device
//! it watches that has sent nothing for its gap limit (twice its interval, when a reading rule
//! counts the condition unknown) opens the rule's alert for each series of the device that
//! the rule reads, or resolves them. Held back by `inhibited_by` as a device's own absence
//! alert is; the readings, when they come back, clear it as they clear any alert of the rule.
//!
//! A silence fires once per episode (an episode is named by the subject's newest reading), so
//! staff resolving an alert of a device still silent does not bring it back; the next reading
//! resolves it. After a restart each device counts as heard at start-up: a silence is not
//! announced before the device has had its full allowance to report.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, Transaction, TransactionBehavior, params};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::rules::{Absence, Filled, OnNoData, Per, Rule};
use super::store::{self as alerts, Firing, Subject};
use crate::alerts::threshold::Progress;
use crate::model::{Ident, Reading, SeriesKey, TimestampMs};
use crate::registry::Registry;
use crate::store::{Admin, StoreError};

/// How often silences are looked for: a twentieth of the shortest allowance of silence, from
/// every second (devices that report every second) to every 15 s (the shipped 15-minute
/// interval allows 45 minutes).
const QUICKEST: Duration = Duration::from_secs(1);
const SLOWEST: Duration = Duration::from_secs(15);
/// A rule on readings has no data after this many intervals: its gap limit.
const NO_DATA_AFTER: u32 = 2;

/// The silence a rule is judged on here: an absence rule's own, or for a rule on readings
/// that no data fires or resolves, a device's silence past its gap limit; `None` for the rest.
fn silence_of(rule: &Rule) -> Option<Absence> {
    match rule.absence {
        Some(a) => Some(a),
        None if rule.no_data_on_the_clock() => Some(Absence {
            per: Per::Device,
            missed: NO_DATA_AFTER,
        }),
        None => None,
    }
}

fn tick_for(rules: &[Rule], registry: &Registry, default_interval: Duration) -> Duration {
    let missed = rules
        .iter()
        .filter_map(|r| silence_of(r).map(|a| a.missed))
        .min()
        .unwrap_or(3);
    let interval = registry
        .min_interval()
        .map_or(default_interval, |i| i.min(default_interval));
    (interval * missed / 20).clamp(QUICKEST, SLOWEST)
}

/// What orchardd last heard of one device.
#[derive(Debug, Clone, PartialEq)]
pub struct Heard {
    pub orchard: Ident,
    pub block: Ident,
    /// The gateway that last heard it best (LoRaWAN).
    pub gateway: Option<Arc<str>>,
    /// Its newest reading's time.
    pub last_ts: i64,
    /// When a reading of it last arrived (wall clock).
    pub heard_at: i64,
}

/// What the writer last heard of every device, shared with the absence task.
#[derive(Debug, Default)]
pub struct Activity {
    devices: HashMap<Ident, Heard>,
    /// Series whose stored rule progress the absence task changed (a rule's alert that no
    /// data opened or closed): the writer forgets its own copy before its next batch, and
    /// reads the stored one.
    stale: Vec<i64>,
    /// When the writer last committed readings of each block (wall clock, noted after the
    /// commit): a judgement that started reading before it missed them and is due again.
    committed: HashMap<(Ident, Ident), i64>,
}

pub type SharedActivity = Arc<Mutex<Activity>>;

impl Activity {
    /// Every device with readings in the store, counted as heard at `now`, with the gateway
    /// it was last heard through.
    pub fn load(conn: &Connection, now: i64) -> Result<Self, StoreError> {
        let mut devices: HashMap<Ident, Heard> = HashMap::new();
        let mut stmt = conn.prepare(
            "SELECT orchard, block, device, (SELECT max(ts) FROM readings WHERE series = s.id) \
             FROM series s",
        )?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let Some(last_ts) = row.get::<_, Option<i64>>(3)? else {
                continue;
            };
            let (Ok(orchard), Ok(block), Ok(device)) = (
                row.get::<_, String>(0)?.parse::<Ident>(),
                row.get::<_, String>(1)?.parse::<Ident>(),
                row.get::<_, String>(2)?.parse::<Ident>(),
            ) else {
                continue;
            };
            let heard = Heard {
                orchard,
                block,
                gateway: None,
                last_ts,
                heard_at: now,
            };
            match devices.get_mut(&device) {
                Some(known) if known.last_ts >= last_ts => {}
                Some(known) => *known = heard,
                None => {
                    devices.insert(device, heard);
                }
            }
        }
        let mut stmt = conn.prepare("SELECT device, gateway FROM device_gateways")?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            if let Ok(device) = row.get::<_, String>(0)?.parse::<Ident>()
                && let Some(heard) = devices.get_mut(&device)
            {
                heard.gateway = Some(Arc::from(row.get::<_, String>(1)?.as_str()));
            }
        }
        Ok(Self {
            devices,
            ..Self::default()
        })
    }

    /// The series whose rule progress changed behind the writer's back since it last asked.
    pub fn take_stale(&mut self) -> Vec<i64> {
        std::mem::take(&mut self.stale)
    }

    /// Notes a reading that arrived at `received_at` through `gateway`; true when the device
    /// is heard through another gateway than before (the store should remember it).
    pub fn heard(&mut self, r: &Reading, received_at: i64, gateway: Option<&str>) -> bool {
        let s = &r.series;
        let entry = match self.devices.get_mut(&s.device) {
            Some(e) => e,
            None => self.devices.entry(s.device.clone()).or_insert(Heard {
                orchard: s.orchard.clone(),
                block: s.block.clone(),
                gateway: None,
                last_ts: r.ts.0,
                heard_at: received_at,
            }),
        };
        if r.ts.0 >= entry.last_ts {
            entry.last_ts = r.ts.0;
            if entry.orchard != s.orchard || entry.block != s.block {
                entry.orchard = s.orchard.clone();
                entry.block = s.block.clone();
            }
        }
        entry.heard_at = entry.heard_at.max(received_at);
        match gateway {
            Some(g) if entry.gateway.as_deref() != Some(g) => {
                entry.gateway = Some(Arc::from(g));
                true
            }
            _ => false,
        }
    }

    pub fn len(&self) -> usize {
        self.devices.len()
    }

    /// Every block with devices, and when it last changed: one of its devices heard, or
    /// readings of it committed.
    pub fn blocks(&self) -> HashMap<(Ident, Ident), i64> {
        let mut out: HashMap<(Ident, Ident), i64> = HashMap::new();
        for h in self.devices.values() {
            let at = out.entry((h.orchard.clone(), h.block.clone())).or_default();
            *at = (*at).max(h.heard_at);
        }
        for (block, committed) in &self.committed {
            let at = out.entry(block.clone()).or_default();
            *at = (*at).max(*committed);
        }
        out
    }

    /// Notes that readings of `blocks` are committed, at `now`.
    pub fn committed<'a>(
        &mut self,
        blocks: impl IntoIterator<Item = &'a (Ident, Ident)>,
        now: i64,
    ) {
        for b in blocks {
            match self.committed.get_mut(b) {
                Some(at) => *at = (*at).max(now),
                None => {
                    self.committed.insert(b.clone(), now);
                }
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }
}

/// Remembers the gateway a device was last heard through, for the next start.
pub fn remember_gateway(
    tx: &Transaction<'_>,
    device: &Ident,
    gateway: &str,
    at: i64,
) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO device_gateways (device, gateway, updated_at) VALUES (?1, ?2, ?3) \
         ON CONFLICT (device) DO UPDATE SET gateway = excluded.gateway, updated_at = excluded.updated_at",
    )?
    .execute(params![device.as_str(), gateway, at])?;
    Ok(())
}

/// Something that can fall silent: a device, a gateway's devices, or all of them.
#[derive(Debug, Clone, PartialEq)]
struct Silence {
    scope: String,
    orchard: String,
    block: String,
    device: String,
    gateway: Option<Arc<str>>,
    /// The newest reading of the subject: names the episode.
    last_ts: i64,
    /// When it was last heard.
    heard_at: i64,
    /// How long it may be silent, ms.
    limit_ms: i64,
    /// Its report interval (the quickest, for a group), ms.
    interval_ms: i64,
    /// How many devices fell silent with it.
    devices: usize,
}

impl Silence {
    fn is_silent(&self, now: i64) -> bool {
        now - self.heard_at >= self.limit_ms
    }

    /// Whether `wider` explains this silence: nothing came through it after this subject
    /// was next due (with a report's slack).
    fn explained_by(&self, wider: &Silence) -> bool {
        wider.heard_at <= self.heard_at + 2 * self.interval_ms
    }
}

/// The devices of one group, as they were last heard.
#[derive(Default)]
struct Group {
    members: Vec<(i64, i64, String, String)>,
    last_ts: i64,
    gateway: Option<Arc<str>>,
}

impl Group {
    fn add(&mut self, heard: &Heard, interval_ms: i64) {
        self.members.push((
            heard.heard_at,
            interval_ms,
            heard.orchard.to_string(),
            heard.block.to_string(),
        ));
        self.last_ts = self.last_ts.max(heard.last_ts);
    }

    /// The group's silence: since its newest, judged by the quickest of the devices that
    /// were still reporting when it was last heard.
    fn silence(self, scope: String, missed: u32) -> Option<Silence> {
        let heard_at = self.members.iter().map(|m| m.0).max()?;
        let live: Vec<_> = self
            .members
            .iter()
            .filter(|(h, i, ..)| h + i64::from(missed) * i >= heard_at)
            .collect();
        let interval_ms = live.iter().map(|m| m.1).min()?;
        let common = |pick: fn(&(i64, i64, String, String)) -> &String| {
            let first = pick(live[0]);
            if live.iter().all(|m| pick(m) == first) {
                first.clone()
            } else {
                "all".to_owned()
            }
        };
        Some(Silence {
            scope,
            orchard: common(|m| &m.2),
            block: common(|m| &m.3),
            device: String::new(),
            gateway: self.gateway,
            last_ts: self.last_ts,
            heard_at,
            limit_ms: i64::from(missed) * interval_ms,
            interval_ms,
            devices: live.len(),
        })
    }
}

/// What a look found.
#[derive(Debug, Clone, PartialEq)]
enum Verdict {
    Fire { rule: usize, silence: Silence },
    Resolve { rule: usize, scope: String },
}

/// Per absence rule and scope: the episode (newest reading's time) its latest alert is about.
type Known = HashMap<(String, String), i64>;

/// The silences of every absence rule of `rules` at `now`, and the alerts they open or close;
/// a rule on readings that no data fires is judged only in its hours and months (local at
/// `utc_offset_ms`).
fn judge(
    activity: &Activity,
    rules: &[Rule],
    interval_ms: &dyn Fn(&Ident) -> i64,
    known: &Known,
    now: i64,
    utc_offset_ms: i64,
) -> Vec<Verdict> {
    // Every subject of every absence rule, by rule and scope.
    let mut subjects: Vec<HashMap<String, Silence>> = Vec::with_capacity(rules.len());
    for rule in rules {
        let mut of_rule = HashMap::new();
        // A rule that no data fires watches only in its hours and months.
        let watching = rule.on_no_data != OnNoData::Fire
            || (rule.in_hours(now, utc_offset_ms) && rule.in_months(now, utc_offset_ms));
        let Some(a) = silence_of(rule).filter(|_| watching) else {
            subjects.push(of_rule);
            continue;
        };
        let mut groups: HashMap<String, Group> = HashMap::new();
        for (device, heard) in &activity.devices {
            if !rule.covers(&heard.orchard, &heard.block, device) {
                continue;
            }
            let interval = interval_ms(device);
            match a.per {
                Per::Device => {
                    let scope = format!("{}/{}/{device}", heard.orchard, heard.block);
                    of_rule.insert(
                        scope.clone(),
                        Silence {
                            scope,
                            orchard: heard.orchard.to_string(),
                            block: heard.block.to_string(),
                            device: device.to_string(),
                            gateway: heard.gateway.clone(),
                            last_ts: heard.last_ts,
                            heard_at: heard.heard_at,
                            limit_ms: i64::from(a.missed) * interval,
                            interval_ms: interval,
                            devices: 1,
                        },
                    );
                }
                Per::Gateway => {
                    if let Some(g) = &heard.gateway {
                        let group = groups.entry(format!("gateway/{g}")).or_default();
                        group.gateway = Some(g.clone());
                        group.add(heard, interval);
                    }
                }
                Per::All => groups
                    .entry("all".to_owned())
                    .or_default()
                    .add(heard, interval),
            }
        }
        for (scope, group) in groups {
            if let Some(s) = group.silence(scope.clone(), a.missed) {
                of_rule.insert(scope, s);
            }
        }
        subjects.push(of_rule);
    }
    let mut verdicts = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        for silence in subjects[i].values() {
            let episode = known.get(&(rule.id.clone(), silence.scope.clone()));
            // A rule on readings is resolved by its readings, not here.
            if rule.absence.is_some() && episode.is_some_and(|since| *since < silence.last_ts) {
                verdicts.push(Verdict::Resolve {
                    rule: i,
                    scope: silence.scope.clone(),
                });
            }
            if !silence.is_silent(now) || episode == Some(&silence.last_ts) {
                continue;
            }
            // No data that counts as not holding resolves, whatever the cause.
            let explained = rule.on_no_data != OnNoData::Ignore
                && rule.inhibited_by.iter().any(|id| {
                    let Some(j) = rules.iter().position(|r| &r.id == id) else {
                        return false;
                    };
                    let wider_scope = match rules[j].absence.as_ref().map(|a| a.per) {
                        Some(Per::All) => "all".to_owned(),
                        Some(Per::Gateway) => match &silence.gateway {
                            Some(g) => format!("gateway/{g}"),
                            None => return false,
                        },
                        _ => return false,
                    };
                    subjects[j]
                        .get(&wider_scope)
                        .is_some_and(|wider| silence.explained_by(wider))
                });
            if !explained {
                verdicts.push(Verdict::Fire {
                    rule: i,
                    silence: silence.clone(),
                });
            }
        }
    }
    verdicts
}

/// `2 h 05 min`, `45 min`, `3 d 4 h`.
pub fn human(ms: i64) -> String {
    let minutes = ms.max(0) / 60_000;
    let (d, h, m) = (minutes / 1440, minutes / 60 % 24, minutes % 60);
    match (d, h) {
        (0, 0) => format!("{m} min"),
        (0, _) => format!("{h} h {m:02} min"),
        _ => format!("{d} d {h} h"),
    }
}

/// Opens or closes the alerts of `verdicts`; returns how many it changed. The rule progress
/// it changes is added to `stale`.
fn apply(
    tx: &Transaction<'_>,
    rules: &[Rule],
    verdicts: &[Verdict],
    known: &mut Known,
    now: i64,
    stale: &mut Vec<i64>,
) -> Result<u64, StoreError> {
    let mut changed = 0;
    // Closing first: a subject heard again and silent again is a new episode.
    for v in verdicts {
        if let Verdict::Resolve { rule, scope } = v {
            let id = &rules[*rule].id;
            changed += u64::from(alerts::close(tx, id, scope, now, None)?.is_some());
            known.remove(&(id.clone(), scope.clone()));
        }
    }
    for v in verdicts {
        let Verdict::Fire { rule, silence: s } = v else {
            continue;
        };
        let rule = &rules[*rule];
        if rule.absence.is_none() {
            changed += no_data(tx, rule, s, now, stale)?;
            known.insert((rule.id.clone(), s.scope.clone()), s.last_ts);
            continue;
        }
        let subject = Subject {
            scope: &s.scope,
            orchard: &s.orchard,
            block: &s.block,
            device: &s.device,
            kind: "",
        };
        let silent_ms = now - s.heard_at;
        let firing = Firing {
            since: s.last_ts,
            at: now,
            value: silent_ms as f64 / 60_000.0,
            threshold: s.limit_ms as f64 / 60_000.0,
        };
        let more = |name: &str| {
            Some(match name {
                "silent" => Filled::Text(human(silent_ms)),
                "last" => Filled::Text(TimestampMs(s.last_ts).to_rfc3339()),
                "devices" => Filled::Number(s.devices as f64),
                "gateway" => Filled::Text(s.gateway.as_deref().unwrap_or("-").to_owned()),
                _ => return None,
            })
        };
        changed += u64::from(alerts::open(tx, rule, &subject, firing, more)?.is_some());
        known.insert((rule.id.clone(), s.scope.clone()), s.last_ts);
    }
    Ok(changed)
}

/// A device silent past a reading rule's gap limit: opens (`on_no_data = "fire"`) or resolves
/// (`"ignore"`) the rule's alert of each series of the device that the rule reads, stores the
/// progress that follows and notes it in `stale`; returns how many alerts it changed.
fn no_data(
    tx: &Transaction<'_>,
    rule: &Rule,
    s: &Silence,
    now: i64,
    stale: &mut Vec<i64>,
) -> Result<u64, StoreError> {
    let Some(kind) = rule.measure else {
        return Ok(0);
    };
    let (Ok(orchard), Ok(block), Ok(device)) = (
        s.orchard.parse::<Ident>(),
        s.block.parse::<Ident>(),
        s.device.parse::<Ident>(),
    ) else {
        return Ok(0);
    };
    let series: Vec<(i64, Option<u16>, Option<f64>)> = tx
        .prepare_cached(
            "SELECT id, depth_cm, (SELECT value FROM readings WHERE series = s.id ORDER BY ts DESC LIMIT 1) \
             FROM series s WHERE orchard = ?1 AND block = ?2 AND device = ?3 AND kind = ?4",
        )?
        .query_map(
            params![s.orchard, s.block, s.device, kind.name()],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?
        .collect::<Result<_, _>>()?;
    let silent_ms = now - s.heard_at;
    let mut changed = 0;
    for (id, depth_cm, last_value) in series {
        let Some(last_value) = last_value else {
            continue;
        };
        let key = SeriesKey {
            orchard: orchard.clone(),
            block: block.clone(),
            device: device.clone(),
            kind,
            depth_cm,
        };
        let scope = alerts::scope_of(&key);
        let progress = match rule.on_no_data {
            OnNoData::Fire => {
                let subject = Subject {
                    scope: &scope,
                    orchard: &s.orchard,
                    block: &s.block,
                    device: &s.device,
                    kind: kind.name(),
                };
                let firing = Firing {
                    since: s.last_ts,
                    at: now,
                    value: last_value,
                    threshold: rule.threshold.enter,
                };
                let last = TimestampMs(s.last_ts).to_rfc3339();
                let silent = human(silent_ms);
                let note = (
                    format!(
                        "No data from {} since {last} ({silent}), counted as holding.",
                        s.device
                    ),
                    format!(
                        "{} 自 {last} 起（{silent}）无数据，按条件成立处理。",
                        s.device
                    ),
                );
                let more = |name: &str| match name {
                    "silent" => Some(Filled::Text(silent.clone())),
                    "last" => Some(Filled::Text(last.clone())),
                    _ => None,
                };
                if alerts::open_noted(tx, rule, &subject, firing, more, Some(note))?.is_none() {
                    continue;
                }
                Progress::Firing { since: s.last_ts }
            }
            OnNoData::Ignore => {
                if alerts::close(tx, &rule.id, &scope, now, None)?.is_none() {
                    continue;
                }
                Progress::Quiet
            }
            OnNoData::Hold => continue,
        };
        alerts::save_progress(tx, &rule.id, &scope, &progress)?;
        stale.push(id);
        changed += 1;
    }
    Ok(changed)
}

/// The episode of the latest alert of each absence rule and scope.
fn load_known(conn: &Connection, rules: &[Rule]) -> Result<Known, StoreError> {
    let mut known = Known::new();
    let mut stmt = conn.prepare_cached(
        "SELECT scope, since FROM alerts WHERE id IN \
         (SELECT max(id) FROM alerts WHERE rule = ?1 GROUP BY scope)",
    )?;
    for rule in rules.iter().filter(|r| silence_of(r).is_some()) {
        let rows = stmt.query_map([&rule.id], |r| Ok((r.get(0)?, r.get(1)?)))?;
        for row in rows {
            let (mut scope, since): (String, i64) = row?;
            // A reading rule's alert is a series' (`…@30cm`); its silences are the device's.
            if let Some(at) = scope.find('@') {
                scope.truncate(at);
            }
            known.insert((rule.id.clone(), scope), since);
        }
    }
    Ok(known)
}

/// The task that looks for silences.
pub struct Watch {
    pub admin: Admin,
    pub activity: SharedActivity,
    pub rules: watch::Receiver<Arc<Vec<Rule>>>,
    pub registry: watch::Receiver<Arc<Registry>>,
    /// A device's interval when its registry entry names none.
    pub default_interval: Duration,
    /// Local time, for the hours and months of a rule that no data fires.
    pub utc_offset_ms: i64,
    /// Bumped when an alert opens or closes.
    pub changed: Arc<watch::Sender<u64>>,
}

impl Watch {
    /// Looks for silences every second or so until `shutdown`, with the rules `rules` holds.
    pub async fn run(self, shutdown: CancellationToken) {
        let Watch {
            admin,
            activity,
            mut rules,
            registry,
            default_interval,
            utc_offset_ms,
            changed,
        } = self;
        let mut current: Arc<Vec<Rule>> = Arc::default();
        let mut known = Known::new();
        let mut tick = QUICKEST;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(tick) => {}
                _ = shutdown.cancelled() => return,
            }
            tick = tick_for(&current, &registry.borrow(), default_interval);
            let reloaded = rules.has_changed().unwrap_or(false) || current.is_empty();
            if reloaded {
                current = rules.borrow_and_update().clone();
            }
            if !current.iter().any(|r| silence_of(r).is_some()) {
                continue;
            }
            let (r, a, reg) = (current.clone(), activity.clone(), registry.borrow().clone());
            let default_ms = default_interval.as_millis() as i64;
            let taken = std::mem::take(&mut known);
            let result = admin
                .write(move |conn| {
                    let mut known = if reloaded {
                        load_known(conn, &r)?
                    } else {
                        taken
                    };
                    let interval = |d: &Ident| {
                        reg.get(d.as_str())
                            .and_then(|e| e.expected_interval)
                            .map_or(default_ms, |i| i.as_millis() as i64)
                    };
                    let now = TimestampMs::now().0;
                    let lock = || a.lock().unwrap_or_else(|e| e.into_inner());
                    if judge(&lock(), &r, &interval, &known, now, utc_offset_ms).is_empty() {
                        return Ok((known, 0));
                    }
                    // Judged again holding the store's write lock: the writer notes what it
                    // heard before it commits, so nothing committed is missing from the activity.
                    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                    let now = TimestampMs::now().0;
                    let verdicts = judge(&lock(), &r, &interval, &known, now, utc_offset_ms);
                    let mut stale = Vec::new();
                    let n = apply(&tx, &r, &verdicts, &mut known, now, &mut stale)?;
                    tx.commit()?;
                    // Still holding the write gate: the writer's next batch finds it.
                    lock().stale.extend(stale);
                    Ok((known, n))
                })
                .await;
            match result {
                Ok((k, n)) => {
                    known = k;
                    if n > 0 {
                        changed.send_modify(|g| *g += 1);
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "absence rules: cannot judge silences; trying again");
                    current = Arc::default();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::rules::parse;

    const RULES: &str = r#"
[[rule]]
id = "stalled"
kind = "absence"
per = "all"
severity = "major"
action.en = "Nothing from {devices} devices since {last}."
action.zh = "自 {last} 起 {devices} 台设备无数据。"

[[rule]]
id = "gateway-offline"
kind = "absence"
per = "gateway"
severity = "major"
inhibited_by = ["stalled"]
action.en = "Gateway {gateway} silent: {devices} devices."
action.zh = "网关 {gateway} 无数据：{devices} 台设备。"

[[rule]]
id = "offline"
kind = "absence"
severity = "minor"
inhibited_by = ["gateway-offline", "stalled"]
action.en = "{device} silent for {silent}."
action.zh = "{device} 已 {silent} 无数据。"
"#;

    const MIN: i64 = 60_000;

    fn rules() -> Vec<Rule> {
        let mut problems = Vec::new();
        let rules = parse("r.toml", RULES, &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        rules
    }

    /// Devices `(id, gateway, heard at minute)`, each reporting every minute.
    fn activity(devices: &[(&str, &str, i64)]) -> Activity {
        let mut a = Activity::default();
        for (id, gw, at) in devices {
            a.devices.insert(
                id.parse().unwrap(),
                Heard {
                    orchard: "o".parse().unwrap(),
                    block: "b".parse().unwrap(),
                    gateway: Some(Arc::from(*gw)),
                    last_ts: at * MIN,
                    heard_at: at * MIN,
                },
            );
        }
        a
    }

    fn fired(verdicts: &[Verdict], rules: &[Rule]) -> Vec<String> {
        let mut out: Vec<String> = verdicts
            .iter()
            .filter_map(|v| match v {
                Verdict::Fire { rule, silence } => {
                    Some(format!("{} {}", rules[*rule].id, silence.scope))
                }
                Verdict::Resolve { .. } => None,
            })
            .collect();
        out.sort();
        out
    }

    #[test]
    fn a_gateway_outage_is_one_gateway_alert_and_no_device_alerts() {
        let rules = rules();
        // g1's three devices stopped around minute 10; g2's two go on.
        let a = activity(&[
            ("a1", "g1", 10),
            ("a2", "g1", 9),
            ("a3", "g1", 10),
            ("b1", "g2", 20),
            ("b2", "g2", 20),
        ]);
        let v = judge(&a, &rules, &|_| MIN, &Known::new(), 20 * MIN, 0);
        assert_eq!(fired(&v, &rules), ["gateway-offline gateway/g1"]);
        let Verdict::Fire { silence, .. } = &v[0] else {
            panic!()
        };
        assert_eq!((silence.devices, silence.orchard.as_str()), (3, "o"));
    }

    #[test]
    fn no_data_fires_a_reading_rule_after_two_intervals_in_its_hours_unless_the_gateway_explains_it()
     {
        let mut problems = Vec::new();
        let extra = r#"
[[rule]]
id = "frost"
kind = "threshold"
measure = "air_temperature"
severity = "critical"
below = 0.0
hours = [18, 7]
on_no_data = "fire"
inhibited_by = ["gateway-offline"]
action.en = "Frost in {block}."
action.zh = "{block} 霜冻。"

[[rule]]
id = "heat"
kind = "threshold"
measure = "air_temperature"
severity = "major"
above = 35.0
on_no_data = "ignore"
action.en = "Heat in {block}."
action.zh = "{block} 高温。"
"#;
        let mut rules = parse("r.toml", extra, &mut problems);
        rules.extend(self::rules());
        assert!(problems.is_empty(), "{problems:?}");
        let night = 20 * 60 * MIN;
        // a1 last heard at 20:00, its gateway and the other devices still at 20:03.
        let a = activity(&[
            ("a1", "g1", 20 * 60),
            ("a2", "g1", 20 * 60 + 3),
            ("b1", "g2", 20 * 60 + 3),
        ]);
        let at = |m: i64| night + m * MIN;
        // One interval late: no data yet. Two: the frost rule fires and the heat rule resolves.
        assert!(
            fired(
                &judge(&a, &rules, &|_| MIN, &Known::new(), at(1), 0),
                &rules
            )
            .is_empty()
        );
        assert_eq!(
            fired(
                &judge(&a, &rules, &|_| MIN, &Known::new(), at(2), 0),
                &rules
            ),
            ["frost o/b/a1", "heat o/b/a1"]
        );
        // By day the frost rule does not watch; the heat rule resolves whenever.
        let day = activity(&[
            ("a1", "g1", 10 * 60),
            ("a2", "g1", 10 * 60 + 3),
            ("b1", "g2", 10 * 60 + 3),
        ]);
        assert_eq!(
            fired(
                &judge(
                    &day,
                    &rules,
                    &|_| MIN,
                    &Known::new(),
                    10 * 60 * MIN + 2 * MIN,
                    0
                ),
                &rules
            ),
            ["heat o/b/a1"]
        );
        // The whole gateway silent: its alert, not the frost's per device (the heat rule's
        // resolve is no message of its own and is not held back).
        let out = activity(&[
            ("a1", "g1", 20 * 60),
            ("a2", "g1", 20 * 60),
            ("b1", "g2", 20 * 60 + 5),
        ]);
        assert_eq!(
            fired(
                &judge(&out, &rules, &|_| MIN, &Known::new(), at(5), 0),
                &rules
            ),
            ["gateway-offline gateway/g1", "heat o/b/a1", "heat o/b/a2"]
        );
        // An episode is judged once.
        let mut known = Known::new();
        known.insert(("frost".into(), "o/b/a1".into()), night);
        known.insert(("heat".into(), "o/b/a1".into()), night);
        assert!(fired(&judge(&a, &rules, &|_| MIN, &known, at(2), 0), &rules).is_empty());
    }

    #[test]
    fn a_device_silent_while_its_gateway_is_heard_fires_on_its_own() {
        let rules = rules();
        let a = activity(&[("a1", "g1", 10), ("a2", "g1", 20), ("b1", "g2", 20)]);
        let v = judge(&a, &rules, &|_| MIN, &Known::new(), 20 * MIN, 0);
        assert_eq!(fired(&v, &rules), ["offline o/b/a1"]);
    }

    #[test]
    fn when_nothing_is_heard_only_the_stall_fires() {
        let rules = rules();
        let a = activity(&[("a1", "g1", 10), ("a2", "g1", 10), ("b1", "g2", 9)]);
        let v = judge(&a, &rules, &|_| MIN, &Known::new(), 20 * MIN, 0);
        assert_eq!(fired(&v, &rules), ["stalled all"]);
    }

    #[test]
    fn an_episode_fires_once_and_resolves_on_the_next_reading() {
        let rules = rules();
        let mut a = activity(&[("a1", "g1", 10), ("a2", "g1", 20), ("b1", "g2", 20)]);
        let mut known = Known::new();
        known.insert(("offline".into(), "o/b/a1".into()), 10 * MIN);
        // Staff resolved it, or it is still open: the same episode does not fire again.
        assert!(judge(&a, &rules, &|_| MIN, &known, 21 * MIN, 0).is_empty());
        a.devices
            .get_mut(&"a1".parse::<Ident>().unwrap())
            .unwrap()
            .last_ts = 21 * MIN;
        a.devices
            .get_mut(&"a1".parse::<Ident>().unwrap())
            .unwrap()
            .heard_at = 21 * MIN;
        assert_eq!(
            judge(&a, &rules, &|_| MIN, &known, 21 * MIN, 0),
            [Verdict::Resolve {
                rule: 2,
                scope: "o/b/a1".into()
            }]
        );
    }

    #[test]
    fn a_slow_device_does_not_make_a_quick_ones_gateway_wait_nor_a_slow_one_hurry() {
        let rules = rules();
        // a1 reports every minute, a2 every hour and last did 30 minutes ago.
        let a = activity(&[("a1", "g1", 60), ("a2", "g1", 30), ("b1", "g2", 64)]);
        let interval = |d: &Ident| if d.as_str() == "a2" { 60 * MIN } else { MIN };
        let v = judge(&a, &rules, &interval, &Known::new(), 64 * MIN, 0);
        assert_eq!(fired(&v, &rules), ["gateway-offline gateway/g1"]);
        // With a1 long dead on its own (and alerted), the gateway is judged by a2 alone.
        let a = activity(&[("a1", "g1", 10), ("a2", "g1", 60), ("b1", "g2", 64)]);
        let mut known = Known::new();
        known.insert(("offline".into(), "o/b/a1".into()), 10 * MIN);
        assert!(fired(&judge(&a, &rules, &interval, &known, 64 * MIN, 0), &rules).is_empty());
    }

    #[test]
    fn silences_are_looked_for_often_enough_and_no_more() {
        let rules = rules();
        let none = Registry::new([]);
        // As shipped: 15-minute devices, 3 missed reports: every 15 s.
        assert_eq!(
            tick_for(&rules, &none, Duration::from_secs(900)),
            Duration::from_secs(15)
        );
        // One device of the registry reports every 10 s: 30 s of silence, looked at every 1.5 s.
        let quick = Registry::new([crate::registry::DeviceEntry {
            id: "quick".parse().unwrap(),
            orchard: "o".parse().unwrap(),
            block: "b".parse().unwrap(),
            position: None,
            depths_cm: Vec::new(),
            installed: None,
            expected_interval: Some(Duration::from_secs(10)),
        }]);
        assert_eq!(
            tick_for(&rules, &quick, Duration::from_secs(900)),
            Duration::from_millis(1500)
        );
    }

    #[test]
    fn human_durations() {
        assert_eq!(human(45 * MIN), "45 min");
        assert_eq!(human(125 * MIN), "2 h 05 min");
        assert_eq!(human((3 * 24 * 60 + 4 * 60 + 7) * MIN), "3 d 4 h");
    }
}
