//! Closing a connection so that the client can read what was sent last.
//!
//! A socket closed while input from the peer is still unread makes the kernel answer with a
//! reset instead of an orderly close: the client's next write fails (broken pipe,
//! connection reset) and most clients give up on the connection there, before they read
//! the DISCONNECT or CONNACK that explains why. So a connection ends by shutting down its
//! write side (FIN after the last packet; TLS close_notify; a WebSocket close frame), then
//! reading and discarding what the client still sends, until it closes too or a bound is
//! reached: [`LINGER`] or [`LINGER_BYTES`], so a client that never stops costs little.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Longest time a closing connection waits for the client to close its side.
pub const LINGER: Duration = Duration::from_secs(2);
/// Most input a closing connection reads and discards.
pub const LINGER_BYTES: usize = 1 << 20;

/// Shuts down writing, then discards input until the client closes or a bound is reached.
/// Returns how many bytes were discarded.
pub async fn close<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S) -> usize {
    close_within(stream, LINGER, LINGER_BYTES).await
}

pub async fn close_within<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    linger: Duration,
    max_bytes: usize,
) -> usize {
    let mut discarded = 0;
    let drain = async {
        // Bounded by the stream's write deadline: a client that does not read gets no FIN.
        if stream.shutdown().await.is_err() {
            return;
        }
        // On the heap, and only while closing: an array here would be part of every
        // connection's task, idle or not.
        let mut chunk = vec![0u8; 4096];
        while discarded < max_bytes {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => discarded += n,
            }
        }
    };
    let _ = tokio::time::timeout(linger, drain).await;
    discarded
}

#[cfg(test)]
mod tests {
    use tokio::time::Instant;

    use super::*;

    #[tokio::test]
    async fn the_client_reads_the_last_packet_and_eof_while_it_keeps_writing() {
        let (mut ours, mut theirs) = tokio::io::duplex(1024);
        ours.write_all(b"DISCONNECT").await.expect("write");
        let closing = tokio::spawn(async move { close_within(&mut ours, Duration::from_secs(5), 1 << 20).await });
        // The client keeps writing 100 KiB after the server is done...
        for _ in 0..100 {
            theirs.write_all(&[7; 1024]).await.expect("the server still reads");
        }
        // ...then reads the last packet and an orderly end.
        let mut got = Vec::new();
        theirs.read_to_end(&mut got).await.expect("no reset");
        assert_eq!(got, b"DISCONNECT");
        drop(theirs);
        assert_eq!(closing.await.expect("closing"), 100 * 1024);
    }

    #[tokio::test]
    async fn a_client_that_never_stops_writing_is_dropped_at_the_bounds() {
        let (mut ours, mut theirs) = tokio::io::duplex(1024);
        let writer = tokio::spawn(async move { while theirs.write_all(&[7; 512]).await.is_ok() {} });
        let started = Instant::now();
        let discarded = close_within(&mut ours, Duration::from_secs(5), 64 * 1024).await;
        assert!((64 * 1024..70 * 1024).contains(&discarded), "{discarded}");
        assert!(started.elapsed() < Duration::from_secs(2));
        drop(ours);
        writer.await.expect("writer ends");

        let (mut ours, _silent) = tokio::io::duplex(1024);
        let started = Instant::now();
        close_within(&mut ours, Duration::from_millis(200), 1 << 20).await;
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(200) && took < Duration::from_secs(2),
            "{took:?}"
        );
    }
}
