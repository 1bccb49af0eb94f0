//! `clients` patterns such as `place/{identity}/#`: which topic level names the client a
//! message belongs to. The caller partitions Kafka records by that identity, so all
//! messages of one client land in one partition and keep their order.

use super::topic::{self, TopicError};

/// The placeholder level of a pattern.
pub const IDENTITY: &str = "{identity}";

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("clients[{index}] {pattern:?}: needs exactly one {{identity}} level, found none")]
    MissingIdentity { index: usize, pattern: String },
    #[error("clients[{index}] {pattern:?}: needs exactly one {{identity}} level, found several")]
    SeveralIdentities { index: usize, pattern: String },
    #[error("clients[{index}] {pattern:?}: {{identity}} must occupy a whole topic level")]
    IdentityNotAlone { index: usize, pattern: String },
    #[error("clients[{index}] {pattern:?}: {source}")]
    InvalidFilter {
        index: usize,
        pattern: String,
        source: TopicError,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Level {
    Literal(String),
    Plus,
    Hash,
    Identity,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Pattern {
    levels: Vec<Level>,
}

impl Pattern {
    /// The topic level captured by `{identity}`, if the topic matches the pattern.
    fn capture<'t>(&self, topic: &'t str) -> Option<&'t str> {
        // Like any filter starting with a wildcard, a pattern starting with `+`, `#` or
        // `{identity}` does not match `$` topics.
        if topic.starts_with('$') && !matches!(self.levels.first(), Some(Level::Literal(_))) {
            return None;
        }
        let mut identity = None;
        let mut topic_levels = topic.split('/');
        for level in &self.levels {
            match (level, topic_levels.next()) {
                (Level::Hash, _) => return identity,
                (_, None) => return None,
                (Level::Plus, Some(_)) => {}
                (Level::Identity, Some(t)) => identity = Some(t),
                (Level::Literal(l), Some(t)) => {
                    if l != t {
                        return None;
                    }
                }
            }
        }
        match topic_levels.next() {
            None => identity,
            Some(_) => None,
        }
    }
}

/// The parsed `clients` patterns, tried in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdentityPatterns {
    patterns: Vec<Pattern>,
}

impl IdentityPatterns {
    /// Each pattern is a topic filter in which exactly one level is `{identity}`.
    pub fn parse(patterns: &[String]) -> Result<Self, PatternError> {
        let patterns = patterns
            .iter()
            .enumerate()
            .map(|(index, pattern)| parse_one(index, pattern))
            .collect::<Result<_, _>>()?;
        Ok(Self { patterns })
    }

    pub fn len(&self) -> usize {
        self.patterns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// The identity the first matching pattern captures from the topic name `topic`.
    /// An empty `{identity}` level (`place//x`) captures nothing, so the next pattern is
    /// tried and the caller falls back to the topic, rather than piling every such
    /// message onto the partition of the empty string.
    pub fn identity_of<'t>(&self, topic: &'t str) -> Option<&'t str> {
        self.patterns
            .iter()
            .find_map(|p| p.capture(topic).filter(|identity| !identity.is_empty()))
    }
}

