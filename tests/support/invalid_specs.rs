//! The table of invalid `OrchestratorCluster` specs, each with the check that must refuse it.
//! Used offline against the CRD's own schema and CEL rules, and against a real API server.

use serde_json::{Value, json};

use super::spec::ClusterSpec;

/// Which part of the CRD refuses a spec.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Check {
    /// An OpenAPI schema keyword (`minimum`, `enum`, `pattern`, ...) at a JSON pointer.
    Schema {
        /// Read by the offline check only: the API server's message names the path, not the keyword.
        #[allow(dead_code)]
        keyword: &'static str,
        path: &'static str,
    },
    /// A CEL `x-kubernetes-validations` rule, identified by its message.
    Cel { message: &'static str },
}

/// One invalid spec.
pub(crate) struct InvalidSpec {
    /// What is wrong, for the test name.
    pub(crate) name: &'static str,
    /// A JSON merge patch applied to the valid base object.
    pub(crate) patch: Value,
    /// The check that refuses it.
    pub(crate) check: Check,
}

/// A valid object the patches are applied to: `table`, three servers of version 1.0.0 on a
/// database host that needs not exist.
pub(crate) fn valid_base() -> Value {
    ClusterSpec::on_host(3, "db.example.internal")
        .name("table")
        .version("1.0.0")
        .json()
}

/// RFC 7386 JSON merge patch.
pub(crate) fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

fn schema(keyword: &'static str, path: &'static str) -> Check {
    Check::Schema { keyword, path }
}

const TOO_MANY: &str = "spec.replicas must not exceed spec.capacity.maxReplicas";
const DRAIN_RANGE: &str = "maintenance.drainTimeout must be between 1s and 24h";
const READY_RANGE: &str = "maintenance.readyTimeout must be between 1s and 24h";
const RESERVED_ENV: &str = "template.env may not set SERVER_ID";

/// Every invalid spec of the table.
pub(crate) fn cases() -> Vec<InvalidSpec> {
    let case = |name, patch, check| InvalidSpec { name, patch, check };
    vec![
        case(
            "negative replicas",
            json!({"spec": {"replicas": -1}}),
            schema("minimum", "/spec/replicas"),
        ),
        case(
            "replicas above maxReplicas",
            json!({"spec": {"replicas": 6, "capacity": {"maxReplicas": 5}}}),
            Check::Cel { message: TOO_MANY },
        ),
        case(
            "replicas above the default maxReplicas",
            json!({"spec": {"replicas": 11}}),
            Check::Cel { message: TOO_MANY },
        ),
        case(
            "maxReplicas zero",
            json!({"spec": {"replicas": 0, "capacity": {"maxReplicas": 0}}}),
            schema("minimum", "/spec/capacity/maxReplicas"),
        ),
        case(
            "empty database host",
            json!({"spec": {"database": {"host": ""}}}),
            schema("minLength", "/spec/database/host"),
        ),
        case(
            "database host with a URL scheme",
            json!({"spec": {"database": {"host": "postgres://db"}}}),
            schema("pattern", "/spec/database/host"),
        ),
        case(
            "database port out of range",
            json!({"spec": {"database": {"port": 70000}}}),
            schema("maximum", "/spec/database/port"),
        ),
        case(
            "missing database name",
            json!({"spec": {"database": {"name": null}}}),
            schema("required", "/spec/database"),
        ),
        case(
            "empty credentials secret name",
            json!({"spec": {"database": {"credentialsSecret": {"name": ""}}}}),
            schema("minLength", "/spec/database/credentialsSecret/name"),
        ),
        case(
            "unknown sslMode",
            json!({"spec": {"database": {"sslMode": "sometimes"}}}),
            schema("enum", "/spec/database/sslMode"),
        ),
        case(
            "unknown onDrainTimeout",
            json!({"spec": {"maintenance": {"onDrainTimeout": "Ignore"}}}),
            schema("enum", "/spec/maintenance/onDrainTimeout"),
        ),
        case(
            "unknown schemaChange",
            json!({"spec": {"upgrade": {"schemaChange": "Migrate"}}}),
            schema("enum", "/spec/upgrade/schemaChange"),
        ),
        case(
            "drainTimeout not a duration",
            json!({"spec": {"maintenance": {"drainTimeout": "10 minutes"}}}),
            schema("pattern", "/spec/maintenance/drainTimeout"),
        ),
        case(
            "drainTimeout zero",
            json!({"spec": {"maintenance": {"drainTimeout": "0s"}}}),
            Check::Cel { message: DRAIN_RANGE },
        ),
        case(
            "readyTimeout of two days",
            json!({"spec": {"maintenance": {"readyTimeout": "48h"}}}),
            Check::Cel { message: READY_RANGE },
        ),
        case(
            "window opening at 25:00",
            json!({"spec": {"maintenance": {"windows": [{"start": "25:00", "duration": "2h"}]}}}),
            schema("pattern", "/spec/maintenance/windows/0/start"),
        ),
        case(
            "window on an unknown day",
            json!({"spec": {"maintenance": {"windows": [{"days": ["Funday"], "start": "02:00", "duration": "2h"}]}}}),
            schema("enum", "/spec/maintenance/windows/0/days/0"),
        ),
        case(
            "empty version",
            json!({"spec": {"version": ""}}),
            schema("minLength", "/spec/version"),
        ),
        case(
            "version with a space",
            json!({"spec": {"version": "1.0 beta"}}),
            schema("pattern", "/spec/version"),
        ),
        case(
            "template overriding the database password",
            json!({"spec": {"template": {"env": [{"name": "DATABASE_PASSWORD", "value": "x"}]}}}),
            Check::Cel { message: RESERVED_ENV },
        ),
    ]
}
