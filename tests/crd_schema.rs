//! The checked-in CRD matches the code, and its schema and CEL rules refuse every spec of the
//! invalid-spec table with the intended check, while the examples pass.

#[path = "support/invalid_specs.rs"]
mod invalid_specs;
#[path = "support/spec.rs"]
#[allow(dead_code)] // the settings of the e2e suites
mod spec;

use invalid_specs::{Check, cases, merge, valid_base};
use kube::CustomResourceExt;
use kube::core::cel::Validator;
use orchestrator_operator::crd::{OrchestratorCluster, crd_yaml};
use serde_json::Value;

fn open_api_schema() -> Value {
    let crd = OrchestratorCluster::crd();
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

/// Schema errors as (keyword, instance path) pairs.
fn schema_errors(object: &Value) -> Vec<(String, String)> {
    let validator = jsonschema::validator_for(&open_api_schema()).unwrap();
    validator
        .iter_errors(object)
        .map(|e| (e.kind().keyword().to_string(), e.instance_path().as_str().to_string()))
        .collect()
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
    assert!(cases.len() >= 12);
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
