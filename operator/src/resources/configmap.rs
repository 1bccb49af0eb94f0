//! The proxy config, built from the resource with the proxy crate's own `Config` types
//! (never by hand), validated by the proxy's own rules, and the ConfigMap that carries it.
//!
//! Secrets never enter the ConfigMap: the config names environment variables
//! (`kafka.propertiesFromEnv`) that the StatefulSet fills from Secret keys, and TLS and JWKS
//! files are Secret volumes.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;
use mqtt_kafka_proxy::config::{Admin, Cluster, Config, Guards, JwtGuard, Kafka, Listener, Tls, Topics};

use super::{metadata, names, stable_hash};
use crate::crd::{ADMIN_PORT, KafkaSpec, MqttKafkaProxy, SecretKeyRef};

/// Key of the config in the ConfigMap.
pub const CONFIG_KEY: &str = "config.yaml";
/// Where the ConfigMap is mounted.
pub const CONFIG_DIR: &str = "/etc/mqtt-kafka/config";
/// Where the Secret of TLS listener `name` is mounted: `{TLS_DIR}/{name}/tls.crt|tls.key`.
pub const TLS_DIR: &str = "/etc/mqtt-kafka/tls";
/// Where the client CA of TLS listener `name` is mounted: `{CLIENT_CA_DIR}/{name}/ca.crt`.
pub const CLIENT_CA_DIR: &str = "/etc/mqtt-kafka/client-ca";
/// File name of a listener's client CA bundle in its mount.
pub const CLIENT_CA_FILE: &str = "ca.crt";

/// The client CA bundle of TLS listener `name` in the pods.
pub fn client_ca_path(name: &str) -> String {
    format!("{CLIENT_CA_DIR}/{name}/{CLIENT_CA_FILE}")
}
/// Where the JWKS Secret key is mounted.
pub const JWKS_DIR: &str = "/etc/mqtt-kafka/jwks";
/// File name of the mounted JWKS.
pub const JWKS_FILE: &str = "jwks.json";

/// The config file path the proxy is started with.
pub fn config_path() -> String {
    format!("{CONFIG_DIR}/{CONFIG_KEY}")
}

/// A librdkafka property whose value comes from a Secret key through an environment variable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretProperty {
    /// librdkafka property, e.g. `sasl.password`.
    pub property: &'static str,
    /// Environment variable of the proxy container holding it.
    pub variable: &'static str,
    /// Where the value lives.
    pub secret: SecretKeyRef,
}

/// The secret librdkafka properties of the Kafka connection (SASL password, TLS PEMs).
/// librdkafka takes PEM text (`ssl.*.pem`), so nothing needs to be mounted as a file.
pub fn secret_properties(kafka: &KafkaSpec) -> Vec<SecretProperty> {
    let mut out = Vec::new();
    if let Some(sasl) = &kafka.sasl {
        out.push(SecretProperty {
            property: "sasl.password",
            variable: "KAFKA_SASL_PASSWORD",
            secret: sasl.password_secret.clone(),
        });
    }
    if let Some(tls) = &kafka.tls {
        if let Some(ca) = &tls.ca_secret {
            out.push(SecretProperty {
                property: "ssl.ca.pem",
                variable: "KAFKA_SSL_CA_PEM",
                secret: ca.clone(),
            });
        }
        if let Some(client) = &tls.client_secret_name {
            for (property, variable, key) in [
                ("ssl.certificate.pem", "KAFKA_SSL_CERTIFICATE_PEM", "tls.crt"),
                ("ssl.key.pem", "KAFKA_SSL_KEY_PEM", "tls.key"),
            ] {
                out.push(SecretProperty {
                    property,
                    variable,
                    secret: SecretKeyRef {
                        name: client.clone(),
                        key: key.to_owned(),
                    },
                });
            }
        }
    }
    out
}

