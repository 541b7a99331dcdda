//! Steady state: an idle Ready cluster costs the API server nothing but the operator's watches
//! (counted from the API server's audit log, not from the operator's counters), its status does
//! not move, and the operator still looks at the database and still reacts to a change.

use std::time::Duration;

use kube::ResourceExt;
use orchestrator_operator::crd::OrchestratorCluster;

use crate::support::audit::{AuditLog, Request, lines};
use crate::support::e2e::{MINUTE, Operator, TestNamespace, patch_spec, wait_ready, wait_settled};
use crate::support::spec::ClusterSpec;

/// The operator's `orchestrator_operator_reconciles_total`.
async fn reconciles(operator: &Operator) -> u64 {
    let metrics = operator.metrics().await;
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("orchestrator_operator_reconciles_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no reconciles counter in:\n{metrics}"))
}

#[tokio::test]
async fn an_idle_ready_cluster_sends_no_api_request_and_keeps_its_status() {
    let ns = TestNamespace::new("idle").await;
    let pg = ns.database().await;
    let audit = AuditLog::open();
    let start = audit.mark();
    let operator = Operator::start(&ns.name, "orchestrator-server").await;
    ns.create_cluster(&ClusterSpec::new(2, &pg)).await;
    wait_settled(&ns, 2, None).await;
    let mark = audit.quiet(&ns.name, Duration::from_secs(10)).await;
    // The log does name the operator's requests: bringing the cluster up took some.
    let setup = audit.operator_requests(start, &ns.name);
    assert!(
        setup
            .iter()
            .any(|r| r.is_write() && r.resource == "orchestratorclusters/status"),
        "the audit log shows no status write of the operator while the cluster came up:\n{}",
        lines(&setup.iter().collect::<Vec<_>>())
    );
    let before = ns.api::<OrchestratorCluster>().get("prod").await.unwrap();
    let reconciles_before = reconciles(&operator).await;

    // The window of the measurement: two minutes of nothing changing.
    tokio::time::sleep(2 * MINUTE).await;

    let sent = audit.operator_requests(mark, &ns.name);
    let writes: Vec<&Request> = sent.iter().filter(|r| r.is_write()).collect();
    assert!(writes.is_empty(), "API writes while idle:\n{}", lines(&writes));
    let reads: Vec<&Request> = sent.iter().collect();
    assert!(
        reads.is_empty(),
        "API reads while idle (beyond watches):\n{}",
        lines(&reads)
    );
    let after = ns.api::<OrchestratorCluster>().get("prod").await.unwrap();
    assert_eq!(
        after.resource_version(),
        before.resource_version(),
        "the resource (its status included) was not written"
    );
    assert_eq!(after.status, before.status);
    // Not quiet because it stopped: it kept looking at the database (each time a heartbeat
    // could have gone stale, every few seconds)...
    let looked = reconciles(&operator).await - reconciles_before;
    assert!(looked >= 6, "only {looked} reconciles in two minutes");
    println!("IDLE requests=0 reconciles_in_two_minutes={looked}");
    // ...and it still reacts to a change at once.
    patch_spec(&ns, serde_json::json!({"replicas": 3})).await;
    wait_ready(&ns, 3).await;
}
