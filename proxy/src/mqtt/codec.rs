//! Framing adapter over rmqtt-codec. The connection logic speaks one packet model, MQTT 5's
//! (a superset of 3.1.1's); this codec detects the version from CONNECT and translates
//! 3.1 / 3.1.1 packets to and from it at the edge.

use std::num::NonZeroU16;

use bytes::BytesMut;
use rmqtt_codec::error::{DecodeError, EncodeError};
use rmqtt_codec::types::QoS;
use rmqtt_codec::v5::{
    Connect, ConnectAckReason, Disconnect, DisconnectReasonCode, LastWill, Packet, PublishAck, PublishAck2,
    PublishAck2Reason, PublishAckReason, RetainHandling, Subscribe, SubscribeAckReason, SubscriptionOptions,
    Unsubscribe,
};
use rmqtt_codec::version::{ProtocolVersion, VersionCodec};
use rmqtt_codec::{v3, v5};
use tokio_util::codec::{Decoder, Encoder};

/// The protocol the client chose in CONNECT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    V3,
    V5,
}

/// The largest packet accepted before CONNECT is accepted (the whole packet, bytes; less
/// when `mqtt.maximumPacketSize` is less). Room for a CONNECT with a will payload and a
/// password of several KiB each; what a peer that has not been accepted may make the
/// proxy hold.
pub const PRE_CONNECT_MAX_PACKET: u32 = 128 * 1024;

/// Decodes any supported version into v5 packets; encodes v5 packets for the client's version.
///
/// Until [`MqttCodec::connect_accepted`] a packet may be at most [`PRE_CONNECT_MAX_PACKET`]
/// bytes, and is decoded only once it has arrived whole: rmqtt-codec reserves a packet's
/// announced length as soon as it has read its fixed header, which before CONNECT would
/// let anyone who can open a socket make the proxy reserve the maximum packet size with
/// five bytes.
#[derive(Debug)]
pub struct MqttCodec {
    inner: Inner,
    max_inbound: u32,
    connected: bool,
}

#[derive(Debug)]
enum Inner {
    Detect,
    V3(v3::Codec),
    V5(v5::Codec),
}

impl MqttCodec {
    /// `max_inbound` is the largest packet (whole packet, bytes) the server accepts.
    pub fn new(max_inbound: u32) -> Self {
        Self {
            inner: Inner::Detect,
            max_inbound,
            connected: false,
        }
    }

    /// The CONNECT was accepted: packets up to the configured maximum from now on.
    pub fn connect_accepted(&mut self) {
        self.connected = true;
    }

    pub fn version(&self) -> Option<Version> {
        match self.inner {
            Inner::Detect => None,
            Inner::V3(_) => Some(Version::V3),
            Inner::V5(_) => Some(Version::V5),
        }
    }

    /// Applies the client's Maximum Packet Size to what we send.
    pub fn set_max_outbound(&mut self, size: u32) {
        if let Inner::V5(codec) = &mut self.inner {
            codec.set_max_outbound_size(size);
        }
    }

    /// rmqtt-codec checks the remaining length; the limit is on the whole packet, whose
    /// fixed header takes at most 5 bytes.
    fn remaining_limit(&self) -> u32 {
        self.max_inbound.saturating_sub(2).max(1)
    }
}

impl Decoder for MqttCodec {
    type Item = Packet;
    type Error = DecodeError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Packet>, DecodeError> {
        if let Inner::Detect = self.inner {
            match VersionCodec.decode(src)? {
                None => return Ok(None),
                Some(ProtocolVersion::MQTT3) => self.inner = Inner::V3(v3::Codec::new(self.remaining_limit())),
                Some(ProtocolVersion::MQTT5) => self.inner = Inner::V5(v5::Codec::new(self.remaining_limit(), 0)),
            }
        }
        if !self.connected && !whole_packet(src, PRE_CONNECT_MAX_PACKET.min(self.max_inbound))? {
            return Ok(None);
        }
        match &mut self.inner {
            Inner::Detect => Ok(None),
            Inner::V5(codec) => Ok(codec.decode(src)?.map(|(packet, _)| packet)),
            Inner::V3(codec) => match codec.decode(src)? {
                None => Ok(None),
                Some((packet, _)) => from_v3(packet).map(Some),
            },
        }
    }
}

impl Encoder<Packet> for MqttCodec {
    type Error = EncodeError;

