//! What an MQTT PUBLISH becomes in Kafka (DESIGN section 2), seen with a Kafka consumer.

mod support;

use std::time::Duration;

use bytes::Bytes;
use mqtt_kafka_proxy::config::{Route, RouteCondition, RouteWith, TopicCondition};
use mqtt_kafka_proxy::kafka::partitioner::partition_for;
use rdkafka::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
use support::{Client, KafkaReader, PARTITIONS, TestProxy, header, headers};

#[tokio::test]
async fn a_qos1_publish_becomes_a_record_with_key_value_timestamp_headers_and_murmur2_partition() {
    let proxy = TestProxy::start().await;
    let reader = KafkaReader::new(proxy.bootstrap(), &proxy.config.topics.messages);
    let mut client = Client::connect(&proxy, "sensor-7").await;
    let properties = PublishProperties {
        content_type: Some("application/json".into()),
        payload_format_indicator: Some(1),
        response_topic: Some("replies/sensor-7".into()),
        correlation_data: Some(Bytes::from_static(&[1, 2, 255])),
        message_expiry_interval: Some(600),
        user_properties: vec![
            ("site".into(), "north".into()),
            ("unit".into(), "C".into()),
            ("site".into(), "b2".into()),
        ],
        ..Default::default()
    };
    let before = mqtt_kafka_proxy::broker::message::now_ms();
    client
        .client
        .publish_with_properties("plant/1/temp", QoS::AtLeastOnce, false, "{\"t\":21.5}", properties)
        .await
        .expect("publish");
    loop {
        if let Packet::PubAck(ack) = client.next().await.expect("connected") {
            assert_eq!(ack.reason, rumqttc::v5::mqttbytes::v5::PubAckReason::Success);
            break;
        }
    }
    let record = reader.next_with_key("plant/1/temp").await;
    assert_eq!(record.payload(), Some(&b"{\"t\":21.5}"[..]));
    assert_eq!(record.partition(), partition_for(b"plant/1/temp", PARTITIONS));
    let ts = record.timestamp().to_millis().expect("CreateTime");
    assert!(
        ts >= before - 1000 && ts <= before + 10_000,
        "timestamp {ts} is when the proxy received it"
    );
    assert_eq!(
        headers(&record),
        [
            ("mqtt-qos", "1"),
            ("mqtt-client-id", "sensor-7"),
            ("mqtt-expiry", "600"),
            ("mqtt-content-type", "application/json"),
            ("mqtt-payload-format", "1"),
            ("mqtt-response-topic", "replies/sensor-7"),
            ("mqtt-correlation-data", "\u{1}\u{2}\u{fffd}"),
            ("site", "north"),
            ("unit", "C"),
            ("site", "b2"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
    );
}

#[tokio::test]
async fn the_puback_comes_after_the_record_is_in_kafka() {
    // A broker of its own, paused below: meanwhile nothing can be stored, so a PUBACK or
    // PUBREC in that time would acknowledge what is not in Kafka.
    let node = mqtt_kafka_testenv::kafka_node::KafkaNode::start()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let bootstrap = node.bootstrap();
    let proxy = TestProxy::start_with(|c| c.kafka.bootstrap_servers = bootstrap.clone()).await;
    let mut client = Client::connect(&proxy, "acker").await;
    let topic = proxy.config.topics.messages.clone();
    let partition = partition_for(b"ack/check", PARTITIONS);
    let watermark = || {
        let (bootstrap, topic) = (bootstrap.clone(), topic.clone());
        async move {
            tokio::task::spawn_blocking(move || {
                let consumer: BaseConsumer = rdkafka::ClientConfig::new()
                    .set("bootstrap.servers", &bootstrap)
                    .create()
                    .expect("consumer");
                consumer
                    .fetch_watermarks(&topic, partition, Duration::from_secs(10))
                    .expect("watermarks")
                    .1
            })
            .await
            .expect("watermarks task")
        }
    };
    let high_before = watermark().await;
    node.pause().expect("pause");
    for qos in [QoS::AtLeastOnce, QoS::ExactlyOnce] {
        client
            .client
            .publish("ack/check", qos, false, "x")
            .await
            .expect("publish");
    }
    let early = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            match client.next().await.expect("connected") {
                Packet::PubAck(ack) => return format!("{ack:?}"),
                Packet::PubRec(rec) => return format!("{rec:?}"),
                _ => {}
            }
        }
    })
    .await;
    assert!(early.is_err(), "acknowledged while Kafka could not store: {early:?}");
    // Kafka is back: the acknowledgements follow, each for a record Kafka holds by then.
    node.resume().expect("resume");
    let mut acked = 0;
    while acked < 2 {
        match client.next().await.expect("connected") {
            Packet::PubAck(ack) => {
                assert_eq!(ack.reason, rumqttc::v5::mqttbytes::v5::PubAckReason::Success);
                acked += 1;
            }
            Packet::PubRec(rec) => {
                assert_eq!(rec.reason, rumqttc::v5::mqttbytes::v5::PubRecReason::Success);
                acked += 1;
            }
            _ => continue,
        }
        assert!(
            watermark().await >= high_before + acked,
            "acknowledged before it was stored"
        );
    }
    assert_eq!(watermark().await, high_before + 2);
}

