//! Accept loops: each hands accepted byte streams to `mqtt::connection::serve`.
//!
//! A listener is a TCP accept loop plus what turns each accepted socket into an MQTT byte
//! stream: nothing (`tcp`), a TLS handshake (`tls`) or an HTTP upgrade (`websocket`). That
//! per-connection step runs in the connection's own task, so a slow or silent peer never
//! holds up accepting the next one. TLS material (`certs`) is read again when its files
//! change.

pub mod certs;
pub mod deadline;
pub mod linger;
pub mod resting;
pub mod tcp;
pub mod tls;
pub mod websocket;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
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
    /// The guard and the authorization rules.
    pub security: Arc<crate::auth::Security>,
    /// Open connections of the whole process, counted from accept to close, CONNECT or
    /// not (for `mqtt.maxConnections`).
    pub connections: Arc<AtomicUsize>,
    /// Where a resting connection's task is started again when it is woken (its waker may
    /// be called from any thread, Kafka's included).
    pub runtime: tokio::runtime::Handle,
    /// Watches the sockets of resting connections (out of tokio's reactor while they rest).
    pub resting_sockets: Arc<resting::RestingSockets>,
}

impl Shared {
    /// How long a peer may take for the transport handshake (TLS, HTTP upgrade). The MQTT
    /// connect timeout is the budget a client already has to get its CONNECT across, so the
    /// handshake before it gets the same one, not an unbounded wait.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_secs(u64::from(self.limits.connect_timeout_secs.max(1)))
    }
}

/// Holds one place in the process's connection count while alive: taken at accept, so
/// sockets that have not sent CONNECT yet (or are in their TLS handshake) count too.
pub struct ConnectionSlot(Arc<AtomicUsize>);

impl ConnectionSlot {
    pub fn take(counter: &Arc<AtomicUsize>) -> (Self, usize) {
        let before = counter.fetch_add(1, Ordering::AcqRel);
        (Self(Arc::clone(counter)), before)
    }

    /// Connections open now besides this one.
    pub fn others(&self) -> usize {
        self.0.load(Ordering::Acquire).saturating_sub(1)
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Connections over `mqtt.maxConnections` still have their CONNECT read and answered with
/// CONNACK 0x97 / 0x03, so that a client learns why; this many more are closed at accept
/// without reading (a flood of sockets that may never send CONNECT).
pub const OVER_LIMIT_ANSWERED: usize = 1024;

/// Whether a connection accepted while `open` others are open is served at all.
pub fn admitted(open: usize, max_connections: usize) -> bool {
    open < max_connections.saturating_add(OVER_LIMIT_ANSWERED)
}

/// Accepts connections until the task is dropped and runs `handle` for each in a task of
/// its own, with its place in the connection count (held until the task ends).
pub async fn accept_each<H, F>(listener: TcpListener, shared: &Shared, handle: H)
where
    H: Fn(TcpStream, SocketAddr, ConnectionSlot) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let (slot, open) = ConnectionSlot::take(&shared.connections);
                if !admitted(open, shared.limits.max_connections) {
                    shared
                        .hub
                        .metrics()
                        .disconnects
                        .with_label_values(&["over_max_connections"])
                        .inc();
                    tracing::debug!(%peer, open, "over mqtt.maxConnections; closed at accept");
                    continue;
                }
                // MQTT packets are small and latency matters more than segment count.
                if let Err(error) = stream.set_nodelay(true) {
                    tracing::debug!(%peer, %error, "TCP_NODELAY not set");
                }
                tokio::spawn(handle(stream, peer, slot));
            }
            Err(error) => {
                // Out of file descriptors and the like: back off rather than spin.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_over_the_limit_are_answered_up_to_a_margin_then_closed_at_accept() {
        assert!(admitted(0, 1));
        assert!(admitted(1, 1), "answered with CONNACK 0x97 after its CONNECT");
        assert!(admitted(OVER_LIMIT_ANSWERED, 1));
        assert!(!admitted(OVER_LIMIT_ANSWERED + 1, 1));
        assert!(admitted(usize::MAX - 1, usize::MAX));
    }

    #[test]
    fn a_slot_counts_from_take_to_drop() {
        let counter = Arc::new(AtomicUsize::new(0));
        let (a, before) = ConnectionSlot::take(&counter);
        assert_eq!(before, 0);
        let (b, before) = ConnectionSlot::take(&counter);
        assert_eq!((before, a.others(), b.others()), (1, 1, 1));
        drop(a);
        assert_eq!(b.others(), 0);
        drop(b);
        assert_eq!(counter.load(Ordering::Acquire), 0);
    }
}
