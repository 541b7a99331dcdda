//! The autoscaler: how many servers the work in the shared database asks for (the
//! *recommendation*), and how many the cluster should have now (the *desired* count) under the
//! floor and ceiling, the stabilization windows, the scale-down step and the disruption rule.
//! A pure function of the policy, the signal, the last status and the time; does not need a
//! client. Adding the servers it wants is the capacity planner's job, under the same rules as
//! a manual scale-up (database usable, an existing server joined, `addAtOnce` per step).
//!
//! Everything it remembers (the desired count, since when the recommendation has been above or
//! below it, the last decision) is in `status.autoscale`, so a restarted operator goes on where
//! the last one stopped.

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
    /// `schedules`, as a calendar, and the floor of each (same order).
    pub schedules: Calendar,
    /// `minReplicas` of each schedule.
    pub schedule_floors: Vec<i32>,
}

/// What the autoscaler needs.
#[derive(Clone, Debug)]
pub(crate) struct AutoscaleInput<'a> {
    /// The policy.
    pub policy: &'a Policy,
    /// The database's work, `None` when it could not be read (unknown is not idle).
    pub work: Option<Work>,
    /// Of `work.serving`, the servers of this cluster.
    pub own_serving: i64,
    /// `status.autoscale` as the last reconcile wrote it.
    pub previous: Option<&'a AutoscaleStatus>,
    /// The StatefulSet's replicas.
    pub current: i32,
    /// Servers of the cluster that have joined.
    pub joined: i32,
    /// A roll step, a schema change or a drain in progress: no removal meanwhile.
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
    /// When time alone changes the decision (a stabilization window ends, a schedule opens or
    /// closes).
    pub recheck: Option<Duration>,
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
    ((jobs + target - 1) / target - others).max(0)
}

/// A stretch of recommendations on one side of the desired count: since when, and its
/// extreme (the lowest above, the highest below).
type Stretch = Option<(Timestamp, i32)>;

