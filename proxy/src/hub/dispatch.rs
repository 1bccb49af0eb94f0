//! The dispatcher of one shared subscription on this process (see `share`): takes the
//! share's QoS 1/2 messages from the hub like a connection would, hands each to a member
//! with room, and keeps the share's cursor in the sessions topic for the messages
//! partitions this process serves for the share.
//!
//! When this process starts serving a partition of the share (the share is new here, a
//! process that served it died or left, or lost its members), it reads the partition
//! again from the stored cursor, so what the previous server's members had not
//! acknowledged is delivered here. It ends when the share has no member here any more,
//! storing the cursor one last time.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::share::{ShareEntry, ShareRuntime};
use super::{ConnId, Hub, Origin, Outgoing, Positions, QueueReceiver, Registration};
use crate::broker::message::now_ms;
use crate::cluster::share_cursor;
use crate::kafka::replay::{Catching, Replayed};

/// Messages the dispatcher holds while no member has room (more wait in its hub queue).
const HOLD: usize = 256;
/// How often ownership and the member count are looked at, and cursors stored.
const TICK: Duration = Duration::from_millis(250);
/// A cursor that did not move is written again this often (see
/// `share_cursor::ORPHAN_AFTER_MS`).
const REFRESH: Duration = Duration::from_secs(60);
/// A cursor that moved is written at most this often.
const SAVE_EVERY: Duration = Duration::from_secs(1);

struct Dispatcher {
    hub: Arc<Hub>,
    entry: Arc<ShareEntry>,
    runtime: ShareRuntime,
    id: ConnId,
    /// The partitions this process serves for the share, per messages topic.
    owned: BTreeMap<String, BTreeSet<i32>>,
    /// The cursors last written, and when.
    saved: HashMap<(String, i32), (i64, Instant)>,
    last_save: Instant,
    /// Taken from the hub queue or a catch-up, not yet handed to a member.
    held: VecDeque<Outgoing>,
    replay: Option<(Arc<str>, Catching)>,
    catch_up_wanted: bool,
}

pub(super) async fn run(hub: Arc<Hub>, entry: Arc<ShareEntry>, registration: Registration, runtime: ShareRuntime) {
    let Registration { id, deliveries, .. } = registration;
    let mut d = Dispatcher {
        hub,
        entry,
        runtime,
        id,
        owned: BTreeMap::new(),
        saved: HashMap::new(),
        last_save: Instant::now(),
        held: VecDeque::new(),
        replay: None,
        catch_up_wanted: false,
    };
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        d.hand_out();
        if d.catch_up_wanted && d.replay.is_none() && deliveries.is_empty() && d.held.is_empty() {
            d.start_catch_up();
        }
        let room = d.held.len() < HOLD;
        tokio::select! {
            _ = tick.tick() => {
                if d.finish_if_memberless().await {
                    return;
                }
                d.refresh_ownership().await;
                d.save_cursors(None, false);
            }
            outgoing = recv(&deliveries), if room && d.replay.is_none() => d.held.push_back(outgoing),
            replayed = recv_replay(&mut d.replay), if room => d.on_replayed(replayed),
            () = d.entry.room.notified() => {}
            () = deliveries.lagging() => d.catch_up_wanted = true,
        }
    }
}

impl Dispatcher {
    /// Hands what it holds to members with room: messages of members that left first.
    fn hand_out(&mut self) {
        loop {
            let returned = self
                .entry
                .returned
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .pop_front();
            let (outgoing, was_returned) = match returned {
                Some(outgoing) => (outgoing, true),
                None => match self.held.pop_front() {
                    Some(outgoing) => (outgoing, false),
                    None => return,
                },
            };
            if let Err(outgoing) = self.hub.offer(&self.entry, outgoing) {
                if was_returned {
                    self.entry
                        .returned
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push_front(outgoing);
                } else {
                    self.held.push_front(outgoing);
                }
                return;
            }
        }
    }

    /// Ends the dispatcher when the share has no member here (storing where it stands
    /// first); true when it ended.
    async fn finish_if_memberless(&mut self) -> bool {
        if self.hub.share_members(&self.entry.name) > 0 {
            return false;
        }
        // Taken before the dispatcher is forgotten: afterwards the hub has no positions
        // for it, and what it held would count as done.
        let positions = self.hub.positions(self.id);
        if !self.hub.end_dispatcher(&self.entry) {
            return false;
        }
        self.save_cursors(Some(positions), true);
        true
    }

    /// Looks at which partitions of the share this process serves now; reads each one it
    /// did not serve before again from the share's stored cursor.
    async fn refresh_ownership(&mut self) {
        let sessions = Arc::clone(&self.runtime.sessions);
        let share = Arc::clone(&self.entry.name);
        let mut gained = Vec::new();
        for topic in self.hub.share_topics(&share) {
            let owned = self.owned.entry(topic.clone()).or_default();
            let fanout_at = self.hub.fanout_partitions(&topic);
            let partitions = i32::try_from(fanout_at.len()).unwrap_or(i32::MAX);
            for (partition, fanout) in fanout_at {
                if sessions.share_here(&share, partition, partitions) {
                    if owned.insert(partition) {
                        gained.push((topic.clone(), partition, fanout));
                    }
                } else if owned.remove(&partition) {
                    tracing::debug!(%share, %topic, partition, "share partition served elsewhere now");
                }
            }
        }
        if gained.is_empty() {
            return;
        }
        if let Err(error) = sessions.read_share_cursors(&share).await {
            tracing::warn!(%share, %error, "share cursors not read up to date; resuming from what is known");
        }
        let live = sessions.live();
        let hub = Arc::clone(&self.hub);
        let held_elsewhere = sessions.share_held_elsewhere(&share, &|client_id| hub.is_connected(client_id));
        let now = now_ms();
        for (topic, partition, fanout) in gained {
            let cursor = sessions.share_cursor(&share, &topic, partition);
            let owner_live = cursor.as_ref().is_some_and(|c| live.contains(&c.owner));
            let Some(from) = share_cursor::resume_at(cursor.as_ref(), fanout, now, owner_live, held_elsewhere) else {
                continue;
            };
            if self.hub.lag_from(self.id, &topic, partition, from) {
                self.hub.metrics.share_resumes.inc();
                tracing::info!(%share, %topic, partition, from, to = fanout, "share partition taken over: reading it again from its cursor");
            }
        }
    }

