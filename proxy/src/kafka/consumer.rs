//! The process-wide Kafka readers: one fan-out consumer per messages topic (never one per
//! MQTT client) and the reader that materialises the retained topic. Neither joins a
//! consumer group: each assigns every partition itself, so every pod sees every record.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers, Message as _};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::broker::message::{Message, now_ms};
use crate::kafka::record::{RecordError, message_from_record};

/// Where records go once decoded; the broker implements it.
pub trait RecordSink: Send + Sync + 'static {
    /// A record of messages topic `kafka_topic`, live.
    fn deliver(&self, kafka_topic: &str, message: Message);
    /// A retained-topic record: `Some` sets the retained message of `topic`, `None` deletes it.
    fn retained(&self, topic: &str, message: Option<Message>);
    /// A record that cannot be delivered (null key, bad key).
    fn skipped(&self, kafka_topic: &str, error: RecordError);
}

/// Why a reader could not start.
#[derive(Debug, thiserror::Error)]
pub enum ReaderError {
    #[error("Kafka error on topic {topic}: {source}")]
    Kafka {
        topic: String,
        #[source]
        source: KafkaError,
    },
    #[error("Kafka topic {0} does not exist (create it, or run the proxy with --create-topics)")]
    MissingTopic(String),
}

fn consumer_config(bootstrap: &str, properties: &[(String, String)], group: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        // Required by librdkafka even though we only assign and never commit.
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("fetch.wait.max.ms", "10")
        .set("enable.partition.eof", "false");
    for (key, value) in properties {
        config.set(key, value);
    }
    config
}

/// Each partition of `topic` with its high watermark (the offset the next record gets).
/// A just-created topic answers NotLeaderForPartition and the like for a moment, so
/// failures are retried for about ten seconds (blocking: call from `spawn_blocking`).
fn high_watermarks<C: Consumer>(consumer: &C, topic: &str, timeout: Duration) -> Result<Vec<(i32, i64)>, ReaderError> {
    let mut attempt = 0;
    loop {
        match try_high_watermarks(consumer, topic, timeout) {
            Err(ReaderError::Kafka { source, .. }) if attempt < 50 => {
                tracing::debug!(%topic, error = %source, "watermarks not available yet");
                attempt += 1;
                std::thread::sleep(Duration::from_millis(200));
            }
            result => return result,
        }
    }
}

