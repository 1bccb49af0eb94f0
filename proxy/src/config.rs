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

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

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

    fn invalid(path: impl Into<String>, message: impl Into<String>) -> Self {
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

// ---------------------------------------------------------------------------------------
// The schema
// ---------------------------------------------------------------------------------------

/// The proxy's configuration file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Config {
    /// This pod's instance id (its pod name): the Kafka `group.instance.id` and the
    /// `{instance}` of `cluster.serverReference`. Usually left out, so that one file serves
    /// every pod of a StatefulSet: then `$HOSTNAME` is used, else `proxy-0`
    /// (`Config::effective_instance_id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    /// MQTT listeners. Default: one `tcp` listener named `mqtt` on `0.0.0.0:1883`.
    #[serde(default = "default_listeners")]
    pub listeners: Vec<Listener>,
    /// Health and metrics HTTP endpoint.
    #[serde(default)]
    pub admin: Admin,
    /// How to reach Kafka. The only required key.
    pub kafka: Kafka,
    /// The three Kafka topics of DESIGN section 2.
    #[serde(default)]
    pub topics: Topics,
    /// Patterns such as `place/{identity}/#`: the `{identity}` captured by the first pattern
    /// that matches a topic is the key the messages record is partitioned by.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clients: Vec<String>,
    /// Publish limits.
    #[serde(default)]
    pub publish: Publish,
    /// MQTT protocol limits, advertised in CONNACK and enforced.
    #[serde(default)]
    pub mqtt: Mqtt,
    /// Routes mapping topic filters to other messages topics and/or guarding them.
    /// The first route whose `when` matches applies; unmatched topics use `topics.messages`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    /// Session ownership and redirect-based sharding (DESIGN section 4).
    #[serde(default)]
    pub cluster: Cluster,
    /// Authorization guards, referred to by name from `routes[].guarded`.
    #[serde(default, skip_serializing_if = "Guards::is_empty")]
    pub guards: Guards,
    /// Rules that hold for every client, with or without a guard.
    #[serde(default, skip_serializing_if = "Authorization::is_empty")]
    pub authorization: Authorization,
}

/// Rules that hold for every client.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Authorization {
    /// Topic filters nobody may publish to or subscribe to (a SUBSCRIBE whose filter could
    /// match one of them is refused as a whole: 0x87, 3.1.1 0x80).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<DenyRule>,
}

impl Authorization {
    pub fn is_empty(&self) -> bool {
        self.deny.is_empty()
    }
}

/// A topic filter closed to every client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DenyRule {
    /// MQTT topic filter, e.g. `internal/#`.
    #[schemars(length(min = 1))]
    pub topic: String,
    /// What is refused; default both.
    #[serde(default = "both_actions")]
    pub actions: Vec<DeniedAction>,
}

/// An action a deny rule refuses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeniedAction {
    Publish,
    Subscribe,
}

fn both_actions() -> Vec<DeniedAction> {
    vec![DeniedAction::Publish, DeniedAction::Subscribe]
}

/// An MQTT listener.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Listener {
    /// Unique name, also usable as a Kubernetes port name: 1 to 15 lowercase letters,
    /// digits and `-`, starting and ending with a letter or digit.
    #[schemars(length(min = 1, max = 15), pattern(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$"))]
    pub name: String,
    /// Transport: `tcp`, `tls` (needs `tls`) or `websocket` (sub-protocol `mqtt`).
    #[serde(default)]
    pub protocol: ListenerProtocol,
    /// Socket address to bind, e.g. `0.0.0.0:1883` or `[::]:8883`.
    pub address: String,
    /// HTTP path of a `websocket` listener; default `/mqtt`. Only for `websocket`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Certificate and key of a `tls` listener; required for `tls`, refused otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<Tls>,
    /// `host:port` template at which clients reach this listener of this process
    /// (`{instance}` is replaced by the instance id). An MQTT 5 client redirected to
    /// another process is sent to that process's reference for the listener it came in
    /// on, so a TLS or WebSocket client stays on TLS or WebSocket. Default:
    /// `cluster.serverReference`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_reference: Option<String>,
}

/// Transport of a [`Listener`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ListenerProtocol {
    /// Plain MQTT over TCP.
    #[default]
    Tcp,
    /// MQTT over TLS.
    Tls,
    /// MQTT over WebSocket (sub-protocol `mqtt`), without TLS.
    Websocket,
}

/// TLS material of a `tls` listener, as PEM files. The files are read again every
/// `reloadSeconds` and a changed certificate, key or client CA is served to the next
/// connections (a rotated Kubernetes Secret); files that cannot be used keep the last good
/// ones.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Tls {
    /// PEM certificate chain, leaf first.
    #[schemars(length(min = 1))]
    pub cert_file: String,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    #[schemars(length(min = 1))]
    pub key_file: String,
    /// PEM bundle of the CA certificates that client certificates must chain to. Setting
    /// it asks clients for a certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca_file: Option<String>,
    /// Whether a client certificate is `required` (default with `clientCaFile`) or
    /// `optional` (a client without one is served, one with a bad one is not). Only with
    /// `clientCaFile`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_auth: Option<ClientAuth>,
    /// What a verified client certificate says about the client: `subject-cn` makes its
    /// subject common name the client's identity (`{identity}` in guarded routes of the
    /// `tls` guard) and its subject organizations (O) the client's roles. Applies when no
    /// JWT guard is configured. Only with `clientCaFile`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_identity: Option<ClientIdentity>,
    /// How often the files are checked for changes, in seconds (1..=3600).
    #[serde(default = "default_tls_reload_seconds")]
    pub reload_seconds: u32,
}

impl Tls {
    /// A listener's certificate and key, with every other setting at its default.
    pub fn new(cert_file: impl Into<String>, key_file: impl Into<String>) -> Self {
        Tls {
            cert_file: cert_file.into(),
            key_file: key_file.into(),
            client_ca_file: None,
            client_auth: None,
            client_identity: None,
            reload_seconds: default_tls_reload_seconds(),
        }
    }

    /// How clients are asked for certificates: `None` when not at all.
    pub fn effective_client_auth(&self) -> Option<ClientAuth> {
        self.client_ca_file
            .as_ref()
            .map(|_| self.client_auth.unwrap_or(ClientAuth::Required))
    }
}

fn default_tls_reload_seconds() -> u32 {
    5
}

/// Whether a TLS listener with a client CA requires a client certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// A client without a certificate fails the handshake.
    Required,
    /// A client without a certificate is served (without a certificate identity).
    Optional,
}

/// Which part of a verified client certificate identifies the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ClientIdentity {
    /// The subject's common name (CN) is the identity, its organizations (O) the roles.
    SubjectCn,
}

/// The HTTP endpoint serving `/healthz`, `/readyz` and `/metrics`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Admin {
    /// Socket address to bind.
    pub address: String,
}

impl Default for Admin {
    fn default() -> Self {
        Admin {
            address: "0.0.0.0:9090".to_owned(),
        }
    }
}

/// Kafka connection settings shared by every Kafka client of the proxy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Kafka {
    /// Comma-separated `host:port` list (librdkafka `bootstrap.servers`).
    #[schemars(length(min = 1))]
    pub bootstrap_servers: String,
    /// Extra librdkafka properties for every client (`security.protocol`, `sasl.*`,
    /// `ssl.*`, ...). Properties the proxy sets itself (`acks`, `enable.idempotence`,
    /// `partitioner`, `group.id`, ...) are refused.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub properties: BTreeMap<String, String>,
    /// librdkafka properties whose value is read from an environment variable at start-up
    /// (property -> variable name), so secrets such as `sasl.password` stay out of the file.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub properties_from_env: BTreeMap<String, String>,
}

impl Kafka {
    /// Kafka settings with the given bootstrap servers and no extra properties.
    pub fn new(bootstrap_servers: impl Into<String>) -> Self {
        Kafka {
            bootstrap_servers: bootstrap_servers.into(),
            properties: BTreeMap::new(),
            properties_from_env: BTreeMap::new(),
        }
    }

    /// `bootstrap.servers` plus `properties` plus `propertiesFromEnv` resolved with
    /// `lookup` (a variable that is not set is an error naming its key path).
    pub fn client_properties_with(
        &self,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<BTreeMap<String, String>, ConfigError> {
        let mut out = self.properties.clone();
        out.insert("bootstrap.servers".to_owned(), self.bootstrap_servers.clone());
        let mut missing = Vec::new();
        for (property, var) in &self.properties_from_env {
            match lookup(var) {
                Some(value) => {
                    out.insert(property.clone(), value);
                }
                None => missing.push(Violation {
                    path: format!("kafka.propertiesFromEnv{}", key_segment(property)),
                    message: format!("environment variable {var} is not set"),
                }),
            }
        }
        if missing.is_empty() {
            Ok(out)
        } else {
            Err(ConfigError::Invalid(missing))
        }
    }

    /// [`Kafka::client_properties_with`] reading the process environment.
    pub fn client_properties(&self) -> Result<BTreeMap<String, String>, ConfigError> {
        self.client_properties_with(|var| std::env::var(var).ok())
    }
}

/// The Kafka topics (names as in Zilla's mqtt-kafka binding).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Topics {
    /// Session state; must have `cleanup.policy=compact`.
    #[schemars(length(min = 1, max = 249), pattern(r"^[a-zA-Z0-9._-]+$"))]
    pub sessions: String,
    /// Default topic of published messages.
    #[schemars(length(min = 1, max = 249), pattern(r"^[a-zA-Z0-9._-]+$"))]
    pub messages: String,
    /// Retained messages; should have `cleanup.policy=compact`.
    #[schemars(length(min = 1, max = 249), pattern(r"^[a-zA-Z0-9._-]+$"))]
    pub retained: String,
}

