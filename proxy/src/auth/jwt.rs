//! JWT verification: a token (from the CONNECT password or user name) checked against a
//! set of public keys, its issuer, audience and validity window, giving who the client is
//! and its roles. Pure: the time is an argument, the keys a value (`keys` keeps them
//! fresh).

use std::collections::BTreeSet;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

/// What a token must satisfy besides its signature.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rules {
    /// Required `iss`.
    pub issuer: Option<String>,
    /// Required value among `aud`.
    pub audience: Option<String>,
    /// The claim holding the roles: a space-separated string (OAuth 2.0 `scope`) or an
    /// array of strings.
    pub roles_claim: String,
    /// Clock skew tolerated on `exp` and `nbf`, seconds.
    pub leeway_secs: i64,
}

/// A verified token: who the client is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    /// `sub`: the client's identity (`{identity}` in routes and `clients` patterns).
    pub subject: Option<String>,
    pub roles: BTreeSet<String>,
    /// `exp`, seconds since the epoch: the connection ends then.
    pub expires_at: i64,
}

/// Why a token was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("no token: the client sent no credentials")]
    Missing,
    #[error("not a JWT: {0}")]
    Malformed(String),
    #[error("signed with key id {0:?}, which the guard does not know")]
    UnknownKey(String),
    #[error("no key of the guard verifies its signature")]
    BadSignature,
    #[error("algorithm {0} is not one the guard's keys use")]
    WrongAlgorithm(String),
    #[error("expired at {0}")]
    Expired(i64),
    #[error("not valid before {0}")]
    NotYetValid(i64),
    #[error("has no exp claim (tokens that never expire are refused)")]
    NoExpiry,
    #[error("issuer is not the configured one")]
    WrongIssuer,
    #[error("audience does not include the configured one")]
    WrongAudience,
}

impl TokenError {
    /// The credentials themselves are bad (missing, unreadable, forged): MQTT 5 0x86 Bad
    /// User Name or Password. Otherwise a genuine token that may not connect (expired,
    /// for another issuer or audience): 0x87 Not authorized.
    pub fn is_bad_credentials(&self) -> bool {
        matches!(
            self,
            TokenError::Missing
                | TokenError::Malformed(_)
                | TokenError::UnknownKey(_)
                | TokenError::BadSignature
                | TokenError::WrongAlgorithm(_)
        )
    }
}

/// One verification key.
#[derive(Clone)]
struct Key {
    id: Option<String>,
    /// `alg` of the JWK, when it names one: tokens must use it.
    algorithm: Option<Algorithm>,
    key: DecodingKey,
}

/// The keys a guard verifies tokens with, by key id.
#[derive(Clone, Default)]
pub struct KeySet {
    keys: Vec<Key>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.keys.iter().map(|k| &k.id)).finish()
    }
}

/// A JWKS that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeySetError {
    #[error("not a JWKS (a JSON object with a `keys` array of JWKs): {0}")]
    NotJwks(String),
    #[error("key {index} ({kid:?}): {reason}")]
    BadKey {
        index: usize,
        kid: Option<String>,
        reason: String,
    },
    #[error("the JWKS has no keys")]
    Empty,
}

impl KeySet {
    /// The keys of a JWKS document (`{"keys": [...]}`).
    pub fn from_jwks(json: &[u8]) -> Result<Self, KeySetError> {
        let set: JwkSet = serde_json::from_slice(json).map_err(|e| KeySetError::NotJwks(e.to_string()))?;
        Self::from_jwks_keys(&set.keys)
    }

    /// The keys of JWKs given one by one.
    pub fn from_jwks_keys(jwks: &[Jwk]) -> Result<Self, KeySetError> {
        let mut keys = Vec::with_capacity(jwks.len());
        for (index, jwk) in jwks.iter().enumerate() {
            let kid = jwk.common.key_id.clone();
            let bad = |reason: String| KeySetError::BadKey {
                index,
                kid: kid.clone(),
                reason,
            };
            if matches!(jwk.algorithm, jsonwebtoken::jwk::AlgorithmParameters::OctetKey(_)) {
                return Err(bad("shared secrets (kty oct) are not accepted: give public keys".into()));
            }
            let key = DecodingKey::from_jwk(jwk).map_err(|e| bad(e.to_string()))?;
            let algorithm = match jwk.common.key_algorithm {
                Some(a) => Some(
                    a.to_string()
                        .parse::<Algorithm>()
                        .map_err(|_| bad(format!("algorithm {a} is not a signature algorithm")))?,
                ),
                None => None,
            };
            keys.push(Key {
                id: kid,
                algorithm,
                key,
            });
        }
        if keys.is_empty() {
            return Err(KeySetError::Empty);
        }
        Ok(Self { keys })
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Whether a key has this id.
    pub fn has(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.id.as_deref() == Some(kid))
    }
}

