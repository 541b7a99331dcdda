//! Plan: from the validated spec and what was observed, everything a reconcile does — the
//! writes, the database steps, an eviction, the Events, the status and when to look again.
//! A pure function; does not need a client. Each part is its own module:
//!
//! - [`inputs`]: the observation adapted to what the planners read;
//! - [`decide`]: the three planners and the precedence between them;
//! - [`desired`]: the owned objects the decisions want, and which differ from the live ones;
//! - [`status`]: the status, conditions and step in progress;
//! - [`canary`]: the canary of a roll to a new release, and the rollback of a failed one;
//! - [`change`]: the plan of the spec change (`status.plan`), read from the decisions;
//! - [`operator_change`]: a change of the pod template that comes from the operator, held by
//!   `maintenance.operatorChanges`;
//! - [`events`]: the Events of the steps and of conditions that turned bad.

mod canary;
mod change;
mod decide;
mod desired;
mod events;
mod inputs;
mod operator_change;
mod status;
#[cfg(test)]
mod tests;

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

pub use desired::{Child, Write};
pub use events::PlannedEvent;
pub(crate) use status::{invalid_spec_status, with_rejection};

use crate::conditions::{find, status as condition_status};
use crate::crd::{CanaryPhase, OrchestratorClusterStatus, Phase};
use crate::error::Result;
use crate::metrics::{ClusterFigures, Finished};
use crate::planners::autoscale::Readings;
use crate::planners::maintenance::MaintenanceAction;
use crate::reconcile::observe::Observed;
use crate::validate::ValidSpec;
use crate::vocabulary::{ConditionType, Hold, Reason, UpgradeStage};

/// What a reconcile should do.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// Owned objects that are missing or differ from what the spec wants.
    pub writes: Vec<Write>,
    /// Servers to ask for a friendly shutdown through the database.
    pub drain: Vec<String>,
    /// Rows of gone servers to remove from the database.
    pub remove_rows: Vec<String>,
    /// Servers wanted again whose drain request is withdrawn.
    pub undrain: Vec<String>,
    /// Pod to evict for rolling maintenance, with the uid it must still have.
    pub evict: Option<(String, Option<String>)>,
    /// Events to publish.
    pub events: Vec<PlannedEvent>,
    /// The status to report.
    pub status: OrchestratorClusterStatus,
    /// Per-cluster gauges.
    pub(crate) figures: ClusterFigures,
    /// A maintenance stage that ended in this reconcile.
    pub(crate) finished_stage: Option<Finished>,
    /// The maintenance step that finished in this reconcile (a server replaced and joined),
    /// from its drain to its replacement joining.
    pub(crate) step_done: Option<Finished>,
    /// When to look again if nothing is notified before: the moment time alone changes what
    /// the reconcile would see, or a step's poll.
    pub requeue: Duration,
    /// This status records a decision the next look acts on (a canary's failure, rolled back
    /// once recorded): look again as soon as the cache holds it.
    pub(crate) recorded_decision: bool,
    /// The autoscaler's readings to keep for the next look (`None`: none, or start again).
    pub(crate) readings: Option<Readings>,
}

impl Plan {
    /// Whether the plan acts on servers (a drain asked or withdrawn, an eviction, a row
    /// removed): such a plan is stored with a resourceVersion precondition before it acts.
    pub(crate) fn touches_servers(&self) -> bool {
        !self.drain.is_empty() || !self.undrain.is_empty() || !self.remove_rows.is_empty() || self.evict.is_some()
    }
}

/// Look again this soon while something changes or is wrong.
pub(crate) const BUSY_REQUEUE: Duration = Duration::from_secs(5);
/// Look again this soon while a maintenance step or a version change waits on the database
/// (a drain finishing, a replacement joining): the database cannot be watched, and every
/// second of delay here adds to every step of a roll.
pub(crate) const STEP_REQUEUE: Duration = Duration::from_secs(1);
/// Look again at the latest this late when everything is settled (and no heartbeat can go
/// stale before): a safety net, every change is watched or notified.
pub(crate) const IDLE_REQUEUE: Duration = Duration::from_secs(300);
/// An autoscaled cluster reads its signal (the database's queue) at least this often.
pub(crate) const SIGNAL_PERIOD: Duration = Duration::from_secs(5);
/// Looked at this long after a heartbeat can go stale, it surely is (or a newer one came).
const EXPIRY_MARGIN: Duration = Duration::from_millis(250);

