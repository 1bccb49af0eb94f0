//! Status, computed by a pure function from what the reconciler observed, and the Events
//! that condition transitions deserve.
//!
//! Messages hold nothing that changes from one reconcile to the next (no timestamps, no
//! durations), and `lastTransitionTime` only moves when a condition's status does: an
//! unchanged world yields an equal status, which the controller does not write, so the
//! operator does not wake itself up.

use std::collections::BTreeSet;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::ResourceExt;

use crate::crd::{MqttKafkaProxy, MqttKafkaProxyStatus, PodServerReference, TopicDeletePolicy, TopicStatus};
use crate::resources::configmap::{SpecViolation, listener_reference_templates, server_reference_template};
use crate::resources::{names, selector_string};
use crate::topics::TopicReport;
use mqtt_kafka_proxy::config::INSTANCE_PLACEHOLDER;

/// Condition types.
pub const READY: &str = "Ready";
pub const TOPICS_READY: &str = "TopicsReady";
pub const PROGRESSING: &str = "Progressing";
pub const DEGRADED: &str = "Degraded";

/// What one reconcile saw and did.
#[derive(Clone, Copy, Debug, Default)]
pub struct Observed<'a> {
    /// The StatefulSet as last read (absent before it was created or when the spec is invalid).
    pub statefulset: Option<&'a StatefulSet>,
    /// The topic pass; `None` when it did not run (invalid spec).
    pub topics: Option<&'a TopicReport>,
    /// Rules the spec breaks that admission could not catch.
    pub invalid_spec: &'a [SpecViolation],
    /// Why applying an object failed, if it did.
    pub apply_error: Option<&'a str>,
    /// Ordinals of the pods that exist; `None` when they were not looked at (the server
    /// references then stay as they were).
    pub pods: Option<&'a BTreeSet<i32>>,
}

fn condition(type_: &str, status: bool, reason: &str, message: String) -> Condition {
    Condition {
        type_: type_.into(),
        status: if status { "True" } else { "False" }.into(),
        reason: reason.into(),
        message,
        last_transition_time: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
        observed_generation: None,
    }
}

/// Joins messages, keeping the condition readable when many things are wrong.
fn join(messages: impl IntoIterator<Item = String>) -> String {
    let all: Vec<String> = messages.into_iter().collect();
    let shown: Vec<&str> = all.iter().take(5).map(String::as_str).collect();
    let mut text = shown.join("; ");
    if all.len() > shown.len() {
        text.push_str(&format!("; and {} more", all.len() - shown.len()));
    }
    text
}

struct Pods {
    wanted: i32,
    existing: i32,
    ready: i32,
    updated: i32,
    rollout_seen: bool,
    revision_current: bool,
}

fn pods(proxy: &MqttKafkaProxy, set: Option<&StatefulSet>) -> Option<Pods> {
    let set = set?;
    let status = set.status.clone().unwrap_or_default();
    Some(Pods {
        wanted: proxy.spec.replicas,
        existing: status.replicas,
        ready: status.ready_replicas.unwrap_or(0),
        updated: status.updated_replicas.unwrap_or(0),
        rollout_seen: status.observed_generation.is_some() && status.observed_generation >= set.metadata.generation,
        revision_current: status.update_revision.is_none() || status.current_revision == status.update_revision,
    })
}