    fn encode(&mut self, packet: Packet, dst: &mut BytesMut) -> Result<(), EncodeError> {
        match &mut self.inner {
            Inner::Detect => Err(EncodeError::UnsupportedVersion),
            Inner::V5(codec) => codec.encode(packet, dst),
            Inner::V3(codec) => match to_v3(packet) {
                Some(packet) => codec.encode(packet, dst),
                None => Ok(()),
            },
        }
    }
}

/// Whether `src` starts with a whole packet of at most `limit` bytes; an error for a larger
/// one or a malformed remaining length. Reserves nothing: the buffer grows only with what
/// the peer really sends.
fn whole_packet(src: &[u8], limit: u32) -> Result<bool, DecodeError> {
    let mut remaining: u32 = 0;
    for (i, byte) in src.iter().skip(1).take(4).enumerate() {
        remaining |= u32::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            let size = remaining.saturating_add(u32::try_from(i).unwrap_or(3) + 2);
            if size > limit {
                return Err(DecodeError::MaxSizeExceeded { size, max: limit });
            }
            return Ok(src.len() >= usize::try_from(size).unwrap_or(usize::MAX));
        }
    }
    if src.len() >= 5 {
        // A fourth length byte with the continuation bit.
        return Err(DecodeError::InvalidLength);
    }
    Ok(false)
}

fn from_v3(packet: v3::Packet) -> Result<Packet, DecodeError> {
    Ok(match packet {
        v3::Packet::Connect(c) => Packet::Connect(Box::new(Connect {
            clean_start: c.clean_session,
            keep_alive: c.keep_alive,
            // 3.1.1 sessions without clean session never expire (5.0's 0xFFFFFFFF).
            session_expiry_interval_secs: if c.clean_session { 0 } else { u32::MAX },
            last_will: c.last_will.map(|w| LastWill {
                qos: w.qos,
                retain: w.retain,
                topic: w.topic,
                message: w.message,
                will_delay_interval_sec: None,
                correlation_data: None,
                message_expiry_interval: None,
                content_type: None,
                user_properties: Vec::new(),
                is_utf8_payload: None,
                response_topic: None,
            }),
            client_id: c.client_id,
            username: c.username,
            password: c.password,
            receive_max: None,
            max_packet_size: None,
            topic_alias_max: 0,
            request_problem_info: true,
            request_response_info: false,
            auth_method: None,
            auth_data: None,
            user_properties: Vec::new(),
            cert: c.cert,
        })),
        v3::Packet::Publish(p) => Packet::Publish(p),
        v3::Packet::PublishAck { packet_id } => Packet::PublishAck(ack(packet_id)),
        v3::Packet::PublishReceived { packet_id } => Packet::PublishReceived(ack(packet_id)),
        v3::Packet::PublishRelease { packet_id } => Packet::PublishRelease(ack2(packet_id)),
        v3::Packet::PublishComplete { packet_id } => Packet::PublishComplete(ack2(packet_id)),
        v3::Packet::Subscribe {
            packet_id,
            topic_filters,
        } => Packet::Subscribe(Subscribe {
            packet_id,
            id: None,
            user_properties: Vec::new(),
            topic_filters: topic_filters
                .into_iter()
                .map(|(filter, qos)| {
                    let options = SubscriptionOptions {
                        qos,
                        no_local: false,
                        retain_as_published: false,
                        retain_handling: RetainHandling::AtSubscribe,
                    };
                    (filter, options)
                })
                .collect(),
        }),
        v3::Packet::Unsubscribe {
            packet_id,
            topic_filters,
        } => Packet::Unsubscribe(Unsubscribe {
            packet_id,
            user_properties: Vec::new(),
            topic_filters,
        }),
        v3::Packet::PingRequest => Packet::PingRequest,
        v3::Packet::Disconnect => Packet::Disconnect(Disconnect::new(DisconnectReasonCode::NormalDisconnection)),
        // Packets only a server sends.
        v3::Packet::ConnectAck(_)
        | v3::Packet::SubscribeAck { .. }
        | v3::Packet::UnsubscribeAck { .. }
        | v3::Packet::PingResponse => return Err(DecodeError::UnsupportedPacketType),
    })
}

fn ack(packet_id: NonZeroU16) -> PublishAck {
    PublishAck {
        packet_id,
        reason_code: PublishAckReason::Success,
        properties: Vec::new(),
        reason_string: None,
    }
}

fn ack2(packet_id: NonZeroU16) -> PublishAck2 {
    PublishAck2 {
        packet_id,
        reason_code: PublishAck2Reason::Success,
        properties: Vec::new(),
        reason_string: None,
    }
}

