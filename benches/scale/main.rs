//! `make bench-scale`: a fleet of `CLUSTERS` OrchestratorClusters (3 servers each) on kwok's
//! fake nodes of the local cluster, one real PostgreSQL shared by all (each cluster in its own
//! namespace, so each reads only its own rows), the servers' side played by [`simulator`].
//! Prints, for that fleet:
//!
//! - the time until every cluster is Ready, against a baseline that server-side-applies the
//!   same child objects (taken from a cluster the operator made) with one client as fast as it
//!   can and waits until every StatefulSet is ready;
//! - at steady state, API requests per minute by verb, from the API server's
//!   `apiserver_request_total` (every client) and from its audit log (the operator's alone,
//!   by User-Agent), status writes per minute, the operator's RSS and CPU seconds per minute
//!   from `/proc`, and the database connections it holds from `pg_stat_activity`;
//! - the reaction time from a spec change (replicas + 1) to the operator's first write for
//!   that cluster (its status, or the StatefulSet), while the others are idle and while 10% of
//!   them roll to a new version.
//!
//! Run by `hack/bench-scale.sh`, which starts a fresh local cluster for each size.

mod simulator;

/// The audit log reader of the e2e tests; the bench uses part of it.
#[allow(dead_code)]
#[path = "../../tests/support/audit.rs"]
mod audit;

/// What `audit` needs of the e2e harness.
mod e2e {
    /// The project's root folder.
    pub(crate) fn root() -> std::path::PathBuf {
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
    }
}

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt, future, stream};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DynamicObject, Patch, PatchParams};
use kube::core::ApiResource;
use kube::runtime::wait::{await_condition, conditions};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use orchestrator_operator::crd::{OrchestratorCluster, Phase};
use serde_json::{Value, json};
use testing_postgres::TestPostgres;

/// The field manager of the bench's own writes.
const MANAGER: &str = "bench-scale";
/// Servers per cluster.
const SERVERS: i32 = 3;
/// Pods one fake node holds.
const PODS_PER_NODE: usize = 500;
/// The label and taint that keep the fleet on the fake nodes.
const FAKE: (&str, &str) = ("kwok.x-k8s.io/node", "fake");
/// How long a phase may take before the bench gives up, with what it saw.
const DEADLINE: Duration = Duration::from_secs(30 * 60);
/// The operator's `--max-concurrent-rolls` (its default, set here so the environment cannot
/// change it).
const ROLL_LIMIT: usize = 10;
/// Concurrent writes of the bench's own client (the operator's default reconcile concurrency).
const CLIENT_CONCURRENCY: usize = 16;

