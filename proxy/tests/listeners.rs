//! The TLS and WebSocket listeners: MQTT 5 over TLS (rumqttc with a ring client config),
//! MQTT over WebSocket with packets cut across frames and batched into one, the HTTP
//! refusals of the upgrade, and start-up failing on unusable TLS files.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use mqtt_kafka_proxy::config::{Config, Kafka, Listener, ListenerProtocol, Tls};
use mqtt_kafka_proxy::server::{self, StartOptions};
use mqtt_kafka_testenv::unique_name;
use rumqttc::v5::MqttOptions;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::{TlsConfiguration, Transport};
use rustls::pki_types::CertificateDer;
use support::{Client, RawPeer, TestProxy, WAIT};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// A self-signed certificate for `localhost` written as PEM files into a directory of its
/// own, removed on drop.
struct CertFiles {
    dir: PathBuf,
    tls: Tls,
    cert_der: CertificateDer<'static>,
}

impl CertFiles {
    fn new() -> Self {
        let generated =
            rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("self-signed certificate");
        let dir = std::env::temp_dir().join(unique_name("mqtt-tls"));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let cert_file = dir.join("tls.crt");
        let key_file = dir.join("tls.key");
        std::fs::write(&cert_file, generated.cert.pem()).expect("write cert");
        std::fs::write(&key_file, generated.signing_key.serialize_pem()).expect("write key");
        Self {
            tls: Tls::new(path_string(&cert_file), path_string(&key_file)),
            cert_der: generated.cert.der().clone(),
            dir,
        }
    }

    /// A client config (ring provider) that trusts only this certificate.
    fn client_config(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert_der.clone()).expect("root certificate");
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        Arc::new(config)
    }
}

impl Drop for CertFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn path_string(path: &Path) -> String {
    path.to_str().expect("UTF-8 temp path").to_owned()
}

fn listener(name: &str, protocol: ListenerProtocol, tls: Option<Tls>) -> Listener {
    Listener {
        name: name.into(),
        protocol,
        address: "127.0.0.1:0".into(),
        path: None,
        tls,
        server_reference: None,
    }
}

/// A proxy with a TCP (index 0, what `TestProxy::address` and `Client::connect` use), a TLS
/// (index 1) and a WebSocket listener on `/mqtt` (index 2).
async fn proxy_with_all_listeners(certs: &CertFiles) -> TestProxy {
    TestProxy::start_with(|config| {
        config
            .listeners
            .push(listener("mqtts", ListenerProtocol::Tls, Some(certs.tls.clone())));
        config.listeners.push(listener("ws", ListenerProtocol::Websocket, None));
        // Short, so that the silent-peer check below does not wait long.
        config.mqtt.connect_timeout = 2;
    })
    .await
}

fn tls_address(proxy: &TestProxy) -> SocketAddr {
    proxy.server.mqtt_addresses[1]
}

fn ws_address(proxy: &TestProxy) -> SocketAddr {
    proxy.server.mqtt_addresses[2]
}

async fn connect_tls(proxy: &TestProxy, certs: &CertFiles, id: &str) -> Client {
    // "localhost", not the IP: the certificate names the host, and rustls checks it.
    let mut options = MqttOptions::new(id, "localhost", tls_address(proxy).port());
    options.set_keep_alive(Duration::from_secs(30));
    options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
        certs.client_config(),
    )));
    Client::connect_options(options).await
}

#[tokio::test]
async fn mqtt5_over_tls_interoperates_with_tcp_and_a_silent_peer_blocks_nothing() {
    let certs = CertFiles::new();
    let proxy = proxy_with_all_listeners(&certs).await;
    // A peer that opens the TLS port and never says anything: it must neither hold up the
    // accept loop nor stay connected past the handshake timeout.
    let mut silent = TcpStream::connect(tls_address(&proxy)).await.expect("tcp connect");

    let mut tcp_sub = Client::connect(&proxy, "tls-tcp-sub").await;
    tcp_sub
        .client
        .subscribe("tls/up", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    tcp_sub.suback().await;

    let mut tls_client = connect_tls(&proxy, &certs, "tls-client").await;
    assert_eq!(
        tls_client.connack.code,
        rumqttc::v5::mqttbytes::v5::ConnectReturnCode::Success
    );
    tls_client
        .client
        .subscribe("tls/down", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    tls_client.suback().await;

    tls_client
        .client
        .publish("tls/up", QoS::AtLeastOnce, false, "over tls")
        .await
        .expect("publish");
    let p = tcp_sub.next_publish().await;
    assert_eq!((&p.topic[..], &p.payload[..]), (&b"tls/up"[..], &b"over tls"[..]));

    tcp_sub
        .client
        .publish("tls/down", QoS::AtLeastOnce, false, "to tls")
        .await
        .expect("publish");
    let p = tls_client.next_publish().await;
    assert_eq!((&p.topic[..], &p.payload[..]), (&b"tls/down"[..], &b"to tls"[..]));

    let mut rest = Vec::new();
    let closed = tokio::time::timeout(WAIT, silent.read_to_end(&mut rest)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "silent TLS peer still connected"
    );
}

#[tokio::test]
async fn a_client_that_does_not_trust_the_certificate_is_not_served() {
    let certs = CertFiles::new();
    let other = CertFiles::new();
    let proxy = proxy_with_all_listeners(&certs).await;
    let mut options = MqttOptions::new("tls-untrusting", "localhost", tls_address(&proxy).port());
    options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
        other.client_config(),
    )));
    let (_client, mut eventloop) = rumqttc::v5::AsyncClient::new(options, 10);
    let error = tokio::time::timeout(WAIT, eventloop.poll())
        .await
        .expect("an answer")
        .expect_err("handshake must fail");
    assert!(error.to_string().to_lowercase().contains("tls"), "{error}");
}

