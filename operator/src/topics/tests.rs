//! Unit tests of `topics`.

use super::*;
use crate::resources::tests::proxy;
use serde_json::json;

fn topic(role: TopicRole, partitions: i32, config: &[(&str, &str)]) -> DesiredTopic {
    DesiredTopic {
        role,
        name: "t".into(),
        partitions,
        replication_factor: -1,
        config: config.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect(),
    }
}

fn observed(partitions: i32, replicas: i32, configs: &[(&str, &str, bool)]) -> ObservedTopic {
    ObservedTopic {
        layout: TopicLayout {
            partitions,
            replication_factor: replicas,
        },
        configs: configs
            .iter()
            .map(|(k, v, on_topic)| {
                (
                    (*k).to_owned(),
                    TopicConfigEntry {
                        value: Some((*v).into()),
                        set_on_topic: *on_topic,
                    },
                )
            })
            .collect(),
    }
}

#[test]
fn desired_topics_compact_sessions_and_retained_and_add_route_topics_once() {
    let proxy = proxy(json!({
        "kafka": {"bootstrapServers": "k:9092", "topics": {
            "sessions": {"name": "s", "partitions": 6, "config": {"min.insync.replicas": "2"}},
            "retained": {"name": "r", "config": {"cleanup.policy": "compact,delete"}},
            "messages": {"name": "m", "partitions": 24, "replicationFactor": 3, "config": {"retention.ms": "3600000"}}
        }},
        "routes": [
            {"when": [{"publish": [{"topic": "a/#"}]}], "with": {"messages": "devices"}},
            {"when": [{"publish": [{"topic": "b/#"}]}], "with": {"messages": "devices"}},
            {"when": [{"publish": [{"topic": "c/#"}]}], "with": {"messages": "m"}}
        ]
    }));
    let topics = desired_topics(&proxy.spec);
    let names: Vec<&str> = topics.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["s", "r", "m", "devices"]);
    assert_eq!(topics[0].config["cleanup.policy"], "compact");
    assert_eq!(topics[0].config["min.insync.replicas"], "2");
    assert_eq!(topics[0].partitions, 6);
    assert_eq!(
        topics[1].config["cleanup.policy"], "compact,delete",
        "the spec may add delete to retained"
    );
    assert!(!topics[2].config.contains_key("cleanup.policy"));
    assert_eq!(topics[3].role, TopicRole::Messages);
    assert_eq!((topics[3].partitions, topics[3].replication_factor), (24, 3));
    assert_eq!(topics[3].config["retention.ms"], "3600000");
}

#[test]
fn a_missing_topic_is_created() {
    let plan = plan(
        &topic(TopicRole::Sessions, 3, &[]),
        None,
        TopicConfigPolicy::Converge,
        "k",
    );
    assert_eq!(plan.steps, [Step::Create]);
    assert!(plan.problems.is_empty());
}

#[test]
fn a_topic_as_specified_needs_nothing() {
    let plan = plan(
        &topic(TopicRole::Sessions, 3, &[("cleanup.policy", "compact")]),
        Some(&observed(
            3,
            1,
            &[("cleanup.policy", "compact", true), ("retention.ms", "1", false)],
        )),
        TopicConfigPolicy::Converge,
        "k",
    );
    assert_eq!(
        plan,
        TopicPlan {
            steps: vec![],
            problems: vec![]
        }
    );
}

#[test]
fn drifted_configs_are_altered_back_keeping_other_topic_settings() {
    let plan = plan(
        &topic(TopicRole::Sessions, 3, &[("cleanup.policy", "compact")]),
        Some(&observed(
            3,
            1,
            &[
                ("cleanup.policy", "delete", true),
                ("max.message.bytes", "2000000", true),
                ("retention.ms", "7", false),
            ],
        )),
        TopicConfigPolicy::Converge,
        "k",
    );
    let Some(Step::AlterConfigs { configs, drifts }) = plan.steps.first() else {
        panic!("expected an alter, got {plan:?}");
    };
    assert_eq!(
        configs,
        &BTreeMap::from([
            ("cleanup.policy".to_owned(), "compact".to_owned()),
            ("max.message.bytes".to_owned(), "2000000".to_owned())
        ]),
        "settings made on the topic by others are resent, broker defaults are not"
    );
    assert_eq!(drifts[0].to_string(), "cleanup.policy is delete, the spec asks compact");
    assert!(plan.problems.is_empty());
}

