//! A write deadline for a client's byte stream. A client that stops reading fills its
//! receive window and then our send buffer; from then on every write waits. Without a
//! deadline the connection's task would wait forever (its keep-alive, takeover and PUBACKs
//! with it). [`WriteDeadline`] fails a write, flush or shutdown that has made no progress
//! for the deadline; any progress starts the clock again, so a slow reader on a poor link
//! keeps its connection and only one that does not read at all loses it. After the
//! deadline every further write fails at once, so ending the connection never waits again.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

pub struct WriteDeadline<S> {
    inner: S,
    deadline: Duration,
    /// Runs while a write waits; `None` while writes make progress.
    stalled: Option<Pin<Box<Sleep>>>,
    expired: bool,
}

impl<S> WriteDeadline<S> {
    pub fn new(inner: S, deadline: Duration) -> Self {
        Self {
            inner,
            deadline,
            stalled: None,
            expired: false,
        }
    }

    /// Whether a write waited longer than the deadline.
    pub fn timed_out(&self) -> bool {
        self.expired
    }

    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Whether no write is waiting and none timed out.
    pub fn is_clear(&self) -> bool {
        self.stalled.is_none() && !self.expired
    }

    /// The stream, when no write is waiting and none timed out (a new deadline over it
    /// is the same as this one).
    pub fn into_rest(self) -> Result<S, Self> {
        if self.is_clear() { Ok(self.inner) } else { Err(self) }
    }
}

fn expired_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "the client did not read within the write deadline",
    )
}

impl<S: Unpin> WriteDeadline<S> {
    /// Runs one write-side operation under the deadline.
    fn guarded<T>(
        &mut self,
        cx: &mut Context<'_>,
        op: impl FnOnce(Pin<&mut S>, &mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if self.expired {
            return Poll::Ready(Err(expired_error()));
        }
        match op(Pin::new(&mut self.inner), cx) {
            Poll::Ready(result) => {
                self.stalled = None;
                Poll::Ready(result)
            }
            Poll::Pending => {
                let deadline = self.deadline;
                let stalled = self
                    .stalled
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(deadline)));
                if stalled.as_mut().poll(cx).is_ready() {
                    self.stalled = None;
                    self.expired = true;
                    return Poll::Ready(Err(expired_error()));
                }
                Poll::Pending
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteDeadline<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.get_mut().guarded(cx, |s, cx| s.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().guarded(cx, |s, cx| s.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().guarded(cx, |s, cx| s.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().guarded(cx, |s, cx| s.poll_shutdown(cx))
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::time::Instant;

    use super::*;

    const DEADLINE: Duration = Duration::from_millis(300);

    #[tokio::test]
    async fn a_write_nobody_reads_fails_after_the_deadline_and_every_later_one_at_once() {
        // A pipe with 64 bytes of buffer whose other end never reads.
        let (ours, _theirs) = tokio::io::duplex(64);
        let mut stream = WriteDeadline::new(ours, DEADLINE);
        let started = Instant::now();
        let error = stream.write_all(&[0; 1024]).await.expect_err("nobody reads");
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= DEADLINE, "{:?}", started.elapsed());
        assert!(stream.timed_out());
        let again = Instant::now();
        assert!(stream.write_all(b"x").await.is_err());
        assert!(stream.shutdown().await.is_err());
        assert!(again.elapsed() < Duration::from_millis(50), "{:?}", again.elapsed());
    }

    #[tokio::test]
    async fn a_slow_reader_that_keeps_reading_never_times_out() {
        let (ours, mut theirs) = tokio::io::duplex(64);
        let mut stream = WriteDeadline::new(ours, DEADLINE);
        let reader = tokio::spawn(async move {
            let mut total = 0;
            let mut chunk = [0u8; 64];
            while total < 1024 {
                // Each read makes room after half the deadline, 16 times in a row.
                tokio::time::sleep(DEADLINE / 2).await;
                total += theirs.read(&mut chunk).await.expect("read");
            }
            total
        });
        let started = Instant::now();
        stream.write_all(&[0; 1024]).await.expect("progress restarts the clock");
        assert!(started.elapsed() > DEADLINE * 4, "{:?}", started.elapsed());
        assert!(!stream.timed_out());
        drop(stream);
        assert_eq!(reader.await.expect("reader"), 1024);
    }
}