// --- WebSocket -------------------------------------------------------------------------

/// Variable byte integer (MQTT remaining length).
fn varint(mut n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let mut byte = u8::try_from(n % 128).expect("7 bits");
        n /= 128;
        if n > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if n == 0 {
            return out;
        }
    }
}

fn packet(first: u8, variable: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    out.extend(varint(variable.len()));
    out.extend_from_slice(variable);
    out
}

fn string(s: &str) -> Vec<u8> {
    let mut out = u16::try_from(s.len()).expect("short").to_be_bytes().to_vec();
    out.extend_from_slice(s.as_bytes());
    out
}

/// v5 SUBSCRIBE of one filter at QoS 1, no properties.
fn subscribe_v5(packet_id: u16, filter: &str) -> Vec<u8> {
    let mut body = packet_id.to_be_bytes().to_vec();
    body.push(0); // properties
    body.extend(string(filter));
    body.push(0x01); // QoS 1
    packet(0x82, &body)
}

/// v5 PUBLISH, QoS 1 when `packet_id` is given, else QoS 0; no properties.
fn publish_v5(topic: &str, packet_id: Option<u16>, payload: &[u8]) -> Vec<u8> {
    let mut body = string(topic);
    if let Some(id) = packet_id {
        body.extend(id.to_be_bytes());
    }
    body.push(0); // properties
    body.extend_from_slice(payload);
    packet(if packet_id.is_some() { 0x32 } else { 0x30 }, &body)
}

/// An MQTT peer over a real WebSocket connection, reading packets whatever the framing.
struct WsPeer {
    ws: WebSocketStream<TcpStream>,
    inbox: Vec<u8>,
}

/// The upgrade request for `path` on `address`, offering `protocol` when given.
async fn ws_connect(
    address: SocketAddr,
    path: &str,
    protocol: Option<&str>,
) -> Result<
    (
        WebSocketStream<TcpStream>,
        tokio_tungstenite::tungstenite::handshake::client::Response,
    ),
    WsError,
> {
    let mut request = format!("ws://{address}{path}").into_client_request().expect("request");
    if let Some(protocol) = protocol {
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_str(protocol).expect("header"),
        );
    }
    let stream = TcpStream::connect(address).await.expect("tcp connect");
    tokio_tungstenite::client_async(request, stream).await
}

impl WsPeer {
    async fn open(proxy: &TestProxy) -> Self {
        let (ws, response) = ws_connect(ws_address(proxy), "/mqtt", Some("mqtt"))
            .await
            .expect("WebSocket upgrade");
        assert_eq!(
            response
                .headers()
                .get("sec-websocket-protocol")
                .map(HeaderValue::as_bytes),
            Some(&b"mqtt"[..]),
            "sub-protocol echoed"
        );
        Self { ws, inbox: Vec::new() }
    }

    /// Sends each slice as one binary frame.
    async fn send_frames(&mut self, frames: &[&[u8]]) {
        for frame in frames {
            self.ws
                .send(Message::Binary(frame.to_vec().into()))
                .await
                .expect("send frame");
        }
    }

    /// The next whole MQTT packet, however the server framed it; `None` once closed.
    async fn next_packet(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Some(len) = whole_packet_len(&self.inbox) {
                return Some(self.inbox.drain(..len).collect());
            }
            match tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a frame within the wait")
            {
                Some(Ok(Message::Binary(data))) => self.inbox.extend_from_slice(&data),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(other)) => panic!("unexpected WebSocket message {other:?}"),
                Some(Err(_)) | None => return None,
            }
        }
    }

    /// The next packet, which must be of MQTT packet type `kind`.
    async fn expect_packet(&mut self, kind: u8) -> Vec<u8> {
        let packet = self.next_packet().await.expect("a packet");
        assert_eq!(packet[0] >> 4, kind, "packet type of {packet:02x?}");
        packet
    }
}

