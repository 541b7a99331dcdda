//! End-to-end GitOps behaviour, with the operator installed by its chart: a cluster declared by
//! `kubectl apply` of a file; re-applying it (client-side and server-side) changes nothing;
//! hand edits of what the operator owns are reverted within seconds; an invalid spec is
//! refused at admission and the running cluster is untouched; and the Argo CD health check
//! (`docs/argocd-health.lua`) judges real status objects at every stage.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::ResourceExt;
use kube::api::DeleteParams;
use kube::runtime::watcher::{self, Event};
use orchestrator_operator::crd::OrchestratorCluster;
use serde_json::json;
use testing_postgres::TestPostgres;

use crate::support::argocd::health;
use crate::support::e2e::{MINUTE, TestNamespace, condition, patch_spec, root, wait_for, wait_settled};
use crate::support::helm::{self, kubectl};
use crate::support::pods::{pod_ready, server_pods, uids, wait_pods};
use crate::support::spec::ClusterSpec;

/// How fast a hand edit must be reverted.
const REVERT: Duration = Duration::from_secs(15);

/// What a GitOps repository holds for cluster `prod` of `replicas` servers.
fn manifest(pg: &TestPostgres, replicas: i32) -> String {
    let spec = ClusterSpec::new(replicas, pg).drain_timeout("20s").ready_timeout("60s");
    format!("# What a GitOps repository holds for this cluster.\n{}", spec.yaml())
}