/// Checks `token` at `now` (seconds since the epoch).
pub fn verify(token: &str, keys: &KeySet, rules: &Rules, now: i64) -> Result<Verified, TokenError> {
    let token = token.trim();
    if token.is_empty() {
        return Err(TokenError::Missing);
    }
    let header = jsonwebtoken::decode_header(token).map_err(|e| TokenError::Malformed(e.to_string()))?;
    let candidates: Vec<&Key> = match &header.kid {
        Some(kid) => {
            let found: Vec<&Key> = keys.keys.iter().filter(|k| k.id.as_deref() == Some(kid)).collect();
            if found.is_empty() {
                return Err(TokenError::UnknownKey(kid.clone()));
            }
            found
        }
        None => keys.keys.iter().collect(),
    };
    let candidates: Vec<&Key> = candidates
        .into_iter()
        .filter(|k| k.algorithm.is_none_or(|a| a == header.alg) && k.key.family() == header.alg.family())
        .collect();
    if candidates.is_empty() {
        return Err(TokenError::WrongAlgorithm(format!("{:?}", header.alg)));
    }
    // Time is checked below against `now`, not the system clock; issuer and audience here.
    let mut validation = Validation::new(header.alg);
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.required_spec_claims.clear();
    validation.validate_aud = rules.audience.is_some();
    if let Some(audience) = &rules.audience {
        validation.set_audience(&[audience]);
    }
    if let Some(issuer) = &rules.issuer {
        validation.set_issuer(&[issuer]);
    }
    let mut last = TokenError::BadSignature;
    for key in candidates {
        match jsonwebtoken::decode::<Value>(token, &key.key, &validation) {
            Ok(data) => return claims(&data.claims, rules, now),
            Err(e) => {
                last = match e.kind() {
                    ErrorKind::InvalidIssuer => TokenError::WrongIssuer,
                    ErrorKind::InvalidAudience => TokenError::WrongAudience,
                    ErrorKind::InvalidSignature => TokenError::BadSignature,
                    ErrorKind::MissingRequiredClaim(claim) if claim == "iss" => TokenError::WrongIssuer,
                    ErrorKind::MissingRequiredClaim(claim) if claim == "aud" => TokenError::WrongAudience,
                    other => TokenError::Malformed(format!("{other:?}")),
                };
                // A wrong issuer or audience is in the claims: another key will not help.
                if matches!(last, TokenError::WrongIssuer | TokenError::WrongAudience) {
                    return Err(last);
                }
            }
        }
    }
    Err(last)
}

/// The verified claims, checked against `now`.
fn claims(claims: &Value, rules: &Rules, now: i64) -> Result<Verified, TokenError> {
    let number = |name: &str| claims.get(name).and_then(Value::as_i64);
    let expires_at = number("exp").ok_or(TokenError::NoExpiry)?;
    if now > expires_at + rules.leeway_secs {
        return Err(TokenError::Expired(expires_at));
    }
    if let Some(not_before) = number("nbf")
        && now + rules.leeway_secs < not_before
    {
        return Err(TokenError::NotYetValid(not_before));
    }
    let roles = match claims.get(&rules.roles_claim) {
        Some(Value::String(scope)) => scope.split_whitespace().map(str::to_owned).collect(),
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
        _ => BTreeSet::new(),
    };
    Ok(Verified {
        subject: claims.get("sub").and_then(Value::as_str).map(str::to_owned),
        roles,
        expires_at,
    })
}

#[cfg(test)]
pub(crate) mod test_keys {
    //! Signing keys for tests: Ed25519 pairs made with rcgen, and tokens signed with them.
    use base64::Engine as _;
    use jsonwebtoken::{EncodingKey, Header, encode};

    pub struct TestKey {
        pub kid: String,
        pkcs8: Vec<u8>,
        public: Vec<u8>,
    }

    impl TestKey {
        pub fn new(kid: &str) -> Self {
            let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("ed25519 key");
            Self {
                kid: kid.to_owned(),
                pkcs8: pair.serialize_der(),
                public: pair.public_key_raw().to_vec(),
            }
        }

        /// The public key as a JWK (JSON).
        pub fn jwk(&self) -> serde_json::Value {
            let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&self.public);
            serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": x, "kid": self.kid, "alg": "EdDSA", "use": "sig"})
        }

