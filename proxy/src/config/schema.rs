//! The configuration's types: every option with its default, its YAML form (serde) and its
//! JSON schema (schemars), shared with the operator, which renders them into the proxy's
//! ConfigMap and its CRD.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::auth::{Authorization, Guards};

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
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
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
    /// librdkafka properties whose value is the content of a file, read at start-up
    /// (property -> path; one trailing newline is dropped), for secrets mounted from a
    /// Kubernetes Secret: `sasl.password`, `ssl.key.pem`, ...
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub properties_from_files: BTreeMap<String, String>,
}

/// Secret property values never reach a log: `Debug` shows `<redacted>` in their place.
impl std::fmt::Debug for Kafka {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kafka")
            .field("bootstrap_servers", &self.bootstrap_servers)
            .field("properties", &redact_secrets(&self.properties))
            .field("properties_from_env", &self.properties_from_env)
            .field("properties_from_files", &self.properties_from_files)
            .finish()
    }
}

/// Whether a librdkafka property holds a secret (a password, a private key, a JAAS line
/// with credentials in it).
pub fn is_secret_property(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    name.contains("password")
        || name.contains("secret")
        || name.ends_with(".key.pem")
        || name == "sasl.jaas.config"
        || name == "ssl_key"
}

/// `properties` with the value of every secret property replaced by `<redacted>`.
pub fn redact_secrets(properties: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    properties
        .iter()
        .map(|(k, v)| {
            let v = if is_secret_property(k) {
                "<redacted>".to_owned()
            } else {
                v.clone()
            };
            (k.clone(), v)
        })
        .collect()
}

impl Kafka {
    /// Kafka settings with the given bootstrap servers and no extra properties.
    pub fn new(bootstrap_servers: impl Into<String>) -> Self {
        Kafka {
            bootstrap_servers: bootstrap_servers.into(),
            properties: BTreeMap::new(),
            properties_from_env: BTreeMap::new(),
            properties_from_files: BTreeMap::new(),
        }
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
    /// Deliveries that may wait in memory for one connection (by count) before it counts
    /// as lagging and reads what it missed from Kafka itself: nothing is lost either way,
    /// a larger queue only absorbs longer bursts (Mosquitto's `max_queued_messages`).
    #[schemars(range(min = 1))]
    pub max_queued_messages: u32,
    /// The same bound by payload bytes (Mosquitto's `max_queued_bytes`).
    #[schemars(range(min = 1))]
    pub max_queued_bytes: u64,
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
            max_queued_messages: 16_384,
            max_queued_bytes: 4 << 20,
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
}
