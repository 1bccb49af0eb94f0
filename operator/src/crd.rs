//! The `MqttKafkaProxy` custom resource (`mqttkafka.io/v1alpha1`, DESIGN section 5).
//!
//! The spec reuses the proxy's own configuration types where the proxy option and the
//! resource field mean the same thing (`mqtt`, `publish`, `routes`, `cluster.redirect`,
//! JWKs), so the two cannot drift apart. What only makes sense on Kubernetes (ports instead
//! of bind addresses, Secrets instead of file paths, Services, pod overrides) has its own
//! types here and is translated in `resources::configmap`.
//!
//! Validation happens in three places, each for what it can see:
//! - the OpenAPI schema (types, ranges, enums, required keys; `listeners` is a map list
//!   keyed by name, so duplicate names are refused);
//! - CEL rules (`x-kubernetes-validations`) for rules that relate fields to each other
//!   (redirect needs MQTT 5.0, a TLS listener needs a Secret, ...): refused at admission
//!   with a message that names the field;
//! - `Config::validate` of the proxy, run by the reconciler, for what neither can express
//!   (topic filter syntax, ...): reported in status as `Degraded` / `InvalidSpec`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, EnvVar, LocalObjectReference, ResourceRequirements, Toleration, TopologySpreadConstraint,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{CustomResource, KubeSchema};
use mqtt_kafka_proxy::config::{Jwk, Mqtt, Publish, Redirect, Route};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of the resource.
pub const GROUP: &str = "mqttkafka.io";
/// The longest resource name: the StatefulSet's pods carry the label
/// `controller-revision-hash=<name>-<10 characters>`, at most 63 characters.
pub const MAX_NAME_LENGTH: usize = 52;
/// Image used when `spec.image` is not set: the proxy of the same release as the operator.
pub const DEFAULT_IMAGE: &str = concat!("ghcr.io/mqtt-kafka/mqtt-kafka-proxy:", env!("CARGO_PKG_VERSION"));
/// Port of the proxy's `/healthz`, `/readyz` and `/metrics` (its `admin.address`).
pub const ADMIN_PORT: u16 = 9090;

