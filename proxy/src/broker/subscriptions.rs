//! The subscription index: which connections want a message published on a topic.
//!
//! One index serves all fan-out consumers of a process, so [`SubscriptionIndex::route`]
//! takes `&self` (shared-subscription round-robin counters are atomics) and can run under
//! a read lock. Filters are stored in a trie over topic levels, so routing a message visits
//! only the trie nodes whose filter prefix matches its topic: its cost does not grow with
//! the number of subscriptions that do not match.
//!
//! Trie nodes live in an arena and are walked with explicit stacks: a filter may have tens
//! of thousands of levels (`+/+/+/...` fits in 64 KiB), which would overflow the stack of a
//! recursive walk or of the recursive drop of a boxed tree.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::ops::ControlFlow;
use std::str::Split;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::topic::{self, SHARED_PREFIX, TopicError};

/// One subscription as the client asked for it (MQTT 5 SUBSCRIBE options).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscription {
    /// The topic filter, without the `$share/{group}/` prefix of a shared subscription.
    pub filter: String,
    /// The granted maximum QoS.
    pub qos: u8,
    pub no_local: bool,
    pub retain_as_published: bool,
    /// Only used when subscribing (which retained messages to send); kept for the session.
    pub retain_handling: u8,
    pub identifier: Option<u32>,
    /// `Some(group)` for `$share/{group}/{filter}`.
    pub share_group: Option<String>,
}

impl Subscription {
    /// A subscription to `filter_as_sent` (which may be `$share/{group}/{filter}`) with
    /// `qos` and every other option off, after validating the filter.
    pub fn parse(filter_as_sent: &str, qos: u8) -> Result<Self, TopicError> {
        let (filter, share_group) = match topic::parse_shared(filter_as_sent)? {
            Some(shared) => (shared.filter, Some(shared.group.to_owned())),
            None => {
                topic::validate_topic_filter(filter_as_sent)?;
                (filter_as_sent, None)
            }
        };
        Ok(Self {
            filter: filter.to_owned(),
            qos,
            no_local: false,
            retain_as_published: false,
            retain_handling: 0,
            identifier: None,
            share_group,
        })
    }

    /// The filter as the client sent it: `$share/{group}/{filter}` for a shared one.
    pub fn filter_as_sent(&self) -> String {
        match &self.share_group {
            Some(group) => format!("{SHARED_PREFIX}{group}/{}", self.filter),
            None => self.filter.clone(),
        }
    }
}

/// One message to send to one subscriber.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery<S> {
    pub subscriber: S,
    /// The highest QoS granted by the matching subscriptions; the message goes out at the
    /// lower of this and the QoS it was published with.
    pub qos: u8,
    /// Some matching subscription has Retain As Published.
    pub retain_as_published: bool,
    /// The identifiers of all matching subscriptions, ascending, without duplicates.
    pub identifiers: Vec<u32>,
    /// This delivery comes from a shared subscription (the subscriber was picked from its
    /// group). A subscriber can get one shared and one non-shared delivery of a message.
    pub shared: bool,
}

/// What routing needs of a subscription, kept in the trie.
#[derive(Clone, Copy, Debug)]
struct Grant {
    qos: u8,
    no_local: bool,
    retain_as_published: bool,
    identifier: Option<u32>,
}

impl From<&Subscription> for Grant {
    fn from(sub: &Subscription) -> Self {
        Self {
            qos: sub.qos,
            no_local: sub.no_local,
            retain_as_published: sub.retain_as_published,
            identifier: sub.identifier,
        }
    }
}

impl<S> Delivery<S> {
    fn new(subscriber: S, grant: Grant, shared: bool) -> Self {
        Self {
            subscriber,
            qos: grant.qos,
            retain_as_published: grant.retain_as_published,
            identifiers: grant.identifier.into_iter().collect(),
            shared,
        }
    }
}

/// What routing does with a share (`$share/{group}/{filter}`) that matches a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShareRoute<S> {
    /// Another process delivers it.
    Elsewhere,
    /// One member here gets it, picked round-robin among those that can take it.
    Member,
    /// `S` gets it (at the message's QoS) and hands it to a member itself: the share's
    /// dispatcher, which keeps it until a member acknowledges it.
    Via(S),
}

/// The members of one share group on one filter.
#[derive(Debug)]
struct Group<S> {
    /// `$share/{group}/{filter}`: the share's name across processes.
    share: Box<str>,
    /// In order of joining; the round-robin walks this order.
    members: Vec<(S, Grant)>,
    next: AtomicUsize,
}

