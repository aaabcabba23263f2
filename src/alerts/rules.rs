//! Alert rules in TOML: `config/rules/*.toml`, each file a list of `[[rule]]` tables.
//!
//! ```toml
//! [[rule]]
//! id = "frost"
//! kind = "threshold"
//! measure = "air_temperature"
//! severity = "critical"
//! below = -2.2
//! for = "4h"
//! clear_above = 0.5
//! clear_for = "30m"
//! action.en = "Frost in {block}: {value:.1} °C since {since}. Start frost protection."
//! action.zh = "{block} 霜冻：{value:.1} °C（自 {since}）。请启动防霜措施。"
//! ```
//!
//! Every problem is reported with the file and the key path (`citrus.toml: rule[2].below`).

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::threshold::{Side, Threshold};
use crate::aggregate::indices::DayIndices;
use crate::config::Problem;
use crate::model::{Ident, Kind};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Warning,
    Minor,
    Major,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Warning => "warning",
            Severity::Minor => "minor",
            Severity::Major => "major",
            Severity::Critical => "critical",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum RuleKind {
    Threshold,
    Rate,
    /// A sensor orchardd flags `stuck` (the same value again and again).
    Stuck,
    /// A device, a gateway's devices, or every device silent for `missed` of their reports.
    Absence,
    /// Conditions on a block's daily indices (water balance, wet hours, frost hours).
    Daily,
}

/// What a rule does without data: a daily rule when a day has no figure for an index it
/// tests; a rule on readings when a device it watches has sent nothing for longer than its
/// gap limit (twice its interval), judged on the clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnNoData {
    /// Neither fires nor resolves: unknown is not resolved.
    #[default]
    Hold,
    /// Counts as holding: fires (a day, or a night, without data is itself worth a look).
    Fire,
    /// Counts as not holding: resolves.
    Ignore,
}

/// One condition of a daily rule: an index at or above and/or at or below a value.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bound {
    #[serde(default)]
    pub above: Option<f64>,
    #[serde(default)]
    pub below: Option<f64>,
}

impl Bound {
    pub fn holds(&self, v: f64) -> bool {
        self.above.is_none_or(|a| v >= a) && self.below.is_none_or(|b| v <= b)
    }
}

/// A daily rule: every condition must hold for a day of a block.
#[derive(Debug, Clone, PartialEq)]
pub struct Daily {
    /// Index name (one of `DayIndices::NAMES`) and its bound, by name.
    pub when: Vec<(String, Bound)>,
    /// Whole days before a block's harvest in which the rule does not hold.
    pub not_before_harvest_days: Option<i64>,
}

/// What an absence rule watches falling silent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Per {
    /// Each device.
    Device,
    /// The devices a LoRaWAN gateway last heard, together.
    Gateway,
    /// Every device: orchardd hears nothing (a broker, network or ingest stall).
    All,
}

impl Per {
    pub fn as_str(self) -> &'static str {
        match self {
            Per::Device => "device",
            Per::Gateway => "gateway",
            Per::All => "all",
        }
    }
}

/// An absence rule's numbers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Absence {
    pub per: Per,
    /// Silent for this many of a device's expected intervals.
    pub missed: u32,
}

/// The action text of an alert, in each language.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Action {
    pub en: String,
    pub zh: String,
}

/// One `[[rule]]` as written.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    id: String,
    kind: RuleKind,
    #[serde(default)]
    measure: Option<Kind>,
    severity: Severity,
    #[serde(default)]
    below: Option<f64>,
    #[serde(default)]
    above: Option<f64>,
    #[serde(default, rename = "for", with = "humantime_serde")]
    enter_for: Option<Duration>,
    #[serde(default)]
    clear_above: Option<f64>,
    #[serde(default)]
    clear_below: Option<f64>,
    #[serde(default, with = "humantime_serde")]
    clear_for: Option<Duration>,
    /// Rate rules: units per hour, over the window `over`.
    #[serde(default)]
    falling_faster_than: Option<f64>,
    #[serde(default)]
    rising_faster_than: Option<f64>,
    #[serde(default, with = "humantime_serde")]
    over: Option<Duration>,
    /// Local hours `[from, to)` the rule watches (`[18, 7]`: the night); outside them its
    /// condition does not hold.
    #[serde(default)]
    hours: Option<[u8; 2]>,
    /// Absence rules: what falls silent, and after how many missed reports.
    #[serde(default)]
    per: Option<Per>,
    #[serde(default)]
    missed: Option<u32>,
    /// Absence rules whose silence, if it explains this rule's, holds this rule back.
    #[serde(default)]
    inhibited_by: Vec<String>,
    /// Daily rules: the conditions on the day's indices, and what a day without figures does.
    #[serde(default)]
    when: std::collections::BTreeMap<String, Bound>,
    #[serde(default)]
    on_no_data: Option<OnNoData>,
    /// Daily rules: silent this long before the block's `harvest_from` (its `[[blocks]]`
    /// entry), as irrigation advice is before harvest.
    #[serde(default, with = "humantime_serde")]
    not_before_harvest: Option<Duration>,
    /// Local months (1-12) the rule watches; outside them its condition does not hold.
    #[serde(default)]
    months: Option<Vec<u8>>,
    /// Alerts of one scope opened this many times within `unstable_within` make the next one
    /// an "unstable signal" that stays open for staff (0: never).
    #[serde(default)]
    unstable_after: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    unstable_within: Option<Duration>,
    #[serde(default)]
    orchards: Vec<Ident>,
    #[serde(default)]
    blocks: Vec<Ident>,
    #[serde(default)]
    devices: Vec<Ident>,
    action: Action,
    #[serde(default = "yes")]
    enabled: bool,
    /// Where the threshold comes from, and how sure it is: for staff, not for orchardd.
    #[serde(default)]
    source: Option<String>,
    #[serde(default)]
    confidence: Option<String>,
}

