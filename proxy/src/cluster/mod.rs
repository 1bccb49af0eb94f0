//! Several proxy processes as one broker (DESIGN section 4): who is alive (`membership`),
//! which process owns which sessions-topic partition and where an MQTT 5 client belongs
//! (`ownership`), and where each shared subscription stands in Kafka (`share_cursor`). Pure decisions; the heartbeats travel through the sessions topic
//! (`kafka::sessions`), and connections act on the answers (`mqtt`).

pub mod membership;
pub mod ownership;
pub mod share_cursor;
