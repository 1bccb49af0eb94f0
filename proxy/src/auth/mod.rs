//! Authentication and authorization, consulted by the connection (never calling it back):
//! who a client is (`jwt`: tokens checked against keys from `keys`) and what it may do
//! (`policy`: pure decisions from guarded routes and deny rules, over the filter relations
//! in `filters`).

pub mod filters;
pub mod jwt;
pub mod keys;
pub mod policy;
