//! orchestrator-operator: runs highly available clusters of process-orchestration servers that
//! share one external database, declared as `OrchestratorCluster` resources.
//!
//! The public surface is what the binaries (`orchestrator-operator`, `crdgen`) and the tests
//! use; everything else is private so that the compiler finds dead wiring. The pipeline lives
//! in `reconcile`; the pure planners in `planners`; the words in [`vocabulary`].

pub mod caches;
// kube's `KubeSchema` derive copies each struct into a private scope, where `unreachable_pub`
// misfires on the copies.
#[allow(unreachable_pub)]
pub mod crd;
pub mod http;
pub mod leader;
pub mod vocabulary;

mod conditions;
mod context;
mod controller;
mod database;
mod drift;
mod error;
mod metrics;
mod planners;
mod reconcile;
pub mod rejections;
mod release;
mod resources;
mod rolls;
#[cfg(test)]
mod testing;
mod validate;

pub use context::{Context, DEFAULT_CONCURRENT_RECONCILES, USER_AGENT};
pub use controller::{StopReason, run as run_controllers};
pub use database::DatabaseState;
pub use error::{Error, Result};
pub use metrics::Metrics;
pub use planners::autoscale::Readings;
pub use planners::windows::window_at;
pub use reconcile::act::evict;
pub use reconcile::observe::Observed;
pub use reconcile::plan::{Child, Plan, PlannedEvent, Write};
pub use reconcile::{Watched, dry_run, error_policy, reconcile};
pub use rolls::DEFAULT_CONCURRENT_ROLLS;
pub use validate::BuildSettings;
