//! MQTT sessions as they are stored in the sessions topic, and the rules that change them:
//! pure functions from (stored state, event, time) to (new state, what to do).
//!
//! One compacted record per client id holds the whole state, as JSON that a person can
//! read with a console consumer (`proxy/README.md` documents the fields). Every CONNECT
//! gets the next `generation`; a record of an older generation is stale, which is how a
//! connection on one process learns that a CONNECT on another took its session over, and
//! how a stale writer is ignored (fencing).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::subscriptions::Subscription;

/// The encoding version written in every record.
pub const VERSION: u32 = 1;

/// Session Expiry Interval meaning "never expires" (MQTT 5 §3.1.2.11.2).
pub const NEVER_EXPIRES: u32 = u32::MAX;

/// One subscription of a session, with every MQTT 5 option.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredSubscription {
    /// The filter as the client sent it (`$share/{group}/{filter}` included).
    pub filter: String,
    pub qos: u8,
    #[serde(default)]
    pub no_local: bool,
    #[serde(default)]
    pub retain_as_published: bool,
    #[serde(default)]
    pub retain_handling: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identifier: Option<u32>,
}

impl StoredSubscription {
    pub fn from_subscription(subscription: &Subscription) -> Self {
        Self {
            filter: subscription.filter_as_sent(),
            qos: subscription.qos,
            no_local: subscription.no_local,
            retain_as_published: subscription.retain_as_published,
            retain_handling: subscription.retain_handling,
            identifier: subscription.identifier,
        }
    }

    /// The subscription again; `None` for a filter that no longer parses (a record
    /// written by hand), which is skipped rather than failing the session.
    pub fn to_subscription(&self) -> Option<Subscription> {
        let mut subscription = Subscription::parse(&self.filter, self.qos.min(2)).ok()?;
        subscription.no_local = self.no_local;
        subscription.retain_as_published = self.retain_as_published;
        subscription.retain_handling = self.retain_handling;
        subscription.identifier = self.identifier;
        Some(subscription)
    }
}

/// The will message of a session and its delay.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredWill {
    pub topic: String,
    /// The payload, base64.
    pub payload: String,
    pub qos: u8,
    #[serde(default)]
    pub retain: bool,
    /// Will Delay Interval, seconds.
    #[serde(default)]
    pub delay_secs: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiry_secs: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(default)]
    pub payload_utf8: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_topic: Option<String>,
    /// Correlation data, base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_data: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub user_properties: Vec<(String, String)>,
}

/// A message sent to the client with QoS > 0 and not yet acknowledged: sent again (DUP)
/// with the same packet id when the client comes back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredOutbound {
    pub packet_id: u16,
    /// Where the message is in Kafka.
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub qos: u8,
    /// QoS 2: PUBREC came, so PUBREL is what is sent again.
    #[serde(default)]
    pub released: bool,
    /// Acknowledged; kept until the session's position passes it, so that a catch-up
    /// from an older position does not send it again.
    #[serde(default)]
    pub completed: bool,
}

/// Drops the completed outbound entries the positions have passed: a catch-up starts at
/// the positions, so it never reads them again.
pub fn prune_outbound(outbound: &mut Vec<StoredOutbound>, positions: &BTreeMap<String, BTreeMap<i32, i64>>) {
    outbound.retain(|o| {
        !o.completed
            || positions
                .get(&o.topic)
                .and_then(|p| p.get(&o.partition))
                .is_none_or(|at| o.offset >= *at)
    });
}

