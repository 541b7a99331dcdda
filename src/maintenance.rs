//! The rolling-maintenance planner: from the observed servers and the step in progress, the
//! next action of a roll (drain a server through the database, evict its pod, wait for its
//! replacement to join) or the reason it must wait. One operator-initiated disruption at a
//! time; never while another server is unready; unready outdated servers first, then the
//! least busy, highest ordinal on ties. A pure function: the step in progress comes from the
//! cluster's status, so a restarted operator continues the same roll.

use std::cmp::Reverse;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use orchestrator_contract::server_state;

use crate::crd::DrainTimeoutPolicy;

/// What started a roll.
pub mod triggers {
    /// The pod template changed (version, image, settings, resources).
    pub const TEMPLATE_CHANGE: &str = "TemplateChange";
    /// `maintenance.restartRequestedAt` is after a server started.
    pub const RESTART_REQUESTED: &str = "RestartRequested";
    /// A new version or image waits for its schema check (or a migration) before the roll.
    pub const VERSION_CHANGE: &str = "VersionChange";
}

/// Why a roll waits or halts.
pub mod reasons {
    /// `maintenance.paused` is set.
    pub const PAUSED: &str = "Paused";
    /// Maintenance windows are set and none is open.
    pub const OUTSIDE_WINDOW: &str = "OutsideWindow";
    /// The database preflight fails.
    pub const DATABASE_NOT_READY: &str = "DatabaseNotReady";
    /// Another server is not joined; replacing one now would take two down.
    pub const SERVER_NOT_JOINED: &str = "ServerNotJoined";
    /// A server did not finish draining in time and the policy is Halt.
    pub const DRAIN_TIMEOUT: &str = "DrainTimeout";
    /// A replacement did not join within `readyTimeout`.
    pub const READY_TIMEOUT: &str = "ReadyTimeout";
    /// Servers are being added or removed; maintenance waits for that to finish.
    pub const SCALING: &str = "Scaling";
    /// Every server is stopped for a schema migration; no step starts meanwhile.
    pub const SCHEMA_MIGRATION: &str = "SchemaMigration";
}

/// Stage of the step in progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Friendly shutdown requested through the database; waiting for `stopped`.
    Draining,
    /// Evicting the pod through the Eviction API (a PDB refusal is a wait).
    Evicting,
    /// Waiting for the replacement to be ready and joined on the new revision.
    WaitingReady,
}

impl Stage {
    /// The name shown in `status.maintenance.stage`.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Draining => "Draining",
            Stage::Evicting => "Evicting",
            Stage::WaitingReady => "WaitingReady",
        }
    }
}

/// The step in progress, as persisted in the cluster's status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// Server being replaced.
    pub server: String,
    /// Its stage.
    pub stage: Stage,
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
pub struct ServerView {
    /// Server id (pod name).
    pub name: String,
    /// StatefulSet ordinal.
    pub ordinal: i32,
    /// The pod exists.
    pub pod_exists: bool,
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
    /// Jobs running on it.
    pub running_jobs: i32,
    /// Row state.
    pub state: Option<String>,
    /// Seconds since a drain was requested.
    pub drain_age_seconds: Option<f64>,
}