/// Desired state of one sharded MQTT proxy deployment on Kafka.
#[derive(CustomResource, KubeSchema, Clone, Debug, Deserialize, Serialize, PartialEq)]
#[kube(
    group = "mqttkafka.io",
    version = "v1alpha1",
    kind = "MqttKafkaProxy",
    namespaced,
    shortname = "mkp",
    category = "mqtt-kafka",
    status = "MqttKafkaProxyStatus",
    derive = "PartialEq",
    doc = "A sharded MQTT 3.1.1 / 5.0 broker whose messages, retained messages and sessions live in Kafka.",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn = r#"{"name":"Replicas","type":"integer","jsonPath":".spec.replicas"}"#,
    printcolumn = r#"{"name":"Ready","type":"integer","jsonPath":".status.readyReplicas"}"#,
    printcolumn = r#"{"name":"Topics","type":"string","jsonPath":".status.conditions[?(@.type==\"TopicsReady\")].status"}"#,
    printcolumn = r#"{"name":"Status","type":"string","priority":1,"jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[kube(validation = Rule::new(
    "self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')"
).message(
    "metadata.name must start with a lower-case letter and hold only lower-case letters, digits and '-' \
     (no dots), ending with a letter or digit: it names the Services <name>, <name>-headless and \
     <name>-<ordinal>, which must be DNS-1035 labels"
))]
#[kube(validation = Rule::new(
    "size(self.metadata.name) <= 52"
).message(
    "metadata.name must be at most 52 characters: it names the StatefulSet, whose pods carry the label \
     controller-revision-hash=<name>-<10 characters>, and label values are at most 63 characters"
))]
#[x_kube(validation = Rule::new(
    "!self.cluster.redirect.enabled || self.mqtt.versions.exists(v, v == '5.0')"
).message(
    "cluster.redirect.enabled needs \"5.0\" in mqtt.versions: only MQTT 5 clients can follow a redirect"
).field_path(".cluster.redirect.enabled"))]
#[x_kube(validation = Rule::new(
    "!self.cluster.redirect.enabled || has(self.cluster.serverReference)"
).message(
    "cluster.redirect.enabled needs cluster.serverReference, the host:port template clients are redirected to"
).field_path(".cluster.redirect.enabled"))]
#[x_kube(validation = Rule::new(
    "!has(self.perPodServices) || !self.perPodServices.enabled || has(self.cluster.serverReference)"
).message(
    "perPodServices.enabled needs cluster.serverReference: the external host:port template \
     (with {instance}) at which the per-pod Services are reachable"
).field_path(".perPodServices.enabled"))]
#[serde(rename_all = "camelCase")]
pub struct MqttKafkaProxySpec {
    /// Number of proxy pods. `kubectl scale mkp/NAME --replicas=N` and HPAs change it.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0))]
    pub replicas: i32,
    /// Container image of the proxy; default: the proxy of the operator's release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Image pull policy of the proxy container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<PullPolicy>,
    /// The Kafka cluster that stores messages, retained messages and sessions.
    pub kafka: KafkaSpec,
    /// MQTT listeners. Default: one `tcp` listener named `mqtt` on port 1883.
    #[serde(default = "default_listeners")]
    #[schemars(length(min = 1, max = 8))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    #[x_kube(validation = Rule::new("self.all(l, self.filter(m, m.port == l.port).size() == 1)")
        .message("listeners[].port must be unique"))]
    pub listeners: Vec<ListenerSpec>,
    /// Server reference template and redirect-based sharding (DESIGN section 4).
    #[serde(default)]
    pub cluster: ClusterSpec,
    /// Patterns such as `place/{identity}/#`: the `{identity}` captured by the first pattern
    /// that matches a topic is the key its messages are partitioned by.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub clients: Vec<String>,
    /// Publish limits (`qosMax`).
    #[serde(default)]
    pub publish: Publish,
    /// MQTT protocol versions and limits, advertised in CONNACK and enforced.
    #[serde(default)]
    #[schemars(transform = bound_mqtt_versions)]
    pub mqtt: Mqtt,
    /// Routes: topic filters mapped to other messages topics and/or guarded by roles. The
    /// first route whose `when` matches applies.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 128))]
    pub routes: Vec<Route>,
    /// Authorization guards that routes refer to by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization: Option<AuthorizationSpec>,
    /// Overrides of the proxy pods.
    #[serde(default)]
    pub pod: PodOverrides,
    /// The client Service every device connects to first.
    #[serde(default)]
    pub service: ServiceSpec,
    /// One Service per pod, so that server references can point at externally reachable
    /// addresses (load balancers, node ports) when clients live outside the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_pod_services: Option<PerPodServicesSpec>,
    /// The PodDisruptionBudget of the proxy pods.
    #[serde(default)]
    pub pod_disruption_budget: PodDisruptionBudgetSpec,
}

/// Bounds `mqtt.versions` (the proxy's type cannot say so itself): CEL rules that look into
/// a list are priced by its largest possible size, and an unbounded list prices the
/// redirect rule out of the apiserver's budget.
fn bound_mqtt_versions(schema: &mut schemars::Schema) {
    if let Some(versions) = schema
        .get_mut("properties")
        .and_then(|p| p.get_mut("versions"))
        .and_then(|v| v.as_object_mut())
    {
        versions.insert("maxItems".into(), 2.into());
    }
}

fn default_replicas() -> i32 {
    1
}

fn default_listeners() -> Vec<ListenerSpec> {
    vec![ListenerSpec {
        name: "mqtt".into(),
        protocol: ListenerProtocol::Tcp,
        port: 1883,
        path: None,
        tls: None,
        server_reference: None,
    }]
}

/// Image pull policy.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

impl PullPolicy {
    /// The Kubernetes spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            PullPolicy::Always => "Always",
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Never => "Never",
        }
    }
}

/// How to reach Kafka, and the topics to keep there.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KafkaSpec {
    /// Comma-separated `host:port` list.
    #[schemars(length(min = 1))]
    pub bootstrap_servers: String,
    /// TLS to Kafka. Absent: plaintext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<KafkaTlsSpec>,
    /// SASL authentication to Kafka, the password read from a Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sasl: Option<KafkaSaslSpec>,
    /// Extra librdkafka properties (not secrets) for the proxy and the operator's admin
    /// client. Properties the proxy sets itself (`acks`, `enable.idempotence`, ...) are refused.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub properties: BTreeMap<String, String>,
    /// The three topics of DESIGN section 2 and how the operator manages them.
    #[serde(default)]
    pub topics: TopicsSpec,
}

