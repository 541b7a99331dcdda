//! The change plan (`status.plan`): what the planners will do about the current spec, read
//! from their own decisions (not a second model): the strategy and its reason from the schema
//! gate and the roll, the steps in the order the capacity planner and the roll take them, the
//! gates on the way. Pure; does not need a client.
//!
//! It is made again when the generation, the changes, the strategy, the reason or the gates
//! change, and kept otherwise: the order of a roll moves with the servers' running jobs, and
//! the status must not change with every heartbeat. The gates listed are those each step
//! waits for: all of them for a roll and a Recreate, only an approval for a removal, no
//! approval for a replacement a person asked for.

use super::decide::Decisions;
use super::inputs::Inputs;
use crate::crd::{
    ChangePlan, MaintenanceHistory, OrchestratorCluster, PlanAction, PlanEstimate, PlanStep, PlanStrategy,
};
use crate::planners::maintenance::take_order;
use crate::planners::servers::{PodView, ordinal};
use crate::release::Release;
use crate::vocabulary::{Reason, Trigger, UpgradeStage};

/// Steps listed in `status.plan`; the rest are counted.
pub(crate) const LISTED_STEPS: usize = 10;

/// Step durations kept in `status.history`.
pub(crate) const TIMED_STEPS: usize = 5;

/// The plan of `cr`'s current spec (`wanted`: the release it asks for; `pods`: the server pods,
/// whose releases say what runs while the roll replaces them; `history`: what its estimate
/// rests on).
pub(super) fn change_plan(
    cr: &OrchestratorCluster,
    wanted: &Release,
    pods: &[PodView],
    inputs: &Inputs,
    decisions: &Decisions,
    history: Option<&MaintenanceHistory>,
) -> ChangePlan {
    let Decisions {
        wanted: replicas,
        gates,
        autoscale,
        upgrade,
        capacity,
        roll,
        canary,
    } = decisions;
    let current = inputs.current;
    let mut changes = Vec::new();
    // The release being replaced: the template's while it is not the wanted one yet, then the
    // one the pods not yet replaced run.
    let running = inputs
        .running_release
        .as_ref()
        .filter(|r| *r != wanted)
        .or_else(|| pods.iter().filter_map(|p| p.release.as_ref()).find(|r| *r != wanted));
    let new_release = running.is_some();
    match running {
        Some(r) if r.version != wanted.version => changes.push(format!("version {} -> {}", r.version, wanted.version)),
        Some(r) if r.image != wanted.image => changes.push(format!("image {} -> {}", r.image, wanted.image)),
        _ => {}
    }
    if *replicas != current {
        changes.push(format!("servers {current} -> {replicas}"));
    }
    // The roll's trigger; once its last outdated server is gone (a step waiting for its
    // replacement), the one the status recorded, so the plan does not change mid-step.
    let trigger = roll.trigger.or_else(|| {
        roll.step.as_ref()?;
        cr.status
            .as_ref()?
            .maintenance
            .as_ref()?
            .reason
            .as_deref()?
            .parse()
            .ok()
    });
    match trigger {
        Some(Trigger::TemplateChange) if !new_release => changes.push("pod template".into()),
        Some(Trigger::RestartRequested) => changes.push("restart requested".into()),
        Some(Trigger::ReplaceRequested) => changes.push("replacement requested".into()),
        _ => {}
    }
    let rolling = roll.outdated > 0 || roll.step.is_some();
    let (strategy, reason) = if upgrade.recreate {
        // Under way, or halted under way (a drain timeout, a failed migration): still Recreate.
        let reason = upgrade
            .blocked
            .as_ref()
            .map_or(Reason::SchemaMigration, |hold| hold.reason);
        (PlanStrategy::Recreate, reason.as_str().to_string())
    } else if let Some(hold) = &upgrade.blocked {
        (PlanStrategy::Refused, hold.reason.as_str().to_string())
    } else if upgrade.stage == Some(UpgradeStage::SchemaCheck) {
        (PlanStrategy::Pending, Reason::SchemaCheck.as_str().to_string())
    } else if rolling && canary.rollback_to.is_some() {
        (PlanStrategy::Rolling, Reason::CanaryFailed.as_str().to_string())
    } else if rolling || new_release {
        // A new release let through (its template about to be written) rolls too.
        let reason = if new_release {
            "SchemaCompatible"
        } else {
            trigger.map_or("TemplateChange", Trigger::as_str)
        };
        (PlanStrategy::Rolling, reason.to_string())
    } else if *replicas != current {
        (PlanStrategy::Scaling, Reason::Scaling.as_str().to_string())
    } else {
        (PlanStrategy::NothingToDo, String::new())
    };
    let reason = match (&capacity.blocked, strategy) {
        (Some(hold), PlanStrategy::Scaling) => format!("PreconditionFailed:{}", hold.reason),
        _ => reason,
    };
    let cluster = cr.metadata.name.clone().unwrap_or_default();
    let name = |o: i32| Some(format!("{cluster}-{o}"));
    // A server a scale-down removes is not replaced too.
    let stays = |server: &String| ordinal(&cluster, server).is_some_and(|o| o < *replicas);
    let step = |server: Option<String>, action| PlanStep { server, action };
    // Capacity beats the roll: servers are added or removed first.
    let mut steps: Vec<PlanStep> = if strategy == PlanStrategy::Recreate || strategy == PlanStrategy::Refused {
        Vec::new()
    } else if *replicas > current {
        (current..*replicas).map(|o| step(name(o), PlanAction::Add)).collect()
    } else {
        (*replicas..current)
            .rev()
            .map(|o| step(name(o), PlanAction::Remove))
            .collect()
    };
    // The template does not carry the wanted release yet: every server is replaced for it.
    // (A rollback's template carries the previous release on purpose.)
    let template_pending = inputs.running_release.as_ref().is_some_and(|r| r != wanted) && canary.rollback_to.is_none();
    match strategy {
        PlanStrategy::Rolling if !roll.queue.is_empty() && !template_pending => steps.extend(
            roll.queue
                .iter()
                .filter(|s| stays(s))
                .map(|s| step(Some(s.clone()), PlanAction::Replace)),
        ),
        // A release not in the template yet: the step in progress ends on the running
        // release, then every server is replaced, in the roll's order.
        PlanStrategy::Rolling | PlanStrategy::Pending => steps.extend(
            roll.step
                .iter()
                .map(|s| s.server.clone())
                .chain(take_order(&inputs.views))
                .filter(stays)
                .map(|s| step(Some(s), PlanAction::Replace)),
        ),
        PlanStrategy::Recreate => {
            let mut stopping: Vec<String> = inputs
                .views
                .iter()
                .filter(|s| s.pod_exists)
                .map(|s| s.name.clone())
                .collect();
            stopping.reverse();
            steps.extend(stopping.into_iter().map(|s| step(Some(s), PlanAction::Stop)));
            steps.push(step(None, PlanAction::Migrate));
            steps.push(step(None, PlanAction::Start));
        }
        PlanStrategy::Scaling | PlanStrategy::NothingToDo | PlanStrategy::Refused => {}
    }
    // A canary's bake comes after its servers' replacements (the one in progress counted).
    if let Some(ahead) = canary
        .bake_after
        .filter(|_| matches!(strategy, PlanStrategy::Rolling | PlanStrategy::Pending))
    {
        let judged = canary.status.as_ref().map(|c| c.servers.as_slice()).unwrap_or_default();
        let replacing = |s: &PlanStep| s.action == PlanAction::Replace;
        let before = ahead
            + steps
                .iter()
                .filter(|s| replacing(s) && s.server.as_ref().is_some_and(|name| judged.contains(name)))
                .count();
        if steps.iter().filter(|s| replacing(s)).count() > before {
            let at = steps
                .iter()
                .enumerate()
                .filter(|(_, s)| replacing(s))
                .nth(before)
                .map_or(steps.len(), |(i, _)| i);
            steps.insert(at, step(None, PlanAction::Bake));
        }
    }
    // The gates each step waits for: a roll's and a Recreate's wait for all of them; a removal
    // only for an approval (and none when the autoscaler removes).
    let replaces = steps
        .iter()
        .any(|s| matches!(s.action, PlanAction::Replace | PlanAction::Stop));
    let removes = autoscale.is_none() && steps.iter().any(|s| s.action == PlanAction::Remove);
    // A replacement a person asked for (`kubectl orc drain`) is its own approval.
    let asked = strategy == PlanStrategy::Rolling && trigger == Some(Trigger::ReplaceRequested) && !new_release;
    let approves = removes || (replaces && !asked);
    let replacements = steps.iter().filter(|s| s.action == PlanAction::Replace).count();
    let baking = steps.iter().any(|s| s.action == PlanAction::Bake);
    let more_steps = steps.len().saturating_sub(LISTED_STEPS) as i32;
    steps.truncate(LISTED_STEPS);
    ChangePlan {
        generation: cr.metadata.generation.unwrap_or_default(),
        changes,
        strategy,
        reason,
        steps,
        more_steps,
        gates: gates
            .iter()
            .filter(|hold| match hold.reason {
                Reason::AwaitingApproval => approves,
                _ => replaces,
            })
            .map(|hold| format!("{}: {}", hold.reason, hold.message))
            .collect(),
        estimate: estimate(strategy, replacements, history).map(|mut estimate| {
            if let (true, Some(duration)) = (baking, estimate.duration_seconds.as_mut()) {
                *duration += canary.bake.as_secs() as i64;
                estimate.basis = format!(
                    "{}; and the canary's bake of {} s",
                    estimate.basis,
                    canary.bake.as_secs()
                );
            }
            estimate
        }),
    }
}

