//! The canary of a roll to a new release (`maintenance.canary`): which servers it is, when its
//! bake started, its verdict, and the rollback of a failed one. Pure; does not need a client.
//!
//! Every move rests on what the last status recorded, so neither a restarted operator nor a
//! stale read skips one: the bake is judged only once its start is recorded, and a failed
//! canary is rolled back only once its failure is recorded (the look that reaches the verdict
//! holds the roll and writes it).
//!
//! ```text
//! Replacing ─ every canary server joined ─▶ Baking ─ judged ─▶ Passed: the roll goes on
//!     │                                       │  └─ bake over, too few jobs ─▶ Inconclusive
//!     └─ a canary server does not join ───────┴─▶ Failed ─ canary servers replaced ─▶ RolledBack
//! ```
//!
//! A rollback replaces the canary servers with the release the others run by the roll's own
//! steps (drain, evict, joined; one at a time, behind `paused` but not behind an approval or a
//! window: leaving a bad release running is the greater risk). It halts the change with
//! `CanaryFailed` until `spec.version` (or the image) asks for another release.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use super::inputs::Inputs;
use crate::crd::{
    Approval, CanaryPhase, CanaryShortfall, CanaryStatus, JobOutcomes, OrchestratorCluster, PROMOTE_ANNOTATION,
};
use crate::planners::canary::{CanaryPolicy, Evidence, Verdict, judge};
use crate::planners::maintenance::{CanaryCheck, MaintenanceDecision};
use crate::planners::servers::ordinal;
use crate::planners::upgrade::UpgradeDecision;
use crate::planners::windows::elapsed;
use crate::reconcile::observe::Observed;
use crate::release::Release;
use crate::validate::ValidSpec;
use crate::vocabulary::{Hold, Reason};

/// The canary's part of a reconcile.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct CanaryPlan {
    /// `status.canary`.
    pub(super) status: Option<CanaryStatus>,
    /// What the roll is told: how many servers go first and the verdict on them (`None`: no
    /// canary holds this roll).
    pub(super) check: Option<CanaryCheck>,
    /// The release the StatefulSet runs in place of the wanted one: a recorded failure's.
    pub(super) rollback_to: Option<Release>,
    /// Replacements before the bake, for the change plan (`None`: no bake ahead).
    pub(super) bake_after: Option<usize>,
    /// `bakeTime`, for the estimate of a plan with a bake ahead.
    pub(super) bake: Duration,
}

impl CanaryPlan {
    /// Why the change halts while (and after) a failed canary is rolled back.
    pub(super) fn failed(&self) -> Option<Hold> {
        self.rollback_to.as_ref()?;
        let status = self.status.as_ref()?;
        let done = status.phase == CanaryPhase::RolledBack;
        Some(Hold::new(
            Reason::CanaryFailed,
            format!(
                "the canary of version {} failed ({}): {}; {} version {}; set spec.version (or the image) to another release to go on",
                status.version,
                status
                    .shortfall
                    .map_or_else(|| "no reason recorded".to_string(), |why| format!("{why:?}")),
                status.message.as_deref().unwrap_or("no figures"),
                if done {
                    "its servers run again"
                } else {
                    "its servers are being put back on"
                },
                status.from_version,
            ),
        ))
    }
}

fn release(version: &str, image: &str) -> Release {
    Release {
        version: version.to_string(),
        image: image.to_string(),
    }
}

/// The recorded canary of the wanted release when it failed: its servers go back (or went back)
/// to the previous release. Whatever `maintenance.canary` says now: removing it does not let
/// the failed release back in, only asking for another release does.
pub(super) fn recorded_failure<'a>(spec: &'a ValidSpec) -> Option<&'a CanaryStatus> {
    let wanted = &spec.wanted;
    spec.cr
        .status
        .as_ref()?
        .canary
        .as_ref()
        .filter(|c| c.is_of(wanted))
        .filter(|c| matches!(c.phase, CanaryPhase::Failed | CanaryPhase::RolledBack))
}

