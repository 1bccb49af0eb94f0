//! The JWT guard as a CONNECT meets it: where the token is (the password, or the user
//! name), checking it with the current keys, and who the client is then. A guard that has
//! no keys yet (its JWKS could not be read) admits nobody.

use std::sync::Arc;

use super::jwt::{self, Rules, TokenError};
use super::keys::KeyStore;
use super::policy::Principal;

/// The guard's name, as routes refer to it in `guarded`.
pub const JWT: &str = "jwt";

/// Which CONNECT field carries the token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenIn {
    Password,
    Username,
}

/// A client the guard let in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Admitted {
    pub principal: Principal,
    /// When the token expires (seconds since the epoch): the connection ends then.
    pub expires_at: i64,
}

/// Why the guard refused a CONNECT.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("token refused: {0}")]
    Token(#[from] TokenError),
    #[error("the guard has no keys yet ({0}); every client is refused until it has")]
    NoKeys(String),
}

impl Refused {
    /// The client's credentials are at fault (MQTT 5 0x86), not its rights (0x87) or the
    /// server (0x88 Server unavailable, for [`Refused::NoKeys`]).
    pub fn is_bad_credentials(&self) -> bool {
        matches!(self, Refused::Token(e) if e.is_bad_credentials())
    }
}

pub struct JwtGuard {
    keys: Arc<KeyStore>,
    rules: Rules,
    token_in: TokenIn,
}

impl JwtGuard {
    pub fn new(keys: Arc<KeyStore>, rules: Rules, token_in: TokenIn) -> Self {
        Self { keys, rules, token_in }
    }

    pub fn keys(&self) -> &Arc<KeyStore> {
        &self.keys
    }

    /// Checks the token a CONNECT carries, at `now` (seconds since the epoch).
    pub fn admit(&self, username: Option<&str>, password: Option<&[u8]>, now: i64) -> Result<Admitted, Refused> {
        let token = match self.token_in {
            TokenIn::Password => match password {
                Some(bytes) => {
                    std::str::from_utf8(bytes).map_err(|_| TokenError::Malformed("the password is not UTF-8".into()))?
                }
                None => "",
            },
            TokenIn::Username => username.unwrap_or(""),
        };
        let Some(keys) = self.keys.current() else {
            return Err(Refused::NoKeys(
                self.keys.failing().unwrap_or_else(|| "not read yet".into()),
            ));
        };
        let verified = match jwt::verify(token, &keys, &self.rules, now) {
            Ok(verified) => verified,
            Err(TokenError::UnknownKey(kid)) => {
                // Perhaps the provider rotated its keys: the next attempt may find it.
                self.keys.unknown_key(&kid);
                return Err(TokenError::UnknownKey(kid).into());
            }
            Err(e) => return Err(e.into()),
        };
        Ok(Admitted {
            principal: Principal {
                guard: Some(JWT.to_owned()),
                identity: verified.subject,
                roles: verified.roles,
            },
            expires_at: verified.expires_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::jwt::KeySet;
    use super::super::jwt::test_keys::{TestKey, jwks};
    use super::super::keys::KeySource;
    use super::*;
    use serde_json::json;

    fn guard(key: &TestKey, token_in: TokenIn) -> JwtGuard {
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map(|b| {
                b.with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth()
            })
            .expect("tls");
        let keys = KeySet::from_jwks(&jwks(&[key])).expect("keys");
        let rules = Rules {
            roles_claim: "scope".into(),
            ..Rules::default()
        };
        JwtGuard::new(Arc::new(KeyStore::new(KeySource::Fixed(keys), tls)), rules, token_in)
    }

    #[test]
    fn the_token_is_taken_from_the_configured_field() {
        let key = TestKey::new("k");
        let token = key.sign(&json!({"sub": "d1", "exp": 2_000_000_000_i64, "scope": "device"}));
        let by_password = guard(&key, TokenIn::Password);
        let admitted = by_password.admit(Some("ignored"), Some(token.as_bytes()), 1_900_000_000);
        let admitted = admitted.expect("admitted");
        assert_eq!(admitted.principal.identity.as_deref(), Some("d1"));
        assert_eq!(admitted.principal.guard.as_deref(), Some(JWT));
        assert_eq!(admitted.expires_at, 2_000_000_000);
        let missing = by_password.admit(Some(&token), None, 1_900_000_000);
        assert!(matches!(missing, Err(Refused::Token(TokenError::Missing))));
        assert!(missing.is_err_and(|e| e.is_bad_credentials()));
        let by_username = guard(&key, TokenIn::Username);
        assert!(by_username.admit(Some(&token), None, 1_900_000_000).is_ok());
        assert!(by_password.admit(None, Some(&[0xff, 0xfe]), 0).is_err());
    }
}
