//! The end-to-end suites: one test binary, built only with `--features e2e` (`make e2e`), so
//! that plain `cargo test` needs no cluster. They run on the local cluster (`make cluster-up`:
//! a real API server, controller-manager and scheduler, and a node agent that runs pods as
//! processes) with real PostgreSQL databases and server processes, and fail, never skip, when
//! no cluster answers. One module per area; run one test with
//! `cargo test --features e2e --test e2e maintenance::pause -- --nocapture`.

#[path = "../support/mod.rs"]
mod support;

mod autoscale;
mod canary;
mod capacity;
mod cluster;
mod examples;
mod faults;
mod gitops;
mod install;
mod leader;
mod maintenance;
mod operator_upgrade;
mod plugin;
mod refusals;
mod serial;
mod steady;
mod zones;
