//! Who owns a Kafka topic: pure decisions over the `MqttKafkaProxy` resources the operator
//! sees, so that two resources on one Kafka never fight over a topic and no resource
//! deletes a topic it did not create.
//!
//! Kafka has no place for an owner (a topic config cannot hold arbitrary keys), so the
//! record lives on the Kubernetes side:
//! - the resource's `status.topics[].created` says which topics the operator created for
//!   it; only those are deleted with `deletePolicy: Delete`, and not while another
//!   resource on the same Kafka still wants them;
//! - every resource's spec says which topics it wants on which bootstrap servers. Two
//!   resources want the same topic on the same Kafka when their topic names match and
//!   their bootstrap lists share a `host:port`. The one that holds the topic already (its
//!   status lists it without a conflict) keeps it; when both or neither do, the older
//!   resource (`creationTimestamp`, then namespace/name) keeps it. The other one is not
//!   reconciled (no topic changes, no objects applied, its pods left as they are) and
//!   reports `ResourceConflict` naming the resource that keeps the topic, like Strimzi's
//!   resources do.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use crate::crd::{MqttKafkaProxy, TopicStatus};
use crate::topics::{DesiredTopic, TopicReport, desired_topics};

/// The condition reason of a resource that wants topics another resource keeps.
pub const RESOURCE_CONFLICT: &str = "ResourceConflict";

/// What one resource wants of which Kafka.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    /// `namespace/name`.
    pub resource: String,
    pub created_at: Option<Timestamp>,
    /// Bootstrap `host:port`s, lower-case.
    pub bootstrap: BTreeSet<String>,
    /// Topic names the spec wants.
    pub topics: BTreeSet<String>,
    /// Topic names the status lists as reconciled for this resource (no conflict).
    pub held: BTreeSet<String>,
}

/// The `host:port`s of a bootstrap list, lower-case, without blanks and duplicates.
pub fn bootstrap_set(servers: &str) -> BTreeSet<String> {
    servers
        .split(',')
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect()
}

/// Whether two bootstrap lists name the same Kafka (they share a broker address).
pub fn same_kafka(a: &BTreeSet<String>, b: &BTreeSet<String>) -> bool {
    !a.is_disjoint(b)
}

/// The key of a resource in messages and maps: `namespace/name`.
pub fn resource_key(proxy: &MqttKafkaProxy) -> String {
    format!("{}/{}", proxy.namespace().unwrap_or_default(), proxy.name_any())
}

impl Claim {
    /// The claim of `proxy`.
    pub fn of(proxy: &MqttKafkaProxy) -> Claim {
        let held = proxy
            .status
            .as_ref()
            .map(|s| {
                s.topics
                    .iter()
                    .filter(|t| t.claimed_by.is_none())
                    .map(|t| t.name.clone())
                    .collect()
            })
            .unwrap_or_default();
        Claim {
            resource: resource_key(proxy),
            created_at: proxy.metadata.creation_timestamp.as_ref().map(|t| t.0),
            bootstrap: bootstrap_set(&proxy.spec.kafka.bootstrap_servers),
            topics: desired_topics(&proxy.spec).into_iter().map(|t| t.name).collect(),
            held,
        }
    }

    /// Whether this claim comes before `other` for `topic`.
    fn precedes(&self, other: &Claim, topic: &str) -> bool {
        let (mine, theirs) = (self.held.contains(topic), other.held.contains(topic));
        if mine != theirs {
            return mine;
        }
        // A resource without a creation time (not stored yet) comes last.
        match (self.created_at, other.created_at) {
            (Some(a), Some(b)) if a != b => a < b,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            _ => self.resource < other.resource,
        }
    }
}

/// A topic this resource wants that another resource keeps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    pub topic: String,
    /// `namespace/name` of the resource that keeps it.
    pub holder: String,
}

