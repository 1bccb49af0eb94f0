//! Packets from the client: PUBLISH into Kafka with acknowledgements in arrival order,
//! the acknowledgements of outbound deliveries, SUBSCRIBE / UNSUBSCRIBE (stored with the
//! session before they are answered), DISCONNECT.

use rmqtt_codec::types::Publish;
use rmqtt_codec::v5::{RetainHandling, Subscribe, SubscribeAck, Unsubscribe, UnsubscribeAck, UnsubscribeAckReason};

use super::*;
use crate::broker::message::Message;
use crate::broker::session::StoredSubscription;
use crate::broker::subscriptions::Subscription;
use crate::broker::topic;
use crate::mqtt::inflight::AckOutcome;

impl Connection {
    pub(super) async fn on_packet<S: AsyncRead + AsyncWrite + Unpin>(
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
                    AckOutcome::SendRelease => {
                        self.released(ack.packet_id).await;
                        PublishAck2Reason::Success
                    }
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
    pub(super) fn inbound_in_flight(&self) -> usize {
        self.pending_ids.len() + self.qos2_received.len()
    }

    /// Whether the next packet may be read now. An MQTT 5 client knows our Receive Maximum
    /// and is disconnected (0x93) when it exceeds it. A 3.1.1 client never heard of one, so
    /// it is not read from while the Receive Maximum of its PUBLISHes wait for Kafka: TCP
    /// holds it back, which is the only flow control 3.1.1 has. Only what Kafka releases
    /// counts here; QoS 2 ids waiting for the client's PUBREL must not stop the reading
    /// that brings the PUBREL.
    pub(super) fn reads_more(&self) -> bool {
        self.version == Version::V5 || self.pending_ids.len() < usize::from(self.limits.receive_maximum)
    }

    pub(super) async fn on_publish<S: AsyncRead + AsyncWrite + Unpin>(
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
            if self.version == Version::V5 && self.inbound_in_flight() >= usize::from(self.limits.receive_maximum) {
                return Err(Ending::Abnormal(Some(DisconnectReasonCode::ReceiveMaximumExceeded)));
            }
        }
        if !self.authorize_publish(&topic, qos, packet_id)? {
            return Ok(());
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
            publisher: Some(self.session.client_id.clone()),
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
            None => self
                .qos0_deliveries
                .get_or_insert_with(|| Box::new(FuturesUnordered::new()))
                .push(Box::pin(delivery)),
            Some(id) => {
                self.pending_ids.insert(id.get());
                self.pending_acks
                    .get_or_insert_with(|| Box::new(FuturesOrdered::new()))
                    .push_back(Box::pin(
                        async move { (id, qos, delivery.await.map_err(AckError::Kafka)) },
                    ));
            }
        }
        Ok(())
    }

    pub(super) async fn on_kafka_ack<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        transport: &mut Transport<S>,
        id: NonZeroU16,
        qos: u8,
        result: Result<(), AckError>,
    ) -> Step {
        self.pending_ids.remove(&id.get());
        let reason = match result {
            Ok(()) => PublishAckReason::Success,
            Err(AckError::NotAuthorized) => PublishAckReason::NotAuthorized,
            Err(AckError::Kafka(error)) => {
                tracing::warn!(client_id = %self.session.client_id, %error, "PUBLISH not stored in Kafka");
                if self.version == Version::V3 {
                    // 3.1.1 has no negative acknowledgement; closing makes the client resend.
                    return Err(Ending::Abnormal(None));
                }
                match error {
                    PublishError::UnknownTopic(_) => PublishAckReason::TopicNameInvalid,
                    PublishError::Kafka { .. } => PublishAckReason::UnspecifiedError,
                    // Only QoS 0 PUBLISHes are refused for the QoS 0 share.
                    PublishError::Qos0Backlog => PublishAckReason::QuotaExceeded,
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

    pub(super) async fn on_subscribe<S: AsyncRead + AsyncWrite + Unpin>(
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
            if !self.authorize_subscribe(filter) {
                status.push(SubscribeAckReason::NotAuthorized);
                continue;
            }
            subscription.no_local = options.no_local;
            subscription.retain_as_published = options.retain_as_published;
            subscription.retain_handling = match options.retain_handling {
                RetainHandling::AtSubscribe => 0,
                RetainHandling::AtSubscribeNew => 1,
                RetainHandling::NoAtSubscribe => 2,
            };
            subscription.identifier = identifier;
            let existed = self.hub.subscribe(self.id, &self.session.client_id, &subscription);
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
                        shared: false,
                    });
                }
            }
            let stored = StoredSubscription::from_subscription(&subscription);
            let session = Arc::make_mut(&mut self.session);
            session.subscriptions.retain(|s| s.filter != stored.filter);
            session.subscriptions.push(stored);
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

    pub(super) async fn on_unsubscribe<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        transport: &mut Transport<S>,
        unsubscribe: Unsubscribe,
    ) -> Step {
        let status = unsubscribe
            .topic_filters
            .iter()
            .map(|filter| {
                if self.session.subscriptions.iter().any(|s| s.filter == **filter) {
                    Arc::make_mut(&mut self.session)
                        .subscriptions
                        .retain(|s| s.filter != **filter);
                }
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
}
