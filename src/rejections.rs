//! Owned objects the API server refused to take (a 400, 403 or 422 on their server-side apply:
//! a value the CRD's rules cannot foresee, an admission webhook or policy, a missing
//! permission). A refusal is a problem of the cluster, not of the operator's transport: it is
//! reported in the status (`Ready=False`, reason `ChildRejected`, naming the object and the API
//! server's words) and retried with back-off, never raced in a loop.
//!
//! A refusal is remembered per cluster and generation, so that the reconciles that follow keep
//! saying it instead of flipping the status back and forth; it is forgotten once an apply of
//! the cluster's objects succeeds, when the spec changes (the next apply says whether the new
//! one is refused too), or when the cluster is deleted. A restarted operator learns it again at
//! its first apply.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

/// An owned object the API server refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// The cluster's `metadata.generation` the refused object was built from.
    pub generation: Option<i64>,
    /// Kind of the refused object.
    pub kind: &'static str,
    /// Name of the refused object.
    pub name: String,
    /// HTTP status code of the refusal.
    pub code: u16,
    /// The API server's message.
    pub message: String,
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the API server refused {} {} ({}): {}",
            self.kind, self.name, self.code, self.message
        )
    }
}

/// The refusals of every cluster, by object key (`namespace/name`).
#[derive(Default)]
pub(crate) struct Rejections {
    by_cluster: Mutex<HashMap<String, Rejection>>,
}

impl Rejections {
    /// Remembers that an object of cluster `key` was refused.
    pub(crate) fn record(&self, key: &str, rejection: Rejection) {
        self.lock().insert(key.to_string(), rejection);
    }

    /// The refusal of cluster `key` at `generation`, if one is remembered.
    pub(crate) fn of(&self, key: &str, generation: Option<i64>) -> Option<Rejection> {
        self.lock().get(key).filter(|r| r.generation == generation).cloned()
    }

    /// Forgets the refusal of cluster `key` (its objects were taken, or it is gone).
    pub(crate) fn clear(&self, key: &str) {
        self.lock().remove(key);
    }

    /// Forgets the refusals of clusters not in `live`.
    pub(crate) fn retain(&self, live: &BTreeSet<String>) {
        self.lock().retain(|key, _| live.contains(key));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Rejection>> {
        self.by_cluster.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_holds_for_its_generation_until_cleared() {
        let rejections = Rejections::default();
        let refusal = Rejection {
            generation: Some(2),
            kind: "StatefulSet",
            name: "prod".into(),
            code: 422,
            message: "spec.template: Invalid value".into(),
        };
        rejections.record("ns/prod", refusal.clone());
        assert_eq!(rejections.of("ns/prod", Some(2)), Some(refusal));
        assert_eq!(rejections.of("ns/prod", Some(3)), None, "a new spec is not refused yet");
        assert_eq!(rejections.of("ns/other", Some(2)), None);
        rejections.retain(&BTreeSet::from(["ns/other".to_string()]));
        assert_eq!(rejections.of("ns/prod", Some(2)), None, "a gone cluster is forgotten");
        rejections.clear("ns/prod");
    }
}