/// The state of one session, as stored under its client id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionState {
    pub version: u32,
    pub client_id: String,
    /// 4 for MQTT 3.1.1, 5 for MQTT 5.0.
    pub protocol: u8,
    /// Session Expiry Interval in seconds ([`NEVER_EXPIRES`] for never).
    pub expiry_secs: u32,
    /// Counts the CONNECTs of this client id; records of older generations are stale.
    pub generation: u64,
    /// The instance that serves (or last served) the connection: it runs the session's
    /// timers while the client is away.
    #[serde(default)]
    pub host: Option<String>,
    /// When the client went away (milliseconds since the epoch); `None` while connected.
    #[serde(default)]
    pub disconnected_at_ms: Option<i64>,
    #[serde(default)]
    pub subscriptions: Vec<StoredSubscription>,
    #[serde(default)]
    /// Boxed: most sessions have none, and a session is held by its connection and by
    /// the session view of every process.
    pub will: Option<Box<StoredWill>>,
    /// QoS 2 packet ids acknowledged with PUBREC and not yet released by PUBREL: a
    /// retransmission with one of them is not produced again, on any process.
    #[serde(default)]
    pub qos2_pending: Vec<u16>,
    /// Outbound QoS 1/2 messages not yet acknowledged by the client.
    #[serde(default)]
    pub outbound: Vec<StoredOutbound>,
    /// Per messages topic and partition, the offset from which delivery resumes: every
    /// earlier record was delivered (and acknowledged) or did not match.
    #[serde(default)]
    pub positions: BTreeMap<String, BTreeMap<i32, i64>>,
}

/// A record value that is not a session this version understands.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("session record is not JSON of a session: {0}")]
    Json(#[from] serde_json::Error),
    #[error("session record has version {0}; this proxy reads version {VERSION}")]
    Version(u32),
}

impl SessionState {
    pub fn encode(&self) -> Vec<u8> {
        // Serialising plain data with string keys cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let state: Self = serde_json::from_slice(bytes)?;
        if state.version != VERSION {
            return Err(DecodeError::Version(state.version));
        }
        Ok(state)
    }

    /// Whether the session outlives its connection at all.
    pub fn is_persistent(&self) -> bool {
        self.expiry_secs > 0
    }

    /// Whether a QoS 1/2 message sent under this session is kept in `outbound` until
    /// acknowledged. Only a session that can be resumed sends it again, so a clean session
    /// keeps nothing: its list would grow with every delivery and be searched on every
    /// PUBACK (issue 9: 43 % of the proxy's CPU at 60 000 msg/s). A resend (`dup`) has its
    /// entry already; a share keeps its messages itself.
    pub fn keeps_outbound(&self, dup: bool, shared: bool) -> bool {
        !dup && !shared && self.is_persistent()
    }

    /// When the session ends if the client stays away (ms since the epoch); `None` for
    /// a connected or never-expiring session.
    pub fn expires_at_ms(&self) -> Option<i64> {
        let gone = self.disconnected_at_ms?;
        (self.expiry_secs != NEVER_EXPIRES).then(|| gone + i64::from(self.expiry_secs) * 1000)
    }

    /// When the will is due if the client stays away: the will delay or the session's
    /// end, whichever comes first (MQTT 5 §3.1.3.2.2).
    pub fn will_due_at_ms(&self) -> Option<i64> {
        let will = self.will.as_ref()?;
        let gone = self.disconnected_at_ms?;
        let delayed = gone + i64::from(will.delay_secs) * 1000;
        Some(self.expires_at_ms().map_or(delayed, |end| delayed.min(end)))
    }
}

/// What a CONNECT asks of the session.
#[derive(Clone, Debug)]
pub struct ConnectRequest {
    pub client_id: String,
    pub clean_start: bool,
    pub expiry_secs: u32,
    pub protocol: u8,
    pub will: Option<Box<StoredWill>>,
    /// The instance that serves the connection.
    pub host: String,
}

/// What a CONNECT does to the session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectOutcome {
    /// CONNACK Session Present.
    pub session_present: bool,
    /// The state to write (and to serve the connection with).
    pub state: SessionState,
    /// A will of the ended previous session that is due now (the session it belonged to
    /// ended with this clean start, §3.1.4).
    pub ended_will: Option<Box<StoredWill>>,
}