fn yes() -> bool {
    true
}

impl Spec {
    /// The keys of a rule that reads values (threshold, rate, stuck), and whether each is
    /// given: an absence or daily rule takes none of them.
    fn reading_keys(&self) -> [(&'static str, bool); 11] {
        [
            ("measure", self.measure.is_some()),
            ("below", self.below.is_some()),
            ("above", self.above.is_some()),
            ("for", self.enter_for.is_some()),
            ("clear_above", self.clear_above.is_some()),
            ("clear_below", self.clear_below.is_some()),
            ("clear_for", self.clear_for.is_some()),
            ("falling_faster_than", self.falling_faster_than.is_some()),
            ("rising_faster_than", self.rising_faster_than.is_some()),
            ("over", self.over.is_some()),
            ("hours", self.hours.is_some()),
        ]
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    rule: Vec<toml::Value>,
}

/// A checked rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub id: String,
    /// Changes whenever the rule's text does, so an alert says which version fired it.
    pub version: String,
    /// What the rule reads; `None` for an absence rule, which reads no value.
    pub measure: Option<Kind>,
    pub severity: Severity,
    /// For a rate rule, the window its change per hour is measured over, ms; the threshold
    /// then applies to that rate (negative: falling).
    pub rate_over_ms: Option<i64>,
    /// Local hours `[from, to)` the rule watches.
    pub hours: Option<(u8, u8)>,
    /// A stuck rule: its value is 1 for a reading flagged `stuck`, else 0.
    pub stuck: bool,
    /// An absence rule, judged on the clock rather than on readings.
    pub absence: Option<Absence>,
    /// Absence rules that hold this one back when their silence explains its own.
    pub inhibited_by: Vec<String>,
    /// What no data counts as (absence rules are about no data, and hold).
    pub on_no_data: OnNoData,
    /// A daily rule, judged on a block's daily indices.
    pub daily: Option<Daily>,
    /// The local months the rule watches, a bit each (bit 1 = January); `None`: all.
    pub months: Option<u16>,
    /// `(cycles, within_ms)`: that many alerts of one scope within that time make the next
    /// an unstable signal's, which stays open for staff.
    pub unstable: (u32, i64),
    pub threshold: Threshold,
    pub orchards: Vec<Ident>,
    pub blocks: Vec<Ident>,
    pub devices: Vec<Ident>,
    pub action: Action,
}

impl Rule {
    /// A rule on readings that no data fires or resolves: judged on the clock as well.
    pub fn no_data_on_the_clock(&self) -> bool {
        self.measure.is_some() && self.on_no_data != OnNoData::Hold
    }

    /// Whether `ts` falls in the rule's local hours (always, without `hours`).
    pub fn in_hours(&self, ts: i64, utc_offset_ms: i64) -> bool {
        self.hours
            .is_none_or(|(from, to)| in_local_hours(ts, utc_offset_ms, from, to))
    }

    /// Whether `ts` falls in the rule's local months (always, without `months`).
    pub fn in_months(&self, ts: i64, utc_offset_ms: i64) -> bool {
        let Some(months) = self.months else {
            return true;
        };
        let local =
            time::OffsetDateTime::from_unix_timestamp((ts + utc_offset_ms).div_euclid(1000))
                .map_or(1, |t| u8::from(t.month()));
        months & (1 << local) != 0
    }

    /// What the state machine is fed for `value` measured at `ts`: the value in the rule's
    /// hours and months; outside them a value past the clear threshold and not the entering one.
    pub fn input(&self, ts: i64, value: f64, utc_offset_ms: i64) -> f64 {
        if self.in_hours(ts, utc_offset_ms) && self.in_months(ts, utc_offset_ms) {
            return value;
        }
        let t = &self.threshold;
        match t.side {
            Side::Below => t.clear.max(t.enter) + 1.0,
            Side::Above => t.clear.min(t.enter) - 1.0,
        }
    }

