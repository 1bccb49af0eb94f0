//! TLS listeners with real clients (rumqttc over rustls) and certificates made by rcgen:
//! which certificates are accepted, certificates rotated on disk the way Kubernetes
//! rotates a mounted Secret, and client certificates (required, and as the identity that
//! guarded routes confine).

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use mqtt_kafka_proxy::config::{
    ClientAuth, ClientIdentity, Config, Listener, ListenerProtocol, Route, RouteCondition, Tls, TopicCondition,
};
use mqtt_kafka_testenv::unique_name;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, Packet, PubAckReason};
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use rumqttc::{TlsConfiguration, Transport};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use support::{Client, TestProxy, WAIT};

/// A certificate authority for one test.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    der: CertificateDer<'static>,
    pem: String,
}

/// A leaf certificate and its key.
struct Leaf {
    der: CertificateDer<'static>,
    cert_pem: String,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA certificate");
        Self {
            pem: cert.pem(),
            der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A certificate for `localhost` (server) or with subject `subject` (client), valid
    /// now unless `expired`.
    fn leaf(&self, names: &[&str], subject: &[(DnType, &str)], expired: bool) -> Leaf {
        let mut params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>()).expect("params");
        for (kind, value) in subject {
            params.distinguished_name.push(kind.clone(), *value);
        }
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("leaf certificate");
        Leaf {
            der: cert.der().clone(),
            cert_pem: cert.pem(),
            key,
        }
    }

    fn server(&self) -> Leaf {
        self.leaf(&["localhost"], &[(DnType::CommonName, "localhost")], false)
    }

    fn client(&self, cn: &str) -> Leaf {
        self.leaf(&[], &[(DnType::CommonName, cn)], false)
    }
}

/// A directory laid out as the kubelet mounts a Secret: `tls.crt` and `tls.key` are
/// symlinks through `..data`, which points at a timestamped directory and is swapped
/// atomically on rotation.
struct SecretDir {
    dir: PathBuf,
    version: usize,
}

impl SecretDir {
    fn new(files: &[(&str, &str)]) -> Self {
        let dir = std::env::temp_dir().join(unique_name("mqtt-tls-secret"));
        std::fs::create_dir_all(&dir).expect("secret dir");
        let mut secret = Self { dir, version: 0 };
        secret.write(files);
        for (name, _) in files {
            std::os::unix::fs::symlink(format!("..data/{name}"), secret.dir.join(name)).expect("file link");
        }
        secret
    }

    /// A new version of the files, then `..data` swapped to it in one rename.
    fn write(&mut self, files: &[(&str, &str)]) {
        self.version += 1;
        let version = format!("..v{}", self.version);
        std::fs::create_dir(self.dir.join(&version)).expect("version dir");
        for (name, contents) in files {
            std::fs::write(self.dir.join(&version).join(name), contents).expect("write");
        }
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&version, &tmp).expect("data link");
        std::fs::rename(&tmp, self.dir.join("..data")).expect("swap ..data");
    }

    fn path(&self, name: &str) -> String {
        path_string(&self.dir.join(name))
    }
}

impl Drop for SecretDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn path_string(path: &Path) -> String {
    path.to_str().expect("UTF-8 temp path").to_owned()
}

fn server_files<'a>(leaf: &'a Leaf, key_pem: &'a str) -> [(&'static str, &'a str); 2] {
    [("tls.crt", leaf.cert_pem.as_str()), ("tls.key", key_pem)]
}

/// A proxy with a TCP listener (index 0) and TLS listener `mqtts` (index 1) using `tls`.
async fn proxy_with_tls(tls: Tls, adjust: impl FnOnce(&mut Config)) -> TestProxy {
    TestProxy::start_with(|config| {
        config.listeners.push(Listener {
            name: "mqtts".into(),
            protocol: ListenerProtocol::Tls,
            address: "127.0.0.1:0".into(),
            path: None,
            tls: Some(tls),
            server_reference: None,
        });
        adjust(config);
    })
    .await
}

