//! Shared subscriptions (`$share/{group}/{filter}`) on this process.
//!
//! A share with members here gets a *dispatcher* (see `dispatch`): a subscriber of the
//! hub like a connection (same queue, same tracking of what is not complete, same lagging
//! and catch-up from Kafka) that hands each QoS 1/2 message on to one member with room,
//! round-robin. What a member was handed stays the share's until the member acknowledges
//! it: if the member goes away first, it goes to another member ([`Shares::member_gone`]).
//! So the share's position in Kafka — its cursor, which the dispatcher stores — never
//! passes a message no member acknowledged, whoever the members are and whichever
//! process serves them. QoS 0 messages go straight to a member, as before.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::Notify;

use super::{ConnId, Hub, Origin, Outgoing, Positions, locked, read, write};
use crate::broker::subscriptions::ShareRoute;
use crate::kafka::replay::Replayer;
use crate::kafka::sessions::SessionStore;

/// What shared subscriptions need of the Kafka side: who serves which partition of a share
/// and its stored cursors (`sessions`), and catch-ups (`replayer`).
#[derive(Clone)]
pub struct ShareRuntime {
    pub sessions: Arc<SessionStore>,
    pub replayer: Arc<Replayer>,
}

/// Unacknowledged messages one member may hold of a share: enough to keep it busy, few
/// enough that the others get their turn and that little goes round again when it leaves.
const MEMBER_WINDOW: usize = 64;

/// One share with members here.
pub(super) struct ShareEntry {
    /// `$share/{group}/{filter}`.
    pub name: Arc<str>,
    /// The dispatcher's subscriber id in the hub.
    pub dispatcher: ConnId,
    /// Woken when a member may take more: it acknowledged one, joined, or left.
    pub room: Notify,
    /// Messages of members that went away without acknowledging them: handed on first.
    pub returned: Mutex<VecDeque<Outgoing>>,
    /// Counts SUBSCRIBEs to the share, so that a dispatcher ending for want of members
    /// does not miss one that came meanwhile.
    joins: AtomicU64,
}

/// A message a member holds for a share.
struct Handed {
    entry: Arc<ShareEntry>,
    /// As the dispatcher had it (before the member's grant applied).
    outgoing: Outgoing,
}

#[derive(Default)]
pub(super) struct Shares {
    by_name: RwLock<HashMap<Arc<str>, Arc<ShareEntry>>>,
    /// Per member, what it holds for shares, by record.
    handed: Mutex<HashMap<ConnId, HashMap<Origin, Vec<Handed>>>>,
    /// How many messages `handed` holds (at least: counted before they are handed), so
    /// that completions on a process without shares do not take its lock.
    handed_count: AtomicUsize,
}

impl Shares {
    /// The dispatcher of `share`, if it has one here.
    pub(super) fn dispatcher_of(&self, share: &str) -> Option<ConnId> {
        read(&self.by_name).get(share).map(|e| e.dispatcher)
    }

    /// Member `id` completed the delivery of `origin`: the dispatcher whose message it was,
    /// if it was a share's.
    pub(super) fn completed(&self, id: ConnId, origin: &Origin) -> Option<ConnId> {
        if self.handed_count.load(Ordering::Acquire) == 0 {
            return None;
        }
        let handed = {
            let mut handed = locked(&self.handed);
            let held = handed.get_mut(&id)?;
            let list = held.get_mut(origin)?;
            let one = list.pop()?;
            if list.is_empty() {
                held.remove(origin);
            }
            if held.is_empty() {
                handed.remove(&id);
            }
            self.handed_count.fetch_sub(1, Ordering::AcqRel);
            one
        };
        handed.entry.room.notify_one();
        Some(handed.entry.dispatcher)
    }