#[tokio::main]
async fn main() {
    let clusters: usize = std::env::var("CLUSTERS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100);
    let steady_seconds: u64 = std::env::var("STEADY_SECONDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(60);
    let client = Client::try_default().await.expect("KUBECONFIG names the local cluster");
    install_crd(&client).await;
    let pg = TestPostgres::start();
    {
        let (mut db, connection) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(connection);
        orchestrator_contract::migrations::migrate(&mut db, orchestrator_contract::LATEST_SCHEMA, false)
            .await
            .unwrap();
    }
    fake_nodes(&client, (clusters * 2 * (SERVERS as usize + 1)).div_ceil(PODS_PER_NODE)).await;
    tokio::spawn(simulator::run(client.clone(), pg.url()));
    apply(Api::all(client.clone()), &namespace("bench-system")).await;

    // The children of one cluster the operator made, the baseline's templates.
    let operator = Operator::start();
    create_fleet(&client, &pg, &["bench-probe".to_string()]).await;
    wait_ready(&client, 1, "bench-probe").await;
    let templates = templates(&client, "bench-probe").await;
    // Stopped with SIGTERM, it hands the Lease back: the next operator leads at once.
    operator.stop().await;

    let started = Instant::now();
    let baseline_namespaces: Vec<String> = (0..clusters).map(|i| format!("base-{i}")).collect();
    baseline(&client, &templates, &baseline_namespaces).await;
    let baseline_time = started.elapsed();
    println!(
        "[scale N={clusters}] baseline: {} StatefulSets applied and ready in {:.1} s",
        clusters,
        baseline_time.as_secs_f64()
    );

    let operator = Operator::start();
    let started = Instant::now();
    let fleet: Vec<String> = (0..clusters).map(|i| format!("orc-{i}")).collect();
    create_fleet(&client, &pg, &fleet).await;
    wait_ready(&client, clusters, "orc-").await;
    let converge = started.elapsed();
    println!(
        "[scale N={clusters}] converge: every cluster Ready in {:.1} s; baseline {:.1} s; ratio {:.2}",
        converge.as_secs_f64(),
        baseline_time.as_secs_f64(),
        converge.as_secs_f64() / baseline_time.as_secs_f64()
    );

    // Steady state: nothing changes; the servers beat.
    tokio::time::sleep(Duration::from_secs(30)).await;
    steady(&client, &operator, &pg, clusters, Duration::from_secs(steady_seconds)).await;

    let samples = (clusters / 4).clamp(5, 50);
    let idle: Vec<&String> = fleet.iter().rev().take(samples).collect();
    let before = operator.reconciles().await;
    let idle_times = reactions(&client, &idle).await;
    let after = operator.reconciles().await;
    println!(
        "[scale N={clusters}] reaction idle: {}; meanwhile {} reconciles of {:.1} ms on average (operator's /metrics)",
        percentiles(&idle_times),
        after.1 - before.1,
        (after.0 - before.0) * 1000.0 / (after.1 - before.1).max(1.0)
    );

    let rolling: Vec<&String> = fleet.iter().take(clusters / 10).collect();
    stream::iter(&rolling)
        .for_each_concurrent(CLIENT_CONCURRENCY, |ns| {
            let api = Api::<OrchestratorCluster>::namespaced(client.clone(), ns);
            async move {
                api.patch(
                    "c",
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"version": "2.0.1"}})),
                )
                .await
                .unwrap();
            }
        })
        .await;
    let busy: Vec<&String> = fleet.iter().rev().skip(samples).take(samples).collect();
    let before = operator.reconciles().await;
    let busy_times = reactions(&client, &busy).await;
    let after = operator.reconciles().await;
    println!(
        "[scale N={clusters}] reaction with {} of {clusters} given a new version ({ROLL_LIMIT} rolling at once): {}; meanwhile {} reconciles of {:.1} ms on average",
        rolling.len(),
        percentiles(&busy_times),
        after.1 - before.1,
        (after.0 - before.0) * 1000.0 / (after.1 - before.1).max(1.0)
    );
    let mut rolling_left = 0;
    for ns in &rolling {
        let cr = Api::<OrchestratorCluster>::namespaced(client.clone(), ns)
            .get("c")
            .await
            .unwrap();
        let done = cr.status.as_ref().is_some_and(|s| {
            s.phase == Phase::Ready && s.observed_generation == cr.metadata.generation && !s.roll_under_way()
        });
        if !done {
            rolling_left += 1;
        }
    }
    println!(
        "[scale N={clusters}] rolls: {} of {} not finished when the sampling ended (--max-concurrent-rolls {ROLL_LIMIT})",
        rolling_left,
        rolling.len()
    );
    operator.stop().await;
}

/// Installs the CRD and waits until it is served.
async fn install_crd(client: &Client) {
    let text = std::fs::read_to_string(e2e::root().join("crds/orchestratorclusters.yaml")).unwrap();
    let crd: CustomResourceDefinition = serde_yaml::from_str(&text).unwrap();
    let api = Api::<CustomResourceDefinition>::all(client.clone());
    let name = crd.name_any();
    api.patch(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&crd))
        .await
        .unwrap();
    tokio::time::timeout(
        Duration::from_secs(60),
        await_condition(api, &name, conditions::is_crd_established()),
    )
    .await
    .expect("CRD established within 60 s")
    .unwrap();
}

/// A namespace object.
fn namespace(name: &str) -> Namespace {
    serde_json::from_value(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})).unwrap()
}

/// Server-side-applies `object` through `api` with the bench's field manager.
async fn apply<K>(api: Api<K>, object: &K)
where
    K: Resource + serde::Serialize + serde::de::DeserializeOwned + Clone + std::fmt::Debug,
{
    api.patch(
        &object.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(object),
    )
    .await
    .unwrap_or_else(|e| panic!("apply {}: {e}", object.name_any()));
}

