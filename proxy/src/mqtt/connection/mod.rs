//! One MQTT connection, from CONNECT to close: reads packets, publishes to Kafka through
//! the hub, answers acknowledgements in order, delivers what the hub dispatches within the
//! client's window, and enforces every limit with the reason code the spec names.
//!
//! This file holds the connection's life: its event loop and its end (session kept or
//! deleted). `establish` handles CONNECT (redirect, session opened, CONNACK), `inbound`
//! the client's packets and `outbound` the deliveries to it, including catch-ups from Kafka.

mod authorize;
mod establish;
mod inbound;
mod outbound;
mod rest;

pub use rest::ByteStream;
use rest::{Depth, Rest};

use establish::{Established, establish};

use authorize::AckError;

use outbound::{poll_replay, try_recv_replay};

use std::collections::{BTreeMap, BTreeSet};
use std::num::{NonZeroU16, NonZeroU32};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytestring::ByteString;
use futures::stream::{FuturesOrdered, FuturesUnordered};
use futures::{SinkExt, StreamExt};
use rmqtt_codec::error::DecodeError;
use rmqtt_codec::v5::{
    ConnectAckReason, Disconnect, DisconnectReasonCode, Packet, PublishAck, PublishAck2, PublishAck2Reason,
    PublishAckReason, SubscribeAckReason, ToReasonCode, UserProperties,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::{Instant, Sleep};

use crate::auth::policy::Principal;
use crate::broker::message::{MessageProperties, now_ms};
use crate::broker::session::{ConnectRequest, Departure, SessionState, prune_outbound};
use crate::cluster::ownership::{self, Placement};
use crate::hub::{
    ConnId, Hub, KEEP_ALIVE_TIMEOUT, Kick, NO_DEADLINE, Origin, Outgoing, Positions, QueueReceiver, Registration,
    SESSION_TAKEN_OVER,
};
use crate::kafka::producer::PublishError;
use crate::kafka::replay::{Catching, Replayed, Replayer};
use crate::kafka::sessions::SessionStore;
use crate::latch::Latch;
use crate::listener::deadline::WriteDeadline;
use crate::listener::linger;
use crate::listener::{ConnectionSlot, Shared};
use crate::mqtt::codec::{MqttCodec, Version};
use crate::mqtt::connect::{self, Limits};
use crate::mqtt::inflight::Inflight;
use crate::mqtt::session;
use crate::mqtt::topic_alias::{InboundAliases, OutboundAliases};
use crate::mqtt::transport::Transport;

type Qos0Delivery = Pin<Box<dyn Future<Output = Result<(), PublishError>> + Send>>;
/// Deliveries written before one flush.
const DELIVERY_BATCH: usize = 256;
type PendingAck = Pin<Box<dyn Future<Output = (NonZeroU16, u8, Result<(), AckError>)> + Send>>;

/// Serves one accepted byte stream until it closes.
/// `slot` is its place in the process's connection count, taken at accept; `certificate`
/// is who the client's verified TLS certificate says it is (`tls.clientIdentity`).
///
/// Not an `async fn`: an async fn keeps a slot for each argument for its whole life, even
/// once it was moved on (and a second one for a `mut` argument). The stream goes into the
/// transport here, which the future owns once, and the certificate is boxed: each idle
/// connection's task is that much smaller (issue 9).
pub fn serve<S: ByteStream>(
    stream: S,
    shared: Arc<Shared>,
    slot: ConnectionSlot,
    certificate: Option<Principal>,
) -> impl Future<Output = ()> + Send {
    // Every write to the client has a deadline: one that does not read loses its
    // connection instead of holding this task forever.
    let stream = WriteDeadline::new(stream, shared.limits.write_timeout);
    let mut transport = Transport::new(stream, MqttCodec::new(shared.limits.maximum_packet_size));
    let certificate = certificate.map(Box::new);
    async move {
        if let Some((connection, waits)) = converse(&mut transport, &shared, &slot, certificate).await {
            // Idle: the connection rests and this task ends (nothing is awaited from here).
            rest::lie_down(transport, connection, waits, shared, slot, Rest::WhenIdle(Depth::Deep));
            return;
        }
        // However it ended, the client can read what was sent last (DISCONNECT, a refusing
        // CONNACK) before the socket closes, also while it is still writing.
        Box::pin(linger::close(transport.get_mut())).await;
    }
}

/// The MQTT conversation: CONNECT, the connection's life, its end; or the connection and
/// its waits once it is idle and can rest.
///
/// A task is as large as its largest state, for its whole life. CONNECT handling and the
/// end each run boxed, so a connection's task holds only the connection and its event
/// loop (issue 9: the task was 5.8 KB, most of what an idle connection cost).
async fn converse<S: ByteStream>(
    transport: &mut Transport<WriteDeadline<S>>,
    shared: &Arc<Shared>,
    slot: &ConnectionSlot,
    certificate: Option<Box<Principal>>,
) -> Option<(Connection, Waits)> {
    // The boxed CONNECT future is a temporary of the statement and is freed here, not kept
    // for the life of the connection.
    let Established {
        mut connection,
        registration,
        taken_over,
        keep_alive,
    } = Box::pin(establish(transport, Arc::clone(shared), slot, certificate)).await?;
    // MQTT §3.1.2.10: one and a half times the keep-alive without a packet closes it.
    let grace = (keep_alive > 0).then(|| u64::from(keep_alive) * 1500);
    let mut waits = Waits::new(&connection, registration.deliveries, taken_over, grace);
    connection.keep_alive_from_now(&waits);
    // A new connection rests deeply: most are devices that say little.
    let rest = if S::RESTS {
        Rest::WhenIdle(Depth::Deep)
    } else {
        Rest::Never
    };
    match connection.run(transport, &mut waits, rest).await {
        Run::Resting => Some((connection, waits)),
        Run::Ended(ending) => {
            Box::pin(connection.finish(transport, ending)).await;
            None
        }
    }
}

/// A connection's life from where it was taken up (after resting, or when it could not
/// rest) to its end or its next rest: the task of a connection woken from rest.
///
/// Not an `async fn`, for the reason `serve` is not: a `mut` argument would take two
/// slots in the task.
#[allow(clippy::manual_async_fn, reason = "see above")]
fn carry_on<S: ByteStream>(
    mut transport: Transport<WriteDeadline<S>>,
    mut connection: Connection,
    mut waits: Waits,
    shared: Arc<Shared>,
    slot: ConnectionSlot,
    rest: Rest,
) -> impl Future<Output = ()> + Send {
    async move {
        match connection.run(&mut transport, &mut waits, rest).await {
            Run::Resting => rest::lie_down(transport, connection, waits, shared, slot, rest),
            Run::Ended(ending) => {
                Box::pin(connection.finish(&mut transport, ending)).await;
                Box::pin(linger::close(transport.get_mut())).await;
                drop(slot);
            }
        }
    }
}

/// How the event loop stopped.
enum Run {
    /// The connection ended.
    Ended(Ending),
    /// The connection is idle and can rest (see `rest`).
    Resting,
}

/// A connection that ended because the client stopped reading is counted
/// (`server_disconnects_total{reason="write_timeout"}`): no DISCONNECT can reach it.
fn count_write_timeout<S>(hub: &Hub, transport: &Transport<WriteDeadline<S>>, client_id: &str) {
    if transport.get_ref().timed_out() {
        hub.metrics().disconnects.with_label_values(&["write_timeout"]).inc();
        tracing::info!(%client_id, "client did not read within the write deadline; connection closed");
    }
}

/// How a connection ended.
enum Ending {
    /// DISCONNECT from the client (no will).
    Normal,
    /// Anything else; `Some(code)` is the DISCONNECT reason to send (5.0).
    Abnormal(Option<DisconnectReasonCode>),
    /// A newer connection of the same client id (on any process) took the session.
    TakenOver,
    /// The process closes it: the session moved to another process, or this one stops.
    Kicked(Kick),
}

impl Ending {
    /// The DISCONNECT reason code to send, if any.
    fn reason(&self) -> Option<DisconnectReasonCode> {
        match self {
            Ending::Normal => None,
            Ending::Abnormal(reason) => *reason,
            Ending::TakenOver => Some(DisconnectReasonCode::SessionTakenOver),
            Ending::Kicked(kick) => Some(match kick.reason {
                0x9C => DisconnectReasonCode::UseAnotherServer,
                0x9D => DisconnectReasonCode::ServerMoved,
                0x8B => DisconnectReasonCode::ServerShuttingDown,
                KEEP_ALIVE_TIMEOUT => DisconnectReasonCode::KeepAliveTimeout,
                _ => DisconnectReasonCode::UnspecifiedError,
            }),
        }
    }
}

/// A catch-up under way: the messages topic it reads and what it has read.
type Replay = (Arc<str>, Catching);

/// How often the positions of a connected persistent session are stored, so that a
/// process that dies costs at most this much redelivery.
const SAVE_POSITIONS_EVERY: Duration = Duration::from_secs(5);

struct Connection {
    id: ConnId,
    version: Version,
    hub: Arc<Hub>,
    sessions: Arc<SessionStore>,
    replayer: Arc<Replayer>,
    limits: Arc<Limits>,
    security: Arc<crate::auth::Security>,
    /// Who the guard says the client is; `None`: nobody in particular, as without a guard
    /// (most connections, which need not carry 72 bytes for it).
    principal: Option<Box<Principal>>,
    /// When its token expires: the connection ends then (5.0: DISCONNECT 0xA0).
    token_deadline: Option<Instant>,
    inflight: Inflight<Outgoing>,
    /// Where the message behind each outbound packet id is in Kafka.
    origins: BTreeMap<u16, Origin>,
    out_aliases: OutboundAliases,
    in_aliases: InboundAliases,
    /// QoS 1/2 PUBLISHes waiting for Kafka, in arrival order (acks go out in that order).
    /// (`None` until the first, and boxed: an empty set holds an allocation of its own and
    /// is 64 bytes, and most connections are idle devices.)
    pending_acks: Option<Box<FuturesOrdered<PendingAck>>>,
    pending_ids: BTreeSet<u16>,
    /// Kafka acknowledgements of QoS 0 PUBLISHes, only watched for errors.
    qos0_deliveries: Option<Box<FuturesUnordered<Qos0Delivery>>>,
    /// QoS 2 packet ids acknowledged with PUBREC, waiting for PUBREL.
    qos2_received: BTreeSet<u16>,
    /// The session (subscriptions, will, expiry); its client id is the connection's. Shared
    /// with the session view until the connection changes it (copy on write).
    session: Arc<SessionState>,
    /// The positions last stored, to store them again only when they moved.
    saved_positions: Positions,
    /// The hub said this connection lags: catch up once the live queue is drained.
    catch_up_wanted: bool,
    replay: Option<Replay>,
    /// A Session Expiry Interval the client's DISCONNECT set.
    expiry_on_disconnect: Option<u32>,
    /// Records a resumed session had in flight, to send again with their packet id (DUP)
    /// when the catch-up reads them.
    resend: BTreeMap<Origin, (NonZeroU16, u8)>,
    /// Records a resumed session had delivered (or released) already: the catch-up skips them.
    skip: BTreeSet<Origin>,
}

/// The principal of a connection that has none of its own.
static ANONYMOUS: Principal = Principal {
    guard: None,
    identity: None,
    roles: std::collections::BTreeSet::new(),
};

/// What handling one packet asks of the loop.
type Step = Result<(), Ending>;

fn protocol_error() -> Ending {
    Ending::Abnormal(Some(DisconnectReasonCode::ProtocolError))
}

/// What the connection waits on between two steps: owned by its event loop, polled by
/// [`Connection::poll_event`].
struct Waits {
    /// Deliveries, and the hub's kick, keep-alive and lagging notice.
    deliveries: QueueReceiver,
    /// Raised by the session store when a newer connection took the session elsewhere.
    taken_over: Arc<Latch<()>>,
    /// The positions timer of a persistent session.
    save: Option<tokio::time::Interval>,
    /// Boxed: most connections have no token deadline and need no timer for it.
    token_expiry: Option<Pin<Box<Sleep>>>,
    /// Milliseconds without a packet after which keep-alive closes the connection.
    grace: Option<u64>,
}

impl Waits {
    fn new(connection: &Connection, deliveries: QueueReceiver, taken_over: Arc<Latch<()>>, grace: Option<u64>) -> Self {
        Waits {
            deliveries,
            taken_over,
            // Only a session that outlives its connection has positions to store: the others
            // keep no timer (10 000 idle connections would otherwise wake 2 000 times a second).
            save: connection
                .session
                .is_persistent()
                .then(|| tokio::time::interval_at(Instant::now() + SAVE_POSITIONS_EVERY, SAVE_POSITIONS_EVERY)),
            token_expiry: connection
                .token_deadline
                .map(|at| Box::pin(tokio::time::sleep_until(at))),
            grace,
        }
    }
}

/// Which of the waits are open for this step.
#[derive(Clone, Copy)]
struct Gates {
    /// The client is read from (its window has room, see `reads_more`).
    reading: bool,
    /// Live deliveries go out (no catch-up under way, room in flight).
    live_open: bool,
    /// The catch-up's records go out (room in flight).
    replay_open: bool,
}

/// What woke the connection.
#[allow(
    clippy::large_enum_variant,
    reason = "taken apart as soon as `poll_event` returns it; boxing would allocate per packet"
)]
enum Event {
    /// Handled on the spot.
    Signal(Signal),
    /// Handled by a boxed future (it writes to the client or waits for Kafka).
    Work(Work),
}

