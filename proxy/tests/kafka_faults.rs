//! The proxy against a Kafka broker that stalls, dies and comes back (issue 11): each test
//! has a broker of its own (`KafkaNode`), so pausing it disturbs no other test.
//!
//! A publisher sends QoS 1 PUBLISHes at about 100 per second with up to 20 in flight
//! throughout; a QoS 1 subscriber listens. After the fault ends, publishing must resume
//! within 30 s, every PUBLISH acknowledged with 0x00 must be in Kafka (no record more than
//! twice), the subscriber must get messages again, and `/readyz` must have said 503 while
//! the proxy could not produce.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use mqtt_kafka_testenv::kafka_node::KafkaNode;
use rdkafka::Message as _;
use rumqttc::v5::mqttbytes::QoS;
use support::{Client, KafkaReader, RawPeer, TestProxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::Instant;

const TOPIC: &str = "faults/stall";
const IN_FLIGHT: usize = 20;

/// What the publisher saw of one PUBLISH.
#[derive(Debug, Clone, Copy)]
struct Sent {
    at: Instant,
    /// PUBACK reason code and when it came.
    ack: Option<(u8, Instant)>,
}

/// A QoS 1 PUBLISH of `payload` with packet id `id`, MQTT 5, no properties.
fn publish_packet(id: u16, payload: &str) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&u16::try_from(TOPIC.len()).unwrap_or(0).to_be_bytes());
    body.extend_from_slice(TOPIC.as_bytes());
    body.extend_from_slice(&id.to_be_bytes());
    body.push(0); // no properties
    body.extend_from_slice(payload.as_bytes());
    let mut packet = vec![0x32];
    let mut len = body.len();
    loop {
        let mut byte = u8::try_from(len % 128).unwrap_or(0);
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        packet.push(byte);
        if len == 0 {
            break;
        }
    }
    packet.extend(body);
    packet
}

/// Publishes `m-<n>` at ~100/s with at most `IN_FLIGHT` unacknowledged, until `stop` turns
/// true; then waits (up to 60 s) for the acknowledgements still due. Returns every PUBLISH.
async fn publish_until(proxy: &TestProxy, mut stop: watch::Receiver<bool>) -> BTreeMap<u16, Sent> {
    let peer = RawPeer::connect_v5(proxy, "fault-publisher").await;
    let (mut read, mut write) = peer.stream.into_split();
    let mut sent: BTreeMap<u16, Sent> = BTreeMap::new();
    let mut unacked = 0usize;
    let mut next_id: u16 = 1;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut stopping_since: Option<Instant> = None;
    // PINGREQ while the window is full, so keep-alive never ends the connection.
    let mut ping = tokio::time::interval(Duration::from_secs(5));
    loop {
        if stopping_since.is_some_and(|s| unacked == 0 || s.elapsed() > Duration::from_secs(60)) {
            return sent;
        }
        tokio::select! {
            _ = tick.tick(), if stopping_since.is_none() && unacked < IN_FLIGHT && next_id < u16::MAX => {
                let id = next_id;
                next_id += 1;
                write.write_all(&publish_packet(id, &format!("m-{id}"))).await.expect("publish written");
                sent.insert(id, Sent { at: Instant::now(), ack: None });
                unacked += 1;
            }
            _ = ping.tick() => write.write_all(&[0xc0, 0x00]).await.expect("PINGREQ written"),
            read_bytes = read.read(&mut chunk) => {
                let n = read_bytes.expect("read from the proxy");
                assert!(n > 0, "the proxy closed the publisher's connection");
                buffer.extend_from_slice(&chunk[..n]);
                // PUBACK: 0x40, remaining length 2..=4, packet id, optional reason.
                while buffer.len() >= 2 && buffer.len() >= 2 + usize::from(buffer[1]) {
                    let len = 2 + usize::from(buffer[1]);
                    let packet: Vec<u8> = buffer.drain(..len).collect();
                    if packet[0] == 0xd0 {
                        continue; // PINGRESP
                    }
                    assert_eq!(packet[0], 0x40, "only PUBACKs and PINGRESPs expected: {packet:02x?}");
                    let id = u16::from_be_bytes([packet[2], packet[3]]);
                    let reason = packet.get(4).copied().unwrap_or(0);
                    if let Some(s) = sent.get_mut(&id)
                        && s.ack.is_none()
                    {
                        s.ack = Some((reason, Instant::now()));
                        unacked -= 1;
                    }
                }
            }
            _ = stop.changed(), if stopping_since.is_none() => {
                stopping_since = Some(Instant::now());
            }
        }
    }
}

/// Polls `/readyz` every 200 ms until `stop`; returns every (time, status).
async fn watch_readiness(proxy: &TestProxy, mut stop: watch::Receiver<bool>) -> Vec<(Instant, u16, String)> {
    let mut seen = Vec::new();
    loop {
        let (status, body) = proxy.admin_get("/readyz").await;
        seen.push((Instant::now(), status, body));
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = stop.changed() => return seen,
        }
    }
}

