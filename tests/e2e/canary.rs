//! End-to-end canaries with a real PostgreSQL and server processes under load: a release that
//! fails its jobs is rolled back from its one canary server, the others untouched, no job lost;
//! a good release bakes, waits while too few jobs ran to judge it, passes, and under
//! `approval: Manual` rolls on once promoted.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use orchestrator_operator::crd::{CanaryPhase, CanaryShortfall, OrchestratorCluster, PlanAction};
use serde_json::json;

use crate::maintenance::{Watcher, all_joined_on, cluster, event_reasons, server_uids};
use crate::plugin::orc_ok;
use crate::support::e2e::{
    MINUTE, Operator, TestNamespace, db, load, patch_spec, wait_condition, wait_for, wait_settled,
};

/// Waits until cluster `prod`'s canary is at `phase`; returns the cluster.
async fn canary_at(ns: &TestNamespace, phase: CanaryPhase, timeout: Duration) -> OrchestratorCluster {
    wait_for(
        &ns.api::<OrchestratorCluster>(),
        "prod",
        &format!("canary {phase:?}"),
        timeout,
        move |c: Option<&OrchestratorCluster>| {
            c.and_then(|c| c.status.as_ref())
                .and_then(|s| s.canary.as_ref())
                .is_some_and(|canary| canary.phase == phase)
        },
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn a_release_that_fails_its_jobs_is_rolled_back_from_its_canary() {
    let ns = TestNamespace::new("canary-bad").await;
    let pg = ns.database().await;
    let _operator = Operator::start(&ns.name, "orchestrator-server").await;
    let spec = cluster(3, &pg).canary(json!({"servers": 1, "bakeTime": "5m", "minJobs": 10}));
    ns.create_cluster(&spec).await;
    wait_settled(&ns, 3, Some("2.0.0")).await;
    let before = server_uids(&ns).await;
    let watcher = Watcher::start(&ns, 3);
    // Measured on the database's clock: from the bad release's first failed job to the
    // rollback's first step (the canary's drain asked after it), polled every 50 ms.
    let first_rollback_drain = std::sync::Arc::new(std::sync::Mutex::new(None::<f64>));
    let poller = {
        let (db, seen) = (db(&pg).await, first_rollback_drain.clone());
        tokio::spawn(async move {
            loop {
                let row = db
                    .query_one(
                        "SELECT extract(epoch FROM min(s.drain_requested_at) - min(f.at))::float8
                         FROM (SELECT min(finished_at) AS at FROM jobs WHERE state = 'failed') f,
                              servers s
                         WHERE s.drain_requested_at > f.at
                         HAVING count(*) > 0",
                        &[],
                    )
                    .await;
                if let Ok(row) = row {
                    seen.lock().unwrap().get_or_insert(row.get(0));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    // 200 jobs over 20 s while the release changes under them.
    let roll = async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        patch_spec(&ns, json!({"version": "2.1.0-failing"})).await;
        let failed = canary_at(&ns, CanaryPhase::Failed, 2 * MINUTE).await;
        let rolled_back = canary_at(&ns, CanaryPhase::RolledBack, 2 * MINUTE).await;
        (failed, rolled_back)
    };
    let (report, (failed, rolled_back)) = tokio::join!(load(&pg, "canary", 10, 20, 200), roll);
    assert_eq!(report["lost"], 0, "{report}");
    assert_eq!(report["outcome"]["executed_more_than_once"], 0, "{report}");
    assert!(
        watcher.worst() <= 1,
        "never two servers unavailable; saw {}",
        watcher.worst()
    );

    let canary = failed.status.as_ref().unwrap().canary.clone().unwrap();
    assert_eq!(canary.shortfall, Some(CanaryShortfall::FailureRatio), "{canary:?}");
    assert_eq!(canary.servers.len(), 1, "{canary:?}");
    let canary_server = canary.servers[0].clone();
    let jobs = canary.canary_jobs.unwrap();
    assert!(jobs.failed >= 10 && jobs.succeeded == 0, "{canary:?}");
    assert_eq!(canary.other_jobs.unwrap().failed, 0, "{canary:?}");

    // Only the canary server was replaced (there and back); the others never disrupted.
    let after = server_uids(&ns).await;
    for (server, uid) in before.iter().filter(|(server, _)| **server != canary_server) {
        assert_eq!(Some(uid), after.get(server), "{server} untouched");
    }
    assert_eq!(watcher.replaced(), vec![canary_server.clone(), canary_server]);
    let status = rolled_back.status.unwrap();
    all_joined_on(&status, "2.0.0");
    let blocked = status
        .conditions
        .iter()
        .find(|c| c.type_ == "MaintenanceBlocked")
        .unwrap();
    assert_eq!(
        (blocked.status.as_str(), blocked.reason.as_str()),
        ("True", "CanaryFailed")
    );
    assert!(blocked.message.contains("jobs failed"), "{}", blocked.message);
    let reasons: Vec<String> = event_reasons(&ns).await.into_iter().map(|(r, _)| r).collect();
    for reason in ["CanaryBaking", "CanaryFailed", "CanaryRolledBack"] {
        assert!(reasons.iter().any(|r| r == reason), "{reason} in {reasons:?}");
    }

    let to_rollback = *first_rollback_drain.lock().unwrap();
    poller.abort();
    let failed_jobs = report["outcome"]["failed"].as_i64().unwrap_or_default();
    let submitted = report["outcome"]["submitted"].as_i64().unwrap_or_default();
    // The floor: no judge can decide before minJobs (10) jobs failed on the canary.
    let floor: Option<f64> = db(&pg)
        .await
        .query_one(
            "SELECT extract(epoch FROM (SELECT finished_at FROM jobs WHERE state = 'failed'
                                        ORDER BY finished_at OFFSET 9 LIMIT 1)
                                     - (SELECT min(finished_at) FROM jobs WHERE state = 'failed'))::float8",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    println!(
        "canary measure: first failed job -> rollback drain {}; floor (the 10th failed job, minJobs) {}; ratio {}; {failed_jobs} of {submitted} jobs ({:.1} %) ran on the bad release",
        to_rollback.map_or("not seen".into(), |s| format!("{s:.2} s")),
        floor.map_or("none".into(), |s| format!("{s:.2} s")),
        match (to_rollback, floor) {
            (Some(t), Some(f)) if f > 0.0 => format!("x{:.2}", t / f),
            _ => "none".into(),
        },
        100.0 * failed_jobs as f64 / submitted.max(1) as f64
    );
    assert!(failed_jobs > 0 && failed_jobs < submitted / 2, "{report}");

    // It stays rolled back while the spec asks for the failed release.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(server_uids(&ns).await, after, "nothing moves until the spec changes");
    // Another release goes on (its own canary first).
    patch_spec(&ns, json!({"version": "2.1.0", "maintenance": {"canary": null}})).await;
    wait_settled(&ns, 3, Some("2.1.0")).await;
}

/// Waits until condition `MaintenanceBlocked` of cluster `prod` has `reason`.
async fn held_by(ns: &TestNamespace, reason: &'static str) -> OrchestratorCluster {
    wait_condition(ns, "MaintenanceBlocked", "True", reason, 2 * MINUTE).await
}

#[tokio::test]
async fn a_good_release_waits_for_evidence_then_passes_and_is_promoted() {
    let ns = TestNamespace::new("canary-good").await;
    let pg = ns.database().await;
    let _operator = Operator::start(&ns.name, "orchestrator-server").await;
    let spec = cluster(3, &pg).canary(json!({"servers": 1, "bakeTime": "15s", "minJobs": 20}));
    ns.create_cluster(&spec).await;
    wait_settled(&ns, 3, Some("2.0.0")).await;
    patch_spec(&ns, json!({"maintenance": {"approval": "Manual"}})).await;
    let before = server_uids(&ns).await;
    let started = Instant::now();
    let generation = patch_spec(&ns, json!({"version": "2.1.0"}))
        .await
        .metadata
        .generation
        .unwrap();
    // The plan shows the canary's bake; the approval lets the canary go.
    let cr = held_by(&ns, "AwaitingApproval").await;
    let plan = cr.status.unwrap().plan.unwrap();
    assert_eq!(plan.generation, generation);
    let actions: Vec<PlanAction> = plan.steps.iter().map(|s| s.action).collect();
    assert_eq!(
        actions,
        vec![
            PlanAction::Replace,
            PlanAction::Bake,
            PlanAction::Replace,
            PlanAction::Replace
        ],
        "{plan:?}"
    );
    assert!(orc_ok(&ns, &["approve", "prod"]).await.contains("approved"));
    // No load: the bake ends with nothing to judge, and the roll waits.
    let waiting = canary_at(&ns, CanaryPhase::Inconclusive, 2 * MINUTE).await;
    let status = waiting.status.unwrap();
    let held = status
        .conditions
        .iter()
        .find(|c| c.type_ == "MaintenanceBlocked")
        .unwrap();
    assert_eq!(held.reason, "CanaryInconclusive", "{held:?}");
    // The plugin says where the canary stands and the plan shows its bake.
    let shown = orc_ok(&ns, &["status", "prod"]).await;
    let canary = status.canary.clone().unwrap();
    assert!(
        shown.contains(&format!(
            "canary: Inconclusive version 2.1.0 on {}",
            canary.servers.join(", ")
        )),
        "{shown}"
    );
    assert!(shown.contains("jobs: canary 0 of 0 jobs failed"), "{shown}");
    assert!(shown.contains("Bake (the canary servers)"), "{shown}");
    let replaced = |now: &BTreeMap<String, String>| -> Vec<String> {
        now.iter()
            .filter(|(name, uid)| before.get(*name) != Some(uid))
            .map(|(name, _)| name.clone())
            .collect()
    };
    assert_eq!(replaced(&server_uids(&ns).await), canary.servers, "only the canary");
    // Work arrives: the canary is judged on it and passes; the rest of the roll waits for its
    // promotion, then goes on.
    let roll = async {
        let passed = canary_at(&ns, CanaryPhase::Passed, 2 * MINUTE).await;
        let promotion = held_by(&ns, "AwaitingApproval").await;
        let message = promotion
            .status
            .as_ref()
            .unwrap()
            .conditions
            .iter()
            .find(|c| c.type_ == "MaintenanceBlocked")
            .unwrap()
            .message
            .clone();
        assert!(message.contains("passed") && message.contains("promotion"), "{message}");
        assert_eq!(replaced(&server_uids(&ns).await), canary.servers, "held after the pass");
        let promoted = orc_ok(&ns, &["approve", "prod"]).await;
        assert!(promoted.contains("promoted past its canary"), "{promoted}");
        let settled = wait_settled(&ns, 3, Some("2.1.0")).await;
        (passed, settled)
    };
    let (report, (passed, settled)) = tokio::join!(load(&pg, "canary", 10, 20, 100), roll);
    assert_eq!(report["lost"], 0, "{report}");
    assert_eq!(report["outcome"]["executed_more_than_once"], 0, "{report}");
    assert_eq!(report["outcome"]["failed"], 0, "{report}");
    let canary = passed.status.unwrap().canary.unwrap();
    let (decided, bake_started) = (
        canary.decided_at.clone().unwrap(),
        canary.bake_started_at.clone().unwrap(),
    );
    let baked = decided.0.duration_since(bake_started.0);
    assert!(baked.as_secs() >= 15, "passed only after the bake: {baked:?}");
    assert!(canary.canary_jobs.unwrap().succeeded >= 20, "{canary:?}");
    let after = server_uids(&ns).await;
    assert_eq!(replaced(&after).len(), 3, "all replaced");
    assert_eq!(settled.status.unwrap().canary.unwrap().phase, CanaryPhase::Passed);
    let reasons: Vec<String> = event_reasons(&ns).await.into_iter().map(|(r, _)| r).collect();
    assert!(reasons.iter().any(|r| r == "CanaryPassed"), "{reasons:?}");
    println!(
        "canary: good release rolled in {:.1} s (bake 15 s, the wait for jobs, a promotion and 3 steps)",
        started.elapsed().as_secs_f64()
    );
}
