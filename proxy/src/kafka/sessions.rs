//! The sessions topic: a materialised view of every session (one compacted record per
//! client id, see `broker::session`), the writer that stores a session before the client
//! is told anything that depends on it, and the watch that tells a connection its session
//! was taken over by a CONNECT on another process.
//!
//! Every process reads every partition, so any process can serve any client (MQTT 3.1.1
//! clients cannot be redirected); records of an older generation than the one in the view
//! are stale and ignored, so a slow or partitioned writer cannot fork a session.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use tokio::sync::oneshot;

use crate::broker::message::now_ms;
use crate::broker::session::{DecodeError, SessionState};
use crate::cluster::membership::{self, Heartbeat, Membership, ServerReferences};
use crate::cluster::ownership;
use crate::cluster::share_cursor::{self, ShareCursor};
use crate::kafka::partitioner::partition_for;
use crate::kafka::producer::{PublishError, Publisher};
use crate::latch::Latch;

/// A session could not be read or stored.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Kafka(#[from] PublishError),
    #[error("the sessions topic {topic} was not read up to date within {waited:?}")]
    NotCaughtUp { topic: String, waited: Duration },
    #[error("session {client_id} generation {generation} was superseded by a newer CONNECT")]
    Superseded { client_id: String, generation: u64 },
}

fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section is a single map operation: a poisoned lock holds consistent data.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// A connection's interest in its own session: told when a newer generation appears.
struct Watcher {
    generation: u64,
    taken_over: Arc<Latch<()>>,
}

/// The server of each messages partition of one share.
type ShareServers = Arc<Vec<String>>;

/// Per offset, who waits for the reader to pass it.
type Waiters = BTreeMap<i64, Vec<oneshot::Sender<()>>>;

/// The view of the sessions topic, and the way to write it.
pub struct SessionStore {
    /// This process's instance id: the sessions it hosts are re-asserted when a stale
    /// record lands after theirs.
    instance: String,
    topic: String,
    partitions: i32,
    publisher: Arc<Publisher>,
    /// Behind an `Arc`: the table's slots are as large as its values (and a table of
    /// 10 000 sessions has thousands of empty slots), and the connection of a session holds
    /// the same state as long as it has not changed it since it stored it, instead of a
    /// copy of its own (issue 9).
    sessions: RwLock<HashMap<String, Arc<SessionState>>>,
    /// The offset the reader reads next, per partition.
    read_up_to: Mutex<BTreeMap<i32, i64>>,
    /// CONNECTs waiting for the reader to pass an offset, per partition and offset: each
    /// is woken once, when the reader passes its offset (not on every record read, which
    /// in a reconnect storm woke every waiter for every record).
    waiting: Mutex<HashMap<i32, Waiters>>,
    watchers: Mutex<HashMap<String, Watcher>>,
    loaded: AtomicBool,
    /// Records that were not sessions this version can read.
    skipped: Mutex<u64>,
    /// The processes heard of through their heartbeats.
    membership: Mutex<Membership>,
    /// Whether this process has left (SIGTERM). Held while a heartbeat or the departure
    /// is queued, so that no heartbeat follows the departure into Kafka (which would make
    /// the others count this process live again while it hands its clients to them).
    departed: Mutex<bool>,
    /// Signalled when the departure of another process is read, so that this one
    /// announces at once that it no longer counts it (the leaver waits for that).
    departure_read: tokio::sync::Notify,
    /// Per share, the live processes with members of it (sorted); refreshed with every
    /// heartbeat, read for every record of a share.
    share_servers: RwLock<HashMap<String, Vec<String>>>,
    /// Per share, the server of each messages partition (and for how many partitions);
    /// computed when first asked after each change of `share_servers`.
    share_assignments: RwLock<HashMap<String, (i32, ShareServers)>>,
    /// CONNECTs waiting for the end of a partition (see `end_of`).
    end_waiters: Mutex<HashMap<i32, EndWaiters>>,
    /// The shares' cursors by (share, messages topic, partition).
    share_cursors: Mutex<HashMap<(String, String, i32), ShareCursor>>,
}

/// The CONNECTs waiting for one partition's end, and whether a request is under way.
#[derive(Default)]
struct EndWaiters {
    waiters: Vec<oneshot::Sender<Result<i64, String>>>,
    asking: bool,
}

