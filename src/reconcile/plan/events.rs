//! Events: one per step a reconcile takes (servers added, drained, removed; a stage of a roll
//! or of a version change), and one per condition that just turned bad or changed its message.
//! Pure; does not need a client.

use kube::ResourceExt;

use super::decide::Decisions;
use super::inputs::Inputs;
use crate::conditions::{find, status};
use crate::crd::{CanaryPhase, OrchestratorCluster, OrchestratorClusterStatus};
use crate::database::DatabaseState;
use crate::reconcile::observe::Observed;
use crate::vocabulary::{ConditionType, Reason, RollStage, UpgradeStage};

/// An Event the reconcile publishes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedEvent {
    /// Warning (true) or Normal.
    pub warning: bool,
    /// Why.
    pub reason: Reason,
    /// What happened, for a person.
    pub note: String,
}

impl PlannedEvent {
    fn normal(reason: Reason, note: String) -> Self {
        Self {
            warning: false,
            reason,
            note,
        }
    }

    fn warning(reason: Reason, note: String) -> Self {
        Self {
            warning: true,
            reason,
            note,
        }
    }
}

/// Events for the steps decided, and for conditions of `status` that just turned bad.
pub(super) fn events(
    cr: &OrchestratorCluster,
    observed: &Observed,
    inputs: &Inputs,
    decisions: &Decisions,
    status: &OrchestratorClusterStatus,
) -> Vec<PlannedEvent> {
    let name = cr.name_any();
    let wanted = decisions.wanted;
    let current = inputs.current;
    let capacity = &decisions.capacity;
    let mut events = roll_events(cr, decisions, status);
    events.extend(canary_event(cr, status));
    if let Some((reason, note)) = decisions.autoscale.as_ref().and_then(|a| a.decision.clone()) {
        events.push(PlannedEvent::normal(reason, note));
    }
    if capacity.replicas > current {
        let added: Vec<String> = (current..capacity.replicas).map(|o| format!("{name}-{o}")).collect();
        events.push(PlannedEvent::normal(
            Reason::ScalingUp,
            format!(
                "adding {} ({current} -> {} of {wanted} servers)",
                added.join(", "),
                capacity.replicas
            ),
        ));
    }
    if capacity.replicas < current {
        events.push(PlannedEvent::normal(
            Reason::ScalingDown,
            format!("removing drained servers ({current} -> {} servers)", capacity.replicas),
        ));
    }
    if !capacity.drain.is_empty() {
        events.push(PlannedEvent::normal(
            Reason::Draining,
            format!("asked {} for a friendly shutdown", capacity.drain.join(", ")),
        ));
    }
    if !capacity.undrain.is_empty() {
        events.push(PlannedEvent::normal(
            Reason::Draining,
            format!(
                "withdrew the drain request of {}: wanted again",
                capacity.undrain.join(", ")
            ),
        ));
    }
    if !capacity.remove_rows.is_empty() {
        events.push(PlannedEvent::normal(
            Reason::RemovedServerRows,
            format!("removed the database rows of {}", capacity.remove_rows.join(", ")),
        ));
    }
    let previous = cr.status.clone().unwrap_or_default().conditions;
    let turned = |type_: ConditionType, bad_when_true: bool| {
        let now = find(&status.conditions, type_)?;
        let bad = (now.status == status::TRUE) == bad_when_true;
        let before = find(&previous, type_);
        let changed = before.is_none_or(|b| b.status != now.status || b.message != now.message);
        (bad && changed).then(|| now.message.clone())
    };
    // Events with the same reason are merged into one series that keeps the first note, so
    // each distinct problem gets its own reason: the condition's.
    let database_reason = match &observed.database {
        DatabaseState::Ready { .. } => Reason::Connected,
        DatabaseState::NotReady { reason, .. } => *reason,
    };
    for (type_, bad_when_true, reason) in [
        (
            ConditionType::CapacityBlocked,
            true,
            capacity.blocked.as_ref().map(|hold| hold.reason),
        ),
        (ConditionType::Degraded, true, Some(Reason::ServerProblems)),
        (ConditionType::DatabaseReady, false, Some(database_reason)),
    ] {
        if let (Some(note), Some(reason)) = (turned(type_, bad_when_true), reason) {
            events.push(PlannedEvent::warning(reason, note));
        }
    }
    events
}

