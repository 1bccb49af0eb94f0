//! Subscriptions: what MQTT subscribers receive from Kafka, with every MQTT 5 option.

mod support;

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Filter, RetainForwardRule, SubscribeProperties};
use support::{Client, RawPeer, TestProxy};

const QUIET: Duration = Duration::from_millis(700);

async fn subscribe(client: &mut Client, filter: &str, qos: QoS) {
    client.client.subscribe(filter, qos).await.expect("subscribe");
    client.suback().await;
}

#[tokio::test]
async fn wildcards_match_by_level_and_never_match_dollar_topics() {
    let proxy = TestProxy::start().await;
    let mut sub = Client::connect(&proxy, "wild").await;
    subscribe(&mut sub, "home/+/temp", QoS::AtMostOnce).await;
    subscribe(&mut sub, "#", QoS::AtMostOnce).await;
    let publisher = Client::connect(&proxy, "wild-pub").await;
    publisher
        .client
        .publish("$SYS/info", QoS::AtLeastOnce, false, "sys")
        .await
        .expect("publish");
    publisher
        .client
        .publish("home/kitchen/temp", QoS::AtLeastOnce, false, "21")
        .await
        .expect("publish");
    let p = sub.next_publish().await;
    assert_eq!(&p.topic[..], b"home/kitchen/temp", "'#' does not match $SYS/info");
    assert_eq!(
        p.properties.map(|p| p.subscription_identifiers).unwrap_or_default(),
        Vec::<usize>::new()
    );
    sub.expect_no_publish(QUIET).await;
}

#[tokio::test]
async fn overlapping_subscriptions_give_one_delivery_with_the_highest_qos_and_every_identifier() {
    let proxy = TestProxy::start().await;
    let mut sub = Client::connect(&proxy, "overlap").await;
    let with_id = |id| SubscribeProperties {
        id: Some(id),
        user_properties: Vec::new(),
    };
    sub.client
        .subscribe_with_properties("a/+", QoS::AtMostOnce, with_id(7))
        .await
        .expect("subscribe");
    sub.suback().await;
    sub.client
        .subscribe_with_properties("a/#", QoS::ExactlyOnce, with_id(9))
        .await
        .expect("subscribe");
    sub.suback().await;
    let publisher = Client::connect(&proxy, "overlap-pub").await;
    publisher
        .client
        .publish("a/b", QoS::ExactlyOnce, false, "x")
        .await
        .expect("publish");
    let p = sub.next_publish().await;
    assert_eq!(p.qos, QoS::ExactlyOnce, "min(published 2, max granted 2)");
    let mut ids = p.properties.expect("properties").subscription_identifiers;
    ids.sort_unstable();
    assert_eq!(ids, [7, 9]);
    sub.expect_no_publish(QUIET).await;
}

#[tokio::test]
async fn delivery_qos_is_the_lower_of_published_and_granted() {
    let proxy = TestProxy::start().await;
    let mut sub = Client::connect(&proxy, "downgrade").await;
    subscribe(&mut sub, "d/1", QoS::AtLeastOnce).await;
    let publisher = Client::connect(&proxy, "downgrade-pub").await;
    publisher
        .client
        .publish("d/1", QoS::ExactlyOnce, false, "2")
        .await
        .expect("publish");
    publisher
        .client
        .publish("d/1", QoS::AtMostOnce, false, "0")
        .await
        .expect("publish");
    let first = sub.next_publish().await;
    let second = sub.next_publish().await;
    assert_eq!((first.qos, &first.payload[..]), (QoS::AtLeastOnce, &b"2"[..]));
    assert_eq!((second.qos, &second.payload[..]), (QoS::AtMostOnce, &b"0"[..]));
}

