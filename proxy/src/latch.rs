//! A value one side raises and the other awaits: how a connection learns from the session
//! store that a newer connection of its client took its session over, on any process.
//! (The hub's kick travels in the connection's delivery queue, see `hub::queue`.)
//!
//! tokio's `watch` channel did this before, but its shared state carries eight `Notify`s
//! (about 370 bytes) and every connection had two: most of what the hub and the session
//! store held per idle connection (issue 9). A latch is one mutex-guarded value and the
//! waker of its one waiter, and it can be polled (`poll_raised`), so a connection waits on
//! it without a future of its own.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures::task::AtomicWaker;

/// Raised at most once that counts: the first value stays, later ones are ignored.
///
/// One task waits on a latch (the connection it belongs to): a second waiter would take
/// the first one's place and the first would not be woken.
#[derive(Debug)]
pub struct Latch<T> {
    value: Mutex<Option<T>>,
    /// `value` is set (read without the lock).
    raised: AtomicBool,
    waiter: AtomicWaker,
}

impl<T: Clone> Latch<T> {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            value: Mutex::new(None),
            raised: AtomicBool::new(false),
            waiter: AtomicWaker::new(),
        })
    }

    /// Sets the value unless it is set already, and wakes the waiter.
    pub fn raise(&self, value: T) {
        {
            let mut slot = self.value.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if slot.is_some() {
                return;
            }
            *slot = Some(value);
        }
        self.raised.store(true, Ordering::Release);
        self.waiter.wake();
    }

    /// The value, if raised.
    pub fn get(&self) -> Option<T> {
        self.value
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The value once raised; until then the task of `cx` is woken when it is.
    pub fn poll_raised(&self, cx: &mut Context<'_>) -> Poll<T> {
        // Registered before the look: a raise after it wakes the task. A connection looks
        // at every wake-up: until raised, no lock is taken.
        self.waiter.register(cx.waker());
        if !self.raised.load(Ordering::Acquire) {
            return Poll::Pending;
        }
        match self.get() {
            Some(value) => Poll::Ready(value),
            None => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Waits until `latch` is raised, as a connection does.
    async fn raised<T: Clone>(latch: &Latch<T>) -> T {
        std::future::poll_fn(|cx| latch.poll_raised(cx)).await
    }
    use std::time::Duration;

    #[tokio::test]
    async fn a_raise_before_the_wait_is_not_lost() {
        let latch = Latch::new();
        latch.raise(7);
        assert_eq!(raised(&latch).await, 7);
    }

    #[tokio::test]
    async fn a_waiter_wakes_when_raised_and_the_first_value_stays() {
        let latch = Latch::<u8>::new();
        let waiter = tokio::spawn({
            let latch = Arc::clone(&latch);
            async move { raised(&latch).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "nothing raised yet");
        latch.raise(1);
        latch.raise(2);
        assert_eq!(waiter.await.expect("waiter"), 1);
        assert_eq!(latch.get(), Some(1));
    }

    #[tokio::test]
    async fn unraised_it_stays_pending() {
        let latch = Latch::<u8>::new();
        assert!(
            tokio::time::timeout(Duration::from_millis(20), raised(&latch))
                .await
                .is_err()
        );
    }
}
