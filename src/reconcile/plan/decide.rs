//! Decide: run the three planners and arbitrate between them. Pure; does not need a client.
//!
//! The schema gate beats capacity, and capacity beats the roll:
//!
//! ```text
//!   upgrade::decide ──────────────┐  recreate?  capacity is replaced: no server added, none
//!   (schema gate)                 │             wanted back; replicas 0 once every server drained
//!        │ release_ready          ▼
//!        │                  capacity::decide ──┐  a capacity change under way (replicas moving,
//!        │                  (add / drain /     │  drains asked) holds the roll: Scaling
//!        │                   remove rows)      ▼
//!        │                              maintenance::decide
//!        └─ recreate also holds the roll:  (one server at a time)
//!           SchemaMigration
//! ```
//!
//! - The gate decides which release the StatefulSet runs (`release_ready`) and, under
//!   `Recreate`, takes the servers away from capacity: it drains them all and scales to zero.
//! - Capacity never withdraws the drain of the server the roll is replacing.
//! - The roll starts a step only when neither a capacity change nor a schema migration is
//!   under way; a step in progress goes on whatever the others decide.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;

use super::inputs::Inputs;
use crate::database::DatabaseState;
use crate::planners::capacity::{self, CapacityDecision, CapacityInput};
use crate::planners::maintenance::{self, MaintenanceDecision, MaintenanceInput};
use crate::planners::upgrade::{self, UpgradeDecision, UpgradeInput};
use crate::planners::windows::gate;
use crate::reconcile::observe::Observed;
use crate::validate::ValidSpec;
use crate::vocabulary::{Hold, Reason, RollStage, UpgradeStage};

/// The three planners' decisions, after arbitration.
#[derive(Clone, Debug)]
pub(super) struct Decisions {
    /// The schema gate of a version change.
    pub(super) upgrade: UpgradeDecision,
    /// Adding and removing servers.
    pub(super) capacity: CapacityDecision,
    /// The rolling maintenance.
    pub(super) roll: MaintenanceDecision,
}

/// Runs the planners in their order of precedence.
pub(super) fn decide(spec: &ValidSpec, observed: &Observed, inputs: &Inputs, now: &Time) -> Decisions {
    let cr = spec.cr;
    let maintenance = &cr.spec.maintenance;
    let window_open = spec.calendar.is_open(now.0);
    let next_window = spec.calendar.next_opening(now.0);
    let upgrade = upgrade::decide(&UpgradeInput {
        running: inputs.running_release.as_ref(),
        wanted: &spec.wanted,
        admitted: upgrade::admitted(&spec.wanted, &observed.pods),
        check: observed.schema_jobs.check.as_ref(),
        migrate: observed.schema_jobs.migrate.as_ref(),
        policy: cr.spec.upgrade.schema_change,
        database_ready: inputs.database_ready,
        step_in_progress: inputs.previous_step.is_some(),
        migration_running: observed.schema_jobs.migration_running,
        migrated: observed.schema_jobs.migrated,
        statefulset_stopped: inputs.statefulset_stopped,
        gate: gate(maintenance.paused, window_open, next_window),
        servers: &inputs.servers,
        drain_ages: &inputs.drain_ages,
        drain_policy: spec.drain,
    });
    let name = cr.name_any();
    let mut capacity = capacity::decide(&CapacityInput {
        cluster: &name,
        wanted: cr.spec.replicas,
        max_replicas: cr.spec.capacity.max_replicas,
        add_at_once: cr.spec.capacity.add_at_once,
        current: inputs.current,
        servers: &inputs.servers,
        database: match &observed.database {
            DatabaseState::Ready { .. } => Ok(()),
            DatabaseState::NotReady { message, .. } => Err(message.clone()),
        },
        drain: spec.drain,
        drain_ages: &inputs.drain_ages,
        owned_jobs: &inputs.owned_jobs,
        heartbeat_ages: &inputs.heartbeat_ages,
        maintenance_drain: inputs
            .previous_step
            .as_ref()
            .filter(|s| s.stage != RollStage::WaitingReady)
            .map(|s| s.server.as_str()),
    });
    if upgrade.recreate {
        // Every server is being stopped on purpose: no server is added, none is wanted back.
        capacity = CapacityDecision {
            replicas: if upgrade.stop_all { 0 } else { inputs.current },
            remove_rows: capacity.remove_rows,
            ..CapacityDecision::default()
        };
    }
    let roll = maintenance::decide(&MaintenanceInput {
        cluster: &name,
        wanted: cr.spec.replicas,
        servers: &inputs.views,
        update_revision: inputs.update_revision.as_deref(),
        restart_requested_at: maintenance.restart_requested_at.as_ref().map(|t| t.0),
        paused: maintenance.paused,
        window_open,
        next_window,
        database_ready: inputs.database_ready,
        // Only while a newer release's schema check runs, or Recreate replaces every server: a
        // refused or failed check keeps the template, and its replacement is waited for.
        superseded: upgrade.recreate || (upgrade.stage == Some(UpgradeStage::SchemaCheck) && upgrade.blocked.is_none()),
        hold: roll_hold(cr.spec.replicas, &capacity, &upgrade, inputs.current),
        step: inputs.previous_step.clone(),
        drain_timeout: spec.drain.timeout,
        ready_timeout: spec.ready_timeout,
        on_drain_timeout: spec.drain.on_timeout,
        now: now.0,
    });
    // The server the roll drains keeps its drain, even one adopted in this very reconcile; its
    // replacement (WaitingReady) gets it withdrawn, or it would never rejoin.
    if let Some(step) = roll.step.as_ref().filter(|s| s.stage != RollStage::WaitingReady) {
        capacity.undrain.retain(|server| *server != step.server);
    }
    // A step that reaches WaitingReady in this reconcile has seen its server's pod gone (or
    // replaced): its drain is withdrawn now, not a reconcile later, since the replacement
    // stays stopped until it is. Not while every server is being stopped for a migration.
    if let Some(step) = roll.step.as_ref().filter(|s| s.stage == RollStage::WaitingReady)
        && !upgrade.recreate
        && inputs.drain_ages.iter().any(|(server, _)| *server == step.server)
        && !capacity.undrain.contains(&step.server)
    {
        capacity.undrain.push(step.server.clone());
    }
    Decisions {
        upgrade,
        capacity,
        roll,
    }
}

/// What must finish before a roll step starts: a schema migration, a capacity change.
fn roll_hold(wanted: i32, capacity: &CapacityDecision, upgrade: &UpgradeDecision, current: i32) -> Option<Hold> {
    let scaling = capacity.replicas != current || current != wanted || !capacity.drain.is_empty();
    if upgrade.recreate {
        Some(Hold::new(
            Reason::SchemaMigration,
            "every server is stopped for a schema migration",
        ))
    } else if scaling {
        Some(Hold::new(Reason::Scaling, "servers are being added or removed"))
    } else {
        None
    }
}
