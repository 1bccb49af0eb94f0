//! Shared by the proxy's integration tests: a proxy started in-process on its own
//! Kafka topics (real Kafka from `make env-up`), MQTT 5 clients (rumqttc), raw TCP peers
//! for malformed input, and a Kafka reader for what landed in the topics.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use mqtt_kafka_proxy::config::{Config, Kafka, Listener, ListenerProtocol};
use mqtt_kafka_proxy::server::{self, Server, StartOptions};
use mqtt_kafka_testenv::{kafka, unique_name};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::OwnedMessage;
use rdkafka::{ClientConfig, Message as _, Offset, TopicPartitionList};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{ConnAck, Packet, PubAckReason, Publish};
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

pub mod processes;

pub const PARTITIONS: i32 = 3;
pub const WAIT: Duration = Duration::from_secs(20);

/// A config for `kafka` on topics of its own, with one TCP listener and the admin
/// endpoint on free loopback ports.
pub fn test_config(kafka: Kafka) -> Config {
    let mut config = Config::new(kafka);
    let prefix = unique_name("t");
    config.topics.messages = format!("{prefix}-messages");
    config.topics.retained = format!("{prefix}-retained");
    config.topics.sessions = format!("{prefix}-sessions");
    config.listeners = vec![Listener {
        name: "mqtt".into(),
        protocol: ListenerProtocol::Tcp,
        address: "127.0.0.1:0".into(),
        path: None,
        tls: None,
        server_reference: None,
    }];
    config.admin.address = "127.0.0.1:0".into();
    config
}

/// Start-up as the binary does it: topics created (one partition), Kafka set-up retried.
pub fn retrying_options() -> StartOptions {
    StartOptions {
        create_topics: true,
        partitions: 1,
        retry_kafka: true,
        metadata_refresh: None,
        client_policy: None,
    }
}

/// Starts a proxy on `config` with Kafka set-up retried (as the binary does) and its admin
/// endpoint on a free port, then reads `/readyz` every half second until `done` says the
/// answer is the one awaited, or 60 s pass. Returns the last answer (status line, headers,
/// body) and the start-up task, still under way.
pub async fn readiness_while_starting(
    mut config: Config,
    done: impl Fn(&str) -> bool,
) -> (String, tokio::task::JoinHandle<Result<Server, server::ServerError>>) {
    let admin_port = processes::free_port();
    config.admin.address = format!("127.0.0.1:{admin_port}");
    let starting = tokio::spawn(server::start(config, retrying_options()));
    let mut answer = String::new();
    for _ in 0..120 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", admin_port)).await else {
            continue;
        };
        s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .expect("write");
        answer.clear();
        s.read_to_string(&mut answer).await.expect("read");
        if done(&answer) {
            break;
        }
    }
    (answer, starting)
}

/// A proxy on loopback with topics of its own.
pub struct TestProxy {
    pub server: Server,
    pub config: Config,
}

impl TestProxy {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts a proxy on fresh topics after `adjust` changed the default config.
    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> Self {
        let bootstrap = kafka().await.unwrap_or_else(|e| panic!("{e}"));
        let mut config = test_config(Kafka::new(bootstrap));
        adjust(&mut config);
        Self::start_on(config).await
    }

    /// Starts a proxy with exactly `config` (its topics are created when missing).
    pub async fn start_on(config: Config) -> Self {
        log_when_asked();
        let options = StartOptions {
            create_topics: true,
            partitions: PARTITIONS,
            retry_kafka: false,
            metadata_refresh: Some(Duration::from_millis(300)),
            client_policy: None,
        };
        let server = server::start(config.clone(), options).await.expect("proxy starts");
        let proxy = Self { server, config };
        proxy.wait_ready().await;
        proxy
    }

    pub fn address(&self) -> SocketAddr {
        self.server.mqtt_addresses[0]
    }

    pub fn bootstrap(&self) -> &str {
        &self.config.kafka.bootstrap_servers
    }