/// The estimate of a plan of `strategy` that replaces `replacements` servers, from `history`.
fn estimate(strategy: PlanStrategy, replacements: usize, history: Option<&MaintenanceHistory>) -> Option<PlanEstimate> {
    let steps = history.map(|h| h.step_seconds.as_slice()).unwrap_or_default();
    let migration = history.and_then(|h| h.migration_seconds);
    match strategy {
        PlanStrategy::NothingToDo => Some(PlanEstimate {
            duration_seconds: Some(0),
            downtime_seconds: Some(0),
            basis: "nothing to do".into(),
        }),
        PlanStrategy::Rolling => {
            let median = median(steps);
            Some(PlanEstimate {
                duration_seconds: median.map(|m| m * replacements as i64),
                downtime_seconds: Some(0),
                basis: match median {
                    Some(m) => format!(
                        "{replacements} replacements of {m} s, the median of the last {} steps; one server out at a time, the others serve",
                        steps.len()
                    ),
                    None => "no step timed yet; one server out at a time, the others serve".into(),
                },
            })
        }
        PlanStrategy::Scaling => Some(PlanEstimate {
            duration_seconds: None,
            downtime_seconds: Some(0),
            basis: "servers are added or drained while the others serve".into(),
        }),
        PlanStrategy::Recreate => Some(PlanEstimate {
            duration_seconds: migration,
            downtime_seconds: migration,
            basis: match migration {
                Some(m) => format!(
                    "no server serves for at least the last migration's {m} s (the drains before it and the new servers' start not counted)"
                ),
                None => {
                    "no server serves from the last drain to the first new server joined; no migration timed yet".into()
                }
            },
        }),
        PlanStrategy::Pending | PlanStrategy::Refused => None,
    }
}

