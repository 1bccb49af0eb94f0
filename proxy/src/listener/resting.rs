//! The sockets of resting connections, watched for readability by one thread of our own.
//!
//! A socket registered with tokio's reactor costs a registration of 256 bytes (the
//! readiness state, padded to cache lines) for as long as it is registered: for an idle
//! device, more than anything else the proxy keeps for it (issue 9). A resting connection
//! (see `mqtt::connection::rest`) needs one thing of its socket: to be woken when bytes
//! (or the end) arrive. So it takes its socket out of tokio's reactor and hands it to
//! [`RestingSockets`]: one epoll set and one thread for the whole process, a waker per
//! socket in a slab. The first readiness wakes the connection once and forgets the socket;
//! the connection registers it with tokio again when it takes up its work.
//!
//! Adding a socket that is readable already reports it at once (epoll looks at the state
//! when a file is added), so bytes that came while the connection lay down are not missed.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::Waker;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token};
use slab::Slab;

/// The watch over the sockets of resting connections.
pub struct RestingSockets {
    registry: Registry,
    /// Every watched socket and what to wake when it is readable, by token.
    watched: Mutex<Slab<(RawFd, Waker)>>,
}

/// A socket being watched, to be forgotten when its connection wakes for another reason.
/// The socket's descriptor tells its entry from a later one under the same key: a key is
/// reused once the thread has taken it, and a socket still open is the only one with its
/// descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watched {
    /// The slab key (a `u32`: every resting connection keeps one, and no process has four
    /// billion sockets).
    key: u32,
    fd: RawFd,
}

impl Watched {
    fn slot(self) -> usize {
        // u32 -> usize never truncates on the 32- and 64-bit targets this builds for.
        usize::try_from(self.key).unwrap_or(usize::MAX)
    }
}

impl RestingSockets {
    /// Creates the epoll set and starts the thread that waits on it.
    pub fn start() -> io::Result<Arc<Self>> {
        let mut poll = Poll::new()?;
        let sockets = Arc::new(Self {
            registry: poll.registry().try_clone()?,
            watched: Mutex::new(Slab::new()),
        });
        let watch = Arc::clone(&sockets);
        std::thread::Builder::new()
            .name("resting-sockets".into())
            .spawn(move || {
                let mut events = Events::with_capacity(256);
                loop {
                    if let Err(error) = poll.poll(&mut events, None) {
                        if error.kind() == io::ErrorKind::Interrupted {
                            continue;
                        }
                        // Nothing can be watched any more; resting connections still wake
                        // for deliveries, keep-alive and takeover, never for their bytes.
                        tracing::error!(%error, "resting sockets can no longer be watched");
                        return;
                    }
                    for event in events.iter() {
                        watch.wake(event.token().0);
                    }
                }
            })?;
        Ok(sockets)
    }

    fn watched(&self) -> MutexGuard<'_, Slab<(RawFd, Waker)>> {
        self.watched.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Wakes `waker` once `socket` is readable (has bytes, or its peer closed or failed),
    /// at once if it is already. The socket must stay open until it is forgotten or has
    /// woken the waker.
    pub fn watch(&self, socket: &impl AsRawFd, waker: Waker) -> io::Result<Watched> {
        let fd = socket.as_raw_fd();
        let mut watched = self.watched();
        let entry = watched.vacant_entry();
        let slot = entry.key();
        let key = u32::try_from(slot).map_err(|_| io::Error::other("more than 2^32 resting sockets"))?;
        // Registered under the lock: the thread cannot see the event before the entry.
        self.registry
            .register(&mut SourceFd(&fd), Token(slot), Interest::READABLE)?;
        entry.insert((fd, waker));
        Ok(Watched { key, fd })
    }

    /// Stops watching a socket (a no-op if it has woken its waker already). Once this
    /// returns, the socket is out of the epoll set and may be closed or watched again.
    pub fn forget(&self, watched: Watched) {
        let mut all = self.watched();
        // The key may be another socket's by now (the thread took this one's entry and
        // the key was given out again): that entry is not this socket's to remove.
        if all.get(watched.slot()).is_some_and(|(fd, _)| *fd == watched.fd) {
            all.remove(watched.slot());
            self.deregister(watched.fd);
        }
    }

