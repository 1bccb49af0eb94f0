//! The hub of one proxy process: live connections by client id, one subscription index
//! per Kafka messages topic, the retained view, and the way to Kafka. Connections call it
//! to publish and subscribe; the Kafka readers feed it records to dispatch.
//!
//! The in-memory path to a subscriber is only a cache of Kafka. Each QoS > 0 delivery
//! carries where its record is in Kafka, and the hub tracks, per connection, which of them
//! are not yet complete ([`Tracking`]). A connection whose queue is full is not given
//! fewer messages: it is marked *lagging* on that topic from the fan-out's position, gets
//! no more live deliveries there, and catches up by reading Kafka itself from that
//! position ([`Hub::rejoin`]) once it has room; a reconnecting persistent session starts
//! the same way from its stored positions. So memory per connection is bounded, nothing
//! acknowledged to a publisher is lost to a slow subscriber, and [`Hub::positions`] says
//! from where a session resumes.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

mod dispatch;
mod queue;
mod share;
mod tracking;

use queue::QueueSender;
pub use queue::{NO_DEADLINE, QueueReceiver};
pub use share::ShareRuntime;
use share::Shares;
use tracking::{Tracking, TrackingCell};

use crate::broker::identity::IdentityPatterns;
use crate::broker::message::Message;
use crate::broker::retained::RetainedStore;
use crate::broker::routes::RouteTable;
use crate::broker::subscriptions::{Subscription, SubscriptionIndex};
use crate::kafka::consumer::RecordSink;
use crate::kafka::producer::{PublishError, Publisher};
use crate::metrics::Metrics;

/// Identifies one live connection of this process.
pub type ConnId = u64;

/// Where a record is in Kafka.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Origin {
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
}

/// Offsets per messages topic and partition.
pub type Positions = BTreeMap<String, BTreeMap<i32, i64>>;

/// What a lagging connection must read from Kafka itself: a messages topic, and per
/// partition the offsets from and up to (not including) which to read.
#[derive(Debug, PartialEq, Eq)]
pub struct CatchUp {
    pub topic: String,
    pub from: BTreeMap<i32, i64>,
    pub to: BTreeMap<i32, i64>,
}

/// A message on its way to one subscriber.
#[derive(Clone, Debug)]
pub struct Outgoing {
    pub message: Arc<Message>,
    /// Where the record is in Kafka; `None` for retained messages sent on SUBSCRIBE. A
    /// delivery with an origin and QoS > 0 must be completed ([`Hub::complete`]).
    pub origin: Option<Origin>,
    /// min(published QoS, granted QoS).
    pub qos: u8,
    /// RETAIN flag to send: retained replay, or Retain As Published of a retained message.
    pub retain: bool,
    pub identifiers: Vec<u32>,
    /// Handed on by a shared subscription's dispatcher: the share, not the member's
    /// session, keeps it until it is acknowledged (and gives it to another member if this
    /// one goes away first), so the member does not store it with its session.
    pub shared: bool,
}

/// What a connection gets from the hub when it registers.
pub struct Registration {
    pub id: ConnId,
    /// Deliveries for this connection, and the hub's word when it lags or is to close
    /// (takeover, moved elsewhere, shutdown).
    pub deliveries: QueueReceiver,
}

/// One live connection, as [`Hub::connections`] lists it.
#[derive(Clone, Debug)]
pub struct LiveConnection {
    pub id: ConnId,
    pub client_id: String,
    /// Whether it speaks MQTT 5 (only those can be redirected).
    pub mqtt5: bool,
    /// Name of the listener it connected on.
    pub listener: Arc<str>,
}

/// Why the hub closes a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kick {
    /// The DISCONNECT reason code (0x8E takeover, 0x9C / 0x9D moved, 0x8B shutdown).
    pub reason: u8,
    /// Where the client should go (MQTT 5 Server Reference).
    pub server_reference: Option<String>,
}

struct Live {
    /// The same string as its key in the `clients` table, not a copy (issue 9).
    client_id: Arc<str>,
    /// MQTT 5 clients can be redirected; 3.1.1 clients are served where they connect.
    mqtt5: bool,
    /// The listener it connected on: a redirect sends it to the same kind of listener.
    listener: Arc<str>,
    deliveries: QueueSender,
    /// Which deliveries are outstanding and where it lags (allocated while it has any).
    tracking: TrackingCell,
    /// A shared subscription's dispatcher, not a client connection.
    dispatcher: bool,
}

/// 0x8E Session taken over.
pub const SESSION_TAKEN_OVER: u8 = 0x8E;
/// 0x8D Keep Alive timeout.
pub const KEEP_ALIVE_TIMEOUT: u8 = 0x8D;

