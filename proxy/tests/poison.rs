//! Poison input from Kafka (issue 9): any producer may write records the broker cannot map
//! to an MQTT PUBLISH. Each is skipped and counted
//! (`mqtt_kafka_records_skipped_total{reason}`), and the reader that met it keeps going:
//! the fan-out consumer, the retained reader (also at start-up) and the sessions reader.
//! Header names that are not UTF-8 are written with kcat (the environment installs it):
//! rdkafka's Rust API only takes `&str` names.

mod support;

use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rumqttc::v5::mqttbytes::QoS;
use support::{Client, TestProxy, WAIT};

/// Writes one record to partition 0 of `topic` with kcat, header names and all as raw bytes.
fn kcat_produce(bootstrap: &str, topic: &str, key: &[u8], headers: &[(&[u8], &[u8])], value: &[u8]) {
    let mut command = Command::new("kcat");
    command.args(["-P", "-b", bootstrap, "-t", topic, "-p", "0", "-k"]);
    command.arg(OsStr::from_bytes(key));
    for (name, value) in headers {
        let mut header = name.to_vec();
        header.push(b'=');
        header.extend_from_slice(value);
        command.arg("-H").arg(OsStr::from_bytes(&header));
    }
    let mut child = command
        .stdin(Stdio::piped())
        .spawn()
        .expect("kcat runs (make env-up installs it)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(value)
        .expect("value written to kcat");
    let status = child.wait().expect("kcat ends");
    assert!(status.success(), "kcat failed: {status}");
}

fn producer(proxy: &TestProxy) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", proxy.bootstrap())
        .create()
        .expect("producer")
}

/// Writes one record to partition 0 of `topic`.
async fn produce(producer: &FutureProducer, topic: &str, key: &[u8], value: &[u8], headers: Option<OwnedHeaders>) {
    let mut record = FutureRecord::to(topic).key(key).payload(value).partition(0);
    if let Some(headers) = headers {
        record = record.headers(headers);
    }
    producer.send(record, Duration::from_secs(10)).await.expect("produce");
}

async fn assert_healthy(proxy: &TestProxy) {
    let (status, body) = proxy.admin_get("/healthz").await;
    assert_eq!(status, 200, "/healthz: {body}");
}

/// Waits until the counter of skipped records with `reason` reaches `count`.
async fn wait_skipped(proxy: &TestProxy, reason: &str, count: f64) {
    let series = format!("mqtt_kafka_records_skipped_total{{reason=\"{reason}\"}}");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let seen = proxy.metric(&series).await;
        if seen == Some(count) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{series} is {seen:?}, not {count}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_header_name_that_is_not_utf8_is_skipped_and_the_fanout_keeps_delivering() {
    let proxy = TestProxy::start().await;
    let mut sub = Client::connect(&proxy, "poison-sub").await;
    sub.client
        .subscribe("poison/#", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    sub.suback().await;
    let topic = proxy.config.topics.messages.clone();
    kcat_produce(proxy.bootstrap(), &topic, b"poison/a", &[(b"\xff\xfe", b"x")], b"bad");
    kcat_produce(proxy.bootstrap(), &topic, b"poison/b", &[(b"fine", b"y")], b"good");

    let p = sub.next_publish().await;
    assert_eq!((&p.topic[..], &p.payload[..]), (&b"poison/b"[..], &b"good"[..]));
    wait_skipped(&proxy, "header_name_not_utf8", 1.0).await;
    assert_healthy(&proxy).await;
}

#[tokio::test]
async fn records_with_a_key_or_header_over_64_kib_are_skipped_and_subscribers_stay_connected() {
    let proxy = TestProxy::start().await;
    let mut sub = Client::connect(&proxy, "big-sub").await;
    sub.client
        .subscribe("big/#", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    sub.suback().await;
    let topic = proxy.config.topics.messages.clone();
    let producer = producer(&proxy);
    let long_key = format!("big/{}", "k".repeat(70_000));
    produce(&producer, &topic, long_key.as_bytes(), b"x", None).await;
    let long_value = "v".repeat(70_000);
    let headers = OwnedHeaders::new().insert(Header {
        key: "big",
        value: Some(long_value.as_bytes()),
    });
    produce(&producer, &topic, b"big/header", b"x", Some(headers)).await;
    produce(&producer, &topic, b"big/ok", b"fits", None).await;

    // Sent, the first two would fail to encode and end the subscriber's connection.
    let p = sub.next_publish().await;
    assert_eq!((&p.topic[..], &p.payload[..]), (&b"big/ok"[..], &b"fits"[..]));
    sub.expect_no_publish(Duration::from_millis(300)).await;
    wait_skipped(&proxy, "key_too_long", 1.0).await;
    wait_skipped(&proxy, "header_too_long", 1.0).await;
    assert_healthy(&proxy).await;
}

#[tokio::test]
async fn a_poison_record_in_the_retained_topic_stops_neither_the_reader_nor_the_next_start() {
    let proxy = TestProxy::start().await;
    let retained = proxy.config.topics.retained.clone();
    kcat_produce(proxy.bootstrap(), &retained, b"keep/a", &[(b"\xc3\x28", b"x")], b"bad");
    kcat_produce(proxy.bootstrap(), &retained, b"keep/b", &[], b"good");
    // The running reader passes the poison record and applies the next one.
    wait_skipped(&proxy, "header_name_not_utf8", 1.0).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut sub = Client::connect(&proxy, "retained-sub").await;
        sub.client
            .subscribe("keep/#", QoS::AtLeastOnce)
            .await
            .expect("subscribe");
        sub.suback().await;
        if let Ok(Ok(rumqttc::v5::mqttbytes::v5::Packet::Publish(p))) =
            tokio::time::timeout(Duration::from_millis(500), sub.next()).await
        {
            assert_eq!((&p.topic[..], &p.payload[..]), (&b"keep/b"[..], &b"good"[..]));
            break;
        }
        sub.disconnect().await;
        assert!(tokio::time::Instant::now() < deadline, "keep/b never became retained");
    }
    assert_healthy(&proxy).await;
    // A process starting on this topic loads past the poison record and becomes ready.
    let mut config = proxy.config.clone();
    config.instance_id = Some("second".into());
    let second = TestProxy::start_on(config).await;
    wait_skipped(&second, "header_name_not_utf8", 1.0).await;
    assert_healthy(&second).await;
}

#[tokio::test]
async fn records_in_the_sessions_topic_that_are_no_session_are_skipped_and_counted() {
    let proxy = TestProxy::start().await;
    let sessions = proxy.config.topics.sessions.clone();
    let producer = producer(&proxy);
    produce(&producer, &sessions, b"\xff\xfe", b"{}", None).await;
    produce(&producer, &sessions, b"device-1", b"not json", None).await;
    wait_skipped(&proxy, "bad_key", 1.0).await;
    wait_skipped(&proxy, "bad_session", 1.0).await;
    // The reader still applies what follows: a persistent session connects and resumes.
    let options = |o: &mut rumqttc::v5::MqttOptions| {
        o.set_clean_start(false);
        o.set_session_expiry_interval(Some(600));
    };
    Client::connect_with(&proxy, "device-2", options)
        .await
        .disconnect()
        .await;
    let again = Client::connect_with(&proxy, "device-2", options).await;
    assert!(again.connack.session_present, "the session was read back");
    assert_healthy(&proxy).await;
}
