//! WebSocket listener: MQTT over WebSocket (MQTT 5.0 section 6, 3.1.1 section 6).
//!
//! The HTTP upgrade is accepted only on the configured path and only when the client offers
//! the sub-protocol `mqtt`, which the response echoes (tungstenite does the handshake).
//! After it, [`WsIo`] (`frames`) turns the binary frames into the byte stream
//! `mqtt::connection::serve` reads, holding no buffer between packets.

mod frames;
mod handshake;

pub use frames::WsIo;
pub use handshake::Prefixed;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::header::SEC_WEBSOCKET_PROTOCOL;
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};

use super::tls::ListenerTls;
use super::{ConnectionSlot, Shared, accept_each};
use crate::auth::policy::Principal;
use crate::mqtt::connection;
use handshake::UpgradeStream;

/// The WebSocket sub-protocol MQTT registers (MQTT 5.0 section 6).
pub const SUBPROTOCOL: &str = "mqtt";

/// Why an upgrade request is answered with an HTTP error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Not the listener's path: 404.
    WrongPath,
    /// The client did not offer `mqtt`; without it neither side can be sure the other
    /// speaks MQTT in the frames: 400.
    NoMqttSubprotocol,
}

impl Refusal {
    pub fn status(self) -> StatusCode {
        match self {
            Refusal::WrongPath => StatusCode::NOT_FOUND,
            Refusal::NoMqttSubprotocol => StatusCode::BAD_REQUEST,
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            Refusal::WrongPath => "no MQTT endpoint at this path\n",
            Refusal::NoMqttSubprotocol => "the WebSocket sub-protocol mqtt is required\n",
        }
    }
}

/// Decides an upgrade request for `expected_path` from its path (without query) and the
/// values of its `Sec-WebSocket-Protocol` headers (each a comma-separated list).
pub fn negotiate<'a>(
    expected_path: &str,
    path: &str,
    offered: impl IntoIterator<Item = &'a str>,
) -> Result<(), Refusal> {
    if path != expected_path {
        return Err(Refusal::WrongPath);
    }
    let mut protocols = offered.into_iter().flat_map(|v| v.split(',')).map(str::trim);
    if protocols.any(|p| p == SUBPROTOCOL) {
        Ok(())
    } else {
        Err(Refusal::NoMqttSubprotocol)
    }
}

/// Completes the HTTP upgrade of `stream` for `path` within the handshake timeout.
pub async fn upgrade<S>(stream: S, path: &str, shared: &Shared) -> Result<WsIo<Prefixed<S>>, WsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // The error type is tungstenite's (an HTTP response), not ours to shrink.
    #[allow(clippy::result_large_err)]
    let callback = |request: &Request, mut response: Response| -> Result<Response, ErrorResponse> {
        let offered = request
            .headers()
            .get_all(SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok());
        match negotiate(path, request.uri().path(), offered) {
            Ok(()) => {
                response
                    .headers_mut()
                    .insert(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(SUBPROTOCOL));
                Ok(response)
            }
            Err(refusal) => {
                let mut error = ErrorResponse::new(Some(refusal.message().to_owned()));
                *error.status_mut() = refusal.status();
                Err(error)
            }
        }
    };
    // tungstenite answers the upgrade request; the frames after it are ours (`frames`).
    let accept = tokio_tungstenite::accept_hdr_async(UpgradeStream::new(stream), callback);
    match tokio::time::timeout(shared.handshake_timeout(), accept).await {
        Ok(ws) => {
            let (socket, rest) = ws?.into_inner().into_parts();
            Ok(WsIo::new(Prefixed::new(socket, rest)))
        }
        Err(_) => Err(WsError::Io(io::Error::new(
            io::ErrorKind::TimedOut,
            "WebSocket upgrade timed out",
        ))),
    }
}

/// Accepts connections until the task is dropped; the upgrade and then MQTT run in one task
/// per connection. With `tls` the upgrade runs inside TLS (wss://).
pub async fn accept_loop(listener: TcpListener, path: Arc<str>, tls: Option<ListenerTls>, shared: Shared) {
    let _watch = tls.as_ref().map(|tls| tls.watch(&shared));
    let shared = Arc::new(shared);
    accept_each(listener, &Arc::clone(&shared), move |stream, peer, slot| {
        let (path, tls, shared) = (Arc::clone(&path), tls.clone(), Arc::clone(&shared));
        async move {
            match tls {
                None => serve(stream, peer, &path, shared, slot, None).await,
                Some(tls) => match tls.accept(stream, &shared).await {
                    Ok((stream, certificate)) => serve(stream, peer, &path, shared, slot, certificate).await,
                    Err(error) => tracing::debug!(%peer, %error, "TLS handshake failed"),
                },
            }
        }
    })
    .await;
}

/// Upgrades `stream` and serves MQTT over it (generic so that a TLS stream works too);
/// `certificate` is who the client's TLS certificate says it is.
pub async fn serve<S>(
    stream: S,
    peer: SocketAddr,
    path: &str,
    shared: Arc<Shared>,
    slot: ConnectionSlot,
    certificate: Option<Principal>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    match upgrade(stream, path, &shared).await {
        Ok(io) => {
            connection::serve(io, shared, slot, certificate).await;
            tracing::trace!(%peer, "WebSocket connection closed");
        }
        // Includes refused upgrades (wrong path, no sub-protocol), which were answered.
        Err(error) => tracing::debug!(%peer, %error, "WebSocket upgrade failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation() {
        let cases: &[(&str, &[&str], Result<(), Refusal>)] = &[
            ("/mqtt", &["mqtt"], Ok(())),
            ("/mqtt", &["mqttv3.1, mqtt"], Ok(())),
            ("/mqtt", &["chat", "mqtt"], Ok(())),
            ("/mqtt", &[], Err(Refusal::NoMqttSubprotocol)),
            ("/mqtt", &["mqttv3.1"], Err(Refusal::NoMqttSubprotocol)),
            ("/mqtt", &["MQTT-ish"], Err(Refusal::NoMqttSubprotocol)),
            ("/", &["mqtt"], Err(Refusal::WrongPath)),
            ("/mqtt/", &["mqtt"], Err(Refusal::WrongPath)),
        ];
        for (path, offered, expected) in cases {
            assert_eq!(
                negotiate("/mqtt", path, offered.iter().copied()),
                *expected,
                "{path} {offered:?}"
            );
        }
    }
}
