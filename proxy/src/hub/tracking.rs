//! Per connection, which QoS > 0 deliveries are not complete, where it lags and what its
//! catch-ups still read: what [`Hub::positions`] makes a session's resume positions of.

use std::collections::BTreeMap;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex, MutexGuard};

use super::{CatchUp, ConnId, Hub, Origin, Positions, locked, read, write};

/// Which QoS > 0 deliveries of one connection are not complete, and where it lags.
/// (B-tree maps: an empty one is half the size of a hash map, and most are empty.)
#[derive(Debug, Default)]
pub(super) struct Tracking {
    /// Origins handed to the connection and not completed: (topic, partition) -> offset
    /// -> how many deliveries of it (a record can match twice, e.g. a shared and a plain
    /// subscription).
    pub(super) outstanding: BTreeMap<(Arc<str>, i32), BTreeMap<i64, u32>>,
    /// Topics on which live deliveries are skipped, with the positions to catch up from.
    pub(super) lagging: BTreeMap<String, BTreeMap<i32, i64>>,
    /// Catch-ups under way: the next offset each will read.
    pub(super) replaying: BTreeMap<String, Replaying>,
}

/// A catch-up under way: the next offset it reads and where it ends, per partition.
#[derive(Debug, Default)]
pub(super) struct Replaying {
    pub(super) next: BTreeMap<i32, i64>,
    pub(super) to: BTreeMap<i32, i64>,
}

impl Tracking {
    fn is_empty(&self) -> bool {
        self.outstanding.is_empty() && self.lagging.is_empty() && self.replaying.is_empty()
    }

    /// Whether any delivery is outstanding.
    fn has_outstanding(&self) -> bool {
        !self.outstanding.is_empty()
    }

    /// One more delivery of the record at `offset` is outstanding.
    pub(super) fn count(&mut self, topic: &Arc<str>, partition: i32, offset: i64) {
        *self
            .outstanding
            .entry((Arc::clone(topic), partition))
            .or_default()
            .entry(offset)
            .or_default() += 1;
    }

    /// One delivery of the record at `offset` is no longer outstanding. (The partition
    /// stays listed: a subscriber that drains between messages would otherwise allocate
    /// its maps again for every one. [`TrackingCell::release_if_idle`] frees it all.)
    pub(super) fn uncount(&mut self, topic: &Arc<str>, partition: i32, offset: i64) {
        let key = (Arc::clone(topic), partition);
        let Some(offsets) = self.outstanding.get_mut(&key) else {
            return;
        };
        if let Some(count) = offsets.get_mut(&offset) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                offsets.remove(&offset);
            }
        }
    }

    /// Nothing in flight, no lag, no catch-up (partitions may still be listed, empty).
    fn holds_nothing(&self) -> bool {
        self.outstanding.values().all(BTreeMap::is_empty) && self.lagging.is_empty() && self.replaying.is_empty()
    }
}

/// What a connection that tracks nothing reads.
static NOTHING_TRACKED: Tracking = Tracking {
    outstanding: BTreeMap::new(),
    lagging: BTreeMap::new(),
    replaying: BTreeMap::new(),
};

/// A connection's [`Tracking`], allocated only while it holds something: most connections
/// are idle with nothing in flight, and an empty tracking inline would be 72 bytes of
/// every connection's hub entry (issue 9).
#[derive(Debug, Default)]
pub(super) struct TrackingCell(Mutex<Option<Box<Tracking>>>);

impl TrackingCell {
    pub(super) fn new(tracking: Tracking) -> Self {
        Self(Mutex::new((!tracking.is_empty()).then(|| Box::new(tracking))))
    }

    /// The tracking, locked: reading an absent one reads nothing, changing it allocates
    /// it.
    pub(super) fn lock(&self) -> TrackingGuard<'_> {
        TrackingGuard(locked(&self.0))
    }

    /// Frees the tracking if it holds nothing. The hub's periodic sweep calls it: freeing
    /// it at every last acknowledgement would allocate it again with the next delivery. A
    /// tracking locked elsewhere at this moment is left for the next sweep.
    pub(super) fn release_if_idle(&self) {
        let tracking = match self.0.try_lock() {
            Ok(tracking) => Some(tracking),
            Err(std::sync::TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        };
        if let Some(mut tracking) = tracking
            && tracking.as_ref().is_some_and(|t| t.holds_nothing())
        {
            *tracking = None;
        }
    }
}

