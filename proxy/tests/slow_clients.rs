//! Slow and stuck clients (issue 9): a client that stops reading must cost the process
//! nothing but its own connection. Writes to it have a deadline (`mqtt.writeTimeout`); when
//! it passes, the connection is closed and counted, and every other client is served as if
//! it were not there.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use rumqttc::v5::mqttbytes::QoS;
use support::{Client, RawPeer, TestProxy, WAIT, message_number};
use tokio::io::AsyncReadExt;
use tokio::net::TcpSocket;
use tokio::time::Instant;

/// A raw MQTT 5 client with a 4 KiB receive buffer that subscribes to `filter` (QoS 0),
/// then never reads again.
async fn stuck_subscriber(proxy: &TestProxy, id: &str, filter: &str) -> RawPeer {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let stream = socket.connect(proxy.address()).await.expect("connect");
    let mut peer = RawPeer { stream };
    peer.send(&RawPeer::v5_connect(id)).await;
    let connack = peer.read_packet().await.expect("CONNACK");
    assert_eq!(connack[3], 0, "CONNACK success: {connack:02x?}");
    // SUBSCRIBE packet id 1, no properties, `filter` at QoS 0.
    let mut body = vec![0, 1, 0];
    body.extend_from_slice(&u16::try_from(filter.len()).expect("short").to_be_bytes());
    body.extend_from_slice(filter.as_bytes());
    body.push(0);
    let mut subscribe = vec![0x82, u8::try_from(body.len()).expect("short")];
    subscribe.extend(body);
    peer.send(&subscribe).await;
    let suback = peer.read_packet().await.expect("SUBACK");
    assert_eq!(suback[0], 0x90, "SUBACK: {suback:02x?}");
    peer
}

#[tokio::test]
async fn a_client_that_does_not_read_is_disconnected_without_delaying_another_subscriber() {
    let proxy = TestProxy::start_with(|c| c.mqtt.write_timeout = 2).await;
    let mut stuck = stuck_subscriber(&proxy, "stuck", "slow/#").await;
    let mut healthy = Client::connect_with(&proxy, "healthy", |o| {
        o.set_max_packet_size(Some(1 << 20));
    })
    .await;
    healthy
        .client
        .subscribe("slow/#", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    healthy.suback().await;

    // 10 MiB: far more than the stuck client's window and our send buffer hold.
    let count = 640;
    let mut publisher = Client::connect(&proxy, "slow-pub").await;
    let started = Instant::now();
    publisher
        .publish_acked(0..count, |i| format!("slow/{}", i % 4), 16 * 1024)
        .await;
    let mut received = BTreeSet::new();
    while received.len() < count {
        received.insert(message_number(&healthy.next_publish().await.payload));
    }
    let healthy_took = started.elapsed();

    // The stuck one is closed within the deadline of its first write that could not go on.
    let series = "mqtt_kafka_server_disconnects_total{reason=\"write_timeout\"}";
    let deadline = Instant::now() + WAIT;
    while proxy.metric(series).await != Some(1.0) {
        assert!(Instant::now() < deadline, "{series} never counted the stuck client");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Its socket is closed: reading what was written before ends (EOF or reset).
    let mut sink = vec![0u8; 1 << 16];
    let closed = tokio::time::timeout(WAIT, async {
        loop {
            match stuck.stream.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the stuck client's connection is still open");
    assert!(
        healthy_took < WAIT,
        "the healthy subscriber took {healthy_took:?} for {count} messages"
    );
    // The process still serves: a new client connects, subscribes and receives.
    let mut late = Client::connect(&proxy, "late").await;
    late.client
        .subscribe("slow/#", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    late.suback().await;
    publisher
        .publish_acked(count..count + 1, |_| "slow/late".into(), 0)
        .await;
    assert_eq!(message_number(&late.next_publish().await.payload), count);
}
