//! The JWT guard and authorization rules against real clients and Kafka: each refusal with
//! the reason code MQTT gives it, and nothing refused in Kafka.

mod support;

use std::time::Duration;

use base64::Engine as _;
use jsonwebtoken::{EncodingKey, Header};
use mqtt_kafka_proxy::config::{
    Authorization, DeniedAction, DenyRule, JwtGuard, Route, RouteCondition, TokenField, TopicCondition,
};
use rdkafka::Message as _;
use serde_json::json;
use support::processes::{parse_publish, publish_packet, subscribe_qos};
use support::{KafkaReader, RawPeer, TestProxy};

const ISSUER: &str = "https://issuer.test";

/// An Ed25519 signing key and its public JWK.
struct SigningKey {
    kid: String,
    pkcs8: Vec<u8>,
    public: Vec<u8>,
}

impl SigningKey {
    fn new(kid: &str) -> Self {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("key");
        Self {
            kid: kid.into(),
            pkcs8: pair.serialize_der(),
            public: pair.public_key_raw().to_vec(),
        }
    }

    fn token(&self, claims: serde_json::Value) -> String {
        let mut header = Header::new(jsonwebtoken::Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, &claims, &EncodingKey::from_ed_der(&self.pkcs8)).expect("token")
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0))
}

/// Claims of a device `sub` with `scope`, valid for `secs` more seconds.
fn claims(sub: &str, scope: &str, secs: i64) -> serde_json::Value {
    json!({"iss": ISSUER, "aud": "mqtt", "sub": sub, "scope": scope, "exp": now() + secs})
}

fn condition_publish(topic: &str) -> RouteCondition {
    RouteCondition::Publish(vec![TopicCondition { topic: topic.into() }])
}

fn condition_subscribe(topic: &str) -> RouteCondition {
    RouteCondition::Subscribe(vec![TopicCondition { topic: topic.into() }])
}

/// A proxy whose guard trusts `key`: devices publish only under `devices/{identity}/` and
/// read their own commands; `internal/#` is closed to everyone.
async fn guarded_proxy(key: &SigningKey) -> TestProxy {
    let dir = std::env::temp_dir().join(format!("mqtt-kafka-auth-{}-{}", std::process::id(), key.kid));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("jwks.json");
    let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&key.public);
    let jwks = json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": x, "kid": key.kid, "alg": "EdDSA"}]});
    std::fs::write(&path, jwks.to_string()).expect("jwks");
    TestProxy::start_with(|c| {
        c.guards.jwt = Some(JwtGuard {
            issuer: Some(ISSUER.into()),
            audience: Some("mqtt".into()),
            keys: Vec::new(),
            jwks_file: Some(path.display().to_string()),
            jwks_url: None,
            refresh_seconds: 300,
            roles_claim: "scope".into(),
            credentials: TokenField::Password,
        });
        let guarded = |when: Vec<RouteCondition>| Route {
            when,
            with: None,
            guarded: [("jwt".to_owned(), vec!["device".to_owned()])].into(),
        };
        c.routes = vec![
            guarded(vec![condition_publish("devices/{identity}/#")]),
            guarded(vec![condition_subscribe("devices/{identity}/commands/#")]),
        ];
        c.authorization = Authorization {
            deny: vec![DenyRule {
                topic: "internal/#".into(),
                actions: vec![DeniedAction::Publish, DeniedAction::Subscribe],
            }],
        };
    })
    .await
}