    /// Member `id` is gone: what it held goes back to its shares, to be handed on; how
    /// many messages that was.
    pub(super) fn member_gone(&self, id: ConnId) -> u64 {
        let held = locked(&self.handed).remove(&id).unwrap_or_default();
        let mut count = 0;
        for handed in held.into_values().flatten() {
            locked(&handed.entry.returned).push_back(handed.outgoing);
            count += 1;
        }
        self.handed_count
            .fetch_sub(usize::try_from(count).unwrap_or(0), Ordering::AcqRel);
        self.wake_all();
        count
    }

    /// Tells every dispatcher to look at its members again.
    pub(super) fn wake_all(&self) {
        for entry in read(&self.by_name).values() {
            entry.room.notify_one();
        }
    }

    fn held_by(&self, handed: &HashMap<ConnId, HashMap<Origin, Vec<Handed>>>, id: ConnId) -> usize {
        handed.get(&id).map_or(0, |h| h.values().map(Vec::len).sum())
    }
}

impl Hub {
    /// Where a message of `share` from messages partition `partition` (of `partitions`),
    /// published at `qos`, goes on this process.
    pub(super) fn share_route(&self, share: &str, partition: i32, partitions: i32, qos: u8) -> ShareRoute<ConnId> {
        let Some(runtime) = self.share_runtime.get() else {
            return ShareRoute::Member;
        };
        if !runtime.sessions.share_here(share, partition, partitions) {
            return ShareRoute::Elsewhere;
        }
        if qos == 0 {
            return ShareRoute::Member;
        }
        self.shares
            .dispatcher_of(share)
            .map_or(ShareRoute::Member, ShareRoute::Via)
    }

    /// Gives `share` a dispatcher here if it has none (its first member just subscribed).
    pub(super) fn start_dispatcher(self: &Arc<Self>, share: &str) {
        let Some(runtime) = self.share_runtime.get() else {
            return;
        };
        let mut by_name = write(&self.shares.by_name);
        if let Some(entry) = by_name.get(share) {
            entry.joins.fetch_add(1, Ordering::AcqRel);
            entry.room.notify_one();
            return;
        }
        let registration = self.register_as(share, false, Arc::from(""), &Positions::new(), true);
        let entry = Arc::new(ShareEntry {
            name: Arc::from(share),
            dispatcher: registration.id,
            room: Notify::new(),
            returned: Mutex::new(VecDeque::new()),
            joins: AtomicU64::new(0),
        });
        by_name.insert(Arc::clone(&entry.name), Arc::clone(&entry));
        drop(by_name);
        self.metrics.share_dispatchers.inc();
        tracing::debug!(%share, "share dispatcher started");
        tokio::spawn(super::dispatch::run(
            Arc::clone(self),
            entry,
            registration,
            runtime.clone(),
        ));
    }

    /// How many members `share` has here.
    pub(super) fn share_members(&self, share: &str) -> usize {
        self.indexes.values().map(|i| read(i).member_count(share)).sum()
    }

    /// The messages topics `share` has members on here.
    pub(super) fn share_topics(&self, share: &str) -> Vec<String> {
        self.indexes
            .iter()
            .filter(|(_, i)| read(i).member_count(share) > 0)
            .map(|(topic, _)| topic.clone())
            .collect()
    }

    /// Ends the dispatcher of `entry` when its share has no member here any more; true
    /// when it ended. Its subscriber id is forgotten: what it had not handed on is read
    /// again from its cursor by whoever serves the share next.
    pub(super) fn end_dispatcher(&self, entry: &ShareEntry) -> bool {
        let joins = entry.joins.load(Ordering::Acquire);
        if self.share_members(&entry.name) > 0 {
            return false;
        }
        {
            let mut by_name = write(&self.shares.by_name);
            if entry.joins.load(Ordering::Acquire) != joins {
                return false; // a member subscribed meanwhile
            }
            if by_name
                .get(&entry.name)
                .is_some_and(|e| e.dispatcher == entry.dispatcher)
            {
                by_name.remove(&entry.name);
            }
        }
        write(&self.live).remove(&entry.dispatcher);
        self.metrics.share_dispatchers.dec();
        tracing::debug!(share = %entry.name, "share dispatcher ended: no member here");
        true
    }

