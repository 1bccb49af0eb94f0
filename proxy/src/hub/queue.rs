//! The queue of deliveries from the hub to one connection, bounded twice: by count, and by
//! the bytes of the messages waiting in it. A count alone lets a subscriber that stops
//! reading hold thousands of large messages (16 384 messages of 4 KiB are 64 MiB); with a
//! byte budget, what a lagging connection holds does not depend on message size, and the
//! rest of its lag stays in Kafka where its catch-up reads it.
//!
//! The queue is also how the hub tells the connection the two other things it has to say:
//! that it lags (read from Kafka instead), and that it is to close (a kick). One shared
//! allocation per connection instead of three (issue 9).
//!
//! An empty queue holds no memory of its own (tokio's mpsc channel allocated a block of 32
//! slots per connection up front, a few KiB for every idle device): the deliveries sit in
//! a `VecDeque` that is given back whenever the connection has taken them all.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use futures::task::AtomicWaker;

use super::{Kick, Outgoing};
use crate::broker::message::Message;

/// A keep-alive deadline that never passes.
pub const NO_DEADLINE: u64 = u64::MAX;

/// What one delivery is counted as: the payload and topic it may keep alive, and the
/// delivery's own bookkeeping.
fn weight(message: &Message) -> usize {
    const OVERHEAD: usize = 128;
    message.payload.len() + message.topic.len() + OVERHEAD
}

#[derive(Debug, Default)]
struct State {
    items: VecDeque<Outgoing>,
    /// Set once: the connection is to close, and why. Later kicks are ignored. (Boxed:
    /// every connection has this slot, few ever fill it.)
    kick: Option<Box<Kick>>,
    sender_gone: bool,
    receiver_gone: bool,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// The receiving task, woken on every delivery, when the connection starts lagging,
    /// and when the sender goes. (A waker, not a `Notify`: the connection polls the queue
    /// without a future of its own, so an idle connection's task stays small.)
    receiver: AtomicWaker,
    /// The hub marked the connection lagging and it has not looked yet.
    lagging: AtomicBool,
    /// `State::kick` is set (read without the lock).
    kicked: AtomicBool,
    /// When the connection's keep-alive runs out, on the hub's clock ([`NO_DEADLINE`]: it
    /// has none). The connection moves it on at every packet; the hub's sweep kicks it
    /// once passed, so an idle connection needs no timer of its own.
    deadline_ms: AtomicU64,
    /// Bytes of the deliveries queued (see [`weight`]).
    bytes: AtomicUsize,
    capacity: usize,
    budget: usize,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // The state stays consistent whatever panicked while holding it.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A delivery queue: its sending half stays with the hub, its receiving half goes to the
/// connection.
pub fn channel(capacity: usize, byte_budget: usize) -> (QueueSender, QueueReceiver) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State::default()),
        receiver: AtomicWaker::new(),
        lagging: AtomicBool::new(false),
        kicked: AtomicBool::new(false),
        deadline_ms: AtomicU64::new(NO_DEADLINE),
        bytes: AtomicUsize::new(0),
        capacity: capacity.max(1),
        budget: byte_budget.max(1),
    });
    (
        QueueSender {
            shared: Arc::clone(&shared),
        },
        QueueReceiver { shared },
    )
}

/// The hub's end.
#[derive(Debug)]
pub struct QueueSender {
    shared: Arc<Shared>,
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
        {
            let mut state = self.shared.state();
            if state.receiver_gone {
                return Err(NotQueued::Closed);
            }
            if state.items.len() >= self.shared.capacity || !self.fits(weight) {
                return Err(NotQueued::Full);
            }
            self.shared.bytes.fetch_add(weight, Ordering::AcqRel);
            state.items.push_back(outgoing);
        }
        self.shared.receiver.wake();
        Ok(())
    }

    /// When the connection's keep-alive runs out ([`NO_DEADLINE`]: never).
    pub fn deadline_ms(&self) -> u64 {
        self.shared.deadline_ms.load(Ordering::Relaxed)
    }

    /// Tells the connection to close (the first kick counts; later ones are ignored).
    pub fn kick(&self, kick: Kick) {
        {
            let mut state = self.shared.state();
            if state.kick.is_some() {
                return;
            }
            state.kick = Some(Box::new(kick));
        }
        self.shared.kicked.store(true, Ordering::Release);
        self.shared.receiver.wake();
    }

    /// Tells the connection it lags (once per call: it looks with `poll_lagging`).
    pub fn mark_lagging(&self) {
        self.shared.lagging.store(true, Ordering::Release);
        self.shared.receiver.wake();
    }

    /// Whether `message` would be queued now.
    pub fn has_room_for(&self, message: &Message) -> bool {
        self.shared.state().items.len() < self.shared.capacity && self.fits(weight(message))
    }

    fn fits(&self, weight: usize) -> bool {
        let queued = self.shared.bytes.load(Ordering::Acquire);
        queued == 0 || queued + weight <= self.shared.budget
    }
}

