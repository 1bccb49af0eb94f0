//! Plain TCP listener.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use tokio::net::TcpListener;

use crate::broker::hub::Hub;
use crate::mqtt::connect::Limits;
use crate::mqtt::connection;

/// Accepts connections until the task is dropped; one task per connection.
pub async fn accept_loop(listener: TcpListener, hub: Arc<Hub>, limits: Arc<Limits>, connections: Arc<AtomicUsize>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                if let Err(error) = stream.set_nodelay(true) {
                    tracing::debug!(%peer, %error, "TCP_NODELAY not set");
                }
                let (hub, limits, connections) = (Arc::clone(&hub), Arc::clone(&limits), Arc::clone(&connections));
                tokio::spawn(async move {
                    connection::serve(stream, hub, limits, connections).await;
                    tracing::trace!(%peer, "connection closed");
                });
            }
            Err(error) => {
                // Out of file descriptors and the like: back off rather than spin.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

/// Binds `address`; the returned listener reports the port actually bound (for port 0).
pub async fn bind(address: SocketAddr) -> std::io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(address).await?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}
