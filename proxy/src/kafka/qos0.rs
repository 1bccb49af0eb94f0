//! QoS 0 in the shared producer queue. Every PUBLISH of the process goes through one
//! librdkafka producer whose queue is bounded (`queue.buffering.max.messages`, `.kbytes`).
//! While Kafka is away that queue fills; without a bound of their own, the QoS 0 PUBLISHes
//! of one flooding client would take all of it and every QoS 1/2 PUBLISH would be refused
//! (a negative PUBACK) although Kafka may be back in a second. So QoS 0 records may hold at
//! most half the queue ([`share`]); beyond that they are dropped before they reach the
//! producer (QoS 0 promises nothing more), counted by reason in
//! `mqtt_kafka_qos0_dropped_total{reason}` (`backlog`: over the share; `kafka`: the
//! producer refused or could not deliver it), and logged at most once per 10 s with the
//! number dropped since the last line.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::log_limit::{LogLimit, Verdict};
use crate::metrics::Metrics;

/// librdkafka's defaults for `queue.buffering.max.messages` and `.kbytes`.
const QUEUE_MESSAGES_DEFAULT: usize = 100_000;
const QUEUE_KBYTES_DEFAULT: usize = 1_048_576;
/// The most bytes QoS 0 records hold in the queue, whatever the queue allows.
const BYTES_CAP: usize = 64 << 20;
/// What a record costs in the queue besides key and value (headers, librdkafka's own).
pub const RECORD_OVERHEAD: usize = 128;

/// The records and bytes of the producer queue QoS 0 may use, from the producer's
/// settings: half of each, bytes at most 64 MiB.
pub fn share(properties: &[(String, String)]) -> (usize, usize) {
    let setting = |name: &str, default: usize| {
        properties
            .iter()
            .rev()
            .find(|(key, _)| key == name)
            .and_then(|(_, value)| value.trim().parse::<usize>().ok())
            .unwrap_or(default)
    };
    let messages = setting("queue.buffering.max.messages", QUEUE_MESSAGES_DEFAULT);
    let kbytes = setting("queue.buffering.max.kbytes", QUEUE_KBYTES_DEFAULT);
    (
        (messages / 2).max(1),
        (kbytes.saturating_mul(1024) / 2).clamp(1, BYTES_CAP),
    )
}

/// QoS 0 records in the producer queue now, against their share.
pub struct Qos0Budget {
    max_records: usize,
    max_bytes: usize,
    records: AtomicUsize,
    bytes: AtomicUsize,
    metrics: Arc<Metrics>,
    lines: LogLimit,
}

/// A place in the budget, given back when dropped (once the record was delivered or failed).
pub struct Reservation {
    budget: Arc<Qos0Budget>,
    records: usize,
    bytes: usize,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.records.fetch_sub(self.records, Ordering::AcqRel);
        self.budget.bytes.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

impl Qos0Budget {
    pub fn new((max_records, max_bytes): (usize, usize), metrics: Arc<Metrics>) -> Self {
        Self {
            max_records,
            max_bytes,
            records: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
            metrics,
            lines: LogLimit::new(Duration::from_secs(10), 1),
        }
    }

    /// A place for `records` records of `bytes` in all, or `None` (counted and logged as a
    /// drop) when QoS 0 holds its share of the queue already.
    pub fn reserve(self: &Arc<Self>, records: usize, bytes: usize) -> Option<Reservation> {
        let held = self.records.fetch_add(records, Ordering::AcqRel);
        let held_bytes = self.bytes.fetch_add(bytes, Ordering::AcqRel);
        let reservation = Reservation {
            budget: Arc::clone(self),
            records,
            bytes,
        };
        // Always let one record through: a record larger than the byte share still goes
        // when nothing else of QoS 0 waits.
        if held > 0 && (held + records > self.max_records || held_bytes + bytes > self.max_bytes) {
            drop(reservation);
            self.dropped("backlog", &"QoS 0 holds its share of the Kafka producer queue");
            return None;
        }
        Some(reservation)
    }

    /// A QoS 0 PUBLISH that did not reach Kafka.
    pub fn dropped(&self, reason: &'static str, error: &dyn std::fmt::Display) {
        self.metrics.qos0_dropped.with_label_values(&[reason]).inc();
        if let Verdict::Write { left_out } = self.lines.check() {
            tracing::warn!(
                reason,
                %error,
                dropped_since_last_line = left_out,
                "QoS 0 PUBLISH not stored in Kafka (Kafka slow or away); at most one line per 10 s"
            );
        }
    }

    /// QoS 0 records in the producer queue now.
    pub fn held(&self) -> usize {
        self.records.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn the_share_is_half_the_queue_with_bytes_capped() {
        assert_eq!(share(&[]), (50_000, 64 << 20));
        assert_eq!(
            share(&props(&[
                ("queue.buffering.max.messages", "2000"),
                ("queue.buffering.max.kbytes", "1024")
            ])),
            (1000, 512 * 1024)
        );
        assert_eq!(share(&props(&[("queue.buffering.max.messages", "junk")])).0, 50_000);
    }

    #[test]
    fn qos0_gets_its_share_and_no_more_and_places_come_back() {
        let metrics = Arc::new(Metrics::new());
        let budget = Arc::new(Qos0Budget::new((3, 1000), Arc::clone(&metrics)));
        let held: Vec<Reservation> = (0..3).filter_map(|_| budget.reserve(1, 10)).collect();
        assert_eq!(held.len(), 3);
        assert!(budget.reserve(1, 10).is_none(), "over the record share");
        drop(held);
        assert_eq!(budget.held(), 0);
        let big = budget
            .reserve(1, 5000)
            .expect("one record larger than the share goes alone");
        assert!(budget.reserve(1, 10).is_none(), "over the byte share");
        drop(big);
        assert_eq!(
            metrics.qos0_dropped.with_label_values(&["backlog"]).get(),
            2,
            "every drop is counted"
        );
    }
}
