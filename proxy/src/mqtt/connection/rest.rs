//! An idle connection at rest: not a task, only what it needs to take up again.
//!
//! Most MQTT connections are devices that send a few packets a minute. A task per
//! connection keeps its whole future (the event loop and everything it holds, about
//! 1.1 KB) for the connection's life; Mosquitto keeps a few hundred bytes per client in
//! its event loop (issue 9). So a plain TCP connection with nothing pending (nothing in
//! flight, no partial packet, no catch-up, no alias, no token to expire) ends its task
//! and leaves a [`Resting`] state in a [`Bed`]: the socket, the codec, the session and a
//! few numbers. The bed is the waker of everything the connection waited on (the socket's
//! readiness, the delivery queue with the hub's kick, keep-alive and lagging notice, the
//! takeover latch); the first of them to wake it starts a task that takes up the
//! connection where it left off ([`carry_on`]). The socket leaves tokio's reactor while
//! it rests: [`RestingSockets`](crate::listener::resting::RestingSockets) watches it for a fraction of what a registration costs.
//!
//! TLS and WebSocket connections do not rest: their streams keep state of their own
//! (a TLS session, a frame decoder) that a resting state would have to carry too.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::task::{Wake, Waker};

use tokio::net::TcpStream;

use super::*;
use crate::listener::resting::Watched;

/// A byte stream a connection is served over, and whether its connection can rest.
pub trait ByteStream: AsyncRead + AsyncWrite + Unpin + Send + Sized + 'static {
    /// Whether a connection over this stream rests when idle.
    const RESTS: bool = false;

    /// The socket under the stream, for one that rests; any other gives itself back.
    fn into_socket(self) -> Result<TcpStream, Self> {
        Err(self)
    }
}

impl ByteStream for TcpStream {
    const RESTS: bool = true;

    fn into_socket(self) -> Result<TcpStream, Self> {
        Ok(self)
    }
}

/// When a connection's event loop may let it rest, and how deeply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Rest {
    /// Never: its stream cannot rest, or resting failed once.
    Never,
    /// Whenever nothing came and nothing is pending.
    WhenIdle(Depth),
    /// Once something happened: a connection just woken from a deep rest. Its socket is
    /// new to tokio's reactor, which learns that bytes are waiting only at its next turn;
    /// resting at the first look would put it back to bed with its packet unread.
    AfterAnEvent(Depth),
}

impl Rest {
    /// Whether the connection may rest at the next look that finds nothing to do.
    pub(super) fn now(self) -> bool {
        matches!(self, Rest::WhenIdle(_))
    }

    /// What the connection may do once an event was handled.
    pub(super) fn after_an_event(self) -> Rest {
        match self {
            Rest::AfterAnEvent(depth) => Rest::WhenIdle(depth),
            other => other,
        }
    }

    fn depth(self) -> Depth {
        match self {
            Rest::WhenIdle(depth) | Rest::AfterAnEvent(depth) => depth,
            Rest::Never => Depth::Light,
        }
    }
}

/// How a resting connection's socket waits.
///
/// Deep: out of tokio's reactor, watched by [`RestingSockets`] (it saves the 256 bytes of
/// tokio's registration, and costs a hop through that thread and two registrations per
/// wake). Light: still registered with tokio, which wakes it directly. A connection rests
/// deeply at first and after a rest of at least [`DEEP_AFTER_MS`] (a device between its
/// messages), lightly after a shorter one (a client sending many messages a second, for
/// which the hop would be latency on every message).
///
/// [`RestingSockets`]: crate::listener::resting::RestingSockets
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Depth {
    Light,
    Deep,
}

/// A rest at least this long makes the next one deep.
const DEEP_AFTER_MS: u64 = 1_000;

/// The socket of a resting connection.
/// (Light boxed: tokio's stream is 40 bytes, and most rests are deep.)
enum RestingSocket {
    Light(Box<TcpStream>),
    /// `watched` is set once the socket is watched.
    Deep {
        socket: std::net::TcpStream,
        watched: Option<Watched>,
    },
}

