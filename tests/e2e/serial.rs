//! Tests that run alone, `#[ignore]`d in the parallel run: `hack/e2e.sh` runs this module
//! after all the others with `--ignored`, one test at a time, because each takes the whole
//! local cluster or machine: the control plane stopped and
//! started again under a roll (every client of the cluster loses it meanwhile), and thirty
//! servers on one PostgreSQL.
//!
//! A roll rides through a control-plane restart: the node agent keeps every pod running and
//! ready as a kubelet does, the operator (with leader election, as the chart installs it) stops
//! acting when its Lease lapses and takes it back when the API server answers, the servers
//! never notice. Each test prints one `OUTAGE` line with its figures (`-- --nocapture`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::jiff::{self, Timestamp};
use kube::ResourceExt;
use orchestrator_operator::crd::{OrchestratorCluster, Phase};
use serde_json::json;
use testing_postgres::TestPostgres;

use crate::support::audit::{AuditLog, lines};
use crate::support::control_plane::{self, Outage};
use crate::support::e2e::{
    MINUTE, Operator, Replica, TestNamespace, db, load, patch_spec, pod_of_column, wait_for, wait_settled,
};
use crate::support::pods::{self, restarts, server_pods};
use crate::support::spec::ClusterSpec;

/// Servers of the rolled cluster.
const SERVERS: i64 = 4;

/// The rolled cluster: its steps wait out an outage (a replacement created just before one
/// may join only after it).
fn rolled(pg: &TestPostgres) -> ClusterSpec {
    ClusterSpec::new(SERVERS as i32, pg)
        .drain_timeout("60s")
        .ready_timeout("3m")
}

/// The fewest servers of the database seen active (state `active`, heartbeat younger than
/// three heartbeats) by a poll every 100 ms, and the last instant anything changed in a
/// server row's state or drain request.
#[derive(Default)]
struct Sampled {
    fewest_active: Option<i64>,
    changes: Vec<(Instant, String)>,
}

