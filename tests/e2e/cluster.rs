//! End-to-end on the local cluster (real kube-apiserver, controller-manager and scheduler;
//! the node agent runs pods as processes): the CRD's validation, the owned objects and their
//! pods, the PodDisruptionBudget through the Eviction API, garbage collection, and the
//! node agent's process lifecycle.

use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{DeleteParams, EvictParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher::{self, Event};
use kube::{Api, ResourceExt};
use orchestrator_operator::crd::OrchestratorCluster;
use serde_json::{Value, json};
use testing_postgres::TestPostgres;

use crate::support::e2e::{MINUTE, Operator, TestNamespace, client_without_retry, wait_for, wait_ready};
use crate::support::invalid_specs::{Check, cases, merge, valid_base};
use crate::support::pods::pod_ready;
use crate::support::spec::ClusterSpec;

/// Creates cluster `prod` of `replicas` servers (5 s drains) and waits until it is Ready.
async fn ready_cluster(ns: &TestNamespace, pg: &TestPostgres, replicas: i32) -> OrchestratorCluster {
    ns.create_cluster(&ClusterSpec::new(replicas, pg).drain_timeout("5s"))
        .await;
    wait_ready(ns, replicas).await
}

/// Dotted field path as the API server writes it: `/spec/windows/0/start` → `spec.windows[0].start`.
fn dotted(pointer: &str) -> String {
    let mut out = String::new();
    for part in pointer.trim_start_matches('/').split('/') {
        if part.chars().all(|c| c.is_ascii_digit()) {
            out.push_str(&format!("[{part}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(part);
        }
    }
    out
}

#[tokio::test]
async fn api_server_refuses_every_invalid_spec_with_its_message() {
    let ns = TestNamespace::new("crd").await;
    let api = ns.api::<OrchestratorCluster>();
    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    for case in cases() {
        let mut object = valid_base();
        merge(&mut object, &case.patch);
        let typed: Result<OrchestratorCluster, _> = serde_json::from_value(object.clone());
        // Objects the Rust type cannot even hold go through the dynamic API.
        let result = match typed {
            Ok(typed) => api.create(&dry_run, &typed).await.map(|_| ()),
            Err(_) => {
                let ar = kube::core::ApiResource::erase::<OrchestratorCluster>(&());
                let dynamic: Api<kube::api::DynamicObject> = Api::namespaced_with(ns.client.clone(), &ns.name, &ar);
                dynamic
                    .create(&dry_run, &serde_json::from_value(object).unwrap())
                    .await
                    .map(|_| ())
            }
        };
        let Err(kube::Error::Api(status)) = result else {
            panic!("{}: accepted by the API server", case.name)
        };
        assert_eq!(status.code, 422, "{}: {}", case.name, status.message);
        let expected = match case.check {
            Check::Schema { path, .. } => dotted(path),
            Check::Cel { message } => message.to_string(),
        };
        assert!(
            status.message.contains(&expected),
            "{}: message {:?} lacks {expected:?}",
            case.name,
            status.message
        );
    }
    let minimal: OrchestratorCluster = serde_json::from_value(valid_base()).unwrap();
    api.create(&dry_run, &minimal)
        .await
        .expect("the valid base object is accepted");
}

/// The transition rule on the real API server: the database of a cluster whose status counts
/// servers cannot move; scaled to 0 with no server left, it can. No operator runs: the status
/// is written by the test, as the operator would.
#[tokio::test]
async fn api_server_refuses_moving_the_database_of_a_cluster_with_servers() {
    const MOVE: &str = "spec.database.host and spec.database.name cannot change while the cluster has servers";
    let ns = TestNamespace::new("move").await;
    let api = ns.api::<OrchestratorCluster>();
    let object: OrchestratorCluster = serde_json::from_value(valid_base()).unwrap();
    api.create(&PostParams::default(), &object).await.unwrap();
    let status = |servers: i32| Patch::Merge(json!({"status": {"replicas": servers}}));
    api.patch_status("table", &PatchParams::default(), &status(3))
        .await
        .unwrap();
    let spec =
        |replicas: i32, host: &str| Patch::Merge(json!({"spec": {"replicas": replicas, "database": {"host": host}}}));
    let refused = |result: Result<OrchestratorCluster, kube::Error>, what: &str| match result {
        Err(kube::Error::Api(status)) => assert!(
            status.code == 422 && status.message.contains(MOVE),
            "{what}: {}",
            status.message
        ),
        Ok(_) => panic!("{what}: accepted"),
        Err(other) => panic!("{what}: {other}"),
    };
    let params = PatchParams::default();
    refused(
        api.patch("table", &params, &spec(3, "db2.example.internal")).await,
        "a move with 3 servers",
    );
    refused(
        api.patch("table", &params, &spec(0, "db2.example.internal")).await,
        "a move in the same write as the scale to 0",
    );
    api.patch("table", &params, &spec(0, "db.example.internal"))
        .await
        .expect("the scale to 0 alone is accepted");
    api.patch_status("table", &params, &status(0)).await.unwrap();
    let moved = api
        .patch("table", &params, &spec(0, "db2.example.internal"))
        .await
        .expect("with no server left, the database may move");
    assert_eq!(moved.spec.database.host, "db2.example.internal");
}

#[tokio::test]
async fn operator_creates_owned_objects_and_the_pods_become_ready() {
    let ns = TestNamespace::new("owned").await;
    let pg = ns.database().await;
    let _operator = Operator::start(&ns.name, "orchestrator-server").await;
    let cr = ready_cluster(&ns, &pg, 2).await;
    let uid = cr.uid().unwrap();
    let owned_by_cluster = |refs: Option<&Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference>>| {
        refs.is_some_and(|r| r.iter().any(|r| r.uid == uid && r.controller == Some(true)))
    };
    let sts = ns.api::<StatefulSet>().get("prod").await.unwrap();
    assert!(owned_by_cluster(sts.metadata.owner_references.as_ref()));
    assert_eq!(
        sts.spec
            .as_ref()
            .unwrap()
            .update_strategy
            .as_ref()
            .unwrap()
            .type_
            .as_deref(),
        Some("OnDelete")
    );
    for service in ["prod", "prod-servers"] {
        let svc = ns.api::<Service>().get(service).await.unwrap();
        assert!(owned_by_cluster(svc.metadata.owner_references.as_ref()), "{service}");
    }
    let pdb = ns.api::<PodDisruptionBudget>().get("prod").await.unwrap();
    assert!(owned_by_cluster(pdb.metadata.owner_references.as_ref()));
    let cm = ns.api::<ConfigMap>().get("prod-config").await.unwrap();
    assert_eq!(cm.data.unwrap()["DATABASE_HOST"], "127.0.0.1");
    let pods = ns.api::<Pod>().list(&Default::default()).await.unwrap();
    assert_eq!(pods.items.len(), 2);
    for pod in pods.items {
        let node = pod.spec.as_ref().unwrap().node_name.clone().unwrap_or_default();
        assert!(
            node.starts_with("orc-agent-"),
            "scheduled by kube-scheduler onto a node agent's Node: {node}"
        );
        assert!(pod_ready(&pod), "{} ready", pod.name_any());
        let ip = pod.status.as_ref().unwrap().pod_ip.clone().unwrap();
        assert!(ip.starts_with("127."), "{ip}");
        let body = reqwest::get(format!("http://{ip}:8080/readyz")).await.unwrap();
        assert!(body.status().is_success(), "the server answers on its pod IP");
    }
}

#[tokio::test]
async fn pdb_allows_one_eviction_and_refuses_the_second_with_429() {
    let ns = TestNamespace::new("pdb").await;
    let pg = ns.database().await;
    let _operator = Operator::start(&ns.name, "orchestrator-server").await;
    ready_cluster(&ns, &pg, 3).await;
    let pdbs = ns.api::<PodDisruptionBudget>();
    wait_for(
        &pdbs,
        "prod",
        "disruptionsAllowed = 1",
        MINUTE,
        |p: Option<&PodDisruptionBudget>| {
            p.and_then(|p| p.status.as_ref())
                .is_some_and(|s| s.disruptions_allowed == 1 && s.current_healthy == 3)
        },
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(client_without_retry().await, &ns.name);
    pods.evict("prod-0", &EvictParams::default())
        .await
        .expect("the first eviction is allowed");
    let second = pods.evict("prod-1", &EvictParams::default()).await;
    match second {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 429, "{}", status.message),
        other => panic!("the second eviction was not refused: {other:?}"),
    }
    let pod = pods.get("prod-1").await.unwrap();
    assert!(pod.metadata.deletion_timestamp.is_none(), "prod-1 untouched");
}

#[tokio::test]
async fn deleting_the_cluster_garbage_collects_what_it_owned() {
    let ns = TestNamespace::new("gc").await;
    let pg = ns.database().await;
    let _operator = Operator::start(&ns.name, "orchestrator-server").await;
    let cr = ready_cluster(&ns, &pg, 1).await;
    ns.api::<OrchestratorCluster>()
        .delete("prod", &DeleteParams::default())
        .await
        .unwrap();
    wait_for(
        &ns.api::<StatefulSet>(),
        "prod",
        "statefulset gc",
        MINUTE,
        |o: Option<&StatefulSet>| o.is_none(),
    )
    .await;
    for name in ["prod", "prod-servers"] {
        wait_for(
            &ns.api::<Service>(),
            name,
            "service gc",
            MINUTE,
            |o: Option<&Service>| o.is_none(),
        )
        .await;
    }
    wait_for(
        &ns.api::<PodDisruptionBudget>(),
        "prod",
        "pdb gc",
        MINUTE,
        |o: Option<&PodDisruptionBudget>| o.is_none(),
    )
    .await;
    wait_for(
        &ns.api::<ConfigMap>(),
        "prod-config",
        "configmap gc",
        MINUTE,
        |o: Option<&ConfigMap>| o.is_none(),
    )
    .await;
    wait_for(&ns.api::<Pod>(), "prod-0", "pod gc", MINUTE, |o: Option<&Pod>| {
        o.is_none()
    })
    .await;
    let left = ns.api::<OrchestratorCluster>().get_opt(&cr.name_any()).await.unwrap();
    assert!(left.is_none(), "the cluster resource itself is gone");
}

/// A pod of the test server `name`, serving on its pod IP, with grace period `grace`.
pub(crate) fn test_pod(name: &str, grace: i64, args: &[&str]) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {
            "terminationGracePeriodSeconds": grace,
            "containers": [{
                "name": "c", "image": "orc-test-server:dev", "args": args,
                "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                        {"name": "HTTP_PORT", "value": "8080"}],
                "ports": [{"name": "http", "containerPort": 8080}],
                "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 1}
            }]
        }
    })
}

