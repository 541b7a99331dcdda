//! Builders of the objects an `OrchestratorCluster` owns, one file per kind. They do no I/O:
//! each takes the resource (and settings) and returns the object to server-side apply.

pub mod configmap;
pub mod job;
pub mod pdb;
pub mod service;
pub mod statefulset;

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{Resource, ResourceExt};

use crate::crd::OrchestratorCluster;

/// Port of the server's web service (`/jobs`, `/livez`, `/readyz`).
pub const HTTP_PORT: i32 = 8080;
/// Port of the server's Prometheus `/metrics`.
pub const METRICS_PORT: i32 = 9090;
/// Pod template annotation holding the hash of the server ConfigMap's data.
pub const CONFIG_HASH_ANNOTATION: &str = "orchestrator.dev/config-hash";
/// Extra seconds of termination grace beyond `drainTimeout`, for handing work back and exiting.
pub const GRACE_MARGIN_SECONDS: i64 = 30;
/// Label value of `app.kubernetes.io/name` on every server object.
pub const APP_NAME: &str = "orchestrator-server";
/// Label value of `app.kubernetes.io/managed-by` on every owned object.
pub const MANAGED_BY: &str = "orchestrator-operator";

/// Operator-wide settings the builders need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuildSettings {
    /// Image repository used with `spec.version` as the tag when `spec.image` is unset.
    pub server_image_repository: String,
}

impl Default for BuildSettings {
    fn default() -> Self {
        Self {
            server_image_repository: "ghcr.io/orchestrator-dev/orchestrator-server".into(),
        }
    }
}

/// Names of the objects owned by one cluster.
pub struct Names;

impl Names {
    /// The StatefulSet and the PodDisruptionBudget share the cluster's name.
    pub fn statefulset(cr: &OrchestratorCluster) -> String {
        cr.name_any()
    }
    /// Client Service: the web-service front of all servers.
    pub fn client_service(cr: &OrchestratorCluster) -> String {
        cr.name_any()
    }
    /// Headless Service giving each server its own DNS name.
    pub fn headless_service(cr: &OrchestratorCluster) -> String {
        format!("{}-servers", cr.name_any())
    }
    /// ConfigMap of server settings.
    pub fn configmap(cr: &OrchestratorCluster) -> String {
        format!("{}-config", cr.name_any())
    }
    /// PodDisruptionBudget.
    pub fn pdb(cr: &OrchestratorCluster) -> String {
        cr.name_any()
    }
}

/// Labels that select the cluster's server pods.
pub fn selector_labels(cr: &OrchestratorCluster) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), APP_NAME.to_string()),
        ("app.kubernetes.io/instance".to_string(), cr.name_any()),
    ])
}

/// The selector as a label-selector string (`k=v,k=v`), for the scale subresource.
pub fn selector_string(cr: &OrchestratorCluster) -> String {
    selector_labels(cr)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Labels of every owned object: the selector labels plus ownership.
pub fn common_labels(cr: &OrchestratorCluster) -> BTreeMap<String, String> {
    let mut labels = selector_labels(cr);
    labels.insert("app.kubernetes.io/managed-by".into(), MANAGED_BY.into());
    labels.insert("app.kubernetes.io/part-of".into(), "orchestrator".into());
    labels
}

/// Metadata of an owned object: name, namespace, labels and a controller owner reference so
/// that garbage collection removes it with the cluster.
pub fn owned_meta(cr: &OrchestratorCluster, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: cr.namespace(),
        labels: Some(common_labels(cr)),
        owner_references: cr.controller_owner_ref(&()).map(|r| vec![r]),
        ..ObjectMeta::default()
    }
}

/// The image of the server container.
pub fn server_image(cr: &OrchestratorCluster, settings: &BuildSettings) -> String {
    cr.spec
        .image
        .clone()
        .unwrap_or_else(|| format!("{}:{}", settings.server_image_repository, cr.spec.version))
}

#[cfg(test)]
pub(crate) mod fixtures {
    //! The README's minimal and full examples as plain structs.
    use crate::crd::OrchestratorCluster;

    /// Parses an example file shipped under `examples/` (the cluster document only).
    pub fn example(file: &str) -> OrchestratorCluster {
        let text = std::fs::read_to_string(format!("{}/examples/{file}", env!("CARGO_MANIFEST_DIR"))).unwrap();
        let mut cr = serde_yaml::Deserializer::from_str(&text)
            .map(|doc| serde_yaml::Value::deserialize(doc).unwrap())
            .find(|v| v["kind"] == "OrchestratorCluster")
            .map(|v| serde_yaml::from_value::<OrchestratorCluster>(v).unwrap())
            .expect("example has an OrchestratorCluster");
        cr.metadata.namespace.get_or_insert_with(|| "automation".into());
        cr.metadata.uid = Some("5f1c7a52-0000-4000-8000-000000000001".into());
        cr
    }

    use serde::Deserialize;

    /// `examples/minimal.yaml`.
    pub fn minimal() -> OrchestratorCluster {
        example("minimal.yaml")
    }

    /// `examples/full.yaml`.
    pub fn full() -> OrchestratorCluster {
        example("full.yaml")
    }
}
