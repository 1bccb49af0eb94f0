//! WebSocket listener: MQTT over WebSocket (MQTT 5.0 section 6, 3.1.1 section 6).
//!
//! The HTTP upgrade is accepted only on the configured path and only when the client offers
//! the sub-protocol `mqtt`, which the response echoes. After it, [`WsIo`] turns the binary
//! frames into the byte stream `mqtt::connection::serve` reads: frame boundaries mean
//! nothing to MQTT, so a packet may span frames and a frame may hold several packets.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::header::SEC_WEBSOCKET_PROTOCOL;
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::tls::ListenerTls;
use super::{ConnectionSlot, Shared, accept_each};
use crate::auth::policy::Principal;
use crate::mqtt::connection;

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

/// Largest WebSocket message (and frame) accepted, for a listener whose MQTT packets are
/// at most `maximum_packet_size` bytes. Frames do not align with packets, so the bound leaves
/// room for a full-size packet plus whatever a client batched with it; the MQTT codec still
/// enforces the packet limit itself. Without a bound tungstenite would buffer 64 MiB.
pub fn message_limit(maximum_packet_size: u32) -> usize {
    const FLOOR: usize = 64 * 1024;
    usize::try_from(maximum_packet_size)
        .unwrap_or(usize::MAX)
        .saturating_mul(2)
        .max(FLOOR)
}

/// Completes the HTTP upgrade of `stream` for `path` within the handshake timeout.
pub async fn upgrade<S>(stream: S, path: &str, shared: &Shared) -> Result<WsIo<S>, WsError>
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
    let limit = message_limit(shared.limits.maximum_packet_size);
    let config = WebSocketConfig::default()
        .max_message_size(Some(limit))
        .max_frame_size(Some(limit));
    let accept = tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config));
    match tokio::time::timeout(shared.handshake_timeout(), accept).await {
        Ok(ws) => Ok(WsIo::new(ws?)),
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
    accept_each(listener, &shared.clone(), move |stream, peer, slot| {
        let (path, tls, shared) = (Arc::clone(&path), tls.clone(), shared.clone());
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
    shared: Shared,
    slot: ConnectionSlot,
    certificate: Option<Principal>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
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

/// Where a text frame left the read side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReadState {
    Open,
    /// A text frame arrived: MQTT travels in binary frames only, and the spec says to close
    /// the connection. The close frame (1002, protocol error) is queued, then flushed.
    Refusing {
        queued: bool,
    },
    /// The close frame went out (or could not): every read fails from now on.
    Refused,
}

/// The byte stream inside a WebSocket connection: binary frames in, one binary frame per
/// write out. Ping and pong are answered by tungstenite while reading.
pub struct WsIo<S> {
    ws: WebSocketStream<S>,
    /// The unread rest of the last binary frame.
    pending: Bytes,
    read: ReadState,
}

impl<S> WsIo<S> {
    pub fn new(ws: WebSocketStream<S>) -> Self {
        Self {
            ws,
            pending: Bytes::new(),
            read: ReadState::Open,
        }
    }
}

fn text_frame_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        "text WebSocket frame (MQTT needs binary frames)",
    )
}

/// tungstenite errors as I/O errors, keeping the kind of those that are I/O errors already.
fn io_error(error: WsError) -> io::Error {
    match error {
        WsError::Io(e) => e,
        WsError::ConnectionClosed | WsError::AlreadyClosed => io::Error::from(io::ErrorKind::BrokenPipe),
        other => io::Error::new(io::ErrorKind::InvalidData, other),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsIo<S> {
    /// Sends the protocol-error close frame after a text frame; failures to send it change
    /// nothing, the connection ends either way.
    fn poll_refuse(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            match self.read {
                ReadState::Open => return Poll::Ready(Ok(())),
                ReadState::Refusing { queued: false } => {
                    if ready!(self.ws.poll_ready_unpin(cx)).is_err() {
                        self.read = ReadState::Refused;
                        continue;
                    }
                    let close = Message::Close(Some(CloseFrame {
                        code: CloseCode::Protocol,
                        reason: "MQTT needs binary frames".into(),
                    }));
                    self.read = match self.ws.start_send_unpin(close) {
                        Ok(()) => ReadState::Refusing { queued: true },
                        Err(_) => ReadState::Refused,
                    };
                }
                ReadState::Refusing { queued: true } => {
                    let _ = ready!(self.ws.poll_flush_unpin(cx));
                    self.read = ReadState::Refused;
                }
                ReadState::Refused => return Poll::Ready(Err(text_frame_error())),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsIo<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.read != ReadState::Open {
                return this.poll_refuse(cx);
            }
            if !this.pending.is_empty() {
                let n = this.pending.len().min(buf.remaining());
                buf.put_slice(&this.pending.split_to(n));
                return Poll::Ready(Ok(()));
            }
            match ready!(this.ws.poll_next_unpin(cx)) {
                Some(Ok(Message::Binary(data))) => this.pending = data,
                Some(Ok(Message::Text(_))) => this.read = ReadState::Refusing { queued: false },
                // tungstenite queued the pong itself; raw frames are never read.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                // The peer closed: end of stream, as for a TCP FIN.
                Some(Ok(Message::Close(_))) | None => return Poll::Ready(Ok(())),
                Some(Err(error)) => return Poll::Ready(Err(io_error(error))),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsIo<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // An empty frame would carry nothing; writers treat 0 as "nothing written yet".
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        ready!(this.ws.poll_ready_unpin(cx)).map_err(io_error)?;
        this.ws
            .start_send_unpin(Message::Binary(Bytes::copy_from_slice(buf)))
            .map_err(io_error)?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().ws.poll_flush_unpin(cx).map_err(io_error)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match ready!(self.get_mut().ws.poll_close_unpin(cx)) {
            // Already closed by the peer (or after a text frame): nothing left to say.
            Ok(()) | Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => Poll::Ready(Ok(())),
            Err(error) => Poll::Ready(Err(io_error(error))),
        }
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

    #[test]
    fn message_limit_fits_a_full_packet() {
        assert_eq!(message_limit(1_048_576), 2_097_152);
        assert_eq!(message_limit(100), 64 * 1024);
        assert_eq!(message_limit(268_435_455), 536_870_910);
    }
}
