//! The configuration end to end: parsing, defaults, round trips and every rule, each
//! error with its key path.

use std::collections::BTreeMap;

use super::*;

const EXAMPLE_YAML: &str = include_str!("../../../deploy/examples/proxy-config.yaml");
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
    let config =
        Config::from_yaml_str(&with("mqtt: {}\ntopics: {}\npublish: {}\ncluster: {redirect: {}}\n")).expect("config");
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
        .client_properties_with(|var| (var == "KAFKA_PASSWORD").then(|| "secret".to_owned()), no_files)
        .expect("resolved");
    assert_eq!(props["bootstrap.servers"], "k:9092");
    assert_eq!(props["sasl.username"], "u");
    assert_eq!(props["sasl.password"], "secret");
    let err = config
        .kafka
        .client_properties_with(|_| None, no_files)
        .expect_err("missing var");
    assert!(
        err.to_string()
            .contains("kafka.propertiesFromEnv[\"sasl.password\"]: environment variable KAFKA_PASSWORD"),
        "{err}"
    );
}

fn no_files(path: &str) -> std::io::Result<String> {
    Err(std::io::Error::new(
        std::io::ErrorKind::NotFound,
        format!("no such file: {path}"),
    ))
}

#[test]
fn client_properties_read_files_without_the_trailing_newline() {
    let yaml = "kafka:\n  bootstrapServers: k:9092\n  \
                propertiesFromFiles: {sasl.password: /etc/kafka/password, ssl.ca.pem: /etc/kafka/ca.crt}\n";
    let config = Config::from_yaml_str(yaml).expect("config");
    let read = |path: &str| match path {
        "/etc/kafka/password" => Ok("s3cret\n".to_owned()),
        "/etc/kafka/ca.crt" => Ok("-----BEGIN CERTIFICATE-----\nMII\n-----END CERTIFICATE-----\n".to_owned()),
        other => no_files(other),
    };
    let props = config.kafka.client_properties_with(|_| None, read).expect("resolved");
    assert_eq!(props["sasl.password"], "s3cret");
    assert_eq!(
        props["ssl.ca.pem"],
        "-----BEGIN CERTIFICATE-----\nMII\n-----END CERTIFICATE-----"
    );
    let err = config
        .kafka
        .client_properties_with(|_| None, no_files)
        .expect_err("unreadable");
    let text = err.to_string();
    assert!(
        text.contains("kafka.propertiesFromFiles[\"sasl.password\"]: cannot read /etc/kafka/password"),
        "{text}"
    );
}

#[test]
fn a_property_set_in_two_places_is_refused() {
    let yaml = "kafka:\n  bootstrapServers: k:9092\n  propertiesFromEnv: {sasl.password: P}\n  \
                propertiesFromFiles: {sasl.password: /p}\n";
    let err = Config::from_yaml_str(yaml).expect_err("twice").to_string();
    assert!(
        err.contains("kafka.propertiesFromEnv[\"sasl.password\"]: also set in kafka.propertiesFromFiles"),
        "{err}"
    );
}

#[test]
fn secrets_are_redacted_in_debug_and_in_the_checked_config() {
    let yaml = "kafka:\n  bootstrapServers: k:9092\n  properties: {sasl.username: device-fleet, \
                sasl.password: hunter2, ssl.key.pem: PRIVATE, ssl.key.password: pw2, \
                sasl.jaas.config: 'x required password=\"pw3\";'}\n";
    let config = Config::from_yaml_str(yaml).expect("config");
    let debug = format!("{config:?}");
    let checked = config.redacted().to_yaml().expect("yaml");
    for shown in [&debug, &checked] {
        for secret in ["hunter2", "PRIVATE", "pw2", "pw3"] {
            assert!(!shown.contains(secret), "{secret} shown in {shown}");
        }
        assert!(shown.contains("device-fleet"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }
    assert_eq!(
        config.kafka.properties["sasl.password"], "hunter2",
        "only the rendering is redacted"
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
    max_queued_messages_zero: with("mqtt: {maxQueuedMessages: 0}\n")
        => "mqtt.maxQueuedMessages", "got 0";
    max_queued_bytes_zero: with("mqtt: {maxQueuedBytes: 0}\n")
        => "mqtt.maxQueuedBytes", "got 0";
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
