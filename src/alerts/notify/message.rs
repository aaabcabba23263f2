//! Alert events as co-op staff read them in a group chat: what happened and where, what to
//! do (the alert's action text), the reading, and when, in Chinese, English or both; and a
//! digest of the events a robot's minute could not take.

use std::sync::Arc;

use tokio::sync::watch;

use crate::alerts::rules::Rule;
use crate::alerts::store::{Alert, Pending};
use crate::config::Language;
use crate::model::Kind;

/// How a robot words its messages.
#[derive(Clone)]
pub struct Style {
    pub language: Language,
    /// Times are shown at this offset from UTC (`aggregate.utc_offset`).
    pub utc_offset_ms: i64,
    /// The running rules, to tell a rate or stuck rule's value from a reading.
    pub rules: watch::Receiver<Arc<Vec<Rule>>>,
}

/// A message before it takes a robot's format.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// A short line for notifications (DingTalk's markdown title).
    pub title: String,
    pub lines: Vec<Line>,
    /// An escalation: the robot mentions everyone in the group.
    pub mention_all: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Line {
    Heading(String),
    Quote(String),
    Plain(String),
    Item(String),
}

impl Message {
    /// Plain text, a line each.
    pub fn text(&self) -> String {
        let lines: Vec<String> = self
            .lines
            .iter()
            .map(|l| match l {
                Line::Heading(s) | Line::Quote(s) | Line::Plain(s) => s.clone(),
                Line::Item(s) => format!("• {s}"),
            })
            .collect();
        lines.join("\n")
    }

    /// Markdown as DingTalk and WeCom read it: a paragraph each, list items together.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        for (i, l) in self.lines.iter().enumerate() {
            if i > 0 {
                let both_items =
                    matches!(l, Line::Item(_)) && matches!(self.lines[i - 1], Line::Item(_));
                out.push_str(if both_items { "\n" } else { "\n\n" });
            }
            match l {
                Line::Heading(s) => out.push_str(&format!("#### {s}")),
                Line::Quote(s) => out.push_str(&format!("> {s}")),
                Line::Plain(s) => out.push_str(s),
                Line::Item(s) => out.push_str(&format!("- {s}")),
            }
        }
        out
    }

    /// Makes sure the message contains `keyword` (a robot with keyword security refuses
    /// anything else): at the start of the title and of the first line, where no cut reaches.
    pub fn with_keyword(mut self, keyword: Option<&str>) -> Self {
        let Some(k) = keyword.filter(|k| !k.is_empty()) else {
            return self;
        };
        if !self.title.contains(k) {
            self.title = format!("{k} {}", self.title);
        }
        if !self.text().contains(k) {
            match self.lines.first_mut() {
                Some(Line::Heading(s) | Line::Quote(s) | Line::Plain(s) | Line::Item(s)) => {
                    *s = format!("{k} {s}");
                }
                None => self.lines.push(Line::Plain(k.to_owned())),
            }
        }
        self
    }
}