impl Drop for QueueSender {
    fn drop(&mut self) {
        self.shared.state().sender_gone = true;
        self.shared.receiver.wake();
    }
}

/// The connection's end.
#[derive(Debug)]
pub struct QueueReceiver {
    shared: Arc<Shared>,
}

impl QueueReceiver {
    /// The next delivery; `None` once the hub dropped its end and the queue is empty.
    /// Until one comes, the task of `cx` is woken when it does. A delivery is taken only
    /// when this returns it.
    pub fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<Option<Outgoing>> {
        if let Some(ready) = self.ready() {
            return Poll::Ready(ready);
        }
        // Registered before the second look: a delivery in between is seen by that look.
        self.shared.receiver.register(cx.waker());
        match self.ready() {
            Some(ready) => Poll::Ready(ready),
            None => Poll::Pending,
        }
    }

    /// A delivery, or `Some(None)` when the queue is closed and empty.
    fn ready(&self) -> Option<Option<Outgoing>> {
        let mut state = self.shared.state();
        if let Some(outgoing) = self.take(&mut state) {
            return Some(Some(outgoing));
        }
        state.sender_gone.then_some(None)
    }

    /// The next delivery; `None` once the hub dropped its end and the queue is empty.
    /// Cancel-safe.
    pub async fn recv(&self) -> Option<Outgoing> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Ready once the hub marked the connection lagging since the last time this was
    /// ready; until then the task of `cx` is woken when it does.
    pub fn poll_lagging(&self, cx: &mut Context<'_>) -> Poll<()> {
        // Registered before the look: a mark after it wakes the task. (Every wake-up of
        // the connection looks, so one look, not two.)
        self.shared.receiver.register(cx.waker());
        if self.shared.lagging.swap(false, Ordering::AcqRel) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// The kick, once the hub kicked the connection; until then the task of `cx` is woken
    /// when it does.
    pub fn poll_kicked(&self, cx: &mut Context<'_>) -> Poll<Kick> {
        self.shared.receiver.register(cx.waker());
        // Every wake-up of the connection looks: without a kick, no lock is taken.
        if !self.shared.kicked.load(Ordering::Acquire) {
            return Poll::Pending;
        }
        match self.shared.state().kick.as_deref().cloned() {
            Some(kick) => Poll::Ready(kick),
            None => Poll::Pending,
        }
    }

    /// Ready when anything waits for the connection (a delivery, a lagging notice, a kick,
    /// the hub gone), without taking it; until then the task of `cx` is woken when
    /// something comes. How a resting connection (not a task) is woken.
    pub fn poll_news(&self, cx: &mut Context<'_>) -> Poll<()> {
        // Registered before the look: news after it wakes the waker.
        self.shared.receiver.register(cx.waker());
        let news = self.shared.lagging.load(Ordering::Acquire) || self.shared.kicked.load(Ordering::Acquire) || {
            let state = self.shared.state();
            !state.items.is_empty() || state.sender_gone
        };
        if news { Poll::Ready(()) } else { Poll::Pending }
    }

    /// Waits until the hub marks the connection lagging. Cancel-safe.
    pub async fn lagging(&self) {
        std::future::poll_fn(|cx| self.poll_lagging(cx)).await;
    }

    /// Sets when the connection's keep-alive runs out, on the hub's clock
    /// ([`NO_DEADLINE`]: never).
    pub fn set_deadline(&self, at_ms: u64) {
        self.shared.deadline_ms.store(at_ms, Ordering::Relaxed);
    }

    /// The next delivery if one is waiting.
    pub fn try_recv(&self) -> Option<Outgoing> {
        let mut state = self.shared.state();
        self.take(&mut state)
    }

    pub fn is_empty(&self) -> bool {
        self.shared.state().items.is_empty()
    }

    fn take(&self, state: &mut State) -> Option<Outgoing> {
        let outgoing = state.items.pop_front()?;
        if state.items.is_empty() && state.items.capacity() > 0 {
            state.items = VecDeque::new();
        }
        self.shared.bytes.fetch_sub(weight(&outgoing.message), Ordering::AcqRel);
        Some(outgoing)
    }
}

impl Drop for QueueReceiver {
    fn drop(&mut self) {
        let mut state = self.shared.state();
        state.receiver_gone = true;
        // What it held goes with it, as a closed channel's contents did.
        state.items = VecDeque::new();
        self.shared.bytes.store(0, Ordering::Release);
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

    #[test]
    fn news_is_seen_without_being_taken_and_wakes_a_waiting_waker() {
        let (tx, rx) = channel(8, 1 << 20);
        let woken = Arc::new(WakeCount::default());
        let waker = std::task::Waker::from(Arc::clone(&woken));
        let mut cx = Context::from_waker(&waker);
        assert!(rx.poll_news(&mut cx).is_pending());
        tx.try_send(outgoing(1)).expect("queued");
        assert_eq!(woken.0.load(Ordering::Acquire), 1, "a delivery wakes the waiter");
        assert!(rx.poll_news(&mut cx).is_ready());
        assert!(rx.poll_news(&mut cx).is_ready(), "looking takes nothing");
        assert!(rx.try_recv().is_some());
        assert!(rx.poll_news(&mut cx).is_pending());
        tx.mark_lagging();
        assert!(rx.poll_news(&mut cx).is_ready());
        assert!(rx.poll_lagging(&mut cx).is_ready(), "the lagging notice is still there");
        assert!(rx.poll_news(&mut cx).is_pending());
        tx.kick(Kick {
            reason: 0x8B,
            server_reference: None,
        });
        assert!(rx.poll_news(&mut cx).is_ready());
        assert_eq!(woken.0.load(Ordering::Acquire), 3);
    }

    #[derive(Default)]
    struct WakeCount(AtomicUsize);

    impl std::task::Wake for WakeCount {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::AcqRel);
        }
    }

