//! The rolling-maintenance planner: from the observed servers and the step in progress, the
//! next action of a roll (drain a server through the database, evict its pod, wait for its
//! replacement to join) or the reason it must wait. One operator-initiated disruption at a
//! time; never while another server is unready; unready outdated servers first, then the
//! least busy, highest ordinal on ties. A pure function: the step in progress comes from the
//! cluster's status, so a restarted operator continues the same roll. Does not need a client.

use std::cmp::Reverse;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use orchestrator_contract::server_state;

use super::canary::Verdict;
use super::servers::ordinal;
use super::windows::{elapsed, gate};
use crate::crd::DrainTimeoutPolicy;
use crate::vocabulary::{Hold, Reason, RollStage, Trigger};

/// The step in progress, as persisted in the cluster's status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Step {
    /// Server being replaced.
    pub server: String,
    /// Its stage.
    pub stage: RollStage,
    /// When the stage began.
    pub since: Timestamp,
    /// When the step began (its first stage).
    pub began: Timestamp,
    /// Uid of the pod being replaced (set from the Evicting stage on): a different uid under
    /// the same name is its replacement.
    pub pod_uid: Option<String>,
}

/// One server as the planner needs it.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct ServerView {
    /// The server (its pod name; its row id adds the namespace).
    pub name: String,
    /// StatefulSet ordinal.
    pub ordinal: i32,
    /// The pod exists.
    pub pod_exists: bool,
    /// The pod is being deleted (an eviction or a deletion was accepted): it is going, and
    /// asking again changes nothing. The time is its `deletionTimestamp`, the end of its grace
    /// period, by which its node should have stopped it.
    pub terminating_until: Option<Timestamp>,
    /// Uid of the pod.
    pub uid: Option<String>,
    /// StatefulSet revision of the pod.
    pub revision: Option<String>,
    /// When the pod started.
    pub started_at: Option<Timestamp>,
    /// Pod ready.
    pub ready: bool,
    /// Pod ready and row active with a fresh heartbeat.
    pub joined: bool,
    /// The row says the process may still run jobs (active or draining, with a heartbeat under
    /// a minute old): such a server is drained before its pod goes, even when its pod is
    /// unready or its heartbeat briefly stale. One whose heartbeat stopped for longer cannot
    /// hear a drain request: its pod's SIGTERM is its friendly shutdown.
    pub serving: bool,
    /// Jobs running on it.
    pub running_jobs: i32,
    /// Row state.
    pub state: Option<String>,
    /// Seconds since a drain was requested.
    pub drain_age_seconds: Option<f64>,
    /// A person asked for its replacement (`kubectl orc drain`).
    pub replace_requested: bool,
    /// The zone of its Node, when known.
    pub zone: Option<String>,
    /// Why it is down, when something other than the operator took it down (an eviction by a
    /// node drain): said in the hold that keeps the next step waiting.
    pub disruption: Option<String>,
}

/// The canary of a roll: how many servers go first, and the verdict on them.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct CanaryCheck {
    /// Servers replaced first and judged before the rest.
    pub servers: usize,
    /// Servers whose pods run the release under test (whatever else makes them outdated: a
    /// restart asked meanwhile does not make them count as not replaced).
    pub replaced: usize,
    /// The verdict on them, once they run the new release (`None` before it is read).
    pub verdict: Option<Verdict>,
    /// What a passed canary still waits for: its promotion by a person (`approval: Manual`).
    pub unpromoted: Option<Hold>,
}

/// The hold the canary puts on the next step once its servers are replaced, unless it passed.
fn canary_hold(canary: &CanaryCheck, outdated: usize) -> Option<(Hold, bool)> {
    if canary.replaced < canary.servers || outdated == 0 {
        return None;
    }
    Some(match &canary.verdict {
        Some(Verdict::Pass { .. }) => return canary.unpromoted.clone().map(|hold| (hold, false)),
        Some(Verdict::Fail { why, figures }) => (
            Hold::new(
                Reason::CanaryFailed,
                format!("the canary failed ({why:?}): {figures}; it is rolled back and the roll halts"),
            ),
            true,
        ),
        Some(Verdict::TooFewJobs { have }) => (
            Hold::new(
                Reason::CanaryInconclusive,
                format!(
                    "the canary finished {have} jobs, too few to judge; the roll waits for more (or lower maintenance.canary.minJobs)"
                ),
            ),
            false,
        ),
        Some(Verdict::Baking { .. }) => (
            Hold::new(
                Reason::CanaryBaking,
                format!(
                    "{} canary servers run the new release and bake; status.canary says how they do",
                    canary.servers
                ),
            ),
            false,
        ),
        None => (
            Hold::new(
                Reason::CanaryBaking,
                format!("{} canary servers run the new release; not judged yet", canary.servers),
            ),
            false,
        ),
    })
}

/// How long an eviction may keep being refused (a PodDisruptionBudget that allows no
/// disruption now, an API server that does not answer) before the roll says so with
/// `EvictionRefused`; it keeps trying.
pub(crate) const EVICTION_PATIENCE: Duration = Duration::from_secs(30);

/// Everything the planner reads.
#[derive(Clone, Debug)]
pub(crate) struct MaintenanceInput<'a> {
    /// The cluster's name (its servers are `<name>-<ordinal>`).
    pub cluster: &'a str,
    /// `spec.replicas`: a step on a server at or above it is abandoned (a scale-down removes it).
    pub wanted: i32,
    /// Every server.
    pub servers: &'a [ServerView],
    /// The StatefulSet's update revision.
    pub update_revision: Option<&'a str>,
    /// `maintenance.restartRequestedAt`.
    pub restart_requested_at: Option<Timestamp>,
    /// `maintenance.paused`.
    pub paused: bool,
    /// `maintenance.approval: Manual` and the current generation not approved: no new step.
    pub approval: Option<Hold>,
    /// Whether a maintenance window is open (true when no windows are set).
    pub window_open: bool,
    /// When the next maintenance window opens, if windows are set.
    pub next_window: Option<Timestamp>,
    /// Whether the database preflight passes.
    pub database_ready: bool,
    /// A newer release is wanted and waits for its schema check: the StatefulSet's template is
    /// about to change again.
    pub superseded: bool,
    /// A new release is on its way into the pod template (its schema check runs, or it passed
    /// and waits): a replacement a person asked for then needs the approval too, or it could
    /// start on that release.
    pub release_pending: bool,
    /// Something else that must finish before a step starts (a capacity change, a schema
    /// migration).
    pub hold: Option<Hold>,
    /// The canary of a roll to a new release, when `maintenance.canary` applies to it.
    pub canary: Option<CanaryCheck>,
    /// The step in progress.
    pub step: Option<Step>,
    /// `maintenance.drainTimeout`.
    pub drain_timeout: Duration,
    /// `maintenance.readyTimeout`.
    pub ready_timeout: Duration,
    /// `maintenance.onDrainTimeout`.
    pub on_drain_timeout: DrainTimeoutPolicy,
    /// Now.
    pub now: Timestamp,
}

/// What to do now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum MaintenanceAction {
    /// Nothing.
    None,
    /// Ask this server for a friendly shutdown.
    RequestDrain(String),
    /// Evict this server's pod.
    Evict(String),
    /// Withdraw this server's drain request: it goes back to work.
    WithdrawDrain(String),
}

/// The planner's decision.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct MaintenanceDecision {
    /// The action to take now.
    pub action: MaintenanceAction,
    /// The step to persist (`None`: no step in progress).
    pub step: Option<Step>,
    /// Why the roll waits (it resumes by itself).
    pub waiting: Option<Hold>,
    /// Why the roll halted on a failure (a fix or a new spec resumes it).
    pub blocked: Option<Hold>,
    /// Why the step in progress ended without its server replaced (the next step starts from
    /// a fresh look at every server).
    pub abandoned: Option<Hold>,
    /// What triggers the roll, if anything is outdated.
    pub trigger: Option<Trigger>,
    /// Servers outdated, the one in progress included.
    pub outdated: usize,
    /// The servers the roll replaces, in the order it takes them as things stand: the step in
    /// progress first, then the outdated servers in the order a step picks its server.
    pub queue: Vec<String>,
}