/// `text` cut to at most `max` bytes on a character boundary, ending `…` when cut.
pub fn cut(text: &str, max: usize) -> String {
    const MORE: &str = "…";
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max.saturating_sub(MORE.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{MORE}", &text[..end])
}

impl Style {
    fn say(&self, zh: &str, en: &str) -> String {
        match self.language {
            Language::Zh => zh.to_owned(),
            Language::En => en.to_owned(),
            Language::Both => format!("{zh} / {en}"),
        }
    }

    /// `label：value` in Chinese, `label: value` otherwise.
    fn labelled(&self, zh: &str, en: &str, value: &str) -> String {
        let colon = if self.language == Language::Zh {
            "："
        } else {
            ": "
        };
        format!("{}{colon}{value}", self.say(zh, en))
    }

    /// The message for one event.
    pub fn single(&self, p: &Pending) -> Message {
        let a = &p.alert;
        let (what_zh, what_en) = event_words(&p.kind);
        let heading = format!(
            "{} {} · {}",
            icon(&p.kind, &a.severity),
            self.say(
                &format!("【{}】{what_zh}", severity_zh(&a.severity)),
                &format!("[{}] {what_en}", severity_en(&a.severity)),
            ),
            a.scope
        );
        let mut lines = vec![Line::Heading(heading)];
        if self.language != Language::En {
            lines.push(Line::Quote(a.action.zh.clone()));
        }
        if self.language != Language::Zh {
            lines.push(Line::Quote(a.action.en.clone()));
        }
        let value = if p.kind == "fired" {
            Some(a.value)
        } else {
            p.value
        };
        // An absence or daily alert reads no single kind: its action text has the numbers.
        if let Some(v) = value
            && !a.kind.is_empty()
        {
            let reading = self.reading(a, v);
            lines.push(Line::Plain(self.labelled("读数", "Reading", &reading)));
        }
        let by = |who: &str| match (&p.note, self.language) {
            (Some(note), Language::Zh) => format!("{who}（{note}）"),
            (Some(note), _) => format!("{who} ({note})"),
            (None, _) => who.to_owned(),
        };
        match (p.kind.as_str(), &p.by) {
            ("acknowledged", Some(who)) => {
                lines.push(Line::Plain(self.labelled(
                    "确认人",
                    "Acknowledged by",
                    &by(who),
                )));
            }
            ("resolved", Some(who)) => {
                lines.push(Line::Plain(self.labelled(
                    "解除人",
                    "Resolved by",
                    &by(who),
                )));
            }
            ("resolved", None) => lines.push(Line::Plain(
                self.say("读数已恢复正常，告警自动解除", "Resolved by the readings"),
            )),
            _ => {}
        }
        lines.push(Line::Plain(self.labelled("时间", "Time", &self.time(p.at))));
        lines.push(Line::Plain(format!(
            "{} #{} · {}",
            self.say("告警", "Alert"),
            a.id,
            a.rule
        )));
        Message {
            title: format!(
                "{} {}",
                self.say(
                    &format!("{}{what_zh}", severity_zh(&a.severity)),
                    &format!("{} {what_en}", severity_en(&a.severity)),
                ),
                a.scope
            ),
            mention_all: p.kind == "escalated",
            lines,
        }
    }

    /// One message naming as many of `events` as `fits` lets it, oldest first, and how
    /// many that is (at least one). `per_minute` is the robot's, said in the message.
    pub fn digest(
        &self,
        events: &[Pending],
        per_minute: u32,
        fits: impl Fn(&Message) -> bool,
    ) -> (Message, usize) {
        let mut best = self.digest_of(&events[..1], per_minute);
        let mut named = 1;
        for n in 2..=events.len() {
            let m = self.digest_of(&events[..n], per_minute);
            if !fits(&m) {
                break;
            }
            best = m;
            named = n;
        }
        (best, named)
    }

    fn digest_of(&self, events: &[Pending], per_minute: u32) -> Message {
        let n = events.len();
        let heading = self.say(
            &format!("📋 另有 {n} 条告警事件"),
            &format!("📋 {n} more alert events"),
        );
        let mut lines = vec![
            Line::Heading(heading.clone()),
            Line::Plain(self.say(
                &format!("机器人每分钟最多发送 {per_minute} 条消息，其余汇总如下："),
                &format!("The robot takes {per_minute} messages a minute; the rest in one:"),
            )),
        ];
        for p in events {
            let a = &p.alert;
            let (what_zh, what_en) = event_words(&p.kind);
            let value = if p.kind == "fired" {
                Some(a.value)
            } else {
                p.value
            };
            let value = value
                .filter(|_| !a.kind.is_empty())
                .map(|v| format!(" {}", self.reading_value(a, v)))
                .unwrap_or_default();
            lines.push(Line::Item(format!(
                "{} {} {}{value} · {} · #{}",
                icon(&p.kind, &a.severity),
                self.say(
                    &format!("{}{what_zh}", severity_zh(&a.severity)),
                    &format!("{} {what_en}", severity_en(&a.severity)),
                ),
                a.scope,
                self.time(p.at),
                a.id
            )));
        }
        lines.push(Line::Plain(self.labelled(
            "详情",
            "Details",
            "GET /api/v1/alerts/{id}",
        )));
        Message {
            title: heading,
            lines,
            mention_all: events.iter().any(|p| p.kind == "escalated"),
        }
    }

    /// What the rule measured, and the threshold: "气温 -0.5 °C（阈值 0 °C）".
    fn reading(&self, a: &Alert, value: f64) -> String {
        let measure = Kind::ALL
            .iter()
            .find(|k| k.name() == a.kind)
            .map(|k| self.say(measure_zh(*k), &k.name().replace('_', " ")))
            .unwrap_or_else(|| a.kind.clone());
        let threshold = match self.rule_reads(a) {
            Reads::Stuck => None,
            _ => Some(self.reading_value(a, a.threshold)),
        };
        let value = self.reading_value(a, value);
        match threshold {
            Some(t) if self.language == Language::Zh => format!("{measure} {value}（阈值 {t}）"),
            Some(t) => format!("{measure} {value} ({} {t})", self.say("阈值", "threshold")),
            None => format!("{measure} {value}"),
        }
    }

    /// A value of the alert's rule with its unit: °C for a reading, °C/h for a rate.
    fn reading_value(&self, a: &Alert, v: f64) -> String {
        let unit = Kind::ALL
            .iter()
            .find(|k| k.name() == a.kind)
            .map(|k| k.unit().symbol())
            .unwrap_or("");
        match self.rule_reads(a) {
            Reads::Level => format!("{} {unit}", number(v)),
            Reads::RatePerHour => format!("{} {unit}/h", number(v)),
            Reads::Stuck => self.say("读数不变", "stuck"),
        }
    }

    fn rule_reads(&self, a: &Alert) -> Reads {
        let rules = self.rules.borrow();
        match rules.iter().find(|r| r.id == a.rule) {
            Some(r) if r.stuck => Reads::Stuck,
            Some(r) if r.rate_over_ms.is_some() => Reads::RatePerHour,
            _ => Reads::Level,
        }
    }

    /// Local time to the minute, with its offset: "2025-01-05 01:30 (UTC+08:00)".
    fn time(&self, ms: i64) -> String {
        let offset = time::UtcOffset::from_whole_seconds((self.utc_offset_ms / 1000) as i32)
            .unwrap_or(time::UtcOffset::UTC);
        let Ok(t) = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        else {
            return crate::model::TimestampMs(ms).to_rfc3339();
        };
        let fmt = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]");
        let local = t.to_offset(offset).format(&fmt).unwrap_or_default();
        let zone = if offset.is_utc() {
            "UTC".to_owned()
        } else {
            let (h, m, _) = offset.as_hms();
            format!(
                "UTC{}{:02}:{:02}",
                if h < 0 || m < 0 { '-' } else { '+' },
                h.abs(),
                m.abs()
            )
        };
        format!("{local} ({zone})")
    }
}