/// A canary server that fell: no pod, or a row that served and now an unready pod or a row that
/// no longer serves (a heartbeat only late, its pod ready and its row serving, has not).
fn fallen(inputs: &Inputs, server: &str) -> bool {
    inputs
        .views
        .iter()
        .find(|s| s.name == server)
        .is_none_or(|s| !s.pod_exists || (s.state.is_some() && !s.joined && (!s.ready || !s.serving)))
}

/// The canary of `spec`'s change, from the last recorded one, the pods and the evidence read.
pub(super) fn plan(
    spec: &ValidSpec,
    observed: &Observed,
    inputs: &Inputs,
    upgrade: &UpgradeDecision,
    wanted_servers: i32,
    now: Timestamp,
) -> CanaryPlan {
    let cr = spec.cr;
    let wanted = &spec.wanted;
    let on_wanted: Vec<&str> = observed
        .pods
        .iter()
        .filter(|p| p.release.as_ref() == Some(wanted))
        .map(|p| p.name.as_str())
        .collect();
    if let Some(failed) = recorded_failure(spec) {
        // Back once no pod runs the failed release and the last step (its replacement
        // joining) has ended; back stays back.
        let back = failed.phase == CanaryPhase::RolledBack || (on_wanted.is_empty() && inputs.previous_step.is_none());
        return CanaryPlan {
            status: Some(CanaryStatus {
                phase: if back {
                    CanaryPhase::RolledBack
                } else {
                    CanaryPhase::Failed
                },
                ..failed.clone()
            }),
            rollback_to: Some(release(&failed.from_version, &failed.from_image)),
            ..CanaryPlan::default()
        };
    }
    let Some((servers, policy)) = spec.canary else {
        return CanaryPlan::default();
    };
    let recorded = cr.status.as_ref().and_then(|s| s.canary.as_ref());
    let previous = recorded.filter(|c| c.is_of(wanted));
    // A record of another release is kept as the last canary's outcome once it had one.
    let history = || {
        recorded
            .filter(|c| {
                matches!(
                    c.phase,
                    CanaryPhase::Passed | CanaryPhase::RolledBack | CanaryPhase::NotApplicable
                )
            })
            .cloned()
    };
    // The release the template ran before this change (while it still does).
    let running = inputs.running_release.as_ref().filter(|r| *r != wanted);
    let record = |phase, from: &Release, message: String| CanaryStatus {
        phase,
        version: wanted.version.clone(),
        image: wanted.image.clone(),
        from_version: from.version.clone(),
        from_image: from.image.clone(),
        message: Some(message),
        ..CanaryStatus::default()
    };
    if upgrade.recreate {
        let from = running.cloned().unwrap_or_else(|| wanted.clone());
        return CanaryPlan {
            status: Some(previous.cloned().unwrap_or_else(|| record(
                CanaryPhase::NotApplicable,
                &from,
                "the version changes the schema and every server is recreated after the migration: no canary; going back would need the database restored from before the migration".into(),
            ))),
            ..CanaryPlan::default()
        };
    }
    let servers = usize::try_from(servers).unwrap_or(1);
    if !upgrade.release_ready {
        // A new release at its schema check (or refused): the plan shows the bake ahead.
        let ahead = running.is_some() && upgrade.blocked.is_none() && on_wanted.is_empty();
        return CanaryPlan {
            status: previous.cloned().or_else(history),
            bake_after: ahead.then_some(servers),
            bake: policy.bake,
            ..CanaryPlan::default()
        };
    }
    // The servers of another release: the ones the roll replaces.
    let others: Vec<&Release> = observed
        .pods
        .iter()
        .filter_map(|p| p.release.as_ref())
        .filter(|r| *r != wanted)
        .collect();
    if others.is_empty() {
        // Nothing runs another release: no roll to a new release (or it is over).
        return CanaryPlan {
            status: previous.cloned().or_else(history),
            ..CanaryPlan::default()
        };
    }
    let Some(previous) = previous else {
        // A canary is of a release no server runs yet: one that some already run (a revert
        // during a canary, a roll taken up again) needs none.
        if !on_wanted.is_empty() {
            return CanaryPlan {
                status: history(),
                ..CanaryPlan::default()
            };
        }
        let from = running
            .cloned()
            .or_else(|| most_common(&others))
            .unwrap_or_else(|| wanted.clone());
        if observed.pods.len() <= servers {
            return CanaryPlan {
                status: Some(record(
                    CanaryPhase::NotApplicable,
                    &from,
                    format!("the cluster has no server besides the {servers} the canary would replace: no canary"),
                )),
                ..CanaryPlan::default()
            };
        }
        return CanaryPlan {
            status: Some(record(
                CanaryPhase::Replacing,
                &from,
                format!("0 of {servers} canary servers run version {}", wanted.version),
            )),
            check: Some(CanaryCheck {
                servers,
                replaced: 0,
                verdict: None,
                unpromoted: None,
            }),
            bake_after: Some(servers),
            bake: policy.bake,
            ..CanaryPlan::default()
        };
    };
    if previous.phase == CanaryPhase::NotApplicable {
        return CanaryPlan {
            status: Some(previous.clone()),
            ..CanaryPlan::default()
        };
    }
    let unpromoted = unpromoted(cr, wanted);
    let check = |verdict| {
        Some(CanaryCheck {
            servers,
            replaced: on_wanted.len(),
            verdict,
            unpromoted: unpromoted.clone(),
        })
    };
    if previous.phase == CanaryPhase::Passed {
        return CanaryPlan {
            status: Some(previous.clone()),
            check: check(Some(Verdict::Pass { figures: String::new() })),
            ..CanaryPlan::default()
        };
    }
    let mut status = previous.clone();
    let mut plan = CanaryPlan {
        bake_after: Some(servers.saturating_sub(on_wanted.len())),
        bake: policy.bake,
        ..CanaryPlan::default()
    };
    let verdict = if let Some(started) = status.bake_started_at.as_ref().map(|t| t.0) {
        // The servers recorded when the bake started are judged (a server added since is
        // neither the canary nor the baseline); one a scale-down removes is not judged by its
        // leaving.
        let kept_joined = status
            .servers
            .iter()
            .all(|s| !fallen(inputs, s) || ordinal(&cr.name_any(), s).is_none_or(|o| o >= wanted_servers));
        judged(
            &mut status,
            observed,
            inputs.database_ready,
            kept_joined,
            policy,
            elapsed(started, now),
            now,
        )
    } else if on_wanted.len() < servers {
        status.servers = on_wanted.iter().map(|s| s.to_string()).collect();
        status.phase = CanaryPhase::Replacing;
        status.message = Some(format!(
            "{} of {servers} canary servers run version {}",
            on_wanted.len(),
            wanted.version
        ));
        None
    } else if inputs.database_ready
        && on_wanted
            .iter()
            .all(|s| inputs.servers.iter().any(|v| v.name == *s && v.joined))
    {
        // Recorded now, with its servers, and judged from the next look on.
        status.servers = on_wanted.iter().map(|s| s.to_string()).collect();
        status.phase = CanaryPhase::Baking;
        status.bake_started_at = Some(Time(now));
        status.message = Some(format!("every canary server joined; baking for {:?}", policy.bake));
        None
    } else {
        status.servers = on_wanted.iter().map(|s| s.to_string()).collect();
        status.phase = CanaryPhase::Replacing;
        status.message = Some("waiting for every canary server to join before the bake".into());
        None
    };
    if matches!(verdict, Some(Verdict::Pass { .. }) | Some(Verdict::Fail { .. })) {
        plan.bake_after = None;
    }
    plan.check = check(verdict);
    plan.status = Some(status);
    plan
}