/// TLS to Kafka: `security.protocol` SSL (or SASL_SSL with `sasl`).
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KafkaTlsSpec {
    /// PEM CA bundle that signed the brokers' certificates; absent: the system CAs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret: Option<SecretKeyRef>,
    /// A `kubernetes.io/tls` Secret (`tls.crt`, `tls.key`) for mutual TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub client_secret_name: Option<String>,
}

/// SASL to Kafka.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KafkaSaslSpec {
    /// SASL mechanism.
    pub mechanism: SaslMechanism,
    /// User name.
    #[schemars(length(min = 1))]
    pub username: String,
    /// Secret key holding the password.
    pub password_secret: SecretKeyRef,
}

/// SASL mechanisms with a user name and password.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum SaslMechanism {
    #[serde(rename = "PLAIN")]
    Plain,
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

impl SaslMechanism {
    /// The librdkafka `sasl.mechanism` value.
    pub fn as_str(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// One key of a Secret in the resource's namespace.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Secret name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key within the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// The sessions, retained and messages topics.
#[derive(Clone, Debug, KubeSchema, Deserialize, Serialize, PartialEq)]
#[x_kube(validation = Rule::new(
    "self.sessions.name != self.retained.name && self.sessions.name != self.messages.name && self.retained.name != self.messages.name"
).message("the sessions, retained and messages topics must have different names").field_path(".sessions.name"))]
#[serde(rename_all = "camelCase")]
pub struct TopicsSpec {
    /// Session state, keyed by client id; always `cleanup.policy=compact`. Its partition
    /// count is the number of shards sessions are spread over, and is never changed by the
    /// operator once the topic exists (that would move sessions to other partitions).
    #[serde(default = "TopicSpec::default_sessions")]
    #[x_kube(validation = Rule::new(
        "!has(self.config) || !('cleanup.policy' in self.config) || self.config['cleanup.policy'] == 'compact'"
    ).message("the sessions topic must have cleanup.policy=compact: deleting old records would lose sessions"))]
    pub sessions: TopicSpec,
    /// Retained messages, keyed by MQTT topic; `cleanup.policy=compact`.
    #[serde(default = "TopicSpec::default_retained")]
    #[x_kube(validation = Rule::new(
        "!has(self.config) || !('cleanup.policy' in self.config) || self.config['cleanup.policy'].contains('compact')"
    ).message("the retained topic must be compacted: cleanup.policy=compact (or compact,delete)"))]
    pub retained: TopicSpec,
    /// Published messages (and the default of routes' `with.messages` topics, which get the
    /// same partitions, replication factor and config).
    #[serde(default = "TopicSpec::default_messages")]
    pub messages: TopicSpec,
    /// What the operator does when a topic's config differs from the spec: `Converge`
    /// (alter it back) or `Report` (only report it as Degraded).
    #[serde(default)]
    pub config_policy: TopicConfigPolicy,
    /// What happens to the topics when the resource is deleted: `Retain` (default) or
    /// `Delete` (the operator deletes them, through a finalizer).
    #[serde(default)]
    pub delete_policy: TopicDeletePolicy,
}

impl Default for TopicsSpec {
    fn default() -> Self {
        TopicsSpec {
            sessions: TopicSpec::default_sessions(),
            retained: TopicSpec::default_retained(),
            messages: TopicSpec::default_messages(),
            config_policy: TopicConfigPolicy::default(),
            delete_policy: TopicDeletePolicy::default(),
        }
    }
}

