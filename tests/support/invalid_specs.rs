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
const NAME: &str = "metadata.name must be a DNS-1035 label";
const TAG: &str = "is not a valid image tag";
const IMAGE: &str = "is not a valid image reference";
const LABEL_KEYS: &str = "template.labels keys must be qualified names";
const LABEL_VALUES: &str = "template.labels values must be at most 63";
const OWNED_LABELS: &str = "template.labels may not set app.kubernetes.io/name";
const ANNOTATIONS: &str = "template.annotations keys must be qualified names";
const NODE_SELECTOR: &str = "template.nodeSelector must hold node label keys";
const QUANTITY: &str = "template.resources: every request and limit must be a quantity";
const REQUEST_OVER_LIMIT: &str = "template.resources: a request may not exceed the limit";
const ENV_NAME: &str = "template.env names must be printable ASCII characters other than =";
const ENV_VALUE: &str = "template.env: an entry sets value or valueFrom, not both";
const TOLERATION_ENUMS: &str = "template.tolerations: operator must be Exists or Equal";
const TOLERATION_KEY: &str = "template.tolerations: a key must be a qualified name";
const TOLERATION_NO_KEY: &str = "template.tolerations: a toleration without a key must use operator Exists";
const TOLERATION_EXISTS: &str = "template.tolerations: a toleration with operator Exists has no value";
const TOLERATION_SECONDS: &str = "template.tolerations: tolerationSeconds applies only to effect NoExecute";
const PRIORITY_CLASS: &str = "template.priorityClassName must be a DNS subdomain";
const SECRET_NAME: &str = "database.credentialsSecret.name must be a DNS subdomain";
const SECRET_KEYS: &str = "database.credentialsSecret.usernameKey and passwordKey must be Secret keys";
const ADD_AT_ONCE: &str = "capacity.addAtOnce must not exceed capacity.maxReplicas";
const WINDOW_TOO_SHORT: &str = "every maintenance window must last at least drainTimeout + readyTimeout";

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
            "channel binding as libpq's disable",
            json!({"spec": {"database": {"channelBinding": "disable"}}}),
            schema("enum", "/spec/database/channelBinding"),
        ),
        case(
            "channel binding required without TLS",
            json!({"spec": {"database": {"sslMode": "disable", "channelBinding": "require"}}}),
            Check::Cel {
                message: "database.channelBinding require needs TLS, and sslMode disable never uses it: choose an sslMode that uses TLS, or channelBinding prefer",
            },
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
        // The cluster's own name: the names derived from it must fit.
        case(
            "name of 53 characters",
            json!({"metadata": {"name": "a".repeat(53)}}),
            schema("maxLength", "/metadata/name"),
        ),
        case(
            "name with a dot",
            json!({"metadata": {"name": "prod.eu"}}),
            Check::Cel { message: NAME },
        ),
        case(
            "name starting with a digit",
            json!({"metadata": {"name": "1prod"}}),
            Check::Cel { message: NAME },
        ),
        // Version and image.
        case(
            "version with build metadata and no image",
            json!({"spec": {"version": "1.0.0+build.7"}}),
            Check::Cel { message: TAG },
        ),
        case(
            "image with an uppercase repository",
            json!({"spec": {"image": "registry.example.com/Orchestrator/server:1.0.0"}}),
            Check::Cel { message: IMAGE },
        ),
        case(
            "image with a space",
            json!({"spec": {"image": "orchestrator server:1.0.0"}}),
            Check::Cel { message: IMAGE },
        ),
        case(
            "image tag with a plus",
            json!({"spec": {"image": "ghcr.io/example/server:1.0+b"}}),
            Check::Cel { message: IMAGE },
        ),
        case(
            "image digest too short",
            json!({"spec": {"image": "ghcr.io/example/server@sha256:abc"}}),
            Check::Cel { message: IMAGE },
        ),
        // Labels, annotations and node selector.
        case(
            "label key with a space",
            json!({"spec": {"template": {"labels": {"my team": "a"}}}}),
            Check::Cel { message: LABEL_KEYS },
        ),
        case(
            "label value of 64 characters",
            json!({"spec": {"template": {"labels": {"team": "a".repeat(64)}}}}),
            schema("maxLength", "/spec/template/labels/team"),
        ),
        case(
            "label value with a space",
            json!({"spec": {"template": {"labels": {"team": "data platform"}}}}),
            Check::Cel { message: LABEL_VALUES },
        ),
        case(
            "label selecting the servers",
            json!({"spec": {"template": {"labels": {"app.kubernetes.io/instance": "other"}}}}),
            Check::Cel { message: OWNED_LABELS },
        ),
        case(
            "label of the operator's domain",
            json!({"spec": {"template": {"labels": {"orchestrator.dev/role": "x"}}}}),
            Check::Cel { message: OWNED_LABELS },
        ),
        case(
            "label the StatefulSet controller sets",
            json!({"spec": {"template": {"labels": {"controller-revision-hash": "x"}}}}),
            Check::Cel { message: OWNED_LABELS },
        ),
        case(
            "annotation key starting with a dash",
            json!({"spec": {"template": {"annotations": {"-team": "a"}}}}),
            Check::Cel { message: ANNOTATIONS },
        ),
        case(
            "annotation the operator sets",
            json!({"spec": {"template": {"annotations": {"orchestrator.dev/config-hash": "x"}}}}),
            Check::Cel { message: ANNOTATIONS },
        ),
        case(
            "node selector key with a space",
            json!({"spec": {"template": {"nodeSelector": {"node pool": "a"}}}}),
            Check::Cel { message: NODE_SELECTOR },
        ),
        case(
            "node selector value with a slash",
            json!({"spec": {"template": {"nodeSelector": {"pool": "a/b"}}}}),
            Check::Cel { message: NODE_SELECTOR },
        ),
        // Resources.
        case(
            "cpu that is not a quantity",
            json!({"spec": {"template": {"resources": {"requests": {"cpu": "lots"}}}}}),
            Check::Cel { message: QUANTITY },
        ),
        case(
            "memory limit with a unit typo",
            json!({"spec": {"template": {"resources": {"limits": {"memory": "1GB"}}}}}),
            Check::Cel { message: QUANTITY },
        ),
        case(
            "memory request above its limit",
            json!({"spec": {"template": {"resources": {"requests": {"memory": "2Gi"}, "limits": {"memory": "1Gi"}}}}}),
            Check::Cel {
                message: REQUEST_OVER_LIMIT,
            },
        ),
        case(
            "cpu request above its limit in other units",
            json!({"spec": {"template": {"resources": {"requests": {"cpu": "1500m"}, "limits": {"cpu": 1}}}}}),
            Check::Cel {
                message: REQUEST_OVER_LIMIT,
            },
        ),
        // Environment.
        case(
            "env name with an equals sign",
            json!({"spec": {"template": {"env": [{"name": "WORKERS=8", "value": "8"}]}}}),
            Check::Cel { message: ENV_NAME },
        ),
        case(
            "env name with a tab",
            json!({"spec": {"template": {"env": [{"name": "MY\tVAR", "value": "8"}]}}}),
            Check::Cel { message: ENV_NAME },
        ),
        case(
            "env name repeated",
            json!({"spec": {"template": {"env": [{"name": "WORKERS", "value": "8"}, {"name": "WORKERS", "value": "9"}]}}}),
            schema("x-kubernetes-list-map-keys", "/spec/template/env/1"),
        ),
        case(
            "env value and valueFrom",
            json!({"spec": {"template": {"env": [{"name": "TOKEN", "value": "x",
                "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]}}}),
            Check::Cel { message: ENV_VALUE },
        ),
        case(
            "65 env entries",
            json!({"spec": {"template": {"env": (0..65).map(|i| json!({"name": format!("V{i}"), "value": "x"})).collect::<Vec<_>>()}}}),
            schema("maxItems", "/spec/template/env"),
        ),
        // Tolerations.
        case(
            "toleration operator In",
            json!({"spec": {"template": {"tolerations": [{"key": "pool", "operator": "In", "value": "a"}]}}}),
            Check::Cel {
                message: TOLERATION_ENUMS,
            },
        ),
        case(
            "toleration effect NoRun",
            json!({"spec": {"template": {"tolerations": [{"key": "pool", "operator": "Exists", "effect": "NoRun"}]}}}),
            Check::Cel {
                message: TOLERATION_ENUMS,
            },
        ),
        case(
            "toleration key with a space",
            json!({"spec": {"template": {"tolerations": [{"key": "node pool", "operator": "Exists"}]}}}),
            Check::Cel {
                message: TOLERATION_KEY,
            },
        ),
        case(
            "toleration without a key using Equal",
            json!({"spec": {"template": {"tolerations": [{"operator": "Equal", "value": "a"}]}}}),
            Check::Cel {
                message: TOLERATION_NO_KEY,
            },
        ),
        case(
            "toleration Exists with a value",
            json!({"spec": {"template": {"tolerations": [{"key": "pool", "operator": "Exists", "value": "a"}]}}}),
            Check::Cel {
                message: TOLERATION_EXISTS,
            },
        ),
        case(
            "tolerationSeconds on NoSchedule",
            json!({"spec": {"template": {"tolerations": [{"key": "pool", "operator": "Exists",
                "effect": "NoSchedule", "tolerationSeconds": 60}]}}}),
            Check::Cel {
                message: TOLERATION_SECONDS,
            },
        ),
        // Names of other objects.
        case(
            "priority class with an underscore",
            json!({"spec": {"template": {"priorityClassName": "high_priority"}}}),
            Check::Cel {
                message: PRIORITY_CLASS,
            },
        ),
        case(
            "credentials Secret with uppercase letters",
            json!({"spec": {"database": {"credentialsSecret": {"name": "DB-Credentials"}}}}),
            Check::Cel { message: SECRET_NAME },
        ),
        case(
            "username key with a space",
            json!({"spec": {"database": {"credentialsSecret": {"usernameKey": "user name"}}}}),
            Check::Cel { message: SECRET_KEYS },
        ),
        case(
            "password key with a slash",
            json!({"spec": {"database": {"credentialsSecret": {"passwordKey": "db/password"}}}}),
            Check::Cel { message: SECRET_KEYS },
        ),
        // Specs that could never do what they say.
        case(
            "addAtOnce above maxReplicas",
            json!({"spec": {"replicas": 2, "capacity": {"maxReplicas": 2, "addAtOnce": 3}}}),
            Check::Cel { message: ADD_AT_ONCE },
        ),
        case(
            "window shorter than the default step",
            json!({"spec": {"maintenance": {"windows": [{"start": "02:00", "duration": "15m"}]}}}),
            Check::Cel {
                message: WINDOW_TOO_SHORT,
            },
        ),
        case(
            "window shorter than drainTimeout + readyTimeout",
            json!({"spec": {"maintenance": {"drainTimeout": "20m", "readyTimeout": "15m",
                "windows": [{"days": ["Sat"], "start": "02:00", "duration": "30m"}]}}}),
            Check::Cel {
                message: WINDOW_TOO_SHORT,
            },
        ),
        case(
            "approval neither Automatic nor Manual",
            json!({"spec": {"maintenance": {"approval": "Sometimes"}}}),
            schema("enum", "/spec/maintenance/approval"),
        ),
        // Autoscaling.
        case(
            "autoscale maxReplicas above the ceiling",
            json!({"spec": {"capacity": {"maxReplicas": 5, "autoscale": {"maxReplicas": 6}}}}),
            Check::Cel {
                message: "capacity.autoscale.maxReplicas must not exceed capacity.maxReplicas",
            },
        ),
        case(
            "autoscale minReplicas above maxReplicas",
            json!({"spec": {"capacity": {"autoscale": {"minReplicas": 4, "maxReplicas": 3}}}}),
            Check::Cel {
                message: "capacity.autoscale.minReplicas must not exceed capacity.autoscale.maxReplicas",
            },
        ),
        case(
            "autoscale minReplicas zero",
            json!({"spec": {"capacity": {"autoscale": {"minReplicas": 0, "maxReplicas": 3}}}}),
            schema("minimum", "/spec/capacity/autoscale/minReplicas"),
        ),
        case(
            "autoscale without maxReplicas",
            json!({"spec": {"capacity": {"autoscale": {"minReplicas": 1}}}}),
            schema("required", "/spec/capacity/autoscale"),
        ),
        case(
            "autoscale jobsPerServer zero",
            json!({"spec": {"capacity": {"autoscale": {"maxReplicas": 3, "jobsPerServer": 0}}}}),
            schema("minimum", "/spec/capacity/autoscale/jobsPerServer"),
        ),
        case(
            "autoscale scale-down step zero",
            json!({"spec": {"capacity": {"autoscale": {"maxReplicas": 3, "scaleDown": {"step": 0}}}}}),
            schema("minimum", "/spec/capacity/autoscale/scaleDown/step"),
        ),
        case(
            "autoscale stabilization window not a duration",
            json!({"spec": {"capacity": {"autoscale": {"maxReplicas": 3, "scaleUp": {"stabilizationWindow": "soon"}}}}}),
            schema("pattern", "/spec/capacity/autoscale/scaleUp/stabilizationWindow"),
        ),
        case(
            "autoscale scale-down window above 24h",
            json!({"spec": {"capacity": {"autoscale": {"maxReplicas": 3, "scaleDown": {"stabilizationWindow": "25h"}}}}}),
            Check::Cel {
                message: "capacity.autoscale.scaleDown.stabilizationWindow must be at most 24h",
            },
        ),
        case(
            "autoscale schedule floor above maxReplicas",
            json!({"spec": {"capacity": {"autoscale": {"maxReplicas": 3,
                "schedules": [{"start": "08:00", "duration": "8h", "minReplicas": 4}]}}}}),
            Check::Cel {
                message: "a capacity.autoscale schedule's minReplicas must not exceed capacity.autoscale.maxReplicas",
            },
        ),
        case(
            "autoscale schedule start not a time",
            json!({"spec": {"capacity": {"autoscale": {"maxReplicas": 3,
                "schedules": [{"start": "8am", "duration": "8h", "minReplicas": 2}]}}}}),
            schema("pattern", "/spec/capacity/autoscale/schedules/0/start"),
        ),
    ]
}
