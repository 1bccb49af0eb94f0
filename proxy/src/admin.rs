//! The admin HTTP endpoint: `/healthz` (every long-lived task still runs, see
//! [`crate::supervisor`]), `/readyz` (the Kafka clients
//! the proxy produces and consumes with work, the retained view is loaded, the listeners are
//! bound) and `/metrics` (Prometheus).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use tokio::net::TcpListener;

use crate::metrics::Metrics;
use crate::supervisor::Liveness;

/// What readiness depends on. Each Kafka client reports its own state under its own name
/// (`producer`, `fan-out mqtt-messages`, ...), so `/readyz` tells what the proxy really
/// uses, not what a separate probe saw.
pub struct Readiness {
    problems: Mutex<BTreeMap<String, String>>,
    retained_loaded: Arc<AtomicBool>,
    listening: AtomicBool,
}

/// The name under which Kafka set-up reports until the clients exist.
pub const KAFKA_SETUP: &str = "kafka";

impl Readiness {
    /// Starts not ready: Kafka not yet reached, nothing loaded, nothing bound.
    pub fn new(retained_loaded: Arc<AtomicBool>) -> Self {
        let readiness = Self {
            problems: Mutex::new(BTreeMap::new()),
            retained_loaded,
            listening: AtomicBool::new(false),
        };
        readiness.report(KAFKA_SETUP, Some("Kafka is not reachable yet".into()));
        readiness
    }

    /// Every MQTT listener is bound: until then clients would be refused.
    pub fn set_listening(&self) {
        self.listening.store(true, Ordering::Release);
    }

    /// Sets (`Some`) or clears (`None`) what is wrong with `component`.
    pub fn report(&self, component: &str, problem: Option<String>) {
        let mut problems = self.problems.lock().unwrap_or_else(|e| e.into_inner());
        let changed = match problem {
            Some(problem) => problems.insert(component.to_owned(), problem.clone()).as_ref() != Some(&problem),
            None => problems.remove(component).is_some(),
        };
        if changed {
            match problems.get(component) {
                Some(problem) => tracing::warn!(%component, %problem, "not ready"),
                None => tracing::info!(%component, "works again"),
            }
        }
    }

    /// `Ok` when ready, else what is missing, for a person to read.
    pub fn check(&self) -> Result<(), String> {
        let mut missing: Vec<String> = self
            .problems
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(component, problem)| {
                if component == KAFKA_SETUP {
                    problem.clone()
                } else {
                    format!("{component}: {problem}")
                }
            })
            .collect();
        if !self.retained_loaded.load(Ordering::Acquire) {
            missing.push("retained messages are still loading".into());
        }
        if !self.listening.load(Ordering::Acquire) {
            missing.push("MQTT listeners are not bound yet".into());
        }
        if missing.is_empty() {
            Ok(())
        } else {
            Err(missing.join("; "))
        }
    }
}

struct AdminState {
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
    liveness: Arc<Liveness>,
}

/// Serves the admin endpoints on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, readiness: Arc<Readiness>, liveness: Arc<Liveness>) {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route(
            "/metrics",
            get(|State(s): State<Arc<AdminState>>| async move { s.metrics.render() }),
        )
        .with_state(Arc::new(AdminState {
            metrics,
            readiness,
            liveness,
        }));
    if let Err(error) = axum::serve(listener, app).await {
        tracing::error!(%error, "admin endpoint stopped");
    }
}

async fn healthz(State(state): State<Arc<AdminState>>) -> (StatusCode, String) {
    match state.liveness.check() {
        Ok(()) => (StatusCode::OK, "ok\n".into()),
        Err(dead) => (StatusCode::INTERNAL_SERVER_ERROR, format!("unhealthy: {dead}\n")),
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
            Err(
                "Kafka is not reachable yet; retained messages are still loading; MQTT listeners are not bound yet"
                    .into()
            )
        );
        r.report(KAFKA_SETUP, None);
        r.report(
            "producer",
            Some("cannot deliver records for 3 s: Message timed out".into()),
        );
        r.set_listening();
        assert_eq!(
            r.check(),
            Err(
                "producer: cannot deliver records for 3 s: Message timed out; retained messages are still loading"
                    .into()
            )
        );
        r.report("producer", None);
        assert_eq!(r.check(), Err("retained messages are still loading".into()));
        loaded.store(true, Ordering::Release);
        assert_eq!(r.check(), Ok(()));
    }

    async fn get(address: std::net::SocketAddr, path: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(address).await.expect("connect");
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut response = String::new();
        stream.read_to_string(&mut response).await.expect("read");
        response
    }

    #[tokio::test]
    async fn healthz_fails_naming_a_supervised_task_that_died() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let liveness = Arc::new(Liveness::new());
        let readiness = Arc::new(Readiness::new(Arc::new(AtomicBool::new(true))));
        let admin = tokio::spawn(serve(
            listener,
            Arc::new(Metrics::new()),
            readiness,
            Arc::clone(&liveness),
        ));
        assert!(get(address, "/healthz").await.starts_with("HTTP/1.1 200"));
        let (die, dying) = tokio::sync::oneshot::channel::<()>();
        let _watcher = crate::supervisor::supervise(
            &liveness,
            "fan-out mqtt-messages",
            tokio::spawn(async move {
                let _ = dying.await;
                panic!("header name is not UTF-8");
            }),
        );
        let _ = die.send(());
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let response = get(address, "/healthz").await;
        assert!(response.starts_with("HTTP/1.1 500"), "{response}");
        assert!(
            response.contains("task fan-out mqtt-messages panicked: header name is not UTF-8"),
            "{response}"
        );
        admin.abort();
    }
}
