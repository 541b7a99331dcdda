//! Decide: run the planners and arbitrate between them. Pure; does not need a client.
//!
//! With `capacity.autoscale` set, the autoscaler decides the servers wanted (in place of
//! `spec.replicas`) before capacity runs; it removes no server while a roll step, a schema
//! gate stage or a drain is in progress. Then the schema gate beats capacity, and capacity
//! beats the roll:
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

use super::canary::{self, CanaryPlan};
use super::inputs::Inputs;
use crate::crd::{APPROVE_ANNOTATION, Approval, CanaryPhase, OrchestratorCluster};
use crate::database::DatabaseState;
use crate::planners::autoscale::{self, AutoscaleInput, AutoscaleOutcome};
use crate::planners::capacity::{self, CapacityDecision, CapacityInput};
use crate::planners::maintenance::{self, MaintenanceDecision, MaintenanceInput};
use crate::planners::servers::ordinal;
use crate::planners::upgrade::{self, UpgradeDecision, UpgradeInput};
use crate::planners::windows::gate;
use crate::reconcile::observe::Observed;
use crate::validate::ValidSpec;
use crate::vocabulary::{Hold, Reason, RollStage, UpgradeStage};

/// The planners' decisions, after arbitration.
#[derive(Clone, Debug)]
pub(super) struct Decisions {
    /// Servers wanted: `spec.replicas`, or the autoscaler's desired count.
    pub(super) wanted: i32,
    /// What a disruptive step waits for first, each that holds: paused, an approval, the
    /// calendar (the first of them is what the planners were given).
    pub(super) gates: Vec<Hold>,
    /// The autoscaler's decision, when `capacity.autoscale` is set.
    pub(super) autoscale: Option<AutoscaleOutcome>,
    /// The schema gate of a version change.
    pub(super) upgrade: UpgradeDecision,
    /// Adding and removing servers.
    pub(super) capacity: CapacityDecision,
    /// The rolling maintenance.
    pub(super) roll: MaintenanceDecision,
    /// The canary of a roll to a new release, and the rollback of a failed one.
    pub(super) canary: CanaryPlan,
}