fn write(ns: &TestNamespace, name: &str, text: &str) -> String {
    let dir = root().join(".local/e2e");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{}-{name}", ns.name));
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// Records every version of the cluster object the API server publishes.
fn record(ns: &TestNamespace) -> (Arc<Mutex<Vec<OrchestratorCluster>>>, tokio::task::JoinHandle<()>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let api = ns.api::<OrchestratorCluster>();
    let sink = seen.clone();
    let task = tokio::spawn(async move {
        let config = watcher::Config::default().fields("metadata.name=prod");
        let mut events = std::pin::pin!(watcher::watcher(api, config));
        while let Some(event) = events.next().await {
            if let Ok(Event::Apply(cr) | Event::InitApply(cr)) = event {
                sink.lock().unwrap().push(cr);
            }
        }
    });
    (seen, task)
}

/// Deletes `name` of kind `K` and waits until the operator has recreated it; returns how long.
async fn delete_and_wait_recreated<K>(ns: &TestNamespace, name: &str) -> Duration
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug
        + Send
        + 'static,
{
    let api = ns.api::<K>();
    let old = api.get(name).await.unwrap().uid();
    let start = Instant::now();
    api.delete(name, &DeleteParams::default()).await.unwrap();
    wait_for(&api, name, "recreated by the operator", REVERT, move |o: Option<&K>| {
        o.is_some_and(|o| o.uid() != old && o.meta().deletion_timestamp.is_none())
    })
    .await;
    start.elapsed()
}

fn sts_image(sts: &StatefulSet) -> String {
    sts.spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers[0]
        .image
        .clone()
        .unwrap_or_default()
}

#[tokio::test]
async fn reapplying_changes_nothing_hand_edits_are_reverted_invalid_specs_are_refused() {
    let ns = TestNamespace::new("gitops").await;
    let pg = ns.database().await;
    helm::install(&ns, &[]).await;
    let file = write(&ns, "prod.yaml", &manifest(&pg, 2));

    // Declared with `kubectl apply`; the health check says Progressing until every server
    // joined, then Healthy, never Degraded on the way.
    let (history, recorder) = record(&ns);
    let out = kubectl(&["apply", "-n", &ns.name, "-f", &file]).await;
    assert!(
        out.contains("orchestratorcluster.orchestrator.dev/prod created"),
        "{out}"
    );
    let settled = wait_settled(&ns, 2, None).await;
    recorder.abort();
    let history = history.lock().unwrap().clone();
    assert!(history.len() >= 2, "saw the cluster's versions: {}", history.len());
    let mut judged = Vec::new();
    for cr in history
        .iter()
        .filter(|c| c.resource_version() != settled.resource_version())
    {
        let (status, message) = health(cr);
        let phase = cr.status.as_ref().map(|s| format!("{:?}", s.phase));
        assert_eq!(
            status, "Progressing",
            "on the way to Ready ({phase:?}): {message}\n{cr:#?}"
        );
        judged.push(phase);
    }
    eprintln!("health judged Progressing for phases {judged:?}");
    let (status, message) = health(&settled);
    assert_eq!(status, "Healthy", "{message}");
    assert_eq!(message, "2 of 2 servers joined");

    // Re-applying the same file, client-side and server-side, changes nothing.
    let cr_before = ns.api::<OrchestratorCluster>().get("prod").await.unwrap();
    let sts_before = ns.api::<StatefulSet>().get("prod").await.unwrap();
    let servers_before = uids(&wait_pods(&ns, &server_pods("prod"), "2 servers", MINUTE, |p| p.len() == 2).await);
    let out = kubectl(&["apply", "-n", &ns.name, "-f", &file]).await;
    assert!(
        out.contains("orchestratorcluster.orchestrator.dev/prod unchanged"),
        "{out}"
    );
    for _ in 0..2 {
        let out = kubectl(&["apply", "--server-side", "-n", &ns.name, "-f", &file]).await;
        assert!(
            out.contains("orchestratorcluster.orchestrator.dev/prod serverside-applied"),
            "{out}"
        );
    }
    let out = kubectl(&["apply", "-n", &ns.name, "-f", &file]).await;
    assert!(out.contains("orchestratorcluster.orchestrator.dev/prod"), "{out}");
    // Longer than the operator's idle requeue (30s), so a periodic reconcile ran in between.
    tokio::time::sleep(Duration::from_secs(35)).await;
    let cr_after = ns.api::<OrchestratorCluster>().get("prod").await.unwrap();
    let sts_after = ns.api::<StatefulSet>().get("prod").await.unwrap();
    assert_eq!(
        cr_after.metadata.generation, cr_before.metadata.generation,
        "no spec change"
    );
    assert_eq!(
        sts_after.resource_version(),
        sts_before.resource_version(),
        "the StatefulSet was not written"
    );
    assert_eq!(
        uids(&wait_pods(&ns, &server_pods("prod"), "2 servers", MINUTE, |p| p.len() == 2).await),
        servers_before,
        "no server restarted"
    );

    // Hand edits of owned objects are reverted within seconds.
    let service = delete_and_wait_recreated::<Service>(&ns, "prod").await;
    let headless = delete_and_wait_recreated::<Service>(&ns, "prod-servers").await;
    let pdb = delete_and_wait_recreated::<PodDisruptionBudget>(&ns, "prod").await;
    let statefulsets = ns.api::<StatefulSet>();
    let start = Instant::now();
    kubectl(&["scale", "statefulset", "prod", "-n", &ns.name, "--replicas", "4"]).await;
    wait_for(
        &statefulsets,
        "prod",
        "replicas reverted to 2",
        REVERT,
        |s: Option<&StatefulSet>| s.and_then(|s| s.spec.as_ref()).and_then(|s| s.replicas) == Some(2),
    )
    .await;
    let replicas = start.elapsed();
    let image = sts_image(&sts_before);
    let start = Instant::now();
    kubectl(&[
        "set",
        "image",
        "statefulset/prod",
        "-n",
        &ns.name,
        "server=orchestrator-server:6.6.6",
    ])
    .await;
    let wanted = image.clone();
    wait_for(
        &statefulsets,
        "prod",
        "template reverted",
        REVERT,
        move |s: Option<&StatefulSet>| s.is_some_and(|s| sts_image(s) == wanted),
    )
    .await;
    let template = start.elapsed();
    eprintln!(
        "reverted: client Service {service:?}, headless Service {headless:?}, PDB {pdb:?}, replicas {replicas:?}, template {template:?}"
    );
    wait_pods(
        &ns,
        &server_pods("prod"),
        "the same two servers, ready",
        2 * MINUTE,
        |pods| pods.len() == 2 && pods.values().all(pod_ready) && uids(pods) == servers_before,
    )
    .await;
    let settled = wait_settled(&ns, 2, None).await;
    assert_eq!(settled.metadata.generation, cr_before.metadata.generation);

    // An invalid spec pushed by a tool is refused at admission; nothing changes.
    let bad = write(&ns, "bad.yaml", &manifest(&pg, 12));
    for args in [
        vec!["apply", "-n", &ns.name, "-f", &bad],
        vec!["apply", "--server-side", "-n", &ns.name, "-f", &bad],
    ] {
        let out = helm::run("kubectl", &args).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "`kubectl {}` was accepted", args.join(" "));
        assert!(
            stderr.contains("spec.replicas must not exceed spec.capacity.maxReplicas"),
            "refused with the rule's message: {stderr}"
        );
    }
    let cr = ns.api::<OrchestratorCluster>().get("prod").await.unwrap();
    assert_eq!(cr.metadata.generation, cr_before.metadata.generation);
    assert_eq!(cr.spec.replicas, 2);
    let sts = statefulsets.get("prod").await.unwrap();
    assert_eq!(sts.spec.as_ref().unwrap().replicas, Some(2));

    // Health of the other stages, on real objects: a spec not yet observed, a paused roll, a
    // roll in progress, and done.
    let api = ns.api::<OrchestratorCluster>();
    let patched = patch_spec(&ns, json!({"maintenance": {"paused": true}})).await;
    let (status, message) = health(&patched);
    assert_eq!(status, "Progressing", "{message}");
    assert!(message.contains("observe generation"), "{message}");
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    patch_spec(&ns, json!({"maintenance": {"restartRequestedAt": now}})).await;
    let paused = wait_for(
        &api,
        "prod",
        "roll paused",
        MINUTE,
        |c: Option<&OrchestratorCluster>| {
            c.is_some_and(|c| {
                c.status.as_ref().and_then(|s| s.observed_generation) == c.metadata.generation
                    && condition(c, "MaintenanceBlocked").is_some_and(|c| c.status == "True" && c.reason == "Paused")
            })
        },
    )
    .await
    .unwrap();
    let (status, message) = health(&paused);
    assert_eq!(status, "Suspended", "{message}");
    patch_spec(&ns, json!({"maintenance": {"paused": false}})).await;
    let rolling = wait_for(
        &api,
        "prod",
        "roll in progress",
        MINUTE,
        |c: Option<&OrchestratorCluster>| {
            c.is_some_and(|c| {
                c.status.as_ref().and_then(|s| s.observed_generation) == c.metadata.generation
                    && c.status.as_ref().is_some_and(|s| s.maintenance.is_some())
            })
        },
    )
    .await
    .unwrap();
    let (status, message) = health(&rolling);
    assert_eq!(status, "Progressing", "{message}");
    let done = wait_settled(&ns, 2, None).await;
    let (status, message) = health(&done);
    assert_eq!(status, "Healthy", "{message}");
}