/// The topics of `me` that a resource of `others` (on the same Kafka) keeps, by topic name.
/// `others` may contain `me` (it is skipped) and should leave out resources being deleted.
pub fn conflicts(me: &Claim, others: &[Claim]) -> Vec<Conflict> {
    let mut out: BTreeMap<&str, &str> = BTreeMap::new();
    for other in others {
        if other.resource == me.resource || !same_kafka(&me.bootstrap, &other.bootstrap) {
            continue;
        }
        for topic in me.topics.intersection(&other.topics) {
            if other.precedes(me, topic) {
                out.entry(topic).or_insert(&other.resource);
            }
        }
    }
    out.into_iter()
        .map(|(topic, holder)| Conflict {
            topic: topic.to_owned(),
            holder: holder.to_owned(),
        })
        .collect()
}

/// The condition message for `conflicts` of the resource on `bootstrap`.
pub fn conflict_message(conflicts: &[Conflict], bootstrap: &str) -> String {
    let mut by_holder: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for c in conflicts {
        by_holder.entry(&c.holder).or_default().push(&c.topic);
    }
    let parts: Vec<String> = by_holder
        .iter()
        .map(|(holder, topics)| format!("{} already used by MqttKafkaProxy {holder}", topics.join(", ")))
        .collect();
    format!(
        "topics on Kafka {bootstrap}: {}; this resource is not reconciled (no topic changes, no objects applied) \
         until it uses other topic names (spec.kafka.topics.*.name, routes[].with.messages) or the other resource \
         stops using them",
        parts.join("; ")
    )
}

/// The topic report of a resource that is not reconciled because of `conflicts`:
/// `TopicsReady` false with reason `ResourceConflict`, each contested topic naming the
/// resource that keeps it.
pub fn conflict_report(desired: &[DesiredTopic], conflicts: &[Conflict], bootstrap: &str) -> TopicReport {
    let mut report = TopicReport::failed(desired, RESOURCE_CONFLICT, conflict_message(conflicts, bootstrap));
    for topic in &mut report.topics {
        if let Some(conflict) = conflicts.iter().find(|c| c.topic == topic.name) {
            topic.claimed_by = Some(conflict.holder.clone());
            topic.message = Some(format!("used by MqttKafkaProxy {} on the same Kafka", conflict.holder));
        }
    }
    report
}

/// What the `Delete` deletion policy does with the topics of a resource.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeletePlan {
    pub delete: Vec<String>,
    /// Topics kept, with why.
    pub keep: Vec<(String, String)>,
}

