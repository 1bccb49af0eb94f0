//! TLS listener: MQTT over TLS (1.2 and 1.3, rustls with the ring provider).
//!
//! The certificate chain and key are read once at start-up; a file that is missing or holds
//! no usable PEM stops the start with an error naming the file, rather than a listener that
//! fails every handshake later.

use std::io;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use super::{Shared, accept_each};
use crate::config::Tls;
use crate::mqtt::connection;

/// Which of the two PEM files an error is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PemKind {
    Certificate,
    PrivateKey,
}

impl std::fmt::Display for PemKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PemKind::Certificate => "certificate",
            PemKind::PrivateKey => "private key",
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
}

/// Reads the PEM files of `tls` and builds the acceptor of a listener.
///
/// Blocking file reads: this runs once at start-up, before any connection is served.
pub fn load(tls: &Tls) -> Result<TlsAcceptor, TlsError> {
    let read = |kind, path: &str| {
        std::fs::read(path).map_err(|source| TlsError::Read {
            kind,
            path: path.to_owned(),
            source,
        })
    };
    let cert_pem = read(PemKind::Certificate, &tls.cert_file)?;
    let key_pem = read(PemKind::PrivateKey, &tls.key_file)?;
    let config = server_config(tls, &cert_pem, &key_pem)?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The rustls server configuration for PEM contents `cert_pem` and `key_pem` (read from the
/// files `tls` names, which the errors quote).
pub fn server_config(tls: &Tls, cert_pem: &[u8], key_pem: &[u8]) -> Result<ServerConfig, TlsError> {
    let pem_error = |kind, path: &str, source| match source {
        pem::Error::NoItemsFound => TlsError::Empty {
            kind,
            path: path.to_owned(),
        },
        source => TlsError::Pem {
            kind,
            path: path.to_owned(),
            source,
        },
    };
    let certs = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(PemKind::Certificate, &tls.cert_file, e))?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            kind: PemKind::Certificate,
            path: tls.cert_file.clone(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| pem_error(PemKind::PrivateKey, &tls.key_file, e))?;
    let unusable = |source| TlsError::Unusable {
        cert_file: tls.cert_file.clone(),
        key_file: tls.key_file.clone(),
        source,
    };
    // The provider is named rather than taken from the process default: the workspace builds
    // rustls with ring only, and a library must not depend on someone having installed one.
    // No ALPN list: MQTT clients rarely send one, and a list would refuse those that send
    // another name (e.g. a cloud vendor's).
    ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(unusable)?
        .with_no_client_auth()
        // Also checks that the key belongs to the leaf certificate.
        .with_single_cert(certs, key)
        .map_err(unusable)
}

/// Completes the TLS handshake of `stream` within the listener's handshake timeout.
pub async fn handshake(acceptor: &TlsAcceptor, stream: TcpStream, shared: &Shared) -> io::Result<TlsStream<TcpStream>> {
    match tokio::time::timeout(shared.handshake_timeout(), acceptor.accept(stream)).await {
        Ok(result) => result,
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out")),
    }
}

/// Accepts connections until the task is dropped; the TLS handshake and then MQTT run in
/// one task per connection.
pub async fn accept_loop(listener: TcpListener, acceptor: TlsAcceptor, shared: Shared) {
    accept_each(listener, &shared.clone(), move |stream, peer, slot| {
        let (acceptor, shared) = (acceptor.clone(), shared.clone());
        async move {
            match handshake(&acceptor, stream, &shared).await {
                Ok(tls) => {
                    connection::serve(tls, shared, slot).await;
                    tracing::trace!(%peer, "TLS connection closed");
                }
                // Scanners and clients that do not trust the certificate end up here: worth a
                // debug line, not a warning.
                Err(error) => tracing::debug!(%peer, %error, "TLS handshake failed"),
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls() -> Tls {
        Tls {
            cert_file: "/etc/mqtt/tls.crt".into(),
            key_file: "/etc/mqtt/tls.key".into(),
        }
    }

    fn self_signed() -> (String, String) {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("certificate");
        (cert.cert.pem(), cert.signing_key.serialize_pem())
    }

    #[test]
    fn matching_certificate_and_key_make_a_config() {
        let (cert, key) = self_signed();
        assert!(server_config(&tls(), cert.as_bytes(), key.as_bytes()).is_ok());
    }

    #[test]
    fn errors_name_the_file() {
        let (cert, key) = self_signed();
        let (_, other_key) = self_signed();
        let cases = [
            (
                server_config(&tls(), b"", key.as_bytes()),
                "TLS certificate file /etc/mqtt/tls.crt holds no PEM certificate",
            ),
            (
                server_config(&tls(), key.as_bytes(), key.as_bytes()),
                "TLS certificate file /etc/mqtt/tls.crt holds no PEM certificate",
            ),
            (
                server_config(&tls(), cert.as_bytes(), cert.as_bytes()),
                "TLS private key file /etc/mqtt/tls.key holds no PEM private key",
            ),
            (
                server_config(&tls(), b"-----BEGIN CERTIFICATE-----\nAAAA\n", key.as_bytes()),
                "TLS certificate file /etc/mqtt/tls.crt is not valid PEM",
            ),
            (
                server_config(&tls(), cert.as_bytes(), other_key.as_bytes()),
                "TLS certificate file /etc/mqtt/tls.crt and key file /etc/mqtt/tls.key cannot be used",
            ),
        ];
        for (result, expected) in cases {
            match result {
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
        let tls = Tls {
            cert_file: "/nonexistent/tls.crt".into(),
            key_file: "/nonexistent/tls.key".into(),
        };
        match load(&tls) {
            Ok(_) => panic!("loaded a missing file"),
            Err(e) => assert!(
                e.to_string()
                    .starts_with("cannot read TLS certificate file /nonexistent/tls.crt: "),
                "{e}"
            ),
        }
    }
}
