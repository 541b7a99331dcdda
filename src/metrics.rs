//! Prometheus metrics of the operator, served on `/metrics`.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use crate::error::Error;
use crate::vocabulary::RollStage;

/// A maintenance stage or step that ended, for the metrics. A reconcile that read an older
/// status can report the same one again: `key` tells them apart.
#[derive(Clone, Debug, PartialEq)]
pub struct Finished {
    /// The stage (for a step: the stage it ended in).
    pub(crate) stage: RollStage,
    /// Server and start time: the same stage or step always has the same key.
    pub(crate) key: String,
    /// How long it took.
    pub(crate) seconds: f64,
}

/// Label set of the reconcile errors counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// `Error::metric_label` of the failure.
    pub reason: String,
}

/// Label set of the per-cluster gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabels {
    /// Namespace of the cluster.
    pub namespace: String,
    /// Name of the cluster.
    pub cluster: String,
}

impl ClusterLabels {
    /// The labels of `cr`.
    pub(crate) fn of(cr: &impl kube::Resource) -> Self {
        Self {
            namespace: cr.meta().namespace.clone().unwrap_or_default(),
            cluster: cr.meta().name.clone().unwrap_or_default(),
        }
    }
}

/// What a reconcile saw of one cluster, for its gauges.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ClusterFigures {
    /// `spec.replicas`.
    pub desired: i64,
    /// Servers joined.
    pub joined: i64,
    /// Servers draining.
    pub draining: i64,
    /// Servers flagged (stale row, row without pod, recent restart).
    pub problems: i64,
    /// 1 when the database preflight passes.
    pub database_reachable: i64,
    /// Seconds `MaintenanceBlocked` has been true (0 while it is false).
    pub maintenance_held_seconds: i64,
    /// Jobs the servers reported running at their last heartbeats.
    pub running_jobs: i64,
    /// Age of the oldest heartbeat of a server that is not stopped, by the database clock.
    pub oldest_heartbeat_seconds: f64,
    /// Jobs a server could claim in the cluster's database (`None`: it could not be read).
    pub claimable_jobs: Option<i64>,
    /// Running jobs over the joined servers' worker slots (`None`: nothing to divide by, or
    /// the database could not be read).
    pub busy_ratio: Option<f64>,
}

