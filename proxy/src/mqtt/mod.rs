//! MQTT on one connection: framing (`codec`), the connection state machine
//! (`connection`), and its bookkeeping (in-flight window, topic aliases).

pub mod codec;
pub mod connect;
pub mod connection;
pub mod inflight;
pub mod topic_alias;