/// `count` fake nodes kwok plays (Ready, room for [`PODS_PER_NODE`] pods), tainted so that only
/// the fleet's pods land there; waits until kwok made them Ready.
async fn fake_nodes(client: &Client, count: usize) {
    for i in 0..count {
        let node: Node = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {
                "name": format!("fake-{i}"),
                "annotations": {FAKE.0: FAKE.1},
                "labels": {FAKE.0: FAKE.1, "type": "kwok"}
            },
            "spec": {"taints": [{"key": FAKE.0, "value": FAKE.1, "effect": "NoSchedule"}]},
            "status": {
                "allocatable": {"cpu": "1000", "memory": "4Ti", "pods": PODS_PER_NODE.to_string()},
                "capacity": {"cpu": "1000", "memory": "4Ti", "pods": PODS_PER_NODE.to_string()}
            }
        }))
        .unwrap();
        apply(Api::all(client.clone()), &node).await;
        let api = Api::<Node>::all(client.clone());
        let ready = |n: Option<&Node>| {
            n.and_then(|n| n.status.as_ref()?.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        };
        tokio::time::timeout(
            Duration::from_secs(60),
            await_condition(api, &format!("fake-{i}"), ready),
        )
        .await
        .expect("kwok makes a fake node Ready within 60 s")
        .unwrap();
    }
}

/// For each namespace: the namespace, the credentials Secret and cluster `c` of 3 servers on
/// the fake nodes, created as fast as one client with [`CLIENT_CONCURRENCY`] writes at once can.
async fn create_fleet(client: &Client, pg: &TestPostgres, namespaces: &[String]) {
    stream::iter(namespaces)
        .for_each_concurrent(CLIENT_CONCURRENCY, |ns| async move {
            apply(Api::all(client.clone()), &namespace(ns)).await;
            let secret: Secret = serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "process-db", "namespace": ns,
                             "labels": {"orchestrator.dev/credentials": "true"}},
                "stringData": {"username": testing_postgres::USER, "password": pg.password}
            }))
            .unwrap();
            apply(Api::namespaced(client.clone(), ns), &secret).await;
            let cluster: OrchestratorCluster = serde_json::from_value(json!({
                "apiVersion": "orchestrator.dev/v1alpha1", "kind": "OrchestratorCluster",
                "metadata": {"name": "c", "namespace": ns},
                "spec": {
                    "replicas": SERVERS, "version": "2.0.0",
                    "database": {
                        "host": "127.0.0.1", "port": pg.port, "name": testing_postgres::DATABASE,
                        "sslMode": "disable", "credentialsSecret": {"name": "process-db"}
                    },
                    "template": {
                        "nodeSelector": {"type": "kwok"},
                        "tolerations": [{"key": FAKE.0, "operator": "Exists", "effect": "NoSchedule"}]
                    }
                }
            }))
            .unwrap();
            apply(Api::namespaced(client.clone(), ns), &cluster).await;
        })
        .await;
}

/// Waits until `count` clusters of namespaces starting with `prefix` are Ready.
async fn wait_ready(client: &Client, count: usize, prefix: &str) {
    let api = Api::<OrchestratorCluster>::all(client.clone());
    let what = format!("clusters ({prefix}*) Ready");
    wait_for_namespaces(api, watcher::Config::default(), count, &what, |cr| {
        let ours = cr.namespace().unwrap_or_default().starts_with(prefix);
        ours.then(|| cr.status.as_ref().is_some_and(|s| s.phase == Phase::Ready))
    })
    .await;
}

/// Waits until `count` namespaces each hold an object of `api` (selected by `config`) for
/// which `done` answers `Some(true)` (`None`: not one to count), within [`DEADLINE`].
async fn wait_for_namespaces<K>(
    api: Api<K>,
    config: watcher::Config,
    count: usize,
    what: &str,
    done: impl Fn(&K) -> Option<bool>,
) where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let mut finished = BTreeSet::new();
    let mut events = watcher(api, config).default_backoff().applied_objects().boxed();
    let wait = async {
        while finished.len() < count {
            // A watch error (a relist after a 410) is retried with back-off: skip it.
            let Some(event) = events.next().await else {
                panic!("the watch of {what} ended");
            };
            let Ok(object) = event else { continue };
            let ns = object.namespace().unwrap_or_default();
            match done(&object) {
                Some(true) => {
                    finished.insert(ns);
                }
                Some(false) => {
                    finished.remove(&ns);
                }
                None => {}
            }
        }
    };
    if tokio::time::timeout(DEADLINE, wait).await.is_err() {
        panic!("only {} of {count} {what} within {DEADLINE:?}", finished.len());
    }
}