/// The 3.1.1 form of a packet the server sends; `None` for what 3.1.1 cannot express
/// (a server DISCONNECT, AUTH): the connection closes instead.
fn to_v3(packet: Packet) -> Option<v3::Packet> {
    Some(match packet {
        Packet::ConnectAck(ack) => v3::Packet::ConnectAck(v3::ConnectAck {
            session_present: ack.session_present,
            return_code: v3_connack_code(ack.reason_code),
        }),
        Packet::Publish(mut p) => {
            p.properties = None;
            v3::Packet::Publish(p)
        }
        Packet::PublishAck(a) => v3::Packet::PublishAck { packet_id: a.packet_id },
        Packet::PublishReceived(a) => v3::Packet::PublishReceived { packet_id: a.packet_id },
        Packet::PublishRelease(a) => v3::Packet::PublishRelease { packet_id: a.packet_id },
        Packet::PublishComplete(a) => v3::Packet::PublishComplete { packet_id: a.packet_id },
        Packet::SubscribeAck(a) => v3::Packet::SubscribeAck {
            packet_id: a.packet_id,
            status: a
                .status
                .into_iter()
                .map(|s| match s {
                    SubscribeAckReason::GrantedQos0 => v3::SubscribeReturnCode::Success(QoS::AtMostOnce),
                    SubscribeAckReason::GrantedQos1 => v3::SubscribeReturnCode::Success(QoS::AtLeastOnce),
                    SubscribeAckReason::GrantedQos2 => v3::SubscribeReturnCode::Success(QoS::ExactlyOnce),
                    _ => v3::SubscribeReturnCode::Failure,
                })
                .collect(),
        },
        Packet::UnsubscribeAck(a) => v3::Packet::UnsubscribeAck { packet_id: a.packet_id },
        Packet::PingResponse => v3::Packet::PingResponse,
        Packet::Disconnect(_) | Packet::Auth(_) => return None,
        // Client-only packets are never sent by the server.
        Packet::Connect(_) | Packet::Subscribe(_) | Packet::Unsubscribe(_) | Packet::PingRequest => return None,
    })
}

