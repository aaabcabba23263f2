//! `[alerts]`: where the rules are, and the channels beside MQTT that every alert event is
//! delivered on: generic webhooks and the DingTalk, WeCom and Feishu group robots.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `[alerts]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlertSettings {
    /// The directory of rule files (`*.toml`, each a list of `[[rule]]`). Unset: the citrus
    /// rule pack built into orchardd (`config/rules/citrus.toml`).
    pub rules_dir: Option<PathBuf>,
    /// Daily-index rules judge a block whose devices report at most this often (and always
    /// at start-up and after local midnight): each judgement computes the block's indices.
    #[serde(with = "humantime_serde")]
    pub daily_every: Duration,
    /// Local hours `[from, to)` (at `aggregate.utc_offset`) in which webhooks and group robots
    /// get only critical alerts; the rest wait until the quiet hours end. MQTT, a feed for
    /// software, is never held back.
    pub quiet_hours: Option<[u8; 2]>,
    /// An alert still firing (nobody acknowledged it) is sent again this often, as a
    /// `reminder` event; 0 turns reminders off.
    #[serde(with = "humantime_serde")]
    pub repeat_every: Duration,
    /// A critical alert nobody acknowledged in time goes to more channels, mentioning
    /// everyone.
    pub escalation: Option<EscalationSettings>,
    /// Generic webhooks: every alert event POSTed as JSON, signed.
    pub webhooks: Vec<WebhookSettings>,
    /// DingTalk group robots (钉钉群自定义机器人).
    pub dingtalk: Vec<DingTalkSettings>,
    /// WeCom group robots (企业微信群机器人).
    pub wecom: Vec<WeComSettings>,
    /// Feishu / Lark custom bots (飞书自定义机器人).
    pub feishu: Vec<FeishuSettings>,
}

impl Default for AlertSettings {
    fn default() -> Self {
        Self {
            rules_dir: None,
            daily_every: Duration::from_secs(300),
            quiet_hours: None,
            repeat_every: Duration::from_secs(4 * 3600),
            escalation: None,
            webhooks: Vec::new(),
            dingtalk: Vec::new(),
            wecom: Vec::new(),
            feishu: Vec::new(),
        }
    }
}

/// `[alerts.escalation]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EscalationSettings {
    /// A critical alert still unacknowledged this long after it fired escalates.
    #[serde(with = "humantime_serde")]
    pub after: Duration,
    /// The channels the escalation goes to, by name (`dingtalk:managers`, `webhook:ops`);
    /// group robots mention everyone (@all).
    pub channels: Vec<String>,
    /// These channels hear escalations only, not every event.
    #[serde(default)]
    pub exclusive: bool,
}

impl AlertSettings {
    /// The names of the channels configured here (not `mqtt`, which the broker mode gives).
    pub fn channel_names(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .webhooks
            .iter()
            .map(|w| format!("webhook:{}", w.name))
            .collect();
        out.extend(self.dingtalk.iter().map(|d| format!("dingtalk:{}", d.name)));
        out.extend(self.wecom.iter().map(|w| format!("wecom:{}", w.name)));
        out.extend(self.feishu.iter().map(|f| format!("feishu:{}", f.name)));
        out
    }
}

/// `[[alerts.webhooks]]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSettings {
    /// Names the channel (`webhook:{name}`) in the delivery log.
    pub name: String,
    pub url: String,
    /// Signs each body: `X-Orchardd-Signature: sha256=` and the hex HMAC-SHA256 of the body.
    #[serde(default)]
    pub secret: Option<String>,
}

/// The language of a robot's messages. The alert's action text is written in both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    /// Chinese only: the default, as the groups these robots post to are the co-op's staff,
    /// and half the text reads better on a phone and fits WeCom's 2 048 bytes more often.
    #[default]
    Zh,
    En,
    /// Chinese, then English: for groups with staff of both.
    Both,
}

/// A robot message's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MessageFormat {
    Text,
    Markdown,
}