/// What an alert's value is.
enum Reads {
    Level,
    RatePerHour,
    Stuck,
}

/// One decimal, and none for a whole number: "-0.5", "0".
fn number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn event_words(kind: &str) -> (&'static str, &'static str) {
    match kind {
        "fired" => ("告警触发", "Alert fired"),
        "acknowledged" => ("告警已确认", "Alert acknowledged"),
        "resolved" => ("告警已解除", "Alert resolved"),
        "escalated" => (
            "告警升级：无人确认",
            "Alert escalated: nobody acknowledged it",
        ),
        "reminder" => (
            "告警提醒：仍未确认",
            "Reminder: still firing, not acknowledged",
        ),
        _ => ("告警事件", "Alert event"),
    }
}

fn icon(kind: &str, severity: &str) -> &'static str {
    match (kind, severity) {
        ("resolved", _) => "✅",
        ("acknowledged", _) => "☑️",
        (_, "critical") => "🔴",
        (_, "major") => "🟠",
        (_, "minor") => "🟡",
        _ => "🔵",
    }
}

fn severity_zh(s: &str) -> &'static str {
    match s {
        "critical" => "严重",
        "major" => "重要",
        "minor" => "一般",
        _ => "提醒",
    }
}

fn severity_en(s: &str) -> &'static str {
    match s {
        "critical" => "Critical",
        "major" => "Major",
        "minor" => "Minor",
        _ => "Warning",
    }
}