/// What the connection handles without waiting: no allocation for it (a QoS 0 PUBLISH
/// acknowledged by Kafka is one of these, per message).
enum Signal {
    Kicked(Kick),
    TakenOver,
    Undecodable(DecodeError),
    Closed,
    Lagging,
    SaveTick,
    Qos0Done,
    TokenExpired,
}

/// What the connection handles with writes to the client or waits on Kafka.
enum Work {
    KafkaAck(NonZeroU16, u8, Result<(), AckError>),
    Packet(Packet),
    Delivery(Outgoing),
    Replayed(Option<Replayed>),
}

impl Connection {
    /// Who the guard says the client is.
    fn principal(&self) -> &Principal {
        self.principal.as_deref().unwrap_or(&ANONYMOUS)
    }

    /// The event loop, until the connection ends or (as `rest` allows) is idle and can
    /// rest.
    /// It waits by polling what it waits on ([`Connection::poll_event`]) rather than with
    /// `select!`: `select!` keeps a future per branch inside the task for its whole life,
    /// about half a kilobyte that every idle connection carried (issue 9).
    async fn run<S>(&mut self, transport: &mut Transport<WriteDeadline<S>>, waits: &mut Waits, mut rest: Rest) -> Run
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let mut paused = false;
        loop {
            if self.catch_up_wanted && self.replay.is_none() && waits.deliveries.is_empty() {
                self.start_catch_up();
            }
            // A 3.1.1 client is not read from while its window is full (`reads_more`); that
            // silence is ours, so keep-alive starts again when reading does.
            let reading = self.reads_more();
            if reading && std::mem::replace(&mut paused, false) {
                self.keep_alive_from_now(waits);
            }
            if !reading && !paused {
                waits.deliveries.set_deadline(NO_DEADLINE);
                paused = true;
            }
            let gates = Gates {
                reading,
                live_open: self.replay.is_none() && self.inflight.has_room(),
                replay_open: self.replay.is_some() && self.inflight.has_room(),
            };
            // The work is boxed: it (and what it works on, a packet can be a few hundred
            // bytes) exists only while it runs instead of being part of every connection's
            // task, which an idle connection would carry for nothing. The event lives in a
            // block that ends before the work is awaited: a local in scope at an `.await`
            // keeps its place in the task, moved out or not.
            let step = {
                let working = {
                    // Nothing came and nothing is pending: the connection can rest instead
                    // of waiting as a task (the waits it polled are registered again by
                    // the rest's own waker).
                    let event = std::future::poll_fn(|cx| match self.poll_event(cx, transport, waits, gates) {
                        Poll::Pending
                            if rest.now() && reading && self.at_rest() && rest::transport_at_rest(transport) =>
                        {
                            Poll::Ready(None)
                        }
                        polled => polled.map(Some),
                    })
                    .await;
                    rest = rest.after_an_event();
                    match event {
                        None => return Run::Resting,
                        Some(Event::Signal(signal)) => Err(self.on_signal(signal)),
                        Some(Event::Work(work)) => Ok(Box::pin(self.on_work(transport, waits, work))),
                    }
                };
                match working {
                    Ok(working) => working.await,
                    Err(step) => step,
                }
            };
            if let Err(ending) = step {
                return Run::Ended(ending);
            }
            if let Err(ending) = flush(transport).await {
                return Run::Ended(ending);
            }
        }
    }

    /// Keep-alive runs out its grace from now (never without one). The deadline sits in
    /// the delivery queue, where the hub's sweep looks for the ones that passed
    /// (`Hub::sweep_keep_alive`): no timer per connection, resting or not.
    fn keep_alive_from_now(&self, waits: &Waits) {
        if let Some(grace) = waits.grace {
            waits.deliveries.set_deadline(self.hub.clock_ms().saturating_add(grace));
        }
    }

    /// Handles a signal: the connection's end, or a note for its next steps.
    fn on_signal(&mut self, signal: Signal) -> Step {
        match signal {
            Signal::Kicked(kick) => Err(if kick.reason == SESSION_TAKEN_OVER {
                Ending::TakenOver
            } else {
                Ending::Kicked(kick)
            }),
            Signal::TakenOver => Err(Ending::TakenOver),
            Signal::Undecodable(error) => {
                tracing::debug!(client_id = %self.session.client_id, %error, "undecodable packet");
                Err(Ending::Abnormal(Some(error.to_reason_code())))
            }
            Signal::Closed => Err(Ending::Abnormal(None)),
            Signal::Lagging => {
                self.catch_up_wanted = true;
                Ok(())
            }
            Signal::SaveTick => {
                self.save_positions();
                Ok(())
            }
            // A QoS 0 PUBLISH that did not reach Kafka is counted and logged (rate-limited)
            // by the producer: one line per message would flood the log in an outage.
            Signal::Qos0Done => {
                release_if_empty(&mut self.qos0_deliveries, |set| set.is_empty());
                Ok(())
            }
            Signal::TokenExpired => {
                self.hub
                    .metrics()
                    .auth_refusals
                    .with_label_values(&["token_expired"])
                    .inc();
                tracing::info!(client_id = %self.session.client_id, "token expired: closing the connection");
                Err(Ending::Abnormal(Some(DisconnectReasonCode::MaximumConnectTime)))
            }
        }
    }

    /// Does the work a packet, a Kafka acknowledgement or a delivery asks for.
    async fn on_work<S>(&mut self, transport: &mut Transport<S>, waits: &mut Waits, work: Work) -> Step
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        match work {
            Work::KafkaAck(id, qos, result) => {
                release_if_empty(&mut self.pending_acks, |set| set.is_empty());
                self.on_kafka_ack(transport, id, qos, result).await
            }
            Work::Packet(packet) => {
                self.keep_alive_from_now(waits);
                self.on_packet(transport, packet).await
            }
            Work::Delivery(outgoing) => self.deliver_batch(transport, outgoing, &waits.deliveries).await,
            Work::Replayed(replayed) => {
                // As with live deliveries: what else the catch-up has ready goes out with
                // the same flush.
                let mut step = self.on_replayed(transport, replayed).await;
                let mut batch = 1;
                while step.is_ok() && batch < DELIVERY_BATCH && self.inflight.has_room() {
                    let Some(next) = try_recv_replay(&mut self.replay) else {
                        break;
                    };
                    step = self.on_replayed(transport, Some(next)).await;
                    batch += 1;
                }
                step
            }
        }
    }

    /// The first of the connection's waits that is over, in priority order (an end before
    /// Kafka's acknowledgements, those before the client's next packet, ...). Registers the
    /// task with each wait that is open and not over.
    fn poll_event<S>(
        &mut self,
        cx: &mut Context<'_>,
        transport: &mut Transport<S>,
        waits: &mut Waits,
        gates: Gates,
    ) -> Poll<Event>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        if let Poll::Ready(kick) = waits.deliveries.poll_kicked(cx) {
            return Poll::Ready(Event::Signal(Signal::Kicked(kick)));
        }
        if let Poll::Ready(()) = waits.taken_over.poll_raised(cx) {
            return Poll::Ready(Event::Signal(Signal::TakenOver));
        }
        if let Some(acks) = self.pending_acks.as_mut().filter(|acks| !acks.is_empty())
            && let Poll::Ready(Some((id, qos, result))) = acks.poll_next_unpin(cx)
        {
            return Poll::Ready(Event::Work(Work::KafkaAck(id, qos, result)));
        }
        if gates.reading
            && let Poll::Ready(packet) = transport.poll_next_unpin(cx)
        {
            return Poll::Ready(match packet {
                Some(Ok(packet)) => Event::Work(Work::Packet(packet)),
                Some(Err(error)) => Event::Signal(Signal::Undecodable(error)),
                None => Event::Signal(Signal::Closed),
            });
        }
        // A closed queue (`None`) is left alone: the hub closes it only with a kick.
        if gates.live_open
            && let Poll::Ready(Some(outgoing)) = waits.deliveries.poll_recv(cx)
        {
            return Poll::Ready(Event::Work(Work::Delivery(outgoing)));
        }
        if gates.replay_open
            && let Poll::Ready(replayed) = poll_replay(&mut self.replay, cx)
        {
            return Poll::Ready(Event::Work(Work::Replayed(replayed)));
        }
        if let Poll::Ready(()) = waits.deliveries.poll_lagging(cx) {
            return Poll::Ready(Event::Signal(Signal::Lagging));
        }
        if let Some(save) = waits.save.as_mut()
            && save.poll_tick(cx).is_ready()
        {
            return Poll::Ready(Event::Signal(Signal::SaveTick));
        }
        if let Some(deliveries) = self.qos0_deliveries.as_mut().filter(|set| !set.is_empty())
            && let Poll::Ready(Some(_)) = deliveries.poll_next_unpin(cx)
        {
            return Poll::Ready(Event::Signal(Signal::Qos0Done));
        }
        if let Some(expiry) = waits.token_expiry.as_mut()
            && expiry.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Event::Signal(Signal::TokenExpired));
        }
        Poll::Pending
    }

    /// Delivers `first` and what else is waiting, so that a burst is written with one
    /// flush instead of one write per message.
    async fn deliver_batch<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        transport: &mut Transport<S>,
        first: Outgoing,
        deliveries: &QueueReceiver,
    ) -> Step {
        let mut step = self.deliver(transport, first).await;
        let mut batch = 1;
        while step.is_ok() && batch < DELIVERY_BATCH && self.inflight.has_room() {
            let Some(next) = deliveries.try_recv() else { break };
            step = self.deliver(transport, next).await;
            batch += 1;
        }
        step
    }

    /// The end: the hub and the session store forget the connection, a 5.0 client is told
    /// why (DISCONNECT), and the session is stored or deleted (a taken-over one lives on).
    async fn finish<S>(&mut self, transport: &mut Transport<WriteDeadline<S>>, ending: Ending)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let hub = Arc::clone(&self.hub);
        hub.metrics().connections.dec();
        count_write_timeout(&hub, transport, &self.session.client_id);
        let positions = hub.positions(self.id);
        hub.unregister(self.id, &self.session.client_id);
        self.sessions.unwatch(&self.session.client_id, self.session.generation);
        let departure = match &ending {
            Ending::Normal => Departure::Normal,
            _ => Departure::Abnormal,
        };
        if let Some(reason) = ending.reason() {
            hub.metrics()
                .disconnects
                .with_label_values(&[&format!("{:#04x}", u8::from(reason))])
                .inc();
            if self.version == Version::V5 {
                let mut disconnect = Disconnect::new(reason);
                if let Ending::Kicked(kick) = &ending {
                    disconnect.server_reference = kick.server_reference.as_deref().map(ByteString::from);
                }
                let _ = transport.send(Packet::Disconnect(disconnect)).await;
            }
        }
        if matches!(ending, Ending::TakenOver) {
            // The session lives on with the newer connection; only a will without delay is
            // this connection's to publish (§3.1.4).
            if let Some(will) = self.session.will.as_ref().filter(|w| w.delay_secs == 0) {
                session::publish_will(&hub, will, &self.session.client_id);
            }
        } else {
            let mut state = SessionState::clone(&self.session);
            state.qos2_pending = self.qos2_received.iter().copied().collect();
            prune_outbound(&mut state.outbound, &positions);
            session::close(
                &hub,
                &self.sessions,
                &state,
                positions,
                departure,
                self.expiry_on_disconnect,
            )
            .await;
        }
    }
}

