//! orchestrator-operator: runs highly available clusters of process-orchestration servers that
//! share one external database, declared as `OrchestratorCluster` resources.

pub mod capacity;
pub mod conditions;
pub mod context;
pub mod controller;
pub mod crd;
pub mod database;
pub mod drift;
pub mod error;
pub mod http;
pub mod leader;
pub mod maintenance;
pub mod metrics;
pub mod reconcile;
pub mod resources;
pub mod servers;
pub mod upgrade;