/// Runs the planners in their order of precedence.
pub(super) fn decide(spec: &ValidSpec, observed: &Observed, inputs: &Inputs, now: &Time) -> Decisions {
    let cr = spec.cr;
    let maintenance = &cr.spec.maintenance;
    let window_open = spec.calendar.is_open(now.0);
    let next_window = spec.calendar.next_opening(now.0);
    let approval = approval(cr);
    let mut upgrade = upgrade::decide(&UpgradeInput {
        running: inputs.running_release.as_ref(),
        wanted: &spec.wanted,
        admitted: upgrade::admitted(&spec.wanted, &observed.pods),
        check: observed.schema_jobs.check.as_ref(),
        migrate: observed.schema_jobs.migrate.as_ref(),
        policy: cr.spec.upgrade.schema_change,
        database_ready: inputs.database_ready,
        step_in_progress: inputs.previous_step.is_some(),
        unapproved: approval.is_some(),
        migration_running: observed.schema_jobs.migration_running,
        migrated: observed.schema_jobs.migrated,
        statefulset_stopped: inputs.statefulset_stopped,
        gate: gate(maintenance.paused, approval.as_ref(), window_open, next_window),
        stopping_started: cr
            .status
            .as_ref()
            .and_then(|s| s.maintenance.as_ref())
            .and_then(|m| m.stage.as_deref())
            .is_some_and(|stage| {
                stage == UpgradeStage::StoppingServers.as_str() || stage == UpgradeStage::Migrating.as_str()
            }),
        servers: &inputs.servers,
        drain_ages: &inputs.drain_ages,
        drain_policy: spec.drain,
    });
    let failed_canary = canary::recorded_failure(spec);
    if failed_canary.is_some() && !upgrade.recreate {
        // The failed release stays out of the template until the spec asks for another: no
        // schema Job, no stage, no release let through. (A migration that runs still stops
        // every server.)
        upgrade = UpgradeDecision::default();
    }
    let name = cr.name_any();
    // Every ordinal the StatefulSet wants, whether or not its pod or row exists yet.
    let unjoined: Vec<i32> = (0..inputs.current)
        .filter(|o| {
            !inputs
                .servers
                .iter()
                .any(|s| s.joined && ordinal(&name, &s.name) == Some(*o))
        })
        .collect();
    let autoscale = spec.autoscale.as_ref().map(|policy| {
        autoscale::decide(&AutoscaleInput {
            policy,
            work: observed.database.work(),
            own_serving: inputs.own_serving,
            previous: cr.status.as_ref().and_then(|s| s.autoscale.as_ref()),
            current: inputs.current,
            unjoined: &unjoined,
            readings: observed.readings.as_ref(),
            disruption: disruption(&name, inputs, &upgrade),
            conflict: conflict(&observed.scalers),
            now: now.0,
        })
    });
    let wanted = autoscale.as_ref().map_or(cr.spec.replicas, |a| a.desired);
    let mut capacity = capacity::decide(&CapacityInput {
        cluster: &name,
        wanted,
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
        // The autoscaler's removals are not changes of the spec: no person approves them.
        approval: approval.clone().filter(|_| autoscale.is_none()),
    });
    if let Some(hold) = autoscale.as_ref().and_then(|_| conflict(&observed.scalers)) {
        // A person must choose between the two autoscalers: said before any other hold.
        capacity.blocked = Some(hold);
    }
    if upgrade.recreate {
        // Every server is being stopped on purpose: no server is added, none is wanted back.
        capacity = CapacityDecision {
            replicas: if upgrade.stop_all { 0 } else { inputs.current },
            remove_rows: capacity.remove_rows,
            ..CapacityDecision::default()
        };
    }
    let mut canary = canary::plan(spec, observed, inputs, &upgrade, wanted, now.0);
    let halted = canary.failed();
    // Only the rollback itself goes on without an approval and outside the windows.
    let rolling_back = halted
        .as_ref()
        .filter(|_| failed_canary.is_some_and(|c| c.phase == CanaryPhase::Failed));
    // Said as a wait while the canary servers are put back, as a halt once they are.
    upgrade.waiting = halted.clone().or(upgrade.waiting);
    let mut roll = maintenance::decide(&MaintenanceInput {
        cluster: &name,
        // A step's server is removed only by a scale-down that goes ahead (not one held for an
        // approval or the database).
        wanted: match capacity.blocked.as_ref().map(|hold| hold.reason) {
            Some(Reason::AwaitingApproval | Reason::DatabaseNotReady) => wanted.max(inputs.current),
            _ => wanted,
        },
        servers: &inputs.views,
        update_revision: inputs.update_revision.as_deref(),
        restart_requested_at: maintenance.restart_requested_at.as_ref().map(|t| t.0),
        paused: maintenance.paused,
        // A rollback goes on without an approval and outside the windows.
        approval: approval.clone().filter(|_| rolling_back.is_none()),
        window_open: window_open || rolling_back.is_some(),
        next_window,
        database_ready: inputs.database_ready,
        // Only while a newer release's schema check runs, or Recreate replaces every server: a
        // refused or failed check keeps the template, and its replacement is waited for.
        superseded: upgrade.recreate || (upgrade.stage == Some(UpgradeStage::SchemaCheck) && upgrade.blocked.is_none()),
        // A refused or failed check keeps the running release until the spec changes again.
        release_pending: !upgrade.release_ready && upgrade.blocked.is_none(),
        canary: canary.check.clone(),
        hold: roll_hold(wanted, &capacity, &upgrade, inputs, &name),
        step: inputs.previous_step.clone(),
        drain_timeout: spec.drain.timeout,
        ready_timeout: spec.ready_timeout,
        on_drain_timeout: spec.drain.on_timeout,
        now: now.0,
    });
    canary::never_joined(&mut canary, &mut roll, now.0);
    if let Some(hold) = halted.filter(|_| roll.outdated == 0 && roll.step.is_none()) {
        upgrade.waiting = None;
        upgrade.blocked = Some(hold);
    }
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
    let gates = [
        gate(maintenance.paused, None, true, None),
        approval.clone(),
        gate(false, None, window_open, next_window),
    ]
    .into_iter()
    .flatten()
    .collect();
    Decisions {
        wanted,
        gates,
        autoscale,
        upgrade,
        capacity,
        roll,
        canary,
    }
}

/// The hold of `maintenance.approval: Manual` while the current generation is not approved by
/// the annotation `orchestrator.dev/approve`.
fn approval(cr: &OrchestratorCluster) -> Option<Hold> {
    if cr.spec.maintenance.approval != Approval::Manual {
        return None;
    }
    let generation = cr.metadata.generation.unwrap_or_default();
    let approved = cr.annotations().get(APPROVE_ANNOTATION).map(|v| v.trim());
    let how = format!(
        "kubectl -n {} annotate orc {} {APPROVE_ANNOTATION}={generation} --overwrite",
        cr.namespace().unwrap_or_default(),
        cr.name_any()
    );
    let message = match approved {
        Some(value) if value.parse::<i64>() == Ok(generation) => return None,
        Some(value) => format!(
            "maintenance.approval is Manual and {APPROVE_ANNOTATION} is {value:?}, not the current generation {generation} (a change of the spec needs its own approval): read the plan, then `{how}`"
        ),
        None => format!(
            "maintenance.approval is Manual and generation {generation} is not approved: read the plan, then `{how}`"
        ),
    };
    Some(Hold::new(Reason::AwaitingApproval, message))
}