pub(super) struct TrackingGuard<'a>(MutexGuard<'a, Option<Box<Tracking>>>);

impl Deref for TrackingGuard<'_> {
    type Target = Tracking;

    fn deref(&self) -> &Tracking {
        self.0.as_deref().unwrap_or(&NOTHING_TRACKED)
    }
}

impl DerefMut for TrackingGuard<'_> {
    fn deref_mut(&mut self) -> &mut Tracking {
        self.0.get_or_insert_with(Box::default)
    }
}

impl Hub {
    /// Frees the delivery tracking of every connection that holds nothing in it now.
    pub fn release_idle_tracking(&self) {
        for connection in read(&self.live).values() {
            connection.tracking.release_if_idle();
        }
    }

    /// A delivery with `origin` is complete (acknowledged, or sent at QoS 0, or discarded
    /// for a reason that will not change: expired, too large).
    pub fn complete(&self, id: ConnId, origin: &Origin) {
        if let Some(dispatcher) = self.shares.completed(id, origin) {
            // A share's message: the share's cursor may move past it now.
            self.complete(dispatcher, origin);
            return;
        }
        let live = read(&self.live);
        let Some(connection) = live.get(&id) else { return };
        let mut tracking = connection.tracking.lock();
        // (Asked first: changing an absent tracking would allocate one.)
        if tracking.has_outstanding() {
            tracking.uncount(&origin.topic, origin.partition, origin.offset);
        }
    }

    /// A delivery with `origin` is about to be sent by a catch-up (it did not come through
    /// the fan-out, so the hub did not count it).
    pub fn track(&self, id: ConnId, origin: &Origin) {
        let live = read(&self.live);
        let Some(connection) = live.get(&id) else { return };
        let mut tracking = connection.tracking.lock();
        tracking.count(&origin.topic, origin.partition, origin.offset);
        if let Some(next) = tracking
            .replaying
            .get_mut(&*origin.topic)
            .and_then(|r| r.next.get_mut(&origin.partition))
        {
            *next = (*next).max(origin.offset + 1);
        }
    }

    /// A catch-up read `partition` of `kafka_topic` up to `next` (records that did not
    /// match count too).
    pub fn replayed_to(&self, id: ConnId, kafka_topic: &str, partition: i32, next: i64) {
        let live = read(&self.live);
        let Some(connection) = live.get(&id) else { return };
        if let Some(at) = connection
            .tracking
            .lock()
            .replaying
            .get_mut(kafka_topic)
            .and_then(|r| r.next.get_mut(&partition))
        {
            *at = (*at).max(next);
        }
    }

    /// Ends the lag of connection `id` on one topic: live deliveries resume from the
    /// fan-out's current position, and the returned range `(from, to)` is what the
    /// connection must read from Kafka itself to have everything, in order. `None` when
    /// it lags nowhere.
    pub fn rejoin(&self, id: ConnId) -> Option<CatchUp> {
        let topic = {
            let live = read(&self.live);
            let connection = live.get(&id)?;
            let tracking = connection.tracking.lock();
            tracking.lagging.keys().next()?.clone()
        };
        let index = self.indexes.get(&topic)?;
        // The index's write lock stops the fan-out of this topic between taking the lag
        // off and reading its position: every record is either before `to` (caught up)
        // or dispatched live after it.
        let _dispatch = write(index);
        let to = locked(self.fanout.get(&topic)?).clone();
        let live = read(&self.live);
        let connection = live.get(&id)?;
        let mut tracking = connection.tracking.lock();
        let from = tracking.lagging.remove(&topic)?;
        tracking.replaying.insert(
            topic.clone(),
            Replaying {
                next: from.clone(),
                to: to.clone(),
            },
        );
        Some(CatchUp { topic, from, to })
    }