/// A client config (ring provider) trusting `ca`, presenting `certificate` if given.
fn client_tls(ca: &CertificateDer<'static>, certificate: Option<&Leaf>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).expect("root certificate");
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots);
    Arc::new(match certificate {
        None => builder.with_no_client_auth(),
        Some(leaf) => builder
            .with_client_auth_cert(
                vec![leaf.der.clone()],
                PrivateKeyDer::try_from(leaf.key.serialize_der()).expect("client key"),
            )
            .expect("client certificate"),
    })
}

fn options(proxy: &TestProxy, id: &str, tls: Arc<rustls::ClientConfig>) -> MqttOptions {
    options_at(proxy.server.mqtt_addresses[1].port(), id, tls)
}

fn options_at(port: u16, id: &str, tls: Arc<rustls::ClientConfig>) -> MqttOptions {
    // "localhost", not the IP: the certificate names the host, and rustls checks it.
    let mut options = MqttOptions::new(id, "localhost", port);
    options.set_keep_alive(Duration::from_secs(30));
    options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
    options
}

/// Connects over TLS: the CONNACK reason, or the error that ended the attempt.
async fn try_connect(proxy: &TestProxy, id: &str, tls: Arc<rustls::ClientConfig>) -> Result<ConnectReturnCode, String> {
    let (_client, mut eventloop) = AsyncClient::new(options(proxy, id, tls), 10);
    loop {
        match tokio::time::timeout(WAIT, eventloop.poll()).await {
            Err(_) => return Err("no answer in time".into()),
            Ok(Err(error)) => return Err(error.to_string()),
            Ok(Ok(Event::Incoming(Packet::ConnAck(connack)))) => return Ok(connack.code),
            Ok(Ok(_)) => {}
        }
    }
}

async fn connect(proxy: &TestProxy, id: &str, tls: Arc<rustls::ClientConfig>) -> Client {
    let client = Client::connect_options(options(proxy, id, tls)).await;
    assert_eq!(client.connack.code, ConnectReturnCode::Success);
    client
}

#[tokio::test]
async fn the_right_ca_connects_and_a_wrong_ca_or_an_expired_server_certificate_is_refused() {
    let (ca, other) = (Ca::new("server CA"), Ca::new("other CA"));
    let expired_ca = Ca::new("expired CA");
    let (good, expired) = (ca.server(), expired_ca.leaf(&["localhost"], &[], true));
    let (good_key, expired_key) = (good.key.serialize_pem(), expired.key.serialize_pem());
    let good_files = SecretDir::new(&server_files(&good, &good_key));
    let expired_files = SecretDir::new(&server_files(&expired, &expired_key));
    let proxy = proxy_with_tls(
        Tls::new(good_files.path("tls.crt"), good_files.path("tls.key")),
        |config| {
            let mut expired_listener = config.listeners[1].clone();
            expired_listener.name = "expired".into();
            expired_listener.tls = Some(Tls::new(expired_files.path("tls.crt"), expired_files.path("tls.key")));
            config.listeners.push(expired_listener);
        },
    )
    .await;

    assert_eq!(
        try_connect(&proxy, "tls-right-ca", client_tls(&ca.der, None)).await,
        Ok(ConnectReturnCode::Success)
    );
    let wrong = try_connect(&proxy, "tls-wrong-ca", client_tls(&other.der, None)).await;
    assert!(wrong.as_ref().is_err_and(|e| e.contains("UnknownIssuer")), "{wrong:?}");

    let expired_options = options_at(
        proxy.server.mqtt_addresses[2].port(),
        "tls-expired",
        client_tls(&expired_ca.der, None),
    );
    let (_client, mut eventloop) = AsyncClient::new(expired_options, 10);
    let error = tokio::time::timeout(WAIT, eventloop.poll())
        .await
        .expect("an answer")
        .expect_err("an expired certificate must be refused");
    assert!(error.to_string().contains("certificate expired"), "{error}");
}

