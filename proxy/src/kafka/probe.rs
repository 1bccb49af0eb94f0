//! Reachability check of the Kafka cluster, used by readiness.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

/// Kafka could not be reached.
#[derive(Debug, thiserror::Error)]
#[error("Kafka at {bootstrap} is not reachable: {source}")]
pub struct Unreachable {
    pub bootstrap: String,
    #[source]
    pub source: rdkafka::error::KafkaError,
}

/// What a metadata request saw of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterView {
    pub brokers: usize,
    pub topics: usize,
}

/// A Kafka client kept for repeated reachability checks (one connection, not one per check).
pub struct Prober {
    bootstrap: String,
    consumer: BaseConsumer,
}

impl Prober {
    pub fn new(bootstrap: &str, properties: &[(String, String)]) -> Result<Self, Unreachable> {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", bootstrap);
        for (key, value) in properties {
            config.set(key, value);
        }
        let consumer = config.create().map_err(|source| Unreachable {
            bootstrap: bootstrap.to_owned(),
            source,
        })?;
        Ok(Self {
            bootstrap: bootstrap.to_owned(),
            consumer,
        })
    }

    /// Asks the cluster for its metadata; blocking, so call it from `spawn_blocking`.
    pub fn check(&self, timeout: Duration) -> Result<ClusterView, Unreachable> {
        let metadata = self
            .consumer
            .fetch_metadata(None, timeout)
            .map_err(|source| Unreachable {
                bootstrap: self.bootstrap.clone(),
                source,
            })?;
        Ok(ClusterView {
            brokers: metadata.brokers().len(),
            topics: metadata.topics().len(),
        })
    }
}
