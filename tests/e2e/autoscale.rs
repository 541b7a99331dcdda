//! End-to-end: queue-depth autoscaling against a real PostgreSQL, real servers and the load
//! generator. A burst adds servers one step at a time, each after the previous joined, and the
//! cluster drains back to its floor once the work is done, losing nothing; a failing
//! precondition stops a scale-up with its reason until it recovers; a roll during a burst never
//! has two servers disrupted; re-applying the manifest changes nothing.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{Event as CoreEvent, Pod};
use kube::ResourceExt;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher::{self, Event};
use orchestrator_operator::crd::OrchestratorCluster;
use serde_json::{Value, json};
use testing_postgres::TestPostgres;

use crate::support::e2e::{
    MINUTE, Operator, TestNamespace, db, load, patch_spec, wait_condition, wait_for, wait_settled,
};
use crate::support::pods::pod_ready;
use crate::support::spec::ClusterSpec;

/// An autoscaled cluster: `min` to `max` servers at 4 jobs per server, 20 s drains, a 15 s
/// scale-down window.
fn autoscaled(pg: &TestPostgres, min: i32, max: i32) -> ClusterSpec {
    ClusterSpec::new(1, pg).drain_timeout("20s").autoscale(json!({
        "minReplicas": min, "maxReplicas": max, "jobsPerServer": 4,
        "scaleDown": {"stabilizationWindow": "15s"}
    }))
}

/// Every change of the StatefulSet's replicas, with the server pods ready when it was seen.
type Steps = Arc<Mutex<Vec<(i32, i32, usize)>>>;

/// Records each change of the StatefulSet's `spec.replicas` (from, to) and how many of the
/// servers below `from` were ready then.
fn record_steps(ns: &TestNamespace) -> (Steps, tokio::task::JoinHandle<()>) {
    let steps: Steps = Arc::default();
    let recorded = steps.clone();
    let statefulsets = ns.api::<StatefulSet>();
    let pods = ns.api::<Pod>();
    let task = tokio::spawn(async move {
        let config = watcher::Config::default().fields("metadata.name=prod");
        let mut events = std::pin::pin!(watcher::watcher(statefulsets, config));
        let mut last = None;
        while let Some(event) = events.next().await {
            let (Ok(Event::Apply(sts)) | Ok(Event::InitApply(sts))) = event else {
                continue;
            };
            let replicas = sts.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
            if let Some(from) = last.filter(|from| *from != replicas) {
                let ready = pods
                    .list(&ListParams::default().labels("app.kubernetes.io/instance=prod"))
                    .await
                    .map(|l| {
                        l.items
                            .iter()
                            .filter(|p| ordinal(&p.name_any()) < from && pod_ready(p))
                            .count()
                    })
                    .unwrap_or(0);
                recorded.lock().unwrap().push((from, replicas, ready));
            }
            last = Some(replicas);
        }
    });
    (steps, task)
}

fn ordinal(pod: &str) -> i32 {
    pod.rsplit_once('-')
        .and_then(|(_, o)| o.parse().ok())
        .unwrap_or(i32::MAX)
}