/// Label set of the maintenance stage histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabels {
    /// `Draining`, `Evicting` or `WaitingReady`.
    pub stage: String,
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
    /// Servers wanted per cluster.
    pub servers_desired: Family<ClusterLabels, Gauge>,
    /// Servers joined per cluster.
    pub servers_joined: Family<ClusterLabels, Gauge>,
    /// Servers draining per cluster.
    pub servers_draining: Family<ClusterLabels, Gauge>,
    /// Servers flagged as unhealthy per cluster.
    pub server_problems: Family<ClusterLabels, Gauge>,
    /// 1 when the cluster's database preflight passes.
    pub database_reachable: Family<ClusterLabels, Gauge>,
    /// Maintenance steps done (servers replaced and joined) per cluster.
    pub maintenance_steps: Family<ClusterLabels, Counter>,
    /// Seconds each maintenance step took, from its drain to its replacement joining.
    pub maintenance_step_duration: Family<ClusterLabels, Histogram>,
    /// Seconds each stage of a maintenance step took.
    pub maintenance_stage_duration: Family<StageLabels, Histogram>,
    /// Seconds the roll of each cluster has been held (`MaintenanceBlocked`).
    pub maintenance_held: Family<ClusterLabels, Gauge>,
    /// Jobs the servers of each cluster reported running.
    pub running_jobs: Family<ClusterLabels, Gauge>,
    /// Age of the oldest heartbeat of each cluster's servers (not stopped), in seconds.
    pub oldest_heartbeat: Family<ClusterLabels, Gauge<f64, AtomicU64>>,
    /// Jobs a server could claim in each cluster's database: the autoscaler's queue depth.
    pub claimable_jobs: Family<ClusterLabels, Gauge>,
    /// Running jobs over the worker slots of each cluster's joined servers.
    pub busy_ratio: Family<ClusterLabels, Gauge<f64, AtomicU64>>,
    /// Seconds a database preflight (with its membership read) takes.
    pub preflight_duration: Histogram,
    /// Connections listening for the servers' notifications (one per database).
    pub database_listeners: Gauge,
    /// Pooled database connections open, over every database.
    pub database_connections: Gauge,
    /// The registry all of the above are registered in.
    pub registry: Registry,
    /// Keys of the last stage and step recorded per cluster.
    last_recorded: Mutex<HashMap<ClusterLabels, (String, String)>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let reconciles = Counter::default();
        let failures = Family::<ErrorLabels, Counter>::default();
        let duration = Histogram::new([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]);
        let leader = Gauge::default();
        let servers_desired = Family::<ClusterLabels, Gauge>::default();
        let servers_joined = Family::<ClusterLabels, Gauge>::default();
        let servers_draining = Family::<ClusterLabels, Gauge>::default();
        let server_problems = Family::<ClusterLabels, Gauge>::default();
        let database_reachable = Family::<ClusterLabels, Gauge>::default();
        let database_listeners = Gauge::default();
        let database_connections = Gauge::default();
        let preflight_duration = Histogram::new([0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 3.0, 10.0]);
        let maintenance_steps = Family::<ClusterLabels, Counter>::default();
        let maintenance_stage_duration =
            Family::<StageLabels, Histogram>::new_with_constructor(stage_histogram as fn() -> Histogram);
        let maintenance_held = Family::<ClusterLabels, Gauge>::default();
        let running_jobs = Family::<ClusterLabels, Gauge>::default();
        let oldest_heartbeat = Family::<ClusterLabels, Gauge<f64, AtomicU64>>::default();
        let claimable_jobs = Family::<ClusterLabels, Gauge>::default();
        let busy_ratio = Family::<ClusterLabels, Gauge<f64, AtomicU64>>::default();
        let maintenance_step_duration =
            Family::<ClusterLabels, Histogram>::new_with_constructor(stage_histogram as fn() -> Histogram);
        let mut registry = Registry::with_prefix("orchestrator_operator");
        registry.register("servers_desired", "Servers wanted per cluster", servers_desired.clone());
        registry.register("servers_joined", "Servers joined per cluster", servers_joined.clone());
        registry.register(
            "servers_draining",
            "Servers draining per cluster",
            servers_draining.clone(),
        );
        registry.register(
            "server_problems",
            "Servers flagged as unhealthy per cluster",
            server_problems.clone(),
        );
        registry.register(
            "database_reachable",
            "1 when the database preflight passes",
            database_reachable.clone(),
        );
        registry.register(
            "database_listeners",
            "Connections listening for the servers' notifications, one per database",
            database_listeners.clone(),
        );
        registry.register(
            "database_connections",
            "Pooled database connections open, over every database (listening ones aside)",
            database_connections.clone(),
        );
        registry.register(
            "preflight_duration_seconds",
            "Duration of a database preflight",
            preflight_duration.clone(),
        );
        registry.register(
            "maintenance_steps",
            "Maintenance steps done (servers replaced and joined) per cluster",
            maintenance_steps.clone(),
        );
        registry.register(
            "maintenance_step_duration_seconds",
            "Duration of a maintenance step, from its drain to its replacement joining",
            maintenance_step_duration.clone(),
        );
        registry.register(
            "maintenance_stage_duration_seconds",
            "Duration of each stage of a maintenance step",
            maintenance_stage_duration.clone(),
        );
        registry.register(
            "maintenance_blocked_seconds",
            "Seconds the roll has been held (MaintenanceBlocked true), per cluster",
            maintenance_held.clone(),
        );
        registry.register(
            "running_jobs",
            "Jobs the servers reported running at their last heartbeats, per cluster",
            running_jobs.clone(),
        );
        registry.register(
            "oldest_heartbeat_seconds",
            "Age of the oldest heartbeat of a server that is not stopped, per cluster (database clock)",
            oldest_heartbeat.clone(),
        );
        registry.register(
            "claimable_jobs",
            "Jobs a server could claim (queued, or under an expired lease) in the cluster's database",
            claimable_jobs.clone(),
        );
        registry.register(
            "busy_ratio",
            "Running jobs over the worker slots (WORKERS) of the cluster's joined servers",
            busy_ratio.clone(),
        );
        registry.register("reconciles", "Reconciles started", reconciles.clone());
        registry.register("reconcile_errors", "Reconcile failures by reason", failures.clone());
        registry.register("reconcile_duration_seconds", "Reconcile duration", duration.clone());
        registry.register("leader", "1 while this replica is the active leader", leader.clone());
        Self {
            reconciles,
            failures,
            duration,
            leader,
            servers_desired,
            servers_joined,
            servers_draining,
            server_problems,
            database_reachable,
            preflight_duration,
            database_listeners,
            database_connections,
            maintenance_steps,
            maintenance_stage_duration,
            maintenance_step_duration,
            maintenance_held,
            running_jobs,
            oldest_heartbeat,
            claimable_jobs,
            busy_ratio,
            registry,
            last_recorded: Mutex::default(),
        }
    }
}

