//! End-to-end harness on the local cluster: a client from `KUBECONFIG` (the suite fails, never
//! skips, when no cluster answers), a fresh namespace per test deleted at the end, the CRD
//! installed once, the operator started as a host process per test, and waits on watches with
//! deadlines that fail with the object's last state.

use std::fmt::Debug;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::wait::{Condition, await_condition, conditions};
use kube::{Api, Client, Resource};
use orchestrator_operator::crd::{OrchestratorCluster, Phase};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use testing_postgres::TestPostgres;
use tokio::process::{Child, Command};
use tokio::sync::OnceCell;

use super::spec::ClusterSpec;

/// The pod name of a server's row id (`<namespace>/<pod>`).
pub(crate) fn pod_of(server_id: &str) -> String {
    server_id.rsplit('/').next().unwrap_or(server_id).to_string()
}

/// SQL for the pod name in `column`, a server's row id (`<namespace>/<pod>`): `server_id`,
/// or a job's `owner`.
pub(crate) fn pod_of_column(column: &str) -> String {
    format!("regexp_replace({column}, '^.*/', '')")
}

/// The pod of a Lease's holder ("" without one): each operator process names itself
/// `<pod>_<random suffix>`.
pub(crate) fn lease_holder(lease: &Lease) -> String {
    let identity = lease
        .spec
        .as_ref()
        .and_then(|s| s.holder_identity.clone())
        .unwrap_or_default();
    match identity.rsplit_once('_') {
        Some((pod, _)) => pod.to_string(),
        None => identity,
    }
}

/// The unit of most deadlines.
pub(crate) const MINUTE: Duration = Duration::from_secs(60);

/// The project's root folder.
pub(crate) fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A connection to `pg` as the application user.
pub(crate) async fn db(pg: &TestPostgres) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    client
}

/// The `orchestrator-server` binary (built beside the operator's, by `hack/agent-up.sh`).
pub(crate) fn server_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_orchestrator-operator")).with_file_name("orchestrator-server")
}

/// A client of the local cluster. Panics with instructions when none is reachable.
pub(crate) async fn client() -> Client {
    let hint =
        "the end-to-end suite needs the local cluster: run `make test` (or `eval $(make cluster-up)`); it never skips";
    assert!(
        std::env::var_os("KUBECONFIG").is_some(),
        "KUBECONFIG is not set: {hint}"
    );
    let client = Client::try_default()
        .await
        .unwrap_or_else(|e| panic!("cannot build a client ({e}): {hint}"));
    match tokio::time::timeout(Duration::from_secs(10), client.apiserver_version()).await {
        Ok(Ok(_)) => client,
        Ok(Err(e)) => panic!("the API server did not answer ({e}): {hint}"),
        Err(_) => panic!("the API server did not answer within 10s: {hint}"),
    }
}

/// A client that returns 429 and 503 answers instead of retrying them (kube's default client
/// retries them, which would hide an eviction refused by a PodDisruptionBudget).
pub(crate) async fn client_without_retry() -> Client {
    let mut config = kube::Config::infer().await.expect("KUBECONFIG is readable");
    config.default_retry = false;
    Client::try_from(config).unwrap()
}

static CRD: OnceCell<()> = OnceCell::const_new();

/// Installs `crds/orchestratorclusters.yaml` (once per test binary) and waits until it is served.
pub(crate) async fn ensure_crd(client: &Client) {
    CRD.get_or_init(|| async {
        let text = std::fs::read_to_string(root().join("crds/orchestratorclusters.yaml")).unwrap();
        let crd: CustomResourceDefinition = serde_yaml::from_str(&text).unwrap();
        let api = Api::<CustomResourceDefinition>::all(client.clone());
        let name = crd.metadata.name.clone().unwrap();
        api.patch(&name, &PatchParams::apply("e2e").force(), &Patch::Apply(&crd))
            .await
            .unwrap();
        let established = tokio::time::timeout(
            Duration::from_secs(30),
            await_condition(api, &name, conditions::is_crd_established()),
        );
        established.await.expect("CRD established within 30s").unwrap();
    })
    .await;
}

/// A namespace of one test, deleted when the value is dropped.
pub(crate) struct TestNamespace {
    /// Client of the cluster.
    pub(crate) client: Client,
    /// Name of the namespace.
    pub(crate) name: String,
}