/// Deletes `name` and returns how long until it was gone and the last container state seen.
async fn delete_and_watch(ns: &TestNamespace, name: &str) -> (Duration, Value) {
    let pods = ns.api::<Pod>();
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = std::pin::pin!(watcher::watcher(pods.clone(), config));
    // The initial listing, so that no event after the delete is missed.
    while let Some(Ok(event)) = events.next().await {
        if matches!(event, Event::InitDone) {
            break;
        }
    }
    let started = Instant::now();
    pods.delete(name, &DeleteParams::default()).await.unwrap();
    let mut last_state = Value::Null;
    let deadline = tokio::time::sleep(MINUTE);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut deadline => panic!("{name} was not deleted within a minute"),
            event = events.next() => match event {
                Some(Ok(Event::Apply(pod))) => {
                    let statuses = pod.status.and_then(|s| s.container_statuses).unwrap_or_default();
                    if let Some(state) = statuses.first().and_then(|c| c.state.clone()) {
                        last_state = serde_json::to_value(state).unwrap();
                    }
                }
                Some(Ok(Event::Delete(_))) => return (started.elapsed(), last_state),
                _ => {}
            }
        }
    }
}

#[tokio::test]
async fn pod_deletion_sends_sigterm_then_sigkill_after_the_grace_period() {
    let ns = TestNamespace::new("signals").await;
    let pods = ns.api::<Pod>();
    ns.create::<Pod>(test_pod("stubborn", 3, &["--ignore-sigterm"])).await;
    ns.create::<Pod>(test_pod("polite", 30, &["--drain-seconds", "1"]))
        .await;
    for name in ["stubborn", "polite"] {
        wait_for(&pods, name, "Ready", MINUTE, |p: Option<&Pod>| p.is_some_and(pod_ready)).await;
    }
    let (elapsed, state) = delete_and_watch(&ns, "stubborn").await;
    assert!(
        elapsed >= Duration::from_secs(3),
        "SIGKILL only after the 3s grace period, took {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_secs(8),
        "SIGKILL soon after the grace period, took {elapsed:?}"
    );
    assert_eq!(state["terminated"]["exitCode"], 137, "{state}");
    assert_eq!(state["terminated"]["signal"], 9, "{state}");
    let log = ns.pod_log("stubborn", "c");
    assert_eq!(log.matches("received SIGTERM").count(), 1, "{log}");

    let (elapsed, state) = delete_and_watch(&ns, "polite").await;
    assert!(
        elapsed >= Duration::from_secs(1) && elapsed < Duration::from_secs(6),
        "took {elapsed:?}"
    );
    assert_eq!(state["terminated"]["exitCode"], 0, "{state}");
    assert!(ns.pod_log("polite", "c").contains("exiting after SIGTERM"));
}