/// The order in which a roll takes outdated servers: unready ones first (that costs no
/// availability), then one of the zone with the most servers still to take, so that the steps
/// visit the zones in turn (a zone is taken twice running only while it has more left than
/// every other), then the least busy, highest ordinal on ties. Servers of no known zone count
/// as one zone. The order is what the roll will do step after step (each pick counts the zones
/// without the servers picked before), so `status.plan` lists it. A step never leaves a zone
/// without a joined server while others there are down: no step starts while any other
/// server is down (see [`decide`]). Between zones with as many left, one other than the last
/// step's (`last_zone`) goes first.
fn in_turn<'a>(servers: &mut [&'a ServerView], mut last_zone: Option<&'a str>) {
    let mut left: Vec<&ServerView> = servers.to_vec();
    let mut per_zone: std::collections::HashMap<Option<&str>, usize> = std::collections::HashMap::new();
    for server in &left {
        *per_zone.entry(server.zone.as_deref()).or_default() += 1;
    }
    for slot in servers.iter_mut() {
        let Some((at, _)) = left.iter().enumerate().min_by_key(|(_, s)| {
            let in_zone = per_zone.get(&s.zone.as_deref()).copied().unwrap_or(0);
            let again = s.zone.is_some() && s.zone.as_deref() == last_zone;
            (s.joined, Reverse(in_zone), again, s.running_jobs, Reverse(s.ordinal))
        }) else {
            break;
        };
        let picked = left.swap_remove(at);
        if let Some(count) = per_zone.get_mut(&picked.zone.as_deref()) {
            *count -= 1;
        }
        last_zone = picked.zone.as_deref();
        *slot = picked;
    }
}

/// The servers with a pod, in the order a roll would take them if all were outdated (a new
/// version still at its schema check).
pub(crate) fn take_order(servers: &[ServerView]) -> Vec<String> {
    let mut all: Vec<&ServerView> = servers.iter().filter(|s| s.pod_exists).collect();
    in_turn(&mut all, None);
    all.into_iter().map(|s| s.name.clone()).collect()
}

fn is_outdated(server: &ServerView, input: &MaintenanceInput) -> Option<Trigger> {
    if server.pod_exists && input.update_revision.is_some() && server.revision.as_deref() != input.update_revision {
        return Some(Trigger::TemplateChange);
    }
    match (input.restart_requested_at, server.started_at) {
        // Pod creation times have whole seconds: a replacement created in the second of a
        // request with a fraction looks outdated once more and is replaced again (a restart
        // too many, never one too few); its step still ends (WaitingReady, other uid).
        (Some(requested), Some(started)) if started < requested && requested <= input.now => {
            Some(Trigger::RestartRequested)
        }
        _ => (server.pod_exists && server.replace_requested).then_some(Trigger::ReplaceRequested),
    }
}

/// Decides the next step of the roll.
pub(crate) fn decide(input: &MaintenanceInput) -> MaintenanceDecision {
    let outdated: Vec<&ServerView> = input
        .servers
        .iter()
        .filter(|s| is_outdated(s, input).is_some())
        .collect();
    // The trigger of highest precedence: a server a person asked to replace during a template
    // roll does not turn it into a replacement.
    let trigger = outdated.iter().filter_map(|s| is_outdated(s, input)).min();
    let mut queue: Vec<&ServerView> = outdated
        .iter()
        .copied()
        .filter(|s| input.step.as_ref().is_none_or(|step| step.server != s.name))
        .collect();
    // The zone of the last step: that of the newest pod already up to date (a replacement of
    // this roll, if any was made).
    let last_zone = match &input.step {
        Some(step) => input.servers.iter().find(|s| s.name == step.server),
        None => input
            .servers
            .iter()
            .filter(|s| s.pod_exists && is_outdated(s, input).is_none())
            .max_by_key(|s| s.started_at),
    }
    .and_then(|s| s.zone.as_deref());
    in_turn(&mut queue, last_zone);
    let mut decision = MaintenanceDecision {
        action: MaintenanceAction::None,
        step: None,
        waiting: None,
        blocked: None,
        abandoned: None,
        trigger,
        outdated: outdated.len(),
        queue: input
            .step
            .iter()
            .map(|step| step.server.clone())
            .chain(queue.iter().map(|s| s.name.clone()))
            .collect(),
    };
    if let Some(step) = &input.step {
        // A finished step leaves `step` empty: the next starts at the next reconcile, after a
        // fresh look at every server.
        continue_step(input, step, &mut decision);
        return decision;
    }
    if outdated.is_empty() {
        return decision;
    }
    // A replacement a person asked for (`kubectl orc drain`) is its own approval, unless a new
    // release is on its way; paused and the windows still hold it.
    let approval = input
        .approval
        .as_ref()
        .filter(|_| trigger != Some(Trigger::ReplaceRequested) || input.release_pending);
    let gate = if let Some(gate) = gate(input.paused, approval, input.window_open, input.next_window) {
        Some(gate)
    } else if !input.database_ready {
        Some(Hold::new(Reason::DatabaseNotReady, "the database preflight fails"))
    } else {
        input.hold.clone()
    };
    if gate.is_some() {
        decision.waiting = gate;
        return decision;
    }
    if let Some(canary) = &input.canary
        && let Some((hold, failed)) = canary_hold(canary, outdated.len())
    {
        if failed {
            decision.blocked = Some(hold);
        } else {
            decision.waiting = Some(hold);
        }
        return decision;
    }
    let candidate = queue[0];
    if let Some(others) = others_down(input, &candidate.name) {
        decision.waiting = Some(Hold::new(
            Reason::ServerNotJoined,
            format!(
                "{others} not joined; replacing {} now would take two servers down",
                candidate.name
            ),
        ));
        return decision;
    }
    // A server that serves nothing costs no availability: no drain, straight to eviction. One
    // whose row says it may still run jobs is drained first, even if its pod is unready; a
    // drain asked before (a step whose status write was lost, a previous operator) is adopted
    // with its own time, never skipped.
    let (stage, action, since) = if candidate.joined || candidate.serving {
        (
            RollStage::Draining,
            MaintenanceAction::RequestDrain(candidate.name.clone()),
            drain_asked(candidate, input.now).unwrap_or(input.now),
        )
    } else {
        (
            RollStage::Evicting,
            MaintenanceAction::Evict(candidate.name.clone()),
            input.now,
        )
    };
    decision.action = action;
    decision.step = Some(Step {
        server: candidate.name.clone(),
        stage,
        since,
        began: since,
        pod_uid: candidate.uid.clone(),
    });
    decision
}

/// The servers other than `server` for which `matches` holds, if any, as a list for a message.
fn others(input: &MaintenanceInput, server: &str, matches: impl Fn(&ServerView) -> bool) -> Option<String> {
    others_said(input, server, matches, |s| s.name.clone())
}

/// [`others`], each server said by `said`.
fn others_said(
    input: &MaintenanceInput,
    server: &str,
    matches: impl Fn(&ServerView) -> bool,
    said: impl Fn(&ServerView) -> String,
) -> Option<String> {
    let names: Vec<String> = input
        .servers
        .iter()
        .filter(|s| s.name != server && matches(s))
        .map(said)
        .collect();
    (!names.is_empty()).then(|| names.join(", "))
}

/// The servers other than `server` that are not joined, if any, each with what took it down
/// when that was an involuntary disruption.
fn others_down(input: &MaintenanceInput, server: &str) -> Option<String> {
    others_said(
        input,
        server,
        |s| !s.joined,
        |s| match &s.disruption {
            Some(why) => format!("{} ({why})", s.name),
            None => s.name.clone(),
        },
    )
}

