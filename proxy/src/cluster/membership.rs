//! The live set of proxy processes, from the heartbeats each writes to the sessions topic
//! (key `$mqtt-kafka/member/<instance>`, JSON, every [`HEARTBEAT_EVERY`]; a tombstone when
//! it leaves on SIGTERM). A process whose heartbeat has not been seen for [`DEAD_AFTER`]
//! is dead: its partitions move to the survivors.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Keys of the sessions topic that are not client ids start with this; a client id that
/// does is refused at CONNECT.
pub const RESERVED_PREFIX: &str = "$mqtt-kafka/";
const MEMBER_PREFIX: &str = "$mqtt-kafka/member/";

/// How often a process announces itself.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
/// Silence after which a process counts as dead.
pub const DEAD_AFTER: Duration = Duration::from_secs(5);

/// What a process announces.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Heartbeat {
    pub version: u32,
    pub instance: String,
    /// Where MQTT 5 clients are redirected to reach it (`None`: not reachable by redirect).
    /// Clients of a listener that has its own entry in `server_references` go there instead.
    #[serde(default)]
    pub server_reference: Option<String>,
    /// Its server reference per listener name (listeners with a template of their own), so
    /// that a client is redirected to the same kind of listener it connected to. Absent in
    /// heartbeats of older processes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub server_references: BTreeMap<String, String>,
    /// When it was written (ms since the epoch).
    pub at_ms: i64,
    /// The shared subscriptions (`$share/{group}/{filter}`) it has members of.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shares: Vec<String>,
    /// The processes it counted as live when it wrote this (sorted; absent in heartbeats of
    /// older processes). A process on its way out waits until every other live process
    /// announces a list without it before it sends its clients to them: a client told to
    /// go to the new owner must not be sent back by an owner that has not yet read the
    /// departure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live: Option<Vec<String>>,
}

/// Where clients reach one process: what it announces in its heartbeats.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServerReferences {
    /// `cluster.serverReference` resolved for the process.
    pub default: Option<String>,
    /// `listeners[].serverReference` resolved, by listener name.
    pub by_listener: BTreeMap<String, String>,
}

