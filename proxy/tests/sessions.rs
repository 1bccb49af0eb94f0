//! Sessions that live in Kafka, across proxy processes sharing the same topics (one broker
//! of several processes): offline delivery from stored positions, takeover, will delay,
//! and expiry.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use rumqttc::v5::MqttOptions;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{LastWill, LastWillProperties, Packet};
use support::{Client, TestProxy, cluster, message_number};
use tokio::time::Instant;

fn persistent(expiry_secs: u32) -> impl FnOnce(&mut MqttOptions) {
    move |o: &mut MqttOptions| {
        o.set_clean_start(false);
        o.set_session_expiry_interval(Some(expiry_secs));
    }
}

/// Receives `count` PUBLISHes and checks that each topic's messages came in publishing
/// order; returns the payload numbers per topic.
async fn receive_in_order(client: &mut Client, count: usize) -> BTreeMap<String, Vec<usize>> {
    let mut per_topic: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for _ in 0..count {
        let p = client.next_publish().await;
        let n = message_number(&p.payload);
        per_topic
            .entry(String::from_utf8_lossy(&p.topic).into_owned())
            .or_default()
            .push(n);
    }
    for (topic, numbers) in &per_topic {
        assert!(
            numbers.windows(2).all(|w| w[0] < w[1]),
            "{topic} out of order: {numbers:?}"
        );
    }
    per_topic
}

