//! End-to-end: the `kubectl orc` plugin against the local cluster, as a person runs it: the
//! status and the plan, a targeted drain of one server under load (nothing lost), pause,
//! restart, resume and approve, and the errors for a cluster or a server that does not exist.

use std::process::Output;

use kube::ResourceExt;
use orchestrator_operator::crd::OrchestratorCluster;
use serde_json::Value;

use crate::support::e2e::{MINUTE, Operator, TestNamespace, load, patch_spec, wait_for, wait_settled};
use crate::support::pods::{self, server_pods, uids};
use crate::support::spec::ClusterSpec;

/// Runs `kubectl-orc` (as kubectl runs a plugin) in namespace `ns` with `args`.
async fn orc(ns: &TestNamespace, args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_kubectl-orc"))
        .args(["-n", &ns.name])
        .args(args)
        .output()
        .await
        .unwrap()
}

/// Its standard output, once it succeeded.
pub(crate) async fn orc_ok(ns: &TestNamespace, args: &[&str]) -> String {
    let out = orc(ns, args).await;
    assert!(
        out.status.success(),
        "kubectl orc {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn the_plugin_shows_drains_pauses_restarts_and_approves() {
    let ns = TestNamespace::new("plugin").await;
    let pg = ns.database().await;
    let _operator = Operator::start(&ns.name, "orchestrator-server").await;
    ns.create_cluster(&ClusterSpec::new(3, &pg).drain_timeout("30s")).await;
    wait_settled(&ns, 3, Some("2.0.0")).await;

    let table = orc_ok(&ns, &["status", "prod"]).await;
    assert!(table.contains("3 of 3 servers joined"), "{table}");
    for server in ["prod-0", "prod-1", "prod-2"] {
        assert!(table.contains(server), "{table}");
    }
    assert!(table.contains("NothingToDo"), "{table}");
    assert!(!table.contains('\x1b'), "no colour when not a terminal");
    let json: Value = serde_json::from_str(&orc_ok(&ns, &["status", "prod", "-o", "json"]).await).unwrap();
    assert_eq!(json["status"]["readyReplicas"], 3);
    let plan: Value = serde_yaml::from_str(&orc_ok(&ns, &["plan", "prod", "-o", "yaml"]).await).unwrap();
    assert_eq!(plan["strategy"], "NothingToDo");

    // A targeted drain of prod-1 under load: drained through the database and replaced.
    let before = uids(&pods::list(&ns, &server_pods("prod")).await);
    let load = load(&pg, "plugin", 20, 20, 300);
    let drain = async {
        tokio::time::sleep(std::time::Duration::from_secs(3)).await;
        let said = orc_ok(&ns, &["drain", "prod", "prod-1"]).await;
        assert!(said.contains("prod-1 will be drained"), "{said}");
        // Asked twice, the second is refused: the server is asked for, or being replaced.
        let again = orc(&ns, &["drain", "prod", "prod-1"]).await;
        let said = String::from_utf8_lossy(&again.stderr);
        assert!(
            !again.status.success() && (said.contains("was asked at") || said.contains("being replaced already")),
            "{said}"
        );
        wait_for(
            &ns.api::<OrchestratorCluster>(),
            "prod",
            "the roll says why",
            MINUTE,
            |c: Option<&OrchestratorCluster>| {
                c.and_then(|c| c.status.as_ref())
                    .and_then(|s| s.maintenance.as_ref())
                    .is_some_and(|m| m.reason.as_deref() == Some("ReplaceRequested"))
            },
        )
        .await;
        let replaced = before["prod-1"].clone();
        wait_for(
            &ns.api::<k8s_openapi::api::core::v1::Pod>(),
            "prod-1",
            "prod-1 replaced",
            2 * MINUTE,
            move |p: Option<&k8s_openapi::api::core::v1::Pod>| {
                p.is_some_and(|p| p.uid().is_some_and(|uid| uid != replaced) && pods::pod_ready(p))
            },
        )
        .await;
    };
    let (report, ()) = tokio::join!(load, drain);
    assert_eq!(report["lost"], 0, "{report}");
    assert_eq!(report["outcome"]["executed_more_than_once"], 0, "{report}");
    wait_settled(&ns, 3, Some("2.0.0")).await;
    let after = uids(&pods::list(&ns, &server_pods("prod")).await);
    assert_eq!(after["prod-0"], before["prod-0"], "only prod-1 replaced");
    assert_eq!(after["prod-2"], before["prod-2"], "only prod-1 replaced");
    let log = ns.pod_log("prod-1", "server");
    assert!(log.contains("drain requested through the database"), "{log}");
    let cr = ns.api::<OrchestratorCluster>().get("prod").await.unwrap();
    let history = cr.status.unwrap().history.unwrap();
    assert_eq!(history.step_seconds.len(), 1, "prod-1 replaced once: {history:?}");

    // Pause, restart: the plan shows the roll and what it waits for; resume lets it go.
    assert!(orc_ok(&ns, &["pause", "prod"]).await.contains("paused"));
    assert!(
        orc_ok(&ns, &["restart", "prod"])
            .await
            .contains("rolling restart requested")
    );
    let api = ns.api::<OrchestratorCluster>();
    let cr = wait_for(
        &api,
        "prod",
        "the restart planned",
        MINUTE,
        |c: Option<&OrchestratorCluster>| {
            c.and_then(|c| c.status.as_ref())
                .and_then(|s| s.plan.as_ref())
                .is_some_and(|p| p.reason == "RestartRequested")
        },
    )
    .await
    .unwrap();
    assert!(cr.spec.maintenance.paused && cr.spec.maintenance.restart_requested_at.is_some());
    let plan = orc_ok(&ns, &["plan", "prod"]).await;
    assert!(
        plan.contains("Rolling (RestartRequested)") && plan.contains("waits: Paused"),
        "{plan}"
    );
    assert!(orc_ok(&ns, &["resume", "prod"]).await.contains("resumed"));
    let said = orc_ok(&ns, &["approve", "prod"]).await;
    assert!(said.contains("nothing to approve"), "Automatic: {said}");

    // Manual approval: only the current generation's published plan is approved.
    let old = patch_spec(&ns, serde_json::json!({"maintenance": {"approval": "Manual"}}))
        .await
        .metadata
        .generation
        .unwrap()
        - 1;
    let stale = orc(&ns, &["approve", "prod", "--generation", &old.to_string()]).await;
    let said = String::from_utf8_lossy(&stale.stderr);
    assert!(
        !stale.status.success() && said.contains(&format!("not {old}")),
        "{said}"
    );
    let generation = old + 1;
    wait_for(
        &api,
        "prod",
        "the plan of the new generation",
        MINUTE,
        move |c: Option<&OrchestratorCluster>| {
            c.and_then(|c| c.status.as_ref())
                .and_then(|s| s.plan.as_ref())
                .is_some_and(|p| p.generation == generation)
        },
    )
    .await;
    let said = orc_ok(&ns, &["approve", "prod", "--generation", &generation.to_string()]).await;
    assert!(
        said.contains(&format!("plan for generation {generation}"))
            && said.contains(&format!("generation {generation} approved")),
        "{said}"
    );
    let cr = api.get("prod").await.unwrap();
    assert_eq!(
        cr.annotations().get("orchestrator.dev/approve"),
        Some(&generation.to_string())
    );
    assert!(!cr.spec.maintenance.paused);

    // The calendar: a window twelve hours away is closed now, and its opening is said.
    let opens = k8s_openapi::jiff::Timestamp::now()
        .checked_add(k8s_openapi::jiff::SignedDuration::from_hours(12))
        .unwrap();
    let start = opens.strftime("%H:%M").to_string();
    patch_spec(
        &ns,
        serde_json::json!({"maintenance": {"windows": [{"start": start, "duration": "1h"}]}}),
    )
    .await;
    let table = orc_ok(&ns, &["status", "prod"]).await;
    assert!(table.contains("windows: none open; the next opens at"), "{table}");

    // Errors that say what to do.
    let missing = orc(&ns, &["status", "nope"]).await;
    assert!(!missing.status.success());
    let said = String::from_utf8_lossy(&missing.stderr);
    assert!(
        said.contains("orchestratorcluster nope not found") && said.contains("kubectl get orc"),
        "{said}"
    );
    // A change of a missing cluster says the same, not the API server's 404.
    let missing = orc(&ns, &["pause", "nope"]).await;
    let said = String::from_utf8_lossy(&missing.stderr);
    assert!(
        !missing.status.success() && said.contains("orchestratorcluster nope not found"),
        "{said}"
    );
    let unknown = orc(&ns, &["drain", "prod", "prod-9"]).await;
    assert!(!unknown.status.success());
    let said = String::from_utf8_lossy(&unknown.stderr);
    assert!(
        said.contains("prod-9 is not a server of prod") && said.contains("prod-0"),
        "{said}"
    );
}
