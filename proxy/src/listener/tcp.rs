//! Plain TCP listener.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpSocket};

use super::{Shared, accept_each};
use crate::mqtt::connection;

/// Accepts connections until the task is dropped; one task per connection.
pub async fn accept_loop(listener: TcpListener, shared: Shared) {
    // One pointer per connection to clone and keep, not the eight inside `Shared`.
    let shared = Arc::new(shared);
    accept_each(listener, &Arc::clone(&shared), move |stream, peer, slot| {
        let shared = Arc::clone(&shared);
        async move {
            connection::serve(stream, shared, slot, None).await;
            tracing::trace!(%peer, "connection closed");
        }
    })
    .await;
}

/// Connections the kernel may hold for us before we accept them. A reconnect storm
/// (thousands of devices coming back at once) overflows tokio's default of 1 024, and a
/// connection whose handshake the kernel dropped waits out TCP retransmissions, past the
/// CONNECT timeout. The kernel caps it at `net.core.somaxconn`.
const LISTEN_BACKLOG: u32 = 8192;

/// Binds `address`; the returned listener reports the port actually bound (for port 0).
pub async fn bind(address: SocketAddr) -> std::io::Result<(TcpListener, SocketAddr)> {
    let socket = if address.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    let listener = socket.listen(LISTEN_BACKLOG)?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}
