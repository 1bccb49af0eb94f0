//! The long-lived tasks of a process (the fan-out consumers, the retained and sessions
//! readers, the producer's supervision, heartbeats, accept loops) are meant to run until
//! the process stops. One that ends anyway, by a panic or by returning, must not go
//! unnoticed while the pod stays up: [`supervise`] watches it, and [`Liveness`] makes
//! `/healthz` fail with its name, so Kubernetes restarts the pod.

use std::collections::BTreeMap;
use std::sync::Mutex;

use tokio::task::{AbortHandle, JoinError, JoinHandle};

/// Which supervised tasks have died, and how.
#[derive(Debug, Default)]
pub struct Liveness {
    dead: Mutex<BTreeMap<String, String>>,
}

impl Liveness {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `task` ended; `how` says how (for a person to read).
    pub fn died(&self, task: &str, how: String) {
        tracing::error!(%task, %how, "a task of the proxy ended; /healthz fails so that the process is restarted");
        self.dead
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(task.to_owned(), how);
    }

    /// `Ok` while every supervised task runs, else which ended and how.
    pub fn check(&self) -> Result<(), String> {
        let dead = self.dead.lock().unwrap_or_else(|e| e.into_inner());
        if dead.is_empty() {
            return Ok(());
        }
        Err(dead
            .iter()
            .map(|(task, how)| format!("task {task} {how}"))
            .collect::<Vec<_>>()
            .join("; "))
    }
}

/// Aborts the watched task when the watcher is dropped or aborted, so that stopping the
/// watcher stops what it watches.
struct AbortOnDrop(AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How a task that should have run forever ended.
pub fn how_it_ended(outcome: Result<(), JoinError>) -> Option<String> {
    match outcome {
        Ok(()) => Some("stopped".into()),
        Err(error) if error.is_panic() => {
            let panic = error.into_panic();
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "(no message)".into());
            Some(format!("panicked: {message}"))
        }
        // Aborted: the process is stopping it on purpose.
        Err(_) => None,
    }
}

/// Watches `task`, which should run until it is aborted: if it ends otherwise, `liveness`
/// hears of it under `name`. Abort the returned handle to stop both.
pub fn supervise(liveness: &std::sync::Arc<Liveness>, name: impl Into<String>, task: JoinHandle<()>) -> JoinHandle<()> {
    let liveness = std::sync::Arc::clone(liveness);
    let name = name.into();
    tokio::spawn(async move {
        let _stop_with_me = AbortOnDrop(task.abort_handle());
        if let Some(how) = how_it_ended(task.await) {
            liveness.died(&name, how);
        }
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    async fn settle() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    #[tokio::test]
    async fn a_task_that_panics_or_returns_is_named_with_how_it_ended() {
        let liveness = Arc::new(Liveness::new());
        let _a = supervise(&liveness, "fan-out m", tokio::spawn(async { panic!("poison") }));
        let _b = supervise(&liveness, "heartbeat", tokio::spawn(async {}));
        let _c = supervise(&liveness, "retained r", tokio::spawn(std::future::pending()));
        settle().await;
        assert_eq!(
            liveness.check(),
            Err("task fan-out m panicked: poison; task heartbeat stopped".into())
        );
    }

    #[tokio::test]
    async fn aborting_the_watcher_stops_the_task_and_is_no_failure() {
        let liveness = Arc::new(Liveness::new());
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
        let watcher = supervise(
            &liveness,
            "reader",
            tokio::spawn(async move {
                let _tx = tx;
                std::future::pending::<()>().await;
            }),
        );
        settle().await;
        watcher.abort();
        // The task dropped its sender: it was stopped with the watcher.
        assert_eq!(tokio::time::timeout(Duration::from_secs(2), rx.recv()).await, Ok(None));
        assert_eq!(liveness.check(), Ok(()));
    }
}