/// The status `proxy` should have, given what was observed at `now`. Conditions keep their
/// `lastTransitionTime` from `proxy.status` unless their status changed.
pub fn compute(proxy: &MqttKafkaProxy, observed: Observed<'_>, now: Time) -> MqttKafkaProxyStatus {
    let name = proxy.name_any();
    let namespace = proxy.namespace().unwrap_or_default();
    let generation = proxy.metadata.generation;
    let previous = proxy.status.clone().unwrap_or_default();
    let pods = pods(proxy, observed.statefulset);
    let selector = selector_string(&name);

    // TopicsReady
    let topics_ready = match observed.topics {
        None => Condition {
            status: "Unknown".into(),
            ..condition(
                TOPICS_READY,
                false,
                "NotChecked",
                "topics are checked once the spec is valid".into(),
            )
        },
        Some(report) => {
            if let Some(failure) = &report.failure {
                condition(TOPICS_READY, false, failure.reason, failure.message.clone())
            } else if let Some(first) = report.problems.first() {
                condition(
                    TOPICS_READY,
                    false,
                    first.reason.as_str(),
                    join(report.problems.iter().map(|p| p.message.clone())),
                )
            } else if report.all_ready() {
                condition(
                    TOPICS_READY,
                    true,
                    "TopicsReady",
                    format!(
                        "topics {} exist with the partitions and config of the spec",
                        report
                            .topics
                            .iter()
                            .map(|t| t.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )
            } else {
                condition(
                    TOPICS_READY,
                    false,
                    "TopicsNotReady",
                    "some topics are not ready".into(),
                )
            }
        }
    };

    // Degraded: something a person must fix.
    let degraded = if !observed.invalid_spec.is_empty() {
        condition(
            DEGRADED,
            true,
            "InvalidSpec",
            format!(
                "the spec breaks rules of the proxy config, nothing was changed: {}",
                join(observed.invalid_spec.iter().map(ToString::to_string))
            ),
        )
    } else if let Some(error) = observed.apply_error {
        condition(DEGRADED, true, "ApplyFailed", error.to_owned())
    } else if topics_ready.status == "False" {
        condition(DEGRADED, true, &topics_ready.reason, topics_ready.message.clone())
    } else {
        condition(DEGRADED, false, "AsExpected", "nothing needs attention".into())
    };

    // Progressing: the StatefulSet moving towards the spec.
    let progressing = match &pods {
        None => condition(PROGRESSING, true, "Creating", "the StatefulSet is being created".into()),
        Some(p) if !p.rollout_seen => condition(
            PROGRESSING,
            true,
            "RollingOut",
            "the StatefulSet controller has not yet acted on the latest change".into(),
        ),
        Some(p) if p.updated < p.existing.min(p.wanted) || !p.revision_current => condition(
            PROGRESSING,
            true,
            "RollingOut",
            format!("{} of {} pods run the latest pod template", p.updated, p.wanted),
        ),
        Some(p) if p.existing != p.wanted => condition(
            PROGRESSING,
            true,
            "Scaling",
            format!("{} pods exist, {} wanted", p.existing, p.wanted),
        ),
        Some(p) if p.ready < p.wanted => condition(
            PROGRESSING,
            true,
            "WaitingForPods",
            format!("{} of {} pods are ready", p.ready, p.wanted),
        ),
        Some(p) => condition(
            PROGRESSING,
            false,
            "Stable",
            format!("all {} pods run the latest pod template and are ready", p.wanted),
        ),
    };

    // Ready: devices can connect and their data reaches Kafka.
    let ready = if degraded.status == "True" {
        condition(READY, false, &degraded.reason, degraded.message.clone())
    } else if topics_ready.status != "True" {
        condition(READY, false, "TopicsNotReady", topics_ready.message.clone())
    } else if proxy.spec.replicas == 0 {
        condition(
            READY,
            false,
            "ScaledToZero",
            "spec.replicas is 0: no pod serves MQTT".into(),
        )
    } else {
        match &pods {
            Some(p) if p.ready >= p.wanted => condition(
                READY,
                true,
                "AllPodsReady",
                format!("all {} pods are ready and the topics exist as specified", p.wanted),
            ),
            Some(p) => condition(
                READY,
                false,
                "PodsNotReady",
                format!(
                    "{} of {} pods are ready; see `kubectl -n {namespace} get pods -l {selector}` and `kubectl -n \
                     {namespace} describe pod {}`",
                    p.ready,
                    p.wanted,
                    names::pod(&name, 0)
                ),
            ),
            None => condition(
                READY,
                false,
                "PodsNotReady",
                "the StatefulSet does not exist yet".into(),
            ),
        }
    };

    let conditions = [ready, topics_ready, progressing, degraded]
        .into_iter()
        .map(|mut c| {
            c.observed_generation = generation;
            c.last_transition_time = previous
                .conditions
                .iter()
                .find(|old| old.type_ == c.type_ && old.status == c.status)
                .map_or_else(|| now.clone(), |old| old.last_transition_time.clone());
            c
        })
        .collect();

    MqttKafkaProxyStatus {
        observed_generation: generation,
        replicas: pods.as_ref().map_or(0, |p| p.existing),
        ready_replicas: pods.as_ref().map_or(0, |p| p.ready),
        selector: Some(selector),
        server_references: observed.pods.map_or_else(
            || previous.server_references.clone(),
            |pods| server_references(proxy, pods),
        ),
        topics: observed.topics.map_or_else(
            || previous.topics.clone(),
            |report| topic_statuses(&report.topics, &previous.topics, proxy.spec.kafka.topics.delete_policy),
        ),
        conditions,
    }
}

/// The server references of the pods that exist (`pods`: their ordinals), not of the pods
/// the spec wants: a pod that hands its sessions over during a scale-down keeps its
/// address until it is gone, and a pod not yet created has none.
pub fn server_references(proxy: &MqttKafkaProxy, pods: &BTreeSet<i32>) -> Vec<PodServerReference> {
    let name = proxy.name_any();
    let template = server_reference_template(proxy);
    let listeners = listener_reference_templates(proxy);
    pods.iter()
        .map(|&ordinal| {
            let pod = names::pod(&name, ordinal);
            PodServerReference {
                server_reference: template.replace(INSTANCE_PLACEHOLDER, &pod),
                listeners: listeners
                    .iter()
                    .map(|(listener, t)| (listener.clone(), t.replace(INSTANCE_PLACEHOLDER, &pod)))
                    .collect(),
                pod,
            }
        })
        .collect()
}

/// The topics as reported, with what the status recorded before that the report cannot
/// know (the operator created the topic in an earlier pass), and what deletion will do.
fn topic_statuses(reported: &[TopicStatus], previous: &[TopicStatus], policy: TopicDeletePolicy) -> Vec<TopicStatus> {
    reported
        .iter()
        .map(|topic| {
            let mut topic = topic.clone();
            topic.created |= previous.iter().any(|p| p.name == topic.name && p.created);
            topic.on_delete = Some(on_delete(&topic, policy));
            topic
        })
        .collect()
}

/// What deleting the resource does to `topic`, for a person reading the status.
pub fn on_delete(topic: &TopicStatus, policy: TopicDeletePolicy) -> String {
    match (policy, &topic.claimed_by, topic.created) {
        (_, Some(holder), _) => format!("kept: MqttKafkaProxy {holder} uses it"),
        (TopicDeletePolicy::Retain, _, _) => "kept (deletePolicy: Retain)".into(),
        (TopicDeletePolicy::Delete, None, true) => {
            "deleted with this resource (the operator created it), unless another MqttKafkaProxy on the same Kafka \
             uses it then"
                .into()
        }
        (TopicDeletePolicy::Delete, None, false) => {
            "kept: it existed before this resource; only topics the operator created are deleted".into()
        }
    }
}

/// Whether an Event is routine or needs attention.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    Normal,
    Warning,
}

/// An Event to publish about the resource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub severity: Severity,
    pub reason: String,
    pub note: String,
}

