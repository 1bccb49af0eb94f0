//! Catch-ups: reading a range of a messages topic again for one subscriber (a session that
//! comes back, a subscriber that fell behind the fan-out). Consumers are assigned, never
//! in a group (no consumer group per MQTT client), and come from a small pool, so the
//! number of Kafka clients of a process does not grow with its clients: catch-ups beyond
//! the pool's size wait for a consumer.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message as _;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::sync::{Semaphore, mpsc};

use crate::broker::message::Message;
use crate::kafka::consumer::decode;
use crate::metrics::Metrics;

/// One record of a catch-up.
#[derive(Debug)]
pub struct Replayed {
    pub partition: i32,
    pub offset: i64,
    /// `None` for a record that is not an MQTT message (skipped, but it is progress).
    pub message: Option<Message>,
}

/// The pool of catch-up consumers of one process.
pub struct Replayer {
    config: ClientConfig,
    idle: Mutex<Vec<StreamConsumer>>,
    permits: Arc<Semaphore>,
    metrics: Arc<Metrics>,
}

/// Records a catch-up may read ahead of the subscriber.
const READ_AHEAD: usize = 64;

impl Replayer {
    /// At most `concurrency` catch-ups read at once.
    pub fn new(
        bootstrap: &str,
        properties: &[(String, String)],
        instance: &str,
        concurrency: usize,
        metrics: Arc<Metrics>,
    ) -> Self {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", bootstrap)
            .set("group.id", format!("mqtt-kafka-replay-{instance}"))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            // A position that retention deleted reads from what is left.
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", "10")
            .set("enable.partition.eof", "false");
        for (key, value) in properties {
            config.set(key, value);
        }
        Self {
            config,
            idle: Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            metrics,
        }
    }

    /// Reads `topic` from `from` up to (not including) `to` in each partition, in offset
    /// order per partition; the receiver ends when everything was read. Reading waits
    /// while the receiver holds [`READ_AHEAD`] records, so a slow subscriber costs no memory.
    /// `wants` says by the record key (the MQTT topic) whether the subscriber may want a
    /// record at all: the others are not decoded, only counted as progress.
    pub fn replay(
        self: &Arc<Self>,
        topic: String,
        from: BTreeMap<i32, i64>,
        to: BTreeMap<i32, i64>,
        wants: Box<dyn Fn(&str) -> bool + Send + Sync>,
    ) -> mpsc::Receiver<Replayed> {
        let (tx, rx) = mpsc::channel(READ_AHEAD);
        let replayer = Arc::clone(self);
        tokio::spawn(async move {
            let mut pending: BTreeMap<i32, i64> = to
                .iter()
                .filter(|(p, end)| from.get(p).is_some_and(|start| start < *end))
                .map(|(p, end)| (*p, *end))
                .collect();
            if pending.is_empty() {
                return;
            }
            let Ok(_permit) = Arc::clone(&replayer.permits).acquire_owned().await else {
                return;
            };
            let consumer = loop {
                match replayer.consumer() {
                    Ok(consumer) => break consumer,
                    Err(error) => {
                        tracing::warn!(%topic, %error, "catch-up consumer not created; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            };
            let mut assignment = TopicPartitionList::new();
            for partition in pending.keys() {
                let start = from.get(partition).copied().unwrap_or_default();
                if let Err(error) = assignment.add_partition_offset(&topic, *partition, Offset::Offset(start)) {
                    tracing::warn!(%topic, partition, %error, "catch-up partition not assignable");
                }
            }
            if let Err(error) = consumer.assign(&assignment) {
                tracing::warn!(%topic, %error, "catch-up not assigned");
                return;
            }
            let mut skipped = 0u32;
            while !pending.is_empty() {
                match tokio::time::timeout(Duration::from_millis(500), consumer.recv()).await {
                    Ok(Ok(record)) => {
                        let (partition, offset) = (record.partition(), record.offset());
                        let Some(end) = pending.get(&partition).copied() else {
                            continue;
                        };
                        if offset < end {
                            replayer.metrics.replayed.inc();
                            let wanted = record
                                .key()
                                .and_then(|k| std::str::from_utf8(k).ok())
                                .is_some_and(&wants);
                            // Unwanted records are progress only, said now and then so that
                            // a stored position does not lag far behind.
                            skipped = if wanted { 0 } else { skipped + 1 };
                            if wanted || skipped.is_multiple_of(256) {
                                let message = if wanted { decode(&record).ok() } else { None };
                                let replayed = Replayed {
                                    partition,
                                    offset,
                                    message,
                                };
                                if tx.send(replayed).await.is_err() {
                                    break; // the subscriber went away
                                }
                            }
                        }
                        if offset + 1 >= end {
                            pending.remove(&partition);
                        }
                    }
                    Ok(Err(error)) => {
                        tracing::warn!(%topic, %error, "catch-up read error; retrying");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Err(_) => {
                        // Nothing came: a partition whose records retention deleted up to
                        // the end is done when the consumer's position says so.
                        if let Ok(positions) = consumer.position() {
                            for element in positions.elements_for_topic(&topic) {
                                if let Offset::Offset(at) = element.offset()
                                    && pending.get(&element.partition()).is_some_and(|end| at >= *end)
                                {
                                    pending.remove(&element.partition());
                                }
                            }
                        }
                    }
                }
            }
            let _ = consumer.unassign();
            replayer.idle.lock().unwrap_or_else(|e| e.into_inner()).push(consumer);
        });
        rx
    }

    fn consumer(&self) -> Result<StreamConsumer, rdkafka::error::KafkaError> {
        if let Some(consumer) = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop() {
            return Ok(consumer);
        }
        self.config.create()
    }
}