/// The operator's child objects in `namespace` as server-side-apply bodies: no server-set
/// fields, no owner, labelled so that neither the operator nor the simulator takes them for its own.
async fn templates(client: &Client, namespace: &str) -> Vec<(ApiResource, Value)> {
    let kinds = [
        ApiResource::erase::<StatefulSet>(&()),
        ApiResource::erase::<Service>(&()),
        ApiResource::erase::<ConfigMap>(&()),
        ApiResource::erase::<PodDisruptionBudget>(&()),
    ];
    let mut out = Vec::new();
    for kind in kinds {
        let api = Api::<DynamicObject>::namespaced_with(client.clone(), namespace, &kind);
        let list = api
            .list(&kube::api::ListParams::default().labels("app.kubernetes.io/managed-by=orchestrator-operator"))
            .await
            .unwrap();
        for object in list.items {
            let mut value = serde_json::to_value(&object).unwrap();
            value["apiVersion"] = json!(kind.api_version);
            value["kind"] = json!(kind.kind);
            value.as_object_mut().unwrap().remove("status");
            let meta = value["metadata"].as_object_mut().unwrap();
            meta.retain(|key, _| matches!(key.as_str(), "name" | "labels" | "annotations"));
            if let Some(spec) = value.get_mut("spec").and_then(Value::as_object_mut)
                && spec.get("clusterIP").is_some_and(|ip| ip != "None")
            {
                // Allocated by the API server for the probe's Service; each copy gets its own.
                spec.remove("clusterIP");
                spec.remove("clusterIPs");
            }
            let text = serde_json::to_string(&value)
                .unwrap()
                .replace("\"orchestrator-operator\"", "\"bench-baseline\"")
                .replace("\"orchestrator-server\"", "\"baseline-server\"");
            out.push((kind.clone(), serde_json::from_str(&text).unwrap()));
        }
    }
    assert!(
        out.iter().any(|(kind, _)| kind.kind == "StatefulSet"),
        "the probe cluster has a StatefulSet"
    );
    out
}

/// The baseline: applies `templates` in each namespace with one client and waits until every
/// StatefulSet has all its replicas ready.
async fn baseline(client: &Client, templates: &[(ApiResource, Value)], namespaces: &[String]) {
    stream::iter(namespaces)
        .for_each_concurrent(CLIENT_CONCURRENCY, |ns| async move {
            apply(Api::all(client.clone()), &namespace(ns)).await;
            for (kind, body) in templates {
                let api = Api::<DynamicObject>::namespaced_with(client.clone(), ns, kind);
                let name = body["metadata"]["name"].as_str().unwrap();
                api.patch(name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(body))
                    .await
                    .unwrap_or_else(|e| panic!("apply {} {ns}/{name}: {e}", kind.kind));
            }
        })
        .await;
    let api = Api::<StatefulSet>::all(client.clone());
    let config = watcher::Config::default().labels("app.kubernetes.io/managed-by=bench-baseline");
    wait_for_namespaces(api, config, namespaces.len(), "baseline StatefulSets ready", |set| {
        Some(set.status.as_ref().and_then(|s| s.ready_replicas) == Some(SERVERS))
    })
    .await;
}

/// The operator binary of this build, run as a host process against every namespace, with
/// leader election on (as installed); killed when dropped.
struct Operator {
    child: tokio::process::Child,
    log: std::path::PathBuf,
    metrics_url: String,
}

impl Operator {
    fn start() -> Self {
        let log = e2e::root().join(".local/bench-scale-operator.log");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_orchestrator-operator"))
            .args(["--http-addr", &format!("127.0.0.1:{port}")])
            .args(["--leader-election-namespace", "bench-system"])
            .args(["--max-concurrent-rolls", &ROLL_LIMIT.to_string()])
            .args([
                "--identity",
                "bench",
                "--server-image-repository",
                "example.invalid/orchestrator-server",
            ])
            .env("RUST_LOG", "info,kube=warn")
            .stdout(Stdio::from(file.try_clone().unwrap()))
            .stderr(Stdio::from(file))
            .kill_on_drop(true)
            .spawn()
            .expect("start the operator binary");
        Self {
            child,
            log,
            metrics_url: format!("http://127.0.0.1:{port}/metrics"),
        }
    }

