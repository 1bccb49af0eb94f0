//! CONNECT: read within the connect timeout, checked, authenticated, redirected or
//! refused with its reason code, or its session opened and CONNACK sent. Runs boxed (see
//! `serve`): none of it stays in an idle connection's task.

use super::*;

/// A connection whose CONNECT was accepted and answered.
pub(super) struct Established {
    pub(super) connection: Connection,
    pub(super) registration: Registration,
    pub(super) taken_over: Arc<Latch<()>>,
    pub(super) keep_alive: u16,
}

/// CONNECT: read, checked, redirected or refused, or its session opened and CONNACK sent.
pub(super) async fn establish<S>(
    transport: &mut Transport<WriteDeadline<S>>,
    shared: Arc<Shared>,
    slot: &ConnectionSlot,
    certificate: Option<Box<Principal>>,
) -> Option<Established>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let Shared {
        hub,
        sessions,
        replayer,
        instance,
        listener,
        limits,
        security,
        connections: _,
        runtime: _,
        resting_sockets: _,
    } = Shared::clone(&shared);
    let connect_timeout = Duration::from_secs(u64::from(limits.connect_timeout_secs.max(1)));
    let connect = match tokio::time::timeout(connect_timeout, transport.next()).await {
        Ok(Some(Ok(Packet::Connect(connect)))) => connect,
        Ok(Some(Ok(other))) => {
            tracing::debug!(packet = ?other.packet_type(), "first packet is not CONNECT; closing");
            return None;
        }
        Ok(Some(Err(error))) => {
            refuse_undecodable_connect(transport, &error).await;
            return None;
        }
        Ok(None) => return None,
        Err(_) => {
            // No CONNECT in time: MQTT has no packet to say so before CONNECT, so the
            // connection is closed, but counted and logged rather than silently.
            hub.metrics().disconnects.with_label_values(&["connect_timeout"]).inc();
            tracing::debug!(?connect_timeout, "no CONNECT in time; closing");
            return None;
        }
    };
    let version = transport.codec().version()?;
    let refuse = async |transport: &mut Transport<WriteDeadline<S>>, reason: ConnectAckReason| {
        hub.metrics()
            .connects
            .with_label_values(&[&format!("{:#04x}", u8::from(reason))])
            .inc();
        let _ = transport
            .send(Packet::ConnectAck(Box::new(connect::refusal(reason))))
            .await;
        None
    };
    let accepted = match connect::accept(&connect, version, &limits, slot.others(), assign_client_id) {
        Ok(accepted) => accepted,
        Err(reason) => return refuse(transport, reason).await,
    };
    let (principal, token_expires_at) = match authorize::admit(&security, &connect, &hub, certificate.map(|c| *c)) {
        Ok(admitted) => admitted,
        Err(reason) => return refuse(transport, reason).await,
    };
    let token_deadline = authorize::token_deadline(token_expires_at);
    if let Some(max) = connect.max_packet_size {
        transport.codec_mut().set_max_outbound(max.get());
    }
    if version == Version::V5
        && let Some(reason) = limits.redirect
    {
        let partition = sessions.partition_of(&accepted.client_id);
        let owners = sessions.owners(None);
        if let Placement::Elsewhere(reference) = ownership::place(partition, &owners, &instance, true, true, |i| {
            sessions.reference_of(i, &listener)
        }) {
            hub.metrics().redirects.with_label_values(&["connect"]).inc();
            let mut connack = connect::refusal(if reason == 0x9D {
                ConnectAckReason::ServerMoved
            } else {
                ConnectAckReason::UseAnotherServer
            });
            connack.server_reference = Some(ByteString::from(reference));
            let _ = transport.send(Packet::ConnectAck(Box::new(connack))).await;
            return None;
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
        will: connect
            .last_will
            .as_ref()
            .map(|will| Box::new(session::stored_will(will))),
        host: instance.to_string(),
    };
    let mut opened = match session::open(&hub, &sessions, request).await {
        Ok(opened) => opened,
        Err(error) => {
            tracing::warn!(client_id = %accepted.client_id, %error, "session not opened");
            return refuse(transport, ConnectAckReason::ServerUnavailable).await;
        }
    };
    authorize::allowed_subscriptions(&security, &principal, &mut opened.state);
    let resume_from = if opened.session_present {
        opened.state.positions.clone()
    } else {
        Positions::new()
    };
    // Registered (lagging from its positions) before its subscriptions exist, so every
    // record is either caught up from Kafka or delivered live, none twice.
    let registration = hub.register(
        &accepted.client_id,
        version == Version::V5,
        Arc::clone(&listener),
        &resume_from,
    );
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
        version,
        hub: Arc::clone(&hub),
        sessions: Arc::clone(&sessions),
        replayer,
        limits: Arc::clone(&limits),
        security,
        principal: (principal != Principal::default()).then(|| Box::new(principal)),
        token_deadline,
        inflight: Inflight::new(window, limits.outbound_queue),
        origins: BTreeMap::new(),
        out_aliases: OutboundAliases::new(connect.topic_alias_max),
        in_aliases: InboundAliases::new(limits.topic_alias_maximum),
        pending_acks: None,
        pending_ids: BTreeSet::new(),
        qos0_deliveries: None,
        qos2_received: opened.state.qos2_pending.iter().copied().collect(),
        session: opened.state,
        saved_positions: resume_from,
        catch_up_wanted: false,
        replay: None,
        expiry_on_disconnect: None,
        resend: BTreeMap::new(),
        skip: BTreeSet::new(),
    };
    let mut connack = connect::connack(&accepted, &limits);
    connack.session_present = opened.session_present;
    connack.session_expiry_interval_secs = (expiry_secs != connect.session_expiry_interval_secs).then_some(expiry_secs);
    // The CONNECT's strings share the bytes it was read into: they are not held for the
    // connection's life.
    drop(connect);
    hub.metrics().connects.with_label_values(&["success"]).inc();
    transport.codec_mut().connect_accepted();
    if transport.send(Packet::ConnectAck(Box::new(connack))).await.is_err() {
        count_write_timeout(&hub, transport, &accepted.client_id);
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
        return None;
    }
    hub.metrics().connections.inc();
    tracing::debug!(client_id = %accepted.client_id, ?version, session_present = opened.session_present, "connected");
    if opened.session_present {
        // A write error here ends the connection in `run` at its first read.
        let _ = connection.resume_outbound(transport).await;
    }
    Some(Established {
        connection,
        registration,
        taken_over,
        keep_alive: accepted.keep_alive,
    })
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
