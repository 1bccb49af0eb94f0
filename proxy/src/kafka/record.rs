//! The Kafka record format of DESIGN section 2: how a [`Message`] becomes a record's key,
//! value and headers, and how any record on a messages or retained topic becomes a
//! [`Message`] again. Pure functions; the producer and consumers do the I/O.

use std::borrow::Cow;

use bytes::Bytes;
use bytestring::ByteString;

use crate::broker::message::{Message, MessageProperties};
use crate::broker::topic::validate_topic_name;

pub const HEADER_QOS: &str = "mqtt-qos";
pub const HEADER_CLIENT_ID: &str = "mqtt-client-id";
pub const HEADER_RETAIN: &str = "mqtt-retain";
pub const HEADER_EXPIRY: &str = "mqtt-expiry";
pub const HEADER_CONTENT_TYPE: &str = "mqtt-content-type";
pub const HEADER_PAYLOAD_FORMAT: &str = "mqtt-payload-format";
pub const HEADER_RESPONSE_TOPIC: &str = "mqtt-response-topic";
pub const HEADER_CORRELATION_DATA: &str = "mqtt-correlation-data";

/// The longest string or binary field MQTT can carry (a two-byte length): topic names,
/// User Property names and values, Content Type, Response Topic, Correlation Data.
pub const MAX_FIELD_LEN: usize = 65_535;

/// Why a record cannot be delivered as an MQTT message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    #[error("record has a null key (the key must be the MQTT topic)")]
    NullKey,
    #[error("record key is not UTF-8")]
    KeyNotUtf8,
    #[error("record key is not a valid MQTT topic name")]
    KeyNotTopic,
    #[error("record key is {0} bytes long; an MQTT topic name holds at most 65535")]
    KeyTooLong(usize),
    #[error("a header name is not UTF-8 (User Property names must be)")]
    HeaderNameNotUtf8,
    #[error("header {name:?} is {len} bytes long (name or value); MQTT fields hold at most 65535")]
    HeaderTooLong { name: String, len: usize },
    #[error("header mqtt-response-topic is not a valid MQTT topic name")]
    BadResponseTopic,
}

impl RecordError {
    /// The `reason` label of `mqtt_kafka_records_skipped_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            RecordError::NullKey => "null_key",
            RecordError::KeyNotUtf8 | RecordError::KeyNotTopic => "bad_key",
            RecordError::KeyTooLong(_) => "key_too_long",
            RecordError::HeaderNameNotUtf8 => "header_name_not_utf8",
            RecordError::HeaderTooLong { .. } => "header_too_long",
            RecordError::BadResponseTopic => "bad_response_topic",
        }
    }
}

