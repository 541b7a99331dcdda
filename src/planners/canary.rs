//! The canary's verdict, a pure planner: whether the servers replaced first with a new release
//! (the canary) may let the roll go on, must be rolled back, or need more time or evidence.
//! Judged from the shared database over the bake: the canary's job failure ratio against the
//! other servers' over the same window, how long its jobs run against theirs, and whether it kept
//! joined (a heartbeat that went stale). Does not need a client.
//!
//! It never passes on no evidence: fewer finished jobs than `min_jobs` is `TooFewJobs`, not a
//! pass, however long the bake. It fails as soon as the evidence is conclusive, before the bake
//! ends, so a bad release runs as little work as possible.

use std::time::Duration;

use orchestrator_contract::Outcomes;

use crate::crd::JobOutcomes;

/// How a canary is judged (`maintenance.canary`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct CanaryPolicy {
    /// How long the canary runs before it can pass.
    pub bake: Duration,
    /// Finished jobs of the canary needed for any verdict on its failures.
    pub min_jobs: i64,
    /// How much the canary's failure ratio may exceed the other servers' (0.1: ten points).
    pub max_failure_increase: f64,
    /// How many times the other servers' median job run time the canary's may be (and never
    /// fails under `SLOWDOWN_FLOOR`).
    pub max_slowdown_factor: f64,
}

/// Median run times under this are never a failure: a factor of tiny numbers is noise.
pub(crate) const SLOWDOWN_FLOOR: Duration = Duration::from_secs(1);

/// What the canary did over the bake so far.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Evidence {
    /// Since the last canary server joined.
    pub baked: Duration,
    /// The jobs the canary servers finished in that time.
    pub canary: Outcomes,
    /// The jobs the other servers finished in the same time.
    pub others: Outcomes,
    /// Every canary server has kept joined (no heartbeat went stale, the pod stayed ready).
    pub kept_joined: bool,
}

pub(crate) use crate::crd::CanaryShortfall as Shortfall;

/// The verdict.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Verdict {
    /// Bake on: the time is not up (and nothing conclusive is wrong).
    Baking {
        /// Time left.
        left: Duration,
    },
    /// The bake is over but the canary finished too few jobs to judge; the roll waits.
    TooFewJobs {
        /// Finished jobs so far.
        have: i64,
    },
    /// The roll goes on.
    Pass {
        /// The figures, for a person.
        figures: String,
    },
    /// Roll the canary back.
    Fail {
        /// Why.
        why: Shortfall,
        /// The figures, for a person.
        figures: String,
    },
}

/// The lower bound of the 95 % Wilson score interval of `failed` out of `total`.
fn wilson_lower(failed: i64, total: i64) -> f64 {
    if total <= 0 {
        return 0.0;
    }
    let (n, z) = (total as f64, 1.96_f64);
    let p = failed as f64 / n;
    let centre = p + z * z / (2.0 * n);
    let margin = z * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt();
    ((centre - margin) / (1.0 + z * z / n)).max(0.0)
}

fn ratio(o: &Outcomes) -> Option<f64> {
    let total = o.succeeded + o.failed;
    (total > 0).then(|| o.failed as f64 / total as f64)
}

fn figures(e: &Evidence) -> String {
    format!(
        "canary: {}; other servers: {} (over {} s)",
        JobOutcomes::from(&e.canary),
        JobOutcomes::from(&e.others),
        e.baked.as_secs()
    )
}

