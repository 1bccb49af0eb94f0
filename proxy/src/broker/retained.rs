//! The in-memory view of the retained topic: the last retained message per MQTT topic.
//!
//! Kept in a `BTreeMap` so a filter only scans the topics that share its literal prefix
//! (`a/b/+` looks at topics starting with `a/b`), and results come out sorted by topic.
//! Filters starting with a wildcard scan every topic; retained sets are read on SUBSCRIBE,
//! not per message, so that is acceptable.

use std::collections::BTreeMap;
use std::ops::Bound;

use super::topic;

/// Retained messages of type `M` by topic name.
#[derive(Clone, Debug)]
pub struct RetainedStore<M> {
    messages: BTreeMap<String, M>,
}

impl<M> Default for RetainedStore<M> {
    fn default() -> Self {
        Self::new()
    }
}

impl<M> RetainedStore<M> {
    pub fn new() -> Self {
        Self {
            messages: BTreeMap::new(),
        }
    }

    /// Stores the retained message of `topic`, or deletes it for `None` (a tombstone, i.e. a
    /// retained PUBLISH with an empty payload). Returns the message it replaced.
    pub fn set(&mut self, topic: String, message: Option<M>) -> Option<M> {
        match message {
            Some(message) => self.messages.insert(topic, message),
            None => self.messages.remove(&topic),
        }
    }

    pub fn get(&self, topic: &str) -> Option<&M> {
        self.messages.get(topic)
    }

    pub fn len(&self) -> usize {
        self.messages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// Forgets everything, e.g. before re-reading the retained topic.
    pub fn clear(&mut self) {
        self.messages.clear();
    }

    /// Every retained message, sorted by topic.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &M)> {
        self.messages.iter().map(|(t, m)| (t.as_str(), m))
    }

    /// The retained messages whose topic matches `filter` (a valid topic filter, without
    /// `$share/`: shared subscriptions get no retained messages), sorted by topic.
    pub fn matching(&self, filter: &str) -> Vec<(&str, &M)> {
        let Some(wildcard) = filter.find(['+', '#']) else {
            return self
                .messages
                .get_key_value(filter)
                .map(|(t, m)| (t.as_str(), m))
                .into_iter()
                .collect();
        };
        // The literal levels before the first wildcard, without their trailing `/`: `a/#`
        // also matches `a` itself. Topics merely sharing the characters (`ab`) are filtered
        // out by `matches`.
        let prefix = filter[..wildcard].strip_suffix('/').unwrap_or(&filter[..wildcard]);
        self.messages
            .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(|(t, _)| t.starts_with(prefix))
            .filter(|(t, _)| topic::matches(filter, t))
            .map(|(t, m)| (t.as_str(), m))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(topics: &[&str]) -> RetainedStore<usize> {
        let mut store = RetainedStore::new();
        for (i, t) in topics.iter().enumerate() {
            store.set((*t).to_owned(), Some(i));
        }
        store
    }

    fn topics<'a>(found: &[(&'a str, &usize)]) -> Vec<&'a str> {
        found.iter().map(|(t, _)| *t).collect()
    }

    const TOPICS: [&str; 11] = [
        "sport",
        "sport/tennis",
        "sport/tennis/player1",
        "sport/golf",
        "sports/tennis",
        "sport/",
        "/sport",
        "$SYS/load",
        "a",
        "b/c",
        "sport/tennis/player1/score",
    ];

    #[test]
    fn set_get_and_tombstones() {
        let mut store = RetainedStore::new();
        assert!(store.is_empty());
        assert_eq!(store.set("a/b".to_owned(), Some(1)), None);
        assert_eq!(store.set("a/b".to_owned(), Some(2)), Some(1));
        assert_eq!(store.get("a/b"), Some(&2));
        assert_eq!(store.len(), 1);
        assert_eq!(store.set("a/b".to_owned(), None), Some(2));
        assert_eq!(store.set("never".to_owned(), None), None);
        assert_eq!(store.get("a/b"), None);
        assert!(store.is_empty());
        store.set("x".to_owned(), Some(3));
        store.clear();
        assert_eq!(store.len(), 0);
    }

    #[test]
    fn literal_filter() {
        let store = store(&TOPICS);
        assert_eq!(store.matching("sport/tennis"), [("sport/tennis", &1)]);
        assert!(store.matching("sport/tennis/player2").is_empty());
    }

    #[test]
    fn wildcard_filters() {
        let store = store(&TOPICS);
        assert_eq!(
            topics(&store.matching("sport/#")),
            [
                "sport",
                "sport/",
                "sport/golf",
                "sport/tennis",
                "sport/tennis/player1",
                "sport/tennis/player1/score"
            ]
        );
        assert_eq!(
            topics(&store.matching("sport/+")),
            ["sport/", "sport/golf", "sport/tennis"]
        );
        assert_eq!(topics(&store.matching("sport/tennis/+")), ["sport/tennis/player1"]);
        assert_eq!(topics(&store.matching("+/tennis")), ["sport/tennis", "sports/tennis"]);
        assert_eq!(topics(&store.matching("+")), ["a", "sport"]);
        assert_eq!(topics(&store.matching("/+")), ["/sport"]);
        assert_eq!(store.matching("#").len(), TOPICS.len() - 1);
        assert_eq!(topics(&store.matching("$SYS/#")), ["$SYS/load"]);
        assert_eq!(topics(&store.matching("$SYS/+")), ["$SYS/load"]);
        assert!(store.matching("nothing/#").is_empty());
    }

    #[test]
    fn agrees_with_a_full_scan() {
        let store = store(&TOPICS);
        for filter in [
            "#",
            "+/#",
            "sport/#",
            "sport/+/#",
            "+/+",
            "sport/tennis/#",
            "s/#",
            "b/+",
            "$SYS/#",
            "/#",
        ] {
            let expected: Vec<&str> = store
                .iter()
                .filter(|(t, _)| topic::matches(filter, t))
                .map(|(t, _)| t)
                .collect();
            assert_eq!(topics(&store.matching(filter)), expected, "{filter}");
        }
    }
}