/// Events for conditions whose status or reason changed between `old` and `new`: Ready
/// becoming true, a rollout or scaling starting, every new problem (Degraded, TopicsReady
/// false) and the recovery from one.
pub fn transitions(old: &[Condition], new: &[Condition]) -> Vec<Transition> {
    let mut out = Vec::new();
    for cond in new {
        let before = old.iter().find(|o| o.type_ == cond.type_);
        if before.is_some_and(|b| b.status == cond.status && b.reason == cond.reason) {
            continue;
        }
        let severity = match (cond.type_.as_str(), cond.status.as_str()) {
            (DEGRADED, "True") | (TOPICS_READY, "False") => Severity::Warning,
            (READY, "True") => Severity::Normal,
            // A rollout or a scaling is news; pods starting up after it is not.
            (PROGRESSING, "True") if cond.reason == "RollingOut" || cond.reason == "Scaling" => Severity::Normal,
            (DEGRADED, "False") if before.is_some() => Severity::Normal,
            (TOPICS_READY, "True") if before.is_some() => Severity::Normal,
            _ => continue,
        };
        let mut note = cond.message.clone();
        if note.len() > 1000 {
            let mut cut = 1000;
            while !note.is_char_boundary(cut) {
                cut -= 1;
            }
            note.truncate(cut);
        }
        let reason = if cond.type_ == DEGRADED && cond.status == "False" {
            "Recovered".to_owned()
        } else {
            cond.reason.clone()
        };
        out.push(Transition { severity, reason, note });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::tests::minimal;
    use crate::topics::{Problem, ProblemReason};
    use k8s_openapi::api::apps::v1::StatefulSetStatus;
    use k8s_openapi::jiff::Timestamp;

    fn at(seconds: i64) -> Time {
        Time(Timestamp::from_second(seconds).expect("timestamp"))
    }

    fn set(generation: i64, status: StatefulSetStatus) -> StatefulSet {
        let mut set = StatefulSet::default();
        set.metadata.generation = Some(generation);
        set.status = Some(status);
        set
    }

    fn settled(replicas: i32, ready: i32) -> StatefulSet {
        set(
            1,
            StatefulSetStatus {
                observed_generation: Some(1),
                replicas,
                ready_replicas: Some(ready),
                updated_replicas: Some(replicas),
                current_revision: Some("r1".into()),
                update_revision: Some("r1".into()),
                ..StatefulSetStatus::default()
            },
        )
    }

    fn good_topics() -> TopicReport {
        TopicReport {
            topics: vec![TopicStatus {
                name: "mqtt-sessions".into(),
                role: "sessions".into(),
                partitions: 12,
                ready: true,
                message: None,
                ..TopicStatus::default()
            }],
            ..TopicReport::default()
        }
    }

    /// Status computed from a StatefulSet, a topic report and the pods the StatefulSet
    /// says exist (ordinals from 0).
    fn observe(proxy: &MqttKafkaProxy, sts: &StatefulSet, topics: &TopicReport, now: Time) -> MqttKafkaProxyStatus {
        let existing = sts.status.as_ref().map_or(0, |s| s.replicas);
        let pods: BTreeSet<i32> = (0..existing).collect();
        compute(
            proxy,
            Observed {
                statefulset: Some(sts),
                topics: Some(topics),
                pods: Some(&pods),
                ..Observed::default()
            },
            now,
        )
    }

    fn get<'a>(status: &'a MqttKafkaProxyStatus, type_: &str) -> &'a Condition {
        status.conditions.iter().find(|c| c.type_ == type_).expect("condition")
    }

    #[test]
    fn all_ready_means_ready_and_stable() {
        let proxy = minimal();
        let sts = settled(1, 1);
        let topics = good_topics();
        let status = observe(&proxy, &sts, &topics, at(10));
        assert_eq!(status.observed_generation, Some(3));
        assert_eq!((status.replicas, status.ready_replicas), (1, 1));
        assert_eq!(
            status.selector.as_deref(),
            Some("app.kubernetes.io/instance=mqtt,app.kubernetes.io/name=mqtt-kafka-proxy")
        );
        assert_eq!(
            status.server_references,
            [PodServerReference {
                pod: "mqtt-0".into(),
                server_reference: "mqtt-0.mqtt-headless.iot.svc:1883".into(),
                listeners: [("mqtt".to_owned(), "mqtt-0.mqtt-headless.iot.svc:1883".to_owned())].into(),
            }]
        );
        assert_eq!(status.topics.len(), 1);
        assert_eq!(
            status.topics[0],
            TopicStatus {
                on_delete: Some("kept (deletePolicy: Retain)".into()),
                ..topics.topics[0].clone()
            }
        );
        let types: Vec<&str> = status.conditions.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(types, [READY, TOPICS_READY, PROGRESSING, DEGRADED]);
        assert_eq!(
            (get(&status, READY).status.as_str(), get(&status, READY).reason.as_str()),
            ("True", "AllPodsReady")
        );
        assert_eq!(get(&status, TOPICS_READY).status, "True");
        assert_eq!(
            (
                get(&status, PROGRESSING).status.as_str(),
                get(&status, PROGRESSING).reason.as_str()
            ),
            ("False", "Stable")
        );
        assert_eq!(get(&status, DEGRADED).status, "False");
        assert!(
            status
                .conditions
                .iter()
                .all(|c| c.observed_generation == Some(3) && c.last_transition_time == at(10))
        );
    }

    #[test]
    fn pods_not_ready_say_where_to_look() {
        let proxy = minimal();
        let sts = settled(1, 0);
        let topics = good_topics();
        let status = observe(&proxy, &sts, &topics, at(1));
        let ready = get(&status, READY);
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "PodsNotReady")
        );
        assert!(ready.message.contains("0 of 1 pods are ready"), "{}", ready.message);
        assert!(
            ready.message.contains("kubectl -n iot describe pod mqtt-0"),
            "{}",
            ready.message
        );
        assert_eq!(get(&status, PROGRESSING).reason, "WaitingForPods");
        assert_eq!(
            get(&status, DEGRADED).status,
            "False",
            "pods starting is not a degradation"
        );
    }

    #[test]
    fn rollouts_and_scaling_are_progressing() {
        let mut proxy = minimal();
        let topics = good_topics();
        let unseen = set(
            2,
            StatefulSetStatus {
                observed_generation: Some(1),
                replicas: 1,
                ..StatefulSetStatus::default()
            },
        );
        let status = observe(&proxy, &unseen, &topics, at(1));
        assert_eq!(get(&status, PROGRESSING).reason, "RollingOut");
        let rolling = set(
            2,
            StatefulSetStatus {
                observed_generation: Some(2),
                replicas: 1,
                updated_replicas: Some(0),
                current_revision: Some("a".into()),
                update_revision: Some("b".into()),
                ..StatefulSetStatus::default()
            },
        );
        let status = observe(&proxy, &rolling, &topics, at(1));
        assert_eq!(
            get(&status, PROGRESSING).message,
            "0 of 1 pods run the latest pod template"
        );
        proxy.spec.replicas = 3;
        let sts = settled(1, 1);
        let status = observe(&proxy, &sts, &topics, at(1));
        assert_eq!(
            (
                get(&status, PROGRESSING).reason.as_str(),
                get(&status, PROGRESSING).message.as_str()
            ),
            ("Scaling", "1 pods exist, 3 wanted")
        );
        let pods: Vec<&str> = status.server_references.iter().map(|r| r.pod.as_str()).collect();
        assert_eq!(pods, ["mqtt-0"], "references follow the pods that exist, not the spec");
        assert_eq!(status.replicas, 1, "replicas are the pods that exist");
    }

    #[test]
    fn topic_problems_degrade_with_their_reason_and_message() {
        let proxy = minimal();
        let sts = settled(1, 1);
        let mut topics = good_topics();
        topics.problems.push(Problem {
            topic: "mqtt-sessions".into(),
            reason: ProblemReason::SessionsTopicNotCompacted,
            message: "fix it with kafka-configs.sh".into(),
        });
        let status = observe(&proxy, &sts, &topics, at(1));
        for type_ in [DEGRADED, TOPICS_READY, READY] {
            let c = get(&status, type_);
            assert_eq!(c.reason, "SessionsTopicNotCompacted", "{type_}");
            assert!(c.message.contains("kafka-configs.sh"), "{type_}");
        }
        assert_eq!(get(&status, DEGRADED).status, "True");
        assert_eq!(get(&status, TOPICS_READY).status, "False");
    }

    #[test]
    fn kafka_unreachable_and_invalid_spec_are_reported() {
        let proxy = minimal();
        let unreachable = TopicReport::failed(&[], "KafkaUnreachable", "cannot read topic x".into());
        let status = compute(
            &proxy,
            Observed {
                topics: Some(&unreachable),
                ..Observed::default()
            },
            at(1),
        );
        assert_eq!(get(&status, TOPICS_READY).reason, "KafkaUnreachable");
        assert_eq!(get(&status, DEGRADED).reason, "KafkaUnreachable");
        assert!(get(&status, TOPICS_READY).message.contains("cannot read topic x"));
        assert_eq!(get(&status, PROGRESSING).reason, "Creating");

        let violations = [SpecViolation {
            path: "spec.clients[0]".into(),
            message: "must contain {identity}".into(),
        }];
        let status = compute(
            &proxy,
            Observed {
                invalid_spec: &violations,
                ..Observed::default()
            },
            at(1),
        );
        let degraded = get(&status, DEGRADED);
        assert_eq!(
            (degraded.status.as_str(), degraded.reason.as_str()),
            ("True", "InvalidSpec")
        );
        assert!(degraded.message.contains("spec.clients[0]: must contain {identity}"));
        assert_eq!(get(&status, TOPICS_READY).status, "Unknown");
        assert_eq!(get(&status, READY).reason, "InvalidSpec");

        let status = compute(
            &proxy,
            Observed {
                apply_error: Some("applying StatefulSet mqtt: forbidden"),
                topics: Some(&good_topics()),
                ..Observed::default()
            },
            at(1),
        );
        assert_eq!(get(&status, DEGRADED).reason, "ApplyFailed");
    }

    #[test]
    fn an_unchanged_world_gives_an_equal_status() {
        let mut proxy = minimal();
        let sts = settled(1, 0);
        let topics = good_topics();
        let observed = Observed {
            statefulset: Some(&sts),
            topics: Some(&topics),
            ..Observed::default()
        };
        let first = compute(&proxy, observed, at(1));
        proxy.status = Some(first.clone());
        let second = compute(&proxy, observed, at(99));
        assert_eq!(first, second, "no write, so no event, so no reconcile loop");
        let ready_sts = settled(1, 1);
        let third = compute(
            &proxy,
            Observed {
                statefulset: Some(&ready_sts),
                ..observed
            },
            at(99),
        );
        assert_eq!(get(&third, READY).last_transition_time, at(99), "Ready flipped");
        assert_eq!(
            get(&third, TOPICS_READY).last_transition_time,
            at(1),
            "TopicsReady did not"
        );
    }

    #[test]
    fn transitions_become_events() {
        let proxy = minimal();
        let sts = settled(1, 0);
        let topics = good_topics();
        let starting = observe(&proxy, &sts, &topics, at(1));
        let first = transitions(&[], &starting.conditions);
        let reasons: Vec<&str> = first.iter().map(|t| t.reason.as_str()).collect();
        assert!(
            reasons.is_empty(),
            "a new resource waiting for its pods is not news: {reasons:?}"
        );
        assert!(transitions(&starting.conditions, &starting.conditions).is_empty());

        let ready_sts = settled(1, 1);
        let ready = observe(&proxy, &ready_sts, &topics, at(2));
        let events = transitions(&starting.conditions, &ready.conditions);
        assert!(events.contains(&Transition {
            severity: Severity::Normal,
            reason: "AllPodsReady".into(),
            note: "all 1 pods are ready and the topics exist as specified".into()
        }));

        let mut bad = topics.clone();
        bad.problems.push(Problem {
            topic: "t".into(),
            reason: ProblemReason::TopicConfigDrift,
            message: "drift".into(),
        });
        let degraded = observe(&proxy, &ready_sts, &bad, at(3));
        let events = transitions(&ready.conditions, &degraded.conditions);
        assert!(
            events
                .iter()
                .any(|e| e.severity == Severity::Warning && e.reason == "TopicConfigDrift")
        );
        let recovered = transitions(&degraded.conditions, &ready.conditions);
        assert!(
            recovered
                .iter()
                .any(|e| e.severity == Severity::Normal && e.reason == "Recovered")
        );
    }

    #[test]
    fn a_created_topic_stays_created_and_says_what_deletion_does() {
        let mut proxy = minimal();
        proxy.spec.kafka.topics.delete_policy = TopicDeletePolicy::Delete;
        let sts = settled(1, 1);
        let mut first = good_topics();
        first.topics[0].created = true;
        first.topics.push(TopicStatus {
            name: "mqtt-retained".into(),
            role: "retained".into(),
            ready: true,
            ..TopicStatus::default()
        });
        proxy.status = Some(observe(&proxy, &sts, &first, at(1)));
        // A later pass found both topics existing: it created neither.
        let mut later = first.clone();
        later.topics[0].created = false;
        let status = observe(&proxy, &sts, &later, at(2));
        assert!(status.topics[0].created, "the record of creating it is kept");
        assert!(!status.topics[1].created);
        let on_delete = |i: usize| status.topics[i].on_delete.clone().unwrap_or_default();
        assert!(
            on_delete(0).starts_with("deleted with this resource"),
            "{}",
            on_delete(0)
        );
        assert!(
            on_delete(1).contains("existed before this resource"),
            "{}",
            on_delete(1)
        );
    }

    #[test]
    fn a_resource_conflict_is_reported_as_not_ready_and_degraded_naming_the_other() {
        let proxy = minimal();
        let desired = crate::topics::desired_topics(&proxy.spec);
        let conflicts = [crate::claims::Conflict {
            topic: "mqtt-sessions".into(),
            holder: "other/mqtt".into(),
        }];
        let report = crate::claims::conflict_report(&desired, &conflicts, "kafka:9092");
        let status = compute(
            &proxy,
            Observed {
                topics: Some(&report),
                ..Observed::default()
            },
            at(1),
        );
        for type_ in [READY, TOPICS_READY] {
            let c = get(&status, type_);
            assert_eq!(
                (c.status.as_str(), c.reason.as_str()),
                ("False", "ResourceConflict"),
                "{type_}"
            );
        }
        let degraded = get(&status, DEGRADED);
        assert_eq!(
            (degraded.status.as_str(), degraded.reason.as_str()),
            ("True", "ResourceConflict")
        );
        assert!(
            degraded.message.contains("MqttKafkaProxy other/mqtt"),
            "{}",
            degraded.message
        );
        let sessions = &status.topics[0];
        assert_eq!(sessions.claimed_by.as_deref(), Some("other/mqtt"));
        assert!(
            sessions
                .on_delete
                .as_deref()
                .is_some_and(|d| d.contains("other/mqtt uses it"))
        );
    }

    #[test]
    fn a_pod_handing_over_after_a_scale_down_keeps_its_references_per_listener() {
        let mut proxy = crate::resources::tests::proxy(serde_json::json!({
            "replicas": 1,
            "kafka": {"bootstrapServers": "k:9092"},
            "cluster": {"serverReference": "{instance}.mqtt.example.com:1883"},
            "listeners": [
                {"name": "mqtt", "port": 1883},
                {"name": "mqtts", "protocol": "tls", "port": 8883, "tls": {"secretName": "cert"}},
                {"name": "wss", "protocol": "websocket", "port": 443, "tls": {"secretName": "cert"},
                 "serverReference": "{instance}.ws.example.com:443"}
            ]
        }));
        proxy.metadata.name = Some("mqtt".into());
        // Scaled from 3 to 1: mqtt-1 is gone, mqtt-2 still hands its sessions over.
        let references = server_references(&proxy, &BTreeSet::from([0, 2]));
        let pods: Vec<&str> = references.iter().map(|r| r.pod.as_str()).collect();
        assert_eq!(pods, ["mqtt-0", "mqtt-2"]);
        let last = &references[1];
        assert_eq!(last.server_reference, "mqtt-2.mqtt.example.com:1883");
        assert_eq!(last.listeners["mqtt"], "mqtt-2.mqtt.example.com:1883");
        assert_eq!(
            last.listeners["mqtts"], "mqtt-2.mqtt.example.com:8883",
            "same host, the TLS port"
        );
        assert_eq!(
            last.listeners["wss"], "mqtt-2.ws.example.com:443",
            "the listener's own template"
        );
    }

    #[test]
    fn unobserved_pods_keep_the_previous_references() {
        let mut proxy = minimal();
        let sts = settled(1, 1);
        proxy.status = Some(observe(&proxy, &sts, &good_topics(), at(1)));
        let status = compute(&proxy, Observed::default(), at(2));
        assert_eq!(status.server_references.len(), 1);
    }
}
