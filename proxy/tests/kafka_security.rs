//! The proxy's Kafka clients through the environment's SASL_SSL listener (SCRAM-SHA-512
//! over TLS signed by the environment's own CA, `make env-up`): publish and deliver with the
//! password read from a file, and refusals (wrong password, wrong CA) answered with
//! readiness false naming the cause, set-up retried, never a crash.

mod support;

use mqtt_kafka_proxy::config::{Config, Kafka};
use mqtt_kafka_testenv::{KafkaSasl, unique_name};
use rdkafka::Message as _;
use rumqttc::v5::mqttbytes::QoS;
use support::{Client, KafkaReader, TestProxy};

fn sasl() -> KafkaSasl {
    KafkaSasl::load().unwrap_or_else(|e| panic!("{e}"))
}

/// A proxy config for the SASL_SSL listener on fresh topics, with the password read from
/// `password_file` and the broker checked against `ca_file`.
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
    support::test_config(kafka)
}

fn write_temp(name: &str, text: &str) -> String {
    let path = std::env::temp_dir().join(format!("{}-{}", unique_name("kafka-security"), name));
    std::fs::write(&path, text).expect("write temp file");
    path.to_string_lossy().into_owned()
}

/// `/readyz` once it names `expected` (or after 60 s), with set-up still retrying.
async fn readiness_while_refused(config: Config, expected: &str) -> String {
    let (answer, starting) = support::readiness_while_starting(config, |answer| answer.contains(expected)).await;
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
