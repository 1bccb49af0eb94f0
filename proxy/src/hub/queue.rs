//! The queue of deliveries from the hub to one connection, bounded twice: by count, and by
//! the bytes of the messages waiting in it. A count alone lets a subscriber that stops
//! reading hold thousands of large messages (16 384 messages of 4 KiB are 64 MiB); with a
//! byte budget, what a lagging connection holds does not depend on message size, and the
//! rest of its lag stays in Kafka where its catch-up reads it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::mpsc;

use super::Outgoing;
use crate::broker::message::Message;

/// What one delivery is counted as: the payload and topic it may keep alive, and the
/// delivery's own bookkeeping.
fn weight(message: &Message) -> usize {
    const OVERHEAD: usize = 128;
    message.payload.len() + message.topic.len() + OVERHEAD
}

/// A delivery queue: its sending half stays with the hub, its receiving half goes to the
/// connection.
pub fn channel(capacity: usize, byte_budget: usize) -> (QueueSender, QueueReceiver) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let bytes = Arc::new(AtomicUsize::new(0));
    (
        QueueSender {
            tx,
            bytes: Arc::clone(&bytes),
            budget: byte_budget.max(1),
        },
        QueueReceiver { rx, bytes },
    )
}

/// The hub's end.
#[derive(Debug)]
pub struct QueueSender {
    tx: mpsc::Sender<Outgoing>,
    bytes: Arc<AtomicUsize>,
    budget: usize,
}

/// Why a delivery was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum NotQueued {
    /// The count or byte bound is reached: the connection is behind.
    Full,
    /// The connection is gone.
    Closed,
}

impl QueueSender {
    /// Queues `outgoing` unless the queue is at one of its bounds. A queue that is empty
    /// takes any one delivery, however large, so a message over the budget still flows.
    pub fn try_send(&self, outgoing: Outgoing) -> Result<(), NotQueued> {
        let weight = weight(&outgoing.message);
        if !self.fits(weight) {
            return Err(NotQueued::Full);
        }
        // Counted before it can be received, so the receiver never subtracts first.
        self.bytes.fetch_add(weight, Ordering::AcqRel);
        self.tx.try_send(outgoing).map_err(|error| {
            self.bytes.fetch_sub(weight, Ordering::AcqRel);
            match error {
                mpsc::error::TrySendError::Full(_) => NotQueued::Full,
                mpsc::error::TrySendError::Closed(_) => NotQueued::Closed,
            }
        })
    }
}

impl QueueSender {
    /// Whether `message` would be queued now.
    pub fn has_room_for(&self, message: &Message) -> bool {
        self.tx.capacity() > 0 && self.fits(weight(message))
    }

    fn fits(&self, weight: usize) -> bool {
        let queued = self.bytes.load(Ordering::Acquire);
        queued == 0 || queued + weight <= self.budget
    }
}

/// The connection's end.
#[derive(Debug)]
pub struct QueueReceiver {
    rx: mpsc::Receiver<Outgoing>,
    bytes: Arc<AtomicUsize>,
}

impl QueueReceiver {
    /// The next delivery; `None` once the hub dropped its end and the queue is empty.
    pub async fn recv(&mut self) -> Option<Outgoing> {
        let outgoing = self.rx.recv().await?;
        self.taken(&outgoing);
        Some(outgoing)
    }

    /// The next delivery if one is waiting.
    pub fn try_recv(&mut self) -> Option<Outgoing> {
        let outgoing = self.rx.try_recv().ok()?;
        self.taken(&outgoing);
        Some(outgoing)
    }

    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }

    fn taken(&self, outgoing: &Outgoing) {
        self.bytes.fetch_sub(weight(&outgoing.message), Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outgoing(payload_len: usize) -> Outgoing {
        let message = Message {
            topic: "t".into(),
            payload: vec![b'x'; payload_len].into(),
            qos: 1,
            retain: false,
            publisher: None,
            properties: Default::default(),
            timestamp_ms: 0,
        };
        Outgoing {
            message: Arc::new(message),
            origin: None,
            qos: 1,
            retain: false,
            identifiers: Vec::new(),
            shared: false,
        }
    }

    #[tokio::test]
    async fn the_byte_budget_bounds_the_queue_before_its_count_does() {
        let (tx, mut rx) = channel(1000, 10_000);
        let mut queued = 0;
        while tx.try_send(outgoing(1000)).is_ok() {
            queued += 1;
        }
        // 1000 bytes of payload + 1 of topic + 128 of overhead: 8 fit in 10 000 bytes.
        assert_eq!(queued, 8);
        assert!(!tx.has_room_for(&outgoing(1000).message));
        assert!(tx.has_room_for(&outgoing(10).message), "a small one still fits");
        assert_eq!(tx.try_send(outgoing(1000)), Err(NotQueued::Full));
        // Taking one makes room for one.
        assert!(rx.recv().await.is_some());
        assert_eq!(tx.try_send(outgoing(1000)), Ok(()));
        assert_eq!(tx.try_send(outgoing(1000)), Err(NotQueued::Full));
    }

    #[tokio::test]
    async fn the_count_bounds_the_queue_of_small_messages() {
        let (tx, mut rx) = channel(3, 1 << 20);
        for _ in 0..3 {
            assert_eq!(tx.try_send(outgoing(1)), Ok(()));
        }
        assert!(!tx.has_room_for(&outgoing(1).message));
        assert_eq!(tx.try_send(outgoing(1)), Err(NotQueued::Full));
        assert!(rx.try_recv().is_some());
        assert_eq!(tx.try_send(outgoing(1)), Ok(()));
    }

    #[test]
    fn an_empty_queue_takes_a_message_larger_than_the_budget() {
        let (tx, mut rx) = channel(10, 100);
        assert_eq!(tx.try_send(outgoing(5000)), Ok(()));
        assert_eq!(tx.try_send(outgoing(1)), Err(NotQueued::Full));
        assert!(rx.try_recv().is_some());
        assert!(rx.is_empty());
        assert_eq!(tx.try_send(outgoing(1)), Ok(()));
    }

    #[test]
    fn a_closed_queue_says_so_and_keeps_no_count() {
        let (tx, rx) = channel(10, 100_000);
        drop(rx);
        assert_eq!(tx.try_send(outgoing(10)), Err(NotQueued::Closed));
        assert_eq!(tx.bytes.load(Ordering::Acquire), 0);
    }
}
