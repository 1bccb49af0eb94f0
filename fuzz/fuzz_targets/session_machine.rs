//! The state machines one connection drives, on arbitrary sequences of what a client and
//! the clock can do, against a model: the subscription index (SUBSCRIBE, UNSUBSCRIBE,
//! routing), the outbound in-flight window and its queue (deliveries, PUBACK / PUBREC /
//! PUBCOMP in any order), topic aliases both ways, the session transitions (CONNECT,
//! DISCONNECT, timers on a fake clock) and the authorization decisions with the filter
//! relations they rest on. No panic, nothing grows past its bound, and the relations stay
//! consistent. (The connection loop around them needs Kafka; its I/O is covered by the
//! integration tests.)
#![no_main]

use std::collections::BTreeSet;
use std::num::NonZeroU16;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use mqtt_kafka_proxy::auth::filters::{covers, overlap};
use mqtt_kafka_proxy::auth::policy::{Action, Deny, Grant, Policy, Principal};
use mqtt_kafka_proxy::broker::session::{self, ConnectRequest, Departure, DisconnectOutcome};
use mqtt_kafka_proxy::broker::subscriptions::{Subscription, SubscriptionIndex};
use mqtt_kafka_proxy::broker::topic;
use mqtt_kafka_proxy::mqtt::inflight::Inflight;
use mqtt_kafka_proxy::mqtt::topic_alias::{InboundAliases, OutboundAliases};

const LEVELS: [&str; 8] = ["a", "b", "+", "#", "$SYS", "", "{identity}", "d1"];

/// A topic or filter from a few levels, so that matches are frequent.
#[derive(Arbitrary, Debug)]
struct Levels(Vec<u8>);

impl Levels {
    fn render(&self) -> String {
        let levels: Vec<&str> = self.0.iter().take(5).map(|b| LEVELS[usize::from(*b) % LEVELS.len()]).collect();
        if levels.is_empty() { "a".into() } else { levels.join("/") }
    }
}

#[derive(Arbitrary, Debug)]
enum Op {
    Subscribe { subscriber: u8, filter: Levels, qos: u8, share: bool },
    Unsubscribe { subscriber: u8, filter: Levels, share: bool },
    Leave { subscriber: u8 },
    Route { topic: Levels },
    Deliver { qos: u8 },
    PubAck { id: u16 },
    PubRec { id: u16 },
    PubComp { id: u16 },
    Drain,
    AliasIn { topic: Levels, alias: Option<u16> },
    AliasOut { topic: Levels },
    Connect { clean: bool, expiry: u16 },
    Disconnect { normal: bool, expiry: Option<u16> },
    Tick { ms: u32 },
    Authorize { filter: Levels, topic: Levels, identity: Levels, role: bool },
}

const WINDOW: u16 = 8;
const QUEUE: usize = 16;
const ALIASES: u16 = 4;

