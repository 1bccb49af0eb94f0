//! One MQTT connection, from CONNECT to close: reads packets, publishes to Kafka through
//! the hub, answers acknowledgements in order, delivers what the hub dispatches within the
//! client's window, and enforces every limit with the reason code the spec names.

use std::collections::{HashMap, HashSet};
use std::num::{NonZeroU16, NonZeroU32};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytestring::ByteString;
use futures::stream::{FuturesOrdered, FuturesUnordered};
use futures::{SinkExt, StreamExt};
use rmqtt_codec::error::{DecodeError, EncodeError};
use rmqtt_codec::types::{Publish, QoS};
use rmqtt_codec::v5::{
    ConnectAckReason, Disconnect, DisconnectReasonCode, Packet, PublishAck, PublishAck2, PublishAck2Reason,
    PublishAckReason, PublishProperties, RetainHandling, Subscribe, SubscribeAck, SubscribeAckReason, ToReasonCode,
    Unsubscribe, UnsubscribeAck, UnsubscribeAckReason, UserProperties,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::codec::Framed;

use crate::broker::hub::{CatchUp, ConnId, Hub, Kick, Origin, Outgoing, Positions, Registration, SESSION_TAKEN_OVER};
use crate::broker::message::{Message, MessageProperties, now_ms};
use crate::broker::session::{ConnectRequest, Departure, SessionState, StoredSubscription};
use crate::broker::subscriptions::Subscription;
use crate::broker::topic;
use crate::cluster::ownership::{self, Placement};
use crate::kafka::producer::PublishError;
use crate::kafka::replay::{Replayed, Replayer};
use crate::kafka::sessions::SessionStore;
use crate::listener::Shared;
use crate::mqtt::codec::{MqttCodec, Version};
use crate::mqtt::connect::{self, Limits};
use crate::mqtt::inflight::{AckOutcome, Inflight};
use crate::mqtt::session;
use crate::mqtt::topic_alias::{InboundAliases, OutboundAliases, OutboundTopic};

type Transport<S> = Framed<S, MqttCodec>;
type Qos0Delivery = Pin<Box<dyn Future<Output = Result<(), PublishError>> + Send>>;
/// Deliveries written before one flush.
const DELIVERY_BATCH: usize = 256;
type PendingAck = Pin<Box<dyn Future<Output = (NonZeroU16, u8, Result<(), PublishError>)> + Send>>;

/// Serves one accepted byte stream until it closes.
pub async fn serve<S>(stream: S, shared: Shared)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let Shared {
        hub,
        sessions,
        replayer,
        instance,
        limits,
        connections,
    } = shared;
    let mut transport = Framed::new(stream, MqttCodec::new(limits.maximum_packet_size));
    let connect_timeout = Duration::from_secs(u64::from(limits.connect_timeout_secs.max(1)));
    let connect = match tokio::time::timeout(connect_timeout, transport.next()).await {
        Ok(Some(Ok(Packet::Connect(connect)))) => connect,
        Ok(Some(Ok(other))) => {
            tracing::debug!(packet = ?other.packet_type(), "first packet is not CONNECT; closing");
            return;
        }
        Ok(Some(Err(error))) => {
            refuse_undecodable_connect(&mut transport, &error).await;
            return;
        }
        Ok(None) | Err(_) => return,
    };
    let Some(version) = transport.codec().version() else {
        return;
    };
    let counter = ConnectionSlot::take(&connections);
    let refuse = async |transport: &mut Transport<S>, reason: ConnectAckReason| {
        hub.metrics()
            .connects
            .with_label_values(&[&format!("{:#04x}", u8::from(reason))])
            .inc();
        let _ = transport
            .send(Packet::ConnectAck(Box::new(connect::refusal(reason))))
            .await;
    };
    let accepted = match connect::accept(&connect, version, &limits, counter.others(), assign_client_id) {
        Ok(accepted) => accepted,
        Err(reason) => return refuse(&mut transport, reason).await,
    };
    if let Some(max) = connect.max_packet_size {
        transport.codec_mut().set_max_outbound(max.get());
    }
    if version == Version::V5
        && let Some(reason) = limits.redirect
    {
        let partition = sessions.partition_of(&accepted.client_id);
        let owners = sessions.owners(None);
        if let Placement::Elsewhere(reference) =
            ownership::place(partition, &owners, &instance, true, true, |i| sessions.reference_of(i))
        {
            hub.metrics().redirects.with_label_values(&["connect"]).inc();
            let mut connack = connect::refusal(if reason == 0x9D {
                ConnectAckReason::ServerMoved
            } else {
                ConnectAckReason::UseAnotherServer
            });
            connack.server_reference = Some(ByteString::from(reference));
            let _ = transport.send(Packet::ConnectAck(Box::new(connack))).await;
            return;
        }
    }
    let expiry_secs = connect.session_expiry_interval_secs.min(limits.session_expiry_max);
    let request = ConnectRequest {
        client_id: accepted.client_id.clone(),
        clean_start: connect.clean_start,
        expiry_secs,
        protocol: match version {
            Version::V3 => 4,
            Version::V5 => 5,
        },
        will: connect.last_will.as_ref().map(session::stored_will),
        host: instance.to_string(),
    };
    let opened = match session::open(&hub, &sessions, request).await {
        Ok(opened) => opened,
        Err(error) => {
            tracing::warn!(client_id = %accepted.client_id, %error, "session not opened");
            return refuse(&mut transport, ConnectAckReason::ServerUnavailable).await;
        }
    };
    let resume_from = if opened.session_present {
        opened.state.positions.clone()
    } else {
        Positions::new()
    };
    // Registered (lagging from its positions) before its subscriptions exist, so every
    // record is either caught up from Kafka or delivered live, none twice.
    let registration = hub.register(&accepted.client_id, version == Version::V5, &resume_from);
    for stored in &opened.state.subscriptions {
        if let Some(subscription) = stored.to_subscription() {
            hub.subscribe(registration.id, &accepted.client_id, &subscription);
        }
    }
    let taken_over = sessions.watch(&accepted.client_id, opened.state.generation);
    let window = connect
        .receive_max
        .map_or(u16::MAX, NonZeroU16::get)
        .min(limits.max_inflight_outbound);
    let mut connection = Connection {
        id: registration.id,
        client_id: accepted.client_id.clone(),
        version,
        hub: Arc::clone(&hub),
        sessions: Arc::clone(&sessions),
        replayer,
        limits: Arc::clone(&limits),
        inflight: Inflight::new(window, limits.outbound_queue),
        origins: HashMap::new(),
        out_aliases: OutboundAliases::new(connect.topic_alias_max),
        in_aliases: InboundAliases::new(limits.topic_alias_maximum),
        pending_acks: FuturesOrdered::new(),
        pending_ids: HashSet::new(),
        qos0_deliveries: FuturesUnordered::new(),
        qos2_received: opened.state.qos2_pending.iter().copied().collect(),
        session: opened.state,
        saved_positions: resume_from,
        catch_up_wanted: false,
        replay: None,
        expiry_on_disconnect: None,
    };
    let mut connack = connect::connack(&accepted, &limits);
    connack.session_present = opened.session_present;
    connack.session_expiry_interval_secs = (expiry_secs != connect.session_expiry_interval_secs).then_some(expiry_secs);
    hub.metrics().connects.with_label_values(&["success"]).inc();
    if transport.send(Packet::ConnectAck(Box::new(connack))).await.is_err() {
        hub.unregister(registration.id, &accepted.client_id);
        sessions.unwatch(&accepted.client_id, connection.session.generation);
        session::close(
            &hub,
            &sessions,
            &connection.session,
            connection.saved_positions.clone(),
            Departure::Abnormal,
            None,
        )
        .await;
        return;
    }
    hub.metrics().connections.inc();
    tracing::debug!(client_id = %accepted.client_id, ?version, session_present = opened.session_present, "connected");
    let ending = connection
        .run(&mut transport, registration, taken_over, accepted.keep_alive)
        .await;
    hub.metrics().connections.dec();
    let positions = hub.positions(connection.id);
    hub.unregister(connection.id, &connection.client_id);
    sessions.unwatch(&connection.client_id, connection.session.generation);
    let departure = match &ending {
        Ending::Normal => Departure::Normal,
        _ => Departure::Abnormal,
    };
    if let Some(reason) = ending.reason() {
        hub.metrics()
            .disconnects
            .with_label_values(&[&format!("{:#04x}", u8::from(reason))])
            .inc();
        if version == Version::V5 {
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
        if let Some(will) = connection.session.will.as_ref().filter(|w| w.delay_secs == 0) {
            session::publish_will(&hub, will, &connection.client_id);
        }
    } else {
        let mut state = connection.session.clone();
        state.qos2_pending = connection.qos2_received.iter().copied().collect();
        session::close(
            &hub,
            &sessions,
            &state,
            positions,
            departure,
            connection.expiry_on_disconnect,
        )
        .await;
    }
    let _ = transport.get_mut().shutdown().await;
    drop(counter);
}

/// Answers a CONNECT that could not be decoded: with the reason code when the version is
/// known, with 3.1.1's "unacceptable protocol version" when the protocol level is not.
async fn refuse_undecodable_connect<S: AsyncRead + AsyncWrite + Unpin>(
    transport: &mut Transport<S>,
    error: &DecodeError,
) {
    tracing::debug!(%error, "undecodable CONNECT");
    let version = transport.codec().version();
    match version {
        Some(_) => {
            let reason = match error {
                DecodeError::InvalidClientId => ConnectAckReason::ClientIdentifierNotValid,
                DecodeError::UnsupportedProtocolLevel => ConnectAckReason::UnsupportedProtocolVersion,
                DecodeError::MaxSizeExceeded { .. } => ConnectAckReason::PacketTooLarge,
                other if other.to_reason_code() == DisconnectReasonCode::ProtocolError => {
                    ConnectAckReason::ProtocolError
                }
                _ => ConnectAckReason::MalformedPacket,
            };
            let _ = transport
                .send(Packet::ConnectAck(Box::new(connect::refusal(reason))))
                .await;
        }
        None if matches!(error, DecodeError::InvalidProtocol) => {
            // MQTT 3.1.1 §3.1.2-2: CONNACK 0x01, then close.
            let _ = transport.get_mut().write_all(&[0x20, 0x02, 0x00, 0x01]).await;
        }
        None => {}
    }
}

fn assign_client_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_i64(now_ms());
    format!("mqtt-kafka-{:016x}", hasher.finish())
}

