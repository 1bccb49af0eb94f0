//! The guard and the rules a proxy runs with, from its configuration.

use std::sync::Arc;
use std::time::Duration;

use super::Security;
use super::certificate::TLS;
use super::guard::{JWT, JwtGuard, TokenIn};
use super::jwt::{KeySet, KeySetError, Rules};
use super::keys::{KeySource, KeyStore};
use super::policy::{Action, Deny, Grant, Policy};
use crate::config::{Config, DeniedAction, RouteCondition, TokenField};

/// Clock skew tolerated on token times.
const LEEWAY_SECS: i64 = 30;

/// The configuration's guard and rules could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("guards.jwt.keys: {0}")]
    Keys(KeySetError),
}

/// The security a proxy with `config` runs with; `tls` verifies `https` JWKS URLs.
pub fn security(config: &Config, tls: rustls::ClientConfig) -> Result<Security, SetupError> {
    let guard = match &config.guards.jwt {
        None => None,
        Some(jwt) => {
            let source = match (&jwt.jwks_file, jwt.jwks_location()) {
                (Some(path), _) => KeySource::File(path.into()),
                (None, Some(url)) => KeySource::Url(url),
                (None, None) => {
                    // Each configured JWK as the JSON it was given in.
                    let jwks: Vec<jsonwebtoken::jwk::Jwk> = jwt
                        .keys
                        .iter()
                        .filter_map(|k| serde_json::to_value(k).ok())
                        .filter_map(|v| serde_json::from_value(v).ok())
                        .collect();
                    KeySource::Fixed(KeySet::from_jwks_keys(&jwks).map_err(SetupError::Keys)?)
                }
            };
            let rules = Rules {
                issuer: jwt.issuer.clone(),
                audience: jwt.audience.clone(),
                roles_claim: jwt.roles_claim.clone(),
                leeway_secs: LEEWAY_SECS,
            };
            let token_in = match jwt.credentials {
                TokenField::Password => TokenIn::Password,
                TokenField::Username => TokenIn::Username,
            };
            Some(JwtGuard::new(Arc::new(KeyStore::new(source, tls)), rules, token_in))
        }
    };
    let denies = config
        .authorization
        .deny
        .iter()
        .map(|rule| Deny {
            filter: rule.topic.clone(),
            actions: rule
                .actions
                .iter()
                .map(|a| match a {
                    DeniedAction::Publish => Action::Publish,
                    DeniedAction::Subscribe => Action::Subscribe,
                })
                .collect(),
        })
        .collect();
    Ok(Security {
        guard,
        policy: Policy::new(grants(config), denies),
    })
}

/// How often the guard's JWKS file or URL is read again.
pub fn keys_refresh(config: &Config) -> Duration {
    let seconds = config.guards.jwt.as_ref().map_or(300, |j| j.refresh_seconds.max(10));
    Duration::from_secs(u64::from(seconds))
}

/// One grant per guarded route, guard and condition topic.
fn grants(config: &Config) -> Vec<Grant> {
    let mut grants = Vec::new();
    for route in &config.routes {
        for (guard, roles) in &route.guarded {
            for condition in &route.when {
                let action = match condition {
                    RouteCondition::Publish(_) => Action::Publish,
                    RouteCondition::Subscribe(_) => Action::Subscribe,
                };
                for topic in condition.topics() {
                    grants.push(Grant {
                        action,
                        filter: topic.topic.clone(),
                        guard: guard.clone(),
                        roles: roles.clone(),
                    });
                }
            }
        }
    }
    debug_assert!(
        grants.iter().all(|g| g.guard == JWT || g.guard == TLS),
        "only the jwt and tls guards exist"
    );
    grants
}
