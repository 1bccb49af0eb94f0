//! The process-wide Kafka readers: one fan-out consumer per messages topic (never one per
//! MQTT client) and the reader that materialises the retained topic. Neither joins a
//! consumer group: each assigns every partition itself, so every pod sees every record.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message as _};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::admin::Readiness;
use crate::broker::message::{Message, now_ms};
use crate::kafka::headers::raw_headers;
use crate::kafka::health::{ClientHealth, Policy};
use crate::kafka::record::{MAX_FIELD_LEN, RecordError, message_from_record};
use crate::kafka::sessions::SessionStore;
use crate::log_limit::{LogLimit, Verdict};
use crate::metrics::Metrics;

/// Where records go once decoded; the broker implements it.
pub trait RecordSink: Send + Sync + 'static {
    /// The fan-out of `kafka_topic` reads each partition from these offsets on.
    fn fanout_started(&self, kafka_topic: &str, ends: &[(i32, i64)]);
    /// A record of messages topic `kafka_topic` at `partition` / `offset`, live, for MQTT
    /// topic `topic` (its key). `decode` makes its message; it is called only if a
    /// subscription here matches `topic`, so records nobody here wants cost no decoding.
    /// `None` from it (an undecodable record, counted by the reader) delivers nothing.
    fn deliver(
        &self,
        kafka_topic: &str,
        partition: i32,
        offset: i64,
        topic: &str,
        decode: &mut dyn FnMut() -> Option<Message>,
    );
    /// A retained-topic record: `Some` sets the retained message of `topic`, `None` deletes it.
    fn retained(&self, topic: &str, message: Option<Message>);
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
        // librdkafka prefetches up to 64 MiB per consumer by default; the fan-out keeps up
        // with live traffic, so 16 MiB is room enough and bounds what a burst leaves behind.
        .set("queued.max.messages.kbytes", "16384")
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

pub(crate) fn decode(record: &BorrowedMessage<'_>) -> Result<Message, RecordError> {
    let timestamp = record.timestamp().to_millis().unwrap_or_else(now_ms);
    message_from_record(record.key(), record.payload(), timestamp, raw_headers(record))
}

/// Lines about skipped records a reader may write per interval; every skip is counted.
const SKIP_LINES: u32 = 10;
const SKIP_LINES_EVERY: Duration = Duration::from_secs(10);

/// How a reader reports records it cannot use: counted by reason
/// (`mqtt_kafka_records_skipped_total{reason}`) and logged with where they are, so that a
/// person can find them with a console consumer; a flood of them writes a bounded number
/// of lines.
pub(crate) struct Skips {
    topic: String,
    metrics: Arc<Metrics>,
    lines: LogLimit,
}

impl Skips {
    pub(crate) fn new(topic: &str, metrics: &Arc<Metrics>) -> Self {
        Self {
            topic: topic.to_owned(),
            metrics: Arc::clone(metrics),
            lines: LogLimit::new(SKIP_LINES_EVERY, SKIP_LINES),
        }
    }

    fn skip(&self, partition: i32, offset: i64, reason: &'static str, error: &dyn std::fmt::Display) {
        self.metrics.records_skipped.with_label_values(&[reason]).inc();
        if let Verdict::Write { left_out } = self.lines.check() {
            let topic = &self.topic;
            tracing::warn!(%topic, partition, offset, reason, %error, left_out, "Kafka record skipped");
        }
    }

    pub(crate) fn record_error(&self, record: &BorrowedMessage<'_>, error: &RecordError) {
        self.skip(record.partition(), record.offset(), error.reason(), error);
    }
}

/// A consumer of one topic with every partition assigned by us (never committed), which
/// remembers where it is in each partition so that it can be replaced by a new consumer
/// that starts there, when the old one stops working (see [`super::health`]).
struct FollowedConsumer {
    /// The name it reports under in readiness and metrics.
    name: String,
    topic: String,
    config: ClientConfig,
    consumer: Arc<StreamConsumer>,
    /// Where the next record of each assigned partition is to be read.
    next: BTreeMap<i32, Offset>,
    health: ClientHealth,
    /// Counts this reader in a gauge while it exists (the fan-out's
    /// `mqtt_kafka_fanout_consumers`), so the gauge says what runs, not what started.
    live: Option<LiveGauge>,
}

/// +1 on a gauge while alive.
struct LiveGauge(prometheus::IntGauge);