impl Default for Topics {
    fn default() -> Self {
        Topics {
            sessions: "mqtt-sessions".to_owned(),
            messages: "mqtt-messages".to_owned(),
            retained: "mqtt-retained".to_owned(),
        }
    }
}

/// Publish limits.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Publish {
    /// Highest QoS accepted from publishers (and advertised as Maximum QoS):
    /// `0`/`at_most_once`, `1`/`at_least_once` or `2`/`exactly_once`. Written as a number.
    pub qos_max: Qos,
}

/// An MQTT quality of service level.
///
/// Reads `0`, `1`, `2` (numbers or strings) and Zilla's `at_most_once`, `at_least_once`,
/// `exactly_once`; writes the number.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Qos {
    AtMostOnce = 0,
    AtLeastOnce = 1,
    #[default]
    ExactlyOnce = 2,
}

impl Qos {
    /// The QoS as its protocol number.
    pub fn as_u8(self) -> u8 {
        self as u8
    }

    /// The QoS of a protocol number, if it is one.
    pub fn from_u8(value: u8) -> Option<Qos> {
        match value {
            0 => Some(Qos::AtMostOnce),
            1 => Some(Qos::AtLeastOnce),
            2 => Some(Qos::ExactlyOnce),
            _ => None,
        }
    }

    fn from_name(name: &str) -> Option<Qos> {
        match name.trim() {
            "0" | "at_most_once" => Some(Qos::AtMostOnce),
            "1" | "at_least_once" => Some(Qos::AtLeastOnce),
            "2" | "exactly_once" => Some(Qos::ExactlyOnce),
            _ => None,
        }
    }
}

impl Serialize for Qos {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u8(self.as_u8())
    }
}

impl<'de> Deserialize<'de> for Qos {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct QosVisitor;
        const EXPECTED: &str = "0, 1, 2, at_most_once, at_least_once or exactly_once";

        impl Visitor<'_> for QosVisitor {
            type Value = Qos;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(EXPECTED)
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Qos, E> {
                u8::try_from(v)
                    .ok()
                    .and_then(Qos::from_u8)
                    .ok_or_else(|| E::invalid_value(de::Unexpected::Unsigned(v), &EXPECTED))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Qos, E> {
                u8::try_from(v)
                    .ok()
                    .and_then(Qos::from_u8)
                    .ok_or_else(|| E::invalid_value(de::Unexpected::Signed(v), &EXPECTED))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Qos, E> {
                Qos::from_name(v).ok_or_else(|| E::invalid_value(de::Unexpected::Str(v), &EXPECTED))
            }
        }

        deserializer.deserialize_any(QosVisitor)
    }
}

impl JsonSchema for Qos {
    fn schema_name() -> Cow<'static, str> {
        "Qos".into()
    }

    fn json_schema(_generator: &mut SchemaGenerator) -> Schema {
        // Int-or-string in the only shape a Kubernetes structural schema accepts.
        json_schema!({
            "description": "MQTT QoS: 0, 1, 2 or at_most_once, at_least_once, exactly_once",
            "x-kubernetes-int-or-string": true,
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "enum": [0, 1, 2, "0", "1", "2", "at_most_once", "at_least_once", "exactly_once"]
        })
    }
}

/// An MQTT protocol version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema)]
pub enum MqttVersion {
    /// MQTT 3.1.1 (protocol level 4). Also read as `v3.1.1`.
    #[serde(rename = "3.1.1", alias = "v3.1.1")]
    V3_1_1,
    /// MQTT 5.0 (protocol level 5). Also read as `5`, `v5`.
    #[serde(rename = "5.0", alias = "5", alias = "v5")]
    V5,
}

impl MqttVersion {
    /// The protocol level byte of CONNECT.
    pub fn protocol_level(self) -> u8 {
        match self {
            MqttVersion::V3_1_1 => 4,
            MqttVersion::V5 => 5,
        }
    }
}

/// MQTT limits. All of them are enforced, and the MQTT 5 ones advertised in CONNACK.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Mqtt {
    /// Protocol versions accepted (`3.1.1`, `5.0`); others get CONNACK 0x84 / 0x01.
    #[schemars(length(min = 1))]
    pub versions: Vec<MqttVersion>,
    /// Largest packet accepted, in bytes (Maximum Packet Size), 1..=268435455.
    #[schemars(range(min = 1, max = 268_435_455))]
    pub maximum_packet_size: u32,
    /// Inbound QoS 1/2 window per client (Receive Maximum), 1..=65535.
    #[schemars(range(min = 1))]
    pub receive_maximum: u16,
    /// Topic aliases a client may use towards the server (Topic Alias Maximum); 0 = none.
    pub topic_alias_maximum: u16,
    /// Longest keep-alive granted, in seconds; clients asking for more (or for 0) get this
    /// value as Server Keep Alive (5.0). 0 = no cap.
    pub max_keep_alive: u16,
    /// If set, always sent as Server Keep Alive (5.0) and used instead of the client's value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_keep_alive: Option<u16>,
    /// Seconds a new connection has to send CONNECT before it is closed.
    #[schemars(range(min = 1))]
    pub connect_timeout: u16,
    /// Seconds a write to a client may make no progress (the client does not read) before
    /// the connection is closed.
    #[schemars(range(min = 1))]
    pub write_timeout: u16,
    /// Concurrent MQTT connections per pod; more get CONNACK 0x97 / 0x03.
    #[schemars(range(min = 1))]
    pub max_connections: u32,
    /// Cap of the server-to-client QoS 1/2 window when a client's Receive Maximum is larger.
    #[schemars(range(min = 1))]
    pub max_inflight_outbound: u16,
    /// Longest Session Expiry Interval granted, in seconds (0 = sessions end at disconnect).
    pub session_expiry_max: u32,
}

impl Default for Mqtt {
    fn default() -> Self {
        Mqtt {
            versions: vec![MqttVersion::V3_1_1, MqttVersion::V5],
            maximum_packet_size: 1_048_576,
            receive_maximum: 64,
            topic_alias_maximum: 16,
            max_keep_alive: 300,
            server_keep_alive: None,
            connect_timeout: 10,
            write_timeout: 10,
            max_connections: 100_000,
            max_inflight_outbound: 64,
            session_expiry_max: 86_400,
        }
    }
}

/// A route: topic filters that publish or subscribe use, mapped to a messages topic
/// and/or guarded by roles.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Route {
    /// Conditions; the route applies when any of them matches.
    #[schemars(length(min = 1))]
    pub when: Vec<RouteCondition>,
    /// Where matching messages go; absent = `topics.messages`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub with: Option<RouteWith>,
    /// Guard name -> roles a client needs (any one of them) to use the route.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub guarded: BTreeMap<String, Vec<String>>,
}

/// One `when` entry: either `publish: [...]` or `subscribe: [...]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum RouteCondition {
    /// Matches a PUBLISH whose topic matches one of the filters.
    Publish(Vec<TopicCondition>),
    /// Matches a SUBSCRIBE filter that one of the filters covers.
    Subscribe(Vec<TopicCondition>),
}

impl RouteCondition {
    /// The topic conditions, whichever the kind.
    pub fn topics(&self) -> &[TopicCondition] {
        match self {
            RouteCondition::Publish(topics) | RouteCondition::Subscribe(topics) => topics,
        }
    }
}

/// A topic filter of a route condition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TopicCondition {
    /// MQTT topic filter, e.g. `sensors/+/temperature` or `place/#`.
    #[schemars(length(min = 1))]
    pub topic: String,
}

/// What a route does with matching messages.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteWith {
    /// Kafka topic for matching messages instead of `topics.messages`.
    #[schemars(length(min = 1, max = 249), pattern(r"^[a-zA-Z0-9._-]+$"))]
    pub messages: String,
}

/// Session ownership and redirects (DESIGN section 4).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Cluster {
    /// `host:port` template clients can reach this pod at; `{instance}` is replaced by the
    /// instance id, e.g. `{instance}.proxy.ns.svc:1883`. Required when redirects are on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_reference: Option<String>,
    /// Redirecting MQTT 5 clients to the pod owning their session.
    pub redirect: Redirect,
}

/// Redirect settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Redirect {
    /// Redirect MQTT 5 clients whose session another pod owns (CONNACK / DISCONNECT with
    /// Server Reference). Off: every pod serves every client.
    pub enabled: bool,
    /// Reason code of redirects: 156 (0x9C, Use another server) or 157 (0x9D, Server moved).
    #[schemars(range(min = 156, max = 157))]
    pub reason_code: u8,
    /// Connected clients moved to another pod per second at most (when ownership changes
    /// or this pod shuts down), so that a membership change is no reconnect storm.
    #[schemars(range(min = 1))]
    pub max_per_second: u32,
}