/// What a resting connection keeps: every field of [`Connection`] that is not empty at
/// rest, and what its transport and event loop need to start again.
pub(super) struct Resting {
    socket: RestingSocket,
    /// When it lay down, on the hub's clock: how long it rested decides the next depth.
    laid_at_ms: u64,
    codec: MqttCodec,
    shared: Arc<Shared>,
    slot: ConnectionSlot,
    deliveries: QueueReceiver,
    taken_over: Arc<Latch<()>>,
    grace: Option<u64>,
    id: ConnId,
    version: Version,
    principal: Option<Box<Principal>>,
    session: Arc<SessionState>,
    /// `None` when empty (a clean session's always are): 8 bytes instead of 24.
    saved_positions: Option<Box<Positions>>,
    expiry_on_disconnect: Option<u32>,
    window: u16,
    next_packet_id: u16,
    in_alias_maximum: u16,
    out_alias_maximum: u16,
}

impl Connection {
    /// Whether nothing of the connection would be lost by keeping only a [`Resting`]:
    /// nothing in flight or waiting for Kafka, no catch-up, no alias, no token deadline.
    pub(super) fn at_rest(&self) -> bool {
        self.token_deadline.is_none()
            && self.inflight.at_rest().is_some()
            && self.origins.is_empty()
            && self.in_aliases.at_rest().is_some()
            && self.out_aliases.at_rest().is_some()
            && self.pending_acks.as_ref().is_none_or(|acks| acks.is_empty())
            && self.pending_ids.is_empty()
            && self.qos0_deliveries.as_ref().is_none_or(|set| set.is_empty())
            && self.qos2_received.is_empty()
            && !self.catch_up_wanted
            && self.replay.is_none()
            && self.resend.is_empty()
            && self.skip.is_empty()
    }
}

/// Whether the transport holds nothing that a resting connection would lose.
pub(super) fn transport_at_rest<S>(transport: &Transport<WriteDeadline<S>>) -> bool {
    transport.is_idle() && transport.get_ref().is_clear()
}

/// Lays a connection down to rest; the task that called it ends. A connection that cannot
/// rest after all (its stream is not a plain socket, or something is pending) goes on in
/// a task of its own instead.
pub(super) fn lie_down<S: ByteStream>(
    transport: Transport<WriteDeadline<S>>,
    mut connection: Connection,
    waits: Waits,
    shared: Arc<Shared>,
    slot: ConnectionSlot,
    rest: Rest,
) {
    // A persistent session stores its positions now: at rest it gets no delivery, so they
    // can only fall behind by records it did not want.
    connection.save_positions();
    let (stream, codec) = match transport.into_rest() {
        Ok(parts) => parts,
        Err(transport) => return keep_awake(transport, connection, waits, shared, slot),
    };
    let stream = match stream.into_rest() {
        Ok(stream) => stream,
        Err(stream) => return keep_awake(Transport::new(stream, codec), connection, waits, shared, slot),
    };
    let socket = match stream.into_socket() {
        Ok(socket) => socket,
        Err(stream) => {
            let stream = WriteDeadline::new(stream, shared.limits.write_timeout);
            return keep_awake(Transport::new(stream, codec), connection, waits, shared, slot);
        }
    };
    let (Some((window, next_packet_id)), Some(in_alias_maximum), Some(out_alias_maximum), true) = (
        connection.inflight.at_rest(),
        connection.in_aliases.at_rest(),
        connection.out_aliases.at_rest(),
        connection.at_rest(),
    ) else {
        let stream = WriteDeadline::new(socket, shared.limits.write_timeout);
        return keep_awake(Transport::new(stream, codec), connection, waits, shared, slot);
    };
    let socket = match rest.depth() {
        Depth::Light => RestingSocket::Light(Box::new(socket)),
        // Out of tokio's reactor. Taking it out can only fail with the socket closed: the
        // connection ends as one whose peer went away.
        Depth::Deep => match socket.into_std() {
            Ok(socket) => RestingSocket::Deep { socket, watched: None },
            Err(error) => {
                tracing::warn!(client_id = %connection.session.client_id, %error, "socket lost while the connection lay down");
                let gone = WriteDeadline::new(Gone, shared.limits.write_timeout);
                return keep_awake(Transport::new(gone, codec), connection, waits, shared, slot);
            }
        },
    };
    let Waits {
        deliveries,
        taken_over,
        grace,
        ..
    } = waits;
    connection.hub.metrics().resting.inc();
    tracing::trace!(client_id = %connection.session.client_id, "connection rests");
    Bed::lay(Resting {
        socket,
        laid_at_ms: connection.hub.clock_ms(),
        codec,
        shared,
        slot,
        deliveries,
        taken_over,
        grace,
        id: connection.id,
        version: connection.version,
        principal: connection.principal,
        session: connection.session,
        saved_positions: (!connection.saved_positions.is_empty()).then(|| Box::new(connection.saved_positions)),
        expiry_on_disconnect: connection.expiry_on_disconnect,
        window,
        next_packet_id,
        in_alias_maximum,
        out_alias_maximum,
    });
}

