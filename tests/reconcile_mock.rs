//! The reconcile against a mock API server (the kube-rs tower-test pattern): each scenario
//! serves a set of existing objects and records every request, then asserts on the method,
//! path, field manager and body of each.

#[path = "support/spec.rs"]
#[allow(dead_code)] // the settings of the e2e suites
mod spec;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use k8s_openapi::api::apps::v1::StatefulSetStatus;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::client::Body;
use kube::{Client, Resource};
use orchestrator_operator::caches::Scope;
use orchestrator_operator::crd::OrchestratorCluster;
use orchestrator_operator::vocabulary::Reason;
use orchestrator_operator::{
    BuildSettings, Child, Context, DatabaseState, Metrics, Observed, Watched, dry_run, reconcile,
};
use serde_json::{Value, json};
use spec::ClusterSpec;

const NS: &str = "automation";

/// One request the operator sent.
#[derive(Debug)]
struct Recorded {
    method: String,
    path: String,
    query: String,
    content_type: String,
    body: Value,
}

/// The scenarios: what exists before the reconcile.
enum Scenario {
    /// Nothing but the cluster resource.
    Fresh,
    /// Every owned object exists exactly as applied and the status is current.
    InSync,
    /// The cluster resource is being deleted.
    Deleting,
    /// The stored object cannot be read as an `OrchestratorCluster`.
    Malformed,
    /// The operator may not write ConfigMaps (a chart without that permission).
    Forbidden,
}

/// Cluster `prod` (version 1.0.0, a database host no one answers at) as the API server holds
/// it: namespaced, with a uid, a generation and a resource version.
fn cluster() -> OrchestratorCluster {
    let mut cr = ClusterSpec::on_host(3, "db.internal").version("1.0.0").build();
    let meta = cr.meta_mut();
    meta.namespace = Some(NS.into());
    meta.uid = Some("5f1c7a52-0000-4000-8000-000000000002".into());
    meta.generation = Some(2);
    meta.resource_version = Some("100".into());
    cr
}

fn child_path(child: &Child) -> String {
    let name = child.name();
    match child {
        Child::ConfigMap(_) => format!("/api/v1/namespaces/{NS}/configmaps/{name}"),
        Child::Service(_) => format!("/api/v1/namespaces/{NS}/services/{name}"),
        Child::PodDisruptionBudget(_) => {
            format!("/apis/policy/v1/namespaces/{NS}/poddisruptionbudgets/{name}")
        }
        Child::StatefulSet(_) => format!("/apis/apps/v1/namespaces/{NS}/statefulsets/{name}"),
        Child::Job(_) => format!("/apis/batch/v1/namespaces/{NS}/jobs/{name}"),
    }
}

/// The owned objects as the API server would hold them after the first reconcile, with all
/// three servers ready; and the cluster with the status that state produces.
fn in_sync_world(mut cr: OrchestratorCluster) -> (OrchestratorCluster, BTreeMap<String, Value>) {
    let now = Time(Timestamp::from_second(1_800_000_000).unwrap());
    // What the preflight reports when the credentials Secret does not exist (the fake has none).
    let database = DatabaseState::NotReady {
        reason: Reason::SecretMissing,
        message: format!("secret process-db does not exist in namespace {NS}"),
    };
    let first = dry_run(
        &cr,
        &Observed {
            database: database.clone(),
            ..Observed::default()
        },
        &BuildSettings::default(),
        &now,
    )
    .unwrap();
    let mut observed = Observed {
        database,
        ..Observed::default()
    };
    let mut objects = BTreeMap::new();
    for write in first.writes {
        let path = child_path(&write.child);
        match write.child {
            Child::ConfigMap(o) => {
                objects.insert(path, serde_json::to_value(&o).unwrap());
                observed.configmap = Some(o);
            }
            Child::Service(o) => {
                objects.insert(path.clone(), serde_json::to_value(&o).unwrap());
                if path.ends_with("-servers") {
                    observed.headless_service = Some(o);
                } else {
                    observed.client_service = Some(o);
                }
            }
            Child::PodDisruptionBudget(o) => {
                objects.insert(path, serde_json::to_value(&o).unwrap());
                observed.pdb = Some(o);
            }
            Child::StatefulSet(mut o) => {
                o.spec.as_mut().unwrap().replicas = Some(3);
                o.metadata.generation = Some(1);
                o.status = Some(StatefulSetStatus {
                    observed_generation: Some(1),
                    replicas: 3,
                    ready_replicas: Some(3),
                    updated_replicas: Some(3),
                    ..StatefulSetStatus::default()
                });
                objects.insert(path, serde_json::to_value(&o).unwrap());
                observed.statefulset = Some(o);
            }
            Child::Job(_) => panic!("a new cluster runs no schema Job"),
        }
    }
    cr.status = Some(dry_run(&cr, &observed, &BuildSettings::default(), &now).unwrap().status);
    (cr, objects)
}