/// Length of the first packet in `bytes` when it is complete.
fn whole_packet_len(bytes: &[u8]) -> Option<usize> {
    let mut remaining = 0usize;
    for (i, byte) in bytes.iter().enumerate().skip(1).take(4) {
        remaining |= usize::from(byte & 0x7f) << (7 * (i - 1));
        if byte & 0x80 == 0 {
            let total = i + 1 + remaining;
            return (bytes.len() >= total).then_some(total);
        }
    }
    None
}

/// Topic and payload of a short v5 PUBLISH packet (one length byte, properties shorter than
/// 128 bytes; QoS from its first byte).
fn publish_parts(packet: &[u8]) -> (String, Vec<u8>) {
    assert!(packet[1] & 0x80 == 0, "short packet: {packet:02x?}");
    let body = &packet[2..];
    let topic_len = usize::from(u16::from_be_bytes([body[0], body[1]]));
    let topic = String::from_utf8(body[2..2 + topic_len].to_vec()).expect("topic");
    let mut at = 2 + topic_len;
    if (packet[0] >> 1) & 0x03 > 0 {
        at += 2; // packet id
    }
    assert!(body[at] & 0x80 == 0, "short properties");
    at += 1 + usize::from(body[at]);
    (topic, body[at..].to_vec())
}