impl SessionStore {
    pub fn new(instance: &str, topic: &str, partitions: i32, publisher: Arc<Publisher>) -> Self {
        Self {
            instance: instance.to_owned(),
            topic: topic.to_owned(),
            partitions: partitions.max(1),
            publisher,
            sessions: RwLock::new(HashMap::new()),
            read_up_to: Mutex::new(BTreeMap::new()),
            waiting: Mutex::new(HashMap::new()),
            watchers: Mutex::new(HashMap::new()),
            loaded: AtomicBool::new(false),
            skipped: Mutex::new(0),
            membership: Mutex::new(Membership::default()),
            departed: Mutex::new(false),
            departure_read: tokio::sync::Notify::new(),
            share_servers: RwLock::new(HashMap::new()),
            share_assignments: RwLock::new(HashMap::new()),
            end_waiters: Mutex::new(HashMap::new()),
            share_cursors: Mutex::new(HashMap::new()),
        }
    }

    /// Whether this process serves the records of messages partition `partition` (of
    /// `partitions`) to its members of `share`: one process of those with members does,
    /// the same one on every process. Before any heartbeat says who has members, every
    /// process serves its own.
    pub fn share_here(&self, share: &str, partition: i32, partitions: i32) -> bool {
        // Asked for every record of a share: no allocation on the way.
        let cached = self
            .share_assignments
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(share)
            .filter(|(count, _)| *count == partitions)
            .map(|(_, servers)| Arc::clone(servers));
        let servers = match cached {
            Some(servers) => servers,
            None => {
                let candidates = self.share_servers.read().unwrap_or_else(|e| e.into_inner());
                let Some(candidates) = candidates.get(share).filter(|c| !c.is_empty()) else {
                    return true;
                };
                let candidates: Vec<&str> = candidates.iter().map(String::as_str).collect();
                let servers = Arc::new(ownership::share_servers(&candidates, share, partitions));
                self.share_assignments
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(share.to_owned(), (partitions, Arc::clone(&servers)));
                servers
            }
        };
        usize::try_from(partition)
            .ok()
            .and_then(|p| servers.get(p))
            .is_none_or(|server| *server == self.instance)
    }

    /// The stored cursor of `share` in `topic` / `partition`.
    pub fn share_cursor(&self, share: &str, topic: &str, partition: i32) -> Option<ShareCursor> {
        locked(&self.share_cursors)
            .get(&(share.to_owned(), topic.to_owned(), partition))
            .cloned()
    }