fn job(name: &str, exit_code: i32) -> Value {
    json!({
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
        "spec": {"backoffLimit": 0, "template": {"spec": {"restartPolicy": "Never", "containers": [{
            "name": "c", "image": "orc-test-server:dev", "args": ["--exit-with", exit_code.to_string()]}]}}}
    })
}

fn job_condition(job: &Job, type_: &str) -> bool {
    job.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == type_ && c.status == "True"))
}

#[tokio::test]
async fn jobs_complete_or_fail_for_real_and_unknown_images_are_refused() {
    let ns = TestNamespace::new("jobs").await;
    ns.create::<Job>(job("succeeds", 0)).await;
    ns.create::<Job>(job("fails", 3)).await;
    ns.create::<Pod>(
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "unknown-image"},
        "spec": {"containers": [{"name": "c", "image": "nginx:1.27"}]}}),
    )
    .await;
    let jobs = ns.api::<Job>();
    wait_for(&jobs, "succeeds", "Complete", MINUTE, |j: Option<&Job>| {
        j.is_some_and(|j| job_condition(j, "Complete"))
    })
    .await;
    wait_for(&jobs, "fails", "Failed", MINUTE, |j: Option<&Job>| {
        j.is_some_and(|j| job_condition(j, "Failed"))
    })
    .await;
    let pod = wait_for(
        &ns.api::<Pod>(),
        "unknown-image",
        "ErrImagePull",
        MINUTE,
        |p: Option<&Pod>| {
            p.and_then(|p| p.status.as_ref())
                .and_then(|s| s.container_statuses.as_ref())
                .and_then(|c| c.first())
                .and_then(|c| c.state.as_ref())
                .and_then(|s| s.waiting.as_ref())
                .is_some_and(|w| w.reason.as_deref() == Some("ErrImagePull"))
        },
    )
    .await
    .unwrap();
    let status = pod.status.unwrap();
    assert_eq!(status.phase.as_deref(), Some("Pending"));
    let waiting = status.container_statuses.unwrap()[0]
        .state
        .clone()
        .unwrap()
        .waiting
        .unwrap();
    assert!(waiting.message.unwrap().contains("not in the node agent's image map"));
}

#[tokio::test]
async fn an_eviction_with_a_stale_uid_never_evicts_the_pod_now_under_that_name() {
    let ns = TestNamespace::new("evict-uid").await;
    let pods = ns.api::<Pod>();
    let pod: Pod = ns.create(test_pod("server", 5, &["serve"])).await;
    let uid = pod.uid();
    let client = client_without_retry().await;
    // What the roll does when its step recorded a pod that has since been replaced.
    let stale = orchestrator_operator::evict(&client, &ns.name, "server", Some("an-old-uid".into()))
        .await
        .unwrap();
    assert!(stale, "a uid mismatch reads as already replaced");
    let current = pods.get("server").await.unwrap();
    assert!(
        current.metadata.deletion_timestamp.is_none(),
        "the uid precondition protects the pod now under that name"
    );
    orchestrator_operator::evict(&client, &ns.name, "server", uid)
        .await
        .unwrap();
    let evicted = pods.get_opt("server").await.unwrap();
    assert!(
        evicted.is_none_or(|p| p.metadata.deletion_timestamp.is_some()),
        "the pod it was meant for is evicted"
    );
}
