//! The TLS material of a listener: its PEM files (certificate chain, key, optionally the CA
//! bundle client certificates must chain to), the rustls configuration made from them, and
//! reading them again while serving.
//!
//! At start-up a file that is missing or holds no usable PEM stops the start with an error
//! naming the file. Afterwards the files are read again every `tls.reloadSeconds`; when
//! their contents changed (a Kubernetes Secret rotated: the mounted directory's `..data`
//! symlink now points at new files) the next handshakes use the new material, while
//! connections already open keep theirs. Files that cannot be used (a half-written or
//! mismatched rotation) keep the last good material: logged once per change and counted
//! in `mqtt_kafka_tls_reloads_total{result="failure"}`, never a listener that fails every
//! handshake.

use std::io;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;

use crate::auth::certificate;
use crate::config::{ClientAuth, Tls};
use crate::metrics::Metrics;

/// Which of the PEM files an error is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PemKind {
    Certificate,
    PrivateKey,
    ClientCa,
}

impl std::fmt::Display for PemKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PemKind::Certificate => "certificate",
            PemKind::PrivateKey => "private key",
            PemKind::ClientCa => "client CA certificate",
        })
    }
}

/// Why the TLS material of a listener cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read TLS {kind} file {path}: {source}")]
    Read {
        kind: PemKind,
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("TLS {kind} file {path} holds no PEM {kind}")]
    Empty { kind: PemKind, path: String },
    #[error("TLS {kind} file {path} is not valid PEM: {source}")]
    Pem {
        kind: PemKind,
        path: String,
        #[source]
        source: pem::Error,
    },
    #[error("TLS certificate file {cert_file} and key file {key_file} cannot be used: {source}")]
    Unusable {
        cert_file: String,
        key_file: String,
        #[source]
        source: rustls::Error,
    },
    #[error("TLS client CA certificate file {path} cannot be used: {reason}")]
    ClientCa { path: String, reason: String },
}

/// The contents of a listener's PEM files.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Material {
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
    pub client_ca: Option<Vec<u8>>,
}

fn read_error(kind: PemKind, path: &str) -> impl FnOnce(io::Error) -> TlsError {
    move |source| TlsError::Read {
        kind,
        path: path.to_owned(),
        source,
    }
}

impl Material {
    /// Reads the files `tls` names (blocking: for start-up).
    pub fn read(tls: &Tls) -> Result<Self, TlsError> {
        let read = |kind, path: &str| std::fs::read(path).map_err(read_error(kind, path));
        Ok(Material {
            cert: read(PemKind::Certificate, &tls.cert_file)?,
            key: read(PemKind::PrivateKey, &tls.key_file)?,
            client_ca: match &tls.client_ca_file {
                None => None,
                Some(path) => Some(read(PemKind::ClientCa, path)?),
            },
        })
    }

    /// Reads the files `tls` names without blocking the runtime.
    pub async fn read_async(tls: &Tls) -> Result<Self, TlsError> {
        let owned = tls.clone();
        match tokio::task::spawn_blocking(move || Material::read(&owned)).await {
            Ok(read) => read,
            // Only at runtime shutdown (the read itself cannot panic).
            Err(error) => Err(TlsError::Read {
                kind: PemKind::Certificate,
                path: tls.cert_file.clone(),
                source: io::Error::other(error),
            }),
        }
    }
}

fn pem_error(kind: PemKind, path: &str, source: pem::Error) -> TlsError {
    match source {
        pem::Error::NoItemsFound => TlsError::Empty {
            kind,
            path: path.to_owned(),
        },
        source => TlsError::Pem {
            kind,
            path: path.to_owned(),
            source,
        },
    }
}