    /// Writes the cursor of each partition served here that moved (or is due for a
    /// refresh, or all when `force`), at most every [`SAVE_EVERY`].
    fn save_cursors(&mut self, positions: Option<Positions>, force: bool) {
        if !force && self.last_save.elapsed() < SAVE_EVERY {
            return;
        }
        self.last_save = Instant::now();
        let positions = positions.unwrap_or_else(|| self.hub.positions(self.id));
        for (topic, offsets) in positions {
            let Some(owned) = self.owned.get(&topic) else { continue };
            let partitions = i32::try_from(offsets.len()).unwrap_or(i32::MAX);
            for (partition, offset) in offsets {
                // Asked again now: a process that no longer serves a partition must not
                // move the cursor of the one that does.
                let here = self
                    .runtime
                    .sessions
                    .share_here(&self.entry.name, partition, partitions);
                if !owned.contains(&partition) || !here {
                    continue;
                }
                let key = (topic.clone(), partition);
                let unchanged = self
                    .saved
                    .get(&key)
                    .is_some_and(|(at, when)| *at == offset && when.elapsed() < REFRESH);
                if unchanged && !force {
                    continue;
                }
                match self
                    .runtime
                    .sessions
                    .store_share_cursor(&self.entry.name, &topic, partition, offset)
                {
                    Ok(written) => {
                        let share = Arc::clone(&self.entry.name);
                        tokio::spawn(async move {
                            if let Err(error) = written.await {
                                tracing::warn!(%share, %error, "share cursor not stored");
                            }
                        });
                        self.saved.insert(key, (offset, Instant::now()));
                    }
                    Err(error) => tracing::warn!(share = %self.entry.name, %error, "share cursor not stored"),
                }
            }
        }
    }

    /// Takes the lag off one topic and reads what it missed from Kafka.
    fn start_catch_up(&mut self) {
        let Some(catch_up) = self.hub.rejoin(self.id) else {
            self.catch_up_wanted = false;
            return;
        };
        tracing::debug!(share = %self.entry.name, topic = %catch_up.topic, from = ?catch_up.from, to = ?catch_up.to, "share catching up from Kafka");
        self.replay_range(&catch_up.topic, catch_up.from, catch_up.to);
    }

    fn replay_range(&mut self, topic: &str, from: BTreeMap<i32, i64>, to: BTreeMap<i32, i64>) {
        let share = Arc::clone(&self.entry.name);
        let wants = Box::new(move |key: &str| Hub::share_wants(&share, key));
        let reader = self.runtime.replayer.replay(topic.to_owned(), self.id, from, to, wants);
        self.replay = Some((Arc::from(topic), reader));
    }

    /// One record of the catch-up (or its end, `None`).
    fn on_replayed(&mut self, replayed: Option<Replayed>) {
        let Some(topic) = self.replay.as_ref().map(|(topic, _)| Arc::clone(topic)) else {
            return;
        };
        let Some(Replayed {
            partition,
            offset,
            message,
        }) = replayed
        else {
            let complete = self
                .replay
                .as_ref()
                .is_some_and(|(_, c)| c.complete.load(std::sync::atomic::Ordering::Acquire));
            match self.hub.replay_remaining(self.id, &topic).filter(|_| !complete) {
                Some((from, to)) => self.replay_range(&topic, from, to),
                None => {
                    self.hub.replay_done(self.id, &topic);
                    self.replay = None;
                }
            }
            return;
        };
        let served_here = self.owned.get(&*topic).is_some_and(|o| o.contains(&partition));
        if let Some(message) =
            message.filter(|m| served_here && m.qos > 0 && Hub::share_wants(&self.entry.name, &m.topic))
        {
            let origin = Origin {
                topic: Arc::clone(&topic),
                partition,
                offset,
            };
            self.hub.track(self.id, &origin);
            let qos = message.qos;
            self.held.push_back(Outgoing {
                message: Arc::new(message),
                origin: Some(origin),
                qos,
                retain: false,
                identifiers: Vec::new(),
                shared: true,
            });
        }
        self.hub.replayed_to(self.id, &topic, partition, offset + 1);
    }
}

/// The next message of the hub queue (pending forever once the queue is closed: the
/// dispatcher ends by its tick).
async fn recv(deliveries: &QueueReceiver) -> Outgoing {
    match deliveries.recv().await {
        Some(outgoing) => outgoing,
        None => std::future::pending().await,
    }
}

/// The next record of the catch-up under way (pending forever when there is none).
async fn recv_replay(replay: &mut Option<(Arc<str>, Catching)>) -> Option<Replayed> {
    match replay {
        Some((_, catching)) => catching.records.recv().await,
        None => std::future::pending().await,
    }
}