impl<S: Copy> Group<S> {
    /// The next member in round-robin order that `can_take` a message; `None` when none can.
    fn pick_strict(&self, can_take: &dyn Fn(S) -> bool) -> Option<(S, Grant)> {
        let count = self.members.len();
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        let step = (0..count).find(|step| can_take(self.members[(turn + step) % count].0))?;
        self.next.fetch_add(step, Ordering::Relaxed);
        self.members.get((turn + step) % count).copied()
    }

    /// The next member in round-robin order that `can_take` a message; when none can, the
    /// member whose turn it is (its delivery then fails where it is counted).
    fn pick(&self, can_take: &dyn Fn(S) -> bool) -> Option<(S, Grant)> {
        let count = self.members.len();
        if count == 0 {
            return None;
        }
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        let Some(step) = (0..count).find(|step| can_take(self.members[(turn + step) % count].0)) else {
            return self.members.get(turn % count).copied();
        };
        // The next turn starts after the member chosen, so the others share its turns.
        self.next.fetch_add(step, Ordering::Relaxed);
        self.members.get((turn + step) % count).copied()
    }
}

type NodeId = usize;
const ROOT: NodeId = 0;

#[derive(Debug)]
struct Node<S> {
    children: HashMap<Box<str>, NodeId>,
    plus: Option<NodeId>,
    /// The `#` child ends a filter, so it only ever holds subscriptions.
    hash: Option<NodeId>,
    subscribers: HashMap<S, Grant>,
    /// Ordered so that routing is deterministic.
    groups: BTreeMap<Box<str>, Group<S>>,
}

impl<S> Default for Node<S> {
    fn default() -> Self {
        Self {
            children: HashMap::new(),
            plus: None,
            hash: None,
            subscribers: HashMap::new(),
            groups: BTreeMap::new(),
        }
    }
}

impl<S> Node<S> {
    fn is_empty(&self) -> bool {
        self.children.is_empty()
            && self.plus.is_none()
            && self.hash.is_none()
            && self.subscribers.is_empty()
            && self.groups.is_empty()
    }

    fn child(&self, level: &str) -> Option<NodeId> {
        match level {
            "+" => self.plus,
            "#" => self.hash,
            _ => self.children.get(level).copied(),
        }
    }
}

#[derive(Debug)]
struct SubscriberEntry {
    client_id: Box<str>,
    /// Keyed by the filter as sent, which is what UNSUBSCRIBE names.
    subscriptions: BTreeMap<String, Subscription>,
}

/// All subscriptions of the connections of one process, keyed by a subscriber id `S`
/// (the caller's connection id).
#[derive(Debug)]
pub struct SubscriptionIndex<S> {
    /// Trie nodes; `nodes[ROOT]` is the root, freed slots are listed in `free`.
    nodes: Vec<Node<S>>,
    free: Vec<NodeId>,
    subscribers: HashMap<S, SubscriberEntry>,
    len: usize,
}

impl<S: Copy + Eq + Hash + Ord> Default for SubscriptionIndex<S> {
    fn default() -> Self {
        Self::new()
    }
}

impl<S: Copy + Eq + Hash + Ord> SubscriptionIndex<S> {
    pub fn new() -> Self {
        Self {
            nodes: vec![Node::default()],
            free: Vec::new(),
            subscribers: HashMap::new(),
            len: 0,
        }
    }

    /// Number of subscriptions (shared ones count once per member).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of subscribers with at least one subscription.
    pub fn subscriber_count(&self) -> usize {
        self.subscribers.len()
    }

    /// Number of trie nodes in use, the root included (for tests and metrics).
    pub fn node_count(&self) -> usize {
        self.nodes.len() - self.free.len()
    }

    /// The client id given when `subscriber` last subscribed, while it has subscriptions.
    pub fn client_id(&self, subscriber: S) -> Option<&str> {
        self.subscribers.get(&subscriber).map(|e| &*e.client_id)
    }