/// How a DingTalk robot knows a message is from its owner (its 安全设置).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DingTalkSecurity {
    /// 加签: each request signed with the robot's `SEC…` secret. DingTalk's recommendation.
    #[default]
    Sign,
    /// 自定义关键词: the robot takes only messages that contain a keyword.
    Keyword,
}

/// `[[alerts.dingtalk]]`: a DingTalk group robot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DingTalkSettings {
    /// Names the channel (`dingtalk:{name}`) in the delivery log.
    pub name: String,
    /// The robot's webhook: `https://oapi.dingtalk.com/robot/send?access_token=…`.
    pub url: String,
    #[serde(default)]
    pub security: DingTalkSecurity,
    /// `security = "sign"`: the secret shown under 加签, starting `SEC`.
    #[serde(default)]
    pub secret: Option<String>,
    /// `security = "keyword"` (or as well as signing): a keyword of the robot's; every
    /// message starts with it unless it contains it already.
    #[serde(default)]
    pub keyword: Option<String>,
    #[serde(default = "markdown")]
    pub format: MessageFormat,
    #[serde(default)]
    pub language: Language,
    /// Messages a minute at most. DingTalk takes 20 and then refuses the robot for ten
    /// minutes; 18 leaves room for a request it counted and orchardd did not.
    #[serde(default = "eighteen")]
    pub per_minute: u32,
    /// How long to wait for an answer.
    #[serde(default = "robot_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

/// `[[alerts.wecom]]`: a WeCom group robot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeComSettings {
    /// Names the channel (`wecom:{name}`) in the delivery log.
    pub name: String,
    /// The robot's webhook: `https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=…`.
    pub url: String,
    /// `text` by default: WeCom shows markdown in its own app only, not to members who read
    /// the group in WeChat.
    #[serde(default = "text")]
    pub format: MessageFormat,
    #[serde(default)]
    pub language: Language,
    /// Messages a minute at most. WeCom takes 20; 18 as for DingTalk.
    #[serde(default = "eighteen")]
    pub per_minute: u32,
    #[serde(default = "robot_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

/// `[[alerts.feishu]]`: a Feishu (Lark) custom bot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeishuSettings {
    /// Names the channel (`feishu:{name}`) in the delivery log.
    pub name: String,
    /// The bot's webhook: `https://open.feishu.cn/open-apis/bot/v2/hook/…`.
    pub url: String,
    /// The secret of 签名校验: each message is signed with it.
    #[serde(default)]
    pub secret: Option<String>,
    /// A keyword of 自定义关键词: every message starts with it unless it contains it.
    #[serde(default)]
    pub keyword: Option<String>,
    #[serde(default)]
    pub language: Language,
    /// Messages a minute at most. Feishu takes 100 a minute and 5 a second; orchardd also
    /// leaves 250 ms between two messages.
    #[serde(default = "ninety")]
    pub per_minute: u32,
    #[serde(default = "robot_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

fn markdown() -> MessageFormat {
    MessageFormat::Markdown
}
fn text() -> MessageFormat {
    MessageFormat::Text
}
fn eighteen() -> u32 {
    18
}
fn ninety() -> u32 {
    90
}
fn robot_timeout() -> Duration {
    Duration::from_secs(10)
}

/// What every notifier's table has, for the checks they share.
struct Common<'a> {
    key: String,
    name: &'a str,
    url: &'a str,
}