/// The librdkafka properties that are not secret: the spec's `properties` plus what TLS
/// and SASL imply.
pub fn plain_properties(kafka: &KafkaSpec) -> BTreeMap<String, String> {
    let mut properties = kafka.properties.clone();
    let protocol = match (kafka.tls.is_some(), kafka.sasl.is_some()) {
        (true, true) => Some("SASL_SSL"),
        (true, false) => Some("SSL"),
        (false, true) => Some("SASL_PLAINTEXT"),
        (false, false) => None,
    };
    if let Some(protocol) = protocol {
        properties.insert("security.protocol".into(), protocol.into());
    }
    if let Some(sasl) = &kafka.sasl {
        properties.insert("sasl.mechanism".into(), sasl.mechanism.as_str().into());
        properties.insert("sasl.username".into(), sasl.username.clone());
    }
    properties
}

/// The default server reference: the pod's DNS name under the headless Service, on the
/// first listener's port.
pub fn default_server_reference(proxy: &MqttKafkaProxy) -> String {
    let port = proxy.spec.listeners.first().map_or(1883, |l| l.port);
    format!(
        "{{instance}}.{}.{}.svc:{port}",
        names::headless(&proxy.name_any()),
        proxy.namespace().unwrap_or_else(|| "default".into())
    )
}

/// The server reference template the pods use.
pub fn server_reference_template(proxy: &MqttKafkaProxy) -> String {
    proxy
        .spec
        .cluster
        .server_reference
        .clone()
        .unwrap_or_else(|| default_server_reference(proxy))
}

/// The server reference template of each listener, in spec order: the listener's own, or
/// for the first listener the cluster template, for the others the cluster template's host
/// with the listener's port (per-pod and headless Services expose every listener on its
/// own port, so the same host serves them all).
pub fn listener_reference_templates(proxy: &MqttKafkaProxy) -> Vec<(String, String)> {
    let cluster = server_reference_template(proxy);
    let host = cluster.rsplit_once(':').map_or(cluster.as_str(), |(host, _)| host);
    proxy
        .spec
        .listeners
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let template = match &l.server_reference {
                Some(own) => own.clone(),
                None if i == 0 => cluster.clone(),
                None => format!("{host}:{}", l.port),
            };
            (l.name.clone(), template)
        })
        .collect()
}

/// The proxy config for `proxy`, not yet validated. It holds nothing that depends on the
/// replica count or the pod, so one ConfigMap serves every pod and scaling rolls nothing.
pub fn proxy_config(proxy: &MqttKafkaProxy) -> Config {
    let spec = &proxy.spec;
    let mut kafka = Kafka::new(spec.kafka.bootstrap_servers.clone());
    kafka.properties = plain_properties(&spec.kafka);
    kafka.properties_from_env = secret_properties(&spec.kafka)
        .into_iter()
        .map(|p| (p.property.to_owned(), p.variable.to_owned()))
        .collect();
    let mut config = Config::new(kafka);
    let references = listener_reference_templates(proxy);
    config.listeners = spec
        .listeners
        .iter()
        .zip(references)
        .map(|(l, (_, reference))| Listener {
            name: l.name.clone(),
            protocol: l.protocol,
            address: format!("0.0.0.0:{}", l.port),
            path: l.path.clone(),
            tls: l.tls.as_ref().map(|spec| {
                let mut tls = Tls::new(
                    format!("{TLS_DIR}/{}/tls.crt", l.name),
                    format!("{TLS_DIR}/{}/tls.key", l.name),
                );
                if spec.client_ca_secret.is_some() {
                    tls.client_ca_file = Some(client_ca_path(&l.name));
                    tls.client_auth = spec.client_auth;
                    tls.client_identity = spec.client_identity;
                }
                tls
            }),
            server_reference: Some(reference),
        })
        .collect();
    config.admin = Admin {
        address: format!("0.0.0.0:{ADMIN_PORT}"),
    };
    let topics = &spec.kafka.topics;
    config.topics = Topics {
        sessions: topics.sessions.name.clone(),
        messages: topics.messages.name.clone(),
        retained: topics.retained.name.clone(),
    };
    config.clients = spec.clients.clone();
    config.publish = spec.publish.clone();
    config.mqtt = spec.mqtt.clone();
    config.routes = spec.routes.clone();
    config.cluster = Cluster {
        server_reference: Some(server_reference_template(proxy)),
        redirect: spec.cluster.redirect.clone(),
    };
    config.guards = Guards {
        jwt: spec
            .authorization
            .as_ref()
            .and_then(|a| a.jwt.as_ref())
            .map(|jwt| JwtGuard {
                issuer: jwt.issuer.clone(),
                audience: jwt.audience.clone(),
                keys: jwt.keys.clone(),
                jwks_file: (jwt.jwks_secret.is_some() || jwt.jwks_config_map.is_some())
                    .then(|| format!("{JWKS_DIR}/{JWKS_FILE}")),
                jwks_url: jwt.jwks_url.clone(),
                refresh_seconds: 300,
                roles_claim: jwt.roles_claim.clone().unwrap_or_else(|| "scope".into()),
                credentials: jwt.credentials.unwrap_or_default(),
            }),
    };
    config.authorization = mqtt_kafka_proxy::config::Authorization {
        deny: spec.authorization.as_ref().map(|a| a.deny.clone()).unwrap_or_default(),
    };
    config
}