impl Default for Redirect {
    fn default() -> Self {
        Redirect {
            enabled: false,
            reason_code: 0x9C,
            max_per_second: 200,
        }
    }
}

/// Authorization guards. A guard's name is its key here (`jwt`), and routes refer to it
/// by that name in `guarded`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Guards {
    /// JWT guard: clients present a token (checked by the auth module) whose roles claim
    /// must hold one of the roles a route asks for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtGuard>,
}

impl Config {
    /// Whether a listener makes client certificates principals (`tls.clientIdentity`):
    /// then routes may be guarded by the `tls` guard.
    pub fn identifies_clients_by_certificate(&self) -> bool {
        self.listeners.iter().any(|l| {
            l.tls
                .as_ref()
                .is_some_and(|t| t.client_ca_file.is_some() && t.client_identity.is_some())
        })
    }
}

impl Guards {
    /// Whether no guard is configured.
    pub fn is_empty(&self) -> bool {
        self.jwt.is_none()
    }

    /// Names of the configured guards.
    pub fn names(&self) -> Vec<&'static str> {
        let mut names = Vec::new();
        if self.jwt.is_some() {
            names.push("jwt");
        }
        names
    }
}

/// JWT guard settings (named as in Zilla's `jwt` guard where they exist there). The
/// verification keys come from one of `keys`, `jwksFile` and `jwksUrl`; with none of them,
/// from `{issuer}/.well-known/jwks.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtGuard {
    /// Required `iss` claim, if set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Required `aud` claim value, if set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// Public verification keys as JWKs (RSA, EC or OKP; private members are refused).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<Jwk>,
    /// Path of a JWKS file (`{"keys": [...]}`), instead of `keys`; read again every
    /// `refreshSeconds` and when a token names an unknown key id (a mounted ConfigMap or
    /// Secret that Kubernetes updates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_file: Option<String>,
    /// URL of a JWKS (an identity provider's `jwks_uri`), instead of `keys`; fetched again
    /// like `jwksFile`. A failed fetch keeps the last good keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_url: Option<String>,
    /// How often `jwksFile` / `jwksUrl` are read again, seconds.
    #[serde(default = "default_jwks_refresh")]
    #[schemars(range(min = 10))]
    pub refresh_seconds: u32,
    /// Claim holding the roles: a space-separated string (OAuth 2.0 `scope`) or an array.
    #[serde(default = "default_roles_claim")]
    pub roles_claim: String,
    /// Which CONNECT field carries the token: `password` (default) or `username`.
    #[serde(default)]
    pub credentials: TokenField,
}

/// The CONNECT field a token is read from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TokenField {
    #[default]
    Password,
    Username,
}

fn default_jwks_refresh() -> u32 {
    300
}

impl JwtGuard {
    /// Where the keys come from: `keys`, `jwksFile`, `jwksUrl`, else the issuer's
    /// well-known JWKS.
    pub fn jwks_location(&self) -> Option<String> {
        self.jwks_file.clone().or_else(|| self.jwks_url.clone()).or_else(|| {
            self.issuer
                .as_ref()
                .filter(|_| self.keys.is_empty())
                .map(|i| format!("{}/.well-known/jwks.json", i.trim_end_matches('/')))
        })
    }
}

/// A public JSON Web Key (RFC 7517). Member names are the JWK ones.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Jwk {
    /// Key type: `RSA`, `EC` or `OKP`.
    pub kty: String,
    /// Key id, matched against the token's `kid` header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    /// Algorithm, e.g. `RS256`, `ES256`, `EdDSA`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alg: Option<String>,
    /// Intended use (`sig`).
    #[serde(default, rename = "use", skip_serializing_if = "Option::is_none")]
    pub use_: Option<String>,
    /// Permitted operations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_ops: Option<Vec<String>>,
    /// RSA modulus (base64url).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<String>,
    /// RSA exponent (base64url).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e: Option<String>,
    /// EC / OKP curve, e.g. `P-256`, `Ed25519`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crv: Option<String>,
    /// EC / OKP public x coordinate (base64url).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x: Option<String>,
    /// EC public y coordinate (base64url).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub y: Option<String>,
    /// X.509 certificate chain (base64 DER).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x5c: Option<Vec<String>>,
    /// X.509 SHA-1 thumbprint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x5t: Option<String>,
    /// X.509 SHA-256 thumbprint.
    #[serde(default, rename = "x5t#S256", skip_serializing_if = "Option::is_none")]
    pub x5t_s256: Option<String>,
}

fn default_listeners() -> Vec<Listener> {
    vec![Listener {
        name: "mqtt".to_owned(),
        protocol: ListenerProtocol::Tcp,
        address: "0.0.0.0:1883".to_owned(),
        path: None,
        tls: None,
        server_reference: None,
    }]
}

fn default_roles_claim() -> String {
    "scope".to_owned()
}

// ---------------------------------------------------------------------------------------
// Reading, writing, schema
// ---------------------------------------------------------------------------------------

impl Config {
    /// A configuration with every default and the given Kafka settings.
    pub fn new(kafka: Kafka) -> Self {
        Config {
            instance_id: None,
            listeners: default_listeners(),
            admin: Admin::default(),
            kafka,
            topics: Topics::default(),
            clients: Vec::new(),
            publish: Publish::default(),
            mqtt: Mqtt::default(),
            routes: Vec::new(),
            cluster: Cluster::default(),
            guards: Guards::default(),
            authorization: Authorization::default(),
        }
    }

    /// Parses and validates a YAML document.
    pub fn from_yaml_str(yaml: &str) -> Result<Config, ConfigError> {
        parse_yaml(yaml, None)
    }