#[test]
fn with_report_policy_a_non_compacted_sessions_topic_is_a_problem_that_says_how_to_fix_it() {
    let plan = plan(
        &topic(TopicRole::Sessions, 3, &[("cleanup.policy", "compact")]),
        Some(&observed(3, 1, &[("cleanup.policy", "delete", true)])),
        TopicConfigPolicy::Report,
        "kafka:9092",
    );
    assert!(plan.steps.is_empty());
    let problem = &plan.problems[0];
    assert_eq!(problem.reason, ProblemReason::SessionsTopicNotCompacted);
    assert!(
        problem.message.contains(
            "kafka-configs.sh --bootstrap-server kafka:9092 --alter --entity-type topics --entity-name t \
             --add-config cleanup.policy=compact"
        ),
        "{}",
        problem.message
    );
    assert!(problem.message.contains("configPolicy"), "{}", problem.message);
}

#[test]
fn with_report_policy_other_drift_is_reported_as_drift() {
    let plan = plan(
        &topic(TopicRole::Messages, 3, &[("retention.ms", "100")]),
        Some(&observed(3, 1, &[("retention.ms", "200", true)])),
        TopicConfigPolicy::Report,
        "k",
    );
    assert_eq!(plan.problems[0].reason, ProblemReason::TopicConfigDrift);
    assert!(
        plan.problems[0]
            .message
            .contains("retention.ms is 200, the spec asks 100")
    );
}

#[test]
fn partitions_grow_only_on_messages_topics_and_never_shrink() {
    let grow = plan(
        &topic(TopicRole::Messages, 6, &[]),
        Some(&observed(3, 1, &[])),
        TopicConfigPolicy::Converge,
        "k",
    );
    assert_eq!(grow.steps, [Step::AddPartitions(6)]);

    let keyed = plan(
        &topic(TopicRole::Sessions, 6, &[]),
        Some(&observed(3, 1, &[])),
        TopicConfigPolicy::Converge,
        "k",
    );
    assert!(keyed.steps.is_empty());
    assert_eq!(keyed.problems[0].reason, ProblemReason::PartitionsChangeRefused);
    assert!(
        keyed.problems[0]
            .message
            .contains("spec.kafka.topics.sessions.partitions to 3")
    );

    let shrink = plan(
        &topic(TopicRole::Messages, 3, &[]),
        Some(&observed(6, 1, &[])),
        TopicConfigPolicy::Converge,
        "k",
    );
    assert!(shrink.steps.is_empty());
    assert_eq!(shrink.problems[0].reason, ProblemReason::PartitionsShrinkRefused);
    assert!(
        shrink.problems[0]
            .message
            .contains("set spec.kafka.topics.messages.partitions to 6")
    );
}

#[test]
fn replication_factor_is_checked_only_when_the_spec_fixes_it() {
    let mut wanted = topic(TopicRole::Messages, 3, &[]);
    assert!(
        plan(&wanted, Some(&observed(3, 1, &[])), TopicConfigPolicy::Converge, "k")
            .problems
            .is_empty()
    );
    wanted.replication_factor = 3;
    let problems = plan(&wanted, Some(&observed(3, 1, &[])), TopicConfigPolicy::Converge, "k").problems;
    assert_eq!(problems[0].reason, ProblemReason::ReplicationFactorMismatch);
}

#[test]
fn report_is_ready_only_when_every_topic_is() {
    let mut report = TopicReport::default();
    assert!(!report.all_ready(), "no topics read yet");
    report.topics.push(TopicStatus {
        name: "a".into(),
        role: "sessions".into(),
        partitions: 1,
        ready: true,
        message: None,
        ..TopicStatus::default()
    });
    assert!(report.all_ready());
    report.topics.push(TopicStatus {
        name: "b".into(),
        role: "messages".into(),
        partitions: 1,
        ready: false,
        message: None,
        ..TopicStatus::default()
    });
    assert!(!report.all_ready());
}
