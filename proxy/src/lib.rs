//! mqtt-kafka-proxy: an MQTT 3.1.1 / 5.0 broker whose messages, retained messages and
//! sessions live in Kafka. See `shared/DESIGN.md` for the contract it implements.
//!
//! Data flows one way: `listener` accepts byte streams, `mqtt` turns them into packets and
//! runs each connection, `broker` decides (subscriptions, routes, retained view, session
//! state), `kafka` stores and reads. `hub` sits above both: it ties the broker's decisions
//! to the live connections and to Kafka. `cluster` decides ownership and redirects, `node`
//! runs those decisions; `auth` says who a client is and what it may do; `admin` serves
//! health and metrics.

pub mod admin;
pub mod auth;
pub mod broker;
pub mod cluster;
pub mod config;
pub mod hub;
pub mod kafka;
pub mod latch;
pub mod listener;
pub mod log_limit;
pub mod metrics;
pub mod mqtt;
pub mod node;
pub mod server;
pub mod signals;
pub mod supervisor;
