//! The hub of one proxy process: live connections by client id, one subscription index
//! per Kafka messages topic, the retained view, and the way to Kafka. Connections call it
//! to publish and subscribe; the Kafka readers feed it records to dispatch.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use tokio::sync::{mpsc, watch};

use crate::broker::identity::IdentityPatterns;
use crate::broker::message::Message;
use crate::broker::retained::RetainedStore;
use crate::broker::routes::RouteTable;
use crate::broker::subscriptions::{Subscription, SubscriptionIndex};
use crate::kafka::consumer::RecordSink;
use crate::kafka::producer::{PublishError, Publisher};
use crate::kafka::record::RecordError;
use crate::metrics::Metrics;

/// Identifies one live connection of this process.
pub type ConnId = u64;

/// A message on its way to one subscriber.
#[derive(Clone, Debug)]
pub struct Outgoing {
    pub message: Arc<Message>,
    /// min(published QoS, granted QoS).
    pub qos: u8,
    /// RETAIN flag to send: retained replay, or Retain As Published of a retained message.
    pub retain: bool,
    pub identifiers: Vec<u32>,
}

/// What a connection gets from the hub when it registers.
pub struct Registration {
    pub id: ConnId,
    /// Deliveries for this connection.
    pub deliveries: mpsc::Receiver<Outgoing>,
    /// Becomes `Some(reason code)` when the hub wants the connection closed (takeover).
    pub kicked: watch::Receiver<Option<u8>>,
}

struct Live {
    deliveries: mpsc::Sender<Outgoing>,
    kick: watch::Sender<Option<u8>>,
}

/// 0x8E Session taken over.
pub const SESSION_TAKEN_OVER: u8 = 0x8E;

pub struct Hub {
    routes: RouteTable,
    identities: IdentityPatterns,
    publisher: Arc<Publisher>,
    metrics: Arc<Metrics>,
    queue_capacity: usize,
    next_id: AtomicU64,
    live: RwLock<HashMap<ConnId, Live>>,
    clients: Mutex<HashMap<String, ConnId>>,
    indexes: HashMap<String, RwLock<SubscriptionIndex<ConnId>>>,
    retained: RwLock<RetainedStore<Arc<Message>>>,
}

// A panic while holding one of these locks leaves consistent data (every critical section
// is a single map operation), so a poisoned lock is used as is.
fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}
fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}