#[tokio::test]
async fn a_certificate_rotated_on_disk_is_served_to_the_next_connection_while_the_old_connection_stays_up() {
    let (old_ca, new_ca) = (Ca::new("old CA"), Ca::new("new CA"));
    let (old, new) = (old_ca.server(), new_ca.server());
    let (old_key, new_key) = (old.key.serialize_pem(), new.key.serialize_pem());
    let mut secret = SecretDir::new(&server_files(&old, &old_key));
    let mut tls = Tls::new(secret.path("tls.crt"), secret.path("tls.key"));
    tls.reload_seconds = 1;
    let proxy = proxy_with_tls(tls, |_| {}).await;
    let expiry = "mqtt_kafka_tls_certificate_expiry_timestamp_seconds{listener=\"mqtts\"}";
    // rcgen's default validity ends on 4096-01-01.
    assert_eq!(proxy.metric(expiry).await, Some(67_090_118_400.0));

    let mut before = connect(&proxy, "rotate-before", client_tls(&old_ca.der, None)).await;
    before
        .client
        .subscribe("rotate/to-old", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    before.suback().await;
    let refused = try_connect(&proxy, "rotate-too-early", client_tls(&new_ca.der, None)).await;
    assert!(refused.is_err(), "the new certificate is not served yet: {refused:?}");

    secret.write(&server_files(&new, &new_key));
    // Read again within a second or two; until then new clients get the old certificate.
    let deadline = tokio::time::Instant::now() + WAIT;
    while try_connect(&proxy, "rotate-probe", client_tls(&new_ca.der, None))
        .await
        .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the rotated certificate is never served"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let stale = try_connect(&proxy, "rotate-stale", client_tls(&old_ca.der, None)).await;
    assert!(stale.is_err(), "the old certificate is still served: {stale:?}");
    let reloads = "mqtt_kafka_tls_reloads_total{listener=\"mqtts\",result=\"success\"}";
    assert_eq!(proxy.metric(reloads).await, Some(1.0));

    // The connection made before the rotation still works both ways.
    let mut after = connect(&proxy, "rotate-after", client_tls(&new_ca.der, None)).await;
    after
        .client
        .subscribe("rotate/to-new", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    after.suback().await;
    before
        .client
        .publish("rotate/to-new", QoS::AtLeastOnce, false, "from the old connection")
        .await
        .expect("publish");
    let p = after.next_publish().await;
    assert_eq!(&p.payload[..], b"from the old connection");
    after
        .client
        .publish("rotate/to-old", QoS::AtLeastOnce, false, "to the old connection")
        .await
        .expect("publish");
    let p = before.next_publish().await;
    assert_eq!(&p.payload[..], b"to the old connection");
}

#[tokio::test]
async fn a_rotated_certificate_that_does_not_parse_keeps_the_old_one_and_is_counted() {
    let ca = Ca::new("server CA");
    let leaf = ca.server();
    let key = leaf.key.serialize_pem();
    let mut secret = SecretDir::new(&server_files(&leaf, &key));
    let mut tls = Tls::new(secret.path("tls.crt"), secret.path("tls.key"));
    tls.reload_seconds = 1;
    let proxy = proxy_with_tls(tls, |_| {}).await;

    secret.write(&[
        ("tls.crt", "-----BEGIN CERTIFICATE-----\nnot base64 at all\n"),
        ("tls.key", &key),
    ]);
    let failures = "mqtt_kafka_tls_reloads_total{listener=\"mqtts\",result=\"failure\"}";
    let deadline = tokio::time::Instant::now() + WAIT;
    while proxy.metric(failures).await != Some(1.0) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the unusable rotation is never counted"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Counted once, and new clients still get the last good certificate.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(proxy.metric(failures).await, Some(1.0));
    assert_eq!(
        try_connect(&proxy, "bad-rotation", client_tls(&ca.der, None)).await,
        Ok(ConnectReturnCode::Success)
    );
}

/// Server certificate, key and client CA in one Secret-like directory.
fn mutual_tls(server_ca: &Ca, client_ca: &Ca, auth: ClientAuth) -> (SecretDir, Tls) {
    let leaf = server_ca.server();
    let key = leaf.key.serialize_pem();
    let secret = SecretDir::new(&[
        ("tls.crt", &leaf.cert_pem),
        ("tls.key", &key),
        ("ca.crt", &client_ca.pem),
    ]);
    let mut tls = Tls::new(secret.path("tls.crt"), secret.path("tls.key"));
    tls.client_ca_file = Some(secret.path("ca.crt"));
    tls.client_auth = Some(auth);
    (secret, tls)
}

#[tokio::test]
async fn a_required_client_certificate_must_be_sent_and_signed_by_the_client_ca() {
    let (server_ca, client_ca, other_ca) = (Ca::new("server CA"), Ca::new("client CA"), Ca::new("other CA"));
    let (_secret, tls) = mutual_tls(&server_ca, &client_ca, ClientAuth::Required);
    let proxy = proxy_with_tls(tls, |_| {}).await;

    let without = try_connect(&proxy, "mtls-none", client_tls(&server_ca.der, None)).await;
    assert!(without.is_err(), "served without a client certificate: {without:?}");
    let foreign = other_ca.client("device-1");
    let foreign = try_connect(&proxy, "mtls-foreign", client_tls(&server_ca.der, Some(&foreign))).await;
    assert!(foreign.is_err(), "served with a certificate of another CA: {foreign:?}");
    let expired = client_ca.leaf(&[], &[(DnType::CommonName, "device-1")], true);
    let expired = try_connect(&proxy, "mtls-expired", client_tls(&server_ca.der, Some(&expired))).await;
    assert!(
        expired.is_err(),
        "served with an expired client certificate: {expired:?}"
    );

    let device = client_ca.client("device-1");
    assert_eq!(
        try_connect(&proxy, "mtls-device", client_tls(&server_ca.der, Some(&device))).await,
        Ok(ConnectReturnCode::Success)
    );
}

#[tokio::test]
async fn an_optional_client_certificate_may_be_left_out_but_not_be_foreign() {
    let (server_ca, client_ca, other_ca) = (Ca::new("server CA"), Ca::new("client CA"), Ca::new("other CA"));
    let (_secret, tls) = mutual_tls(&server_ca, &client_ca, ClientAuth::Optional);
    let proxy = proxy_with_tls(tls, |_| {}).await;
    assert_eq!(
        try_connect(&proxy, "optional-none", client_tls(&server_ca.der, None)).await,
        Ok(ConnectReturnCode::Success)
    );
    let foreign = other_ca.client("device-1");
    let foreign = try_connect(&proxy, "optional-foreign", client_tls(&server_ca.der, Some(&foreign))).await;
    assert!(foreign.is_err(), "served with a certificate of another CA: {foreign:?}");
}

#[tokio::test]
async fn the_client_certificate_common_name_is_the_identity_guarded_routes_confine() {
    let (server_ca, client_ca) = (Ca::new("server CA"), Ca::new("client CA"));
    let (_secret, mut tls) = mutual_tls(&server_ca, &client_ca, ClientAuth::Required);
    tls.client_identity = Some(ClientIdentity::SubjectCn);
    let proxy = proxy_with_tls(tls, |config| {
        config.routes = vec![Route {
            when: vec![RouteCondition::Publish(vec![TopicCondition {
                topic: "devices/{identity}/#".into(),
            }])],
            with: None,
            guarded: [("tls".to_owned(), Vec::new())].into(),
        }];
    })
    .await;

    let device = client_ca.client("device-7");
    let mut client = connect(&proxy, "cn-device", client_tls(&server_ca.der, Some(&device))).await;
    for (topic, expected) in [
        ("devices/device-7/temperature", PubAckReason::Success),
        ("devices/device-8/temperature", PubAckReason::NotAuthorized),
    ] {
        client
            .client
            .publish(topic, QoS::AtLeastOnce, false, "21.5")
            .await
            .expect("publish");
        loop {
            match client.next().await {
                Ok(Packet::PubAck(ack)) => {
                    assert_eq!(ack.reason, expected, "{topic}");
                    break;
                }
                Ok(_) => {}
                Err(e) => panic!("connection ended: {e}"),
            }
        }
    }
}

/// An MQTT 5 peer over wss (tokio-rustls + tungstenite) with a client certificate, reading
/// whole packets from the binary frames.
struct WssPeer {
    ws: tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
    buffer: Vec<u8>,
}

impl WssPeer {
    async fn open(port: u16, tls: Arc<rustls::ClientConfig>) -> Result<Self, String> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| e.to_string())?;
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
        let stream = tokio_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        let mut request = format!("wss://localhost:{port}/mqtt")
            .into_client_request()
            .expect("request");
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            tokio_tungstenite::tungstenite::http::HeaderValue::from_static("mqtt"),
        );
        // With TLS 1.3 a refused client certificate shows up here, at the first read.
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::client_async(request, stream))
            .await
            .map_err(|_| "no upgrade in time".to_owned())?
            .map_err(|e| e.to_string())?;
        Ok(Self { ws, buffer: Vec::new() })
    }

    async fn send(&mut self, packet: Vec<u8>) {
        use futures::SinkExt;
        self.ws
            .send(tokio_tungstenite::tungstenite::Message::Binary(packet.into()))
            .await
            .expect("send");
    }

    /// The next whole packet (small packets only: one-byte remaining length).
    async fn packet(&mut self) -> Vec<u8> {
        use futures::StreamExt;
        loop {
            if self.buffer.len() >= 2 && self.buffer.len() >= 2 + usize::from(self.buffer[1]) {
                let len = 2 + usize::from(self.buffer[1]);
                return self.buffer.drain(..len).collect();
            }
            match tokio::time::timeout(WAIT, self.ws.next()).await {
                Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Binary(data)))) => {
                    self.buffer.extend_from_slice(&data)
                }
                Ok(Some(Ok(_))) => {}
                other => panic!("connection ended: {other:?}"),
            }
        }
    }
}

