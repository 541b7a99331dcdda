//! Builders of the objects an `OrchestratorCluster` owns, one file per kind. They do no I/O
//! and cannot fail: each takes the validated spec (or just the resource) and returns the
//! object to server-side apply. Does not need a client.

pub(crate) mod configmap;
pub(crate) mod job;
pub(crate) mod pdb;
pub(crate) mod service;
pub(crate) mod statefulset;

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{Resource, ResourceExt};

use crate::crd::OrchestratorCluster;

/// Port of the server's web service (`/jobs`, `/livez`, `/readyz`).
pub(crate) const HTTP_PORT: i32 = 8080;
/// Port of the server's Prometheus `/metrics`.
pub(crate) const METRICS_PORT: i32 = 9090;
/// Pod template annotation holding the hash of the server ConfigMap's data.
pub(crate) const CONFIG_HASH_ANNOTATION: &str = "orchestrator.dev/config-hash";
/// Extra seconds of termination grace beyond `drainTimeout`, for handing work back and exiting.
pub(crate) const GRACE_MARGIN_SECONDS: i64 = 30;
/// Label value of `app.kubernetes.io/name` on every server object.
pub(crate) const APP_NAME: &str = "orchestrator-server";
/// Label value of `app.kubernetes.io/managed-by` on every owned object.
pub(crate) const MANAGED_BY: &str = "orchestrator-operator";

/// Names of the objects owned by one cluster.
pub(crate) struct Names;

impl Names {
    /// The StatefulSet and the PodDisruptionBudget share the cluster's name.
    pub(crate) fn statefulset(cr: &OrchestratorCluster) -> String {
        cr.name_any()
    }
    /// Client Service: the web-service front of all servers.
    pub(crate) fn client_service(cr: &OrchestratorCluster) -> String {
        cr.name_any()
    }
    /// Headless Service giving each server its own DNS name.
    pub(crate) fn headless_service(cr: &OrchestratorCluster) -> String {
        format!("{}-servers", cr.name_any())
    }
    /// ConfigMap of server settings.
    pub(crate) fn configmap(cr: &OrchestratorCluster) -> String {
        format!("{}-config", cr.name_any())
    }
    /// PodDisruptionBudget.
    pub(crate) fn pdb(cr: &OrchestratorCluster) -> String {
        cr.name_any()
    }
}

/// Label naming the cluster an object or pod belongs to.
pub(crate) const INSTANCE_LABEL: &str = "app.kubernetes.io/instance";

/// Labels that select the cluster's server pods.
pub(crate) fn selector_labels(cr: &OrchestratorCluster) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), APP_NAME.to_string()),
        (INSTANCE_LABEL.to_string(), cr.name_any()),
    ])
}

/// The selector as a label-selector string (`k=v,k=v`), for the scale subresource.
pub(crate) fn selector_string(cr: &OrchestratorCluster) -> String {
    selector_labels(cr)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Labels of every owned object: the selector labels plus ownership.
pub(crate) fn common_labels(cr: &OrchestratorCluster) -> BTreeMap<String, String> {
    let mut labels = selector_labels(cr);
    labels.insert("app.kubernetes.io/managed-by".into(), MANAGED_BY.into());
    labels.insert("app.kubernetes.io/part-of".into(), "orchestrator".into());
    labels
}

/// Metadata of an owned object: name, namespace, labels and a controller owner reference so
/// that garbage collection removes it with the cluster.
pub(crate) fn owned_meta(cr: &OrchestratorCluster, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: cr.namespace(),
        labels: Some(common_labels(cr)),
        owner_references: cr.controller_owner_ref(&()).map(|r| vec![r]),
        ..ObjectMeta::default()
    }
}
