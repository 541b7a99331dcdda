//! Faults in what the operator reads and writes, injected for real during rolls and
//! scale-downs with long jobs running: PostgreSQL stopped, a proxy in front of it that refuses
//! or hangs connections, the status subresource refused by an admission policy, another server
//! killed mid-drain. Each: no server is evicted or removed while what decides it cannot be
//! seen or stored, every job runs exactly once, and the roll or scale-down finishes after the
//! fault. Each test prints one `FAULT` line with its figures (`-- --nocapture`).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use kube::{Api, ResourceExt};
use orchestrator_operator::crd::OrchestratorCluster;
use serde_json::json;
use testing_postgres::TestPostgres;

use crate::maintenance::{Watcher, claimed, cluster};
use crate::support::e2e::{
    MINUTE, Operator, TestNamespace, client, condition, db, patch_spec, pod_of_column, wait_condition, wait_settled,
};
use crate::support::pods::server_pid;
use crate::support::proxy::{Mode, Proxy};
use crate::support::spec::ClusterSpec;

/// Servers that run one job at a time, with a job lease far longer than any fault here: no job
/// changes hands for a reason of the servers'.
pub(crate) fn patient(spec: ClusterSpec) -> ClusterSpec {
    spec.drain_timeout("3m")
        .env("WORKERS", "1")
        .env("LEASE_MILLISECONDS", "60000")
}

/// Starts `spec`'s cluster (version 2.0.0), pauses its maintenance, asks for version 2.1.0 and
/// gives each of its `servers` servers one `job_ms` job of `batch`; returns the jobs once every
/// server runs one.
pub(crate) async fn busy_roll(
    ns: &TestNamespace,
    pg: &TestPostgres,
    spec: &ClusterSpec,
    servers: usize,
    batch: &str,
    job_ms: u64,
) -> Vec<i64> {
    ns.create_cluster(spec).await;
    wait_settled(ns, servers as i32, Some("2.0.0")).await;
    patch_spec(ns, json!({"maintenance": {"paused": true}})).await;
    patch_spec(ns, json!({"version": "2.1.0"})).await;
    wait_condition(ns, "MaintenanceBlocked", "True", "Paused", 2 * MINUTE).await;
    busy(pg, servers, batch, job_ms).await
}

/// Submits one `job_ms` job of `batch` per server and waits until each runs on its own server.
async fn busy(pg: &TestPostgres, servers: usize, batch: &str, job_ms: u64) -> Vec<i64> {
    let db = db(pg).await;
    let mut jobs = Vec::new();
    for _ in 0..servers {
        let payload = json!({"batch": batch, "ms": job_ms});
        jobs.push(orchestrator_contract::submit_job(&db, "sleep", &payload).await.unwrap());
    }
    let mut owners = BTreeSet::new();
    for job in &jobs {
        owners.insert(claimed(&db, *job).await);
    }
    assert_eq!(owners.len(), servers, "one job on each server");
    jobs
}