/// Polls the database for the most drain requests pending at once.
fn most_drains_at_once(pg: &TestPostgres) -> (Arc<Mutex<i64>>, tokio::task::JoinHandle<()>) {
    let most = Arc::new(Mutex::new(0));
    let seen = most.clone();
    let url = pg.url();
    let task = tokio::spawn(async move {
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(connection);
        loop {
            if let Ok(row) = client
                .query_one("SELECT count(*) FROM servers WHERE drain_requested_at IS NOT NULL", &[])
                .await
            {
                let n: i64 = row.get(0);
                let mut most = seen.lock().unwrap();
                *most = (*most).max(n);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    (most, task)
}

/// Waits until cluster `prod`'s autoscaler wants `replicas` and that many servers joined.
async fn wait_autoscaled(ns: &TestNamespace, replicas: i32, timeout: Duration) -> OrchestratorCluster {
    wait_for(
        &ns.api::<OrchestratorCluster>(),
        "prod",
        &format!("autoscaled to {replicas} joined servers"),
        timeout,
        move |c: Option<&OrchestratorCluster>| {
            c.and_then(|c| c.status.as_ref()).is_some_and(|s| {
                s.desired_replicas == Some(replicas) && s.ready_replicas == replicas && s.replicas == replicas
            })
        },
    )
    .await
    .unwrap()
}

async fn event_notes(ns: &TestNamespace, reason: &str) -> Vec<String> {
    ns.api::<CoreEvent>()
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .filter_map(|e| e.message)
        .collect()
}

fn assert_nothing_lost(report: &Value) {
    assert!(report["acknowledged"].as_i64().unwrap() > 100, "{report}");
    assert_eq!(report["lost"], 0, "{report}");
    assert_eq!(report["outcome"]["executed_more_than_once"], 0, "{report}");
    assert_eq!(report["outcome"]["completed"], report["acknowledged"], "{report}");
}

#[tokio::test]
async fn a_burst_adds_servers_step_by_step_and_drains_back_to_the_floor() {
    let ns = TestNamespace::new("autoscale").await;
    let pg = ns.database().await;
    let _operator = Operator::start(&ns.name, "orchestrator-server").await;
    let (steps, recorder) = record_steps(&ns);
    let (drains, poller) = most_drains_at_once(&pg);
    ns.create_cluster(&autoscaled(&pg, 1, 4)).await;
    wait_autoscaled(&ns, 1, 2 * MINUTE).await;

    // 40 jobs a second of 500 ms: 20 busy workers, five servers' worth; one server has 4.
    let report = load(&pg, "burst", 40, 25, 500).await;
    assert_nothing_lost(&report);
    let cr = ns.api::<OrchestratorCluster>().get("prod").await.unwrap();
    let most = steps.lock().unwrap().iter().map(|(_, to, _)| *to).max().unwrap_or(0);
    assert_eq!(
        most,
        4,
        "the burst took the cluster to maxReplicas: {:?}",
        steps.lock().unwrap()
    );
    let decision = cr.status.as_ref().unwrap().autoscale.as_ref().unwrap();
    eprintln!("autoscale after the burst: {decision:?}");

    // Back to the floor once the window passed, one drained server at a time.
    let cr = wait_autoscaled(&ns, 1, 3 * MINUTE).await;
    recorder.abort();
    poller.abort();
    let steps = steps.lock().unwrap().clone();
    eprintln!("StatefulSet replicas (from, to, ready below from): {steps:?}");
    for (from, to, ready) in &steps {
        if to > from {
            assert_eq!(to - from, 1, "one server per step (addAtOnce 1): {steps:?}");
            assert_eq!(
                *ready as i32, *from,
                "added only once every server before joined: {steps:?}"
            );
        } else {
            assert_eq!(from - to, 1, "one server removed per step: {steps:?}");
        }
    }
    assert_eq!(*drains.lock().unwrap(), 1, "one drain at a time");
    let ups = event_notes(&ns, "AutoscaledUp").await;
    let downs = event_notes(&ns, "AutoscaledDown").await;
    assert!(!ups.is_empty() && !downs.is_empty(), "up {ups:?}, down {downs:?}");
    assert!(ups[0].contains("claimable"), "{ups:?}");
    let status = cr.status.unwrap();
    let autoscale = status.autoscale.unwrap();
    assert_eq!(autoscale.recommended_replicas, Some(1));
    assert_eq!(autoscale.last_decision.unwrap().reason, "AutoscaledDown");
    for gone in ["prod-1", "prod-2", "prod-3"] {
        let log = ns.pod_log(gone, "server");
        assert!(
            log.contains("drain requested through the database"),
            "{gone} drained through the database:\n{log}"
        );
    }
}

#[tokio::test]
async fn a_failing_precondition_stops_the_scale_up_with_its_reason_until_it_recovers() {
    let ns = TestNamespace::new("autoscale-pre").await;
    let pg = ns.database().await;
    let db = db(&pg).await;
    let _operator = Operator::start(&ns.name, "orchestrator-server").await;
    let spec = autoscaled(&pg, 1, 3);
    ns.create_cluster(&spec).await;
    wait_autoscaled(&ns, 1, 2 * MINUTE).await;

    // 40 jobs of a minute, in one statement (the first reading sees them all): ten servers'
    // worth, so the autoscaler wants its maximum at once.
    db.batch_execute(
        "INSERT INTO jobs (kind, payload) SELECT 'sleep', '{\"ms\": 60000}'::jsonb FROM generate_series(1, 40)",
    )
    .await
    .unwrap();
    let statefulsets = ns.api::<StatefulSet>();
    wait_for(
        &statefulsets,
        "prod",
        "a second server",
        MINUTE,
        |s: Option<&StatefulSet>| s.and_then(|s| s.spec.as_ref()).and_then(|s| s.replicas) == Some(2),
    )
    .await;
    // The database goes away mid-burst: the scale-up stops with the reason.
    pg.stop();
    let cr = wait_condition(&ns, "CapacityBlocked", "True", "DatabaseNotReady", MINUTE).await;
    let autoscale = cr.status.as_ref().unwrap().autoscale.clone().unwrap();
    assert_eq!(autoscale.desired_replicas, 3, "{autoscale:?}");
    assert_eq!(
        autoscale.limited_by.as_deref(),
        Some("DatabaseNotReady"),
        "{autoscale:?}"
    );
    let replicas = statefulsets.get("prod").await.unwrap().spec.unwrap().replicas;
    assert_eq!(replicas, Some(2), "no server added while blocked");
    pg.start_again();
    wait_autoscaled(&ns, 3, 2 * MINUTE).await;

    // GitOps: re-applying the manifest (spec.replicas 1) changes nothing.
    let cr = ns.api::<OrchestratorCluster>().get("prod").await.unwrap();
    let applied = ns
        .api::<OrchestratorCluster>()
        .patch(
            "prod",
            &PatchParams::apply("argocd-controller").force(),
            &Patch::Apply(&spec.json()),
        )
        .await
        .unwrap();
    assert_eq!(applied.metadata.generation, cr.metadata.generation, "no new generation");
    assert_eq!(applied.spec.replicas, 1);
    tokio::time::sleep(Duration::from_secs(6)).await;
    let after = ns.api::<OrchestratorCluster>().get("prod").await.unwrap();
    assert_eq!(after.metadata.generation, cr.metadata.generation);
    assert_eq!(after.status.as_ref().unwrap().desired_replicas, Some(3));
    let replicas = statefulsets.get("prod").await.unwrap().spec.unwrap().replicas;
    assert_eq!(
        replicas,
        Some(3),
        "spec.replicas is not what an autoscaled cluster runs"
    );

    // An HPA (KEDA makes one per ScaledObject) on the same cluster: refused, said, and gone
    // with the HPA.
    let hpas = ns.api::<HorizontalPodAutoscaler>();
    hpas.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "metadata": {"name": "keda-hpa-prod"},
            "spec": {
                "scaleTargetRef": {"apiVersion": "orchestrator.dev/v1alpha1", "kind": "OrchestratorCluster", "name": "prod"},
                "minReplicas": 1, "maxReplicas": 3,
                "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}}]
            }
        }))
        .unwrap(),
    )
    .await
    .unwrap();
    let cr = wait_condition(&ns, "CapacityBlocked", "True", "AutoscalerConflict", MINUTE).await;
    let message = &crate::support::e2e::condition(&cr, "CapacityBlocked").unwrap().message;
    assert!(message.contains("keda-hpa-prod"), "{message}");
    let (health, said) = crate::support::argocd::health(&cr);
    assert_eq!(health, "Degraded", "Argo CD asks a person: {said}");
    assert_eq!(cr.status.unwrap().desired_replicas, Some(3), "the count stays");
    assert!(
        event_notes(&ns, "AutoscalerConflict")
            .await
            .iter()
            .any(|n| n.contains("keda-hpa-prod")),
        "a Warning Event says it"
    );
    hpas.delete("keda-hpa-prod", &Default::default()).await.unwrap();
    wait_condition(&ns, "CapacityBlocked", "False", "NotBlocked", MINUTE).await;
}

