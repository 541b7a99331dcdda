//! The one builder of the `OrchestratorCluster` objects the tests declare (the e2e suites, the
//! mock-API tests, the invalid-spec table): a cluster `prod` of version 2.0.0 on database
//! `process` with the login of Secret `process-db`, and one chainable setting per thing a test
//! changes. Only what is set is written, so the object is exactly what a person would declare.

use orchestrator_operator::crd::OrchestratorCluster;
use serde_json::{Map, Value, json};
use testing_postgres::TestPostgres;

/// An `OrchestratorCluster` being built: `ClusterSpec::new(3, &pg).version("2.1.0").build()`.
#[derive(Clone, Debug)]
pub(crate) struct ClusterSpec {
    name: String,
    replicas: i32,
    version: String,
    database: Map<String, Value>,
    maintenance: Map<String, Value>,
    capacity: Map<String, Value>,
    env: Vec<Value>,
}

impl ClusterSpec {
    /// `replicas` servers on the test's PostgreSQL `pg` (127.0.0.1, its port, `sslMode: disable`).
    pub(crate) fn new(replicas: i32, pg: &TestPostgres) -> Self {
        Self::on_host(replicas, "127.0.0.1")
            .database("port", pg.port)
            .ssl_mode("disable")
    }

    /// `replicas` servers of a database at `host` with the default port and `sslMode` (tests
    /// where no database answers).
    pub(crate) fn on_host(replicas: i32, host: &str) -> Self {
        let database = json!({"host": host, "name": "process", "credentialsSecret": {"name": "process-db"}});
        Self {
            name: "prod".into(),
            replicas,
            version: "2.0.0".into(),
            database: database.as_object().unwrap().clone(),
            maintenance: Map::new(),
            capacity: Map::new(),
            env: Vec::new(),
        }
    }

    /// `metadata.name` (default `prod`).
    pub(crate) fn name(mut self, name: &str) -> Self {
        self.name = name.into();
        self
    }

    /// `spec.version` (default 2.0.0).
    pub(crate) fn version(mut self, version: &str) -> Self {
        self.version = version.into();
        self
    }

    /// `spec.database.sslMode` (`disable`, `prefer`, `require`, `verify-ca`, `verify-full`).
    pub(crate) fn ssl_mode(self, mode: &str) -> Self {
        self.database("sslMode", mode)
    }

    /// `spec.database.port` (a fault-injecting proxy in front of the test's PostgreSQL).
    pub(crate) fn port(self, port: u16) -> Self {
        self.database("port", port)
    }

    /// `spec.maintenance.drainTimeout` (`30s`, `10m`...).
    pub(crate) fn drain_timeout(self, timeout: &str) -> Self {
        self.maintenance("drainTimeout", timeout)
    }

    /// `spec.maintenance.readyTimeout`.
    pub(crate) fn ready_timeout(self, timeout: &str) -> Self {
        self.maintenance("readyTimeout", timeout)
    }

    /// A variable of `spec.template.env` (a server setting such as `WORKERS`).
    pub(crate) fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push(json!({"name": name, "value": value}));
        self
    }

    /// `spec.capacity.autoscale` (`{"minReplicas": 1, "maxReplicas": 4, ...}`).
    pub(crate) fn autoscale(mut self, autoscale: Value) -> Self {
        self.capacity.insert("autoscale".into(), autoscale);
        self
    }

    /// `maintenance.windows`.
    pub(crate) fn windows(self, windows: Value) -> Self {
        self.maintenance("windows", windows)
    }

    /// `maintenance.canary`.
    pub(crate) fn canary(self, canary: Value) -> Self {
        self.maintenance("canary", canary)
    }

    fn database(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.database.insert(key.into(), value.into());
        self
    }

    fn maintenance(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.maintenance.insert(key.into(), value.into());
        self
    }

    /// The object as JSON.
    pub(crate) fn json(&self) -> Value {
        let mut spec = json!({"replicas": self.replicas, "version": self.version, "database": self.database});
        if !self.maintenance.is_empty() {
            spec["maintenance"] = Value::Object(self.maintenance.clone());
        }
        if !self.capacity.is_empty() {
            spec["capacity"] = Value::Object(self.capacity.clone());
        }
        if !self.env.is_empty() {
            spec["template"] = json!({"env": self.env});
        }
        json!({
            "apiVersion": "orchestrator.dev/v1alpha1",
            "kind": "OrchestratorCluster",
            "metadata": {"name": self.name},
            "spec": spec
        })
    }

    /// The object as a manifest, as a git repository holds it for `kubectl apply -f`.
    pub(crate) fn yaml(&self) -> String {
        serde_yaml::to_string(&self.json()).unwrap()
    }

    /// The typed object.
    pub(crate) fn build(&self) -> OrchestratorCluster {
        serde_json::from_value(self.json()).unwrap()
    }
}
