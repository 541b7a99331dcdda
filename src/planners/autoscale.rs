//! The autoscaler: how many servers the work in the shared database asks for (a *reading*,
//! taken at each look), and how many the cluster should have now (the *desired* count) under
//! the floor and ceiling, the stabilization windows, the scale-down step and the disruption
//! rule. A pure function of the policy, the work, the readings of the last windows, the last
//! status and the time; does not need a client. Adding the servers it wants is the capacity
//! planner's job, under the same rules as a manual scale-up (database usable, an existing
//! server joined, `addAtOnce` per step).
//!
//! As the HorizontalPodAutoscaler does, a change follows the readings of a whole window: up to
//! the lowest reading of the last `scaleUp.stabilizationWindow`, down to the highest of the last
//! `scaleDown.stabilizationWindow`. The readings are kept in the operator's memory
//! ([`Readings`], a few entries per cluster), not in the status, which would change with every
//! look. What a restarted operator needs is in `status.autoscale` (the desired count); its
//! readings start again, so it changes the count only after a whole window of its own readings
//! (never earlier than the last one would have). A look that cannot read the work, or an HPA
//! scaling the same cluster, starts the readings again too.

use std::collections::VecDeque;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use orchestrator_contract::Work;

use super::windows::{Calendar, elapsed};
use crate::crd::{AutoscaleDecision, AutoscaleSignal, AutoscaleStatus};
use crate::vocabulary::{Hold, Reason};

/// `capacity.autoscale`, parsed (by `validate`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Policy {
    /// `minReplicas`.
    pub min: i32,
    /// `maxReplicas`.
    pub max: i32,
    /// The target: jobs (claimable plus running) one server should carry.
    pub jobs_per_server: i32,
    /// `scaleUp.stabilizationWindow`.
    pub up_window: Duration,
    /// `scaleDown.stabilizationWindow`.
    pub down_window: Duration,
    /// `scaleDown.step`.
    pub down_step: i32,
    /// `schedules`, as a calendar.
    pub schedules: Calendar,
    /// `minReplicas` of each schedule (same order).
    pub schedule_floors: Vec<i32>,
}

/// One reading: when, and the servers the work asked for (before the floor; at most the
/// ceiling plus one, which is all a window needs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Reading {
    at: Timestamp,
    servers: i32,
}

/// A gap longer than this between two looks (three of an autoscaled cluster's 5 s looks)
/// starts the readings again: what happened in between was not seen.
pub(crate) const LOOK_GAP: Duration = Duration::from_secs(15);

/// The readings of the last windows, as two monotonic queues: the highest of the last
/// scale-down window and the lowest of the last scale-up window are at their fronts. Each
/// holds at most one entry per distinct count, so a cluster costs a few entries whatever its
/// windows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Readings {
    /// When the readings started (an operator start, the first look after an unknown one, a
    /// gap, or a change of the windows).
    since: Timestamp,
    /// The last reading's time.
    last: Timestamp,
    /// The scale-up and scale-down windows they were kept for.
    windows: (Duration, Duration),
    /// Strictly decreasing counts, oldest first: the front is the highest in the window.
    highs: VecDeque<Reading>,
    /// Strictly increasing counts, oldest first: the front is the lowest in the window.
    lows: VecDeque<Reading>,
}

impl Readings {
    /// Readings starting with `reading`, for the windows of `policy`.
    fn start(reading: Reading, policy: &Policy) -> Self {
        Self {
            since: reading.at,
            last: reading.at,
            windows: (policy.up_window, policy.down_window),
            highs: VecDeque::from([reading]),
            lows: VecDeque::from([reading]),
        }
    }

    /// Whether a reading at `now` continues these readings: the windows are the same, and it
    /// comes after the last one by no more than [`LOOK_GAP`].
    fn continued_by(&self, now: Timestamp, policy: &Policy) -> bool {
        self.windows == (policy.up_window, policy.down_window)
            && now >= self.last
            && elapsed(self.last, now) <= LOOK_GAP
    }

