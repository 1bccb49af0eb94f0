//! Smoke tests: the environment's Kafka is a real broker that rdkafka can use.

use std::time::Duration;

use mqtt_kafka_testenv::{kafka, unique_name};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

async fn bootstrap() -> String {
    kafka().await.unwrap_or_else(|e| panic!("{e}"))
}

fn admin(bootstrap: &str) -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin client")
}

fn options() -> AdminOptions {
    AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)))
}

async fn create_topic(admin: &AdminClient<DefaultClientContext>, topic: &NewTopic<'_>) {
    let results = admin
        .create_topics([topic], &options())
        .await
        .expect("create_topics request");
    for r in results {
        r.unwrap_or_else(|(name, code)| panic!("creating topic {name} failed: {code}"));
    }
}

/// A config entry of `which`. Right after creation the broker may not describe the topic
/// yet, or describe it without its configs (seen on a loaded machine), so this asks again
/// for up to 10 s while the request fails or the entry is missing.
async fn config_value(
    admin: &AdminClient<DefaultClientContext>,
    which: ResourceSpecifier<'_>,
    key: &str,
) -> Option<String> {
    let mut last_error = None;
    for _ in 0..50 {
        let results = admin
            .describe_configs([&which], &options())
            .await
            .expect("describe_configs request");
        match results.into_iter().next().expect("one result") {
            Ok(resource) => match resource.get(key).and_then(|entry| entry.value.clone()) {
                Some(value) => return Some(value),
                None => last_error = None,
            },
            Err(e) => last_error = Some(e.to_string()),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if let Some(error) = last_error {
        panic!("describe_configs kept failing: {error}");
    }
    None
}

#[tokio::test]
async fn a_record_produced_with_acks_all_is_consumed_with_key_headers_and_offset() {
    let bootstrap = bootstrap().await;
    let admin = admin(&bootstrap);
    let topic = unique_name("smoke-records");
    create_topic(&admin, &NewTopic::new(&topic, 3, TopicReplication::Fixed(1))).await;

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("partitioner", "murmur2_random")
        .create()
        .expect("producer");
    let headers = OwnedHeaders::new().insert(Header {
        key: "mqtt-qos",
        value: Some("1"),
    });
    let delivered = producer
        .send(
            FutureRecord::to(&topic)
                .key("sensors/1/temp")
                .payload("21.5")
                .headers(headers),
            Duration::from_secs(10),
        )
        .await
        .unwrap_or_else(|(e, _)| panic!("delivery failed: {e}"));

    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", unique_name("smoke"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(&topic, delivered.partition, Offset::Beginning)
        .expect("assignment");
    consumer.assign(&assignment).expect("assign");
    let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
        .await
        .expect("a record within 30 s")
        .expect("consume");

    assert_eq!(message.key(), Some(&b"sensors/1/temp"[..]));
    assert_eq!(message.payload(), Some(&b"21.5"[..]));
    assert_eq!(message.offset(), delivered.offset);
    let header = message.headers().expect("headers").get(0);
    assert_eq!((header.key, header.value), ("mqtt-qos", Some(&b"1"[..])));

    admin.delete_topics(&[&topic], &options()).await.expect("delete_topics");
}

#[tokio::test]
async fn a_compacted_topic_created_through_the_admin_api_reads_back_its_config() {
    let bootstrap = bootstrap().await;
    let admin = admin(&bootstrap);
    let topic = unique_name("smoke-compacted");
    let new_topic = NewTopic::new(&topic, 2, TopicReplication::Fixed(1))
        .set("cleanup.policy", "compact")
        .set("min.cleanable.dirty.ratio", "0.1");
    create_topic(&admin, &new_topic).await;

    assert_eq!(
        config_value(&admin, ResourceSpecifier::Topic(&topic), "cleanup.policy")
            .await
            .as_deref(),
        Some("compact")
    );
    assert_eq!(
        config_value(&admin, ResourceSpecifier::Topic(&topic), "min.cleanable.dirty.ratio")
            .await
            .as_deref(),
        Some("0.1")
    );
    // The environment promises that nothing creates topics behind the operator's back.
    assert_eq!(
        config_value(&admin, ResourceSpecifier::Broker(1), "auto.create.topics.enable")
            .await
            .as_deref(),
        Some("false")
    );

    admin.delete_topics(&[&topic], &options()).await.expect("delete_topics");
}
