//! Broker decisions, pure: topic rules, the subscription index, routes, `clients`
//! identities, the retained view, session state and transitions. Nothing here does I/O
//! (the `hub` ties these decisions to live connections and Kafka).

pub mod identity;
pub mod message;
pub mod retained;
pub mod routes;
pub mod session;
pub mod subscriptions;
pub mod topic;