/// The median of `seconds` (the lower of the middle two), `None` when empty.
fn median(seconds: &[i64]) -> Option<i64> {
    let mut sorted = seconds.to_vec();
    sorted.sort_unstable();
    sorted.get(sorted.len().saturating_sub(1) / 2).copied()
}

/// `status.history` after this reconcile: `previous`, with the step that finished now
/// (`step_done`, its seconds) and the last migration's duration (`migration`, from its Job,
/// kept once the Job is gone).
pub(super) fn history(
    previous: Option<&MaintenanceHistory>,
    step_done: Option<f64>,
    migration: Option<i64>,
) -> Option<MaintenanceHistory> {
    let mut history = previous.cloned().unwrap_or_default();
    if let Some(seconds) = step_done {
        history.step_seconds.push(seconds.round() as i64);
        let excess = history.step_seconds.len().saturating_sub(TIMED_STEPS);
        history.step_seconds.drain(..excess);
    }
    history.migration_seconds = migration.or(history.migration_seconds);
    (history != MaintenanceHistory::default()).then_some(history)
}

/// `fresh`, unless `previous` is the plan of the same generation with the same changes,
/// strategy, reason and gates: then `previous`, whose order was the one when the change began
/// (an autoscaler's new count is a new change without a new generation), with the fresh
/// estimate (it changes once per step at most, as a step's duration is recorded).
pub(super) fn kept(previous: Option<&ChangePlan>, fresh: ChangePlan) -> ChangePlan {
    match previous {
        Some(previous)
            if previous.generation == fresh.generation
                && previous.changes == fresh.changes
                && previous.strategy == fresh.strategy
                && previous.reason == fresh.reason
                && previous.gates == fresh.gates =>
        {
            ChangePlan {
                estimate: fresh.estimate,
                ..previous.clone()
            }
        }
        _ => fresh,
    }
}
