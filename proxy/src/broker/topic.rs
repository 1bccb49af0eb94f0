//! MQTT topic names and topic filters (MQTT 5.0 section 4.7, shared subscriptions 4.8.2).
//!
//! Every function here works on `&str` levels split at `/`; nothing allocates. The matching
//! functions assume their inputs were validated: they never panic on invalid input, but the
//! answer is then unspecified.

/// The longest topic name or filter: its UTF-8 encoding is prefixed by a 16-bit length.
pub const MAX_TOPIC_LEN: usize = 65_535;

/// The prefix that marks a shared subscription, `$share/{group}/{filter}`.
pub const SHARED_PREFIX: &str = "$share/";

/// Why a topic name, topic filter or shared subscription filter is invalid.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("topic must not be empty")]
    Empty,
    #[error("topic is {0} bytes long, the limit is 65535")]
    TooLong(usize),
    #[error("topic must not contain the NUL character U+0000")]
    Nul,
    #[error("topic name must not contain the wildcard '{0}'")]
    WildcardInName(char),
    #[error("multi-level wildcard '#' must be the last level of a topic filter")]
    HashNotLast,
    #[error("wildcard '{0}' must occupy a whole topic level")]
    WildcardNotAlone(char),
    #[error("shared subscription must name a share group: $share/{{group}}/{{filter}}")]
    EmptyShareGroup,
    #[error("share group must not contain '{0}'")]
    InvalidShareGroup(char),
    #[error("shared subscription needs a topic filter after the share group: $share/{{group}}/{{filter}}")]
    MissingSharedFilter,
}

/// A `$share/{group}/{filter}` subscription split into its parts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SharedFilter<'a> {
    pub group: &'a str,
    pub filter: &'a str,
}

fn validate_common(s: &str) -> Result<(), TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty);
    }
    if s.len() > MAX_TOPIC_LEN {
        return Err(TopicError::TooLong(s.len()));
    }
    if s.contains('\0') {
        return Err(TopicError::Nul);
    }
    Ok(())
}

/// Checks a topic name, as used in PUBLISH: non-empty, no wildcards, no NUL, at most 65535 bytes.
/// (An MQTT 5 PUBLISH with an empty name and a Topic Alias is resolved before this check.)
pub fn validate_topic_name(name: &str) -> Result<(), TopicError> {
    validate_common(name)?;
    if let Some(c) = name.chars().find(|c| matches!(c, '+' | '#')) {
        return Err(TopicError::WildcardInName(c));
    }
    Ok(())
}

/// Checks a topic filter, as used in SUBSCRIBE (without a `$share/` prefix, see
/// [`parse_shared`]): `+` and `#` occupy whole levels and `#` is the last level.
pub fn validate_topic_filter(filter: &str) -> Result<(), TopicError> {
    validate_common(filter)?;
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        match level {
            "#" if levels.peek().is_some() => return Err(TopicError::HashNotLast),
            "#" | "+" => {}
            _ => {
                if let Some(c) = level.chars().find(|c| matches!(c, '+' | '#')) {
                    return Err(TopicError::WildcardNotAlone(c));
                }
            }
        }
    }
    Ok(())
}

/// Splits a shared subscription `$share/{group}/{filter}`; `Ok(None)` when `filter` is not
/// shared. The group must be non-empty without `+`, `#` (and, by construction, `/`); the
/// filter after it must be a valid topic filter.
pub fn parse_shared(filter: &str) -> Result<Option<SharedFilter<'_>>, TopicError> {
    let Some(rest) = filter.strip_prefix(SHARED_PREFIX) else {
        return Ok(None);
    };
    let Some((group, inner)) = rest.split_once('/') else {
        return Err(if rest.is_empty() {
            TopicError::EmptyShareGroup
        } else {
            TopicError::MissingSharedFilter
        });
    };
    if group.is_empty() {
        return Err(TopicError::EmptyShareGroup);
    }
    if let Some(c) = group.chars().find(|c| matches!(c, '+' | '#')) {
        return Err(TopicError::InvalidShareGroup(c));
    }
    if inner.is_empty() {
        return Err(TopicError::MissingSharedFilter);
    }
    validate_common(filter)?;
    validate_topic_filter(inner)?;
    Ok(Some(SharedFilter { group, filter: inner }))
}