fn measure_zh(k: Kind) -> &'static str {
    match k {
        Kind::AirTemperature => "气温",
        Kind::SoilTemperature => "土壤温度",
        Kind::RelativeHumidity => "空气相对湿度",
        Kind::SoilMoisture => "土壤含水量",
        Kind::SoilEc => "土壤电导率",
        Kind::SoilPh => "土壤 pH",
        Kind::LeafWetness => "叶面湿度",
        Kind::Rainfall => "降雨量",
        Kind::WindSpeed => "风速",
        Kind::SolarRadiation => "太阳辐射",
        Kind::Illuminance => "光照度",
        Kind::FruitDiameter => "果径",
        Kind::BatteryV => "电池电压",
        Kind::RssiDbm => "信号强度",
        Kind::SnrDb => "信噪比",
        Kind::Irrigation => "灌溉量",
        Kind::Tss => "可溶性固形物",
        Kind::TitratableAcidity => "可滴定酸",
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::alerts::store::Action;

    pub fn style(language: Language) -> Style {
        let rules = crate::alerts::rules::built_in().unwrap();
        let (_tx, rx) = watch::channel(Arc::new(rules));
        Style {
            language,
            utc_offset_ms: 8 * 3_600_000,
            rules: rx,
        }
    }

    /// The frost warning of the shipped pack, fired at 2025-01-04T17:30Z (01:30 in China).
    pub fn fired(id: i64, device: &str) -> Pending {
        Pending {
            event: id,
            kind: "fired".into(),
            at: 1_736_011_800_000,
            by: None,
            note: None,
            value: Some(-0.5),
            next_attempt_at: None,
            alert: Alert {
                id,
                rule: "frost-warning".into(),
                rule_version: "v".into(),
                scope: format!("fengjie/B1/{device}"),
                orchard: "fengjie".into(),
                block: "B1".into(),
                device: device.into(),
                kind: "air_temperature".into(),
                severity: "warning".into(),
                state: "firing".into(),
                since: String::new(),
                fired_at: String::new(),
                value: -0.5,
                threshold: 0.0,
                action: Action {
                    en: format!(
                        "Frost risk in B1: {device} reads -0.5 °C. Get frost protection ready."
                    ),
                    zh: format!("B1 有霜冻风险：{device} 气温 -0.5 °C。请做好防霜准备。"),
                },
                acknowledged: None,
                resolved_at: None,
                resolved_by: None,
                previous: None,
                unstable: false,
            },
        }
    }

    #[test]
    fn a_fired_event_reads_as_severity_scope_action_reading_and_local_time() {
        let text = style(Language::Zh).single(&fired(3, "ws1")).text();
        assert_eq!(
            text,
            "🔵 【提醒】告警触发 · fengjie/B1/ws1\n\
             B1 有霜冻风险：ws1 气温 -0.5 °C。请做好防霜准备。\n\
             读数：气温 -0.5 °C（阈值 0 °C）\n\
             时间：2025-01-05 01:30 (UTC+08:00)\n\
             告警 #3 · frost-warning"
        );
        let both = style(Language::Both).single(&fired(3, "ws1")).text();
        assert!(
            both.contains("【提醒】告警触发 / [Warning] Alert fired"),
            "{both}"
        );
        assert!(both.contains("请做好防霜准备") && both.contains("Get frost protection ready"));
        let en = style(Language::En).single(&fired(3, "ws1")).markdown();
        assert!(
            en.starts_with("#### 🔵 [Warning] Alert fired · fengjie/B1/ws1\n\n> Frost risk"),
            "{en}"
        );
        assert!(!en.contains("霜冻"), "{en}");
    }

    #[test]
    fn an_acknowledgement_names_who_and_their_note() {
        let mut p = fired(3, "ws1");
        p.kind = "acknowledged".into();
        p.by = Some("李伟".into());
        p.note = Some("风扇已开".into());
        p.value = None;
        let text = style(Language::Zh).single(&p).text();
        assert!(
            text.starts_with("☑️ 【提醒】告警已确认 · fengjie/B1/ws1"),
            "{text}"
        );
        assert!(text.contains("确认人：李伟（风扇已开）"), "{text}");
        assert!(!text.contains("读数"), "{text}");
    }

    #[test]
    fn a_keyword_is_added_once_at_the_start() {
        let m = style(Language::Zh)
            .single(&fired(3, "ws1"))
            .with_keyword(Some("果园"));
        assert!(m.title.starts_with("果园 "));
        assert!(m.text().starts_with("果园 🔵"));
        let again = m.clone().with_keyword(Some("果园"));
        assert_eq!(again, m);
    }

    #[test]
    fn a_cut_ends_on_a_character_boundary_within_the_limit() {
        let zh = "霜".repeat(1000); // 3 000 bytes
        for max in [2048, 2047, 2046, 4] {
            let c = cut(&zh, max);
            assert!(c.len() <= max, "{max}: {}", c.len());
            assert!(c.len() + 3 > max - 3, "{max}: as much as fits");
            assert!(c.ends_with('…'));
        }
        assert_eq!(cut("short", 2048), "short");
    }

    #[test]
    fn a_digest_names_as_many_events_as_fit() {
        let events: Vec<Pending> = (1..=30).map(|i| fired(i, &format!("ws{i}"))).collect();
        let s = style(Language::Zh);
        let (m, n) = s.digest(&events, 18, |m| m.markdown().len() <= 4096);
        assert_eq!(n, 30);
        let text = m.markdown();
        assert!(text.starts_with("#### 📋 另有 30 条告警事件"), "{text}");
        assert!(
            text.contains(
                "- 🔵 提醒告警触发 fengjie/B1/ws30 -0.5 °C · 2025-01-05 01:30 (UTC+08:00) · #30"
            ),
            "{text}"
        );
        let (m, n) = s.digest(&events, 18, |m| m.text().len() <= 1000);
        assert!(n < 30 && m.text().len() <= 1000);
        assert!(m.text().contains(&format!("另有 {n} 条")));
    }
}
