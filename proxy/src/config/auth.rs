//! The configuration of the guard and of the rules for every client: who may connect
//! (`guards`) and what every client may not do (`authorization`). Enforced by `auth`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Rules that hold for every client.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Authorization {
    /// Topic filters nobody may publish to or subscribe to (a SUBSCRIBE whose filter could
    /// match one of them is refused as a whole: 0x87, 3.1.1 0x80).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<DenyRule>,
}

impl Authorization {
    pub fn is_empty(&self) -> bool {
        self.deny.is_empty()
    }
}

/// A topic filter closed to every client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DenyRule {
    /// MQTT topic filter, e.g. `internal/#`.
    #[schemars(length(min = 1))]
    pub topic: String,
    /// What is refused; default both.
    #[serde(default = "both_actions")]
    pub actions: Vec<DeniedAction>,
}

/// An action a deny rule refuses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeniedAction {
    Publish,
    Subscribe,
}

fn both_actions() -> Vec<DeniedAction> {
    vec![DeniedAction::Publish, DeniedAction::Subscribe]
}

/// Authorization guards. A guard's name is its key here (`jwt`), and routes refer to it
/// by that name in `guarded`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Guards {
    /// JWT guard: clients present a token (checked by the auth module) whose roles claim
    /// must hold one of the roles a route asks for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtGuard>,
}

impl super::Config {
    /// Whether a listener makes client certificates principals (`tls.clientIdentity`):
    /// then routes may be guarded by the `tls` guard.
    pub fn identifies_clients_by_certificate(&self) -> bool {
        self.listeners.iter().any(|l| {
            l.tls
                .as_ref()
                .is_some_and(|t| t.client_ca_file.is_some() && t.client_identity.is_some())
        })
    }
}

impl Guards {
    /// Whether no guard is configured.
    pub fn is_empty(&self) -> bool {
        self.jwt.is_none()
    }

    /// Names of the configured guards.
    pub fn names(&self) -> Vec<&'static str> {
        let mut names = Vec::new();
        if self.jwt.is_some() {
            names.push("jwt");
        }
        names
    }
}

/// JWT guard settings (named as in Zilla's `jwt` guard where they exist there). The
/// verification keys come from one of `keys`, `jwksFile` and `jwksUrl`; with none of them,
/// from `{issuer}/.well-known/jwks.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtGuard {
    /// Required `iss` claim, if set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Required `aud` claim value, if set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// Public verification keys as JWKs (RSA, EC or OKP; private members are refused).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<Jwk>,
    /// Path of a JWKS file (`{"keys": [...]}`), instead of `keys`; read again every
    /// `refreshSeconds` and when a token names an unknown key id (a mounted ConfigMap or
    /// Secret that Kubernetes updates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_file: Option<String>,
    /// URL of a JWKS (an identity provider's `jwks_uri`), instead of `keys`; fetched again
    /// like `jwksFile`. A failed fetch keeps the last good keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_url: Option<String>,
    /// How often `jwksFile` / `jwksUrl` are read again, seconds.
    #[serde(default = "default_jwks_refresh")]
    #[schemars(range(min = 10))]
    pub refresh_seconds: u32,
    /// Claim holding the roles: a space-separated string (OAuth 2.0 `scope`) or an array.
    #[serde(default = "default_roles_claim")]
    pub roles_claim: String,
    /// Which CONNECT field carries the token: `password` (default) or `username`.
    #[serde(default)]
    pub credentials: TokenField,
}

/// The CONNECT field a token is read from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TokenField {
    #[default]
    Password,
    Username,
}

fn default_jwks_refresh() -> u32 {
    300
}

impl JwtGuard {
    /// Where the keys come from: `keys`, `jwksFile`, `jwksUrl`, else the issuer's
    /// well-known JWKS.
    pub fn jwks_location(&self) -> Option<String> {
        self.jwks_file.clone().or_else(|| self.jwks_url.clone()).or_else(|| {
            self.issuer
                .as_ref()
                .filter(|_| self.keys.is_empty())
                .map(|i| format!("{}/.well-known/jwks.json", i.trim_end_matches('/')))
        })
    }
}

/// A public JSON Web Key (RFC 7517). Member names are the JWK ones.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Jwk {
    /// Key type: `RSA`, `EC` or `OKP`.
    pub kty: String,
    /// Key id, matched against the token's `kid` header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    /// Algorithm, e.g. `RS256`, `ES256`, `EdDSA`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alg: Option<String>,
    /// Intended use (`sig`).
    #[serde(default, rename = "use", skip_serializing_if = "Option::is_none")]
    pub use_: Option<String>,
    /// Permitted operations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_ops: Option<Vec<String>>,
    /// RSA modulus (base64url).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<String>,
    /// RSA exponent (base64url).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e: Option<String>,
    /// EC / OKP curve, e.g. `P-256`, `Ed25519`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crv: Option<String>,
    /// EC / OKP public x coordinate (base64url).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x: Option<String>,
    /// EC public y coordinate (base64url).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub y: Option<String>,
    /// X.509 certificate chain (base64 DER).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x5c: Option<Vec<String>>,
    /// X.509 SHA-1 thumbprint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x5t: Option<String>,
    /// X.509 SHA-256 thumbprint.
    #[serde(default, rename = "x5t#S256", skip_serializing_if = "Option::is_none")]
    pub x5t_s256: Option<String>,
}

fn default_roles_claim() -> String {
    "scope".to_owned()
}