fn is_wildcard(level: &str) -> bool {
    level == "+" || level == "#"
}

/// The first level starts with a wildcard; such filters never match `$` topics (4.7.2).
fn starts_with_wildcard(filter: &str) -> bool {
    filter.starts_with('+') || filter.starts_with('#')
}

/// Does `filter` (a valid topic filter, not shared) match the topic name `topic`?
///
/// `#` also matches the parent level (`sport/#` matches `sport`), `+` matches an empty
/// level, and a filter starting with a wildcard does not match topics starting with `$`.
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && starts_with_wildcard(filter) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(fl), Some(tl)) if fl == tl => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// A filter whose first level is a literal starting with `$` can only match `$` topics,
/// which a filter starting with a wildcard never matches.
fn dollar_excludes(wild: &str, literal: &str) -> bool {
    starts_with_wildcard(wild) && literal.starts_with('$')
}

/// Could some topic name match both filters?
pub fn overlaps(a: &str, b: &str) -> bool {
    if dollar_excludes(a, b) || dollar_excludes(b, a) {
        return false;
    }
    let mut a = a.split('/');
    let mut b = b.split('/');
    loop {
        match (a.next(), b.next()) {
            (Some("#"), _) | (_, Some("#")) => return true,
            (None, None) => return true,
            // One filter ends before the other: only a `#` (which also matches its parent
            // level) could have reconciled them, and that is the arm above.
            (None, Some(_)) | (Some(_), None) => return false,
            (Some(x), Some(y)) => {
                if !(x == "+" || y == "+" || x == y) {
                    return false;
                }
            }
        }
    }
}

