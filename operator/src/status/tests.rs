//! Unit tests of `status`.

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
