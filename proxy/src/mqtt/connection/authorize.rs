//! The guard and the authorization rules (`auth`) as MQTT answers: the CONNACK reason of a
//! refused CONNECT, PUBACK / PUBREC 0x87 for a refused PUBLISH (3.1.1, which has no
//! negative acknowledgement: the connection is closed), SUBACK 0x87 (3.1.1: 0x80) for a
//! refused filter, DISCONNECT 0xA0 when the token expires. A refused PUBLISH never reaches
//! Kafka.

use rmqtt_codec::v5::Connect;

use super::*;
use crate::auth::Security;
use crate::auth::guard::{Admitted, Refused};
use crate::auth::policy::Principal;
use crate::broker::session::StoredSubscription;

/// Who the client of `connect` is, and when its token expires (seconds since the epoch),
/// or the reason to refuse it: its credentials (when a guard is configured) and its will
/// topic are checked. Without a JWT guard, `certificate` (who the client's verified TLS
/// certificate says it is) is the client's principal.
pub(super) fn admit(
    security: &Security,
    connect: &Connect,
    hub: &Hub,
    certificate: Option<Principal>,
) -> Result<(Principal, Option<i64>), ConnectAckReason> {
    let refused = |reason: ConnectAckReason| {
        hub.metrics().auth_refusals.with_label_values(&["connect"]).inc();
        reason
    };
    let (principal, expires_at) = match &security.guard {
        None => (certificate.unwrap_or_default(), None),
        Some(guard) => {
            let username = connect.username.as_deref();
            let password = connect.password.as_deref();
            match guard.admit(username, password, now_ms() / 1000) {
                Ok(Admitted { principal, expires_at }) => (principal, Some(expires_at)),
                Err(refusal) => {
                    tracing::info!(client_id = %connect.client_id, %refusal, "CONNECT refused by the jwt guard");
                    return Err(refused(match refusal {
                        Refused::NoKeys(_) => ConnectAckReason::ServerUnavailable,
                        r if r.is_bad_credentials() => ConnectAckReason::BadUserNameOrPassword,
                        _ => ConnectAckReason::NotAuthorized,
                    }));
                }
            }
        }
    };
    if let Some(will) = &connect.last_will
        && let Err(refusal) = security.policy.publish(&principal, &will.topic)
    {
        tracing::info!(client_id = %connect.client_id, topic = %will.topic, %refusal, "CONNECT refused: its will may not be published");
        return Err(refused(ConnectAckReason::NotAuthorized));
    }
    if principal.identity.is_some() {
        tracing::debug!(client_id = %connect.client_id, guard = ?principal.guard, identity = ?principal.identity, "client identified");
    }
    Ok((principal, expires_at))
}

/// When a token that expires at `expires_at` (seconds since the epoch) does, as an instant
/// of the connection's clock.
pub(super) fn token_deadline(expires_at: Option<i64>) -> Option<Instant> {
    let expires_at = expires_at?;
    let left_ms = expires_at.saturating_mul(1000).saturating_sub(now_ms()).max(0);
    Some(Instant::now() + Duration::from_millis(u64::try_from(left_ms).unwrap_or(0)))
}

/// A client's acknowledgement outcome for a QoS 1/2 PUBLISH, in arrival order.
pub(super) enum AckError {
    Kafka(PublishError),
    NotAuthorized,
}

impl Connection {
    /// May this client publish to `topic`? A refusal is answered here (QoS 1/2 in arrival
    /// order with the other acknowledgements) and `Err` ends the loop's handling of the
    /// PUBLISH: `Ok(false)` when it was refused and answered, `Ok(true)` to go on.
    pub(super) fn authorize_publish(
        &mut self,
        topic: &str,
        qos: u8,
        packet_id: Option<NonZeroU16>,
    ) -> Result<bool, Ending> {
        let Err(refusal) = self.security.policy.publish(self.principal(), topic) else {
            return Ok(true);
        };
        self.hub.metrics().auth_refusals.with_label_values(&["publish"]).inc();
        tracing::debug!(client_id = %self.session.client_id, %topic, %refusal, "PUBLISH refused");
        match (packet_id, self.version) {
            // QoS 0 has no answer: dropped and counted.
            (None, _) => Ok(false),
            // 3.1.1 cannot say no (§3.3.5): the connection is closed rather than a false ack.
            (Some(_), Version::V3) => Err(Ending::Abnormal(None)),
            (Some(id), Version::V5) => {
                self.pending_ids.insert(id.get());
                self.pending_acks
                    .get_or_insert_with(|| Box::new(FuturesOrdered::new()))
                    .push_back(Box::pin(std::future::ready((id, qos, Err(AckError::NotAuthorized)))));
                Ok(false)
            }
        }
    }

    /// May this client subscribe to `filter` (as sent)?
    pub(super) fn authorize_subscribe(&self, filter: &str) -> bool {
        match self.security.policy.subscribe(self.principal(), filter) {
            Ok(()) => true,
            Err(refusal) => {
                self.hub.metrics().auth_refusals.with_label_values(&["subscribe"]).inc();
                tracing::debug!(client_id = %self.session.client_id, %filter, %refusal, "SUBSCRIBE refused");
                false
            }
        }
    }
}

/// What `principal` may keep of a resumed session's subscriptions (its rights may have
/// changed since they were made).
pub(super) fn allowed_subscriptions(security: &Security, principal: &Principal, session: &mut Arc<SessionState>) {
    let allowed = |s: &StoredSubscription| security.policy.subscribe(principal, &s.filter).is_ok();
    // Changed (and so copied from the state the session view shares) only when needed.
    if !session.subscriptions.iter().all(allowed) {
        Arc::make_mut(session).subscriptions.retain(allowed);
    }
}