/// Waits until a server has picked up its drain and still runs a job; its name.
pub(crate) async fn draining_server(pg: &TestPostgres) -> String {
    let db = db(pg).await;
    let deadline = Instant::now() + 2 * MINUTE;
    loop {
        assert!(Instant::now() < deadline, "no server began to drain");
        let row = db
            .query_opt(
                &format!(
                    "SELECT {pod} FROM servers WHERE state = 'draining' AND running_jobs > 0",
                    pod = pod_of_column("server_id")
                ),
                &[],
            )
            .await
            .unwrap();
        if let Some(row) = row {
            return row.get(0);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// For `window`, asserts every 200 ms that `server`'s pod is still the one with `uid` and not
/// being deleted, and that the StatefulSet keeps `replicas`; returns the (status, reason) of
/// the `blocked` condition seen meanwhile.
async fn nothing_moves(
    ns: &TestNamespace,
    server: &str,
    uid: &str,
    replicas: i32,
    window: Duration,
    blocked: &str,
) -> BTreeSet<(String, String)> {
    let pods = ns.api::<Pod>();
    let sets = ns.api::<StatefulSet>();
    let clusters = ns.api::<OrchestratorCluster>();
    let began = Instant::now();
    let mut seen = BTreeSet::new();
    while began.elapsed() < window {
        let pod = pods.get_opt(server).await.unwrap();
        assert!(
            pod.as_ref()
                .is_some_and(|p| p.uid().as_deref() == Some(uid) && p.metadata.deletion_timestamp.is_none()),
            "{server} was evicted {:?} into the fault",
            began.elapsed()
        );
        let set = sets.get("prod").await.unwrap();
        assert_eq!(
            set.spec.and_then(|s| s.replicas),
            Some(replicas),
            "the StatefulSet kept its servers"
        );
        let cr = clusters.get("prod").await.unwrap();
        if let Some(c) = condition(&cr, blocked) {
            seen.insert((c.status.clone(), c.reason.clone()));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    seen
}

/// Asserts that every job of `batch` finished exactly once: none lost, none started twice.
pub(crate) async fn ran_once(pg: &TestPostgres, batch: &str, jobs: &[i64]) {
    let db = db(pg).await;
    let outcome = orchestrator_contract::batch_outcome(&db, batch).await.unwrap();
    assert_eq!(
        (outcome.completed, outcome.unfinished, outcome.executed_more_than_once),
        (jobs.len() as i64, 0, 0),
        "{outcome:?}"
    );
    for job in jobs {
        let attempts: i32 = db
            .query_one("SELECT attempts FROM jobs WHERE id = $1", &[job])
            .await
            .unwrap()
            .get(0);
        assert_eq!(attempts, 1, "job {job} ran once, on the server that drained");
    }
}

/// The most servers replaced at once: a server's pod going while another's replacement is not
/// back yet counts two.
fn most_replaced_at_once(watcher: &Watcher) -> usize {
    let (going, back) = (watcher.going(), watcher.back());
    going
        .values()
        .map(|went| {
            going
                .iter()
                .filter(|(other, other_went)| *other_went <= went && back.get(*other).is_none_or(|b| b > went))
                .count()
        })
        .max()
        .unwrap_or(0)
}

/// How long each fault lasts: well under the 60 s job lease, and long enough for a hung
/// database to be told from a slow one (a read has 5 s, a fresh check up to 15 s).
const FAULT: Duration = Duration::from_secs(25);

/// A two-server roll whose first drain meets `fault` for [`FAULT`] (PostgreSQL stopped, or a proxy
/// in front of it that refuses or hangs): nothing is evicted while the database is unknown,
/// the drain completes after, each job runs once.
async fn fault_mid_drain(prefix: &str, fault: Option<Mode>) {
    let ns = TestNamespace::new(prefix).await;
    let pg = ns.database().await;
    let proxy = Proxy::start(pg.port).await;
    let _operator = Operator::start(&ns.name, "orchestrator-server").await;
    let mut spec = patient(cluster(2, &pg));
    if fault.is_some() {
        spec = spec.port(proxy.port);
    }
    let jobs = busy_roll(&ns, &pg, &spec, 2, prefix, 60_000).await;
    let watcher = Watcher::start(&ns, 2);
    patch_spec(&ns, json!({"maintenance": {"paused": false}})).await;
    let server = draining_server(&pg).await;
    let uid = ns.api::<Pod>().get(&server).await.unwrap().uid().unwrap();

    let began = Instant::now();
    match fault {
        Some(mode) => proxy.set(mode),
        None => pg.stop(),
    }
    let seen = nothing_moves(&ns, &server, &uid, 2, FAULT, "MaintenanceBlocked").await;
    match fault {
        Some(_) => proxy.set(Mode::Pass),
        None => pg.start_again(),
    }
    assert!(
        seen.contains(&("True".to_string(), "DatabaseNotReady".to_string())),
        "the roll said it waits for the database: {seen:?}"
    );
    wait_settled(&ns, 2, Some("2.1.0")).await;
    ran_once(&pg, prefix, &jobs).await;
    let at_once = most_replaced_at_once(&watcher);
    assert!(at_once <= 1, "one server replaced at a time, {at_once} at once");
    println!(
        "FAULT {prefix}: {FAULT:?} fault mid-drain; roll finished {:?} after it began; evictions during the fault 0; \
         jobs lost 0, started twice 0; servers replaced at once {at_once}",
        began.elapsed()
    );
}

#[tokio::test]
async fn postgres_stopped_mid_drain_evicts_nobody_until_the_drain_is_seen_finished() {
    fault_mid_drain("pgstop", None).await;
}

#[tokio::test]
async fn connections_refused_mid_drain_evict_nobody_until_the_drain_is_seen_finished() {
    fault_mid_drain("refuse", Some(Mode::Refuse)).await;
}

#[tokio::test]
async fn a_database_that_hangs_mid_drain_evicts_nobody_until_the_drain_is_seen_finished() {
    fault_mid_drain("hang", Some(Mode::Hang)).await;
}

#[tokio::test]
async fn a_database_gone_during_a_scale_down_removes_nobody_until_it_is_back() {
    let ns = TestNamespace::new("gone").await;
    let pg = ns.database().await;
    let proxy = Proxy::start(pg.port).await;
    let _operator = Operator::start(&ns.name, "orchestrator-server").await;
    ns.create_cluster(&patient(cluster(3, &pg)).port(proxy.port)).await;
    wait_settled(&ns, 3, Some("2.0.0")).await;
    let jobs = busy(&pg, 3, "gone", 45_000).await;
    patch_spec(&ns, json!({"replicas": 2})).await;
    let server = draining_server(&pg).await;
    assert_eq!(server, "prod-2", "the scale-down drains the highest ordinal");
    let uid = ns.api::<Pod>().get(&server).await.unwrap().uid().unwrap();
    let began = Instant::now();
    proxy.set(Mode::Refuse);
    let seen = nothing_moves(&ns, &server, &uid, 3, FAULT, "CapacityBlocked").await;
    proxy.set(Mode::Pass);
    assert!(
        seen.contains(&("True".to_string(), "DatabaseNotReady".to_string())),
        "the scale-down said it waits for the database: {seen:?}"
    );
    wait_settled(&ns, 2, Some("2.0.0")).await;
    ran_once(&pg, "gone", &jobs).await;
    println!(
        "FAULT scale-down: {FAULT:?} refused mid-drain; scale-down finished {:?} after it began; removals during the fault 0; \
         jobs lost 0, started twice 0",
        began.elapsed()
    );
}

/// A ValidatingAdmissionPolicy (and its binding) that refuses every status write of the
/// clusters of namespace `ns`.
async fn refuse_status_writes(ns: &TestNamespace) -> impl AsyncFnOnce() {
    let client = client().await;
    let resource =
        |kind: &str| ApiResource::from_gvk(&GroupVersionKind::gvk("admissionregistration.k8s.io", "v1", kind));
    let (policy_resource, binding_resource) = (
        resource("ValidatingAdmissionPolicy"),
        resource("ValidatingAdmissionPolicyBinding"),
    );
    let policies: Api<DynamicObject> = Api::all_with(client.clone(), &policy_resource);
    let bindings: Api<DynamicObject> = Api::all_with(client.clone(), &binding_resource);
    let name = format!("refuse-status-{}", ns.name);
    let policy: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": name},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {"resourceRules": [{
                "apiGroups": ["orchestrator.dev"], "apiVersions": ["*"],
                "operations": ["UPDATE"], "resources": ["orchestratorclusters/status"]
            }]},
            "validations": [{"expression": "false", "message": "status writes are refused by the test"}]
        }
    }))
    .unwrap();
    let binding: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": name},
        "spec": {
            "policyName": name, "validationActions": ["Deny"],
            "matchResources": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns.name}}}
        }
    }))
    .unwrap();
    policies.create(&PostParams::default(), &policy).await.unwrap();
    bindings.create(&PostParams::default(), &binding).await.unwrap();
    // In force once a dry-run status write of the cluster is refused.
    let clusters = ns.api::<OrchestratorCluster>();
    let probe = PatchParams {
        dry_run: true,
        ..PatchParams::default()
    };
    let deadline = Instant::now() + MINUTE;
    loop {
        assert!(Instant::now() < deadline, "the policy did not come into force");
        let patch = json!({"status": {"phase": "Ready"}});
        if clusters
            .patch_status("prod", &probe, &Patch::Merge(&patch))
            .await
            .is_err()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    async move || {
        bindings.delete(&name, &DeleteParams::default()).await.unwrap();
        policies.delete(&name, &DeleteParams::default()).await.unwrap();
    }
}

