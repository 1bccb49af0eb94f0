//! Prometheus metrics of the operator. Each [`Metrics`] has its own registry, so that two
//! operator instances in one process (the leader-election test) count separately.

use prometheus::{Encoder, Histogram, HistogramOpts, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

/// The operator's metrics.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Reconciles by result (`success`, `error`).
    pub reconciles: IntCounterVec,
    /// Reconcile errors by reason (`kubernetes`, `kafka`, `apply`, `invalid_spec`, ...).
    pub errors: IntCounterVec,
    /// Reconcile duration in seconds.
    pub duration: Histogram,
    /// Object writes by kind and outcome (`applied`, `unchanged`, `deleted`): `unchanged`
    /// growing while `applied` stays put is the operator not looping on its own writes.
    pub writes: IntCounterVec,
    /// 1 while this instance holds the leader lease and runs the controller.
    pub leader: IntGauge,
}

impl Metrics {
    /// Fresh metrics in their own registry.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let reconciles = IntCounterVec::new(
            Opts::new(
                "mqtt_kafka_operator_reconciles_total",
                "Reconciles of MqttKafkaProxy resources",
            ),
            &["result"],
        )?;
        let errors = IntCounterVec::new(
            Opts::new(
                "mqtt_kafka_operator_reconcile_errors_total",
                "Reconcile errors by reason",
            ),
            &["reason"],
        )?;
        let duration = Histogram::with_opts(
            HistogramOpts::new("mqtt_kafka_operator_reconcile_duration_seconds", "Reconcile duration")
                .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
        )?;
        let writes = IntCounterVec::new(
            Opts::new(
                "mqtt_kafka_operator_object_writes_total",
                "Owned objects by kind and write outcome",
            ),
            &["kind", "outcome"],
        )?;
        let leader = IntGauge::new("mqtt_kafka_operator_leader", "1 while this instance is the leader")?;
        registry.register(Box::new(reconciles.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(writes.clone()))?;
        registry.register(Box::new(leader.clone()))?;
        Ok(Metrics {
            registry,
            reconciles,
            errors,
            duration,
            writes,
            leader,
        })
    }

    /// The metrics in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for want of space; a metric family that cannot be
        // encoded is left out rather than failing the scrape.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    /// Total reconciles so far (both results).
    pub fn reconcile_count(&self) -> u64 {
        ["success", "error"]
            .iter()
            .map(|r| self.reconciles.with_label_values(&[*r]).get())
            .sum()
    }

    /// Writes of `outcome` so far, over every kind the operator writes.
    pub fn write_count(&self, outcome: &str) -> u64 {
        KINDS
            .iter()
            .map(|kind| self.writes.with_label_values(&[*kind, outcome]).get())
            .sum()
    }
}

/// The kinds of object the operator writes (the `kind` label of `writes`).
pub const KINDS: &[&str] = &[
    "ConfigMap",
    "Service",
    "StatefulSet",
    "PodDisruptionBudget",
    "ServiceAccount",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_exposed_in_text_format() {
        let metrics = Metrics::new().expect("metrics");
        metrics.reconciles.with_label_values(&["success"]).inc();
        metrics.errors.with_label_values(&["kafka"]).inc();
        metrics.duration.observe(0.2);
        metrics.writes.with_label_values(&["StatefulSet", "applied"]).inc();
        metrics.writes.with_label_values(&["Service", "applied"]).inc_by(2);
        metrics.leader.set(1);
        let text = metrics.encode();
        assert!(
            text.contains("mqtt_kafka_operator_reconciles_total{result=\"success\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("mqtt_kafka_operator_reconcile_errors_total{reason=\"kafka\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("mqtt_kafka_operator_reconcile_duration_seconds_count 1"),
            "{text}"
        );
        assert!(text.contains("mqtt_kafka_operator_leader 1"), "{text}");
        assert_eq!(metrics.reconcile_count(), 1);
        assert_eq!(metrics.write_count("applied"), 3);
        assert_eq!(metrics.write_count("unchanged"), 0);
    }
}