    /// Reads, parses and validates a YAML file.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let yaml = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        parse_yaml(&yaml, Some(&path.display().to_string()))
    }

    /// Renders the configuration as YAML that [`Config::from_yaml_str`] reads back equal.
    pub fn to_yaml(&self) -> Result<String, ConfigError> {
        serde_saphyr::to_string(self).map_err(|e| ConfigError::Serialize(e.to_string()))
    }

    /// The JSON schema (draft 2020-12) of the file.
    pub fn json_schema() -> serde_json::Value {
        schemars::schema_for!(Config).to_value()
    }

    /// `instanceId`, else `$HOSTNAME`, else `proxy-0`.
    pub fn effective_instance_id(&self) -> String {
        self.effective_instance_id_with(|var| std::env::var(var).ok())
    }

    /// [`Config::effective_instance_id`] with an explicit environment lookup.
    pub fn effective_instance_id_with(&self, lookup: impl Fn(&str) -> Option<String>) -> String {
        self.instance_id
            .clone()
            .or_else(|| lookup("HOSTNAME").filter(|h| !h.trim().is_empty()))
            .unwrap_or_else(|| DEFAULT_INSTANCE_ID.to_owned())
    }

    /// This pod's server reference: `cluster.serverReference` with `{instance}` replaced by
    /// `instance_id`; `None` when no template is configured.
    pub fn server_reference(&self, instance_id: &str) -> Option<String> {
        self.cluster
            .server_reference
            .as_ref()
            .map(|template| template.replace(INSTANCE_PLACEHOLDER, instance_id))
    }

    /// This process's server reference for each listener that has a template of its own
    /// (`listeners[].serverReference`), by listener name; the others use
    /// [`Config::server_reference`].
    pub fn listener_server_references(&self, instance_id: &str) -> BTreeMap<String, String> {
        self.listeners
            .iter()
            .filter_map(|l| {
                let template = l.server_reference.as_ref()?;
                Some((l.name.clone(), template.replace(INSTANCE_PLACEHOLDER, instance_id)))
            })
            .collect()
    }

    /// Checks every rule the types cannot express; reports all violations at once.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut v = Validator::default();
        self.validate_into(&mut v);
        if v.violations.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(v.violations))
        }
    }

    fn validate_into(&self, v: &mut Validator) {
        if let Some(id) = &self.instance_id {
            if id.is_empty() {
                v.err("instanceId", "must not be empty");
            } else if id
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || c == '{' || c == '}')
            {
                v.err(
                    "instanceId",
                    format!("must not contain whitespace or braces, got {id:?}"),
                );
            }
        }
        self.validate_listeners(v);
        if let Err(msg) = parse_socket_addr(&self.admin.address) {
            v.err("admin.address", msg);
        }
        self.validate_kafka(v);
        self.validate_topics(v);
        for (i, pattern) in self.clients.iter().enumerate() {
            let path = format!("clients[{i}]");
            if pattern.is_empty() {
                v.err(path, "must not be empty");
            } else if !pattern.contains(IDENTITY_PLACEHOLDER) {
                v.err(path, format!("must contain {IDENTITY_PLACEHOLDER}, got {pattern:?}"));
            } else if pattern
                .split('/')
                .any(|level| level.contains(IDENTITY_PLACEHOLDER) && level != IDENTITY_PLACEHOLDER)
            {
                v.err(
                    path,
                    format!("{IDENTITY_PLACEHOLDER} must be a whole topic level, got {pattern:?}"),
                );
            } else if let Err(msg) = validate_topic_filter(&pattern.replace(IDENTITY_PLACEHOLDER, "+")) {
                v.err(path, msg);
            }
        }
        self.validate_mqtt(v);
        self.validate_routes(v);
        self.validate_cluster(v);
        if let Some(jwt) = &self.guards.jwt {
            validate_jwt(jwt, v);
        }
        for (i, rule) in self.authorization.deny.iter().enumerate() {
            if let Err(msg) = validate_topic_filter(&rule.topic) {
                v.err(format!("authorization.deny[{i}].topic"), msg);
            }
            if rule.actions.is_empty() {
                v.err(
                    format!("authorization.deny[{i}].actions"),
                    "name publish, subscribe or both",
                );
            }
        }
    }

    fn validate_listeners(&self, v: &mut Validator) {
        if self.listeners.is_empty() {
            v.err("listeners", "at least one listener is required");
        }
        let mut names: HashMap<&str, usize> = HashMap::new();
        let mut addresses: HashMap<SocketAddr, String> = HashMap::new();
        if let Ok(admin) = parse_socket_addr(&self.admin.address)
            && admin.port() != 0
        {
            addresses.insert(admin, "admin.address".to_owned());
        }
        for (i, listener) in self.listeners.iter().enumerate() {
            let at = |key: &str| format!("listeners[{i}].{key}");
            if !is_port_name(&listener.name) {
                v.err(
                    at("name"),
                    format!(
                        "must be 1 to 15 lowercase letters, digits and '-', starting and ending with a letter or \
                         digit, got {:?}",
                        listener.name
                    ),
                );
            }
            if let Some(first) = names.insert(&listener.name, i) {
                v.err(
                    at("name"),
                    format!("duplicate listener name {:?} (also listeners[{first}])", listener.name),
                );
            }
            match parse_socket_addr(&listener.address) {
                Err(msg) => v.err(at("address"), msg),
                // Port 0 asks the OS for a free port: never a clash.
                Ok(addr) if addr.port() == 0 => {}
                Ok(addr) => {
                    if let Some(other) = addresses.insert(addr, at("address")) {
                        v.err(at("address"), format!("address {addr} is already used by {other}"));
                    }
                }
            }
            match (listener.protocol, &listener.tls) {
                (ListenerProtocol::Tls, None) => v.err(at("tls"), "required when protocol is tls"),
                // tls on a websocket listener makes it wss://.
                (ListenerProtocol::Tls | ListenerProtocol::Websocket, Some(tls)) => {
                    if tls.cert_file.is_empty() {
                        v.err(at("tls.certFile"), "must not be empty");
                    }
                    if tls.key_file.is_empty() {
                        v.err(at("tls.keyFile"), "must not be empty");
                    }
                    if tls.client_ca_file.as_deref() == Some("") {
                        v.err(at("tls.clientCaFile"), "must not be empty");
                    }
                    if tls.client_ca_file.is_none() {
                        if tls.client_auth.is_some() {
                            v.err(at("tls.clientAuth"), "only allowed with tls.clientCaFile");
                        }
                        if tls.client_identity.is_some() {
                            v.err(at("tls.clientIdentity"), "only allowed with tls.clientCaFile");
                        }
                    }
                    if !(1..=3600).contains(&tls.reload_seconds) {
                        v.err(
                            at("tls.reloadSeconds"),
                            format!("must be 1..=3600, got {}", tls.reload_seconds),
                        );
                    }
                }
                (protocol, Some(_)) => v.err(
                    at("tls"),
                    format!(
                        "only allowed when protocol is tls or websocket, protocol is {}",
                        protocol.as_str()
                    ),
                ),
                (_, None) => {}
            }
            if let Some(template) = &listener.server_reference
                && let Err(msg) = check_host_port(&template.replace(INSTANCE_PLACEHOLDER, "proxy-0"))
            {
                v.err(at("serverReference"), format!("{msg}, got {template:?}"));
            }
            if let Some(path) = &listener.path {
                if listener.protocol != ListenerProtocol::Websocket {
                    v.err(
                        at("path"),
                        format!(
                            "only allowed when protocol is websocket, protocol is {}",
                            listener.protocol.as_str()
                        ),
                    );
                } else if !path.starts_with('/') || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    v.err(
                        at("path"),
                        format!("must start with '/' and hold no whitespace, got {path:?}"),
                    );
                }
            }
        }
    }

    fn validate_kafka(&self, v: &mut Validator) {
        let servers = &self.kafka.bootstrap_servers;
        if servers.trim().is_empty() {
            v.err("kafka.bootstrapServers", "must not be empty");
        } else if servers
            .split(',')
            .any(|s| s.trim().is_empty() || s.trim().contains(char::is_whitespace))
        {
            v.err(
                "kafka.bootstrapServers",
                format!("must be a comma-separated host:port list, got {servers:?}"),
            );
        }
        for key in self.kafka.properties.keys() {
            let path = format!("kafka.properties{}", key_segment(key));
            check_property_name(key, &path, v);
            if self.kafka.properties_from_env.contains_key(key) {
                v.err(path, "also set in kafka.propertiesFromEnv; set it in one place");
            }
        }
        for (key, var) in &self.kafka.properties_from_env {
            let path = format!("kafka.propertiesFromEnv{}", key_segment(key));
            check_property_name(key, &path, v);
            if !is_env_var_name(var) {
                v.err(path, format!("not an environment variable name: {var:?}"));
            }
        }
    }

    fn validate_topics(&self, v: &mut Validator) {
        let topics = &self.topics;
        for (key, name) in [
            ("sessions", &topics.sessions),
            ("messages", &topics.messages),
            ("retained", &topics.retained),
        ] {
            if let Err(msg) = validate_kafka_topic_name(name) {
                v.err(format!("topics.{key}"), msg);
            }
        }
        if topics.messages == topics.sessions {
            v.err("topics.messages", "must differ from topics.sessions");
        }
        if topics.retained == topics.sessions {
            v.err("topics.retained", "must differ from topics.sessions");
        }
        if topics.retained == topics.messages {
            v.err("topics.retained", "must differ from topics.messages");
        }
    }

    fn validate_mqtt(&self, v: &mut Validator) {
        let mqtt = &self.mqtt;
        if mqtt.versions.is_empty() {
            v.err("mqtt.versions", "at least one version is required");
        }
        for (i, version) in mqtt.versions.iter().enumerate() {
            if mqtt.versions[..i].contains(version) {
                v.err(format!("mqtt.versions[{i}]"), "duplicate version");
            }
        }
        if !(1..=MQTT_MAX_PACKET_SIZE).contains(&mqtt.maximum_packet_size) {
            v.err(
                "mqtt.maximumPacketSize",
                format!("must be 1..={MQTT_MAX_PACKET_SIZE}, got {}", mqtt.maximum_packet_size),
            );
        }
        if mqtt.receive_maximum == 0 {
            v.err("mqtt.receiveMaximum", "must be 1..=65535, got 0");
        }
        if let Some(server) = mqtt.server_keep_alive
            && mqtt.max_keep_alive != 0
            && server > mqtt.max_keep_alive
        {
            v.err(
                "mqtt.serverKeepAlive",
                format!(
                    "must not exceed mqtt.maxKeepAlive ({}), got {server}",
                    mqtt.max_keep_alive
                ),
            );
        }
        if mqtt.connect_timeout == 0 {
            v.err("mqtt.connectTimeout", "must be 1..=65535, got 0");
        }
        if mqtt.write_timeout == 0 {
            v.err("mqtt.writeTimeout", "must be 1..=65535, got 0");
        }
        if mqtt.max_connections == 0 {
            v.err("mqtt.maxConnections", format!("must be 1..={}, got 0", u32::MAX));
        }
        if mqtt.max_inflight_outbound == 0 {
            v.err("mqtt.maxInflightOutbound", "must be 1..=65535, got 0");
        }
    }

    fn validate_routes(&self, v: &mut Validator) {
        for (r, route) in self.routes.iter().enumerate() {
            let at = |key: &str| format!("routes[{r}].{key}");
            if route.when.is_empty() {
                v.err(at("when"), "at least one condition is required");
            }
            for (c, condition) in route.when.iter().enumerate() {
                let kind = match condition {
                    RouteCondition::Publish(_) => "publish",
                    RouteCondition::Subscribe(_) => "subscribe",
                };
                let cond_path = at(&format!("when[{c}].{kind}"));
                if condition.topics().is_empty() {
                    v.err(cond_path.clone(), "at least one topic is required");
                }
                for (t, topic) in condition.topics().iter().enumerate() {
                    if let Err(msg) = validate_topic_filter(&topic.topic) {
                        v.err(format!("{cond_path}[{t}].topic"), msg);
                    }
                }
            }
            if route.with.is_none() && route.guarded.is_empty() {
                v.err(format!("routes[{r}]"), "a route needs `with`, `guarded` or both");
            }
            if let Some(with) = &route.with {
                if let Err(msg) = validate_kafka_topic_name(&with.messages) {
                    v.err(at("with.messages"), msg);
                } else if with.messages == self.topics.sessions || with.messages == self.topics.retained {
                    v.err(
                        at("with.messages"),
                        format!("must not be the sessions or retained topic, got {:?}", with.messages),
                    );
                }
            }
            let mut guards = self.guards.names();
            if self.identifies_clients_by_certificate() {
                guards.push("tls");
            }
            for (guard, roles) in &route.guarded {
                let path = format!("routes[{r}].guarded{}", key_segment(guard));
                if !guards.contains(&guard.as_str()) {
                    let known = if guards.is_empty() {
                        "none".to_owned()
                    } else {
                        guards.join(", ")
                    };
                    v.err(
                        path.clone(),
                        format!("unknown guard {guard:?} (configured guards: {known})"),
                    );
                }
                for (i, role) in roles.iter().enumerate() {
                    if role.trim().is_empty() {
                        v.err(format!("{path}[{i}]"), "role must not be empty");
                    }
                }
            }
        }
    }

    fn validate_cluster(&self, v: &mut Validator) {
        match &self.cluster.server_reference {
            // Without `{instance}` the reference is this one process's own (a local run
            // with a file per process); with it, one file serves every pod.
            Some(template) => {
                if let Err(msg) = check_host_port(&template.replace(INSTANCE_PLACEHOLDER, "proxy-0")) {
                    v.err("cluster.serverReference", format!("{msg}, got {template:?}"));
                }
            }
            None if self.cluster.redirect.enabled => {
                v.err(
                    "cluster.serverReference",
                    "required when cluster.redirect.enabled is true",
                );
            }
            None => {}
        }
        let code = self.cluster.redirect.reason_code;
        if code != 0x9C && code != 0x9D {
            v.err(
                "cluster.redirect.reasonCode",
                format!("must be 156 (0x9C, use another server) or 157 (0x9D, server moved), got {code}"),
            );
        }
        if self.cluster.redirect.max_per_second == 0 {
            v.err("cluster.redirect.maxPerSecond", "must be at least 1, got 0");
        }
    }
}

