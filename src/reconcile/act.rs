//! Act: server-side apply the planned writes with the operator's one field manager.

use k8s_openapi::NamespaceResourceScope;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::plan::{Child, Plan, Write};
use crate::context::FIELD_MANAGER;
use crate::error::{Error, Result};

async fn apply<K>(client: &Client, namespace: &str, object: &K) -> Result<()>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Serialize
        + DeserializeOwned
        + std::fmt::Debug,
{
    let api = Api::<K>::namespaced(client.clone(), namespace);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    api.patch(&object.name_any(), &params, &Patch::Apply(object)).await?;
    Ok(())
}

/// Applies every write in order (settings and Services before the StatefulSet that uses them).
pub async fn apply_writes(client: &Client, namespace: &str, writes: &[Write]) -> Result<()> {
    for write in writes {
        match &write.child {
            Child::ConfigMap(o) => apply(client, namespace, o).await?,
            Child::Service(o) => apply(client, namespace, o).await?,
            Child::PodDisruptionBudget(o) => apply(client, namespace, o).await?,
            Child::StatefulSet(o) => apply(client, namespace, o).await?,
            Child::Job(o) => apply(client, namespace, o).await?,
        }
    }
    Ok(())
}

/// Asks servers for a friendly shutdown, withdraws requests of servers wanted again, and
/// removes the rows of gone servers.
pub async fn database_steps(db: &tokio_postgres::Client, plan: &Plan) -> Result<()> {
    let (drain, undrain, remove_rows) = (&plan.drain, &plan.undrain, &plan.remove_rows);
    for server in undrain {
        orchestrator_contract::cancel_drain(db, server)
            .await
            .map_err(Error::Database)?;
    }
    for server in drain {
        orchestrator_contract::request_drain(db, server)
            .await
            .map_err(Error::Database)?;
    }
    for server in remove_rows {
        orchestrator_contract::remove_server(db, server)
            .await
            .map_err(Error::Database)?;
    }
    Ok(())
}

/// Evicts `pod` through the Eviction API, only while it still has `uid` (its replacement is
/// never evicted). `Ok(false)` when a PodDisruptionBudget refuses it for now (429): the roll
/// waits and tries again.
pub async fn evict(client: &Client, namespace: &str, pod: &str, uid: Option<String>) -> Result<bool> {
    let pods = Api::<k8s_openapi::api::core::v1::Pod>::namespaced(client.clone(), namespace);
    let params = kube::api::EvictParams {
        delete_options: Some(kube::api::DeleteParams {
            preconditions: Some(kube::api::Preconditions {
                uid,
                resource_version: None,
            }),
            ..kube::api::DeleteParams::default()
        }),
        ..kube::api::EvictParams::default()
    };
    match pods.evict(pod, &params).await {
        Ok(_) => Ok(true),
        // Gone, or already replaced by a pod with another uid.
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 429 => Ok(false),
        Err(e) => Err(e.into()),
    }
}