    /// Whether the rule watches this series.
    pub fn applies(&self, kind: Kind, orchard: &Ident, block: &Ident, device: &Ident) -> bool {
        self.measure == Some(kind) && self.covers(orchard, block, device)
    }

    /// Whether the device is in the rule's orchards, blocks and devices.
    pub fn covers(&self, orchard: &Ident, block: &Ident, device: &Ident) -> bool {
        let any = |list: &[Ident], v: &Ident| list.is_empty() || list.contains(v);
        any(&self.orchards, orchard) && any(&self.blocks, block) && any(&self.devices, device)
    }
}

/// Whether `ts` falls in the local hours `[from, to)`; `from > to` spans midnight.
pub fn in_local_hours(ts: i64, utc_offset_ms: i64, from: u8, to: u8) -> bool {
    let h = ((ts + utc_offset_ms).rem_euclid(86_400_000) / 3_600_000) as u8;
    if from <= to {
        (from..to).contains(&h)
    } else {
        h >= from || h < to
    }
}

/// The placeholders an action text may use.
pub const PLACEHOLDERS: &[&str] = &[
    "orchard",
    "block",
    "device",
    "value",
    "threshold",
    "since",
    // Absence rules: how long, since the newest reading, how many devices, which gateway.
    "silent",
    "last",
    "devices",
    "gateway",
];

/// Fills `{name}` and `{name:.N}` in an action text; `values(name)` gives text or a number.
pub fn render(template: &str, mut values: impl FnMut(&str) -> Option<Filled>) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let Some(close) = rest[open..].find('}') else {
            out.push_str(&rest[open..]);
            return out;
        };
        let inner = &rest[open + 1..open + close];
        let (name, decimals) = match inner.split_once(":.") {
            Some((n, d)) => (n, d.parse::<usize>().ok()),
            None => (inner, None),
        };
        match values(name) {
            Some(Filled::Text(t)) => out.push_str(&t),
            Some(Filled::Number(v)) => match decimals {
                Some(d) => out.push_str(&format!("{v:.d$}")),
                None => out.push_str(&v.to_string()),
            },
            None => out.push_str(&rest[open..=open + close]),
        }
        rest = &rest[open + close + 1..];
    }
    out.push_str(rest);
    out
}

/// A placeholder's value.
pub enum Filled {
    Text(String),
    Number(f64),
}

/// The placeholders of `template` that [`PLACEHOLDERS`] (and, for a daily rule, the index
/// names and `date`) do not know, found as [`render`] finds them.
fn unknown_placeholders(template: &str, daily: bool) -> Vec<String> {
    let mut unknown = Vec::new();
    render(template, |name| {
        let known = PLACEHOLDERS.contains(&name)
            || (daily && (name == "date" || DayIndices::NAMES.contains(&name)));
        if !known {
            unknown.push(name.to_owned());
        }
        None
    });
    unknown
}

/// A stable 64-bit FNV-1a of the rule's text, as hex.
fn version_of(text: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// The rules of `dir`, or the built-in pack when there is none.
pub fn load(dir: Option<&Path>) -> Result<Vec<Rule>, Vec<Problem>> {
    match dir {
        Some(dir) => load_dir(dir),
        None => built_in(),
    }
}

/// The citrus rule pack that ships in the binary.
pub const CITRUS: &str = include_str!("../../config/rules/citrus.toml");

/// The rules orchardd runs when `alerts.rules_dir` is not set: the citrus pack.
pub fn built_in() -> Result<Vec<Rule>, Vec<Problem>> {
    let mut problems = Vec::new();
    let rules = parse("citrus.toml (built in)", CITRUS, &mut problems);
    check_inhibitors("citrus.toml (built in)", &rules, &mut problems);
    if problems.is_empty() {
        Ok(rules)
    } else {
        Err(problems)
    }
}

/// Loads every `*.toml` in `dir`, in name order. A directory that does not exist holds no
/// rules. Returns the enabled rules, or every problem found.
pub fn load_dir(dir: &Path) -> Result<Vec<Rule>, Vec<Problem>> {
    let mut problems = Vec::new();
    let mut rules: Vec<Rule> = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(vec![Problem {
                key: dir.display().to_string(),
                message: format!("cannot read the rules directory: {e}"),
            }]);
        }
    };
    let mut files: Vec<_> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    for path in files {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                problems.push(Problem {
                    key: name,
                    message: format!("cannot be read: {e}"),
                });
                continue;
            }
        };
        for rule in parse(&name, &text, &mut problems) {
            if rules.iter().any(|r| r.id == rule.id) {
                problems.push(Problem {
                    key: format!("{name}: rule `{}`", rule.id),
                    message: "the id is used by another rule; ids must be unique".into(),
                });
            } else {
                rules.push(rule);
            }
        }
    }
    check_inhibitors(&dir.display().to_string(), &rules, &mut problems);
    if problems.is_empty() {
        Ok(rules)
    } else {
        Err(problems)
    }
}