/// Plans the reconcile of the cluster of `spec`. Fails only if an owned object cannot be
/// serialized for the drift comparison.
pub(crate) fn plan(spec: &ValidSpec, observed: &Observed, now: &Time) -> Result<Plan> {
    let cr = spec.cr;
    let inputs = inputs::gather(cr, observed, now.0);
    let mut decisions = decide::decide(spec, observed, &inputs, now);
    let (writes, pending_operator_change) = desired::writes(spec, observed, &inputs, &decisions, now.0)?;
    // A StatefulSet about to be written (new template or replicas) is not the one observed:
    // nothing is settled until the StatefulSet controller has seen the written one.
    let statefulset_current = !writes.iter().any(|w| matches!(w.child, Child::StatefulSet(_)));
    if !(statefulset_current && inputs.statefulset_observed)
        && inputs.previous_step.is_none()
        && decisions.roll.step.is_some()
    {
        // Which servers are outdated is read from the observed StatefulSet's update revision:
        // one about to be overwritten (a hand edit being reverted) says nothing, nor does one
        // the StatefulSet controller has not yet observed (the revert is written, but the update
        // revision is still the hand edit's). No step starts until the written spec's revision
        // is observed.
        decisions.roll.action = MaintenanceAction::None;
        decisions.roll.step = None;
        decisions.roll.waiting = Some(Hold::new(
            Reason::StatefulSetChanging,
            "the StatefulSet is being written; the roll looks again once it is current",
        ));
    }
    if let Some(limit) = observed.rolls_full
        && !cr
            .status
            .as_ref()
            .is_some_and(OrchestratorClusterStatus::roll_under_way)
        && decisions.roll.step.is_some()
    {
        // A fleet-wide change (an operator upgrade that changes every template) rolls at most
        // `limit` clusters at once; the others wait their turn, in the controller's queue order.
        decisions.roll.action = MaintenanceAction::None;
        decisions.roll.step = None;
        decisions.roll.waiting = Some(Hold::new(
            Reason::RollLimit,
            format!(
                "{limit} clusters are rolling, the most --max-concurrent-rolls allows; this roll starts when one of them finishes"
            ),
        ));
    }
    let mut status = status::status(cr, observed, &inputs, &decisions, statefulset_current, now);
    status.pending_operator_change = pending_operator_change;
    let mut events = events::events(cr, observed, &inputs, &decisions, &status);
    events.extend(events::operator_change_event(cr, &status, &writes));
    if observed.rejected.is_some() {
        // The writes of this plan were refused at this generation: the steps it announces
        // ("adding prod-0") will not happen, and saying them at every retry would be noise.
        // What already happened (a step done, a migration) is still said.
        events.retain(|event| {
            !matches!(
                event.reason,
                Reason::ScalingUp
                    | Reason::ScalingDown
                    | Reason::Draining
                    | Reason::RemovedServerRows
                    | Reason::MaintenanceDraining
                    | Reason::MaintenanceEvicting
            )
        });
    }
    let step_done = inputs
        .previous_step
        .as_ref()
        .filter(|_| events.iter().any(|e| e.reason == Reason::MaintenanceStepDone))
        .map(|step| Finished {
            stage: step.stage,
            key: format!("{}@{}", step.server, step.began),
            seconds: now.0.duration_since(step.began).as_secs_f64().max(0.0),
        });
    status.history = change::history(
        cr.status.as_ref().and_then(|s| s.history.as_ref()),
        step_done.as_ref().map(|step| step.seconds),
        observed.schema_jobs.migration_seconds,
    );
    status.plan = Some(change::kept(
        cr.status.as_ref().and_then(|s| s.plan.as_ref()),
        change::change_plan(
            cr,
            &spec.wanted,
            &observed.pods,
            &inputs,
            &decisions,
            status.history.as_ref(),
        ),
    ));
    let decide::Decisions {
        wanted,
        autoscale,
        upgrade,
        capacity,
        roll,
        ..
    } = decisions;
    let previous_step = inputs.previous_step;
    let settled = status.phase == Phase::Ready;
    // A step in progress, the next step due, or every server draining for a migration (not a
    // gate that waits for a person or a window, not a halt).
    let next_step_due = roll.outdated > 0 && roll.waiting.is_none();
    // Jobs are watched; only drains and joins need the database polled this often.
    let draining_all = upgrade.stage == Some(UpgradeStage::StoppingServers);
    let stepping = (roll.step.is_some() || next_step_due || draining_all) && status.phase != Phase::Blocked;
    let finished_stage = previous_step.as_ref().and_then(|before| {
        let same = roll
            .step
            .as_ref()
            .is_some_and(|after| after.server == before.server && after.stage == before.stage);
        (!same).then(|| Finished {
            stage: before.stage,
            key: format!("{}@{}", before.server, before.since),
            seconds: now.0.duration_since(before.since).as_secs_f64().max(0.0),
        })
    });
    let held_seconds = find(&status.conditions, ConditionType::MaintenanceBlocked)
        .filter(|c| c.status == condition_status::TRUE)
        .map(|c| now.0.duration_since(c.last_transition_time.0).as_secs_f64().max(0.0) as i64)
        .unwrap_or(0);
    let joined = inputs.servers.iter().filter(|s| s.joined).count() as i64;
    let canary_phase = |status: Option<&OrchestratorClusterStatus>| {
        status
            .and_then(|s| s.canary.as_ref())
            .map(|c| (c.version.clone(), c.phase))
    };
    let canary_now = canary_phase(Some(&status));
    let recorded_decision = canary_now
        .as_ref()
        .is_some_and(|(_, phase)| *phase == CanaryPhase::Failed)
        && canary_phase(cr.status.as_ref()) != canary_now;
    // A bake is judged from the database at every look: each second of delay is a second more
    // of work on a release that may be bad.
    let baking = canary_now.is_some_and(|(_, phase)| phase == CanaryPhase::Baking);
    let held_operator_change = status.pending_operator_change.is_some();
    Ok(Plan {
        recorded_decision,
        step_done,
        finished_stage,
        writes,
        drain: capacity
            .drain
            .iter()
            .cloned()
            .chain(match &roll.action {
                MaintenanceAction::RequestDrain(server) => Some(server.clone()),
                _ => None,
            })
            .chain(upgrade.drain.iter().cloned())
            .collect(),
        evict: match &roll.action {
            MaintenanceAction::Evict(server) => {
                Some((server.clone(), roll.step.as_ref().and_then(|s| s.pod_uid.clone())))
            }
            _ => None,
        },
        remove_rows: capacity.remove_rows,
        undrain: capacity
            .undrain
            .into_iter()
            .chain(match roll.action {
                MaintenanceAction::WithdrawDrain(server) => Some(server),
                _ => None,
            })
            .collect(),
        events,
        figures: ClusterFigures {
            desired: wanted.into(),
            joined,
            draining: inputs.draining,
            problems: inputs.problems.len() as i64,
            database_reachable: inputs.database_ready.into(),
            maintenance_held_seconds: held_seconds,
            running_jobs: inputs.running_jobs,
            oldest_heartbeat_seconds: inputs.oldest_heartbeat_seconds,
            claimable_jobs: observed.database.work().ok().map(|w| w.claimable),
            busy_ratio: observed.database.work().ok().filter(|_| joined > 0).map(|_| {
                // Jobs of the joined servers only: a draining server's are not slots in use.
                let running: i64 = observed
                    .database
                    .members()
                    .unwrap_or_default()
                    .iter()
                    .filter(|m| inputs.servers.iter().any(|s| s.joined && s.name == m.server_id))
                    .map(|m| i64::from(m.running_jobs))
                    .sum();
                running as f64 / (joined * i64::from(spec.workers)) as f64
            }),
        },
        status,
        readings: autoscale.as_ref().and_then(|outcome| outcome.readings.clone()),
        requeue: {
            let requeue = if settled {
                // Settled, nothing is polled: the look comes when a heartbeat can go stale (a
                // server's state changes are notified and its pod is watched).
                inputs
                    .next_expiry
                    .map_or(IDLE_REQUEUE, |expiry| (expiry + EXPIRY_MARGIN).min(IDLE_REQUEUE))
            } else if stepping || baking {
                STEP_REQUEUE
            } else {
                BUSY_REQUEUE
            };
            // A held operator change goes out when the next window opens: looked at then.
            let requeue = match (held_operator_change, spec.calendar.next_opening(now.0)) {
                (true, Some(opens)) => {
                    let until = Duration::try_from(opens.duration_since(now.0)).unwrap_or(Duration::ZERO);
                    requeue.min(until + EXPIRY_MARGIN)
                }
                _ => requeue,
            };
            match &autoscale {
                // The queue is not notified: an autoscaled cluster reads it this often, and
                // looks again when a stabilization window ends or a schedule turns.
                Some(outcome) => requeue
                    .min(SIGNAL_PERIOD)
                    .min(outcome.recheck.map_or(SIGNAL_PERIOD, |r| r + EXPIRY_MARGIN)),
                None => requeue,
            }
        },
    })
}
