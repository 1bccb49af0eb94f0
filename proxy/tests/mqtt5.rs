//! MQTT 5 features and limits end to end: properties through Kafka, aliases, limits and
//! the reason codes of every refusal, keep-alive, takeover, wills, health endpoints.

mod support;

use std::time::Duration;

use bytes::Bytes;
use mqtt_kafka_proxy::config::{Route, RouteCondition, RouteWith, TopicCondition};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{LastWill, Packet, PublishProperties};
use support::{Client, RawPeer, TestProxy};

#[tokio::test]
async fn properties_round_trip_mqtt_to_kafka_to_mqtt_with_expiry_counting_down() {
    let proxy = TestProxy::start().await;
    let mut sub = Client::connect(&proxy, "props-sub").await;
    sub.client
        .subscribe("req/#", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    sub.suback().await;
    let publisher = Client::connect(&proxy, "props-pub").await;
    let sent = PublishProperties {
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(120),
        content_type: Some("text/plain".into()),
        response_topic: Some("resp/props-pub".into()),
        correlation_data: Some(Bytes::from_static(b"\x00corr\xff")),
        user_properties: vec![("k".into(), "v1".into()), ("k".into(), "v2".into())],
        ..Default::default()
    };
    publisher
        .client
        .publish_with_properties("req/1", QoS::AtLeastOnce, false, "hello", sent.clone())
        .await
        .expect("publish");
    let p = sub.next_publish().await;
    let got = p.properties.expect("properties");
    assert_eq!(got.payload_format_indicator, Some(1));
    assert_eq!(got.content_type, sent.content_type);
    assert_eq!(got.response_topic, sent.response_topic);
    assert_eq!(got.correlation_data, sent.correlation_data);
    assert_eq!(got.user_properties, sent.user_properties);
    let expiry = got.message_expiry_interval.expect("expiry");
    assert!(
        (118..=120).contains(&expiry),
        "remaining expiry in seconds, got {expiry}"
    );
}

#[tokio::test]
async fn an_expired_message_is_not_delivered() {
    let proxy = TestProxy::start().await;
    let publisher = Client::connect(&proxy, "exp-pub").await;
    let props = PublishProperties {
        message_expiry_interval: Some(1),
        ..Default::default()
    };
    publisher
        .client
        .publish_with_properties("exp/r", QoS::AtLeastOnce, true, "soon gone", props)
        .await
        .expect("publish");
    let props = PublishProperties {
        message_expiry_interval: Some(600),
        ..Default::default()
    };
    publisher
        .client
        .publish_with_properties("exp/s", QoS::AtLeastOnce, true, "stays", props)
        .await
        .expect("publish");
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let mut sub = Client::connect(&proxy, "exp-sub").await;
    sub.client
        .subscribe("exp/#", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    sub.suback().await;
    let p = sub.next_publish().await;
    assert_eq!(
        &p.topic[..],
        b"exp/s",
        "the retained message whose expiry ran out is not sent"
    );
    sub.expect_no_publish(Duration::from_millis(500)).await;
}

#[tokio::test]
async fn connack_advertises_limits_and_assigns_a_client_identifier() {
    let proxy = TestProxy::start_with(|c| {
        c.mqtt.receive_maximum = 10;
        c.mqtt.topic_alias_maximum = 4;
        c.mqtt.maximum_packet_size = 2048;
        c.mqtt.max_keep_alive = 20;
        c.publish.qos_max = mqtt_kafka_proxy::config::Qos::AtLeastOnce;
    })
    .await;
    let client = Client::connect_with(&proxy, "", |o| {
        o.set_keep_alive(Duration::from_secs(100));
    })
    .await;
    let props = client.connack.properties.clone().expect("CONNACK properties");
    assert_eq!(props.receive_max, Some(10));
    assert_eq!(props.topic_alias_max, Some(4));
    assert_eq!(props.max_packet_size, Some(2048));
    assert_eq!(props.max_qos, Some(1));
    assert_eq!(
        props.server_keep_alive,
        Some(20),
        "keep-alive capped by mqtt.maxKeepAlive"
    );
    let assigned = props.assigned_client_identifier.expect("assigned id");
    assert!(assigned.starts_with("mqtt-kafka-"), "{assigned}");
}

#[tokio::test]
async fn topic_aliases_work_in_both_directions() {
    let proxy = TestProxy::start().await;
    let mut sub = Client::connect_with(&proxy, "alias-sub", |o| {
        o.set_topic_alias_max(Some(5));
    })
    .await;
    sub.client.subscribe("al/#", QoS::AtMostOnce).await.expect("subscribe");
    sub.suback().await;
    // Inbound: the first PUBLISH sets alias 1, the second uses it with an empty topic.
    let mut peer = RawPeer::connect_v5(&proxy, "alias-pub").await;
    let publish = |topic: &[u8], payload: &[u8]| {
        let mut p = vec![0x30, 0, 0, u8::try_from(topic.len()).expect("short")];
        p.extend_from_slice(topic);
        p.extend_from_slice(&[3, 0x23, 0, 1]);
        p.extend_from_slice(payload);
        p[1] = u8::try_from(p.len() - 2).expect("short");
        p
    };
    peer.send(&publish(b"al/x", b"first")).await;
    peer.send(&publish(b"", b"second")).await;
    let first = sub.next_publish().await;
    let second = sub.next_publish().await;
    assert_eq!(&first.payload[..], b"first");
    assert_eq!(&second.payload[..], b"second");
    // Outbound: the server set alias 1 with the first delivery and sent the second with an
    // empty topic and the alias.
    assert_eq!(&first.topic[..], b"al/x");
    assert_eq!(first.properties.as_ref().and_then(|p| p.topic_alias), Some(1));
    assert_eq!(second.properties.as_ref().and_then(|p| p.topic_alias), Some(1));
    assert!(second.topic.is_empty());
}

#[tokio::test]
async fn limits_are_enforced_with_the_reason_codes_of_the_spec_and_others_keep_being_served() {
    let proxy = TestProxy::start_with(|c| {
        c.mqtt.maximum_packet_size = 128;
        c.mqtt.topic_alias_maximum = 2;
        c.publish.qos_max = mqtt_kafka_proxy::config::Qos::AtLeastOnce;
    })
    .await;
    let mut bystander = Client::connect(&proxy, "bystander").await;
    bystander
        .client
        .subscribe("still/#", QoS::AtMostOnce)
        .await
        .expect("subscribe");
    bystander.suback().await;

    // (what to send after CONNECT, DISCONNECT reason code expected)
    let oversize = {
        let mut p = vec![0x30, 0xC8, 0x01, 0, 1, b'a', 0];
        p.extend(std::iter::repeat_n(b'x', 200 - 4));
        p
    };
    let cases: Vec<(&str, Vec<u8>, u8)> = vec![
        ("packet too large", oversize, 0x95),
        ("malformed: QoS 3", vec![0x36, 0x04, 0, 1, b'a', 0], 0x81),
        ("wildcard in a topic name", vec![0x30, 0x05, 0, 2, b'a', b'#', 0], 0x90),
        (
            "QoS 2 above publish.qosMax",
            vec![0x34, 0x07, 0, 1, b'a', 0, 1, 0, b'x'],
            0x9B,
        ),
        (
            "topic alias above the maximum",
            vec![0x30, 0x08, 0, 1, b'a', 3, 0x23, 0, 9, b'x'],
            0x94,
        ),
        ("second CONNECT", RawPeer::v5_connect("again"), 0x82),
    ];
    for (what, bytes, reason) in cases {
        let mut peer = RawPeer::connect_v5(&proxy, &format!("bad-{reason:x}")).await;
        peer.send(&bytes).await;
        let disconnect = peer
            .read_packet()
            .await
            .unwrap_or_else(|| panic!("{what}: no DISCONNECT"));
        assert_eq!(disconnect[0], 0xE0, "{what}: {disconnect:02x?}");
        assert_eq!(disconnect[2], reason, "{what}: reason code");
        assert!(
            peer.read_until_closed().await.is_empty(),
            "{what}: then the connection closes"
        );
    }

    let publisher = Client::connect(&proxy, "still-pub").await;
    publisher
        .client
        .publish("still/ok", QoS::AtMostOnce, false, "x")
        .await
        .expect("publish");
    assert_eq!(&bystander.next_publish().await.topic[..], b"still/ok");
}

#[tokio::test]
async fn exceeding_receive_maximum_is_disconnect_0x93() {
    let proxy = TestProxy::start_with(|c| c.mqtt.receive_maximum = 2).await;
    let mut peer = RawPeer::connect_v5(&proxy, "flood").await;
    // Three QoS 2 PUBLISHes and no PUBREL: the third exceeds the window of 2.
    for id in 1..=3u8 {
        peer.send(&[0x34, 0x07, 0, 1, b'f', 0, id, 0, b'x']).await;
    }
    let mut packets = Vec::new();
    while let Some(p) = peer.read_packet().await {
        packets.push(p);
    }
    let last = packets.last().expect("packets");
    assert_eq!((last[0], last[2]), (0xE0, 0x93), "{packets:02x?}");
}

#[tokio::test]
async fn a_qos2_retransmission_is_not_produced_twice() {
    let proxy = TestProxy::start().await;
    let reader = support::KafkaReader::new(proxy.bootstrap(), &proxy.config.topics.messages);
    let mut peer = RawPeer::connect_v5(&proxy, "exactly-once").await;
    let publish = [0x34, 0x08, 0, 2, b'e', b'o', 0, 7, 0, b'1'];
    // (packet type, packet id) of an acknowledgement, whatever optional fields follow.
    let kind = |p: Vec<u8>| (p[0], p[2], p[3]);
    peer.send(&publish).await;
    assert_eq!(kind(peer.read_packet().await.expect("PUBREC")), (0x50, 0, 7));
    let mut dup = publish;
    dup[0] |= 0x08;
    peer.send(&dup).await;
    assert_eq!(kind(peer.read_packet().await.expect("PUBREC again")), (0x50, 0, 7));
    peer.send(&[0x62, 0x02, 0, 7]).await;
    assert_eq!(kind(peer.read_packet().await.expect("PUBCOMP")), (0x70, 0, 7));
    // A second id proves the reader has caught up past any duplicate.
    peer.send(&[0x34, 0x08, 0, 2, b'e', b'o', 0, 8, 0, b'2']).await;
    let payload = |r: rdkafka::message::OwnedMessage| rdkafka::Message::payload(&r).unwrap_or_default().to_vec();
    assert_eq!(payload(reader.next().await), b"1");
    assert_eq!(
        payload(reader.next().await),
        b"2",
        "the retransmission of id 7 was not produced"
    );
}

#[tokio::test]
async fn a_silent_client_is_disconnected_after_one_and_a_half_keep_alives() {
    let proxy = TestProxy::start().await;
    let mut peer = RawPeer::connect(&proxy).await;
    // CONNECT with keep-alive 1 s, then silence.
    let mut connect = RawPeer::v5_connect("sleepy");
    connect[10] = 0;
    connect[11] = 1;
    let started = std::time::Instant::now();
    peer.send(&connect).await;
    assert_eq!(peer.read_packet().await.expect("CONNACK")[3], 0);
    let disconnect = peer.read_packet().await.expect("DISCONNECT");
    let waited = started.elapsed();
    assert_eq!((disconnect[0], disconnect[2]), (0xE0, 0x8D), "Keep Alive timeout");
    assert!(
        waited >= Duration::from_millis(1400) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
}

#[tokio::test]
async fn a_second_connection_with_the_same_client_id_takes_over() {
    let proxy = TestProxy::start().await;
    let mut first = Client::connect(&proxy, "twin").await;
    let _second = Client::connect(&proxy, "twin").await;
    loop {
        match first.next().await {
            Ok(Packet::Disconnect(d)) => {
                assert_eq!(
                    d.reason_code,
                    rumqttc::v5::mqttbytes::v5::DisconnectReasonCode::SessionTakenOver
                );
                break;
            }
            Ok(_) => {}
            // rumqttc reports a server DISCONNECT as the error that ends its event loop.
            Err(e) if e.contains("SessionTakenOver") => break,
            Err(e) => panic!("closed without DISCONNECT 0x8E: {e}"),
        }
    }
}

#[tokio::test]
async fn a_will_is_published_on_abnormal_disconnect_but_not_on_a_normal_one() {
    let proxy = TestProxy::start().await;
    let mut watcher = Client::connect(&proxy, "will-watch").await;
    watcher
        .client
        .subscribe("wills/#", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    watcher.suback().await;
    let will = |topic: &str| LastWill::new(topic, "gone", QoS::AtLeastOnce, false, None);
    let polite = Client::connect_with(&proxy, "polite", |o| {
        o.set_last_will(will("wills/polite"));
    })
    .await;
    polite.client.disconnect().await.expect("disconnect");
    // The abnormal one: a raw connection with a will that is just dropped.
    let mut peer = RawPeer::connect(&proxy).await;
    // CONNECT v5, flags: will (0x04) + clean start (0x02), will QoS 0, will properties empty.
    let mut connect = vec![0x10, 0, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x06, 0, 30, 0, 0, 4];
    connect.extend_from_slice(b"rude");
    connect.push(0);
    connect.extend_from_slice(&[0, 10]);
    connect.extend_from_slice(b"wills/rude");
    connect.extend_from_slice(&[0, 4]);
    connect.extend_from_slice(b"gone");
    connect[1] = u8::try_from(connect.len() - 2).expect("short");
    peer.send(&connect).await;
    assert_eq!(peer.read_packet().await.expect("CONNACK")[3], 0);
    drop(peer);
    let p = watcher.next_publish().await;
    assert_eq!((&p.topic[..], &p.payload[..]), (&b"wills/rude"[..], &b"gone"[..]));
    watcher.expect_no_publish(Duration::from_millis(700)).await;
}

#[tokio::test]
async fn health_readiness_and_metrics_are_served() {
    let proxy = TestProxy::start().await;
    assert_eq!(proxy.admin_get("/healthz").await.0, 200);
    assert_eq!(proxy.admin_get("/readyz").await, (200, "ready\n".into()));
    let client = Client::connect(&proxy, "metered").await;
    client
        .client
        .publish("m/1", QoS::AtLeastOnce, false, "x")
        .await
        .expect("publish");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(proxy.metric("mqtt_kafka_connections").await, Some(1.0));
    assert_eq!(proxy.metric("mqtt_kafka_published_total{qos=\"1\"}").await, Some(1.0));
    // The record's trip to Kafka is timed: one QoS 1 acknowledgement observed.
    assert_eq!(
        proxy
            .metric("mqtt_kafka_kafka_produce_seconds_count{kind=\"qos1\"}")
            .await,
        Some(1.0)
    );
}

/// Idle TCP connections rest (a small state, not a task, issue 9) and wake for what comes:
/// a delivery, the client's next packet, keep-alive running out, a takeover.
/// A wake lost between a connection lying down and a delivery coming would leave the
/// delivery in its queue until the client's next packet (here a PINGREQ after 60 s): every
/// subscriber must get every message of irregular bursts, however they fall between rests.
/// On two worker threads, so that deliveries, wakes and lying down race as in production.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resting_subscribers_get_every_message_of_irregular_bursts() {
    const SUBSCRIBERS: usize = 16;
    const MESSAGES: usize = 400;
    let proxy = TestProxy::start().await;
    let mut subscribers = Vec::new();
    for i in 0..SUBSCRIBERS {
        let mut subscriber = Client::connect_with(&proxy, &format!("burst-sub-{i}"), |options| {
            options.set_keep_alive(Duration::from_secs(60));
        })
        .await;
        let qos = if i % 2 == 0 { QoS::AtLeastOnce } else { QoS::AtMostOnce };
        subscriber.client.subscribe("burst/#", qos).await.expect("subscribe");
        subscriber.suback().await;
        subscribers.push(subscriber);
    }
    let mut publisher = Client::connect(&proxy, "burst-pub").await;
    // Bursts of 1 to 16 messages, 0 to 63 ms apart (a fixed pseudo-random sequence).
    let mut seed: u32 = 0x2545_f491;
    let mut next = move |bound: u32| {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        seed % bound
    };
    let mut sent = 0;
    while sent < MESSAGES {
        let burst = (next(16) as usize + 1).min(MESSAGES - sent);
        publisher
            .publish_acked(sent..sent + burst, |_| "burst/t".into(), 0)
            .await;
        sent += burst;
        tokio::time::sleep(Duration::from_millis(u64::from(next(64)))).await;
    }
    // Every message reached every subscriber within 10 s of the last PUBACK: far less than
    // the 60 s after which a stuck subscriber's PINGREQ would wake it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    for (i, subscriber) in subscribers.iter_mut().enumerate() {
        let mut got = vec![false; MESSAGES];
        let mut count = 0;
        while count < MESSAGES {
            let publish = tokio::time::timeout_at(deadline, subscriber.next_publish())
                .await
                .unwrap_or_else(|_| {
                    let missing: Vec<usize> = (0..MESSAGES).filter(|n| !got[*n]).collect();
                    panic!("subscriber {i} is missing {} messages: {missing:?}", missing.len())
                });
            let n = support::message_number(&publish.payload);
            if !got[n] {
                got[n] = true;
                count += 1;
            }
        }
    }
}

#[tokio::test]
async fn idle_connections_rest_and_wake_for_deliveries_packets_keep_alive_and_takeover() {
    let proxy = TestProxy::start().await;
    let mut subscriber = Client::connect(&proxy, "rest-sub").await;
    subscriber
        .client
        .subscribe("rest/#", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    subscriber.suback().await;
    let publisher = Client::connect(&proxy, "rest-pub").await;
    let resting = async || {
        tokio::time::sleep(Duration::from_millis(300)).await;
        proxy.metric("mqtt_kafka_connections_resting").await
    };
    assert_eq!(resting().await, Some(2.0), "both idle connections rest");
    // The publisher wakes for its PUBLISH, the subscriber for the delivery; both rest again.
    publisher
        .client
        .publish("rest/a", QoS::AtLeastOnce, false, "one")
        .await
        .expect("publish");
    assert_eq!(&subscriber.next_publish().await.payload[..], b"one");
    assert_eq!(resting().await, Some(2.0));
    publisher
        .client
        .publish("rest/a", QoS::AtLeastOnce, false, "two")
        .await
        .expect("publish");
    assert_eq!(&subscriber.next_publish().await.payload[..], b"two");

    // A resting 3.1.1 connection answers PINGREQ, then keep-alive (1 s, so 1.5 s of
    // silence) ends it although no task of its own waits.
    let mut quiet = RawPeer::connect(&proxy).await;
    quiet.send(b"\x10\x11\x00\x04MQTT\x04\x02\x00\x01\x00\x05quiet").await;
    assert_eq!(quiet.read_packet().await, Some(vec![0x20, 0x02, 0x00, 0x00]), "CONNACK");
    assert_eq!(resting().await, Some(3.0));
    quiet.send(b"\xc0\x00").await;
    assert_eq!(quiet.read_packet().await, Some(vec![0xd0, 0x00]), "PINGRESP");
    let started = tokio::time::Instant::now();
    assert_eq!(quiet.read_packet().await, None, "closed by keep-alive");
    assert!(
        started.elapsed() >= Duration::from_millis(1000),
        "{:?}",
        started.elapsed()
    );

    // A newer connection of the resting subscriber's client id takes its session over:
    // the resting one is told (DISCONNECT 0x8E) and ends.
    let mut newer = RawPeer::connect_v5(&proxy, "rest-sub").await;
    let told = loop {
        match subscriber.next().await {
            Ok(Packet::Disconnect(disconnect)) => break format!("{:?}", disconnect.reason_code),
            Ok(_) => {}
            // rumqttc ends with an error that names the DISCONNECT's reason code.
            Err(error) => break error,
        }
    };
    assert!(told.contains("SessionTakenOver"), "{told}");
    assert_eq!(resting().await, Some(2.0), "the publisher and the newer connection");
    assert_eq!(proxy.metric("mqtt_kafka_connections").await, Some(2.0));
    newer.send(b"\xe0\x00").await;
}

#[tokio::test]
async fn outbound_deliveries_respect_the_clients_receive_maximum() {
    let proxy = TestProxy::start().await;
    let mut slow = Client::connect_with(&proxy, "slow", |o| {
        o.set_receive_maximum(Some(2));
        o.set_manual_acks(true);
    })
    .await;
    slow.client
        .subscribe("win/#", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    slow.suback().await;
    let publisher = Client::connect(&proxy, "win-pub").await;
    // One topic, so one Kafka partition and a defined order.
    for i in 0..5 {
        publisher
            .client
            .publish("win/t", QoS::AtLeastOnce, false, format!("{i}"))
            .await
            .expect("publish");
    }
    let first = slow.next_publish().await;
    let second = slow.next_publish().await;
    slow.expect_no_publish(Duration::from_millis(800)).await;
    // Each PUBACK opens the window for one more, in order.
    slow.client.ack(&first).await.expect("ack");
    assert_eq!(&slow.next_publish().await.payload[..], b"2");
    slow.expect_no_publish(Duration::from_millis(500)).await;
    slow.client.ack(&second).await.expect("ack");
    assert_eq!(&slow.next_publish().await.payload[..], b"3");
}

#[tokio::test]
async fn a_delivery_larger_than_the_clients_maximum_packet_size_is_skipped_not_fatal() {
    let proxy = TestProxy::start().await;
    let mut small = Client::connect_with(&proxy, "small-max", |o| {
        o.set_max_packet_size(Some(128));
    })
    .await;
    small
        .client
        .subscribe("size/#", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    small.suback().await;
    let publisher = Client::connect(&proxy, "size-pub").await;
    publisher
        .client
        .publish("size/t", QoS::AtLeastOnce, false, vec![b'x'; 500])
        .await
        .expect("publish");
    publisher
        .client
        .publish("size/t", QoS::AtLeastOnce, false, "fits")
        .await
        .expect("publish");
    assert_eq!(&small.next_publish().await.payload[..], b"fits");
    let dropped = proxy.metric("mqtt_kafka_dropped_total{reason=\"too_large\"}").await;
    assert_eq!(dropped, Some(1.0));
}

#[tokio::test]
async fn an_invalid_utf8_payload_marked_utf8_gets_puback_0x99_and_is_not_stored() {
    let proxy = TestProxy::start().await;
    let mut peer = RawPeer::connect_v5(&proxy, "bad-utf8").await;
    // PUBLISH QoS 1, topic "u", packet id 5, Payload Format Indicator = 1, payload 0xFF.
    peer.send(&[0x32, 0x09, 0, 1, b'u', 0, 5, 2, 0x01, 0x01, 0xFF]).await;
    let puback = peer.read_packet().await.expect("PUBACK");
    assert_eq!(
        (puback[0], puback[2], puback[3], puback[4]),
        (0x40, 0, 5, 0x99),
        "{puback:02x?}"
    );
    assert_eq!(proxy.metric("mqtt_kafka_published_total{qos=\"1\"}").await, Some(1.0));
    // Then a valid PUBLISH on the same topic, so in the same partition, after it: Kafka
    // holds that one and nothing before it.
    peer.send(&[0x32, 0x09, 0, 1, b'u', 0, 6, 2, 0x01, 0x01, b'k']).await;
    let puback = peer.read_packet().await.expect("PUBACK");
    assert_eq!((puback[0], puback[3]), (0x40, 6), "{puback:02x?}");
    assert!(puback.len() < 5 || puback[4] == 0, "stored: {puback:02x?}");
    let reader = support::KafkaReader::new(proxy.bootstrap(), &proxy.config.topics.messages);
    let first = reader.next_with_key("u").await;
    assert_eq!(
        rdkafka::Message::payload(&first),
        Some(&b"k"[..]),
        "the invalid payload reached Kafka"
    );
}

#[tokio::test]
async fn one_fanout_consumer_per_messages_topic_however_many_subscribers() {
    // Two messages topics: the default one, and a route's for `many/odd/#`.
    let odd_topic = mqtt_kafka_testenv::unique_name("t-odd");
    let routed = odd_topic.clone();
    let proxy = TestProxy::start_with(move |c| {
        let filter = || {
            vec![TopicCondition {
                topic: "many/odd/#".into(),
            }]
        };
        c.routes = vec![Route {
            when: vec![RouteCondition::Publish(filter()), RouteCondition::Subscribe(filter())],
            with: Some(RouteWith { messages: routed }),
            guarded: Default::default(),
        }];
    })
    .await;
    let filter = |i: usize| {
        if i % 2 == 1 {
            format!("many/odd/{i}")
        } else {
            format!("many/{i}")
        }
    };
    let mut clients = Vec::new();
    for i in 0..20 {
        let mut c = Client::connect(&proxy, &format!("many-{i}")).await;
        c.client
            .subscribe(filter(i), QoS::AtLeastOnce)
            .await
            .expect("subscribe");
        c.suback().await;
        clients.push(c);
    }
    // Every subscriber is served, through both topics...
    let publisher = Client::connect(&proxy, "many-pub").await;
    for i in 0..20 {
        publisher
            .client
            .publish(filter(i), QoS::AtLeastOnce, false, format!("to {i}"))
            .await
            .expect("publish");
    }
    for (i, c) in clients.iter_mut().enumerate() {
        assert_eq!(c.next_publish().await.payload, format!("to {i}").into_bytes());
    }
    // ...by the fan-out consumers that exist now: one per messages topic.
    assert_eq!(proxy.metric("mqtt_kafka_fanout_consumers").await, Some(2.0));
    assert_eq!(proxy.metric("mqtt_kafka_connections").await, Some(21.0));
    // The gauge follows what runs: with the proxy gone, its consumers are gone.
    let gauge = proxy.server.hub.metrics().fanout_consumers.clone();
    drop(clients);
    drop(proxy);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while gauge.get() != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "fan-out consumers still counted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