impl ListenerProtocol {
    /// The name used in the file.
    pub fn as_str(self) -> &'static str {
        match self {
            ListenerProtocol::Tcp => "tcp",
            ListenerProtocol::Tls => "tls",
            ListenerProtocol::Websocket => "websocket",
        }
    }
}

impl Listener {
    /// The bind address (validated by [`Config::validate`]).
    pub fn socket_addr(&self) -> Result<SocketAddr, ConfigError> {
        parse_socket_addr(&self.address).map_err(|msg| ConfigError::invalid(format!("listener {}", self.name), msg))
    }

    /// HTTP path of a websocket listener (`/mqtt` unless configured).
    pub fn websocket_path(&self) -> &str {
        self.path.as_deref().unwrap_or("/mqtt")
    }
}

impl Admin {
    /// The bind address (validated by [`Config::validate`]).
    pub fn socket_addr(&self) -> Result<SocketAddr, ConfigError> {
        parse_socket_addr(&self.address).map_err(|msg| ConfigError::invalid("admin.address", msg))
    }
}

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

#[derive(Default)]
struct Validator {
    violations: Vec<Violation>,
}

impl Validator {
    fn err(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.violations.push(Violation {
            path: path.into(),
            message: message.into(),
        });
    }
}

fn parse_yaml(yaml: &str, source_name: Option<&str>) -> Result<Config, ConfigError> {
    let mut failed_path: Option<String> = None;
    let parsed = serde_saphyr::with_deserializer_from_str(yaml, |de| {
        serde_path_to_error::deserialize::<_, Config>(de).map_err(|err| {
            failed_path = Some(err.path().to_string());
            err.into_inner()
        })
    });
    let config = parsed.map_err(|err| yaml_error(&err, failed_path.as_deref().unwrap_or(""), source_name))?;
    config.validate()?;
    Ok(config)
}

fn yaml_error(err: &serde_saphyr::Error, path: &str, source_name: Option<&str>) -> ConfigError {
    let plain = serde_saphyr::render_options! { snippets: serde_saphyr::SnippetMode::Off };
    let message = err.render_with_options(plain);
    let rendered = err.render_with_options(serde_saphyr::render_options! { source_name: source_name });
    // serde_path_to_error writes "." for the root and "?" when it lost track.
    let mut path = match path {
        "." | "?" => String::new(),
        p => p.to_owned(),
    };
    // An empty document (or one of comments only) lacks the one required key.
    let message = if matches!(err.without_snippet(), serde_saphyr::Error::Eof { .. }) && path.is_empty() {
        format!("missing field `kafka` (the document is empty) {message}")
    } else {
        message
    };
    // Name the missing key itself: `listeners[0].address`, not `listeners[0]`.
    if let Some(field) = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split_once('`'))
        .map(|(field, _)| field)
    {
        path = if path.is_empty() {
            field.to_owned()
        } else {
            format!("{path}.{field}")
        };
    }
    let location = err.location();
    ConfigError::Parse {
        path,
        message,
        line: location.map(|l| l.line()),
        column: location.map(|l| l.column()),
        rendered,
    }
}

/// Path segment of a map key: `.key` for plain keys, `["key"]` for keys with dots etc.
fn key_segment(key: &str) -> String {
    if !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        format!(".{key}")
    } else {
        format!("[{key:?}]")
    }
}

fn parse_socket_addr(address: &str) -> Result<SocketAddr, String> {
    address
        .parse::<SocketAddr>()
        .map_err(|_| format!("invalid socket address {address:?} (expected ip:port, e.g. 0.0.0.0:1883)"))
}

fn check_host_port(reference: &str) -> Result<(), String> {
    let Some((host, port)) = reference.rsplit_once(':') else {
        return Err("must be host:port".to_owned());
    };
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err("must be host:port with a non-empty host".to_owned());
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err("must end in :port with a port 1..=65535".to_owned()),
    }
}

fn is_port_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    let edge_ok = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    (1..=15).contains(&bytes.len())
        && bytes.iter().all(|b| edge_ok(b) || *b == b'-')
        && bytes.first().is_some_and(edge_ok)
        && bytes.last().is_some_and(edge_ok)
}

fn is_env_var_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn check_property_name(key: &str, path: &str, v: &mut Validator) {
    if key.trim().is_empty() {
        v.err(path, "property name must not be empty");
    } else if RESERVED_KAFKA_PROPERTIES.contains(&key) {
        v.err(path, format!("{key} is set by the proxy and cannot be overridden"));
    }
}

/// Checks a Kafka topic name: 1..=249 characters of `[a-zA-Z0-9._-]`, not `.` or `..`.
pub fn validate_kafka_topic_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("Kafka topic name must not be empty".to_owned());
    }
    if name == "." || name == ".." {
        return Err(format!("{name:?} is not a valid Kafka topic name"));
    }
    if name.len() > KAFKA_TOPIC_MAX_LEN {
        return Err(format!(
            "Kafka topic name is {} characters long, at most {KAFKA_TOPIC_MAX_LEN} are allowed",
            name.len()
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "invalid Kafka topic name {name:?}: character {bad:?} is not one of [a-zA-Z0-9._-]"
        ));
    }
    Ok(())
}

/// Checks an MQTT topic filter: non-empty, at most 65535 bytes, no NUL, `+` and `#` only as
/// whole levels and `#` only last.
pub fn validate_topic_filter(filter: &str) -> Result<(), String> {
    crate::broker::topic::validate_topic_filter(filter).map_err(|e| format!("invalid topic filter {filter:?}: {e}"))
}

