//! Wires the reconcile pipeline into kube-runtime controllers: one per watched namespace (or
//! one for all namespaces), each watching `OrchestratorCluster`s and the kinds they own. The
//! controllers run only while this replica leads (each reconcile has a deadline of its own,
//! [`crate::reconcile::reconcile`]).

use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;

use futures::{FutureExt, StreamExt};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::runtime::controller::Action;
use kube::runtime::{Controller, WatchStreamExt, predicates, reflector, watcher};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;

use crate::context::Context;
use crate::error::Result;
use crate::reconcile::{Watched, error_policy, reconcile};
use crate::resources::MANAGED_BY;

/// Label selector of the objects the operator owns, so that owned-kind watches skip the rest.
fn owned_selector() -> String {
    format!("app.kubernetes.io/managed-by={MANAGED_BY}")
}

fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// [`reconcile`], only while this replica leads: a replica that does not lead starts none.
async fn reconcile_while_leading(obj: Arc<Watched>, ctx: Arc<Context>) -> Result<Action> {
    ctx.leadership.ensure()?;
    reconcile(obj, ctx).await
}

async fn run_one(
    ctx: Arc<Context>,
    namespace: Option<String>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    // Watches (and their lists) go through the watch client: the request client's read timeout
    // would cut them.
    let client = ctx.watch_client.clone();
    let ns = namespace.as_deref();
    let clusters = scoped::<Watched>(&client, ns);
    let owned = watcher::Config::default().labels(&owned_selector());
    tracing::info!(namespace = ns.unwrap_or("<all>"), "starting controller");
    // Status writes (heartbeat ages change on every reconcile) must not trigger reconciles:
    // only spec changes (generation) and the owned objects do, plus the requeue timer.
    let writer = reflector::store::Writer::default();
    let reader = writer.as_reader();
    let forget = ctx.clone();
    let trigger = watcher::watcher(clusters, watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        // A deleted cluster leaves nothing behind: its cached database connection, its
        // back-off entry and its metric series go with it.
        .inspect(move |event| {
            if let Ok(watcher::Event::Delete(gone)) = event {
                forget.forget(gone);
            }
        })
        .applied_objects()
        .predicate_filter(predicates::generation, Default::default());
    Controller::for_stream(trigger, reader)
        .owns(scoped::<StatefulSet>(&client, ns), owned.clone())
        .owns(scoped::<Service>(&client, ns), owned.clone())
        .owns(scoped::<ConfigMap>(&client, ns), owned.clone())
        .owns(scoped::<PodDisruptionBudget>(&client, ns), owned.clone())
        .owns(scoped::<Job>(&client, ns), owned)
        .graceful_shutdown_on(shutdown)
        .run(reconcile_while_leading, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => tracing::debug!(object = %object.name, "reconciled"),
                Err(error) => tracing::debug!(%error, "reconcile did not complete"),
            }
        })
        .await;
}

/// Why the controllers stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// `shutdown` completed and every reconcile in flight finished.
    Shutdown,
    /// This replica stopped leading: the controllers were dropped at once, which aborts their
    /// reconciles in flight (kube-runtime runs each in a task it aborts when dropped).
    LostLeadership,
}

/// Runs the controllers until `shutdown` completes (a graceful stop: reconciles in flight
/// finish, each within its deadline) or `ctx.leadership` is lost (no reconcile is awaited). An
/// empty `namespaces` watches all.
pub async fn run(
    ctx: Arc<Context>,
    namespaces: Vec<String>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> StopReason {
    let shutdown = shutdown.boxed().shared();
    let scopes: Vec<Option<String>> = if namespaces.is_empty() {
        vec![None]
    } else {
        namespaces.into_iter().map(Some).collect()
    };
    let leadership = ctx.leadership.clone();
    let controllers =
        futures::future::join_all(scopes.into_iter().map(|ns| run_one(ctx.clone(), ns, shutdown.clone())));
    match leadership.while_leading(controllers).await {
        Ok(_) => StopReason::Shutdown,
        Err(_) => StopReason::LostLeadership,
    }
}