    /// The socket of `key` is readable: out of the set, then its waker is woken. (A token
    /// reused after `forget` may wake a newer connection once for nothing: it looks, finds
    /// nothing, and rests again.)
    fn wake(&self, key: usize) {
        let waker = {
            let mut all = self.watched();
            let Some((fd, waker)) = all.try_remove(key) else {
                return;
            };
            // Under the lock, so that no `forget` returns before the socket is out.
            self.deregister(fd);
            waker
        };
        // A waker that panicked must not end the thread every resting socket relies on.
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| waker.wake())).is_err() {
            tracing::error!("waking a resting connection panicked");
        }
    }

    fn deregister(&self, fd: RawFd) {
        if let Err(error) = self.registry.deregister(&mut SourceFd(&fd)) {
            tracing::debug!(%error, fd, "resting socket not in the epoll set");
        }
    }

    /// How many sockets are watched now.
    pub fn len(&self) -> usize {
        self.watched().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;
    use std::time::{Duration, Instant};

    #[derive(Default)]
    struct WakeCount(AtomicUsize);

    impl Wake for WakeCount {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::AcqRel);
        }
    }

    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("address")).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        server.set_nonblocking(true).expect("non-blocking");
        (server, client)
    }

    fn wait_for(count: &WakeCount, n: usize) -> bool {
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            if count.0.load(Ordering::Acquire) >= n {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    #[test]
    fn a_readable_socket_wakes_once_and_is_forgotten() {
        let sockets = RestingSockets::start().expect("epoll");
        let (server, mut client) = pair();
        let count = Arc::new(WakeCount::default());
        sockets
            .watch(&server, Waker::from(Arc::clone(&count)))
            .expect("watched");
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(count.0.load(Ordering::Acquire), 0, "nothing to read: no wake");
        client.write_all(b"x").expect("written");
        assert!(wait_for(&count, 1), "bytes wake the waker");
        assert!(sockets.is_empty(), "a woken socket is no longer watched");
        client.write_all(b"y").expect("written");
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(count.0.load(Ordering::Acquire), 1, "woken once");
    }

    #[test]
    fn bytes_that_came_before_the_watch_wake_at_once_and_a_close_wakes_too() {
        let sockets = RestingSockets::start().expect("epoll");
        let (server, mut client) = pair();
        client.write_all(b"early").expect("written");
        std::thread::sleep(Duration::from_millis(20));
        let count = Arc::new(WakeCount::default());
        sockets
            .watch(&server, Waker::from(Arc::clone(&count)))
            .expect("watched");
        assert!(wait_for(&count, 1), "bytes already there wake at once");

        let (server, client) = pair();
        let count = Arc::new(WakeCount::default());
        sockets
            .watch(&server, Waker::from(Arc::clone(&count)))
            .expect("watched");
        drop(client);
        assert!(wait_for(&count, 1), "the peer's close wakes");
    }

    #[test]
    fn forgetting_a_socket_whose_key_went_to_another_leaves_the_other_watched() {
        let sockets = RestingSockets::start().expect("epoll");
        let (first, mut first_client) = pair();
        let first_count = Arc::new(WakeCount::default());
        let first_watch = sockets
            .watch(&first, Waker::from(Arc::clone(&first_count)))
            .expect("watched");
        first_client.write_all(b"x").expect("written");
        assert!(wait_for(&first_count, 1));
        // The thread took the first socket's key; a second socket gets it.
        let (second, mut second_client) = pair();
        let second_count = Arc::new(WakeCount::default());
        let second_watch = sockets
            .watch(&second, Waker::from(Arc::clone(&second_count)))
            .expect("watched");
        assert_eq!(first_watch.key, second_watch.key, "the key was reused");
        // The first connection, woken, forgets its socket: the second stays watched.
        sockets.forget(first_watch);
        assert_eq!(sockets.len(), 1);
        second_client.write_all(b"y").expect("written");
        assert!(
            wait_for(&second_count, 1),
            "the second socket still wakes its connection"
        );
    }

    #[test]
    fn a_forgotten_socket_wakes_nothing() {
        let sockets = RestingSockets::start().expect("epoll");
        let (server, mut client) = pair();
        let count = Arc::new(WakeCount::default());
        let watched = sockets
            .watch(&server, Waker::from(Arc::clone(&count)))
            .expect("watched");
        sockets.forget(watched);
        sockets.forget(watched);
        assert!(sockets.is_empty());
        client.write_all(b"x").expect("written");
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(count.0.load(Ordering::Acquire), 0);
    }
}