impl Heartbeat {
    pub fn key(instance: &str) -> String {
        format!("{MEMBER_PREFIX}{instance}")
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Where a client that connected on listener `listener` (of any process: every process
    /// of one deployment has the same listeners) is sent to reach this process: its
    /// reference for that listener, else its single reference.
    pub fn reference_for(&self, listener: &str) -> Option<String> {
        self.server_references
            .get(listener)
            .or(self.server_reference.as_ref())
            .cloned()
    }
}

/// The instance a sessions-topic key announces, if it is a heartbeat key.
pub fn member_of_key(key: &str) -> Option<&str> {
    key.strip_prefix(MEMBER_PREFIX)
}

/// The processes this one has heard of.
#[derive(Debug, Default)]
pub struct Membership {
    members: BTreeMap<String, (Heartbeat, Instant)>,
}

impl Membership {
    /// A heartbeat (`Some`) or a departure (`None`) of `instance`, read at `seen`.
    pub fn apply(&mut self, instance: &str, heartbeat: Option<Heartbeat>, seen: Instant) {
        match heartbeat {
            Some(heartbeat) => {
                self.members.insert(instance.to_owned(), (heartbeat, seen));
            }
            None => {
                self.members.remove(instance);
            }
        }
    }

    /// The live processes, sorted by instance id: heard from within [`DEAD_AFTER`], by
    /// this process's clock and by the heartbeat's own time (a heartbeat replayed at
    /// start-up from long ago is not a sign of life).
    pub fn live(&self, now: Instant, now_ms: i64) -> Vec<&Heartbeat> {
        let window_ms = i64::try_from(DEAD_AFTER.as_millis()).unwrap_or(i64::MAX);
        self.members
            .values()
            .filter(|(hb, seen)| now.saturating_duration_since(*seen) < DEAD_AFTER && now_ms - hb.at_ms < 2 * window_ms)
            .map(|(hb, _)| hb)
            .collect()
    }

    pub fn get(&self, instance: &str) -> Option<&Heartbeat> {
        self.members.get(instance).map(|(hb, _)| hb)
    }

    /// The live processes other than `leaving` whose latest heartbeat still counts
    /// `leaving` as live: they have not read its departure yet. Processes of an older
    /// version, which do not say whom they count, are not waited for.
    pub fn unaware_of_departure(&self, leaving: &str, now: Instant, now_ms: i64) -> Vec<String> {
        self.live(now, now_ms)
            .into_iter()
            .filter(|hb| hb.instance != leaving)
            .filter(|hb| hb.live.as_ref().is_some_and(|live| live.iter().any(|i| i == leaving)))
            .map(|hb| hb.instance.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hb(instance: &str, at_ms: i64) -> Heartbeat {
        Heartbeat {
            version: 1,
            instance: instance.into(),
            server_reference: Some(format!("{instance}:1883")),
            server_references: BTreeMap::new(),
            at_ms,
            shares: Vec::new(),
            live: Some(Vec::new()),
        }
    }

    #[test]
    fn a_client_is_sent_to_the_listener_of_the_kind_it_connected_to() {
        let mut owner = hb("proxy-1", 0);
        owner.server_references = BTreeMap::from([
            ("mqtts".to_owned(), "proxy-1.example.com:8883".to_owned()),
            ("wss".to_owned(), "proxy-1.example.com:443".to_owned()),
        ]);
        assert_eq!(
            owner.reference_for("mqtts").as_deref(),
            Some("proxy-1.example.com:8883")
        );
        assert_eq!(owner.reference_for("wss").as_deref(), Some("proxy-1.example.com:443"));
        assert_eq!(
            owner.reference_for("mqtt").as_deref(),
            Some("proxy-1:1883"),
            "a listener without a reference of its own falls back to the single one"
        );
    }

    #[test]
    fn a_heartbeat_of_an_older_process_has_only_the_single_reference() {
        let old: Heartbeat =
            serde_json::from_str(r#"{"version":1,"instance":"proxy-0","serverReference":"proxy-0:1883","atMs":5}"#)
                .expect("old heartbeat");
        assert!(old.server_references.is_empty());
        assert_eq!(old.reference_for("mqtts").as_deref(), Some("proxy-0:1883"));
        let new = hb("proxy-2", 0);
        assert!(
            !String::from_utf8_lossy(&new.encode()).contains("serverReferences"),
            "no per-listener map when there is none: older processes read it as before"
        );
    }

    #[test]
    fn members_are_live_while_their_heartbeats_are_fresh() {
        let t = Instant::now();
        let mut m = Membership::default();
        m.apply("b", Some(hb("b", 1_000)), t);
        m.apply("a", Some(hb("a", 1_000)), t);
        let live: Vec<&str> = m.live(t, 1_500).iter().map(|h| h.instance.as_str()).collect();
        assert_eq!(live, ["a", "b"]);
        m.apply("a", Some(hb("a", 5_000)), t + Duration::from_secs(4));
        let live: Vec<&str> = m
            .live(t + Duration::from_secs(6), 7_000)
            .iter()
            .map(|h| h.instance.as_str())
            .collect();
        assert_eq!(live, ["a"], "b was silent for 6 s");
        m.apply("a", None, t + Duration::from_secs(6));
        assert!(m.live(t + Duration::from_secs(6), 7_000).is_empty(), "a left");
    }

    #[test]
    fn an_old_heartbeat_read_at_start_up_is_not_life() {
        let t = Instant::now();
        let mut m = Membership::default();
        m.apply("gone", Some(hb("gone", 0)), t);
        assert!(m.live(t, 60_000).is_empty());
    }

    #[test]
    fn a_departure_is_confirmed_by_heartbeats_that_no_longer_count_the_leaver() {
        let t = Instant::now();
        let seeing = |instance: &str, live: &[&str]| Heartbeat {
            live: Some(live.iter().map(|i| (*i).to_owned()).collect()),
            ..hb(instance, 1_000)
        };
        let mut m = Membership::default();
        m.apply("b", Some(seeing("b", &["a", "b", "c"])), t);
        m.apply("c", Some(seeing("c", &["a", "b", "c"])), t);
        m.apply("a", None, t);
        assert_eq!(m.unaware_of_departure("a", t, 1_500), ["b", "c"]);
        m.apply("c", Some(seeing("c", &["b", "c"])), t);
        assert_eq!(m.unaware_of_departure("a", t, 1_500), ["b"]);
        m.apply("b", Some(seeing("b", &["b", "c"])), t);
        assert!(m.unaware_of_departure("a", t, 1_500).is_empty());
        let older: Heartbeat =
            serde_json::from_str(r#"{"version":1,"instance":"d","serverReference":"d:1883","atMs":1000}"#)
                .expect("heartbeat of an older process");
        m.apply("d", Some(older), t);
        assert!(
            m.unaware_of_departure("a", t, 1_500).is_empty(),
            "a process that does not say whom it counts is not waited for"
        );
    }

    #[test]
    fn heartbeat_keys_are_recognised() {
        assert_eq!(member_of_key(&Heartbeat::key("proxy-1")), Some("proxy-1"));
        assert_eq!(member_of_key("client-1"), None);
        assert!(Heartbeat::key("x").starts_with(RESERVED_PREFIX));
    }
}
