//! End-to-end: the operator installed with `helm install` of `charts/orchestrator-operator`,
//! running as a pod under the chart's ServiceAccount and RBAC (the node agent gives it a token
//! of that ServiceAccount, so a missing permission fails here). It runs a cluster end to end
//! (create, scale, rolling restart, version change) with a real PostgreSQL; `helm upgrade`
//! restarts the operator and no server; `helm uninstall` leaves the servers running; of two
//! replicas only the Lease holder acts, and a killed holder hands over within the lease time.
//! The chart's optional admission policy refuses images of other registries and Secret refs.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use k8s_openapi::api::events::v1::Event as K8sEvent;
use k8s_openapi::api::rbac::v1::{ClusterRole, Role};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use orchestrator_contract as contract;
use orchestrator_operator::crd::OrchestratorCluster;
use serde_json::{Value, json};
use testing_postgres::TestPostgres;

use crate::support::e2e::{MINUTE, TestNamespace, db, lease_holder, patch_spec, pod_of, wait_for, wait_settled};
use crate::support::helm::{self, FULLNAME, OPERATOR_PODS};
use crate::support::pods::{self, pod_ready, restarts, server_pods, uids, wait_pods};
use crate::support::spec::ClusterSpec;

/// The cluster of these tests.
fn cluster(replicas: i32, pg: &TestPostgres) -> ClusterSpec {
    ClusterSpec::new(replicas, pg).drain_timeout("20s").ready_timeout("60s")
}

async fn servers(ns: &TestNamespace) -> BTreeMap<String, Pod> {
    pods::list(ns, &server_pods("prod")).await
}