    /// The subscriptions of `subscriber`, ordered by the filter as sent.
    pub fn subscriber_filters(&self, subscriber: S) -> impl Iterator<Item = &Subscription> + '_ {
        self.subscribers
            .get(&subscriber)
            .into_iter()
            .flat_map(|e| e.subscriptions.values())
    }

    /// Adds or replaces the subscription of `subscriber` (whose MQTT client id is
    /// `client_id`, needed for No Local) to `sub.filter` in `sub.share_group`. Returns
    /// true when it replaced one, as SUBSCRIBE to an existing filter does (MQTT 5 3.8.4).
    ///
    /// `sub.filter` must be a valid topic filter ([`Subscription::parse`] checks it).
    pub fn insert(&mut self, subscriber: S, client_id: &str, sub: Subscription) -> bool {
        debug_assert!(
            topic::validate_topic_filter(&sub.filter).is_ok(),
            "invalid filter {}",
            sub.filter
        );
        let grant = Grant::from(&sub);
        let id = self.node_or_insert(&sub.filter);
        let node = &mut self.nodes[id];
        let replaced = match &sub.share_group {
            None => node.subscribers.insert(subscriber, grant).is_some(),
            Some(group) => {
                let share = sub.filter_as_sent().into_boxed_str();
                let group = node.groups.entry(group.as_str().into()).or_insert_with(|| Group {
                    share,
                    members: Vec::new(),
                    next: AtomicUsize::new(0),
                });
                match group.members.iter_mut().find(|(s, _)| *s == subscriber) {
                    Some(member) => {
                        member.1 = grant;
                        true
                    }
                    None => {
                        group.members.push((subscriber, grant));
                        false
                    }
                }
            }
        };
        let entry = self.subscribers.entry(subscriber).or_insert_with(|| SubscriberEntry {
            client_id: client_id.into(),
            subscriptions: BTreeMap::new(),
        });
        if *entry.client_id != *client_id {
            entry.client_id = client_id.into();
        }
        entry.subscriptions.insert(sub.filter_as_sent(), sub);
        if !replaced {
            self.len += 1;
        }
        replaced
    }

    /// Removes the subscription of `subscriber` to `filter_as_sent` (as in UNSUBSCRIBE:
    /// `$share/g/a/b` names the shared one). Returns whether there was one.
    pub fn remove(&mut self, subscriber: S, filter_as_sent: &str) -> bool {
        let Some(entry) = self.subscribers.get_mut(&subscriber) else {
            return false;
        };
        let Some(sub) = entry.subscriptions.remove(filter_as_sent) else {
            return false;
        };
        if entry.subscriptions.is_empty() {
            self.subscribers.remove(&subscriber);
        }
        self.remove_from_trie(subscriber, &sub);
        self.len -= 1;
        true
    }

    /// Removes every subscription of `subscriber`, returning them (e.g. to persist or log).
    pub fn remove_subscriber(&mut self, subscriber: S) -> Vec<Subscription> {
        let Some(entry) = self.subscribers.remove(&subscriber) else {
            return Vec::new();
        };
        let subs: Vec<Subscription> = entry.subscriptions.into_values().collect();
        for sub in &subs {
            self.remove_from_trie(subscriber, sub);
        }
        self.len -= subs.len();
        subs
    }

    /// The deliveries of a message published on `topic` by the MQTT client
    /// `publisher_client_id` (`None` for records from plain Kafka producers).
    ///
    /// Each subscriber gets at most one delivery from its non-shared subscriptions, with the
    /// highest granted QoS and all their identifiers (MQTT 5 3.3.4); No Local subscriptions
    /// of the publisher itself do not count. Each (share group, filter) pair that matches
    /// picks one member round-robin. Sorted by subscriber.
    pub fn route(&self, topic: &str, publisher_client_id: Option<&str>) -> Vec<Delivery<S>> {
        self.route_sharing(topic, publisher_client_id, &|_| ShareRoute::Member, &|_| true)
    }

    /// [`route`](Self::route), where each shared subscription (`$share/{group}/{filter}`)
    /// that matches goes where `share_route` says: nowhere here (another process of the
    /// cluster serves it for this message), to its dispatcher, or to a member that
    /// `can_take` it if one can (a member that is behind is passed over, so the message
    /// goes to one that is not instead of waiting behind it).
    pub fn route_sharing(
        &self,
        topic: &str,
        publisher_client_id: Option<&str>,
        share_route: &dyn Fn(&str) -> ShareRoute<S>,
        can_take: &dyn Fn(S) -> bool,
    ) -> Vec<Delivery<S>> {
        let mut plain: Vec<(S, Grant)> = Vec::new();
        let mut shared: Vec<Delivery<S>> = Vec::new();
        let _ = self.walk::<()>(topic, |node| {
            for (&subscriber, &grant) in &node.subscribers {
                if grant.no_local && publisher_client_id.is_some() && self.client_id(subscriber) == publisher_client_id
                {
                    continue;
                }
                plain.push((subscriber, grant));
            }
            // MQTT 5 forbids No Local on shared subscriptions, so it is not checked there.
            for group in node.groups.values().filter(|g| !g.members.is_empty()) {
                match share_route(&group.share) {
                    ShareRoute::Elsewhere => {}
                    ShareRoute::Member => {
                        if let Some((subscriber, grant)) = group.pick(can_take) {
                            shared.push(Delivery::new(subscriber, grant, true));
                        }
                    }
                    // The dispatcher takes the message as published: each member's grant
                    // applies when it is handed on (`pick_member`).
                    ShareRoute::Via(dispatcher) => shared.push(Delivery {
                        subscriber: dispatcher,
                        qos: 2,
                        retain_as_published: true,
                        identifiers: Vec::new(),
                        shared: true,
                    }),
                }
            }
            ControlFlow::Continue(())
        });
        let mut deliveries = merge(plain);
        if !shared.is_empty() {
            deliveries.append(&mut shared);
            deliveries.sort_by(|a, b| {
                (a.subscriber, a.shared, a.qos, &a.identifiers).cmp(&(b.subscriber, b.shared, b.qos, &b.identifiers))
            });
        }
        deliveries
    }

    /// Every subscriber with a non-shared subscription matching `topic` (No Local not
    /// applied), each once: who a record read again from Kafka may be for.
    pub fn plain_subscribers(&self, topic: &str) -> Vec<S> {
        let mut found = Vec::new();
        let _ = self.walk::<()>(topic, |node| {
            found.extend(node.subscribers.keys().copied());
            ControlFlow::Continue(())
        });
        found
    }

    /// The delivery to `subscriber` alone from its non-shared subscriptions, by the same
    /// rules as [`route`](Self::route): for replaying what a persistent session missed.
    /// Costs a match per subscription of `subscriber`.
    pub fn route_subscriber(
        &self,
        subscriber: S,
        topic: &str,
        publisher_client_id: Option<&str>,
    ) -> Option<Delivery<S>> {
        let entry = self.subscribers.get(&subscriber)?;
        let own = publisher_client_id.is_some_and(|p| *entry.client_id == *p);
        let plain = entry
            .subscriptions
            .values()
            .filter(|s| s.share_group.is_none() && !(own && s.no_local) && topic::matches(&s.filter, topic))
            .map(|s| (subscriber, Grant::from(s)))
            .collect();
        merge(plain).pop()
    }

    /// A member of `share` (`$share/{group}/{filter}`) that `can_take` a message, the next
    /// in round-robin order, with what its subscription grants; `None` when none can.
    pub fn pick_member(&self, share: &str, can_take: &dyn Fn(S) -> bool) -> Option<Delivery<S>> {
        let (subscriber, grant) = self.group(share)?.pick_strict(can_take)?;
        Some(Delivery::new(subscriber, grant, true))
    }

    /// How many members `share` has here.
    pub fn member_count(&self, share: &str) -> usize {
        self.group(share).map_or(0, |g| g.members.len())
    }

    /// The shares with members here whose filter matches `topic`.
    pub fn matching_shares(&self, topic: &str) -> Vec<&str> {
        let mut found = Vec::new();
        let _ = self.walk::<()>(topic, |node| {
            found.extend(
                node.groups
                    .values()
                    .filter(|g| !g.members.is_empty())
                    .map(|g| &*g.share),
            );
            ControlFlow::Continue(())
        });
        found
    }

    fn group(&self, share: &str) -> Option<&Group<S>> {
        let shared = topic::parse_shared(share).ok()??;
        let mut id = ROOT;
        for level in shared.filter.split('/') {
            id = self.nodes[id].child(level)?;
        }
        self.nodes[id].groups.get(shared.group)
    }

    /// The shares (`$share/{group}/{filter}`) that have members here, sorted.
    pub fn shares(&self) -> Vec<String> {
        let mut shares: Vec<String> = self
            .nodes
            .iter()
            .flat_map(|n| n.groups.values())
            .filter(|g| !g.members.is_empty())
            .map(|g| g.share.to_string())
            .collect();
        shares.sort();
        shares.dedup();
        shares
    }

    /// Whether any subscription (ignoring No Local) matches `topic`: a cheap test that
    /// stops at the first match.
    pub fn has_match(&self, topic: &str) -> bool {
        self.walk(topic, |node| {
            if node.subscribers.is_empty() && node.groups.is_empty() {
                ControlFlow::Continue(())
            } else {
                ControlFlow::Break(())
            }
        })
        .is_break()
    }

    /// Calls `visit` on every node whose filter matches `topic`.
    fn walk<'a, B>(&'a self, topic: &str, mut visit: impl FnMut(&'a Node<S>) -> ControlFlow<B>) -> ControlFlow<B> {
        // Filters starting with a wildcard do not match `$` topics (MQTT 5 4.7.2).
        let dollar = topic.starts_with('$');
        let mut stack: Vec<(NodeId, Split<'_, char>)> = vec![(ROOT, topic.split('/'))];
        while let Some((id, mut levels)) = stack.pop() {
            let node = &self.nodes[id];
            let wildcards = !(dollar && id == ROOT);
            // `#` matches the remaining levels, however many, including none: `a/#`
            // matches `a`.
            if let Some(hash) = node.hash.filter(|_| wildcards) {
                visit(&self.nodes[hash])?;
            }
            match levels.next() {
                None => visit(node)?,
                Some(level) => {
                    if let Some(plus) = node.plus.filter(|_| wildcards) {
                        stack.push((plus, levels.clone()));
                    }
                    if let Some(&child) = node.children.get(level) {
                        stack.push((child, levels));
                    }
                }
            }
        }
        ControlFlow::Continue(())
    }

    fn node_or_insert(&mut self, filter: &str) -> NodeId {
        let mut id = ROOT;
        for level in filter.split('/') {
            id = match self.nodes[id].child(level) {
                Some(child) => child,
                None => {
                    let child = self.alloc();
                    let node = &mut self.nodes[id];
                    match level {
                        "+" => node.plus = Some(child),
                        "#" => node.hash = Some(child),
                        _ => {
                            node.children.insert(level.into(), child);
                        }
                    }
                    child
                }
            };
        }
        id
    }

    fn alloc(&mut self) -> NodeId {
        match self.free.pop() {
            Some(id) => id,
            None => {
                self.nodes.push(Node::default());
                self.nodes.len() - 1
            }
        }
    }

    fn remove_from_trie(&mut self, subscriber: S, sub: &Subscription) {
        // (parent, level leading to the child) down to the filter's node, for pruning.
        let mut path: Vec<(NodeId, &str)> = Vec::new();
        let mut id = ROOT;
        for level in sub.filter.split('/') {
            let Some(child) = self.nodes[id].child(level) else {
                debug_assert!(false, "subscription {} missing from the trie", sub.filter);
                return;
            };
            path.push((id, level));
            id = child;
        }
        let node = &mut self.nodes[id];
        match &sub.share_group {
            None => {
                node.subscribers.remove(&subscriber);
            }
            Some(name) => {
                if let Some(group) = node.groups.get_mut(name.as_str()) {
                    group.members.retain(|(s, _)| *s != subscriber);
                    if group.members.is_empty() {
                        node.groups.remove(name.as_str());
                    }
                }
            }
        }
        while let Some((parent, level)) = path.pop() {
            if !self.nodes[id].is_empty() {
                break;
            }
            let node = &mut self.nodes[parent];
            match level {
                "+" => node.plus = None,
                "#" => node.hash = None,
                _ => {
                    node.children.remove(level);
                }
            }
            // Release the maps' memory; the slot itself is reused by the next insert.
            self.nodes[id] = Node::default();
            self.free.push(id);
            id = parent;
        }
    }
}

