//! The local cluster's API server audit log (`hack/audit-policy.yaml`: every request but
//! watches, metadata only): what the API server itself recorded of a client's requests, so that
//! a test counts the operator's requests without trusting the operator's own counters.

use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;

use serde_json::Value;

use super::e2e::root;

/// One request as the audit log recorded it.
#[derive(Clone, Debug)]
pub(crate) struct Request {
    /// `get`, `list`, `create`, `update`, `patch`, `delete`, ...
    pub(crate) verb: String,
    /// The client's User-Agent.
    pub(crate) user_agent: String,
    /// Namespace of the object (empty for cluster-scoped requests).
    pub(crate) namespace: String,
    /// Resource, with its subresource after a `/` (`orchestratorclusters/status`).
    pub(crate) resource: String,
    /// Name of the object (empty for a list).
    pub(crate) name: String,
    /// When the API server received it (`requestReceivedTimestamp`).
    pub(crate) received: Option<k8s_openapi::jiff::Timestamp>,
    /// The HTTP status code of the answer.
    pub(crate) code: i64,
}

impl std::fmt::Display for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} {}/{} ({})",
            self.verb, self.namespace, self.resource, self.name, self.user_agent
        )
    }
}

/// The requests, one per line.
pub(crate) fn lines(requests: &[&Request]) -> String {
    requests.iter().map(|r| format!("  {r}\n")).collect()
}

impl Request {
    /// Whether the request changes something.
    pub(crate) fn is_write(&self) -> bool {
        matches!(
            self.verb.as_str(),
            "create" | "update" | "patch" | "delete" | "deletecollection"
        )
    }
}

/// The audit log file of the local cluster.
pub(crate) struct AuditLog {
    path: PathBuf,
}

impl AuditLog {
    /// The log of the running local cluster; fails the test when the cluster keeps none.
    pub(crate) fn open() -> Self {
        let name = std::env::var("ORC_CLUSTER_NAME").unwrap_or_else(|_| "orchestrator".into());
        let path = root().join(format!(".local/kwok/clusters/{name}/logs/audit.log"));
        assert!(
            path.exists(),
            "{} does not exist: start the local cluster with `make cluster-up` (it enables the audit log)",
            path.display()
        );
        Self { path }
    }

    /// Where the log ends now: [`AuditLog::since`] reads what comes after.
    pub(crate) fn mark(&self) -> u64 {
        std::fs::metadata(&self.path).unwrap().len()
    }

    /// The operator's requests about namespace `ns` recorded after `mark`.
    pub(crate) fn operator_requests(&self, mark: u64, ns: &str) -> Vec<Request> {
        self.since(mark)
            .into_iter()
            .filter(|r| r.namespace == ns && r.user_agent.starts_with("orchestrator-operator/"))
            .collect()
    }

    /// Waits (two minutes at most) until the operator has sent no request about `ns` for
    /// `quiet` (the last Events of a transition land after its status); fails the test if it
    /// never does. Returns the mark of that moment.
    pub(crate) async fn quiet(&self, ns: &str, quiet: std::time::Duration) -> u64 {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        loop {
            let mark = self.mark();
            tokio::time::sleep(quiet).await;
            let sent = self.operator_requests(mark, ns);
            if sent.is_empty() {
                return self.mark();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the operator never went quiet about {ns}; last requests:\n{}",
                lines(&sent.iter().collect::<Vec<_>>())
            );
        }
    }

    /// Every request recorded after `mark` (the stage `ResponseComplete` of each).
    pub(crate) fn since(&self, mark: u64) -> Vec<Request> {
        let mut file = std::fs::File::open(&self.path).unwrap();
        file.seek(SeekFrom::Start(mark)).unwrap();
        let mut text = String::new();
        file.read_to_string(&mut text).unwrap();
        text.lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|event| event["stage"] == "ResponseComplete")
            .map(|event| {
                let object = &event["objectRef"];
                let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
                let mut resource = text(&object["resource"]);
                if let Some(sub) = object["subresource"].as_str() {
                    resource = format!("{resource}/{sub}");
                }
                Request {
                    verb: text(&event["verb"]),
                    user_agent: text(&event["userAgent"]),
                    namespace: text(&object["namespace"]),
                    resource,
                    name: text(&object["name"]),
                    received: event["requestReceivedTimestamp"].as_str().and_then(|t| t.parse().ok()),
                    code: event["responseStatus"]["code"].as_i64().unwrap_or_default(),
                }
            })
            .collect()
    }
}