fn parse_one(index: usize, pattern: &str) -> Result<Pattern, PatternError> {
    let identities = pattern.split('/').filter(|l| *l == IDENTITY).count();
    if identities == 0 {
        return Err(if pattern.contains(IDENTITY) {
            PatternError::IdentityNotAlone {
                index,
                pattern: pattern.to_owned(),
            }
        } else {
            PatternError::MissingIdentity {
                index,
                pattern: pattern.to_owned(),
            }
        });
    }
    if identities > 1 {
        return Err(PatternError::SeveralIdentities {
            index,
            pattern: pattern.to_owned(),
        });
    }
    if pattern.split('/').any(|l| l != IDENTITY && l.contains(IDENTITY)) {
        return Err(PatternError::IdentityNotAlone {
            index,
            pattern: pattern.to_owned(),
        });
    }
    // With `{identity}` read as `+`, the rest of the rules are those of a topic filter.
    let as_filter = pattern
        .split('/')
        .map(|l| if l == IDENTITY { "+" } else { l })
        .collect::<Vec<_>>()
        .join("/");
    if let Err(source) = topic::validate_topic_filter(&as_filter) {
        return Err(PatternError::InvalidFilter {
            index,
            pattern: pattern.to_owned(),
            source,
        });
    }
    let levels = pattern
        .split('/')
        .map(|l| match l {
            IDENTITY => Level::Identity,
            "+" => Level::Plus,
            "#" => Level::Hash,
            _ => Level::Literal(l.to_owned()),
        })
        .collect();
    Ok(Pattern { levels })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patterns(patterns: &[&str]) -> Result<IdentityPatterns, PatternError> {
        IdentityPatterns::parse(&patterns.iter().map(|p| (*p).to_owned()).collect::<Vec<_>>())
    }

    #[test]
    fn captures_the_identity_level() {
        let p = patterns(&["place/{identity}/#"]).unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!(p.identity_of("place/alice/device/1"), Some("alice"));
        assert_eq!(p.identity_of("place/bob"), Some("bob"));
        assert_eq!(p.identity_of("place/bob/"), Some("bob"));
        assert_eq!(p.identity_of("place"), None);
        assert_eq!(p.identity_of("other/alice/x"), None);
        assert_eq!(p.identity_of("place//x"), None);
    }

    #[test]
    fn first_matching_pattern_wins() {
        let p = patterns(&["devices/+/{identity}", "{identity}/telemetry/#", "devices/{identity}/#"]).unwrap();
        assert_eq!(p.identity_of("devices/eu/d1"), Some("d1"));
        assert_eq!(p.identity_of("devices/d1/state/x"), Some("d1"));
        assert_eq!(p.identity_of("devices/eu/d1/x"), Some("eu"));
        assert_eq!(p.identity_of("d7/telemetry"), Some("d7"));
        assert_eq!(p.identity_of("$SYS/telemetry"), None);
        assert_eq!(p.identity_of("x/y"), None);
        // An empty identity falls through to the next pattern.
        assert_eq!(p.identity_of("devices/eu/"), Some("eu"));
    }

    #[test]
    fn exact_patterns() {
        let p = patterns(&["a/{identity}/b"]).unwrap();
        assert_eq!(p.identity_of("a/x/b"), Some("x"));
        assert_eq!(p.identity_of("a/x/b/c"), None);
        assert_eq!(p.identity_of("a/x"), None);
        let p = patterns(&["$clients/{identity}"]).unwrap();
        assert_eq!(p.identity_of("$clients/x"), Some("x"));
    }

    #[test]
    fn no_patterns_capture_nothing() {
        let p = patterns(&[]).unwrap();
        assert!(p.is_empty());
        assert_eq!(p.identity_of("place/alice"), None);
    }

    #[test]
    fn invalid_patterns() {
        assert_eq!(
            patterns(&["ok/{identity}", "place/+/#"]),
            Err(PatternError::MissingIdentity {
                index: 1,
                pattern: "place/+/#".to_owned()
            })
        );
        assert_eq!(
            patterns(&["{identity}/{identity}"]),
            Err(PatternError::SeveralIdentities {
                index: 0,
                pattern: "{identity}/{identity}".to_owned()
            })
        );
        assert_eq!(
            patterns(&["place/id-{identity}"]),
            Err(PatternError::IdentityNotAlone {
                index: 0,
                pattern: "place/id-{identity}".to_owned()
            })
        );
        assert_eq!(
            patterns(&["place/{identity}/x{identity}"]),
            Err(PatternError::IdentityNotAlone {
                index: 0,
                pattern: "place/{identity}/x{identity}".to_owned()
            })
        );
        let err = patterns(&["place/#/{identity}"]).unwrap_err();
        assert_eq!(
            err,
            PatternError::InvalidFilter {
                index: 0,
                pattern: "place/#/{identity}".to_owned(),
                source: TopicError::HashNotLast
            }
        );
        assert_eq!(
            err.to_string(),
            "clients[0] \"place/#/{identity}\": multi-level wildcard '#' must be the last level of a topic filter"
        );
        assert!(matches!(
            patterns(&["a+/{identity}"]),
            Err(PatternError::InvalidFilter { .. })
        ));
        assert!(
            patterns(&["place"])
                .unwrap_err()
                .to_string()
                .contains("needs exactly one {identity} level, found none")
        );
    }
}
