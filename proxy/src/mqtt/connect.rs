//! CONNECT handling decisions, pure: which CONNECTs are refused with which reason code, the
//! client identifier, the keep-alive that applies, and the CONNACK that is sent.

use std::num::NonZeroU16;

use bytestring::ByteString;
use rmqtt_codec::types::QoS;
use rmqtt_codec::v5::{Connect, ConnectAck, ConnectAckReason};

use crate::broker::topic;
use crate::config::{Config, MqttVersion};
use crate::mqtt::codec::Version;

/// The server's limits, from the config, as the connection logic uses them.
#[derive(Clone, Debug)]
pub struct Limits {
    pub accept_v3: bool,
    pub accept_v5: bool,
    pub maximum_packet_size: u32,
    pub receive_maximum: u16,
    pub topic_alias_maximum: u16,
    /// 0 = no cap.
    pub max_keep_alive: u16,
    pub server_keep_alive: Option<u16>,
    pub connect_timeout_secs: u16,
    /// How long a write to the client may make no progress before the connection closes.
    pub write_timeout: std::time::Duration,
    pub max_connections: usize,
    pub max_inflight_outbound: u16,
    pub qos_max: u8,
    /// Deliveries that may wait for a connection's in-flight window.
    pub outbound_queue: usize,
    /// The longest Session Expiry Interval granted (seconds).
    pub session_expiry_max: u32,
    /// Redirect MQTT 5 clients to the process owning their session, with this reason code.
    pub redirect: Option<u8>,
    /// Connected clients moved per second at most.
    pub redirects_per_second: u32,
}

impl Limits {
    pub fn from_config(config: &Config) -> Self {
        let m = &config.mqtt;
        Self {
            accept_v3: m.versions.contains(&MqttVersion::V3_1_1),
            accept_v5: m.versions.contains(&MqttVersion::V5),
            maximum_packet_size: m.maximum_packet_size,
            receive_maximum: m.receive_maximum,
            topic_alias_maximum: m.topic_alias_maximum,
            max_keep_alive: m.max_keep_alive,
            server_keep_alive: m.server_keep_alive,
            connect_timeout_secs: m.connect_timeout,
            write_timeout: std::time::Duration::from_secs(u64::from(m.write_timeout.max(1))),
            max_connections: usize::try_from(m.max_connections).unwrap_or(usize::MAX),
            max_inflight_outbound: m.max_inflight_outbound,
            qos_max: config.publish.qos_max.as_u8(),
            outbound_queue: 1000,
            session_expiry_max: m.session_expiry_max,
            redirect: config
                .cluster
                .redirect
                .enabled
                .then_some(config.cluster.redirect.reason_code),
            redirects_per_second: config.cluster.redirect.max_per_second.max(1),
        }
    }
}

/// A CONNECT the server accepts, with what it decided.
#[derive(Debug, PartialEq, Eq)]
pub struct Accepted {
    pub client_id: String,
    /// The client sent no id and the server assigned this one.
    pub assigned: bool,
    /// Keep-alive the server enforces (seconds, 0 = none).
    pub keep_alive: u16,
    /// `Some` when it differs from the client's and must be sent as Server Keep Alive.
    pub server_keep_alive: Option<u16>,
}