/// Judges a canary whose bake started `baked` ago, and records the verdict in `status`. No
/// verdict without the database read: joined servers and evidence are unknown then.
fn judged(
    status: &mut CanaryStatus,
    observed: &Observed,
    database_ready: bool,
    kept_joined: bool,
    policy: CanaryPolicy,
    baked: Duration,
    now: Timestamp,
) -> Option<Verdict> {
    if !database_ready {
        status.message = Some("the database cannot be read: the canary is not judged meanwhile".into());
        return None;
    }
    let [canary, others] = match &observed.canary_evidence {
        Some(Ok(seen)) => *seen,
        Some(Err(why)) => {
            status.message = Some(format!("{why}; the canary is not judged meanwhile"));
            return None;
        }
        None => return None,
    };
    let verdict = judge(
        &policy,
        &Evidence {
            baked,
            canary,
            others,
            kept_joined,
        },
    );
    status.canary_jobs = Some(JobOutcomes::from(&canary));
    status.other_jobs = Some(JobOutcomes::from(&others));
    let (phase, message) = match &verdict {
        // No countdown: the message changes with the jobs only, not with every look.
        Verdict::Baking { .. } => (
            CanaryPhase::Baking,
            format!(
                "baking for {:?}; canary: {}; other servers: {}",
                policy.bake,
                JobOutcomes::from(&canary),
                JobOutcomes::from(&others)
            ),
        ),
        Verdict::TooFewJobs { have } => (
            CanaryPhase::Inconclusive,
            format!(
                "the bake is over and the canary finished {have} of the {} jobs needed to judge it; the roll waits for more (or lower maintenance.canary.minJobs)",
                policy.min_jobs
            ),
        ),
        Verdict::Pass { figures } => (CanaryPhase::Passed, figures.clone()),
        Verdict::Fail { why, figures } => {
            status.shortfall = Some(*why);
            (CanaryPhase::Failed, figures.clone())
        }
    };
    if matches!(phase, CanaryPhase::Passed | CanaryPhase::Failed) {
        status.decided_at = Some(Time(now));
    }
    status.phase = phase;
    status.message = Some(message);
    Some(verdict)
}