/// One Kafka topic.
#[derive(Clone, Debug, KubeSchema, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TopicSpec {
    /// Topic name.
    #[schemars(length(min = 1, max = 249), pattern(r"^[a-zA-Z0-9._-]+$"))]
    #[x_kube(validation = Rule::new("self != '.' && self != '..'").message("'.' and '..' are not Kafka topic names"))]
    pub name: String,
    /// Partitions when created; the operator adds partitions to messages topics when this
    /// grows, and never removes any.
    #[serde(default = "default_partitions")]
    #[schemars(range(min = 1, max = 10000))]
    pub partitions: i32,
    /// Replication factor when created; -1 = the broker's `default.replication.factor`.
    #[serde(default = "default_replication_factor")]
    #[x_kube(validation = Rule::new("self == -1 || (self >= 1 && self <= 32)").message("must be -1 (broker default) or 1..32"))]
    pub replication_factor: i32,
    /// Topic configs (`retention.ms`, `min.insync.replicas`, ...), kept converged.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub config: BTreeMap<String, String>,
}

fn default_partitions() -> i32 {
    12
}

fn default_replication_factor() -> i32 {
    -1
}

impl TopicSpec {
    /// A topic with the default partitions and replication factor and no extra config.
    pub fn named(name: &str) -> Self {
        TopicSpec {
            name: name.to_owned(),
            partitions: default_partitions(),
            replication_factor: default_replication_factor(),
            config: BTreeMap::new(),
        }
    }

    fn default_sessions() -> Self {
        TopicSpec::named("mqtt-sessions")
    }

    fn default_retained() -> Self {
        TopicSpec::named("mqtt-retained")
    }

    fn default_messages() -> Self {
        TopicSpec::named("mqtt-messages")
    }
}

/// See [`TopicsSpec::config_policy`].
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum TopicConfigPolicy {
    /// Alter drifted configs back to the spec.
    #[default]
    Converge,
    /// Leave drifted configs alone and report them.
    Report,
}

/// See [`TopicsSpec::delete_policy`].
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum TopicDeletePolicy {
    /// Keep the topics (and so every message and session) when the resource is deleted.
    #[default]
    Retain,
    /// Delete the topics with the resource.
    Delete,
}

/// An MQTT listener of every pod.
#[derive(Clone, Debug, KubeSchema, Deserialize, Serialize, PartialEq)]
#[x_kube(validation = Rule::new("self.protocol != 'tls' || has(self.tls)")
    .message("a tls listener needs tls.secretName, a kubernetes.io/tls Secret with its certificate and key")
    .field_path(".tls"))]
#[x_kube(validation = Rule::new("!has(self.tls) || self.protocol == 'tls' || self.protocol == 'websocket'")
    .message("tls is only allowed on a listener with protocol tls, or websocket (which makes it wss)")
    .field_path(".tls"))]
#[x_kube(validation = Rule::new("!has(self.path) || self.protocol == 'websocket'")
    .message("path is only allowed on a listener with protocol websocket")
    .field_path(".path"))]
#[serde(rename_all = "camelCase")]
pub struct ListenerSpec {
    /// Unique name, also the port name of the pods and Services.
    #[schemars(length(min = 1, max = 15), pattern(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$"))]
    pub name: String,
    /// `tcp`, `tls` (needs `tls`) or `websocket`.
    #[serde(default)]
    pub protocol: ListenerProtocol,
    /// Port of the pods and of the Services.
    #[schemars(range(min = 1, max = 65535))]
    #[x_kube(validation = Rule::new("self != 9090").message("port 9090 is the proxy's health and metrics port"))]
    pub port: i32,
    /// HTTP path of a `websocket` listener; default `/mqtt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^/\S*$"))]
    pub path: Option<String>,
    /// Certificate of a `tls` listener, or of a `websocket` listener that serves wss.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ListenerTlsSpec>,
    /// `host:port` template at which clients reach this listener of a pod (`{instance}` is
    /// the pod name): MQTT 5 clients that connected on this listener are redirected there,
    /// so a TLS or WebSocket client stays on TLS or WebSocket. Default: the host of
    /// `cluster.serverReference` (or of the headless Service) with this listener's port;
    /// for the first listener, `cluster.serverReference` itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    #[x_kube(validation = Rule::new("self.contains('{instance}')").message("must contain {instance}, the pod name"))]
    #[x_kube(validation = Rule::new("self.matches('^[^\\\\s:/]+:[0-9]{1,5}$')").message("must be host:port"))]
    pub server_reference: Option<String>,
}