impl LiveGauge {
    fn new(gauge: &prometheus::IntGauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for LiveGauge {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl FollowedConsumer {
    /// Creates the consumer of `topic` with every partition assigned at the offset `start`
    /// picks from the partition's high watermark; also returns the watermarks.
    async fn start(
        name: String,
        bootstrap: &str,
        properties: &[(String, String)],
        group: &str,
        topic: &str,
        start: impl Fn(i64) -> Offset,
    ) -> Result<(Self, Vec<(i32, i64)>), ReaderError> {
        let config = consumer_config(bootstrap, properties, group);
        let consumer: StreamConsumer = config.create().map_err(|source| ReaderError::Kafka {
            topic: topic.to_owned(),
            source,
        })?;
        let name_ = topic.to_owned();
        let (consumer, ends) = tokio::task::spawn_blocking(move || {
            let ends = high_watermarks(&consumer, &name_, Duration::from_secs(10));
            (consumer, ends)
        })
        .await
        .map_err(|_| ReaderError::MissingTopic(topic.to_owned()))?;
        let ends = ends?;
        let next = ends.iter().map(|(p, end)| (*p, start(*end))).collect();
        let reader = Self {
            name,
            topic: topic.to_owned(),
            config,
            consumer: Arc::new(consumer),
            next,
            health: ClientHealth::new(Instant::now()),
            live: None,
        };
        reader.assign(&reader.consumer).map_err(|source| ReaderError::Kafka {
            topic: topic.to_owned(),
            source,
        })?;
        Ok((reader, ends))
    }

    fn assign(&self, consumer: &StreamConsumer) -> Result<(), KafkaError> {
        let mut assignment = TopicPartitionList::new();
        for (partition, offset) in &self.next {
            assignment.add_partition_offset(&self.topic, *partition, *offset)?;
        }
        consumer.assign(&assignment)
    }

    /// A record was handed on: a replacement starts after it.
    fn seen(&mut self, partition: i32, offset: i64) {
        self.next.insert(partition, Offset::Offset(offset + 1));
        self.health.request_succeeded();
    }

    fn failed(&mut self, error: &KafkaError) {
        self.health.request_failed(Instant::now(), &error.to_string());
    }

    /// Asks Kafka for the topic's partitions through this consumer (a failure counts
    /// against it), reports its health, replaces it when the policy says so; returns the
    /// partition ids when the request worked.
    async fn check(&mut self, policy: &Policy, readiness: &Readiness, metrics: &Metrics) -> Option<Vec<i32>> {
        let (c, t) = (Arc::clone(&self.consumer), self.topic.clone());
        let partitions = match tokio::task::spawn_blocking(move || partition_ids(&*c, &t)).await {
            Ok(Ok(ids)) if !ids.is_empty() => {
                self.health.request_succeeded();
                Some(ids)
            }
            Ok(Ok(_)) => {
                self.health
                    .request_failed(Instant::now(), "the topic has no partitions");
                None
            }
            Ok(Err(error)) => {
                self.failed(&error);
                None
            }
            Err(_) => None,
        };
        let now = Instant::now();
        readiness.report(&self.name, self.health.problem(now));
        if self.health.should_replace(now, policy) {
            self.replace(metrics);
        }
        partitions
    }

    /// Continues with a new consumer where this one stopped.
    fn replace(&mut self, metrics: &Metrics) {
        let fresh: StreamConsumer = match self.config.create() {
            Ok(fresh) => fresh,
            Err(error) => {
                tracing::error!(reader = %self.name, %error, "a new Kafka consumer could not be created; keeping the old one");
                return;
            }
        };
        if let Err(error) = self.assign(&fresh) {
            tracing::error!(reader = %self.name, %error, "a new Kafka consumer could not be assigned; keeping the old one");
            return;
        }
        let problem = self.health.problem(Instant::now());
        let old = std::mem::replace(&mut self.consumer, Arc::new(fresh));
        self.health = self.health.for_replacement(Instant::now());
        metrics.kafka_client_replacements.with_label_values(&[&self.name]).inc();
        tracing::warn!(reader = %self.name, problem = problem.as_deref().unwrap_or("-"), "Kafka consumer replaced by a new one");
        // Dropping joins librdkafka's threads.
        tokio::task::spawn_blocking(move || drop(old));
    }

    /// Adds partitions created since the last look, read from their beginning.
    fn follow_new_partitions(&mut self, current: Vec<i32>) {
        let added: Vec<i32> = current.into_iter().filter(|p| !self.next.contains_key(p)).collect();
        if added.is_empty() {
            return;
        }
        let mut assignment = TopicPartitionList::new();
        for partition in &added {
            if let Err(error) = assignment.add_partition_offset(&self.topic, *partition, Offset::Beginning) {
                tracing::warn!(topic = %self.topic, partition, %error, "new partition not assignable");
            }
        }
        match self.consumer.incremental_assign(&assignment) {
            Ok(()) => {
                tracing::info!(topic = %self.topic, ?added, "reading partitions added to the topic");
                self.next.extend(added.into_iter().map(|p| (p, Offset::Beginning)));
            }
            Err(error) => tracing::warn!(topic = %self.topic, %error, "new partitions not assigned; retrying"),
        }
    }
}

/// The partition ids of `topic` (blocking: call from `spawn_blocking`).
fn partition_ids<C: Consumer>(consumer: &C, topic: &str) -> Result<Vec<i32>, rdkafka::error::KafkaError> {
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(3))?;
    Ok(metadata
        .topics()
        .first()
        .filter(|t| t.error().is_none())
        .map(|t| t.partitions().iter().map(|p| p.id()).collect())
        .unwrap_or_default())
}

/// How the readers look after themselves.
#[derive(Clone)]
pub struct Supervision {
    /// How often each reader checks its client (and looks for new partitions).
    pub every: Duration,
    pub policy: Policy,
    pub readiness: Arc<Readiness>,
    pub metrics: Arc<Metrics>,
}

/// Starts the fan-out reader of messages topic `topic`: positions are fixed at the current
/// end of every partition before this returns, so anything produced afterwards is seen.
/// Partitions added later (the operator grows messages topics) are read from their
/// beginning, so nothing written to them is missed; a consumer that stops working is
/// replaced by one that continues where it stopped.
pub async fn start_fanout(
    bootstrap: &str,
    properties: &[(String, String)],
    instance: &str,
    topic: &str,
    sink: Arc<dyn RecordSink>,
    supervision: Supervision,
) -> Result<tokio::task::JoinHandle<()>, ReaderError> {
    let group = format!("mqtt-kafka-fanout-{instance}");
    let name = format!("fan-out {topic}");
    let (mut reader, ends) =
        FollowedConsumer::start(name, bootstrap, properties, &group, topic, Offset::Offset).await?;
    reader.live = Some(LiveGauge::new(&supervision.metrics.fanout_consumers));
    sink.fanout_started(topic, &ends);
    let skips = Skips::new(topic, &supervision.metrics);
    let topic = topic.to_owned();
    Ok(tokio::spawn(async move {
        let every = supervision.every;
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            let consumer = Arc::clone(&reader.consumer);
            tokio::select! {
                received = consumer.recv() => match received {
                    Ok(record) => {
                        let mut decoded = || match decode(&record) {
                            Ok(message) => Some(message),
                            Err(error) => {
                                skips.record_error(&record, &error);
                                None
                            }
                        };
                        // A key that is no UTF-8 text is no topic: decoding says why.
                        match record.key().map(std::str::from_utf8) {
                            Some(Ok(key)) => sink.deliver(&topic, record.partition(), record.offset(), key, &mut decoded),
                            _ => {
                                decoded();
                            }
                        }
                        reader.seen(record.partition(), record.offset());
                    }
                    Err(error) => {
                        tracing::warn!(%topic, %error, "fan-out consumer error; retrying");
                        reader.failed(&error);
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                },
                _ = tick.tick() => {
                    let s = &supervision;
                    if let Some(current) = reader.check(&s.policy, &s.readiness, &s.metrics).await {
                        reader.follow_new_partitions(current);
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
    supervision: Supervision,
) -> Result<tokio::task::JoinHandle<()>, ReaderError> {
    let group = format!("mqtt-kafka-retained-{instance}");
    let name = format!("retained {topic}");
    let (mut reader, ends) =
        FollowedConsumer::start(name, bootstrap, properties, &group, topic, |_| Offset::Beginning).await?;
    // Partitions still to be read up to their start-up end. Compaction leaves gaps, so
    // progress is the consumer's position, not the offset of the last record seen.
    let mut pending: Vec<(i32, i64)> = ends.into_iter().filter(|(_, end)| *end > 0).collect();
    let skips = Skips::new(topic, &supervision.metrics);
    let topic = topic.to_owned();
    Ok(tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        let mut last_check = tokio::time::Instant::now();
        loop {
            if !pending.is_empty() {
                if let Ok(positions) = reader.consumer.position() {
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
            let consumer = Arc::clone(&reader.consumer);
            tokio::select! {
                received = consumer.recv() => match received {
                    Ok(record) => {
                        match (record.key().map(std::str::from_utf8), record.payload()) {
                            (Some(Ok(key)), None) => sink.retained(key, None),
                            _ => match decode(&record) {
                                Ok(message) => {
                                    let key = message.topic.clone();
                                    sink.retained(&key, Some(message));
                                }
                                Err(error) => skips.record_error(&record, &error),
                            },
                        }
                        reader.seen(record.partition(), record.offset());
                    }
                    Err(error) => {
                        tracing::warn!(%topic, %error, "retained reader error; retrying");
                        reader.failed(&error);
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                },
                _ = tick.tick() => {
                    if last_check.elapsed() >= supervision.every {
                        last_check = tokio::time::Instant::now();
                        let s = &supervision;
                        reader.check(&s.policy, &s.readiness, &s.metrics).await;
                    }
                }
            }
        }
    }))
}

/// Starts the reader of the sessions topic: it replays every partition from the beginning
/// into `store`, marks the store loaded once it reached the end each partition had at
/// start-up, and keeps applying what any process writes.
pub async fn start_sessions_reader(
    bootstrap: &str,
    properties: &[(String, String)],
    instance: &str,
    store: Arc<SessionStore>,
    supervision: Supervision,
) -> Result<tokio::task::JoinHandle<()>, ReaderError> {
    let topic = store.topic().to_owned();
    let group = format!("mqtt-kafka-sessions-{instance}");
    let name = format!("sessions {topic}");
    let (mut reader, ends) =
        FollowedConsumer::start(name, bootstrap, properties, &group, &topic, |_| Offset::Beginning).await?;
    let ends: Vec<(i32, i64)> = ends;
    let skips = Skips::new(&topic, &supervision.metrics);
    let loading = "sessions";
    supervision
        .readiness
        .report(loading, Some("still loading the sessions topic".into()));
    Ok(tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut last_check = tokio::time::Instant::now();
        loop {
            if !store.is_loaded() && ends.iter().all(|(p, end)| store.read_up_to(*p) >= *end) {
                tracing::info!(%topic, sessions = store.len(), "sessions loaded");
                store.set_loaded();
                supervision.readiness.report(loading, None);
            }
            let consumer = Arc::clone(&reader.consumer);
            tokio::select! {
                received = consumer.recv() => match received {
                    Ok(record) => {
                        let (partition, offset) = (record.partition(), record.offset());
                        match record.key().map(std::str::from_utf8) {
                            Some(Ok(client_id)) if client_id.len() <= MAX_FIELD_LEN => {
                                if let Err(error) = store.apply(client_id, record.payload()) {
                                    skips.skip(partition, offset, "bad_session", &error);
                                }
                            }
                            Some(Ok(client_id)) => skips.skip(partition, offset, "key_too_long", &RecordError::KeyTooLong(client_id.len())),
                            Some(Err(_)) => skips.skip(partition, offset, "bad_key", &RecordError::KeyNotUtf8),
                            None => skips.skip(partition, offset, "null_key", &RecordError::NullKey),
                        }
                        reader.seen(record.partition(), record.offset());
                        store.read_to(record.partition(), record.offset() + 1);
                    }
                    Err(error) => {
                        tracing::warn!(%topic, %error, "sessions reader error; retrying");
                        reader.failed(&error);
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                },
                _ = tick.tick() => {
                    // Compaction leaves gaps: the consumer's position is progress too.
                    if let Ok(positions) = reader.consumer.position() {
                        for element in positions.elements_for_topic(&topic) {
                            if let Offset::Offset(at) = element.offset() {
                                store.read_to(element.partition(), at);
                            }
                        }
                    }
                    if last_check.elapsed() >= supervision.every {
                        last_check = tokio::time::Instant::now();
                        let s = &supervision;
                        reader.check(&s.policy, &s.readiness, &s.metrics).await;
                    }
                }
            }
        }
    }))
}