/// Holds one place in the connection count while alive.
struct ConnectionSlot(Arc<AtomicUsize>, usize);

impl ConnectionSlot {
    fn take(counter: &Arc<AtomicUsize>) -> Self {
        let before = counter.fetch_add(1, Ordering::AcqRel);
        Self(Arc::clone(counter), before)
    }
    /// Connections that were live before this one.
    fn others(&self) -> usize {
        self.1
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
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
                _ => DisconnectReasonCode::UnspecifiedError,
            }),
        }
    }
}

/// A catch-up under way: the messages topic it reads and what it has read.
type Replay = (Arc<str>, mpsc::Receiver<Replayed>);

/// How often the positions of a connected persistent session are stored, so that a
/// process that dies costs at most this much redelivery.
const SAVE_POSITIONS_EVERY: Duration = Duration::from_secs(5);

struct Connection {
    id: ConnId,
    client_id: String,
    version: Version,
    hub: Arc<Hub>,
    sessions: Arc<SessionStore>,
    replayer: Arc<Replayer>,
    limits: Arc<Limits>,
    inflight: Inflight<Outgoing>,
    /// Where the message behind each outbound packet id is in Kafka.
    origins: HashMap<u16, Origin>,
    out_aliases: OutboundAliases,
    in_aliases: InboundAliases,
    /// QoS 1/2 PUBLISHes waiting for Kafka, in arrival order (acks go out in that order).
    pending_acks: FuturesOrdered<PendingAck>,
    pending_ids: HashSet<u16>,
    /// Kafka acknowledgements of QoS 0 PUBLISHes, only watched for errors.
    qos0_deliveries: FuturesUnordered<Qos0Delivery>,
    /// QoS 2 packet ids acknowledged with PUBREC, waiting for PUBREL.
    qos2_received: HashSet<u16>,
    /// The session as stored (subscriptions, will, expiry).
    session: SessionState,
    /// The positions last stored, to store them again only when they moved.
    saved_positions: Positions,
    /// The hub said this connection lags: catch up once the live queue is drained.
    catch_up_wanted: bool,
    replay: Option<Replay>,
    /// A Session Expiry Interval the client's DISCONNECT set.
    expiry_on_disconnect: Option<u32>,
}