    /// Adds `reading` and forgets what fell out of the windows.
    fn record(&mut self, reading: Reading, policy: &Policy) {
        self.last = reading.at;
        while self.highs.back().is_some_and(|r| r.servers <= reading.servers) {
            self.highs.pop_back();
        }
        self.highs.push_back(reading);
        while self.lows.back().is_some_and(|r| r.servers >= reading.servers) {
            self.lows.pop_back();
        }
        self.lows.push_back(reading);
        let within = |window: Duration| move |r: &Reading| elapsed(r.at, reading.at) <= window;
        while self.highs.front().is_some_and(|r| !within(policy.down_window)(r)) {
            self.highs.pop_front();
        }
        while self.lows.front().is_some_and(|r| !within(policy.up_window)(r)) {
            self.lows.pop_front();
        }
    }

    /// Whether the readings span `window` up to `now`.
    fn cover(&self, window: Duration, now: Timestamp) -> bool {
        elapsed(self.since, now) >= window
    }

    /// The highest count of the scale-down window.
    fn highest(&self) -> i32 {
        self.highs.front().map_or(0, |r| r.servers)
    }

    /// The lowest count of the scale-up window.
    fn lowest(&self) -> i32 {
        self.lows.front().map_or(0, |r| r.servers)
    }

    /// The last reading of at least `servers` (scale-down) still in its window.
    fn last_at_least(&self, servers: i32) -> Option<Timestamp> {
        self.highs.iter().rev().find(|r| r.servers >= servers).map(|r| r.at)
    }

    /// The last reading of at most `servers` (scale-up) still in its window.
    fn last_at_most(&self, servers: i32) -> Option<Timestamp> {
        self.lows.iter().rev().find(|r| r.servers <= servers).map(|r| r.at)
    }
}

/// What the autoscaler needs.
#[derive(Clone, Debug)]
pub(crate) struct AutoscaleInput<'a> {
    /// The policy.
    pub policy: &'a Policy,
    /// The database's work, or why it could not be read (unknown is not idle).
    pub work: Result<Work, String>,
    /// Of `work.serving`, the servers of this cluster.
    pub own_serving: i64,
    /// The readings of earlier looks (`None`: none since the operator started, or since a look
    /// that could not read the work).
    pub readings: Option<&'a Readings>,
    /// `status.autoscale` as the last reconcile wrote it.
    pub previous: Option<&'a AutoscaleStatus>,
    /// The StatefulSet's replicas.
    pub current: i32,
    /// Ordinals of the cluster's servers (below `current`) that have not joined.
    pub unjoined: &'a [i32],
    /// A roll step, a schema stage or a drain in progress: no removal meanwhile.
    pub disruption: Option<Hold>,
    /// Another autoscaler scales the cluster: the count stays where it is.
    pub conflict: Option<Hold>,
    /// Now.
    pub now: Timestamp,
}

/// What the autoscaler decided.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct AutoscaleOutcome {
    /// The servers the cluster should have now.
    pub desired: i32,
    /// `status.autoscale` to write.
    pub status: AutoscaleStatus,
    /// The change of the desired count, for an Event (`None`: unchanged).
    pub decision: Option<(Reason, String)>,
    /// When time alone changes the decision (a reading leaves a window, a schedule opens or
    /// closes).
    pub recheck: Option<Duration>,
    /// The readings to keep for the next look (`None`: start again).
    pub readings: Option<Readings>,
}

/// The floor at `now`: `minReplicas`, or the highest `minReplicas` of an open schedule.
fn floor(policy: &Policy, now: Timestamp) -> i32 {
    policy
        .schedules
        .open_at(now)
        .into_iter()
        .filter_map(|index| policy.schedule_floors.get(index).copied())
        .fold(policy.min, i32::max)
        .min(policy.max)
}

/// Servers the work asks for, before the floor and ceiling: `ceil(jobs / target)` less the
/// servers of others that take work from the same database.
pub(crate) fn wanted_by(work: &Work, own_serving: i64, jobs_per_server: i32) -> i64 {
    let jobs = work.claimable.saturating_add(work.running).max(0);
    let target = i64::from(jobs_per_server.max(1));
    let others = work.serving.saturating_sub(own_serving).max(0);
    (jobs.saturating_add(target - 1) / target - others).max(0)
}

