//! `feishu:{name}`: a Feishu (Lark) custom bot (飞书自定义机器人). Text, signed in the body
//! (签名校验) when it has a secret, and a keyword in every message when it has one. Feishu
//! takes 100 messages a minute and 5 a second from a bot; code 11232 past that.

use std::time::Duration;

use serde_json::{Value, json};

use super::http;
use super::message::{Message, Style};
use super::robot::{self, Robot, SlowDown, Voice};
use crate::alerts::store::Attempt;
use crate::config::{FeishuSettings, MessageFormat};
use crate::model::TimestampMs;

/// "frequency limited": the bot's minute is spent.
const FREQUENCY_LIMITED: SlowDown = SlowDown {
    code: 11232,
    wait: Duration::from_secs(60),
};
/// Feishu takes a request body of up to 20 KB.
const MAX_BYTES: usize = 18_000;
/// 5 a second at most; 4 leaves a margin.
const MIN_GAP: Duration = Duration::from_millis(250);

pub struct Feishu {
    settings: FeishuSettings,
    client: reqwest::Client,
    voice: Voice,
}

impl Feishu {
    pub fn new(settings: FeishuSettings, style: Style) -> Result<Self, String> {
        let client = http::client(settings.timeout, &format!("feishu:{}", settings.name))?;
        let voice = Voice {
            style,
            format: MessageFormat::Text,
            keyword: settings.keyword.clone(),
            max_bytes: MAX_BYTES,
            per_minute: settings.per_minute,
        };
        Ok(Self {
            settings,
            client,
            voice,
        })
    }

    fn body(&self, m: &Message, now_s: i64) -> Value {
        let mut text = self.voice.content(m);
        if m.mention_all {
            text = format!("<at user_id=\"all\">所有人</at> {text}");
        }
        let mut body = json!({"msg_type": "text", "content": {"text": text}});
        if let Some(secret) = &self.settings.secret {
            body["timestamp"] = json!(now_s.to_string());
            body["sign"] = json!(sign(secret, now_s));
        }
        body
    }
}

/// Feishu's signature: base64 of the HMAC-SHA256 of an empty message keyed by
/// `"{timestamp_s}\n{secret}"`.
pub fn sign(secret: &str, timestamp_s: i64) -> String {
    robot::hmac_base64(format!("{timestamp_s}\n{secret}").as_bytes(), b"")
}

impl Robot for Feishu {
    const SERVICE: &'static str = "feishu";
    const MIN_GAP: Duration = MIN_GAP;

    fn robot_name(&self) -> &str {
        &self.settings.name
    }

    fn voice(&self) -> &Voice {
        &self.voice
    }

    async fn send(&self, m: &Message) -> Attempt {
        let now_s = TimestampMs::now().0 / 1000;
        let request = self
            .client
            .post(&self.settings.url)
            .json(&self.body(m, now_s));
        match http::post(request, self.settings.timeout).await {
            Ok(answer) => robot::judge("Feishu", &answer, &[FREQUENCY_LIMITED]),
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
    fn the_signature_is_feishus() {
        // python3 -c 'import hmac,hashlib,base64; print(base64.b64encode(hmac.new(
        //   "1700000000\nfeishu-secret".encode(), b"", hashlib.sha256).digest()).decode())'
        assert_eq!(
            sign("feishu-secret", 1_700_000_000),
            "OrBzY1Y01Gq+HgJsl+7OfWcMVwc7YocohQm5iiZwjhU="
        );
    }

    #[test]
    fn a_signed_body_carries_timestamp_sign_and_the_keyword() {
        let robot = Feishu::new(
            FeishuSettings {
                name: "packhouse".into(),
                url: "https://open.feishu.cn/open-apis/bot/v2/hook/h".into(),
                secret: Some("feishu-secret".into()),
                keyword: Some("orchardd".into()),
                language: Language::Zh,
                per_minute: 90,
                timeout: Duration::from_secs(10),
            },
            style(Language::Zh),
        )
        .unwrap();
        let body = robot.body(&robot.voice.single(&fired(3, "ws1")), 1_700_000_000);
        assert_eq!(body["timestamp"], "1700000000");
        assert_eq!(body["sign"], "OrBzY1Y01Gq+HgJsl+7OfWcMVwc7YocohQm5iiZwjhU=");
        assert_eq!(body["msg_type"], "text");
        assert!(
            body["content"]["text"]
                .as_str()
                .unwrap()
                .starts_with("orchardd 🔵")
        );
    }
}
