//! Prometheus metrics of one proxy process, served by `admin` at `/metrics`.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Every metric the proxy exports.
pub struct Metrics {
    registry: Registry,
    /// Connections past CONNACK.
    pub connections: IntGauge,
    /// Of those, connections at rest: idle, held as a small state instead of a task until
    /// the client or the hub has something for them.
    pub resting: IntGauge,
    /// CONNECTs answered, by CONNACK reason (`success`, `0x87`, ...).
    pub connects: IntCounterVec,
    /// PUBLISH packets received, by QoS.
    pub published: IntCounterVec,
    /// PUBLISH packets sent to subscribers.
    pub delivered: IntCounter,
    /// Deliveries dropped, by reason (`queue_full`, `expired`, `too_large`).
    pub dropped: IntCounterVec,
    /// Kafka produce failures.
    pub kafka_errors: IntCounter,
    /// Seconds from handing a record to the producer to Kafka's acknowledgement (acks=all),
    /// by what it carries (`qos0`, `qos1`: QoS 1 and 2, `session`): the part of a PUBACK's
    /// delay that Kafka and the network take, as the waiting task sees it (a busy process
    /// adds its own delay in polling; librdkafka's `statistics.interval.ms` gives Kafka's
    /// round trip alone).
    pub kafka_produce_seconds: HistogramVec,
    /// QoS 0 PUBLISHes that did not reach Kafka, by reason (`backlog`: QoS 0 held its
    /// share of the producer queue; `kafka`: refused or not delivered).
    pub qos0_dropped: IntCounterVec,
    /// Records that could not become MQTT messages, by reason (`null_key`, `bad_key`).
    pub records_skipped: IntCounterVec,
    /// Retained messages in the materialised view.
    pub retained: IntGauge,
    /// Connections closed by the server, by DISCONNECT reason code.
    pub disconnects: IntCounterVec,
    /// Kafka fan-out consumers of this process that exist now: one per messages topic,
    /// whatever the number of MQTT subscribers.
    pub fanout_consumers: IntGauge,
    /// Kafka clients replaced because they stopped working, by client (`producer`,
    /// `fan-out <topic>`, `retained`).
    pub kafka_client_replacements: IntCounterVec,
    /// Times a subscriber fell behind the fan-out and switched to reading Kafka itself.
    pub lagging: IntCounter,
    /// Records read by catch-ups (lagging subscribers, resumed sessions).
    pub replayed: IntCounter,
    /// Fan-out records no subscription here matched: passed over without being decoded.
    pub fanout_unmatched: IntCounter,
    /// Will messages published.
    pub wills: IntCounter,
    /// Sessions deleted because they expired.
    pub sessions_expired: IntCounter,
    /// MQTT 5 clients sent to another process, by when (`connect`, `moved`, `shutdown`).
    pub redirects: IntCounterVec,
    /// Sessions-topic partitions this process owns.
    pub owned_partitions: IntGauge,
    /// Requests the guard or the authorization rules refused, by what (`connect`,
    /// `publish`, `subscribe`, `token_expired`).
    pub auth_refusals: IntCounterVec,
    /// Shared subscriptions with members here (one dispatcher each).
    pub share_dispatchers: IntGauge,
    /// Shared-subscription messages a member left without acknowledging, handed to
    /// another member.
    pub share_handed_back: IntCounter,
    /// Times this process took over a partition of a share and read it again from the
    /// share's stored cursor.
    pub share_resumes: IntCounter,
    /// Times a TLS listener's files changed, by listener and result (`success`: the next
    /// connections get the new certificate; `failure`: unusable, the last good one stays).
    pub tls_reloads: IntCounterVec,
    /// When the certificate a TLS listener serves expires (seconds since the epoch), by
    /// listener.
    pub tls_certificate_expiry: IntGaugeVec,
}

/// Upper bounds of `kafka_produce_seconds`: fine where a healthy acks=all round trip
/// lies (a millisecond or a few), coarse beyond.
const PRODUCE_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

// Names and help texts are constants, so construction can only fail on a programming
// error that the unit test below catches; `expect` states that.
fn gauge(name: &str, help: &str) -> IntGauge {
    IntGauge::new(name, help).expect("valid metric definition")
}

fn counter(name: &str, help: &str) -> IntCounter {
    IntCounter::new(name, help).expect("valid metric definition")
}

fn counter_vec(name: &str, help: &str, label: &str) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid metric definition")
}