/// Everything the planner reads.
#[derive(Clone, Debug)]
pub struct MaintenanceInput<'a> {
    /// Every server.
    pub servers: &'a [ServerView],
    /// The StatefulSet's update revision.
    pub update_revision: Option<&'a str>,
    /// `maintenance.restartRequestedAt`.
    pub restart_requested_at: Option<Timestamp>,
    /// `maintenance.paused`.
    pub paused: bool,
    /// Whether a maintenance window is open (true when no windows are set).
    pub window_open: bool,
    /// When the next maintenance window opens, if windows are set.
    pub next_window: Option<Timestamp>,
    /// Whether the database preflight passes.
    pub database_ready: bool,
    /// `(reason, message)` when something else must finish before a step starts (a capacity
    /// change, a schema migration).
    pub hold: Option<(&'static str, String)>,
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
pub enum Action {
    /// Nothing.
    None,
    /// Ask this server for a friendly shutdown.
    RequestDrain(String),
    /// Evict this server's pod.
    Evict(String),
}

/// The planner's decision.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// The action to take now.
    pub action: Action,
    /// The step to persist (`None`: no step in progress).
    pub step: Option<Step>,
    /// `(reason, message)` when the roll waits (it resumes by itself).
    pub waiting: Option<(&'static str, String)>,
    /// `(reason, message)` when the roll halted on a failure (a fix or a new spec resumes it).
    pub blocked: Option<(&'static str, String)>,
    /// What triggers the roll, if anything is outdated.
    pub trigger: Option<&'static str>,
    /// Servers outdated, the one in progress included.
    pub outdated: usize,
}

fn is_outdated(server: &ServerView, input: &MaintenanceInput) -> Option<&'static str> {
    if server.pod_exists && input.update_revision.is_some() && server.revision.as_deref() != input.update_revision {
        return Some(triggers::TEMPLATE_CHANGE);
    }
    match (input.restart_requested_at, server.started_at) {
        (Some(requested), Some(started)) if started < requested && requested <= input.now => {
            Some(triggers::RESTART_REQUESTED)
        }
        _ => None,
    }
}

fn elapsed(since: Timestamp, now: Timestamp) -> Duration {
    Duration::try_from(now.duration_since(since)).unwrap_or(Duration::ZERO)
}

/// `(reason, message)` when a person (`paused`) or the calendar (`windows`) holds back every
/// disruptive step.
pub fn gate(paused: bool, window_open: bool, next_window: Option<Timestamp>) -> Option<(&'static str, String)> {
    if paused {
        Some((reasons::PAUSED, "maintenance.paused is set".to_string()))
    } else if !window_open {
        Some((
            reasons::OUTSIDE_WINDOW,
            match next_window {
                Some(opens) => format!("no maintenance window is open; the next opens at {opens}"),
                None => "no maintenance window is open".to_string(),
            },
        ))
    } else {
        None
    }
}

/// Plans the next step of the roll.
pub fn plan(input: &MaintenanceInput) -> Decision {
    let outdated: Vec<&ServerView> = input
        .servers
        .iter()
        .filter(|s| is_outdated(s, input).is_some())
        .collect();
    let trigger = outdated.iter().find_map(|s| is_outdated(s, input));
    let mut decision = Decision {
        action: Action::None,
        step: None,
        waiting: None,
        blocked: None,
        trigger,
        outdated: outdated.len(),
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
    let gate = if let Some(gate) = gate(input.paused, input.window_open, input.next_window) {
        Some(gate)
    } else if !input.database_ready {
        Some((reasons::DATABASE_NOT_READY, "the database preflight fails".to_string()))
    } else {
        input.hold.clone()
    };
    if gate.is_some() {
        decision.waiting = gate;
        return decision;
    }
    let mut candidates = outdated.clone();
    candidates.sort_by_key(|s| (s.joined, s.running_jobs, Reverse(s.ordinal)));
    let candidate = candidates[0];
    let others_down: Vec<&str> = input
        .servers
        .iter()
        .filter(|s| s.name != candidate.name && !s.joined)
        .map(|s| s.name.as_str())
        .collect();
    if !others_down.is_empty() {
        decision.waiting = Some((
            reasons::SERVER_NOT_JOINED,
            format!(
                "{} not joined; replacing {} now would take two servers down",
                others_down.join(", "),
                candidate.name
            ),
        ));
        return decision;
    }
    // A server that is not serving costs no availability: no drain, straight to eviction.
    let (stage, action) = if candidate.joined {
        (Stage::Draining, Action::RequestDrain(candidate.name.clone()))
    } else {
        (Stage::Evicting, Action::Evict(candidate.name.clone()))
    };
    decision.action = action;
    decision.step = Some(Step {
        server: candidate.name.clone(),
        stage,
        since: input.now,
        began: input.now,
        pod_uid: candidate.uid.clone(),
    });
    decision
}

fn continue_step(input: &MaintenanceInput, step: &Step, decision: &mut Decision) {
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
    match step.stage {
        Stage::Draining if server.is_some_and(|s| s.pod_exists && step.pod_uid.is_some() && s.uid != step.pod_uid) => {
            // The drained pod was already replaced (this status was read before the last write
            // of it reached the cache): never evict the replacement.
            decision.step = next(Stage::WaitingReady);
        }
        Stage::Draining => {
            let stopped = server.is_none_or(|s| {
                !s.pod_exists || !matches!(s.state.as_deref(), Some(server_state::ACTIVE | server_state::DRAINING))
            });
            if stopped {
                decision.action = Action::Evict(step.server.clone());
                decision.step = next(Stage::Evicting);
            } else if in_stage >= input.drain_timeout {
                if input.on_drain_timeout == DrainTimeoutPolicy::Proceed {
                    decision.action = Action::Evict(step.server.clone());
                    decision.step = next(Stage::Evicting);
                } else {
                    decision.step = Some(step.clone());
                    decision.blocked = Some((
                        reasons::DRAIN_TIMEOUT,
                        format!(
                            "{} did not finish draining within {:?}; onDrainTimeout is Halt",
                            step.server, input.drain_timeout
                        ),
                    ));
                }
            } else {
                decision.action = Action::RequestDrain(step.server.clone());
                decision.step = Some(step.clone());
            }
        }
        Stage::Evicting => {
            let replaced = server.is_none_or(|s| !s.pod_exists || s.uid != step.pod_uid);
            if replaced {
                decision.step = next(Stage::WaitingReady);
            } else {
                decision.action = Action::Evict(step.server.clone());
                decision.step = Some(step.clone());
            }
        }
        Stage::WaitingReady => {
            let joined = server.is_some_and(|s| s.joined && is_outdated(s, input).is_none());
            if joined {
                decision.step = None;
            } else if in_stage >= input.ready_timeout {
                decision.step = Some(step.clone());
                decision.blocked = Some((
                    reasons::READY_TIMEOUT,
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

/// Whether one of `windows` is open at `now` (UTC); no windows means always.
pub fn window_open(windows: &[crate::crd::MaintenanceWindow], now: Timestamp) -> bool {
    windows.is_empty()
        || openings(windows, now)
            .iter()
            .any(|(opens, length)| *opens <= now && elapsed(*opens, now) < *length)
}

/// When the next of `windows` opens after `now` (`None` without windows).
pub fn next_window(windows: &[crate::crd::MaintenanceWindow], now: Timestamp) -> Option<Timestamp> {
    openings(windows, now)
        .into_iter()
        .map(|(opens, _)| opens)
        .filter(|opens| *opens > now)
        .min()
}

/// Every opening of `windows` from a week before `now` to a week after, with its length (a
/// long window may have opened days ago). Windows that cannot be read never open.
fn openings(windows: &[crate::crd::MaintenanceWindow], now: Timestamp) -> Vec<(Timestamp, Duration)> {
    use crate::crd::Weekday;
    use k8s_openapi::jiff::{Span, civil, tz::TimeZone};
    let weekday = |date: civil::Date| match date.weekday() {
        civil::Weekday::Monday => Weekday::Mon,
        civil::Weekday::Tuesday => Weekday::Tue,
        civil::Weekday::Wednesday => Weekday::Wed,
        civil::Weekday::Thursday => Weekday::Thu,
        civil::Weekday::Friday => Weekday::Fri,
        civil::Weekday::Saturday => Weekday::Sat,
        civil::Weekday::Sunday => Weekday::Sun,
    };
    let today = now.to_zoned(TimeZone::UTC).date();
    let mut out = Vec::new();
    for window in windows {
        let (Some((h, m)), Ok(length)) = (
            window
                .start
                .split_once(':')
                .and_then(|(h, m)| Some((h.parse::<i8>().ok()?, m.parse::<i8>().ok()?))),
            crate::crd::parse_duration("window", &window.duration),
        ) else {
            continue;
        };
        for offset in -7..=7i64 {
            let Ok(date) = today.checked_add(Span::new().days(offset)) else {
                continue;
            };
            if !window.days.is_empty() && !window.days.contains(&weekday(date)) {
                continue;
            }
            if let Ok(opens) = date.at(h, m, 0, 0).to_zoned(TimeZone::UTC) {
                out.push((opens.timestamp(), length));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + seconds).unwrap()
    }

    fn server(ordinal: i32, revision: &str, joined: bool, jobs: i32) -> ServerView {
        ServerView {
            name: format!("prod-{ordinal}"),
            ordinal,
            pod_exists: true,
            uid: Some(format!("uid-{ordinal}-{revision}")),
            revision: Some(revision.into()),
            started_at: Some(at(0)),
            ready: joined,
            joined,
            running_jobs: jobs,
            state: Some(if joined { "active" } else { "joining" }.into()),
            drain_age_seconds: None,
        }
    }

    fn input(servers: &[ServerView], step: Option<Step>, now: i64) -> MaintenanceInput<'_> {
        MaintenanceInput {
            servers,
            update_revision: Some("new"),
            restart_requested_at: None,
            paused: false,
            window_open: true,
            next_window: None,
            database_ready: true,
            hold: None,
            step,
            drain_timeout: Duration::from_secs(60),
            ready_timeout: Duration::from_secs(120),
            on_drain_timeout: DrainTimeoutPolicy::Halt,
            now: at(now),
        }
    }

    #[test]
    fn least_busy_first_highest_ordinal_on_ties_unready_before_all() {
        let servers = [
            server(0, "old", true, 5),
            server(1, "old", true, 1),
            server(2, "old", true, 1),
            server(3, "new", true, 0),
        ];
        let d = plan(&input(&servers, None, 10));
        assert_eq!(d.action, Action::RequestDrain("prod-2".into()));
        assert_eq!(d.trigger, Some(triggers::TEMPLATE_CHANGE));
        assert_eq!(d.outdated, 3);
        let mut with_unready = servers.clone();
        with_unready[0].joined = false;
        with_unready[0].ready = false;
        let d = plan(&input(&with_unready, None, 10));
        assert_eq!(
            d.action,
            Action::Evict("prod-0".into()),
            "the unready one first, without a drain"
        );
    }

    #[test]
    fn gates_and_other_unready_servers_make_it_wait_with_a_reason() {
        let servers = [server(0, "old", true, 0), server(1, "new", false, 0)];
        let d = plan(&input(&servers, None, 0));
        assert_eq!(
            (d.action.clone(), d.waiting.unwrap().0),
            (Action::None, reasons::SERVER_NOT_JOINED)
        );
        let all = [server(0, "old", true, 0), server(1, "old", true, 0)];
        let mut paused = input(&all, None, 0);
        paused.paused = true;
        assert_eq!(plan(&paused).waiting.unwrap().0, reasons::PAUSED);
        let mut closed = input(&all, None, 0);
        closed.window_open = false;
        assert_eq!(plan(&closed).waiting.unwrap().0, reasons::OUTSIDE_WINDOW);
        let mut held = input(&all, None, 0);
        held.hold = Some((reasons::SCALING, "servers are being added".into()));
        let d = plan(&held);
        assert_eq!(
            (d.action, d.outdated, d.waiting.unwrap().0),
            (Action::None, 2, reasons::SCALING)
        );
        let current = [server(0, "new", true, 0)];
        let mut held_but_current = input(&current, None, 0);
        held_but_current.hold = Some((reasons::SCALING, "servers are being added".into()));
        assert_eq!(plan(&held_but_current).waiting, None, "nothing outdated: nothing waits");
    }

    #[test]
    fn a_step_goes_through_drain_evict_and_waiting_ready() {
        let mut servers = vec![server(0, "old", true, 0), server(1, "new", true, 0)];
        let step = Step {
            server: "prod-0".into(),
            stage: Stage::Draining,
            since: at(0),
            began: at(0),
            pod_uid: None,
        };
        assert_eq!(
            plan(&input(&servers, Some(step.clone()), 5)).action,
            Action::RequestDrain("prod-0".into())
        );
        servers[0].state = Some("stopped".into());
        let d = plan(&input(&servers, Some(step.clone()), 6));
        assert_eq!(
            (d.action, d.step.clone().unwrap().stage),
            (Action::Evict("prod-0".into()), Stage::Evicting)
        );
        servers[0] = ServerView {
            started_at: Some(at(8)),
            ..server(0, "new", false, 0)
        };
        let d = plan(&input(&servers, d.step, 9));
        assert_eq!(d.step.clone().unwrap().stage, Stage::WaitingReady);
        servers[0].joined = true;
        let done = plan(&input(&servers, d.step, 12));
        assert_eq!((done.step, done.action, done.outdated), (None, Action::None, 0));
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
            stage: Stage::Draining,
            since: at(0),
            began: at(0),
            pod_uid: Some("uid-0-old".into()),
        };
        let d = plan(&input(&replaced, Some(stale), 9));
        assert_eq!((d.action, d.step.unwrap().stage), (Action::None, Stage::WaitingReady));
    }

    #[test]
    fn timeouts_halt_or_proceed() {
        let servers = [server(0, "old", true, 3), server(1, "new", true, 0)];
        let draining = Step {
            server: "prod-0".into(),
            stage: Stage::Draining,
            since: at(0),
            began: at(0),
            pod_uid: None,
        };
        let d = plan(&input(&servers, Some(draining.clone()), 61));
        assert_eq!((d.action, d.blocked.unwrap().0), (Action::None, reasons::DRAIN_TIMEOUT));
        let mut proceed = input(&servers, Some(draining), 61);
        proceed.on_drain_timeout = DrainTimeoutPolicy::Proceed;
        assert_eq!(plan(&proceed).action, Action::Evict("prod-0".into()));
        let waiting = Step {
            server: "prod-0".into(),
            stage: Stage::WaitingReady,
            since: at(0),
            began: at(0),
            pod_uid: None,
        };
        let never_ready = [server(0, "new", false, 0), server(1, "new", true, 0)];
        let d = plan(&input(&never_ready, Some(waiting), 121));
        assert_eq!(d.blocked.unwrap().0, reasons::READY_TIMEOUT);
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
        let d = plan(&restart);
        assert_eq!((d.trigger, d.outdated), (Some(triggers::RESTART_REQUESTED), 1));
        assert_eq!(d.action, Action::RequestDrain("prod-0".into()));
    }

    /// Applies an action to a simulated cluster where everything succeeds: a drained server
    /// stops, an evicted pod comes back on the new revision and joins a tick later.
    fn simulate(servers: &mut [ServerView], action: &Action, now: i64) {
        for s in servers.iter_mut() {
            if !s.joined && s.revision.as_deref() == Some("new") && s.pod_exists {
                s.joined = true;
                s.ready = true;
                s.state = Some("active".into());
            }
        }
        match action {
            Action::RequestDrain(name) => {
                let s = servers.iter_mut().find(|s| &s.name == name).unwrap();
                s.state = Some("stopped".into());
                s.ready = false;
                s.joined = false;
            }
            Action::Evict(name) => {
                let s = servers.iter_mut().find(|s| &s.name == name).unwrap();
                *s = ServerView {
                    started_at: Some(at(now)),
                    state: None,
                    ..server(s.ordinal, "new", false, 0)
                };
            }
            Action::None => {}
        }
    }

    #[test]
    fn windows_open_by_day_and_time_in_utc() {
        use crate::crd::{MaintenanceWindow, Weekday};
        let window = |days: Vec<Weekday>, start: &str, duration: &str| MaintenanceWindow {
            days,
            start: start.into(),
            duration: duration.into(),
        };
        // 2026-11-28 is a Saturday.
        let sat_0230: Timestamp = "2026-11-28T02:30:00Z".parse().unwrap();
        let sat_0630: Timestamp = "2026-11-28T06:30:00Z".parse().unwrap();
        let weekend = [window(vec![Weekday::Sat, Weekday::Sun], "02:00", "4h")];
        assert!(window_open(&weekend, sat_0230));
        assert!(!window_open(&weekend, sat_0630));
        assert!(!window_open(&[window(vec![Weekday::Mon], "02:00", "4h")], sat_0230));
        let overnight = [window(vec![Weekday::Fri], "23:00", "4h")];
        assert!(
            window_open(&overnight, "2026-11-28T01:00:00Z".parse().unwrap()),
            "opened Friday, still open Saturday"
        );
        assert!(window_open(&[], sat_0630), "no windows: always");
        assert_eq!(
            next_window(&weekend, sat_0630),
            Some("2026-11-29T02:00:00Z".parse().unwrap()),
            "Sunday's opening"
        );
        assert_eq!(
            next_window(&[window(vec![Weekday::Fri], "23:00", "1h")], sat_0630),
            Some("2026-12-04T23:00:00Z".parse().unwrap()),
            "next week's Friday"
        );
        assert_eq!(next_window(&[], sat_0630), None);
        let servers = [server(0, "old", true, 0)];
        let mut closed = input(&servers, None, 0);
        closed.window_open = false;
        closed.next_window = Some("2026-11-29T02:00:00Z".parse().unwrap());
        let (reason, message) = plan(&closed).waiting.unwrap();
        assert_eq!(reason, reasons::OUTSIDE_WINDOW);
        assert!(message.contains("the next opens at 2026-11-29T02:00:00Z"), "{message}");
    }

    proptest! {
        #[test]
        fn rolls_one_at_a_time_and_terminates(
            layout in prop::collection::vec((any::<bool>(), 0i32..5), 1..7),
        ) {
            let mut servers: Vec<ServerView> =
                layout.iter().enumerate().map(|(i, (old, jobs))| server(i as i32, if *old { "old" } else { "new" }, true, *jobs)).collect();
            let mut step = None;
            for tick in 0..(servers.len() as i64 * 4 + 4) {
                let decision = plan(&input(&servers, step.clone(), tick));
                let down = servers.iter().filter(|s| !s.joined).count();
                prop_assert!(down <= 1, "never two servers down: {servers:?}");
                if let Action::RequestDrain(name) | Action::Evict(name) = &decision.action {
                    prop_assert_eq!(Some(name), decision.step.as_ref().map(|s| &s.server), "actions only on the step's server");
                }
                if decision.action == Action::None && decision.step.is_none() && decision.outdated > 0 {
                    prop_assert!(decision.waiting.is_some() || decision.blocked.is_some() || step.is_some(), "every wait has a reason");
                }
                prop_assert!(decision.blocked.is_none(), "nothing fails in this world");
                simulate(&mut servers, &decision.action, tick);
                step = decision.step;
            }
            prop_assert!(servers.iter().all(|s| s.revision.as_deref() == Some("new") && s.joined), "the roll completes: {servers:?}");
        }
    }
}