impl TestNamespace {
    /// Creates `e2e-<prefix>-<random>`, with the CRD installed.
    pub(crate) async fn new(prefix: &str) -> Self {
        let client = client().await;
        ensure_crd(&client).await;
        let suffix: String = format!(
            "{:x}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        )
        .chars()
        .rev()
        .take(6)
        .collect();
        let name = format!("e2e-{prefix}-{suffix}");
        let namespace: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &namespace)
            .await
            .unwrap();
        Self { client, name }
    }

    /// An API of kind `K` in this namespace.
    pub(crate) fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), &self.name)
    }

    /// Creates an object from JSON in this namespace.
    pub(crate) async fn create<K>(&self, value: serde_json::Value) -> K
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()> + Clone + DeserializeOwned + Serialize + Debug,
    {
        let object: K = serde_json::from_value(value).unwrap();
        self.api::<K>().create(&PostParams::default(), &object).await.unwrap()
    }

    /// Creates the database credentials Secret the examples use.
    pub(crate) async fn create_db_secret(&self, name: &str, username: &str, password: &str) -> Secret {
        self.create(json!({"apiVersion": "v1", "kind": "Secret",
                           "metadata": {"name": name, "labels": {"orchestrator.dev/credentials": "true"}},
                           "stringData": {"username": username, "password": password}}))
            .await
    }

    /// Starts a PostgreSQL at the latest schema and creates Secret `process-db` with its
    /// application login.
    pub(crate) async fn database(&self) -> TestPostgres {
        self.database_at_schema(orchestrator_contract::LATEST_SCHEMA).await
    }

    /// Starts a PostgreSQL at schema `schema` (what server versions `schema.x.y` run) and
    /// creates Secret `process-db` with its application login.
    pub(crate) async fn database_at_schema(&self, schema: i32) -> TestPostgres {
        let pg = TestPostgres::start();
        let mut db = db(&pg).await;
        orchestrator_contract::migrations::migrate(&mut db, schema, false)
            .await
            .unwrap();
        self.create_db_secret("process-db", testing_postgres::USER, &pg.password)
            .await;
        pg
    }

    /// Creates the cluster `spec` in this namespace.
    pub(crate) async fn create_cluster(&self, spec: &ClusterSpec) -> OrchestratorCluster {
        self.api::<OrchestratorCluster>()
            .create(&PostParams::default(), &spec.build())
            .await
            .unwrap()
    }

    /// Every log the node agents wrote for `container` of the pods named `pod` (every pod object
    /// of that name, every run, on every node, oldest first), read from their disks as one reads
    /// a node's `/var/log/pods`: unlike `kubectl logs`, it still holds the pods already deleted.
    pub(crate) fn pod_log(&self, pod: &str, container: &str) -> String {
        let prefix = format!("{}_{pod}_", self.name);
        let mut files: Vec<(std::time::SystemTime, std::path::PathBuf)> = Vec::new();
        let nodes = std::fs::read_dir(root().join(".local/agent"))
            .into_iter()
            .flatten()
            .flatten();
        for node in nodes {
            let pods = std::fs::read_dir(node.path().join("pods"))
                .into_iter()
                .flatten()
                .flatten();
            for dir in pods.filter(|d| d.file_name().to_string_lossy().starts_with(&prefix)) {
                for file in std::fs::read_dir(dir.path()).into_iter().flatten().flatten() {
                    let name = file.file_name().to_string_lossy().into_owned();
                    if name.starts_with(&format!("{container}.")) && name.ends_with(".log") {
                        let modified = file.metadata().and_then(|m| m.modified());
                        files.push((modified.unwrap_or(std::time::UNIX_EPOCH), file.path()));
                    }
                }
            }
        }
        files.sort();
        files
            .iter()
            .map(|(_, path)| std::fs::read_to_string(path).unwrap_or_default())
            .collect()
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        // The test's runtime is blocked in this drop, and its client's connections live on it:
        // delete through a client of a runtime of its own.
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                if let Ok(client) = Client::try_default().await {
                    let _ = Api::<Namespace>::all(client)
                        .delete(&name, &DeleteParams::background())
                        .await;
                }
            });
        })
        .join();
    }
}