pub struct Hub {
    routes: RouteTable,
    identities: IdentityPatterns,
    publisher: Arc<Publisher>,
    metrics: Arc<Metrics>,
    queue_capacity: usize,
    queue_bytes: usize,
    next_id: AtomicU64,
    /// Where [`Hub::clock_ms`] counts from.
    epoch: std::time::Instant,
    /// Boxed: a table slot is as large as its value, and most slots of a large table are empty.
    live: RwLock<HashMap<ConnId, Box<Live>>>,
    clients: Mutex<HashMap<Arc<str>, ConnId>>,
    indexes: HashMap<String, RwLock<SubscriptionIndex<ConnId>>>,
    /// What shared subscriptions need beyond the hub (who serves which partition of a
    /// share, its cursors, catch-ups); set once the Kafka side exists. Until then (and in
    /// tests of the hub alone) each message of a share goes straight to a member here.
    share_runtime: std::sync::OnceLock<ShareRuntime>,
    /// The shared subscriptions with members here: their dispatchers, and what each has
    /// handed to which member.
    shares: Shares,
    /// Per messages topic, the offset the fan-out dispatches next in each partition;
    /// changed only under that topic's index lock.
    fanout: HashMap<String, Mutex<BTreeMap<i32, i64>>>,
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
fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Hub {
    /// `queue_capacity` bounds the deliveries waiting for one connection, `queue_bytes`
    /// the bytes of their messages.
    pub fn new(
        routes: RouteTable,
        identities: IdentityPatterns,
        publisher: Arc<Publisher>,
        metrics: Arc<Metrics>,
        queue_capacity: usize,
        queue_bytes: usize,
    ) -> Self {
        let indexes = routes
            .all_messages_topics()
            .into_iter()
            .map(|t| (t.to_owned(), RwLock::new(SubscriptionIndex::new())))
            .collect();
        let fanout = routes
            .all_messages_topics()
            .into_iter()
            .map(|t| (t.to_owned(), Mutex::new(BTreeMap::new())))
            .collect();
        Self {
            routes,
            identities,
            publisher,
            metrics,
            queue_capacity: queue_capacity.max(1),
            queue_bytes,
            next_id: AtomicU64::new(1),
            epoch: std::time::Instant::now(),
            live: RwLock::new(HashMap::new()),
            clients: Mutex::new(HashMap::new()),
            indexes,
            share_runtime: std::sync::OnceLock::new(),
            shares: Shares::default(),
            fanout,
            retained: RwLock::new(RetainedStore::new()),
        }
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The metrics, for a task that outlives a borrow of the hub.
    pub fn metrics_arc(&self) -> Arc<Metrics> {
        Arc::clone(&self.metrics)
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
    /// on this process is told to close with 0x8E (Session taken over). `resume_from`
    /// are the positions of a resumed session: the connection starts lagging there, and
    /// catches up from them (partitions it has no position for start at the fan-out's).
    pub fn register(&self, client_id: &str, mqtt5: bool, listener: Arc<str>, resume_from: &Positions) -> Registration {
        self.register_as(client_id, mqtt5, listener, resume_from, false)
    }

    fn register_as(
        &self,
        client_id: &str,
        mqtt5: bool,
        listener: Arc<str>,
        resume_from: &Positions,
        dispatcher: bool,
    ) -> Registration {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let client_id: Arc<str> = Arc::from(client_id);
        let (deliveries_tx, deliveries) = queue::channel(self.queue_capacity, self.queue_bytes);
        let mut tracking = Tracking::default();
        for (topic, stored) in resume_from {
            let Some(fanout) = self.fanout.get(topic) else { continue };
            let mut from = locked(fanout).clone();
            for (partition, offset) in stored {
                if let Some(at) = from.get_mut(partition) {
                    *at = (*offset).min(*at);
                }
            }
            tracking.lagging.insert(topic.clone(), from);
        }
        // Told through its queue when it starts lagging (see [`Hub::rejoin`]).
        if !tracking.lagging.is_empty() {
            deliveries_tx.mark_lagging();
        }
        write(&self.live).insert(
            id,
            Box::new(Live {
                client_id: Arc::clone(&client_id),
                mqtt5,
                listener,
                deliveries: deliveries_tx,
                tracking: TrackingCell::new(tracking),
                dispatcher,
            }),
        );
        if dispatcher {
            return Registration { id, deliveries };
        }
        let previous = self
            .clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(client_id, id);
        if let Some(previous) = previous
            && let Some(old) = read(&self.live).get(&previous)
        {
            old.deliveries.kick(Kick {
                reason: SESSION_TAKEN_OVER,
                server_reference: None,
            });
        }
        Registration { id, deliveries }
    }

    /// Sets what shared subscriptions need of the Kafka side (once).
    pub fn set_share_runtime(&self, runtime: ShareRuntime) {
        let _ = self.share_runtime.set(runtime);
    }

    /// The shares (`$share/{group}/{filter}`) this process has members of.
    pub fn shares(&self) -> Vec<String> {
        let mut shares: Vec<String> = self.indexes.values().flat_map(|i| read(i).shares()).collect();
        shares.sort();
        shares.dedup();
        shares
    }

    /// Every live connection.
    pub fn connections(&self) -> Vec<LiveConnection> {
        read(&self.live)
            .iter()
            .filter(|(_, l)| !l.dispatcher)
            .map(|(id, l)| LiveConnection {
                id: *id,
                client_id: l.client_id.to_string(),
                mqtt5: l.mqtt5,
                listener: Arc::clone(&l.listener),
            })
            .collect()
    }

    pub fn connection_count(&self) -> usize {
        read(&self.live).values().filter(|l| !l.dispatcher).count()
    }

    /// The hub's clock, in milliseconds: what keep-alive deadlines are set in.
    pub fn clock_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Kicks every connection whose keep-alive deadline is before `now_ms` with 0x8D
    /// (Keep Alive timeout); returns how many. One sweep over the connections instead of
    /// a timer per connection: an idle connection holds no timer (issue 9), and a packet
    /// moves its deadline with one store instead of a timer-wheel update.
    pub fn sweep_keep_alive(&self, now_ms: u64) -> usize {
        let live = read(&self.live);
        let mut kicked = 0;
        for connection in live.values() {
            if connection.deliveries.deadline_ms() < now_ms {
                connection.deliveries.kick(Kick {
                    reason: KEEP_ALIVE_TIMEOUT,
                    server_reference: None,
                });
                kicked += 1;
            }
        }
        kicked
    }

    /// Sweeps keep-alive deadlines every `every` (see [`Hub::sweep_keep_alive`]): a silent
    /// client is closed at most that much after one and a half times its keep-alive. The
    /// same sweep frees the delivery tracking of connections that hold nothing in it.
    pub fn sweep_keep_alive_every(self: &Arc<Self>, every: std::time::Duration) -> tokio::task::JoinHandle<()> {
        let hub = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                hub.sweep_keep_alive(hub.clock_ms());
                hub.release_idle_tracking();
            }
        })
    }