#[tokio::test]
async fn a_roll_during_a_burst_never_has_two_servers_disrupted() {
    let ns = TestNamespace::new("autoscale-roll").await;
    let pg = ns.database().await;
    let _operator = Operator::start(&ns.name, "orchestrator-server").await;
    let (drains, poller) = most_drains_at_once(&pg);
    ns.create_cluster(&autoscaled(&pg, 2, 3)).await;
    wait_autoscaled(&ns, 2, 2 * MINUTE).await;
    let burst = load(&pg, "roll", 30, 30, 500);
    let roll = async {
        tokio::time::sleep(Duration::from_secs(8)).await;
        patch_spec(&ns, json!({"version": "2.1.0"})).await;
    };
    let (report, ()) = tokio::join!(burst, roll);
    assert_nothing_lost(&report);
    let cr = wait_settled(&ns, 2, Some("2.1.0")).await;
    poller.abort();
    assert_eq!(cr.status.unwrap().desired_replicas, Some(2), "back at the floor");
    let most = *drains.lock().unwrap();
    assert_eq!(most, 1, "never two servers drained at once");
    assert!(
        !event_notes(&ns, "MaintenanceStepDone").await.is_empty(),
        "the roll replaced servers"
    );
    let ups = event_notes(&ns, "AutoscaledUp").await;
    let downs = event_notes(&ns, "AutoscaledDown").await;
    assert!(
        !ups.is_empty() && !downs.is_empty(),
        "the burst added a server and the calm removed it: up {ups:?}, down {downs:?}"
    );
}