#[tokio::test]
async fn no_local_suppresses_a_clients_own_messages() {
    let proxy = TestProxy::start().await;
    let mut me = Client::connect(&proxy, "echo").await;
    let mut filter = Filter::new("chat/room", QoS::AtLeastOnce);
    filter.nolocal = true;
    me.client.subscribe_many([filter]).await.expect("subscribe");
    me.suback().await;
    me.client
        .publish("chat/room", QoS::AtLeastOnce, false, "mine")
        .await
        .expect("publish");
    let other = Client::connect(&proxy, "echo-other").await;
    other
        .client
        .publish("chat/room", QoS::AtLeastOnce, false, "theirs")
        .await
        .expect("publish");
    assert_eq!(&me.next_publish().await.payload[..], b"theirs");
    me.expect_no_publish(QUIET).await;
}

#[tokio::test]
async fn retained_messages_are_replayed_on_subscribe_per_retain_handling() {
    let proxy = TestProxy::start().await;
    let publisher = Client::connect(&proxy, "ret-pub").await;
    publisher
        .client
        .publish("r/1", QoS::AtLeastOnce, true, "one")
        .await
        .expect("publish");
    publisher
        .client
        .publish("r/2", QoS::AtLeastOnce, true, "two")
        .await
        .expect("publish");
    publisher
        .client
        .publish("r/3", QoS::AtLeastOnce, true, "three")
        .await
        .expect("publish");
    publisher
        .client
        .publish("r/3", QoS::AtLeastOnce, true, "")
        .await
        .expect("publish");
    let mut waiter = Client::connect(&proxy, "ret-wait").await;
    subscribe(&mut waiter, "r/2", QoS::AtLeastOnce).await;
    // r/2's replay proves the publisher's retained records are in.
    waiter.next_publish().await;

    let mut sub = Client::connect(&proxy, "ret-sub").await;
    let rule = |rule| {
        let mut f = Filter::new("r/+", QoS::AtLeastOnce);
        f.retain_forward_rule = rule;
        f
    };
    sub.client
        .subscribe_many([rule(RetainForwardRule::OnEverySubscribe)])
        .await
        .expect("subscribe");
    sub.suback().await;
    let mut got = [sub.next_publish().await, sub.next_publish().await];
    got.sort_by(|a, b| a.topic.cmp(&b.topic));
    assert_eq!(
        got.iter()
            .map(|p| (&p.topic[..], &p.payload[..], p.retain))
            .collect::<Vec<_>>(),
        [(&b"r/1"[..], &b"one"[..], true), (&b"r/2"[..], &b"two"[..], true)]
    );
    sub.expect_no_publish(QUIET).await;

    sub.client
        .subscribe_many([rule(RetainForwardRule::OnNewSubscribe)])
        .await
        .expect("subscribe");
    sub.suback().await;
    sub.expect_no_publish(QUIET).await;

    let mut never = Client::connect(&proxy, "ret-never").await;
    never
        .client
        .subscribe_many([rule(RetainForwardRule::Never)])
        .await
        .expect("subscribe");
    never.suback().await;
    never.expect_no_publish(QUIET).await;

    // Live messages carry RETAIN only for Retain As Published subscriptions.
    let mut rap = Client::connect(&proxy, "ret-rap").await;
    let mut f = Filter::new("live/#", QoS::AtLeastOnce);
    f.preserve_retain = true;
    rap.client.subscribe_many([f]).await.expect("subscribe");
    rap.suback().await;
    subscribe(&mut sub, "live/#", QoS::AtLeastOnce).await;
    publisher
        .client
        .publish("live/x", QoS::AtLeastOnce, true, "lr")
        .await
        .expect("publish");
    assert!(rap.next_publish().await.retain, "Retain As Published keeps RETAIN");
    assert!(
        !sub.next_publish().await.retain,
        "otherwise RETAIN is cleared on live delivery"
    );
}