    /// Tells connection `id` to close.
    pub fn kick(&self, id: ConnId, kick: Kick) {
        if let Some(connection) = read(&self.live).get(&id) {
            connection.deliveries.kick(kick);
        }
    }

    /// Where the fan-out of every messages topic is now: the positions of a session that
    /// has seen everything so far.
    pub fn fanout_positions(&self) -> Positions {
        self.fanout
            .iter()
            .map(|(topic, positions)| (topic.clone(), locked(positions).clone()))
            .collect()
    }

    /// Whether a record on MQTT topic `mqtt_topic` can match a subscription of connection
    /// `id` on `kafka_topic` (before No Local, which needs the decoded record).
    pub fn wants(&self, id: ConnId, kafka_topic: &str, mqtt_topic: &str) -> bool {
        self.indexes
            .get(kafka_topic)
            .is_some_and(|index| read(index).route_subscriber(id, mqtt_topic, None).is_some())
    }

    /// The connections whose own (non-shared) subscriptions match `mqtt_topic` on
    /// `kafka_topic`: who a catch-up of that record may be for.
    pub fn catch_up_candidates(&self, kafka_topic: &str, mqtt_topic: &str) -> Vec<ConnId> {
        let Some(index) = self.indexes.get(kafka_topic) else {
            return Vec::new();
        };
        let index = read(index);
        let mut candidates = index.plain_subscribers(mqtt_topic);
        for share in index.matching_shares(mqtt_topic) {
            candidates.extend(self.shares.dispatcher_of(share));
        }
        candidates
    }

    /// The delivery to connection `id` of a record its catch-up read, by its subscriptions
    /// (`None`: it does not match).
    pub fn route_for(&self, id: ConnId, kafka_topic: &str, message: &Message) -> Option<(u8, bool, Vec<u32>)> {
        let index = read(self.indexes.get(kafka_topic)?);
        let delivery = index.route_subscriber(id, &message.topic, message.publisher.as_deref())?;
        Some((
            delivery.qos.min(message.qos),
            delivery.retain_as_published && message.retain,
            delivery.identifiers,
        ))
    }

