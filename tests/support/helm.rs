//! The operator installed the way users install it: `helm install` of
//! `charts/orchestrator-operator` into a test's namespace (the node agent runs the operator
//! binary as the pod, with a token of the chart's ServiceAccount), and the `kubectl` and `helm`
//! binaries of the local cluster's tools.

use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::ListParams;
use tokio::process::Command;
use tokio::sync::OnceCell;

use super::e2e::{TestNamespace, root, wait_for};

/// Name of the Helm release in every test namespace.
pub(crate) const RELEASE: &str = "orc";
/// Name of the release's objects (Deployment, ServiceAccount, Lease, Roles).
pub(crate) const FULLNAME: &str = "orc-orchestrator-operator";
/// Label selector of the operator's pods.
pub(crate) const OPERATOR_PODS: &str = "app.kubernetes.io/name=orchestrator-operator,app.kubernetes.io/instance=orc";

static TOOLS: OnceCell<PathBuf> = OnceCell::const_new();

/// The folder of the local cluster's tools (`hack/build-tools.sh`, seconds when warm).
pub(crate) async fn tools() -> PathBuf {
    TOOLS
        .get_or_init(|| async {
            let out = Command::new("bash")
                .arg(root().join("hack/build-tools.sh"))
                .output()
                .await
                .expect("run hack/build-tools.sh");
            assert!(
                out.status.success(),
                "hack/build-tools.sh failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let stdout = String::from_utf8(out.stdout).unwrap();
            PathBuf::from(stdout.lines().last().expect("build-tools prints the folder").trim())
        })
        .await
        .clone()
}

/// Runs a tool of the local cluster (`kubectl`, `helm`) from the project's root; returns its
/// output whatever the exit code.
pub(crate) async fn run(tool: &str, args: &[&str]) -> Output {
    Command::new(tools().await.join(tool))
        .args(args)
        .current_dir(root())
        .output()
        .await
        .unwrap_or_else(|e| panic!("run {tool}: {e}"))
}

/// Runs `tool args`, fails the test unless it succeeds, returns its stdout.
pub(crate) async fn ok(tool: &str, args: &[&str]) -> String {
    let out = run(tool, args).await;
    assert!(
        out.status.success(),
        "`{tool} {}` failed ({}):\n{}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `kubectl args`, which must succeed; its stdout.
pub(crate) async fn kubectl(args: &[&str]) -> String {
    ok("kubectl", args).await
}

/// Runs `tool args` with `stdin` as its standard input; returns its output.
pub(crate) async fn run_with_stdin(tool: &str, args: &[&str], stdin: &str) -> Output {
    use tokio::io::AsyncWriteExt;
    let mut child = Command::new(tools().await.join(tool))
        .args(args)
        .current_dir(root())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {tool}: {e}"));
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.as_bytes()).await.unwrap();
    drop(input);
    child.wait_with_output().await.unwrap()
}

/// The values every test installs with: the image names the node agent maps to the operator
/// and server binaries, and the release's own namespace as the only one watched (tests run
/// in parallel, each with its own operator).
pub(crate) fn local_values(namespace: &str) -> Vec<String> {
    vec![
        "image.repository=orchestrator-operator".into(),
        "serverImageRepository=orchestrator-server".into(),
        format!("watchNamespaces={{{namespace}}}"),
    ]
}

/// Runs `helm <command> orc charts/orchestrator-operator -n <ns>` with `values` (`key=value`)
/// and the raw arguments `extra`.
async fn helm_release(command: &str, ns: &TestNamespace, values: &[String], extra: &[&str]) -> String {
    let chart = root().join("charts/orchestrator-operator");
    let chart = chart.to_str().unwrap();
    let mut args = vec![command, RELEASE, chart, "--namespace", &ns.name];
    args.extend_from_slice(extra);
    for value in values {
        args.push("--set");
        args.push(value);
    }
    ok("helm", &args).await
}

/// `helm install` of the chart into `ns` with the local values plus `values`; waits until
/// the operator's Deployment is available. Returns helm's output (the NOTES).
pub(crate) async fn install(ns: &TestNamespace, values: &[&str]) -> String {
    install_with(ns, values, &[]).await
}

/// [`install`] with raw helm arguments `extra` (e.g. `--set-json`).
pub(crate) async fn install_with(ns: &TestNamespace, values: &[&str], extra: &[&str]) -> String {
    let mut all = local_values(&ns.name);
    all.extend(values.iter().map(|v| v.to_string()));
    let notes = helm_release("install", ns, &all, extra).await;
    wait_rolled_out(ns).await;
    notes
}

/// `helm upgrade --reuse-values` with `values`; waits until the new pods replaced the old.
pub(crate) async fn upgrade(ns: &TestNamespace, values: &[&str]) -> String {
    let values: Vec<String> = values.iter().map(|v| v.to_string()).collect();
    let out = helm_release("upgrade", ns, &values, &["--reuse-values"]).await;
    wait_rolled_out(ns).await;
    out
}

/// `helm uninstall`.
pub(crate) async fn uninstall(ns: &TestNamespace) -> String {
    ok("helm", &["uninstall", RELEASE, "--namespace", &ns.name, "--wait"]).await
}

/// Waits until the operator's Deployment has rolled out: every wanted replica updated and
/// ready, no old pod left.
pub(crate) async fn wait_rolled_out(ns: &TestNamespace) -> Deployment {
    wait_for(
        &ns.api::<Deployment>(),
        FULLNAME,
        "operator Deployment rolled out",
        Duration::from_secs(90),
        |d: Option<&Deployment>| {
            d.is_some_and(|d| {
                let wanted = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
                let generation = d.metadata.generation;
                d.status.as_ref().is_some_and(|s| {
                    s.observed_generation >= generation
                        && s.updated_replicas.unwrap_or(0) == wanted
                        && s.ready_replicas.unwrap_or(0) == wanted
                        && s.available_replicas.unwrap_or(0) == wanted
                        && s.replicas.unwrap_or(0) == wanted
                })
            })
        },
    )
    .await
    .unwrap()
}

/// The operator's pods (not being deleted), by name.
pub(crate) async fn operator_pods(ns: &TestNamespace) -> Vec<Pod> {
    let mut pods: Vec<Pod> = ns
        .api::<Pod>()
        .list(&ListParams::default().labels(OPERATOR_PODS))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    pods.sort_by_key(|p| p.name_any());
    pods
}

/// The log the node agent keeps of operator pod `pod`.
pub(crate) fn operator_log(ns: &TestNamespace, pod: &str) -> String {
    ns.pod_log(pod, "operator")
}

/// Waits until operator pod `pod`'s log contains `text`.
pub(crate) async fn wait_log(ns: &TestNamespace, pod: &str, text: &str, timeout: Duration) {
    // The log is a file written by the node agent; nothing to watch but the file itself.
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if operator_log(ns, pod).contains(text) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "operator pod {pod} did not log {text:?} within {timeout:?}; its log:\n{}",
            operator_log(ns, pod)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