/// A rule of the proxy config the spec breaks, with the spec field to fix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecViolation {
    /// Path in the resource, e.g. `spec.routes[0].when[0].publish[0].topic`.
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for SpecViolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// The config, its YAML and the YAML's hash.
#[derive(Clone, Debug)]
pub struct RenderedConfig {
    pub config: Config,
    pub yaml: String,
    pub hash: String,
}

/// Builds, validates and renders the proxy config; every broken rule is reported with the
/// spec field to fix.
pub fn render(proxy: &MqttKafkaProxy) -> Result<RenderedConfig, Vec<SpecViolation>> {
    let config = proxy_config(proxy);
    if let Err(err) = config.validate() {
        let violations = err.violations();
        if violations.is_empty() {
            return Err(vec![SpecViolation {
                path: "spec".into(),
                message: err.to_string(),
            }]);
        }
        return Err(violations
            .iter()
            .map(|v| SpecViolation {
                path: spec_path(&v.path),
                message: v.message.clone(),
            })
            .collect());
    }
    let yaml = config.to_yaml().map_err(|err| {
        vec![SpecViolation {
            path: "spec".into(),
            message: err.to_string(),
        }]
    })?;
    let hash = stable_hash(yaml.as_bytes());
    Ok(RenderedConfig { config, yaml, hash })
}

/// The spec field a config key path comes from.
pub fn spec_path(config_path: &str) -> String {
    let (head, rest) = config_path
        .find(['.', '['])
        .map_or((config_path, ""), |i| config_path.split_at(i));
    match head {
        "listeners" => {
            // The spec has a port where the config has an address, and a Secret where the
            // config has file names.
            let rest = rest.replacen(".address", ".port", 1);
            let rest = match rest.find(".tls.") {
                Some(i) => format!("{}.tls", &rest[..i]),
                None => rest,
            };
            format!("spec.listeners{rest}")
        }
        "topics" => format!("spec.kafka.topics{rest}.name"),
        "guards" => format!("spec.authorization{rest}"),
        "admin" | "instanceId" => "spec".into(),
        "kafka" if rest.starts_with(".propertiesFromEnv") => "spec.kafka".into(),
        _ => format!("spec.{config_path}"),
    }
}