    /// Forgets a connection and all its subscriptions.
    pub fn unregister(&self, id: ConnId, client_id: &str) {
        write(&self.live).remove(&id);
        // What a share handed to it and it did not acknowledge goes to another member.
        let handed_back = self.shares.member_gone(id);
        self.metrics.share_handed_back.inc_by(handed_back);
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
    pub fn subscribe(self: &Arc<Self>, id: ConnId, client_id: &str, subscription: &Subscription) -> bool {
        let mut existed = false;
        for topic in self.routes.for_subscribe(&subscription.filter_as_sent()) {
            if let Some(index) = self.indexes.get(topic) {
                existed |= write(index).insert(id, client_id, subscription.clone());
            }
        }
        if subscription.share_group.is_some() {
            self.start_dispatcher(&subscription.filter_as_sent());
        }
        existed
    }

    /// Removes a subscription by the filter the client sent; true when one existed.
    pub fn unsubscribe(&self, id: ConnId, filter_as_sent: &str) -> bool {
        let mut existed = false;
        for index in self.indexes.values() {
            existed |= write(index).remove(id, filter_as_sent);
        }
        if existed && filter_as_sent.starts_with(crate::broker::topic::SHARED_PREFIX) {
            self.shares.wake_all(); // a dispatcher may have lost its last member
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
                    hub.set_retained(&topic, value);
                }
                Ok(()) => {}
                Err(_) => hub.metrics.kafka_errors.inc(),
            }
            result
        }
    }

    fn set_retained(&self, topic: &str, message: Option<Arc<Message>>) {
        let mut store = write(&self.retained);
        store.set(topic.to_owned(), message);
        self.metrics
            .retained
            .set(i64::try_from(store.len()).unwrap_or(i64::MAX));
    }
}

impl RecordSink for Hub {
    fn deliver(
        &self,
        kafka_topic: &str,
        partition: i32,
        offset: i64,
        topic: &str,
        decode: &mut dyn FnMut() -> Option<Message>,
    ) {
        let (Some(index), Some(fanout)) = (self.indexes.get(kafka_topic), self.fanout.get(kafka_topic)) else {
            return;
        };
        // Held until the position moves past this record (see `rejoin` and `positions`).
        let index = read(index);
        // Most records of a busy topic are for devices nobody here listens to: asking the
        // index first spares decoding them (issue 9).
        let decoded = if index.has_match(topic) { decode() } else { None };
        let Some(message) = decoded else {
            self.metrics.fanout_unmatched.inc();
            locked(fanout).insert(partition, offset + 1);
            return;
        };
        let partitions = i32::try_from(locked(fanout).len()).unwrap_or(i32::MAX);
        let share_route = |share: &str| self.share_route(share, partition, partitions, message.qos);
        let live = read(&self.live);
        // (QoS 0 shared messages only:) a share member that is behind is passed over for
        // one that is not.
        let can_take = |id: ConnId| {
            live.get(&id).is_some_and(|c| {
                !c.tracking.lock().lagging.contains_key(kafka_topic) && c.deliveries.has_room_for(&message)
            })
        };
        let deliveries = index.route_sharing(&message.topic, message.publisher.as_deref(), &share_route, &can_take);
        if !deliveries.is_empty() {
            let message = Arc::new(message);
            let origin = Origin {
                topic: Arc::from(kafka_topic),
                partition,
                offset,
            };
            for delivery in deliveries {
                let Some(connection) = live.get(&delivery.subscriber) else {
                    continue;
                };
                let qos = delivery.qos.min(message.qos);
                let outgoing = Outgoing {
                    message: Arc::clone(&message),
                    origin: Some(origin.clone()),
                    qos,
                    retain: delivery.retain_as_published && message.retain,
                    identifiers: delivery.identifiers,
                    shared: false,
                };
                if qos == 0 {
                    if connection.deliveries.try_send(outgoing).is_err() {
                        self.metrics.dropped.with_label_values(&["queue_full"]).inc();
                    }
                    continue;
                }
                let mut tracking = connection.tracking.lock();
                if tracking.lagging.contains_key(kafka_topic) {
                    continue; // its catch-up reads this record from Kafka
                }
                tracking.count(&origin.topic, partition, offset);
                if connection.deliveries.try_send(outgoing).is_err() {
                    tracking.uncount(&origin.topic, partition, offset);
                    // Behind from here on this topic: the fan-out has not moved past this
                    // record yet, so its positions are exactly where to catch up from.
                    tracking.lagging.insert(kafka_topic.to_owned(), locked(fanout).clone());
                    connection.deliveries.mark_lagging();
                    self.metrics.lagging.inc();
                }
            }
        }
        locked(fanout).insert(partition, offset + 1);
    }

    fn fanout_started(&self, kafka_topic: &str, ends: &[(i32, i64)]) {
        if let Some(fanout) = self.fanout.get(kafka_topic) {
            let mut fanout = locked(fanout);
            for (partition, end) in ends {
                fanout.entry(*partition).or_insert(*end);
            }
        }
    }

    fn retained(&self, topic: &str, message: Option<Message>) {
        self.set_retained(topic, message.map(Arc::new));
    }
}

#[cfg(test)]
mod tests;
