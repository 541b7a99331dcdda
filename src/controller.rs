//! Wires the reconcile pipeline into kube-runtime controllers: one per watched namespace (or
//! one for all namespaces), each watching `OrchestratorCluster`s, the kinds they own, their
//! pods and the Secrets' metadata. Each watch feeds a store of [`crate::caches`] (what the
//! reconciles read) and triggers the reconciles of the clusters it concerns. The controllers
//! run only while this replica leads (each reconcile has a deadline of its own,
//! [`crate::reconcile::reconcile`]), at most `max_concurrent_reconciles` at once.

use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;

use futures::{FutureExt, Stream, StreamExt};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Node, NodeSpec, Pod, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{self, Action};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, Predicate, WatchStreamExt, predicates, reflector, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;

use crate::caches::{FAILED_CREATE_EVENTS, Scope};
use crate::context::Context;
use crate::error::Result;
use crate::reconcile::{Watched, error_policy, reconcile};
use crate::resources::job::SCHEMA_APP_NAME;
use crate::resources::{APP_NAME, INSTANCE_LABEL, MANAGED_BY};

/// Label selector of the objects the operator owns, so that owned-kind watches skip the rest.
fn owned_selector() -> String {
    format!("app.kubernetes.io/managed-by={MANAGED_BY}")
}

/// Label selector of the pods a reconcile reads: server pods and schema Job pods.
fn pod_selector() -> String {
    format!("app.kubernetes.io/name in ({APP_NAME},{SCHEMA_APP_NAME})")
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

/// The objects of `api` selected by `config`, kept in the store of `writer` without their
/// managed fields; every object added, changed or deleted is passed on as a trigger.
fn reflected<K>(
    api: Api<K>,
    config: watcher::Config,
    writer: reflector::store::Writer<K>,
) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    watcher::watcher(api, config)
        .default_backoff()
        .modify(drop_managed_fields)
        .reflect(writer)
        .touched_objects()
}

/// Forgets an object's `metadata.managedFields` before it is cached: the operator never reads
/// them (its writes are server-side applies), and they are a large part of every object the
/// caches hold, a few per cluster.
fn drop_managed_fields<K: Resource>(object: &mut K) {
    object.meta_mut().managed_fields = None;
}

/// [`reconcile`], only while this replica leads: a replica that does not lead starts none.
async fn reconcile_while_leading(obj: Arc<Watched>, ctx: Arc<Context>) -> Result<Action> {
    ctx.leadership.ensure()?;
    reconcile(obj, ctx).await
}

/// The annotations a person sets to let a change go, hashed: approving a generation, promoting
/// it past its canary or applying an operator change (annotations, not spec changes) must
/// trigger its reconcile too.
fn approval(cluster: &Watched) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let annotations = cluster.annotations();
    let values: Vec<Option<&String>> = [
        crate::crd::APPROVE_ANNOTATION,
        crate::crd::PROMOTE_ANNOTATION,
        crate::crd::OPERATOR_CHANGE_ANNOTATION,
    ]
    .iter()
    .map(|key| annotations.get(*key))
    .collect();
    if values.iter().all(Option::is_none) {
        return None;
    }
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    values.hash(&mut hasher);
    Some(hasher.finish())
}

/// The cluster whose StatefulSet an Event is about (the StatefulSet bears the cluster's name).
fn cluster_of_event(event: Event) -> Option<ObjectRef<Watched>> {
    Some(ObjectRef::new(event.involved_object.name.as_deref()?).within(&event.namespace()?))
}

/// The cluster a HorizontalPodAutoscaler scales, if it scales one.
fn cluster_of_scaler(hpa: HorizontalPodAutoscaler) -> Option<ObjectRef<Watched>> {
    let name = hpa.spec.as_ref()?.scale_target_ref.name.clone();
    let namespace = hpa.namespace()?;
    crate::caches::scales(&hpa, &name).then(|| ObjectRef::new(&name).within(&namespace))
}

