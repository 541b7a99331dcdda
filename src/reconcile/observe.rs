//! Observe: read the objects the cluster owns.

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;

use crate::crd::OrchestratorCluster;
use crate::error::Result;
use crate::resources::Names;

/// The owned objects as they are in the cluster (`None` when missing).
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// Server settings ConfigMap.
    pub configmap: Option<ConfigMap>,
    /// Headless Service.
    pub headless_service: Option<Service>,
    /// Client Service.
    pub client_service: Option<Service>,
    /// PodDisruptionBudget.
    pub pdb: Option<PodDisruptionBudget>,
    /// StatefulSet of servers.
    pub statefulset: Option<StatefulSet>,
}

async fn get<K>(client: &Client, namespace: &str, name: String) -> Result<Option<K>>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    Ok(Api::<K>::namespaced(client.clone(), namespace).get_opt(&name).await?)
}

/// Reads every owned object of `cr`.
pub async fn observe(client: &Client, cr: &OrchestratorCluster) -> Result<Observed> {
    let ns = cr.namespace().unwrap_or_default();
    Ok(Observed {
        configmap: get(client, &ns, Names::configmap(cr)).await?,
        headless_service: get(client, &ns, Names::headless_service(cr)).await?,
        client_service: get(client, &ns, Names::client_service(cr)).await?,
        pdb: get(client, &ns, Names::pdb(cr)).await?,
        statefulset: get(client, &ns, Names::statefulset(cr)).await?,
    })
}
