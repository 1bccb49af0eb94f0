//! The proxy's Kafka clients through the environment's SASL_SSL listener (SCRAM-SHA-512
//! over TLS signed by the environment's own CA, `make env-up`): publish and deliver with the
//! password read from a file, and refusals (wrong password, wrong CA) answered with
//! readiness false naming the cause, set-up retried, never a crash.

mod support;

use std::time::Duration;

use mqtt_kafka_proxy::config::{Config, Kafka, Listener, ListenerProtocol};
use mqtt_kafka_proxy::server::{self, StartOptions};
use mqtt_kafka_testenv::{KafkaSasl, unique_name};
use rdkafka::Message as _;
use rumqttc::v5::mqttbytes::QoS;
use support::{Client, KafkaReader, TestProxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn sasl() -> KafkaSasl {
    KafkaSasl::load().unwrap_or_else(|e| panic!("{e}"))
}

/// A proxy config for the SASL_SSL listener on fresh topics; `password_file` and `ca_file`
/// replace the environment's own when given.
fn sasl_config(sasl: &KafkaSasl, password_file: &str, ca_file: &str) -> Config {
    let mut kafka = Kafka::new(sasl.bootstrap.clone());
    for (key, value) in [
        ("security.protocol", "SASL_SSL"),
        ("sasl.mechanism", sasl.mechanism.as_str()),
        ("sasl.username", sasl.username.as_str()),
        ("ssl.ca.location", ca_file),
    ] {
        kafka.properties.insert(key.to_owned(), value.to_owned());
    }
    kafka
        .properties_from_files
        .insert("sasl.password".to_owned(), password_file.to_owned());
    let mut config = Config::new(kafka);
    let prefix = unique_name("t-sasl");
    config.topics.messages = format!("{prefix}-messages");
    config.topics.retained = format!("{prefix}-retained");
    config.topics.sessions = format!("{prefix}-sessions");
    config.listeners = vec![Listener {
        name: "mqtt".into(),
        protocol: ListenerProtocol::Tcp,
        address: "127.0.0.1:0".into(),
        path: None,
        tls: None,
        server_reference: None,
    }];
    config.admin.address = "127.0.0.1:0".into();
    config
}

fn write_temp(name: &str, text: &str) -> String {
    let path = std::env::temp_dir().join(format!("{}-{}", unique_name("kafka-security"), name));
    std::fs::write(&path, text).expect("write temp file");
    path.to_string_lossy().into_owned()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Starts the proxy on `config` with set-up retried, and polls `/readyz` until its body
/// contains `expected` (or 60 s pass); returns the last status line and body.
async fn readiness_while_refused(mut config: Config, expected: &str) -> String {
    let admin_port = free_port();
    config.admin.address = format!("127.0.0.1:{admin_port}");
    let options = StartOptions {
        create_topics: true,
        partitions: 1,
        retry_kafka: true,
        metadata_refresh: None,
        client_policy: None,
    };
    let starting = tokio::spawn(server::start(config, options));
    let mut answer = String::new();
    for _ in 0..120 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", admin_port)).await else {
            continue;
        };
        s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .expect("write");
        answer.clear();
        s.read_to_string(&mut answer).await.expect("read");
        if answer.contains(expected) {
            break;
        }
    }
    assert!(
        !starting.is_finished(),
        "set-up keeps retrying instead of failing: {answer}"
    );
    starting.abort();
    answer
}

#[tokio::test]
async fn publishes_and_deliveries_work_through_sasl_ssl_with_the_password_from_a_file() {
    let sasl = sasl();
    let config = sasl_config(
        &sasl,
        &sasl.password_file.to_string_lossy(),
        &sasl.ca_file.to_string_lossy(),
    );
    let messages_topic = config.topics.messages.clone();
    let proxy = TestProxy::start_on(config).await;

    let mut subscriber = Client::connect(&proxy, "sasl-sub").await;
    subscriber
        .client
        .subscribe("sasl/#", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    subscriber.suback().await;
    let mut publisher = Client::connect(&proxy, "sasl-pub").await;
    // The PUBACK comes after acks=all through SASL_SSL (the proxy knows no other listener).
    publisher.publish_acked(0..3, |i| format!("sasl/device-{i}"), 0).await;

    // Three topics, three partitions: deliveries come in any order between topics.
    let mut delivered = Vec::new();
    for _ in 0..3 {
        let publish = subscriber.next_publish().await;
        delivered.push((
            String::from_utf8_lossy(&publish.topic).into_owned(),
            String::from_utf8_lossy(&publish.payload).into_owned(),
        ));
    }
    delivered.sort();
    let expected: Vec<(String, String)> = (0..3).map(|i| (format!("sasl/device-{i}"), format!("m{i}"))).collect();
    assert_eq!(delivered, expected);

    // The records are in Kafka: read back through the plaintext listener of the same broker.
    let plain = mqtt_kafka_testenv::kafka().await.unwrap_or_else(|e| panic!("{e}"));
    let reader = KafkaReader::new(&plain, &messages_topic);
    let record = reader.next_with_key("sasl/device-2").await;
    assert_eq!(record.payload(), Some(&b"m2"[..]));
}

#[tokio::test]
async fn a_wrong_password_gives_readiness_false_naming_authentication() {
    let sasl = sasl();
    let wrong = write_temp("password", "not-the-password\n");
    let config = sasl_config(&sasl, &wrong, &sasl.ca_file.to_string_lossy());
    let answer = readiness_while_refused(config, "SASL authentication failed").await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("Kafka: SASL authentication failed"), "{answer}");
    assert!(
        !answer.contains("not-the-password"),
        "the password is never shown: {answer}"
    );
}

#[tokio::test]
async fn a_ca_that_did_not_sign_the_broker_gives_readiness_false_naming_tls() {
    let sasl = sasl();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let key = rcgen::KeyPair::generate().expect("key");
    let other_ca = params.self_signed(&key).expect("self-signed CA");
    let ca_file = write_temp("other-ca.crt", &other_ca.pem());
    let config = sasl_config(&sasl, &sasl.password_file.to_string_lossy(), &ca_file);
    let answer = readiness_while_refused(config, "TLS (SSL) handshake failed").await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("Kafka: TLS (SSL) handshake failed"), "{answer}");
}