/// Another autoscaler of the cluster: a HorizontalPodAutoscaler (KEDA makes one per
/// `ScaledObject`) writing `spec.replicas` through `/scale`, which `capacity.autoscale` ignores.
fn conflict(scalers: &[String]) -> Option<Hold> {
    (!scalers.is_empty()).then(|| {
        Hold::new(
            Reason::AutoscalerConflict,
            format!(
                "HorizontalPodAutoscaler {} scales this cluster through /scale while capacity.autoscale is set, and spec.replicas is ignored: the autoscaler stops following the work (a change it already asked for finishes) until you remove one of them (KEDA: delete the ScaledObject)",
                scalers.join(", ")
            ),
        )
    })
}

/// What keeps the autoscaler from removing a server of cluster `name`: a roll step in
/// progress, a version change at a schema stage, a drain of one of its servers. (Between two
/// steps of a roll a removal may run; the roll's next step waits for it.)
fn disruption(name: &str, inputs: &Inputs, upgrade: &UpgradeDecision) -> Option<Hold> {
    let hold = |message: String| Some(Hold::new(Reason::DisruptionInProgress, message));
    let draining: Vec<&str> = inputs
        .drain_ages
        .iter()
        .map(|(server, _)| server.as_str())
        .filter(|server| ordinal(name, server).is_some())
        .collect();
    if let Some(step) = &inputs.previous_step {
        hold(format!(
            "a roll step is in progress ({} {}); no server is removed meanwhile",
            step.server,
            step.stage.as_str().to_lowercase()
        ))
    } else if let Some(stage) = upgrade.stage {
        hold(format!(
            "a version change is at its {stage} stage; no server is removed meanwhile"
        ))
    } else if !draining.is_empty() {
        hold(format!(
            "{} draining; the next server is removed once it is gone",
            draining.join(", ")
        ))
    } else {
        None
    }
}

/// What must finish before a roll step starts: a schema migration, a capacity change. A
/// scale-up that is blocked or waits for a server to join, once every pod it asked for exists,
/// does not hold the roll (the roll's own rules wait for an unjoined server with a pod, and the server that never
/// joins may be the outdated one the roll replaces), so neither an autoscaler nor a stuck
/// scale-up can starve it. One whose pod is not there yet holds it: the roll cannot see it.
fn roll_hold(
    wanted: i32,
    capacity: &CapacityDecision,
    upgrade: &UpgradeDecision,
    inputs: &Inputs,
    name: &str,
) -> Option<Hold> {
    let current = inputs.current;
    let every_pod_made = (0..current).all(|o| {
        inputs
            .servers
            .iter()
            .any(|s| s.pod_exists && ordinal(name, &s.name) == Some(o))
    });
    let stalled_scale_up =
        wanted > current && every_pod_made && (capacity.blocked.is_some() || capacity.waiting.is_some());
    let scaling =
        capacity.replicas != current || (current != wanted && !stalled_scale_up) || !capacity.drain.is_empty();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::fixtures;

    #[test]
    fn only_the_current_generation_approves_a_manual_cluster() {
        let mut cr = fixtures::minimal();
        cr.metadata.generation = Some(4);
        assert_eq!(approval(&cr), None, "Automatic needs none");
        cr.spec.maintenance.approval = Approval::Manual;
        let waiting = approval(&cr).unwrap();
        assert_eq!(waiting.reason, Reason::AwaitingApproval);
        assert!(
            waiting.message.contains("orchestrator.dev/approve=4"),
            "{}",
            waiting.message
        );
        let annotate = |cr: &mut OrchestratorCluster, value: &str| {
            cr.metadata
                .annotations
                .get_or_insert_default()
                .insert(APPROVE_ANNOTATION.into(), value.into());
        };
        annotate(&mut cr, "3");
        let outdated = approval(&cr).unwrap();
        assert!(
            outdated.message.contains("not the current generation 4"),
            "{}",
            outdated.message
        );
        annotate(&mut cr, "yes");
        assert!(approval(&cr).is_some(), "not a generation");
        annotate(&mut cr, " 4");
        assert_eq!(approval(&cr), None);
    }
}