/// What handling one packet asks of the loop.
type Step = Result<(), Ending>;

fn protocol_error() -> Ending {
    Ending::Abnormal(Some(DisconnectReasonCode::ProtocolError))
}

impl Connection {
    async fn run<S>(
        &mut self,
        transport: &mut Transport<S>,
        registration: Registration,
        mut taken_over: watch::Receiver<bool>,
        keep_alive: u16,
    ) -> Ending
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let Registration {
            mut deliveries,
            mut kicked,
            lagging,
            ..
        } = registration;
        let mut save = tokio::time::interval_at(Instant::now() + SAVE_POSITIONS_EVERY, SAVE_POSITIONS_EVERY);
        // MQTT §3.1.2.10: one and a half times the keep-alive without a packet closes it.
        let grace = (keep_alive > 0).then(|| Duration::from_millis(u64::from(keep_alive) * 1500));
        let far_future = Duration::from_secs(86_400 * 365);
        let deadline = tokio::time::sleep(grace.unwrap_or(far_future));
        tokio::pin!(deadline);
        loop {
            if self.catch_up_wanted && self.replay.is_none() && deliveries.is_empty() {
                self.start_catch_up();
            }
            let live_open = self.replay.is_none() && self.inflight.has_room();
            let replay_open = self.replay.is_some() && self.inflight.has_room();
            let step = tokio::select! {
                biased;
                _ = kicked.changed() => Err(match kicked.borrow().clone() {
                    Some(kick) if kick.reason != SESSION_TAKEN_OVER => Ending::Kicked(kick),
                    _ => Ending::TakenOver,
                }),
                Ok(()) = taken_over.changed() => Err(Ending::TakenOver),
                Some((id, qos, result)) = self.pending_acks.next(), if !self.pending_acks.is_empty() => {
                    self.on_kafka_ack(transport, id, qos, result).await
                }
                packet = transport.next() => match packet {
                    Some(Ok(packet)) => {
                        if let Some(grace) = grace {
                            deadline.as_mut().reset(Instant::now() + grace);
                        }
                        self.on_packet(transport, packet).await
                    }
                    Some(Err(error)) => {
                        tracing::debug!(client_id = %self.client_id, %error, "undecodable packet");
                        Err(Ending::Abnormal(Some(error.to_reason_code())))
                    }
                    None => Err(Ending::Abnormal(None)),
                },
                Some(outgoing) = deliveries.recv(), if live_open => {
                    // Take what else is waiting too, so a burst is written with one flush
                    // instead of one write per message.
                    let mut step = self.deliver(transport, outgoing).await;
                    let mut batch = 1;
                    while step.is_ok() && batch < DELIVERY_BATCH && self.inflight.has_room() {
                        let Ok(next) = deliveries.try_recv() else { break };
                        step = self.deliver(transport, next).await;
                        batch += 1;
                    }
                    step
                }
                replayed = recv_replay(&mut self.replay), if replay_open => self.on_replayed(transport, replayed).await,
                () = lagging.notified() => {
                    self.catch_up_wanted = true;
                    Ok(())
                }
                _ = save.tick() => {
                    self.save_positions();
                    Ok(())
                }
                Some(result) = self.qos0_deliveries.next(), if !self.qos0_deliveries.is_empty() => {
                    if let Err(error) = result {
                        tracing::warn!(client_id = %self.client_id, %error, "QoS 0 message not stored in Kafka");
                    }
                    Ok(())
                }
                _ = &mut deadline => Err(Ending::Abnormal(Some(DisconnectReasonCode::KeepAliveTimeout))),
            };
            if let Err(ending) = step {
                return ending;
            }
            if let Err(ending) = flush(transport).await {
                return ending;
            }
        }
    }

    async fn on_packet<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        transport: &mut Transport<S>,
        packet: Packet,
    ) -> Step {
        match packet {
            Packet::Publish(publish) => self.on_publish(transport, *publish).await,
            Packet::PublishAck(ack) => {
                if self.inflight.on_puback(ack.packet_id) == AckOutcome::Completed {
                    self.completed(ack.packet_id);
                    self.drain_queue(transport).await?;
                }
                Ok(())
            }
            Packet::PublishReceived(ack) => {
                if u8::from(ack.reason_code) >= 0x80 {
                    // A negative PUBREC ends the QoS 2 flow (§4.3.3).
                    self.inflight.abandon(ack.packet_id);
                    self.completed(ack.packet_id);
                    return self.drain_queue(transport).await;
                }
                let reason = match self.inflight.on_pubrec(ack.packet_id) {
                    AckOutcome::SendRelease => PublishAck2Reason::Success,
                    _ => PublishAck2Reason::PacketIdNotFound,
                };
                feed(transport, Packet::PublishRelease(ack2(ack.packet_id, reason))).await
            }
            Packet::PublishComplete(ack) => {
                if self.inflight.on_pubcomp(ack.packet_id) == AckOutcome::Completed {
                    self.completed(ack.packet_id);
                    self.drain_queue(transport).await?;
                }
                Ok(())
            }
            Packet::PublishRelease(rel) => {
                let reason = if self.qos2_received.remove(&rel.packet_id.get()) {
                    // Stored before PUBCOMP: after it the client may use the id again.
                    self.store_qos2_pending().await;
                    PublishAck2Reason::Success
                } else {
                    PublishAck2Reason::PacketIdNotFound
                };
                feed(transport, Packet::PublishComplete(ack2(rel.packet_id, reason))).await
            }
            Packet::Subscribe(subscribe) => self.on_subscribe(transport, subscribe).await,
            Packet::Unsubscribe(unsubscribe) => self.on_unsubscribe(transport, unsubscribe).await,
            Packet::PingRequest => feed(transport, Packet::PingResponse).await,
            Packet::Disconnect(disconnect) => {
                if let Some(expiry) = disconnect.session_expiry_interval_secs {
                    // §3.14.2.2.2: a session that was to end with the connection cannot
                    // be made persistent at DISCONNECT.
                    if self.session.expiry_secs == 0 && expiry > 0 {
                        return Err(protocol_error());
                    }
                    self.expiry_on_disconnect = Some(expiry.min(self.limits.session_expiry_max));
                }
                if disconnect.reason_code == DisconnectReasonCode::DisconnectWithWillMessage {
                    Err(Ending::Abnormal(None))
                } else {
                    Err(Ending::Normal)
                }
            }
            // A second CONNECT, or AUTH without an authentication method, is a protocol error.
            Packet::Connect(_) | Packet::Auth(_) => Err(protocol_error()),
            // Packets only a server sends; the codec does not produce them.
            _ => Err(protocol_error()),
        }
    }

    /// Packets with QoS > 0 the client has sent and the server has not finished: waiting
    /// for Kafka, or (QoS 2) for PUBREL. Bounded by the Receive Maximum we advertised.
    fn inbound_in_flight(&self) -> usize {
        self.pending_ids.len() + self.qos2_received.len()
    }

    async fn on_publish<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        transport: &mut Transport<S>,
        publish: Publish,
    ) -> Step {
        let qos = publish.qos.value();
        let properties = publish.properties.unwrap_or_default();
        let alias = properties.topic_alias.map(NonZeroU16::get);
        let topic = match self.in_aliases.resolve(&publish.topic, alias) {
            Ok(topic) => topic,
            Err(crate::mqtt::topic_alias::AliasError::OutOfRange(_)) => {
                return Err(Ending::Abnormal(Some(DisconnectReasonCode::TopicAliasInvalid)));
            }
            Err(crate::mqtt::topic_alias::AliasError::Unknown(_)) => return Err(protocol_error()),
        };
        if topic::validate_topic_name(&topic).is_err() {
            return Err(Ending::Abnormal(Some(DisconnectReasonCode::TopicNameInvalid)));
        }
        if qos > self.limits.qos_max {
            return Err(Ending::Abnormal(Some(DisconnectReasonCode::QosNotSupported)));
        }
        self.hub.metrics().published.with_label_values(&[qos_label(qos)]).inc();
        let packet_id = match (qos, publish.packet_id) {
            (0, _) => None,
            (_, Some(id)) => Some(id),
            (_, None) => return Err(protocol_error()),
        };
        if let Some(id) = packet_id {
            // A retransmission of a QoS 2 PUBLISH already in Kafka is not produced again.
            if qos == 2 && self.qos2_received.contains(&id.get()) {
                return feed(transport, Packet::PublishReceived(ack(id, PublishAckReason::Success))).await;
            }
            if self.pending_ids.contains(&id.get()) {
                // Still waiting for Kafka; its acknowledgement will answer both.
                return Ok(());
            }
            if self.inbound_in_flight() >= usize::from(self.limits.receive_maximum) {
                return Err(Ending::Abnormal(Some(DisconnectReasonCode::ReceiveMaximumExceeded)));
            }
        }
        if properties.is_utf8_payload && std::str::from_utf8(&publish.payload).is_err() {
            return match packet_id {
                Some(id) => feed(transport, puback(qos, id, PublishAckReason::PayloadFormatInvalid)).await,
                None => Err(Ending::Abnormal(Some(DisconnectReasonCode::PayloadFormatInvalid))),
            };
        }
        let message = Message {
            topic,
            payload: publish.payload,
            qos,
            retain: publish.retain,
            publisher: Some(self.client_id.clone()),
            properties: message_properties(
                properties.message_expiry_interval,
                properties.content_type,
                properties.is_utf8_payload,
                properties.response_topic,
                properties.correlation_data,
                properties.user_properties,
            ),
            timestamp_ms: now_ms(),
        };
        let delivery = self.hub.publish(message);
        match packet_id {
            // Polled by the connection loop (no task per message); records are already
            // queued in the producer, so they reach Kafka even if the connection ends first.
            None => self.qos0_deliveries.push(Box::pin(delivery)),
            Some(id) => {
                self.pending_ids.insert(id.get());
                self.pending_acks
                    .push_back(Box::pin(async move { (id, qos, delivery.await) }));
            }
        }
        Ok(())
    }

    async fn on_kafka_ack<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        transport: &mut Transport<S>,
        id: NonZeroU16,
        qos: u8,
        result: Result<(), PublishError>,
    ) -> Step {
        self.pending_ids.remove(&id.get());
        let reason = match result {
            Ok(()) => PublishAckReason::Success,
            Err(error) => {
                tracing::warn!(client_id = %self.client_id, %error, "PUBLISH not stored in Kafka");
                if self.version == Version::V3 {
                    // 3.1.1 has no negative acknowledgement; closing makes the client resend.
                    return Err(Ending::Abnormal(None));
                }
                match error {
                    PublishError::UnknownTopic(_) => PublishAckReason::TopicNameInvalid,
                    PublishError::Kafka { .. } => PublishAckReason::UnspecifiedError,
                }
            }
        };
        if qos == 2 && reason == PublishAckReason::Success {
            self.qos2_received.insert(id.get());
            // Stored before PUBREC, so a retransmission on any process after a reconnect
            // is not produced again.
            self.store_qos2_pending().await;
        }
        feed(transport, puback(qos, id, reason)).await
    }

    async fn on_subscribe<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        transport: &mut Transport<S>,
        subscribe: Subscribe,
    ) -> Step {
        let identifier = subscribe.id.map(NonZeroU32::get);
        let mut status = Vec::with_capacity(subscribe.topic_filters.len());
        let mut replay = Vec::new();
        for (filter, options) in &subscribe.topic_filters {
            let granted = options.qos.value().min(self.limits.qos_max);
            let mut subscription = match Subscription::parse(filter, granted) {
                Ok(subscription) => subscription,
                Err(_) => {
                    status.push(SubscribeAckReason::TopicFilterInvalid);
                    continue;
                }
            };
            if subscription.share_group.is_some() && options.no_local {
                // MQTT 5 §3.8.3.1: No Local on a shared subscription is a protocol error.
                return Err(protocol_error());
            }
            subscription.no_local = options.no_local;
            subscription.retain_as_published = options.retain_as_published;
            subscription.retain_handling = match options.retain_handling {
                RetainHandling::AtSubscribe => 0,
                RetainHandling::AtSubscribeNew => 1,
                RetainHandling::NoAtSubscribe => 2,
            };
            subscription.identifier = identifier;
            let existed = self.hub.subscribe(self.id, &self.client_id, &subscription);
            let wants_retained = match subscription.retain_handling {
                0 => true,
                1 => !existed,
                _ => false,
            };
            // Shared subscriptions never receive retained messages (§4.8.2).
            if wants_retained && subscription.share_group.is_none() {
                for message in self.hub.retained_matching(&subscription.filter) {
                    replay.push(Outgoing {
                        origin: None,
                        qos: message.qos.min(granted),
                        message,
                        retain: true,
                        identifiers: identifier.into_iter().collect(),
                    });
                }
            }
            let stored = StoredSubscription::from_subscription(&subscription);
            self.session.subscriptions.retain(|s| s.filter != stored.filter);
            self.session.subscriptions.push(stored);
            status.push(granted_reason(granted));
        }
        // The subscriptions are stored before SUBACK: they survive this process.
        self.store_session().await;
        let suback = SubscribeAck {
            packet_id: subscribe.packet_id,
            properties: Vec::new(),
            reason_string: None,
            status,
        };
        feed(transport, Packet::SubscribeAck(suback)).await?;
        // Retained messages go out before any live message of the same topic: live ones
        // wait in the delivery channel until this returns.
        for outgoing in replay {
            self.deliver(transport, outgoing).await?;
        }
        Ok(())
    }

    async fn on_unsubscribe<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        transport: &mut Transport<S>,
        unsubscribe: Unsubscribe,
    ) -> Step {
        let status = unsubscribe
            .topic_filters
            .iter()
            .map(|filter| {
                self.session.subscriptions.retain(|s| s.filter != **filter);
                if self.hub.unsubscribe(self.id, filter) {
                    UnsubscribeAckReason::Success
                } else {
                    UnsubscribeAckReason::NoSubscriptionExisted
                }
            })
            .collect();
        self.store_session().await;
        let unsuback = UnsubscribeAck {
            packet_id: unsubscribe.packet_id,
            properties: Vec::new(),
            reason_string: None,
            status,
        };
        feed(transport, Packet::UnsubscribeAck(unsuback)).await
    }

    /// Sends a delivery now if its QoS allows or the window has room, else queues it.
    async fn deliver<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        transport: &mut Transport<S>,
        outgoing: Outgoing,
    ) -> Step {
        if outgoing.qos == 0 {
            return self.send_publish(transport, outgoing, None).await;
        }
        match self.inflight.start(outgoing.qos) {
            Some(id) => self.send_publish(transport, outgoing, Some(id)).await,
            None => {
                if self.inflight.enqueue(outgoing).is_err() {
                    self.hub.metrics().dropped.with_label_values(&["queue_full"]).inc();
                }
                Ok(())
            }
        }
    }

    async fn drain_queue<S: AsyncRead + AsyncWrite + Unpin>(&mut self, transport: &mut Transport<S>) -> Step {
        while let Some(outgoing) = self.inflight.next_queued() {
            self.deliver(transport, outgoing).await?;
        }
        Ok(())
    }

    async fn send_publish<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        transport: &mut Transport<S>,
        outgoing: Outgoing,
        packet_id: Option<NonZeroU16>,
    ) -> Step {
        let message = &outgoing.message;
        if let (Some(id), Some(origin)) = (packet_id, &outgoing.origin) {
            self.origins.insert(id.get(), origin.clone());
        }
        let remaining_expiry = message.remaining_expiry_secs(now_ms());
        if remaining_expiry == Some(0) {
            if let Some(id) = packet_id {
                self.inflight.abandon(id);
                self.completed(id);
            }
            self.hub.metrics().dropped.with_label_values(&["expired"]).inc();
            return Ok(());
        }
        let (topic, properties) = match self.version {
            Version::V3 => (ByteString::from(message.topic.as_str()), None),
            Version::V5 => {
                let (topic, alias) = match self.out_aliases.for_topic(&message.topic) {
                    OutboundTopic::Plain => (ByteString::from(message.topic.as_str()), None),
                    OutboundTopic::Assign(alias) => (ByteString::from(message.topic.as_str()), NonZeroU16::new(alias)),
                    OutboundTopic::Reuse(alias) => (ByteString::new(), NonZeroU16::new(alias)),
                };
                let p = &message.properties;
                let properties = PublishProperties {
                    topic_alias: alias,
                    correlation_data: p.correlation_data.clone(),
                    message_expiry_interval: remaining_expiry.and_then(NonZeroU32::new),
                    content_type: p.content_type.as_deref().map(ByteString::from),
                    user_properties: p
                        .user_properties
                        .iter()
                        .map(|(k, v)| (ByteString::from(k.as_str()), ByteString::from(v.as_str())))
                        .collect(),
                    is_utf8_payload: p.payload_utf8,
                    response_topic: p.response_topic.as_deref().map(ByteString::from),
                    subscription_ids: outgoing
                        .identifiers
                        .iter()
                        .filter_map(|&id| NonZeroU32::new(id))
                        .collect(),
                };
                (topic, Some(properties))
            }
        };
        let publish = Publish {
            dup: false,
            retain: outgoing.retain,
            qos: match outgoing.qos {
                0 => QoS::AtMostOnce,
                1 => QoS::AtLeastOnce,
                _ => QoS::ExactlyOnce,
            },
            topic,
            packet_id,
            payload: message.payload.clone(),
            properties,
        };
        match transport.feed(Packet::Publish(Box::new(publish))).await {
            Ok(()) => {
                self.hub.metrics().delivered.inc();
                Ok(())
            }
            // Larger than the client's Maximum Packet Size: discarded (§3.1.2.25), not fatal.
            Err(EncodeError::OverMaxPacketSize { .. }) => {
                if let Some(id) = packet_id {
                    self.inflight.abandon(id);
                    self.completed(id);
                }
                self.out_aliases.forget(&message.topic);
                self.hub.metrics().dropped.with_label_values(&["too_large"]).inc();
                Ok(())
            }
            Err(_) => Err(Ending::Abnormal(None)),
        }
    }

    /// The delivery with packet id `id` is done with: its record no longer holds the
    /// session's position back.
    fn completed(&mut self, id: NonZeroU16) {
        if let Some(origin) = self.origins.remove(&id.get()) {
            self.hub.complete(self.id, &origin);
        }
    }

    /// Stores the session (persistent sessions only: others end with the connection).
    async fn store_session(&mut self) {
        if !self.session.is_persistent() {
            return;
        }
        self.session.positions = self.hub.positions(self.id);
        self.saved_positions = self.session.positions.clone();
        if let Err(error) = self.sessions.store(&self.session).await {
            tracing::warn!(client_id = %self.client_id, %error, "session not stored");
        }
    }

    async fn store_qos2_pending(&mut self) {
        let mut pending: Vec<u16> = self.qos2_received.iter().copied().collect();
        pending.sort_unstable();
        if pending != self.session.qos2_pending {
            self.session.qos2_pending = pending;
            self.store_session().await;
        }
    }

    /// Stores where delivery would resume, when it moved (persistent sessions), without
    /// holding up the connection.
    fn save_positions(&mut self) {
        if !self.session.is_persistent() {
            return;
        }
        let positions = self.hub.positions(self.id);
        if positions == self.saved_positions {
            return;
        }
        self.saved_positions = positions.clone();
        self.session.positions = positions;
        let (sessions, state) = (Arc::clone(&self.sessions), self.session.clone());
        tokio::spawn(async move {
            if let Err(error) = sessions.store(&state).await {
                tracing::debug!(client_id = %state.client_id, %error, "positions not stored");
            }
        });
    }

    /// Takes the lag off one topic and starts reading what was missed from Kafka.
    fn start_catch_up(&mut self) {
        match self.hub.rejoin(self.id) {
            Some(CatchUp { topic, from, to }) => {
                tracing::debug!(client_id = %self.client_id, %topic, ?from, ?to, "catching up from Kafka");
                let reader = self.replayer.replay(topic.clone(), from, to);
                self.replay = Some((Arc::from(topic.as_str()), reader));
            }
            None => self.catch_up_wanted = false,
        }
    }

    /// One record of the catch-up (or its end, `None`).
    async fn on_replayed<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        transport: &mut Transport<S>,
        replayed: Option<Replayed>,
    ) -> Step {
        let Some(topic) = self.replay.as_ref().map(|(topic, _)| Arc::clone(topic)) else {
            return Ok(());
        };
        let Some(Replayed {
            partition,
            offset,
            message,
        }) = replayed
        else {
            self.hub.replay_done(self.id, &topic);
            self.replay = None;
            return Ok(());
        };
        let matched = message.and_then(|m| {
            let (qos, retain, identifiers) = self.hub.route_for(self.id, &topic, &m)?;
            Some((m, qos, retain, identifiers))
        });
        let origin = Origin {
            topic: Arc::clone(&topic),
            partition,
            offset,
        };
        let step = match matched {
            // QoS 0 messages are not kept for a subscriber that was away or behind.
            Some((message, qos, retain, identifiers)) if qos > 0 => {
                self.hub.track(self.id, &origin);
                let outgoing = Outgoing {
                    message: Arc::new(message),
                    origin: Some(origin),
                    qos,
                    retain,
                    identifiers,
                };
                self.deliver(transport, outgoing).await
            }
            _ => Ok(()),
        };
        self.hub.replayed_to(self.id, &topic, partition, offset + 1);
        step
    }
}

/// The next record of the catch-up under way (pending forever when there is none).
async fn recv_replay(replay: &mut Option<Replay>) -> Option<Replayed> {
    match replay {
        Some((_, reader)) => reader.recv().await,
        None => std::future::pending().await,
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
        content_type: content_type.map(|s| s.to_string()),
        payload_utf8,
        response_topic: response_topic.map(|s| s.to_string()),
        correlation_data,
        user_properties: user_properties
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
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
