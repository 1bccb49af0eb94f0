//! The Kafka record format of DESIGN section 2: how a [`Message`] becomes a record's key,
//! value and headers, and how any record on a messages or retained topic becomes a
//! [`Message`] again. Pure functions; the producer and consumers do the I/O.

use std::borrow::Cow;

use bytes::Bytes;

use crate::broker::message::{Message, MessageProperties};

pub const HEADER_QOS: &str = "mqtt-qos";
pub const HEADER_CLIENT_ID: &str = "mqtt-client-id";
pub const HEADER_RETAIN: &str = "mqtt-retain";
pub const HEADER_EXPIRY: &str = "mqtt-expiry";
pub const HEADER_CONTENT_TYPE: &str = "mqtt-content-type";
pub const HEADER_PAYLOAD_FORMAT: &str = "mqtt-payload-format";
pub const HEADER_RESPONSE_TOPIC: &str = "mqtt-response-topic";
pub const HEADER_CORRELATION_DATA: &str = "mqtt-correlation-data";

/// Why a record cannot be delivered as an MQTT message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    #[error("record has a null key (the key must be the MQTT topic)")]
    NullKey,
    #[error("record key is not UTF-8")]
    KeyNotUtf8,
    #[error("record key is not a valid MQTT topic name")]
    KeyNotTopic,
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
        headers.push((name.as_str(), Cow::Borrowed(value.as_bytes())));
    }
    headers
}

/// Rebuilds the message from a record's parts. Records without `mqtt-qos` came from a
/// plain Kafka producer: they count as QoS 1 and all their headers become User Properties.
/// A null value is an empty payload.
pub fn message_from_record<'a>(
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    timestamp_ms: i64,
    headers: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>)>,
) -> Result<Message, RecordError> {
    let key = key.ok_or(RecordError::NullKey)?;
    let topic = std::str::from_utf8(key).map_err(|_| RecordError::KeyNotUtf8)?;
    if topic.is_empty() || topic.contains(['+', '#', '\0']) {
        return Err(RecordError::KeyNotTopic);
    }
    let mut message = Message {
        topic: topic.to_owned(),
        payload: value.map(Bytes::copy_from_slice).unwrap_or_default(),
        qos: 1,
        retain: false,
        publisher: None,
        properties: MessageProperties::default(),
        timestamp_ms,
    };
    let text = |v: Option<&[u8]>| String::from_utf8_lossy(v.unwrap_or_default()).into_owned();
    let p = &mut message.properties;
    for (name, value) in headers {
        match name {
            HEADER_QOS => message.qos = parse_qos(value).unwrap_or(1),
            HEADER_CLIENT_ID => message.publisher = Some(text(value)),
            HEADER_RETAIN => message.retain = value == Some(b"1"),
            HEADER_EXPIRY => {
                p.expiry_secs = std::str::from_utf8(value.unwrap_or_default())
                    .ok()
                    .and_then(|s| s.parse().ok())
            }
            HEADER_CONTENT_TYPE => p.content_type = Some(text(value)),
            HEADER_PAYLOAD_FORMAT => p.payload_utf8 = value == Some(b"1"),
            HEADER_RESPONSE_TOPIC => p.response_topic = Some(text(value)),
            HEADER_CORRELATION_DATA => p.correlation_data = Some(Bytes::copy_from_slice(value.unwrap_or_default())),
            other => p.user_properties.push((other.to_owned(), text(value))),
        }
    }
    Ok(message)
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
            headers.iter().map(|(k, v)| (*k, Some(v.as_ref()))),
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
            [("source", Some(&b"erp"[..])), ("trace", None)],
        )
        .expect("valid record");
        assert_eq!(m.qos, 1);
        assert_eq!(m.publisher, None);
        assert_eq!(m.payload, Bytes::from_static(b"42"));
        assert_eq!(
            m.properties.user_properties,
            [("source".into(), "erp".into()), ("trace".into(), String::new())]
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
}