/// Buckets of the maintenance stage histogram: seconds to tens of minutes.
fn stage_histogram() -> Histogram {
    Histogram::new([1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0])
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

    /// Sets the gauges of one cluster.
    pub fn record_cluster(&self, labels: &ClusterLabels, figures: ClusterFigures) {
        self.servers_desired.get_or_create(labels).set(figures.desired);
        self.servers_joined.get_or_create(labels).set(figures.joined);
        self.servers_draining.get_or_create(labels).set(figures.draining);
        self.server_problems.get_or_create(labels).set(figures.problems);
        self.database_reachable
            .get_or_create(labels)
            .set(figures.database_reachable);
        self.maintenance_held
            .get_or_create(labels)
            .set(figures.maintenance_held_seconds);
        self.running_jobs.get_or_create(labels).set(figures.running_jobs);
        self.oldest_heartbeat
            .get_or_create(labels)
            .set(figures.oldest_heartbeat_seconds);
        // Unknown is not zero: a figure that could not be read has no series.
        match figures.claimable_jobs {
            Some(jobs) => {
                self.claimable_jobs.get_or_create(labels).set(jobs);
            }
            None => {
                self.claimable_jobs.remove(labels);
            }
        }
        match figures.busy_ratio {
            Some(ratio) => {
                self.busy_ratio.get_or_create(labels).set(ratio);
            }
            None => {
                self.busy_ratio.remove(labels);
            }
        }
    }

    /// Records the end of a maintenance stage and, when a server was replaced, its step; each
    /// once, even when a reconcile that read an older status reports it again.
    pub fn record_maintenance(&self, labels: &ClusterLabels, stage: Option<&Finished>, step: Option<&Finished>) {
        let mut last = self.last_recorded.lock().unwrap_or_else(|e| e.into_inner());
        let recorded = last.entry(labels.clone()).or_default();
        if let Some(stage) = stage.filter(|s| recorded.0 != s.key) {
            recorded.0 = stage.key.clone();
            self.maintenance_stage_duration
                .get_or_create(&StageLabels {
                    stage: stage.stage.as_str().into(),
                })
                .observe(stage.seconds);
        }
        if let Some(step) = step.filter(|s| recorded.1 != s.key) {
            recorded.1 = step.key.clone();
            self.maintenance_steps.get_or_create(labels).inc();
            self.maintenance_step_duration
                .get_or_create(labels)
                .observe(step.seconds);
        }
    }

    /// The per-cluster gauges of whole servers and flags.
    fn cluster_gauges(&self) -> [&Family<ClusterLabels, Gauge>; 8] {
        [
            &self.servers_desired,
            &self.servers_joined,
            &self.servers_draining,
            &self.server_problems,
            &self.database_reachable,
            &self.maintenance_held,
            &self.running_jobs,
            &self.claimable_jobs,
        ]
    }

    /// The per-cluster gauges of fractional figures.
    fn cluster_f64_gauges(&self) -> [&Family<ClusterLabels, Gauge<f64, AtomicU64>>; 2] {
        [&self.oldest_heartbeat, &self.busy_ratio]
    }

    /// Forgets every cluster's series and the database gauges (a replica that stopped leading
    /// exports no figure of a cluster it no longer watches).
    pub(crate) fn forget_clusters(&self) {
        for family in self.cluster_gauges() {
            family.clear();
        }
        for family in self.cluster_f64_gauges() {
            family.clear();
        }
        self.maintenance_steps.clear();
        self.maintenance_step_duration.clear();
        self.last_recorded.lock().unwrap_or_else(|e| e.into_inner()).clear();
        self.database_listeners.set(0);
        self.database_connections.set(0);
    }

    /// Drops every series of a deleted cluster, so that its gauges do not stay behind.
    pub(crate) fn forget_cluster(&self, labels: &ClusterLabels) {
        for family in self.cluster_gauges() {
            family.remove(labels);
        }
        for family in self.cluster_f64_gauges() {
            family.remove(labels);
        }
        self.maintenance_steps.remove(labels);
        self.maintenance_step_duration.remove(labels);
        self.last_recorded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(labels);
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
        let labels = ClusterLabels {
            namespace: "ns".into(),
            cluster: "prod".into(),
        };
        let stage = Finished {
            stage: RollStage::Draining,
            key: "prod-0@t0".into(),
            seconds: 3.0,
        };
        let step = Finished {
            stage: RollStage::WaitingReady,
            key: "prod-0@t0".into(),
            seconds: 12.0,
        };
        metrics.record_maintenance(&labels, Some(&stage), Some(&step));
        metrics.record_maintenance(&labels, Some(&stage), Some(&step));
        let text = metrics.encode();
        assert!(
            text.contains(r#"orchestrator_operator_maintenance_steps_total{namespace="ns",cluster="prod"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"orchestrator_operator_maintenance_stage_duration_seconds_count{stage="Draining"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"orchestrator_operator_maintenance_step_duration_seconds_sum{namespace="ns",cluster="prod"} 12.0"#
            ),
            "{text}"
        );
        metrics.record_cluster(&labels, ClusterFigures::default());
        assert!(
            metrics
                .encode()
                .contains(r#"servers_joined{namespace="ns",cluster="prod"}"#)
        );
        metrics.forget_cluster(&labels);
        let text = metrics.encode();
        assert!(
            !text.contains(r#"cluster="prod""#),
            "a deleted cluster leaves no series: {text}"
        );
    }
}