    /// Hands `outgoing` (a message of `entry`'s share, as its dispatcher has it) to a
    /// member that has room, round-robin; gives it back when none has.
    pub(super) fn offer(&self, entry: &Arc<ShareEntry>, outgoing: Outgoing) -> Result<(), Outgoing> {
        let Some(origin) = outgoing.origin.clone() else {
            return Err(outgoing);
        };
        let Some(index) = self.indexes.get(&*origin.topic) else {
            return Err(outgoing);
        };
        let at_once = {
            let index = read(index);
            let live = read(&self.live);
            let mut handed = locked(&self.shares.handed);
            let can_take = |id: ConnId| {
                self.shares.held_by(&handed, id) < MEMBER_WINDOW
                    && live
                        .get(&id)
                        .is_some_and(|c| !c.dispatcher && c.deliveries.has_room_for(&outgoing.message))
            };
            let Some(delivery) = index.pick_member(&entry.name, &can_take) else {
                return Err(outgoing);
            };
            let Some(member) = live.get(&delivery.subscriber) else {
                return Err(outgoing);
            };
            let qos = delivery.qos.min(outgoing.qos);
            let to_member = Outgoing {
                message: Arc::clone(&outgoing.message),
                origin: Some(origin.clone()),
                qos,
                retain: delivery.retain_as_published && outgoing.message.retain,
                identifiers: delivery.identifiers,
                shared: true,
            };
            if qos > 0 {
                self.shares.handed_count.fetch_add(1, Ordering::AcqRel);
            }
            if member.deliveries.try_send(to_member).is_err() {
                if qos > 0 {
                    self.shares.handed_count.fetch_sub(1, Ordering::AcqRel);
                }
                return Err(outgoing);
            }
            if qos > 0 {
                // Recorded before the member can acknowledge it: `complete` waits for
                // this lock.
                handed
                    .entry(delivery.subscriber)
                    .or_default()
                    .entry(origin.clone())
                    .or_default()
                    .push(Handed {
                        entry: Arc::clone(entry),
                        outgoing,
                    });
            }
            qos == 0
        };
        if at_once {
            // Granted QoS 0: sent once, nothing to wait for.
            self.complete(entry.dispatcher, &origin);
        }
        Ok(())
    }

    /// Makes subscriber `id` (a dispatcher) read `partition` of `topic` again from `offset`:
    /// it now serves that partition of its share, whose cursor is there.
    pub(super) fn lag_from(&self, id: ConnId, topic: &str, partition: i32, offset: i64) -> bool {
        let (Some(index), Some(fanout)) = (self.indexes.get(topic), self.fanout.get(topic)) else {
            return false;
        };
        // As in `rejoin`: no record is dispatched while the lag is set.
        let _dispatch = write(index);
        let fanout = locked(fanout).clone();
        if fanout.get(&partition).is_none_or(|at| offset >= *at) {
            return false;
        }
        let live = read(&self.live);
        let Some(connection) = live.get(&id) else {
            return false;
        };
        let mut tracking = connection.tracking.lock();
        let from = tracking
            .lagging
            .entry(topic.to_owned())
            .or_insert_with(|| fanout.clone());
        let at = from.entry(partition).or_insert(offset);
        *at = (*at).min(offset);
        connection.deliveries.mark_lagging();
        true
    }

    /// The partitions of `topic` the fan-out reads.
    pub(super) fn fanout_partitions(&self, topic: &str) -> Vec<(i32, i64)> {
        self.fanout
            .get(topic)
            .map(|f| locked(f).iter().map(|(p, o)| (*p, *o)).collect())
            .unwrap_or_default()
    }

    /// Whether a record on `mqtt_topic` is for `share` (its filter matches).
    pub(super) fn share_wants(share: &str, mqtt_topic: &str) -> bool {
        crate::broker::topic::parse_shared(share)
            .ok()
            .flatten()
            .is_some_and(|s| crate::broker::topic::matches(s.filter, mqtt_topic))
    }
}
