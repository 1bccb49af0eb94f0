//! CLI and wiring of mqtt-kafka-proxy.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use mqtt_kafka_proxy::config::{Config, Kafka};
use mqtt_kafka_proxy::server::{self, StartOptions};
use mqtt_kafka_proxy::signals::Signals;

/// An MQTT 3.1.1 / 5.0 broker whose messages live in Kafka.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// The YAML config file; without it, defaults with `--kafka-bootstrap`.
    #[arg(long, env = "MQTT_KAFKA_CONFIG")]
    config: Option<PathBuf>,
    /// Kafka bootstrap servers; overrides `kafka.bootstrapServers` of the config.
    #[arg(long, env = "KAFKA_BOOTSTRAP")]
    kafka_bootstrap: Option<String>,
    /// This pod's instance id; overrides `instanceId` (default: $HOSTNAME).
    #[arg(long, env = "MQTT_KAFKA_INSTANCE_ID")]
    instance_id: Option<String>,
    /// Validate the config, print it with every default filled in, and exit.
    #[arg(long)]
    check: bool,
    /// Print the config's JSON schema and exit.
    #[arg(long)]
    schema: bool,
    /// Create missing Kafka topics (local runs; on Kubernetes the operator does it).
    #[arg(long)]
    create_topics: bool,
    /// Partitions of topics created by `--create-topics`.
    #[arg(long, default_value_t = 3)]
    partitions: i32,
}

fn load_config(cli: &Cli) -> anyhow::Result<Config> {
    let mut config = match &cli.config {
        Some(path) => Config::from_file(path).with_context(|| format!("config {}", path.display()))?,
        None => Config::new(Kafka::new(
            cli.kafka_bootstrap.clone().unwrap_or_else(|| "127.0.0.1:9092".into()),
        )),
    };
    if let Some(bootstrap) = &cli.kafka_bootstrap {
        config.kafka.bootstrap_servers = bootstrap.clone();
    }
    if let Some(instance) = &cli.instance_id {
        config.instance_id = Some(instance.clone());
    }
    config.validate().context("config")?;
    Ok(config)
}

fn main() -> anyhow::Result<()> {
    // Colours only on a terminal: `kubectl logs` and log collectors get plain text.
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let cli = Cli::parse();
    if cli.schema {
        println!("{}", serde_json::to_string_pretty(&Config::json_schema())?);
        return Ok(());
    }
    let config = load_config(&cli)?;
    if cli.check {
        print!("{}", config.redacted().to_yaml()?);
        return Ok(());
    }
    // Before anything that can wait on Kafka: a signal during start-up (Kafka unreachable,
    // set-up retrying) ends the process at once instead of being ignored until the grace
    // period runs out.
    let signals = Signals::install().context("installing the SIGTERM / SIGINT handlers")?;
    let options = StartOptions {
        create_topics: cli.create_topics,
        partitions: cli.partitions,
        retry_kafka: true,
        metadata_refresh: None,
        client_policy: None,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(serve(config, options, signals));
    // Blocking Kafka calls still under way (a metadata request waiting for its timeout)
    // do not hold the exit back.
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

async fn serve(config: Config, options: StartOptions, mut signals: Signals) -> anyhow::Result<()> {
    let server = server::start(config, options).await.context("starting the proxy")?;
    if !signals.serving() {
        // A signal came as start-up completed: the signal thread is ending the process.
        return std::future::pending().await;
    }
    tracing::info!(mqtt = ?server.mqtt_addresses, admin = %server.admin_address, "mqtt-kafka-proxy running");
    signals.stopped().await;
    server.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}
