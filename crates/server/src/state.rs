//! The state shared by the workers, the heartbeat and the HTTP handlers. Its own module so
//! that `serve` (which builds it and starts the web service) and `http` (whose handlers read
//! it) both depend on it and not on each other.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use orchestrator_contract::ContractError;

use crate::config::ServerSettings;
use crate::db::Database;
use crate::lease::Leases;
use crate::metrics::Metrics;

/// State shared by the workers, the heartbeat and the HTTP handlers.
pub(crate) struct Shared {
    /// Settings.
    pub(crate) settings: ServerSettings,
    /// Metrics.
    pub(crate) metrics: Metrics,
    /// The process's connection pool (workers and web service; the heartbeat has its own
    /// connection).
    pub(crate) db: Database,
    /// Set while the server drains (or has not started taking work): not ready.
    pub(crate) draining: AtomicBool,
    /// Jobs running here and their leases (renewed with each heartbeat).
    pub(crate) running: Leases,
    /// When the last heartbeat succeeded.
    pub(crate) last_heartbeat: std::sync::Mutex<Instant>,
    /// Jobs stopped here unfinished (lease lost by the local deadline, or completion not
    /// recorded in time) whose rows may still say this server runs them, by id with the claim's
    /// attempt: the heartbeat releases them once the database answers again, so that they do
    /// not wait for their leases to expire.
    pub(crate) unreleased: std::sync::Mutex<BTreeMap<i64, i32>>,
}

impl Shared {
    /// Ready: not draining, heartbeat fresh, database answering.
    pub(crate) async fn readiness(&self) -> Result<(), String> {
        if self.settings.version.ends_with(UNREADY_SUFFIX) {
            return Err(format!(
                "version {} simulates a release that never becomes ready",
                self.settings.version
            ));
        }
        if self.draining.load(Ordering::SeqCst) {
            return Err("draining".into());
        }
        let age = self.last_heartbeat.lock().unwrap().elapsed();
        if age > self.settings.heartbeat * 3 {
            return Err(format!("last successful heartbeat {:.1}s ago", age.as_secs_f64()));
        }
        self.db
            .run_within(Duration::from_secs(1), async |client| {
                client.simple_query("SELECT 1").await.map_err(ContractError::from)
            })
            .await
            .map_err(|e| format!("database unreachable: {e:#}"))?;
        Ok(())
    }
}

/// Versions ending with this simulate a bad release: the server runs (and its `schema` commands
/// work) but never reports ready, as tests of a halted roll need.
pub(crate) const UNREADY_SUFFIX: &str = "-unready";

/// Versions ending with this simulate a release that fails its jobs: the server joins, claims
/// and runs work, and records every job as failed, as tests of a canary's rollback need.
pub(crate) const FAILING_SUFFIX: &str = "-failing";