fn respond(status: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(body).unwrap()))
        .unwrap()
}

fn not_found(path: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": format!("{path} not found"), "reason": "NotFound", "code": 404})
}

/// Runs one reconcile of `object` against a fake API server holding it and `objects`.
async fn run(object: Value, objects: BTreeMap<String, Value>) -> Vec<Recorded> {
    run_with(object, objects, Faults::default()).await
}

/// What the fake API server does besides answering.
#[derive(Default)]
struct Faults {
    /// Answer 403 to ConfigMap writes (the reconcile then fails).
    forbid: bool,
    /// Answer 409 to status writes that carry a resourceVersion (the object changed since).
    status_conflict: bool,
    /// The server pods it lists.
    pods: Vec<Value>,
}

/// [`run`], with `faults`.
async fn run_with(object: Value, mut objects: BTreeMap<String, Value>, faults: Faults) -> Vec<Recorded> {
    let Faults {
        forbid,
        status_conflict,
        pods,
    } = faults;
    let cluster_path = format!(
        "/apis/orchestrator.dev/v1alpha1/namespaces/{NS}/orchestratorclusters/{}",
        object["metadata"]["name"].as_str().unwrap()
    );
    objects.insert(cluster_path, object.clone());
    // The caches as the watches filled them: the same objects, and the pods.
    let (scope, writers) = Scope::new(None);
    let cached: Vec<Value> = objects.values().chain(&pods).cloned().collect();
    writers.fill(&cached);
    // The resource as the watch delivers it: parsed if it can be, its metadata kept if not.
    let object: Watched = serde_json::from_value(object).unwrap();
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let server = tokio::spawn(async move {
        let mut recorded = Vec::new();
        while let Some((request, send)) = handle.next_request().await {
            let (parts, body) = request.into_parts();
            let bytes = body.collect_bytes().await.unwrap();
            let path = parts.uri.path().to_string();
            let method = parts.method.to_string();
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let response = match (method.as_str(), objects.get(&path)) {
                ("PATCH", _) if forbid && path.contains("/configmaps/") => respond(
                    StatusCode::FORBIDDEN,
                    &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                            "message": "configmaps is forbidden", "reason": "Forbidden", "code": 403}),
                ),
                ("GET", _) if path == format!("/api/v1/namespaces/{NS}/pods") => respond(
                    StatusCode::OK,
                    &json!({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": pods}),
                ),
                ("PATCH", _)
                    if status_conflict
                        && path.ends_with("/status")
                        && !body["metadata"]["resourceVersion"].is_null() =>
                {
                    respond(
                        StatusCode::CONFLICT,
                        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                "message": "the object has been modified", "reason": "Conflict", "code": 409}),
                    )
                }
                ("GET", Some(object)) => respond(StatusCode::OK, object),
                ("GET", None) => respond(StatusCode::NOT_FOUND, &not_found(&path)),
                ("POST", _) => respond(StatusCode::CREATED, &body),
                _ => match path.strip_suffix("/status").and_then(|main| objects.get(main)) {
                    // A status apply answers with the whole resource and the new status.
                    Some(resource) => {
                        let mut answer = resource.clone();
                        answer["status"] = body["status"].clone();
                        respond(StatusCode::OK, &answer)
                    }
                    None => respond(StatusCode::OK, &body),
                },
            };
            send.send_response(response);
            recorded.push(Recorded {
                method,
                path,
                query: parts.uri.query().unwrap_or_default().to_string(),
                content_type: parts
                    .headers
                    .get("content-type")
                    .map(|v| v.to_str().unwrap().to_string())
                    .unwrap_or_default(),
                body,
            });
        }
        recorded
    });
    let client = Client::new(service, NS);
    let ctx = Arc::new(Context::new(
        client,
        Arc::new(Metrics::default()),
        BuildSettings::default(),
        Some("test".into()),
    ));
    ctx.caches.add(scope);
    let result = tokio::time::timeout(Duration::from_secs(10), reconcile(Arc::new(object), ctx))
        .await
        .expect("reconcile finishes");
    assert_eq!(result.is_err(), forbid, "{result:?}");
    server.await.unwrap()
}

