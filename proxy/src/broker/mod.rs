//! Broker decisions, pure: topic rules, the subscription index, routes, `clients`
//! identities, the retained view, and the hub that ties them to live connections.

pub mod hub;
pub mod identity;
pub mod message;
pub mod retained;
pub mod routes;
pub mod session;
pub mod subscriptions;
pub mod topic;