/// Decides on a CONNECT: `Err` is the CONNACK reason code to refuse it with.
pub fn accept(
    connect: &Connect,
    version: Version,
    limits: &Limits,
    connections: usize,
    assign_id: impl FnOnce() -> String,
) -> Result<Accepted, ConnectAckReason> {
    match version {
        Version::V3 if !limits.accept_v3 => return Err(ConnectAckReason::UnsupportedProtocolVersion),
        Version::V5 if !limits.accept_v5 => return Err(ConnectAckReason::UnsupportedProtocolVersion),
        _ => {}
    }
    if connect.auth_method.is_some() {
        // No enhanced authentication method is supported (MQTT 5 §4.12).
        return Err(ConnectAckReason::BadAuthenticationMethod);
    }
    if connections >= limits.max_connections {
        return Err(ConnectAckReason::QuotaExceeded);
    }
    if let Some(will) = &connect.last_will {
        if will.qos.value() > limits.qos_max {
            return Err(ConnectAckReason::QosNotSupported);
        }
        if topic::validate_topic_name(&will.topic).is_err() {
            return Err(ConnectAckReason::TopicNameInvalid);
        }
        if will.is_utf8_payload == Some(true) && std::str::from_utf8(&will.message).is_err() {
            return Err(ConnectAckReason::PayloadFormatInvalid);
        }
    }
    if connect
        .client_id
        .starts_with(crate::cluster::membership::RESERVED_PREFIX)
    {
        // Keys of the sessions topic that are not sessions start with it.
        return Err(ConnectAckReason::ClientIdentifierNotValid);
    }
    let (client_id, assigned) = if connect.client_id.is_empty() {
        // 3.1.1 §3.1.3-8: an empty id needs a clean session there.
        if version == Version::V3 && !connect.clean_start {
            return Err(ConnectAckReason::ClientIdentifierNotValid);
        }
        (assign_id(), true)
    } else {
        (connect.client_id.to_string(), false)
    };
    let (keep_alive, server_keep_alive) = keep_alive(connect.keep_alive, version, limits);
    Ok(Accepted {
        client_id,
        assigned,
        keep_alive,
        server_keep_alive,
    })
}

/// The keep-alive the server enforces and, for 5.0, the Server Keep Alive to announce:
/// the configured `serverKeepAlive` if any, else the client's value capped by `maxKeepAlive`.
pub fn keep_alive(requested: u16, version: Version, limits: &Limits) -> (u16, Option<u16>) {
    if version == Version::V3 {
        // 3.1.1 has no way to tell the client; its own value applies.
        return (requested, None);
    }
    let chosen = match (limits.server_keep_alive, limits.max_keep_alive) {
        (Some(fixed), _) => fixed,
        (None, 0) => requested,
        (None, max) if requested == 0 || requested > max => max,
        (None, _) => requested,
    };
    (chosen, (chosen != requested).then_some(chosen))
}

/// The CONNACK of an accepted connection: every limit advertised.
pub fn connack(accepted: &Accepted, limits: &Limits) -> ConnectAck {
    ConnectAck {
        session_present: false,
        reason_code: ConnectAckReason::Success,
        // Set by the connection when it grants less than the client asked for.
        session_expiry_interval_secs: None,
        receive_max: NonZeroU16::new(limits.receive_maximum).unwrap_or(NonZeroU16::MAX),
        max_qos: match limits.qos_max {
            0 => QoS::AtMostOnce,
            1 => QoS::AtLeastOnce,
            _ => QoS::ExactlyOnce,
        },
        max_packet_size: Some(limits.maximum_packet_size),
        assigned_client_id: accepted.assigned.then(|| ByteString::from(accepted.client_id.clone())),
        topic_alias_max: limits.topic_alias_maximum,
        retain_available: true,
        wildcard_subscription_available: true,
        subscription_identifiers_available: true,
        shared_subscription_available: true,
        server_keepalive_sec: accepted.server_keep_alive,
        ..ConnectAck::default()
    }
}

