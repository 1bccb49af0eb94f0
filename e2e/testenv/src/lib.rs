//! The local environment that integration tests run against.
//!
//! `make env-up` starts a real Kafka and a real Kubernetes control plane and writes their
//! connection details to `.local/env` (`KEY=VALUE` lines). Tests call [`kafka`] or [`kube`]
//! to get a connection that was checked to be live: when a piece is down the test fails
//! with a message that names the command to start it, never skips.
//!
//! Variables already set in the process environment win over the file, so a test run can
//! be pointed at another Kafka or cluster.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

pub mod kafka_node;

/// How to start the environment; every failure message ends with it.
pub const START_HINT: &str = "start the local environment with `make env-up` (from the repository root)";

/// What can go wrong finding or reaching the environment.
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    #[error("no {key} in the process environment nor in {file}; {START_HINT}")]
    Missing { key: &'static str, file: PathBuf },
    #[error("Kafka at {bootstrap} is not reachable ({reason}); {START_HINT}")]
    KafkaDown { bootstrap: String, reason: String },
    #[error("the Kubernetes apiserver of {kubeconfig} is not reachable ({reason}); {START_HINT}")]
    ApiserverDown { kubeconfig: PathBuf, reason: String },
}

/// Connection details of the environment.
#[derive(Clone, Debug)]
pub struct TestEnv {
    pub kafka_bootstrap: String,
    pub kubeconfig: PathBuf,
}

/// The repository root: the nearest ancestor of this crate that holds `Cargo.lock`.
pub fn repo_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.ancestors()
        .find(|p| p.join("Cargo.lock").is_file())
        .unwrap_or(here)
        .to_path_buf()
}

/// The file `make env-up` writes (`MQTT_KAFKA_ENV_FILE` overrides it).
pub fn env_file() -> PathBuf {
    std::env::var_os("MQTT_KAFKA_ENV_FILE")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".local").join("env"))
}

/// Parses `KEY=VALUE` lines; blank lines and `#` comments are skipped.
pub fn parse_env_file(text: &str) -> HashMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

/// `key` from the process environment, else from the environment file's `from_file`.
fn env_value(from_file: &HashMap<String, String>, key: &'static str) -> Result<String, EnvError> {
    std::env::var(key)
        .ok()
        .filter(|v| !v.is_empty())
        .or_else(|| from_file.get(key).cloned())
        .ok_or_else(|| EnvError::Missing { key, file: env_file() })
}

/// `KEY=VALUE` of the environment file.
fn env_file_values() -> HashMap<String, String> {
    std::fs::read_to_string(env_file())
        .map(|t| parse_env_file(&t))
        .unwrap_or_default()
}

impl TestEnv {
    /// The folder of the Kafka jars (`KAFKA_LIBS`), for tests that start a broker of their own.
    pub fn kafka_libs() -> Result<Option<PathBuf>, EnvError> {
        Ok(std::env::var("KAFKA_LIBS")
            .ok()
            .filter(|v| !v.is_empty())
            .or_else(|| env_file_values().remove("KAFKA_LIBS"))
            .map(PathBuf::from))
    }

    /// Reads the connection details without checking that anything runs.
    pub fn load() -> Result<Self, EnvError> {
        let from_file = env_file_values();
        let get = |key| env_value(&from_file, key);
        Ok(Self {
            kafka_bootstrap: get("KAFKA_BOOTSTRAP")?,
            kubeconfig: PathBuf::from(get("KUBECONFIG")?),
        })
    }
}

/// The environment's SASL_SSL Kafka listener (SCRAM over TLS signed by the environment's
/// own CA), for tests of the proxy's Kafka security settings.
#[derive(Clone, Debug)]
pub struct KafkaSasl {
    pub bootstrap: String,
    pub mechanism: String,
    pub username: String,
    /// A file holding the password (no trailing newline needed).
    pub password_file: PathBuf,
    /// The CA certificate (PEM) that signed the broker's certificate.
    pub ca_file: PathBuf,
}

impl KafkaSasl {
    /// Reads the listener's details from the environment file (an environment started
    /// before the listener existed lacks them: `make env-up` adds them).
    pub fn load() -> Result<Self, EnvError> {
        let from_file = env_file_values();
        let get = |key| env_value(&from_file, key);
        Ok(Self {
            bootstrap: get("KAFKA_SASL_BOOTSTRAP")?,
            mechanism: get("KAFKA_SASL_MECHANISM")?,
            username: get("KAFKA_SASL_USER")?,
            password_file: PathBuf::from(get("KAFKA_SASL_PASSWORD_FILE")?),
            ca_file: PathBuf::from(get("KAFKA_CA_FILE")?),
        })
    }
}

/// The Kafka bootstrap address, after checking that a broker answers a metadata request.
pub async fn kafka() -> Result<String, EnvError> {
    let bootstrap = TestEnv::load()?.kafka_bootstrap;
    let probe = bootstrap.clone();
    let checked = tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &probe)
            .set("socket.connection.setup.timeout.ms", "3000")
            .create()
            .map_err(|e| e.to_string())?;
        consumer
            .fetch_metadata(None, Duration::from_secs(5))
            .map(|_| ())
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|r| r);
    match checked {
        Ok(()) => Ok(bootstrap),
        Err(reason) => Err(EnvError::KafkaDown { bootstrap, reason }),
    }
}

/// A client for the environment's apiserver, after checking that it answers.
pub async fn kube() -> Result<kube::Client, EnvError> {
    // kube uses rustls; name the crypto provider so a dependency that enables a second one
    // (aws-lc) cannot leave rustls unable to choose at run time.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kubeconfig = TestEnv::load()?.kubeconfig;
    let down = |reason: String| EnvError::ApiserverDown {
        kubeconfig: kubeconfig.clone(),
        reason,
    };
    let config = kube::config::Kubeconfig::read_from(&kubeconfig).map_err(|e| down(e.to_string()))?;
    let mut config = kube::Config::from_custom_kubeconfig(config, &Default::default())
        .await
        .map_err(|e| down(e.to_string()))?;
    config.connect_timeout = Some(Duration::from_secs(3));
    config.read_timeout = Some(Duration::from_secs(30));
    let client = kube::Client::try_from(config).map_err(|e| down(e.to_string()))?;
    client.apiserver_version().await.map_err(|e| down(e.to_string()))?;
    Ok(client)
}

/// A name no other test run uses, for topics, namespaces and objects: `prefix-<pid>-<n>`.
pub fn unique_name(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!("{prefix}-{}-{n}-{:x}", std::process::id(), nanos & 0xffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_file_lines_parse_into_pairs() {
        let text = "# comment\nKAFKA_BOOTSTRAP=127.0.0.1:19092\n\nKUBECONFIG = /x/admin.kubeconfig\nnonsense\n";
        let map = parse_env_file(text);
        assert_eq!(map.get("KAFKA_BOOTSTRAP").map(String::as_str), Some("127.0.0.1:19092"));
        assert_eq!(map.get("KUBECONFIG").map(String::as_str), Some("/x/admin.kubeconfig"));
        assert_eq!(map.len(), 2);
    }

    #[test]
    fn unique_names_differ_and_are_valid_kubernetes_names() {
        let a = unique_name("smoke");
        let b = unique_name("smoke");
        assert_ne!(a, b);
        assert!(
            a.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        );
    }
}