/// The enabled rules of one file, with its problems added to `problems`.
pub fn parse(file: &str, text: &str, problems: &mut Vec<Problem>) -> Vec<Rule> {
    let doc: File = match toml::from_str(text) {
        Ok(d) => d,
        Err(e) => {
            problems.push(Problem {
                key: file.to_owned(),
                message: e.message().to_owned(),
            });
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for (i, value) in doc.rule.into_iter().enumerate() {
        let key = |field: &str| format!("{file}: rule[{i}].{field}");
        let mut problem = |field: &str, message: String| {
            problems.push(Problem {
                key: key(field),
                message,
            })
        };
        let version = version_of(&value.to_string());
        let spec: Spec = match value.try_into() {
            Ok(s) => s,
            Err(e) => {
                let e: toml::de::Error = e;
                problems.push(Problem {
                    key: format!("{file}: rule[{i}]"),
                    message: e.message().to_owned(),
                });
                continue;
            }
        };
        if Ident::parse(&spec.id).is_err() {
            problem("id", "must be 1 to 64 of A-Z a-z 0-9 _ -".into());
        }
        if let Some([from, to]) = spec.hours
            && (from > 23 || to > 24 || from == to)
        {
            problem(
                "hours",
                "must be two different local hours from 0 to 24, such as [18, 7]".into(),
            );
        }
        for (lang, text) in [("en", &spec.action.en), ("zh", &spec.action.zh)] {
            let daily = spec.kind == RuleKind::Daily;
            let unknown = unknown_placeholders(text, daily);
            if !unknown.is_empty() {
                let mut known = PLACEHOLDERS.to_vec();
                if daily {
                    known.push("date");
                    known.extend(DayIndices::NAMES);
                }
                problem(
                    &format!("action.{lang}"),
                    format!(
                        "unknown placeholder {}; use {}",
                        braced(unknown.iter().map(String::as_str)),
                        braced(known.into_iter())
                    ),
                );
            }
        }
        let months = match &spec.months {
            None => None,
            Some(list) if !list.is_empty() && list.iter().all(|m| (1..=12).contains(m)) => {
                Some(list.iter().fold(0u16, |bits, m| bits | 1 << m))
            }
            Some(_) => {
                problem(
                    "months",
                    "must list local months from 1 to 12, such as [4, 5, 6]".into(),
                );
                None
            }
        };
        if spec.kind == RuleKind::Daily {
            if let Some(rule) = daily(spec, version, months, &mut problem) {
                out.push(rule);
            }
            continue;
        }
        if !spec.when.is_empty() {
            problem("when", "only a daily rule takes this".into());
        }
        if spec.not_before_harvest.is_some() {
            problem("not_before_harvest", "only a daily rule takes this".into());
        }
        if spec.kind == RuleKind::Absence {
            // A rule with problems fails the whole load, so it may be pushed all the same.
            if let Some(rule) = absence(spec, version, &mut problem) {
                out.push(rule);
            }
            continue;
        }
        if !spec.inhibited_by.is_empty() && spec.on_no_data != Some(OnNoData::Fire) {
            problem(
                "inhibited_by",
                "a rule on readings is held back only where no data fires it: it takes this with on_no_data = \"fire\"".into(),
            );
        }
        for (field, given) in [
            ("per", spec.per.is_some()),
            ("missed", spec.missed.is_some()),
        ] {
            if given {
                problem(field, "only an absence rule takes this".into());
            }
        }
        let Some(measure) = spec.measure else {
            problem(
                "measure",
                "missing: the kind of reading the rule watches, such as `air_temperature`".into(),
            );
            continue;
        };
        let rate = spec.kind == RuleKind::Rate;
        let stuck = spec.kind == RuleKind::Stuck;
        let thresholds = [
            spec.below,
            spec.above,
            spec.falling_faster_than,
            spec.rising_faster_than,
            spec.clear_above,
            spec.clear_below,
        ];
        if stuck && thresholds.iter().any(Option::is_some) {
            problem(
                "kind",
                "a stuck rule takes no thresholds: it fires on readings flagged `stuck`".into(),
            );
            continue;
        }
        let (side, enter) = match (
            stuck,
            rate,
            spec.below,
            spec.above,
            spec.falling_faster_than,
            spec.rising_faster_than,
        ) {
            (true, ..) => (Side::Above, 1.0),
            (_, false, Some(b), None, None, None) => (Side::Below, b),
            (_, false, None, Some(a), None, None) => (Side::Above, a),
            (_, true, None, None, Some(f), None) if f > 0.0 => (Side::Below, -f),
            (_, true, None, None, None, Some(r)) if r > 0.0 => (Side::Above, r),
            (_, false, ..) => {
                problem(
                    "below",
                    "a threshold rule needs exactly one of `below` and `above`".into(),
                );
                continue;
            }
            (_, true, ..) => {
                problem(
                    "falling_faster_than",
                    "a rate rule needs exactly one of `falling_faster_than` and `rising_faster_than`, above 0 (units per hour)".into(),
                );
                continue;
            }
        };
        let clear = match (side, spec.clear_above, spec.clear_below) {
            _ if stuck => 0.0,
            (Side::Below, c, None) => c.unwrap_or(enter),
            (Side::Above, None, c) => c.unwrap_or(enter),
            (Side::Below, _, Some(_)) => {
                problem(
                    "clear_below",
                    "a `below` rule clears with `clear_above`".into(),
                );
                continue;
            }
            (Side::Above, Some(_), _) => {
                problem(
                    "clear_above",
                    "an `above` rule clears with `clear_below`".into(),
                );
                continue;
            }
        };
        if side.opposite().past(enter, clear) && clear != enter {
            problem(
                if side == Side::Below {
                    "clear_above"
                } else {
                    "clear_below"
                },
                format!("must be on the far side of the threshold {enter}, or equal to it"),
            );
        }
        let (lo, hi) = if rate || stuck {
            (f64::MIN, f64::MAX)
        } else {
            measure.range()
        };
        for (field, v) in [("threshold", enter), ("clear", clear)] {
            if !(lo..=hi).contains(&v) {
                problem(
                    field,
                    format!(
                        "{v} is outside the plausible range of {measure} ({lo}–{hi} {})",
                        measure.unit()
                    ),
                );
            }
        }
        let _ = (&spec.source, &spec.confidence);
        if spec.enabled {
            out.push(Rule {
                id: spec.id,
                version,
                rate_over_ms: rate
                    .then(|| spec.over.unwrap_or(Duration::from_secs(3600)).as_millis() as i64),
                hours: spec.hours.map(|[f, t]| (f, t % 24)),
                stuck,
                absence: None,
                inhibited_by: spec.inhibited_by,
                on_no_data: spec.on_no_data.unwrap_or_default(),
                daily: None,
                months,
                unstable: unstable_of(spec.unstable_after, spec.unstable_within),
                measure: Some(measure),
                severity: spec.severity,
                threshold: Threshold {
                    side,
                    enter,
                    enter_for_ms: spec.enter_for.unwrap_or_default().as_millis() as i64,
                    clear,
                    clear_for_ms: spec.clear_for.unwrap_or_default().as_millis() as i64,
                },
                orchards: spec.orchards,
                blocks: spec.blocks,
                devices: spec.devices,
                action: spec.action,
            });
        }
    }
    out
}

/// `{a}, {b}`: placeholder names as an action text writes them.
fn braced<'a>(names: impl Iterator<Item = &'a str>) -> String {
    names
        .map(|n| format!("{{{n}}}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Alerts of one scope opened more than this often within this time are a flapping signal.
const UNSTABLE_AFTER: u32 = 4;
const UNSTABLE_WITHIN: Duration = Duration::from_secs(6 * 3600);

fn unstable_of(after: Option<u32>, within: Option<Duration>) -> (u32, i64) {
    (
        after.unwrap_or(UNSTABLE_AFTER),
        within.unwrap_or(UNSTABLE_WITHIN).as_millis() as i64,
    )
}

/// An absence rule: `per`, `missed` (3 by default) and `inhibited_by`; no thresholds.
fn absence(spec: Spec, version: String, problem: &mut impl FnMut(&str, String)) -> Option<Rule> {
    let mut fine = true;
    let also = [
        ("months", spec.months.is_some()),
        ("when", !spec.when.is_empty()),
        ("on_no_data", spec.on_no_data.is_some()),
        ("not_before_harvest", spec.not_before_harvest.is_some()),
    ];
    for (field, given) in spec.reading_keys().into_iter().chain(also) {
        if given {
            problem(
                field,
                "an absence rule takes no reading or threshold: it fires when a device misses `missed` reports (its expected interval each)".into(),
            );
            fine = false;
        }
    }
    let missed = spec.missed.unwrap_or(3);
    if !(1..=1000).contains(&missed) {
        problem("missed", "must be 1 to 1000 reports".into());
        fine = false;
    }
    if !spec.enabled || !fine {
        return None;
    }
    Some(Rule {
        id: spec.id,
        version,
        measure: None,
        severity: spec.severity,
        rate_over_ms: None,
        hours: None,
        stuck: false,
        absence: Some(Absence {
            per: spec.per.unwrap_or(Per::Device),
            missed,
        }),
        inhibited_by: spec.inhibited_by,
        on_no_data: OnNoData::Hold,
        daily: None,
        months: None,
        unstable: unstable_of(spec.unstable_after, spec.unstable_within),
        // Not used: an absence rule fires on the clock, not through the threshold machine.
        threshold: Threshold {
            side: Side::Above,
            enter: f64::from(missed),
            enter_for_ms: 0,
            clear: f64::from(missed),
            clear_for_ms: 0,
        },
        orchards: spec.orchards,
        blocks: spec.blocks,
        devices: spec.devices,
        action: spec.action,
    })
}

/// A daily rule: `when` (index = { above, below }), `months`, `on_no_data`; scoped to
/// orchards and blocks, since the indices are a block's.
fn daily(
    spec: Spec,
    version: String,
    months: Option<u16>,
    problem: &mut impl FnMut(&str, String),
) -> Option<Rule> {
    let mut fine = true;
    let mut refuse = |field: &str, message: String| {
        problem(field, message);
        fine = false;
    };
    let also = [
        ("per", spec.per.is_some()),
        ("missed", spec.missed.is_some()),
        ("inhibited_by", !spec.inhibited_by.is_empty()),
        ("devices", !spec.devices.is_empty()),
    ];
    for (field, given) in spec.reading_keys().into_iter().chain(also) {
        if given {
            refuse(
                field,
                "a daily rule tests a block's daily indices with `when`, such as `when.leaf_wet_hours = { above = 10.0 }`".into(),
            );
        }
    }
    if let Some(d) = spec.not_before_harvest
        && (d.as_secs() % 86_400 != 0 || d.is_zero() || d.as_secs() > 366 * 86_400)
    {
        refuse(
            "not_before_harvest",
            "must be whole days, 1 to 366, such as \"30d\"".into(),
        );
    }
    if spec.when.is_empty() {
        refuse(
            "when",
            "missing: at least one index and its bound, such as `when.irrigation_needed_mm = { above = 10.0 }`".into(),
        );
    }
    for (name, bound) in &spec.when {
        if !DayIndices::NAMES.contains(&name.as_str()) {
            refuse(
                &format!("when.{name}"),
                format!(
                    "no such daily index; use one of {}",
                    DayIndices::NAMES.join(", ")
                ),
            );
        }
        match (bound.above, bound.below) {
            (None, None) => refuse(
                &format!("when.{name}"),
                "needs `above`, `below` or both".into(),
            ),
            (Some(a), Some(b)) if a > b => refuse(
                &format!("when.{name}"),
                format!("`above` {a} is over `below` {b}: no value can hold"),
            ),
            _ => {}
        }
    }
    if !spec.enabled || !fine {
        return None;
    }
    let first = spec.when.values().next().copied();
    Some(Rule {
        id: spec.id,
        version,
        measure: None,
        severity: spec.severity,
        rate_over_ms: None,
        hours: None,
        stuck: false,
        absence: None,
        inhibited_by: Vec::new(),
        on_no_data: spec.on_no_data.unwrap_or_default(),
        daily: Some(Daily {
            when: spec.when.into_iter().collect(),
            not_before_harvest_days: spec
                .not_before_harvest
                .map(|d| (d.as_secs() / 86_400) as i64),
        }),
        months,
        unstable: unstable_of(spec.unstable_after, spec.unstable_within),
        // An alert's `threshold`: the first condition's bound.
        threshold: Threshold {
            side: Side::Above,
            enter: first.and_then(|b| b.above.or(b.below)).unwrap_or_default(),
            enter_for_ms: 0,
            clear: 0.0,
            clear_for_ms: 0,
        },
        orchards: spec.orchards,
        blocks: spec.blocks,
        devices: Vec::new(),
        action: spec.action,
    })
}

/// Each `inhibited_by` must name an absence rule that watches something wider: for a rule on
/// readings (whose silences are a device's), a gateway or all-device rule.
fn check_inhibitors(file: &str, rules: &[Rule], problems: &mut Vec<Problem>) {
    for rule in rules {
        let own = rule.absence.as_ref().map_or(Per::Device, |a| a.per);
        for (j, id) in rule.inhibited_by.iter().enumerate() {
            let wider = rules
                .iter()
                .find(|r| &r.id == id)
                .and_then(|r| r.absence.as_ref())
                .map(|a| a.per > own);
            let message = match wider {
                Some(true) => continue,
                Some(false) => format!(
                    "`{id}` watches no more than `{}` does (per = \"{}\"): only a gateway or all-device rule can hold back a narrower one",
                    rule.id,
                    own.as_str()
                ),
                None => format!("`{id}` is no enabled absence rule"),
            };
            problems.push(Problem {
                key: format!("{file}: rule `{}`.inhibited_by[{j}]", rule.id),
                message,
            });
        }
    }
}

/// orchardd's own rule for a store it cannot write (a full disk, `store.max_bytes` reached, a
/// read-only file): not in any pack, so no pack can leave it out. It is opened and resolved
/// by the store watch in the daemon, not by readings.
pub fn store_unwritable() -> Rule {
    Rule {
        id: STORE_UNWRITABLE.into(),
        version: "1".into(),
        measure: None,
        severity: Severity::Critical,
        rate_over_ms: None,
        hours: None,
        stuck: false,
        absence: None,
        inhibited_by: Vec::new(),
        on_no_data: OnNoData::Hold,
        daily: None,
        months: None,
        unstable: (0, 0),
        threshold: Threshold {
            side: Side::Above,
            enter: 0.0,
            enter_for_ms: 0,
            clear: 0.0,
            clear_for_ms: 0,
        },
        orchards: Vec::new(),
        blocks: Vec::new(),
        devices: Vec::new(),
        action: Action {
            en: "orchardd cannot write its store since {since} ({error}). Nothing is acknowledged meanwhile: sensors and the broker keep their readings. Free disk space (or raise store.max_bytes and reload); orchardd resumes by itself.".into(),
            zh: "orchardd 自 {since} 起无法写入数据库（{error}）。在此期间不确认任何消息，传感器和代理会保留读数。请释放磁盘空间（或提高 store.max_bytes 并重新加载）；orchardd 会自动恢复。".into(),
        },
    }
}

/// The id of [`store_unwritable`].
pub const STORE_UNWRITABLE: &str = "store-unwritable";

#[cfg(test)]
mod tests {
    use super::*;

    const FROST: &str = r#"
[[rule]]
id = "frost"
kind = "threshold"
measure = "air_temperature"
severity = "critical"
below = -2.2
for = "4h"
clear_above = 0.5
clear_for = "30m"
blocks = ["B1"]
action.en = "Frost in {block}: {value:.1} °C."
action.zh = "{block} 霜冻：{value:.1} °C。"
source = "UF/IFAS"
"#;

    #[test]
    fn a_threshold_rule_is_read_with_its_durations_and_hysteresis() {
        let mut problems = Vec::new();
        let rules = parse("citrus.toml", FROST, &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        let r = &rules[0];
        assert_eq!(r.threshold.side, Side::Below);
        assert_eq!(r.threshold.enter_for_ms, 4 * 3_600_000);
        assert_eq!((r.threshold.enter, r.threshold.clear), (-2.2, 0.5));
        let o: Ident = "o".parse().unwrap();
        let (b1, b2): (Ident, Ident) = ("B1".parse().unwrap(), "B2".parse().unwrap());
        assert!(r.applies(Kind::AirTemperature, &o, &b1, &o));
        assert!(!r.applies(Kind::AirTemperature, &o, &b2, &o));
        assert!(!r.applies(Kind::SoilTemperature, &o, &b1, &o));
        let text = render(&r.action.en, |n| match n {
            "block" => Some(Filled::Text("B1".into())),
            "value" => Some(Filled::Number(-2.345)),
            _ => None,
        });
        assert_eq!(text, "Frost in B1: -2.3 °C.");
    }

    #[test]
    fn every_problem_is_named_by_file_and_key() {
        let bad = FROST
            .replace("below = -2.2", "below = -2.2\nabove = 30")
            .replace("{value:.1}", "{temperature}")
            .replace("clear_for = \"30m\"", "clear_for = \"soon\"");
        let mut problems = Vec::new();
        parse("citrus.toml", &bad, &mut problems);
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["citrus.toml: rule[0]"], "{problems:?}");
        let bad = FROST
            .replace("below = -2.2", "below = -2.2\nabove = 30")
            .replace("{value:.1}", "{temperature}");
        let mut problems = Vec::new();
        parse("citrus.toml", &bad, &mut problems);
        // Both problems at once, so one run of check-config finds them.
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "citrus.toml: rule[0].action.en",
                "citrus.toml: rule[0].action.zh",
                "citrus.toml: rule[0].below"
            ]
        );
        let bad = FROST.replace("{value:.1}", "{temperature}");
        let mut problems = Vec::new();
        parse("citrus.toml", &bad, &mut problems);
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "citrus.toml: rule[0].action.en",
                "citrus.toml: rule[0].action.zh"
            ]
        );
        assert!(problems[0].message.contains("{temperature}"));
    }

    #[test]
    fn the_built_in_citrus_pack_is_valid_and_says_where_each_threshold_comes_from() {
        let rules = built_in().unwrap();
        let ids: Vec<&str> = rules.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "frost-warning",
                "frost-critical",
                "heat-stress",
                "heat-stress-fruit-set",
                "irrigate-flowering-fruit-set",
                "irrigate",
                "melanose-risk",
                "harvest-ready",
                "sensor-stuck-air",
                "sensor-stuck-soil-moisture",
                "ingest-stalled",
                "gateway-offline",
                "sensor-offline"
            ]
        );
        let critical = &rules[1];
        assert_eq!(critical.threshold.enter, -2.2);
        assert_eq!(critical.threshold.enter_for_ms, 4 * 3_600_000);
        let doc: toml::Value = toml::from_str(CITRUS).unwrap();
        for r in doc["rule"].as_array().unwrap() {
            assert!(
                r.get("source").is_some() && r.get("confidence").is_some(),
                "{r}"
            );
        }
        let irrigate = built_in()
            .unwrap()
            .into_iter()
            .find(|r| r.id == "irrigate")
            .unwrap();
        assert_eq!(irrigate.daily.unwrap().not_before_harvest_days, Some(30));
        let mut problems = Vec::new();
        parse(
            "a.toml",
            &FROST.replace("blocks = [\"B1\"]", "not_before_harvest = \"30d\""),
            &mut problems,
        );
        assert_eq!(problems[0].key, "a.toml: rule[0].not_before_harvest");
    }

    #[test]
    fn a_rate_rule_watches_the_change_per_hour_in_its_hours() {
        let text = r#"
[[rule]]
id = "falling"
kind = "rate"
measure = "air_temperature"
severity = "warning"
falling_faster_than = 1.0
over = "1h"
hours = [18, 7]
action.en = "Falling {value:.1} °C/h in {block}."
action.zh = "{block} 每小时下降 {value:.1} °C。"
"#;
        let mut problems = Vec::new();
        let rules = parse("r.toml", text, &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        let r = &rules[0];
        assert_eq!(r.rate_over_ms, Some(3_600_000));
        assert_eq!((r.threshold.side, r.threshold.enter), (Side::Below, -1.0));
        let at = |h: i64| h * 3_600_000;
        assert!(r.in_hours(at(18), 0) && r.in_hours(at(23), 0) && r.in_hours(at(6), 0));
        assert!(!r.in_hours(at(7), 0) && !r.in_hours(at(12), 0));
        // 22:00 at +08:00 is 14:00 UTC.
        assert!(r.in_hours(at(14), 8 * 3_600_000));
        let outside = r.input(at(12), -5.0, 0);
        assert!(!r.threshold.side.past(outside, r.threshold.enter));
        assert_eq!(r.input(at(22), -5.0, 0), -5.0);
        let mut problems = Vec::new();
        parse(
            "r.toml",
            &text.replace("falling_faster_than = 1.0", "below = 1.0"),
            &mut problems,
        );
        assert_eq!(problems[0].key, "r.toml: rule[0].falling_faster_than");
    }

    #[test]
    fn an_absence_rule_takes_no_threshold_and_is_held_back_only_by_a_wider_one() {
        let text = r#"
[[rule]]
id = "offline"
kind = "absence"
severity = "minor"
inhibited_by = ["gw", "nothing"]
action.en = "{device} silent for {silent}."
action.zh = "{device} 已 {silent} 无数据。"

[[rule]]
id = "gw"
kind = "absence"
per = "gateway"
missed = 4
severity = "major"
inhibited_by = ["offline"]
action.en = "Gateway {gateway}: {devices} devices silent."
action.zh = "网关 {gateway}：{devices} 台设备无数据。"
"#;
        let mut problems = Vec::new();
        let rules = parse("a.toml", text, &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(
            rules[1].absence,
            Some(Absence {
                per: Per::Gateway,
                missed: 4
            })
        );
        assert_eq!(rules[0].absence.as_ref().map(|a| a.missed), Some(3));
        check_inhibitors("a.toml", &rules, &mut problems);
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "a.toml: rule `offline`.inhibited_by[1]",
                "a.toml: rule `gw`.inhibited_by[0]"
            ],
            "{problems:?}"
        );
        let mut problems = Vec::new();
        parse(
            "a.toml",
            &text.replace("missed = 4", "missed = 4\nbelow = 1.0"),
            &mut problems,
        );
        assert_eq!(problems[0].key, "a.toml: rule[1].below");
        let mut problems = Vec::new();
        parse(
            "a.toml",
            &text.replace(
                "kind = \"absence\"\nseverity",
                "kind = \"threshold\"\nseverity",
            ),
            &mut problems,
        );
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            ["a.toml: rule[0].inhibited_by", "a.toml: rule[0].measure"]
        );
    }

    #[test]
    fn the_version_follows_the_rule_text() {
        let mut problems = Vec::new();
        let a = parse("a.toml", FROST, &mut problems);
        let b = parse("a.toml", &FROST.replace("-2.2", "-2.0"), &mut problems);
        let c = parse("a.toml", FROST, &mut problems);
        assert_ne!(a[0].version, b[0].version);
        assert_eq!(a[0].version, c[0].version);
    }
}