    /// What the catch-up of `kafka_topic` still has to read (`from`, `to`), if its reader
    /// stopped early (the connection fell behind it); `None` when it is complete.
    pub fn replay_remaining(&self, id: ConnId, kafka_topic: &str) -> Option<(BTreeMap<i32, i64>, BTreeMap<i32, i64>)> {
        let live = read(&self.live);
        let connection = live.get(&id)?;
        let tracking = connection.tracking.lock();
        let replaying = tracking.replaying.get(kafka_topic)?;
        let unfinished = replaying
            .to
            .iter()
            .any(|(p, end)| replaying.next.get(p).is_some_and(|at| at < end));
        unfinished.then(|| (replaying.next.clone(), replaying.to.clone()))
    }

    /// The catch-up of `kafka_topic` is over.
    pub fn replay_done(&self, id: ConnId, kafka_topic: &str) {
        let live = read(&self.live);
        if let Some(connection) = live.get(&id) {
            connection.tracking.lock().replaying.remove(kafka_topic);
        }
    }

    /// From where connection `id` would resume now: per messages topic and partition, the
    /// oldest record not yet delivered and acknowledged.
    pub fn positions(&self, id: ConnId) -> Positions {
        // The fan-out positions first: a record dispatched before this read is already
        // counted as outstanding below (dispatch counts it before it advances).
        let fanout = self.fanout_positions();
        let live = read(&self.live);
        let Some(connection) = live.get(&id) else {
            return fanout;
        };
        let tracking = connection.tracking.lock();
        let mut positions = fanout;
        for (topic, partitions) in &mut positions {
            for (partition, at) in partitions.iter_mut() {
                let behind = [
                    tracking.lagging.get(topic).and_then(|l| l.get(partition)),
                    tracking.replaying.get(topic).and_then(|r| r.next.get(partition)),
                ];
                for offset in behind.into_iter().flatten() {
                    *at = (*at).min(*offset);
                }
            }
        }
        for ((topic, partition), offsets) in &tracking.outstanding {
            if let Some(oldest) = offsets.keys().next()
                && let Some(at) = positions.get_mut(&**topic).and_then(|p| p.get_mut(partition))
            {
                *at = (*at).min(*oldest);
            }
        }
        positions
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic() -> Arc<str> {
        Arc::from("m")
    }

    #[test]
    fn an_idle_connection_holds_no_tracking() {
        let cell = TrackingCell::new(Tracking::default());
        assert!(locked(&cell.0).is_none());
        assert!(cell.lock().lagging.is_empty(), "an absent one reads as empty");
        assert!(locked(&cell.0).is_none(), "reading allocates nothing");
        {
            let mut tracking = cell.lock();
            tracking.count(&topic(), 0, 7);
            tracking.count(&topic(), 0, 7);
        }
        assert!(locked(&cell.0).is_some(), "a delivery in flight is held");
        cell.lock().uncount(&topic(), 0, 7);
        cell.release_if_idle();
        assert!(
            cell.lock().has_outstanding(),
            "one of two deliveries is still out: kept"
        );
        cell.lock().uncount(&topic(), 0, 7);
        assert!(locked(&cell.0).is_some(), "kept until the sweep");
        cell.release_if_idle();
        assert!(
            locked(&cell.0).is_none(),
            "freed by the sweep once the last delivery is complete"
        );
    }

    #[test]
    fn a_lagging_connection_keeps_its_tracking_until_it_caught_up() {
        let cell = TrackingCell::new(Tracking {
            lagging: BTreeMap::from([("m".to_owned(), BTreeMap::from([(0, 5)]))]),
            ..Tracking::default()
        });
        assert!(locked(&cell.0).is_some());
        {
            let mut tracking = cell.lock();
            let from = tracking.lagging.remove("m").expect("lagging");
            tracking.replaying.insert(
                "m".to_owned(),
                Replaying {
                    next: from.clone(),
                    to: from,
                },
            );
        }
        cell.release_if_idle();
        assert!(locked(&cell.0).is_some(), "still catching up");
        cell.lock().replaying.clear();
        cell.release_if_idle();
        assert!(locked(&cell.0).is_none());
    }
}
