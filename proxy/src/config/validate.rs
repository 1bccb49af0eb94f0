//! Validation: every rule the types cannot express, all violations reported at once with
//! the key path of each.

use std::collections::HashMap;
use std::net::SocketAddr;

use super::auth::JwtGuard;
use super::schema::*;
use super::{
    ConfigError, IDENTITY_PLACEHOLDER, INSTANCE_PLACEHOLDER, KAFKA_TOPIC_MAX_LEN, MQTT_MAX_PACKET_SIZE,
    RESERVED_KAFKA_PROPERTIES, Violation, key_segment,
};

impl Config {
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
            } else if self.kafka.properties_from_files.contains_key(key) {
                v.err(path, "also set in kafka.propertiesFromFiles; set it in one place");
            }
        }
        for (key, var) in &self.kafka.properties_from_env {
            let path = format!("kafka.propertiesFromEnv{}", key_segment(key));
            check_property_name(key, &path, v);
            if !is_env_var_name(var) {
                v.err(path, format!("not an environment variable name: {var:?}"));
            } else if self.kafka.properties_from_files.contains_key(key) {
                v.err(path, "also set in kafka.propertiesFromFiles; set it in one place");
            }
        }
        for (key, file) in &self.kafka.properties_from_files {
            let path = format!("kafka.propertiesFromFiles{}", key_segment(key));
            check_property_name(key, &path, v);
            if file.trim().is_empty() {
                v.err(path, "must be a file path");
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
        if mqtt.max_queued_messages == 0 {
            v.err("mqtt.maxQueuedMessages", format!("must be 1..={}, got 0", u32::MAX));
        }
        if mqtt.max_queued_bytes == 0 {
            v.err("mqtt.maxQueuedBytes", format!("must be 1..={}, got 0", u64::MAX));
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

pub(super) fn parse_socket_addr(address: &str) -> Result<SocketAddr, String> {
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
