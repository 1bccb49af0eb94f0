//! The admin HTTP endpoint: `/healthz` (the process serves), `/readyz` (Kafka reachable and
//! the retained view loaded) and `/metrics` (Prometheus).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::kafka::probe;
use crate::metrics::Metrics;

/// What readiness depends on.
pub struct Readiness {
    kafka_reachable: AtomicBool,
    retained_loaded: Arc<AtomicBool>,
    listening: AtomicBool,
}

impl Readiness {
    pub fn new(retained_loaded: Arc<AtomicBool>) -> Self {
        Self {
            kafka_reachable: AtomicBool::new(false),
            retained_loaded,
            listening: AtomicBool::new(false),
        }
    }

    /// Every MQTT listener is bound: until then clients would be refused.
    pub fn set_listening(&self) {
        self.listening.store(true, Ordering::Release);
    }

    /// `Ok` when ready, else what is missing, for a person to read.
    pub fn check(&self) -> Result<(), String> {
        let mut missing = Vec::new();
        if !self.kafka_reachable.load(Ordering::Acquire) {
            missing.push("Kafka is not reachable");
        }
        if !self.retained_loaded.load(Ordering::Acquire) {
            missing.push("retained messages are still loading");
        }
        if !self.listening.load(Ordering::Acquire) {
            missing.push("MQTT listeners are not bound yet");
        }
        if missing.is_empty() {
            Ok(())
        } else {
            Err(missing.join("; "))
        }
    }
}

/// Asks Kafka for metadata every few seconds and records whether it answered.
pub fn spawn_kafka_probe(
    bootstrap: String,
    properties: Vec<(String, String)>,
    readiness: Arc<Readiness>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let prober = match probe::Prober::new(&bootstrap, &properties) {
            Ok(prober) => Arc::new(prober),
            Err(error) => {
                tracing::error!(%error, "Kafka client for readiness checks could not be created");
                return;
            }
        };
        loop {
            let p = Arc::clone(&prober);
            let reachable = tokio::task::spawn_blocking(move || p.check(Duration::from_secs(3)))
                .await
                .map(|r| r.is_ok())
                .unwrap_or(false);
            if readiness.kafka_reachable.swap(reachable, Ordering::AcqRel) != reachable {
                tracing::info!(reachable, "Kafka reachability changed");
            }
            tokio::time::sleep(Duration::from_secs(if reachable { 5 } else { 1 })).await;
        }
    })
}

struct AdminState {
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
}

/// Serves the admin endpoints on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, readiness: Arc<Readiness>) {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route(
            "/metrics",
            get(|State(s): State<Arc<AdminState>>| async move { s.metrics.render() }),
        )
        .with_state(Arc::new(AdminState { metrics, readiness }));
    if let Err(error) = axum::serve(listener, app).await {
        tracing::error!(%error, "admin endpoint stopped");
    }
}

async fn readyz(State(state): State<Arc<AdminState>>) -> (StatusCode, String) {
    match state.readiness.check() {
        Ok(()) => (StatusCode::OK, "ready\n".into()),
        Err(missing) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {missing}\n")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_names_what_is_missing() {
        let loaded = Arc::new(AtomicBool::new(false));
        let r = Readiness::new(Arc::clone(&loaded));
        assert_eq!(
            r.check(),
            Err("Kafka is not reachable; retained messages are still loading; MQTT listeners are not bound yet".into())
        );
        r.kafka_reachable.store(true, Ordering::Release);
        r.set_listening();
        assert_eq!(r.check(), Err("retained messages are still loading".into()));
        loaded.store(true, Ordering::Release);
        assert_eq!(r.check(), Ok(()));
    }
}