    pub async fn wait_ready(&self) {
        for _ in 0..100 {
            if self.server.readiness.check().is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("proxy not ready: {:?}", self.server.readiness.check());
    }

    /// GET on the admin endpoint: (status, body).
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        let mut stream = TcpStream::connect(self.server.admin_address)
            .await
            .expect("admin connect");
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("admin write");
        let mut response = String::new();
        stream.read_to_string(&mut response).await.expect("admin read");
        let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let body = response.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
        (status, body)
    }

    /// A value of a metric line, e.g. `mqtt_kafka_records_skipped_total{reason="null_key"}`.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let (_, body) = self.admin_get("/metrics").await;
        body.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
    }
}

/// The proxy's log on standard error (shown for failed tests), when `TEST_LOG` names
/// what to log (a `RUST_LOG` filter, e.g. `TEST_LOG=info`); none otherwise.
fn log_when_asked() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if let Ok(filter) = std::env::var("TEST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_test_writer()
                .try_init();
        }
    });
}

/// `n` proxies on the same topics, instance ids `p0`, `p1`, ...: one broker of `n`
/// processes.
pub async fn cluster(n: usize) -> Vec<TestProxy> {
    let first = TestProxy::start_with(|c| c.instance_id = Some("p0".into())).await;
    let mut all = vec![first];
    for i in 1..n {
        let mut config = all[0].config.clone();
        config.instance_id = Some(format!("p{i}"));
        all.push(TestProxy::start_on(config).await);
    }
    all
}

/// An MQTT 5 client (rumqttc) whose incoming packets are collected in order.
pub struct Client {
    pub client: AsyncClient,
    incoming: mpsc::UnboundedReceiver<Result<Packet, String>>,
    pub connack: ConnAck,
    task: tokio::task::JoinHandle<()>,
}

impl Client {
    pub async fn connect(proxy: &TestProxy, id: &str) -> Self {
        Self::connect_with(proxy, id, |_| {}).await
    }

    pub async fn connect_with(proxy: &TestProxy, id: &str, adjust: impl FnOnce(&mut MqttOptions)) -> Self {
        let address = proxy.address();
        let mut options = MqttOptions::new(id, address.ip().to_string(), address.port());
        options.set_keep_alive(Duration::from_secs(30));
        adjust(&mut options);
        Self::connect_options(options).await
    }