async fn scenario(scenario: Scenario) -> Vec<Recorded> {
    match scenario {
        Scenario::Fresh => run(serde_json::to_value(cluster()).unwrap(), BTreeMap::new()).await,
        Scenario::InSync => {
            let (cr, objects) = in_sync_world(cluster());
            run(serde_json::to_value(cr).unwrap(), objects).await
        }
        Scenario::Deleting => {
            let mut cr = cluster();
            cr.meta_mut().deletion_timestamp = Some(Time(Timestamp::from_second(1_800_000_000).unwrap()));
            run(serde_json::to_value(cr).unwrap(), BTreeMap::new()).await
        }
        Scenario::Malformed => {
            let mut value = serde_json::to_value(cluster()).unwrap();
            value["spec"]["replicas"] = json!("three");
            run(value, BTreeMap::new()).await
        }
        Scenario::Forbidden => {
            let faults = Faults {
                forbid: true,
                ..Faults::default()
            };
            run_with(serde_json::to_value(cluster()).unwrap(), BTreeMap::new(), faults).await
        }
    }
}

fn writes(recorded: &[Recorded]) -> Vec<&Recorded> {
    recorded.iter().filter(|r| r.method != "GET").collect()
}

#[tokio::test]
async fn fresh_cluster_stores_its_status_then_applies_every_owned_object() {
    let recorded = scenario(Scenario::Fresh).await;
    let gets: Vec<&str> = recorded
        .iter()
        .filter(|r| r.method == "GET")
        .map(|r| r.path.as_str())
        .collect();
    assert_eq!(
        gets,
        vec!["/apis/apps/v1/namespaces/automation/statefulsets/prod"],
        "every read comes from the caches (the Secret's absence from its metadata cache) but the \
         StatefulSet's, which the cache does not have: it is looked up before it is created"
    );
    let writes = writes(&recorded);
    let applies: Vec<_> = writes
        .iter()
        .filter(|r| r.method == "PATCH" && !r.path.ends_with("/status"))
        .map(|r| (r.path.as_str(), r.body["kind"].as_str().unwrap()))
        .collect();
    assert_eq!(
        applies,
        vec![
            ("/api/v1/namespaces/automation/configmaps/prod-config", "ConfigMap"),
            ("/api/v1/namespaces/automation/services/prod-servers", "Service"),
            ("/api/v1/namespaces/automation/services/prod", "Service"),
            (
                "/apis/policy/v1/namespaces/automation/poddisruptionbudgets/prod",
                "PodDisruptionBudget"
            ),
            ("/apis/apps/v1/namespaces/automation/statefulsets/prod", "StatefulSet"),
        ]
    );
    for write in writes.iter().filter(|r| r.method == "PATCH") {
        assert_eq!(write.content_type, "application/apply-patch+yaml", "{}", write.path);
        assert!(
            write.query.contains("fieldManager=orchestrator-operator"),
            "{}: {}",
            write.path,
            write.query
        );
        assert!(write.query.contains("force=true"), "{}: {}", write.path, write.query);
        if !write.path.ends_with("/status") {
            let owner = &write.body["metadata"]["ownerReferences"][0];
            assert_eq!(owner["kind"], "OrchestratorCluster");
            assert_eq!(owner["controller"], true);
        }
    }
    let sts = writes.iter().find(|r| r.path.ends_with("statefulsets/prod")).unwrap();
    assert_eq!(sts.body["spec"]["updateStrategy"]["type"], "OnDelete");
    assert_eq!(
        sts.body["spec"]["replicas"], 0,
        "no server while the database preflight fails"
    );
    let event = writes
        .iter()
        .find(|r| r.method == "POST" && r.body["reason"] == "Applied")
        .expect("an Applied Event");
    assert_eq!(event.path, "/apis/events.k8s.io/v1/namespaces/automation/events");
    assert_eq!(event.body["reason"], "Applied");
    assert!(
        event.body["note"]
            .as_str()
            .unwrap()
            .contains("created StatefulSet prod")
    );
    // The status comes first: what the reconcile decided is stored before it acts.
    let status = writes.first().unwrap();
    assert_eq!(
        status.path,
        "/apis/orchestrator.dev/v1alpha1/namespaces/automation/orchestratorclusters/prod/status"
    );
    assert!(
        status.body["metadata"]["resourceVersion"].is_null(),
        "no precondition for a plan that touches no server: {}",
        status.body
    );
    assert_eq!(status.body["status"]["observedGeneration"], 2);
    assert_eq!(status.body["status"]["phase"], "Blocked");
    let conditions = status.body["status"]["conditions"].as_array().unwrap();
    let blocked = conditions.iter().find(|c| c["type"] == "CapacityBlocked").unwrap();
    assert_eq!(
        (blocked["status"].as_str(), blocked["reason"].as_str()),
        (Some("True"), Some("DatabaseNotReady"))
    );
    let database = conditions.iter().find(|c| c["type"] == "DatabaseReady").unwrap();
    assert_eq!(database["reason"], "SecretMissing");
    assert_eq!(
        database["message"],
        "secret process-db does not exist in namespace automation"
    );
    let warnings: Vec<_> = writes
        .iter()
        .filter(|r| r.body["type"] == "Warning")
        .map(|r| r.body["reason"].clone())
        .collect();
    assert_eq!(warnings, vec![json!("DatabaseNotReady"), json!("SecretMissing")]);
}