    /// Stops it as Kubernetes would (SIGTERM), so that it hands its Lease back, and waits
    /// for it to exit.
    async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = tokio::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
        }
        tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .expect("the operator stops within 60 s of SIGTERM")
            .unwrap();
    }

    /// Sum and count of the reconcile durations so far (seconds), from its `/metrics`.
    async fn reconciles(&self) -> (f64, f64) {
        let text = reqwest::get(&self.metrics_url)
            .await
            .and_then(|r| r.error_for_status())
            .expect("the operator serves /metrics")
            .text()
            .await
            .unwrap();
        let value = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        (
            value("orchestrator_operator_reconcile_duration_seconds_sum"),
            value("orchestrator_operator_reconcile_duration_seconds_count"),
        )
    }

    /// Resident memory (bytes) and CPU seconds (user + system) so far, from `/proc`.
    fn usage(&self) -> (u64, f64) {
        let pid = self.child.id().expect("the operator runs");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let rss_kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        // Fields after the command name (which may hold spaces) start at state, field 3.
        let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
        let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
        // Clock ticks of USER_HZ, 100 per second on Linux.
        (rss_kib * 1024, ticks / 100.0)
    }
}

/// The API server's `apiserver_request_total`, summed by (verb, resource[/subresource]).
async fn request_totals(client: &Client) -> BTreeMap<(String, String), f64> {
    let text = client
        .request_text(http::Request::get("/metrics").body(Vec::new()).unwrap())
        .await
        .expect("the API server's /metrics");
    let mut totals = BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with("apiserver_request_total{")) {
        let Some((labels, value)) = line.rsplit_once(' ') else {
            continue;
        };
        // `{a="x",b="y"}`: none of these values holds a comma or a quote.
        let label = |name: &str| {
            labels
                .trim_start_matches("apiserver_request_total{")
                .trim_end_matches('}')
                .split(',')
                .find_map(|pair| pair.strip_prefix(name)?.strip_prefix("=\""))
                .and_then(|value| value.strip_suffix('"'))
                .unwrap_or_default()
                .to_string()
        };
        let mut resource = label("resource");
        let sub = label("subresource");
        if !sub.is_empty() {
            resource = format!("{resource}/{sub}");
        }
        *totals.entry((label("verb"), resource)).or_default() += value.parse::<f64>().unwrap_or(0.0);
    }
    totals
}

