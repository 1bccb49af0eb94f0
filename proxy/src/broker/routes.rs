//! Which Kafka messages topic an MQTT topic lives in, after Zilla's `mqtt-kafka` routes:
//!
//! ```yaml
//! routes:
//!   - when:
//!       - publish:   [{ topic: place/+/device/# }]
//!       - subscribe: [{ topic: place/+/device/# }]
//!     with: { messages: mqtt-devices }
//!     guarded: { jwt: [devices] }
//! ```
//!
//! A PUBLISH goes to the first route with a matching `publish` filter, else to the default
//! messages topic. A SUBSCRIBE reads every topic a matching message could be in. As in
//! Zilla, a route without any condition matches everything. Keeping the `publish` and
//! `subscribe` filters of a route consistent is the configuration's responsibility.

use super::topic::{self, TopicError};

/// One `when` entry of a route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Condition {
    /// Topic filters PUBLISH topic names are matched against.
    Publish(Vec<String>),
    /// Topic filters SUBSCRIBE filters are compared with.
    Subscribe(Vec<String>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub when: Vec<Condition>,
    /// The Kafka messages topic (`with.messages`).
    pub messages: String,
    /// Roles a client needs to use the route (enforced by the caller).
    pub guarded: Vec<String>,
}

/// Where a PUBLISH goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteTarget {
    pub messages_topic: String,
    pub guarded: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("routes[{route}].when: invalid topic filter {filter:?}: {source}")]
    InvalidFilter {
        route: usize,
        filter: String,
        source: TopicError,
    },
    #[error("routes[{route}].when: a publish or subscribe condition needs at least one topic")]
    EmptyCondition { route: usize },
    #[error("{field}: invalid Kafka topic name {name:?}: {reason}")]
    InvalidKafkaTopic {
        field: String,
        name: String,
        reason: String,
    },
}

#[derive(Clone, Debug)]
struct CompiledRoute {
    target: RouteTarget,
    /// `None`: the route has no conditions and matches everything.
    publish: Option<Vec<String>>,
    subscribe: Option<Vec<String>>,
}

/// The routes of the proxy plus the default messages topic.
#[derive(Clone, Debug)]
pub struct RouteTable {
    default: RouteTarget,
    routes: Vec<CompiledRoute>,
}

impl RouteTable {
    /// Checks every filter and topic name; errors name the offending config key.
    pub fn new(default_messages_topic: String, routes: Vec<Route>) -> Result<Self, RouteError> {
        check_kafka_topic("topics.messages", &default_messages_topic)?;
        let routes = routes
            .into_iter()
            .enumerate()
            .map(|(i, route)| compile(i, route))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            default: RouteTarget {
                messages_topic: default_messages_topic,
                guarded: Vec::new(),
            },
            routes,
        })
    }

    /// The default messages topic.
    pub fn default_target(&self) -> &RouteTarget {
        &self.default
    }

    /// Where a PUBLISH on the topic name `topic` goes: the first route with a matching
    /// publish filter, else the default.
    pub fn for_publish(&self, topic: &str) -> &RouteTarget {
        self.routes
            .iter()
            .find(|r| {
                r.publish
                    .as_ref()
                    .is_none_or(|filters| filters.iter().any(|f| topic::matches(f, topic)))
            })
            .map_or(&self.default, |r| &r.target)
    }

    /// The Kafka topics a SUBSCRIBE to `filter` must read, default first, without
    /// duplicates: every route whose subscribe filters overlap `filter`, and the default
    /// topic unless one route's subscribe filter covers all of `filter`.
    /// A `$share/{group}/` prefix is ignored.
    pub fn for_subscribe(&self, filter: &str) -> Vec<&str> {
        let filter = match topic::parse_shared(filter) {
            Ok(Some(shared)) => shared.filter,
            _ => filter,
        };
        let mut covered = false;
        let mut topics: Vec<&str> = Vec::new();
        for route in &self.routes {
            let (overlap, cover) = match &route.subscribe {
                None => (true, true),
                Some(filters) => (
                    filters.iter().any(|f| topic::overlaps(f, filter)),
                    filters.iter().any(|f| topic::covers(f, filter)),
                ),
            };
            covered |= cover;
            if overlap {
                push_distinct(&mut topics, &route.target.messages_topic);
            }
        }
        if !covered {
            // `push_distinct` would append it; the default goes first.
            topics.retain(|t| *t != self.default.messages_topic);
            topics.insert(0, &self.default.messages_topic);
        }
        topics
    }

    /// Every messages topic, default first, without duplicates: one fan-out consumer each.
    pub fn all_messages_topics(&self) -> Vec<&str> {
        let mut topics = vec![self.default.messages_topic.as_str()];
        for route in &self.routes {
            push_distinct(&mut topics, &route.target.messages_topic);
        }
        topics
    }
}

