//! Topic patterns: which MQTT topics orchardd takes, and the identity each topic gives.

use crate::model::{Ident, truncate};
use crate::validate::{Origin, Reason, Rejection};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Level {
    Literal(String),
    Orchard,
    Block,
    Device,
}

/// A topic with `{orchard}`, `{block}` and `{device}` placeholders, each one level.
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
    pub fn parse(pattern: &str) -> Result<Self, PatternError> {
        let err = |problem| PatternError {
            pattern: pattern.to_owned(),
            problem,
        };
        let mut levels = Vec::new();
        for level in pattern.split('/') {
            levels.push(match level {
                "{orchard}" => Level::Orchard,
                "{block}" => Level::Block,
                "{device}" => Level::Device,
                l if l.contains(['+', '#', '{', '}']) => {
                    return Err(err("a level is either a placeholder or plain text; wildcards come from placeholders"));
                }
                "" => return Err(err("empty topic level")),
                l => Level::Literal(l.to_owned()),
            });
        }
        for placeholder in [Level::Orchard, Level::Block, Level::Device] {
            if levels.iter().filter(|l| **l == placeholder).count() != 1 {
                return Err(err(
                    "needs {orchard}, {block} and {device} exactly once each",
                ));
            }
        }
        Ok(Self { levels })
    }

    /// The MQTT subscription filter: placeholders become `+`.
    pub fn filter(&self) -> String {
        self.levels
            .iter()
            .map(|l| match l {
                Level::Literal(s) => s.as_str(),
                _ => "+",
            })
            .collect::<Vec<_>>()
            .join("/")
    }

    /// `None` when the topic is not of this pattern; otherwise its identity or why it has none.
    pub fn identify(&self, topic: &str) -> Option<Result<Origin, Rejection>> {
        let parts: Vec<&str> = topic.split('/').collect();
        if parts.len() != self.levels.len() {
            return None;
        }
        let (mut orchard, mut block, mut device) = ("", "", "");
        for (level, part) in self.levels.iter().zip(&parts) {
            match level {
                Level::Literal(l) if l != part => return None,
                Level::Literal(_) => {}
                Level::Orchard => orchard = part,
                Level::Block => block = part,
                Level::Device => device = part,
            }
        }
        let ident = |what: &str, s: &str| {
            Ident::parse(s).map_err(|_| {
                Rejection::new(
                    Reason::InvalidIdentifier,
                    format!(
                        "{what} `{}` in the topic is not [A-Za-z0-9_-]{{1,64}}",
                        truncate(s, 80)
                    ),
                )
            })
        };
        Some((|| {
            Ok(Origin {
                orchard: ident("orchard", orchard)?,
                block: ident("block", block)?,
                device: ident("device", device)?,
            })
        })())
    }
}

/// The identity of `topic` under the first pattern it fits.
pub fn identify(patterns: &[TopicPattern], topic: &str) -> Result<Origin, Rejection> {
    patterns
        .iter()
        .find_map(|p| p.identify(topic))
        .unwrap_or_else(|| {
            Err(Rejection::new(
                Reason::InvalidIdentifier,
                format!(
                    "topic `{}` fits none of the configured patterns",
                    truncate(topic, 120)
                ),
            ))
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
    fn patterns_need_each_placeholder_once() {
        assert!(TopicPattern::parse("a/{orchard}/{block}").is_err());
        assert!(TopicPattern::parse("a/+/{orchard}/{block}/{device}").is_err());
        assert!(TopicPattern::parse("{orchard}/{orchard}/{block}/{device}").is_err());
    }
}