    #[tokio::test]
    async fn the_byte_budget_bounds_the_queue_before_its_count_does() {
        let (tx, rx) = channel(1000, 10_000);
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
        let (tx, rx) = channel(3, 1 << 20);
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
        let (tx, rx) = channel(10, 100);
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
        assert_eq!(tx.shared.bytes.load(Ordering::Acquire), 0);
    }

    #[test]
    fn an_empty_queue_holds_no_memory() {
        let (tx, rx) = channel(1000, 1 << 20);
        assert_eq!(tx.shared.state().items.capacity(), 0);
        for _ in 0..100 {
            tx.try_send(outgoing(10)).expect("queued");
        }
        while rx.try_recv().is_some() {}
        assert_eq!(tx.shared.state().items.capacity(), 0, "given back once empty");
    }

    #[tokio::test]
    async fn the_receiver_ends_when_the_sender_goes_after_the_last_delivery() {
        let (tx, rx) = channel(10, 1 << 20);
        tx.try_send(outgoing(1)).expect("queued");
        let waiting = tokio::spawn(async move {
            let mut got = 0;
            while rx.recv().await.is_some() {
                got += 1;
            }
            got
        });
        tokio::task::yield_now().await;
        tx.try_send(outgoing(1)).expect("queued");
        drop(tx);
        assert_eq!(waiting.await.expect("task"), 2);
    }

    #[tokio::test]
    async fn a_kick_wakes_the_receiver_and_the_first_one_stays() {
        let (tx, rx) = channel(10, 1 << 20);
        let waiting = tokio::spawn(async move { std::future::poll_fn(|cx| rx.poll_kicked(cx)).await });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "not kicked yet");
        let kick = |reason| Kick {
            reason,
            server_reference: None,
        };
        tx.kick(kick(0x9C));
        tx.kick(kick(0x8B));
        assert_eq!(waiting.await.expect("task").reason, 0x9C);
    }

    #[tokio::test]
    async fn a_lagging_mark_wakes_the_receiver_once() {
        let (tx, rx) = channel(10, 1 << 20);
        let waiting = tokio::spawn(async move {
            rx.lagging().await;
            let again = tokio::time::timeout(std::time::Duration::from_millis(20), rx.lagging()).await;
            again.is_err()
        });
        tokio::task::yield_now().await;
        tx.mark_lagging();
        assert!(waiting.await.expect("task"), "one mark is seen once");
    }
}
