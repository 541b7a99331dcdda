//! End-to-end: `kubectl apply -f examples/` in a namespace that enforces the "restricted" Pod
//! Security Standard, with the operator installed there by its chart. The operator's and the
//! servers' pods are admitted; `kubectl get orc`, `kubectl explain` and `kubectl describe` tell
//! a person what they need; the Argo CD health check judges a cluster whose database is
//! unusable as Degraded.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Event as CoreEvent, Pod};
use kube::ResourceExt;
use kube::api::ListParams;
use orchestrator_operator::crd::{OrchestratorCluster, Phase};
use serde_json::{Value, json};
use testing_postgres::TestPostgres;

use crate::support::argocd::health;
use crate::support::e2e::{MINUTE, TestNamespace, db, root, wait_for};
use crate::support::helm::{self, kubectl};
use crate::support::pods::{pod_ready, server_pods, wait_pods};

fn words(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[tokio::test]
async fn examples_run_in_a_restricted_namespace_and_kubectl_explains_them() {
    let ns = TestNamespace::new("examples").await;
    kubectl(&[
        "label",
        "namespace",
        &ns.name,
        "pod-security.kubernetes.io/enforce=restricted",
        "pod-security.kubernetes.io/warn=restricted",
    ])
    .await;
    // The examples' servers are version 1.x, which needs schema 1.
    let pg = TestPostgres::start();
    let mut admin = db(&pg).await;
    orchestrator_contract::migrations::migrate(&mut admin, 1, false)
        .await
        .unwrap();

    // The operator's own pod is admitted under "restricted".
    helm::install(&ns, &[]).await;

    let out = helm::run("kubectl", &["apply", "-n", &ns.name, "-f", "examples/"]).await;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    );
    assert!(out.status.success(), "kubectl apply -f examples/: {stdout}{stderr}");
    for created in [
        "secret/process-db created",
        "orchestratorcluster.orchestrator.dev/minimal created",
        "secret/prod-process-db created",
        "orchestratorcluster.orchestrator.dev/prod created",
    ] {
        assert!(stdout.contains(created), "{created}: {stdout}");
    }
    assert!(!stderr.contains("Warning"), "no warnings: {stderr}");

    // Point the minimal example at this test's database, as a user edits host and login.
    let patch = json!({"spec": {"database": {"host": "127.0.0.1", "port": pg.port, "sslMode": "disable"}}});
    kubectl(&[
        "patch",
        "orc",
        "minimal",
        "-n",
        &ns.name,
        "--type",
        "merge",
        "-p",
        &patch.to_string(),
    ])
    .await;
    let login = json!({"stringData": {"username": testing_postgres::USER, "password": pg.password}});
    kubectl(&[
        "patch",
        "secret",
        "process-db",
        "-n",
        &ns.name,
        "--type",
        "merge",
        "-p",
        &login.to_string(),
    ])
    .await;

    // The three servers of the minimal example are admitted and join.
    let clusters = ns.api::<OrchestratorCluster>();
    let minimal = wait_for(
        &clusters,
        "minimal",
        "Ready with 3 servers",
        3 * MINUTE,
        |c: Option<&OrchestratorCluster>| {
            c.and_then(|c| c.status.as_ref())
                .is_some_and(|s| s.phase == Phase::Ready && s.ready_replicas == 3)
        },
    )
    .await
    .unwrap();
    let servers = wait_pods(&ns, &server_pods("minimal"), "3 server pods ready", MINUTE, |pods| {
        pods.len() == 3 && pods.values().all(pod_ready)
    })
    .await;
    assert_eq!(
        servers.keys().cloned().collect::<Vec<_>>(),
        ["minimal-0", "minimal-1", "minimal-2"]
    );
    let refused: Vec<String> = ns
        .api::<CoreEvent>()
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("FailedCreate"))
        .map(|e| e.message.unwrap_or_default())
        .collect();
    assert!(refused.is_empty(), "no pod refused by admission: {refused:?}");
    let (status, message) = health(&minimal);
    assert_eq!(
        (status.as_str(), message.as_str()),
        ("Healthy", "3 of 3 servers joined")
    );

    // The full example's database host does not resolve: blocked, with a reason a person can
    // act on; its pod template passes the "restricted" admission too (server-side dry run).
    let prod = wait_for(
        &clusters,
        "prod",
        "DatabaseReady False",
        MINUTE,
        |c: Option<&OrchestratorCluster>| {
            c.and_then(|c| c.status.as_ref()).is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "DatabaseReady" && c.status == "False")
            })
        },
    )
    .await
    .unwrap();
    let (status, message) = health(&prod);
    assert_eq!(status, "Degraded", "{message}");
    assert!(message.contains("db.example.internal"), "{message}");
    let sts = wait_for(
        &ns.api::<StatefulSet>(),
        "prod",
        "the full example's StatefulSet",
        MINUTE,
        |s: Option<&StatefulSet>| s.is_some(),
    )
    .await
    .unwrap();
    let template = sts.spec.unwrap().template;
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "prod-dry-run", "labels": template.metadata.as_ref().and_then(|m| m.labels.clone())},
        "spec": template.spec,
    });
    let out = helm::run_with_stdin(
        "kubectl",
        &["create", "--dry-run=server", "-n", &ns.name, "-f", "-"],
        &pod.to_string(),
    )
    .await;
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "the full example's server pod is admitted: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // kubectl get orc: name, servers wanted and joined, version, phase.
    let table = kubectl(&["get", "orc", "-n", &ns.name]).await;
    let lines: Vec<Vec<&str>> = table.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(
        lines[0],
        ["NAME", "DESIRED", "JOINED", "VERSION", "PHASE", "AGE"],
        "{table}"
    );
    assert_eq!(lines[1][..5], ["minimal", "3", "3", "1.0.0", "Ready"], "{table}");
    assert_eq!(lines[2][..2], ["prod", "4"], "{table}");
    assert_eq!(lines[2][3..5], ["1.0.0", "Blocked"], "{table}");
    eprintln!("{table}");
    let short = kubectl(&["get", "orchestrator", "-n", &ns.name]).await;
    assert!(
        short.contains("minimal"),
        "the category `orchestrator` lists clusters: {short}"
    );

    // kubectl explain: the documentation of every maintenance field.
    let explain = kubectl(&["explain", "orchestratorcluster.spec.maintenance"]).await;
    let crd: Value =
        serde_yaml::from_str(&std::fs::read_to_string(root().join("crds/orchestratorclusters.yaml")).unwrap()).unwrap();
    let maintenance = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["maintenance"]
        ["properties"];
    let fields = maintenance.as_object().unwrap();
    assert!(fields.contains_key("restartRequestedAt") && fields.contains_key("drainTimeout"));
    for (field, schema) in fields {
        let description = schema["description"].as_str().unwrap_or_default();
        assert!(!description.is_empty(), "spec.maintenance.{field} is documented");
        assert!(explain.contains(field.as_str()), "explain lists {field}:\n{explain}");
        let start: String = words(description).chars().take(40).collect();
        assert!(
            words(&explain).contains(&start),
            "explain shows the doc of {field} ({start:?}):\n{explain}"
        );
    }

    // kubectl describe: conditions and Events a person can act on.
    let describe = kubectl(&["describe", "orc", "prod", "-n", &ns.name]).await;
    for expected in [
        "Conditions:",
        "DatabaseReady",
        "CapacityBlocked",
        "Events:",
        "db.example.internal",
    ] {
        assert!(describe.contains(expected), "describe shows {expected}:\n{describe}");
    }
    assert!(
        describe.lines().any(|l| l.trim_start().starts_with("Warning")),
        "describe shows a Warning Event:\n{describe}"
    );
    let describe = kubectl(&["describe", "orc", "minimal", "-n", &ns.name]).await;
    for expected in ["AllServersJoined", "3 of 3 servers joined", "Events:"] {
        assert!(describe.contains(expected), "describe shows {expected}:\n{describe}");
    }
    eprintln!("{describe}");
    let pods: Vec<String> = ns
        .api::<Pod>()
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|p| p.name_any())
        .collect();
    eprintln!("pods admitted under restricted: {pods:?}");
}
