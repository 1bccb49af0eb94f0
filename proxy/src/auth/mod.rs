//! Authentication and authorization, consulted by the connection (never calling it back):
//! who a client is (`jwt`: tokens checked against keys from `keys`) and what it may do
//! (`policy`: pure decisions from guarded routes and deny rules, over the filter relations
//! in `filters`). A verified client certificate can stand for a client too (`certificate`,
//! the `tls` guard) when no JWT guard is configured.

pub mod certificate;
pub mod filters;
pub mod guard;
pub mod jwt;
pub mod keys;
pub mod policy;
pub mod setup;

/// What a proxy checks: who may connect (`guard`: none means anyone) and what each client
/// may do (`policy`).
#[derive(Default)]
pub struct Security {
    pub guard: Option<guard::JwtGuard>,
    pub policy: policy::Policy,
}
