//! Topics that drift behind the operator's back are altered back (Converge) or reported
//! with what to do (Report); partitions are never shrunk.

use std::collections::BTreeMap;
use std::time::Duration;

use mqtt_kafka_proxy::kafka::admin::{self, TopicSpec};
use serde_json::json;

use crate::support::{condition, condition_is, env, eventually};

#[tokio::test]
async fn a_drifted_topic_config_is_reverted() {
    let env = env("op-drift").await;
    let operator = env.operator();
    let mut spec = env.spec("p");
    spec["kafka"]["topics"]["messages"]["config"] = json!({"retention.ms": "3600000"});
    env.apply("p", spec).await;
    env.status_where("p", "topics ready", |p| condition_is(p, "TopicsReady", "True"))
        .await;
    let sessions = env.topic("p-sessions");
    let messages = env.topic("p-messages");

    // Someone makes the sessions topic non-compacted and changes retention of messages,
    // and sets an unrelated config the spec does not mention.
    admin::alter_topic_configs(
        &env.admin,
        &sessions,
        &BTreeMap::from([("cleanup.policy".into(), "delete".into())]),
    )
    .await
    .expect("alter sessions");
    admin::alter_topic_configs(
        &env.admin,
        &messages,
        &BTreeMap::from([
            ("retention.ms".into(), "60000".into()),
            ("max.message.bytes".into(), "2000000".into()),
        ]),
    )
    .await
    .expect("alter messages");
    assert_eq!(
        env.topic_config(&sessions, "cleanup.policy").await.as_deref(),
        Some("delete")
    );

    eventually("the operator reverts the drift", Duration::from_secs(20), || async {
        let policy = env.topic_config(&sessions, "cleanup.policy").await?;
        let retention = env.topic_config(&messages, "retention.ms").await?;
        (policy == "compact" && retention == "3600000").then_some(())
    })
    .await;
    assert_eq!(
        env.topic_config(&messages, "max.message.bytes").await.as_deref(),
        Some("2000000"),
        "configs the spec does not mention are left alone"
    );
    // The event is written after the alteration it reports: it can trail the config.
    eventually(
        "a TopicConfigReverted event naming cleanup.policy",
        Duration::from_secs(10),
        || async {
            env.event_reasons("p")
                .await
                .iter()
                .any(|(reason, note)| reason == "TopicConfigReverted" && note.contains("cleanup.policy is delete"))
                .then_some(())
        },
    )
    .await;

    operator.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn what_cannot_or_may_not_be_fixed_is_reported_with_how_to_fix_it() {
    let env = env("op-report").await;
    let sessions = env.topic("p-sessions");
    let messages = env.topic("p-messages");
    // Topics that exist before the resource: a sessions topic that is not compacted, and a
    // messages topic with more partitions than the spec will ask.
    let created = admin::create_topics(
        &env.admin,
        &[
            TopicSpec {
                name: sessions.clone(),
                partitions: 3,
                replication: 1,
                configs: vec![("cleanup.policy".into(), "delete".into())],
            },
            TopicSpec {
                name: messages.clone(),
                partitions: 5,
                replication: 1,
                configs: vec![],
            },
        ],
    )
    .await
    .expect("create topics");
    assert_eq!(created.len(), 2);

    let operator = env.operator();
    let mut spec = env.spec("p");
    spec["kafka"]["topics"]["configPolicy"] = json!("Report");
    env.apply("p", spec).await;
    let proxy = env
        .status_where("p", "Degraded", |p| condition_is(p, "Degraded", "True"))
        .await;
    let degraded = condition(&proxy, "Degraded").expect("Degraded");
    assert_eq!(degraded.1, "SessionsTopicNotCompacted");
    assert!(
        degraded.2.contains(&format!(
            "kafka-configs.sh --bootstrap-server {} --alter --entity-type topics --entity-name {sessions} --add-config \
             cleanup.policy=compact",
            env.bootstrap
        )),
        "{}",
        degraded.2
    );
    assert!(degraded.2.contains("Kafka cannot remove partitions"), "{}", degraded.2);
    let topics_ready = condition(&proxy, "TopicsReady").expect("TopicsReady");
    assert_eq!(
        (topics_ready.0.as_str(), topics_ready.1.as_str()),
        ("False", "SessionsTopicNotCompacted")
    );
    let status = proxy.status.as_ref().expect("status");
    let by_name = |name: &str| {
        status
            .topics
            .iter()
            .find(|t| t.name == name)
            .cloned()
            .expect("topic status")
    };
    assert!(!by_name(&sessions).ready);
    let messages_status = by_name(&messages);
    assert_eq!((messages_status.partitions, messages_status.ready), (5, false));
    assert!(
        messages_status
            .message
            .as_deref()
            .is_some_and(|m| m.contains("set spec.kafka.topics.messages.partitions to 5")),
        "{messages_status:?}"
    );
    assert!(
        by_name(&env.topic("p-retained")).ready,
        "the missing retained topic was created"
    );
    assert!(
        env.event_reasons("p")
            .await
            .iter()
            .any(|(reason, _)| reason == "SessionsTopicNotCompacted")
    );

    // Reported, not touched; partitions never shrink.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        env.topic_config(&sessions, "cleanup.policy").await.as_deref(),
        Some("delete")
    );
    assert_eq!(env.partitions(&messages), Some(5));

    // Following the advice recovers: converge the config, match the partitions.
    let mut spec = env.spec("p");
    spec["kafka"]["topics"]["messages"]["partitions"] = json!(5);
    env.apply("p", spec).await;
    env.status_where("p", "recovered", |p| condition_is(p, "TopicsReady", "True"))
        .await;
    assert_eq!(
        env.topic_config(&sessions, "cleanup.policy").await.as_deref(),
        Some("compact")
    );

    operator.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn an_unreachable_kafka_is_reported_and_does_not_hold_the_objects_back() {
    let env = env("op-nokafka").await;
    let operator = env.operator();
    let mut spec = env.spec("p");
    spec["kafka"]["bootstrapServers"] = json!("127.0.0.1:1");
    env.apply("p", spec).await;
    let proxy = env
        .status_where("p", "KafkaUnreachable", |p| {
            condition(p, "TopicsReady").is_some_and(|c| c.1 == "KafkaUnreachable")
        })
        .await;
    let topics_ready = condition(&proxy, "TopicsReady").expect("TopicsReady");
    assert!(topics_ready.2.contains("127.0.0.1:1"), "{}", topics_ready.2);
    assert!(
        topics_ready.2.contains("check spec.kafka.bootstrapServers"),
        "{}",
        topics_ready.2
    );
    assert!(condition_is(&proxy, "Degraded", "True"));
    env.api::<k8s_openapi::api::apps::v1::StatefulSet>()
        .get("p")
        .await
        .expect("the StatefulSet exists although Kafka is down");
    assert!(operator.ctx.metrics.errors.with_label_values(&["kafka"]).get() > 0);

    operator.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_second_resource_on_the_same_topics_is_a_conflict_and_deletion_keeps_what_the_operator_did_not_create() {
    let env = env("op-claims").await;
    // A messages topic that exists before any resource.
    let messages = env.topic("a-messages");
    admin::create_topics(
        &env.admin,
        &[TopicSpec {
            name: messages.clone(),
            partitions: 3,
            replication: 1,
            configs: vec![],
        }],
    )
    .await
    .expect("create topic");
    let operator = env.operator();
    let mut spec = env.spec("a");
    spec["kafka"]["topics"]["deletePolicy"] = json!("Delete");
    env.apply("a", spec.clone()).await;
    let a = env
        .status_where("a", "topics ready", |p| condition_is(p, "TopicsReady", "True"))
        .await;
    let created: BTreeMap<String, (bool, String)> = a
        .status
        .as_ref()
        .expect("status")
        .topics
        .iter()
        .map(|t| (t.name.clone(), (t.created, t.on_delete.clone().unwrap_or_default())))
        .collect();
    assert!(created[&env.topic("a-sessions")].0, "{created:?}");
    assert!(created[&env.topic("a-retained")].0, "{created:?}");
    let (was_created, on_delete) = &created[&messages];
    assert!(!was_created, "the messages topic existed before: {created:?}");
    assert!(on_delete.contains("existed before this resource"), "{on_delete}");

    // A second resource wants the same topics on the same Kafka: it is held back.
    env.apply("b", spec.clone()).await;
    let b = env
        .status_where("b", "ResourceConflict", |p| {
            condition(p, "Ready").is_some_and(|c| c.1 == "ResourceConflict")
        })
        .await;
    let degraded = condition(&b, "Degraded").expect("Degraded");
    assert_eq!((degraded.0.as_str(), degraded.1.as_str()), ("True", "ResourceConflict"));
    assert!(
        degraded.2.contains(&format!("MqttKafkaProxy {}/a", env.namespace)),
        "names the other resource: {}",
        degraded.2
    );
    let claimed: Vec<Option<String>> = b
        .status
        .as_ref()
        .expect("status")
        .topics
        .iter()
        .map(|t| t.claimed_by.clone())
        .collect();
    assert!(
        claimed
            .iter()
            .all(|c| c.as_deref() == Some(&format!("{}/a", env.namespace))),
        "{claimed:?}"
    );
    assert!(
        env.api::<k8s_openapi::api::apps::v1::StatefulSet>()
            .get_opt("b")
            .await
            .expect("get")
            .is_none(),
        "nothing is applied for a resource in conflict"
    );
    let a = env.proxies().get("a").await.expect("a");
    assert!(
        condition_is(&a, "Degraded", "False"),
        "the first resource is not affected"
    );

    // Deleting b (deletePolicy: Delete, created nothing) deletes no topic.
    env.proxies().delete("b", &Default::default()).await.expect("delete b");
    eventually("b gone", Duration::from_secs(30), || async {
        env.proxies().get_opt("b").await.ok()?.is_none().then_some(())
    })
    .await;
    for topic in [env.topic("a-sessions"), env.topic("a-retained"), messages.clone()] {
        assert_eq!(env.partitions(&topic), Some(3), "{topic} kept");
    }

    // Deleting a deletes the topics the operator created for it, and keeps the other.
    env.proxies().delete("a", &Default::default()).await.expect("delete a");
    eventually("created topics deleted", Duration::from_secs(30), || async {
        (env.partitions(&env.topic("a-sessions")).is_none() && env.partitions(&env.topic("a-retained")).is_none())
            .then_some(())
    })
    .await;
    eventually("a gone", Duration::from_secs(30), || async {
        env.proxies().get_opt("a").await.ok()?.is_none().then_some(())
    })
    .await;
    assert_eq!(
        env.partitions(&messages),
        Some(3),
        "the topic that existed before is kept"
    );

    operator.stop().await;
    env.cleanup().await;
}