/// Transport of a listener: the proxy's own type, so the two cannot drift apart.
pub use mqtt_kafka_proxy::config::ListenerProtocol;

/// Certificate of a TLS listener, and optionally the CA its clients' certificates must
/// chain to. The proxy reads the mounted files again when the Secrets change: a rotated
/// certificate reaches new connections without rolling the pods.
#[derive(Clone, Debug, KubeSchema, Deserialize, Serialize, PartialEq, Eq)]
#[x_kube(validation = Rule::new("!has(self.clientAuth) || has(self.clientCaSecret)")
    .message("clientAuth needs clientCaSecret, the CA bundle client certificates must chain to")
    .field_path(".clientAuth"))]
#[x_kube(validation = Rule::new("!has(self.clientIdentity) || has(self.clientCaSecret)")
    .message("clientIdentity needs clientCaSecret, the CA bundle client certificates must chain to")
    .field_path(".clientIdentity"))]
#[serde(rename_all = "camelCase")]
pub struct ListenerTlsSpec {
    /// A `kubernetes.io/tls` Secret (`tls.crt`: PEM chain, leaf first; `tls.key`).
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: String,
    /// PEM CA bundle that client certificates must chain to (e.g. key `ca.crt` of a
    /// cert-manager Secret); setting it asks clients for a certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca_secret: Option<SecretKeyRef>,
    /// `required` (default with `clientCaSecret`) or `optional`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_auth: Option<ClientAuth>,
    /// `subject-cn`: a verified client certificate's subject CN is the client's identity and
    /// its subject O values its roles, for routes guarded by `tls` (without a JWT guard).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_identity: Option<ClientIdentity>,
}

/// Client-certificate settings: the proxy's own types, so the two cannot drift apart.
pub use mqtt_kafka_proxy::config::{ClientAuth, ClientIdentity};

/// Session ownership and redirects.
#[derive(Clone, Debug, Default, KubeSchema, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ClusterSpec {
    /// `host:port` template clients can reach a pod at; `{instance}` is the pod name, e.g.
    /// `{instance}.mqtt.example.com:1883`. Default:
    /// `{instance}.<name>-headless.<namespace>.svc:<first listener port>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    #[x_kube(validation = Rule::new("self.contains('{instance}')").message("must contain {instance}, the pod name"))]
    #[x_kube(validation = Rule::new("self.matches('^[^\\\\s:/]+:[0-9]{1,5}$')").message("must be host:port"))]
    pub server_reference: Option<String>,
    /// Redirect MQTT 5 clients to the pod that owns their session.
    #[serde(default)]
    pub redirect: Redirect,
}

/// Authorization: the JWT guard and rules for every client.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationSpec {
    /// JWT guard (`guarded: {jwt: [roles]}` in routes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtSpec>,
    /// Topic filters nobody may publish to or subscribe to, with or without a guard.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<mqtt_kafka_proxy::config::DenyRule>,
}

/// JWT guard: verification keys inline, from a Secret or ConfigMap holding a JWKS document
/// (rotating it needs no restart: the proxy reads it again), or from a JWKS URL; with none,
/// from `{issuer}/.well-known/jwks.json`.
#[derive(Clone, Debug, KubeSchema, Deserialize, Serialize, PartialEq)]
#[x_kube(validation = Rule::new(
    "[has(self.keys) && size(self.keys) > 0, has(self.jwksSecret), has(self.jwksConfigMap), has(self.jwksUrl)].filter(x, x).size() <= 1"
).message("set at most one of keys, jwksSecret, jwksConfigMap and jwksUrl"))]
#[x_kube(validation = Rule::new(
    "(has(self.keys) && size(self.keys) > 0) || has(self.jwksSecret) || has(self.jwksConfigMap) || has(self.jwksUrl) || has(self.issuer)"
).message("set keys, jwksSecret, jwksConfigMap or jwksUrl, or issuer (its .well-known/jwks.json)"))]
#[serde(rename_all = "camelCase")]
pub struct JwtSpec {
    /// Required `iss` claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Required `aud` claim value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// Claim holding the roles; default `scope` (space-separated), or an array claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roles_claim: Option<String>,
    /// Which CONNECT field carries the token: `password` (default) or `username`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<mqtt_kafka_proxy::config::TokenField>,
    /// Public verification keys (JWKs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<Jwk>,
    /// A Secret key holding a JWKS document (`{"keys": [...]}`), instead of `keys`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_secret: Option<SecretKeyRef>,
    /// A ConfigMap key holding a JWKS document, instead of `keys`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_config_map: Option<SecretKeyRef>,
    /// A JWKS URL (`http://` or `https://`), instead of `keys`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^https?://"))]
    pub jwks_url: Option<String>,
}

