//! The state shared by the workers, the heartbeat and the HTTP handlers. Its own module so
//! that `serve` (which builds it and starts the web service) and `http` (whose handlers read
//! it) both depend on it and not on each other.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use crate::config::ServerSettings;
use crate::db::Conn;
use crate::metrics::Metrics;

/// State shared by the workers, the heartbeat and the HTTP handlers.
pub(crate) struct Shared {
    /// Settings.
    pub(crate) settings: ServerSettings,
    /// Metrics.
    pub(crate) metrics: Metrics,
    /// Connection of the HTTP handlers.
    pub(crate) api_db: Mutex<Conn>,
    /// Set once the server drains: no new claims.
    pub(crate) draining: AtomicBool,
    /// Jobs running here (their leases are renewed with each heartbeat).
    pub(crate) running: std::sync::Mutex<BTreeSet<i64>>,
    /// When the last heartbeat succeeded.
    pub(crate) last_heartbeat: std::sync::Mutex<Instant>,
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
        let mut conn = self.api_db.lock().await;
        let client = conn.get().await.map_err(|e| format!("database unreachable: {e:#}"))?;
        tokio::time::timeout(Duration::from_secs(1), client.simple_query("SELECT 1"))
            .await
            .map_err(|_| "database did not answer within 1s".to_string())?
            .map_err(|e| format!("database unreachable: {e}"))?;
        Ok(())
    }
}

/// Versions ending with this simulate a bad release: the server runs (and its `schema` commands
/// work) but never reports ready, as tests of a halted roll need.
pub(crate) const UNREADY_SUFFIX: &str = "-unready";
