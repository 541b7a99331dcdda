//! Pods as the tests see them: the server pods of a cluster, a wait on a watch of a set of
//! pods, and what a failure message shows of a pod (ready, restarts, uid).

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::ListParams;

use super::e2e::TestNamespace;

/// Label selector of the server pods of cluster `name` (not its schema Jobs' pods).
pub(crate) fn server_pods(name: &str) -> String {
    format!("app.kubernetes.io/name=orchestrator-server,app.kubernetes.io/instance={name}")
}

/// The pods matching `selector` now, by name (including pods being deleted).
pub(crate) async fn list(ns: &TestNamespace, selector: &str) -> BTreeMap<String, Pod> {
    ns.api::<Pod>()
        .list(&ListParams::default().labels(selector))
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|p| (p.name_any(), p))
        .collect()
}

/// Waits (on a watch of the pods matching `selector`) until `condition` holds for the set of
/// pods not being deleted; returns them by name. Fails after `timeout` showing the last set.
pub(crate) async fn wait_pods(
    ns: &TestNamespace,
    selector: &str,
    what: &str,
    timeout: Duration,
    condition: impl Fn(&BTreeMap<String, Pod>) -> bool,
) -> BTreeMap<String, Pod> {
    use futures::StreamExt;
    use kube::runtime::watcher::{self, Event};
    let mut pods = BTreeMap::new();
    let mut listed = BTreeMap::new();
    let mut synced = false;
    let config = watcher::Config::default().labels(selector);
    let mut events = std::pin::pin!(watcher::watcher(ns.api::<Pod>(), config));
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let event = match tokio::time::timeout_at(deadline, events.next()).await {
            Ok(Some(Ok(event))) => event,
            Ok(Some(Err(_))) => continue,
            Ok(None) => panic!("the pod watch ended"),
            Err(_) => {
                let summary: Vec<String> = pods.values().map(describe_pod).collect();
                panic!("timed out after {timeout:?} waiting for {what}; pods ({selector}):\n{summary:#?}")
            }
        };
        match event {
            Event::Init => listed.clear(),
            Event::InitApply(pod) => {
                listed.insert(pod.name_any(), pod);
            }
            Event::InitDone => {
                pods = std::mem::take(&mut listed);
                synced = true;
            }
            Event::Apply(pod) => {
                pods.insert(pod.name_any(), pod);
            }
            Event::Delete(pod) => {
                pods.remove(&pod.name_any());
            }
        }
        if !synced {
            continue;
        }
        let live: BTreeMap<String, Pod> = pods
            .iter()
            .filter(|(_, p)| p.metadata.deletion_timestamp.is_none())
            .map(|(n, p)| (n.clone(), p.clone()))
            .collect();
        if condition(&live) {
            return live;
        }
    }
}

/// Whether `pod` is ready and not being deleted.
pub(crate) fn pod_ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Container restarts of `pod`.
pub(crate) fn restarts(pod: &Pod) -> i32 {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map(|c| c.iter().map(|c| c.restart_count).sum())
        .unwrap_or(0)
}

/// `name uid ready restarts` of a pod, for failure messages.
pub(crate) fn describe_pod(pod: &Pod) -> String {
    format!(
        "{} uid={} ready={} restarts={} deleting={}",
        pod.name_any(),
        pod.uid().unwrap_or_default(),
        pod_ready(pod),
        restarts(pod),
        pod.metadata.deletion_timestamp.is_some()
    )
}

/// Pod uids by name.
pub(crate) fn uids(pods: &BTreeMap<String, Pod>) -> BTreeMap<String, String> {
    pods.iter()
        .map(|(n, p)| (n.clone(), p.uid().unwrap_or_default()))
        .collect()
}

/// The pid of the server process of `server` in `namespace` (the node agent runs it locally).
pub(crate) fn server_pid(namespace: &str, server: &str) -> Option<i32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
        let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
        let environ = std::fs::read(entry.path().join("environ")).ok()?;
        let environ = String::from_utf8_lossy(&environ);
        let vars: Vec<&str> = environ.split('\0').collect();
        (vars.contains(&format!("SERVER_ID={server}").as_str())
            && vars.contains(&format!("POD_NAMESPACE={namespace}").as_str()))
        .then_some(pid)
    })
}