#[tokio::test]
async fn qos0_and_qos2_records_carry_their_qos_and_an_empty_payload_is_an_empty_value() {
    let proxy = TestProxy::start().await;
    let reader = KafkaReader::new(proxy.bootstrap(), &proxy.config.topics.messages);
    let client = Client::connect(&proxy, "qos-mix").await;
    client
        .client
        .publish("q/zero", QoS::AtMostOnce, false, "")
        .await
        .expect("publish");
    client
        .client
        .publish("q/two", QoS::ExactlyOnce, false, "2")
        .await
        .expect("publish");
    let zero = reader.next_with_key("q/zero").await;
    assert_eq!(header(&zero, "mqtt-qos").as_deref(), Some("0"));
    assert_eq!(
        zero.payload(),
        Some(&b""[..]),
        "empty payload is an empty value, not null"
    );
    let two = KafkaReader::new(proxy.bootstrap(), &proxy.config.topics.messages)
        .next_with_key("q/two")
        .await;
    assert_eq!(header(&two, "mqtt-qos").as_deref(), Some("2"));
    assert_eq!(header(&two, "mqtt-retain"), None);
}

#[tokio::test]
async fn a_clients_identity_pattern_picks_the_partition() {
    let proxy = TestProxy::start_with(|c| c.clients = vec!["place/{identity}/#".into()]).await;
    let reader = KafkaReader::new(proxy.bootstrap(), &proxy.config.topics.messages);
    let client = Client::connect(&proxy, "placer").await;
    for device in ["a", "b", "c", "d"] {
        let topic = format!("place/site-42/device/{device}");
        client
            .client
            .publish(topic, QoS::AtLeastOnce, false, "x")
            .await
            .expect("publish");
    }
    let expected = partition_for(b"site-42", PARTITIONS);
    for device in ["a", "b", "c", "d"] {
        let record = reader.next_with_key(&format!("place/site-42/device/{device}")).await;
        assert_eq!(
            record.partition(),
            expected,
            "partitioned by the identity, not the topic"
        );
    }
}

#[tokio::test]
async fn a_route_sends_matching_topics_to_its_own_messages_topic() {
    let devices_topic = mqtt_kafka_testenv::unique_name("t-devices");
    let routed = devices_topic.clone();
    let proxy = TestProxy::start_with(move |c| {
        c.routes = vec![Route {
            when: vec![
                RouteCondition::Publish(vec![TopicCondition {
                    topic: "devices/#".into(),
                }]),
                RouteCondition::Subscribe(vec![TopicCondition {
                    topic: "devices/#".into(),
                }]),
            ],
            with: Some(RouteWith { messages: routed }),
            guarded: Default::default(),
        }];
    })
    .await;
    let routed_reader = KafkaReader::new(proxy.bootstrap(), &devices_topic);
    let default_reader = KafkaReader::new(proxy.bootstrap(), &proxy.config.topics.messages);
    let mut subscriber = Client::connect(&proxy, "route-sub").await;
    subscriber
        .client
        .subscribe("devices/#", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    subscriber.suback().await;
    let client = Client::connect(&proxy, "router").await;
    client
        .client
        .publish("devices/1/state", QoS::AtLeastOnce, false, "on")
        .await
        .expect("publish");
    client
        .client
        .publish("other/1", QoS::AtLeastOnce, false, "x")
        .await
        .expect("publish");
    assert_eq!(routed_reader.next().await.key(), Some(&b"devices/1/state"[..]));
    assert_eq!(
        default_reader.next().await.key(),
        Some(&b"other/1"[..]),
        "unrouted topics use topics.messages"
    );
    let delivered = subscriber.next_publish().await;
    assert_eq!(
        &delivered.topic[..],
        b"devices/1/state",
        "subscribers of the route read its topic"
    );
}

#[tokio::test]
async fn a_retained_publish_is_also_written_to_the_retained_topic_and_an_empty_one_is_a_tombstone() {
    let proxy = TestProxy::start().await;
    let retained = KafkaReader::new(proxy.bootstrap(), &proxy.config.topics.retained);
    let messages = KafkaReader::new(proxy.bootstrap(), &proxy.config.topics.messages);
    let client = Client::connect(&proxy, "retainer").await;
    client
        .client
        .publish("lamp/1", QoS::AtLeastOnce, true, "on")
        .await
        .expect("publish");
    client
        .client
        .publish("lamp/1", QoS::AtLeastOnce, true, "")
        .await
        .expect("publish");
    let set = retained.next().await;
    assert_eq!((set.key(), set.payload()), (Some(&b"lamp/1"[..]), Some(&b"on"[..])));
    assert_eq!(header(&set, "mqtt-retain").as_deref(), Some("1"));
    let tombstone = retained.next().await;
    assert_eq!(
        (tombstone.key(), tombstone.payload()),
        (Some(&b"lamp/1"[..]), None),
        "tombstone = null value"
    );
    let first = messages.next().await;
    assert_eq!(
        first.payload(),
        Some(&b"on"[..]),
        "the messages topic gets the record too"
    );
    assert_eq!(messages.next().await.payload(), Some(&b""[..]));
}