/// Overrides of the proxy pods.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodOverrides {
    /// Extra pod annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Extra pod labels (the operator's own labels win).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Resources of the proxy container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Affinity; default: prefer spreading the pods over nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// Tolerations.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Node selector.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Topology spread constraints.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topology_spread_constraints: Vec<TopologySpreadConstraint>,
    /// Priority class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
    /// Secrets to pull the image with.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<LocalObjectReference>,
    /// Extra environment variables of the proxy container (e.g. `RUST_LOG`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    /// Seconds a terminating pod has to hand its sessions over; default 60.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3600))]
    pub termination_grace_period_seconds: Option<i64>,
}

/// Type of a Service.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum ServiceType {
    #[default]
    ClusterIP,
    NodePort,
    LoadBalancer,
}

impl ServiceType {
    /// The Kubernetes spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceType::ClusterIP => "ClusterIP",
            ServiceType::NodePort => "NodePort",
            ServiceType::LoadBalancer => "LoadBalancer",
        }
    }
}

/// The client Service.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// Service type; default ClusterIP.
    #[serde(default, rename = "type")]
    pub type_: ServiceType,
    /// Annotations (load balancer settings, external-dns, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Extra labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// `loadBalancerClass` of a LoadBalancer Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer_class: Option<String>,
    /// `externalTrafficPolicy` (`Cluster` or `Local`) of NodePort / LoadBalancer Services.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_traffic_policy: Option<TrafficPolicy>,
}

/// `externalTrafficPolicy` of a Service.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum TrafficPolicy {
    Cluster,
    Local,
}

/// One Service per pod (`<name>-<ordinal>`, selecting that pod only).
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PerPodServicesSpec {
    /// Create them.
    #[serde(default)]
    pub enabled: bool,
    /// Service type; default LoadBalancer.
    #[serde(default = "default_per_pod_type", rename = "type")]
    pub type_: ServiceType,
    /// Annotations; `{instance}` in a value is replaced by the pod name (e.g.
    /// `external-dns.alpha.kubernetes.io/hostname: "{instance}.mqtt.example.com"`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// `externalTrafficPolicy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_traffic_policy: Option<TrafficPolicy>,
}

fn default_per_pod_type() -> ServiceType {
    ServiceType::LoadBalancer
}

/// PodDisruptionBudget of the proxy pods.
#[derive(Clone, Debug, KubeSchema, Deserialize, Serialize, PartialEq)]
#[x_kube(validation = Rule::new("!(has(self.minAvailable) && has(self.maxUnavailable))")
    .message("set at most one of minAvailable and maxUnavailable"))]
#[serde(rename_all = "camelCase")]
pub struct PodDisruptionBudgetSpec {
    /// Create it; default true.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Pods that may be down at once (number or percentage); default 1 when neither this nor
    /// `minAvailable` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<IntOrString>,
    /// Pods that must stay up (number or percentage).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_available: Option<IntOrString>,
}

impl Default for PodDisruptionBudgetSpec {
    fn default() -> Self {
        PodDisruptionBudgetSpec {
            enabled: true,
            max_unavailable: None,
            min_available: None,
        }
    }
}

fn default_true() -> bool {
    true
}

impl MqttKafkaProxySpec {
    /// The image to run.
    pub fn image(&self) -> &str {
        self.image.as_deref().unwrap_or(DEFAULT_IMAGE)
    }

    /// Whether per-pod Services are enabled.
    pub fn per_pod_services_enabled(&self) -> bool {
        self.per_pod_services.as_ref().is_some_and(|p| p.enabled)
    }
}

mod observed;

pub use observed::{MqttKafkaProxyStatus, PodServerReference, TopicStatus};

#[cfg(test)]
mod tests;