/// CONNECT: resume the stored session unless Clean Start, or it has expired by `now_ms`.
pub fn connect(existing: Option<&SessionState>, request: ConnectRequest, now_ms: i64) -> ConnectOutcome {
    let generation = existing.map_or(0, |s| s.generation) + 1;
    let alive = existing.filter(|s| s.expires_at_ms().is_none_or(|end| end > now_ms));
    let resumed = alive.filter(|_| !request.clean_start);
    // A session that ends here (clean start) still owes its will: a client that is away
    // has a will waiting for its delay; a live connection publishes a will without delay
    // itself when it is taken over, so only a delayed one is owed here (§3.1.4).
    let ended_will = match (alive, resumed) {
        (Some(old), None) if old.disconnected_at_ms.is_some() => old.will.clone(),
        (Some(old), None) => old.will.clone().filter(|w| w.delay_secs > 0),
        _ => None,
    };
    let mut state = match resumed {
        Some(old) => SessionState {
            generation,
            ..old.clone()
        },
        None => SessionState {
            version: VERSION,
            client_id: request.client_id.clone(),
            protocol: request.protocol,
            expiry_secs: request.expiry_secs,
            generation,
            host: None,
            disconnected_at_ms: None,
            subscriptions: Vec::new(),
            will: None,
            qos2_pending: Vec::new(),
            outbound: Vec::new(),
            positions: BTreeMap::new(),
        },
    };
    state.protocol = request.protocol;
    state.expiry_secs = request.expiry_secs;
    state.host = Some(request.host);
    state.disconnected_at_ms = None;
    state.will = request.will;
    ConnectOutcome {
        session_present: resumed.is_some(),
        state,
        ended_will,
    }
}

/// How a connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Departure {
    /// DISCONNECT with reason 0x00: no will.
    Normal,
    /// Anything else (socket closed, keep-alive, DISCONNECT 0x04, protocol error, the
    /// hosting process died): the will is owed.
    Abnormal,
}

/// What the end of a connection does to the session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DisconnectOutcome {
    /// The session stays: write this state; the will (if any) is due at `will_due_at_ms`.
    Kept(SessionState),
    /// The session ends now (expiry 0): delete it, and publish `will` if one is owed.
    Ended { will: Option<Box<StoredWill>> },
}

/// The connection of `state` ended at `now_ms`. `expiry_secs` is a Session Expiry
/// Interval the DISCONNECT changed, if it did.
pub fn disconnect(
    state: &SessionState,
    departure: Departure,
    expiry_secs: Option<u32>,
    now_ms: i64,
) -> DisconnectOutcome {
    let mut state = state.clone();
    if departure == Departure::Normal {
        state.will = None;
    }
    if let Some(expiry) = expiry_secs {
        state.expiry_secs = expiry;
    }
    if !state.is_persistent() {
        return DisconnectOutcome::Ended { will: state.will };
    }
    state.disconnected_at_ms = Some(now_ms);
    DisconnectOutcome::Kept(state)
}

/// What is due for a session that is away, at `now_ms`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Due {
    Nothing,
    /// Publish the will and write the state without it.
    Will(Box<StoredWill>, Box<SessionState>),
    /// The session expired: delete it (publishing its will first if it still has one).
    Expire(Option<Box<StoredWill>>),
}

/// The timers of a session that is away.
pub fn due(state: &SessionState, now_ms: i64) -> Due {
    if state.expires_at_ms().is_some_and(|end| end <= now_ms) {
        return Due::Expire(state.will.clone());
    }
    match (&state.will, state.will_due_at_ms()) {
        (Some(will), Some(at)) if at <= now_ms => {
            let mut rest = state.clone();
            rest.will = None;
            Due::Will(will.clone(), Box::new(rest))
        }
        _ => Due::Nothing,
    }
}