#[tokio::test]
async fn unchanged_cluster_sends_no_request_at_all() {
    let recorded = scenario(Scenario::InSync).await;
    assert!(
        recorded.is_empty(),
        "nothing changed: no read (the caches hold everything) and no write, not even the status: {recorded:#?}"
    );
}

#[tokio::test]
async fn deleted_cluster_is_left_to_garbage_collection() {
    let recorded = scenario(Scenario::Deleting).await;
    assert!(recorded.is_empty(), "{recorded:#?}");
}

#[tokio::test]
async fn malformed_object_gets_a_warning_event_and_nothing_else() {
    let recorded = scenario(Scenario::Malformed).await;
    assert_eq!(recorded.len(), 1, "{recorded:#?}");
    let event = &recorded[0];
    assert_eq!(
        (event.method.as_str(), event.body["type"].as_str()),
        ("POST", Some("Warning"))
    );
    assert_eq!(event.body["reason"], "Malformed");
    assert!(
        // kube's DeserializeGuard words it "Invalid type string \"three\". Expected i32".
        event.body["note"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("invalid type"),
        "{}",
        event.body["note"]
    );
}

#[tokio::test]
async fn a_refused_write_is_reported_on_the_resource_not_only_in_the_log() {
    let recorded = scenario(Scenario::Forbidden).await;
    assert!(
        recorded
            .iter()
            .any(|r| r.method == "PATCH" && r.path.ends_with("/prod/status")),
        "the status is stored before the refused write: {recorded:#?}"
    );
    // A refused child (here a 403) is a condition of the cluster, said in its status too.
    assert!(
        recorded.iter().any(|r| r.method == "PATCH"
            && r.path.ends_with("/prod/status")
            && r.body.to_string().contains("ChildRejected")),
        "the status says ChildRejected: {recorded:#?}"
    );
    let event = recorded
        .iter()
        .find(|r| r.method == "POST" && r.body["reason"] == "ChildRejected")
        .expect("a Warning Event");
    assert_eq!(event.body["type"], "Warning");
    let note = event.body["note"].as_str().unwrap();
    assert!(
        note.contains("the API server refused") && note.contains("forbidden"),
        "{}",
        event.body
    );
    assert_eq!(event.body["regarding"]["name"], "prod");
}

/// The in-sync cluster with a roll step of `prod-2` at Evicting, and its pod still there: the
/// plan evicts it.
async fn evicting(status_conflict: bool) -> Vec<Recorded> {
    let (cr, objects) = in_sync_world(cluster());
    let mut object = serde_json::to_value(cr).unwrap();
    object["status"]["maintenance"] = json!({
        "reason": "TemplateChange", "server": "prod-2", "stage": "Evicting", "podUid": "uid-2",
        "startedAt": "2027-01-15T08:00:00Z", "stepStartedAt": "2027-01-15T07:59:00Z"
    });
    let pod = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "prod-2", "namespace": NS, "uid": "uid-2",
                     "labels": {"controller-revision-hash": "prod-old",
                                "app.kubernetes.io/name": "orchestrator-server",
                                "app.kubernetes.io/instance": "prod"}},
        "status": {"phase": "Running"}});
    let faults = Faults {
        status_conflict,
        pods: vec![pod],
        ..Faults::default()
    };
    run_with(object, objects, faults).await
}