fuzz_target!(|ops: Vec<Op>| {
    let mut index: SubscriptionIndex<u8> = SubscriptionIndex::new();
    let mut model: BTreeSet<(u8, String)> = BTreeSet::new();
    let mut inflight: Inflight<u8> = Inflight::new(WINDOW, QUEUE);
    let mut queued = 0usize;
    let mut aliases_in = InboundAliases::new(ALIASES);
    let mut aliases_out = OutboundAliases::new(ALIASES);
    let mut stored: Option<session::SessionState> = None;
    let mut now: i64 = 1_000_000;
    for op in ops.into_iter().take(256) {
        match op {
            Op::Subscribe { subscriber, filter, qos, share } => {
                let sent = if share { format!("$share/g/{}", filter.render()) } else { filter.render() };
                if let Ok(sub) = Subscription::parse(&sent, qos % 3) {
                    index.insert(subscriber % 8, "c", sub);
                    model.insert((subscriber % 8, sent));
                }
            }
            Op::Unsubscribe { subscriber, filter, share } => {
                let sent = if share { format!("$share/g/{}", filter.render()) } else { filter.render() };
                let existed = index.remove(subscriber % 8, &sent);
                assert_eq!(existed, model.remove(&(subscriber % 8, sent)), "unsubscribe disagrees with the model");
            }
            Op::Leave { subscriber } => {
                index.remove_subscriber(subscriber % 8);
                model.retain(|(s, _)| *s != subscriber % 8);
            }
            Op::Route { topic } => {
                let topic = topic.render();
                if topic::validate_topic_name(&topic).is_ok() {
                    let deliveries = index.route(&topic, None);
                    for d in &deliveries {
                        assert!(d.qos <= 2);
                        let own: Vec<&String> = model.iter().filter(|(s, _)| *s == d.subscriber).map(|(_, f)| f).collect();
                        assert!(!own.is_empty(), "a delivery to a subscriber without subscriptions");
                    }
                }
            }
            Op::Deliver { qos } => {
                let qos = qos % 2 + 1;
                if inflight.start(qos).is_none() && inflight.enqueue(qos).is_ok() {
                    queued += 1;
                }
            }
            Op::PubAck { id } | Op::PubComp { id } if id == 0 => {}
            Op::PubAck { id } => {
                let _ = inflight.on_puback(NonZeroU16::new(id).unwrap_or(NonZeroU16::MIN));
            }
            Op::PubRec { id } => {
                if let Some(id) = NonZeroU16::new(id) {
                    let _ = inflight.on_pubrec(id);
                }
            }
            Op::PubComp { id } => {
                let _ = inflight.on_pubcomp(NonZeroU16::new(id).unwrap_or(NonZeroU16::MIN));
            }
            Op::Drain => {
                while let Some(qos) = inflight.next_queued() {
                    queued -= 1;
                    assert!(inflight.start(qos).is_some(), "room was promised");
                }
            }
            Op::AliasIn { topic, alias } => {
                let _ = aliases_in.resolve(&topic.render().into(), alias);
            }
            Op::AliasOut { topic } => {
                let _ = aliases_out.for_topic(&topic.render());
            }
            Op::Connect { clean, expiry } => {
                let request = ConnectRequest {
                    client_id: "c".into(),
                    clean_start: clean,
                    expiry_secs: u32::from(expiry),
                    protocol: 5,
                    will: None,
                    host: "p0".into(),
                };
                let outcome = session::connect(stored.as_ref(), request, now);
                assert!(outcome.state.generation > stored.as_ref().map_or(0, |s| s.generation));
                assert!(!(clean && outcome.session_present), "clean start resumed a session");
                stored = Some(outcome.state);
            }
            Op::Disconnect { normal, expiry } => {
                if let Some(state) = &stored {
                    let departure = if normal { Departure::Normal } else { Departure::Abnormal };
                    stored = match session::disconnect(state, departure, expiry.map(u32::from), now) {
                        DisconnectOutcome::Kept(state) => Some(state),
                        DisconnectOutcome::Ended { .. } => None,
                    };
                }
            }
            Op::Tick { ms } => {
                now += i64::from(ms);
                if let Some(state) = &stored
                    && state.disconnected_at_ms.is_some()
                    && let session::Due::Expire(_) = session::due(state, now)
                {
                    stored = None;
                }
            }
            Op::Authorize { filter, topic, identity, role } => {
                let (filter, topic) = (filter.render(), topic.render());
                let valid_filter = topic::validate_topic_filter(&filter).is_ok();
                if valid_filter && topic::validate_topic_name(&topic).is_ok() {
                    // covers(f, t) for a topic name is matching; overlap too.
                    assert_eq!(covers(&filter, &topic), topic::matches(&filter, &topic), "{filter} / {topic}");
                    assert_eq!(overlap(&filter, &topic), topic::matches(&filter, &topic), "{filter} ~ {topic}");
                }
                if valid_filter && topic::validate_topic_filter(&topic).is_ok() && covers(&filter, &topic) {
                    assert!(overlap(&filter, &topic), "{filter} covers {topic} without overlapping it");
                }
                let policy = Policy::new(
                    vec![Grant { action: Action::Publish, filter: filter.clone(), guard: "jwt".into(), roles: vec!["r".into()] }],
                    vec![Deny { filter: "x/#".into(), actions: vec![Action::Subscribe] }],
                );
                let who = Principal {
                    guard: Some("jwt".into()),
                    identity: Some(identity.render()),
                    roles: if role { ["r".to_owned()].into() } else { BTreeSet::new() },
                };
                if topic::validate_topic_name(&topic).is_ok() && valid_filter {
                    let allowed = policy.publish(&who, &topic).is_ok();
                    if !role && topic::matches(&filter.replace("{identity}", "+"), &topic) {
                        assert!(!allowed, "granted without the role: {filter} / {topic}");
                    }
                }
                let _ = policy.subscribe(&who, &topic);
            }
        }
        assert!(inflight.in_flight() <= usize::from(WINDOW), "window overrun");
        assert!(queued <= QUEUE, "queue overrun");
        assert_eq!(index.len(), model.len(), "index and model disagree");
    }
});