#[tokio::test]
async fn a_persistent_session_resumes_on_another_process_with_its_subscriptions_and_offline_messages() {
    let procs = cluster(2).await;
    let mut sub = Client::connect_with(&procs[0], "sess-offline", persistent(300)).await;
    assert!(!sub.connack.session_present);
    sub.client
        .subscribe("offline/#", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    sub.suback().await;
    sub.disconnect().await;

    let mut publisher = Client::connect(&procs[1], "sess-offline-pub").await;
    publisher
        .publish_acked(0..60, |i| format!("offline/{}", i % 3), 0)
        .await;

    // Back on the other process, without subscribing again.
    let mut back = Client::connect_with(&procs[1], "sess-offline", persistent(300)).await;
    assert!(back.connack.session_present, "Session Present");
    let got = receive_in_order(&mut back, 60).await;
    assert_eq!(got.values().map(Vec::len).sum::<usize>(), 60, "{got:?}");
    back.expect_no_publish(Duration::from_millis(500)).await;

    // Live delivery goes on after the catch-up.
    publisher.publish_acked(0..1, |_| "offline/live".into(), 0).await;
    assert_eq!(&back.next_publish().await.payload[..], b"m0");
}

#[tokio::test]
async fn a_mqtt_3_1_1_session_with_clean_session_0_keeps_subscriptions_and_messages_across_processes() {
    use rumqttc::{AsyncClient, Event as Event3, MqttOptions as Options3, Packet as Packet3, QoS as QoS3};
    let procs = cluster(2).await;
    let connect3 = async |proxy: &TestProxy| {
        let mut options = Options3::new("sess-v3", "127.0.0.1", proxy.address().port());
        options.set_clean_session(false);
        options.set_keep_alive(Duration::from_secs(30));
        let (client, mut events) = AsyncClient::new(options, 100);
        let session_present = loop {
            match tokio::time::timeout(support::WAIT, events.poll()).await {
                Ok(Ok(Event3::Incoming(Packet3::ConnAck(ack)))) => break ack.session_present,
                Ok(Ok(_)) => {}
                other => panic!("no CONNACK: {other:?}"),
            }
        };
        (client, events, session_present)
    };
    let (client, mut events, present) = connect3(&procs[0]).await;
    assert!(!present);
    client.subscribe("v3/#", QoS3::AtLeastOnce).await.expect("subscribe");
    loop {
        if let Ok(Event3::Incoming(Packet3::SubAck(_))) = events.poll().await {
            break;
        }
    }
    client.disconnect().await.expect("disconnect");
    while events.poll().await.is_ok() {}

    let mut publisher = Client::connect(&procs[1], "sess-v3-pub").await;
    publisher.publish_acked(0..20, |i| format!("v3/{}", i % 2), 0).await;

    let (_client, mut events, present) = connect3(&procs[1]).await;
    assert!(present, "session present for clean session 0");
    let mut got = Vec::new();
    while got.len() < 20 {
        match tokio::time::timeout(support::WAIT, events.poll()).await {
            Ok(Ok(Event3::Incoming(Packet3::Publish(p)))) => got.push(String::from_utf8_lossy(&p.payload).into_owned()),
            Ok(Ok(_)) => {}
            other => panic!("after {} messages: {other:?}", got.len()),
        }
    }
    got.sort();
    got.dedup();
    assert_eq!(got.len(), 20, "{got:?}");
}

#[tokio::test]
async fn a_connect_on_another_process_takes_the_session_over_within_two_seconds() {
    let procs = cluster(2).await;
    let mut first = Client::connect_with(&procs[0], "sess-twin", persistent(60)).await;
    let started = Instant::now();
    let second = Client::connect_with(&procs[1], "sess-twin", persistent(60)).await;
    assert!(second.connack.session_present);
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
            Err(e) if e.contains("SessionTakenOver") => break,
            Err(e) => panic!("closed without DISCONNECT 0x8E: {e}"),
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
}

fn delayed_will(topic: &str, delay_secs: u32) -> LastWill {
    LastWill::new(
        topic,
        "gone",
        QoS::AtLeastOnce,
        false,
        Some(LastWillProperties {
            delay_interval: Some(delay_secs),
            payload_format_indicator: None,
            message_expiry_interval: None,
            content_type: None,
            response_topic: None,
            correlation_data: None,
            user_properties: Vec::new(),
        }),
    )
}

#[tokio::test]
async fn a_will_waits_for_its_delay_and_is_not_sent_when_the_client_returns_in_time() {
    let procs = cluster(2).await;
    let mut watcher = Client::connect(&procs[1], "sess-will-watch").await;
    watcher
        .client
        .subscribe("wills/#", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    watcher.suback().await;

    let late = Client::connect_with(&procs[0], "sess-will-late", |o| {
        persistent(60)(o);
        o.set_last_will(delayed_will("wills/late", 2));
    })
    .await;
    let back = Client::connect_with(&procs[0], "sess-will-back", |o| {
        persistent(60)(o);
        o.set_last_will(delayed_will("wills/back", 2));
    })
    .await;
    let lost = Instant::now();
    late.kill().await;
    back.kill().await;
    // `back` returns within the delay, on the other process: its will is never sent.
    let _back = Client::connect_with(&procs[1], "sess-will-back", persistent(60)).await;
    watcher.expect_no_publish(Duration::from_millis(1500)).await;
    let will = watcher.next_publish().await;
    let after = lost.elapsed();
    assert_eq!((&will.topic[..], &will.payload[..]), (&b"wills/late"[..], &b"gone"[..]));
    assert!(
        after >= Duration::from_secs(2) && after < Duration::from_secs(5),
        "{after:?}"
    );
    watcher.expect_no_publish(Duration::from_secs(2)).await;
}

#[tokio::test]
async fn an_expired_session_is_deleted_and_not_resumed() {
    let procs = cluster(2).await;
    let sub = Client::connect_with(&procs[0], "sess-expire", persistent(2)).await;
    sub.client
        .subscribe("expire/#", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    sub.disconnect().await;
    let resumed = Client::connect_with(&procs[1], "sess-expire", persistent(2)).await;
    assert!(resumed.connack.session_present, "within the expiry");
    resumed.disconnect().await;
    tokio::time::sleep(Duration::from_millis(2600)).await;
    assert!(
        procs[0].server.sessions.get("sess-expire").is_none(),
        "deleted at expiry"
    );
    let again = Client::connect_with(&procs[1], "sess-expire", persistent(2)).await;
    assert!(!again.connack.session_present, "expired");
}

#[tokio::test]
async fn each_message_of_a_shared_subscription_goes_to_one_member_across_processes() {
    let procs = cluster(3).await;
    let mut members = Vec::new();
    for (i, proc) in procs.iter().enumerate() {
        let mut member = Client::connect(proc, &format!("share-member-{i}")).await;
        member
            .client
            .subscribe("$share/workers/jobs/#", QoS::AtLeastOnce)
            .await
            .expect("subscribe");
        member.suback().await;
        members.push(member);
    }
    // Each process announces its members with its next heartbeat (every second).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut publisher = Client::connect(&procs[0], "share-publisher").await;
    let total = 90;
    publisher.publish_acked(0..total, |i| format!("jobs/{i}"), 0).await;
    let mut got = Vec::new();
    let mut per_member = Vec::new();
    for member in &mut members {
        let mut mine = 0;
        while let Ok(p) = tokio::time::timeout(Duration::from_millis(1500), member.next_publish()).await {
            got.push(String::from_utf8_lossy(&p.payload).into_owned());
            mine += 1;
        }
        per_member.push(mine);
    }
    got.sort();
    let before = got.len();
    got.dedup();
    assert_eq!(before, got.len(), "a message went to two members: {per_member:?}");
    assert_eq!(got.len(), total, "every message reached a member: {per_member:?}");
    assert!(
        per_member.iter().all(|n| *n > 0),
        "spread over the processes: {per_member:?}"
    );
}

#[tokio::test]
async fn a_share_member_that_leaves_without_acknowledging_hands_its_messages_to_another_member() {
    use std::collections::BTreeSet;
    use support::RawPeer;
    use support::processes::{next_publish, parse_publish, subscribe};
    let procs = cluster(1).await;
    let filter = "$share/handback/work/#";
    let mut silent = RawPeer::connect_v5(&procs[0], "share-silent").await;
    subscribe(&mut silent, filter).await;
    let mut worker = RawPeer::connect_v5(&procs[0], "share-worker").await;
    subscribe(&mut worker, filter).await;
    let mut publisher = Client::connect(&procs[0], "share-handback-pub").await;
    let total = 40;
    publisher.publish_acked(0..total, |i| format!("work/{i}"), 0).await;

    // The silent member takes its turns and acknowledges none of them.
    let mut held = BTreeSet::new();
    while let Ok(Some(packet)) = tokio::time::timeout(Duration::from_millis(1500), silent.read_packet()).await {
        if packet[0] & 0xF0 == 0x30 {
            held.insert(parse_publish(&packet).1);
        }
    }
    let mut got = BTreeSet::new();
    while let Ok((_, payload)) = tokio::time::timeout(Duration::from_millis(1500), next_publish(&mut worker)).await {
        got.insert(payload);
    }
    assert!(!held.is_empty(), "the silent member got its turns");
    assert!(held.is_disjoint(&got), "a message went to both members");
    assert_eq!(held.len() + got.len(), total, "every message went to a member");

    // It leaves: what it held goes to the other member.
    drop(silent);
    while got.len() < total {
        let (_, payload) = tokio::time::timeout(Duration::from_secs(10), next_publish(&mut worker))
            .await
            .unwrap_or_else(|_| panic!("only {} of {total} messages reached the remaining member", got.len()));
        got.insert(payload);
    }
    assert!(held.is_subset(&got));
    let handed_back = procs[0].metric("mqtt_kafka_share_handed_back_total").await;
    assert!(
        handed_back.is_some_and(|n| n >= held.len() as f64),
        "handed back: {handed_back:?}, held {}",
        held.len()
    );
}

#[tokio::test]
async fn a_share_whose_members_are_all_behind_catches_up_from_kafka_and_loses_nothing() {
    use std::collections::BTreeSet;
    use support::RawPeer;
    use support::processes::{next_publish, parse_publish, subscribe};
    let procs = cluster(1).await;
    let mut member = RawPeer::connect_v5(&procs[0], "share-behind").await;
    subscribe(&mut member, "$share/behind/load/#").await;
    // 6 000 messages of 1 KiB: more than the share's queue holds (4 MiB), while its only
    // member acknowledges nothing.
    let total = 6000;
    let mut publisher = Client::connect(&procs[0], "share-behind-pub").await;
    publisher
        .publish_acked(0..total, |i| format!("load/{}", i % 7), 1024)
        .await;
    let mut unacked = Vec::new();
    let mut got = BTreeSet::new();
    while let Ok(Some(packet)) = tokio::time::timeout(Duration::from_millis(1500), member.read_packet()).await {
        if packet[0] & 0xF0 == 0x30 {
            let (_, payload, id) = parse_publish(&packet);
            got.insert(message_number(payload.as_bytes()));
            unacked.extend(id);
        }
    }
    assert!(got.len() < total, "the member was behind: it had {} at once", got.len());
    let lags = procs[0].metric("mqtt_kafka_subscriber_lags_total").await.unwrap_or(0.0);
    assert!(lags >= 1.0, "the share's dispatcher lagged ({lags})");
    for id in unacked {
        member.send(&[0x40, 2, id[0], id[1]]).await;
    }
    while got.len() < total {
        let (_, payload) = tokio::time::timeout(Duration::from_secs(10), next_publish(&mut member))
            .await
            .unwrap_or_else(|_| panic!("the member has {} of {total} messages", got.len()));
        got.insert(message_number(payload.as_bytes()));
    }
}

#[tokio::test]
async fn a_qos2_publish_retried_on_another_process_after_a_reconnect_is_stored_once() {
    use support::{KafkaReader, RawPeer};
    let procs = cluster(2).await;
    // CONNECT v5, clean start 0, session expiry 60, client id "sess-q2".
    let connect = |peer_id: &str| {
        let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 5, 0x00, 0, 30, 5, 0x11, 0, 0, 0, 60];
        body.extend_from_slice(&u16::try_from(peer_id.len()).unwrap_or(0).to_be_bytes());
        body.extend_from_slice(peer_id.as_bytes());
        let mut packet = vec![0x10, u8::try_from(body.len()).unwrap_or(0)];
        packet.extend(body);
        packet
    };
    // PUBLISH QoS 2 (DUP when `dup`), topic q2/once, packet id 7, payload "once".
    let publish = |dup: bool| {
        let mut packet = vec![if dup { 0x3C } else { 0x34 }, 0];
        packet.extend_from_slice(&[0, 7]);
        packet.extend_from_slice(b"q2/once");
        packet.extend_from_slice(&[0, 7, 0]);
        packet.extend_from_slice(b"once");
        packet[1] = u8::try_from(packet.len() - 2).unwrap_or(0);
        packet
    };
    let mut first = RawPeer::connect(&procs[0]).await;
    first.send(&connect("sess-q2")).await;
    assert_eq!(first.read_packet().await.expect("CONNACK")[3], 0);
    first.send(&publish(false)).await;
    let pubrec = first.read_packet().await.expect("PUBREC");
    assert_eq!((pubrec[0], pubrec[2], pubrec[3]), (0x50, 0, 7), "{pubrec:02x?}");
    drop(first); // gone before PUBREL

    let mut second = RawPeer::connect(&procs[1]).await;
    second.send(&connect("sess-q2")).await;
    let connack = second.read_packet().await.expect("CONNACK");
    assert_eq!((connack[2], connack[3]), (1, 0), "session present: {connack:02x?}");
    second.send(&publish(true)).await;
    let pubrec = second.read_packet().await.expect("PUBREC");
    assert_eq!((pubrec[0], pubrec[2], pubrec[3]), (0x50, 0, 7), "{pubrec:02x?}");
    second.send(&[0x62, 2, 0, 7]).await; // PUBREL
    let pubcomp = second.read_packet().await.expect("PUBCOMP");
    assert_eq!(pubcomp[0], 0x70);

    // Exactly one record in Kafka, whatever else arrives in the next seconds.
    let reader = KafkaReader::new(procs[0].bootstrap(), &procs[0].config.topics.messages);
    let mut copies = 0;
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        if let Ok(record) = tokio::time::timeout(Duration::from_millis(500), reader.next()).await {
            use rdkafka::Message as _;
            if record.payload() == Some(&b"once"[..]) {
                copies += 1;
            }
        }
    }
    assert_eq!(copies, 1, "the QoS 2 message is stored exactly once");
}

#[tokio::test]
async fn a_message_whose_expiry_ran_out_while_the_session_was_away_is_not_delivered() {
    use rumqttc::v5::mqttbytes::v5::PublishProperties;
    let procs = cluster(2).await;
    let mut sub = Client::connect_with(&procs[0], "sess-msg-expiry", persistent(300)).await;
    sub.client
        .subscribe("waited/#", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    sub.suback().await;
    sub.disconnect().await;

    let publisher = Client::connect(&procs[1], "sess-msg-expiry-pub").await;
    for (topic, expiry) in [
        ("waited/short", Some(1)),
        ("waited/long", Some(600)),
        ("waited/never", None),
    ] {
        let props = PublishProperties {
            message_expiry_interval: expiry,
            ..Default::default()
        };
        publisher
            .client
            .publish_with_properties(topic, QoS::AtLeastOnce, false, "x", props)
            .await
            .expect("publish");
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;

    let mut back = Client::connect_with(&procs[1], "sess-msg-expiry", persistent(300)).await;
    assert!(back.connack.session_present);
    // Topics on different partitions come in either order; the short one never comes.
    let mut got = BTreeMap::new();
    for _ in 0..2 {
        let p = back.next_publish().await;
        let expiry = p.properties.as_ref().and_then(|p| p.message_expiry_interval);
        got.insert(String::from_utf8_lossy(&p.topic).into_owned(), expiry);
    }
    let topics: Vec<&str> = got.keys().map(String::as_str).collect();
    assert_eq!(
        topics,
        ["waited/long", "waited/never"],
        "the 1 s message expired while it waited"
    );
    let left = got["waited/long"].expect("remaining expiry");
    assert!((590..=598).contains(&left), "600 s less the time it waited: {left}");
    assert_eq!(got["waited/never"], None);
    back.expect_no_publish(Duration::from_millis(500)).await;
}

#[tokio::test]
async fn only_a_session_that_outlives_its_connection_stores_where_delivery_resumes() {
    let proxy = TestProxy::start().await;
    let clean = Client::connect(&proxy, "sess-positions-clean").await;
    let kept = Client::connect_with(&proxy, "sess-positions-kept", persistent(60)).await;
    let sessions = &proxy.server.sessions;
    let clean_state = sessions.get("sess-positions-clean").expect("a connected clean session");
    assert!(
        clean_state.positions.is_empty(),
        "a clean session is never resumed, so it holds no positions: {:?}",
        clean_state.positions
    );
    let kept_state = sessions
        .get("sess-positions-kept")
        .expect("a connected persistent session");
    assert!(
        !kept_state.positions.is_empty(),
        "a persistent session knows from where to resume if its process dies"
    );
    clean.disconnect().await;
    kept.disconnect().await;
}