#[tokio::test]
async fn a_refused_status_write_mid_step_evicts_nobody() {
    let ns = TestNamespace::new("nostatus").await;
    let pg = ns.database().await;
    let _operator = Operator::start(&ns.name, "orchestrator-server").await;
    let jobs = busy_roll(&ns, &pg, &patient(cluster(2, &pg)), 2, "nostatus", 12_000).await;
    patch_spec(&ns, json!({"maintenance": {"paused": false}})).await;
    let server = draining_server(&pg).await;
    let uid = ns.api::<Pod>().get(&server).await.unwrap().uid().unwrap();
    let allow = refuse_status_writes(&ns).await;
    // The drain finishes while the status cannot be written: the server stops, and the step
    // that would evict it cannot be stored.
    let db = db(&pg).await;
    let deadline = Instant::now() + MINUTE;
    loop {
        assert!(Instant::now() < deadline, "{server} did not finish its drain");
        let state: String = db
            .query_one(
                &format!(
                    "SELECT state FROM servers WHERE {pod} = $1",
                    pod = pod_of_column("server_id")
                ),
                &[&server],
            )
            .await
            .unwrap()
            .get(0);
        if state == "stopped" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stopped = Instant::now();
    nothing_moves(&ns, &server, &uid, 2, Duration::from_secs(10), "MaintenanceBlocked").await;
    allow().await;
    wait_settled(&ns, 2, Some("2.1.0")).await;
    ran_once(&pg, "nostatus", &jobs).await;
    println!(
        "FAULT status refused: {server} stopped and was kept 10 s without a stored step; roll finished {:?} after",
        stopped.elapsed()
    );
}

#[tokio::test]
async fn another_server_killed_mid_drain_gets_the_drain_withdrawn() {
    let ns = TestNamespace::new("fallen").await;
    let pg = ns.database().await;
    let _operator = Operator::start(&ns.name, "orchestrator-server").await;
    let jobs = busy_roll(&ns, &pg, &patient(cluster(3, &pg)), 3, "fallen", 40_000).await;
    patch_spec(&ns, json!({"maintenance": {"paused": false}})).await;
    let server = draining_server(&pg).await;
    let uid = ns.api::<Pod>().get(&server).await.unwrap().uid();
    let victim = ["prod-0", "prod-1", "prod-2"]
        .into_iter()
        .find(|s| *s != server)
        .unwrap();
    let pid = server_pid(&ns.name, victim).expect("the victim's server process");
    let killed = Instant::now();
    let status = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // The drained server goes back to work while the killed one is down.
    let db = db(&pg).await;
    loop {
        assert!(
            killed.elapsed() < MINUTE,
            "{server}'s drain was not withdrawn after {victim} was killed"
        );
        let row = db
            .query_one(
                &format!(
                    "SELECT state, drain_requested_at IS NULL FROM servers WHERE {pod} = $1",
                    pod = pod_of_column("server_id")
                ),
                &[&server],
            )
            .await
            .unwrap();
        let (state, withdrawn): (String, bool) = (row.get(0), row.get(1));
        if state == "active" && withdrawn {
            // The same process went back to work: not a replacement that registered anew.
            assert_eq!(
                ns.api::<Pod>().get(&server).await.unwrap().uid(),
                uid,
                "{server} was replaced, not resumed"
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let withdrawn = killed.elapsed();
    wait_settled(&ns, 3, Some("2.1.0")).await;
    // The victim's job died with it (its lease expires and another server runs it again); every
    // other job ran once, the withdrawn server's included.
    for job in &jobs {
        let row = db
            .query_one(
                &format!(
                    "SELECT {}, state, attempts FROM jobs WHERE id = $1",
                    pod_of_column("owner")
                ),
                &[job],
            )
            .await
            .unwrap();
        let (owner, state, attempts): (Option<String>, String, i32) = (row.get(0), row.get(1), row.get(2));
        if owner.as_deref() != Some(victim) && attempts == 1 {
            assert!(matches!(state.as_str(), "running" | "succeeded"), "job {job}: {state}");
        } else {
            assert!(
                owner.as_deref() != Some(server.as_str()) || attempts == 1,
                "job {job} of {server} ran twice"
            );
        }
    }
    println!(
        "FAULT server killed mid-drain: {victim} killed; {server}'s drain withdrawn {withdrawn:?} after; roll finished {:?} after",
        killed.elapsed()
    );
}

#[tokio::test]
async fn same_named_clusters_of_two_namespaces_on_one_database_never_touch_each_other() {
    let (a, b) = (TestNamespace::new("twin-a").await, TestNamespace::new("twin-b").await);
    let pg = a.database().await;
    b.create_db_secret("process-db", testing_postgres::USER, &pg.password)
        .await;
    let (_operator_a, _operator_b) = (
        Operator::start(&a.name, "orchestrator-server").await,
        Operator::start(&b.name, "orchestrator-server").await,
    );
    for ns in [&a, &b] {
        ns.create_cluster(&cluster(2, &pg)).await;
    }
    for ns in [&a, &b] {
        wait_settled(ns, 2, Some("2.0.0")).await;
    }
    let db = db(&pg).await;
    let rows = |ns: &TestNamespace| vec![format!("{}/prod-0", ns.name), format!("{}/prod-1", ns.name)];
    let mut ids: Vec<String> = db
        .query(
            "SELECT server_id FROM servers WHERE state = 'active' ORDER BY server_id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    ids.sort();
    assert_eq!(ids, [rows(&a), rows(&b)].concat(), "one row per server of each cluster");

    // a rolls while b waits paused with the same change pending: nothing of b moves.
    patch_spec(&b, json!({"maintenance": {"paused": true}})).await;
    patch_spec(&b, json!({"version": "2.1.0"})).await;
    wait_condition(&b, "MaintenanceBlocked", "True", "Paused", 2 * MINUTE).await;
    let b_uids =
        crate::support::pods::uids(&crate::support::pods::list(&b, &crate::support::pods::server_pods("prod")).await);
    patch_spec(&a, json!({"version": "2.1.0"})).await;
    let clusters = a.api::<OrchestratorCluster>();
    let deadline = Instant::now() + 3 * MINUTE;
    loop {
        assert!(Instant::now() < deadline, "a did not finish its roll");
        let untouched: i64 = db
            .query_one(
                "SELECT count(*) FROM servers WHERE server_id = ANY($1) AND state = 'active' AND drain_requested_at IS NULL",
                &[&rows(&b)],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(
            untouched, 2,
            "b's servers stay active, never asked to drain, while a rolls"
        );
        let cr = clusters.get("prod").await.unwrap();
        let done = cr.status.as_ref().is_some_and(|s| {
            s.phase == orchestrator_operator::crd::Phase::Ready
                && s.servers
                    .iter()
                    .all(|server| server.version.as_deref() == Some("2.1.0"))
                && s.servers.len() == 2
        });
        if done {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let b_after =
        crate::support::pods::uids(&crate::support::pods::list(&b, &crate::support::pods::server_pods("prod")).await);
    assert_eq!(b_uids, b_after, "no pod of b was replaced by a's roll");
    patch_spec(&b, json!({"maintenance": {"paused": false}})).await;
    wait_settled(&b, 2, Some("2.1.0")).await;
    wait_settled(&a, 2, Some("2.1.0")).await;
}

#[tokio::test]
async fn an_outage_longer_than_the_lease_stops_each_job_before_it_runs_again_once() {
    let ns = TestNamespace::new("longout").await;
    let pg = ns.database().await;
    let proxy = Proxy::start(pg.port).await;
    let _operator = Operator::start(&ns.name, "orchestrator-server").await;
    // A 10 s lease (heartbeat 2 s): each server stops its job on its own about 8 s into the
    // outage, before the database would let another server claim it.
    let spec = cluster(2, &pg)
        .port(proxy.port)
        .env("WORKERS", "1")
        .env("LEASE_MILLISECONDS", "10000");
    ns.create_cluster(&spec).await;
    wait_settled(&ns, 2, Some("2.0.0")).await;
    let jobs = busy(&pg, 2, "longout", 20_000).await;
    proxy.set(Mode::Refuse);
    tokio::time::sleep(Duration::from_secs(25)).await;
    proxy.set(Mode::Pass);
    let db = db(&pg).await;
    let deadline = Instant::now() + 2 * MINUTE;
    loop {
        assert!(Instant::now() < deadline, "the jobs did not finish after the outage");
        let outcome = orchestrator_contract::batch_outcome(&db, "longout").await.unwrap();
        if outcome.completed == jobs.len() as i64 {
            assert_eq!(
                (outcome.unfinished, outcome.executed_more_than_once),
                (0, 0),
                "{outcome:?}"
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Each job's first run was stopped by its server (no completion recorded), the second ran
    // to the end: one execution each.
    let runs: Vec<i64> = db
        .query(
            "SELECT count(*) FROM job_executions WHERE job_id = ANY($1) GROUP BY job_id",
            &[&jobs],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(runs, vec![1, 1], "one recorded execution per job");
    let stopped: usize = ["prod-0", "prod-1"]
        .iter()
        .map(|pod| {
            ns.pod_log(pod, "server")
                .matches("lease lost: job stopped here")
                .count()
        })
        .sum();
    assert_eq!(
        stopped, 2,
        "each server stopped its job when its lease could have expired"
    );
    println!(
        "FAULT outage longer than the lease: 25 s refused, 10 s lease; {stopped} jobs stopped by their servers, each ran to completion once"
    );
}
