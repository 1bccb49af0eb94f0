//! Kafka topic administration: the topics a config needs, creating the missing ones, and
//! the start-up check that the sessions topic is compacted. The operator also reads topic
//! metadata and configs, converges configs, adds partitions and deletes topics through the
//! functions at the end of this file.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, ConfigSource, NewPartitions, NewTopic, ResourceSpecifier, TopicReplication,
};
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
    #[error("adding partitions to topic {topic} failed: {code}")]
    AddPartitions { topic: String, code: RDKafkaErrorCode },
    #[error("altering the config of topic {topic} failed: {code}")]
    Alter { topic: String, code: RDKafkaErrorCode },
    #[error("deleting topic {topic} failed: {code}")]
    Delete { topic: String, code: RDKafkaErrorCode },
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
    let mut created = Vec::new();
    for (topic, outcome) in create_topics(admin, specs).await? {
        match outcome {
            CreateOutcome::Created => created.push(topic),
            CreateOutcome::AlreadyExisted => {}
            CreateOutcome::Failed(code) => return Err(AdminError::Create { topic, code }),
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

/// Partition count and replication factor of an existing topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicLayout {
    pub partitions: i32,
    /// Replicas of the first partition (Kafka gives every partition the same number unless
    /// someone reassigned them by hand).
    pub replication_factor: i32,
}

/// Partitions and replication factor of `topic`, `None` when it does not exist.
///
/// Blocking (librdkafka's metadata call is synchronous): call it from `spawn_blocking`.
pub fn topic_layout(
    admin: &AdminClient<DefaultClientContext>,
    topic: &str,
    timeout: Duration,
) -> Result<Option<TopicLayout>, AdminError> {
    let metadata = admin.inner().fetch_metadata(Some(topic), timeout)?;
    let Some(found) = metadata.topics().iter().find(|t| t.name() == topic) else {
        return Ok(None);
    };
    match found.error().map(RDKafkaErrorCode::from) {
        None => Ok(Some(TopicLayout {
            partitions: i32::try_from(found.partitions().len()).unwrap_or(i32::MAX),
            replication_factor: found
                .partitions()
                .first()
                .map_or(0, |p| i32::try_from(p.replicas().len()).unwrap_or(i32::MAX)),
        })),
        Some(RDKafkaErrorCode::UnknownTopicOrPartition) => Ok(None),
        Some(code) => Err(AdminError::Describe {
            topic: topic.to_owned(),
            code,
        }),
    }
}

/// One config entry of a topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicConfigEntry {
    pub value: Option<String>,
    /// Set on the topic itself (not inherited from the broker or the default): the entries a
    /// whole-config alter must resend to keep them.
    pub set_on_topic: bool,
}

/// Every config entry of `topic`, by name.
pub async fn topic_configs(
    admin: &AdminClient<DefaultClientContext>,
    topic: &str,
) -> Result<BTreeMap<String, TopicConfigEntry>, AdminError> {
    let results = admin
        .describe_configs([&ResourceSpecifier::Topic(topic)], &options())
        .await?;
    match results.into_iter().next() {
        Some(Ok(resource)) => Ok(resource
            .entries
            .into_iter()
            .map(|e| {
                let entry = TopicConfigEntry {
                    value: e.value,
                    set_on_topic: e.source == ConfigSource::DynamicTopic,
                };
                (e.name, entry)
            })
            .collect()),
        Some(Err(code)) => Err(AdminError::Describe {
            topic: topic.to_owned(),
            code,
        }),
        None => Err(AdminError::Describe {
            topic: topic.to_owned(),
            code: RDKafkaErrorCode::UnknownTopicOrPartition,
        }),
    }
}

/// Replaces the topic-level configs of `topic` with `configs` (Kafka's whole-config
/// AlterConfigs: entries not listed return to the broker default, so pass every entry that
/// should stay set).
pub async fn alter_topic_configs(
    admin: &AdminClient<DefaultClientContext>,
    topic: &str,
    configs: &BTreeMap<String, String>,
) -> Result<(), AdminError> {
    let alter = configs.iter().fold(
        AlterConfig::new(ResourceSpecifier::Topic(topic)),
        |alter, (key, value)| alter.set(key, value),
    );
    for result in admin.alter_configs([&alter], &options()).await? {
        if let Err((_, code)) = result {
            return Err(AdminError::Alter {
                topic: topic.to_owned(),
                code,
            });
        }
    }
    Ok(())
}

/// Grows `topic` to `partitions` partitions (Kafka cannot shrink them).
pub async fn add_partitions(
    admin: &AdminClient<DefaultClientContext>,
    topic: &str,
    partitions: usize,
) -> Result<(), AdminError> {
    let request = NewPartitions::new(topic, partitions);
    for result in admin.create_partitions([&request], &options()).await? {
        if let Err((topic, code)) = result {
            return Err(AdminError::AddPartitions { topic, code });
        }
    }
    Ok(())
}

/// What creating one topic did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CreateOutcome {
    Created,
    AlreadyExisted,
    Failed(RDKafkaErrorCode),
}

/// Creates every topic of `specs` and reports each outcome, without waiting for leaders
/// (unlike [`create_missing`]); a replication factor of -1 means the broker default.
pub async fn create_topics(
    admin: &AdminClient<DefaultClientContext>,
    specs: &[TopicSpec],
) -> Result<Vec<(String, CreateOutcome)>, AdminError> {
    let new_topics: Vec<NewTopic<'_>> = specs
        .iter()
        .map(|s| {
            s.configs.iter().fold(
                NewTopic::new(&s.name, s.partitions, TopicReplication::Fixed(s.replication)),
                |t, (k, v)| t.set(k, v),
            )
        })
        .collect();
    Ok(admin
        .create_topics(new_topics.iter(), &options())
        .await?
        .into_iter()
        .map(|result| match result {
            Ok(name) => (name, CreateOutcome::Created),
            Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => (name, CreateOutcome::AlreadyExisted),
            Err((name, code)) => (name, CreateOutcome::Failed(code)),
        })
        .collect())
}

/// Deletes `topics`; topics that do not exist are not an error. Returns the names deleted.
pub async fn delete_topics(
    admin: &AdminClient<DefaultClientContext>,
    topics: &[&str],
) -> Result<Vec<String>, AdminError> {
    let mut deleted = Vec::new();
    for result in admin.delete_topics(topics, &options()).await? {
        match result {
            Ok(name) => deleted.push(name),
            Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
            Err((topic, code)) => return Err(AdminError::Delete { topic, code }),
        }
    }
    Ok(deleted)
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