/// What one configuration did under the benchmark's burst.
#[derive(Debug)]
struct BurstFigures {
    /// Seconds from the burst's start until the backlog was back under one server's target
    /// (claimable jobs <= 4) for good.
    backlog_seconds: f64,
    /// p95 of the jobs' wait between submission and first claim, in seconds.
    p95_wait_seconds: f64,
    /// Servers taking work, integrated over the measured horizon, in server-minutes.
    server_minutes: f64,
    /// Most servers taking work at once.
    peak_servers: i64,
}

/// How long the benchmark watches each configuration from the burst's start.
const BENCH_HORIZON: Duration = Duration::from_secs(150);

/// Runs the benchmark's burst (20 jobs/s of 500 ms for 20 s: ten busy workers, three servers'
/// worth, while one server has four) against cluster `spec` once
/// `ready` servers joined, and measures it from PostgreSQL: the backlog and the servers taking
/// work every 250 ms, the queue waits from the jobs' own timestamps.
async fn burst_against(prefix: &str, spec: impl Fn(&TestPostgres) -> ClusterSpec, ready: i32) -> BurstFigures {
    let ns = TestNamespace::new(prefix).await;
    let pg = ns.database().await;
    let db = db(&pg).await;
    let _operator = Operator::start(&ns.name, "orchestrator-server").await;
    ns.create_cluster(&spec(&pg)).await;
    wait_settled(&ns, ready, None).await;
    let started = Instant::now();
    let sampler = async {
        let (mut last_over, mut server_seconds, mut peak) = (0.0f64, 0.0f64, 0i64);
        let tick = Duration::from_millis(250);
        while started.elapsed() < BENCH_HORIZON {
            if let Ok(work) = orchestrator_contract::work(&db, 4, 4).await {
                if work.claimable > 4 {
                    last_over = started.elapsed().as_secs_f64();
                }
                server_seconds += work.serving as f64 * tick.as_secs_f64();
                peak = peak.max(work.serving);
            }
            tokio::time::sleep(tick).await;
        }
        (last_over, server_seconds / 60.0, peak)
    };
    let (report, (backlog_seconds, server_minutes, peak_servers)) =
        tokio::join!(load(&pg, "bench", 20, 20, 500), sampler);
    assert_nothing_lost(&report);
    let p95: f64 = db
        .query_one(
            "SELECT percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM started_at - submitted_at))
             FROM jobs WHERE payload->>'batch' = 'bench'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    BurstFigures {
        backlog_seconds,
        p95_wait_seconds: p95,
        server_minutes,
        peak_servers,
    }
}

/// `make bench-autoscale`: the same burst against an autoscaled cluster (1 to 4 servers, 30 s
/// scale-down window), a fixed cluster at its minimum (1) and one at its maximum (4); prints
/// each one's figures and the autoscaled one's ratios to the two fixed ones.
#[tokio::test]
#[ignore = "a benchmark: make bench-autoscale"]
async fn bench_burst_autoscaled_vs_fixed() {
    let autoscaled = burst_against(
        "bench-auto",
        |pg| {
            ClusterSpec::new(1, pg).drain_timeout("20s").autoscale(json!({
                "minReplicas": 1, "maxReplicas": 4, "jobsPerServer": 4,
                "scaleDown": {"stabilizationWindow": "30s"}
            }))
        },
        1,
    )
    .await;
    let fixed_min = burst_against("bench-min", |pg| ClusterSpec::new(1, pg).drain_timeout("20s"), 1).await;
    let fixed_max = burst_against("bench-max", |pg| ClusterSpec::new(4, pg).drain_timeout("20s"), 4).await;
    for (name, f) in [
        ("autoscaled 1-4", &autoscaled),
        ("fixed 1", &fixed_min),
        ("fixed 4", &fixed_max),
    ] {
        eprintln!(
            "autoscale measure: {name:>14}: backlog under target after {:6.1} s, p95 queue wait {:6.2} s, {:5.2} server-minutes in {}s, peak {} servers",
            f.backlog_seconds,
            f.p95_wait_seconds,
            f.server_minutes,
            BENCH_HORIZON.as_secs(),
            f.peak_servers
        );
    }
    let ratio = |a: f64, b: f64| {
        if b > 0.0 {
            format!("x{:.2}", a / b)
        } else {
            "n/a (never over target)".to_string()
        }
    };
    for (name, f) in [("fixed 1", &fixed_min), ("fixed 4", &fixed_max)] {
        eprintln!(
            "autoscale measure: autoscaled / {name}: backlog time {}, p95 wait {}, server-minutes {}",
            ratio(autoscaled.backlog_seconds, f.backlog_seconds),
            ratio(autoscaled.p95_wait_seconds, f.p95_wait_seconds),
            ratio(autoscaled.server_minutes, f.server_minutes)
        );
    }
    assert!(
        autoscaled.peak_servers > 1,
        "the autoscaled cluster grew: {autoscaled:?}"
    );
}
