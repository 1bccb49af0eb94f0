//! The byte stream tungstenite reads the HTTP upgrade request from.
//!
//! tungstenite keeps whatever it read past the request for its own frame reader. Once the
//! upgrade is done the proxy takes the socket back ([`super::frames::WsIo`] reads the
//! frames), so nothing may be left behind in tungstenite: [`UpgradeStream`] hands it the
//! bytes up to the end of the request headers and keeps the rest (frames a client sent
//! right after its request) to be read first afterwards. A conforming client waits for the
//! 101 response, so the rest is almost always empty and costs nothing.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Largest upgrade request read; a larger one is refused (tungstenite answers it).
pub const MAX_REQUEST: usize = 16 * 1024;

pub struct UpgradeStream<S> {
    inner: S,
    /// How much of "\r\n\r\n" the bytes so far end with.
    matched: usize,
    /// Bytes of the request handed out so far.
    request_bytes: usize,
    /// The request is complete: reads now serve `rest`, then the socket.
    headers_done: bool,
    /// Bytes read past the end of the request.
    rest: Vec<u8>,
}

impl<S> UpgradeStream<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            matched: 0,
            request_bytes: 0,
            headers_done: false,
            rest: Vec::new(),
        }
    }

    /// The socket and the bytes read past the request, once the upgrade is done.
    pub fn into_parts(self) -> (S, Vec<u8>) {
        (self.inner, self.rest)
    }

    /// Where in `bytes` the request headers end (just past "\r\n\r\n"), continuing the
    /// match from earlier reads.
    fn end_of_headers(&mut self, bytes: &[u8]) -> Option<usize> {
        const END: &[u8; 4] = b"\r\n\r\n";
        for (i, &b) in bytes.iter().enumerate() {
            self.matched = if b == END[self.matched] {
                self.matched + 1
            } else if b == END[0] {
                1
            } else {
                0
            };
            if self.matched == END.len() {
                return Some(i + 1);
            }
        }
        None
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for UpgradeStream<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.headers_done {
            // tungstenite reads nothing after the request; should it, it gets the end.
            return Poll::Ready(Ok(()));
        }
        let start = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        let read = &buf.filled()[start..];
        let request_part = match this.end_of_headers(read) {
            Some(end) => {
                this.rest = read[end..].to_vec();
                this.headers_done = true;
                end
            }
            None => read.len(),
        };
        this.request_bytes += request_part;
        if this.request_bytes > MAX_REQUEST && !this.headers_done {
            // A read that fails hands out nothing.
            buf.set_filled(start);
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "WebSocket upgrade request too large",
            )));
        }
        buf.set_filled(start + request_part);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for UpgradeStream<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// A socket with bytes already read from it in front.
pub struct Prefixed<S> {
    inner: S,
    prefix: Vec<u8>,
    taken: usize,
}

impl<S> Prefixed<S> {
    pub fn new(inner: S, prefix: Vec<u8>) -> Self {
        Self {
            inner,
            prefix,
            taken: 0,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.taken < this.prefix.len() {
            let n = (this.prefix.len() - this.taken).min(buf.remaining());
            buf.put_slice(&this.prefix[this.taken..this.taken + n]);
            this.taken += n;
            if this.taken == this.prefix.len() {
                this.prefix = Vec::new();
                this.taken = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn bytes_after_the_request_are_kept_for_later() {
        let (ours, mut theirs) = tokio::io::duplex(4096);
        theirs
            .write_all(b"GET /mqtt HTTP/1.1\r\nHost: x\r\n\r\n\x82\x81abcd!")
            .await
            .expect("write");
        let mut upgrade = UpgradeStream::new(ours);
        let mut request = Vec::new();
        let mut chunk = [0u8; 7];
        loop {
            let n = upgrade.read(&mut chunk).await.expect("read");
            if n == 0 {
                break;
            }
            request.extend_from_slice(&chunk[..n]);
        }
        assert_eq!(request, b"GET /mqtt HTTP/1.1\r\nHost: x\r\n\r\n");
        let (socket, rest) = upgrade.into_parts();
        // What the last read brought past the request; the rest is still in the socket.
        assert!(b"\x82\x81abcd!".starts_with(&rest) && !rest.is_empty(), "{rest:?}");
        let mut prefixed = Prefixed::new(socket, rest);
        theirs.write_all(b"more").await.expect("write");
        let mut all = [0u8; 11];
        prefixed.read_exact(&mut all).await.expect("read");
        assert_eq!(&all, b"\x82\x81abcd!more");
    }

    #[tokio::test]
    async fn a_request_without_an_end_is_refused_past_the_limit() {
        let (ours, mut theirs) = tokio::io::duplex(64 * 1024);
        theirs.write_all(&vec![b'a'; MAX_REQUEST + 10]).await.expect("write");
        let mut upgrade = UpgradeStream::new(ours);
        let mut sink = Vec::new();
        assert!(upgrade.read_to_end(&mut sink).await.is_err());
    }
}