    /// Connects with exactly `options` (any listener, any transport, e.g. TLS).
    pub async fn connect_options(options: MqttOptions) -> Self {
        let (client, mut eventloop) = AsyncClient::new(options, 100);
        let (tx, mut incoming) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(packet)) => {
                        if tx.send(Ok(packet)).is_err() {
                            return;
                        }
                    }
                    Ok(Event::Outgoing(_)) => {}
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                        return;
                    }
                }
            }
        });
        let connack = match tokio::time::timeout(WAIT, incoming.recv()).await {
            Ok(Some(Ok(Packet::ConnAck(connack)))) => connack,
            other => panic!("no CONNACK: {other:?}"),
        };
        Self {
            client,
            incoming,
            connack,
            task,
        }
    }

    /// Drops the connection without DISCONNECT, as a client that loses its network does.
    pub async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }

    /// Sends DISCONNECT and waits until the connection is closed.
    pub async fn disconnect(mut self) {
        self.client.disconnect().await.expect("disconnect");
        loop {
            match tokio::time::timeout(WAIT, self.incoming.recv()).await {
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(_)) | None) | Err(_) => return,
            }
        }
    }

    /// Publishes QoS 1 messages number `numbers` on `topic(i)` and waits for every PUBACK
    /// (each must be Success). Payload `i` is `m<i>`, followed by a space and `padding`
    /// bytes if `padding` > 0; [`message_number`] reads `i` back.
    pub async fn publish_acked(
        &mut self,
        numbers: std::ops::Range<usize>,
        topic: impl Fn(usize) -> String,
        padding: usize,
    ) {
        let pad = if padding > 0 {
            format!(" {}", "x".repeat(padding))
        } else {
            String::new()
        };
        let count = numbers.len();
        for i in numbers {
            self.client
                .publish(topic(i), QoS::AtLeastOnce, false, format!("m{i}{pad}"))
                .await
                .expect("publish");
        }
        self.pubacks(count).await;
    }

    /// Waits for `count` PUBACKs, each Success, skipping other packets. `client.publish`
    /// only queues a message: a test that needs it in Kafka (and in the proxy's views)
    /// before it goes on waits for its PUBACK.
    pub async fn pubacks(&mut self, count: usize) {
        let mut acked = 0;
        while acked < count {
            match self.next().await {
                Ok(Packet::PubAck(ack)) => {
                    assert_eq!(ack.reason, PubAckReason::Success, "PUBACK {acked}");
                    acked += 1;
                }
                Ok(_) => {}
                Err(error) => panic!("connection ended after {acked} of {count} PUBACKs: {error}"),
            }
        }
    }

    /// The next incoming packet (or the connection error that ended the client).
    pub async fn next(&mut self) -> Result<Packet, String> {
        tokio::time::timeout(WAIT, self.incoming.recv())
            .await
            .unwrap_or_else(|_| panic!("no packet within {WAIT:?}"))
            .unwrap_or_else(|| Err("client stopped".into()))
    }

    /// The next PUBLISH, skipping acks and other packets.
    pub async fn next_publish(&mut self) -> Publish {
        loop {
            match self.next().await {
                Ok(Packet::Publish(p)) => return p,
                Ok(_) => {}
                Err(e) => panic!("connection ended before a PUBLISH: {e}"),
            }
        }
    }

    /// Waits for the SUBACK of the last SUBSCRIBE and returns its reason codes.
    pub async fn suback(&mut self) -> Vec<rumqttc::v5::mqttbytes::v5::SubscribeReasonCode> {
        loop {
            match self.next().await {
                Ok(Packet::SubAck(ack)) => return ack.return_codes,
                Ok(_) => {}
                Err(e) => panic!("connection ended before SUBACK: {e}"),
            }
        }
    }

    /// Asserts that no PUBLISH arrives for `quiet` while the connection stays up: a
    /// connection that ends meanwhile fails too (a proxy that drops the client delivers
    /// nothing either, which is not what a caller means to check).
    pub async fn expect_no_publish(&mut self, quiet: Duration) {
        let deadline = tokio::time::Instant::now() + quiet;
        loop {
            match tokio::time::timeout_at(deadline, self.incoming.recv()).await {
                Err(_) => return,
                Ok(Some(Ok(Packet::Publish(p)))) => {
                    panic!("unexpected PUBLISH on {:?}", String::from_utf8_lossy(&p.topic))
                }
                Ok(Some(Ok(Packet::Disconnect(d)))) => {
                    panic!("the proxy disconnected the client while no PUBLISH was expected: {d:?}")
                }
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(e))) => panic!("the connection ended while no PUBLISH was expected: {e}"),
                Ok(None) => panic!("the client stopped while no PUBLISH was expected"),
            }
        }
    }
}

/// The number `i` of a payload written by [`Client::publish_acked`].
pub fn message_number(payload: &[u8]) -> usize {
    let text = String::from_utf8_lossy(payload);
    text.strip_prefix('m')
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a numbered message: {text:.40}"))
}

/// Reads records of a Kafka topic from the beginning.
pub struct KafkaReader {
    consumer: StreamConsumer,
    topic: String,
}

impl KafkaReader {
    pub fn new(bootstrap: &str, topic: &str) -> Self {
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", unique_name("reader"))
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer");
        let mut assignment = TopicPartitionList::new();
        for p in 0..PARTITIONS {
            assignment
                .add_partition_offset(topic, p, Offset::Beginning)
                .expect("assignment");
        }
        consumer.assign(&assignment).expect("assign");
        Self {
            consumer,
            topic: topic.to_owned(),
        }
    }

