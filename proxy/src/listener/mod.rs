//! Accept loops: each hands accepted byte streams to `mqtt::connection::serve`.
//!
//! A listener is a TCP accept loop plus what turns each accepted socket into an MQTT byte
//! stream: nothing (`tcp`), a TLS handshake (`tls`) or an HTTP upgrade (`websocket`). That
//! per-connection step runs in the connection's own task, so a slow or silent peer never
//! holds up accepting the next one.

pub mod deadline;
pub mod linger;
pub mod tcp;
pub mod tls;
pub mod websocket;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

use crate::hub::Hub;
use crate::kafka::replay::Replayer;
use crate::kafka::sessions::SessionStore;
use crate::mqtt::connect::Limits;

/// What every connection of a listener shares.
#[derive(Clone)]
pub struct Shared {
    pub hub: Arc<Hub>,
    pub sessions: Arc<SessionStore>,
    pub replayer: Arc<Replayer>,
    /// This process's instance id (it hosts the sessions of its connections).
    pub instance: Arc<str>,
    /// Name of the listener (`listeners[].name`): redirects send its clients to the
    /// owner's reference for the same listener.
    pub listener: Arc<str>,
    pub limits: Arc<Limits>,
    /// Live MQTT connections of the whole process (for `mqtt.maxConnections`).
    pub connections: Arc<AtomicUsize>,
}

impl Shared {
    /// How long a peer may take for the transport handshake (TLS, HTTP upgrade). The MQTT
    /// connect timeout is the budget a client already has to get its CONNECT across, so the
    /// handshake before it gets the same one, not an unbounded wait.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_secs(u64::from(self.limits.connect_timeout_secs.max(1)))
    }
}

/// Accepts connections until the task is dropped and runs `handle` for each in a task of
/// its own.
pub async fn accept_each<H, F>(listener: TcpListener, handle: H)
where
    H: Fn(TcpStream, SocketAddr) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                // MQTT packets are small and latency matters more than segment count.
                if let Err(error) = stream.set_nodelay(true) {
                    tracing::debug!(%peer, %error, "TCP_NODELAY not set");
                }
                tokio::spawn(handle(stream, peer));
            }
            Err(error) => {
                // Out of file descriptors and the like: back off rather than spin.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
