//! Nodes and zones on the local cluster's three node agents (`orc-agent-0..2` in zones
//! `z1..z3`): the servers spread across the zones by default, a roll visits the zones in turn
//! and never empties one, and `kubectl logs` reaches every pod through the API server (a
//! server, a finished schema Job's pod). The drain of each node in turn under load runs alone
//! (`serial::a_drain_of_each_node_in_turn_loses_nothing_and_is_explained`): it disturbs every
//! pod of the cluster.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::ListParams;
use kube::{Api, ResourceExt};
use serde_json::json;

use crate::maintenance::{Watcher, all_joined_on, cluster};
use crate::support::e2e::{MINUTE, Operator, TestNamespace, load, patch_spec, wait_for, wait_settled};
use crate::support::helm::kubectl;
use crate::support::pods::{self, server_pods};

/// The zone label of Nodes.
pub(crate) const ZONE: &str = "topology.kubernetes.io/zone";

/// Each Node's zone, by Node name.
pub(crate) async fn node_zones(ns: &TestNamespace) -> BTreeMap<String, String> {
    Api::<Node>::all(ns.client.clone())
        .list(&ListParams::default().labels("node.orchestrator.dev/agent"))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|n| Some((n.name_any(), n.labels().get(ZONE)?.clone())))
        .collect()
}

/// The zone of each server pod of cluster `prod`, by pod name.
pub(crate) async fn server_zones(ns: &TestNamespace) -> BTreeMap<String, String> {
    let zones = node_zones(ns).await;
    pods::list(ns, &server_pods("prod"))
        .await
        .into_iter()
        .map(|(name, pod)| {
            let node = pod.spec.and_then(|s| s.node_name).unwrap_or_default();
            (
                name,
                zones.get(&node).cloned().unwrap_or_else(|| format!("no zone ({node})")),
            )
        })
        .collect()
}

/// How many servers each zone holds.
fn per_zone(zones: &BTreeMap<String, String>) -> BTreeMap<String, usize> {
    let mut count = BTreeMap::new();
    for zone in zones.values() {
        *count.entry(zone.clone()).or_default() += 1;
    }
    count
}

#[tokio::test]
async fn six_servers_spread_over_three_zones_and_a_roll_visits_them_in_turn() {
    let ns = TestNamespace::new("zones").await;
    let pg = ns.database().await;
    let _operator = Operator::start(&ns.name, "orchestrator-server").await;
    assert_eq!(node_zones(&ns).await.len(), 3, "the local cluster has three zones");
    ns.create_cluster(&cluster(6, &pg)).await;
    let cr = wait_settled(&ns, 6, Some("2.0.0")).await;
    let zones = server_zones(&ns).await;
    let counts = per_zone(&zones);
    assert_eq!(
        counts.values().copied().collect::<Vec<_>>(),
        vec![2, 2, 2],
        "two servers in each zone: {zones:?}"
    );
    let status = cr.status.unwrap();
    for server in &status.servers {
        assert_eq!(
            server.zone.as_ref(),
            zones.get(&server.name),
            "status.servers says each zone"
        );
        assert!(server.node.is_some() && server.disruption.is_none(), "{server:?}");
    }

    // `kubectl logs` of a server, through the API server and the node agent's kubelet endpoint.
    let log = kubectl(&["-n", &ns.name, "logs", "prod-0", "--tail", "50"]).await;
    assert!(!log.is_empty(), "kubectl logs of a server shows its log");
    let last = kubectl(&["-n", &ns.name, "logs", "prod-0", "--tail", "1"]).await;
    assert_eq!(last.lines().count(), 1, "--tail 1 is one line: {last:?}");
    assert!(log.contains(last.trim_end()), "the last line is in the log");
    // `kubectl orc status` names each server's node and zone.
    let table = crate::plugin::orc_ok(&ns, &["status", "prod"]).await;
    for server in &status.servers {
        let row = table
            .lines()
            .find(|l| l.starts_with(&format!("{} ", server.name)))
            .unwrap_or_else(|| panic!("{} in\n{table}", server.name));
        let node = server.node.as_deref().unwrap_or_default();
        assert!(row.contains(node) && row.ends_with(&zones[&server.name]), "{row}");
    }

    let watcher = Watcher::start(&ns, 6);
    let roll = async {
        patch_spec(&ns, json!({"version": "2.1.0"})).await;
        wait_settled(&ns, 6, Some("2.1.0")).await
    };
    let (report, cr) = tokio::join!(load(&pg, "zones", 20, 30, 300), roll);
    assert_eq!(report["lost"], 0, "{report}");
    assert_eq!(report["outcome"]["executed_more_than_once"], 0, "{report}");
    assert!(
        watcher.worst() <= 1,
        "never two servers down, so never a zone emptied: {}",
        watcher.worst()
    );
    all_joined_on(cr.status.as_ref().unwrap(), "2.1.0");
    let replaced = watcher.replaced();
    let visited: Vec<&str> = replaced.iter().map(|name| zones[name].as_str()).collect();
    println!("replacement order {replaced:?}, zones {visited:?}");
    assert_eq!(replaced.len(), 6, "each server replaced once: {replaced:?}");
    assert!(
        visited.windows(2).all(|pair| pair[0] != pair[1]),
        "consecutive steps in different zones: {visited:?}"
    );
    let after = per_zone(&server_zones(&ns).await);
    assert_eq!(after, counts, "each replacement went back to its zone");

    // The version change ran its schema check: its finished pod's log, by `kubectl logs`.
    let jobs = pods::list(&ns, "app.kubernetes.io/name=orchestrator-schema").await;
    let (job_pod, _) = jobs
        .iter()
        .find(|(_, pod)| pod_phase(pod) == "Succeeded")
        .unwrap_or_else(|| panic!("a finished schema Job pod: {:?}", jobs.keys()));
    let log = kubectl(&["-n", &ns.name, "logs", job_pod]).await;
    assert!(
        log.contains("compatible: database schema"),
        "the schema check's log: {log}"
    );
}