    /// Reads partitions `0..count` from the beginning (for a topic that grew).
    pub fn assign_partitions(&self, count: i32) {
        let mut assignment = TopicPartitionList::new();
        let topic = self.topic.clone();
        for p in 0..count {
            assignment
                .add_partition_offset(&topic, p, Offset::Beginning)
                .expect("assignment");
        }
        self.consumer.assign(&assignment).expect("assign");
    }

    pub async fn next(&self) -> OwnedMessage {
        tokio::time::timeout(WAIT, self.consumer.recv())
            .await
            .expect("a record within the wait")
            .expect("consume")
            .detach()
    }

    /// The next record whose key is `key`.
    pub async fn next_with_key(&self, key: &str) -> OwnedMessage {
        loop {
            let record = self.next().await;
            if record.key() == Some(key.as_bytes()) {
                return record;
            }
        }
    }
}

/// The value of header `name` of a record, as text.
pub fn header(record: &OwnedMessage, name: &str) -> Option<String> {
    use rdkafka::message::Headers;
    let headers = record.headers()?;
    headers
        .iter()
        .find(|h| h.key == name)
        .map(|h| String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned())
}

/// All headers of a record as (name, text) pairs, in order.
pub fn headers(record: &OwnedMessage) -> Vec<(String, String)> {
    use rdkafka::message::Headers;
    record
        .headers()
        .map(|h| {
            h.iter()
                .map(|h| {
                    (
                        h.key.to_owned(),
                        String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A raw TCP peer, for bytes no well-behaved client sends.
pub struct RawPeer {
    pub stream: TcpStream,
}

impl RawPeer {
    pub async fn connect(proxy: &TestProxy) -> Self {
        Self {
            stream: TcpStream::connect(proxy.address()).await.expect("tcp connect"),
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// Reads until the server closes (or the wait ends); returns everything read.
    pub async fn read_until_closed(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        let _ = tokio::time::timeout(WAIT, self.stream.read_to_end(&mut out)).await;
        out
    }

    /// Reads one whole MQTT packet (fixed header included); `None` when the server closed.
    pub async fn read_packet(&mut self) -> Option<Vec<u8>> {
        let read = async {
            let mut packet = vec![self.stream.read_u8().await.ok()?];
            let mut remaining: usize = 0;
            for shift in [0, 7, 14, 21] {
                let byte = self.stream.read_u8().await.ok()?;
                packet.push(byte);
                remaining |= usize::from(byte & 0x7f) << shift;
                if byte & 0x80 == 0 {
                    break;
                }
            }
            let start = packet.len();
            packet.resize(start + remaining, 0);
            self.stream.read_exact(&mut packet[start..]).await.ok()?;
            Some(packet)
        };
        tokio::time::timeout(WAIT, read).await.ok().flatten()
    }

    /// Connects with a v5 CONNECT and returns the CONNACK's reason code.
    pub async fn connect_v5(proxy: &TestProxy, id: &str) -> Self {
        let mut peer = Self::connect(proxy).await;
        peer.send(&Self::v5_connect(id)).await;
        let connack = peer.read_packet().await.expect("CONNACK");
        assert_eq!(
            (connack[0], connack[3]),
            (0x20, 0x00),
            "CONNACK success: {connack:02x?}"
        );
        peer
    }

    /// A v5 CONNECT with client id `id`, clean start, keep alive 30, no properties.
    pub fn v5_connect(id: &str) -> Vec<u8> {
        let mut variable = vec![0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 30, 0];
        variable.extend_from_slice(&u16::try_from(id.len()).expect("short id").to_be_bytes());
        variable.extend_from_slice(id.as_bytes());
        let mut packet = vec![0x10, u8::try_from(variable.len()).expect("short connect")];
        packet.extend(variable);
        packet
    }
}
