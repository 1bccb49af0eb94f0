//! TLS listener: MQTT over TLS (1.2 and 1.3, rustls with the ring provider).
//!
//! Each handshake uses the listener's current material ([`ServerTls`], read again when the
//! files change); a listener with `tls.clientCaFile` asks for a client certificate, and with
//! `tls.clientIdentity` the verified certificate tells who the client is.

use std::io;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use super::certs::ServerTls;
use super::{Shared, accept_each};
use crate::auth::certificate;
use crate::auth::policy::Principal;
use crate::mqtt::connection;

/// A listener's TLS: its reloading material and whether certificates identify clients.
#[derive(Clone)]
pub struct ListenerTls {
    pub server: Arc<ServerTls>,
    /// `tls.clientIdentity` is set: a verified client certificate is a principal.
    pub identify_clients: bool,
}

impl ListenerTls {
    /// Reads the files of `tls` (blocking: for start-up).
    pub fn load(tls: &crate::config::Tls) -> Result<Self, super::certs::TlsError> {
        Ok(Self {
            server: Arc::new(ServerTls::load(tls)?),
            identify_clients: tls.client_ca_file.is_some() && tls.client_identity.is_some(),
        })
    }

    /// Starts reading the files again periodically, for as long as the returned guard lives.
    pub fn watch(&self, shared: &Shared) -> WatchGuard {
        WatchGuard(tokio::spawn(
            Arc::clone(&self.server).watch(Arc::clone(&shared.listener), shared.hub.metrics_arc()),
        ))
    }

    /// The TLS handshake of `stream`, then who its certificate says the client is.
    pub async fn accept(
        &self,
        stream: TcpStream,
        shared: &Shared,
    ) -> io::Result<(TlsStream<TcpStream>, Option<Principal>)> {
        let tls = handshake(&self.server.acceptor(), stream, shared).await?;
        let principal = if self.identify_clients {
            client_principal(&tls)
        } else {
            None
        };
        Ok((tls, principal))
    }
}

/// Stops the reload task of a listener when its accept loop ends.
pub struct WatchGuard(JoinHandle<()>);

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Who the client's verified certificate (if it sent one) says it is.
fn client_principal(tls: &TlsStream<TcpStream>) -> Option<Principal> {
    let leaf = tls.get_ref().1.peer_certificates()?.first()?;
    match certificate::principal(leaf) {
        Ok(principal) => {
            tracing::debug!(identity = ?principal.identity, roles = ?principal.roles, "client certificate identity");
            Some(principal)
        }
        Err(error) => {
            // Verified against the client CA, but without an identity: served as a client
            // without certificate (only topics no guarded route covers).
            tracing::info!(%error, "client certificate carries no identity");
            None
        }
    }
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
pub async fn accept_loop(listener: TcpListener, tls: ListenerTls, shared: Shared) {
    let _watch = tls.watch(&shared);
    let shared = Arc::new(shared);
    accept_each(listener, &Arc::clone(&shared), move |stream, peer, slot| {
        let (tls, shared) = (tls.clone(), Arc::clone(&shared));
        async move {
            match tls.accept(stream, &shared).await {
                Ok((stream, certificate)) => {
                    connection::serve(stream, shared, slot, certificate).await;
                    tracing::trace!(%peer, "TLS connection closed");
                }
                // Scanners, clients that do not trust the certificate and clients without
                // an acceptable certificate end up here: worth a debug line, not a warning.
                Err(error) => tracing::debug!(%peer, %error, "TLS handshake failed"),
            }
        }
    })
    .await;
}

/// TLS connections do not rest: the TLS session is state of the stream's own.
impl connection::ByteStream for TlsStream<TcpStream> {}
