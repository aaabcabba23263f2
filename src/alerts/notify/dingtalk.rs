//! `dingtalk:{name}`: a DingTalk group robot (钉钉群自定义机器人). Text or markdown; signed
//! (加签: `timestamp` and `sign` in the query) or trusted by a keyword every message contains.
//! DingTalk takes 20 messages a minute from a robot and answers errcode 130101 past that,
//! refusing the robot for ten minutes: orchardd sends at most `per_minute` (18) and waits the
//! ten minutes when told.

use std::time::Duration;

use serde_json::{Value, json};

use super::http;
use super::message::{Message, Style};
use super::robot::{self, Robot, SlowDown, Voice};
use crate::alerts::store::Attempt;
use crate::config::{DingTalkSecurity, DingTalkSettings, MessageFormat};
use crate::model::TimestampMs;

/// "send too fast, exceed 20 times per minute": the robot is refused for ten minutes.
const TOO_FAST: SlowDown = SlowDown {
    code: 130101,
    wait: Duration::from_secs(600),
};
/// DingTalk's limit on a message is about 20 000 bytes; a little less leaves room for JSON.
const MAX_BYTES: usize = 18_000;

pub struct DingTalk {
    settings: DingTalkSettings,
    url: reqwest::Url,
    client: reqwest::Client,
    voice: Voice,
}

impl DingTalk {
    pub fn new(settings: DingTalkSettings, style: Style) -> Result<Self, String> {
        let channel = format!("dingtalk:{}", settings.name);
        let url = reqwest::Url::parse(&settings.url).map_err(|e| format!("{channel}: {e}"))?;
        let client = http::client(settings.timeout, &channel)?;
        let voice = Voice {
            style,
            format: settings.format,
            keyword: settings.keyword.clone(),
            max_bytes: MAX_BYTES,
            per_minute: settings.per_minute,
        };
        Ok(Self {
            settings,
            url,
            client,
            voice,
        })
    }

    /// The webhook, with `timestamp` and `sign` when the robot signs.
    fn url(&self, now_ms: i64) -> reqwest::Url {
        let mut url = self.url.clone();
        if let (DingTalkSecurity::Sign, Some(secret)) =
            (self.settings.security, &self.settings.secret)
        {
            url.query_pairs_mut()
                .append_pair("timestamp", &now_ms.to_string())
                .append_pair("sign", &sign(secret, now_ms));
        }
        url
    }

    fn body(&self, m: &Message) -> Value {
        let content = self.voice.content(m);
        let mut body = match self.settings.format {
            MessageFormat::Text => json!({"msgtype": "text", "text": {"content": content}}),
            MessageFormat::Markdown => json!({
                "msgtype": "markdown",
                "markdown": {"title": m.title, "text": content},
            }),
        };
        if m.mention_all {
            body["at"] = json!({"isAtAll": true});
        }
        body
    }
}

/// DingTalk's signature: base64 of the HMAC-SHA256 of `"{timestamp_ms}\n{secret}"` keyed by
/// the secret (the query string URL-encodes it).
pub fn sign(secret: &str, timestamp_ms: i64) -> String {
    robot::hmac_base64(
        secret.as_bytes(),
        format!("{timestamp_ms}\n{secret}").as_bytes(),
    )
}

impl Robot for DingTalk {
    const SERVICE: &'static str = "dingtalk";

    fn robot_name(&self) -> &str {
        &self.settings.name
    }

    fn voice(&self) -> &Voice {
        &self.voice
    }

    async fn send(&self, m: &Message) -> Attempt {
        let request = self
            .client
            .post(self.url(TimestampMs::now().0))
            .json(&self.body(m));
        match http::post(request, self.settings.timeout).await {
            Ok(answer) => robot::judge("DingTalk", &answer, &[TOO_FAST]),
            Err(failed) => failed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_dingtalks() {
        // python3 -c 'import hmac,hashlib,base64; s="SEC0123456789abcdef"; print(base64.b64encode(
        //   hmac.new(s.encode(), ("1700000000000\n"+s).encode(), hashlib.sha256).digest()).decode())'
        assert_eq!(
            sign("SEC0123456789abcdef", 1_700_000_000_000),
            "TSZbRFUuvaSQaRKUpF970OPCb2/LcQAP3wOvwZIzBZk="
        );
    }

    #[test]
    fn a_signed_url_carries_the_timestamp_and_the_url_encoded_sign() {
        let settings = DingTalkSettings {
            name: "field".into(),
            url: "https://oapi.dingtalk.com/robot/send?access_token=abc".into(),
            security: DingTalkSecurity::Sign,
            secret: Some("SEC0123456789abcdef".into()),
            keyword: None,
            format: MessageFormat::Markdown,
            language: crate::config::Language::Zh,
            per_minute: 18,
            timeout: Duration::from_secs(10),
        };
        let style = super::super::message::tests::style(settings.language);
        let robot = DingTalk::new(settings, style).unwrap();
        // python3 -c 'import urllib.parse; print(urllib.parse.quote_plus("TSZb…BZk="))'
        assert_eq!(
            robot.url(1_700_000_000_000).as_str(),
            "https://oapi.dingtalk.com/robot/send?access_token=abc&timestamp=1700000000000\
             &sign=TSZbRFUuvaSQaRKUpF970OPCb2%2FLcQAP3wOvwZIzBZk%3D"
        );
        let body = robot.body(
            &robot
                .voice
                .single(&super::super::message::tests::fired(3, "ws1")),
        );
        assert_eq!(body["msgtype"], "markdown");
        assert!(
            body["markdown"]["title"]
                .as_str()
                .unwrap()
                .contains("fengjie/B1/ws1")
        );
        assert!(
            body["markdown"]["text"]
                .as_str()
                .unwrap()
                .starts_with("#### 🔵")
        );
    }
}
