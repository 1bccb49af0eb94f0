//! The one Kafka producer of a proxy process: idempotent, `acks=all`, so a PUBACK / PUBREC
//! sent after [`Publisher::publish`] returns means the record is durable in Kafka.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};

use crate::broker::message::Message;
use crate::kafka::partitioner::partition_for;
use crate::kafka::record::headers_of;

/// A record could not be written.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("Kafka rejected or timed out the record for topic {topic}: {source}")]
    Kafka {
        topic: String,
        #[source]
        source: KafkaError,
    },
    #[error("Kafka topic {0} does not exist or has no partitions")]
    UnknownTopic(String),
}

/// Writes messages (and retained messages) to Kafka.
pub struct Publisher {
    producer: FutureProducer,
    retained_topic: String,
    partitions: RwLock<HashMap<String, i32>>,
    delivery_timeout: Duration,
}

impl Publisher {
    /// `properties` are extra librdkafka settings (security, SASL, ...) from the config.
    pub fn new(
        bootstrap: &str,
        properties: &[(String, String)],
        retained_topic: &str,
        delivery_timeout: Duration,
    ) -> Result<Self, KafkaError> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", bootstrap)
            .set("acks", "all")
            .set("enable.idempotence", "true")
            // Java-compatible key partitioning for records whose partition we do not set.
            .set("partitioner", "murmur2_random")
            // Latency first: a PUBACK waits for this round trip. librdkafka still batches
            // what queues up while requests are in flight; `kafka.properties` may raise it.
            .set("linger.ms", "0")
            .set("message.timeout.ms", delivery_timeout.as_millis().to_string());
        for (key, value) in properties {
            config.set(key, value);
        }
        Ok(Self {
            producer: config.create()?,
            retained_topic: retained_topic.to_owned(),
            partitions: RwLock::new(HashMap::new()),
            delivery_timeout,
        })
    }

    /// Learns the partition count of each topic (once, at start-up; again by `refresh`), so
    /// that `enqueue` never waits for metadata.
    pub async fn load_partitions(&self, topics: &[String]) -> Result<(), PublishError> {
        for topic in topics {
            let client = self.producer.clone();
            let name = topic.clone();
            let timeout = self.delivery_timeout;
            let fetched = tokio::task::spawn_blocking(move || {
                client.client().fetch_metadata(Some(&name), timeout).map(|m| {
                    m.topics()
                        .first()
                        .filter(|t| t.error().is_none())
                        .map(|t| t.partitions().len())
                        .unwrap_or(0)
                })
            })
            .await
            .map_err(|_| PublishError::UnknownTopic(topic.clone()))?
            .map_err(|source| PublishError::Kafka {
                topic: topic.clone(),
                source,
            })?;
            let count = i32::try_from(fetched).unwrap_or(0);
            if count == 0 {
                return Err(PublishError::UnknownTopic(topic.clone()));
            }
            self.partitions
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert(topic.clone(), count);
        }
        Ok(())
    }

    fn partition_count(&self, topic: &str) -> Result<i32, PublishError> {
        self.partitions
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(topic)
            .copied()
            .ok_or_else(|| PublishError::UnknownTopic(topic.to_owned()))
    }

    /// Hands `message` to the producer now, so records keep the order of the calls, for
    /// `kafka_topic` on the partition of `partition_key` (the `clients` identity, else the
    /// MQTT topic) and, when retained, for the retained topic too (an empty payload there
    /// is a tombstone). The returned future resolves once Kafka acknowledged every record.
    pub fn enqueue(
        &self,
        kafka_topic: &str,
        message: &Message,
        partition_key: Option<&[u8]>,
    ) -> Result<impl Future<Output = Result<(), PublishError>> + Send + 'static + use<>, PublishError> {
        let partitions = self.partition_count(kafka_topic)?;
        let partition = partition_for(partition_key.unwrap_or(message.topic.as_bytes()), partitions);
        let headers = owned_headers(message);
        let record = FutureRecord::to(kafka_topic)
            .key(message.topic.as_str())
            .payload(message.payload.as_ref())
            .timestamp(message.timestamp_ms)
            .partition(partition)
            .headers(headers.clone());
        let main = self
            .producer
            .send_result(record)
            .map_err(|(e, _)| kafka_error(kafka_topic, e))?;
        let retained = if message.retain {
            let mut record = FutureRecord::<str, [u8]>::to(&self.retained_topic)
                .key(message.topic.as_str())
                .timestamp(message.timestamp_ms)
                .headers(headers);
            if !message.payload.is_empty() {
                record = record.payload(message.payload.as_ref());
            }
            Some(
                self.producer
                    .send_result(record)
                    .map_err(|(e, _)| kafka_error(&self.retained_topic, e))?,
            )
        } else {
            None
        };
        let main_topic = kafka_topic.to_owned();
        let retained_topic = self.retained_topic.clone();
        Ok(async move {
            delivered(main, &main_topic).await?;
            if let Some(retained) = retained {
                delivered(retained, &retained_topic).await?;
            }
            Ok(())
        })
    }

    /// Waits for queued records to be delivered (at shutdown).
    pub fn flush(&self, timeout: Duration) {
        if let Err(e) = self.producer.flush(timeout) {
            tracing::warn!(error = %e, "records still queued at shutdown");
        }
    }
}

fn kafka_error(topic: &str, source: KafkaError) -> PublishError {
    PublishError::Kafka {
        topic: topic.to_owned(),
        source,
    }
}

async fn delivered(future: DeliveryFuture, topic: &str) -> Result<(), PublishError> {
    match future.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((source, _))) => Err(PublishError::Kafka {
            topic: topic.to_owned(),
            source,
        }),
        Err(_) => Err(PublishError::Kafka {
            topic: topic.to_owned(),
            source: KafkaError::Canceled,
        }),
    }
}

fn owned_headers(message: &Message) -> OwnedHeaders {
    headers_of(message)
        .iter()
        .fold(OwnedHeaders::new(), |headers, (key, value)| {
            headers.insert(Header {
                key,
                value: Some(value.as_ref()),
            })
        })
}