fn try_high_watermarks<C: Consumer>(
    consumer: &C,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<(i32, i64)>, ReaderError> {
    let kafka = |source| ReaderError::Kafka {
        topic: topic.to_owned(),
        source,
    };
    let metadata = consumer.fetch_metadata(Some(topic), timeout).map_err(kafka)?;
    let partitions: Vec<i32> = metadata
        .topics()
        .first()
        .filter(|t| t.error().is_none())
        .map(|t| t.partitions().iter().map(|p| p.id()).collect())
        .unwrap_or_default();
    if partitions.is_empty() {
        return Err(ReaderError::MissingTopic(topic.to_owned()));
    }
    partitions
        .into_iter()
        .map(|p| {
            consumer
                .fetch_watermarks(topic, p, timeout)
                .map(|(_, high)| (p, high))
                .map_err(kafka)
        })
        .collect()
}

fn decode(record: &BorrowedMessage<'_>) -> Result<Message, RecordError> {
    let headers = record.headers();
    let pairs = headers.iter().flat_map(|h| h.iter()).map(|h| (h.key, h.value));
    let timestamp = record.timestamp().to_millis().unwrap_or_else(now_ms);
    message_from_record(record.key(), record.payload(), timestamp, pairs)
}

/// A consumer of `topic` in group `group` (never committed), with every partition assigned
/// at the offset `start` picks from the partition's high watermark; returns the watermarks.
async fn assigned_consumer(
    bootstrap: &str,
    properties: &[(String, String)],
    group: &str,
    topic: &str,
    start: impl Fn(i64) -> Offset,
) -> Result<(StreamConsumer, Vec<(i32, i64)>), ReaderError> {
    let kafka = |source| ReaderError::Kafka {
        topic: topic.to_owned(),
        source,
    };
    let consumer: StreamConsumer = consumer_config(bootstrap, properties, group).create().map_err(kafka)?;
    let name = topic.to_owned();
    let (consumer, ends) = tokio::task::spawn_blocking(move || {
        let ends = high_watermarks(&consumer, &name, Duration::from_secs(10));
        (consumer, ends)
    })
    .await
    .map_err(|_| ReaderError::MissingTopic(topic.to_owned()))?;
    let ends = ends?;
    let mut assignment = TopicPartitionList::new();
    for (partition, end) in &ends {
        assignment
            .add_partition_offset(topic, *partition, start(*end))
            .map_err(kafka)?;
    }
    consumer.assign(&assignment).map_err(kafka)?;
    Ok((consumer, ends))
}

/// The partition ids of `topic` (blocking: call from `spawn_blocking`).
fn partition_ids<C: Consumer>(consumer: &C, topic: &str) -> Result<Vec<i32>, rdkafka::error::KafkaError> {
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    Ok(metadata
        .topics()
        .first()
        .map(|t| t.partitions().iter().map(|p| p.id()).collect())
        .unwrap_or_default())
}

/// Starts the fan-out reader of messages topic `topic`: positions are fixed at the current
/// end of every partition before this returns, so anything produced afterwards is seen.
/// Every `refresh` it looks for partitions added since (the operator grows messages topics)
/// and reads them from their beginning, so nothing written to them is missed.
pub async fn start_fanout(
    bootstrap: &str,
    properties: &[(String, String)],
    instance: &str,
    topic: &str,
    sink: Arc<dyn RecordSink>,
    refresh: Duration,
) -> Result<tokio::task::JoinHandle<()>, ReaderError> {
    let group = format!("mqtt-kafka-fanout-{instance}");
    let (consumer, ends) = assigned_consumer(bootstrap, properties, &group, topic, Offset::Offset).await?;
    let consumer = Arc::new(consumer);
    let mut known: Vec<i32> = ends.iter().map(|(p, _)| *p).collect();
    let topic = topic.to_owned();
    Ok(tokio::spawn(async move {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + refresh, refresh);
        loop {
            tokio::select! {
                received = consumer.recv() => match received {
                    Ok(record) => match decode(&record) {
                        Ok(message) => sink.deliver(&topic, message),
                        Err(error) => sink.skipped(&topic, error),
                    },
                    Err(error) => {
                        tracing::warn!(%topic, %error, "fan-out consumer error; retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                },
                _ = tick.tick() => {
                    let (c, t) = (Arc::clone(&consumer), topic.clone());
                    let Ok(Ok(current)) = tokio::task::spawn_blocking(move || partition_ids(&*c, &t)).await else {
                        continue;
                    };
                    let added: Vec<i32> = current.into_iter().filter(|p| !known.contains(p)).collect();
                    if added.is_empty() {
                        continue;
                    }
                    let mut assignment = TopicPartitionList::new();
                    for partition in &added {
                        if let Err(error) = assignment.add_partition_offset(&topic, *partition, Offset::Beginning) {
                            tracing::warn!(%topic, partition, %error, "new partition not assignable");
                        }
                    }
                    match consumer.incremental_assign(&assignment) {
                        Ok(()) => {
                            tracing::info!(%topic, ?added, "reading partitions added to the topic");
                            known.extend(added);
                        }
                        Err(error) => tracing::warn!(%topic, %error, "new partitions not assigned; retrying"),
                    }
                }
            }
        }
    }))
}

/// Starts the reader of the retained topic: it replays the topic from the beginning into
/// `sink`, sets `loaded` once it has reached the end every partition had at start-up, and
/// keeps applying later records (other pods' retained messages).
pub async fn start_retained_reader(
    bootstrap: &str,
    properties: &[(String, String)],
    instance: &str,
    topic: &str,
    sink: Arc<dyn RecordSink>,
    loaded: Arc<AtomicBool>,
) -> Result<tokio::task::JoinHandle<()>, ReaderError> {
    let group = format!("mqtt-kafka-retained-{instance}");
    let (consumer, ends) = assigned_consumer(bootstrap, properties, &group, topic, |_| Offset::Beginning).await?;
    // Partitions still to be read up to their start-up end. Compaction leaves gaps, so
    // progress is the consumer's position, not the offset of the last record seen.
    let mut pending: Vec<(i32, i64)> = ends.into_iter().filter(|(_, end)| *end > 0).collect();
    let topic = topic.to_owned();
    Ok(tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            if !pending.is_empty() {
                if let Ok(positions) = consumer.position() {
                    pending.retain(|(p, end)| {
                        let at = positions.find_partition(&topic, *p).and_then(|e| match e.offset() {
                            Offset::Offset(o) => Some(o),
                            _ => None,
                        });
                        at.is_none_or(|o| o < *end)
                    });
                }
                if pending.is_empty() {
                    tracing::info!(%topic, "retained messages loaded");
                }
            }
            if pending.is_empty() && !loaded.load(Ordering::Acquire) {
                loaded.store(true, Ordering::Release);
            }
            tokio::select! {
                received = consumer.recv() => match received {
                    Ok(record) => match (record.key().map(std::str::from_utf8), record.payload()) {
                        (Some(Ok(key)), None) => sink.retained(key, None),
                        _ => match decode(&record) {
                            Ok(message) => {
                                let key = message.topic.clone();
                                sink.retained(&key, Some(message));
                            }
                            Err(error) => sink.skipped(&topic, error),
                        },
                    },
                    Err(error) => {
                        tracing::warn!(%topic, %error, "retained reader error; retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                },
                _ = tick.tick() => {}
            }
        }
    }))
}
