//! Server-to-client QoS 1/2 deliveries in flight: packet ids, the client's Receive Maximum
//! window, and the queue of deliveries waiting for room (MQTT 5 §4.9).

use std::collections::{BTreeMap, VecDeque};
use std::num::NonZeroU16;

/// Where an outbound QoS > 0 delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// PUBLISH sent, waiting for PUBACK (QoS 1) or PUBREC (QoS 2).
    Published { qos: u8 },
    /// PUBREL sent, waiting for PUBCOMP.
    Released,
}

/// What an acknowledgement from the client did.
#[derive(Debug, PartialEq, Eq)]
pub enum AckOutcome {
    /// The delivery is complete; its packet id is free again.
    Completed,
    /// QoS 2: answer with PUBREL.
    SendRelease,
    /// The packet id was not in flight at that stage (answer 0x92 where the spec has one).
    Unknown,
}

/// The in-flight window of one connection, generic over what waits in the queue.
#[derive(Debug)]
pub struct Inflight<T> {
    window: usize,
    queue_limit: usize,
    next_id: u16,
    in_flight: BTreeMap<u16, Stage>,
    queued: VecDeque<T>,
}

impl<T> Inflight<T> {
    /// `window` is min(client Receive Maximum, server cap); `queue_limit` bounds what waits.
    pub fn new(window: u16, queue_limit: usize) -> Self {
        Self {
            window: usize::from(window.max(1)),
            queue_limit,
            next_id: 0,
            in_flight: BTreeMap::new(),
            queued: VecDeque::new(),
        }
    }

    /// The window and the next packet id, when nothing is in flight or queued: all that a
    /// resting connection keeps of it (see [`Inflight::resume`]).
    pub fn at_rest(&self) -> Option<(u16, u16)> {
        (self.in_flight.is_empty() && self.queued.is_empty())
            .then(|| (u16::try_from(self.window).unwrap_or(u16::MAX), self.next_id))
    }

    /// An empty window as [`Inflight::at_rest`] left it.
    pub fn resume(window: u16, queue_limit: usize, next_id: u16) -> Self {
        Self {
            next_id,
            ..Self::new(window, queue_limit)
        }
    }

    pub fn has_room(&self) -> bool {
        self.in_flight.len() < self.window
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Takes a free packet id for a QoS `qos` delivery; `None` when the window is full.
    pub fn start(&mut self, qos: u8) -> Option<NonZeroU16> {
        if !self.has_room() {
            return None;
        }
        loop {
            self.next_id = self.next_id.wrapping_add(1);
            if let Some(id) = NonZeroU16::new(self.next_id)
                && !self.in_flight.contains_key(&id.get())
            {
                self.in_flight.insert(id.get(), Stage::Published { qos });
                return Some(id);
            }
        }
    }

    /// Takes packet id `id` at `stage` for a delivery a resumed session had in flight
    /// (sent again with that id), whether or not the window has room.
    pub fn restore(&mut self, id: NonZeroU16, stage: Stage) {
        self.in_flight.insert(id.get(), stage);
    }

    /// Gives a packet id back without an acknowledgement (the PUBLISH could not be sent).
    pub fn abandon(&mut self, id: NonZeroU16) {
        self.in_flight.remove(&id.get());
    }

    /// Keeps a delivery until the window has room; `Err` gives it back when the queue is full.
    pub fn enqueue(&mut self, item: T) -> Result<(), T> {
        if self.queued.len() >= self.queue_limit {
            return Err(item);
        }
        self.queued.push_back(item);
        Ok(())
    }

    /// The next queued delivery, if the window has room for it.
    pub fn next_queued(&mut self) -> Option<T> {
        if self.has_room() { self.queued.pop_front() } else { None }
    }

    pub fn on_puback(&mut self, id: NonZeroU16) -> AckOutcome {
        self.finish_if(id, Stage::Published { qos: 1 })
    }

    pub fn on_pubcomp(&mut self, id: NonZeroU16) -> AckOutcome {
        self.finish_if(id, Stage::Released)
    }

    pub fn on_pubrec(&mut self, id: NonZeroU16) -> AckOutcome {
        match self.in_flight.get_mut(&id.get()) {
            Some(stage @ Stage::Published { qos: 2 }) => {
                *stage = Stage::Released;
                AckOutcome::SendRelease
            }
            _ => AckOutcome::Unknown,
        }
    }

    fn finish_if(&mut self, id: NonZeroU16, expected: Stage) -> AckOutcome {
        if self.in_flight.get(&id.get()) == Some(&expected) {
            self.in_flight.remove(&id.get());
            AckOutcome::Completed
        } else {
            AckOutcome::Unknown
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_limits_deliveries_and_acks_free_it() {
        let mut f: Inflight<&str> = Inflight::new(2, 10);
        let a = f.start(1).expect("room");
        let b = f.start(2).expect("room");
        assert_ne!(a, b);
        assert_eq!(f.start(1), None);
        assert_eq!(f.enqueue("queued"), Ok(()));
        assert_eq!(f.next_queued(), None, "no room yet");
        assert_eq!(f.on_puback(a), AckOutcome::Completed);
        assert_eq!(f.next_queued(), Some("queued"));
    }

    #[test]
    fn qos2_goes_through_pubrec_then_pubcomp() {
        let mut f: Inflight<()> = Inflight::new(1, 0);
        let id = f.start(2).expect("room");
        assert_eq!(f.on_puback(id), AckOutcome::Unknown, "PUBACK is not the QoS 2 answer");
        assert_eq!(f.on_pubcomp(id), AckOutcome::Unknown, "PUBCOMP before PUBREC");
        assert_eq!(f.on_pubrec(id), AckOutcome::SendRelease);
        assert!(!f.has_room(), "still in flight until PUBCOMP");
        assert_eq!(f.on_pubcomp(id), AckOutcome::Completed);
        assert!(f.has_room());
    }

    #[test]
    fn packet_ids_skip_zero_and_ids_in_use_when_wrapping() {
        let mut f: Inflight<()> = Inflight::new(3, 0);
        f.next_id = u16::MAX - 1;
        let a = f.start(1).expect("room");
        assert_eq!(a.get(), u16::MAX);
        let b = f.start(1).expect("room");
        assert_eq!(b.get(), 1);
        f.next_id = u16::MAX - 1;
        let c = f.start(1).expect("room");
        assert_eq!(c.get(), 2, "65535 and 1 are taken");
    }

    #[test]
    fn the_queue_is_bounded() {
        let mut f: Inflight<u8> = Inflight::new(1, 1);
        assert_eq!(f.enqueue(1), Ok(()));
        assert_eq!(f.enqueue(2), Err(2));
    }
}
