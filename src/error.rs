//! The operator's one error type, with a metric label per variant.

use std::time::Duration;

use crate::crd::SpecError;
use crate::leader::NotLeading;
use crate::rejections::Rejection;
use crate::vocabulary::Reason;

/// Everything a reconcile can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API request failed.
    #[error("Kubernetes API request failed: {0}")]
    Kube(#[from] kube::Error),

    /// The spec passed the CRD schema but cannot be used.
    #[error("invalid spec: {0}")]
    InvalidSpec(#[from] SpecError),

    /// The object could not be read as an `OrchestratorCluster`.
    #[error("object is not a valid OrchestratorCluster: {0}")]
    Malformed(String),

    /// A write to the process database failed.
    #[error("process database: {0}")]
    Database(#[source] orchestrator_contract::ContractError),

    /// An object the operator built could not be serialized.
    #[error("could not serialize {kind}: {source}")]
    Serialization {
        /// Kind of the object.
        kind: &'static str,
        /// The serializer's error.
        source: serde_json::Error,
    },

    /// A step did not finish within its deadline (it was cancelled where it stood).
    #[error("{step} did not finish within {} s; cancelled", .after.as_secs())]
    Timeout {
        /// What timed out, e.g. `reconcile`.
        step: &'static str,
        /// The deadline.
        after: Duration,
    },

    /// This replica does not hold the leader Lease (lost, or its renewal deadline passed), so
    /// it must not write.
    #[error("{0}")]
    NotLeading(#[from] NotLeading),

    /// The API server refused an owned object (said in the status as `ChildRejected`; retried
    /// with back-off, since a fix may come from outside the spec: a policy, a permission).
    #[error("{0}")]
    Rejected(Rejection),

    /// The operator keeps no view of this namespace (it is not watched, or its watches
    /// stopped), so it cannot reconcile what is in it.
    #[error("namespace {0} is not watched by this operator")]
    NotWatched(String),
}

impl Error {
    /// Short label for the `reason` of the errors metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube_api",
            Error::InvalidSpec(_) => "invalid_spec",
            Error::Malformed(_) => "malformed",
            Error::Database(_) => "database",
            Error::Serialization { .. } => "serialization",
            Error::Timeout { .. } => "timeout",
            Error::NotLeading(_) => "not_leading",
            Error::NotWatched(_) => "not_watched",
            Error::Rejected(_) => "child_rejected",
        }
    }
}

impl Error {
    /// Reason of the Warning Event a failed reconcile publishes on the resource (distinct per
    /// kind of failure, since Events of one reason are merged under the first note).
    pub fn event_reason(&self) -> Reason {
        match self {
            Error::Kube(kube::Error::Api(status)) if status.code == 403 => Reason::ApiForbidden,
            Error::Kube(kube::Error::Api(status)) if status.code == 409 || status.code == 422 => Reason::ApiRejected,
            Error::Kube(_) => Reason::ApiUnavailable,
            Error::InvalidSpec(_) => Reason::InvalidSpec,
            Error::Malformed(_) => Reason::Malformed,
            Error::Database(_) => Reason::DatabaseWriteFailed,
            Error::Serialization { .. } => Reason::SerializationFailed,
            Error::Timeout { .. } => Reason::ReconcileTimeout,
            // Not to be published: a replica that does not lead writes no Event.
            Error::NotLeading(_) => Reason::ApiUnavailable,
            Error::NotWatched(_) => Reason::ApiUnavailable,
            Error::Rejected(_) => Reason::ChildRejected,
        }
    }
}

/// Result of the operator's fallible steps.
pub type Result<T, E = Error> = std::result::Result<T, E>;
