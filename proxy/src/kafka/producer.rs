//! The one Kafka producer of a proxy process: idempotent, `acks=all`, so a PUBACK / PUBREC
//! sent after [`Publisher::publish`] returns means the record is durable in Kafka.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use prometheus::Histogram;
use rdkafka::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};

use tokio::task::JoinHandle;

use crate::admin::Readiness;
use crate::broker::message::Message;
use crate::kafka::health::{ClientHealth, Policy, is_connectivity_error};
use crate::kafka::partitioner::partition_for;
use crate::kafka::qos0::{self, Qos0Budget};
use crate::kafka::record::headers_of;
use crate::kafka::security::{SecurityWatch, WatchedContext};
use crate::metrics::Metrics;

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
    #[error("QoS 0 PUBLISH dropped: QoS 0 holds its share of the Kafka producer queue")]
    Qos0Backlog,
}

/// The librdkafka producer, whose connection refusals reach a [`SecurityWatch`].
type WatchedProducer = FutureProducer<WatchedContext>;

/// The producer in use and what it has seen; replaced together.
struct Current {
    producer: Arc<WatchedProducer>,
    /// Counts replacements, so late results of a replaced producer are not held against
    /// its successor.
    generation: u64,
    health: ClientHealth,
}

/// Writes messages (and retained messages) to Kafka. The librdkafka producer inside is
/// watched ([`Publisher::supervise`]) and replaced when it stops working.
pub struct Publisher {
    config: ClientConfig,
    current: Arc<Mutex<Current>>,
    retained_topic: String,
    partitions: RwLock<HashMap<String, i32>>,
    delivery_timeout: Duration,
    /// QoS 0 records in the producer queue, bounded to their share of it.
    qos0: Arc<Qos0Budget>,
    /// The producer's own settings, for the QoS 0 share.
    properties: Vec<(String, String)>,
    /// Why the broker refused the producer's connections, if it did.
    refusals: Arc<SecurityWatch>,
    /// How long Kafka took to acknowledge records, by kind.
    produce_seconds: ProduceSeconds,
}

/// The children of `Metrics::kafka_produce_seconds`, looked up once rather than per record.
struct ProduceSeconds {
    qos0: Histogram,
    qos1: Histogram,
    session: Histogram,
}

impl ProduceSeconds {
    fn of(metrics: &Metrics) -> Self {
        let kind = |k: &str| metrics.kafka_produce_seconds.with_label_values(&[k]);
        Self {
            qos0: kind("qos0"),
            qos1: kind("qos1"),
            session: kind("session"),
        }
    }
}

/// Observes, once a record's delivery is known, how long Kafka took; failures are not
/// observed (their time is the delivery timeout, and `kafka_produce_errors_total` counts them).
fn observe_success(histogram: &Histogram, since: Instant, result: &Result<(), PublishError>) {
    if result.is_ok() {
        histogram.observe(since.elapsed().as_secs_f64());
    }
}

fn lock(current: &Mutex<Current>) -> MutexGuard<'_, Current> {
    // Every critical section is a few assignments: a poisoned lock holds consistent data.
    current.lock().unwrap_or_else(|e| e.into_inner())
}

impl Publisher {
    /// `properties` are extra librdkafka settings (security, SASL, ...) from the config;
    /// connection refusals (wrong credentials, a failed TLS handshake) go to `refusals`.
    pub fn new(
        bootstrap: &str,
        properties: &[(String, String)],
        retained_topic: &str,
        delivery_timeout: Duration,
        refusals: Arc<SecurityWatch>,
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
        let producer = Arc::new(config.create_with_context(WatchedContext::new(Arc::clone(&refusals)))?);
        Ok(Self {
            config,
            refusals,
            current: Arc::new(Mutex::new(Current {
                producer,
                generation: 0,
                health: ClientHealth::new(Instant::now()),
            })),
            retained_topic: retained_topic.to_owned(),
            partitions: RwLock::new(HashMap::new()),
            delivery_timeout,
            qos0: Arc::new(Qos0Budget::new(qos0::share(properties), Arc::new(Metrics::new()))),
            properties: properties.to_vec(),
            produce_seconds: ProduceSeconds::of(&Metrics::new()),
        })
    }