/// Waits until `condition` holds for object `name`, or fails after `timeout` naming `what`
/// and showing the object's last state.
pub(crate) async fn wait_for<K>(
    api: &Api<K>,
    name: &str,
    what: &str,
    timeout: Duration,
    condition: impl Condition<K>,
) -> Option<K>
where
    K: Resource + Clone + DeserializeOwned + Serialize + Debug + Send + 'static,
{
    match tokio::time::timeout(timeout, await_condition(api.clone(), name, condition)).await {
        Ok(Ok(object)) => object,
        Ok(Err(e)) => panic!("watching {name} for {what} failed: {e}"),
        Err(_) => {
            let last = api.get_opt(name).await.ok().flatten();
            let state = last
                .map(|o| serde_json::to_string_pretty(&o).unwrap())
                .unwrap_or_else(|| "<missing>".into());
            panic!("timed out after {timeout:?} waiting for {what} of {name}; last state:\n{state}")
        }
    }
}

/// The operator binary running on the host for one namespace; killed when dropped.
pub(crate) struct Operator {
    child: Child,
    /// Its log file.
    pub(crate) log: PathBuf,
    /// Its `/metrics` URL.
    pub(crate) metrics_url: String,
}

/// One operator replica of a leader-election test.
pub(crate) struct Replica<'a> {
    /// Its identity (`--identity`), also the name of its log.
    pub(crate) identity: &'a str,
    /// The Lease it campaigns for, in the watched namespace.
    pub(crate) lease: &'a str,
    /// Lease duration in seconds.
    pub(crate) lease_seconds: u64,
    /// The kubeconfig it uses (`KUBECONFIG` when `None`): one whose server is a proxy cuts it
    /// off from the API on command.
    pub(crate) kubeconfig: Option<PathBuf>,
}

impl Operator {
    /// Starts the operator watching `namespace`, with `image_repository` for servers, without
    /// leader election.
    pub(crate) async fn start(namespace: &str, image_repository: &str) -> Self {
        Self::spawn(namespace, image_repository, None, &[])
    }

    /// Starts the operator watching `namespace` without leader election, with `flags` added.
    pub(crate) fn start_with(namespace: &str, flags: &[&str]) -> Self {
        Self::spawn(namespace, "orchestrator-server", None, flags)
    }

    /// Starts the operator watching `namespace` without leader election, with `image_repository`
    /// for servers and `flags` added.
    pub(crate) fn with_repository(namespace: &str, image_repository: &str, flags: &[&str]) -> Self {
        Self::spawn(namespace, image_repository, None, flags)
    }

    /// Starts one replica of `replica` watching `namespace`, with leader election.
    pub(crate) fn replica(namespace: &str, replica: &Replica) -> Self {
        Self::spawn(namespace, "orchestrator-server", Some(replica), &[])
    }

    fn spawn(namespace: &str, image_repository: &str, replica: Option<&Replica>, flags: &[&str]) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = root().join(".local/e2e");
        std::fs::create_dir_all(&dir).unwrap();
        let log = match replica {
            Some(r) => dir.join(format!("{namespace}-operator-{}.log", r.identity)),
            None => dir.join(format!("{namespace}-operator.log")),
        };
        // Appended to: an operator restarted in the same namespace keeps the first one's log.
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_orchestrator-operator"));
        command.args(flags);
        command.args(["--watch-namespaces", namespace]).args([
            "--http-addr",
            &format!("127.0.0.1:{port}"),
            "--server-image-repository",
            image_repository,
        ]);
        match replica {
            None => {
                command.args(["--leader-election", "false"]);
            }
            Some(r) => {
                command.args(["--leader-election", "true", "--leader-election-namespace", namespace]);
                command.args(["--leader-election-lease", r.lease, "--identity", r.identity]);
                command.args(["--leader-election-lease-seconds", &r.lease_seconds.to_string()]);
                if let Some(kubeconfig) = &r.kubeconfig {
                    command.env("KUBECONFIG", kubeconfig);
                }
            }
        }
        let child = command
            .env("RUST_LOG", "info,orchestrator_operator=debug,kube=warn")
            .stdout(Stdio::from(file.try_clone().unwrap()))
            .stderr(Stdio::from(file))
            .kill_on_drop(true)
            .spawn()
            .expect("start the operator binary");
        Self {
            child,
            log,
            metrics_url: format!("http://127.0.0.1:{port}/metrics"),
        }
    }

    /// Its exit status, once it has exited.
    pub(crate) fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().unwrap()
    }

    /// The operator's metrics in Prometheus text format.
    pub(crate) async fn metrics(&self) -> String {
        reqwest::get(&self.metrics_url)
            .await
            .and_then(|r| r.error_for_status())
            .expect("the operator serves /metrics")
            .text()
            .await
            .unwrap()
    }

    /// The operator's log so far.
    pub(crate) fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Condition `type_` of the cluster's status.
