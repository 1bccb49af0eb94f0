//! Kafka topic administration: the topics a config needs, creating the missing ones, and
//! the start-up check that the sessions topic is compacted.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

use crate::config::Config;

/// What a topic should look like.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    pub replication: i32,
    pub configs: Vec<(String, String)>,
}

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("Kafka admin request failed: {0}")]
    Kafka(#[from] KafkaError),
    #[error("creating topic {topic} failed: {code}")]
    Create { topic: String, code: RDKafkaErrorCode },
    #[error("describing topic {topic} failed: {code}")]
    Describe { topic: String, code: RDKafkaErrorCode },
    #[error(
        "the sessions topic {topic} has cleanup.policy={policy}, but it must be compacted: \
         kafka-configs.sh --alter --entity-type topics --entity-name {topic} --add-config cleanup.policy=compact"
    )]
    SessionsNotCompacted { topic: String, policy: String },
}

/// The topics `config` reads and writes: sessions and retained compacted, every messages
/// topic (default and routes) with delete retention.
pub fn topic_specs(config: &Config, partitions: i32, replication: i32) -> Vec<TopicSpec> {
    let compacted = || vec![("cleanup.policy".to_owned(), "compact".to_owned())];
    let mut specs = vec![
        TopicSpec {
            name: config.topics.sessions.clone(),
            partitions,
            replication,
            configs: compacted(),
        },
        TopicSpec {
            name: config.topics.retained.clone(),
            partitions,
            replication,
            configs: compacted(),
        },
        TopicSpec {
            name: config.topics.messages.clone(),
            partitions,
            replication,
            configs: Vec::new(),
        },
    ];
    for route in &config.routes {
        if let Some(with) = &route.with
            && !specs.iter().any(|s| s.name == with.messages)
        {
            specs.push(TopicSpec {
                name: with.messages.clone(),
                partitions,
                replication,
                configs: Vec::new(),
            });
        }
    }
    specs
}

/// An admin client for `bootstrap` with extra librdkafka `properties`.
pub fn client(
    bootstrap: &str,
    properties: &[(String, String)],
) -> Result<AdminClient<DefaultClientContext>, AdminError> {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap);
    for (key, value) in properties {
        config.set(key, value);
    }
    Ok(config.create()?)
}

fn options() -> AdminOptions {
    AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(30)))
        .request_timeout(Some(Duration::from_secs(30)))
}

/// Creates the topics of `specs` that do not exist; returns the names it created.
pub async fn create_missing(
    admin: &AdminClient<DefaultClientContext>,
    specs: &[TopicSpec],
) -> Result<Vec<String>, AdminError> {
    let new_topics: Vec<NewTopic<'_>> = specs
        .iter()
        .map(|s| {
            s.configs.iter().fold(
                NewTopic::new(&s.name, s.partitions, TopicReplication::Fixed(s.replication)),
                |t, (k, v)| t.set(k, v),
            )
        })
        .collect();
    let mut created = Vec::new();
    for result in admin.create_topics(new_topics.iter(), &options()).await? {
        match result {
            Ok(name) => created.push(name),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(AdminError::Create { topic, code }),
        }
    }
    for topic in &created {
        await_leaders(admin, topic).await?;
    }
    Ok(created)
}

/// Waits until every partition of a just-created topic has a leader: until then metadata
/// and offset requests fail with transient errors (NotLeaderForPartition and the like).
async fn await_leaders(admin: &AdminClient<DefaultClientContext>, topic: &str) -> Result<(), AdminError> {
    let mut last = RDKafkaErrorCode::LeaderNotAvailable;
    for _ in 0..100 {
        let metadata = admin.inner().fetch_metadata(Some(topic), Duration::from_secs(5))?;
        let ready = metadata.topics().first().is_some_and(|t| {
            t.error().is_none()
                && !t.partitions().is_empty()
                && t.partitions().iter().all(|p| p.error().is_none() && p.leader() >= 0)
        });
        if ready {
            return Ok(());
        }
        if let Some(code) = metadata.topics().first().and_then(|t| t.error()) {
            last = code.into();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(AdminError::Describe {
        topic: topic.to_owned(),
        code: last,
    })
}

/// The value of one config entry of `topic` (`None` when the broker has no such key).
pub async fn topic_config(
    admin: &AdminClient<DefaultClientContext>,
    topic: &str,
    key: &str,
) -> Result<Option<String>, AdminError> {
    let results = admin
        .describe_configs([&ResourceSpecifier::Topic(topic)], &options())
        .await?;
    match results.into_iter().next() {
        Some(Ok(resource)) => Ok(resource.get(key).and_then(|e| e.value.clone())),
        Some(Err(code)) => Err(AdminError::Describe {
            topic: topic.to_owned(),
            code,
        }),
        None => Ok(None),
    }
}

/// Refuses a sessions topic that is not compacted (DESIGN section 2): deleting old
/// session records would silently lose sessions.
pub async fn check_sessions_compacted(
    admin: &AdminClient<DefaultClientContext>,
    topic: &str,
) -> Result<(), AdminError> {
    let policy = topic_config(admin, topic, "cleanup.policy")
        .await?
        .unwrap_or_else(|| "delete".into());
    if policy.split(',').any(|p| p.trim() == "compact") {
        Ok(())
    } else {
        Err(AdminError::SessionsNotCompacted {
            topic: topic.to_owned(),
            policy,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Kafka, Route, RouteCondition, RouteWith, TopicCondition};

    #[test]
    fn specs_cover_compacted_sessions_and_retained_and_every_route_topic_once() {
        let mut config = Config::new(Kafka::new("k:9092"));
        let route = |topic: &str| Route {
            when: vec![RouteCondition::Publish(vec![TopicCondition { topic: "a/#".into() }])],
            with: Some(RouteWith { messages: topic.into() }),
            guarded: Default::default(),
        };
        config.routes = vec![route("mqtt-devices"), route("mqtt-devices"), route("mqtt-messages")];
        let specs = topic_specs(&config, 3, 1);
        let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            ["mqtt-sessions", "mqtt-retained", "mqtt-messages", "mqtt-devices"]
        );
        assert_eq!(specs[0].configs, [("cleanup.policy".to_owned(), "compact".to_owned())]);
        assert_eq!(specs[1].configs, specs[0].configs);
        assert!(specs[2].configs.is_empty());
        assert!(specs.iter().all(|s| s.partitions == 3 && s.replication == 1));
    }
}