/// The headers of the record for `message`, in the order DESIGN lists them, then one per
/// User Property. Borrowed where possible: this runs once per PUBLISH.
pub fn headers_of(message: &Message) -> Vec<(&str, Cow<'_, [u8]>)> {
    const QOS_TEXT: [&[u8]; 3] = [b"0", b"1", b"2"];
    let p = &message.properties;
    let mut headers: Vec<(&str, Cow<'_, [u8]>)> = Vec::with_capacity(3 + p.user_properties.len());
    let qos = QOS_TEXT.get(usize::from(message.qos)).copied().unwrap_or(b"0");
    headers.push((HEADER_QOS, Cow::Borrowed(qos)));
    if let Some(client_id) = &message.publisher {
        headers.push((HEADER_CLIENT_ID, Cow::Borrowed(client_id.as_bytes())));
    }
    if message.retain {
        headers.push((HEADER_RETAIN, Cow::Borrowed(b"1")));
    }
    if let Some(expiry) = p.expiry_secs {
        headers.push((HEADER_EXPIRY, Cow::Owned(expiry.to_string().into_bytes())));
    }
    if let Some(content_type) = &p.content_type {
        headers.push((HEADER_CONTENT_TYPE, Cow::Borrowed(content_type.as_bytes())));
    }
    if p.payload_utf8 {
        headers.push((HEADER_PAYLOAD_FORMAT, Cow::Borrowed(b"1")));
    }
    if let Some(response_topic) = &p.response_topic {
        headers.push((HEADER_RESPONSE_TOPIC, Cow::Borrowed(response_topic.as_bytes())));
    }
    if let Some(correlation) = &p.correlation_data {
        headers.push((HEADER_CORRELATION_DATA, Cow::Borrowed(correlation.as_ref())));
    }
    for (name, value) in &p.user_properties {
        headers.push((name, Cow::Borrowed(value.as_bytes())));
    }
    headers
}

/// Rebuilds the message from a record's parts. Records without `mqtt-qos` came from a
/// plain Kafka producer: they count as QoS 1 and all their headers become User Properties.
/// A null value is an empty payload. Header names come as bytes: any producer may write
/// names that are not UTF-8, and such a record is refused, not a panic. So is a record
/// with a key, header name or header value MQTT cannot carry (over 65535 bytes): sent
/// anyway, it would fail to encode and end every matching subscriber's connection.
pub fn message_from_record<'a>(
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    timestamp_ms: i64,
    headers: impl IntoIterator<Item = (&'a [u8], Option<&'a [u8]>)>,
) -> Result<Message, RecordError> {
    let key = key.ok_or(RecordError::NullKey)?;
    if key.len() > MAX_FIELD_LEN {
        return Err(RecordError::KeyTooLong(key.len()));
    }
    let topic = std::str::from_utf8(key).map_err(|_| RecordError::KeyNotUtf8)?;
    if validate_topic_name(topic).is_err() {
        return Err(RecordError::KeyNotTopic);
    }
    let mut message = Message {
        topic: topic.into(),
        payload: value.map(Bytes::copy_from_slice).unwrap_or_default(),
        qos: 1,
        retain: false,
        publisher: None,
        properties: MessageProperties::default(),
        timestamp_ms,
    };
    let text = |v: Option<&[u8]>| String::from_utf8_lossy(v.unwrap_or_default()).into_owned();
    let shared = |v: Option<&[u8]>| ByteString::from(text(v));
    let p = &mut message.properties;
    for (name, value) in headers {
        let name = std::str::from_utf8(name).map_err(|_| RecordError::HeaderNameNotUtf8)?;
        match name {
            HEADER_QOS => message.qos = parse_qos(value).unwrap_or(1),
            HEADER_CLIENT_ID => message.publisher = Some(text(value)),
            HEADER_RETAIN => message.retain = value == Some(b"1"),
            HEADER_EXPIRY => {
                p.expiry_secs = std::str::from_utf8(value.unwrap_or_default())
                    .ok()
                    .and_then(|s| s.parse().ok())
            }
            HEADER_CONTENT_TYPE => p.content_type = Some(shared(value)),
            HEADER_PAYLOAD_FORMAT => p.payload_utf8 = value == Some(b"1"),
            HEADER_RESPONSE_TOPIC => {
                let topic = shared(value);
                if validate_topic_name(&topic).is_err() {
                    return Err(RecordError::BadResponseTopic);
                }
                p.response_topic = Some(topic);
            }
            HEADER_CORRELATION_DATA => p.correlation_data = Some(Bytes::copy_from_slice(value.unwrap_or_default())),
            other => p.user_properties.push((other.into(), shared(value))),
        }
    }
    check_lengths(&message.properties)?;
    Ok(message)
}

/// Every field a PUBLISH carries fits MQTT's two-byte length (after the lossy UTF-8
/// conversion of header values, which can make text longer).
fn check_lengths(p: &MessageProperties) -> Result<(), RecordError> {
    let too_long = |name: &str, len: usize| RecordError::HeaderTooLong {
        name: name.chars().take(64).collect(),
        len,
    };
    let fixed = [
        (HEADER_CONTENT_TYPE, p.content_type.as_ref().map_or(0, |s| s.len())),
        (HEADER_RESPONSE_TOPIC, p.response_topic.as_ref().map_or(0, |s| s.len())),
        (
            HEADER_CORRELATION_DATA,
            p.correlation_data.as_ref().map_or(0, Bytes::len),
        ),
    ];
    if let Some((name, len)) = fixed.into_iter().find(|(_, len)| *len > MAX_FIELD_LEN) {
        return Err(too_long(name, len));
    }
    match p
        .user_properties
        .iter()
        .find(|(name, value)| name.len().max(value.len()) > MAX_FIELD_LEN)
    {
        Some((name, value)) => Err(too_long(name, name.len().max(value.len()))),
        None => Ok(()),
    }
}