/// MQTT 5 PUBLISH QoS 1 (packet id `id`, no properties).
fn publish_qos1(topic: &str, id: u16, payload: &[u8]) -> Vec<u8> {
    let mut variable = u16::try_from(topic.len()).expect("short topic").to_be_bytes().to_vec();
    variable.extend_from_slice(topic.as_bytes());
    variable.extend_from_slice(&id.to_be_bytes());
    variable.push(0);
    variable.extend_from_slice(payload);
    let mut packet = vec![0x32, u8::try_from(variable.len()).expect("short publish")];
    packet.extend(variable);
    packet
}

#[tokio::test]
async fn over_wss_a_client_certificate_is_required_and_its_common_name_is_the_identity() {
    let (server_ca, client_ca) = (Ca::new("server CA"), Ca::new("client CA"));
    let (_secret, mut tls) = mutual_tls(&server_ca, &client_ca, ClientAuth::Required);
    tls.client_identity = Some(ClientIdentity::SubjectCn);
    let proxy = TestProxy::start_with(|config| {
        config.listeners.push(Listener {
            name: "wss".into(),
            protocol: ListenerProtocol::Websocket,
            address: "127.0.0.1:0".into(),
            path: None,
            tls: Some(tls),
            server_reference: None,
        });
        config.routes = vec![Route {
            when: vec![RouteCondition::Publish(vec![TopicCondition {
                topic: "devices/{identity}/#".into(),
            }])],
            with: None,
            guarded: [("tls".to_owned(), Vec::new())].into(),
        }];
    })
    .await;
    let port = proxy.server.mqtt_addresses[1].port();

    let refused = match WssPeer::open(port, client_tls(&server_ca.der, None)).await {
        Err(error) => error,
        Ok(mut peer) => {
            use futures::StreamExt;
            peer.send(support::RawPeer::v5_connect("wss-anonymous")).await;
            format!("{:?}", tokio::time::timeout(WAIT, peer.ws.next()).await)
        }
    };
    assert!(
        refused.to_lowercase().contains("certificate"),
        "served over wss without a client certificate: {refused}"
    );

    let device = client_ca.client("device-3");
    let mut peer = WssPeer::open(port, client_tls(&server_ca.der, Some(&device)))
        .await
        .expect("wss with a client certificate");
    peer.send(support::RawPeer::v5_connect("wss-device")).await;
    let connack = peer.packet().await;
    assert_eq!((connack[0], connack[3]), (0x20, 0x00), "CONNACK {connack:02x?}");
    for (id, topic, reason) in [(1u16, "devices/device-3/t", 0x00u8), (2, "devices/device-4/t", 0x87)] {
        peer.send(publish_qos1(topic, id, b"x")).await;
        let puback = peer.packet().await;
        assert_eq!(puback[0], 0x40, "PUBACK {puback:02x?}");
        assert_eq!(u16::from_be_bytes([puback[2], puback[3]]), id);
        let code = if puback[1] >= 3 { puback[4] } else { 0x00 };
        assert_eq!(code, reason, "{topic}: PUBACK {puback:02x?}");
    }
}
