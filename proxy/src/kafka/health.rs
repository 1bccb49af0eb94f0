//! Whether a Kafka client the proxy uses still works, and when to replace it.
//!
//! librdkafka recovers from most broker trouble by itself, but not from all of it: after a
//! broker stall a producer has been seen to fail every delivery and every metadata request
//! for good while other clients reached the same broker (issue 11), and some errors (fatal
//! idempotent-producer errors) end a client by definition. So every client the proxy holds
//! reports what it sees here, readiness reads the verdict, and a client that has failed for
//! [`Policy::replace_after`] is replaced by a new one. This module only decides; the
//! clients in `producer` and `consumer` do the I/O.

use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};

/// When a failing client is replaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// A client that has failed without a success for this long is replaced, and a new
    /// client gets this long before it can be replaced again.
    pub replace_after: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            replace_after: Duration::from_secs(10),
        }
    }
}

/// How long requests must have failed before readiness says so: one lost request (a
/// connection the broker closed, a leader moving) is not an outage.
pub const REPORT_AFTER: Duration = Duration::from_secs(2);

/// What one client has seen since it was created.
#[derive(Clone, Debug)]
pub struct ClientHealth {
    created: Instant,
    /// Since when requests (metadata, fetches) have failed without a success since.
    requests_failing: Option<(Instant, String)>,
    /// Since when deliveries have failed without a delivered record since. Kept apart from
    /// requests: a producer whose metadata requests work can still fail every delivery.
    deliveries_failing: Option<(Instant, String)>,
    /// An error after which the client cannot be used again.
    fatal: Option<String>,
}

impl ClientHealth {
    pub fn new(now: Instant) -> Self {
        Self {
            created: now,
            requests_failing: None,
            deliveries_failing: None,
            fatal: None,
        }
    }

    /// The health a replacement of this client starts with: a new client (it gets the
    /// full period before it can be replaced again), but requests that failed until now
    /// are still failing until the new client gets an answer. Starting clean would say
    /// ready for a moment after every replacement in the middle of an outage.
    pub fn for_replacement(&self, now: Instant) -> Self {
        Self {
            requests_failing: self.requests_failing.clone(),
            ..Self::new(now)
        }
    }

    pub fn request_succeeded(&mut self) {
        self.requests_failing = None;
    }

    pub fn request_failed(&mut self, now: Instant, error: &str) {
        match &mut self.requests_failing {
            Some((_, last)) => error.clone_into(last),
            None => self.requests_failing = Some((now, error.to_owned())),
        }
    }

    pub fn delivery_succeeded(&mut self) {
        self.deliveries_failing = None;
    }

    pub fn delivery_failed(&mut self, now: Instant, error: &str) {
        match &mut self.deliveries_failing {
            Some((_, last)) => error.clone_into(last),
            None => self.deliveries_failing = Some((now, error.to_owned())),
        }
    }

    pub fn fatal(&mut self, error: &str) {
        self.fatal = Some(error.to_owned());
    }

    /// What is wrong, for a person reading `/readyz`; `None` while the client works.
    pub fn problem(&self, now: Instant) -> Option<String> {
        if let Some(error) = &self.fatal {
            return Some(format!("fatal error, being replaced: {error}"));
        }
        let since = |at: &Instant| now.saturating_duration_since(*at).as_secs();
        match (&self.deliveries_failing, &self.requests_failing) {
            (Some((at, error)), _) => Some(format!("cannot deliver records for {} s: {error}", since(at))),
            (None, Some((at, error))) if now.saturating_duration_since(*at) >= REPORT_AFTER => {
                Some(format!("cannot reach Kafka for {} s: {error}", since(at)))
            }
            (None, _) => None,
        }
    }

    /// Whether the client should be replaced now: a fatal error, or failures without a
    /// success for `replace_after`, on a client at least that old.
    pub fn should_replace(&self, now: Instant, policy: &Policy) -> bool {
        if self.fatal.is_some() {
            return true;
        }
        let long = |at: &Instant| now.saturating_duration_since(*at) >= policy.replace_after;
        let failing = [&self.requests_failing, &self.deliveries_failing]
            .into_iter()
            .flatten()
            .any(|(at, _)| long(at));
        failing && long(&self.created)
    }
}

