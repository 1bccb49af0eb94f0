//! CLI and start-up of mqtt-kafka-operator: check the CRD, serve health and metrics, take
//! part in leader election, run the controller while leading, shut down on SIGTERM.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Parser;
use kube::{Client, CustomResourceExt};
use mqtt_kafka_operator::controller::{self, Context, Settings};
use mqtt_kafka_operator::crd::MqttKafkaProxy;
use mqtt_kafka_operator::election::{self, LeaseSettings};
use mqtt_kafka_operator::http;
use mqtt_kafka_operator::metrics::Metrics;
use tokio::sync::watch;

/// Kubernetes operator that runs mqtt-kafka-proxy on Kafka.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// Only reconcile resources in this namespace (default: every namespace).
    #[arg(long, env = "WATCH_NAMESPACE")]
    namespace: Option<String>,
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = "ADMIN_ADDRESS", default_value = "0.0.0.0:8080")]
    admin_address: SocketAddr,
    /// Reconcile every resource this often without changes (seconds): topic drift is found
    /// by looking.
    #[arg(long, env = "RESYNC_SECONDS", default_value_t = 60)]
    resync_seconds: u64,
    /// Run the controller without leader election (only one replica may run then).
    #[arg(long)]
    no_leader_election: bool,
    /// Name of the leader-election Lease.
    #[arg(long, env = "LEASE_NAME", default_value = "mqtt-kafka-operator")]
    lease_name: String,
    /// Namespace of the Lease (default: the pod's namespace, else the kubeconfig's).
    #[arg(long, env = "POD_NAMESPACE")]
    lease_namespace: Option<String>,
    /// This replica's identity in the Lease and in Events (default: the pod name / host name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Seconds a leader lease lasts without renewal.
    #[arg(long, default_value_t = 15)]
    lease_seconds: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Colours only on a terminal: `kubectl logs` and log collectors get plain text.
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,kube_lease_manager=warn".into()),
        )
        .init();
    let cli = Cli::parse();
    let client = Client::try_default()
        .await
        .context("connecting to the Kubernetes API (in-cluster config or KUBECONFIG)")?;
    if let Err(message) = controller::ensure_crd_installed(&client, MqttKafkaProxy::crd_name()).await {
        bail!(message);
    }

    let identity = cli.identity.clone().unwrap_or_else(|| {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "mqtt-kafka-operator".into());
        format!("{host}-{}", std::process::id())
    });
    let metrics = Metrics::new().context("creating metrics")?;
    let ready = Arc::new(AtomicBool::new(false));
    let (stop, stopped) = watch::channel(false);
    let listener = tokio::net::TcpListener::bind(cli.admin_address)
        .await
        .with_context(|| format!("binding the admin endpoint {}", cli.admin_address))?;
    let server = tokio::spawn(http::serve(
        listener,
        metrics.clone(),
        Arc::clone(&ready),
        wait_for(stopped.clone()),
    ));

    let settings = Settings {
        resync: Duration::from_secs(cli.resync_seconds.max(5)),
        instance: identity.clone(),
        ..Settings::default()
    };
    let lease = (!cli.no_leader_election).then(|| LeaseSettings {
        name: cli.lease_name.clone(),
        namespace: cli
            .lease_namespace
            .clone()
            .unwrap_or_else(|| client.default_namespace().to_owned()),
        identity: identity.clone(),
        duration: Duration::from_secs(cli.lease_seconds.max(3)),
        grace: Duration::from_secs((cli.lease_seconds / 3).max(1)),
    });
    let ctx = Arc::new(Context::new(client, metrics, settings));
    tracing::info!(%identity, namespace = cli.namespace.as_deref().unwrap_or("<all>"), admin = %cli.admin_address, "mqtt-kafka-operator starting");
    ready.store(true, Ordering::Relaxed);

    let signal = async move {
        shutdown_signal().await;
        tracing::info!("shutting down: finishing reconciles in flight, releasing the lease");
        let _ = stop.send(true);
    };
    let result = election::run(ctx, cli.namespace.clone(), lease, async move {
        signal.await;
    })
    .await;
    ready.store(false, Ordering::Relaxed);
    if let Ok(Err(err)) = server.await {
        tracing::warn!(%err, "the admin endpoint failed");
    }
    result.context("leader election")?;
    tracing::info!("stopped");
    Ok(())
}

async fn wait_for(mut stopped: watch::Receiver<bool>) {
    let _ = stopped.wait_for(|s| *s).await;
}

/// SIGTERM (Kubernetes stopping the pod) or Ctrl-C.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
