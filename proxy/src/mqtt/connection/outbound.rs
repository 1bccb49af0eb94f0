//! Deliveries to the client: the in-flight window, PUBLISH encoding (topic aliases, the
//! remaining expiry), completion of deliveries against the session's positions, and the
//! catch-up from Kafka of a connection that lagged or resumed a session.

use bytestring::ByteString;
use rmqtt_codec::error::EncodeError;
use rmqtt_codec::types::{Publish, QoS};
use rmqtt_codec::v5::PublishProperties;

use std::collections::BTreeMap;
use std::task::{Context, Poll};

use super::*;
use crate::broker::session::{StoredOutbound, prune_outbound};
use crate::hub::CatchUp;
use crate::mqtt::inflight::Stage;
use crate::mqtt::topic_alias::OutboundTopic;

impl Connection {
    /// Sends a delivery now if its QoS allows or the window has room, else queues it.
    pub(super) async fn deliver<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        transport: &mut Transport<S>,
        outgoing: Outgoing,
    ) -> Step {
        if outgoing.qos == 0 {
            return self.send_publish(transport, outgoing, None, false).await;
        }
        match self.inflight.start(outgoing.qos) {
            Some(id) => self.send_publish(transport, outgoing, Some(id), false).await,
            None => {
                if self.inflight.enqueue(outgoing).is_err() {
                    self.hub.metrics().dropped.with_label_values(&["queue_full"]).inc();
                }
                Ok(())
            }
        }
    }

    pub(super) async fn drain_queue<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        transport: &mut Transport<S>,
    ) -> Step {
        while let Some(outgoing) = self.inflight.next_queued() {
            self.deliver(transport, outgoing).await?;
        }
        Ok(())
    }

    pub(super) async fn send_publish<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        transport: &mut Transport<S>,
        outgoing: Outgoing,
        packet_id: Option<NonZeroU16>,
        dup: bool,
    ) -> Step {
        let message = &outgoing.message;
        if let (Some(id), Some(origin)) = (packet_id, &outgoing.origin) {
            self.origins.insert(id.get(), origin.clone());
            if self.session.keeps_outbound(dup, outgoing.shared) {
                Arc::make_mut(&mut self.session).outbound.push(StoredOutbound {
                    packet_id: id.get(),
                    topic: origin.topic.to_string(),
                    partition: origin.partition,
                    offset: origin.offset,
                    qos: outgoing.qos,
                    released: false,
                    completed: false,
                });
                if outgoing.qos == 2 {
                    // Which record this packet id carries is stored before the client can
                    // see it: a resumed session sends it again with the same id, which the
                    // client recognises (exactly once), never as a new message.
                    self.store_session().await;
                }
            }
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
            Version::V3 => (message.topic.clone(), None),
            Version::V5 => {
                let (topic, alias) = match self.out_aliases.for_topic(&message.topic) {
                    OutboundTopic::Plain => (message.topic.clone(), None),
                    OutboundTopic::Assign(alias) => (message.topic.clone(), NonZeroU16::new(alias)),
                    OutboundTopic::Reuse(alias) => (ByteString::new(), NonZeroU16::new(alias)),
                };
                let p = &message.properties;
                let properties = PublishProperties {
                    topic_alias: alias,
                    correlation_data: p.correlation_data.clone(),
                    message_expiry_interval: remaining_expiry.and_then(NonZeroU32::new),
                    content_type: p.content_type.clone(),
                    user_properties: p.user_properties.clone(),
                    is_utf8_payload: p.payload_utf8,
                    response_topic: p.response_topic.clone(),
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
            dup,
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
    pub(super) fn completed(&mut self, id: NonZeroU16) {
        if let Some(origin) = self.origins.remove(&id.get()) {
            self.hub.complete(self.id, &origin);
            if let Some(entry) = self.outbound_entry(id, &origin) {
                entry.completed = true;
            }
        }
    }

    fn outbound_entry(&mut self, id: NonZeroU16, origin: &Origin) -> Option<&mut StoredOutbound> {
        // From the newest: completed entries pile up at the front until the next save
        // prunes them (thousands at a high rate), the ones in flight are near the end.
        // Found first, then changed: a session without the entry (every clean session)
        // is not copied from the state it shares with the session view.
        let index = self.session.outbound.iter().rposition(|o| {
            o.packet_id == id.get()
                && !o.completed
                && o.partition == origin.partition
                && o.offset == origin.offset
                && *o.topic == *origin.topic
        })?;
        Arc::make_mut(&mut self.session).outbound.get_mut(index)
    }

    /// QoS 2: PUBREC came for `id`; stored before PUBREL goes out, so that a resumed
    /// session sends PUBREL again, not the message.
    pub(super) async fn released(&mut self, id: NonZeroU16) {
        let Some(origin) = self.origins.get(&id.get()).cloned() else {
            return;
        };
        if let Some(entry) = self.outbound_entry(id, &origin) {
            entry.released = true;
            self.store_session().await;
        }
    }

    /// A resumed session's deliveries that were in flight: PUBREL again for those the
    /// client acknowledged with PUBREC; the others are sent again (DUP, same packet id)
    /// when the catch-up reads their records; completed ones are skipped.
    pub(super) async fn resume_outbound<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        transport: &mut Transport<S>,
    ) -> Step {
        for entry in self.session.outbound.clone() {
            let origin = Origin {
                topic: Arc::from(entry.topic.as_str()),
                partition: entry.partition,
                offset: entry.offset,
            };
            let Some(id) = NonZeroU16::new(entry.packet_id) else {
                continue;
            };
            if entry.completed {
                self.skip.insert(origin);
                continue;
            }
            self.origins.insert(id.get(), origin.clone());
            self.hub.track(self.id, &origin);
            if entry.released {
                self.inflight.restore(id, Stage::Released);
                self.skip.insert(origin);
                feed(transport, Packet::PublishRelease(ack2(id, PublishAck2Reason::Success))).await?;
            } else {
                self.inflight.restore(id, Stage::Published { qos: entry.qos });
                self.resend.insert(origin, (id, entry.qos));
            }
        }
        flush(transport).await
    }

    /// Stores the session (persistent sessions only: others end with the connection).
    pub(super) async fn store_session(&mut self) {
        if !self.session.is_persistent() {
            return;
        }
        let positions = self.hub.positions(self.id);
        let session = Arc::make_mut(&mut self.session);
        session.positions = positions;
        self.saved_positions = session.positions.clone();
        prune_outbound(&mut session.outbound, &session.positions);
        // Boxed: a write to Kafka is a large future, and every state it is awaited from would
        // otherwise carry it in each connection's task, idle or not.
        if let Err(error) = Box::pin(self.sessions.store_shared(&self.session)).await {
            tracing::warn!(client_id = %self.session.client_id, %error, "session not stored");
        }
    }

    pub(super) async fn store_qos2_pending(&mut self) {
        let mut pending: Vec<u16> = self.qos2_received.iter().copied().collect();
        pending.sort_unstable();
        if pending != self.session.qos2_pending {
            Arc::make_mut(&mut self.session).qos2_pending = pending;
            self.store_session().await;
        }
    }

    /// Stores where delivery would resume, when it moved (persistent sessions), without
    /// holding up the connection.
    pub(super) fn save_positions(&mut self) {
        if !self.session.is_persistent() {
            return;
        }
        let positions = self.hub.positions(self.id);
        if positions == self.saved_positions {
            return;
        }
        self.saved_positions = positions.clone();
        let session = Arc::make_mut(&mut self.session);
        session.positions = positions;
        prune_outbound(&mut session.outbound, &session.positions);
        let (sessions, state) = (Arc::clone(&self.sessions), Arc::clone(&self.session));
        tokio::spawn(async move {
            if let Err(error) = sessions.store_shared(&state).await {
                tracing::debug!(client_id = %state.client_id, %error, "positions not stored");
            }
        });
    }

    /// Takes the lag off one topic and starts reading what was missed from Kafka.
    pub(super) fn start_catch_up(&mut self) {
        match self.hub.rejoin(self.id) {
            Some(CatchUp { topic, from, to }) => {
                tracing::debug!(client_id = %self.session.client_id, %topic, ?from, ?to, "catching up from Kafka");
                self.replay_range(&topic, from, to);
            }
            None => self.catch_up_wanted = false,
        }
    }

    /// Reads `[from, to)` of `topic` from Kafka for this connection.
    pub(super) fn replay_range(&mut self, topic: &str, from: BTreeMap<i32, i64>, to: BTreeMap<i32, i64>) {
        let (hub, id, kafka_topic) = (Arc::clone(&self.hub), self.id, topic.to_owned());
        let wants = Box::new(move |key: &str| hub.wants(id, &kafka_topic, key));
        let reader = self.replayer.replay(topic.to_owned(), self.id, from, to, wants);
        self.replay = Some((Arc::from(topic), reader));
    }

    /// One record of the catch-up (or its end, `None`).
    pub(super) async fn on_replayed<S: AsyncRead + AsyncWrite + Unpin>(
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
            // The reader let go before the end (this connection fell behind it): ask again
            // for the rest, still ahead of the live deliveries waiting meanwhile.
            let complete = self
                .replay
                .as_ref()
                .is_some_and(|(_, c)| c.complete.load(std::sync::atomic::Ordering::Acquire));
            match self.hub.replay_remaining(self.id, &topic).filter(|_| !complete) {
                Some((from, to)) => self.replay_range(&topic, from, to),
                None => {
                    self.hub.replay_done(self.id, &topic);
                    self.replay = None;
                }
            }
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
        if self.skip.remove(&origin) {
            self.hub.replayed_to(self.id, &topic, partition, offset + 1);
            return Ok(());
        }
        if let Some((id, qos)) = self.resend.remove(&origin) {
            self.hub.replayed_to(self.id, &topic, partition, offset + 1);
            let Some((message, _, retain, identifiers)) = matched else {
                // No longer matches (unsubscribed meanwhile): nothing to send again.
                self.inflight.abandon(id);
                self.completed(id);
                return Ok(());
            };
            let outgoing = Outgoing {
                message: Arc::new(message),
                origin: Some(origin),
                qos,
                retain,
                identifiers,
                shared: false,
            };
            return self.send_publish(transport, outgoing, Some(id), true).await;
        }
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
                    shared: false,
                };
                self.deliver(transport, outgoing).await
            }
            _ => Ok(()),
        };
        self.hub.replayed_to(self.id, &topic, partition, offset + 1);
        step
    }
}

/// A record of the catch-up under way that is ready now. (An ended catch-up is left to
/// [`poll_replay`], which hands its end to `on_replayed`.)
pub(super) fn try_recv_replay(replay: &mut Option<Replay>) -> Option<Replayed> {
    replay.as_mut()?.1.records.try_recv().ok()
}

/// The next record of the catch-up under way (pending while there is none); `None` when
/// the catch-up ended.
pub(super) fn poll_replay(replay: &mut Option<Replay>, cx: &mut Context<'_>) -> Poll<Option<Replayed>> {
    match replay {
        Some((_, catching)) => catching.records.poll_recv(cx),
        None => Poll::Pending,
    }
}
