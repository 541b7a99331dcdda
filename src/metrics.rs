//! Prometheus metrics of the operator, served on `/metrics`.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::error::Error;

/// Label set of the reconcile errors counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// `Error::metric_label` of the failure.
    pub reason: String,
}

/// The operator's metrics and the registry that serves them.
pub struct Metrics {
    /// Reconciles started.
    pub reconciles: Counter,
    /// Reconcile failures by reason.
    pub failures: Family<ErrorLabels, Counter>,
    /// Reconcile duration in seconds.
    pub duration: Histogram,
    /// 1 while this replica holds the leader Lease (or runs without leader election).
    pub leader: Gauge,
    /// The registry all of the above are registered in.
    pub registry: Registry,
}

impl Default for Metrics {
    fn default() -> Self {
        let reconciles = Counter::default();
        let failures = Family::<ErrorLabels, Counter>::default();
        let duration = Histogram::new([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]);
        let leader = Gauge::default();
        let mut registry = Registry::with_prefix("orchestrator_operator");
        registry.register("reconciles", "Reconciles started", reconciles.clone());
        registry.register("reconcile_errors", "Reconcile failures by reason", failures.clone());
        registry.register("reconcile_duration_seconds", "Reconcile duration", duration.clone());
        registry.register("leader", "1 while this replica is the active leader", leader.clone());
        Self {
            reconciles,
            failures,
            duration,
            leader,
            registry,
        }
    }
}

impl Metrics {
    /// Counts one failed reconcile.
    pub fn record_failure(&self, error: &Error) {
        self.failures
            .get_or_create(&ErrorLabels {
                reason: error.metric_label().into(),
            })
            .inc();
    }

    /// Records a finished reconcile's duration.
    pub fn record_duration(&self, elapsed: Duration) {
        self.duration.observe(elapsed.as_secs_f64());
    }

    /// The metrics in Prometheus text format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_failures_by_reason() {
        let metrics = Metrics::default();
        metrics.reconciles.inc();
        metrics.record_failure(&Error::Malformed("x".into()));
        metrics.record_duration(Duration::from_millis(20));
        let text = metrics.encode();
        assert!(text.contains("orchestrator_operator_reconciles_total 1"), "{text}");
        assert!(
            text.contains(r#"orchestrator_operator_reconcile_errors_total{reason="malformed"} 1"#),
            "{text}"
        );
        assert!(
            text.contains("orchestrator_operator_reconcile_duration_seconds_count 1"),
            "{text}"
        );
    }
}