fn pod_phase(pod: &Pod) -> &str {
    pod.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or_default()
}

/// Waits until Node `node` is schedulable again and Ready (after `kubectl uncordon`).
pub(crate) async fn wait_schedulable(ns: &TestNamespace, node: &str) {
    wait_for(
        &Api::<Node>::all(ns.client.clone()),
        node,
        "schedulable",
        MINUTE,
        |n: Option<&Node>| n.is_some_and(|n| n.spec.as_ref().and_then(|s| s.unschedulable) != Some(true)),
    )
    .await
    .unwrap();
}

/// A restart count of at least one on pod `name`.
fn restarted(pod: Option<&Pod>) -> bool {
    pod.and_then(|p| p.status.as_ref())
        .and_then(|s| s.container_statuses.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.restart_count >= 1))
}

#[tokio::test]
async fn kubectl_logs_follows_tails_and_shows_the_previous_run() {
    use crate::support::helm::run;
    use tokio::io::AsyncBufReadExt;
    let ns = TestNamespace::new("logs").await;
    let pods = ns.api::<Pod>();
    // A container that exits at once and is restarted: `--previous` is the run that ended.
    ns.create::<Pod>(
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "crasher"},
        "spec": {"containers": [{"name": "c", "image": "orc-test-server:dev", "args": ["--exit-with", "3"]}]}}),
    )
    .await;
    ns.create::<Pod>(crate::cluster::test_pod("talker", 30, &["--drain-seconds", "1"]))
        .await;
    wait_for(&pods, "talker", "Ready", MINUTE, |p: Option<&Pod>| {
        p.is_some_and(crate::support::pods::pod_ready)
    })
    .await;
    let before = run("kubectl", &["-n", &ns.name, "logs", "talker", "--previous"]).await;
    assert!(!before.status.success(), "no previous run yet");
    assert!(
        String::from_utf8_lossy(&before.stderr)
            .contains("previous terminated container \"c\" in pod \"talker\" not found"),
        "{}",
        String::from_utf8_lossy(&before.stderr)
    );
    wait_for(&pods, "crasher", "restarted", MINUTE, restarted).await;
    let previous = kubectl(&["-n", &ns.name, "logs", "crasher", "--previous"]).await;
    assert_eq!(previous, "exiting with 3\n");
    let tail = kubectl(&["-n", &ns.name, "logs", "crasher", "--tail", "1"]).await;
    assert_eq!(tail, "exiting with 3\n");
    // `-f` follows the running container until it exits (here: deleted, SIGTERM, 1 s drain):
    // its first line is read before the delete, the SIGTERM lines come while it follows.
    let mut follow = tokio::process::Command::new(crate::support::helm::tools().await.join("kubectl"))
        .args(["-n", &ns.name, "logs", "-f", "talker"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(follow.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(MINUTE, lines.next_line()).await.unwrap().unwrap();
    assert!(first.is_some_and(|l| l.starts_with("serving on")), "the log so far");
    pods.delete("talker", &Default::default()).await.unwrap();
    let mut rest = Vec::new();
    let ended = tokio::time::timeout(MINUTE, async {
        while let Ok(Some(line)) = lines.next_line().await {
            rest.push(line);
        }
    })
    .await;
    assert!(ended.is_ok(), "kubectl logs -f ends when the container exits: {rest:?}");
    assert_eq!(
        rest,
        ["received SIGTERM", "exiting after SIGTERM"],
        "the lines written while followed"
    );
    assert!(follow.wait().await.unwrap().success());
}
