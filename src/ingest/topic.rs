//! Topic patterns: which MQTT topics orchardd takes, and the identity each topic gives.

use crate::model::{Ident, truncate};
use crate::validate::{Origin, Reason, Rejection};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Level {
    Literal(String),
    /// `+`: any one level.
    Any,
    /// `#`: the rest of the topic, at the end only.
    Rest,
    Orchard,
    Block,
    Device,
}

/// An MQTT topic filter whose levels may also be `{orchard}`, `{block}` and `{device}`
/// placeholders: all three, when the topic carries a reading's identity, or none, when the
/// payload names the device (LoRaWAN, SenML) and the device registry places it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicPattern {
    levels: Vec<Level>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("topic pattern `{pattern}`: {problem}")]
pub struct PatternError {
    pattern: String,
    problem: &'static str,
}

impl TopicPattern {
    /// A pattern that must carry the identity: `{orchard}`, `{block}` and `{device}` once each.
    pub fn parse(pattern: &str) -> Result<Self, PatternError> {
        let p = Self::parse_filter(pattern)?;
        if !p.carries_identity() {
            return Err(PatternError {
                pattern: pattern.to_owned(),
                problem: "needs {orchard}, {block} and {device} exactly once each",
            });
        }
        Ok(p)
    }

    /// A pattern with all three placeholders or none.
    pub fn parse_filter(pattern: &str) -> Result<Self, PatternError> {
        let err = |problem| PatternError {
            pattern: pattern.to_owned(),
            problem,
        };
        let mut levels = Vec::new();
        for level in pattern.split('/') {
            if levels.last() == Some(&Level::Rest) {
                return Err(err("`#` must be the last level"));
            }
            levels.push(match level {
                "{orchard}" => Level::Orchard,
                "{block}" => Level::Block,
                "{device}" => Level::Device,
                "+" => Level::Any,
                "#" => Level::Rest,
                l if l.contains(['+', '#', '{', '}']) => {
                    return Err(err(
                        "a level is a placeholder, `+`, `#` or plain text, not a mix",
                    ));
                }
                "" => return Err(err("empty topic level")),
                l => Level::Literal(l.to_owned()),
            });
        }
        let counts: Vec<usize> = [Level::Orchard, Level::Block, Level::Device]
            .iter()
            .map(|p| levels.iter().filter(|l| *l == p).count())
            .collect();
        if counts != [0, 0, 0] && counts != [1, 1, 1] {
            return Err(err(
                "use {orchard}, {block} and {device} once each, or none of them",
            ));
        }
        Ok(Self { levels })
    }

    fn carries_identity(&self) -> bool {
        self.levels.contains(&Level::Device)
    }

    /// The MQTT subscription filter: placeholders become `+`.
    pub fn filter(&self) -> String {
        self.levels
            .iter()
            .map(|l| match l {
                Level::Literal(s) => s.as_str(),
                Level::Rest => "#",
                _ => "+",
            })
            .collect::<Vec<_>>()
            .join("/")
    }

    /// `None` when the topic is not of this pattern. Otherwise the identity the topic gives
    /// (`Ok(None)` for a pattern without placeholders), or why its names are unusable.
    pub fn identify(&self, topic: &str) -> Option<Result<Option<Origin>, Rejection>> {
        let parts: Vec<&str> = topic.split('/').collect();
        let rest = self.levels.last() == Some(&Level::Rest);
        let fixed = self.levels.len() - usize::from(rest);
        if parts.len() < fixed || (!rest && parts.len() != fixed) {
            return None;
        }
        let (mut orchard, mut block, mut device) = ("", "", "");
        for (level, part) in self.levels.iter().zip(&parts) {
            match level {
                Level::Literal(l) if l != part => return None,
                Level::Literal(_) | Level::Any | Level::Rest => {}
                Level::Orchard => orchard = part,
                Level::Block => block = part,
                Level::Device => device = part,
            }
        }
        if !self.carries_identity() {
            return Some(Ok(None));
        }
        let ident = topic_ident;
        Some((|| {
            Ok(Some(Origin {
                orchard: ident("orchard", orchard)?,
                block: ident("block", block)?,
                device: ident("device", device)?,
            }))
        })())
    }
}

/// A topic level that names an orchard, block or device (`what`), checked.
pub fn topic_ident(what: &str, level: &str) -> Result<Ident, Rejection> {
    Ident::parse(level).map_err(|_| {
        Rejection::new(
            Reason::InvalidIdentifier,
            format!(
                "{what} `{}` in the topic is not [A-Za-z0-9_-]{{1,64}}",
                truncate(level, 80)
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_pattern_subscribes_with_wildcards_and_reads_identity() {
        let p = TopicPattern::parse("orchards/{orchard}/{block}/{device}/telemetry").unwrap();
        assert_eq!(p.filter(), "orchards/+/+/+/telemetry");
        let o = p
            .identify("orchards/fengjie/B3/probe-7/telemetry")
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(
            (o.orchard.as_str(), o.block.as_str(), o.device.as_str()),
            ("fengjie", "B3", "probe-7")
        );
        assert!(p.identify("orchards/fengjie/B3/probe-7/status").is_none());
        let bad = p
            .identify("orchards/feng jie/B3/probe-7/telemetry")
            .unwrap()
            .unwrap_err();
        assert_eq!(bad.reason, Reason::InvalidIdentifier);
    }

    #[test]
    fn lorawan_filters_match_without_giving_identity() {
        let p = TopicPattern::parse_filter("application/+/device/+/event/up").unwrap();
        assert_eq!(p.filter(), "application/+/device/+/event/up");
        assert_eq!(
            p.identify("application/7/device/0004a30b001c0530/event/up"),
            Some(Ok(None))
        );
        assert_eq!(
            p.identify("application/7/device/0004a30b001c0530/event/join"),
            None
        );
        let senml = TopicPattern::parse_filter("senml/#").unwrap();
        assert_eq!(senml.identify("senml/a/b/c"), Some(Ok(None)));
        assert!(TopicPattern::parse_filter("a/#/b").is_err());
        assert!(TopicPattern::parse_filter("a/{orchard}/+").is_err());
        assert!(TopicPattern::parse("application/+/device/+/event/up").is_err());
    }

    #[test]
    fn patterns_need_each_placeholder_once() {
        assert!(TopicPattern::parse("a/{orchard}/{block}").is_err());
        assert!(TopicPattern::parse("a/x+/{orchard}/{block}/{device}").is_err());
        assert!(TopicPattern::parse("{orchard}/{orchard}/{block}/{device}").is_err());
    }
}