/// Does every topic name that matches `inner` also match `outer`?
pub fn covers(outer: &str, inner: &str) -> bool {
    if dollar_excludes(outer, inner) {
        return false;
    }
    // A topic name has at least one level, so a lone `#` matches exactly what `+/#` matches;
    // spelling it that way lets `+/#` cover it in the level walk below.
    let inner = if inner == "#" { "+/#" } else { inner };
    let mut o = outer.split('/');
    let mut i = inner.split('/');
    loop {
        match (o.next(), i.next()) {
            (Some("#"), _) => return true,
            // When `inner` ends, `outer` accepts the topic only by ending too or by a `#`
            // (which matches the parent level), the arm above.
            (None, None) => return true,
            (Some(_), None) | (None, Some(_)) => return false,
            // `inner`'s `#` reaches topics of any depth; only `#` in `outer` does too.
            (Some(_), Some("#")) => return false,
            (Some("+"), Some(_)) => {}
            (Some(x), Some(y)) => {
                if is_wildcard(y) || x != y {
                    return false;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names() {
        assert_eq!(validate_topic_name("a/b"), Ok(()));
        assert_eq!(validate_topic_name("/"), Ok(()));
        assert_eq!(validate_topic_name("$SYS/x"), Ok(()));
        assert_eq!(validate_topic_name(""), Err(TopicError::Empty));
        assert_eq!(validate_topic_name("a/+"), Err(TopicError::WildcardInName('+')));
        assert_eq!(validate_topic_name("a#"), Err(TopicError::WildcardInName('#')));
        assert_eq!(validate_topic_name("a\0b"), Err(TopicError::Nul));
        assert_eq!(validate_topic_name(&"x".repeat(MAX_TOPIC_LEN)), Ok(()));
        assert_eq!(
            validate_topic_name(&"x".repeat(MAX_TOPIC_LEN + 1)),
            Err(TopicError::TooLong(MAX_TOPIC_LEN + 1))
        );
    }

    #[test]
    fn topic_filters() {
        for ok in ["#", "+", "a/#", "a/+/b", "+/+", "/+", "a//b", "$SYS/#", "+/#", "a/b"] {
            assert_eq!(validate_topic_filter(ok), Ok(()), "{ok}");
        }
        assert_eq!(validate_topic_filter(""), Err(TopicError::Empty));
        assert_eq!(validate_topic_filter("a/#/b"), Err(TopicError::HashNotLast));
        assert_eq!(validate_topic_filter("#/"), Err(TopicError::HashNotLast));
        assert_eq!(validate_topic_filter("a#"), Err(TopicError::WildcardNotAlone('#')));
        assert_eq!(validate_topic_filter("a/b+"), Err(TopicError::WildcardNotAlone('+')));
        assert_eq!(validate_topic_filter("++"), Err(TopicError::WildcardNotAlone('+')));
        assert_eq!(validate_topic_filter("a\0"), Err(TopicError::Nul));
    }

    #[test]
    fn error_messages_say_what_is_wrong() {
        assert_eq!(
            TopicError::WildcardNotAlone('+').to_string(),
            "wildcard '+' must occupy a whole topic level"
        );
        assert!(
            TopicError::EmptyShareGroup
                .to_string()
                .contains("$share/{group}/{filter}")
        );
    }

    #[test]
    fn shared_filters() {
        assert_eq!(parse_shared("a/b"), Ok(None));
        assert_eq!(parse_shared("$share"), Ok(None));
        assert_eq!(parse_shared("$shared/g/a"), Ok(None));
        assert_eq!(
            parse_shared("$share/g1/a/+/#"),
            Ok(Some(SharedFilter {
                group: "g1",
                filter: "a/+/#"
            }))
        );
        assert_eq!(
            parse_shared("$share/g/$SYS/x"),
            Ok(Some(SharedFilter {
                group: "g",
                filter: "$SYS/x"
            }))
        );
        assert_eq!(parse_shared("$share/"), Err(TopicError::EmptyShareGroup));
        assert_eq!(parse_shared("$share//a"), Err(TopicError::EmptyShareGroup));
        assert_eq!(parse_shared("$share/g"), Err(TopicError::MissingSharedFilter));
        assert_eq!(parse_shared("$share/g/"), Err(TopicError::MissingSharedFilter));
        assert_eq!(parse_shared("$share/g+/a"), Err(TopicError::InvalidShareGroup('+')));
        assert_eq!(parse_shared("$share/#/a"), Err(TopicError::InvalidShareGroup('#')));
        assert_eq!(parse_shared("$share/g/a#"), Err(TopicError::WildcardNotAlone('#')));
        assert_eq!(parse_shared("$share/g\0/a"), Err(TopicError::Nul));
    }

    #[test]
    fn matching() {
        let yes = [
            ("a/b", "a/b"),
            ("#", "a"),
            ("#", "a/b/c"),
            ("#", "/"),
            ("sport/#", "sport"),
            ("sport/#", "sport/"),
            ("sport/#", "sport/tennis/player1"),
            ("sport/tennis/+", "sport/tennis/player1"),
            ("sport/+", "sport/"),
            ("+/+", "/finance"),
            ("/+", "/finance"),
            ("+", "finance"),
            ("+/#", "a"),
            ("a/+/c", "a//c"),
            ("$SYS/#", "$SYS"),
            ("$SYS/#", "$SYS/broker/load"),
            ("$SYS/+/load", "$SYS/broker/load"),
        ];
        for (f, t) in yes {
            assert!(matches(f, t), "{f} should match {t}");
        }
        let no = [
            ("a/b", "a"),
            ("a", "a/b"),
            ("a/b", "a/c"),
            ("sport/tennis/+", "sport/tennis/player1/ranking"),
            ("sport/tennis/+", "sport/tennis"),
            ("sport/+", "sport"),
            ("+", "/finance"),
            ("sport/#", "sports"),
            ("#", "$SYS"),
            ("#", "$SYS/x"),
            ("+/monitor/Clients", "$SYS/monitor/Clients"),
            ("+", "$x"),
            ("a/+", "a/b/c"),
        ];
        for (f, t) in no {
            assert!(!matches(f, t), "{f} should not match {t}");
        }
    }

    #[test]
    fn overlapping_filters() {
        let yes = [
            ("a/b", "a/b"),
            ("#", "a/b"),
            ("a/#", "a"),
            ("a", "a/#"),
            ("a/+", "+/b"),
            ("+/+/c", "a/#"),
            ("a/+/c", "a/b/+"),
            ("+", "+"),
            ("#", "+/x"),
            ("$SYS/#", "$SYS/+"),
            ("$SYS/+", "$SYS/x/#"),
        ];
        for (a, b) in yes {
            assert!(overlaps(a, b), "{a} should overlap {b}");
            assert!(overlaps(b, a), "{b} should overlap {a}");
        }
        let no = [
            ("a/b", "a/c"),
            ("a/+", "a"),
            ("a/+", "a/b/c"),
            ("a/+/c", "a/b/d"),
            ("#", "$SYS/x"),
            ("+/x", "$SYS/x"),
            ("+/#", "$SYS"),
            ("b/#", "a/#"),
        ];
        for (a, b) in no {
            assert!(!overlaps(a, b), "{a} should not overlap {b}");
            assert!(!overlaps(b, a), "{b} should not overlap {a}");
        }
    }

    #[test]
    fn covering_filters() {
        let yes = [
            ("#", "#"),
            ("#", "a/b"),
            ("#", "+/#"),
            ("a/#", "a"),
            ("a/#", "a/#"),
            ("a/#", "a/+/c"),
            ("a/+", "a/b"),
            ("a/+", "a/+"),
            ("+/+", "a/+"),
            ("a/b", "a/b"),
            ("+/#", "#"),
            ("$SYS/#", "$SYS/+/x"),
        ];
        for (outer, inner) in yes {
            assert!(covers(outer, inner), "{outer} should cover {inner}");
        }
        let no = [
            ("a/b", "a/+"),
            ("a/+", "a/#"),
            ("a/+/#", "a/#"),
            ("a", "a/#"),
            ("a/+", "a"),
            ("a/b", "a/b/c"),
            ("#", "$SYS/#"),
            ("+/x", "$SYS/x"),
            ("a/#", "b/#"),
            ("+/b", "#"),
            ("+", "#"),
            ("+/+/#", "#"),
        ];
        for (outer, inner) in no {
            assert!(!covers(outer, inner), "{outer} should not cover {inner}");
        }
    }

    /// Cross-checks `overlaps` and `covers` against `matches` over a small topic universe.
    #[test]
    fn overlaps_and_covers_agree_with_matches() {
        let levels = ["a", "b", "", "$s"];
        let mut topics: Vec<String> = Vec::new();
        let mut frontier: Vec<String> = levels.iter().map(|l| (*l).to_string()).collect();
        // Filters have at most three levels, so four-level topics witness every difference.
        for _ in 0..4 {
            topics.extend(frontier.iter().cloned());
            frontier = frontier
                .iter()
                .flat_map(|t| {
                    levels
                        .iter()
                        .filter(|l| !l.starts_with('$'))
                        .map(move |l| format!("{t}/{l}"))
                })
                .collect();
        }
        topics.retain(|t| !t.is_empty());
        let filters = [
            "#", "+", "a", "b", "$s", "a/#", "a/+", "+/a", "+/+", "+/#", "a/b", "a/+/b", "$s/#", "$s/+", "+/+/+", "/",
            "/+", "a/", "a/b/#", "+/+/#", "a/+/#", "$s/+/b", "+/a/#",
        ];
        for a in filters {
            for b in filters {
                let both = topics.iter().any(|t| matches(a, t) && matches(b, t));
                assert_eq!(overlaps(a, b), both, "overlaps({a}, {b})");
                let all = topics.iter().filter(|t| matches(b, t)).all(|t| matches(a, t));
                assert_eq!(covers(a, b), all, "covers({a}, {b})");
            }
        }
    }
}