/// Every certificate of a PEM bundle; none is an error.
fn certificates(kind: PemKind, path: &str, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(kind, path, e))?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            kind,
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// The rustls server configuration for `material` (read from the files `tls` names, which
/// the errors quote), and when its leaf certificate expires.
pub fn server_config(tls: &Tls, material: &Material) -> Result<(ServerConfig, Option<i64>), TlsError> {
    let certs = certificates(PemKind::Certificate, &tls.cert_file, &material.cert)?;
    let not_after = certs.first().and_then(|leaf| certificate::not_after(leaf));
    let key =
        PrivateKeyDer::from_pem_slice(&material.key).map_err(|e| pem_error(PemKind::PrivateKey, &tls.key_file, e))?;
    let unusable = |source| TlsError::Unusable {
        cert_file: tls.cert_file.clone(),
        key_file: tls.key_file.clone(),
        source,
    };
    // The provider is named rather than taken from the process default: the workspace builds
    // rustls with ring only, and a library must not depend on someone having installed one.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(unusable)?;
    let builder = match (&tls.client_ca_file, &material.client_ca, tls.effective_client_auth()) {
        (Some(path), Some(pem), Some(auth)) => {
            let client_ca = |reason: String| TlsError::ClientCa {
                path: path.clone(),
                reason,
            };
            let mut roots = RootCertStore::empty();
            for cert in certificates(PemKind::ClientCa, path, pem)? {
                roots.add(cert).map_err(|e| client_ca(e.to_string()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = match auth {
                ClientAuth::Required => verifier,
                ClientAuth::Optional => verifier.allow_unauthenticated(),
            };
            builder.with_client_cert_verifier(verifier.build().map_err(|e| client_ca(e.to_string()))?)
        }
        _ => builder.with_no_client_auth(),
    };
    // No ALPN list: MQTT clients rarely send one, and a list would refuse those that send
    // another name (e.g. a cloud vendor's). `with_single_cert` also checks that the key
    // belongs to the leaf certificate.
    let config = builder.with_single_cert(certs, key).map_err(unusable)?;
    Ok((config, not_after))
}

/// What reading the files again did.
#[derive(Debug)]
pub enum Reload {
    /// Same contents as last time (or the same failure as last time).
    Unchanged,
    /// New material is served to the next connections.
    Reloaded { not_after: Option<i64> },
    /// The files changed (or cannot be read) and cannot be used: the last good material
    /// stays.
    Refused(TlsError),
}

struct State {
    config: Arc<ServerConfig>,
    /// The contents last tried, good or not: a failure is reported once per change.
    tried: Material,
    /// The last read failure reported.
    failure: Option<String>,
    not_after: Option<i64>,
}

/// The TLS configuration a listener serves, swapped when its files change.
pub struct ServerTls {
    tls: Tls,
    state: Mutex<State>,
}

impl ServerTls {
    /// Reads the files of `tls` (blocking: for start-up) and builds the first configuration.
    pub fn load(tls: &Tls) -> Result<Self, TlsError> {
        let material = Material::read(tls)?;
        let (config, not_after) = server_config(tls, &material)?;
        Ok(Self {
            tls: tls.clone(),
            state: Mutex::new(State {
                config: Arc::new(config),
                tried: material,
                failure: None,
                not_after,
            }),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is replaced whole under the lock: a panic elsewhere cannot leave it
        // half-updated.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The acceptor for the next handshake, with the current material.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(Arc::clone(&self.state().config))
    }

    /// When the served leaf certificate expires (seconds since the epoch).
    pub fn not_after(&self) -> Option<i64> {
        self.state().not_after
    }

    /// Takes freshly read files (or the error reading them) into account.
    pub fn reload(&self, read: Result<Material, TlsError>) -> Reload {
        let mut state = self.state();
        match read {
            Ok(material) if material == state.tried => {
                state.failure = None;
                Reload::Unchanged
            }
            Ok(material) => {
                let built = server_config(&self.tls, &material);
                state.tried = material;
                state.failure = None;
                match built {
                    Ok((config, not_after)) => {
                        state.config = Arc::new(config);
                        state.not_after = not_after;
                        Reload::Reloaded { not_after }
                    }
                    Err(error) => Reload::Refused(error),
                }
            }
            Err(error) => {
                let message = error.to_string();
                if state.failure.as_deref() == Some(message.as_str()) {
                    Reload::Unchanged
                } else {
                    state.failure = Some(message);
                    Reload::Refused(error)
                }
            }
        }
    }

    /// Reads the files every `tls.reloadSeconds` until the task is dropped, reporting in
    /// the logs and metrics of listener `listener`.
    pub async fn watch(self: Arc<Self>, listener: Arc<str>, metrics: Arc<Metrics>) {
        let expiry = metrics.tls_certificate_expiry.with_label_values(&[&listener]);
        if let Some(not_after) = self.not_after() {
            expiry.set(not_after);
        }
        let period = Duration::from_secs(u64::from(self.tls.reload_seconds.max(1)));
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let read = Material::read_async(&self.tls).await;
            match self.reload(read) {
                Reload::Unchanged => {}
                Reload::Reloaded { not_after } => {
                    metrics.tls_reloads.with_label_values(&[&listener, "success"]).inc();
                    if let Some(not_after) = not_after {
                        expiry.set(not_after);
                    }
                    tracing::info!(%listener, cert_file = %self.tls.cert_file, ?not_after, "TLS files changed; new connections get the new certificate");
                }
                Reload::Refused(error) => {
                    metrics.tls_reloads.with_label_values(&[&listener, "failure"]).inc();
                    tracing::warn!(%listener, %error, "TLS files changed but cannot be used; still serving the last good certificate");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls() -> Tls {
        Tls::new("/etc/mqtt/tls.crt", "/etc/mqtt/tls.key")
    }

    fn self_signed() -> Material {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("certificate");
        Material {
            cert: cert.cert.pem().into_bytes(),
            key: cert.signing_key.serialize_pem().into_bytes(),
            client_ca: None,
        }
    }

    fn with(cert: &[u8], key: &[u8]) -> Material {
        Material {
            cert: cert.to_vec(),
            key: key.to_vec(),
            client_ca: None,
        }
    }

    #[test]
    fn matching_certificate_and_key_make_a_config() {
        let (_, not_after) = server_config(&tls(), &self_signed()).expect("config");
        // rcgen's default validity ends in 4096.
        assert!(not_after.is_some_and(|t| t > 4_000_000_000), "{not_after:?}");
    }

    #[test]
    fn errors_name_the_file() {
        let good = self_signed();
        let other = self_signed();
        let mut client_ca = tls();
        client_ca.client_ca_file = Some("/etc/mqtt/ca.crt".into());
        let cases = [
            (
                tls(),
                with(b"", &good.key),
                "TLS certificate file /etc/mqtt/tls.crt holds no PEM certificate",
            ),
            (
                tls(),
                with(&good.key, &good.key),
                "TLS certificate file /etc/mqtt/tls.crt holds no PEM certificate",
            ),
            (
                tls(),
                with(&good.cert, &good.cert),
                "TLS private key file /etc/mqtt/tls.key holds no PEM private key",
            ),
            (
                tls(),
                with(b"-----BEGIN CERTIFICATE-----\nAAAA\n", &good.key),
                "TLS certificate file /etc/mqtt/tls.crt is not valid PEM",
            ),
            (
                tls(),
                with(&good.cert, &other.key),
                "TLS certificate file /etc/mqtt/tls.crt and key file /etc/mqtt/tls.key cannot be used",
            ),
            (
                client_ca.clone(),
                Material {
                    client_ca: Some(good.key.clone()),
                    ..good.clone()
                },
                "TLS client CA certificate file /etc/mqtt/ca.crt holds no PEM client CA certificate",
            ),
            (
                client_ca,
                Material {
                    client_ca: Some(b"-----BEGIN CERTIFICATE-----\nMAMCAQE=\n-----END CERTIFICATE-----\n".to_vec()),
                    ..good.clone()
                },
                "TLS client CA certificate file /etc/mqtt/ca.crt cannot be used",
            ),
        ];
        for (tls, material, expected) in cases {
            match server_config(&tls, &material) {
                Ok(_) => panic!("accepted; expected {expected:?}"),
                Err(e) => assert!(
                    e.to_string().starts_with(expected),
                    "{e} does not start with {expected:?}"
                ),
            }
        }
    }

    #[test]
    fn missing_file_is_named() {
        let tls = Tls::new("/nonexistent/tls.crt", "/nonexistent/tls.key");
        match ServerTls::load(&tls) {
            Ok(_) => panic!("loaded a missing file"),
            Err(e) => assert!(
                e.to_string()
                    .starts_with("cannot read TLS certificate file /nonexistent/tls.crt: "),
                "{e}"
            ),
        }
    }

    fn server(material: &Material) -> ServerTls {
        let (config, not_after) = server_config(&tls(), material).expect("config");
        ServerTls {
            tls: tls(),
            state: Mutex::new(State {
                config: Arc::new(config),
                tried: material.clone(),
                failure: None,
                not_after,
            }),
        }
    }

    fn served(server: &ServerTls) -> Arc<ServerConfig> {
        Arc::clone(&server.state().config)
    }

    #[test]
    fn new_files_are_served_and_unusable_ones_keep_the_last_good_material() {
        let first = self_signed();
        let server = server(&first);
        let initial = served(&server);
        assert!(matches!(server.reload(Ok(first.clone())), Reload::Unchanged));
        assert!(Arc::ptr_eq(&initial, &served(&server)), "same files, same config");

        // A rotation caught half-way: the new certificate with the old key.
        let second = self_signed();
        let half = with(&second.cert, &first.key);
        assert!(matches!(
            server.reload(Ok(half.clone())),
            Reload::Refused(TlsError::Unusable { .. })
        ));
        assert!(Arc::ptr_eq(&initial, &served(&server)), "the old certificate stays");
        assert!(matches!(server.reload(Ok(half)), Reload::Unchanged), "reported once");

        assert!(matches!(
            server.reload(Ok(second.clone())),
            Reload::Reloaded { not_after: Some(_) }
        ));
        let rotated = served(&server);
        assert!(!Arc::ptr_eq(&initial, &rotated), "the new certificate is served");

        let missing = || {
            Err(TlsError::Read {
                kind: PemKind::Certificate,
                path: "/etc/mqtt/tls.crt".into(),
                source: io::Error::from(io::ErrorKind::NotFound),
            })
        };
        assert!(matches!(
            server.reload(missing()),
            Reload::Refused(TlsError::Read { .. })
        ));
        assert!(matches!(server.reload(missing()), Reload::Unchanged), "reported once");
        assert!(Arc::ptr_eq(&rotated, &served(&server)));
        assert!(
            matches!(server.reload(Ok(second)), Reload::Unchanged),
            "back: nothing to do"
        );
    }
}