/// The cluster a pod belongs to (server pods and schema Job pods carry its name).
fn cluster_of_pod(pod: Pod) -> Option<ObjectRef<Watched>> {
    let cluster = pod.labels().get(INSTANCE_LABEL)?;
    Some(ObjectRef::new(cluster).within(&pod.namespace()?))
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
    let (scope, writers) = Scope::new(namespace.clone());
    ctx.caches.add(scope);
    // Status writes must not trigger reconciles: only spec changes (generation) and approvals
    // do, plus the owned objects, the pods, the Secrets, the database's notifications and the
    // timers.
    let writer = writers.clusters;
    let reader = writer.as_reader();
    let forget = ctx.clone();
    let trigger = watcher::watcher(clusters, watcher::Config::default())
        .default_backoff()
        .modify(drop_managed_fields)
        .reflect(writer)
        // A deleted cluster leaves nothing behind: its cached database connection, its
        // back-off entry and its metric series go with it.
        .inspect(move |event| {
            if let Ok(watcher::Event::Delete(gone)) = event {
                forget.forget(gone);
            }
        })
        .applied_objects()
        .predicate_filter(predicates::generation.combine(approval), Default::default());
    // A Secret's change triggers the clusters that name it as their credentials.
    let named = reader.clone();
    let secret_users = move |secret: PartialObjectMeta<Secret>| {
        let namespace = secret.namespace();
        named
            .state()
            .iter()
            .filter(|cluster| {
                cluster.namespace() == namespace
                    && cluster
                        .0
                        .as_ref()
                        .is_ok_and(|c| c.spec.database.credentials_secret.name == secret.name_any())
            })
            .map(|cluster| ObjectRef::from_obj(cluster.as_ref()))
            .collect::<Vec<_>>()
    };
    // Metadata only: no Secret's data is streamed to the operator or held in its memory.
    // Annotations and managed fields are dropped before the store: a Secret created with
    // `kubectl apply` carries its data in its last-applied-configuration annotation.
    let secrets = watcher::watcher(
        scoped::<PartialObjectMeta<Secret>>(&client, ns),
        watcher::Config::default(),
    )
    .default_backoff()
    .modify(|secret| {
        secret.metadata.annotations = None;
        drop_managed_fields(secret);
    })
    .reflect(writers.secrets)
    .touched_objects();
    let config = controller::Config::default().concurrency(ctx.max_concurrent_reconciles);
    Controller::for_stream(trigger, reader)
        .with_config(config)
        .owns_stream(reflected(
            scoped::<StatefulSet>(&client, ns),
            owned.clone(),
            writers.statefulsets,
        ))
        .owns_stream(reflected(
            scoped::<Service>(&client, ns),
            owned.clone(),
            writers.services,
        ))
        .owns_stream(reflected(
            scoped::<ConfigMap>(&client, ns),
            owned.clone(),
            writers.configmaps,
        ))
        .owns_stream(reflected(
            scoped::<PodDisruptionBudget>(&client, ns),
            owned.clone(),
            writers.pdbs,
        ))
        .owns_stream(reflected(scoped::<Job>(&client, ns), owned, writers.jobs))
        .watches_stream(
            reflected(
                scoped::<Pod>(&client, ns),
                watcher::Config::default().labels(&pod_selector()),
                writers.pods,
            ),
            cluster_of_pod,
        )
        .watches_stream(secrets, secret_users)
        .watches_stream(
            reflected(
                scoped::<Event>(&client, ns),
                watcher::Config::default().fields(FAILED_CREATE_EVENTS),
                writers.events,
            ),
            cluster_of_event,
        )
        .watches_stream(
            reflected(
                scoped::<HorizontalPodAutoscaler>(&client, ns),
                watcher::Config::default(),
                writers.scalers,
            ),
            cluster_of_scaler,
        )
        .reconcile_on(ctx.preflight.databases.triggers())
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

/// Starts the watch that keeps the Nodes' store in `ctx.caches` filled, once per process: it
/// outlives leader terms, so a new term knows the zones at once. Nodes are stripped to what
/// the operator reads (labels and `spec.unschedulable`). A watch that fails (no RBAC to list
/// Nodes, the API server away) is retried with back-off; meanwhile servers have no known zone,
/// which only orders a roll.
fn watch_nodes(ctx: &Arc<Context>) {
    let writer = reflector::store::Writer::<Node>::default();
    if !ctx.caches.set_nodes(writer.as_reader()) {
        return;
    }
    let (client, ctx) = (ctx.watch_client.clone(), ctx.clone());
    tokio::spawn(async move {
        let mut refused = false;
        watcher::watcher(Api::<Node>::all(client), watcher::Config::default())
            .default_backoff()
            .modify(|node| {
                node.status = None;
                node.metadata.annotations = None;
                drop_managed_fields(node);
                if let Some(spec) = node.spec.as_mut() {
                    *spec = NodeSpec {
                        unschedulable: spec.unschedulable,
                        ..NodeSpec::default()
                    };
                }
            })
            .reflect(writer)
            .for_each(|event| {
                match event {
                    // Said once until the watch works again, not at every retry.
                    Err(error) => {
                        ctx.caches.nodes_failed();
                        if !refused {
                            refused = true;
                            tracing::warn!(%error, "cannot watch Nodes: servers' zones are unknown until it can");
                        }
                    }
                    Ok(_) => refused = false,
                }
                futures::future::ready(())
            })
            .await;
    });
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
    watch_nodes(&ctx);
    let controllers =
        futures::future::join_all(scopes.into_iter().map(|ns| run_one(ctx.clone(), ns, shutdown.clone())));
    match leadership.while_leading(controllers).await {
        Ok(_) => StopReason::Shutdown,
        Err(_) => StopReason::LostLeadership,
    }
}