/// The servers other than `server` that fell, if any: a row (it served) and now an unready pod,
/// or a row that no longer serves (stopped, or a heartbeat a minute old). A heartbeat only late
/// (not joined, still serving, pod ready) has not fallen: withdrawing a drain for every wobble
/// would restart the step again and again. A server without a row (a new one not registered
/// yet) has not fallen either.
fn others_fallen(input: &MaintenanceInput, server: &str) -> Option<String> {
    others(input, server, |s| {
        s.state.is_some() && !s.joined && (!s.ready || !s.serving)
    })
}

/// When the drain of `server` was asked, if it was.
fn drain_asked(server: &ServerView, now: Timestamp) -> Option<Timestamp> {
    let age = Duration::try_from_secs_f64(server.drain_age_seconds?).unwrap_or(Duration::ZERO);
    Some(now.checked_sub(age).unwrap_or(now))
}

/// Why a replacement that has not joined is no longer worth waiting for: a newer release waits
/// for its schema check, or the template changed again after the replacement was created.
fn superseded(input: &MaintenanceInput, step: &Step, server: Option<&ServerView>) -> Option<&'static str> {
    let replacement = server.filter(|s| s.pod_exists && step.pod_uid.is_some() && s.uid != step.pod_uid);
    if input.superseded {
        Some("a newer version is wanted and waits for its schema check")
    } else if replacement.is_some_and(|s| is_outdated(s, input).is_some()) {
        Some("the template changed again after it was created")
    } else {
        None
    }
}

/// The hold of a step that must see the database to go on.
fn unknown(step: &Step, what: &str) -> Option<Hold> {
    Some(Hold::new(
        Reason::DatabaseNotReady,
        format!(
            "{}: {what} cannot be read while the database is unreachable; the step waits for it",
            step.server
        ),
    ))
}