#[tokio::test]
async fn mqtt5_over_websocket_with_packets_across_frames_and_frames_with_two_packets() {
    let certs = CertFiles::new();
    let proxy = proxy_with_all_listeners(&certs).await;
    let mut peer = WsPeer::open(&proxy).await;

    // CONNECT cut after its first byte, SUBSCRIBE cut into 3-byte frames.
    let connect = RawPeer::v5_connect("ws-peer");
    peer.send_frames(&[&connect[..1], &connect[1..]]).await;
    let connack = peer.expect_packet(2).await;
    assert_eq!(connack[3], 0x00, "CONNACK success: {connack:02x?}");

    let subscribe = subscribe_v5(1, "ws/#");
    let pieces: Vec<&[u8]> = subscribe.chunks(3).collect();
    peer.send_frames(&pieces).await;
    let suback = peer.expect_packet(9).await;
    assert_eq!(suback.last(), Some(&0x01), "granted QoS 1: {suback:02x?}");

    // A TCP subscriber on the same proxy, to see the WebSocket client's publishes.
    let mut tcp_sub = Client::connect(&proxy, "ws-tcp-sub").await;
    tcp_sub
        .client
        .subscribe("ws/+", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    tcp_sub.suback().await;

    // One frame holding a whole QoS 1 PUBLISH and the start of a QoS 0 one, whose rest
    // follows in a second frame.
    let first = publish_v5("ws/a", Some(7), b"one");
    let second = publish_v5("ws/b", None, b"two");
    let mut batch = first.clone();
    batch.extend_from_slice(&second[..4]);
    peer.send_frames(&[&batch, &second[4..]]).await;

    let mut puback = false;
    let mut delivered = Vec::new();
    while !puback || delivered.len() < 2 {
        let packet = peer.next_packet().await.expect("packet");
        match packet[0] >> 4 {
            4 => {
                assert_eq!(&packet[2..4], &7u16.to_be_bytes(), "PUBACK of packet 7");
                puback = true;
            }
            3 => {
                if (packet[0] >> 1) & 0x03 == 1 {
                    // Acknowledge QoS 1 deliveries so the in-flight window stays open
                    // (short packet: one length byte, topic shorter than 256 bytes).
                    let id = &packet[4 + usize::from(packet[3])..][..2];
                    peer.send_frames(&[&[0x40, 0x02, id[0], id[1]]]).await;
                }
                delivered.push(publish_parts(&packet));
            }
            other => panic!("unexpected packet type {other}: {packet:02x?}"),
        }
    }
    delivered.sort();
    assert_eq!(
        delivered,
        vec![
            ("ws/a".to_owned(), b"one".to_vec()),
            ("ws/b".to_owned(), b"two".to_vec())
        ]
    );

    let mut seen_over_tcp = Vec::new();
    for _ in 0..2 {
        let p = tcp_sub.next_publish().await;
        seen_over_tcp.push((String::from_utf8_lossy(&p.topic).into_owned(), p.payload.to_vec()));
    }
    seen_over_tcp.sort();
    assert_eq!(seen_over_tcp, delivered);

    // From TCP to the WebSocket client too.
    tcp_sub
        .client
        .publish("ws/c", QoS::AtMostOnce, false, "three")
        .await
        .expect("publish");
    let packet = peer.expect_packet(3).await;
    assert_eq!(publish_parts(&packet), ("ws/c".to_owned(), b"three".to_vec()));

    // Ping frames are answered by the WebSocket layer without disturbing MQTT.
    peer.ws.send(Message::Ping(b"hi".to_vec().into())).await.expect("ping");
    peer.send_frames(&[&[0xC0, 0x00]]).await; // PINGREQ
    let _ = peer.expect_packet(13).await; // PINGRESP
}

#[tokio::test]
async fn a_text_frame_closes_the_websocket_with_a_protocol_error() {
    let certs = CertFiles::new();
    let proxy = proxy_with_all_listeners(&certs).await;
    let mut peer = WsPeer::open(&proxy).await;
    peer.send_frames(&[&RawPeer::v5_connect("ws-text")]).await;
    peer.expect_packet(2).await;
    peer.ws.send(Message::text("not mqtt")).await.expect("send text");
    loop {
        match tokio::time::timeout(WAIT, peer.ws.next())
            .await
            .expect("close within the wait")
        {
            Some(Ok(Message::Close(frame))) => {
                assert_eq!(frame.map(|f| f.code), Some(CloseCode::Protocol));
                return;
            }
            Some(Ok(_)) => {}
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn websocket_upgrade_refusals() {
    let certs = CertFiles::new();
    let proxy = proxy_with_all_listeners(&certs).await;
    let status = |result: Result<_, WsError>| match result {
        Err(WsError::Http(response)) => response.status().as_u16(),
        Err(other) => panic!("expected an HTTP refusal, got {other}"),
        Ok(_) => panic!("upgrade accepted"),
    };
    assert_eq!(
        status(ws_connect(ws_address(&proxy), "/other", Some("mqtt")).await),
        404
    );
    assert_eq!(status(ws_connect(ws_address(&proxy), "/mqtt", None).await), 400);
    assert_eq!(status(ws_connect(ws_address(&proxy), "/mqtt", Some("chat")).await), 400);
}

#[tokio::test]
async fn unusable_tls_files_fail_start_up_naming_the_file() {
    let certs = CertFiles::new();
    let garbage = certs.dir.join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").expect("write");
    let missing = certs.dir.join("missing.key");
    let cases = [
        (
            Tls::new(path_string(&garbage), certs.tls.key_file.clone()),
            format!(
                "TLS certificate file {} holds no PEM certificate",
                path_string(&garbage)
            ),
        ),
        (
            Tls::new(certs.tls.cert_file.clone(), path_string(&missing)),
            format!("cannot read TLS private key file {}", path_string(&missing)),
        ),
    ];
    for (tls, expected) in cases {
        // The TLS files are read before Kafka is contacted: no Kafka needed at this address.
        let mut config = Config::new(Kafka::new("127.0.0.1:9"));
        config.admin.address = "127.0.0.1:0".into();
        config.listeners = vec![listener("mqtts", ListenerProtocol::Tls, Some(tls))];
        let started = tokio::time::timeout(WAIT, server::start(config, StartOptions::default()))
            .await
            .expect("start-up ends");
        match started {
            Ok(_) => panic!("started with unusable TLS files"),
            Err(e) => {
                let message = e.to_string();
                assert!(message.starts_with("listener mqtts: "), "{message}");
                assert!(message.contains(&expected), "{message} lacks {expected:?}");
            }
        }
    }
}

#[tokio::test]
async fn a_websocket_listener_with_tls_serves_mqtt_over_wss() {
    let certs = CertFiles::new();
    let proxy = TestProxy::start_with(|config| {
        config
            .listeners
            .push(listener("wss", ListenerProtocol::Websocket, Some(certs.tls.clone())));
    })
    .await;
    let address = proxy.server.mqtt_addresses[1];
    let tcp = TcpStream::connect(address).await.expect("tcp connect");
    let connector = tokio_rustls::TlsConnector::from(certs.client_config());
    let server_name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let tls = connector.connect(server_name, tcp).await.expect("TLS handshake");
    let mut request = format!("wss://localhost:{}/mqtt", address.port())
        .into_client_request()
        .expect("request");
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("mqtt"));
    let (ws, _) = tokio_tungstenite::client_async(request, tls)
        .await
        .expect("WebSocket upgrade over TLS");
    let (mut sink, mut stream) = ws.split();
    sink.send(Message::Binary(RawPeer::v5_connect("wss-client").into()))
        .await
        .expect("send CONNECT");
    let frame = tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("a frame")
        .expect("open")
        .expect("frame");
    let Message::Binary(connack) = frame else {
        panic!("not binary: {frame:?}")
    };
    assert_eq!(
        (connack[0], connack[3]),
        (0x20, 0x00),
        "CONNACK success over wss: {connack:02x?}"
    );
}