    /// Writes the cursor of `share` in `topic` / `partition` (this process serves it
    /// there) now, so that cursors written one after another land in that order; the
    /// future resolves once Kafka acknowledged it.
    pub fn store_share_cursor(
        &self,
        share: &str,
        topic: &str,
        partition: i32,
        offset: i64,
    ) -> Result<impl Future<Output = Result<(), PublishError>> + Send + 'static + use<>, PublishError> {
        let cursor = ShareCursor {
            version: 1,
            share: share.to_owned(),
            topic: topic.to_owned(),
            partition,
            offset,
            owner: self.instance.clone(),
            at_ms: now_ms(),
        };
        let key = ShareCursor::key(share, topic, partition);
        // All cursors of a share in one sessions partition: one wait reads them all.
        let written =
            self.publisher
                .enqueue_keyed(&self.topic, self.partition_of(share), &key, Some(&cursor.encode()))?;
        locked(&self.share_cursors).insert((share.to_owned(), topic.to_owned(), partition), cursor);
        Ok(written)
    }

    /// Waits until the view holds every cursor of `share` written before this call.
    pub async fn read_share_cursors(self: &Arc<Self>, share: &str) -> Result<(), SessionError> {
        self.catch_up(share).await
    }

    /// Whether a session that `connected_here` does not list (its client is offline, or on
    /// another process) holds a subscription to `share`.
    pub fn share_held_elsewhere(&self, share: &str, connected_here: &dyn Fn(&str) -> bool) -> bool {
        self.sessions
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .any(|s| !connected_here(&s.client_id) && s.subscriptions.iter().any(|sub| sub.filter == share))
    }

    /// Recomputes which live process has members of which share.
    fn refresh_shares(&self) {
        let membership = locked(&self.membership);
        let mut servers: HashMap<String, Vec<String>> = HashMap::new();
        for heartbeat in membership.live(std::time::Instant::now(), now_ms()) {
            for share in &heartbeat.shares {
                servers
                    .entry(share.clone())
                    .or_default()
                    .push(heartbeat.instance.clone());
            }
        }
        drop(membership);
        for candidates in servers.values_mut() {
            candidates.sort();
        }
        let mut current = self.share_servers.write().unwrap_or_else(|e| e.into_inner());
        if *current != servers {
            *current = servers;
            self.share_assignments
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .clear();
        }
    }

    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// The live processes (instance ids, sorted).
    pub fn live(&self) -> Vec<String> {
        locked(&self.membership)
            .live(std::time::Instant::now(), now_ms())
            .into_iter()
            .map(|h| h.instance.clone())
            .collect()
    }

    /// The owner of each sessions-topic partition among the live processes, leaving out
    /// `without` (a process on its way out).
    pub fn owners(&self, without: Option<&str>) -> Vec<String> {
        let live = self.live();
        let live: Vec<&str> = live
            .iter()
            .map(String::as_str)
            .filter(|i| Some(*i) != without)
            .collect();
        ownership::assign(self.partitions, &live)
    }

    /// The server reference `instance` announced for clients of listener `listener`.
    pub fn reference_of(&self, instance: &str, listener: &str) -> Option<String> {
        locked(&self.membership)
            .get(instance)
            .and_then(|h| h.reference_for(listener))
    }

    /// Announces this process (its server references, if it has any) and waits for Kafka.
    /// Once it has left, nothing is written.
    pub async fn heartbeat(&self, references: &ServerReferences, shares: Vec<String>) -> Result<(), SessionError> {
        let written = {
            let departed = locked(&self.departed);
            if *departed {
                return Ok(());
            }
            let mut live = self.live();
            if !live.contains(&self.instance) {
                live.push(self.instance.clone());
                live.sort();
            }
            let heartbeat = Heartbeat {
                version: 1,
                instance: self.instance.clone(),
                server_reference: references.default.clone(),
                server_references: references.by_listener.clone(),
                at_ms: now_ms(),
                shares,
                live: Some(live),
            };
            let key = Heartbeat::key(&self.instance);
            let written =
                self.publisher
                    .enqueue_keyed(&self.topic, self.partition_of(&key), &key, Some(&heartbeat.encode()))?;
            locked(&self.membership).apply(&self.instance, Some(heartbeat), std::time::Instant::now());
            written
        };
        self.refresh_shares();
        written.await?;
        Ok(())
    }

    /// Tells the other processes this one is leaving, so that its partitions move now.
    /// No heartbeat is written after it.
    pub async fn leave(&self) -> Result<(), SessionError> {
        let written = {
            let mut departed = locked(&self.departed);
            *departed = true;
            let key = Heartbeat::key(&self.instance);
            let written = self
                .publisher
                .enqueue_keyed(&self.topic, self.partition_of(&key), &key, None)?;
            locked(&self.membership).apply(&self.instance, None, std::time::Instant::now());
            written
        };
        // It serves no share from now on: the others resume from the cursors.
        self.refresh_shares();
        written.await?;
        Ok(())
    }

    /// The live processes that still count this one (after [`Self::leave`]): they would
    /// send its clients back to it.
    pub fn unaware_of_departure(&self) -> Vec<String> {
        locked(&self.membership).unaware_of_departure(&self.instance, std::time::Instant::now(), now_ms())
    }

    /// Resolves when the departure of another process has been read since the last call.
    pub async fn departure_read(&self) {
        self.departure_read.notified().await;
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The sessions-topic partition of `client_id` (the Java client's murmur2).
    pub fn partition_of(&self, client_id: &str) -> i32 {
        partition_for(client_id.as_bytes(), self.partitions)
    }

    /// The stored session of `client_id`, if any.
    pub fn get(&self, client_id: &str) -> Option<SessionState> {
        self.sessions
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(client_id)
            .map(|state| SessionState::clone(state))
    }

    /// How many sessions the view holds.
    pub fn len(&self) -> usize {
        self.sessions.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the view has been read up to the end the topic had at start-up.
    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    pub fn set_loaded(&self) {
        self.loaded.store(true, Ordering::Release);
    }

    /// Records the reader could not use.
    pub fn skipped(&self) -> u64 {
        *locked(&self.skipped)
    }

    /// Waits until the view holds everything written to `partition` before `end`.
    pub async fn wait_read(&self, partition: i32, end: i64, within: Duration) -> Result<(), SessionError> {
        let passed = {
            // Registered under the reader's lock, so `read_to` cannot pass `end` unseen.
            let read = locked(&self.read_up_to);
            if end <= 0 || read.get(&partition).is_some_and(|at| *at >= end) {
                return Ok(());
            }
            let (tx, rx) = oneshot::channel();
            locked(&self.waiting)
                .entry(partition)
                .or_default()
                .entry(end)
                .or_default()
                .push(tx);
            rx
        };
        match tokio::time::timeout(within, passed).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(SessionError::NotCaughtUp {
                topic: self.topic.clone(),
                waited: within,
            }),
        }
    }

    /// Where the reader is in `partition` (the offset it reads next).
    pub fn read_up_to(&self, partition: i32) -> i64 {
        locked(&self.read_up_to).get(&partition).copied().unwrap_or(0)
    }

    /// The reader is at `next` in `partition` (after a record, or a gap compaction left).
    pub fn read_to(&self, partition: i32, next: i64) {
        let mut read = locked(&self.read_up_to);
        let at = read.entry(partition).or_insert(0);
        if next > *at {
            *at = next;
            let passed = match locked(&self.waiting).get_mut(&partition) {
                Some(waiting) => {
                    let later = waiting.split_off(&(next + 1));
                    std::mem::replace(waiting, later)
                }
                None => BTreeMap::new(),
            };
            drop(read);
            for waiter in passed.into_values().flatten() {
                let _ = waiter.send(());
            }
        }
    }

    /// Applies one record of the sessions topic: a session, or a tombstone (`None`).
    /// A value that is no session is skipped (counted in [`Self::skipped`]) and returned as
    /// the error, for the reader to report with where it is.
    pub fn apply(&self, client_id: &str, value: Option<&[u8]>) -> Result<(), DecodeError> {
        if let Some((share, topic, partition)) = share_cursor::cursor_of_key(client_id) {
            let key = (share.to_owned(), topic.to_owned(), partition);
            match value.map(ShareCursor::decode) {
                Some(Ok(cursor)) => {
                    locked(&self.share_cursors).insert(key, cursor);
                }
                None => {
                    locked(&self.share_cursors).remove(&key);
                }
                Some(Err(error)) => {
                    *locked(&self.skipped) += 1;
                    return Err(DecodeError::Json(error));
                }
            }
            return Ok(());
        }
        if let Some(instance) = membership::member_of_key(client_id) {
            let heartbeat = value.and_then(|v| serde_json::from_slice::<Heartbeat>(v).ok());
            // Our own departure read back must not undo a later heartbeat of a restart.
            if heartbeat.is_some() || instance != self.instance {
                let mut membership = locked(&self.membership);
                let departed = heartbeat.is_none() && membership.get(instance).is_some();
                membership.apply(instance, heartbeat, std::time::Instant::now());
                drop(membership);
                if departed {
                    self.departure_read.notify_one();
                }
            }
            return Ok(());
        }
        let Some(value) = value else {
            self.sessions
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .remove(client_id);
            return Ok(());
        };
        let state = match SessionState::decode(value) {
            Ok(state) => state,
            Err(error) => {
                *locked(&self.skipped) += 1;
                return Err(error);
            }
        };
        if let Some(newer) = self.put(Arc::new(state)) {
            // A stale writer's record landed after the newer one: compaction would keep
            // the stale one, so the process that holds the newer one writes it again.
            if newer.host.as_deref() == Some(self.instance.as_str()) {
                let partition = self.partition_of(&newer.client_id);
                let value = newer.encode();
                match self
                    .publisher
                    .enqueue_keyed(&self.topic, partition, &newer.client_id, Some(&value))
                {
                    Ok(written) => {
                        tokio::spawn(async move {
                            if let Err(error) = written.await {
                                tracing::warn!(%error, "session not re-asserted over a stale record");
                            }
                        });
                    }
                    Err(error) => tracing::warn!(%error, "session not re-asserted over a stale record"),
                }
            }
        }
        Ok(())
    }

    /// Puts a state in the view unless the view has a newer generation already (returned
    /// then); tells a watcher of an older generation that its session was taken over. A
    /// state equal to the one in the view (a record of ours read back) leaves that one
    /// there: its connection may share it.
    fn put(&self, state: Arc<SessionState>) -> Option<SessionState> {
        let generation = state.generation;
        let client_id = state.client_id.clone();
        {
            let mut sessions = self.sessions.write().unwrap_or_else(|e| e.into_inner());
            match sessions.get(&client_id) {
                Some(newer) if newer.generation > generation => return Some(SessionState::clone(newer)),
                Some(same) if Arc::ptr_eq(same, &state) || **same == *state => {}
                _ => {
                    sessions.insert(client_id.clone(), state);
                }
            }
        }
        if let Some(watcher) = locked(&self.watchers).get(&client_id)
            && watcher.generation < generation
        {
            watcher.taken_over.raise(());
        }
        None
    }

    /// Every session of the view.
    pub fn all(&self) -> Vec<SessionState> {
        self.sessions
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|state| SessionState::clone(state))
            .collect()
    }

    /// The sessions whose last host is `instance`.
    pub fn hosted_by(&self, instance: &str) -> Vec<SessionState> {
        self.sessions
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|s| s.host.as_deref() == Some(instance))
            .map(|state| SessionState::clone(state))
            .collect()
    }

    /// Reads the topic's end for `client_id`'s partition and waits until the view holds it,
    /// so that a CONNECT sees what any process wrote before it.
    pub async fn catch_up(self: &Arc<Self>, client_id: &str) -> Result<(), SessionError> {
        let partition = self.partition_of(client_id);
        let end = self.end_of(partition).await?;
        self.wait_read(partition, end, Duration::from_secs(5)).await
    }

    /// The end of `partition`, asked of Kafka after this call began. CONNECTs that wait at
    /// the same time share one request (a reconnect storm would otherwise send one per
    /// client): each request answers everyone who was waiting when it started.
    async fn end_of(self: &Arc<Self>, partition: i32) -> Result<i64, SessionError> {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut waiting = locked(&self.end_waiters);
            let entry = waiting.entry(partition).or_default();
            entry.waiters.push(tx);
            !std::mem::replace(&mut entry.asking, true)
        };
        if start {
            let store = Arc::clone(self);
            tokio::spawn(async move {
                loop {
                    let waiters = {
                        let mut waiting = locked(&store.end_waiters);
                        let entry = waiting.entry(partition).or_default();
                        if entry.waiters.is_empty() {
                            entry.asking = false;
                            return;
                        }
                        std::mem::take(&mut entry.waiters)
                    };
                    let end = store
                        .publisher
                        .high_watermark(&store.topic, partition)
                        .await
                        .map_err(|e| e.to_string());
                    for waiter in waiters {
                        let _ = waiter.send(end.clone());
                    }
                }
            });
        }
        match rx.await {
            Ok(Ok(end)) => Ok(end),
            _ => Err(SessionError::NotCaughtUp {
                topic: self.topic.clone(),
                waited: Duration::from_secs(5),
            }),
        }
    }

    /// Stores `state` and waits for Kafka's acknowledgement; the view has it at once.
    pub async fn store(&self, state: &SessionState) -> Result<(), SessionError> {
        self.store_shared(&Arc::new(state.clone())).await
    }

    /// As [`Self::store`], and the view keeps `state` itself: a connection that holds it
    /// shares it with the view until it changes it.
    pub async fn store_shared(&self, state: &Arc<SessionState>) -> Result<(), SessionError> {
        let newer_stored = self
            .sessions
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&state.client_id)
            .is_some_and(|s| s.generation > state.generation);
        if newer_stored {
            return Err(SessionError::Superseded {
                client_id: state.client_id.clone(),
                generation: state.generation,
            });
        }
        let partition = self.partition_of(&state.client_id);
        let value = state.encode();
        let written = self
            .publisher
            .enqueue_keyed(&self.topic, partition, &state.client_id, Some(&value))?;
        let _ = self.put(Arc::clone(state));
        written.await?;
        Ok(())
    }

    /// Deletes the session of `client_id` written by `generation` (a tombstone), unless a
    /// newer generation took it over meanwhile.
    pub async fn delete(&self, client_id: &str, generation: u64) -> Result<(), SessionError> {
        if self.get(client_id).is_some_and(|s| s.generation > generation) {
            return Ok(());
        }
        let partition = self.partition_of(client_id);
        let written = self.publisher.enqueue_keyed(&self.topic, partition, client_id, None)?;
        self.sessions
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(client_id);
        written.await?;
        Ok(())
    }

    /// Becomes true when a CONNECT of `client_id` newer than `generation` is stored by
    /// any process.
    pub fn watch(&self, client_id: &str, generation: u64) -> Arc<Latch<()>> {
        let taken_over = Latch::new();
        let receiver = Arc::clone(&taken_over);
        locked(&self.watchers).insert(client_id.to_owned(), Watcher { generation, taken_over });
        receiver
    }

    /// Forgets the watch of `generation` (a newer one of the same client stays).
    pub fn unwatch(&self, client_id: &str, generation: u64) {
        let mut watchers = locked(&self.watchers);
        if watchers.get(client_id).is_some_and(|w| w.generation == generation) {
            watchers.remove(client_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::session::{ConnectRequest, connect};

    fn store() -> SessionStore {
        let publisher = Publisher::new(
            "127.0.0.1:1",
            &[],
            "r",
            Duration::from_secs(1),
            crate::kafka::security::SecurityWatch::new(),
        )
        .expect("producer");
        SessionStore::new("p9", "s", 3, Arc::new(publisher))
    }

    fn state(generation: u64) -> SessionState {
        let mut state = connect(
            None,
            ConnectRequest {
                client_id: "c".into(),
                clean_start: false,
                expiry_secs: 60,
                protocol: 5,
                will: None,
                host: "p0".into(),
            },
            0,
        )
        .state;
        state.generation = generation;
        state
    }

    #[test]
    fn a_record_of_an_older_generation_is_ignored() {
        let s = store();
        s.apply("c", Some(&state(3).encode())).expect("a session");
        s.apply("c", Some(&state(2).encode())).expect("a session");
        assert_eq!(s.get("c").map(|s| s.generation), Some(3));
        s.apply("c", None).expect("a tombstone");
        assert!(s.get("c").is_none());
        assert!(s.apply("c", Some(b"not json")).is_err());
        assert_eq!(s.skipped(), 1);
    }

    #[test]
    fn a_state_read_back_unchanged_stays_shared_with_its_connection() {
        let s = store();
        let mine = Arc::new(state(2));
        assert!(s.put(Arc::clone(&mine)).is_none());
        // Our own record read back from Kafka: equal, so the shared state stays.
        s.apply("c", Some(&state(2).encode())).expect("a session");
        let held = |s: &SessionStore| Arc::clone(s.sessions.read().expect("view").get("c").expect("held"));
        assert!(
            Arc::ptr_eq(&held(&s), &mine),
            "one state for the view and the connection"
        );
        // A changed state of the same generation replaces it.
        let mut changed = state(2);
        changed.expiry_secs = 600;
        s.apply("c", Some(&changed.encode())).expect("a session");
        assert!(!Arc::ptr_eq(&held(&s), &mine));
        assert_eq!(s.get("c").map(|s| s.expiry_secs), Some(600));
    }

    #[test]
    fn a_newer_generation_tells_the_watcher_of_the_older_one() {
        let s = store();
        let watcher = s.watch("c", 2);
        s.apply("c", Some(&state(2).encode())).expect("a session");
        assert!(watcher.get().is_none());
        s.apply("c", Some(&state(3).encode())).expect("a session");
        assert!(watcher.get().is_some());
    }

    #[tokio::test]
    async fn waiting_for_the_reader_ends_when_it_passed_the_end() {
        let s = Arc::new(store());
        let waiting = {
            let s = Arc::clone(&s);
            tokio::spawn(async move { s.wait_read(1, 5, Duration::from_secs(5)).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        s.read_to(1, 3);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "woken before the reader passed 5");
        s.read_to(1, 5);
        assert!(waiting.await.expect("joins").is_ok());
        assert!(
            locked(&s.waiting).values().all(BTreeMap::is_empty),
            "no waiter left behind"
        );
        assert!(s.wait_read(2, 1, Duration::from_millis(10)).await.is_err());
    }
}
