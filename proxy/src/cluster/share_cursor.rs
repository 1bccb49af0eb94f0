//! Where a shared subscription stands in each messages partition: its *cursor*, the oldest
//! record of that partition that none of its members has acknowledged yet. One process
//! at a time serves a share's records of one partition (`ownership::share_server`); it
//! writes the cursor to the sessions topic (key
//! `$mqtt-kafka/share/<messages topic>/<partition>/<share>`, JSON, every second while it
//! moves), and a process that takes the partition over — because the old one died, left,
//! or lost its last member — resumes there. So a member that disconnects or a process
//! that dies does not take unacknowledged messages of the share with it: they are read
//! again from Kafka and given to another member (at least once: what the old server
//! delivered after its last cursor write is delivered again).

use serde::{Deserialize, Serialize};

const CURSOR_PREFIX: &str = "$mqtt-kafka/share/";

/// A cursor this old, written by a process that is gone, of a share that no offline
/// session holds, belongs to a share that ended: a new share of the same name starts at
/// the live end instead of replaying what nobody was subscribed for.
pub const ORPHAN_AFTER_MS: i64 = 5 * 60 * 1000;

/// One share's cursor in one messages partition, as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ShareCursor {
    pub version: u32,
    /// `$share/{group}/{filter}`.
    pub share: String,
    /// The messages topic and partition.
    pub topic: String,
    pub partition: i32,
    /// The oldest offset not acknowledged by a member (everything before it was).
    pub offset: i64,
    /// The process that wrote it.
    pub owner: String,
    /// When it was written (ms since the epoch).
    pub at_ms: i64,
}

impl ShareCursor {
    pub fn key(share: &str, topic: &str, partition: i32) -> String {
        format!("{CURSOR_PREFIX}{topic}/{partition}/{share}")
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(value: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(value)
    }
}

/// `(share, topic, partition)` of a cursor key; `None` for other keys.
pub fn cursor_of_key(key: &str) -> Option<(&str, &str, i32)> {
    let rest = key.strip_prefix(CURSOR_PREFIX)?;
    let (topic, rest) = rest.split_once('/')?;
    let (partition, share) = rest.split_once('/')?;
    Some((share, topic, partition.parse().ok()?))
}

/// Where a process that has just become the server of a share's partition starts: at the
/// stored cursor when there is one behind the live end (`fanout`) that is not an orphan
/// (see [`ORPHAN_AFTER_MS`]: recent, or written by a live process, or of a share that a
/// session not connected here still holds); `None`: at the live end.
pub fn resume_at(
    cursor: Option<&ShareCursor>,
    fanout: i64,
    now_ms: i64,
    owner_live: bool,
    held_offline: bool,
) -> Option<i64> {
    let cursor = cursor?;
    let orphan = !owner_live && !held_offline && now_ms - cursor.at_ms > ORPHAN_AFTER_MS;
    (!orphan && cursor.offset < fanout).then_some(cursor.offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cursor(offset: i64, at_ms: i64) -> ShareCursor {
        ShareCursor {
            version: 1,
            share: "$share/g/jobs/#".into(),
            topic: "mqtt-messages".into(),
            partition: 3,
            offset,
            owner: "p0".into(),
            at_ms,
        }
    }

    #[test]
    fn a_cursor_key_names_its_share_topic_and_partition() {
        let key = ShareCursor::key("$share/g/jobs/#", "mqtt-messages", 3);
        assert!(key.starts_with(super::super::membership::RESERVED_PREFIX));
        assert_eq!(cursor_of_key(&key), Some(("$share/g/jobs/#", "mqtt-messages", 3)));
        assert_eq!(cursor_of_key("$mqtt-kafka/member/p0"), None);
        assert_eq!(
            cursor_of_key("$mqtt-kafka/share/t/x/$share/g/a"),
            None,
            "partition not a number"
        );
        let c = cursor(10, 5);
        assert_eq!(ShareCursor::decode(&c.encode()).ok(), Some(c));
    }

    #[test]
    fn a_new_server_resumes_at_the_cursor_unless_it_is_ahead_or_an_orphan() {
        let now = 10 * ORPHAN_AFTER_MS;
        let recent = cursor(10, now - 1000);
        assert_eq!(
            resume_at(Some(&recent), 50, now, false, false),
            Some(10),
            "its server just died"
        );
        assert_eq!(
            resume_at(Some(&recent), 10, now, true, false),
            None,
            "nothing behind the live end"
        );
        assert_eq!(resume_at(None, 50, now, true, true), None);
        let old = cursor(10, now - ORPHAN_AFTER_MS - 1);
        assert_eq!(resume_at(Some(&old), 50, now, false, false), None, "orphan");
        assert_eq!(
            resume_at(Some(&old), 50, now, true, false),
            Some(10),
            "its server lives"
        );
        assert_eq!(
            resume_at(Some(&old), 50, now, false, true),
            Some(10),
            "an offline session holds it"
        );
    }
}