/// Whether a delivery error says the path to Kafka is broken (as opposed to this one record
/// being refused, e.g. too large), so that it counts against the client's health.
pub fn is_connectivity_error(error: &KafkaError) -> bool {
    use RDKafkaErrorCode::*;
    match error.rdkafka_error_code() {
        Some(code) => matches!(
            code,
            MessageTimedOut
                | BrokerTransportFailure
                | AllBrokersDown
                | OperationTimedOut
                | RequestTimedOut
                | NetworkException
                | Fatal
                | LeaderNotAvailable
                | NotLeaderForPartition
                | NotEnoughReplicas
                | NotEnoughReplicasAfterAppend
                | PurgeInflight
                | PurgeQueue
                | TimedOutQueue
                | BrokerDestroy
        ),
        // Errors without a librdkafka code (the client went away, cancelled futures) say
        // nothing about one record either.
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(base: Instant, secs: u64) -> Instant {
        base + Duration::from_secs(secs)
    }

    #[test]
    fn a_working_client_has_no_problem_and_is_kept() {
        let t = Instant::now();
        let h = ClientHealth::new(t);
        assert_eq!(h.problem(at(t, 100)), None);
        assert!(!h.should_replace(at(t, 100), &Policy::default()));
    }

    #[test]
    fn failing_requests_are_reported_after_a_moment_and_replace_the_client_after_the_policy() {
        let t = Instant::now();
        let mut h = ClientHealth::new(t);
        h.request_failed(at(t, 20), "BrokerTransportFailure");
        assert_eq!(h.problem(at(t, 21)), None, "one failed request is not an outage");
        assert_eq!(
            h.problem(at(t, 23)).as_deref(),
            Some("cannot reach Kafka for 3 s: BrokerTransportFailure")
        );
        assert!(!h.should_replace(at(t, 29), &Policy::default()));
        // A later failure keeps the start of the streak but shows the newest error.
        h.request_failed(at(t, 25), "AllBrokersDown");
        assert!(h.should_replace(at(t, 30), &Policy::default()));
        assert!(h.problem(at(t, 30)).is_some_and(|p| p.contains("10 s: AllBrokersDown")));
        h.request_succeeded();
        assert_eq!(h.problem(at(t, 31)), None);
        assert!(!h.should_replace(at(t, 31), &Policy::default()));
    }

    #[test]
    fn failing_deliveries_are_not_cleared_by_working_metadata_requests() {
        let t = Instant::now();
        let mut h = ClientHealth::new(t);
        h.delivery_failed(at(t, 20), "Message timed out");
        h.request_succeeded();
        assert!(
            h.problem(at(t, 21))
                .is_some_and(|p| p.starts_with("cannot deliver records"))
        );
        assert!(h.should_replace(at(t, 30), &Policy::default()));
        h.delivery_succeeded();
        assert!(!h.should_replace(at(t, 30), &Policy::default()));
    }

    #[test]
    fn a_new_client_gets_the_full_period_before_it_is_replaced_again() {
        let t = Instant::now();
        let mut h = ClientHealth::new(t);
        h.request_failed(t, "down");
        assert!(!h.should_replace(at(t, 9), &Policy::default()));
        assert!(h.should_replace(at(t, 10), &Policy::default()));
    }

    #[test]
    fn a_replacement_during_an_outage_is_not_ready_until_it_gets_an_answer() {
        let t = Instant::now();
        let mut h = ClientHealth::new(t);
        h.request_failed(t, "BrokerTransportFailure");
        h.delivery_failed(t, "Message timed out");
        assert!(h.should_replace(at(t, 10), &Policy::default()));
        let mut fresh = h.for_replacement(at(t, 10));
        assert_eq!(
            fresh.problem(at(t, 10)).as_deref(),
            Some("cannot reach Kafka for 10 s: BrokerTransportFailure"),
            "the outage goes on being reported"
        );
        assert!(
            !fresh.should_replace(at(t, 19), &Policy::default()),
            "a full period first"
        );
        assert!(fresh.should_replace(at(t, 20), &Policy::default()));
        fresh.request_succeeded();
        assert_eq!(fresh.problem(at(t, 20)), None);
    }

    #[test]
    fn a_fatal_error_replaces_the_client_at_once() {
        let t = Instant::now();
        let mut h = ClientHealth::new(t);
        h.fatal("producer fenced");
        assert!(h.should_replace(t, &Policy::default()));
        assert!(h.problem(t).is_some_and(|p| p.contains("producer fenced")));
    }

    #[test]
    fn timeouts_count_against_the_client_and_refusals_of_one_record_do_not() {
        assert!(is_connectivity_error(&KafkaError::MessageProduction(
            RDKafkaErrorCode::MessageTimedOut
        )));
        assert!(is_connectivity_error(&KafkaError::MessageProduction(
            RDKafkaErrorCode::BrokerTransportFailure
        )));
        assert!(!is_connectivity_error(&KafkaError::MessageProduction(
            RDKafkaErrorCode::MessageSizeTooLarge
        )));
        assert!(!is_connectivity_error(&KafkaError::MessageProduction(
            RDKafkaErrorCode::UnknownTopicOrPartition
        )));
    }
}