    /// Counts QoS 0 drops and produce times in `metrics` (a new publisher counts them in
    /// metrics of its own).
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.produce_seconds = ProduceSeconds::of(&metrics);
        self.qos0 = Arc::new(Qos0Budget::new(qos0::share(&self.properties), metrics));
        self
    }

    fn producer(&self) -> (Arc<WatchedProducer>, u64) {
        let current = lock(&self.current);
        (Arc::clone(&current.producer), current.generation)
    }

    /// Learns the partition count of each topic (at start-up, then by `supervise`), so
    /// that `enqueue` never waits for metadata.
    pub async fn load_partitions(&self, topics: &[String]) -> Result<(), PublishError> {
        let (producer, _) = self.producer();
        let timeout = self.delivery_timeout.min(Duration::from_secs(5));
        let names = topics.to_vec();
        let fetched = tokio::task::spawn_blocking(move || {
            names
                .into_iter()
                .map(|name| {
                    let count = producer.client().fetch_metadata(Some(&name), timeout).map(|m| {
                        m.topics()
                            .first()
                            .filter(|t| t.error().is_none())
                            .map_or(0, |t| t.partitions().len())
                    });
                    (name, count)
                })
                .collect::<Vec<_>>()
        })
        .await
        .map_err(|_| PublishError::UnknownTopic(topics.join(",")))?;
        for (topic, count) in fetched {
            let count = count.map_err(|source| PublishError::Kafka {
                topic: topic.clone(),
                source,
            })?;
            let count = i32::try_from(count).unwrap_or(0);
            if count == 0 {
                return Err(PublishError::UnknownTopic(topic));
            }
            self.partitions
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert(topic, count);
        }
        Ok(())
    }

    /// Watches the producer until the task is dropped: every `every` it refreshes the
    /// partition counts of `topics` through the producer itself (topics may grow, and a
    /// failing request is a sign of a broken producer), reports what is wrong to
    /// `readiness` under `producer`, and replaces a producer that has failed for
    /// `policy.replace_after` (or hit a fatal error) with a new one.
    pub fn supervise(
        self: &Arc<Self>,
        topics: Vec<String>,
        every: Duration,
        policy: Policy,
        readiness: Arc<Readiness>,
        metrics: Arc<Metrics>,
    ) -> JoinHandle<()> {
        let publisher = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let checked = publisher.load_partitions(&topics).await;
                let fatal = publisher.producer().0.client().fatal_error();
                let now = Instant::now();
                let replace = {
                    let mut current = lock(&publisher.current);
                    match &checked {
                        Ok(()) => current.health.request_succeeded(),
                        Err(error) => current.health.request_failed(now, &error.to_string()),
                    }
                    if let Some((code, reason)) = &fatal {
                        current.health.fatal(&format!("{code:?}: {reason}"));
                    }
                    // A failing producer whose broker refused it says why.
                    let problem = current
                        .health
                        .problem(now)
                        .map(|problem| publisher.refusals.problem(now).unwrap_or(problem));
                    readiness.report(PRODUCER, problem);
                    current.health.should_replace(now, &policy)
                };
                if replace {
                    publisher.replace(&metrics);
                }
            }
        })
    }

    /// Puts a new producer in place of the current one. The old one gets a few seconds to
    /// deliver what it holds; what it cannot deliver fails (a negative acknowledgement to
    /// the client, never a false positive one).
    fn replace(&self, metrics: &Metrics) {
        let fresh = match self
            .config
            .create_with_context::<_, WatchedProducer>(WatchedContext::new(Arc::clone(&self.refusals)))
        {
            Ok(fresh) => Arc::new(fresh),
            Err(error) => {
                tracing::error!(%error, "a new Kafka producer could not be created; keeping the old one");
                return;
            }
        };
        let (old, problem) = {
            let mut current = lock(&self.current);
            let problem = current.health.problem(Instant::now());
            current.generation += 1;
            current.health = current.health.for_replacement(Instant::now());
            (std::mem::replace(&mut current.producer, fresh), problem)
        };
        metrics.kafka_client_replacements.with_label_values(&[PRODUCER]).inc();
        tracing::warn!(
            problem = problem.as_deref().unwrap_or("-"),
            "Kafka producer replaced by a new one"
        );
        // Flushing and dropping block (librdkafka joins its threads).
        tokio::task::spawn_blocking(move || {
            if let Err(error) = old.flush(Duration::from_secs(5)) {
                tracing::warn!(%error, "the replaced producer could not deliver what it held; those PUBLISHes were not acknowledged");
            }
            drop(old);
        });
    }

    /// Writes one keyed record to `partition` of `topic` now (`None` is a tombstone); the
    /// future resolves once Kafka acknowledged it. Used for the sessions topic.
    pub fn enqueue_keyed(
        &self,
        topic: &str,
        partition: i32,
        key: &str,
        value: Option<&[u8]>,
    ) -> Result<impl Future<Output = Result<(), PublishError>> + Send + 'static + use<>, PublishError> {
        let (producer, generation) = self.producer();
        let mut record = FutureRecord::<str, [u8]>::to(topic).key(key).partition(partition);
        if let Some(value) = value {
            record = record.payload(value);
        }
        let since = Instant::now();
        let delivery = producer.send_result(record).map_err(|(e, _)| kafka_error(topic, e))?;
        let topic = topic.to_owned();
        let current = Arc::clone(&self.current);
        let histogram = self.produce_seconds.session.clone();
        Ok(async move {
            let result = delivered(delivery, &topic).await;
            observe_success(&histogram, since, &result);
            record_outcome(&current, generation, &result);
            result
        })
    }

    /// The high watermark (the offset the next record gets) of one partition, asked of
    /// Kafka through the producer's connection.
    pub async fn high_watermark(&self, topic: &str, partition: i32) -> Result<i64, PublishError> {
        let (producer, _) = self.producer();
        let name = topic.to_owned();
        tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_watermarks(&name, partition, Duration::from_secs(5))
                .map(|(_, high)| high)
        })
        .await
        .map_err(|_| PublishError::UnknownTopic(topic.to_owned()))?
        .map_err(|source| kafka_error(topic, source))
    }

    /// The partition count of `topic` as last looked up.
    pub fn partition_count(&self, topic: &str) -> Result<i32, PublishError> {
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
        // QoS 0 may hold only its share of the producer queue, so that QoS 1/2 always
        // find room in it (a Kafka outage fills the queue).
        let qos0 = (message.qos == 0).then(|| Arc::clone(&self.qos0));
        let reservation = match &qos0 {
            Some(budget) => {
                let records = if message.retain { 2 } else { 1 };
                let bytes = records * (message.payload.len() + message.topic.len() + qos0::RECORD_OVERHEAD);
                Some(budget.reserve(records, bytes).ok_or(PublishError::Qos0Backlog)?)
            }
            None => None,
        };
        let refused = |error: PublishError| {
            if let Some(budget) = &qos0 {
                budget.dropped("kafka", &error);
            }
            error
        };
        let partition = partition_for(partition_key.unwrap_or(message.topic.as_bytes()), partitions);
        let headers = owned_headers(message);
        let record = FutureRecord::to(kafka_topic)
            .key(&*message.topic)
            .payload(message.payload.as_ref())
            .timestamp(message.timestamp_ms)
            .partition(partition)
            .headers(headers.clone());
        let (producer, generation) = self.producer();
        let since = Instant::now();
        let main = producer
            .send_result(record)
            .map_err(|(e, _)| refused(kafka_error(kafka_topic, e)))?;
        let retained = if message.retain {
            let mut record = FutureRecord::<str, [u8]>::to(&self.retained_topic)
                .key(&*message.topic)
                .timestamp(message.timestamp_ms)
                .headers(headers);
            if !message.payload.is_empty() {
                record = record.payload(message.payload.as_ref());
            }
            Some(
                producer
                    .send_result(record)
                    .map_err(|(e, _)| refused(kafka_error(&self.retained_topic, e)))?,
            )
        } else {
            None
        };
        let main_topic = kafka_topic.to_owned();
        let retained_topic = self.retained_topic.clone();
        let current = Arc::clone(&self.current);
        let histogram = match message.qos {
            0 => self.produce_seconds.qos0.clone(),
            _ => self.produce_seconds.qos1.clone(),
        };
        Ok(async move {
            let mut result = delivered(main, &main_topic).await;
            observe_success(&histogram, since, &result);
            if let (Ok(()), Some(retained)) = (&result, retained) {
                result = delivered(retained, &retained_topic).await;
            }
            record_outcome(&current, generation, &result);
            drop(reservation);
            if let (Some(budget), Err(error)) = (&qos0, &result) {
                budget.dropped("kafka", error);
            }
            result
        })
    }

    /// Waits for queued records to be delivered (at shutdown).
    pub fn flush(&self, timeout: Duration) {
        if let Err(e) = self.producer().0.flush(timeout) {
            tracing::warn!(error = %e, "records still queued at shutdown");
        }
    }
}

/// The name the producer reports under in readiness and metrics.
pub const PRODUCER: &str = "producer";

/// Counts a delivery for or against the producer that made it (a replaced producer's late
/// results say nothing about its successor).
fn record_outcome(current: &Mutex<Current>, generation: u64, result: &Result<(), PublishError>) {
    let mut current = lock(current);
    if current.generation != generation {
        return;
    }
    match result {
        Ok(()) => current.health.delivery_succeeded(),
        Err(PublishError::Kafka { source, .. }) if is_connectivity_error(source) => {
            current.health.delivery_failed(Instant::now(), &source.to_string());
        }
        Err(_) => {}
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