fn continue_step(input: &MaintenanceInput, step: &Step, decision: &mut MaintenanceDecision) {
    let server = input.servers.iter().find(|s| s.name == step.server);
    let next = |stage| {
        let pod_uid = step.pod_uid.clone().or_else(|| server.and_then(|s| s.uid.clone()));
        Some(Step {
            server: step.server.clone(),
            stage,
            since: input.now,
            began: step.began,
            pod_uid,
        })
    };
    let in_stage = elapsed(step.since, input.now);
    if ordinal(input.cluster, &step.server).is_some_and(|o| o >= input.wanted) {
        // A scale-down removes the server: its replacement will never come.
        decision.abandoned = Some(Hold::new(
            Reason::Scaling,
            format!(
                "{}: the step ends without a replacement, a scale-down to {} servers removes it",
                step.server, input.wanted
            ),
        ));
        return;
    }
    match step.stage {
        RollStage::Draining
            if server.is_some_and(|s| s.pod_exists && step.pod_uid.is_some() && s.uid != step.pod_uid) =>
        {
            // The drained pod was already replaced (this status was read before the last write
            // of it reached the cache): never evict the replacement.
            decision.step = next(RollStage::WaitingReady);
        }
        RollStage::Draining if !input.database_ready => {
            // Unknown is not stopped: no drain is judged finished, no timeout proceeds.
            decision.step = Some(step.clone());
            decision.waiting = unknown(step, "whether its drain finished");
        }
        RollStage::Draining => {
            // A row that says so, or no pod: a pod without a row (a row removed by hand, a
            // database that lost it) is not proof of a finished drain; drainTimeout bounds it.
            // Stopped, gone, or no longer able to hear the drain (no row, or a heartbeat stopped
            // for a minute): its pod's SIGTERM is what stops it now.
            let stopped = server.is_none_or(|s| {
                !s.pod_exists
                    || !s.serving
                    || !matches!(s.state.as_deref(), Some(server_state::ACTIVE | server_state::DRAINING))
            });
            if stopped {
                decision.action = MaintenanceAction::Evict(step.server.clone());
                decision.step = next(RollStage::Evicting);
            } else if let Some(others) = others_fallen(input, &step.server) {
                // Finishing this drain would leave two servers down: it is given back, and the
                // step starts again once every other server has joined.
                let message = format!(
                    "{others} went down while {} drained; its drain is withdrawn and it goes back to work",
                    step.server
                );
                decision.action = MaintenanceAction::WithdrawDrain(step.server.clone());
                decision.abandoned = Some(Hold::new(Reason::ServerNotJoined, message.clone()));
                decision.waiting = Some(Hold::new(Reason::ServerNotJoined, message));
            } else if in_stage >= input.drain_timeout {
                if input.on_drain_timeout == DrainTimeoutPolicy::Proceed {
                    decision.action = MaintenanceAction::Evict(step.server.clone());
                    decision.step = next(RollStage::Evicting);
                } else {
                    decision.step = Some(step.clone());
                    decision.blocked = Some(Hold::new(
                        Reason::DrainTimeout,
                        format!(
                            "{} did not finish draining within {:?}; onDrainTimeout is Halt",
                            step.server, input.drain_timeout
                        ),
                    ));
                }
            } else {
                decision.action = MaintenanceAction::RequestDrain(step.server.clone());
                decision.step = Some(step.clone());
            }
        }
        RollStage::Evicting => {
            let replaced = server.is_none_or(|s| !s.pod_exists || s.uid != step.pod_uid);
            if replaced {
                decision.step = next(RollStage::WaitingReady);
            } else if let Some(until) = server.and_then(|s| s.terminating_until) {
                // The eviction was accepted: the pod goes once its process has stopped (within
                // its grace period, a drain's worth for a server still busy). Asking again would
                // only wait on the PodDisruptionBudget, which no longer counts it.
                decision.step = Some(step.clone());
                if elapsed(until, input.now) >= EVICTION_PATIENCE {
                    decision.waiting = Some(Hold::new(
                        Reason::PodTerminating,
                        format!(
                            "{} should have stopped by {until}, the end of its grace period, and its pod is still there (a finalizer, or a node that does not answer); the step waits for it to be gone",
                            step.server
                        ),
                    ));
                }
            } else {
                decision.action = MaintenanceAction::Evict(step.server.clone());
                decision.step = Some(step.clone());
                if in_stage >= EVICTION_PATIENCE {
                    let why = others_down(input, &step.server).map_or_else(
                        || "the PodDisruptionBudget allows no disruption now".to_string(),
                        |others| format!("{others} not joined"),
                    );
                    decision.waiting = Some(Hold::new(
                        Reason::EvictionRefused,
                        format!(
                            "the eviction of {} has been refused since {} ({why}); the step keeps trying",
                            step.server, step.since
                        ),
                    ));
                }
            }
        }
        RollStage::WaitingReady => {
            // The replacement is the pod with another uid; it may already be outdated again (a
            // second template change or restart request meanwhile): the next step replaces it.
            let joined = server.is_some_and(|s| {
                s.joined && (is_outdated(s, input).is_none() || (step.pod_uid.is_some() && s.uid != step.pod_uid))
            });
            if joined {
                decision.step = None;
            } else if !input.database_ready {
                // Joining needs an active row: no "did not join" halt on what cannot be read.
                decision.step = Some(step.clone());
                decision.waiting = unknown(step, "whether its replacement joined");
            } else if let Some(why) = superseded(input, step, server) {
                // What the replacement runs is no longer wanted: it is not waited for; the next
                // step replaces it (unready and outdated, it goes first).
                decision.abandoned = Some(Hold::new(
                    Reason::ServersNotReady,
                    format!("{}: the step ends before its replacement joined, {why}", step.server),
                ));
            } else if in_stage >= input.ready_timeout {
                decision.step = Some(step.clone());
                decision.blocked = Some(Hold::new(
                    Reason::ReadyTimeout,
                    format!(
                        "the replacement of {} did not join within {:?}; the roll halts here",
                        step.server, input.ready_timeout
                    ),
                ));
            } else {
                decision.step = Some(step.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::planners::servers::ordinal;
    use proptest::prelude::*;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + seconds).unwrap()
    }

    fn server(ordinal: i32, revision: &str, joined: bool, jobs: i32) -> ServerView {
        ServerView {
            name: format!("prod-{ordinal}"),
            ordinal,
            pod_exists: true,
            terminating_until: None,
            uid: Some(format!("uid-{ordinal}-{revision}")),
            revision: Some(revision.into()),
            started_at: Some(at(0)),
            ready: joined,
            joined,
            running_jobs: jobs,
            state: Some(if joined { "active" } else { "joining" }.into()),
            serving: joined,
            drain_age_seconds: None,
            replace_requested: false,
            zone: None,
            disruption: None,
        }
    }

    fn input(servers: &[ServerView], step: Option<Step>, now: i64) -> MaintenanceInput<'_> {
        MaintenanceInput {
            cluster: "prod",
            wanted: servers.len() as i32,
            servers,
            update_revision: Some("new"),
            restart_requested_at: None,
            paused: false,
            approval: None,
            window_open: true,
            next_window: None,
            database_ready: true,
            superseded: false,
            release_pending: false,
            hold: None,
            canary: None,
            step,
            drain_timeout: Duration::from_secs(60),
            ready_timeout: Duration::from_secs(120),
            on_drain_timeout: DrainTimeoutPolicy::Halt,
            now: at(now),
        }
    }

    #[test]
    fn a_replacement_asked_for_one_server_drains_it_through_the_same_step() {
        let mut servers = [
            server(0, "new", true, 0),
            server(1, "new", true, 3),
            server(2, "new", true, 0),
        ];
        assert_eq!(decide(&input(&servers, None, 10)).outdated, 0);
        servers[1].replace_requested = true;
        let d = decide(&input(&servers, None, 10));
        assert_eq!(d.action, MaintenanceAction::RequestDrain("prod-1".into()));
        assert_eq!((d.trigger, d.outdated), (Some(Trigger::ReplaceRequested), 1));
        let mut paused = input(&servers, None, 10);
        paused.paused = true;
        assert_eq!(
            decide(&paused).waiting.unwrap().reason,
            Reason::Paused,
            "the same gates"
        );
        // The request is its own approval; a template change still needs one.
        let awaiting = Hold::new(Reason::AwaitingApproval, "approve generation 4");
        let mut manual = input(&servers, None, 10);
        manual.approval = Some(awaiting.clone());
        assert_eq!(decide(&manual).action, MaintenanceAction::RequestDrain("prod-1".into()));
        // Not while a new release is on its way: the replacement could start on it.
        manual.release_pending = true;
        assert_eq!(decide(&manual).waiting.unwrap().reason, Reason::AwaitingApproval);
        servers[0].revision = Some("old".into());
        let mut manual = input(&servers, None, 10);
        manual.approval = Some(awaiting);
        let d = decide(&manual);
        assert_eq!((d.trigger, d.outdated), (Some(Trigger::TemplateChange), 2));
        assert_eq!(d.waiting.unwrap().reason, Reason::AwaitingApproval);
    }

    #[test]
    fn the_canary_goes_first_and_holds_the_roll_until_it_passes() {
        let servers = [
            server(0, "old", true, 0),
            server(1, "old", true, 0),
            server(2, "old", true, 0),
        ];
        let with = |servers: &[ServerView], verdict: Option<Verdict>| {
            let mut input = input(servers, None, 10);
            input.canary = Some(CanaryCheck {
                servers: 1,
                replaced: servers.iter().filter(|s| s.revision.as_deref() == Some("new")).count(),
                verdict,
                unpromoted: None,
            });
            decide(&input)
        };
        // Nothing replaced yet: the canary itself is the first step.
        assert_eq!(
            with(&servers, None).action,
            MaintenanceAction::RequestDrain("prod-2".into())
        );
        let mut servers = servers;
        servers[2].revision = Some("new".into());
        let baking = with(&servers, None);
        assert_eq!(
            (baking.action, baking.waiting.unwrap().reason),
            (MaintenanceAction::None, Reason::CanaryBaking)
        );
        let few = with(&servers, Some(Verdict::TooFewJobs { have: 3 }));
        assert_eq!(few.waiting.unwrap().reason, Reason::CanaryInconclusive);
        let failed = with(
            &servers,
            Some(Verdict::Fail {
                why: super::super::canary::Shortfall::FailureRatio,
                figures: "canary: 9 of 10 jobs failed".into(),
            }),
        );
        assert_eq!(
            failed.action,
            MaintenanceAction::None,
            "no second server on the release"
        );
        let blocked = failed.blocked.unwrap();
        assert_eq!(blocked.reason, Reason::CanaryFailed);
        assert!(blocked.message.contains("9 of 10 jobs failed"), "{}", blocked.message);
        let passed = with(&servers, Some(Verdict::Pass { figures: String::new() }));
        assert_eq!(passed.action, MaintenanceAction::RequestDrain("prod-1".into()));
    }

    #[test]
    fn a_restart_asked_during_the_bake_waits_for_the_canary() {
        // prod-2 is the canary, on the new release; a restart makes every server outdated.
        let mut servers = [
            server(0, "old", true, 0),
            server(1, "old", true, 0),
            server(2, "new", true, 0),
        ];
        for s in &mut servers {
            s.started_at = Some(at(0));
        }
        let mut input = input(&servers, None, 10);
        input.restart_requested_at = Some(at(5));
        input.canary = Some(CanaryCheck {
            servers: 1,
            replaced: 1,
            verdict: Some(Verdict::Baking {
                left: Duration::from_secs(30),
            }),
            unpromoted: None,
        });
        let d = decide(&input);
        assert_eq!(d.outdated, 3);
        assert_eq!(
            (d.action, d.waiting.unwrap().reason),
            (MaintenanceAction::None, Reason::CanaryBaking)
        );
    }

    #[test]
    fn a_restart_outranks_a_replacement_asked_for_the_same_server() {
        let mut servers = [server(0, "new", true, 0), server(1, "new", true, 0)];
        servers[1].replace_requested = true;
        let mut restart = input(&servers, None, 10);
        restart.restart_requested_at = Some(at(5));
        restart.approval = Some(Hold::new(Reason::AwaitingApproval, "approve generation 4"));
        let d = decide(&restart);
        assert_eq!((d.trigger, d.outdated), (Some(Trigger::RestartRequested), 2));
        assert_eq!(
            d.waiting.unwrap().reason,
            Reason::AwaitingApproval,
            "the unapproved restart is not let through as a replacement"
        );
    }

    #[test]
    fn a_replacement_asked_during_a_template_roll_leaves_it_a_template_roll() {
        let mut servers = [
            server(0, "new", true, 0),
            server(1, "new", true, 0),
            server(2, "old", true, 0),
        ];
        // prod-0, asked for, comes before prod-2 (outdated by the template) in the list of
        // outdated servers: the roll's reason is still the template's.
        servers[0].replace_requested = true;
        let d = decide(&input(&servers, None, 10));
        assert_eq!((d.trigger, d.outdated), (Some(Trigger::TemplateChange), 2));
    }

    #[test]
    fn least_busy_first_highest_ordinal_on_ties_unready_before_all() {
        let servers = [
            server(0, "old", true, 5),
            server(1, "old", true, 1),
            server(2, "old", true, 1),
            server(3, "new", true, 0),
        ];
        let d = decide(&input(&servers, None, 10));
        assert_eq!(d.action, MaintenanceAction::RequestDrain("prod-2".into()));
        assert_eq!(d.trigger, Some(Trigger::TemplateChange));
        assert_eq!(d.outdated, 3);
        let mut with_unready = servers.clone();
        with_unready[0].joined = false;
        with_unready[0].ready = false;
        // Serving nothing: no row of a live process (an unready pod whose row is active is
        // drained first; a_drain_asked_before_is_adopted_as_the_step_never_skipped).
        with_unready[0].serving = false;
        let d = decide(&input(&with_unready, None, 10));
        assert_eq!(
            d.action,
            MaintenanceAction::Evict("prod-0".into()),
            "the unready one first, without a drain"
        );
    }

    fn in_zone(mut server: ServerView, zone: &str) -> ServerView {
        server.zone = Some(zone.into());
        server
    }

    #[test]
    fn a_roll_visits_the_zones_in_turn() {
        // Two servers in each of three zones, as the scheduler placed them (not by ordinal).
        let zones = ["z1", "z2", "z3", "z2", "z1", "z3"];
        let servers: Vec<ServerView> = zones
            .iter()
            .enumerate()
            .map(|(o, zone)| in_zone(server(o as i32, "old", true, 0), zone))
            .collect();
        let decision = decide(&input(&servers, None, 0));
        let visited: Vec<&str> = decision
            .queue
            .iter()
            .map(|name| zones[ordinal("prod", name).unwrap() as usize])
            .collect();
        assert_eq!(
            decision.queue,
            ["prod-5", "prod-4", "prod-3", "prod-2", "prod-1", "prod-0"]
        );
        assert_eq!(visited, ["z3", "z1", "z2", "z3", "z2", "z1"]);
        assert!(
            visited.windows(2).all(|w| w[0] != w[1]),
            "never the same zone twice running: {visited:?}"
        );
        // A zone with more servers left goes first, even over a less busy server elsewhere.
        let uneven = [
            in_zone(server(0, "old", true, 3), "z1"),
            in_zone(server(1, "old", true, 3), "z1"),
            in_zone(server(2, "old", true, 0), "z2"),
        ];
        assert_eq!(decide(&input(&uneven, None, 0)).queue, ["prod-1", "prod-2", "prod-0"]);
        // As many left in each zone: not the zone of the last step (the newest pod replaced).
        let mut tied = vec![
            in_zone(server(0, "old", true, 0), "z1"),
            in_zone(server(1, "old", true, 0), "z2"),
            in_zone(server(2, "old", true, 0), "z3"),
            in_zone(server(3, "new", true, 0), "z3"),
        ];
        tied[3].started_at = Some(at(50));
        assert_eq!(decide(&input(&tied, None, 60)).queue, ["prod-1", "prod-2", "prod-0"]);
        tied[3].zone = Some("z2".into());
        assert_eq!(decide(&input(&tied, None, 60)).queue, ["prod-2", "prod-1", "prod-0"]);
    }

    #[test]
    fn a_server_down_from_a_drain_holds_the_roll_and_is_named() {
        let mut servers = vec![
            in_zone(server(0, "old", true, 0), "z1"),
            in_zone(server(1, "old", false, 0), "z1"),
            in_zone(server(2, "old", true, 0), "z2"),
        ];
        servers[1].pod_exists = true;
        servers[1].revision = Some("new".into());
        servers[1].disruption = Some("evicted from node n1, which is cordoned (a node drain)".into());
        let decision = decide(&input(&servers, None, 0));
        assert_eq!(decision.action, MaintenanceAction::None);
        let waiting = decision.waiting.unwrap();
        assert_eq!(waiting.reason, Reason::ServerNotJoined);
        assert!(
            waiting
                .message
                .contains("prod-1 (evicted from node n1, which is cordoned (a node drain))"),
            "{}",
            waiting.message
        );
    }

    #[test]
    fn gates_and_other_unready_servers_make_it_wait_with_a_reason() {
        let servers = [server(0, "old", true, 0), server(1, "new", false, 0)];
        let d = decide(&input(&servers, None, 0));
        assert_eq!(
            (d.action.clone(), d.waiting.unwrap().reason),
            (MaintenanceAction::None, Reason::ServerNotJoined)
        );
        let all = [server(0, "old", true, 0), server(1, "old", true, 0)];
        let mut paused = input(&all, None, 0);
        paused.paused = true;
        assert_eq!(decide(&paused).waiting.unwrap().reason, Reason::Paused);
        let mut closed = input(&all, None, 0);
        closed.window_open = false;
        assert_eq!(decide(&closed).waiting.unwrap().reason, Reason::OutsideWindow);
        let mut held = input(&all, None, 0);
        held.hold = Some(Hold::new(Reason::Scaling, "servers are being added"));
        let d = decide(&held);
        assert_eq!(
            (d.action, d.outdated, d.waiting.unwrap().reason),
            (MaintenanceAction::None, 2, Reason::Scaling)
        );
        let current = [server(0, "new", true, 0)];
        let mut held_but_current = input(&current, None, 0);
        held_but_current.hold = Some(Hold::new(Reason::Scaling, "servers are being added"));
        assert_eq!(
            decide(&held_but_current).waiting,
            None,
            "nothing outdated: nothing waits"
        );
    }

    #[test]
    fn a_step_goes_through_drain_evict_and_waiting_ready() {
        let mut servers = vec![server(0, "old", true, 0), server(1, "new", true, 0)];
        let step = Step {
            server: "prod-0".into(),
            stage: RollStage::Draining,
            since: at(0),
            began: at(0),
            pod_uid: None,
        };
        assert_eq!(
            decide(&input(&servers, Some(step.clone()), 5)).action,
            MaintenanceAction::RequestDrain("prod-0".into())
        );
        servers[0].state = Some("stopped".into());
        let d = decide(&input(&servers, Some(step.clone()), 6));
        assert_eq!(
            (d.action, d.step.clone().unwrap().stage),
            (MaintenanceAction::Evict("prod-0".into()), RollStage::Evicting)
        );
        servers[0] = ServerView {
            started_at: Some(at(8)),
            ..server(0, "new", false, 0)
        };
        let d = decide(&input(&servers, d.step, 9));
        assert_eq!(d.step.clone().unwrap().stage, RollStage::WaitingReady);
        servers[0].joined = true;
        let done = decide(&input(&servers, d.step, 12));
        assert_eq!(
            (done.step, done.action, done.outdated),
            (None, MaintenanceAction::None, 0)
        );
    }

    #[test]
    fn a_drain_asked_before_is_adopted_as_the_step_never_skipped() {
        // The step that asked prod-1 to drain was lost (its status write failed): prod-1 is
        // draining in the database and no longer ready.
        let mut servers = vec![server(0, "old", true, 0), server(1, "old", false, 2)];
        servers[1].state = Some("draining".into());
        servers[1].serving = true;
        servers[1].drain_age_seconds = Some(4.0);
        let d = decide(&input(&servers, None, 10));
        assert_eq!(
            d.action,
            MaintenanceAction::RequestDrain("prod-1".into()),
            "not evicted"
        );
        let step = d.step.unwrap();
        assert_eq!((step.server.as_str(), step.stage), ("prod-1", RollStage::Draining));
        assert_eq!(step.since, at(6), "the drain's own time counts against drainTimeout");
        // Asked but not picked up yet: adopted too.
        servers[1].state = Some("active".into());
        let d = decide(&input(&servers, None, 10));
        assert_eq!(d.step.unwrap().stage, RollStage::Draining);
        // Active with jobs, its pod briefly unready, never asked: drained, not evicted.
        servers[1].drain_age_seconds = None;
        let d = decide(&input(&servers, None, 10));
        assert_eq!(d.action, MaintenanceAction::RequestDrain("prod-1".into()));
        assert_eq!(d.step.unwrap().since, at(10));
        // Its process gone (no heartbeat for a minute, no job owned): nothing to drain.
        servers[1].serving = false;
        let d = decide(&input(&servers, None, 10));
        assert_eq!(d.action, MaintenanceAction::Evict("prod-1".into()));
    }

    #[test]
    fn a_draining_step_waits_while_the_database_cannot_be_read() {
        let mut servers = vec![server(0, "old", true, 0), server(1, "new", true, 0)];
        // What the merge gives when the preflight fails: no row, so no state and not joined.
        for s in servers.iter_mut() {
            s.state = None;
            s.joined = false;
        }
        let step = Step {
            server: "prod-0".into(),
            stage: RollStage::Draining,
            since: at(0),
            began: at(0),
            pod_uid: Some("uid-0-old".into()),
        };
        for proceed in [false, true] {
            let mut down = input(&servers, Some(step.clone()), 600);
            down.database_ready = false;
            if proceed {
                down.on_drain_timeout = DrainTimeoutPolicy::Proceed;
            }
            let d = decide(&down);
            assert_eq!(d.action, MaintenanceAction::None, "no eviction, even past drainTimeout");
            assert_eq!(d.step, Some(step.clone()));
            assert_eq!(d.waiting.unwrap().reason, Reason::DatabaseNotReady);
            assert!(d.blocked.is_none());
        }
        let waiting = Step {
            stage: RollStage::WaitingReady,
            ..step
        };
        let mut down = input(&servers, Some(waiting.clone()), 600);
        down.database_ready = false;
        let d = decide(&down);
        assert!(d.blocked.is_none(), "no false ReadyTimeout: {d:?}");
        assert_eq!(d.step, Some(waiting));
    }

    #[test]
    fn a_step_ends_without_a_halt_when_the_template_changes_again() {
        let step = Step {
            server: "prod-0".into(),
            stage: RollStage::WaitingReady,
            since: at(0),
            began: at(0),
            pod_uid: Some("uid-0-old".into()),
        };
        // The replacement joined on revision "new", but the template changed again meanwhile.
        let servers = vec![server(0, "new", true, 0), server(1, "newer", true, 0)];
        let mut again = input(&servers, Some(step.clone()), 5);
        again.update_revision = Some("newer");
        let d = decide(&again);
        assert_eq!(
            (d.step, d.blocked),
            (None, None),
            "the step is done; the next one rolls it"
        );
        assert_eq!(d.outdated, 1);
    }

    fn step_of(server: &str, stage: RollStage, since: i64) -> Step {
        Step {
            server: server.into(),
            stage,
            since: at(since),
            began: at(since),
            pod_uid: Some(format!("uid-{}-old", &server[5..])),
        }
    }

    #[test]
    fn a_drain_is_withdrawn_when_another_server_falls_mid_step() {
        let mut draining = server(1, "old", false, 1);
        (draining.state, draining.serving) = (Some("draining".into()), true);
        let mut fallen = server(0, "old", true, 0);
        (fallen.joined, fallen.ready) = (false, false);
        let servers = [fallen.clone(), draining.clone(), server(2, "old", true, 0)];
        let d = decide(&input(&servers, Some(step_of("prod-1", RollStage::Draining, 0)), 5));
        assert_eq!(d.action, MaintenanceAction::WithdrawDrain("prod-1".into()));
        assert_eq!(
            (d.step, d.abandoned.map(|h| h.reason)),
            (None, Some(Reason::ServerNotJoined))
        );
        assert_eq!(d.waiting.unwrap().reason, Reason::ServerNotJoined);
        // A heartbeat only late (pod ready, row still serving) has not fallen.
        let late = ServerView {
            joined: false,
            ready: true,
            serving: true,
            ..server(0, "old", true, 0)
        };
        let d = decide(&input(
            &[late, draining.clone()],
            Some(step_of("prod-1", RollStage::Draining, 0)),
            5,
        ));
        assert_eq!(d.action, MaintenanceAction::RequestDrain("prod-1".into()));
        // A new server that has not registered yet has not fallen; a drained server that
        // already stopped is not given back either.
        let newcomer = ServerView { state: None, ..fallen };
        let d = decide(&input(
            &[newcomer.clone(), draining.clone()],
            Some(step_of("prod-1", RollStage::Draining, 0)),
            5,
        ));
        assert_eq!(d.action, MaintenanceAction::RequestDrain("prod-1".into()));
        let stopped = ServerView {
            state: Some("stopped".into()),
            serving: false,
            ..draining
        };
        let d = decide(&input(
            &[server(0, "old", false, 0), stopped],
            Some(step_of("prod-1", RollStage::Draining, 0)),
            5,
        ));
        assert_eq!(d.action, MaintenanceAction::Evict("prod-1".into()));
    }

    #[test]
    fn a_step_on_a_server_that_a_scale_down_removes_is_abandoned() {
        let servers = [server(0, "new", true, 0), server(1, "new", true, 0)];
        for stage in RollStage::ALL {
            let mut smaller = input(&servers[..1], Some(step_of("prod-1", *stage, 0)), 500);
            smaller.wanted = 1;
            let d = decide(&smaller);
            assert_eq!((d.step, d.blocked), (None, None), "{stage}: no halt");
            assert_eq!(d.abandoned.unwrap().reason, Reason::Scaling);
        }
    }

    #[test]
    fn a_replacement_no_longer_wanted_is_not_waited_for() {
        let unready = ServerView {
            started_at: Some(at(5)),
            ..server(0, "new", false, 0)
        };
        let servers = [unready, server(1, "old", true, 0)];
        let step = step_of("prod-0", RollStage::WaitingReady, 5);
        let mut waiting = input(&servers, Some(step.clone()), 10);
        assert_eq!(
            (decide(&waiting).step, decide(&waiting).abandoned),
            (Some(step.clone()), None)
        );
        // A newer version waits for its schema check, or the template changed again.
        waiting.superseded = true;
        let d = decide(&waiting);
        assert_eq!((d.step, d.blocked), (None, None));
        assert!(d.abandoned.unwrap().message.contains("schema check"));
        let mut changed = input(&servers, Some(step), 10);
        changed.update_revision = Some("newer");
        let d = decide(&changed);
        assert_eq!((d.step, d.blocked), (None, None));
        assert!(d.abandoned.unwrap().message.contains("template changed again"));
        // The next look replaces the unready, outdated replacement first, without a drain.
        let next = decide(&input(&servers, None, 11));
        assert_eq!(next.action, MaintenanceAction::None, "prod-0 is new and prod-0 is down");
    }

    #[test]
    fn an_eviction_refused_for_long_says_so_and_keeps_trying() {
        let mut stopped = server(1, "old", false, 0);
        stopped.state = Some("stopped".into());
        let mut down = server(0, "old", false, 0);
        down.ready = false;
        let servers = [down, stopped];
        let step = step_of("prod-1", RollStage::Evicting, 0);
        let early = decide(&input(&servers, Some(step.clone()), 10));
        assert_eq!(
            (early.action, early.waiting),
            (MaintenanceAction::Evict("prod-1".into()), None)
        );
        let late = decide(&input(&servers, Some(step), EVICTION_PATIENCE.as_secs() as i64));
        assert_eq!(late.action, MaintenanceAction::Evict("prod-1".into()));
        let Hold { reason, message } = late.waiting.unwrap();
        assert_eq!(reason, Reason::EvictionRefused);
        assert!(message.contains("prod-0 not joined"), "{message}");
    }

    #[test]
    fn a_terminating_pod_is_not_evicted_again_and_a_long_termination_is_named() {
        let mut going = server(1, "old", false, 0);
        going.state = Some("stopped".into());
        going.terminating_until = Some(at(60));
        let servers = [server(0, "new", true, 0), going];
        let step = step_of("prod-1", RollStage::Evicting, 0);
        // Within its grace period (to 60 s) and a patience after it: waited for, quietly.
        let early = decide(&input(&servers, Some(step.clone()), 1));
        assert_eq!(
            (early.action, early.step, early.waiting),
            (MaintenanceAction::None, Some(step.clone()), None)
        );
        let busy = decide(&input(
            &servers,
            Some(step.clone()),
            60 + EVICTION_PATIENCE.as_secs() as i64 - 1,
        ));
        assert_eq!((busy.action, busy.waiting), (MaintenanceAction::None, None));
        let late = decide(&input(
            &servers,
            Some(step.clone()),
            60 + EVICTION_PATIENCE.as_secs() as i64,
        ));
        assert_eq!((late.action, late.step), (MaintenanceAction::None, Some(step)));
        let Hold { reason, message } = late.waiting.unwrap();
        assert_eq!(reason, Reason::PodTerminating);
        assert!(message.contains("prod-1 should have stopped by"), "{message}");
    }

    #[test]
    fn a_replaced_pod_is_never_evicted_again_even_from_a_stale_step() {
        let replaced = [
            ServerView {
                started_at: Some(at(8)),
                ..server(0, "new", false, 0)
            },
            server(1, "new", true, 0),
        ];
        let stale = Step {
            server: "prod-0".into(),
            stage: RollStage::Draining,
            since: at(0),
            began: at(0),
            pod_uid: Some("uid-0-old".into()),
        };
        let d = decide(&input(&replaced, Some(stale), 9));
        assert_eq!(
            (d.action, d.step.unwrap().stage),
            (MaintenanceAction::None, RollStage::WaitingReady)
        );
    }

    #[test]
    fn timeouts_halt_or_proceed() {
        let servers = [server(0, "old", true, 3), server(1, "new", true, 0)];
        let draining = Step {
            server: "prod-0".into(),
            stage: RollStage::Draining,
            since: at(0),
            began: at(0),
            pod_uid: None,
        };
        let d = decide(&input(&servers, Some(draining.clone()), 61));
        assert_eq!(
            (d.action, d.blocked.unwrap().reason),
            (MaintenanceAction::None, Reason::DrainTimeout)
        );
        let mut proceed = input(&servers, Some(draining), 61);
        proceed.on_drain_timeout = DrainTimeoutPolicy::Proceed;
        assert_eq!(decide(&proceed).action, MaintenanceAction::Evict("prod-0".into()));
        let waiting = Step {
            server: "prod-0".into(),
            stage: RollStage::WaitingReady,
            since: at(0),
            began: at(0),
            pod_uid: None,
        };
        let never_ready = [server(0, "new", false, 0), server(1, "new", true, 0)];
        let d = decide(&input(&never_ready, Some(waiting), 121));
        assert_eq!(d.blocked.unwrap().reason, Reason::ReadyTimeout);
        assert_eq!(d.step.unwrap().server, "prod-0", "the roll stays on the failed server");
    }

    #[test]
    fn restart_requested_after_a_pod_started_rolls_it() {
        let servers = [
            server(0, "new", true, 0),
            ServerView {
                started_at: Some(at(50)),
                ..server(1, "new", true, 0)
            },
        ];
        let mut restart = input(&servers, None, 100);
        restart.restart_requested_at = Some(at(20));
        let d = decide(&restart);
        assert_eq!((d.trigger, d.outdated), (Some(Trigger::RestartRequested), 1));
        assert_eq!(d.action, MaintenanceAction::RequestDrain("prod-0".into()));
    }

    /// Applies an action to a simulated cluster where everything succeeds: a drained server
    /// stops, an evicted pod comes back on the new revision and joins a tick later.
    fn simulate(servers: &mut [ServerView], action: &MaintenanceAction, now: i64) {
        simulate_to(servers, action, now, "new");
    }

    /// One tick of the world, the StatefulSet's template at `revision`: a replacement of that
    /// revision joins a tick after it is made, a drain stops its server at once.
    fn simulate_to(servers: &mut [ServerView], action: &MaintenanceAction, now: i64, revision: &str) {
        for s in servers.iter_mut() {
            if !s.joined && s.revision.as_deref() == Some(revision) && s.pod_exists {
                s.joined = true;
                s.ready = true;
                s.state = Some("active".into());
            }
        }
        match action {
            MaintenanceAction::RequestDrain(name) => {
                let s = servers.iter_mut().find(|s| &s.name == name).unwrap();
                s.state = Some("stopped".into());
                s.ready = false;
                s.joined = false;
            }
            MaintenanceAction::Evict(name) => {
                let s = servers.iter_mut().find(|s| &s.name == name).unwrap();
                *s = ServerView {
                    started_at: Some(at(now)),
                    state: None,
                    zone: s.zone.take(),
                    ..server(s.ordinal, revision, false, 0)
                };
            }
            MaintenanceAction::WithdrawDrain(name) => {
                let s = servers.iter_mut().find(|s| &s.name == name).unwrap();
                s.state = Some("active".into());
                s.ready = true;
                s.joined = true;
            }
            MaintenanceAction::None => {}
        }
    }

    #[test]
    fn outside_a_window_the_wait_names_the_next_opening() {
        let servers = [server(0, "old", true, 0)];
        let mut closed = input(&servers, None, 0);
        closed.window_open = false;
        closed.next_window = Some("2026-11-29T02:00:00Z".parse().unwrap());
        let Hold { reason, message } = decide(&closed).waiting.unwrap();
        assert_eq!(reason, Reason::OutsideWindow);
        assert!(message.contains("the next opens at 2026-11-29T02:00:00Z"), "{message}");
    }

    proptest! {
        #[test]
        fn rolls_one_at_a_time_and_terminates(
            layout in prop::collection::vec((any::<bool>(), 0i32..5), 1..7),
        ) {
            let mut servers: Vec<ServerView> =
                layout.iter().enumerate().map(|(i, (old, jobs))| server(i as i32, if *old { "old" } else { "new" }, true, *jobs)).collect();
            let mut step: Option<Step> = None;
            // The plan's queue at the start, and the servers the roll then took, in order.
            let (mut planned, mut taken) = (None, Vec::new());
            for tick in 0..(servers.len() as i64 * 4 + 4) {
                let decision = decide(&input(&servers, step.clone(), tick));
                planned.get_or_insert_with(|| decision.queue.clone());
                if let Some(new) = decision.step.as_ref().filter(|new| step.as_ref().is_none_or(|s| s.server != new.server)) {
                    taken.push(new.server.clone());
                }
                let down = servers.iter().filter(|s| !s.joined).count();
                prop_assert!(down <= 1, "never two servers down: {servers:?}");
                if let MaintenanceAction::RequestDrain(name) | MaintenanceAction::Evict(name) = &decision.action {
                    prop_assert_eq!(Some(name), decision.step.as_ref().map(|s| &s.server), "actions only on the step's server");
                }
                if decision.action == MaintenanceAction::None && decision.step.is_none() && decision.outdated > 0 {
                    prop_assert!(decision.waiting.is_some() || decision.blocked.is_some() || step.is_some(), "every wait has a reason");
                }
                prop_assert!(decision.blocked.is_none(), "nothing fails in this world");
                simulate(&mut servers, &decision.action, tick);
                step = decision.step;
            }
            prop_assert!(servers.iter().all(|s| s.revision.as_deref() == Some("new") && s.joined), "the roll completes: {servers:?}");
            prop_assert_eq!(planned.unwrap_or_default(), taken, "the plan lists the steps the roll takes, in order");
        }
    }

    proptest! {
        /// A canary that fails never lets a second server onto the new release: the roll holds
        /// once the canary servers are replaced, and their rollback (the template back at the
        /// old revision, no canary) takes them one at a time until every server runs the old
        /// release again, never two down.
        #[test]
        fn a_failed_canary_is_the_only_server_on_the_release_and_is_rolled_back(
            layout in prop::collection::vec(0i32..5, 2..7),
            canary_servers in 1usize..3,
            fail_at in 0i64..6,
        ) {
            let canary_servers = canary_servers.min(layout.len() - 1);
            let mut servers: Vec<ServerView> =
                layout.iter().enumerate().map(|(i, jobs)| server(i as i32, "old", true, *jobs)).collect();
            let mut step: Option<Step> = None;
            let failure = Verdict::Fail { why: super::super::canary::Shortfall::FailureRatio, figures: String::new() };
            let mut failed_at = None;
            let ticks = layout.len() as i64 * 8 + 8;
            for tick in 0..ticks {
                let on_new = servers.iter().filter(|s| s.revision.as_deref() == Some("new")).count();
                // The verdict is recorded a look after it is reached: then the rollback starts.
                let rolling_back = failed_at.is_some_and(|at| tick > at);
                let mut roll = input(&servers, step.clone(), tick);
                if rolling_back {
                    roll.update_revision = Some("old");
                } else {
                    let judged = on_new >= canary_servers && tick >= fail_at;
                    roll.canary = Some(CanaryCheck { servers: canary_servers, replaced: on_new, verdict: judged.then(|| failure.clone()), unpromoted: None });
                }
                let decision = decide(&roll);
                if decision.blocked.as_ref().is_some_and(|hold| hold.reason == Reason::CanaryFailed) {
                    failed_at.get_or_insert(tick);
                }
                prop_assert!(on_new <= canary_servers, "only the canary runs the new release: {servers:?}");
                let down = servers.iter().filter(|s| !s.joined).count();
                prop_assert!(down <= 1, "never two servers down: {servers:?}");
                simulate_to(&mut servers, &decision.action, tick, if rolling_back { "old" } else { "new" });
                step = decision.step;
            }
            prop_assert!(failed_at.is_some(), "the failure halted the roll");
            prop_assert!(
                servers.iter().all(|s| s.revision.as_deref() == Some("old") && s.joined),
                "every server runs the old release again: {servers:?}"
            );
        }
    }

    proptest! {
        /// With servers spread over zones and other servers going down by themselves (a node
        /// drain, a crash) at any time: a step never starts while another server is down, so
        /// it never takes the last joined server of a zone while others there are down; while
        /// nothing else is down, each step takes a server of a zone with the most servers
        /// still to take; the roll completes.
        #[test]
        fn a_roll_across_zones_takes_the_fullest_zone_and_never_empties_one(
            layout in prop::collection::vec((0usize..3, 0i32..3), 2..8),
            outages in prop::collection::vec((0i64..30, 0usize..8, 1i64..4), 0..4),
        ) {
            let zone = |i: usize| format!("z{}", layout[i].0);
            let mut servers: Vec<ServerView> = layout
                .iter()
                .enumerate()
                .map(|(i, (_, jobs))| in_zone(server(i as i32, "old", true, *jobs), &zone(i)))
                .collect();
            let mut step: Option<Step> = None;
            let mut down_until: Vec<Option<i64>> = vec![None; servers.len()];
            let ticks = layout.len() as i64 * 4 + 40;
            for tick in 0..ticks {
                for (at, who, lasts) in &outages {
                    let who = who % servers.len();
                    if *at == tick && step.as_ref().is_none_or(|s| s.server != servers[who].name) && servers[who].joined {
                        servers[who].joined = false;
                        servers[who].ready = false;
                        down_until[who] = Some(tick + lasts);
                    }
                }
                for (i, until) in down_until.iter_mut().enumerate() {
                    if until.is_some_and(|u| u <= tick) {
                        // Back, unless the roll took it meanwhile (then the roll brings it back).
                        if servers[i].state.as_deref() == Some("active") {
                            servers[i].joined = true;
                            servers[i].ready = true;
                        }
                        *until = None;
                    }
                }
                let decision = decide(&input(&servers, step.clone(), tick));
                if let Some(new) = decision.step.as_ref().filter(|new| step.as_ref().is_none_or(|s| s.server != new.server)) {
                    let taken = servers.iter().find(|s| s.name == new.server).unwrap();
                    let others_down: Vec<&str> = servers.iter().filter(|s| s.name != taken.name && !s.joined).map(|s| s.name.as_str()).collect();
                    prop_assert!(others_down.is_empty(), "{} taken while {others_down:?} are down", taken.name);
                    let left = |z: &Option<String>| servers.iter().filter(|s| s.zone == *z && s.revision.as_deref() == Some("old")).count();
                    if taken.joined {
                        let most = servers.iter().filter(|s| s.revision.as_deref() == Some("old")).map(|s| left(&s.zone)).max().unwrap_or(0);
                        prop_assert_eq!(left(&taken.zone), most, "{} is of a zone with the most left", &taken.name);
                    }
                }
                simulate(&mut servers, &decision.action, tick);
                step = decision.step;
            }
            prop_assert!(servers.iter().all(|s| s.revision.as_deref() == Some("new") && s.joined), "the roll completes: {servers:?}");
        }
    }

    /// A server as it really is (the planner sees it only through the database and the pods).
    #[derive(Clone, Debug)]
    struct Truth {
        revision: &'static str,
        /// `active`, `draining` (ticks left) or `stopped`.
        state: &'static str,
        drain_left: u32,
        drain_asked_at: Option<i64>,
        uid: u32,
        /// Ticks until its pod is ready again after an outage (readiness needs the database).
        unready_for: u32,
    }

    /// What the planner sees of `truth` at `tick`: with the database down, no row at all.
    fn seen(truth: &[Truth], db_up: bool, tick: i64) -> Vec<ServerView> {
        truth
            .iter()
            .enumerate()
            .map(|(o, t)| {
                let serving = matches!(t.state, "active" | "draining");
                ServerView {
                    name: format!("prod-{o}"),
                    ordinal: o as i32,
                    pod_exists: true,
                    terminating_until: None,
                    uid: Some(t.uid.to_string()),
                    revision: Some(t.revision.into()),
                    started_at: Some(at(0)),
                    ready: t.state == "active" && t.unready_for == 0,
                    joined: db_up && t.state == "active" && t.unready_for == 0,
                    running_jobs: if db_up { 1 } else { 0 },
                    serving: db_up && serving,
                    state: db_up.then(|| t.state.to_string()),
                    drain_age_seconds: t.drain_asked_at.filter(|_| db_up && serving).map(|a| (tick - a) as f64),
                    replace_requested: false,
                    zone: None,
                    disruption: None,
                }
            })
            .collect()
    }

    proptest! {
        /// Unknown is not stopped: whatever the database outages, no server is evicted while it
        /// still serves (active or draining), never two are down, and the roll completes once
        /// the database is back.
        #[test]
        fn no_server_is_evicted_while_it_may_still_serve(
            servers in 1usize..5,
            drain_ticks in 1u32..6,
            outages in prop::collection::vec(any::<bool>(), 0..40),
            lags in prop::collection::vec(0u32..4, 5),
        ) {
            let mut truth: Vec<Truth> = (0..servers)
                .map(|o| Truth { revision: "old", state: "active", drain_left: 0, drain_asked_at: None, uid: o as u32, unready_for: 0 })
                .collect();
            let mut step = None;
            let mut next_uid = 100;
            let ticks = outages.len() as i64 + servers as i64 * (drain_ticks as i64 + 4) + 4;
            for tick in 0..ticks {
                // Outages only in the first part: the end is a database that answers.
                let db_up = outages.get(tick as usize).is_none_or(|down| !down);
                let views = seen(&truth, db_up, tick);
                let mut roll = input(&views, step.clone(), tick);
                roll.database_ready = db_up;
                roll.drain_timeout = Duration::from_secs(3600);
                let decision = decide(&roll);
                match &decision.action {
                    MaintenanceAction::RequestDrain(name) => {
                        let t = &mut truth[ordinal("prod", name).unwrap() as usize];
                        if t.state == "active" && t.drain_asked_at.is_none() {
                            t.state = "draining";
                            t.drain_left = drain_ticks;
                            t.drain_asked_at = Some(tick);
                        }
                    }
                    MaintenanceAction::Evict(name) => {
                        let t = &mut truth[ordinal("prod", name).unwrap() as usize];
                        prop_assert!(
                            !matches!(t.state, "active" | "draining"),
                            "{name} evicted while {} (database up: {db_up})", t.state
                        );
                        *t = Truth { revision: "new", state: "joining", drain_left: 0, drain_asked_at: None, uid: next_uid, unready_for: 0 };
                        next_uid += 1;
                    }
                    MaintenanceAction::WithdrawDrain(name) => {
                        let t = &mut truth[ordinal("prod", name).unwrap() as usize];
                        prop_assert!(db_up, "{name}'s drain withdrawn while the database is unknown");
                        if t.state == "draining" {
                            t.state = "active";
                        }
                        t.drain_asked_at = None;
                    }
                    MaintenanceAction::None => {}
                }
                let down = truth.iter().filter(|t| t.state != "active").count();
                prop_assert!(down <= 1, "never two servers down: {truth:?}");
                for (o, t) in truth.iter_mut().enumerate() {
                    // Pods lose readiness in an outage and get it back one by one after it.
                    if db_up {
                        t.unready_for = t.unready_for.saturating_sub(1);
                    } else {
                        t.unready_for = lags[o];
                    }
                    match t.state {
                        "draining" if t.drain_left <= 1 => t.state = "stopped",
                        "draining" => t.drain_left -= 1,
                        "joining" => t.state = "active",
                        _ => {}
                    }
                }
                step = decision.step;
            }
            prop_assert!(
                truth.iter().all(|t| t.revision == "new" && t.state == "active"),
                "the roll completes: {truth:?}"
            );
        }
    }
}