/// A refusal CONNACK.
pub fn refusal(reason: ConnectAckReason) -> ConnectAck {
    ConnectAck {
        reason_code: reason,
        ..ConnectAck::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Kafka;

    fn limits() -> Limits {
        Limits::from_config(&Config::new(Kafka::new("k:9092")))
    }

    fn connect(client_id: &str, clean: bool, keep_alive: u16) -> Connect {
        Connect {
            client_id: client_id.into(),
            clean_start: clean,
            keep_alive,
            ..Connect::default()
        }
    }

    #[test]
    fn an_empty_client_id_is_assigned_for_v5_and_clean_v3_but_refused_for_persistent_v3() {
        let l = limits();
        let a = accept(&connect("", false, 30), Version::V5, &l, 0, || "auto-1".into()).expect("accepted");
        assert_eq!((a.client_id.as_str(), a.assigned), ("auto-1", true));
        let a = accept(&connect("", true, 30), Version::V3, &l, 0, || "auto-2".into()).expect("accepted");
        assert!(a.assigned);
        assert_eq!(
            accept(&connect("", false, 30), Version::V3, &l, 0, || "x".into()),
            Err(ConnectAckReason::ClientIdentifierNotValid)
        );
        let ack = connack(
            &accept(&connect("", true, 30), Version::V5, &l, 0, || "auto-3".into()).expect("ok"),
            &l,
        );
        assert_eq!(ack.assigned_client_id.as_deref(), Some("auto-3"));
    }

    #[test]
    fn refusals_carry_the_reason_code_the_spec_names() {
        let mut l = limits();
        l.max_connections = 1;
        assert_eq!(
            accept(&connect("a", true, 0), Version::V5, &l, 1, String::new),
            Err(ConnectAckReason::QuotaExceeded)
        );
        let mut c = connect("a", true, 0);
        c.auth_method = Some("SCRAM-SHA-1".into());
        assert_eq!(
            accept(&c, Version::V5, &limits(), 0, String::new),
            Err(ConnectAckReason::BadAuthenticationMethod)
        );
        let mut l = limits();
        l.accept_v3 = false;
        assert_eq!(
            accept(&connect("a", true, 0), Version::V3, &l, 0, String::new),
            Err(ConnectAckReason::UnsupportedProtocolVersion)
        );
        let mut l = limits();
        l.qos_max = 1;
        let mut c = connect("a", true, 0);
        c.last_will = Some(rmqtt_codec::v5::LastWill {
            qos: QoS::ExactlyOnce,
            retain: false,
            topic: "w".into(),
            message: Default::default(),
            will_delay_interval_sec: None,
            correlation_data: None,
            message_expiry_interval: None,
            content_type: None,
            user_properties: Vec::new(),
            is_utf8_payload: None,
            response_topic: None,
        });
        assert_eq!(
            accept(&c, Version::V5, &l, 0, String::new),
            Err(ConnectAckReason::QosNotSupported)
        );
    }

    #[test]
    fn keep_alive_is_capped_and_announced_for_v5_only() {
        let mut l = limits();
        l.max_keep_alive = 60;
        l.server_keep_alive = None;
        assert_eq!(keep_alive(30, Version::V5, &l), (30, None));
        assert_eq!(keep_alive(600, Version::V5, &l), (60, Some(60)));
        assert_eq!(keep_alive(0, Version::V5, &l), (60, Some(60)));
        assert_eq!(keep_alive(600, Version::V3, &l), (600, None));
        l.server_keep_alive = Some(20);
        assert_eq!(keep_alive(30, Version::V5, &l), (20, Some(20)));
    }

    #[test]
    fn connack_advertises_every_limit() {
        let mut l = limits();
        l.qos_max = 1;
        l.receive_maximum = 10;
        l.topic_alias_maximum = 5;
        l.maximum_packet_size = 4096;
        let a = Accepted {
            client_id: "c".into(),
            assigned: false,
            keep_alive: 30,
            server_keep_alive: None,
        };
        let ack = connack(&a, &l);
        assert_eq!(ack.max_qos, QoS::AtLeastOnce);
        assert_eq!(ack.receive_max.get(), 10);
        assert_eq!(ack.topic_alias_max, 5);
        assert_eq!(ack.max_packet_size, Some(4096));
        assert_eq!(ack.assigned_client_id, None);
        assert!(ack.shared_subscription_available && ack.subscription_identifiers_available);
    }
}