/// `stretch` continued with `recommended` if `side` holds, else ended.
fn extend(stretch: Stretch, side: bool, recommended: i32, now: Timestamp, keep: fn(i32, i32) -> i32) -> Stretch {
    side.then(|| match stretch {
        Some((since, extreme)) => (since, keep(extreme, recommended)),
        None => (now, recommended),
    })
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
    let mut desired = bounded;
    let mut limit: Option<Hold> = None;
    let mut recheck: Option<Duration> = None;
    let previous_stretch = |since: Option<&Time>, extreme: Option<i32>| since.map(|t| t.0).zip(extreme);
    let mut above = input
        .previous
        .and_then(|p| previous_stretch(p.above_since.as_ref(), p.above_lowest));
    let mut below = input
        .previous
        .and_then(|p| previous_stretch(p.below_since.as_ref(), p.below_highest));
    let raw = input
        .work
        .as_ref()
        .map(|work| wanted_by(work, input.own_serving, policy.jobs_per_server));
    let recommended = raw.map(|raw| i32::try_from(raw).unwrap_or(i32::MAX).clamp(floor, policy.max));
    match recommended {
        _ if input.conflict.is_some() => limit = input.conflict.clone(),
        None => {
            limit = Some(Hold::new(
                Reason::SignalUnknown,
                format!("the database's queue cannot be read; keeping {bounded} servers until it can"),
            ));
        }
        Some(recommended) => {
            // A stretch measured against another count (before a person's bounds moved it) is
            // kept only while it is still on its side.
            above = above.filter(|(_, lowest)| *lowest > bounded);
            below = below.filter(|(_, highest)| *highest < bounded);
            above = extend(above, recommended > bounded, recommended, now, i32::min);
            below = extend(below, recommended < bounded, recommended, now, i32::max);
            if let Some((since, lowest)) = above {
                let waited = elapsed(since, now);
                if waited >= policy.up_window {
                    desired = lowest;
                } else {
                    recheck = Some(policy.up_window - waited);
                    limit = Some(Hold::new(
                        Reason::Stabilizing,
                        format!(
                            "the signal asks for {lowest} servers or more; adding waits until it has for {:?} (scaleUp.stabilizationWindow)",
                            policy.up_window
                        ),
                    ));
                }
            }
            if let Some((since, highest)) = below {
                let waited = elapsed(since, now);
                let lower = highest.max(bounded.min(input.current) - policy.down_step);
                if waited < policy.down_window {
                    recheck = Some(policy.down_window - waited);
                    limit = Some(Hold::new(
                        Reason::Stabilizing,
                        format!(
                            "the signal asks for {highest} servers or fewer; removing waits until it has for {:?} (scaleDown.stabilizationWindow)",
                            policy.down_window
                        ),
                    ));
                } else if lower >= input.current {
                    // Servers wanted but not added yet: fewer are wanted, none is removed.
                    desired = lower;
                } else if let Some(hold) = removal_hold(input) {
                    desired = bounded.min(input.current.max(lower));
                    limit = Some(hold);
                } else {
                    desired = lower;
                }
            }
            if raw.is_some_and(|raw| raw > i64::from(policy.max)) && desired == policy.max {
                limit = Some(Hold::new(
                    Reason::AtMaxReplicas,
                    format!(
                        "the signal asks for {} servers; capacity.autoscale.maxReplicas is {}",
                        raw.unwrap_or_default(),
                        policy.max
                    ),
                ));
            }
        }
    }
    let changed = desired != before;
    if changed {
        // A stretch the new count reached is over; one it has not (a scale-down one step at a
        // time) goes on, so the next step needs no new window.
        above = above.filter(|(_, lowest)| *lowest > desired);
        below = below.filter(|(_, highest)| *highest < desired);
    }
    let signal = input.work.as_ref().map(|work| AutoscaleSignal {
        claimable_jobs: work.claimable,
        running_jobs: work.running,
        other_servers: work.serving.saturating_sub(input.own_serving).max(0),
        jobs_per_server: policy.jobs_per_server,
        observed_at: Time(now),
    });
    let previous = input.previous.cloned().unwrap_or_default();
    // The figures are written with a new recommendation or a decision, not at every read.
    let signal = match (&previous.signal, signal) {
        (Some(kept), Some(_)) if !changed && previous.recommended_replicas == recommended => Some(kept.clone()),
        (kept, fresh) => fresh.or_else(|| kept.clone()),
    };
    let decision = changed.then(|| {
        let reason = if before != bounded && desired == bounded {
            if bounded == floor && before < floor && floor > policy.min {
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
        above_since: above.map(|(since, _)| Time(since)),
        above_lowest: above.map(|(_, lowest)| lowest),
        below_since: below.map(|(since, _)| Time(since)),
        below_highest: below.map(|(_, highest)| highest),
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
    }
}

/// Why no server may be removed now: a disruption in progress, or a server not joined (taking
/// another away would leave two out of service).
fn removal_hold(input: &AutoscaleInput) -> Option<Hold> {
    if let Some(hold) = &input.disruption {
        return Some(hold.clone());
    }
    (input.joined < input.current).then(|| {
        Hold::new(
            Reason::DisruptionInProgress,
            format!(
                "{} of {} servers have joined; no server is removed while one is out of service",
                input.joined, input.current
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

    fn work(claimable: i64, running: i64) -> Option<Work> {
        Some(Work {
            claimable,
            running,
            serving: 0,
        })
    }

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_790_000_000 + seconds).unwrap()
    }

    fn input<'a>(
        policy: &'a Policy,
        work: Option<Work>,
        previous: Option<&'a AutoscaleStatus>,
        current: i32,
    ) -> AutoscaleInput<'a> {
        AutoscaleInput {
            policy,
            work,
            own_serving: 0,
            previous,
            current,
            joined: current,
            disruption: None,
            conflict: None,
            now: at(0),
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
        let up = decide(&input(&p, work(30, 4), None, 1));
        assert_eq!(up.desired, 6);
        assert_eq!(up.status.limited_by.as_deref(), Some("AtMaxReplicas"));
        assert_eq!(up.decision.as_ref().unwrap().0, Reason::AutoscaledUp);
        let mut idle = input(&p, work(0, 0), Some(&up.status), 6);
        let waiting = decide(&idle);
        assert_eq!(
            (waiting.desired, waiting.status.limited_by.as_deref()),
            (6, Some("Stabilizing"))
        );
        assert_eq!(waiting.recheck, Some(Duration::from_secs(60)));
        idle.previous = Some(&waiting.status);
        idle.now = at(61);
        let down = decide(&idle);
        assert_eq!(down.desired, 5, "one server per step");
        assert_eq!(down.decision.as_ref().unwrap().0, Reason::AutoscaledDown);
        // Its drain runs: the next step waits for it.
        let mut draining = input(&p, work(0, 0), Some(&down.status), 6);
        draining.now = at(62);
        draining.disruption = Some(Hold::new(Reason::DisruptionInProgress, "prod-5 is draining"));
        assert_eq!(decide(&draining).desired, 5);
        // Gone: the next one, without a new window.
        let mut next = input(&p, work(0, 0), Some(&down.status), 5);
        next.now = at(70);
        assert_eq!(decide(&next).desired, 4);
    }

    #[test]
    fn unknown_work_keeps_the_count() {
        let p = policy();
        let before = decide(&input(&p, work(12, 0), None, 3)).status;
        let out = decide(&input(&p, None, Some(&before), 3));
        assert_eq!(out.desired, 3);
        assert_eq!(out.status.limited_by.as_deref(), Some("SignalUnknown"));
        assert!(out.decision.is_none());
    }

    #[test]
    fn another_autoscaler_freezes_the_count() {
        let p = policy();
        let mut i = input(&p, work(40, 0), None, 2);
        i.conflict = Some(Hold::new(Reason::AutoscalerConflict, "hpa/prod scales it"));
        let out = decide(&i);
        assert_eq!(
            (out.desired, out.status.limited_by.as_deref()),
            (2, Some("AutoscalerConflict"))
        );
        assert!(out.decision.is_none());
    }

    #[test]
    fn the_scale_up_window_uses_the_lowest_recommendation() {
        let mut p = policy();
        p.up_window = Duration::from_secs(30);
        let first = decide(&input(&p, work(20, 0), None, 1));
        assert_eq!((first.desired, first.recheck), (1, Some(Duration::from_secs(30))));
        let mut later = input(&p, work(8, 0), Some(&first.status), 1);
        later.now = at(31);
        assert_eq!(decide(&later).desired, 2, "the lowest ask in the window");
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
        let mut i = input(&p, work(0, 0), None, 1);
        i.now = busy;
        let out = decide(&i);
        assert_eq!((out.desired, out.status.floor), (4, 4));
        assert_eq!(out.decision.unwrap().0, Reason::ScheduleFloor);
        assert_eq!(out.recheck, Some(Duration::from_secs(30 * 60)), "it closes at 09:00");
    }

    fn arbitrary_previous() -> impl Strategy<Value = Option<AutoscaleStatus>> {
        prop::option::of(
            (1i32..12, prop::option::of(0i64..200), prop::option::of(0i64..200)).prop_map(|(desired, above, below)| {
                AutoscaleStatus {
                    desired_replicas: desired,
                    above_since: above.map(|s| Time(at(-s))),
                    above_lowest: above.map(|_| desired + 1),
                    below_since: below.map(|s| Time(at(-s))),
                    below_highest: below.map(|_| (desired - 1).max(0)),
                    ..AutoscaleStatus::default()
                }
            }),
        )
    }

    proptest! {
        #[test]
        fn never_outside_the_bounds_never_a_removal_during_a_disruption_never_beyond_the_step(
            min in 1i32..4, span in 0i32..6, step in 1i32..3,
            claimable in 0i64..100, running in 0i64..30, known in any::<bool>(),
            previous in arbitrary_previous(),
            current in 0i32..10, unjoined in 0i32..3, disrupted in any::<bool>(), conflict in any::<bool>(),
            up in 0u64..60, down in 0u64..120,
        ) {
            let p = Policy {
                min, max: min + span, down_step: step,
                up_window: Duration::from_secs(up), down_window: Duration::from_secs(down),
                ..policy()
            };
            let mut i = input(&p, known.then_some(Work { claimable, running, serving: 0 }), previous.as_ref(), current);
            i.joined = (current - unjoined).max(0);
            if disrupted {
                i.disruption = Some(Hold::new(Reason::DisruptionInProgress, "a roll step"));
            }
            if conflict {
                i.conflict = Some(Hold::new(Reason::AutoscalerConflict, "hpa/prod"));
            }
            let out = decide(&i);
            prop_assert!(out.desired >= p.min && out.desired <= p.max, "{out:?}");
            // What the last decision (or a person's bounds) already asked for is not new.
            let before = previous.as_ref().map_or(if current > 0 { current } else { p.min }, |p| p.desired_replicas);
            let asked = before.clamp(p.min, p.max).min(current);
            if out.desired < asked {
                prop_assert!(!conflict, "a removal while another autoscaler scales: {out:?}");
                prop_assert!(!disrupted && i.joined == current, "a removal while something else disrupts: {out:?}");
                prop_assert!(known, "a removal on an unknown signal");
                prop_assert!(asked - out.desired <= step, "beyond the step: {out:?}");
            }
            if out.desired != previous.as_ref().map_or(out.desired, |p| p.desired_replicas) {
                prop_assert!(out.decision.is_some(), "every change is said");
            }
            prop_assert_eq!(out.status.desired_replicas, out.desired);
        }
    }
}