/// An Event when an operator change is first held (or becomes another), and when a held one
/// reaches the template (the StatefulSet is written without it pending).
pub(super) fn operator_change_event(
    cr: &OrchestratorCluster,
    status: &OrchestratorClusterStatus,
    writes: &[super::desired::Write],
) -> Option<PlannedEvent> {
    let before = cr.status.as_ref().and_then(|s| s.pending_operator_change.as_ref());
    match (before, status.pending_operator_change.as_ref()) {
        (before, Some(after)) if before.is_none_or(|b| b.template_hash != after.template_hash) => {
            Some(PlannedEvent::normal(
                Reason::OperatorChangePending,
                format!(
                    "the operator would change the servers' pod template ({}); {}",
                    after.changes.join(", "),
                    after.waiting_for
                ),
            ))
        }
        (Some(before), None)
            if writes.iter().any(|w| match &w.child {
                super::desired::Child::StatefulSet(s) => {
                    s.annotations().get(super::operator_change::TEMPLATE_HASH_ANNOTATION) == Some(&before.template_hash)
                }
                _ => false,
            }) =>
        {
            Some(PlannedEvent::normal(
                Reason::OperatorChangeApplied,
                format!(
                    "the operator's change of the pod template is rolled out ({})",
                    before.changes.join(", ")
                ),
            ))
        }
        _ => None,
    }
}

/// An Event when a canary's bake starts, when it passes and when a failed one is rolled back
/// (its failure is the roll's halt, said with the other halts).
fn canary_event(cr: &OrchestratorCluster, status: &OrchestratorClusterStatus) -> Option<PlannedEvent> {
    let after = status.canary.as_ref()?;
    let before = cr.status.as_ref().and_then(|s| s.canary.as_ref());
    let same = before.is_some_and(|b| b.version == after.version && b.image == after.image);
    if same && before.map(|b| b.phase) == Some(after.phase) {
        return None;
    }
    let message = after.message.clone().unwrap_or_default();
    let version = &after.version;
    match after.phase {
        CanaryPhase::Baking => Some(PlannedEvent::normal(
            Reason::CanaryBaking,
            format!("version {version}: {} ({message})", after.servers.join(", ")),
        )),
        CanaryPhase::Passed => Some(PlannedEvent::normal(
            Reason::CanaryPassed,
            format!("the canary of version {version} passed: {message}"),
        )),
        CanaryPhase::RolledBack => Some(PlannedEvent::normal(
            Reason::CanaryRolledBack,
            format!(
                "the canary servers of version {version} run version {} again",
                after.from_version
            ),
        )),
        _ => None,
    }
}

/// An Event per stage of the roll or of a version change, and one when either halts.
fn roll_events(
    cr: &OrchestratorCluster,
    decisions: &Decisions,
    status: &OrchestratorClusterStatus,
) -> Vec<PlannedEvent> {
    let Decisions { upgrade, roll, .. } = decisions;
    let before = cr
        .status
        .as_ref()
        .and_then(|s| s.maintenance.clone())
        .unwrap_or_default();
    let after = status.maintenance.clone().unwrap_or_default();
    let mut events = Vec::new();
    let progress = after.step.clone().unwrap_or_default();
    let trigger = after.reason.clone().unwrap_or_default();
    if (before.server.as_ref(), before.stage.as_ref()) != (after.server.as_ref(), after.stage.as_ref()) {
        match (&roll.step, upgrade.stage) {
            (Some(step), _) => events.push(PlannedEvent::normal(
                match step.stage {
                    RollStage::Draining => Reason::MaintenanceDraining,
                    RollStage::Evicting => Reason::MaintenanceEvicting,
                    RollStage::WaitingReady => Reason::MaintenanceWaitingReady,
                },
                format!(
                    "{}: {} (step {progress}, {trigger})",
                    step.server,
                    step.stage.as_str().to_lowercase()
                ),
            )),
            (None, stage) => {
                match (before.server.clone(), &roll.abandoned) {
                    (Some(_), Some(hold)) => events.push(PlannedEvent::warning(
                        Reason::MaintenanceStepAbandoned,
                        hold.message.clone(),
                    )),
                    (Some(server), None) => events.push(PlannedEvent::normal(
                        Reason::MaintenanceStepDone,
                        format!("{server} replaced and joined"),
                    )),
                    (None, _) => {}
                }
                if let Some(stage) = stage {
                    events.push(PlannedEvent::normal(
                        match stage {
                            UpgradeStage::SchemaCheck => Reason::SchemaCheck,
                            UpgradeStage::StoppingServers => Reason::StoppingServers,
                            UpgradeStage::Migrating => Reason::SchemaMigration,
                        },
                        format!(
                            "version {}: {}",
                            cr.spec.version,
                            after.blocked_reason.clone().unwrap_or_default()
                        ),
                    ));
                }
            }
        }
        let was_migrating = before.stage.as_deref().and_then(|s| s.parse().ok()) == Some(UpgradeStage::Migrating);
        if was_migrating && upgrade.stage != Some(UpgradeStage::Migrating) && upgrade.blocked.is_none() {
            events.push(PlannedEvent::normal(
                Reason::SchemaMigrated,
                format!("schema migrated for version {}", cr.spec.version),
            ));
        }
    }
    if let Some(hold) = roll.blocked.as_ref().or(upgrade.blocked.as_ref())
        && before.blocked_reason.as_ref() != Some(&hold.message)
    {
        events.push(PlannedEvent::warning(hold.reason, hold.message.clone()));
    }
    events
}