/// Judges the canary from `evidence` under `policy`.
pub(crate) fn judge(policy: &CanaryPolicy, evidence: &Evidence) -> Verdict {
    let fail = |why| Verdict::Fail {
        why,
        figures: figures(evidence),
    };
    if !evidence.kept_joined {
        return fail(Shortfall::LeftTheCluster);
    }
    let have = evidence.canary.succeeded + evidence.canary.failed;
    let enough = have >= policy.min_jobs.max(1);
    if enough {
        // The others' ratio counts only on as many jobs as the canary needs: a thin baseline
        // (one failed job) would excuse anything. Without it, the allowance alone applies.
        let others_total = evidence.others.succeeded + evidence.others.failed;
        let others = if others_total >= policy.min_jobs.max(1) {
            ratio(&evidence.others).unwrap_or(0.0)
        } else {
            0.0
        };
        let limit = others + policy.max_failure_increase;
        // Before the bake ends only a failure ratio surely over the limit fails (the lower
        // bound of its 95 % Wilson interval): a few unlucky jobs early are not a verdict.
        let canary = if evidence.baked < policy.bake {
            wilson_lower(evidence.canary.failed, have)
        } else {
            ratio(&evidence.canary).unwrap_or(0.0)
        };
        if canary > limit + 1e-9 {
            return fail(Shortfall::FailureRatio);
        }
        if let (Some(mine), Some(theirs)) = (evidence.canary.run_p50_ms, evidence.others.run_p50_ms)
            && mine as f64 > SLOWDOWN_FLOOR.as_millis() as f64
            && mine as f64 > theirs as f64 * policy.max_slowdown_factor
        {
            return fail(Shortfall::SlowRuns);
        }
    }
    if evidence.baked < policy.bake {
        Verdict::Baking {
            left: policy.bake - evidence.baked,
        }
    } else if !enough {
        Verdict::TooFewJobs { have }
    } else {
        Verdict::Pass {
            figures: figures(evidence),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const POLICY: CanaryPolicy = CanaryPolicy {
        bake: Duration::from_secs(60),
        min_jobs: 20,
        max_failure_increase: 0.1,
        max_slowdown_factor: 3.0,
    };

    fn outcomes(succeeded: i64, failed: i64, run_p50_ms: Option<i64>) -> Outcomes {
        Outcomes {
            succeeded,
            failed,
            run_p50_ms,
        }
    }

    fn evidence(baked: u64, canary: Outcomes, others: Outcomes) -> Evidence {
        Evidence {
            baked: Duration::from_secs(baked),
            canary,
            others,
            kept_joined: true,
        }
    }

    #[test]
    fn a_healthy_canary_passes_once_baked_with_enough_jobs() {
        let healthy = evidence(30, outcomes(40, 1, Some(20)), outcomes(80, 2, Some(15)));
        assert_eq!(
            judge(&POLICY, &healthy),
            Verdict::Baking {
                left: Duration::from_secs(30)
            }
        );
        let baked = Evidence {
            baked: Duration::from_secs(60),
            ..healthy
        };
        let Verdict::Pass { figures } = judge(&POLICY, &baked) else {
            panic!("{:?}", judge(&POLICY, &baked));
        };
        assert!(
            figures.contains("canary: 1 of 41 jobs failed, median run 20 ms"),
            "{figures}"
        );
    }

    #[test]
    fn a_thin_baseline_excuses_nothing_and_a_few_early_failures_are_no_verdict() {
        // The others ran one job, and it failed: the canary's 60 % is not "as bad as them".
        let thin = evidence(60, outcomes(16, 24, None), outcomes(0, 1, None));
        assert!(matches!(
            judge(&POLICY, &thin),
            Verdict::Fail {
                why: Shortfall::FailureRatio,
                ..
            }
        ));
        // 5 of 20 failed early against a 10 % baseline: possibly bad luck, bake on.
        let early = evidence(10, outcomes(15, 5, None), outcomes(90, 10, None));
        assert!(matches!(judge(&POLICY, &early), Verdict::Baking { .. }));
        // The same at the end of the bake is judged on the figures: 25 % > 10 % + 10.
        let late = Evidence {
            baked: POLICY.bake,
            ..early
        };
        assert!(matches!(judge(&POLICY, &late), Verdict::Fail { .. }));
        assert!(wilson_lower(0, 10) == 0.0 && wilson_lower(10, 10) > 0.6);
    }

    #[test]
    fn a_failing_canary_fails_before_the_bake_ends_with_its_figures() {
        let bad = evidence(10, outcomes(10, 15, None), outcomes(50, 1, None));
        let Verdict::Fail { why, figures } = judge(&POLICY, &bad) else {
            panic!("{:?}", judge(&POLICY, &bad));
        };
        assert_eq!(why, Shortfall::FailureRatio);
        assert!(figures.contains("canary: 15 of 25 jobs failed"), "{figures}");
        assert!(figures.contains("other servers: 1 of 51 jobs failed"), "{figures}");
    }

    #[test]
    fn too_few_jobs_never_pass() {
        let idle = evidence(600, outcomes(3, 0, Some(5)), outcomes(5, 0, Some(5)));
        assert_eq!(judge(&POLICY, &idle), Verdict::TooFewJobs { have: 3 });
        // Even every one of them failing is no verdict yet.
        let few_failed = evidence(600, outcomes(0, 5, None), outcomes(5, 0, None));
        assert_eq!(judge(&POLICY, &few_failed), Verdict::TooFewJobs { have: 5 });
    }

    #[test]
    fn a_shared_failure_is_not_the_canarys_and_slow_runs_or_leaving_fail_it() {
        // Everyone fails half the jobs (a bad job kind, not a bad release): passes.
        let shared = evidence(60, outcomes(20, 20, None), outcomes(40, 40, None));
        assert!(matches!(judge(&POLICY, &shared), Verdict::Pass { .. }));
        let slow = evidence(60, outcomes(40, 0, Some(5_000)), outcomes(40, 0, Some(100)));
        assert!(matches!(
            judge(&POLICY, &slow),
            Verdict::Fail {
                why: Shortfall::SlowRuns,
                ..
            }
        ));
        // Slow everywhere under the floor is not a failure.
        let quick = evidence(60, outcomes(40, 0, Some(900)), outcomes(40, 0, Some(10)));
        assert!(matches!(judge(&POLICY, &quick), Verdict::Pass { .. }));
        let gone = Evidence {
            kept_joined: false,
            ..evidence(5, outcomes(0, 0, None), outcomes(0, 0, None))
        };
        assert!(matches!(
            judge(&POLICY, &gone),
            Verdict::Fail {
                why: Shortfall::LeftTheCluster,
                ..
            }
        ));
    }

    proptest! {
        #[test]
        fn the_verdict_keeps_its_invariants(
            baked in 0u64..200,
            canary_ok in 0i64..100, canary_failed in 0i64..100,
            others_ok in 0i64..200, others_failed in 0i64..200,
            kept_joined in any::<bool>(),
            more_failed in 1i64..50,
        ) {
            let e = Evidence {
                baked: Duration::from_secs(baked),
                canary: outcomes(canary_ok, canary_failed, None),
                others: outcomes(others_ok, others_failed, None),
                kept_joined,
            };
            let verdict = judge(&POLICY, &e);
            // Never a pass on no evidence, early, or after a server left.
            if matches!(verdict, Verdict::Pass { .. }) {
                prop_assert!(canary_ok + canary_failed >= POLICY.min_jobs);
                prop_assert!(e.baked >= POLICY.bake && kept_joined);
                // ... nor with a failure ratio over the allowance and a baseline it only has
                // on enough jobs.
                let baseline = if others_ok + others_failed >= POLICY.min_jobs {
                    others_failed as f64 / (others_ok + others_failed) as f64
                } else {
                    0.0
                };
                let mine = canary_failed as f64 / (canary_ok + canary_failed) as f64;
                prop_assert!(mine <= baseline + POLICY.max_failure_increase + 1e-9);
            }
            // More failures of the canary never turn a failure into a pass.
            if let Verdict::Fail { why: Shortfall::FailureRatio, .. } = verdict {
                let worse = Evidence { canary: outcomes(canary_ok, canary_failed + more_failed, None), ..e };
                let is_failure_ratio = matches!(judge(&POLICY, &worse), Verdict::Fail { why: Shortfall::FailureRatio, .. });
                prop_assert!(is_failure_ratio);
            }
        }
    }
}