/// Runs traffic across `fault` (which returns when the fault is over) and checks what the
/// issue asks for.
async fn traffic_survives(node: &mut KafkaNode, fault: impl AsyncFnOnce(&mut KafkaNode) -> Instant) -> TestProxy {
    let bootstrap = node.bootstrap();
    let proxy = TestProxy::start_with(|c| c.kafka.bootstrap_servers = bootstrap.clone()).await;
    let mut subscriber = Client::connect(&proxy, "fault-subscriber").await;
    subscriber
        .client
        .subscribe(TOPIC, QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    subscriber.suback().await;

    let (stop_tx, stop) = watch::channel(false);
    let (sent, readiness, (fault_start, over)) = tokio::join!(
        publish_until(&proxy, stop.clone()),
        watch_readiness(&proxy, stop),
        async {
            tokio::time::sleep(Duration::from_secs(3)).await;
            let fault_start = Instant::now();
            let over = fault(node).await;
            // Run on until 35 s after the fault ended: resumption must come within 30 s.
            tokio::time::sleep(Duration::from_secs(35)).await;
            let _ = stop_tx.send(true);
            (fault_start, over)
        }
    );

    // Publishing resumed: a PUBLISH sent after the fault was acknowledged with 0x00 within
    // 30 s of its end, and every PUBLISH sent from then on was.
    let first_ok_after = sent
        .values()
        .filter(|s| s.at >= over)
        .find_map(|s| s.ack.filter(|(reason, _)| *reason == 0).map(|(_, at)| at))
        .unwrap_or_else(|| panic!("no PUBLISH sent after the fault was acknowledged: {sent:?}"));
    let resumed_after = first_ok_after.saturating_duration_since(over);
    assert!(
        resumed_after <= Duration::from_secs(30),
        "publishing resumed {resumed_after:?} after the fault ended"
    );
    let late: Vec<_> = sent
        .iter()
        .filter(|(_, s)| s.at >= first_ok_after + Duration::from_secs(1))
        .filter(|(_, s)| s.ack.is_none_or(|(reason, _)| reason != 0))
        .collect();
    assert!(late.is_empty(), "PUBLISHes after the recovery not stored: {late:?}");

    // /readyz said 503 while the proxy could not produce, and 200 again at the end.
    assert!(
        readiness.iter().any(|(at, status, body)| *status == 503
            && body.contains("producer:")
            && *at >= fault_start
            && *at <= over),
        "/readyz never said 503 naming the producer during the fault: {:?}",
        readiness.iter().map(|(_, s, b)| (s, b)).collect::<Vec<_>>()
    );
    // Ready again after the fault: a client may still lose a request or two while the
    // broker catches up, so readiness gets a few seconds to settle.
    let was_ready = readiness.iter().any(|(at, status, _)| *status == 200 && *at > over);
    let mut last = proxy.admin_get("/readyz").await;
    let settle = Instant::now() + Duration::from_secs(20);
    while last.0 != 200 && Instant::now() < settle {
        tokio::time::sleep(Duration::from_millis(200)).await;
        last = proxy.admin_get("/readyz").await;
    }
    assert!(was_ready, "/readyz never said 200 after the fault");
    assert_eq!(last.0, 200, "ready again: {}", last.1);

    // Every PUBLISH acknowledged with 0x00 is in Kafka; none is there more than twice.
    let acked: Vec<u16> = sent
        .iter()
        .filter(|(_, s)| s.ack.is_some_and(|(reason, _)| reason == 0))
        .map(|(id, _)| *id)
        .collect();
    let reader = KafkaReader::new(&node.bootstrap(), &proxy.config.topics.messages);
    let mut stored: HashMap<String, usize> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked.iter().any(|id| !stored.contains_key(&format!("m-{id}"))) && Instant::now() < deadline {
        let record = reader.next().await;
        let payload = String::from_utf8_lossy(record.payload().unwrap_or_default()).into_owned();
        *stored.entry(payload).or_default() += 1;
    }
    let missing: Vec<_> = acked
        .iter()
        .filter(|id| !stored.contains_key(&format!("m-{id}")))
        .collect();
    assert!(missing.is_empty(), "acknowledged but not in Kafka: {missing:?}");
    let thrice: Vec<_> = stored.iter().filter(|(_, n)| **n > 2).collect();
    assert!(thrice.is_empty(), "stored more than twice: {thrice:?}");

    // The subscriber gets messages published after the recovery: the readers recovered.
    let last = format!("m-{}", acked.last().copied().unwrap_or_default());
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut received = 0usize;
    let mut latest = String::new();
    loop {
        if Instant::now() >= deadline {
            panic!(
                "the subscriber never got {last}; it got {received} PUBLISHes in 30 s, the last {latest}; {}",
                delivery_metrics(&proxy).await
            );
        }
        let publish = subscriber.next_publish().await;
        received += 1;
        latest = String::from_utf8_lossy(&publish.payload).into_owned();
        if publish.payload == last.as_bytes() {
            break;
        }
    }
    eprintln!("{}", delivery_metrics(&proxy).await);
    let failed = sent.values().filter(|s| s.ack.is_some_and(|(r, _)| r != 0)).count();
    eprintln!(
        "sent {}, acknowledged 0x00 {}, negative {failed}, resumed {resumed_after:?} after the fault, distinct records {}",
        sent.len(),
        acked.len(),
        stored.len()
    );
    proxy
}

/// What the proxy's metrics say about deliveries, for a failure message.
async fn delivery_metrics(proxy: &TestProxy) -> String {
    let (_, body) = proxy.admin_get("/metrics").await;
    let wanted = [
        "mqtt_kafka_delivered_total",
        "mqtt_kafka_dropped_total",
        "mqtt_kafka_subscriber_lags_total",
        "mqtt_kafka_replayed_records_total",
        "mqtt_kafka_connections_resting",
        "mqtt_kafka_kafka_client_replacements_total",
        "mqtt_kafka_fanout_consumers",
    ];
    body.lines()
        .filter(|line| wanted.iter().any(|name| line.starts_with(name)))
        .collect::<Vec<_>>()
        .join(", ")
}

#[tokio::test]
async fn publishing_resumes_after_the_broker_is_paused_longer_than_the_client_timeouts() {
    let mut node = KafkaNode::start().await.unwrap_or_else(|e| panic!("{e}"));
    let proxy = traffic_survives(&mut node, async |node: &mut KafkaNode| {
        node.pause().expect("pause");
        // Longer than the producer's request timeout and message timeout (30 s each), so
        // requests and records time out while the broker holds them.
        tokio::time::sleep(Duration::from_secs(40)).await;
        node.resume().expect("resume");
        Instant::now()
    })
    .await;
    // 40 s of failures is past the 10 s after which a client is replaced: the recovery
    // above went through new clients, not only through librdkafka's own retries.
    let replaced = proxy
        .metric("mqtt_kafka_kafka_client_replacements_total{client=\"producer\"}")
        .await
        .unwrap_or(0.0);
    assert!(replaced >= 1.0, "the producer was never replaced during a 40 s stall");
}

#[tokio::test]
async fn publishing_resumes_after_the_broker_is_killed_and_restarted() {
    let mut node = KafkaNode::start().await.unwrap_or_else(|e| panic!("{e}"));
    traffic_survives(&mut node, async |node: &mut KafkaNode| {
        node.kill().expect("kill");
        tokio::time::sleep(Duration::from_secs(10)).await;
        node.restart().await.expect("restart");
        Instant::now()
    })
    .await;
}

/// A QoS 0 PUBLISH on `faults/flood`, MQTT 5, no properties.
fn qos0_packet(payload: &[u8]) -> Vec<u8> {
    let topic = b"faults/flood";
    let mut packet = vec![0x30, u8::try_from(2 + topic.len() + 1 + payload.len()).expect("short")];
    packet.extend_from_slice(&u16::try_from(topic.len()).expect("short").to_be_bytes());
    packet.extend_from_slice(topic);
    packet.push(0); // no properties
    packet.extend_from_slice(payload);
    packet
}

#[tokio::test]
async fn a_qos0_flood_during_an_outage_does_not_starve_qos1_publishers() {
    let node = KafkaNode::start().await.unwrap_or_else(|e| panic!("{e}"));
    let bootstrap = node.bootstrap();
    // A small producer queue, so that the flood below is more than all of it.
    let proxy = TestProxy::start_with(|c| {
        c.kafka.bootstrap_servers = bootstrap.clone();
        c.kafka
            .properties
            .insert("queue.buffering.max.messages".into(), "2000".into());
    })
    .await;
    let mut flooder = RawPeer::connect_v5(&proxy, "flooder").await;
    let mut publisher = RawPeer::connect_v5(&proxy, "qos1-publisher").await;

    node.pause().expect("pause");
    let flood: Vec<u8> = (0..5000)
        .flat_map(|i| qos0_packet(format!("f-{i}").as_bytes()))
        .collect();
    flooder.send(&flood).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while proxy.metric("mqtt_kafka_published_total{qos=\"0\"}").await != Some(5000.0) {
        assert!(Instant::now() < deadline, "the proxy did not read the flood");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for id in 1..=10 {
        publisher.send(&publish_packet(id, &format!("q-{id}"))).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    node.resume().expect("resume");

    // Every QoS 1 PUBLISH is acknowledged 0x00 once Kafka is back: the flood did not
    // leave it without room in the producer queue (that was an immediate 0x80).
    for _ in 1..=10 {
        let puback = publisher.read_packet().await.expect("PUBACK");
        assert_eq!(puback[0], 0x40, "PUBACK: {puback:02x?}");
        assert_eq!(puback.get(4).copied().unwrap_or(0), 0, "PUBACK reason: {puback:02x?}");
    }
    let dropped = proxy
        .metric("mqtt_kafka_qos0_dropped_total{reason=\"backlog\"}")
        .await
        .unwrap_or(0.0);
    assert!(
        (2000.0..5000.0).contains(&dropped),
        "QoS 0 beyond its share of the queue is dropped and counted: {dropped}"
    );
}
