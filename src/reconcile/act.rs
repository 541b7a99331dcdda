//! Act: carry out a plan — server-side apply the writes with the operator's one field manager,
//! the database steps (drain, withdraw a drain, remove rows), and an eviction.

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::Eviction;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{DeleteOptions, ObjectMeta, Preconditions};
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::events::EventType;
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::plan::{Child, Plan, Write};
use super::report;
use crate::context::{Context, FIELD_MANAGER};
use crate::crd::{OrchestratorCluster, object_key};
use crate::database::ServerRows;
use crate::database::preflight::DATABASE_DEADLINE;
use crate::error::{Error, Result};
use crate::rejections::Rejection;
use crate::vocabulary::Reason;

/// What became of a plan.
#[derive(Debug)]
pub(crate) enum Acted {
    /// Carried out.
    Done,
    /// The API server refused one of the writes: nothing after it was done (no database step,
    /// no eviction). The refusal is remembered for the cluster's generation.
    Rejected(Rejection),
}

/// Carries out `plan` for `cr`: writes (with an `Applied` Event saying what changed), then the
/// database steps when the database is usable, then the eviction.
pub(crate) async fn act(
    ctx: &Context,
    cr: &OrchestratorCluster,
    plan: &Plan,
    database: Option<&ServerRows>,
) -> Result<Acted> {
    let object = object_key(cr);
    let namespace = cr.namespace().unwrap_or_default();
    if let Err(rejection) = apply_writes(ctx, &namespace, &plan.writes, cr.metadata.generation).await? {
        tracing::warn!(%object, %rejection, "an owned object was refused");
        ctx.rejections.record(&object, rejection.clone());
        // Withdrawing a drain is always safe, and a server wanted again must not be left to
        // stop: only that of the database steps still happens.
        if let Some(database) = database
            && !plan.undrain.is_empty()
        {
            let withdrawals = Plan {
                drain: Vec::new(),
                remove_rows: Vec::new(),
                ..plan.clone()
            };
            database_steps_in_time(ctx, database, &withdrawals).await?;
        }
        return Ok(Acted::Rejected(rejection));
    }
    // Nothing refused (or nothing to write: what was refused is no longer wanted).
    ctx.rejections.clear(&object);
    if !plan.writes.is_empty() {
        let summary = plan
            .writes
            .iter()
            .map(|w| {
                format!(
                    "{} {} {}",
                    if w.creates { "created" } else { "corrected" },
                    w.child.kind(),
                    w.child.name()
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        tracing::info!(%object, %summary, "applied owned objects");
        report::publish(ctx, &cr.object_ref(&()), EventType::Normal, Reason::Applied, summary).await;
    }
    if let Some(database) = database {
        database_steps_in_time(ctx, database, plan).await?;
    }
    if let Some((pod, uid)) = &plan.evict {
        tracing::info!(%object, %pod, uid = uid.as_deref().unwrap_or("<none>"), "evicting");
        // A late eviction is harmless: its uid precondition names the pod of the stored step,
        // which a new leader would evict too, and never its replacement.
        ctx.leadership.ensure()?;
        if !evict(&ctx.eviction_client, &namespace, pod, uid.clone()).await? {
            tracing::info!(%object, %pod, "eviction refused by the PodDisruptionBudget for now; waiting");
        }
    }
    Ok(Acted::Done)
}

/// Server-side applies `object`, only while this replica leads.
async fn apply<K>(ctx: &Context, namespace: &str, object: &K) -> Result<()>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Serialize
        + DeserializeOwned
        + std::fmt::Debug,
{
    ctx.leadership.ensure()?;
    let api = Api::<K>::namespaced(ctx.client.clone(), namespace);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    api.patch(&object.name_any(), &params, &Patch::Apply(object)).await?;
    Ok(())
}

/// Characters of the API server's message kept in a refusal (it goes into the status and an
/// Event).
const MESSAGE_LIMIT: usize = 1024;

/// Applies every write in order (settings and Services before the StatefulSet that uses them),
/// stopping at the first the API server refuses (a 400, 403 or 422, built from the cluster's
/// `generation`); other failures are errors.
async fn apply_writes(
    ctx: &Context,
    namespace: &str,
    writes: &[Write],
    generation: Option<i64>,
) -> Result<std::result::Result<(), Rejection>> {
    for write in writes {
        let applied = match &write.child {
            Child::ConfigMap(o) => apply(ctx, namespace, o).await,
            Child::Service(o) => apply(ctx, namespace, o).await,
            Child::PodDisruptionBudget(o) => apply(ctx, namespace, o).await,
            Child::StatefulSet(o) => apply(ctx, namespace, o).await,
            Child::Job(o) => apply(ctx, namespace, o).await,
        };
        match applied {
            Err(Error::Kube(kube::Error::Api(status))) if matches!(status.code, 400 | 403 | 422) => {
                return Ok(Err(Rejection {
                    generation,
                    kind: write.child.kind(),
                    name: write.child.name(),
                    code: status.code,
                    // An admission webhook's or policy's message may be long: its start says
                    // what was refused.
                    message: status.message.chars().take(MESSAGE_LIMIT).collect(),
                }));
            }
            other => other?,
        }
    }
    Ok(Ok(()))
}

/// [`database_steps`] within [`DATABASE_DEADLINE`], all of it while this replica leads (the
/// steps may land up to the deadline from now).
async fn database_steps_in_time(ctx: &Context, rows: &ServerRows, plan: &Plan) -> Result<()> {
    ctx.leadership.ensure_for(DATABASE_DEADLINE)?;
    tokio::time::timeout(DATABASE_DEADLINE, database_steps(ctx, rows, plan))
        .await
        .map_err(|_| {
            Error::Database(orchestrator_contract::ContractError::Timeout(format!(
                "drain requests and row removals did not finish within {DATABASE_DEADLINE:?}"
            )))
        })?
}

/// Asks servers for a friendly shutdown, withdraws requests of servers wanted again, and
/// removes the rows of gone servers; each write only while this replica leads.
async fn database_steps(ctx: &Context, rows: &ServerRows, plan: &Plan) -> Result<()> {
    let (drain, undrain, remove_rows) = (&plan.drain, &plan.undrain, &plan.remove_rows);
    if drain.is_empty() && undrain.is_empty() && remove_rows.is_empty() {
        return Ok(());
    }
    let connection = rows.pool.get().await.map_err(|error| {
        // Not the error's text: a refused login names the user.
        let why = match &error {
            deadpool_postgres::PoolError::Timeout(_) => "none free or opened in time".to_string(),
            deadpool_postgres::PoolError::Backend(e) => e.code().map_or("the connection failed".to_string(), |code| {
                format!("SQLSTATE {}", code.code())
            }),
            _ => "the pool is closed".to_string(),
        };
        Error::Database(orchestrator_contract::ContractError::Timeout(format!(
            "no connection for the drain requests and row removals: {why}"
        )))
    })?;
    let db: &tokio_postgres::Client = &connection;
    for server in undrain {
        ctx.leadership.ensure()?;
        orchestrator_contract::cancel_drain(db, &rows.id(server))
            .await
            .map_err(Error::Database)?;
    }
    for server in drain {
        ctx.leadership.ensure()?;
        orchestrator_contract::request_drain(db, &rows.id(server))
            .await
            .map_err(Error::Database)?;
    }
    for server in remove_rows {
        ctx.leadership.ensure()?;
        orchestrator_contract::remove_server(db, &rows.id(server))
            .await
            .map_err(Error::Database)?;
    }
    Ok(())
}

/// How long an eviction request may take before the roll tries again at its next look.
pub(crate) const EVICTION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// Evicts `pod` through the Eviction API, only while it still has `uid` (its replacement is
/// never evicted). `Ok(false)` when a PodDisruptionBudget refuses it for now (429) or the API
/// server does not answer in time: the roll waits and tries again.
///
/// The Eviction is posted as a `policy/v1` object rather than through kube's `Api::evict`:
/// kube 5 serializes its options as `delete_options`, a field the API server ignores, which
/// silently dropped the uid precondition and let a late retry evict the replacement pod.
pub async fn evict(client: &Client, namespace: &str, pod: &str, uid: Option<String>) -> Result<bool> {
    let pods = Api::<Pod>::namespaced(client.clone(), namespace);
    let eviction = Eviction {
        metadata: ObjectMeta {
            name: Some(pod.to_string()),
            namespace: Some(namespace.to_string()),
            ..ObjectMeta::default()
        },
        delete_options: Some(DeleteOptions {
            preconditions: Some(Preconditions {
                uid,
                resource_version: None,
            }),
            ..DeleteOptions::default()
        }),
    };
    let params = PostParams::default();
    let request = pods.create_subresource::<Eviction, Value>("eviction", pod, &params, &eviction);
    // The API server retries conflicts of an eviction for up to ten seconds, and a loaded one can
    // take longer still: the roll does not wait on it (the uid precondition makes a retry safe).
    let Ok(answer) = tokio::time::timeout(EVICTION_TIMEOUT, request).await else {
        tracing::warn!(%pod, timeout = ?EVICTION_TIMEOUT, "the eviction did not answer in time; trying again later");
        return Ok(false);
    };
    match answer {
        Ok(_) => Ok(true),
        // Gone, or already replaced by a pod with another uid.
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(true),
        // Refused by a PodDisruptionBudget for now, or the API server is briefly unavailable
        // (the eviction client does not retry): the roll waits and tries again.
        Err(kube::Error::Api(e)) if matches!(e.code, 429 | 503 | 504) => Ok(false),
        Err(e) => Err(e.into()),
    }
}