/// A v5 CONNECT (clean start) of `id` with `password`, or a 3.1.1 one when `v3`.
fn connect_packet(id: &str, password: Option<&str>, v3: bool) -> Vec<u8> {
    let flags = 0x02 | if password.is_some() { 0x40 } else { 0 };
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', if v3 { 4 } else { 5 }, flags, 0, 30];
    if !v3 {
        body.push(0); // no properties
    }
    for field in [Some(id), password].into_iter().flatten() {
        body.extend_from_slice(&u16::try_from(field.len()).expect("short").to_be_bytes());
        body.extend_from_slice(field.as_bytes());
    }
    let mut packet = vec![0x10];
    let mut remaining = body.len();
    loop {
        let mut byte = u8::try_from(remaining % 128).unwrap_or(0);
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

/// Connects and returns the peer and the CONNACK reason code.
async fn connect(proxy: &TestProxy, id: &str, token: Option<&str>, v3: bool) -> (RawPeer, u8) {
    let mut peer = RawPeer::connect(proxy).await;
    peer.send(&connect_packet(id, token, v3)).await;
    let connack = peer.read_packet().await.expect("CONNACK");
    assert_eq!(connack[0], 0x20, "{connack:02x?}");
    (peer, connack[3])
}

#[tokio::test]
async fn each_bad_token_is_refused_with_its_connack_reason() {
    let key = SigningKey::new("k1");
    let proxy = guarded_proxy(&key).await;
    let forger = SigningKey::new("k1"); // same key id, another key
    let stranger = SigningKey::new("k9"); // a key id the guard does not know
    let valid = key.token(claims("d1", "device", 600));
    let mut tampered: Vec<String> = valid.split('.').map(str::to_owned).collect();
    tampered[1] =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims("d1", "device admin", 600).to_string());
    let cases = [
        ("no credentials", None, 0x86),
        ("not a JWT", Some("hello".to_owned()), 0x86),
        ("tampered claims", Some(tampered.join(".")), 0x86),
        (
            "forged signature",
            Some(forger.token(claims("d1", "device", 600))),
            0x86,
        ),
        ("unknown kid", Some(stranger.token(claims("d1", "device", 600))), 0x86),
        ("expired", Some(key.token(claims("d1", "device", -120))), 0x87),
        (
            "wrong issuer",
            Some(key.token(json!({"iss": "https://evil.test", "aud": "mqtt", "sub": "d1", "exp": now() + 600}))),
            0x87,
        ),
        (
            "wrong audience",
            Some(key.token(json!({"iss": ISSUER, "aud": "other", "sub": "d1", "exp": now() + 600}))),
            0x87,
        ),
    ];
    for (what, token, reason) in cases {
        let (_, got) = connect(&proxy, "bad-token", token.as_deref(), false).await;
        assert_eq!(got, reason, "{what}: CONNACK {got:#04x}");
    }
    let (_, v3) = connect(&proxy, "bad-token-v3", Some("hello"), true).await;
    assert_eq!(v3, 0x04, "3.1.1: bad user name or password");
    let (_, ok) = connect(&proxy, "good-token", Some(&valid), false).await;
    assert_eq!(ok, 0x00);
    let refused = proxy.metric("mqtt_kafka_auth_refusals_total{what=\"connect\"}").await;
    assert!(refused.is_some_and(|n| n >= 9.0), "{refused:?}");
}

#[tokio::test]
async fn a_device_publishes_and_subscribes_only_under_its_own_identity_and_nothing_refused_reaches_kafka() {
    let key = SigningKey::new("k2");
    let proxy = guarded_proxy(&key).await;
    let (mut device, reason) = connect(&proxy, "dev-d1", Some(&key.token(claims("d1", "device", 600))), false).await;
    assert_eq!(reason, 0);
    // Another device's topic, a closed topic, then its own: 0x87, 0x87, 0x00.
    device
        .send(&publish_packet("devices/d2/telemetry", 1, "forged", false))
        .await;
    device
        .send(&publish_packet("internal/config", 2, "closed", false))
        .await;
    device
        .send(&publish_packet("devices/d1/telemetry", 3, "mine", false))
        .await;
    let mut acks = Vec::new();
    while acks.len() < 3 {
        let packet = device.read_packet().await.expect("PUBACK");
        if packet[0] == 0x40 {
            let reason = if packet.len() > 4 { packet[4] } else { 0 };
            acks.push((u16::from_be_bytes([packet[2], packet[3]]), reason));
        }
    }
    assert_eq!(acks, [(1, 0x87), (2, 0x87), (3, 0x00)], "in arrival order");
    let reader = KafkaReader::new(proxy.bootstrap(), &proxy.config.topics.messages);
    let first = reader.next().await;
    assert_eq!(
        first.key(),
        Some(&b"devices/d1/telemetry"[..]),
        "the refused ones are not in Kafka"
    );

    // Its own commands: yes; another device's, or all devices': no.
    subscribe_qos(&mut device, "devices/d1/commands/#", 1).await;
    for filter in ["devices/d2/commands/#", "devices/#", "internal/#"] {
        let reason = suback_reason(&mut device, filter, 7, true).await;
        assert_eq!(reason, 0x87, "{filter}");
    }
    // A device without the role may not publish under its own identity either.
    let (mut roleless, _) = connect(&proxy, "dev-d3", Some(&key.token(claims("d3", "viewer", 600))), false).await;
    roleless
        .send(&publish_packet("devices/d3/telemetry", 1, "x", false))
        .await;
    let puback = roleless.read_packet().await.expect("PUBACK");
    assert_eq!((puback[0], puback.get(4).copied()), (0x40, Some(0x87)));
}

/// SUBSCRIBE `filter` at QoS 1 with packet id `id` (a 3.1.1 packet unless `v5`); the
/// SUBACK's first reason code.
async fn suback_reason(peer: &mut RawPeer, filter: &str, id: u16, v5: bool) -> u8 {
    let mut body = id.to_be_bytes().to_vec();
    if v5 {
        body.push(0); // no properties
    }
    body.extend_from_slice(&u16::try_from(filter.len()).expect("short").to_be_bytes());
    body.extend_from_slice(filter.as_bytes());
    body.push(1);
    let mut packet = vec![0x82, u8::try_from(body.len()).expect("short")];
    packet.extend(body);
    peer.send(&packet).await;
    loop {
        let suback = peer.read_packet().await.expect("SUBACK");
        if suback[0] == 0x90 {
            return *suback.last().expect("a reason code");
        }
    }
}

#[tokio::test]
async fn a_deny_rule_refuses_a_subscribe_with_0x80_for_3_1_1_and_0x87_for_5_0() {
    let proxy = TestProxy::start_with(|c| {
        c.authorization.deny = vec![DenyRule {
            topic: "secret/#".into(),
            actions: vec![DeniedAction::Subscribe],
        }];
    })
    .await;
    let (mut v5, _) = connect(&proxy, "deny-v5", None, false).await;
    assert_eq!(suback_reason(&mut v5, "secret/plans", 1, true).await, 0x87);
    assert_eq!(
        suback_reason(&mut v5, "#", 2, true).await,
        0x87,
        "# could read secret topics"
    );
    assert_eq!(suback_reason(&mut v5, "public/#", 3, true).await, 0x01);
    let (mut v3, reason) = connect(&proxy, "deny-v3", None, true).await;
    assert_eq!(reason, 0);
    assert_eq!(suback_reason(&mut v3, "secret/#", 1, false).await, 0x80);
    // Publishing is not denied by this rule.
    v5.send(&publish_packet("secret/plans", 9, "p", false)).await;
    let puback = v5.read_packet().await.expect("PUBACK");
    assert_eq!((puback[0], puback.get(4).copied().unwrap_or(0)), (0x40, 0x00));
}

#[tokio::test]
async fn a_token_that_expires_mid_session_ends_the_connection_with_0xa0() {
    let key = SigningKey::new("k3");
    let proxy = guarded_proxy(&key).await;
    let token = key.token(claims("d1", "device", 3));
    let (mut device, reason) = connect(&proxy, "short-lived", Some(&token), false).await;
    assert_eq!(reason, 0);
    subscribe_qos(&mut device, "devices/d1/commands/#", 1).await;
    let started = std::time::Instant::now();
    let disconnect = loop {
        let packet = tokio::time::timeout(Duration::from_secs(10), device.read_packet())
            .await
            .expect("a DISCONNECT within 10 s")
            .expect("a packet before the close");
        if packet[0] == 0xE0 {
            break packet;
        }
        let _ = parse_publish(&packet);
    };
    assert_eq!(
        disconnect.get(2).copied(),
        Some(0xA0),
        "Maximum connect time: {disconnect:02x?}"
    );
    assert!(started.elapsed() < Duration::from_secs(8), "at the token's expiry");
}
