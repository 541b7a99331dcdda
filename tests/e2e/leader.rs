//! Two operator replicas with leader election, the leader cut off from the API server (its
//! kubeconfig goes through a proxy that hangs on command) while a roll runs: the leader stops
//! acting by its local deadline and campaigns again as a standby, the standby takes the Lease
//! only after that, and the roll completes with every job run once.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use serde_json::json;

use crate::faults::{busy_roll, draining_server, patient, ran_once};
use crate::maintenance::cluster;
use crate::support::e2e::{MINUTE, Operator, Replica, TestNamespace, lease_holder, patch_spec, root, wait_settled};
use crate::support::proxy::{Mode, Proxy};

/// Seconds of the Lease in this test.
const LEASE_SECONDS: u64 = 18;

/// A copy of the suite's kubeconfig whose API server address is a proxy in front of the real
/// one (TLS passes through it untouched); the proxy.
async fn kubeconfig_through_proxy(name: &str) -> (PathBuf, Proxy) {
    let path = std::env::var("KUBECONFIG").expect("KUBECONFIG is set");
    let mut config: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let clusters = config["clusters"]
        .as_sequence_mut()
        .expect("clusters in the kubeconfig");
    let server = clusters[0]["cluster"]["server"].as_str().unwrap().to_string();
    let port: u16 = server
        .rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches('/')
        .parse()
        .unwrap();
    let proxy = Proxy::start(port).await;
    for cluster in clusters.iter_mut() {
        cluster["cluster"]["server"] = format!("https://127.0.0.1:{}", proxy.port).into();
    }
    let copy = root().join(format!(".local/e2e/{name}.kubeconfig"));
    std::fs::write(&copy, serde_yaml::to_string(&config).unwrap()).unwrap();
    (copy, proxy)
}

/// The holder of Lease `orc` of the test namespace.
async fn holder(ns: &TestNamespace) -> Option<String> {
    let lease = ns.api::<Lease>().get_opt("orc").await.unwrap()?;
    Some(lease_holder(&lease)).filter(|h| !h.is_empty())
}

#[tokio::test]
async fn a_leader_cut_off_from_the_api_stops_before_the_standby_takes_over() {
    let ns = TestNamespace::new("leader").await;
    let pg = ns.database().await;
    let (kubeconfig, proxy) = kubeconfig_through_proxy(&format!("{}-a", ns.name)).await;
    let mut a = Operator::replica(
        &ns.name,
        &Replica {
            identity: "a",
            lease: "orc",
            lease_seconds: LEASE_SECONDS,
            kubeconfig: Some(kubeconfig),
        },
    );
    let deadline = Instant::now() + MINUTE;
    while holder(&ns).await.as_deref() != Some("a") {
        assert!(Instant::now() < deadline, "replica a did not take the Lease");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _b = Operator::replica(
        &ns.name,
        &Replica {
            identity: "b",
            lease: "orc",
            lease_seconds: LEASE_SECONDS,
            kubeconfig: None,
        },
    );
    let jobs = busy_roll(&ns, &pg, &patient(cluster(2, &pg)), 2, "leader", 30_000).await;
    patch_spec(&ns, json!({"maintenance": {"paused": false}})).await;
    draining_server(&pg).await;
    assert_eq!(holder(&ns).await.as_deref(), Some("a"), "a still leads the roll");

    // Cut a off: every request it makes, and every watch it holds, hangs from now on.
    proxy.set(Mode::Hang);
    let cut = Instant::now();
    let mut stopped = None;
    let mut taken = None;
    while stopped.is_none() || taken.is_none() {
        assert!(
            cut.elapsed() < 2 * MINUTE,
            "a stopped leading: {stopped:?}, takeover by b: {taken:?}"
        );
        if stopped.is_none() && a.logs().contains("stopped leading") {
            stopped = Some(cut.elapsed());
        }
        if taken.is_none() && holder(&ns).await.as_deref() == Some("b") {
            taken = Some(cut.elapsed());
            assert!(
                stopped.is_some(),
                "b took the Lease {taken:?} after the cut while a still led"
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (stopped, taken) = (stopped.unwrap(), taken.unwrap());
    assert!(
        stopped <= Duration::from_secs(LEASE_SECONDS),
        "a stopped by its local deadline, {stopped:?} after the cut"
    );
    // a reaches the API again: it stands by, b keeps the Lease and finishes the roll.
    proxy.set(Mode::Pass);
    wait_settled(&ns, 2, Some("2.1.0")).await;
    ran_once(&pg, "leader", &jobs).await;
    assert!(a.exited().is_none(), "a stands by instead of exiting");
    assert_eq!(holder(&ns).await.as_deref(), Some("b"));
    assert!(
        a.metrics().await.contains("orchestrator_operator_leader 0"),
        "a reports that it does not lead"
    );
    println!(
        "FAULT leader cut off: a stopped leading {stopped:?} after the cut, b took the Lease {taken:?} after it; roll done"
    );
}
