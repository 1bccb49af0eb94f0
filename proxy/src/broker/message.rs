//! The application message as the broker handles it, independent of MQTT version and of
//! Kafka: what a PUBLISH carries in, what a Kafka record carries, what a delivery sends out.

use bytes::Bytes;
use bytestring::ByteString;

/// MQTT 5 properties that travel with a message (through Kafka headers).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MessageProperties {
    /// Message Expiry Interval in seconds, as published.
    pub expiry_secs: Option<u32>,
    pub content_type: Option<ByteString>,
    /// Payload Format Indicator = 1 (UTF-8).
    pub payload_utf8: bool,
    pub response_topic: Option<ByteString>,
    pub correlation_data: Option<Bytes>,
    /// User Properties, order kept, names may repeat.
    pub user_properties: Vec<(ByteString, ByteString)>,
}

/// One application message. Its strings are `ByteString`s (shared bytes, as the codec's
/// packets hold them): a message delivered to many subscribers hands each PUBLISH the same
/// topic and properties instead of a copy, and a PUBLISH received is kept without one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub topic: ByteString,
    pub payload: Bytes,
    /// The QoS it was published with (records from plain Kafka producers count as 1).
    pub qos: u8,
    /// RETAIN was set on the PUBLISH.
    pub retain: bool,
    /// The publisher's client id, when an MQTT client published it (for No Local).
    pub publisher: Option<String>,
    pub properties: MessageProperties,
    /// When the proxy received it (Kafka CreateTime), milliseconds since the epoch.
    pub timestamp_ms: i64,
}

impl Message {
    /// Seconds of expiry left at `now_ms`: `None` when the message never expires,
    /// `Some(0)` when it has expired and must not be delivered.
    pub fn remaining_expiry_secs(&self, now_ms: i64) -> Option<u32> {
        let expiry = self.properties.expiry_secs?;
        let elapsed_secs = (now_ms - self.timestamp_ms).max(0) / 1000;
        Some(u32::try_from(i64::from(expiry) - elapsed_secs).unwrap_or(0))
    }

    /// The message has an expiry interval and it has run out at `now_ms`.
    pub fn is_expired(&self, now_ms: i64) -> bool {
        self.remaining_expiry_secs(now_ms) == Some(0)
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(expiry: Option<u32>, timestamp_ms: i64) -> Message {
        Message {
            topic: "t".into(),
            payload: Bytes::new(),
            qos: 1,
            retain: false,
            publisher: None,
            properties: MessageProperties {
                expiry_secs: expiry,
                ..Default::default()
            },
            timestamp_ms,
        }
    }

    #[test]
    fn expiry_counts_down_in_whole_seconds_from_the_timestamp() {
        let m = message(Some(10), 1_000_000);
        assert_eq!(m.remaining_expiry_secs(1_000_000), Some(10));
        assert_eq!(m.remaining_expiry_secs(1_003_999), Some(7));
        assert_eq!(m.remaining_expiry_secs(1_010_000), Some(0));
        assert!(m.is_expired(1_020_000));
        assert!(!m.is_expired(1_009_000));
    }

    #[test]
    fn a_message_without_expiry_never_expires() {
        let m = message(None, 0);
        assert_eq!(m.remaining_expiry_secs(i64::MAX), None);
        assert!(!m.is_expired(i64::MAX));
    }

    #[test]
    fn a_timestamp_in_the_future_does_not_extend_expiry() {
        let m = message(Some(5), 10_000);
        assert_eq!(m.remaining_expiry_secs(0), Some(5));
    }
}
