//! Catch-ups: reading a range of a messages topic again for subscribers (sessions that come
//! back, subscribers that fell behind the fan-out). Consumers are assigned, never in a group
//! (no consumer group per MQTT client), and at most a few read at once per process, so the
//! number of Kafka clients does not grow with the clients.
//!
//! Requests are served in *sweeps*: requests for the same topic that wait together (a
//! reconnect storm) are read in one pass from the lowest start to the highest end, each
//! record decoded once and handed to every request whose range holds it and whose
//! subscriptions may want it. So 10 000 sessions coming back read the missed range a few
//! times, not 10 000 times. A request whose subscriber does not keep up is let go (its
//! receiver ends early) and asks again from where it got to; a sweep serving one subscriber
//! waits for it a moment first ([`ALONE_WAIT`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message as _;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::sync::{Semaphore, mpsc};

use crate::broker::message::Message;
use crate::kafka::consumer::{Skips, decode};
use crate::metrics::Metrics;

/// One record of a catch-up.
#[derive(Debug)]
pub struct Replayed {
    pub partition: i32,
    pub offset: i64,
    /// `None` for a record that is not for this subscriber or not an MQTT message: it only
    /// says how far the catch-up got.
    pub message: Option<Message>,
}

/// Whether a subscriber may want a record, by its key (the MQTT topic).
pub type Wants = Box<dyn Fn(&str) -> bool + Send + Sync>;

/// Who may want a record of a messages topic, by its key: the requesters (see
/// [`Replayer::replay`]) whose subscriptions match it. A sweep with many requests asks this
/// once per record instead of asking every request (a reconnect storm of 2 000 sessions
/// over 200 000 records asked 400 million times).
pub type Candidates = Box<dyn Fn(&str, &str) -> Vec<u64> + Send + Sync>;

/// Up to this many requests, a sweep asks each of them about each record.
const ASK_EACH_UP_TO: usize = 32;

/// One subscriber's catch-up.
struct Request {
    from: BTreeMap<i32, i64>,
    to: BTreeMap<i32, i64>,
    wants: Wants,
    tx: mpsc::Sender<Replayed>,
    /// Set when the whole range was read (the receiver ending without it means: let go).
    complete: Arc<AtomicBool>,
}

/// A catch-up as its subscriber sees it.
pub struct Catching {
    pub records: mpsc::Receiver<Replayed>,
    /// True once every record of the range was handed over: when `records` ends without
    /// it, the reader let go early and the rest must be asked for again.
    pub complete: Arc<AtomicBool>,
}

impl Request {
    fn covers(&self, partition: i32, offset: i64) -> bool {
        self.from.get(&partition).is_some_and(|f| *f <= offset) && self.to.get(&partition).is_some_and(|t| offset < *t)
    }

    /// Whether the range is read; marks it complete when it is.
    fn finish_if_done(&self, positions: &BTreeMap<i32, i64>) -> bool {
        let done = self.done(positions);
        if done {
            self.complete.store(true, Ordering::Release);
        }
        done
    }

    fn done(&self, positions: &BTreeMap<i32, i64>) -> bool {
        self.to
            .iter()
            .all(|(p, end)| positions.get(p).is_some_and(|at| at >= end) || self.from.get(p).is_none_or(|f| f >= end))
    }
}

/// How long a sweep with one subscriber waits for it to take the next record before
/// letting it go. Letting go costs a new sweep (a gather, an assignment, a fetch from
/// Kafka); a subscriber that reads steadily but slower than Kafka (QoS 1 with a small
/// window) would otherwise pay that every READ_AHEAD records. A sweep with several
/// subscribers never waits for one of them.
const ALONE_WAIT: Duration = Duration::from_secs(2);

/// Waits (up to [`ALONE_WAIT`]) until each request of `list` that takes the record at
/// `partition`/`offset` (with `key`; `None`: a progress marker) has room for it.
async fn wait_for_room(list: &[Request], partition: i32, offset: i64, key: Option<&str>) {
    for r in list {
        if r.tx.capacity() == 0 && r.covers(partition, offset) && key.is_none_or(|key| (r.wants)(key)) {
            // The permit is dropped at once: this sweep is the only sender, so the room
            // stays free for the `try_send` that follows.
            let _ = tokio::time::timeout(ALONE_WAIT, r.tx.reserve()).await;
        }
    }
}

/// The catch-up consumers of one process.
pub struct Replayer {
    config: ClientConfig,
    idle: Mutex<Vec<StreamConsumer>>,
    permits: Arc<Semaphore>,
    waiting: Mutex<HashMap<String, Vec<(u64, Request)>>>,
    candidates: Candidates,
    metrics: Arc<Metrics>,
}

