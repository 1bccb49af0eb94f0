//! The proxy's YAML configuration (DESIGN section 6).
//!
//! One schema, used by the proxy (`--config FILE`) and by the operator, which builds a
//! [`Config`] and renders it into the proxy's ConfigMap with [`Config::to_yaml`]. Option
//! names follow Zilla's `mqtt-kafka` binding where they overlap (`topics.*`, `clients`,
//! `publish.qosMax`, `routes[].when|with|guarded`).
//!
//! Everything except `kafka.bootstrapServers` has a default, so the smallest valid file is
//!
//! ```yaml
//! kafka: {bootstrapServers: "127.0.0.1:9092"}
//! ```
//!
//! `deploy/examples/proxy-config.yaml` shows and explains every option.
//!
//! Reading is strict: unknown keys are rejected, and every error names the key path
//! (`mqtt.receiveMaximum: must be 1..=65535, got 0`). serde-saphyr reports only line and
//! column, so parsing goes through `serde_path_to_error` to learn the path; the
//! semantic rules live in [`Config::validate`], which reports every violation at once.
//!
//! Three rooms: [`schema`] (the types, their defaults, their serde and JSON schema form,
//! which the operator reuses), `load` (YAML in and out, and what a loaded config resolves
//! against the environment) and `validate` (the rules the types cannot express).

use std::fmt;
use std::path::PathBuf;

pub mod auth;
mod load;
pub mod schema;
mod validate;

pub use auth::*;
pub use schema::*;
pub use validate::{validate_kafka_topic_name, validate_topic_filter};

/// Placeholder of [`Cluster::server_reference`] replaced by the instance id.
pub const INSTANCE_PLACEHOLDER: &str = "{instance}";
/// Placeholder a `clients` pattern uses to capture the partitioning identity.
pub const IDENTITY_PLACEHOLDER: &str = "{identity}";
/// Instance id used when neither the config nor `$HOSTNAME` gives one.
pub const DEFAULT_INSTANCE_ID: &str = "proxy-0";
/// Largest packet size MQTT can express (remaining length 268,435,455 plus header).
pub const MQTT_MAX_PACKET_SIZE: u32 = 268_435_455;
/// Longest legal Kafka topic name.
pub const KAFKA_TOPIC_MAX_LEN: usize = 249;
/// librdkafka properties the proxy sets itself: overriding them would break DESIGN
/// guarantees (acks=all + idempotence, the murmur2 partitioner, consumer group identity).
pub const RESERVED_KAFKA_PROPERTIES: &[&str] = &[
    "bootstrap.servers",
    "metadata.broker.list",
    "acks",
    "request.required.acks",
    "enable.idempotence",
    "partitioner",
    "group.id",
    "group.instance.id",
    "enable.auto.commit",
];

// ---------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------

/// Why a configuration could not be read, validated or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The text is not YAML, or does not fit the schema (unknown key, wrong type, missing key).
    #[error("{}", prefixed(path, message))]
    Parse {
        /// Key path of the offending key, e.g. `listeners[1].address`; empty when the
        /// error is not tied to a key (YAML syntax error, empty document).
        path: String,
        /// One-line message, ending in `at line L, column C` when the location is known.
        message: String,
        /// 1-based line of the error, when known.
        line: Option<u64>,
        /// 1-based column of the error, when known.
        column: Option<u64>,
        /// Multi-line rendering with a source snippet, for a terminal.
        rendered: String,
    },
    /// The configuration parsed but breaks one or more rules of [`Config::validate`].
    #[error("{}", join_violations(.0))]
    Invalid(Vec<Violation>),
    /// The configuration could not be rendered as YAML.
    #[error("cannot render config as YAML: {0}")]
    Serialize(String),
}

impl ConfigError {
    /// The rule violations of an [`ConfigError::Invalid`], else an empty slice.
    pub fn violations(&self) -> &[Violation] {
        match self {
            ConfigError::Invalid(violations) => violations,
            _ => &[],
        }
    }

    pub(crate) fn invalid(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Invalid(vec![Violation {
            path: path.into(),
            message: message.into(),
        }])
    }
}

/// One broken rule: the key path and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// Key path, e.g. `listeners[0].address` or `kafka.properties["sasl.password"]`.
    pub path: String,
    /// What is wrong, e.g. `invalid socket address "x"`.
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

fn prefixed(path: &str, message: &str) -> String {
    if path.is_empty() {
        message.to_owned()
    } else {
        format!("{path}: {message}")
    }
}

fn join_violations(violations: &[Violation]) -> String {
    violations
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Path segment of a map key: `.key` for plain keys, `["key"]` for keys with dots etc.
pub(crate) fn key_segment(key: &str) -> String {
    if !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        format!(".{key}")
    } else {
        format!("[{key:?}]")
    }
}

#[cfg(test)]
mod tests;
