//! SIGTERM and SIGINT for the binary, in every state of the process.
//!
//! As a container's PID 1 a process that has no handler for a signal never sees it (the
//! kernel ignores it), so the handlers are installed first thing, on a thread of their own
//! with its own small runtime: they are heard even while every worker of the main runtime
//! sits in a blocking librdkafka call (metadata requests wait for their whole timeout
//! when Kafka accepts connections but does not answer).
//!
//! - Before the proxy serves ([`Signals::serving`] not yet called; Kafka unreachable and
//!   set-up retrying): nothing is held for anyone, so the process exits at once, with
//!   success.
//! - While it serves: [`Signals::stopped`] completes and the caller hands connections over
//!   (bounded by its own grace period).
//! - A second signal while handing over exits at once (a person pressing Ctrl-C twice).

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

const STARTING: u8 = 0;
const SERVING: u8 = 1;
const EXITING: u8 = 2;

/// What the process does with a signal, given its phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reaction {
    /// Nothing is served yet: exit now with success.
    ExitNow,
    /// Serving: hand connections over, then exit.
    Shutdown,
    /// A second signal during the hand-over: exit now.
    ExitAbandoningHandOver,
}

/// Decides what a signal does; moves `phase` so that start-up completing and a signal
/// arriving at the same moment agree on one outcome.
fn react(phase: &AtomicU8, signals_before: u32) -> Reaction {
    match phase.compare_exchange(STARTING, EXITING, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => Reaction::ExitNow,
        Err(EXITING) => Reaction::ExitNow,
        Err(_) if signals_before == 0 => Reaction::Shutdown,
        Err(_) => Reaction::ExitAbandoningHandOver,
    }
}

/// The installed handlers.
pub struct Signals {
    phase: Arc<AtomicU8>,
    stop: watch::Receiver<Option<&'static str>>,
}

impl Signals {
    /// Installs the SIGTERM and SIGINT handlers; returns once they are in place.
    pub fn install() -> std::io::Result<Signals> {
        let phase = Arc::new(AtomicU8::new(STARTING));
        let (tx, stop) = watch::channel(None);
        let (installed_tx, installed) = std::sync::mpsc::channel::<std::io::Result<()>>();
        let thread_phase = Arc::clone(&phase);
        std::thread::Builder::new().name("signals".into()).spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(runtime) => runtime,
                Err(error) => {
                    let _ = installed_tx.send(Err(error));
                    return;
                }
            };
            runtime.block_on(async move {
                let handlers = signal(SignalKind::terminate()).and_then(|t| Ok((t, signal(SignalKind::interrupt())?)));
                let (mut term, mut int) = match handlers {
                    Ok(handlers) => {
                        let _ = installed_tx.send(Ok(()));
                        handlers
                    }
                    Err(error) => {
                        let _ = installed_tx.send(Err(error));
                        return;
                    }
                };
                let mut received = 0;
                loop {
                    let name = tokio::select! {
                        _ = term.recv() => "SIGTERM",
                        _ = int.recv() => "SIGINT",
                    };
                    match react(&thread_phase, received) {
                        Reaction::ExitNow => {
                            tracing::info!(signal = name, "stopped before start-up completed");
                            std::process::exit(0);
                        }
                        Reaction::Shutdown => {
                            tracing::info!(signal = name, "shutting down");
                            let _ = tx.send(Some(name));
                        }
                        Reaction::ExitAbandoningHandOver => {
                            tracing::warn!(signal = name, "second signal: exiting without finishing the hand-over");
                            std::process::exit(1);
                        }
                    }
                    received += 1;
                }
            });
        })?;
        installed
            .recv()
            .map_err(|_| std::io::Error::other("the signal thread ended before installing its handlers"))??;
        Ok(Signals { phase, stop })
    }

    /// The proxy serves from now on: a signal starts the hand-over instead of exiting.
    /// Returns false when a signal came first (the process is exiting).
    pub fn serving(&self) -> bool {
        self.phase
            .compare_exchange(STARTING, SERVING, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Completes when a signal asks the serving proxy to stop.
    pub async fn stopped(&mut self) {
        // An error means the signal thread is gone: nothing will ever ask to stop.
        if self.stop.wait_for(Option::is_some).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signal_before_serving_exits_at_once_and_start_up_cannot_win_afterwards() {
        let phase = AtomicU8::new(STARTING);
        assert_eq!(react(&phase, 0), Reaction::ExitNow);
        assert!(
            phase
                .compare_exchange(STARTING, SERVING, Ordering::AcqRel, Ordering::Acquire)
                .is_err(),
            "start-up completing after the signal does not start serving"
        );
        assert_eq!(react(&phase, 1), Reaction::ExitNow);
    }

    #[test]
    fn a_signal_while_serving_hands_over_and_a_second_one_exits() {
        let phase = AtomicU8::new(SERVING);
        assert_eq!(react(&phase, 0), Reaction::Shutdown);
        assert_eq!(react(&phase, 1), Reaction::ExitAbandoningHandOver);
    }
}
