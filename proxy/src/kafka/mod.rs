//! Everything that talks to Kafka: the record format, the producer, the fan-out and
//! retained readers, topic administration, and the health of each client.

pub mod admin;
pub mod consumer;
pub mod headers;
pub mod health;
pub mod partitioner;
pub mod producer;
pub mod qos0;
pub mod record;
pub mod replay;
pub mod security;
pub mod sessions;
