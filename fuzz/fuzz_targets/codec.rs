//! The MQTT codec on arbitrary bytes, as a client could send them, in arbitrary chunks:
//! it must never panic, never hold more than the bytes it was given plus one packet, and
//! every packet it decodes must encode again (the server encodes the same model back).
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use mqtt_kafka_proxy::mqtt::codec::MqttCodec;
use rmqtt_codec::v5::Packet;
use tokio_util::codec::{Decoder, Encoder};

fuzz_target!(|data: &[u8]| {
    let Some((&chunking, bytes)) = data.split_first() else { return };
    // A small maximum packet size, so that limits are hit as often as not.
    let limit: usize = if chunking & 0x80 != 0 { 256 } else { 64 * 1024 };
    let mut codec = MqttCodec::new(u32::try_from(limit).unwrap_or(u32::MAX));
    let chunk = usize::from(chunking & 0x3f) + 1;
    let mut buffer = BytesMut::new();
    for piece in bytes.chunks(chunk) {
        buffer.extend_from_slice(piece);
        loop {
            match codec.decode(&mut buffer) {
                Ok(Some(packet)) => {
                    if matches!(packet, Packet::Connect(_)) {
                        codec.connect_accepted();
                    }
                    let mut out = BytesMut::new();
                    // Encoding may refuse (a packet type only clients send); never panic.
                    let _ = codec.encode(packet, &mut out);
                }
                Ok(None) => break,
                Err(_) => return, // the connection would be closed with its reason code
            }
        }
        // Memory is bounded by what arrived plus at most one packet of the limit, whatever
        // length a header announces.
        assert!(
            buffer.capacity() <= bytes.len() + limit + 1024,
            "buffer capacity {} for {} bytes in",
            buffer.capacity(),
            bytes.len()
        );
    }
});