fn push_distinct<'a>(topics: &mut Vec<&'a str>, topic: &'a str) {
    if !topics.contains(&topic) {
        topics.push(topic);
    }
}

fn compile(index: usize, route: Route) -> Result<CompiledRoute, RouteError> {
    check_kafka_topic(&format!("routes[{index}].with.messages"), &route.messages)?;
    let has_conditions = !route.when.is_empty();
    let mut publish = Vec::new();
    let mut subscribe = Vec::new();
    for condition in route.when {
        let (filters, into) = match condition {
            Condition::Publish(filters) => (filters, &mut publish),
            Condition::Subscribe(filters) => (filters, &mut subscribe),
        };
        if filters.is_empty() {
            return Err(RouteError::EmptyCondition { route: index });
        }
        for filter in filters {
            if let Err(source) = topic::validate_topic_filter(&filter) {
                return Err(RouteError::InvalidFilter {
                    route: index,
                    filter,
                    source,
                });
            }
            into.push(filter);
        }
    }
    Ok(CompiledRoute {
        target: RouteTarget {
            messages_topic: route.messages,
            guarded: route.guarded,
        },
        publish: has_conditions.then_some(publish),
        subscribe: has_conditions.then_some(subscribe),
    })
}

/// Kafka's own rules for topic names, so a typo fails at start-up, not at the first PUBLISH.
fn check_kafka_topic(field: &str, name: &str) -> Result<(), RouteError> {
    crate::config::validate_kafka_topic_name(name).map_err(|reason| RouteError::InvalidKafkaTopic {
        field: field.to_owned(),
        name: name.to_owned(),
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filters(filters: &[&str]) -> Vec<String> {
        filters.iter().map(|f| (*f).to_owned()).collect()
    }

    fn route(publish: &[&str], subscribe: &[&str], messages: &str) -> Route {
        let mut when = Vec::new();
        if !publish.is_empty() {
            when.push(Condition::Publish(filters(publish)));
        }
        if !subscribe.is_empty() {
            when.push(Condition::Subscribe(filters(subscribe)));
        }
        Route {
            when,
            messages: messages.to_owned(),
            guarded: vec!["devices".to_owned()],
        }
    }

    fn table() -> RouteTable {
        RouteTable::new(
            "mqtt-messages".to_owned(),
            vec![
                route(&["place/+/device/#"], &["place/+/device/#"], "mqtt-devices"),
                route(
                    &["place/+/sensor/#", "sensors/#"],
                    &["place/+/sensor/#", "sensors/#"],
                    "mqtt-sensors",
                ),
                route(&["place/1/#"], &["place/1/#"], "mqtt-devices"),
            ],
        )
        .unwrap()
    }

    #[test]
    fn publish_takes_the_first_matching_route() {
        let table = table();
        let target = table.for_publish("place/1/device/x");
        assert_eq!(target.messages_topic, "mqtt-devices");
        assert_eq!(target.guarded, ["devices"]);
        assert_eq!(table.for_publish("place/1/sensor/t").messages_topic, "mqtt-sensors");
        assert_eq!(table.for_publish("sensors").messages_topic, "mqtt-sensors");
        assert_eq!(table.for_publish("place/1/other").messages_topic, "mqtt-devices");
        let default = table.for_publish("place/2/other");
        assert_eq!(default.messages_topic, "mqtt-messages");
        assert!(default.guarded.is_empty());
        assert_eq!(table.default_target(), default);
    }

    #[test]
    fn subscribe_reads_every_topic_a_match_could_be_in() {
        let table = table();
        assert_eq!(table.for_subscribe("place/2/device/+"), ["mqtt-devices"]);
        assert_eq!(table.for_subscribe("place/+/device/#"), ["mqtt-devices"]);
        assert_eq!(table.for_subscribe("$share/g/place/+/device/#"), ["mqtt-devices"]);
        assert_eq!(table.for_subscribe("sensors/a"), ["mqtt-sensors"]);
        assert_eq!(
            table.for_subscribe("place/+/+/x"),
            ["mqtt-messages", "mqtt-devices", "mqtt-sensors"]
        );
        assert_eq!(
            table.for_subscribe("#"),
            ["mqtt-messages", "mqtt-devices", "mqtt-sensors"]
        );
        assert_eq!(
            table.for_subscribe("place/1/sensor/t"),
            ["mqtt-sensors", "mqtt-devices"]
        );
        assert_eq!(table.for_subscribe("place/1/x"), ["mqtt-devices"]);
        assert_eq!(table.for_subscribe("other/#"), ["mqtt-messages"]);
        assert_eq!(table.for_subscribe("$SYS/#"), ["mqtt-messages"]);
    }

    #[test]
    fn default_topic_may_also_be_a_route_topic() {
        let table = RouteTable::new(
            "mqtt-messages".to_owned(),
            vec![
                route(&["a/#"], &["a/#"], "mqtt-a"),
                route(&["b/#"], &["b/#"], "mqtt-messages"),
            ],
        )
        .unwrap();
        assert_eq!(table.for_subscribe("+/x"), ["mqtt-messages", "mqtt-a"]);
        assert_eq!(table.for_subscribe("b/x"), ["mqtt-messages"]);
        assert_eq!(table.all_messages_topics(), ["mqtt-messages", "mqtt-a"]);
    }

    #[test]
    fn publish_only_routes_are_not_read_by_subscribers() {
        let table = RouteTable::new("m".to_owned(), vec![route(&["a/#"], &[], "mqtt-a")]).unwrap();
        assert_eq!(table.for_publish("a/b").messages_topic, "mqtt-a");
        assert_eq!(table.for_subscribe("a/b"), ["m"]);
    }

    #[test]
    fn a_route_without_conditions_matches_everything() {
        let table = RouteTable::new(
            "m".to_owned(),
            vec![route(&["a/#"], &["a/#"], "mqtt-a"), route(&[], &[], "mqtt-rest")],
        )
        .unwrap();
        assert_eq!(table.for_publish("a/b").messages_topic, "mqtt-a");
        assert_eq!(table.for_publish("b").messages_topic, "mqtt-rest");
        assert_eq!(table.for_subscribe("a/b"), ["mqtt-a", "mqtt-rest"]);
        assert_eq!(table.for_subscribe("#"), ["mqtt-a", "mqtt-rest"]);
        assert_eq!(table.all_messages_topics(), ["m", "mqtt-a", "mqtt-rest"]);
    }

    #[test]
    fn all_messages_topics_are_distinct_default_first() {
        assert_eq!(
            table().all_messages_topics(),
            ["mqtt-messages", "mqtt-devices", "mqtt-sensors"]
        );
        let bare = RouteTable::new("m".to_owned(), Vec::new()).unwrap();
        assert_eq!(bare.all_messages_topics(), ["m"]);
        assert_eq!(bare.for_subscribe("#"), ["m"]);
        assert_eq!(bare.for_publish("x").messages_topic, "m");
    }

    #[test]
    fn invalid_routes_are_rejected_with_their_path() {
        let err = RouteTable::new(
            "m".to_owned(),
            vec![route(&["a"], &[], "ok"), route(&["a/#/b"], &[], "x")],
        )
        .unwrap_err();
        assert_eq!(
            err,
            RouteError::InvalidFilter {
                route: 1,
                filter: "a/#/b".to_owned(),
                source: TopicError::HashNotLast
            }
        );
        assert!(
            err.to_string()
                .starts_with("routes[1].when: invalid topic filter \"a/#/b\": ")
        );
        let err = RouteTable::new(
            "m".to_owned(),
            vec![Route {
                when: vec![Condition::Subscribe(Vec::new())],
                messages: "x".to_owned(),
                guarded: Vec::new(),
            }],
        )
        .unwrap_err();
        assert_eq!(err, RouteError::EmptyCondition { route: 0 });
        let err = RouteTable::new("m".to_owned(), vec![route(&["a"], &[], "bad topic")]).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("routes[0].with.messages: invalid Kafka topic name \"bad topic\"")
        );
        assert!(RouteTable::new(String::new(), Vec::new()).is_err());
        assert!(RouteTable::new("..".to_owned(), Vec::new()).is_err());
        assert!(RouteTable::new("x".repeat(250), Vec::new()).is_err());
        assert!(RouteTable::new("a.B_c-9".to_owned(), Vec::new()).is_ok());
    }
}