/// Goes on with a connection that could not rest, in a task of its own that does not try
/// again.
fn keep_awake<S: ByteStream>(
    transport: Transport<WriteDeadline<S>>,
    connection: Connection,
    waits: Waits,
    shared: Arc<Shared>,
    slot: ConnectionSlot,
) {
    tracing::debug!(client_id = %connection.session.client_id, "connection could not rest; it stays a task");
    let runtime = shared.runtime.clone();
    runtime.spawn(carry_on(transport, connection, waits, shared, slot, Rest::Never));
}

/// Where a resting connection lies, and the waker of what it waits on.
struct Bed {
    resting: Mutex<Option<Resting>>,
    /// Something woke the bed (possibly before the connection lay in it).
    woken: AtomicBool,
}

impl Bed {
    /// Lays `resting` down with every wait registered; wakes it at once if one is over.
    fn lay(mut resting: Resting) {
        let bed = Arc::new(Bed {
            resting: Mutex::new(None),
            woken: AtomicBool::new(false),
        });
        // The waits are polled before the connection is in the bed, and without its lock:
        // a registration may wake the waker on the spot (a wake racing with it), which
        // then finds the bed empty and leaves `woken` for the look below.
        let waker = Waker::from(Arc::clone(&bed));
        let mut cx = Context::from_waker(&waker);
        let news = resting.deliveries.poll_news(&mut cx).is_ready();
        let taken_over = resting.taken_over.poll_raised(&mut cx).is_ready();
        if news || taken_over {
            bed.woken.store(true, Ordering::Release);
        }
        match &mut resting.socket {
            RestingSocket::Light(socket) => {
                if socket.poll_read_ready(&mut cx).is_ready() {
                    bed.woken.store(true, Ordering::Release);
                }
            }
            RestingSocket::Deep { socket, watched } => match resting.shared.resting_sockets.watch(socket, waker) {
                Ok(watch) => *watched = Some(watch),
                Err(error) => {
                    // Not watched, it would not hear its client: it goes on as a task.
                    tracing::warn!(client_id = %resting.session.client_id, %error, "resting socket not watched; the connection stays a task");
                    let runtime = resting.shared.runtime.clone();
                    runtime.spawn(resume(resting, Rest::Never));
                    return;
                }
            },
        }
        *bed.lock() = Some(resting);
        if bed.woken.load(Ordering::Acquire) {
            bed.get_up();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Resting>> {
        self.resting.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts the connection's task again, unless it got up already.
    fn get_up(&self) {
        let Some(resting) = self.lock().take() else {
            return;
        };
        let runtime = resting.shared.runtime.clone();
        let rested_ms = resting.shared.hub.clock_ms().saturating_sub(resting.laid_at_ms);
        let depth = if rested_ms >= DEEP_AFTER_MS {
            Depth::Deep
        } else {
            Depth::Light
        };
        let rest = match resting.socket {
            RestingSocket::Light(_) => Rest::WhenIdle(depth),
            RestingSocket::Deep { .. } => Rest::AfterAnEvent(depth),
        };
        runtime.spawn(resume(resting, rest));
    }
}

impl Wake for Bed {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.get_up();
    }
}

/// The task of a connection woken from rest, to rest again as `rest` says.
async fn resume(resting: Resting, rest: Rest) {
    // Taken up inside the task, not by the waker: a waker may run on any thread (the
    // resting sockets' own, Kafka's), and the connection's timers and its socket's
    // registration need the runtime.
    wake_up(resting, rest).await;
}

/// The connection, its transport and event loop as they were when it lay down, going on.
fn wake_up(resting: Resting, rest: Rest) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    let Resting {
        socket,
        laid_at_ms: _,
        codec,
        shared,
        slot,
        deliveries,
        taken_over,
        grace,
        id,
        version,
        principal,
        session,
        saved_positions,
        expiry_on_disconnect,
        window,
        next_packet_id,
        in_alias_maximum,
        out_alias_maximum,
    } = resting;
    shared.hub.metrics().resting.dec();
    tracing::trace!(client_id = %session.client_id, "connection woken");
    let socket = match socket {
        RestingSocket::Light(socket) => Ok(*socket),
        RestingSocket::Deep { socket, watched } => {
            if let Some(watched) = watched {
                shared.resting_sockets.forget(watched);
            }
            // Back in tokio's reactor. That fails only when the process cannot register
            // one more socket.
            TcpStream::from_std(socket)
        }
    };
    let connection = Connection {
        id,
        version,
        hub: Arc::clone(&shared.hub),
        sessions: Arc::clone(&shared.sessions),
        replayer: Arc::clone(&shared.replayer),
        limits: Arc::clone(&shared.limits),
        security: Arc::clone(&shared.security),
        principal,
        token_deadline: None,
        inflight: Inflight::resume(window, shared.limits.outbound_queue, next_packet_id),
        origins: BTreeMap::new(),
        out_aliases: OutboundAliases::new(out_alias_maximum),
        in_aliases: InboundAliases::new(in_alias_maximum),
        pending_acks: None,
        pending_ids: BTreeSet::new(),
        qos0_deliveries: None,
        qos2_received: BTreeSet::new(),
        session,
        saved_positions: saved_positions.map(|p| *p).unwrap_or_default(),
        catch_up_wanted: false,
        replay: None,
        expiry_on_disconnect,
        resend: BTreeMap::new(),
        skip: BTreeSet::new(),
    };
    let waits = Waits::new(&connection, deliveries, taken_over, grace);
    let write_timeout = shared.limits.write_timeout;
    // A socket not registered again: the connection ends as if its peer went away, its
    // session and will handled as for any lost connection.
    match socket {
        Ok(socket) => {
            let transport = Transport::new(WriteDeadline::new(socket, write_timeout), codec);
            Box::pin(carry_on(transport, connection, waits, shared, slot, rest))
        }
        Err(error) => {
            tracing::warn!(client_id = %connection.session.client_id, %error, "socket of a resting connection not registered again; closing it");
            let transport = Transport::new(WriteDeadline::new(Gone, write_timeout), codec);
            Box::pin(carry_on(transport, connection, waits, shared, slot, Rest::Never))
        }
    }
}

/// The stream of a connection whose socket was lost: it reads the end at once and takes
/// no bytes, so the connection ends the way a vanished peer's does.
struct Gone;

impl AsyncRead for Gone {
    fn poll_read(self: Pin<&mut Self>, _: &mut Context<'_>, _: &mut tokio::io::ReadBuf<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Gone {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, _: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl ByteStream for Gone {}