/// MQTT 5 CONNACK reason codes folded onto the six 3.1.1 return codes (MQTT 5 §3.2.2.2
/// table notes which 3.1.1 code each one corresponds to).
fn v3_connack_code(reason: ConnectAckReason) -> v3::ConnectAckReason {
    use ConnectAckReason as R;
    match reason {
        R::Success => v3::ConnectAckReason::ConnectionAccepted,
        R::UnsupportedProtocolVersion => v3::ConnectAckReason::UnacceptableProtocolVersion,
        R::ClientIdentifierNotValid => v3::ConnectAckReason::IdentifierRejected,
        R::BadUserNameOrPassword => v3::ConnectAckReason::BadUserNameOrPassword,
        R::NotAuthorized | R::Banned | R::BadAuthenticationMethod => v3::ConnectAckReason::NotAuthorized,
        _ => v3::ConnectAckReason::ServiceUnavailable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(codec: &mut MqttCodec, bytes: &[u8]) -> Result<Vec<Packet>, DecodeError> {
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(p) = codec.decode(&mut buf)? {
            out.push(p);
        }
        Ok(out)
    }

    // CONNECT, protocol level 4, clean session, keep alive 60, client id "c1"
    const V311_CONNECT: &[u8] = b"\x10\x0e\x00\x04MQTT\x04\x02\x00\x3c\x00\x02c1";
    // CONNECT, protocol level 5, clean start, keep alive 30, no properties, client id "c5"
    const V5_CONNECT: &[u8] = b"\x10\x0f\x00\x04MQTT\x05\x02\x00\x1e\x00\x00\x02c5";

    #[test]
    fn a_311_connect_switches_to_v3_and_maps_clean_session_to_expiry() {
        let mut codec = MqttCodec::new(1024);
        let packets = decode_all(&mut codec, V311_CONNECT).expect("decodes");
        assert_eq!(codec.version(), Some(Version::V3));
        let Packet::Connect(c) = &packets[0] else {
            panic!("not a connect: {packets:?}")
        };
        assert_eq!(c.client_id, "c1");
        assert_eq!(c.keep_alive, 60);
        assert!(c.clean_start);
        assert_eq!(c.session_expiry_interval_secs, 0);
    }

    #[test]
    fn a_v5_connect_switches_to_v5() {
        let mut codec = MqttCodec::new(1024);
        let packets = decode_all(&mut codec, V5_CONNECT).expect("decodes");
        assert_eq!(codec.version(), Some(Version::V5));
        assert!(matches!(&packets[0], Packet::Connect(c) if c.client_id == "c5" && c.keep_alive == 30));
    }

    #[test]
    fn a_v3_suback_failure_is_0x80_and_server_disconnect_is_not_sent() {
        let mut codec = MqttCodec::new(1024);
        decode_all(&mut codec, V311_CONNECT).expect("decodes");
        let mut out = BytesMut::new();
        let suback = rmqtt_codec::v5::SubscribeAck {
            packet_id: NonZeroU16::MIN,
            properties: Vec::new(),
            reason_string: None,
            status: vec![SubscribeAckReason::GrantedQos1, SubscribeAckReason::TopicFilterInvalid],
        };
        codec.encode(Packet::SubscribeAck(suback), &mut out).expect("encodes");
        assert_eq!(&out[..], b"\x90\x04\x00\x01\x01\x80");
        out.clear();
        codec
            .encode(
                Packet::Disconnect(Disconnect::new(DisconnectReasonCode::ServerBusy)),
                &mut out,
            )
            .expect("ok");
        assert!(out.is_empty());
    }

    #[test]
    fn an_oversize_packet_is_refused_before_it_is_buffered() {
        let mut codec = MqttCodec::new(64);
        decode_all(&mut codec, V5_CONNECT).expect("decodes");
        // PUBLISH announcing 200 bytes of remaining length.
        let err = decode_all(&mut codec, b"\x30\xc8\x01").expect_err("too large");
        assert!(matches!(err, DecodeError::MaxSizeExceeded { .. }), "{err:?}");
    }

    #[test]
    fn garbage_instead_of_connect_is_a_protocol_error() {
        let mut codec = MqttCodec::new(1024);
        assert!(decode_all(&mut codec, b"\x10\x0e\x00\x04HTTP\x04\x02\x00\x3c\x00\x02c1").is_err());
        let mut codec = MqttCodec::new(1024);
        assert!(decode_all(&mut codec, b"\x30\x02\x00\x00").is_err());
    }

    /// The first bytes of a v5 CONNECT announcing `remaining` bytes after the fixed header.
    fn connect_head(remaining: u32) -> BytesMut {
        let mut head = BytesMut::new();
        head.extend_from_slice(&[0x10]);
        let mut len = remaining;
        loop {
            let mut byte = u8::try_from(len % 128).expect("7 bits");
            len /= 128;
            if len > 0 {
                byte |= 0x80;
            }
            head.extend_from_slice(&[byte]);
            if len == 0 {
                break;
            }
        }
        head.extend_from_slice(b"\x00\x04MQTT\x05\x02\x00\x1e");
        head
    }

    #[test]
    fn before_connect_the_announced_length_is_not_reserved() {
        let mut codec = MqttCodec::new(1_048_576);
        let mut head = connect_head(100_000);
        assert!(codec.decode(&mut head).expect("fine so far").is_none());
        assert!(head.capacity() < 1024, "reserved {} bytes", head.capacity());
    }

    #[test]
    fn before_connect_a_packet_over_the_small_limit_is_refused() {
        let mut codec = MqttCodec::new(1_048_576);
        let err = codec.decode(&mut connect_head(200_000)).expect_err("too large");
        assert!(
            matches!(err, DecodeError::MaxSizeExceeded { max, .. } if max == PRE_CONNECT_MAX_PACKET),
            "{err:?}"
        );
        // Below the configured maximum when that is smaller.
        let mut codec = MqttCodec::new(1000);
        let err = codec.decode(&mut connect_head(2000)).expect_err("too large");
        assert!(matches!(err, DecodeError::MaxSizeExceeded { max: 1000, .. }), "{err:?}");
    }

    #[test]
    fn once_connect_is_accepted_the_configured_maximum_applies() {
        let mut codec = MqttCodec::new(1_048_576);
        decode_all(&mut codec, V5_CONNECT).expect("decodes");
        codec.connect_accepted();
        // PUBLISH announcing 200 000 bytes: more than before CONNECT, fine now.
        let mut publish = BytesMut::from(&b"\x30\xc0\x9a\x0c\x00\x01a"[..]);
        assert!(codec.decode(&mut publish).expect("within the maximum").is_none());
    }
}