fn validate_jwt(jwt: &JwtGuard, v: &mut Validator) {
    let at = |key: &str| format!("guards.jwt.{key}");
    let sources =
        usize::from(!jwt.keys.is_empty()) + usize::from(jwt.jwks_file.is_some()) + usize::from(jwt.jwks_url.is_some());
    if sources > 1 {
        v.err("guards.jwt", "set one of keys, jwksFile and jwksUrl, not several");
    } else if sources == 0 && jwt.issuer.is_none() {
        v.err(
            "guards.jwt",
            "set keys, jwksFile or jwksUrl (or issuer, for its .well-known/jwks.json)",
        );
    }
    if jwt.jwks_file.as_ref().is_some_and(|f| f.trim().is_empty()) {
        v.err(at("jwksFile"), "must not be empty");
    }
    if let Some(url) = &jwt.jwks_url
        && !(url.starts_with("https://") || url.starts_with("http://"))
    {
        v.err(at("jwksUrl"), "must be an http:// or https:// URL");
    }
    for (key, value) in [("issuer", &jwt.issuer), ("audience", &jwt.audience)] {
        if value.as_ref().is_some_and(|s| s.trim().is_empty()) {
            v.err(at(key), "must not be empty when set");
        }
    }
    if jwt.roles_claim.trim().is_empty() {
        v.err(at("rolesClaim"), "must not be empty");
    }
    for (i, key) in jwt.keys.iter().enumerate() {
        let path = format!("guards.jwt.keys[{i}]");
        let required: &[(&str, &Option<String>)] = match key.kty.as_str() {
            "RSA" => &[("n", &key.n), ("e", &key.e)],
            "EC" => &[("crv", &key.crv), ("x", &key.x), ("y", &key.y)],
            "OKP" => &[("crv", &key.crv), ("x", &key.x)],
            other => {
                v.err(
                    format!("{path}.kty"),
                    format!("unsupported key type {other:?} (expected RSA, EC or OKP)"),
                );
                &[]
            }
        };
        for (member, value) in required {
            if value.as_ref().is_none_or(|s| s.is_empty()) {
                v.err(format!("{path}.{member}"), format!("required for kty {}", key.kty));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE_YAML: &str = include_str!("../../deploy/examples/proxy-config.yaml");
    const MINIMAL: &str = "kafka: {bootstrapServers: \"host:9092\"}\n";

    fn parse_err(yaml: &str) -> ConfigError {
        match Config::from_yaml_str(yaml) {
            Ok(config) => panic!("expected an error for {yaml:?}, got {config:?}"),
            Err(err) => err,
        }
    }

    /// Asserts that `yaml` fails and the message names `path` followed by `fragment`.
    fn assert_fails(yaml: impl AsRef<str>, path: &str, fragment: &str) {
        let yaml = yaml.as_ref();
        let message = parse_err(yaml).to_string();
        let expected = format!("{path}: ");
        assert!(
            message.contains(&expected),
            "message should name path {path:?}\n  yaml: {yaml}\n  message: {message}"
        );
        assert!(
            message.contains(fragment),
            "message should contain {fragment:?}\n  yaml: {yaml}\n  message: {message}"
        );
    }

    /// The minimal file plus `extra` YAML lines.
    fn with(extra: &str) -> String {
        format!("{MINIMAL}{extra}")
    }

    #[test]
    fn minimal_file_gets_all_defaults() {
        let config = Config::from_yaml_str(MINIMAL).expect("minimal config");
        assert_eq!(config, Config::new(Kafka::new("host:9092")));
        assert_eq!(config.instance_id, None);
        assert_eq!(config.listeners.len(), 1);
        assert_eq!(config.listeners[0].name, "mqtt");
        assert_eq!(config.listeners[0].protocol, ListenerProtocol::Tcp);
        assert_eq!(config.listeners[0].address, "0.0.0.0:1883");
        assert_eq!(config.admin.address, "0.0.0.0:9090");
        assert!(config.kafka.properties.is_empty());
        assert_eq!(config.topics.sessions, "mqtt-sessions");
        assert_eq!(config.topics.messages, "mqtt-messages");
        assert_eq!(config.topics.retained, "mqtt-retained");
        assert!(config.clients.is_empty());
        assert_eq!(config.publish.qos_max, Qos::ExactlyOnce);
        assert_eq!(config.mqtt.versions, vec![MqttVersion::V3_1_1, MqttVersion::V5]);
        assert_eq!(config.mqtt.maximum_packet_size, 1_048_576);
        assert_eq!(config.mqtt.receive_maximum, 64);
        assert_eq!(config.mqtt.topic_alias_maximum, 16);
        assert_eq!(config.mqtt.max_keep_alive, 300);
        assert_eq!(config.mqtt.server_keep_alive, None);
        assert_eq!(config.mqtt.connect_timeout, 10);
        assert_eq!(config.mqtt.max_connections, 100_000);
        assert_eq!(config.mqtt.max_inflight_outbound, 64);
        assert_eq!(config.mqtt.session_expiry_max, 86_400);
        assert!(config.routes.is_empty());
        assert_eq!(config.cluster.server_reference, None);
        assert!(!config.cluster.redirect.enabled);
        assert_eq!(config.cluster.redirect.reason_code, 0x9C);
        assert!(config.guards.is_empty());
    }

    #[test]
    fn empty_sections_take_defaults() {
        let config = Config::from_yaml_str(&with("mqtt: {}\ntopics: {}\npublish: {}\ncluster: {redirect: {}}\n"))
            .expect("config");
        assert_eq!(config, Config::new(Kafka::new("host:9092")));
    }

    #[test]
    fn client_certificates_make_the_tls_guard() {
        let config = Config::from_yaml_str(&with(
            "listeners:\n  - name: a\n    protocol: tls\n    address: \"0.0.0.0:1\"\n    tls: {certFile: c, keyFile: k, clientCaFile: ca, clientIdentity: subject-cn}\n\
             routes: [{when: [{publish: [{topic: 'd/{identity}/#'}]}], guarded: {tls: [devices]}}]\n",
        ))
        .expect("config");
        let tls = config.listeners[0].tls.as_ref().expect("tls");
        assert_eq!(tls.effective_client_auth(), Some(ClientAuth::Required));
        assert_eq!(tls.client_identity, Some(ClientIdentity::SubjectCn));
        assert!(config.identifies_clients_by_certificate());
    }

    #[test]
    fn example_file_parses() {
        let config = Config::from_yaml_str(EXAMPLE_YAML).unwrap_or_else(|e| panic!("example: {e}"));
        assert_eq!(config.listeners.len(), 3);
        assert_eq!(config.listeners[1].protocol, ListenerProtocol::Tls);
        assert_eq!(config.listeners[2].websocket_path(), "/mqtt");
        assert_eq!(config.publish.qos_max, Qos::ExactlyOnce);
        assert_eq!(config.routes.len(), 1);
        assert_eq!(
            config.routes[0].with,
            Some(RouteWith {
                messages: "mqtt-sensors".to_owned()
            })
        );
        assert!(config.guards.jwt.is_none(), "the example's guard is commented out");
        let tls = config.listeners[1].tls.as_ref().expect("tls");
        assert_eq!((tls.reload_seconds, tls.effective_client_auth()), (5, None));
        assert!(config.cluster.redirect.enabled);
        assert_eq!(
            config.server_reference("proxy-2").as_deref(),
            Some("proxy-2.mqtt-kafka-proxy.mqtt.svc.cluster.local:1883")
        );
    }

    #[test]
    fn to_yaml_round_trips() {
        for yaml in [MINIMAL, EXAMPLE_YAML] {
            let config = Config::from_yaml_str(yaml).expect("parse");
            let rendered = config.to_yaml().expect("render");
            let again = Config::from_yaml_str(&rendered).unwrap_or_else(|e| panic!("{e}\n{rendered}"));
            assert_eq!(config, again, "round trip through\n{rendered}");
        }
    }

    #[test]
    fn to_yaml_writes_qos_as_number_and_versions_as_strings() {
        let mut config = Config::new(Kafka::new("k:9092"));
        config.publish.qos_max = Qos::AtLeastOnce;
        let rendered = config.to_yaml().expect("render");
        assert!(rendered.contains("qosMax: 1"), "{rendered}");
        assert!(rendered.contains("\"5.0\""), "{rendered}");
        assert!(!rendered.contains("instanceId"), "{rendered}");
    }

    #[test]
    fn qos_accepts_numbers_and_zilla_names() {
        for (value, qos) in [
            ("0", Qos::AtMostOnce),
            ("1", Qos::AtLeastOnce),
            ("2", Qos::ExactlyOnce),
            ("'1'", Qos::AtLeastOnce),
            ("at_most_once", Qos::AtMostOnce),
            ("at_least_once", Qos::AtLeastOnce),
            ("exactly_once", Qos::ExactlyOnce),
        ] {
            let config = Config::from_yaml_str(&with(&format!("publish: {{qosMax: {value}}}\n"))).expect(value);
            assert_eq!(config.publish.qos_max, qos, "{value}");
        }
        assert_fails(with("publish: {qosMax: 3}\n"), "publish.qosMax", "invalid value");
        assert_fails(with("publish: {qosMax: twice}\n"), "publish.qosMax", "invalid value");
    }

    #[test]
    fn versions_accept_plain_and_zilla_spellings() {
        let config = Config::from_yaml_str(&with("mqtt: {versions: [3.1.1, 5.0]}\n")).expect("plain");
        assert_eq!(config.mqtt.versions, vec![MqttVersion::V3_1_1, MqttVersion::V5]);
        let config = Config::from_yaml_str(&with("mqtt: {versions: [v5, v3.1.1]}\n")).expect("zilla");
        assert_eq!(config.mqtt.versions, vec![MqttVersion::V5, MqttVersion::V3_1_1]);
        assert_eq!(config.mqtt.versions[0].protocol_level(), 5);
        assert_fails(
            with("mqtt: {versions: [\"3.1\"]}\n"),
            "mqtt.versions[0]",
            "unknown variant",
        );
    }

    #[test]
    fn kafka_property_values_may_be_plain_scalars() {
        let yaml = "kafka:\n  bootstrapServers: k:9092\n  properties:\n    linger.ms: 5\n    \
                    enable.ssl.certificate.verification: false\n    security.protocol: SASL_SSL\n";
        let config = Config::from_yaml_str(yaml).expect("properties");
        assert_eq!(config.kafka.properties["linger.ms"], "5");
        assert_eq!(config.kafka.properties["enable.ssl.certificate.verification"], "false");
    }

    #[test]
    fn client_properties_resolve_env() {
        let yaml = "kafka:\n  bootstrapServers: k:9092\n  properties: {sasl.username: u}\n  \
                    propertiesFromEnv: {sasl.password: KAFKA_PASSWORD}\n";
        let config = Config::from_yaml_str(yaml).expect("config");
        let props = config
            .kafka
            .client_properties_with(|var| (var == "KAFKA_PASSWORD").then(|| "secret".to_owned()))
            .expect("resolved");
        assert_eq!(props["bootstrap.servers"], "k:9092");
        assert_eq!(props["sasl.username"], "u");
        assert_eq!(props["sasl.password"], "secret");
        let err = config.kafka.client_properties_with(|_| None).expect_err("missing var");
        assert!(
            err.to_string()
                .contains("kafka.propertiesFromEnv[\"sasl.password\"]: environment variable KAFKA_PASSWORD"),
            "{err}"
        );
    }

    #[test]
    fn instance_id_and_server_reference() {
        let mut config = Config::new(Kafka::new("k:9092"));
        assert_eq!(config.effective_instance_id_with(|_| None), "proxy-0");
        assert_eq!(
            config.effective_instance_id_with(|_| Some("proxy-7".to_owned())),
            "proxy-7"
        );
        assert_eq!(config.effective_instance_id_with(|_| Some(" ".to_owned())), "proxy-0");
        config.instance_id = Some("a-1".to_owned());
        assert_eq!(config.effective_instance_id_with(|_| Some("proxy-7".to_owned())), "a-1");
        assert_eq!(config.server_reference("a-1"), None);
        config.cluster.server_reference = Some("{instance}.svc:1883".to_owned());
        assert_eq!(config.server_reference("a-1").as_deref(), Some("a-1.svc:1883"));
        assert!(config.listener_server_references("a-1").is_empty());
        config.listeners[0].server_reference = Some("{instance}.tls.svc:8883".to_owned());
        assert_eq!(
            config.listener_server_references("a-1"),
            BTreeMap::from([("mqtt".to_owned(), "a-1.tls.svc:8883".to_owned())])
        );
    }

    #[test]
    fn json_schema_is_strict() {
        let schema = Config::json_schema();
        let text = schema.to_string();
        assert!(text.contains("\"additionalProperties\":false"), "{text}");
        assert_eq!(schema["additionalProperties"], serde_json::Value::Bool(false));
        assert_eq!(schema["required"], serde_json::json!(["kafka"]));
        let mqtt = &schema["$defs"]["Mqtt"];
        assert_eq!(mqtt["additionalProperties"], serde_json::Value::Bool(false));
        assert_eq!(mqtt["properties"]["receiveMaximum"]["minimum"], serde_json::json!(1));
        assert!(schema["$defs"]["Qos"]["enum"].is_array());
    }

    #[test]
    fn parse_error_carries_location_and_snippet() {
        let err = parse_err("kafka:\n  bootstrapServers: k:9092\nmqtt:\n  bogus: 1\n");
        let ConfigError::Parse {
            path,
            line,
            column,
            rendered,
            ..
        } = &err
        else {
            panic!("expected a parse error, got {err:?}");
        };
        assert_eq!(path, "mqtt.bogus");
        assert_eq!((*line, *column), (Some(4), Some(3)));
        assert!(rendered.contains("bogus: 1"), "{rendered}");
    }

    #[test]
    fn from_file_reads_and_reports_missing_file() {
        let path = std::env::temp_dir().join(format!("proxy-config-test-{}.yaml", std::process::id()));
        std::fs::write(&path, MINIMAL).expect("write");
        let config = Config::from_file(&path);
        std::fs::remove_file(&path).expect("remove");
        assert_eq!(config.expect("read"), Config::new(Kafka::new("host:9092")));
        let err = Config::from_file(&path).expect_err("gone");
        assert!(matches!(err, ConfigError::Read { .. }), "{err:?}");
        assert!(err.to_string().contains("proxy-config-test-"), "{err}");
    }

    #[test]
    fn all_violations_are_reported_together() {
        let err = parse_err(&with("mqtt: {receiveMaximum: 0, maxInflightOutbound: 0}\n"));
        assert_eq!(err.violations().len(), 2, "{err}");
        let text = err.to_string();
        assert!(text.contains("mqtt.receiveMaximum: must be 1..=65535, got 0"), "{text}");
        assert!(
            text.contains("mqtt.maxInflightOutbound: must be 1..=65535, got 0"),
            "{text}"
        );
    }

    // --- errors from parsing: unknown keys, wrong types, missing keys ---------------------

    macro_rules! fails {
        ($($name:ident: $yaml:expr => $path:expr, $fragment:expr;)*) => {
            $(
                #[test]
                fn $name() {
                    assert_fails($yaml, $path, $fragment);
                }
            )*
        };
    }

    fails! {
        a_deny_rule_with_a_bad_filter: with("authorization: {deny: [{topic: 'a/#/b'}]}\n")
            => "authorization.deny[0].topic", "invalid topic filter";
        a_deny_rule_with_no_action: with("authorization: {deny: [{topic: a, actions: []}]}\n")
            => "authorization.deny[0].actions", "name publish, subscribe or both";
        jwt_with_a_url_that_is_not_http: with("guards: {jwt: {jwksUrl: 'ftp://x/jwks'}}\n")
            => "guards.jwt.jwksUrl", "http:// or https://";
        unknown_top_level_key: with("bogus: 1\n") => "bogus", "unknown field `bogus`";
        unknown_nested_key: with("mqtt:\n  bogus: 1\n") => "mqtt.bogus", "unknown field `bogus`";
        unknown_key_in_list_element: with("listeners:\n  - {name: a, address: \"0.0.0.0:1\", port: 1}\n")
            => "listeners[0].port", "unknown field `port`";
        unknown_key_in_route_topic: with("routes: [{when: [{publish: [{topic: a, qos: 1}]}], with: {messages: m}}]\n")
            => "routes[0].when[0].publish[0].qos", "unknown field `qos`";
        unknown_route_condition: with("routes: [{when: [{publsh: [{topic: a}]}], with: {messages: m}}]\n")
            => "routes[0].when[0]", "unknown variant `publsh`";
        wrong_type_in_second_listener: with(
            "listeners:\n  - {name: a, address: \"0.0.0.0:1\"}\n  - {name: b, address: [1, 2]}\n"
        ) => "listeners[1].address", "expected string scalar at line 4";
        wrong_protocol_in_second_listener: with(
            "listeners:\n  - {name: a, address: \"0.0.0.0:1\"}\n  - {name: b, address: \"0.0.0.0:2\", protocol: quic}\n"
        ) => "listeners[1].protocol", "unknown variant `quic`";
        number_out_of_type_range: with("mqtt: {receiveMaximum: 70000}\n") => "mqtt.receiveMaximum", "line 2";
        missing_kafka: "listeners: []\n" => "kafka", "missing field `kafka`";
        missing_bootstrap_servers: "kafka: {}\n" => "kafka.bootstrapServers", "missing field";
        missing_listener_address: with("listeners: [{name: a}]\n") => "listeners[0].address", "missing field";
        private_jwk_member_refused: with(
            "guards: {jwt: {keys: [{kty: RSA, n: x, e: AQAB, d: secret}]}}\n"
        ) => "guards.jwt.keys[0].d", "unknown field `d`";
    }

    // --- errors from validation: one per rule ---------------------------------------------

    fails! {
        invalid_listener_address: with("listeners: [{name: a, address: x}]\n")
            => "listeners[0].address", "invalid socket address \"x\"";
        listener_address_needs_port: with("listeners: [{name: a, address: \"0.0.0.0\"}]\n")
            => "listeners[0].address", "invalid socket address";
        invalid_admin_address: with("admin: {address: localhost}\n") => "admin.address", "invalid socket address";
        no_listeners: with("listeners: []\n") => "listeners", "at least one listener";
        duplicate_listener_names: with(
            "listeners:\n  - {name: a, address: \"0.0.0.0:1\"}\n  - {name: a, address: \"0.0.0.0:2\"}\n"
        ) => "listeners[1].name", "duplicate listener name";
        duplicate_listener_addresses: with(
            "listeners:\n  - {name: a, address: \"0.0.0.0:1\"}\n  - {name: b, address: \"0.0.0.0:1\"}\n"
        ) => "listeners[1].address", "already used by listeners[0].address";
        listener_address_clashes_with_admin: with("listeners: [{name: a, address: \"0.0.0.0:9090\"}]\n")
            => "listeners[0].address", "already used by admin.address";
        bad_listener_name: with("listeners: [{name: My_Listener, address: \"0.0.0.0:1\"}]\n")
            => "listeners[0].name", "lowercase letters";
        tls_listener_without_tls: with("listeners: [{name: a, protocol: tls, address: \"0.0.0.0:1\"}]\n")
            => "listeners[0].tls", "required when protocol is tls";
        tls_on_tcp_listener: with(
            "listeners: [{name: a, address: \"0.0.0.0:1\", tls: {certFile: c, keyFile: k}}]\n"
        ) => "listeners[0].tls", "only allowed when protocol is tls or websocket";
        client_auth_without_client_ca: with(
            "listeners: [{name: a, protocol: tls, address: \"0.0.0.0:1\", tls: {certFile: c, keyFile: k, clientAuth: optional}}]\n"
        ) => "listeners[0].tls.clientAuth", "only allowed with tls.clientCaFile";
        client_identity_without_client_ca: with(
            "listeners: [{name: a, protocol: tls, address: \"0.0.0.0:1\", tls: {certFile: c, keyFile: k, clientIdentity: subject-cn}}]\n"
        ) => "listeners[0].tls.clientIdentity", "only allowed with tls.clientCaFile";
        tls_reload_seconds_zero: with(
            "listeners: [{name: a, protocol: tls, address: \"0.0.0.0:1\", tls: {certFile: c, keyFile: k, reloadSeconds: 0}}]\n"
        ) => "listeners[0].tls.reloadSeconds", "must be 1..=3600, got 0";
        unknown_client_identity: with(
            "listeners: [{name: a, protocol: tls, address: \"0.0.0.0:1\", tls: {certFile: c, keyFile: k, clientCaFile: ca, clientIdentity: subject-dn}}]\n"
        ) => "listeners[0].tls.clientIdentity", "subject-cn";
        tls_guard_without_client_identity: with(
            "routes: [{when: [{publish: [{topic: 'd/{identity}/#'}]}], guarded: {tls: []}}]\n"
        ) => "routes[0].guarded.tls", "unknown guard \"tls\"";
        empty_tls_cert_file: with(
            "listeners: [{name: a, protocol: tls, address: \"0.0.0.0:1\", tls: {certFile: '', keyFile: k}}]\n"
        ) => "listeners[0].tls.certFile", "must not be empty";
        path_on_tcp_listener: with("listeners: [{name: a, address: \"0.0.0.0:1\", path: /mqtt}]\n")
            => "listeners[0].path", "only allowed when protocol is websocket";
        relative_websocket_path: with(
            "listeners: [{name: a, protocol: websocket, address: \"0.0.0.0:1\", path: mqtt}]\n"
        ) => "listeners[0].path", "must start with '/'";
        empty_instance_id: with("instanceId: ''\n") => "instanceId", "must not be empty";
        instance_id_with_space: with("instanceId: 'a b'\n") => "instanceId", "whitespace";
        empty_bootstrap_servers: "kafka: {bootstrapServers: ''}\n"
            => "kafka.bootstrapServers", "must not be empty";
        bootstrap_servers_with_empty_entry: "kafka: {bootstrapServers: 'a:9092,,b:9092'}\n"
            => "kafka.bootstrapServers", "comma-separated";
        reserved_kafka_property: "kafka: {bootstrapServers: k, properties: {acks: '1'}}\n"
            => "kafka.properties.acks", "set by the proxy";
        property_set_twice: "kafka: {bootstrapServers: k, properties: {sasl.password: p}, \
                             propertiesFromEnv: {sasl.password: P}}\n"
            => "kafka.properties[\"sasl.password\"]", "also set in kafka.propertiesFromEnv";
        bad_env_var_name: "kafka: {bootstrapServers: k, propertiesFromEnv: {sasl.password: 'A-B'}}\n"
            => "kafka.propertiesFromEnv[\"sasl.password\"]", "not an environment variable name";
        topic_with_bad_character: with("topics: {messages: 'mqtt messages'}\n")
            => "topics.messages", "is not one of [a-zA-Z0-9._-]";
        topic_dot: with("topics: {sessions: '.'}\n") => "topics.sessions", "not a valid Kafka topic name";
        topic_dot_dot: with("topics: {retained: '..'}\n") => "topics.retained", "not a valid Kafka topic name";
        topic_empty: with("topics: {messages: ''}\n") => "topics.messages", "must not be empty";
        topic_too_long: with(&format!("topics: {{messages: {}}}\n", "a".repeat(250)))
            => "topics.messages", "at most 249";
        topics_must_differ: with("topics: {sessions: t, messages: t}\n")
            => "topics.messages", "must differ from topics.sessions";
        empty_client_pattern: with("clients: ['']\n") => "clients[0]", "must not be empty";
        client_pattern_without_identity: with("clients: ['place/#']\n") => "clients[0]", "must contain {identity}";
        client_pattern_identity_not_whole_level: with("clients: ['place/x{identity}/#']\n")
            => "clients[0]", "must be a whole topic level";
        empty_document: "# nothing here\n" => "kafka", "missing field `kafka`";
        client_pattern_bad_filter: with("clients: ['place/{identity}/#/x']\n") => "clients[0]", "'#'";
        no_versions: with("mqtt: {versions: []}\n") => "mqtt.versions", "at least one version";
        duplicate_versions: with("mqtt: {versions: [5.0, v5]}\n") => "mqtt.versions[1]", "duplicate version";
        packet_size_zero: with("mqtt: {maximumPacketSize: 0}\n")
            => "mqtt.maximumPacketSize", "must be 1..=268435455, got 0";
        packet_size_too_big: with("mqtt: {maximumPacketSize: 268435456}\n")
            => "mqtt.maximumPacketSize", "got 268435456";
        receive_maximum_zero: with("mqtt: {receiveMaximum: 0}\n")
            => "mqtt.receiveMaximum", "must be 1..=65535, got 0";
        server_keep_alive_above_cap: with("mqtt: {maxKeepAlive: 60, serverKeepAlive: 120}\n")
            => "mqtt.serverKeepAlive", "must not exceed mqtt.maxKeepAlive (60)";
        connect_timeout_zero: with("mqtt: {connectTimeout: 0}\n") => "mqtt.connectTimeout", "got 0";
        write_timeout_zero: with("mqtt: {writeTimeout: 0}\n") => "mqtt.writeTimeout", "got 0";
        max_connections_zero: with("mqtt: {maxConnections: 0}\n") => "mqtt.maxConnections", "got 0";
        max_inflight_outbound_zero: with("mqtt: {maxInflightOutbound: 0}\n")
            => "mqtt.maxInflightOutbound", "got 0";
        route_without_conditions: with("routes: [{when: [], with: {messages: m}}]\n")
            => "routes[0].when", "at least one condition";
        route_condition_without_topics: with("routes: [{when: [{subscribe: []}], with: {messages: m}}]\n")
            => "routes[0].when[0].subscribe", "at least one topic";
        route_empty_topic_filter: with("routes: [{when: [{publish: [{topic: ''}]}], with: {messages: m}}]\n")
            => "routes[0].when[0].publish[0].topic", "must not be empty";
        route_bad_topic_filter: with("routes: [{when: [{publish: [{topic: 'a/b+'}]}], with: {messages: m}}]\n")
            => "routes[0].when[0].publish[0].topic", "wildcard '+' must occupy a whole topic level";
        route_without_effect: with("routes: [{when: [{publish: [{topic: a}]}]}]\n")
            => "routes[0]", "needs `with`, `guarded` or both";
        route_bad_messages_topic: with("routes: [{when: [{publish: [{topic: a}]}], with: {messages: 'a b'}}]\n")
            => "routes[0].with.messages", "invalid Kafka topic name";
        route_to_sessions_topic: with(
            "routes: [{when: [{publish: [{topic: a}]}], with: {messages: mqtt-sessions}}]\n"
        ) => "routes[0].with.messages", "must not be the sessions or retained topic";
        route_unknown_guard: with("routes: [{when: [{publish: [{topic: a}]}], guarded: {jwt: [r]}}]\n")
            => "routes[0].guarded.jwt", "unknown guard \"jwt\" (configured guards: none)";
        route_empty_role: with(
            "guards: {jwt: {jwksFile: /k}}\nroutes: [{when: [{publish: [{topic: a}]}], guarded: {jwt: ['']}}]\n"
        ) => "routes[0].guarded.jwt[0]", "role must not be empty";
        server_reference_without_port: with("cluster: {serverReference: '{instance}.svc'}\n")
            => "cluster.serverReference", "must be host:port";
        listener_server_reference_without_port: with(
            "listeners:\n  - {name: a, address: \"0.0.0.0:1\", serverReference: '{instance}.svc'}\n"
        ) => "listeners[0].serverReference", "must be host:port";
        redirect_without_server_reference: with("cluster: {redirect: {enabled: true}}\n")
            => "cluster.serverReference", "required when cluster.redirect.enabled";
        redirect_bad_reason_code: with("cluster: {redirect: {reasonCode: 0x87}}\n")
            => "cluster.redirect.reasonCode", "must be 156 (0x9C, use another server) or 157";
        jwt_without_keys: with("guards: {jwt: {audience: a}}\n") => "guards.jwt", "set keys, jwksFile or jwksUrl";
        jwt_with_keys_and_file: with("guards: {jwt: {jwksFile: /k, keys: [{kty: OKP, crv: Ed25519, x: a}]}}\n")
            => "guards.jwt", "not several";
        jwt_empty_issuer: with("guards: {jwt: {jwksFile: /k, issuer: ''}}\n")
            => "guards.jwt.issuer", "must not be empty";
        jwt_empty_roles_claim: with("guards: {jwt: {jwksFile: /k, rolesClaim: ''}}\n")
            => "guards.jwt.rolesClaim", "must not be empty";
        jwt_unsupported_kty: with("guards: {jwt: {keys: [{kty: oct}]}}\n")
            => "guards.jwt.keys[0].kty", "unsupported key type";
        jwt_rsa_key_without_modulus: with("guards: {jwt: {keys: [{kty: RSA, e: AQAB}]}}\n")
            => "guards.jwt.keys[0].n", "required for kty RSA";
    }

    #[test]
    fn topic_filter_rules() {
        for ok in ["a", "a/b", "+", "#", "a/+/c", "a/#", "/", "+/+", "$SYS/#"] {
            assert_eq!(validate_topic_filter(ok), Ok(()), "{ok}");
        }
        for bad in ["", "a#", "a/#/b", "a+/b", "a/b+", "#/a", "a\0b"] {
            assert!(validate_topic_filter(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn kafka_topic_name_rules() {
        for ok in ["a", "mqtt-messages", "A.b_c-9", "...", &"x".repeat(249)] {
            assert_eq!(validate_kafka_topic_name(ok), Ok(()), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "a b", "é", &"x".repeat(250)] {
            assert!(validate_kafka_topic_name(bad).is_err(), "{bad:?}");
        }
    }
}