impl Hub {
    /// `queue_capacity` bounds the deliveries waiting for one connection.
    pub fn new(
        routes: RouteTable,
        identities: IdentityPatterns,
        publisher: Arc<Publisher>,
        metrics: Arc<Metrics>,
        queue_capacity: usize,
    ) -> Self {
        let indexes = routes
            .all_messages_topics()
            .into_iter()
            .map(|t| (t.to_owned(), RwLock::new(SubscriptionIndex::new())))
            .collect();
        Self {
            routes,
            identities,
            publisher,
            metrics,
            queue_capacity: queue_capacity.max(1),
            next_id: AtomicU64::new(1),
            live: RwLock::new(HashMap::new()),
            clients: Mutex::new(HashMap::new()),
            indexes,
            retained: RwLock::new(RetainedStore::new()),
        }
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The Kafka messages topics the fan-out readers must follow.
    pub fn messages_topics(&self) -> Vec<String> {
        self.routes
            .all_messages_topics()
            .into_iter()
            .map(str::to_owned)
            .collect()
    }

    /// Registers a connection for `client_id`; an older connection of the same client id
    /// on this process is told to close with 0x8E (Session taken over).
    pub fn register(&self, client_id: &str) -> Registration {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (deliveries_tx, deliveries) = mpsc::channel(self.queue_capacity);
        let (kick, kicked) = watch::channel(None);
        write(&self.live).insert(
            id,
            Live {
                deliveries: deliveries_tx,
                kick,
            },
        );
        let previous = self
            .clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(client_id.to_owned(), id);
        if let Some(previous) = previous
            && let Some(old) = read(&self.live).get(&previous)
        {
            old.kick.send_replace(Some(SESSION_TAKEN_OVER));
        }
        Registration { id, deliveries, kicked }
    }

    /// Forgets a connection and all its subscriptions.
    pub fn unregister(&self, id: ConnId, client_id: &str) {
        write(&self.live).remove(&id);
        {
            let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
            if clients.get(client_id) == Some(&id) {
                clients.remove(client_id);
            }
        }
        for index in self.indexes.values() {
            write(index).remove_subscriber(id);
        }
    }

    /// Whether `client_id` has a live connection here (a will is not sent for a client
    /// that came back in time).
    pub fn is_connected(&self, client_id: &str) -> bool {
        self.clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(client_id)
    }

    /// Adds or replaces a subscription in the index of every messages topic its filter
    /// reads; true when it replaced one with the same filter.
    pub fn subscribe(&self, id: ConnId, client_id: &str, subscription: &Subscription) -> bool {
        let mut existed = false;
        for topic in self.routes.for_subscribe(&subscription.filter_as_sent()) {
            if let Some(index) = self.indexes.get(topic) {
                existed |= write(index).insert(id, client_id, subscription.clone());
            }
        }
        existed
    }

    /// Removes a subscription by the filter the client sent; true when one existed.
    pub fn unsubscribe(&self, id: ConnId, filter_as_sent: &str) -> bool {
        let mut existed = false;
        for index in self.indexes.values() {
            existed |= write(index).remove(id, filter_as_sent);
        }
        existed
    }

    /// Retained messages whose topic matches `filter`, sorted by topic.
    pub fn retained_matching(&self, filter: &str) -> Vec<Arc<Message>> {
        read(&self.retained)
            .matching(filter)
            .into_iter()
            .map(|(_, m)| Arc::clone(m))
            .collect()
    }

    /// Hands a message to Kafka now (its route's messages topic, partitioned by its
    /// `clients` identity; the retained topic too when retained), so Kafka keeps the order
    /// of the calls. The future resolves once Kafka acknowledged.
    pub fn publish(
        self: &Arc<Self>,
        message: Message,
    ) -> impl Future<Output = Result<(), PublishError>> + Send + 'static + use<> {
        let enqueued = {
            let target = self.routes.for_publish(&message.topic);
            let key = self.identities.identity_of(&message.topic).map(str::as_bytes);
            self.publisher.enqueue(&target.messages_topic, &message, key)
        };
        let hub = Arc::clone(self);
        async move {
            let result = match enqueued {
                Ok(delivery) => delivery.await,
                Err(e) => Err(e),
            };
            match &result {
                // The retained reader will apply the same record; applying it now makes it
                // visible at once to a SUBSCRIBE that follows the PUBACK.
                Ok(()) if message.retain => {
                    let topic = message.topic.clone();
                    let value = (!message.payload.is_empty()).then(|| Arc::new(message));
                    hub.set_retained(topic, value);
                }
                Ok(()) => {}
                Err(_) => hub.metrics.kafka_errors.inc(),
            }
            result
        }
    }

    fn set_retained(&self, topic: String, message: Option<Arc<Message>>) {
        let mut store = write(&self.retained);
        store.set(topic, message);
        self.metrics
            .retained
            .set(i64::try_from(store.len()).unwrap_or(i64::MAX));
    }
}

impl RecordSink for Hub {
    fn deliver(&self, kafka_topic: &str, message: Message) {
        let Some(index) = self.indexes.get(kafka_topic) else {
            return;
        };
        let deliveries = read(index).route(&message.topic, message.publisher.as_deref());
        if deliveries.is_empty() {
            return;
        }
        let message = Arc::new(message);
        let live = read(&self.live);
        for delivery in deliveries {
            let Some(connection) = live.get(&delivery.subscriber) else {
                continue;
            };
            let outgoing = Outgoing {
                message: Arc::clone(&message),
                qos: delivery.qos.min(message.qos),
                retain: delivery.retain_as_published && message.retain,
                identifiers: delivery.identifiers,
            };
            if connection.deliveries.try_send(outgoing).is_err() {
                self.metrics.dropped.with_label_values(&["queue_full"]).inc();
            }
        }
    }

    fn retained(&self, topic: &str, message: Option<Message>) {
        self.set_retained(topic.to_owned(), message.map(Arc::new));
    }

    fn skipped(&self, kafka_topic: &str, error: RecordError) {
        let reason = match error {
            RecordError::NullKey => "null_key",
            RecordError::KeyNotUtf8 | RecordError::KeyNotTopic => "bad_key",
        };
        tracing::debug!(%kafka_topic, %error, "record skipped");
        self.metrics.records_skipped.with_label_values(&[reason]).inc();
    }
}