/// When [`due`] next has something to do for `state` (ms since the epoch).
pub fn next_deadline_ms(state: &SessionState) -> Option<i64> {
    [state.expires_at_ms(), state.will_due_at_ms()]
        .into_iter()
        .flatten()
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_resumable_session_keeps_what_it_sent() {
        let clean = connect(None, request(true, 0), 0).state;
        assert!(!clean.keeps_outbound(false, false), "a clean session is never resumed");
        let state = stored(60);
        assert!(state.keeps_outbound(false, false));
        assert!(!state.keeps_outbound(true, false), "a resend has its entry already");
        assert!(!state.keeps_outbound(false, true), "a share keeps its messages itself");
    }

    fn request(clean_start: bool, expiry_secs: u32) -> ConnectRequest {
        ConnectRequest {
            client_id: "c1".into(),
            clean_start,
            expiry_secs,
            protocol: 5,
            will: None,
            host: "proxy-0".into(),
        }
    }

    fn will(delay_secs: u32) -> Box<StoredWill> {
        Box::new(StoredWill {
            topic: "w".into(),
            payload: "Ynll".into(),
            qos: 1,
            retain: false,
            delay_secs,
            expiry_secs: None,
            content_type: None,
            payload_utf8: false,
            response_topic: None,
            correlation_data: None,
            user_properties: Vec::new(),
        })
    }

    fn stored(expiry_secs: u32) -> SessionState {
        let mut state = connect(None, request(false, expiry_secs), 0).state;
        state.subscriptions.push(StoredSubscription {
            filter: "a/#".into(),
            qos: 1,
            no_local: true,
            retain_as_published: false,
            retain_handling: 2,
            identifier: Some(7),
        });
        state.positions.insert("m".into(), BTreeMap::from([(0, 10), (1, 3)]));
        state
    }

    #[test]
    fn a_new_client_gets_a_fresh_session_without_session_present() {
        let out = connect(None, request(false, 60), 1000);
        assert!(!out.session_present);
        assert_eq!(out.state.generation, 1);
        assert_eq!(out.state.host.as_deref(), Some("proxy-0"));
        assert!(out.state.subscriptions.is_empty());
    }

    #[test]
    fn a_stored_session_is_resumed_with_its_subscriptions_and_positions() {
        let DisconnectOutcome::Kept(away) = disconnect(&stored(60), Departure::Normal, None, 5_000) else {
            panic!("kept")
        };
        let out = connect(Some(&away), request(false, 60), 10_000);
        assert!(out.session_present);
        assert_eq!(out.state.generation, 2);
        assert_eq!(out.state.subscriptions, away.subscriptions);
        assert_eq!(out.state.positions, away.positions);
        assert_eq!(out.state.disconnected_at_ms, None);
    }

    #[test]
    fn clean_start_discards_the_session_but_keeps_counting_generations() {
        let out = connect(Some(&stored(60)), request(true, 60), 1000);
        assert!(!out.session_present);
        assert!(out.state.subscriptions.is_empty());
        assert_eq!(out.state.generation, 2);
    }

    #[test]
    fn an_expired_session_is_not_resumed() {
        let DisconnectOutcome::Kept(away) = disconnect(&stored(10), Departure::Abnormal, None, 0) else {
            panic!("kept")
        };
        assert!(connect(Some(&away), request(false, 10), 9_999).session_present);
        assert!(!connect(Some(&away), request(false, 10), 10_000).session_present);
    }

    #[test]
    fn expiry_zero_ends_the_session_with_the_connection_and_owes_the_will_when_abnormal() {
        let mut state = stored(0);
        state.will = Some(will(30));
        assert_eq!(
            disconnect(&state, Departure::Abnormal, None, 0),
            DisconnectOutcome::Ended { will: Some(will(30)) }
        );
        assert_eq!(
            disconnect(&state, Departure::Normal, None, 0),
            DisconnectOutcome::Ended { will: None }
        );
    }

    #[test]
    fn the_will_is_due_after_its_delay_or_at_session_end_whichever_is_first() {
        let mut state = stored(100);
        state.will = Some(will(30));
        let DisconnectOutcome::Kept(away) = disconnect(&state, Departure::Abnormal, None, 1_000) else {
            panic!("kept")
        };
        assert_eq!(away.will_due_at_ms(), Some(31_000));
        assert_eq!(due(&away, 30_999), Due::Nothing);
        let Due::Will(w, rest) = due(&away, 31_000) else {
            panic!("will due")
        };
        assert_eq!(w, will(30));
        assert_eq!(rest.will, None);
        assert_eq!(next_deadline_ms(&rest), Some(101_000));
        assert_eq!(due(&rest, 101_000), Due::Expire(None));

        let mut short = stored(10);
        short.will = Some(will(30));
        let DisconnectOutcome::Kept(away) = disconnect(&short, Departure::Abnormal, None, 0) else {
            panic!("kept")
        };
        assert_eq!(away.will_due_at_ms(), Some(10_000));
        assert_eq!(due(&away, 10_000), Due::Expire(Some(will(30))));
    }

    #[test]
    fn a_normal_disconnect_drops_the_will_and_may_change_the_expiry() {
        let mut state = stored(100);
        state.will = Some(will(0));
        let DisconnectOutcome::Kept(away) = disconnect(&state, Departure::Normal, Some(5), 0) else {
            panic!("kept")
        };
        assert_eq!(away.will, None);
        assert_eq!(away.expires_at_ms(), Some(5_000));
    }

    #[test]
    fn a_clean_start_over_a_session_with_a_pending_will_publishes_that_will() {
        let mut state = stored(100);
        state.will = Some(will(60));
        let DisconnectOutcome::Kept(away) = disconnect(&state, Departure::Abnormal, None, 0) else {
            panic!("kept")
        };
        assert_eq!(connect(Some(&away), request(true, 0), 1_000).ended_will, Some(will(60)));
        assert_eq!(connect(Some(&away), request(false, 100), 1_000).ended_will, None);
    }

    #[test]
    fn records_round_trip_as_readable_json_and_other_versions_are_refused() {
        let mut state = stored(NEVER_EXPIRES);
        state.will = Some(will(5));
        state.qos2_pending = vec![3, 9];
        state.outbound.push(StoredOutbound {
            packet_id: 4,
            topic: "m".into(),
            partition: 1,
            offset: 2,
            qos: 2,
            released: true,
            completed: false,
        });
        let bytes = state.encode();
        let text = String::from_utf8(bytes.clone()).expect("utf-8");
        assert!(text.contains("\"version\":1"), "{text}");
        assert!(text.contains("\"clientId\":\"c1\""), "{text}");
        assert!(text.contains("\"retainHandling\":2"), "{text}");
        assert_eq!(SessionState::decode(&bytes).expect("decodes"), state);
        assert_eq!(state.expires_at_ms(), None);

        let future = text.replace("\"version\":1", "\"version\":2");
        assert!(matches!(
            SessionState::decode(future.as_bytes()),
            Err(DecodeError::Version(2))
        ));
        assert!(SessionState::decode(b"{").is_err());
    }

    #[test]
    fn completed_outbound_entries_go_once_the_position_passed_them() {
        let entry = |offset, completed| StoredOutbound {
            packet_id: 1,
            topic: "m".into(),
            partition: 0,
            offset,
            qos: 2,
            released: false,
            completed,
        };
        let mut outbound = vec![entry(5, true), entry(9, true), entry(7, false)];
        let positions = BTreeMap::from([("m".to_owned(), BTreeMap::from([(0, 7)]))]);
        prune_outbound(&mut outbound, &positions);
        assert_eq!(outbound, vec![entry(9, true), entry(7, false)]);
    }

    #[test]
    fn stored_subscriptions_keep_every_option() {
        let mut sub = Subscription::parse("$share/g/a/+", 2).expect("parses");
        sub.no_local = false;
        sub.retain_as_published = true;
        sub.retain_handling = 1;
        sub.identifier = Some(3);
        let stored = StoredSubscription::from_subscription(&sub);
        assert_eq!(stored.filter, "$share/g/a/+");
        assert_eq!(stored.to_subscription(), Some(sub));
        let broken = StoredSubscription {
            filter: "a/#/b".into(),
            ..stored
        };
        assert_eq!(broken.to_subscription(), None);
    }
}
