//! `wecom:{name}`: a WeCom group robot (企业微信群机器人). Text up to 2 048 bytes, markdown up
//! to 4 096, cut on a character boundary; 20 messages a minute, errcode 45009 past that.

use std::time::Duration;

use serde_json::{Value, json};

use super::http;
use super::message::{Message, Style};
use super::robot::{self, Robot, SlowDown, Voice};
use crate::alerts::store::Attempt;
use crate::config::{MessageFormat, WeComSettings};

/// "api freq out of limit": WeCom counts a robot's messages by the minute.
const FREQ_OUT_OF_LIMIT: SlowDown = SlowDown {
    code: 45009,
    wait: Duration::from_secs(60),
};

/// The most bytes WeCom takes in a message's content.
pub fn max_bytes(format: MessageFormat) -> usize {
    match format {
        MessageFormat::Text => 2048,
        MessageFormat::Markdown => 4096,
    }
}

pub struct WeCom {
    settings: WeComSettings,
    client: reqwest::Client,
    voice: Voice,
}

impl WeCom {
    pub fn new(settings: WeComSettings, style: Style) -> Result<Self, String> {
        let client = http::client(settings.timeout, &format!("wecom:{}", settings.name))?;
        let voice = Voice {
            style,
            format: settings.format,
            keyword: None,
            max_bytes: max_bytes(settings.format),
            per_minute: settings.per_minute,
        };
        Ok(Self {
            settings,
            client,
            voice,
        })
    }

    fn body(&self, m: &Message) -> Value {
        let content = self.voice.content(m);
        match self.settings.format {
            // WeCom mentions in text messages only: markdown takes no `mentioned_list`.
            MessageFormat::Text if m.mention_all => json!({
                "msgtype": "text",
                "text": {"content": content, "mentioned_list": ["@all"]},
            }),
            MessageFormat::Text => json!({"msgtype": "text", "text": {"content": content}}),
            MessageFormat::Markdown => {
                json!({"msgtype": "markdown", "markdown": {"content": content}})
            }
        }
    }
}

impl Robot for WeCom {
    const SERVICE: &'static str = "wecom";

    fn robot_name(&self) -> &str {
        &self.settings.name
    }

    fn voice(&self) -> &Voice {
        &self.voice
    }

    async fn send(&self, m: &Message) -> Attempt {
        let request = self.client.post(&self.settings.url).json(&self.body(m));
        match http::post(request, self.settings.timeout).await {
            Ok(answer) => robot::judge("WeCom", &answer, &[FREQ_OUT_OF_LIMIT]),
            Err(failed) => failed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::message::tests::{fired, style};
    use super::*;
    use crate::config::Language;

    #[test]
    fn a_long_chinese_action_is_cut_to_what_wecom_takes() {
        for format in [MessageFormat::Text, MessageFormat::Markdown] {
            let robot = WeCom::new(
                WeComSettings {
                    name: "office".into(),
                    url: "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=k".into(),
                    format,
                    language: Language::Zh,
                    per_minute: 18,
                    timeout: Duration::from_secs(10),
                },
                style(Language::Zh),
            )
            .unwrap();
            let mut p = fired(3, "ws1");
            p.alert.action.zh = "请立即启动防霜风机并检查果实。".repeat(200);
            let body = robot.body(&robot.voice.single(&p));
            let kind = body["msgtype"].as_str().unwrap();
            let content = body[kind]["content"].as_str().unwrap();
            assert!(content.len() <= max_bytes(format), "{}", content.len());
            assert!(content.len() > max_bytes(format) - 6, "{}", content.len());
            assert!(content.ends_with('…'), "{content}");
        }
    }
}