fn sample_servers(pg: &TestPostgres) -> (Arc<Mutex<Sampled>>, tokio::task::JoinHandle<()>) {
    let sampled = Arc::new(Mutex::new(Sampled::default()));
    let out = sampled.clone();
    let url = pg.url();
    let task = tokio::spawn(async move {
        let (db, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(connection);
        let mut last = String::new();
        loop {
            let rows = db
                .query(
                    &format!(
                        "SELECT {pod}, state, drain_requested_at IS NOT NULL, heartbeat_at > now() - interval '6 seconds' FROM servers ORDER BY 1",
                        pod = pod_of_column("server_id")
                    ),
                    &[],
                )
                .await
                .unwrap();
            let active = rows
                .iter()
                .filter(|r| r.get::<_, String>(1) == "active" && r.get::<_, bool>(3))
                .count() as i64;
            let states = rows
                .iter()
                .map(|r| {
                    format!(
                        "{}:{}{}",
                        r.get::<_, String>(0),
                        r.get::<_, String>(1),
                        if r.get(2) { "+drain" } else { "" }
                    )
                })
                .collect::<Vec<_>>()
                .join(" ");
            {
                let mut sampled = out.lock().unwrap();
                sampled.fewest_active = Some(sampled.fewest_active.map_or(active, |f| f.min(active)));
                if states != last {
                    sampled.changes.push((Instant::now(), states.clone()));
                    last = states;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    (sampled, task)
}

/// The server pods by name: uid, whether being deleted, restarts.
async fn server_pod_states(ns: &TestNamespace) -> BTreeMap<String, (String, bool, i32)> {
    pods::list(ns, &server_pods("prod"))
        .await
        .into_iter()
        .map(|(name, pod): (String, Pod)| {
            let state = (
                pod.uid().unwrap_or_default(),
                pod.metadata.deletion_timestamp.is_some(),
                restarts(&pod),
            );
            (name, state)
        })
        .collect()
}

/// The node agent's nodes that do not say Ready, or the error of the read.
async fn node_ready(client: &kube::Client) -> Result<Vec<String>, kube::Error> {
    let nodes: kube::Api<Node> = kube::Api::all(client.clone());
    Ok(nodes
        .list(&Default::default())
        .await?
        .items
        .into_iter()
        .filter(|n| n.labels().contains_key("node.orchestrator.dev/agent"))
        .filter_map(|n| {
            let ready = n
                .status
                .as_ref()?
                .conditions
                .as_ref()?
                .iter()
                .find(|c| c.type_ == "Ready")?
                .status
                .clone();
            (ready != "True").then(|| format!("{} Ready={ready}", n.name_any()))
        })
        .collect())
}

/// A four-server version bump under load, with `outage` stopped for `down` and started again
/// `times` times in a row, the first time while the first server drains (each server runs one
/// 20 s job when the roll starts, so the first drain outlasts the stop).
async fn ride_through(prefix: &str, outage: Outage, down: Duration, times: usize) {
    let ns = TestNamespace::new(prefix).await;
    let pg = ns.database().await;
    let audit = AuditLog::open();
    let mark = audit.mark();
    let operator = Operator::replica(
        &ns.name,
        &Replica {
            identity: "a",
            lease: "orc",
            lease_seconds: 18,
            kubeconfig: None,
        },
    );
    let spec = crate::faults::patient(rolled(&pg));
    let long_jobs = crate::faults::busy_roll(&ns, &pg, &spec, SERVERS as usize, prefix, 20_000).await;
    let before = server_pod_states(&ns).await;
    let (sampled, sampler) = sample_servers(&pg);
    // The node's Ready condition, every 500 ms until the roll settles (reads fail while the API
    // server is away): what the controller-manager's node monitor concluded.
    let not_ready = Arc::new(Mutex::new(Vec::new()));
    let node_watch = {
        let (seen, client) = (not_ready.clone(), ns.client.clone());
        tokio::spawn(async move {
            loop {
                if let Ok(bad) = node_ready(&client).await {
                    seen.lock().unwrap().extend(bad);
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };
    let started = Instant::now();
    let outages = async {
        patch_spec(&ns, json!({"maintenance": {"paused": false}})).await;
        crate::faults::draining_server(&pg).await;
        let mut backs = Vec::new();
        for _ in 0..times {
            let stopped = control_plane::stop(outage).await;
            tokio::time::sleep(down).await;
            let back = control_plane::start(stopped).await;
            backs.push(Timestamp::now() - back.elapsed());
        }
        let settled = wait_settled(&ns, SERVERS as i32, Some("2.1.0")).await;
        (backs, settled)
    };
    let (report, (backs, cr)) = tokio::join!(load(&pg, "load", 4, 30 + 30 * times as u32, 200), outages);
    sampler.abort();
    node_watch.abort();
    let wall = started.elapsed();
    let not_ready = not_ready.lock().unwrap().clone();
    assert!(not_ready.is_empty(), "the node stayed Ready: {not_ready:?}");

    assert_eq!(report["lost"], 0, "{report}");
    assert_eq!(report["submit_failed"], 0, "{report}");
    assert_eq!(report["outcome"]["executed_more_than_once"], 0, "{report}");
    crate::faults::ran_once(&pg, prefix, &long_jobs).await;
    let (fewest, changes) = {
        let sampled = sampled.lock().unwrap();
        (sampled.fewest_active.unwrap(), sampled.changes.clone())
    };
    assert!(
        fewest >= SERVERS - 1,
        "never fewer than {} servers active; saw {fewest}:\n{}",
        SERVERS - 1,
        changes
            .iter()
            .map(|(at, s)| format!("{:>6.1}s {s}", (*at - started).as_secs_f64()))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // Every server replaced once by the roll, no container restarted.
    let after = server_pod_states(&ns).await;
    assert!(after.values().all(|(_, _, restarts)| *restarts == 0), "{after:?}");
    assert!(
        before
            .iter()
            .all(|(name, (uid, _, _))| after.get(name).is_some_and(|(new, _, _)| new != uid)),
        "all replaced by the roll: {before:?} -> {after:?}"
    );
    let status = cr.status.unwrap();
    assert!(
        status
            .servers
            .iter()
            .all(|s| s.version.as_deref() == Some("2.1.0") && s.joined)
    );
    // What the API server recorded: one eviction per server, by the operator.
    let requests = audit.since(mark);
    let evictions: Vec<_> = requests
        .iter()
        .filter(|r| {
            r.namespace == ns.name
                && r.resource == "pods/eviction"
                && r.verb == "create"
                && r.code == 201
                && r.user_agent.starts_with("orchestrator-operator/")
        })
        .collect();
    assert_eq!(evictions.len(), SERVERS as usize, "{}", lines(&evictions));
    // Seconds from each return of the API server (its first answer) to the operator's next
    // eviction. When a step was waiting for the StatefulSet controller to create a pod, this
    // includes the controller-manager's own recovery.
    let next_step: Vec<String> = backs
        .iter()
        .map(|back| {
            evictions
                .iter()
                .filter_map(|e| e.received)
                .filter(|received| received > back)
                .min()
                .map_or("none".into(), |received| {
                    format!("{:.1} s", (received - *back).total(jiff::Unit::Second).unwrap())
                })
        })
        .collect();
    drop(operator);
    println!(
        "OUTAGE {outage:?} down {down:?} x{times}: API back -> the roll's next eviction {next_step:?}; roll wall {:.1} s; fewest active servers {fewest} of {SERVERS}; jobs {} acknowledged, {} lost, {} started twice, {} database errors of the load generator",
        wall.as_secs_f64(),
        report["acknowledged"],
        report["lost"],
        report["outcome"]["executed_more_than_once"],
        report["database_errors"],
    );
}

#[tokio::test]
#[ignore = "runs alone: `hack/e2e.sh` runs module serial after the others, with --ignored"]
async fn a_roll_under_load_rides_through_a_control_plane_stopped_for_20_seconds() {
    ride_through("outage", Outage::ControlPlane, Duration::from_secs(20), 1).await;
}

#[tokio::test]
#[ignore = "runs alone: `hack/e2e.sh` runs module serial after the others, with --ignored"]
async fn a_roll_under_load_rides_through_two_api_server_restarts_in_a_row() {
    ride_through("apiserver", Outage::ApiServer, Duration::from_secs(10), 2).await;
}

/// The local ports of `pid`'s established TCP connections to 127.0.0.1:`port`, read from
/// `/proc` (its socket inodes, and the kernel's table of IPv4 TCP connections).
fn connections_to(pid: i32, port: u16) -> BTreeSet<u16> {
    let inodes: BTreeSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|fds| {
            fds.flatten()
                .filter_map(|fd| std::fs::read_link(fd.path()).ok())
                .filter_map(|link| {
                    let link = link.to_string_lossy().into_owned();
                    Some(link.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
                })
                .collect()
        })
        .unwrap_or_default();
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let remote = format!("0100007F:{port:04X}");
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (local, rem, state, inode) = (fields[1], fields[2], fields[3], fields[9]);
            (rem == remote && state == "01" && inodes.contains(inode))
                .then(|| u16::from_str_radix(local.rsplit(':').next()?, 16).ok())
                .flatten()
        })
        .collect()
}

/// What `pg_stat_activity` shows of the servers' connections: per server (attributed to its
/// process through `/proc`), and in all (every client session of the database).
struct Connections {
    per_server: BTreeMap<String, usize>,
    sessions: usize,
}

async fn count_connections(
    admin: &tokio_postgres::Client,
    pg: &TestPostgres,
    pids: &BTreeMap<String, i32>,
) -> Connections {
    let rows = admin
        .query(
            "SELECT client_port FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() AND client_port IS NOT NULL",
            &[],
        )
        .await
        .unwrap();
    let ports: Vec<u16> = rows.iter().map(|r| r.get::<_, i32>(0) as u16).collect();
    let per_server = pids
        .iter()
        .map(|(server, pid)| {
            let own = connections_to(*pid, pg.port);
            (server.clone(), ports.iter().filter(|p| own.contains(p)).count())
        })
        .collect();
    Connections {
        per_server,
        sessions: ports.len(),
    }
}

/// Clusters and servers of the connection test: 6 × 5 = 30.
const CLUSTERS: usize = 6;
const SERVERS_EACH: i32 = 5;

#[tokio::test]
#[ignore = "runs alone: `hack/e2e.sh` runs module serial after the others, with --ignored"]
async fn thirty_servers_of_six_clusters_fit_postgresqls_default_max_connections() {
    let ns = TestNamespace::new("thirty").await;
    // PostgreSQL's own default, 3 of them reserved for superusers.
    let pg = TestPostgres::start_with_max_connections(100);
    let mut app = db(&pg).await;
    orchestrator_contract::migrations::migrate(&mut app, orchestrator_contract::LATEST_SCHEMA, false)
        .await
        .unwrap();
    drop(app);
    ns.create_db_secret("process-db", testing_postgres::USER, &pg.password)
        .await;
    let _operator = Operator::start(&ns.name, "orchestrator-server").await;
    // Idle workers poll every 500 ms instead of 100 ms: thirty servers' polls would otherwise
    // take the two cores the heartbeats need. The pool bound is the same whatever the polling.
    let names: Vec<String> = (0..CLUSTERS).map(|i| format!("c{i}")).collect();
    for name in &names {
        let spec = ClusterSpec::new(SERVERS_EACH, &pg)
            .name(name)
            .env("IDLE_POLL_MILLISECONDS", "500");
        ns.create_cluster(&spec).await;
    }
    let clusters = ns.api::<OrchestratorCluster>();
    for name in &names {
        wait_for(
            &clusters,
            name,
            "every server joined",
            5 * MINUTE,
            |c: Option<&OrchestratorCluster>| {
                c.and_then(|c| c.status.as_ref())
                    .is_some_and(|s| s.phase == Phase::Ready && s.ready_replicas == SERVERS_EACH)
            },
        )
        .await;
    }
    let servers = CLUSTERS * SERVERS_EACH as usize;
    let pids: BTreeMap<String, i32> = names
        .iter()
        .flat_map(|name| (0..SERVERS_EACH).map(move |o| format!("{name}-{o}")))
        .map(|server| {
            let pid =
                crate::support::pods::server_pid(&ns.name, &server).unwrap_or_else(|| panic!("no process of {server}"));
            (server, pid)
        })
        .collect();
    assert_eq!(pids.len(), servers);
    let (admin, connection) = tokio_postgres::connect(&pg.superuser_url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let active: i64 = admin
        .query_one("SELECT count(*) FROM servers WHERE state = 'active'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(active, servers as i64, "all thirty joined");

    // The documented bound: DATABASE_MAX_CONNECTIONS (2) + the heartbeat's.
    const BOUND: usize = 3;
    let at_rest = count_connections(&admin, &pg, &pids).await;
    let rest_max = at_rest.per_server.values().copied().max().unwrap();
    assert!(
        at_rest.per_server.values().all(|n| (1..=BOUND).contains(n)),
        "{:?}",
        at_rest.per_server
    );

    // Under load: a load generator with a pool of one submits through the database.
    let generator = tokio::process::Command::new(crate::support::e2e::server_binary())
        .args([
            "loadgen",
            "--kind",
            "sleep",
            "--batch",
            "thirty",
            "--rate",
            "30",
            "--duration",
            "20",
        ])
        .args(["--sleep-ms", "300"])
        .envs(pg.env())
        .env("DATABASE_MAX_CONNECTIONS", "1")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut loaded_max = 0;
    let mut sessions_max = 0;
    let mut fewest_fresh = servers as i64;
    let until = Instant::now() + Duration::from_secs(20);
    while Instant::now() < until {
        let loaded = count_connections(&admin, &pg, &pids).await;
        loaded_max = loaded_max.max(loaded.per_server.values().copied().max().unwrap());
        sessions_max = sessions_max.max(loaded.sessions);
        let fresh: i64 = admin
            .query_one(
                "SELECT count(*) FROM servers WHERE state = 'active' AND heartbeat_at > now() - interval '6 seconds'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        fewest_fresh = fewest_fresh.min(fresh);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let output = generator.wait_with_output().await.unwrap();
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["lost"], 0, "{report}");
    assert_eq!(report["submit_failed"], 0, "{report}");
    assert!(
        loaded_max <= BOUND,
        "at most {BOUND} per server under load; saw {loaded_max}"
    );
    assert_eq!(
        fewest_fresh, servers as i64,
        "every server kept its heartbeat under load"
    );
    // PostgreSQL refused no session: no client ran out of slots.
    let log = std::fs::read_to_string(pg.dir().join("server.log")).unwrap();
    let refused: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("remaining connection slots") || l.contains("too many clients"))
        .collect();
    assert!(refused.is_empty(), "sessions refused:\n{}", refused.join("\n"));
    println!(
        "CONNECTIONS {servers} servers of {CLUSTERS} clusters, max_connections 100: per server at rest {}..={rest_max} ({} sessions in all), under load at most {loaded_max} ({sessions_max} sessions in all, operator and load generator included); {} jobs acknowledged, {} lost",
        at_rest.per_server.values().min().unwrap(),
        at_rest.sessions,
        report["acknowledged"],
        report["lost"],
    );
}

/// What the cluster's status said while nodes were drained: each server's `disruption` as
/// first seen, the `Degraded` messages that named a drain, and whether a step of the
/// operator's own ever started.
#[derive(Default)]
struct DrainSeen {
    disruptions: BTreeMap<String, String>,
    degraded: Vec<String>,
    own_steps: Vec<String>,
}

/// Watches cluster `prod`'s status (every write of it) into a [`DrainSeen`].
fn watch_drain_status(ns: &TestNamespace) -> (Arc<Mutex<DrainSeen>>, tokio::task::JoinHandle<()>) {
    use futures::StreamExt;
    use kube::runtime::watcher::{self, Event};
    let seen = Arc::new(Mutex::new(DrainSeen::default()));
    let out = seen.clone();
    let clusters = ns.api::<OrchestratorCluster>();
    let task = tokio::spawn(async move {
        let config = watcher::Config::default().fields("metadata.name=prod");
        let mut events = std::pin::pin!(watcher::watcher(clusters, config));
        while let Some(Ok(event)) = events.next().await {
            let (Event::Apply(cr) | Event::InitApply(cr)) = event else {
                continue;
            };
            let Some(status) = cr.status else { continue };
            let mut seen = out.lock().unwrap();
            for server in &status.servers {
                if let Some(why) = &server.disruption {
                    seen.disruptions
                        .entry(server.name.clone())
                        .or_insert_with(|| why.clone());
                }
            }
            if let Some(degraded) = status
                .conditions
                .iter()
                .find(|c| c.type_ == "Degraded" && c.status == "True")
                && degraded.message.contains("node drain")
            {
                seen.degraded.push(degraded.message.clone());
            }
            if let Some(step) = status.maintenance.as_ref().and_then(|m| m.server.clone()) {
                seen.own_steps.push(step);
            }
        }
    });
    (seen, task)
}

/// Removes what the tests that ran before left on the nodes (this runs in the serial phase,
/// one test at a time after all the others: every other `e2e-` namespace is a finished test's): their namespaces (being deleted
/// already) and, at once, their pods. A drain evicts every pod of a node, and a finished test's
/// server whose PostgreSQL is gone cannot finish its friendly shutdown before its grace period
/// ends: `kubectl drain` would time out on it.
async fn clear_finished_tests(ns: &TestNamespace) {
    use k8s_openapi::api::core::v1::Namespace;
    use kube::api::DeleteParams;
    let namespaces: kube::Api<Namespace> = kube::Api::all(ns.client.clone());
    let others: Vec<String> = namespaces
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|n| n.name_any())
        .filter(|n| n.starts_with("e2e-") && *n != ns.name)
        .collect();
    for other in &others {
        let _ = namespaces.delete(other, &DeleteParams::background()).await;
    }
    let pods: kube::Api<Pod> = kube::Api::all(ns.client.clone());
    let deadline = Instant::now() + MINUTE;
    loop {
        let left: Vec<Pod> = pods
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|p| others.contains(&p.namespace().unwrap_or_default()))
            .collect();
        if left.is_empty() {
            return;
        }
        let names: Vec<String> = left
            .iter()
            .map(|p| format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any()))
            .collect();
        assert!(
            Instant::now() < deadline,
            "pods of finished tests still there: {names:?}"
        );
        // At once, each pass: one made again before its namespace was seen terminating too.
        for pod in &left {
            let api: kube::Api<Pod> = kube::Api::namespaced(ns.client.clone(), &pod.namespace().unwrap_or_default());
            let now = DeleteParams {
                grace_period_seconds: Some(0),
                ..DeleteParams::default()
            };
            let _ = api.delete(&pod.name_any(), &now).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test]
#[ignore = "runs alone: `hack/e2e.sh` runs module serial after the others, with --ignored"]
async fn a_drain_of_each_node_in_turn_loses_nothing_and_is_explained() {
    use crate::maintenance::{Watcher, cluster};
    use crate::support::helm::kubectl;
    use crate::zones::{node_zones, wait_schedulable};

    let ns = TestNamespace::new("drain").await;
    clear_finished_tests(&ns).await;
    let pg = ns.database().await;
    let _operator = Operator::start(&ns.name, "orchestrator-server").await;
    ns.create_cluster(&cluster(6, &pg)).await;
    wait_settled(&ns, 6, Some("2.0.0")).await;
    let watcher = Watcher::start(&ns, 6);
    let (seen, status_task) = watch_drain_status(&ns);
    let nodes: Vec<String> = node_zones(&ns).await.into_keys().collect();
    assert_eq!(nodes.len(), 3, "three nodes to drain: {nodes:?}");
    // Jobs of 2 s: an evicted server's friendly shutdown lasts as long as its longest job.
    let drains = async {
        let mut evicted = BTreeMap::new();
        for node in &nodes {
            let on_node: Vec<String> = pods::list(&ns, &server_pods("prod"))
                .await
                .into_iter()
                .filter(|(_, p)| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node.as_str()))
                .map(|(name, _)| name)
                .collect();
            let started = Instant::now();
            kubectl(&[
                "drain",
                node,
                "--ignore-daemonsets",
                "--delete-emptydir-data",
                "--force",
                "--timeout=180s",
            ])
            .await;
            wait_settled(&ns, 6, Some("2.0.0")).await;
            println!("DRAIN {node}: {on_node:?} evicted and back in {:?}", started.elapsed());
            kubectl(&["uncordon", node]).await;
            wait_schedulable(&ns, node).await;
            evicted.insert(node.clone(), on_node);
        }
        evicted
    };
    let (report, evicted) = tokio::join!(load(&pg, "drain", 10, 180, 2000), drains);
    status_task.abort();
    let seen = seen.lock().unwrap();
    println!(
        "DRAIN report {report}; worst down {}; disruptions {:?}; replaced {:?}",
        watcher.worst(),
        seen.disruptions,
        watcher.replaced()
    );
    assert_eq!(report["lost"], 0, "{report}");
    assert_eq!(report["outcome"]["executed_more_than_once"], 0, "{report}");
    assert_eq!(report["outcome"]["completed"], report["acknowledged"], "{report}");
    assert!(
        watcher.worst() <= 1,
        "never two servers unavailable: {}",
        watcher.worst()
    );
    let moved: BTreeSet<&String> = evicted.values().flatten().collect();
    assert_eq!(moved.len(), 6, "every server was evicted by some drain: {evicted:?}");
    assert!(
        seen.own_steps.is_empty(),
        "the operator started no step: {:?}",
        seen.own_steps
    );
    // A server with no job running stops at once on SIGTERM, maybe before the operator looks:
    // of each node's servers, at least one (each has jobs of 2 s) is said down by the drain.
    for (node, servers) in &evicted {
        let said: Vec<&String> = servers.iter().filter_map(|s| seen.disruptions.get(s)).collect();
        assert!(
            !said.is_empty(),
            "an eviction from {node} is in the status: {:?}",
            seen.disruptions
        );
        for why in said {
            assert!(why.contains("cordoned (a node drain)"), "{why}");
        }
    }
    assert!(
        seen.degraded
            .iter()
            .any(|m| m.contains("no maintenance step starts until it is back")),
        "Degraded explains the drain: {:?}",
        seen.degraded
    );
}