fn eviction(recorded: &[Recorded]) -> Option<&Recorded> {
    recorded
        .iter()
        .find(|r| r.method == "POST" && r.path.ends_with("/pods/prod-2/eviction"))
}

#[tokio::test]
async fn an_eviction_is_sent_only_after_its_step_is_stored_against_the_version_read() {
    let recorded = evicting(false).await;
    let status = recorded
        .iter()
        .position(|r| r.method == "PATCH" && r.path.ends_with("/prod/status"))
        .expect("the status is written");
    assert_eq!(
        recorded[status].body["metadata"]["resourceVersion"], "100",
        "stored against the resourceVersion the plan was made from"
    );
    let evict = eviction(&recorded).expect("the step's pod is evicted");
    assert!(
        recorded.iter().position(|r| std::ptr::eq(r, evict)).unwrap() > status,
        "the eviction comes after the status write"
    );
    let quorum = recorded
        .iter()
        .position(|r| r.method == "GET" && r.path.ends_with("/pods"))
        .expect("the pods are listed from the API server before a server is acted on");
    assert!(quorum < status, "{recorded:#?}");
    assert_eq!(evict.body["deleteOptions"]["preconditions"]["uid"], "uid-2");
}

#[tokio::test]
async fn a_plan_from_a_stale_view_is_dropped_before_it_evicts() {
    let recorded = evicting(true).await;
    assert!(
        recorded
            .iter()
            .any(|r| r.method == "PATCH" && r.path.ends_with("/prod/status")),
        "the status write was tried: {recorded:#?}"
    );
    assert!(
        eviction(&recorded).is_none(),
        "nothing evicted after a 409: {recorded:#?}"
    );
    assert!(
        recorded
            .iter()
            .all(|r| r.method == "GET" || r.path.ends_with("/status")),
        "no write but the refused status: {recorded:#?}"
    );
}