fn parse_qos(value: Option<&[u8]>) -> Option<u8> {
    match value? {
        b"0" => Some(0),
        b"1" => Some(1),
        b"2" => Some(2),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full_message() -> Message {
        Message {
            topic: "place/7/device/3".into(),
            payload: Bytes::from_static(b"{\"t\":21}"),
            qos: 2,
            retain: true,
            publisher: Some("dev-3".into()),
            properties: MessageProperties {
                expiry_secs: Some(3600),
                content_type: Some("application/json".into()),
                payload_utf8: true,
                response_topic: Some("replies/dev-3".into()),
                correlation_data: Some(Bytes::from_static(&[0, 159, 255])),
                user_properties: vec![
                    ("b".into(), "2".into()),
                    ("a".into(), "1".into()),
                    ("b".into(), "3".into()),
                ],
            },
            timestamp_ms: 1_700_000_000_123,
        }
    }

    fn round_trip(message: &Message) -> Message {
        let headers = headers_of(message);
        message_from_record(
            Some(message.topic.as_bytes()),
            Some(&message.payload),
            message.timestamp_ms,
            headers.iter().map(|(k, v)| (k.as_bytes(), Some(v.as_ref()))),
        )
        .expect("valid record")
    }

    #[test]
    fn every_property_round_trips_through_the_record_format() {
        let message = full_message();
        assert_eq!(round_trip(&message), message);
    }

    #[test]
    fn headers_follow_the_design_names_and_keep_user_property_order() {
        let message = full_message();
        let headers: Vec<(&str, Vec<u8>)> = headers_of(&message)
            .into_iter()
            .map(|(k, v)| (k, v.into_owned()))
            .collect();
        let names: Vec<&str> = headers.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            names,
            [
                "mqtt-qos",
                "mqtt-client-id",
                "mqtt-retain",
                "mqtt-expiry",
                "mqtt-content-type",
                "mqtt-payload-format",
                "mqtt-response-topic",
                "mqtt-correlation-data",
                "b",
                "a",
                "b"
            ]
        );
        assert_eq!(headers[0].1, b"2");
        assert_eq!(headers[3].1, b"3600");
        assert_eq!(headers[7].1, [0, 159, 255]);
    }

    #[test]
    fn a_plain_qos0_message_has_only_the_qos_header() {
        let message = Message {
            topic: "a".into(),
            payload: Bytes::new(),
            qos: 0,
            retain: false,
            publisher: None,
            properties: MessageProperties::default(),
            timestamp_ms: 0,
        };
        let names: Vec<&str> = headers_of(&message).into_iter().map(|(k, _)| k).collect();
        assert_eq!(names, ["mqtt-qos"]);
    }

    #[test]
    fn a_record_from_a_plain_kafka_producer_is_qos1_with_headers_as_user_properties() {
        let m = message_from_record(
            Some(b"sensors/1"),
            Some(b"42"),
            5,
            [(&b"source"[..], Some(&b"erp"[..])), (&b"trace"[..], None)],
        )
        .expect("valid record");
        assert_eq!(m.qos, 1);
        assert_eq!(m.publisher, None);
        assert_eq!(m.payload, Bytes::from_static(b"42"));
        assert_eq!(
            m.properties.user_properties,
            [("source".into(), "erp".into()), ("trace".into(), "".into())]
        );
    }

    #[test]
    fn null_or_invalid_keys_are_refused_and_null_values_are_empty_payloads() {
        assert_eq!(message_from_record(None, Some(b"x"), 0, []), Err(RecordError::NullKey));
        assert_eq!(
            message_from_record(Some(&[0xff]), None, 0, []),
            Err(RecordError::KeyNotUtf8)
        );
        assert_eq!(
            message_from_record(Some(b"a/#"), None, 0, []),
            Err(RecordError::KeyNotTopic)
        );
        let m = message_from_record(Some(b"a"), None, 0, []).expect("valid record");
        assert!(m.payload.is_empty());
    }

    #[test]
    fn a_header_name_that_is_not_utf8_is_refused() {
        let headers = [(&b"ok"[..], Some(&b"1"[..])), (&[0xff, 0xfe][..], Some(&b"x"[..]))];
        assert_eq!(
            message_from_record(Some(b"a"), None, 0, headers),
            Err(RecordError::HeaderNameNotUtf8)
        );
    }

    #[test]
    fn keys_and_header_fields_longer_than_mqtt_can_carry_are_refused() {
        let long = vec![b'a'; MAX_FIELD_LEN + 1];
        assert_eq!(
            message_from_record(Some(&long), None, 0, []),
            Err(RecordError::KeyTooLong(MAX_FIELD_LEN + 1))
        );
        let fits = vec![b'a'; MAX_FIELD_LEN];
        assert!(message_from_record(Some(&fits), None, 0, []).is_ok());
        for headers in [
            vec![(&long[..], Some(&b"v"[..]))],
            vec![(&b"n"[..], Some(&long[..]))],
            vec![(HEADER_CONTENT_TYPE.as_bytes(), Some(&long[..]))],
            vec![(HEADER_CORRELATION_DATA.as_bytes(), Some(&long[..]))],
        ] {
            let error = message_from_record(Some(b"a"), None, 0, headers).expect_err("too long");
            assert_eq!(error.reason(), "header_too_long", "{error}");
        }
        // 30 000 bytes that are not UTF-8 become 90 000 bytes of U+FFFD as text.
        let garbage = vec![0xffu8; 30_000];
        let error = message_from_record(Some(b"a"), None, 0, [(&b"n"[..], Some(&garbage[..]))]).expect_err("too long");
        assert_eq!(
            error,
            RecordError::HeaderTooLong {
                name: "n".into(),
                len: 90_000
            }
        );
        assert!(message_from_record(Some(b"a"), None, 0, [(&b"n"[..], Some(&fits[..]))]).is_ok());
    }

    #[test]
    fn a_response_topic_that_is_no_topic_name_is_refused() {
        let headers = [(HEADER_RESPONSE_TOPIC.as_bytes(), Some(&b"replies/#"[..]))];
        assert_eq!(
            message_from_record(Some(b"a"), None, 0, headers),
            Err(RecordError::BadResponseTopic)
        );
    }
}
