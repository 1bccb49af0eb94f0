//! Plain TCP listener.

use std::net::SocketAddr;

use tokio::net::TcpListener;

use super::{Shared, accept_each};
use crate::mqtt::connection;

/// Accepts connections until the task is dropped; one task per connection.
pub async fn accept_loop(listener: TcpListener, shared: Shared) {
    accept_each(listener, move |stream, peer| {
        let shared = shared.clone();
        async move {
            connection::serve(stream, shared).await;
            tracing::trace!(%peer, "connection closed");
        }
    })
    .await;
}

/// Binds `address`; the returned listener reports the port actually bound (for port 0).
pub async fn bind(address: SocketAddr) -> std::io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(address).await?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}