/// Steady state over `window`: requests by verb (every client, and the operator's alone),
/// status writes, the operator's RSS and CPU, database connections.
async fn steady(client: &Client, operator: &Operator, pg: &TestPostgres, clusters: usize, window: Duration) {
    let audit = audit::AuditLog::open();
    let mark = audit.mark();
    let before = request_totals(client).await;
    let (_, cpu_before) = operator.usage();
    tokio::time::sleep(window).await;
    let after = request_totals(client).await;
    let (rss, cpu_after) = operator.usage();
    let minutes = window.as_secs_f64() / 60.0;
    let mut by_verb: BTreeMap<String, f64> = BTreeMap::new();
    let mut status_writes = 0.0;
    for (key, value) in &after {
        let delta = value - before.get(key).copied().unwrap_or(0.0);
        if delta <= 0.0 || key.0 == "WATCH" {
            continue;
        }
        *by_verb.entry(key.0.clone()).or_default() += delta / minutes;
        if key.1 == "orchestratorclusters/status" && !matches!(key.0.as_str(), "GET" | "LIST") {
            status_writes += delta / minutes;
        }
    }
    let ours: Vec<audit::Request> = audit
        .since(mark)
        .into_iter()
        .filter(|r| r.user_agent.starts_with("orchestrator-operator/"))
        .collect();
    let lease = |r: &audit::Request| r.resource == "leases";
    let mut ours_by_verb: BTreeMap<String, usize> = BTreeMap::new();
    for request in ours.iter().filter(|r| !lease(r)) {
        *ours_by_verb.entry(request.verb.clone()).or_default() += 1;
    }
    let ours_total = ours.iter().filter(|r| !lease(r)).count() as f64 / minutes;
    let ours_writes = ours.iter().filter(|r| !lease(r) && r.is_write()).count() as f64 / minutes;
    let fmt = |m: &BTreeMap<String, f64>| {
        m.iter()
            .map(|(v, n)| format!("{v} {n:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "[scale N={clusters}] steady: API requests/min, every client (apiserver_request_total, watches aside): {}",
        fmt(&by_verb)
    );
    println!(
        "[scale N={clusters}] steady: operator requests/min (audit log, Lease aside): {ours_total:.1} ({:.2} per 100 clusters), writes/min {ours_writes:.1}, by verb {:?}; Lease requests/min {:.1}",
        ours_total * 100.0 / clusters as f64,
        ours_by_verb,
        ours.iter().filter(|r| lease(r)).count() as f64 / minutes
    );
    println!("[scale N={clusters}] steady: status writes/min (apiserver_request_total): {status_writes:.1}");
    println!(
        "[scale N={clusters}] steady: operator RSS {:.1} MiB, CPU {:.2} s/min (/proc)",
        rss as f64 / (1024.0 * 1024.0),
        (cpu_after - cpu_before) / minutes
    );
    let (db, connection) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let rows = db
        .query(
            "SELECT application_name, count(*), count(*) FILTER (WHERE query ILIKE 'LISTEN%')
             FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()
             GROUP BY 1 ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    let held: Vec<String> = rows
        .iter()
        .map(|r| {
            let name: String = r.get(0);
            let name = if name.is_empty() {
                "(no application name)".to_string()
            } else {
                name
            };
            format!("{name}: {} ({} listening)", r.get::<_, i64>(1), r.get::<_, i64>(2))
        })
        .collect();
    println!(
        "[scale N={clusters}] steady: database connections (pg_stat_activity): {}",
        held.join(", ")
    );
    println!("[scale N={clusters}] operator log: {}", operator.log.display());
}

/// For each namespace in turn: the time from a `replicas + 1` patch of its cluster to the
/// operator's first write for it in answer (a status that observed the patched generation, or
/// the StatefulSet asking for the new number of servers), whichever a watch shows first. The
/// watches start before the patch; being conditions on state, not on events, they cannot miss
/// an answer that came before they listed.
async fn reactions(client: &Client, namespaces: &[&String]) -> Vec<Duration> {
    let mut times = Vec::new();
    for ns in namespaces {
        let crs = Api::<OrchestratorCluster>::namespaced(client.clone(), ns);
        let sets = Api::<StatefulSet>::namespaced(client.clone(), ns);
        let cr = crs.get("c").await.unwrap();
        let replicas = cr.spec.replicas + 1;
        let generation = cr.metadata.generation.unwrap_or(0) + 1;
        let observed = tokio::spawn(await_condition(
            crs.clone(),
            "c",
            move |c: Option<&OrchestratorCluster>| {
                c.and_then(|c| c.status.as_ref()?.observed_generation) >= Some(generation)
            },
        ));
        let scaled = tokio::spawn(await_condition(sets, "c", move |s: Option<&StatefulSet>| {
            s.and_then(|s| s.spec.as_ref()?.replicas) == Some(replicas)
        }));
        let (observed_abort, scaled_abort) = (observed.abort_handle(), scaled.abort_handle());
        let observed = observed.map(|r| matches!(r, Ok(Ok(_)))).boxed();
        let scaled = scaled.map(|r| matches!(r, Ok(Ok(_)))).boxed();
        let started = Instant::now();
        let patched = crs
            .patch(
                "c",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"replicas": replicas}})),
            )
            .await
            .unwrap();
        assert_eq!(
            patched.metadata.generation,
            Some(generation),
            "{ns}/c changed by someone else meanwhile"
        );
        let answer = futures::future::select(observed, scaled);
        let seen = tokio::time::timeout(Duration::from_secs(60), answer).await;
        observed_abort.abort();
        scaled_abort.abort();
        match seen {
            Ok(future::Either::Left((true, _)) | future::Either::Right((true, _))) => times.push(started.elapsed()),
            _ => panic!("the operator wrote nothing for {ns}/c within 60 s of replicas + 1"),
        }
    }
    times
}

/// `p50, p90 and max` of `times`, in milliseconds (with fewer than 100 samples a p99 would be
/// the max).
fn percentiles(times: &[Duration]) -> String {
    let mut ms: Vec<f64> = times.iter().map(|t| t.as_secs_f64() * 1000.0).collect();
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() as f64 - 1.0) * q).round() as usize];
    format!(
        "p50 {:.0} ms, p90 {:.0} ms, max {:.0} ms ({} samples)",
        at(0.5),
        at(0.9),
        ms[ms.len() - 1],
        ms.len()
    )
}
