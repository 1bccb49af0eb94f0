//! MQTT on one connection: framing (`codec`), the connection state machine
//! (`connection`), its session in Kafka (`session`) and its bookkeeping (in-flight
//! window, topic aliases).

pub mod codec;
pub mod connect;
pub mod connection;
pub mod inflight;
pub mod session;
pub mod topic_alias;
pub mod transport;
