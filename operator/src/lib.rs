//! mqtt-kafka-operator: reconciles `MqttKafkaProxy` resources into sharded proxy pods,
//! their Kafka topics and status. See `shared/DESIGN.md` section 5.
//!
//! Decisions are pure functions (`resources`, `topics::plan`, `status`); I/O happens at
//! the edges (`controller`, `topics`' Kafka calls, `election`, `http`).

pub mod crd;
pub mod resources;
