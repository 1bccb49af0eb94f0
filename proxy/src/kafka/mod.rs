//! Everything that talks to Kafka: the record format, the producer, the fan-out and
//! retained readers, topic administration, reachability.

pub mod admin;
pub mod consumer;
pub mod partitioner;
pub mod probe;
pub mod producer;
pub mod record;