/// Records a catch-up may read ahead of its subscriber; a subscriber that lets more pile
/// up is let go and asks again later.
const READ_AHEAD: usize = 256;
/// Every this many records, each request is told how far the sweep got (records not for
/// it are progress too: its stored position must not lag far behind).
const PROGRESS_EVERY: u64 = 256;
/// How long a sweep waits for more requests to come with the first.
const GATHER: Duration = Duration::from_millis(50);

impl Replayer {
    /// At most `concurrency` sweeps read at once; `candidates` says who may want a record.
    pub fn new(
        bootstrap: &str,
        properties: &[(String, String)],
        instance: &str,
        concurrency: usize,
        candidates: Candidates,
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
            // A sweep reads ahead little: its members take records at their clients' pace.
            .set("queued.max.messages.kbytes", "8192")
            .set("enable.partition.eof", "false");
        for (key, value) in properties {
            config.set(key, value);
        }
        Self {
            config,
            idle: Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            waiting: Mutex::new(HashMap::new()),
            candidates,
            metrics,
        }
    }

    /// Reads `topic` from `from` up to (not including) `to` in each partition, in offset
    /// order per partition, for `requester` (a connection: the id [`Candidates`] names it
    /// by) that `wants` records by key. The receiver
    /// ends when the range was read, or earlier when the subscriber fell behind by more
    /// than [`READ_AHEAD`] records (the last `Replayed` says how far it got).
    pub fn replay(
        self: &Arc<Self>,
        topic: String,
        requester: u64,
        from: BTreeMap<i32, i64>,
        to: BTreeMap<i32, i64>,
        wants: Wants,
    ) -> Catching {
        let (tx, records) = mpsc::channel(READ_AHEAD);
        let complete = Arc::new(AtomicBool::new(false));
        let request = Request {
            from,
            to,
            wants,
            tx,
            complete: Arc::clone(&complete),
        };
        let catching = Catching { records, complete };
        if request.done(&BTreeMap::new()) {
            request.complete.store(true, Ordering::Release);
            return catching; // nothing to read: the sender is dropped, the receiver ends
        }
        self.waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(topic.clone())
            .or_default()
            .push((requester, request));
        let replayer = Arc::clone(self);
        tokio::spawn(async move { replayer.sweep(topic).await });
        catching
    }