impl Metrics {
    pub fn new() -> Self {
        let metrics = Self {
            registry: Registry::new_custom(Some("mqtt_kafka".into()), None).expect("valid registry prefix"),
            connections: gauge("connections", "MQTT connections past CONNACK"),
            resting: gauge(
                "connections_resting",
                "MQTT connections idle and at rest (a small state, not a task)",
            ),
            connects: counter_vec(
                "connects_total",
                "CONNECT packets answered, by CONNACK reason",
                "reason",
            ),
            published: counter_vec("published_total", "PUBLISH packets received, by QoS", "qos"),
            delivered: counter("delivered_total", "PUBLISH packets sent to subscribers"),
            dropped: counter_vec("dropped_total", "deliveries dropped, by reason", "reason"),
            kafka_errors: counter("kafka_produce_errors_total", "Kafka produce failures"),
            kafka_produce_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "kafka_produce_seconds",
                    "from handing a record to the producer to Kafka's acknowledgement, by kind",
                )
                .buckets(PRODUCE_BUCKETS.to_vec()),
                &["kind"],
            )
            .expect("valid metric definition"),
            qos0_dropped: counter_vec(
                "qos0_dropped_total",
                "QoS 0 PUBLISHes not stored in Kafka, by reason",
                "reason",
            ),
            records_skipped: counter_vec(
                "records_skipped_total",
                "Kafka records not deliverable as MQTT, by reason",
                "reason",
            ),
            retained: gauge("retained_messages", "retained messages in the view"),
            disconnects: counter_vec(
                "server_disconnects_total",
                "connections closed by the server, by reason code",
                "reason",
            ),
            fanout_consumers: gauge("fanout_consumers", "Kafka fan-out consumers (one per messages topic)"),
            kafka_client_replacements: counter_vec(
                "kafka_client_replacements_total",
                "Kafka clients replaced by new ones because they stopped working, by client",
                "client",
            ),
            lagging: counter(
                "subscriber_lags_total",
                "times a subscriber fell behind and caught up from Kafka",
            ),
            replayed: counter("replayed_records_total", "records read by catch-ups from Kafka"),
            fanout_unmatched: counter(
                "fanout_unmatched_records_total",
                "fan-out records no subscription here matched, passed over undecoded",
            ),
            wills: counter("wills_published_total", "will messages published"),
            sessions_expired: counter("sessions_expired_total", "sessions deleted because they expired"),
            redirects: counter_vec(
                "redirects_total",
                "MQTT 5 clients sent to another process, by when",
                "when",
            ),
            owned_partitions: gauge(
                "owned_session_partitions",
                "sessions-topic partitions this process owns",
            ),
            auth_refusals: counter_vec(
                "auth_refusals_total",
                "requests refused by the guard or the authorization rules, by what",
                "what",
            ),
            share_dispatchers: gauge("share_dispatchers", "shared subscriptions with members on this process"),
            share_handed_back: counter(
                "share_handed_back_total",
                "shared-subscription messages a member left unacknowledged, handed to another",
            ),
            share_resumes: counter(
                "share_resumes_total",
                "share partitions taken over and read again from the stored cursor",
            ),
            tls_reloads: IntCounterVec::new(
                Opts::new(
                    "tls_reloads_total",
                    "TLS listener files that changed, by listener and result (failure: the last good certificate stays)",
                ),
                &["listener", "result"],
            )
            .expect("valid metric definition"),
            tls_certificate_expiry: IntGaugeVec::new(
                Opts::new(
                    "tls_certificate_expiry_timestamp_seconds",
                    "when the certificate a TLS listener serves expires, by listener",
                ),
                &["listener"],
            )
            .expect("valid metric definition"),
        };
        let collectors: [Box<dyn prometheus::core::Collector>; 27] = [
            Box::new(metrics.kafka_produce_seconds.clone()),
            Box::new(metrics.tls_reloads.clone()),
            Box::new(metrics.tls_certificate_expiry.clone()),
            Box::new(metrics.auth_refusals.clone()),
            Box::new(metrics.share_dispatchers.clone()),
            Box::new(metrics.share_handed_back.clone()),
            Box::new(metrics.share_resumes.clone()),
            Box::new(metrics.qos0_dropped.clone()),
            Box::new(metrics.redirects.clone()),
            Box::new(metrics.owned_partitions.clone()),
            Box::new(metrics.wills.clone()),
            Box::new(metrics.sessions_expired.clone()),
            Box::new(metrics.lagging.clone()),
            Box::new(metrics.replayed.clone()),
            Box::new(metrics.fanout_unmatched.clone()),
            Box::new(metrics.kafka_client_replacements.clone()),
            Box::new(metrics.fanout_consumers.clone()),
            Box::new(metrics.connections.clone()),
            Box::new(metrics.resting.clone()),
            Box::new(metrics.connects.clone()),
            Box::new(metrics.published.clone()),
            Box::new(metrics.delivered.clone()),
            Box::new(metrics.dropped.clone()),
            Box::new(metrics.kafka_errors.clone()),
            Box::new(metrics.records_skipped.clone()),
            Box::new(metrics.retained.clone()),
            Box::new(metrics.disconnects.clone()),
        ];
        for collector in collectors {
            metrics.registry.register(collector).expect("metric names are unique");
        }
        metrics
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "metrics encoding failed");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_registered_and_rendered_with_the_prefix() {
        let m = Metrics::new();
        m.connections.inc();
        m.published.with_label_values(&["1"]).inc();
        m.records_skipped.with_label_values(&["null_key"]).inc();
        m.kafka_produce_seconds.with_label_values(&["qos1"]).observe(0.004);
        let text = m.render();
        assert!(
            text.contains("mqtt_kafka_kafka_produce_seconds_bucket{kind=\"qos1\",le=\"0.005\"} 1"),
            "{text}"
        );
        assert!(text.contains("mqtt_kafka_connections 1"), "{text}");
        assert!(text.contains("mqtt_kafka_published_total{qos=\"1\"} 1"), "{text}");
        assert!(
            text.contains("mqtt_kafka_records_skipped_total{reason=\"null_key\"} 1"),
            "{text}"
        );
    }
}
