//! The checked-in CRD matches the code, and its schema and CEL rules refuse every spec of the
//! invalid-spec table with the intended check, while the examples pass.

#[path = "support/invalid_specs.rs"]
mod invalid_specs;
#[path = "support/spec.rs"]
#[allow(dead_code)] // the settings of the e2e suites
mod spec;

use invalid_specs::{Check, cases, merge, valid_base};
use kube::core::cel::Validator;
use orchestrator_operator::crd::{OrchestratorCluster, crd_yaml};
use serde_json::Value;

fn open_api_schema() -> Value {
    let crd = orchestrator_operator::crd::crd();
    serde_json::to_value(
        crd.spec.versions[0]
            .schema
            .as_ref()
            .unwrap()
            .open_api_v3_schema
            .as_ref()
            .unwrap(),
    )
    .unwrap()
}

/// Schema errors as (keyword, instance path) pairs: JSON Schema's, and the repeated keys of
/// lists the schema declares `x-kubernetes-list-type: map` (which JSON Schema does not know).
fn schema_errors(object: &Value) -> Vec<(String, String)> {
    let schema = open_api_schema();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let mut errors: Vec<_> = validator
        .iter_errors(object)
        .map(|e| (e.kind().keyword().to_string(), e.instance_path().as_str().to_string()))
        .collect();
    repeated_list_map_keys(&schema, object, "", &mut errors);
    errors
}

/// Walks `object` with its `schema`, adding the path of every list-map entry whose keys repeat
/// an earlier entry's.
fn repeated_list_map_keys(schema: &Value, object: &Value, path: &str, errors: &mut Vec<(String, String)>) {
    match object {
        Value::Object(fields) => {
            for (name, value) in fields {
                if let Some(property) = schema["properties"].get(name) {
                    repeated_list_map_keys(property, value, &format!("{path}/{name}"), errors);
                }
            }
        }
        Value::Array(items) => {
            let keys: Vec<&str> = schema["x-kubernetes-list-map-keys"]
                .as_array()
                .map(|keys| keys.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let mut seen = Vec::new();
            for (index, item) in items.iter().enumerate() {
                if schema["x-kubernetes-list-type"] == "map" {
                    let key: Vec<&Value> = keys.iter().map(|k| &item[*k]).collect();
                    if seen.contains(&key) {
                        errors.push(("x-kubernetes-list-map-keys".into(), format!("{path}/{index}")));
                    }
                    seen.push(key);
                }
                repeated_list_map_keys(&schema["items"], item, &format!("{path}/{index}"), errors);
            }
        }
        _ => {}
    }
}

/// CEL errors after defaulting the object the way the API server does (through the Rust
/// type's serde defaults, which are the schema's defaults).
fn cel_errors(object: &Value) -> Vec<String> {
    let typed: OrchestratorCluster = serde_json::from_value(object.clone()).expect("schema-valid object deserializes");
    let defaulted = serde_json::to_value(&typed).unwrap();
    match Validator::new().validate(&open_api_schema(), &defaulted, None) {
        Ok(()) => vec![],
        Err(errors) => errors.to_string().lines().map(String::from).collect(),
    }
}

#[test]
fn checked_in_crd_matches_the_code() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/crds/orchestratorclusters.yaml");
    let checked_in = std::fs::read_to_string(path).unwrap();
    assert!(
        checked_in == crd_yaml(),
        "crds/orchestratorclusters.yaml is stale: run `cargo run --bin crdgen > crds/orchestratorclusters.yaml`"
    );
}

#[test]
fn every_invalid_spec_is_refused_by_its_check() {
    let cases = cases();
    assert!(cases.len() >= 40, "{} cases", cases.len());
    for case in cases {
        let mut object = valid_base();
        merge(&mut object, &case.patch);
        let schema = schema_errors(&object);
        match case.check {
            Check::Schema { keyword, path } => assert!(
                schema.iter().any(|(k, p)| k == keyword && p == path),
                "{}: expected {keyword} at {path}, schema said {schema:?}",
                case.name
            ),
            Check::Cel { message } => {
                assert!(
                    schema.is_empty(),
                    "{}: the schema refused it first: {schema:?}",
                    case.name
                );
                let cel = cel_errors(&object);
                assert!(
                    cel.iter().any(|e| e.contains(message)),
                    "{}: expected CEL {message:?}, got {cel:?}",
                    case.name
                );
            }
        }
    }
}

#[test]
fn valid_base_and_examples_pass() {
    let mut objects = vec![valid_base()];
    for file in ["minimal.yaml", "full.yaml"] {
        let text = std::fs::read_to_string(format!("{}/examples/{file}", env!("CARGO_MANIFEST_DIR"))).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value: Value = serde::Deserialize::deserialize(doc).unwrap();
            if value["kind"] == "OrchestratorCluster" {
                objects.push(value);
            }
        }
    }
    assert_eq!(objects.len(), 3);
    for object in objects {
        assert_eq!(schema_errors(&object), vec![], "{}", object["metadata"]["name"]);
        assert_eq!(
            cel_errors(&object),
            Vec::<String>::new(),
            "{}",
            object["metadata"]["name"]
        );
    }
}

#[test]
fn moving_the_database_of_a_cluster_with_servers_is_refused() {
    const MOVE: &str = "spec.database.host and spec.database.name cannot change while the cluster has servers";
    let with_status = |replicas: i64, servers: i64, host: &str| {
        let mut object = valid_base();
        merge(
            &mut object,
            &serde_json::json!({"spec": {"replicas": replicas, "database": {"host": host}},
                                "status": {"replicas": servers}}),
        );
        object
    };
    let transition = |old: &Value, new: &Value| -> Vec<String> {
        let defaulted = |object: &Value| {
            let typed: OrchestratorCluster = serde_json::from_value(object.clone()).unwrap();
            serde_json::to_value(&typed).unwrap()
        };
        match Validator::new().validate(&open_api_schema(), &defaulted(new), Some(&defaulted(old))) {
            Ok(()) => vec![],
            Err(errors) => errors.to_string().lines().map(String::from).collect(),
        }
    };
    let running = with_status(3, 3, "db.example.internal");
    let moved = with_status(3, 3, "db2.example.internal");
    assert!(transition(&running, &moved).iter().any(|e| e.contains(MOVE)));
    // Scaled to 0 in the spec, but servers still run.
    let stopping = with_status(0, 3, "db2.example.internal");
    assert!(transition(&running, &stopping).iter().any(|e| e.contains(MOVE)));
    // Scaled to 0 and no server left: the move is allowed.
    let stopped = with_status(0, 0, "db.example.internal");
    let moved_stopped = with_status(0, 0, "db2.example.internal");
    assert_eq!(transition(&stopped, &moved_stopped), Vec::<String>::new());
    // A cluster that has no server yet (a wrong host fixed before any joined) may move.
    let never_ran = with_status(3, 0, "db.example.internal");
    let fixed = with_status(3, 0, "db2.example.internal");
    assert_eq!(transition(&never_ran, &fixed), Vec::<String>::new());
    // Anything else may change while servers run.
    let rescaled = with_status(4, 3, "db.example.internal");
    assert_eq!(transition(&running, &rescaled), Vec::<String>::new());
}
