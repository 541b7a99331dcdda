//! The server's Prometheus metrics.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Metrics of one server.
pub(crate) struct Metrics {
    /// Jobs running now.
    pub(crate) running: Gauge,
    /// Jobs finished successfully.
    pub(crate) completed: Counter,
    /// Jobs finished with an error.
    pub(crate) failed: Counter,
    /// Jobs handed back unfinished at shutdown.
    pub(crate) handed_back: Counter,
    /// Jobs waiting in the queue (all servers), at the last heartbeat.
    pub(crate) queue_depth: Gauge,
    /// Seconds a claim query takes.
    pub(crate) claim_latency: Histogram,
    /// Seconds since the last successful heartbeat.
    pub(crate) heartbeat_age: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// 1 while the server drains.
    pub(crate) draining: Gauge,
    /// Jobs stopped here unfinished because their lease was lost (local deadline passed, or
    /// the database said another server owns them); their completion is not recorded.
    pub(crate) abandoned: Counter,
    /// Jobs this server dead-lettered when claiming them.
    pub(crate) dead_lettered: Counter,
    /// Database operations retried after a failure (a connection refused or lost, a query
    /// that failed or did not answer in time).
    pub(crate) database_retries: Counter,
    /// Connections open now: the pool's and the heartbeat's.
    pub(crate) database_connections: Gauge,
    registry: Registry,
}

impl Default for Metrics {
    fn default() -> Self {
        let m = Self {
            running: Gauge::default(),
            completed: Counter::default(),
            failed: Counter::default(),
            handed_back: Counter::default(),
            queue_depth: Gauge::default(),
            claim_latency: Histogram::new([0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0]),
            heartbeat_age: Gauge::default(),
            draining: Gauge::default(),
            abandoned: Counter::default(),
            dead_lettered: Counter::default(),
            database_retries: Counter::default(),
            database_connections: Gauge::default(),
            registry: Registry::with_prefix("orchestrator_server"),
        };
        let mut registry = Registry::with_prefix("orchestrator_server");
        registry.register("jobs_running", "Jobs running now", m.running.clone());
        registry.register("jobs_completed", "Jobs finished successfully", m.completed.clone());
        registry.register("jobs_failed", "Jobs finished with an error", m.failed.clone());
        registry.register(
            "jobs_handed_back",
            "Jobs handed back unfinished at shutdown",
            m.handed_back.clone(),
        );
        registry.register("queue_depth", "Jobs waiting in the queue", m.queue_depth.clone());
        registry.register(
            "claim_latency_seconds",
            "Duration of a claim query",
            m.claim_latency.clone(),
        );
        registry.register(
            "heartbeat_age_seconds",
            "Seconds since the last heartbeat",
            m.heartbeat_age.clone(),
        );
        registry.register("draining", "1 while the server drains", m.draining.clone());
        registry.register(
            "jobs_abandoned",
            "Jobs stopped unfinished because their lease was lost; not recorded as finished",
            m.abandoned.clone(),
        );
        registry.register(
            "jobs_dead_lettered",
            "Jobs marked failed at a claim after too many expired leases",
            m.dead_lettered.clone(),
        );
        registry.register(
            "database_retries",
            "Database operations retried after a failure",
            m.database_retries.clone(),
        );
        registry.register(
            "database_connections",
            "Database connections open now, the pool's and the heartbeat's",
            m.database_connections.clone(),
        );
        Self { registry, ..m }
    }
}

impl Metrics {
    /// The metrics in Prometheus text format.
    pub(crate) fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }
}