pub(crate) fn condition<'a>(
    cr: &'a OrchestratorCluster,
    type_: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    cr.status.as_ref()?.conditions.iter().find(|c| c.type_ == type_)
}

/// Merge-patches the spec of cluster `prod` with `spec`; returns the patched cluster.
pub(crate) async fn patch_spec(ns: &TestNamespace, spec: serde_json::Value) -> OrchestratorCluster {
    ns.api::<OrchestratorCluster>()
        .patch("prod", &PatchParams::default(), &Patch::Merge(&json!({"spec": spec})))
        .await
        .unwrap()
}

/// Waits until condition `type_` of cluster `prod` has `status` and `reason`; returns it.
pub(crate) async fn wait_condition(
    ns: &TestNamespace,
    type_: &'static str,
    status: &'static str,
    reason: &'static str,
    timeout: Duration,
) -> OrchestratorCluster {
    let what = format!("{type_}={status} ({reason})");
    wait_for(
        &ns.api::<OrchestratorCluster>(),
        "prod",
        &what,
        timeout,
        move |c: Option<&OrchestratorCluster>| {
            c.and_then(|c| condition(c, type_))
                .is_some_and(|c| c.status == status && c.reason == reason)
        },
    )
    .await
    .unwrap()
}

/// Waits (two minutes at most) until cluster `prod` is in phase Ready with `replicas` servers
/// joined.
pub(crate) async fn wait_ready(ns: &TestNamespace, replicas: i32) -> OrchestratorCluster {
    wait_for(
        &ns.api::<OrchestratorCluster>(),
        "prod",
        "Ready",
        2 * MINUTE,
        move |c: Option<&OrchestratorCluster>| {
            c.and_then(|c| c.status.as_ref())
                .is_some_and(|s| s.phase == Phase::Ready && s.ready_replicas == replicas)
        },
    )
    .await
    .unwrap()
}

/// Waits until cluster `prod` is Ready with `replicas` servers joined (on `version`, when
/// given), no maintenance in progress, and a status that describes the current generation.
pub(crate) async fn wait_settled(
    ns: &TestNamespace,
    replicas: i32,
    version: Option<&'static str>,
) -> OrchestratorCluster {
    let what = format!("Ready with {replicas} servers on {}", version.unwrap_or("any version"));
    wait_for(
        &ns.api::<OrchestratorCluster>(),
        "prod",
        &what,
        3 * MINUTE,
        move |c: Option<&OrchestratorCluster>| {
            c.is_some_and(|c| {
                c.status.as_ref().is_some_and(|s| {
                    s.phase == Phase::Ready
                        && s.ready_replicas == replicas
                        && version.is_none_or(|v| s.current_version.as_deref() == Some(v))
                        && s.maintenance.is_none()
                        && s.observed_generation == c.metadata.generation
                })
            })
        },
    )
    .await
    .unwrap()
}

/// Runs the load generator for `seconds` (submitting `rate` jobs a second of `sleep_ms` each)
/// and returns its JSON report once every job settled.
pub(crate) async fn load(pg: &TestPostgres, batch: &str, rate: u32, seconds: u32, sleep_ms: u32) -> serde_json::Value {
    let output = tokio::process::Command::new(server_binary())
        .args(["loadgen", "--kind", "sleep", "--batch", batch])
        .args(["--rate", &rate.to_string(), "--duration", &seconds.to_string()])
        .args(["--sleep-ms", &sleep_ms.to_string()])
        .envs(pg.env())
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    serde_json::from_slice(&output.stdout).unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&output.stderr)))
}
