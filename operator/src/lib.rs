//! mqtt-kafka-operator: reconciles `MqttKafkaProxy` resources into sharded proxy pods,
//! their Kafka topics and status. See `shared/DESIGN.md` section 5.
//!
//! Decisions are pure functions (`resources`, `topics::plan`, `claims`, `status`); I/O happens at
//! the edges (`controller`, `topics`' Kafka calls, `election`, `http`).

pub mod claims;
pub mod controller;
pub mod crd;
pub mod election;
pub mod http;
pub mod metrics;
pub mod resources;
pub mod status;
pub mod topics;