#[tokio::test]
async fn a_new_proxy_serves_retained_messages_published_before_it_started() {
    let first = TestProxy::start().await;
    let publisher = Client::connect(&first, "early").await;
    publisher
        .client
        .publish("status/door", QoS::AtLeastOnce, true, "closed")
        .await
        .expect("publish");
    let mut check = Client::connect(&first, "early-check").await;
    subscribe(&mut check, "status/door", QoS::AtLeastOnce).await;
    check.next_publish().await;
    let config = first.config.clone();
    drop(first);

    let second = TestProxy::start_on(config).await;
    let mut late = Client::connect(&second, "late").await;
    subscribe(&mut late, "status/#", QoS::AtLeastOnce).await;
    let p = late.next_publish().await;
    assert_eq!(
        (&p.topic[..], &p.payload[..], p.retain),
        (&b"status/door"[..], &b"closed"[..], true)
    );
}

#[tokio::test]
async fn a_shared_subscription_gives_each_message_to_one_member() {
    let proxy = TestProxy::start().await;
    let mut a = Client::connect(&proxy, "worker-a").await;
    let mut b = Client::connect(&proxy, "worker-b").await;
    subscribe(&mut a, "$share/workers/jobs/#", QoS::AtLeastOnce).await;
    subscribe(&mut b, "$share/workers/jobs/#", QoS::AtLeastOnce).await;
    let publisher = Client::connect(&proxy, "jobs-pub").await;
    for i in 0..10 {
        publisher
            .client
            .publish(format!("jobs/{i}"), QoS::AtLeastOnce, false, "j")
            .await
            .expect("publish");
    }
    let (mut count_a, mut count_b) = (0, 0);
    for _ in 0..10 {
        tokio::select! {
            _ = a.next_publish() => count_a += 1,
            _ = b.next_publish() => count_b += 1,
        }
    }
    assert_eq!(count_a + count_b, 10);
    assert!(
        count_a > 0 && count_b > 0,
        "both members got work: {count_a} / {count_b}"
    );
    a.expect_no_publish(QUIET).await;
    b.expect_no_publish(QUIET).await;
}

#[tokio::test]
async fn records_from_any_kafka_producer_reach_subscribers_as_qos1_and_null_keys_are_counted() {
    let proxy = TestProxy::start().await;
    let mut sub = Client::connect(&proxy, "from-kafka").await;
    subscribe(&mut sub, "erp/#", QoS::ExactlyOnce).await;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", proxy.bootstrap())
        .create()
        .expect("producer");
    let topic = proxy.config.topics.messages.clone();
    let no_key: FutureRecord<'_, str, str> = FutureRecord::to(&topic).payload("lost");
    producer.send(no_key, Duration::from_secs(10)).await.expect("produce");
    let headers = OwnedHeaders::new().insert(Header {
        key: "source",
        value: Some("sap"),
    });
    let record = FutureRecord::to(&topic)
        .key("erp/order/1")
        .payload("{}")
        .headers(headers);
    producer.send(record, Duration::from_secs(10)).await.expect("produce");

    let p = sub.next_publish().await;
    assert_eq!((&p.topic[..], p.qos), (&b"erp/order/1"[..], QoS::AtLeastOnce));
    assert_eq!(
        p.properties.expect("properties").user_properties,
        [("source".to_owned(), "sap".to_owned())]
    );
    let skipped = proxy
        .metric("mqtt_kafka_records_skipped_total{reason=\"null_key\"}")
        .await;
    assert_eq!(skipped, Some(1.0));
}

#[tokio::test]
async fn invalid_filters_get_a_negative_suback_and_unsubscribe_stops_delivery() {
    let proxy = TestProxy::start().await;
    // rumqttc refuses to send an invalid filter, so this SUBSCRIBE is written by hand:
    // packet id 1, no properties, "ok/#" QoS 1, "bad/#/x" QoS 1.
    let mut peer = RawPeer::connect_v5(&proxy, "bad-filter").await;
    let mut subscribe = vec![0x82, 0, 0, 1, 0, 0, 4];
    subscribe.extend_from_slice(b"ok/#");
    subscribe.extend_from_slice(&[1, 0, 7]);
    subscribe.extend_from_slice(b"bad/#/x");
    subscribe.push(1);
    subscribe[1] = u8::try_from(subscribe.len() - 2).expect("short");
    peer.send(&subscribe).await;
    let suback = peer.read_packet().await.expect("SUBACK");
    assert_eq!(
        suback,
        [0x90, 5, 0, 1, 0, 0x01, 0x8F],
        "granted QoS 1, then 0x8F Topic Filter invalid"
    );

    let mut sub = Client::connect(&proxy, "unsub").await;
    subscribe_to(&mut sub, "ok/#").await;
    sub.client.unsubscribe("ok/#").await.expect("unsubscribe");
    loop {
        if let Ok(rumqttc::v5::mqttbytes::v5::Packet::UnsubAck(_)) = sub.next().await {
            break;
        }
    }
    let publisher = Client::connect(&proxy, "bad-filter-pub").await;
    publisher
        .client
        .publish("ok/1", QoS::AtLeastOnce, false, "x")
        .await
        .expect("publish");
    sub.expect_no_publish(QUIET).await;
}

