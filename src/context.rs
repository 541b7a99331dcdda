//! The state shared by every reconcile: API client, event recorder, metrics, settings and the
//! per-object failure counts that drive the error back-off.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::Client;
use kube::runtime::events::{Recorder, Reporter};

use crate::crd::object_key;
use crate::database::preflight::Preflight;
use crate::metrics::{ClusterLabels, Metrics};
use crate::validate::BuildSettings;

/// Field manager of every server-side apply the operator makes.
pub(crate) const FIELD_MANAGER: &str = "orchestrator-operator";

/// How long a database preflight result is reused (unless the Secret changes).
pub(crate) const PREFLIGHT_TTL: Duration = Duration::from_secs(10);

/// First retry delay after a failed reconcile; it doubles per consecutive failure.
pub(crate) const BACKOFF_BASE: Duration = Duration::from_secs(5);
/// Longest retry delay after failed reconciles.
pub(crate) const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// Shared state of the controller.
pub struct Context {
    /// Kubernetes API client.
    pub client: Client,
    /// Client for evictions: built without kube's retry of 429 answers, it returns a
    /// PodDisruptionBudget's refusal at once, so that a refused eviction is a wait of the roll,
    /// not a blocked reconcile.
    pub(crate) eviction_client: Client,
    /// The one Event recorder of the process.
    pub recorder: Recorder,
    /// Operator metrics.
    pub metrics: Arc<Metrics>,
    /// Settings the builders need.
    pub settings: BuildSettings,
    /// The database preflight and its cache.
    pub(crate) preflight: Preflight,
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    /// A context for `client`, reporting Events as `instance` of the operator. Evictions use
    /// `client` too until [`Context::with_eviction_client`] gives them their own.
    pub fn new(client: Client, metrics: Arc<Metrics>, settings: BuildSettings, instance: Option<String>) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.into(),
            instance,
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            eviction_client: client.clone(),
            client,
            metrics,
            settings,
            preflight: Preflight::new(PREFLIGHT_TTL),
            failures: Mutex::default(),
        }
    }

    /// Uses `client` (built without kube's retry of 429 answers) for evictions.
    pub fn with_eviction_client(self, client: Client) -> Self {
        Self {
            eviction_client: client,
            ..self
        }
    }

    /// Forgets everything kept about a deleted cluster: its cached database connection, its
    /// back-off entry and its metric series.
    pub(crate) fn forget(&self, cluster: &impl kube::Resource) {
        self.preflight.forget(cluster);
        self.reset_backoff(&object_key(cluster));
        self.metrics.forget_cluster(&ClusterLabels::of(cluster));
    }

    /// Records a failure of `key` and returns how long to wait before retrying it.
    pub(crate) fn next_backoff(&self, key: &str) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let count = failures.entry(key.to_string()).or_insert(0);
        *count = count.saturating_add(1);
        backoff_for(*count)
    }

    /// Forgets the failures of `key` after a successful reconcile.
    pub(crate) fn reset_backoff(&self, key: &str) {
        self.failures.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
    }
}

/// Delay before the retry that follows `failures` consecutive failures.
fn backoff_for(failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(16);
    BACKOFF_BASE.saturating_mul(1 << exponent).min(BACKOFF_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let delays: Vec<_> = (1..=8).map(|n| backoff_for(n).as_secs()).collect();
        assert_eq!(delays, vec![5, 10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(backoff_for(u32::MAX), BACKOFF_MAX);
    }
}