/// The `orchestrator_operator_leader` gauge of operator pod `pod`, from its /metrics.
async fn leader_gauge(pod: &Pod) -> String {
    let ip = pod.status.as_ref().and_then(|s| s.pod_ip.clone()).expect("pod IP");
    let body = reqwest::get(format!("http://{ip}:8080/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    body.lines()
        .find(|l| l.starts_with("orchestrator_operator_leader "))
        .unwrap_or_else(|| panic!("no leader gauge in /metrics of {}:\n{body}", pod.name_any()))
        .trim_start_matches("orchestrator_operator_leader ")
        .to_string()
}

/// Events about the cluster's objects, reported by the operator, as (first, last, instance,
/// reason).
async fn operator_events(
    ns: &TestNamespace,
) -> Vec<(
    k8s_openapi::jiff::Timestamp,
    k8s_openapi::jiff::Timestamp,
    String,
    String,
)> {
    let mut events: Vec<_> = ns
        .api::<K8sEvent>()
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reporting_controller.as_deref() == Some("orchestrator-operator"))
        .map(|e| {
            let first = e
                .event_time
                .as_ref()
                .map(|t| t.0)
                .or(e.deprecated_first_timestamp.as_ref().map(|t| t.0))
                .expect("an Event has a time");
            let last = e
                .series
                .as_ref()
                .map(|s| s.last_observed_time.0)
                .or(e.deprecated_last_timestamp.as_ref().map(|t| t.0))
                .unwrap_or(first);
            (
                first,
                last,
                e.reporting_instance.clone().unwrap_or_default(),
                e.reason.clone().unwrap_or_default(),
            )
        })
        .collect();
    events.sort();
    events
}

/// An API request: (API group, resource[/subresource], verb).
type Request = (String, String, String);

/// The API requests in an operator log written with `RUST_LOG=kube_client=debug` and JSON
/// format, with how many times each was made. A server-side apply (a PATCH with a field
/// manager) of an object also counts as `create`: the API server checks that verb when the
/// apply creates the object.
fn requests(log: &str) -> BTreeMap<Request, usize> {
    let mut seen = BTreeMap::new();
    for line in log.lines() {
        let Ok(entry) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if entry["fields"]["message"] != "requesting" {
            continue;
        }
        let method = entry["span"]["http.method"].as_str().unwrap_or_default();
        let url = entry["span"]["http.url"].as_str().unwrap_or_default();
        let Some(start) = url.find("/api") else {
            continue; // /version and other non-resource URLs
        };
        let (path, query) = url[start..].split_once('?').unwrap_or((&url[start..], ""));
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        let (group, rest) = match parts[0] {
            "api" => (String::new(), &parts[2..]),
            _ => (parts[1].to_string(), &parts[3..]),
        };
        let rest = if rest.len() >= 3 && rest[0] == "namespaces" {
            &rest[2..]
        } else {
            rest
        };
        let resource = match rest.get(2) {
            Some(sub) => format!("{}/{sub}", rest[0]),
            None => rest[0].to_string(),
        };
        let named = rest.len() >= 2;
        let verbs: Vec<&str> = match method {
            "GET" if named => vec!["get"],
            "GET" if query.contains("watch=true") => vec!["watch"],
            "GET" => vec!["list"],
            "POST" => vec!["create"],
            "PUT" => vec!["update"],
            "DELETE" => vec!["delete"],
            "PATCH" if query.contains("fieldManager") && !resource.contains('/') => vec!["patch", "create"],
            "PATCH" => vec!["patch"],
            other => panic!("unexpected method {other} in {line}"),
        };
        for verb in verbs {
            *seen
                .entry((group.clone(), resource.clone(), verb.to_string()))
                .or_insert(0) += 1;
        }
    }
    seen
}

/// Compares the rules of the release's Roles with the requests in `log`: every request is
/// allowed by a rule and every verb of every rule was used. Prints the table.
async fn check_rbac_against_requests(ns: &TestNamespace, log: &str) {
    let used = requests(log);
    assert!(!used.is_empty(), "the operator log lists its API requests");
    let mut table = String::from("| role | API group | resource | verb | requests |\n|---|---|---|---|---|\n");
    let mut unused = Vec::new();
    let mut allowed = std::collections::BTreeSet::new();
    let mut roles = Vec::new();
    for role_name in [FULLNAME.to_string(), format!("{FULLNAME}-leader-election")] {
        let role = ns.api::<Role>().get(&role_name).await.unwrap();
        roles.push((role_name, role.rules.unwrap_or_default()));
    }
    let nodes_role = format!("{FULLNAME}-{}-nodes", ns.name);
    let cluster_role = Api::<ClusterRole>::all(ns.client.clone())
        .get(&nodes_role)
        .await
        .unwrap();
    roles.push((nodes_role, cluster_role.rules.unwrap_or_default()));
    for (role_name, rules) in roles {
        for rule in rules {
            for group in rule.api_groups.clone().unwrap_or_default() {
                for resource in rule.resources.clone().unwrap_or_default() {
                    for verb in &rule.verbs {
                        let key = (group.clone(), resource.clone(), verb.clone());
                        let count = used.get(&key).copied().unwrap_or(0);
                        let scope = match &rule.resource_names {
                            Some(names) => format!(" ({})", names.join(",")),
                            None => String::new(),
                        };
                        table.push_str(&format!(
                            "| {role_name} | {group} | {resource}{scope} | {verb} | {count} |\n"
                        ));
                        if count == 0 {
                            unused.push(key.clone());
                        }
                        allowed.insert(key);
                    }
                }
            }
        }
    }
    eprintln!("RBAC rules and the requests that used them:\n{table}");
    let outside: Vec<_> = used.keys().filter(|k| !allowed.contains(*k)).collect();
    assert!(outside.is_empty(), "requests no rule allows: {outside:?}\n{table}");
    assert!(unused.is_empty(), "rules nothing used: {unused:?}\n{table}");
}

#[tokio::test]
async fn helm_installed_operator_runs_a_cluster_and_survives_upgrade_and_uninstall() {
    let ns = TestNamespace::new("helm").await;
    let pg = ns.database().await;

    // helm install: one operator pod under the chart's ServiceAccount, Ready, leading; its
    // log lists every API request it makes (kube_client debug spans).
    let notes = helm::install_with(
        &ns,
        &[],
        &[
            "--set-json",
            r#"extraEnv=[{"name":"RUST_LOG","value":"info,kube_client=debug"}]"#,
        ],
    )
    .await;
    assert!(
        notes.contains(&format!("It manages OrchestratorClusters in: {}.", ns.name)),
        "NOTES name the watched namespace:\n{notes}"
    );
    let operators = helm::operator_pods(&ns).await;
    assert_eq!(operators.len(), 1);
    let operator = operators[0].clone();
    let sa = operator.spec.as_ref().unwrap().service_account_name.clone();
    assert_eq!(sa.as_deref(), Some(FULLNAME), "runs as the chart's ServiceAccount");
    ns.api::<ServiceAccount>().get(FULLNAME).await.unwrap();
    ns.api::<Role>().get(FULLNAME).await.unwrap();
    helm::wait_log(&ns, &operator.name_any(), "leading: starting controllers", MINUTE).await;
    // The same log through the API server (the node agent's kubelet endpoint), as a user reads it.
    let logs = helm::kubectl(&["-n", &ns.name, "logs", &operator.name_any(), "--limit-bytes=2000000"]).await;
    assert!(
        logs.contains("leading: starting controllers"),
        "kubectl logs of the operator pod"
    );
    assert_eq!(leader_gauge(&operator).await, "1");

    // Create: two servers join.
    ns.create_cluster(&cluster(2, &pg)).await;
    wait_settled(&ns, 2, Some("2.0.0")).await;

    // Scale: a third server joins.
    patch_spec(&ns, json!({"replicas": 3})).await;
    wait_settled(&ns, 3, Some("2.0.0")).await;

    // Rolling restart: every server replaced, one at a time.
    let before = uids(&servers(&ns).await);
    assert_eq!(before.len(), 3);
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    patch_spec(&ns, json!({"maintenance": {"restartRequestedAt": now}})).await;
    wait_pods(
        &ns,
        &server_pods("prod"),
        "every server restarted",
        3 * MINUTE,
        |pods| {
            pods.len() == 3
                && pods
                    .iter()
                    .all(|(name, p)| pod_ready(p) && before.get(name) != p.uid().as_ref())
        },
    )
    .await;
    wait_settled(&ns, 3, Some("2.0.0")).await;

    // Version change: the schema check Job, then every server replaced.
    patch_spec(&ns, json!({"version": "2.1.0"})).await;
    wait_settled(&ns, 3, Some("2.1.0")).await;
    let restarted = servers(&ns).await;
    let operator_log = helm::operator_log(&ns, &operator.name_any());
    assert!(
        !operator_log.contains("forbidden") && !operator_log.contains("Forbidden"),
        "the chart's RBAC let the operator do everything it did; its log:\n{operator_log}"
    );
    // Every rule of the chart's Roles was used by the steps above, and nothing else was asked.
    check_rbac_against_requests(&ns, &operator_log).await;

    // helm upgrade with changed values: a new operator pod, no server restarted.
    let servers_before = uids(&restarted);
    let sts_generation = ns.api::<StatefulSet>().get("prod").await.unwrap().metadata.generation;
    helm::upgrade(&ns, &["logFormat=text", "resources.limits.memory=300Mi"]).await;
    let upgraded = helm::operator_pods(&ns).await;
    assert_eq!(upgraded.len(), 1);
    let new_operator = upgraded[0].clone();
    assert_ne!(
        new_operator.uid(),
        operator.uid(),
        "helm upgrade replaced the operator pod"
    );
    assert_eq!(restarts(&new_operator), 0);
    let old_log = helm::operator_log(&ns, &operator.name_any());
    assert!(
        old_log.contains("termination requested; shutting down") && !old_log.contains("\"level\":\"ERROR\""),
        "the old operator stopped cleanly on SIGTERM; its log:\n{old_log}"
    );
    helm::wait_log(&ns, &new_operator.name_any(), "leading: starting controllers", MINUTE).await;
    let new_log = helm::operator_log(&ns, &new_operator.name_any());
    assert!(!new_log.starts_with('{'), "logFormat=text took effect: {new_log}");
    let deployment = ns.api::<Deployment>().get(FULLNAME).await.unwrap();
    let container = &deployment.spec.unwrap().template.spec.unwrap().containers[0];
    assert_eq!(
        container.resources.as_ref().unwrap().limits.as_ref().unwrap()["memory"].0,
        "300Mi"
    );
    // The new operator reconciles (a spec change it must observe) and restarts no server.
    patch_spec(&ns, json!({"capacity": {"maxReplicas": 9}})).await;
    wait_settled(&ns, 3, Some("2.1.0")).await;
    let after_upgrade = servers(&ns).await;
    assert_eq!(
        uids(&after_upgrade),
        servers_before,
        "no server pod replaced by the operator upgrade"
    );
    assert!(after_upgrade.values().all(|p| restarts(p) == 0 && pod_ready(p)));
    assert_eq!(
        ns.api::<StatefulSet>().get("prod").await.unwrap().metadata.generation,
        sts_generation,
        "the StatefulSet was not changed by the operator upgrade"
    );

    let new_log = helm::operator_log(&ns, &new_operator.name_any());
    assert!(!new_log.contains("forbidden"), "{new_log}");

    // helm uninstall: the operator goes, the cluster and its servers stay.
    helm::uninstall(&ns).await;
    wait_pods(&ns, OPERATOR_PODS, "operator pods gone", MINUTE, |pods| pods.is_empty()).await;
    assert!(ns.api::<Deployment>().get_opt(FULLNAME).await.unwrap().is_none());
    assert!(ns.api::<Role>().get_opt(FULLNAME).await.unwrap().is_none());
    assert!(ns.api::<OrchestratorCluster>().get_opt("prod").await.unwrap().is_some());
    assert!(ns.api::<StatefulSet>().get_opt("prod").await.unwrap().is_some());
    let after_uninstall = servers(&ns).await;
    assert_eq!(
        uids(&after_uninstall),
        servers_before,
        "servers keep running without the operator"
    );
    assert!(after_uninstall.values().all(pod_ready));
    let db = db(&pg).await;
    let members = contract::membership(&db).await.unwrap();
    let active: Vec<_> = members
        .iter()
        .filter(|m| m.state == "active")
        .map(|m| pod_of(&m.server_id))
        .collect();
    assert_eq!(active, vec!["prod-0", "prod-1", "prod-2"], "{members:?}");
}

#[tokio::test]
async fn two_replicas_only_the_lease_holder_acts_and_a_killed_holder_hands_over() {
    // The shortest lease the operator accepts.
    const LEASE_SECONDS: u64 = 18;
    let ns = TestNamespace::new("leader").await;
    let pg = ns.database().await;
    helm::install(
        &ns,
        &[
            "replicaCount=2",
            &format!("leaderElection.leaseSeconds={LEASE_SECONDS}"),
        ],
    )
    .await;
    let pods = helm::operator_pods(&ns).await;
    assert_eq!(pods.len(), 2, "two operator pods, both ready");
    let lease = wait_for(&ns.api::<Lease>(), FULLNAME, "a holder", MINUTE, |l: Option<&Lease>| {
        l.is_some_and(|l| !lease_holder(l).is_empty())
    })
    .await
    .unwrap();
    let first = lease_holder(&lease);
    let (leading, standby): (Vec<Pod>, Vec<Pod>) = pods.into_iter().partition(|p| p.name_any() == first);
    let (leading, standby) = (leading[0].clone(), standby[0].clone());
    helm::wait_log(&ns, &first, "leading: starting controllers", MINUTE).await;
    helm::wait_log(&ns, &standby.name_any(), "waiting to lead", MINUTE).await;
    assert_eq!(leader_gauge(&leading).await, "1");
    assert_eq!(
        leader_gauge(&standby).await,
        "0",
        "the standby reports it does not lead"
    );

    ns.create_cluster(&cluster(2, &pg)).await;
    wait_settled(&ns, 2, Some("2.0.0")).await;
    let standby_log = helm::operator_log(&ns, &standby.name_any());
    assert!(
        !standby_log.contains("leading: starting controllers") && !standby_log.contains("starting controller"),
        "the standby never started its controllers:\n{standby_log}"
    );
    let events = operator_events(&ns).await;
    assert!(!events.is_empty(), "the leader reported Events");
    assert!(
        events.iter().all(|(_, _, instance, _)| *instance == first),
        "only the Lease holder {first} acted: {events:#?}"
    );

    // Kill the holder (force delete: the process gets SIGKILL and never releases the Lease).
    let killed_at = Instant::now();
    let killed_time = k8s_openapi::jiff::Timestamp::now();
    ns.api::<Pod>()
        .delete(&first, &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    let lease = wait_for(
        &ns.api::<Lease>(),
        FULLNAME,
        "the standby taking the Lease",
        Duration::from_secs(3 * LEASE_SECONDS),
        |l: Option<&Lease>| l.is_some_and(|l| lease_holder(l) != first && !lease_holder(l).is_empty()),
    )
    .await
    .unwrap();
    let handover = killed_at.elapsed();
    // The standby or the Deployment's replacement pod, whichever campaigns first once the
    // Lease expired.
    let second = lease_holder(&lease);
    let candidates: Vec<String> = helm::operator_pods(&ns).await.iter().map(|p| p.name_any()).collect();
    assert!(
        second == standby.name_any() || candidates.contains(&second),
        "the new holder {second} is a live operator pod: {candidates:?}"
    );
    // A standby takes the Lease once it has not changed for LEASE_SECONDS; it reads it every
    // LEASE_SECONDS/5.
    assert!(
        handover <= Duration::from_secs(LEASE_SECONDS + LEASE_SECONDS / 3 + 2),
        "handed over in {handover:?}, lease {LEASE_SECONDS}s"
    );
    eprintln!("lease handed over {handover:?} after the holder was killed (lease {LEASE_SECONDS}s)");
    let acquired = lease.spec.as_ref().unwrap().acquire_time.as_ref().unwrap().0;
    helm::wait_log(&ns, &second, "leading: starting controllers", MINUTE).await;

    // The new leader runs a version change; the other operator pod stays a standby.
    patch_spec(&ns, json!({"version": "2.1.0"})).await;
    wait_settled(&ns, 2, Some("2.1.0")).await;
    helm::wait_rolled_out(&ns).await;
    let events = operator_events(&ns).await;
    for (first_seen, last_seen, instance, reason) in &events {
        if *instance == first {
            assert!(
                *last_seen <= killed_time,
                "{first} acted after it was killed: {reason} at {last_seen}"
            );
        } else {
            assert_eq!(*instance, second, "an Event from neither holder: {reason}");
            assert!(
                *first_seen >= acquired,
                "{second} acted ({reason} at {first_seen}) before it took the Lease at {acquired}"
            );
        }
    }
    assert!(
        events.iter().any(|(_, _, instance, _)| *instance == second),
        "the new leader reported the version change: {events:#?}"
    );
    for pod in helm::operator_pods(&ns).await {
        if pod.name_any() != second {
            assert_eq!(leader_gauge(&pod).await, "0", "{} is a standby", pod.name_any());
        }
    }
}

#[tokio::test]
async fn the_charts_admission_policy_refuses_other_registries_and_secret_refs() {
    let ns = TestNamespace::new("policy").await;
    let base = ClusterSpec::on_host(1, "db.example.internal").json();
    let with = |patch: Value| {
        let mut object = base.clone();
        crate::support::invalid_specs::merge(&mut object, &patch);
        serde_json::from_value::<OrchestratorCluster>(object).unwrap()
    };
    let secret_ref = json!({"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "other", "key": "token"}}});
    // A cluster from before the policy, with what it now forbids (its database does not
    // resolve: it runs nothing).
    let legacy = with(json!({"metadata": {"name": "legacy"}, "spec": {
        "image": "elsewhere.example/orc/server:1.0.0", "template": {"env": [secret_ref.clone()]}}}));
    let api = ns.api::<OrchestratorCluster>();
    api.create(&PostParams::default(), &legacy).await.unwrap();
    helm::install(
        &ns,
        &[
            "admissionPolicy.enabled=true",
            "admissionPolicy.allowedImagePrefixes={registry.example.com/orc/}",
            "admissionPolicy.allowSecretKeyRefs=false",
        ],
    )
    .await;
    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let other_registry = with(json!({"spec": {"image": "elsewhere.example/orc/server:1.0.0"}}));
    // The API server loads a new policy in the background: wait until it refuses.
    let deadline = Instant::now() + MINUTE;
    let refused = loop {
        match api.create(&dry_run, &other_registry).await {
            Err(kube::Error::Api(status)) => break status,
            Ok(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(200)).await,
            other => panic!("the policy never refused another registry: {other:?}"),
        }
    };
    assert_eq!(
        (refused.code, refused.reason.as_str()),
        (403, "Forbidden"),
        "{refused:?}"
    );
    assert!(
        refused
            .message
            .contains("spec.image elsewhere.example/orc/server:1.0.0 is not from an allowed registry")
            && refused.message.contains("registry.example.com/orc/"),
        "{}",
        refused.message
    );

    let refused = api
        .create(&dry_run, &with(json!({"spec": {"template": {"env": [secret_ref]}}})))
        .await
        .unwrap_err();
    let kube::Error::Api(refused) = refused else {
        panic!("{refused:?}")
    };
    assert!(
        refused
            .message
            .contains("may not use valueFrom.secretKeyRef here (TOKEN)"),
        "{}",
        refused.message
    );

    // What the policy allows passes: an allowed registry, no image at all, plain env values.
    for allowed in [
        json!({"spec": {"image": "registry.example.com/orc/server:1.0.0"}}),
        json!({"spec": {"template": {"env": [{"name": "WORKERS", "value": "2"}]}}}),
        json!({}),
    ] {
        let result = api.create(&dry_run, &with(allowed.clone())).await;
        assert!(result.is_ok(), "{allowed}: {result:?}");
    }

    // The cluster from before keeps what it had through edits that leave it as it was, and
    // cannot take more.
    let edit = |patch: Value| {
        let api = api.clone();
        async move {
            api.patch("legacy", &PatchParams::default(), &Patch::Merge(&patch))
                .await
        }
    };
    let kept = edit(json!({"metadata": {"labels": {"team": "a"}}, "spec": {"replicas": 2}})).await;
    assert!(kept.is_ok(), "an edit of other fields passes: {kept:?}");
    let moved = edit(json!({"spec": {"image": "elsewhere.example/orc/server:2.0.0"}})).await;
    assert!(
        matches!(&moved, Err(kube::Error::Api(s)) if s.message.contains("is not from an allowed registry")),
        "{moved:?}"
    );

    // Cluster-scoped: uninstalling the release removes the policy and its binding.
    let listed = || async {
        helm::ok(
            "kubectl",
            &[
                "get",
                "validatingadmissionpolicies,validatingadmissionpolicybindings",
                "-o",
                "name",
            ],
        )
        .await
    };
    let name = format!("{FULLNAME}-{}", ns.name);
    assert_eq!(listed().await.matches(&name).count(), 2, "a policy and its binding");
    helm::uninstall(&ns).await;
    let names = listed().await;
    assert!(!names.contains(&name), "{names}");
}