    /// Takes every request of `topic` waiting at the time it gets a consumer and reads
    /// their ranges in one pass. (A sweep that finds none waiting, because an earlier one
    /// took them, ends at once.)
    async fn sweep(self: Arc<Self>, topic: String) {
        let Ok(_permit) = Arc::clone(&self.permits).acquire_owned().await else {
            return;
        };
        tokio::time::sleep(GATHER).await;
        let waiting = self
            .waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&topic)
            .unwrap_or_default();
        if waiting.is_empty() {
            return;
        }
        let mut start: BTreeMap<i32, i64> = BTreeMap::new();
        let mut end: BTreeMap<i32, i64> = BTreeMap::new();
        for (_, r) in &waiting {
            for (p, to) in &r.to {
                let Some(from) = r.from.get(p).filter(|f| *f < to) else {
                    continue;
                };
                start.entry(*p).and_modify(|s| *s = (*s).min(*from)).or_insert(*from);
                end.entry(*p).and_modify(|e| *e = (*e).max(*to)).or_insert(*to);
            }
        }
        let mut requests: HashMap<u64, Vec<Request>> = HashMap::new();
        let count = waiting.len();
        for (requester, request) in waiting {
            requests.entry(requester).or_default().push(request);
        }
        let consumer = loop {
            match self.consumer() {
                Ok(consumer) => break consumer,
                Err(error) => {
                    tracing::warn!(%topic, %error, "catch-up consumer not created; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        };
        let mut assignment = TopicPartitionList::new();
        for (partition, offset) in &start {
            if let Err(error) = assignment.add_partition_offset(&topic, *partition, Offset::Offset(*offset)) {
                tracing::warn!(%topic, partition, %error, "catch-up partition not assignable");
            }
        }
        if let Err(error) = consumer.assign(&assignment) {
            tracing::warn!(%topic, %error, "catch-up not assigned");
            return;
        }
        tracing::debug!(%topic, requests = count, ?start, ?end, "catch-up sweep");
        let mut positions: BTreeMap<i32, i64> = start.clone();
        let mut read: u64 = 0;
        let skips = Skips::new(&topic, &self.metrics);
        while !requests.is_empty() {
            match tokio::time::timeout(Duration::from_millis(500), consumer.recv()).await {
                Ok(Ok(record)) => {
                    let (partition, offset) = (record.partition(), record.offset());
                    positions.insert(partition, offset + 1);
                    self.metrics.replayed.inc();
                    read += 1;
                    let key = record.key().and_then(|k| std::str::from_utf8(k).ok());
                    if let Some(key) = key {
                        let mut targets: Vec<u64> = if requests.len() <= ASK_EACH_UP_TO {
                            requests.keys().copied().collect()
                        } else {
                            (self.candidates)(&topic, key)
                        };
                        targets.sort_unstable();
                        targets.dedup();
                        let mut message: Option<Option<Message>> = None;
                        let alone = requests.len() == 1;
                        for requester in targets {
                            let Some(list) = requests.get_mut(&requester) else {
                                continue;
                            };
                            if alone {
                                wait_for_room(list, partition, offset, Some(key)).await;
                            }
                            list.retain_mut(|r| {
                                if !r.covers(partition, offset) || !(r.wants)(key) {
                                    return true;
                                }
                                let m = message
                                    .get_or_insert_with(|| {
                                        decode(&record).map_err(|e| skips.record_error(&record, &e)).ok()
                                    })
                                    .clone();
                                let sent = r.tx.try_send(Replayed {
                                    partition,
                                    offset,
                                    message: m,
                                });
                                // Behind, or gone: let it go; it asks again from where it got.
                                sent.is_ok() && !r.finish_if_done(&positions)
                            });
                            if list.is_empty() {
                                requests.remove(&requester);
                            }
                        }
                    } else if let Err(error) = decode(&record) {
                        // No key, or no UTF-8 one: no topic anyone can want, but counted.
                        skips.record_error(&record, &error);
                    }
                    if read.is_multiple_of(PROGRESS_EVERY) {
                        if requests.len() == 1 {
                            for list in requests.values() {
                                wait_for_room(list, partition, offset, None).await;
                            }
                        }
                        progress(&mut requests, Some((partition, offset)), &positions);
                    }
                }
                Ok(Err(error)) => {
                    tracing::warn!(%topic, %error, "catch-up read error; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(_) => {
                    // Nothing came: a partition whose records retention deleted up to the
                    // end is done when the consumer's position says so.
                    if let Ok(at) = consumer.position() {
                        for element in at.elements_for_topic(&topic) {
                            if let Offset::Offset(o) = element.offset() {
                                let known = positions.entry(element.partition()).or_insert(o);
                                *known = (*known).max(o);
                            }
                        }
                    }
                    progress(&mut requests, None, &positions);
                }
            }
        }
        let _ = consumer.unassign();
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).push(consumer);
    }

    fn consumer(&self) -> Result<StreamConsumer, rdkafka::error::KafkaError> {
        if let Some(consumer) = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop() {
            return Ok(consumer);
        }
        self.config.create()
    }
}

/// Tells every request how far the sweep got (`at`: the record just read, when it is in
/// the request's range) and lets go of those whose range is read, gone, or behind.
fn progress(requests: &mut HashMap<u64, Vec<Request>>, at: Option<(i32, i64)>, positions: &BTreeMap<i32, i64>) {
    requests.retain(|_, list| {
        list.retain(|r| {
            if let Some((partition, offset)) = at.filter(|(p, o)| r.covers(*p, *o)) {
                let marker = Replayed {
                    partition,
                    offset,
                    message: None,
                };
                if r.tx.try_send(marker).is_err() {
                    return false;
                }
            }
            !r.finish_if_done(positions) && !r.tx.is_closed()
        });
        !list.is_empty()
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(from: &[(i32, i64)], to: &[(i32, i64)]) -> Request {
        let (tx, _rx) = mpsc::channel(1);
        Request {
            from: from.iter().copied().collect(),
            to: to.iter().copied().collect(),
            wants: Box::new(|_| true),
            tx,
            complete: Arc::new(AtomicBool::new(false)),
        }
    }

    #[test]
    fn a_request_covers_its_range_and_is_done_past_its_end() {
        let r = request(&[(0, 10), (1, 5)], &[(0, 20), (1, 5)]);
        assert!(r.covers(0, 10) && r.covers(0, 19));
        assert!(!r.covers(0, 9) && !r.covers(0, 20) && !r.covers(1, 5) && !r.covers(2, 0));
        assert!(!r.done(&BTreeMap::from([(0, 19)])));
        assert!(r.done(&BTreeMap::from([(0, 20)])), "partition 1 had nothing to read");
    }
}