/// Folds the non-shared matches into one delivery per subscriber, sorted by subscriber.
fn merge<S: Copy + Ord>(mut plain: Vec<(S, Grant)>) -> Vec<Delivery<S>> {
    plain.sort_unstable_by_key(|(s, _)| *s);
    let mut deliveries: Vec<Delivery<S>> = Vec::new();
    for (subscriber, grant) in plain {
        match deliveries.last_mut() {
            Some(d) if d.subscriber == subscriber => {
                d.qos = d.qos.max(grant.qos);
                d.retain_as_published |= grant.retain_as_published;
                d.identifiers.extend(grant.identifier);
            }
            _ => deliveries.push(Delivery::new(subscriber, grant, false)),
        }
    }
    for d in &mut deliveries {
        if d.identifiers.len() > 1 {
            d.identifiers.sort_unstable();
            d.identifiers.dedup();
        }
    }
    deliveries
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(filter: &str, qos: u8) -> Subscription {
        Subscription::parse(filter, qos).unwrap()
    }

    fn with_id(filter: &str, qos: u8, id: u32) -> Subscription {
        Subscription {
            identifier: Some(id),
            ..sub(filter, qos)
        }
    }

    fn subscribers(deliveries: &[Delivery<u64>]) -> Vec<u64> {
        deliveries.iter().map(|d| d.subscriber).collect()
    }

    fn index(subs: &[(u64, &str)]) -> SubscriptionIndex<u64> {
        let mut index = SubscriptionIndex::new();
        for (s, filter) in subs {
            index.insert(*s, &format!("client-{s}"), sub(filter, 1));
        }
        index
    }

    #[test]
    fn index_can_be_shared_between_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<SubscriptionIndex<u64>>();
    }

    #[test]
    fn parse_and_filter_as_sent() {
        let shared = sub("$share/g/a/+", 2);
        assert_eq!(shared.filter, "a/+");
        assert_eq!(shared.share_group.as_deref(), Some("g"));
        assert_eq!(shared.filter_as_sent(), "$share/g/a/+");
        assert_eq!(sub("a/#", 0).filter_as_sent(), "a/#");
        assert_eq!(Subscription::parse("a/#/b", 0), Err(TopicError::HashNotLast));
        assert_eq!(Subscription::parse("$share/g", 0), Err(TopicError::MissingSharedFilter));
    }

    #[test]
    fn wildcards() {
        let index = index(&[
            (1, "sport/tennis/player1"),
            (2, "sport/tennis/+"),
            (3, "sport/#"),
            (4, "#"),
            (5, "+/+/player1"),
            (6, "sport/+"),
            (7, "+"),
            (8, "sport/tennis/player1/#"),
        ]);
        assert_eq!(
            subscribers(&index.route("sport/tennis/player1", None)),
            [1, 2, 3, 4, 5, 8]
        );
        assert_eq!(subscribers(&index.route("sport", None)), [3, 4, 7]);
        assert_eq!(subscribers(&index.route("sport/", None)), [3, 4, 6]);
        assert_eq!(subscribers(&index.route("news", None)), [4, 7]);
        assert_eq!(subscribers(&index.route("/tennis/player1", None)), [4, 5]);
        assert!(index.has_match("anything"));
        assert_eq!(index.len(), 8);
        assert_eq!(index.subscriber_count(), 8);
    }

    #[test]
    fn dollar_topics() {
        let index = index(&[
            (1, "#"),
            (2, "+/monitor/Clients"),
            (3, "$SYS/#"),
            (4, "$SYS/monitor/+"),
            (5, "+/#"),
        ]);
        assert_eq!(subscribers(&index.route("$SYS/monitor/Clients", None)), [3, 4]);
        assert_eq!(subscribers(&index.route("$SYS", None)), [3]);
        assert_eq!(subscribers(&index.route("x/monitor/Clients", None)), [1, 2, 5]);
        assert!(index.route("$other", None).is_empty());
        assert!(!index.has_match("$other"));
    }

    #[test]
    fn overlapping_subscriptions_give_one_delivery() {
        let mut index = SubscriptionIndex::new();
        index.insert(1u64, "c1", with_id("a/+", 1, 7));
        index.insert(1, "c1", with_id("a/#", 2, 3));
        index.insert(
            1,
            "c1",
            Subscription {
                retain_as_published: true,
                ..sub("+/b", 0)
            },
        );
        index.insert(2, "c2", with_id("a/b", 0, 9));
        index.insert(2, "c2", with_id("a/+", 1, 9));
        let deliveries = index.route("a/b", None);
        assert_eq!(
            deliveries,
            [
                Delivery {
                    subscriber: 1,
                    qos: 2,
                    retain_as_published: true,
                    identifiers: vec![3, 7],
                    shared: false
                },
                Delivery {
                    subscriber: 2,
                    qos: 1,
                    retain_as_published: false,
                    identifiers: vec![9],
                    shared: false
                },
            ]
        );
        assert_eq!(index.route_subscriber(1, "a/b", None), Some(deliveries[0].clone()));
        assert_eq!(index.route_subscriber(2, "a/b", None), Some(deliveries[1].clone()));
        assert_eq!(index.route_subscriber(2, "x/y", None), None);
        assert_eq!(index.route_subscriber(3, "a/b", None), None);
    }

    #[test]
    fn resubscribing_replaces() {
        let mut index = SubscriptionIndex::new();
        assert!(!index.insert(1u64, "c1", with_id("a", 0, 1)));
        assert!(index.insert(1, "c1", with_id("a", 2, 2)));
        assert!(!index.insert(1, "c1", with_id("$share/g/a", 1, 3)));
        assert!(index.insert(1, "c1", with_id("$share/g/a", 1, 4)));
        assert_eq!(index.len(), 2);
        let deliveries = index.route("a", None);
        assert_eq!(deliveries.len(), 2);
        assert_eq!(
            (deliveries[0].qos, &deliveries[0].identifiers, deliveries[0].shared),
            (2, &vec![2], false)
        );
        assert_eq!(
            (deliveries[1].qos, &deliveries[1].identifiers, deliveries[1].shared),
            (1, &vec![4], true)
        );
        let filters: Vec<String> = index.subscriber_filters(1).map(Subscription::filter_as_sent).collect();
        assert_eq!(filters, ["$share/g/a", "a"]);
    }

    #[test]
    fn no_local() {
        let mut index = SubscriptionIndex::new();
        index.insert(
            1u64,
            "alice",
            Subscription {
                no_local: true,
                ..with_id("chat/#", 1, 1)
            },
        );
        index.insert(1, "alice", with_id("chat/+", 0, 2));
        index.insert(
            2,
            "bob",
            Subscription {
                no_local: true,
                ..sub("chat/#", 1)
            },
        );
        // Alice's own message reaches her only through the subscription without No Local.
        let deliveries = index.route("chat/room", Some("alice"));
        assert_eq!(subscribers(&deliveries), [1, 2]);
        assert_eq!((deliveries[0].qos, &deliveries[0].identifiers), (0, &vec![2]));
        assert_eq!(
            index.route_subscriber(1, "chat/room", Some("alice")),
            Some(deliveries[0].clone())
        );
        assert_eq!(subscribers(&index.route("chat/room", Some("bob"))), [1]);
        assert_eq!(index.route("chat/room", None)[0].identifiers, [1, 2]);
        assert_eq!(subscribers(&index.route("chat/a/b", Some("alice"))), [2]);
        assert_eq!(subscribers(&index.route("chat/a/b", Some("carol"))), [1, 2]);
    }

    #[test]
    fn shared_round_robin() {
        let mut index = SubscriptionIndex::new();
        for s in [10u64, 20, 30] {
            index.insert(s, &format!("c{s}"), sub("$share/workers/jobs/+", 1));
        }
        index.insert(20, "c20", sub("jobs/#", 0));
        index.insert(40, "c40", sub("$share/audit/jobs/#", 2));
        let picks: Vec<u64> = (0..6)
            .map(|_| {
                let deliveries = index.route("jobs/1", None);
                assert!(deliveries.iter().any(|d| d.subscriber == 20 && !d.shared));
                assert!(deliveries.iter().any(|d| d.subscriber == 40 && d.shared && d.qos == 2));
                let workers: Vec<u64> = deliveries
                    .iter()
                    .filter(|d| d.shared && d.subscriber != 40)
                    .map(|d| d.subscriber)
                    .collect();
                assert_eq!(workers.len(), 1, "{deliveries:?}");
                workers[0]
            })
            .collect();
        assert_eq!(picks, [10, 20, 30, 10, 20, 30]);
        // Shared groups skip No Local and members can leave.
        assert!(index.remove(20, "$share/workers/jobs/+"));
        let picks: Vec<u64> = (0..4)
            .flat_map(|_| index.route("jobs/2", Some("c10")))
            .filter(|d| d.shared && d.subscriber != 40)
            .map(|d| d.subscriber)
            .collect();
        assert_eq!(picks.len(), 4);
        assert!(picks.contains(&10) && picks.contains(&30));
        // The same group name on another filter is another group.
        index.insert(50, "c50", sub("$share/workers/jobs/#", 1));
        let deliveries = index.route("jobs/3", None);
        assert_eq!(deliveries.iter().filter(|d| d.shared).count(), 3);
        assert!(index.route("other", None).is_empty());
    }

    #[test]
    fn plain_subscribers_are_those_whose_own_filters_match() {
        let mut index = SubscriptionIndex::new();
        index.insert(1u64, "c1", sub("a/+", 1));
        index.insert(1, "c1", sub("a/#", 1));
        index.insert(2, "c2", sub("a/b", 0));
        index.insert(3, "c3", sub("$share/g/a/b", 1));
        index.insert(4, "c4", sub("x/#", 1));
        let mut found = index.plain_subscribers("a/b");
        found.sort_unstable();
        found.dedup();
        assert_eq!(found, [1, 2], "shares and other filters are not candidates");
        assert!(index.plain_subscribers("b").is_empty());
    }

    #[test]
    fn a_share_member_that_cannot_take_a_message_is_passed_over() {
        let mut index = SubscriptionIndex::new();
        for s in [10u64, 20, 30] {
            index.insert(s, &format!("c{s}"), sub("$share/workers/jobs/+", 1));
        }
        let pick = |can_take: &dyn Fn(u64) -> bool| {
            let deliveries = index.route_sharing("jobs/1", None, &|_| ShareRoute::Member, can_take);
            assert_eq!(deliveries.len(), 1, "{deliveries:?}");
            deliveries[0].subscriber
        };
        // 20 is behind: its turns go to the next member, every message still goes to one.
        let picks: Vec<u64> = (0..6).map(|_| pick(&|s| s != 20)).collect();
        assert_eq!(picks, [10, 30, 10, 30, 10, 30]);
        // Nobody can take it: the member whose turn it is gets it (and fails where counted).
        let picks: Vec<u64> = (0..3).map(|_| pick(&|_| false)).collect();
        assert_eq!(picks, [10, 20, 30]);
    }

    #[test]
    fn removal_prunes_the_trie() {
        let mut index: SubscriptionIndex<u64> = SubscriptionIndex::new();
        let initial = index.node_count();
        assert_eq!(initial, 1);
        let filters = [
            "a/b/c",
            "a/b",
            "a/+/c/#",
            "#",
            "+",
            "a/b/c/d/e",
            "$share/g/a/b/c",
            "$share/h/x/+",
        ];
        for (i, f) in filters.iter().enumerate() {
            index.insert(1, "c1", with_id(f, 1, u32::try_from(i).unwrap()));
            index.insert(2, "c2", sub(f, 0));
        }
        assert!(index.node_count() > initial);
        assert!(!index.remove(1, "a/b/c/d"));
        assert!(!index.remove(3, "a/b/c"));
        for f in filters {
            assert!(index.remove(1, f), "{f}");
        }
        assert!(!index.remove(1, "a/b/c"));
        assert_eq!(index.len(), filters.len());
        assert_eq!(index.client_id(1), None);
        let removed = index.remove_subscriber(2);
        assert_eq!(removed.len(), filters.len());
        assert!(index.is_empty());
        assert_eq!(index.subscriber_count(), 0);
        assert_eq!(index.node_count(), initial);
        assert!(index.route("a/b/c", None).is_empty());
        assert!(!index.has_match("a/b/c"));
        // Freed nodes are reused.
        let arena = index.nodes.len();
        index.insert(3, "c3", sub("a/b/c/d", 0));
        assert_eq!(index.nodes.len(), arena);
        assert_eq!(subscribers(&index.route("a/b/c/d", None)), [3]);
    }

    #[test]
    fn deep_filters_do_not_overflow_the_stack() {
        let mut index: SubscriptionIndex<u64> = SubscriptionIndex::new();
        let deep_filter = vec!["+"; 30_000].join("/");
        let deep_topic = vec!["x"; 30_000].join("/");
        index.insert(1, "c1", sub(&deep_filter, 0));
        assert_eq!(subscribers(&index.route(&deep_topic, None)), [1]);
        assert!(index.remove(1, &deep_filter));
        assert_eq!(index.node_count(), 1);
        index.insert(1, "c1", sub(&deep_filter, 0));
        drop(index);
    }

    #[test]
    fn non_matching_subscriptions_are_not_delivered() {
        let mut index = SubscriptionIndex::new();
        for s in 0..10_000u64 {
            index.insert(s, &format!("c{s}"), sub(&format!("devices/{s}/commands/#"), 1));
        }
        index.insert(10_000, "watcher", sub("devices/+/telemetry", 0));
        index.insert(10_001, "c42-peer", sub("devices/42/commands/reboot", 2));
        assert_eq!(index.len(), 10_002);
        let deliveries = index.route("devices/42/commands/reboot", None);
        assert_eq!(subscribers(&deliveries), [42, 10_001]);
        assert_eq!(subscribers(&index.route("devices/7/telemetry", None)), [10_000]);
        assert!(index.route("devices/10000/commands", None).is_empty());
    }

    #[test]
    fn remove_subscriber_keeps_others() {
        let mut index = index(&[(1, "a/#"), (2, "a/#"), (1, "$share/g/a/+"), (2, "$share/g/a/+")]);
        assert_eq!(index.len(), 4);
        assert_eq!(index.remove_subscriber(1).len(), 2);
        assert!(index.remove_subscriber(1).is_empty());
        assert_eq!(index.len(), 2);
        for _ in 0..3 {
            let deliveries = index.route("a/b", None);
            assert_eq!(subscribers(&deliveries), [2, 2]);
        }
        assert_eq!(index.subscriber_filters(1).count(), 0);
        assert_eq!(index.subscriber_filters(2).count(), 2);
    }
}