/// Decides the desired count.
pub(crate) fn decide(input: &AutoscaleInput) -> AutoscaleOutcome {
    let policy = input.policy;
    let now = input.now;
    let floor = floor(policy, now);
    let before = input
        .previous
        .map(|p| p.desired_replicas)
        .unwrap_or(if input.current > 0 { input.current } else { floor });
    // A person's order (a higher floor, a lower ceiling) is followed at once; the capacity
    // planner still adds `addAtOnce` at a time and drains before it removes.
    let bounded = before.clamp(floor, policy.max);
    let clamp = |servers: i32| servers.clamp(floor, policy.max);
    let mut desired = bounded;
    let mut limit: Option<Hold> = None;
    let mut recheck: Option<Duration> = None;
    let mut readings = None;
    let mut recommended = None;
    let raw = input
        .work
        .as_ref()
        .map(|work| wanted_by(work, input.own_serving, policy.jobs_per_server));
    match (&input.conflict, raw) {
        (Some(conflict), _) => limit = Some(conflict.clone()),
        (None, Err(why)) => {
            limit = Some(Hold::new(
                Reason::SignalUnknown,
                format!("the database's work cannot be read ({why}); keeping {bounded} servers until it can"),
            ));
        }
        (None, Ok(raw)) => {
            let reading = Reading {
                at: now,
                servers: i32::try_from(raw.min(i64::from(policy.max) + 1)).unwrap_or(policy.max),
            };
            let mut kept = input
                .readings
                .filter(|kept| kept.continued_by(now, policy))
                .cloned()
                .unwrap_or_else(|| Readings::start(reading, policy));
            kept.record(reading, policy);
            let (lowest, highest) = (clamp(kept.lowest()), clamp(kept.highest()));
            let latest = clamp(reading.servers);
            let until = |last: Option<Timestamp>, window: Duration| {
                let since = last.unwrap_or(kept.since).max(kept.since);
                window.saturating_sub(elapsed(since, now))
            };
            // Every reading of the up window asks for more, or every reading of the down
            // window for fewer; readings that hover around the count change nothing.
            if lowest > bounded {
                if kept.cover(policy.up_window, now) {
                    desired = lowest;
                } else {
                    recheck = Some(until(None, policy.up_window));
                    limit = Some(Hold::new(
                        Reason::Stabilizing,
                        format!(
                            "the work asks for more servers; they are added once it has for {:?} (scaleUp.stabilizationWindow)",
                            policy.up_window
                        ),
                    ));
                }
            } else if highest < bounded {
                if kept.cover(policy.down_window, now) {
                    let lower = highest.max(bounded.min(input.current) - policy.down_step);
                    match removal_hold(input, lower) {
                        Some(hold) if lower < input.current => {
                            desired = bounded.min(input.current);
                            limit = Some(hold);
                        }
                        _ => desired = lower,
                    }
                } else {
                    recheck = Some(until(None, policy.down_window));
                    limit = Some(Hold::new(
                        Reason::Stabilizing,
                        format!(
                            "the work asks for fewer servers; one is removed once it has for {:?} (scaleDown.stabilizationWindow)",
                            policy.down_window
                        ),
                    ));
                }
            } else if latest > bounded {
                recheck = Some(until(kept.last_at_most(bounded), policy.up_window));
            } else if latest < bounded {
                recheck = Some(until(kept.last_at_least(bounded), policy.down_window));
            }
            // Over the window, so that readings around the ceiling do not flip it.
            if kept.highest() > policy.max && desired == policy.max {
                limit = Some(Hold::new(
                    Reason::AtMaxReplicas,
                    format!(
                        "the work asks for more servers than capacity.autoscale.maxReplicas ({})",
                        policy.max
                    ),
                ));
            }
            // What the windows would move to: stable while the readings hover around it.
            recommended = Some(if lowest > bounded {
                lowest
            } else if highest < bounded {
                highest
            } else {
                bounded
            });
            readings = Some(kept);
        }
    }
    let changed = desired != before;
    let previous = input.previous.cloned().unwrap_or_default();
    let fresh = input.work.as_ref().ok().map(|work| AutoscaleSignal {
        claimable_jobs: work.claimable,
        running_jobs: work.running,
        other_servers: work.serving.saturating_sub(input.own_serving).max(0),
        jobs_per_server: policy.jobs_per_server,
        observed_at: Time(now),
    });
    // The figures are written with a new recommendation, a decision or a new target, not at
    // every look.
    let signal = match (&previous.signal, fresh) {
        (Some(kept), Some(fresh))
            if !changed
                && previous.recommended_replicas == recommended
                && kept.jobs_per_server == fresh.jobs_per_server =>
        {
            Some(kept.clone())
        }
        (kept, fresh) => fresh.or_else(|| kept.clone()),
    };
    let decision = changed.then(|| {
        let reason = if desired == bounded {
            if floor > policy.min && before < floor {
                Reason::ScheduleFloor
            } else {
                Reason::AutoscaleBounds
            }
        } else if desired > before {
            Reason::AutoscaledUp
        } else {
            Reason::AutoscaledDown
        };
        let why = match (&signal, recommended) {
            (Some(s), Some(r)) => format!(
                "{} claimable + {} running jobs at {} per server{} ask for {r} (floor {floor}, max {})",
                s.claimable_jobs,
                s.running_jobs,
                s.jobs_per_server,
                if s.other_servers > 0 {
                    format!(", less {} servers of others", s.other_servers)
                } else {
                    String::new()
                },
                policy.max
            ),
            _ => format!("floor {floor}, max {}", policy.max),
        };
        (reason, format!("desired servers {before} -> {desired}: {why}"))
    });
    if let Some(next) = policy.schedules.next_change(now) {
        let until = elapsed(now, next);
        recheck = Some(recheck.map_or(until, |r| r.min(until)));
    }
    let status = AutoscaleStatus {
        desired_replicas: desired,
        recommended_replicas: recommended,
        floor,
        signal,
        limited_by: limit.as_ref().map(|hold| hold.reason.as_str().to_string()),
        message: limit.map(|hold| hold.message),
        last_decision: match &decision {
            Some((reason, message)) => Some(AutoscaleDecision {
                time: Time(now),
                from: before,
                to: desired,
                reason: reason.as_str().to_string(),
                message: message.clone(),
            }),
            None => previous.last_decision.clone(),
        },
    };
    AutoscaleOutcome {
        desired,
        status,
        decision,
        recheck,
        readings,
    }
}

