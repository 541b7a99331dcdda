//! Service account credentials for pods: a kubeconfig whose token comes from a TokenRequest
//! bound to the pod, so the API server enforces the pod's RBAC exactly as in a real cluster.

use std::path::Path;

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::api::PostParams;
use kube::config::Kubeconfig;
use kube::{Api, Client, ResourceExt};
use serde_json::json;

/// Seconds a pod token is valid; the agent renews it well before.
pub const TOKEN_SECONDS: i64 = 3600;

/// Whether the pod wants API credentials mounted.
pub fn wants_token(pod: &Pod) -> bool {
    let spec = pod.spec.as_ref();
    spec.and_then(|s| s.automount_service_account_token).unwrap_or(true)
        && spec
            .and_then(|s| s.service_account_name.as_deref())
            .is_some_and(|n| !n.is_empty())
}

/// Requests a token for the pod's ServiceAccount, bound to the pod.
pub async fn request_token(client: &Client, pod: &Pod) -> Result<String, String> {
    let namespace = pod.namespace().unwrap_or_default();
    let account = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .unwrap_or_default();
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![],
            expiration_seconds: Some(TOKEN_SECONDS),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(pod.name_any()),
                uid: pod.uid(),
            }),
        },
        ..TokenRequest::default()
    };
    let response = Api::<ServiceAccount>::namespaced(client.clone(), &namespace)
        .create_token_request(&account, &PostParams::default(), &request)
        .await
        .map_err(|e| format!("token request for serviceaccount {namespace}/{account}: {e}"))?;
    response
        .status
        .map(|s| s.token)
        .ok_or_else(|| format!("token request for serviceaccount {namespace}/{account} returned no token"))
}

/// Writes `token` to `dir/token` and a kubeconfig using it to `dir/kubeconfig` (which the
/// client re-reads), pointing at the agent's own API server. Returns the kubeconfig path.
pub fn write_kubeconfig(agent: &Kubeconfig, dir: &Path, token: &str, namespace: &str) -> Result<String, String> {
    let context = agent
        .current_context
        .as_ref()
        .and_then(|name| agent.contexts.iter().find(|c| &c.name == name))
        .and_then(|c| c.context.clone())
        .ok_or("the agent's kubeconfig has no current context")?;
    let cluster = agent
        .clusters
        .iter()
        .find(|c| c.name == context.cluster)
        .and_then(|c| c.cluster.clone())
        .ok_or("the agent's kubeconfig has no cluster for its context")?;
    let ca = match (&cluster.certificate_authority_data, &cluster.certificate_authority) {
        (Some(data), _) => json!({"certificate-authority-data": data}),
        (None, Some(file)) => json!({"certificate-authority": file}),
        (None, None) => json!({}),
    };
    let mut cluster_entry = json!({"server": cluster.server});
    cluster_entry
        .as_object_mut()
        .unwrap()
        .extend(ca.as_object().unwrap().clone());
    let token_path = dir.join("token");
    let kubeconfig = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "cluster", "cluster": cluster_entry}],
        "users": [{"name": "serviceaccount", "user": {"tokenFile": token_path}}],
        "contexts": [{"name": "pod", "context": {"cluster": "cluster", "user": "serviceaccount", "namespace": namespace}}],
        "current-context": "pod",
    });
    let path = dir.join("kubeconfig");
    std::fs::write(&token_path, token).map_err(|e| format!("write {}: {e}", token_path.display()))?;
    std::fs::write(&path, serde_yaml::to_string(&kubeconfig).map_err(|e| e.to_string())?)
        .map_err(|e| format!("write {}: {e}", path.display()))?;
    Ok(path.display().to_string())
}