        pub fn sign(&self, claims: &serde_json::Value) -> String {
            let mut header = Header::new(jsonwebtoken::Algorithm::EdDSA);
            header.kid = Some(self.kid.clone());
            encode(&header, claims, &EncodingKey::from_ed_der(&self.pkcs8)).expect("signs")
        }
    }

    /// A JWKS of `keys`.
    pub fn jwks(keys: &[&TestKey]) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({"keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>()}))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::test_keys::{TestKey, jwks};
    use super::*;
    use serde_json::json;

    const NOW: i64 = 1_800_000_000;

    fn rules() -> Rules {
        Rules {
            issuer: Some("https://issuer.example".into()),
            audience: Some("mqtt".into()),
            roles_claim: "scope".into(),
            leeway_secs: 30,
        }
    }

    fn claims(extra: serde_json::Value) -> serde_json::Value {
        let mut c = json!({"iss": "https://issuer.example", "aud": "mqtt", "sub": "d1", "exp": NOW + 600, "scope": "device telemetry"});
        if let (Some(c), Some(extra)) = (c.as_object_mut(), extra.as_object()) {
            for (k, v) in extra {
                c.insert(k.clone(), v.clone());
            }
        }
        c
    }

    #[test]
    fn a_valid_token_gives_its_subject_roles_and_expiry() {
        let key = TestKey::new("k1");
        let keys = KeySet::from_jwks(&jwks(&[&key])).expect("jwks");
        let verified = verify(&key.sign(&claims(json!({}))), &keys, &rules(), NOW).expect("valid");
        assert_eq!(verified.subject.as_deref(), Some("d1"));
        assert_eq!(verified.roles, ["device", "telemetry"].map(String::from).into());
        assert_eq!(verified.expires_at, NOW + 600);
        let arrays = Rules {
            roles_claim: "roles".into(),
            ..rules()
        };
        let token = key.sign(&claims(json!({"roles": ["a", "b"]})));
        assert_eq!(verify(&token, &keys, &arrays, NOW).map(|v| v.roles.len()), Ok(2));
    }

    #[test]
    fn each_kind_of_bad_token_is_refused_for_its_reason() {
        let key = TestKey::new("k1");
        let other = TestKey::new("k1"); // same kid, another key: a forgery
        let keys = KeySet::from_jwks(&jwks(&[&key])).expect("jwks");
        let r = rules();
        let check = |token: &str| verify(token, &keys, &r, NOW);
        assert_eq!(check(""), Err(TokenError::Missing));
        assert!(matches!(check("not.a.jwt"), Err(TokenError::Malformed(_))));
        assert_eq!(check(&other.sign(&claims(json!({})))), Err(TokenError::BadSignature));
        assert_eq!(
            check(&TestKey::new("k9").sign(&claims(json!({})))),
            Err(TokenError::UnknownKey("k9".into()))
        );
        assert_eq!(
            check(&key.sign(&claims(json!({"exp": NOW - 31})))),
            Err(TokenError::Expired(NOW - 31))
        );
        assert!(check(&key.sign(&claims(json!({"exp": NOW - 29})))).is_ok(), "leeway");
        assert_eq!(
            check(&key.sign(&claims(json!({"nbf": NOW + 100})))),
            Err(TokenError::NotYetValid(NOW + 100))
        );
        assert_eq!(
            check(&key.sign(&claims(json!({"iss": "https://evil.example"})))),
            Err(TokenError::WrongIssuer)
        );
        assert_eq!(
            check(&key.sign(&claims(json!({"aud": "other"})))),
            Err(TokenError::WrongAudience)
        );
        let mut no_exp = claims(json!({}));
        no_exp.as_object_mut().map(|c| c.remove("exp"));
        assert_eq!(check(&key.sign(&no_exp)), Err(TokenError::NoExpiry));
        // Tampered payload: the signature no longer matches.
        let token = key.sign(&claims(json!({})));
        let parts: Vec<&str> = token.split('.').collect();
        let forged_claims = base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            serde_json::to_vec(&claims(json!({"scope": "admin"}))).unwrap_or_default(),
        );
        let tampered = format!("{}.{}.{}", parts[0], forged_claims, parts[2]);
        assert_eq!(check(&tampered), Err(TokenError::BadSignature));
        assert!(TokenError::BadSignature.is_bad_credentials() && !TokenError::Expired(0).is_bad_credentials());
    }

    #[test]
    fn a_jwks_with_secrets_or_nothing_usable_is_refused() {
        assert!(matches!(KeySet::from_jwks(b"{}"), Err(KeySetError::NotJwks(_))));
        assert!(matches!(KeySet::from_jwks(br#"{"keys": []}"#), Err(KeySetError::Empty)));
        let oct = br#"{"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "s"}]}"#;
        assert!(matches!(KeySet::from_jwks(oct), Err(KeySetError::BadKey { .. })));
    }
}
