//! What admission cannot catch, said in the status: an owned object the API server refuses
//! (`Ready=False`, `ChildRejected`, the object and the API server's words, retried with
//! back-off and cleared by a fix), a server pod the scheduler cannot place (`Degraded`, the
//! scheduler's words), and a spec written in non-canonical forms (written once, then quiet).

use std::time::Duration;

use kube::api::{Patch, PatchParams, PostParams};
use orchestrator_operator::crd::{OrchestratorCluster, Phase};
use serde_json::{Value, json};

use crate::support::audit::{AuditLog, lines};
use crate::support::e2e::{MINUTE, Operator, TestNamespace, condition, wait_condition, wait_settled};
use crate::support::invalid_specs::merge;
use crate::support::spec::ClusterSpec;

/// Creates cluster `prod` from `spec` with `template` merged into its pod template.
async fn create_with_template(ns: &TestNamespace, spec: &ClusterSpec, template: Value) {
    let mut object = spec.json();
    merge(&mut object, &json!({"spec": {"template": template}}));
    let typed: OrchestratorCluster = serde_json::from_value(object).unwrap();
    ns.api::<OrchestratorCluster>()
        .create(&PostParams::default(), &typed)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_refused_statefulset_is_said_in_status_retried_with_back_off_and_cleared_by_a_fix() {
    let ns = TestNamespace::new("refused").await;
    let pg = ns.database().await;
    let audit = AuditLog::open();
    let _operator = Operator::start(&ns.name, "orchestrator-server").await;
    // Passes the CRD (affinity is the Kubernetes type, unchecked by its rules) but not the
    // StatefulSet's validation: `In` needs values.
    let affinity = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [{"key": "pool", "operator": "In", "values": []}]}]}}});
    create_with_template(&ns, &ClusterSpec::new(1, &pg), json!({"affinity": affinity})).await;
    let cr = wait_condition(&ns, "Ready", "False", "ChildRejected", MINUTE).await;
    let ready = condition(&cr, "Ready").unwrap();
    assert!(
        ready.message.contains("the API server refused StatefulSet prod (422)") && ready.message.contains("values"),
        "{}",
        ready.message
    );
    assert_eq!(cr.status.as_ref().unwrap().phase, Phase::Blocked);
    // Retried with back-off (5 s, 10 s, 20 s, ...), never in a loop: over 20 s at most four
    // attempts (the back-off's, and one a watch event of the objects created before the refused
    // one triggers), as the API server's audit log counts them.
    // From once the database is seen ready too (a status written before the preflight finished
    // changes with it), and after the reconcile that the refusal's own writes trigger, which
    // may still read the status before them from its cache and write it again, unchanged.
    wait_condition(&ns, "DatabaseReady", "True", "ConnectedUnverified", MINUTE).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mark = audit.mark();
    tokio::time::sleep(Duration::from_secs(20)).await;
    let attempts: Vec<_> = audit
        .operator_requests(mark, &ns.name)
        .into_iter()
        .filter(|r| r.resource == "statefulsets" && r.is_write())
        .collect();
    assert!(
        attempts.len() <= 4,
        "{} StatefulSet writes in 20 s:\n{}",
        attempts.len(),
        lines(&attempts.iter().collect::<Vec<_>>())
    );
    let statuses: Vec<_> = audit
        .operator_requests(mark, &ns.name)
        .into_iter()
        .filter(|r| r.resource == "orchestratorclusters/status")
        .collect();
    assert!(
        statuses.is_empty(),
        "the status does not flip while the refusal lasts:\n{}",
        lines(&statuses.iter().collect::<Vec<_>>())
    );
    // The fix: the object is applied and the cluster becomes Ready; the reason is gone.
    ns.api::<OrchestratorCluster>()
        .patch(
            "prod",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"template": {"affinity": null}}})),
        )
        .await
        .unwrap();
    let cr = wait_settled(&ns, 1, None).await;
    assert_eq!(condition(&cr, "Ready").unwrap().reason, "AllServersJoined");
}

/// The `Degraded` message of a one-server cluster whose pod template has `template` merged in,
/// once it says `ServerProblems`.
async fn degraded_with_template(prefix: &str, template: Value) -> String {
    let ns = TestNamespace::new(prefix).await;
    let pg = ns.database().await;
    let _operator = Operator::start(&ns.name, "orchestrator-server").await;
    create_with_template(&ns, &ClusterSpec::new(1, &pg), template).await;
    let cr = wait_condition(&ns, "Degraded", "True", "ServerProblems", MINUTE).await;
    condition(&cr, "Degraded").unwrap().message.clone()
}

#[tokio::test]
async fn a_server_the_scheduler_cannot_place_is_said_with_its_reason() {
    let message = degraded_with_template("unplaced", json!({"nodeSelector": {"pool": "nowhere"}})).await;
    assert!(
        message.contains("prod-0: not scheduled: 0/") && message.contains("node affinity/selector"),
        "{message}"
    );
}

#[tokio::test]
async fn a_spec_in_non_canonical_forms_is_written_once_then_quiet() {
    let ns = TestNamespace::new("canonical").await;
    let pg = ns.database().await;
    let audit = AuditLog::open();
    let _operator = Operator::start(&ns.name, "orchestrator-server").await;
    let resources = json!({"requests": {"cpu": "0.25", "memory": "131072Ki"},
                           "limits": {"cpu": 1, "memory": "0.5Gi"}});
    let env = json!([{"name": "WORKERS", "value": ""}]);
    create_with_template(
        &ns,
        &ClusterSpec::new(1, &pg),
        json!({"resources": resources, "env": env}),
    )
    .await;
    wait_settled(&ns, 1, None).await;
    // The API server stored canonical forms (250m, 128Mi, 512Mi); the operator sees no drift
    // in them: it goes quiet, and stays so.
    let mark = audit.quiet(&ns.name, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_secs(20)).await;
    let sent = audit.operator_requests(mark, &ns.name);
    let writes: Vec<_> = sent.iter().filter(|r| r.is_write()).collect();
    assert!(writes.is_empty(), "writes after settling:\n{}", lines(&writes));
}

#[tokio::test]
async fn a_pod_the_statefulset_cannot_create_is_said_with_the_controllers_reason() {
    let message = degraded_with_template("nopriority", json!({"priorityClassName": "no-such-class"})).await;
    assert!(
        message.contains("the StatefulSet cannot create a server pod")
            && message.contains("no PriorityClass with name no-such-class"),
        "{message}"
    );
}