impl AlertSettings {
    /// Every problem of the notifiers' tables, by key path.
    pub(super) fn problems(&self, problem: &mut impl FnMut(&str, String)) {
        if let Some(e) = &self.escalation {
            if e.after.is_zero() {
                problem(
                    "alerts.escalation.after",
                    "must be longer than 0, such as \"15m\"".into(),
                );
            }
            if e.channels.is_empty() {
                problem(
                    "alerts.escalation.channels",
                    "must name at least one channel, such as \"dingtalk:managers\"".into(),
                );
            }
            let names = self.channel_names();
            for (i, c) in e.channels.iter().enumerate() {
                if c != "mqtt" && !names.contains(c) {
                    problem(
                        &format!("alerts.escalation.channels[{i}]"),
                        format!(
                            "`{c}` is no configured channel; there are: mqtt{}",
                            names.iter().map(|n| format!(", {n}")).collect::<String>()
                        ),
                    );
                }
            }
        }
        if let Some([from, to]) = self.quiet_hours
            && (from > 23 || to > 24 || from == to)
        {
            problem(
                "alerts.quiet_hours",
                "must be two different local hours from 0 to 24, such as [22, 7]".into(),
            );
        }
        let mut common = Vec::new();
        for (i, w) in self.webhooks.iter().enumerate() {
            let key = format!("alerts.webhooks[{i}]");
            if w.secret.as_deref().is_some_and(str::is_empty) {
                problem(
                    &format!("{key}.secret"),
                    "must not be empty; leave it out for no signature".into(),
                );
            }
            common.push(Common {
                key,
                name: &w.name,
                url: &w.url,
            });
        }
        for (i, d) in self.dingtalk.iter().enumerate() {
            let key = format!("alerts.dingtalk[{i}]");
            let k = |field: &str| format!("{key}.{field}");
            match (d.security, d.secret.is_some(), d.keyword.is_some()) {
                (DingTalkSecurity::Sign, false, _) => problem(
                    &k("secret"),
                    "security = \"sign\" needs the robot's secret (加签, starting SEC)".into(),
                ),
                (DingTalkSecurity::Keyword, _, false) => problem(
                    &k("keyword"),
                    "security = \"keyword\" needs one of the robot's keywords".into(),
                ),
                (DingTalkSecurity::Keyword, true, true) => problem(
                    &k("secret"),
                    "is used only with security = \"sign\"; remove it, or set security = \"sign\" (the keyword is kept as well)".into(),
                ),
                _ => {}
            }
            empty_secrets(&key, &d.secret, &d.keyword, problem);
            per_minute(&k("per_minute"), d.per_minute, 20, problem);
            timeout(&k("timeout"), d.timeout, problem);
            common.push(Common {
                key,
                name: &d.name,
                url: &d.url,
            });
        }
        for (i, w) in self.wecom.iter().enumerate() {
            let key = format!("alerts.wecom[{i}]");
            per_minute(&format!("{key}.per_minute"), w.per_minute, 20, problem);
            timeout(&format!("{key}.timeout"), w.timeout, problem);
            common.push(Common {
                key,
                name: &w.name,
                url: &w.url,
            });
        }
        for (i, f) in self.feishu.iter().enumerate() {
            let key = format!("alerts.feishu[{i}]");
            empty_secrets(&key, &f.secret, &f.keyword, problem);
            per_minute(&format!("{key}.per_minute"), f.per_minute, 100, problem);
            timeout(&format!("{key}.timeout"), f.timeout, problem);
            common.push(Common {
                key,
                name: &f.name,
                url: &f.url,
            });
        }
        for (i, c) in common.iter().enumerate() {
            if crate::model::Ident::parse(c.name).is_err() {
                problem(
                    &format!("{}.name", c.key),
                    "must be 1 to 64 of A-Z a-z 0-9 _ -".into(),
                );
            }
            if let Some(other) = common[..i].iter().find(|o| o.name == c.name) {
                problem(
                    &format!("{}.name", c.key),
                    format!(
                        "`{}` is used by {} too: every notifier needs a name of its own",
                        c.name, other.key
                    ),
                );
            }
            if !(c.url.starts_with("http://") || c.url.starts_with("https://"))
                || reqwest::Url::parse(c.url).is_err()
            {
                problem(
                    &format!("{}.url", c.key),
                    "must be an http:// or https:// URL".into(),
                );
            }
        }
    }
}

fn empty_secrets(
    key: &str,
    secret: &Option<String>,
    keyword: &Option<String>,
    problem: &mut impl FnMut(&str, String),
) {
    for (field, v) in [("secret", secret), ("keyword", keyword)] {
        if v.as_deref().is_some_and(|s| s.trim().is_empty()) {
            problem(
                &format!("{key}.{field}"),
                "must not be empty; leave it out if the robot has none".into(),
            );
        }
    }
}

