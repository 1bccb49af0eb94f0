//! A connection's session in the sessions topic: opened at CONNECT (resumed or fresh,
//! stored before CONNACK so that any process sees it), kept up to date while the client is
//! connected, closed at the end (kept with its positions, or deleted), and the timers of a
//! session that is away (will delay, expiry), run by the process that served it last.
//! The decisions are `broker::session`'s; this module does the I/O around them.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use bytestring::ByteString;
use rmqtt_codec::v5::LastWill;

use crate::broker::message::{Message, MessageProperties, now_ms};
use crate::broker::session::{
    self, ConnectRequest, Departure, DisconnectOutcome, Due, SessionState, StoredWill, next_deadline_ms,
};
use crate::hub::{Hub, Positions};
use crate::kafka::sessions::{SessionError, SessionStore};

/// The will of a CONNECT, as the session stores it.
pub fn stored_will(will: &LastWill) -> StoredWill {
    StoredWill {
        topic: will.topic.to_string(),
        payload: BASE64.encode(&will.message),
        qos: will.qos.value(),
        retain: will.retain,
        delay_secs: will.will_delay_interval_sec.unwrap_or(0),
        expiry_secs: will.message_expiry_interval.map(NonZeroU32::get),
        content_type: will.content_type.as_ref().map(ToString::to_string),
        payload_utf8: will.is_utf8_payload == Some(true),
        response_topic: will.response_topic.as_ref().map(ToString::to_string),
        correlation_data: will.correlation_data.as_ref().map(|d| BASE64.encode(d)),
        user_properties: will
            .user_properties
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

/// The message a stored will publishes.
pub fn will_message(will: &StoredWill, client_id: &str) -> Message {
    Message {
        topic: will.topic.as_str().into(),
        payload: Bytes::from(BASE64.decode(&will.payload).unwrap_or_default()),
        qos: will.qos,
        retain: will.retain,
        publisher: Some(client_id.to_owned()),
        properties: MessageProperties {
            expiry_secs: will.expiry_secs,
            content_type: will.content_type.as_deref().map(ByteString::from),
            payload_utf8: will.payload_utf8,
            response_topic: will.response_topic.as_deref().map(ByteString::from),
            correlation_data: will
                .correlation_data
                .as_ref()
                .and_then(|d| BASE64.decode(d).ok())
                .map(Bytes::from),
            user_properties: will
                .user_properties
                .iter()
                .map(|(k, v)| (k.as_str().into(), v.as_str().into()))
                .collect(),
        },
        timestamp_ms: now_ms(),
    }
}

/// Publishes a will in the background (its acknowledgement changes nothing here).
pub fn publish_will(hub: &Arc<Hub>, will: &StoredWill, client_id: &str) {
    let delivery = hub.publish(will_message(will, client_id));
    let client_id = client_id.to_owned();
    hub.metrics().wills.inc();
    tokio::spawn(async move {
        if let Err(error) = delivery.await {
            tracing::warn!(%client_id, %error, "will message not stored in Kafka");
        }
    });
}

/// A session opened for a CONNECT.
pub struct Opened {
    /// The state as stored, shared with the session view.
    pub state: Arc<SessionState>,
    pub session_present: bool,
}

/// CONNECT: reads what any process stored for the client, resumes or replaces it, and
/// stores the result (a newer generation: a connection of the same client id anywhere
/// else ends when its process reads it).
pub async fn open(hub: &Arc<Hub>, store: &Arc<SessionStore>, request: ConnectRequest) -> Result<Opened, SessionError> {
    store.catch_up(&request.client_id).await?;
    let client_id = request.client_id.clone();
    let mut outcome = session::connect(store.get(&client_id).as_ref(), request, now_ms());
    if !outcome.session_present && outcome.state.is_persistent() {
        // A new session has seen nothing yet: were its process to die before it stores
        // positions, its messages would be read from here. A session that ends with its
        // connection is never resumed and carries none (issue 9: the positions of every
        // partition were most of what an idle clean-session connection held).
        outcome.state.positions = hub.fanout_positions();
    }
    let state = Arc::new(outcome.state);
    store.store_shared(&state).await?;
    if let Some(will) = &outcome.ended_will {
        publish_will(hub, will, &client_id);
    }
    Ok(Opened {
        state,
        session_present: outcome.session_present,
    })
}

/// The end of a connection: keeps the session with where delivery resumes (and starts its
/// timers), or deletes it and publishes the will it owes.
pub async fn close(
    hub: &Arc<Hub>,
    store: &Arc<SessionStore>,
    state: &SessionState,
    positions: Positions,
    departure: Departure,
    expiry_secs: Option<u32>,
) {
    let mut state = state.clone();
    state.positions = positions;
    match session::disconnect(&state, departure, expiry_secs, now_ms()) {
        DisconnectOutcome::Kept(kept) => {
            if let Err(error) = store.store(&kept).await {
                tracing::warn!(client_id = %kept.client_id, %error, "session not stored at disconnect");
            }
            schedule(hub, store, &kept);
        }
        DisconnectOutcome::Ended { will } => {
            if let Some(will) = &will {
                publish_will(hub, will, &state.client_id);
            }
            if let Err(error) = store.delete(&state.client_id, state.generation).await {
                tracing::warn!(client_id = %state.client_id, %error, "session not deleted at disconnect");
            }
        }
    }
}

/// Runs the timers of a session that is away: at its next deadline, if the client has
/// not come back (same generation), publishes the will or deletes the expired session.
pub fn schedule(hub: &Arc<Hub>, store: &Arc<SessionStore>, state: &SessionState) {
    let Some(deadline) = next_deadline_ms(state) else {
        return;
    };
    let (hub, store) = (Arc::clone(hub), Arc::clone(store));
    let (client_id, generation) = (state.client_id.clone(), state.generation);
    tokio::spawn(async move {
        let mut deadline = deadline;
        loop {
            let wait = u64::try_from(deadline - now_ms()).unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(wait)).await;
            let Some(current) = store.get(&client_id) else { return };
            if current.generation != generation || current.disconnected_at_ms.is_none() {
                return; // the client came back (here or elsewhere)
            }
            match session::due(&current, now_ms()) {
                Due::Nothing => {}
                Due::Will(will, rest) => {
                    publish_will(&hub, &will, &client_id);
                    if let Err(error) = store.store(&rest).await {
                        tracing::warn!(%client_id, %error, "session not stored after its will");
                    }
                }
                Due::Expire(will) => {
                    if let Some(will) = &will {
                        publish_will(&hub, will, &client_id);
                    }
                    hub.metrics().sessions_expired.inc();
                    if let Err(error) = store.delete(&client_id, generation).await {
                        tracing::warn!(%client_id, %error, "expired session not deleted");
                    }
                    return;
                }
            }
            match store.get(&client_id).as_ref().and_then(next_deadline_ms) {
                Some(next) => deadline = next.max(now_ms() + 10),
                None => return,
            }
        }
    });
}

/// At start-up: the sessions this instance served last get their timers again. A session
/// it served while it died counts as disconnected now (the will is owed).
pub async fn resume_timers(hub: &Arc<Hub>, store: &Arc<SessionStore>, instance: &str) {
    for mut state in store.hosted_by(instance) {
        if state.disconnected_at_ms.is_none() {
            let DisconnectOutcome::Kept(kept) = session::disconnect(&state, Departure::Abnormal, None, now_ms()) else {
                if let Some(will) = &state.will {
                    publish_will(hub, will, &state.client_id);
                }
                let _ = store.delete(&state.client_id, state.generation).await;
                continue;
            };
            state = kept;
            if let Err(error) = store.store(&state).await {
                tracing::warn!(client_id = %state.client_id, %error, "session not stored at start-up");
                continue;
            }
        }
        schedule(hub, store, &state);
    }
}

/// Takes over the sessions of partitions this process owns whose host died: a client that
/// was connected there counts as gone now (its will is owed after its delay), and their
/// timers run here from now on.
pub async fn adopt_orphans(hub: &Arc<Hub>, store: &Arc<SessionStore>) {
    let me = store.instance().to_owned();
    let live = store.live();
    let owners = store.owners(None);
    for state in store.all() {
        let owned = usize::try_from(store.partition_of(&state.client_id))
            .ok()
            .and_then(|p| owners.get(p))
            .is_some_and(|o| *o == me);
        let orphan = state
            .host
            .as_ref()
            .is_none_or(|host| *host != me && !live.contains(host));
        if !owned || !orphan {
            continue;
        }
        tracing::info!(client_id = %state.client_id, host = ?state.host, "session of a process that died taken over");
        let mut adopted = match state.disconnected_at_ms {
            Some(_) => state,
            None => match session::disconnect(&state, Departure::Abnormal, None, now_ms()) {
                DisconnectOutcome::Kept(kept) => kept,
                DisconnectOutcome::Ended { will } => {
                    if let Some(will) = &will {
                        publish_will(hub, will, &state.client_id);
                    }
                    let _ = store.delete(&state.client_id, state.generation).await;
                    continue;
                }
            },
        };
        adopted.host = Some(me.clone());
        if let Err(error) = store.store(&adopted).await {
            tracing::warn!(client_id = %adopted.client_id, %error, "adopted session not stored");
            continue;
        }
        schedule(hub, store, &adopted);
    }
}