/// The ConfigMap holding `yaml`.
pub fn config_map(proxy: &MqttKafkaProxy, yaml: &str) -> ConfigMap {
    ConfigMap {
        metadata: metadata(proxy, names::config_map(&proxy.name_any()), "config"),
        data: Some(BTreeMap::from([(CONFIG_KEY.to_owned(), yaml.to_owned())])),
        ..ConfigMap::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::tests::{minimal, proxy};
    use crate::resources::{is_owned_by, owner_reference};
    use mqtt_kafka_proxy::config::{ClientAuth, ClientIdentity, ListenerProtocol, MqttVersion, Qos};
    use serde_json::json;

    #[test]
    fn minimal_resource_renders_the_proxy_defaults_plus_kubernetes_wiring() {
        let rendered = render(&minimal()).expect("valid");
        let config = &rendered.config;
        assert_eq!(config.kafka.bootstrap_servers, "kafka:9092");
        assert_eq!(config.listeners.len(), 1);
        assert_eq!(config.listeners[0].address, "0.0.0.0:1883");
        assert_eq!(config.admin.address, "0.0.0.0:9090");
        assert_eq!(
            config.instance_id, None,
            "each pod's instance id comes from the downward API"
        );
        assert_eq!(
            config.cluster.server_reference.as_deref(),
            Some("{instance}.mqtt-headless.iot.svc:1883")
        );
        assert_eq!(config.topics.sessions, "mqtt-sessions");
        // The proxy reads back exactly what the operator wrote.
        assert_eq!(&Config::from_yaml_str(&rendered.yaml).expect("reads back"), config);
        assert_eq!(rendered.hash, stable_hash(rendered.yaml.as_bytes()));
    }

    #[test]
    fn authorization_is_mapped_to_the_proxy_guard_and_deny_rules() {
        let proxy = proxy(json!({
            "kafka": {"bootstrapServers": "k:9093"},
            "routes": [{"when": [{"publish": [{"topic": "sensors/{identity}/#"}]}], "guarded": {"jwt": ["device"]}}],
            "authorization": {
                "jwt": {"issuer": "https://auth", "jwksSecret": {"name": "jwks", "key": "keys.json"}, "credentials": "username"},
                "deny": [{"topic": "internal/#"}]
            }
        }));
        let config = proxy_config(&proxy);
        let jwt = config.guards.jwt.as_ref().expect("jwt guard");
        assert_eq!(jwt.jwks_file.as_deref(), Some("/etc/mqtt-kafka/jwks/jwks.json"));
        assert_eq!(jwt.roles_claim, "scope");
        assert_eq!(jwt.credentials, mqtt_kafka_proxy::config::TokenField::Username);
        assert_eq!(config.authorization.deny.len(), 1);
        let rendered = render(&proxy).expect("a guard is a valid proxy config now");
        assert_eq!(
            &Config::from_yaml_str(&rendered.yaml).expect("reads back"),
            &rendered.config
        );

        let by_map = proxy_config(&self::proxy(json!({
            "kafka": {"bootstrapServers": "k:9093"},
            "authorization": {"jwt": {"jwksConfigMap": {"name": "jwks", "key": "keys.json"}}}
        })));
        let jwt = by_map.guards.jwt.expect("jwt guard");
        assert_eq!(jwt.jwks_file.as_deref(), Some("/etc/mqtt-kafka/jwks/jwks.json"));
        let by_url = proxy_config(&self::proxy(json!({
            "kafka": {"bootstrapServers": "k:9093"},
            "authorization": {"jwt": {"jwksUrl": "https://idp/jwks"}}
        })));
        assert_eq!(
            by_url.guards.jwt.and_then(|j| j.jwks_url).as_deref(),
            Some("https://idp/jwks")
        );
    }

    #[test]
    fn every_spec_section_reaches_the_config() {
        let proxy = proxy(json!({
            "kafka": {
                "bootstrapServers": "k:9093",
                "tls": {"caSecret": {"name": "ca", "key": "ca.crt"}, "clientSecretName": "client"},
                "sasl": {"mechanism": "SCRAM-SHA-512", "username": "u", "passwordSecret": {"name": "s", "key": "p"}},
                "properties": {"client.id": "mqtt"},
                "topics": {"sessions": {"name": "s"}, "retained": {"name": "r"}, "messages": {"name": "m"}}
            },
            "listeners": [
                {"name": "mqtt", "port": 1883},
                {"name": "mqtts", "protocol": "tls", "port": 8883, "tls": {"secretName": "cert"}},
                {"name": "ws", "protocol": "websocket", "port": 8080, "path": "/ws"}
            ],
            "cluster": {"serverReference": "{instance}.example.com:1883", "redirect": {"enabled": true, "reasonCode": 157}},
            "clients": ["place/{identity}/#"],
            "publish": {"qosMax": 1},
            "mqtt": {"versions": ["5.0"], "receiveMaximum": 10},
            "routes": [{"when": [{"publish": [{"topic": "sensors/#"}]}], "with": {"messages": "sensors"}}]
        }));
        let config = render(&proxy).expect("valid").config;
        assert_eq!(config.kafka.properties["security.protocol"], "SASL_SSL");
        assert_eq!(config.kafka.properties["sasl.mechanism"], "SCRAM-SHA-512");
        assert_eq!(config.kafka.properties["sasl.username"], "u");
        assert_eq!(config.kafka.properties["client.id"], "mqtt");
        assert!(
            !config.kafka.properties.contains_key("sasl.password"),
            "secrets stay out of the ConfigMap"
        );
        assert_eq!(config.kafka.properties_from_env["sasl.password"], "KAFKA_SASL_PASSWORD");
        assert_eq!(config.kafka.properties_from_env["ssl.ca.pem"], "KAFKA_SSL_CA_PEM");
        assert_eq!(config.kafka.properties_from_env["ssl.key.pem"], "KAFKA_SSL_KEY_PEM");
        assert_eq!(config.listeners[1].protocol, ListenerProtocol::Tls);
        assert_eq!(
            config.listeners[1].tls.as_ref().map(|t| t.cert_file.as_str()),
            Some("/etc/mqtt-kafka/tls/mqtts/tls.crt")
        );
        assert_eq!(config.listeners[2].path.as_deref(), Some("/ws"));
        assert_eq!(
            (config.topics.sessions.as_str(), config.topics.retained.as_str()),
            ("s", "r")
        );
        assert_eq!(
            config.cluster.server_reference.as_deref(),
            Some("{instance}.example.com:1883")
        );
        assert!(config.cluster.redirect.enabled);
        assert_eq!(config.cluster.redirect.reason_code, 157);
        assert_eq!(config.clients, ["place/{identity}/#"]);
        assert_eq!(config.publish.qos_max, Qos::AtLeastOnce);
        assert_eq!(config.mqtt.versions, [MqttVersion::V5]);
        assert_eq!(config.mqtt.receive_maximum, 10);
        assert_eq!(config.routes.len(), 1);
        assert_eq!(
            config.server_reference("mqtt-1").as_deref(),
            Some("mqtt-1.example.com:1883")
        );
    }

    #[test]
    fn a_client_ca_asks_for_client_certificates_and_may_identify_clients() {
        let proxy = proxy(json!({
            "kafka": {"bootstrapServers": "k:9092"},
            "listeners": [
                {"name": "mqtts", "protocol": "tls", "port": 8883, "tls": {
                    "secretName": "cert",
                    "clientCaSecret": {"name": "cert", "key": "ca.crt"},
                    "clientAuth": "optional",
                    "clientIdentity": "subject-cn"
                }},
                {"name": "wss", "protocol": "websocket", "port": 8443, "tls": {"secretName": "cert"}}
            ],
            "routes": [{"when": [{"publish": [{"topic": "devices/{identity}/#"}]}], "guarded": {"tls": []}}]
        }));
        let config = render(&proxy).expect("valid: the tls guard exists").config;
        let mqtts = config.listeners[0].tls.as_ref().expect("tls");
        assert_eq!(
            mqtts.client_ca_file.as_deref(),
            Some("/etc/mqtt-kafka/client-ca/mqtts/ca.crt")
        );
        assert_eq!(mqtts.effective_client_auth(), Some(ClientAuth::Optional));
        assert_eq!(mqtts.client_identity, Some(ClientIdentity::SubjectCn));
        let wss = config.listeners[1].tls.as_ref().expect("tls");
        assert_eq!(
            (wss.client_ca_file.as_deref(), wss.effective_client_auth()),
            (None, None)
        );
    }

    #[test]
    fn each_listener_gets_a_server_reference_of_its_own_kind() {
        let proxy = proxy(json!({
            "kafka": {"bootstrapServers": "k:9092"},
            "listeners": [
                {"name": "mqtt", "port": 1883},
                {"name": "mqtts", "protocol": "tls", "port": 8883, "tls": {"secretName": "cert"}},
                {"name": "wss", "protocol": "websocket", "port": 8443, "tls": {"secretName": "cert"},
                 "serverReference": "{instance}.ws.example.com:443"}
            ]
        }));
        let config = render(&proxy).expect("valid").config;
        let references: Vec<(&str, Option<&str>)> = config
            .listeners
            .iter()
            .map(|l| (l.name.as_str(), l.server_reference.as_deref()))
            .collect();
        assert_eq!(
            references,
            [
                ("mqtt", Some("{instance}.mqtt-headless.iot.svc:1883")),
                ("mqtts", Some("{instance}.mqtt-headless.iot.svc:8883")),
                ("wss", Some("{instance}.ws.example.com:443")),
            ]
        );
        assert_eq!(
            config.cluster.server_reference.as_deref(),
            Some("{instance}.mqtt-headless.iot.svc:1883"),
            "the single reference stays the first listener's, for older proxies"
        );
        let wss = &config.listeners[2];
        assert_eq!(wss.protocol, ListenerProtocol::Websocket);
        assert_eq!(
            wss.tls.as_ref().map(|t| t.cert_file.as_str()),
            Some("/etc/mqtt-kafka/tls/wss/tls.crt"),
            "a websocket listener with tls serves wss"
        );
        assert_eq!(
            config.listener_server_references("mqtt-1")["mqtts"],
            "mqtt-1.mqtt-headless.iot.svc:8883"
        );
    }

    #[test]
    fn a_custom_cluster_reference_keeps_its_host_for_the_other_listeners() {
        let proxy = proxy(json!({
            "kafka": {"bootstrapServers": "k:9092"},
            "cluster": {"serverReference": "{instance}.mqtt.example.com:31883"},
            "listeners": [{"name": "mqtt", "port": 1883}, {"name": "ws", "protocol": "websocket", "port": 8080}]
        }));
        let templates = listener_reference_templates(&proxy);
        assert_eq!(
            templates,
            [
                ("mqtt".to_owned(), "{instance}.mqtt.example.com:31883".to_owned()),
                ("ws".to_owned(), "{instance}.mqtt.example.com:8080".to_owned()),
            ]
        );
    }

    #[test]
    fn scaling_does_not_change_the_config() {
        let one = minimal();
        let mut three = minimal();
        three.spec.replicas = 3;
        assert_eq!(render(&one).expect("valid").hash, render(&three).expect("valid").hash);
    }

    #[test]
    fn broken_proxy_rules_are_reported_with_the_spec_field() {
        let proxy = proxy(json!({
            "kafka": {"bootstrapServers": "k:9092", "properties": {"acks": "1"}},
            "routes": [{"when": [{"publish": [{"topic": "a/#/b"}]}], "with": {"messages": "x"}}],
            "clients": ["place/#"]
        }));
        let violations = render(&proxy).expect_err("invalid");
        let paths: Vec<&str> = violations.iter().map(|v| v.path.as_str()).collect();
        assert!(paths.contains(&"spec.kafka.properties.acks"), "{paths:?}");
        assert!(paths.contains(&"spec.routes[0].when[0].publish[0].topic"), "{paths:?}");
        assert!(paths.contains(&"spec.clients[0]"), "{paths:?}");
    }

    #[test]
    fn config_paths_map_to_spec_fields() {
        assert_eq!(spec_path("listeners[1].address"), "spec.listeners[1].port");
        assert_eq!(spec_path("listeners[0].tls.certFile"), "spec.listeners[0].tls");
        assert_eq!(spec_path("topics.sessions"), "spec.kafka.topics.sessions.name");
        assert_eq!(spec_path("guards.jwt.keys[0].n"), "spec.authorization.jwt.keys[0].n");
        assert_eq!(spec_path("mqtt.receiveMaximum"), "spec.mqtt.receiveMaximum");
        assert_eq!(spec_path("kafka.propertiesFromEnv[\"ssl.ca.pem\"]"), "spec.kafka");
    }

    #[test]
    fn config_map_holds_the_yaml_and_is_owned() {
        let proxy = minimal();
        let cm = config_map(&proxy, "kafka: {}\n");
        assert_eq!(cm.metadata.name.as_deref(), Some("mqtt-config"));
        assert_eq!(cm.data.as_ref().expect("data")[CONFIG_KEY], "kafka: {}\n");
        assert!(is_owned_by(&cm.metadata, "uid-1"));
        assert_eq!(cm.metadata.owner_references, Some(vec![owner_reference(&proxy)]));
    }
}