fn per_minute(key: &str, n: u32, most: u32, problem: &mut impl FnMut(&str, String)) {
    if !(1..=most).contains(&n) {
        problem(
            key,
            format!("must be from 1 to {most}, what the service takes a minute"),
        );
    }
}

fn timeout(key: &str, t: Duration, problem: &mut impl FnMut(&str, String)) {
    if t < Duration::from_millis(100) || t > Duration::from_secs(120) {
        problem(key, "must be from 100ms to 2m".into());
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{ConfigError, Settings};

    #[test]
    fn every_robot_problem_is_reported_with_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("robots.toml");
        std::fs::write(
            &file,
            r#"
[[alerts.webhooks]]
name = "ops"
url = "https://ops.example.coop/orchardd"
[[alerts.dingtalk]]
name = "field"
url = "https://oapi.dingtalk.com/robot/send?access_token=x"
[[alerts.dingtalk]]
name = "office"
url = "https://oapi.dingtalk.com/robot/send?access_token=y"
security = "keyword"
per_minute = 25
[[alerts.wecom]]
name = "ops"
url = "qyapi.weixin.qq.com/cgi-bin/webhook/send?key=z"
[[alerts.feishu]]
name = "packhouse"
url = "https://open.feishu.cn/open-apis/bot/v2/hook/w"
secret = ""
timeout = "0s"
"#,
        )
        .unwrap();
        let Err(ConfigError::Invalid(problems)) = Settings::load_with_env(Some(&file), Vec::new())
        else {
            panic!("expected problems");
        };
        let found: Vec<(&str, &str)> = problems
            .iter()
            .map(|p| (p.key.as_str(), p.message.as_str()))
            .collect();
        let keys: Vec<&str> = found.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            keys,
            [
                "alerts.dingtalk[0].secret",
                "alerts.dingtalk[1].keyword",
                "alerts.dingtalk[1].per_minute",
                "alerts.feishu[0].secret",
                "alerts.feishu[0].timeout",
                "alerts.wecom[0].name",
                "alerts.wecom[0].url",
            ],
            "{problems:?}"
        );
        assert!(found[5].1.contains("alerts.webhooks[0]"), "{}", found[5].1);
    }

    #[test]
    fn escalation_and_quiet_hours_problems_are_reported_with_their_keys() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("escalation.toml");
        std::fs::write(
            &file,
            r#"
[alerts]
quiet_hours = [22, 22]
[alerts.escalation]
after = "0s"
channels = ["mqtt", "dingtalk:managers", "webhook:ops"]
[[alerts.webhooks]]
name = "ops"
url = "https://ops.example.coop/orchardd"
"#,
        )
        .unwrap();
        let Err(ConfigError::Invalid(problems)) = Settings::load_with_env(Some(&file), Vec::new())
        else {
            panic!("expected problems");
        };
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "alerts.escalation.after",
                "alerts.escalation.channels[1]",
                "alerts.quiet_hours"
            ],
            "{problems:?}"
        );
        assert!(
            problems[1].message.contains("mqtt, webhook:ops"),
            "{}",
            problems[1].message
        );
    }

    #[test]
    fn a_robot_takes_the_documented_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("robots.toml");
        std::fs::write(
            &file,
            r#"
[[alerts.dingtalk]]
name = "field"
url = "https://oapi.dingtalk.com/robot/send?access_token=x"
secret = "SEC0123"
[[alerts.wecom]]
name = "office"
url = "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=z"
[[alerts.feishu]]
name = "packhouse"
url = "https://open.feishu.cn/open-apis/bot/v2/hook/w"
"#,
        )
        .unwrap();
        let s = Settings::load_with_env(Some(&file), Vec::new()).unwrap();
        let (d, w, f) = (
            &s.alerts.dingtalk[0],
            &s.alerts.wecom[0],
            &s.alerts.feishu[0],
        );
        assert_eq!(d.security, super::DingTalkSecurity::Sign);
        assert_eq!(d.format, super::MessageFormat::Markdown);
        assert_eq!((d.per_minute, w.per_minute, f.per_minute), (18, 18, 90));
        assert_eq!(w.format, super::MessageFormat::Text);
        assert_eq!(f.language, super::Language::Zh);
    }
}