/// The topics to delete for a resource whose status lists `topics`, given the claims of
/// the other resources (leave out resources being deleted): only topics the operator
/// created for it, and only those no other resource on the same Kafka wants.
pub fn delete_plan(me: &Claim, topics: &[TopicStatus], others: &[Claim]) -> DeletePlan {
    let mut plan = DeletePlan::default();
    let mut seen = BTreeSet::new();
    for topic in topics {
        if !seen.insert(topic.name.as_str()) {
            continue;
        }
        let wanted_by = others.iter().find(|o| {
            o.resource != me.resource && same_kafka(&me.bootstrap, &o.bootstrap) && o.topics.contains(&topic.name)
        });
        if !topic.created || topic.claimed_by.is_some() {
            plan.keep.push((
                topic.name.clone(),
                "not created by the operator for this resource (it existed before)".into(),
            ));
        } else if let Some(other) = wanted_by {
            plan.keep
                .push((topic.name.clone(), format!("MqttKafkaProxy {} uses it", other.resource)));
        } else {
            plan.delete.push(topic.name.clone());
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(resource: &str, at: i64, bootstrap: &str, topics: &[&str], held: &[&str]) -> Claim {
        Claim {
            resource: resource.into(),
            created_at: Some(Timestamp::from_second(at).expect("time")),
            bootstrap: bootstrap_set(bootstrap),
            topics: topics.iter().map(|t| (*t).to_owned()).collect(),
            held: held.iter().map(|t| (*t).to_owned()).collect(),
        }
    }

    fn status(name: &str, created: bool) -> TopicStatus {
        TopicStatus {
            name: name.into(),
            role: "messages".into(),
            created,
            ..TopicStatus::default()
        }
    }

    #[test]
    fn bootstrap_lists_are_the_same_kafka_when_they_share_a_broker() {
        let a = bootstrap_set("Kafka-0:9092, kafka-1:9092");
        assert_eq!(
            a,
            BTreeSet::from(["kafka-0:9092".to_owned(), "kafka-1:9092".to_owned()])
        );
        assert!(same_kafka(&a, &bootstrap_set("kafka-1:9092,kafka-2:9092")));
        assert!(!same_kafka(&a, &bootstrap_set("other:9092")));
    }

    #[test]
    fn the_later_resource_on_the_same_kafka_is_in_conflict_naming_the_earlier() {
        let first = claim("a/one", 10, "k:9092", &["s", "r", "m"], &[]);
        let second = claim("b/two", 20, "k:9092", &["s", "r2", "m"], &[]);
        let all = [first.clone(), second.clone()];
        assert!(conflicts(&first, &all).is_empty(), "the earlier one keeps its topics");
        let found = conflicts(&second, &all);
        let topics: Vec<&str> = found.iter().map(|c| c.topic.as_str()).collect();
        assert_eq!(topics, ["m", "s"]);
        assert!(found.iter().all(|c| c.holder == "a/one"));
        let message = conflict_message(&found, "k:9092");
        assert!(
            message.contains("m, s already used by MqttKafkaProxy a/one"),
            "{message}"
        );
    }

    #[test]
    fn other_kafkas_and_other_topic_names_do_not_conflict() {
        let first = claim("a/one", 10, "k:9092", &["s", "r", "m"], &[]);
        let elsewhere = claim("b/two", 20, "other:9092", &["s", "r", "m"], &[]);
        let renamed = claim("c/three", 30, "k:9092", &["s3", "r3", "m3"], &[]);
        let all = [first, elsewhere.clone(), renamed.clone()];
        assert!(conflicts(&elsewhere, &all).is_empty());
        assert!(conflicts(&renamed, &all).is_empty());
    }

    #[test]
    fn a_resource_that_holds_the_topic_keeps_it_even_when_younger() {
        // b/two has been using "s"; the older a/one is edited to use it as well.
        let older = claim("a/one", 10, "k:9092", &["s"], &[]);
        let holder = claim("b/two", 20, "k:9092", &["s"], &["s"]);
        let all = [older.clone(), holder.clone()];
        assert!(conflicts(&holder, &all).is_empty());
        assert_eq!(conflicts(&older, &all)[0].holder, "b/two");
    }

    #[test]
    fn equal_age_is_decided_by_name_so_exactly_one_side_yields() {
        let a = claim("ns/a", 10, "k:9092", &["s"], &[]);
        let b = claim("ns/b", 10, "k:9092", &["s"], &[]);
        let all = [a.clone(), b.clone()];
        assert!(conflicts(&a, &all).is_empty());
        assert_eq!(conflicts(&b, &all).len(), 1);
    }

    #[test]
    fn only_topics_the_operator_created_and_nobody_else_wants_are_deleted() {
        let me = claim("a/one", 10, "k:9092", &["s", "r", "m", "shared"], &[]);
        let other = claim("b/two", 20, "k:9092", &["shared"], &[]);
        let topics = [
            status("s", true),
            status("r", false),
            status("m", true),
            status("shared", true),
        ];
        let plan = delete_plan(&me, &topics, &[me.clone(), other]);
        assert_eq!(plan.delete, ["s", "m"]);
        let kept: Vec<&str> = plan.keep.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(kept, ["r", "shared"]);
        assert!(plan.keep[0].1.contains("existed before"), "{:?}", plan.keep);
        assert!(plan.keep[1].1.contains("b/two"), "{:?}", plan.keep);
    }

    #[test]
    fn a_topic_in_conflict_is_never_deleted_even_if_marked_created() {
        let me = claim("a/one", 10, "k:9092", &["s"], &[]);
        let mut topic = status("s", true);
        topic.claimed_by = Some("b/two".into());
        assert!(delete_plan(&me, &[topic], &[]).delete.is_empty());
    }
}