/// Why no server may be removed down to `lower` now: a disruption in progress, or a server that
/// stays (ordinal below `lower`) not joined: taking another away would leave two out of
/// service.
fn removal_hold(input: &AutoscaleInput, lower: i32) -> Option<Hold> {
    if let Some(hold) = &input.disruption {
        return Some(hold.clone());
    }
    let out: Vec<i32> = input.unjoined.iter().copied().filter(|o| *o < lower).collect();
    (!out.is_empty()).then(|| {
        Hold::new(
            Reason::DisruptionInProgress,
            format!(
                "{} of the servers that stay {} not joined; no server is removed while one is out of service",
                out.len(),
                if out.len() == 1 { "has" } else { "have" }
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::MaintenanceWindow;
    use proptest::prelude::*;

    fn policy() -> Policy {
        Policy {
            min: 1,
            max: 6,
            jobs_per_server: 4,
            up_window: Duration::ZERO,
            down_window: Duration::from_secs(60),
            down_step: 1,
            schedules: Calendar::default(),
            schedule_floors: Vec::new(),
        }
    }

    fn work(claimable: i64, running: i64) -> Result<Work, String> {
        Ok(Work {
            claimable,
            running,
            serving: 0,
        })
    }

    fn unknown() -> Result<Work, String> {
        Err("connection refused".into())
    }

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_790_000_000 + seconds).unwrap()
    }

    /// A cluster of `current` joined servers, looked at by a reconcile at a time.
    struct Looks<'a> {
        policy: &'a Policy,
        readings: Option<Readings>,
        status: Option<AutoscaleStatus>,
        current: i32,
        unjoined: Vec<i32>,
        disruption: Option<Hold>,
        conflict: Option<Hold>,
    }

    impl<'a> Looks<'a> {
        fn new(policy: &'a Policy, current: i32) -> Self {
            Self {
                policy,
                readings: None,
                status: None,
                current,
                unjoined: Vec::new(),
                disruption: None,
                conflict: None,
            }
        }

        fn look(&mut self, seconds: i64, work: Result<Work, String>) -> AutoscaleOutcome {
            let out = decide(&AutoscaleInput {
                policy: self.policy,
                work,
                own_serving: 0,
                readings: self.readings.as_ref(),
                previous: self.status.as_ref(),
                current: self.current,
                unjoined: &self.unjoined,
                disruption: self.disruption.clone(),
                conflict: self.conflict.clone(),
                now: at(seconds),
            });
            self.readings = out.readings.clone();
            self.status = Some(out.status.clone());
            out
        }

        /// Looks every 5 s from `from` to `to` (included), each keeping `desired`.
        fn every(&mut self, from: i64, to: i64, work: Result<Work, String>, desired: i32) {
            for seconds in (from..=to).step_by(5) {
                let out = self.look(seconds, work.clone());
                assert_eq!(out.desired, desired, "at {seconds} s: {out:?}");
            }
        }
    }

    #[test]
    fn the_work_asks_for_ceil_jobs_over_target_less_other_servers() {
        let w = |claimable, running, serving| Work {
            claimable,
            running,
            serving,
        };
        assert_eq!(wanted_by(&w(0, 0, 0), 0, 4), 0);
        assert_eq!(wanted_by(&w(1, 0, 0), 0, 4), 1);
        assert_eq!(wanted_by(&w(13, 4, 2), 2, 4), 5);
        assert_eq!(wanted_by(&w(13, 4, 3), 1, 4), 3, "two servers of others take 8");
        assert_eq!(wanted_by(&w(1, 0, 9), 0, 4), 0);
    }

    #[test]
    fn a_burst_scales_up_at_once_and_idle_scales_down_after_the_window_one_at_a_time() {
        let p = policy();
        let mut looks = Looks::new(&p, 1);
        let up = looks.look(0, work(30, 4));
        assert_eq!(up.desired, 6);
        assert_eq!(up.status.limited_by.as_deref(), Some("AtMaxReplicas"));
        assert_eq!(up.decision.as_ref().unwrap().0, Reason::AutoscaledUp);
        looks.current = 6;
        let waiting = looks.look(5, work(0, 0));
        assert_eq!((waiting.desired, waiting.status.recommended_replicas), (6, Some(6)));
        assert_eq!(
            waiting.recheck,
            Some(Duration::from_secs(55)),
            "the busy reading leaves at 60 s"
        );
        looks.every(10, 60, work(0, 0), 6);
        let down = looks.look(65, work(0, 0));
        assert_eq!(down.desired, 5, "one server per step");
        assert_eq!(down.decision.as_ref().unwrap().0, Reason::AutoscaledDown);
        // Its drain runs: the next step waits for it.
        looks.disruption = Some(Hold::new(Reason::DisruptionInProgress, "prod-5 is draining"));
        assert_eq!(looks.look(70, work(0, 0)).desired, 5);
        // Gone: the next one, without a new window.
        looks.disruption = None;
        looks.current = 5;
        assert_eq!(looks.look(75, work(0, 0)).desired, 4);
    }

    #[test]
    fn readings_hovering_around_the_count_change_nothing_and_write_the_same_status() {
        let p = policy();
        let mut looks = Looks::new(&p, 4);
        looks.look(0, work(16, 0));
        let first = looks.look(5, work(12, 0)).status;
        for (i, jobs) in [16, 12, 15, 9, 16, 13].into_iter().enumerate() {
            let out = looks.look(10 + 5 * i as i64, work(jobs, 0));
            assert_eq!(out.desired, 4);
            assert_eq!(out.status, first, "reading {jobs}");
        }
        // Around the ceiling too: the limit holds over the window.
        let mut looks = Looks::new(&p, 6);
        looks.look(0, work(28, 0));
        let first = looks.look(5, work(24, 0)).status;
        assert_eq!(first.limited_by.as_deref(), Some("AtMaxReplicas"));
        for (i, jobs) in [28, 24, 25, 22, 29].into_iter().enumerate() {
            assert_eq!(
                looks.look(10 + 5 * i as i64, work(jobs, 0)).status,
                first,
                "reading {jobs}"
            );
        }
    }

    #[test]
    fn unknown_work_keeps_the_count_and_starts_the_readings_again() {
        let p = policy();
        let mut looks = Looks::new(&p, 3);
        looks.look(0, work(12, 0));
        looks.every(5, 30, work(0, 0), 3);
        let unknown = looks.look(35, unknown());
        assert_eq!(unknown.desired, 3);
        assert_eq!(unknown.status.limited_by.as_deref(), Some("SignalUnknown"));
        assert!(unknown.status.message.unwrap().contains("connection refused"));
        assert!(unknown.decision.is_none() && unknown.readings.is_none());
        // Idle before and after the outage: a whole window of new readings first.
        looks.every(40, 95, work(0, 0), 3);
        assert_eq!(looks.look(100, work(0, 0)).desired, 2);
    }

    #[test]
    fn a_gap_between_looks_or_new_windows_start_the_readings_again() {
        let p = policy();
        let mut looks = Looks::new(&p, 3);
        looks.look(0, work(0, 0));
        looks.look(5, work(0, 0));
        // Twenty seconds unseen (an invalid spec, errors): the window starts at 25.
        looks.every(25, 80, work(0, 0), 3);
        assert_eq!(looks.look(85, work(0, 0)).desired, 2);
        let mut longer = p.clone();
        longer.down_window = Duration::from_secs(120);
        let mut looks = Looks::new(&longer, 3);
        let mut again = Looks::new(&p, 3);
        again.every(0, 55, work(0, 0), 3);
        looks.readings = again.readings.clone();
        looks.status = again.status.clone();
        looks.every(60, 175, work(0, 0), 3);
        assert_eq!(looks.look(180, work(0, 0)).desired, 2, "a whole 120 s of readings");
    }

    #[test]
    fn a_restarted_operator_waits_a_whole_window_before_it_removes() {
        let p = policy();
        let mut looks = Looks::new(&p, 3);
        looks.look(0, work(12, 0));
        looks.readings = None;
        looks.every(100, 155, work(0, 0), 3);
        assert_eq!(looks.look(160, work(0, 0)).desired, 2);
    }

    #[test]
    fn another_autoscaler_freezes_the_count() {
        let p = policy();
        let mut looks = Looks::new(&p, 2);
        looks.conflict = Some(Hold::new(Reason::AutoscalerConflict, "hpa/prod scales it"));
        let out = looks.look(0, work(40, 0));
        assert_eq!(
            (out.desired, out.status.limited_by.as_deref()),
            (2, Some("AutoscalerConflict"))
        );
        assert!(out.decision.is_none());
    }

    #[test]
    fn the_scale_up_window_uses_the_lowest_reading() {
        let mut p = policy();
        p.up_window = Duration::from_secs(30);
        let mut looks = Looks::new(&p, 1);
        let first = looks.look(0, work(20, 0));
        assert_eq!((first.desired, first.recheck), (1, Some(Duration::from_secs(30))));
        assert_eq!(first.status.limited_by.as_deref(), Some("Stabilizing"));
        looks.look(10, work(8, 0));
        looks.look(20, work(20, 0));
        assert_eq!(looks.look(31, work(20, 0)).desired, 2, "the lowest ask in the window");
    }

    #[test]
    fn an_unjoined_server_that_is_removed_does_not_hold_the_removal() {
        let p = policy();
        let mut looks = Looks::new(&p, 3);
        looks.look(0, work(12, 0));
        looks.unjoined = vec![2];
        looks.every(5, 60, work(0, 0), 3);
        assert_eq!(
            looks.look(65, work(0, 0)).desired,
            2,
            "prod-2 never joined: it goes first"
        );
        looks.unjoined = vec![0];
        looks.status.as_mut().unwrap().desired_replicas = 3;
        let held = looks.look(70, work(0, 0));
        assert_eq!(held.desired, 3);
        assert_eq!(held.status.limited_by.as_deref(), Some("DisruptionInProgress"));
    }

    #[test]
    fn a_schedule_raises_the_floor_while_it_lasts() {
        let mut p = policy();
        p.schedules = Calendar::parse(
            "spec.capacity.autoscale.schedules",
            &[MaintenanceWindow {
                days: vec![],
                start: "08:00".into(),
                duration: "1h".into(),
            }],
        )
        .unwrap();
        p.schedule_floors = vec![4];
        let busy: Timestamp = "2026-12-03T08:30:00Z".parse().unwrap();
        let out = decide(&AutoscaleInput {
            policy: &p,
            work: work(0, 0),
            own_serving: 0,
            readings: None,
            previous: None,
            current: 1,
            unjoined: &[],
            disruption: None,
            conflict: None,
            now: busy,
        });
        assert_eq!((out.desired, out.status.floor), (4, 4));
        assert_eq!(out.decision.unwrap().0, Reason::ScheduleFloor);
        assert_eq!(out.recheck, Some(Duration::from_secs(30 * 60)), "it closes at 09:00");
    }

    /// One look of a generated sequence: seconds since the last look, the work (`None`:
    /// unknown), the servers, an unjoined one, a disruption, another autoscaler.
    type Step = (i64, Option<(i64, i64)>, i32, Option<i32>, bool, bool);

    fn steps() -> impl Strategy<Value = Vec<Step>> {
        prop::collection::vec(
            (
                prop::sample::select(vec![1i64, 4, 5, 5, 5, 6, 10, 20]),
                prop::option::weighted(0.95, (0i64..60, 0i64..20)),
                0i32..9,
                prop::option::of(0i32..9),
                prop::bool::weighted(0.2),
                prop::bool::weighted(0.03),
            ),
            1..80,
        )
    }

    proptest! {
        #[test]
        fn bounded_no_change_without_a_window_of_readings_no_removal_during_a_disruption(
            min in 1i32..4, span in 0i32..6, step in 1i32..3,
            up in prop::sample::select(vec![0u64, 10, 30]), down in prop::sample::select(vec![0u64, 20, 60, 120]),
            schedule in prop::option::of((prop::sample::select(vec!["13:50", "14:00", "14:20", "14:30"]), 1i32..10)),
            steps in steps(),
        ) {
            let mut p = Policy {
                min, max: min + span, down_step: step,
                up_window: Duration::from_secs(up), down_window: Duration::from_secs(down),
                ..policy()
            };
            // The looks start at 14:13:20 UTC: these schedules open and close during a run.
            if let Some((start, floor)) = schedule {
                p.schedules = Calendar::parse("s", &[MaintenanceWindow { days: vec![], start: start.into(), duration: "10m".into() }]).unwrap();
                p.schedule_floors = vec![floor.min(p.max)];
            }
            let mut looks = Looks::new(&p, 0);
            // (time, servers asked) of every reading since the readings last started again.
            let mut known: Vec<(i64, i32)> = Vec::new();
            let mut t = 0;
            for (gap, w, current, unjoined, disrupted, conflict) in steps {
                t += gap;
                looks.current = current;
                looks.unjoined = unjoined.filter(|o| *o < current).into_iter().collect();
                looks.disruption = disrupted.then(|| Hold::new(Reason::DisruptionInProgress, "a step"));
                looks.conflict = conflict.then(|| Hold::new(Reason::AutoscalerConflict, "hpa"));
                let before = looks.status.as_ref().map(|s| s.desired_replicas);
                let out = looks.look(t, w.map(|(c, r)| Work { claimable: c, running: r, serving: 0 }).ok_or_else(|| "down".to_string()));
                let floor = out.status.floor;
                prop_assert!(out.desired >= p.min && out.desired >= floor && out.desired <= p.max, "{out:?}");
                match (w, conflict) {
                    (Some((c, r)), false) => {
                        if gap > LOOK_GAP.as_secs() as i64 {
                            known.clear();
                        }
                        known.push((t, ((c + r + 3) / 4) as i32));
                    }
                    _ => known.clear(),
                }
                let Some(before) = before else { continue };
                let bounded = before.clamp(floor, p.max);
                let first = known.first().map_or(t, |k| k.0);
                let in_window = |window: u64| known.iter().filter(move |k| t - k.0 <= window as i64).map(|k| k.1.clamp(floor, p.max));
                let asked = bounded.min(current);
                if out.desired < asked {
                    prop_assert!(!conflict && w.is_some(), "a removal on unknown work or beside an HPA: {out:?}");
                    prop_assert!(!disrupted, "a removal during a disruption: {out:?}");
                    prop_assert!(looks.unjoined.iter().all(|o| *o >= out.desired), "a removal beside an unjoined server");
                    prop_assert!(asked - out.desired <= step, "beyond the step: {out:?}");
                    prop_assert!(t - first >= down as i64, "a removal without a window of readings: {known:?}");
                    let highest = in_window(down).max().unwrap_or(0);
                    prop_assert!(out.desired >= highest, "below a reading of the window: {known:?} {out:?}");
                }
                if out.desired > bounded {
                    prop_assert!(!conflict && w.is_some(), "an addition on unknown work or beside an HPA");
                    prop_assert!(t - first >= up as i64, "an addition without a window of readings: {known:?}");
                    let lowest = in_window(up).min().unwrap_or(i32::MAX);
                    prop_assert!(out.desired <= lowest, "above a reading of the window: {known:?} {out:?}");
                }
                if out.desired != before {
                    prop_assert!(out.decision.is_some(), "every change is said");
                }
            }
        }
    }
}