/// The broker's form of the MQTT 5 properties a PUBLISH or a will carries.
fn message_properties(
    expiry: Option<NonZeroU32>,
    content_type: Option<ByteString>,
    payload_utf8: bool,
    response_topic: Option<ByteString>,
    correlation_data: Option<bytes::Bytes>,
    user_properties: UserProperties,
) -> MessageProperties {
    MessageProperties {
        expiry_secs: expiry.map(NonZeroU32::get),
        content_type,
        payload_utf8,
        response_topic,
        correlation_data,
        user_properties,
    }
}

/// Gives back an emptied set's allocation: a device publishes seldom, and between its
/// messages its connection should hold nothing.
fn release_if_empty<S>(set: &mut Option<S>, is_empty: fn(&S) -> bool) {
    if set.as_ref().is_some_and(is_empty) {
        *set = None;
    }
}

async fn flush<S: AsyncRead + AsyncWrite + Unpin>(transport: &mut Transport<S>) -> Step {
    transport.flush().await.map_err(|_| Ending::Abnormal(None))
}

/// Queues a packet for the client; written at the next flush.
async fn feed<S: AsyncRead + AsyncWrite + Unpin>(transport: &mut Transport<S>, packet: Packet) -> Step {
    transport.feed(packet).await.map_err(|_| Ending::Abnormal(None))
}

fn qos_label(qos: u8) -> &'static str {
    match qos {
        0 => "0",
        1 => "1",
        _ => "2",
    }
}

fn granted_reason(qos: u8) -> SubscribeAckReason {
    match qos {
        0 => SubscribeAckReason::GrantedQos0,
        1 => SubscribeAckReason::GrantedQos1,
        _ => SubscribeAckReason::GrantedQos2,
    }
}

fn ack(packet_id: NonZeroU16, reason_code: PublishAckReason) -> PublishAck {
    PublishAck {
        packet_id,
        reason_code,
        properties: Vec::new(),
        reason_string: None,
    }
}

fn ack2(packet_id: NonZeroU16, reason_code: PublishAck2Reason) -> PublishAck2 {
    PublishAck2 {
        packet_id,
        reason_code,
        properties: Vec::new(),
        reason_string: None,
    }
}

/// PUBACK for QoS 1, PUBREC for QoS 2.
fn puback(qos: u8, id: NonZeroU16, reason: PublishAckReason) -> Packet {
    if qos == 2 {
        Packet::PublishReceived(ack(id, reason))
    } else {
        Packet::PublishAck(ack(id, reason))
    }
}
