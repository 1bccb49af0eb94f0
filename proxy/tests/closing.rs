//! How connections end and begin under pressure (issue 9): a client the server disconnects
//! can read the DISCONNECT even while it keeps writing; a 3.1.1 client is never
//! disconnected for a Receive Maximum it was never told; before CONNECT, sockets count
//! towards `mqtt.maxConnections` and packets have a small size limit.

mod support;

use std::time::Duration;

use support::{RawPeer, TestProxy, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A 3.1.1 CONNECT: clean session, keep alive 60, client id `c1`.
const V311_CONNECT: &[u8] = b"\x10\x0e\x00\x04MQTT\x04\x02\x00\x3c\x00\x02c1";

/// A PUBLISH on `r/1` with QoS `qos` and packet id `id` (no properties: 3.1.1 form; for
/// MQTT 5 `v5` adds the empty property length), payload `x`.
fn publish(qos: u8, id: u16, v5: bool) -> Vec<u8> {
    let mut body = vec![0, 3, b'r', b'/', b'1'];
    body.extend_from_slice(&id.to_be_bytes());
    if v5 {
        body.push(0);
    }
    body.push(b'x');
    let mut packet = vec![0x30 | (qos << 1), u8::try_from(body.len()).expect("short")];
    packet.extend(body);
    packet
}

/// A QoS 0 PUBLISH on `r/0` with `len` bytes of payload (MQTT 5).
fn qos0_publish(len: usize) -> Vec<u8> {
    let mut body = vec![0, 3, b'r', b'/', b'0', 0];
    body.extend(std::iter::repeat_n(b'z', len));
    let mut packet = vec![0x30];
    let mut remaining = body.len();
    loop {
        let mut byte = u8::try_from(remaining % 128).expect("7 bits");
        remaining /= 128;
        if remaining > 0 {
            byte |= 0x80;
        }
        packet.push(byte);
        if remaining == 0 {
            break;
        }
    }
    packet.extend(body);
    packet
}

#[tokio::test]
async fn a_client_over_the_receive_maximum_reads_disconnect_0x93_while_it_keeps_writing() {
    let proxy = TestProxy::start_with(|c| c.mqtt.receive_maximum = 2).await;
    let peer = RawPeer::connect_v5(&proxy, "keeps-writing").await;
    let (mut read, mut write) = peer.stream.into_split();
    // Three QoS 2 PUBLISHes and no PUBREL: the third exceeds the window of 2. Then the
    // client goes on writing for half a second, as a busy client does, before it reads.
    for id in 1..=3 {
        write.write_all(&publish(2, id, true)).await.expect("publish");
    }
    for i in 0..100 {
        if let Err(error) = write.write_all(&qos0_publish(1024)).await {
            panic!("write {i} after the DISCONNECT failed ({error}): the server reset the connection");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut input = Vec::new();
    let read_all = tokio::time::timeout(WAIT, read.read_to_end(&mut input)).await;
    let outcome = read_all.expect("the server closes within the wait");
    assert!(
        outcome.is_ok(),
        "the connection was reset instead of closed: {outcome:?}, read {input:02x?}"
    );
    // The last packet is DISCONNECT 0x93 (remaining length 1 or 2).
    let disconnect = input
        .windows(3)
        .rposition(|w| w[0] == 0xE0 && (w[1] == 1 || w[1] == 2) && w[2] == 0x93);
    assert!(disconnect.is_some(), "no DISCONNECT 0x93 in {input:02x?}");
    drop(write);
}

#[tokio::test]
async fn a_311_client_over_the_receive_maximum_is_held_back_not_disconnected() {
    let proxy = TestProxy::start_with(|c| c.mqtt.receive_maximum = 2).await;
    let mut peer = RawPeer::connect(&proxy).await;
    peer.send(V311_CONNECT).await;
    assert_eq!(peer.read_packet().await.expect("CONNACK"), [0x20, 2, 0, 0]);
    // 20 QoS 1 and 5 QoS 2 PUBLISHes (no PUBREL) in one write: ten times the window.
    let mut burst = Vec::new();
    for id in 1..=20 {
        burst.extend(publish(1, id, false));
    }
    for id in 21..=25 {
        burst.extend(publish(2, id, false));
    }
    peer.send(&burst).await;
    let (mut pubacks, mut pubrecs) = (0, 0);
    while pubacks + pubrecs < 25 {
        match peer.read_packet().await {
            Some(p) if p[0] == 0x40 => pubacks += 1,
            Some(p) if p[0] == 0x50 => pubrecs += 1,
            other => panic!("after {pubacks} PUBACKs and {pubrecs} PUBRECs: {other:02x?}"),
        }
    }
    // Still connected: PINGREQ is answered.
    peer.send(&[0xC0, 0]).await;
    assert_eq!(peer.read_packet().await.expect("PINGRESP"), [0xD0, 0]);
}

#[tokio::test]
async fn sockets_that_have_not_sent_connect_count_towards_max_connections() {
    let proxy = TestProxy::start_with(|c| c.mqtt.max_connections = 2).await;
    let silent = RawPeer::connect(&proxy).await;
    let _also_silent = RawPeer::connect(&proxy).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut third = RawPeer::connect(&proxy).await;
    third.send(&RawPeer::v5_connect("third")).await;
    let connack = third.read_packet().await.expect("CONNACK");
    assert_eq!((connack[0], connack[3]), (0x20, 0x97), "CONNACK 0x97: {connack:02x?}");
    // A silent socket that goes away gives its place back.
    drop(silent);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut peer = RawPeer::connect(&proxy).await;
        peer.send(&RawPeer::v5_connect("fourth")).await;
        let connack = peer.read_packet().await.expect("CONNACK");
        if connack[3] == 0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never admitted: {connack:02x?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn before_connect_a_packet_announced_over_the_small_limit_is_refused_with_0x95() {
    let proxy = TestProxy::start().await;
    let mut peer = RawPeer::connect(&proxy).await;
    // A v5 CONNECT announcing 200 000 bytes (within mqtt.maximumPacketSize, 1 MiB), of
    // which only the protocol name and level arrive.
    peer.send(b"\x10\xc0\x9a\x0c\x00\x04MQTT\x05\x02\x00\x1e").await;
    let started = tokio::time::Instant::now();
    let connack = peer.read_packet().await.expect("CONNACK");
    assert_eq!((connack[0], connack[3]), (0x20, 0x95), "CONNACK 0x95: {connack:02x?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "answered at once, not at the CONNECT timeout"
    );
    assert!(peer.read_until_closed().await.is_empty(), "then closed");
}