/// Under `approval: Manual`, what a passed canary waits for until the current generation is
/// promoted (annotation `orchestrator.dev/promote`): a person reads the figures first.
fn unpromoted(cr: &OrchestratorCluster, wanted: &Release) -> Option<Hold> {
    if cr.spec.maintenance.approval != Approval::Manual {
        return None;
    }
    let generation = cr.metadata.generation.unwrap_or_default();
    let promoted = cr
        .annotations()
        .get(PROMOTE_ANNOTATION)
        .map(|v| v.trim().parse::<i64>());
    (promoted != Some(Ok(generation))).then(|| {
        Hold::new(
            Reason::AwaitingApproval,
            format!(
                "the canary of version {} passed; maintenance.approval is Manual, so the rest of the roll waits for its promotion: read `kubectl orc status {name}`, then `kubectl orc approve {name}` (or `kubectl -n {} annotate orc {name} {PROMOTE_ANNOTATION}={generation} --overwrite`)",
                wanted.version,
                cr.namespace().unwrap_or_default(),
                name = cr.name_any(),
            ),
        )
    })
}

/// The release most of `releases` are (the first of a tie).
fn most_common(releases: &[&Release]) -> Option<Release> {
    releases
        .iter()
        .max_by_key(|r| releases.iter().filter(|o| o == r).count())
        .map(|r| (*r).clone())
}

/// A canary server's replacement that did not join within `readyTimeout` fails the canary:
/// the roll halted on it (`ReadyTimeout`) is told `CanaryFailed`, recorded for the rollback.
pub(super) fn never_joined(plan: &mut CanaryPlan, roll: &mut MaintenanceDecision, now: Timestamp) {
    let Some(status) = plan.status.as_mut().filter(|s| s.phase == CanaryPhase::Replacing) else {
        return;
    };
    let Some(step) = roll.step.as_ref() else {
        return;
    };
    if roll.blocked.as_ref().map(|hold| hold.reason) != Some(Reason::ReadyTimeout)
        || !status.servers.contains(&step.server)
    {
        return;
    }
    let message = format!(
        "{} did not join on version {} within readyTimeout",
        step.server, status.version
    );
    status.phase = CanaryPhase::Failed;
    status.shortfall = Some(CanaryShortfall::NeverJoined);
    status.decided_at = Some(Time(now));
    status.message = Some(message.clone());
    roll.blocked = Some(Hold::new(
        Reason::CanaryFailed,
        format!("the canary failed (NeverJoined): {message}; it is rolled back"),
    ));
}
