//! MQTT topic names and filters: matching a topic against a filter, and whether one filter
//! covers another (for a user's allowed patterns).

/// True when `topic` matches `filter` (MQTT 3.1.1 §4.7): `+` is one level, `#` the rest.
/// Topics starting with `$` are not matched by a filter starting with a wildcard (§4.7.2).
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// True when every topic `inner` matches is also matched by `outer`: a user allowed
/// `orchards/fengjie/#` may subscribe to `orchards/fengjie/+/+/telemetry`, not to `orchards/#`.
pub fn covers(outer: &str, inner: &str) -> bool {
    let mut o = outer.split('/');
    let mut i = inner.split('/');
    loop {
        match (o.next(), i.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(level)) if level != "#" => {}
            (Some(a), Some(b)) if a == b && a != "+" && a != "#" => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// A topic name a client may publish to: no wildcards, not empty, no NUL.
pub fn is_valid_name(topic: &str) -> bool {
    !topic.is_empty() && !topic.contains(['+', '#', '\0'])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_as_the_standard_says() {
        assert!(matches("a/+/c", "a/b/c"));
        assert!(!matches("a/+/c", "a/b/d"));
        assert!(matches("a/#", "a"));
        assert!(matches("a/#", "a/b/c"));
        assert!(matches("#", "a/b"));
        assert!(matches("+/+", "/x"));
        assert!(!matches("a/b", "a/b/c"));
        assert!(!matches("a/b/c", "a/b"));
        assert!(matches("+", ""));
    }

    #[test]
    fn dollar_topics_are_not_matched_by_leading_wildcards() {
        assert!(!matches("#", "$SYS/broker/uptime"));
        assert!(!matches("+/broker/uptime", "$SYS/broker/uptime"));
        assert!(matches("$SYS/#", "$SYS/broker/uptime"));
    }

    #[test]
    fn a_pattern_covers_only_narrower_filters() {
        assert!(covers(
            "orchards/fengjie/#",
            "orchards/fengjie/+/+/telemetry"
        ));
        assert!(covers("orchards/fengjie/#", "orchards/fengjie/#"));
        assert!(!covers("orchards/fengjie/#", "orchards/#"));
        assert!(!covers("orchards/+/x", "orchards/#"));
        assert!(covers("orchards/+/x", "orchards/+/x"));
        assert!(!covers("orchards/a/x", "orchards/+/x"));
    }
}