async fn subscribe_to(client: &mut Client, filter: &str) {
    subscribe(client, filter, QoS::AtLeastOnce).await;
}

#[tokio::test]
async fn a_burst_of_qos0_messages_reaches_a_subscriber_whole_and_in_order() {
    let proxy = TestProxy::start().await;
    let mut sub = Client::connect(&proxy, "burst-sub").await;
    subscribe(&mut sub, "burst/t", QoS::AtMostOnce).await;
    let publisher = Client::connect(&proxy, "burst-pub").await;
    const COUNT: u32 = 5000;
    for i in 0..COUNT {
        publisher
            .client
            .publish("burst/t", QoS::AtMostOnce, false, i.to_be_bytes().to_vec())
            .await
            .expect("publish");
    }
    for expected in 0..COUNT {
        let p = sub.next_publish().await;
        assert_eq!(
            &p.payload[..],
            expected.to_be_bytes(),
            "message {expected} of the burst"
        );
    }
    assert_eq!(
        proxy.metric("mqtt_kafka_dropped_total{reason=\"queue_full\"}").await,
        None
    );
}

#[tokio::test]
async fn partitions_added_to_a_messages_topic_are_read_and_written() {
    use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions};
    use rdkafka::client::DefaultClientContext;
    let proxy = TestProxy::start().await;
    let mut sub = Client::connect(&proxy, "grow-sub").await;
    subscribe(&mut sub, "grow/#", QoS::AtLeastOnce).await;
    // The operator grows messages topics; here the admin API does it behind the proxy's back.
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", proxy.bootstrap())
        .create()
        .expect("admin");
    let topic = proxy.config.topics.messages.clone();
    let grown = NewPartitions::new(&topic, usize::try_from(support::PARTITIONS + 2).expect("small"));
    for result in admin
        .create_partitions([&grown], &AdminOptions::new())
        .await
        .expect("create_partitions")
    {
        result.expect("partitions added");
    }
    // A producer writes straight into the newest partition; the fan-out picks it up at its
    // next metadata refresh (300 ms in tests) and reads it from the beginning.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", proxy.bootstrap())
        .create()
        .expect("producer");
    let record = FutureRecord::to(&topic)
        .key("grow/new")
        .payload("in a new partition")
        .partition(support::PARTITIONS + 1);
    producer.send(record, Duration::from_secs(10)).await.expect("produce");
    let p = sub.next_publish().await;
    assert_eq!(
        (&p.topic[..], &p.payload[..]),
        (&b"grow/new"[..], &b"in a new partition"[..])
    );
}

/// The helper the other tests use to say "nothing arrives" must not say so of a client the
/// proxy disconnected.
#[tokio::test]
#[should_panic(expected = "while no PUBLISH was expected")]
async fn expect_no_publish_fails_when_the_proxy_drops_the_connection() {
    let proxy = TestProxy::start().await;
    let mut first = Client::connect(&proxy, "twice").await;
    subscribe(&mut first, "quiet/#", QoS::AtLeastOnce).await;
    // The same client id again: the first connection is taken over (DISCONNECT 0x8E).
    let _second = Client::connect(&proxy, "twice").await;
    first.expect_no_publish(Duration::from_secs(5)).await;
}
