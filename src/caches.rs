//! The operator's view of the cluster: one reflector store per kind a reconcile reads, fed by
//! the same watches that trigger reconciles. A reconcile reads these stores, not the API
//! server: at steady state the operator sends no request beyond its watches and its Lease.
//!
//! Kinds and what they hold, per watched namespace (a *scope*; one scope for all namespaces
//! when none is named):
//! - the owned kinds (StatefulSet, Services, ConfigMap, PodDisruptionBudget, schema Jobs),
//!   selected by the `managed-by` label;
//! - the server pods and the schema Jobs' pods, selected by their `app.kubernetes.io/name`;
//! - the Secrets' metadata only (a metadata watch: no Secret data is streamed or held), so that
//!   a changed credentials Secret triggers the clusters that name it, and its data is read once
//!   per change ([`crate::database::preflight`]);
//! - the StatefulSets' `FailedCreate` Events (a field-selected watch: only those), which say
//!   why the StatefulSet controller cannot create a server pod (a missing PriorityClass, a
//!   quota, a Pod Security refusal);
//! - the HorizontalPodAutoscalers (KEDA's `ScaledObject`s make one too), so that one scaling
//!   a cluster through `/scale` while `capacity.autoscale` is set is said in its status;
//! - cluster-wide, the Nodes, stripped to their labels and `spec.unschedulable` (no status, so
//!   little memory per Node): each server's zone and whether its Node is cordoned. They
//!   trigger no reconcile; only a process's first reconciles wait for their first list, 5 s
//!   at most, and nothing waits once their watch failed: a zone only orders a roll's steps.
//!
//! A store is read only once its first list has completed ([`Caches::ready`]): a store that is
//! still filling would show objects as missing. Where a decision must not rest on a store that
//! may lag by a watch event, the reconcile reads the API server instead (see
//! `crate::reconcile::observe`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Node, Pod, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store, store::Writer};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};

use crate::crd::Watched;
use crate::crd::object_key;
use crate::error::{Error, Result};
use futures::FutureExt;

/// The stores of one watched namespace (or of all namespaces).
#[derive(Clone)]
pub struct Scope {
    namespace: Option<String>,
    clusters: Store<Watched>,
    statefulsets: Store<StatefulSet>,
    services: Store<Service>,
    configmaps: Store<ConfigMap>,
    pdbs: Store<PodDisruptionBudget>,
    jobs: Store<Job>,
    pods: Store<Pod>,
    secrets: Store<PartialObjectMeta<Secret>>,
    events: Store<Event>,
    scalers: Store<HorizontalPodAutoscaler>,
}

/// The field selector of the Events the operator keeps: the StatefulSet controller's refusals
/// to create a pod.
pub const FAILED_CREATE_EVENTS: &str = "reason=FailedCreate,involvedObject.kind=StatefulSet";

/// The writers of a [`Scope`]'s stores: each goes to the watch that feeds its store.
pub struct Writers {
    /// The clusters themselves (the controller's own store).
    pub clusters: Writer<Watched>,
    /// StatefulSets.
    pub statefulsets: Writer<StatefulSet>,
    /// Services.
    pub services: Writer<Service>,
    /// ConfigMaps.
    pub configmaps: Writer<ConfigMap>,
    /// PodDisruptionBudgets.
    pub pdbs: Writer<PodDisruptionBudget>,
    /// Schema Jobs.
    pub jobs: Writer<Job>,
    /// Server pods and schema Job pods.
    pub pods: Writer<Pod>,
    /// Secrets' metadata.
    pub secrets: Writer<PartialObjectMeta<Secret>>,
    /// The StatefulSets' `FailedCreate` Events.
    pub events: Writer<Event>,
    /// HorizontalPodAutoscalers.
    pub scalers: Writer<HorizontalPodAutoscaler>,
}

impl Scope {
    /// Empty stores for `namespace` (`None`: every namespace) and the writers that fill them.
    pub fn new(namespace: Option<String>) -> (Self, Writers) {
        let writers = Writers {
            clusters: Writer::default(),
            statefulsets: Writer::default(),
            services: Writer::default(),
            configmaps: Writer::default(),
            pdbs: Writer::default(),
            jobs: Writer::default(),
            pods: Writer::default(),
            secrets: Writer::default(),
            events: Writer::default(),
            scalers: Writer::default(),
        };
        let scope = Scope {
            namespace,
            clusters: writers.clusters.as_reader(),
            statefulsets: writers.statefulsets.as_reader(),
            services: writers.services.as_reader(),
            configmaps: writers.configmaps.as_reader(),
            pdbs: writers.pdbs.as_reader(),
            jobs: writers.jobs.as_reader(),
            pods: writers.pods.as_reader(),
            secrets: writers.secrets.as_reader(),
            events: writers.events.as_reader(),
            scalers: writers.scalers.as_reader(),
        };
        (scope, writers)
    }

    fn covers(&self, namespace: &str) -> bool {
        self.namespace.as_deref().is_none_or(|ns| ns == namespace)
    }
}

impl Writers {
    /// Fills every store with `objects` at once (a completed first list), for tests that run a
    /// reconcile without watches. Objects of kinds the stores do not hold are ignored.
    pub fn fill(mut self, objects: &[serde_json::Value]) {
        fn load<K>(writer: &mut Writer<K>, objects: &[serde_json::Value])
        where
            K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned,
        {
            writer.apply_watcher_event(&watcher::Event::Init);
            for object in objects.iter().filter(|o| o["kind"] == K::kind(&()).as_ref()) {
                if let Ok(object) = serde_json::from_value::<K>(object.clone()) {
                    writer.apply_watcher_event(&watcher::Event::InitApply(object));
                }
            }
            writer.apply_watcher_event(&watcher::Event::InitDone);
        }
        load(&mut self.clusters, objects);
        load(&mut self.statefulsets, objects);
        load(&mut self.services, objects);
        load(&mut self.configmaps, objects);
        load(&mut self.pdbs, objects);
        load(&mut self.jobs, objects);
        load(&mut self.pods, objects);
        load(&mut self.secrets, objects);
        load(&mut self.events, objects);
        load(&mut self.scalers, objects);
    }
}

/// Whether every scope's clusters have been listed.
fn listed(scopes: &[Scope]) -> bool {
    scopes.iter().all(|scope| {
        scope
            .clusters
            .wait_until_ready()
            .now_or_never()
            .is_some_and(|r| r.is_ok())
    })
}

/// A kind held in a [`Scope`].
pub trait Cached: Resource<DynamicType = ()> + Clone + 'static {
    /// The store of this kind in `scope`.
    fn store(scope: &Scope) -> &Store<Self>;
}

macro_rules! cached {
    ($($kind:ty => $field:ident),* $(,)?) => {
        $(impl Cached for $kind {
            fn store(scope: &Scope) -> &Store<Self> {
                &scope.$field
            }
        })*
    };
}

cached! {
    StatefulSet => statefulsets,
    Service => services,
    ConfigMap => configmaps,
    PodDisruptionBudget => pdbs,
    Job => jobs,
    Pod => pods,
    PartialObjectMeta<Secret> => secrets,
    Event => events,
    HorizontalPodAutoscaler => scalers,
}

/// Every scope's stores.
#[derive(Default)]
pub struct Caches {
    scopes: RwLock<Vec<Scope>>,
    /// The Nodes (labels and `spec.unschedulable` only), cluster-wide: which zone each server
    /// is in, and whether its Node is cordoned. Set once, when the controllers first start.
    nodes: std::sync::OnceLock<Store<Node>>,
    /// The Node watch has failed (no RBAC, the API server away): reconciles do not wait for it.
    nodes_failed: std::sync::atomic::AtomicBool,
}

impl Caches {
    /// Adds the stores of a watched scope, in place of those of the same scope (controllers
    /// started again after a lost leader term).
    pub fn add(&self, scope: Scope) {
        let mut scopes = self.scopes.write().unwrap_or_else(|e| e.into_inner());
        scopes.retain(|s| s.namespace != scope.namespace);
        scopes.push(scope);
    }

    fn scope(&self, namespace: &str) -> Result<Scope> {
        self.scopes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|s| s.covers(namespace))
            .cloned()
            .ok_or_else(|| Error::NotWatched(namespace.to_string()))
    }

    /// Sets the store of the Nodes; false (and nothing changes) if it was set before.
    pub fn set_nodes(&self, nodes: Store<Node>) -> bool {
        self.nodes.set(nodes).is_ok()
    }

    /// Notes that the Node watch failed.
    pub(crate) fn nodes_failed(&self) {
        self.nodes_failed.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Waits, at most `deadline`, for the Nodes' first list, unless the Node watch failed (then
    /// zones are unknown and nothing waits for them).
    pub(crate) async fn nodes_ready(&self, deadline: Duration) {
        let Some(nodes) = self.nodes.get() else { return };
        if self.nodes_failed.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let _ = tokio::time::timeout(deadline, nodes.wait_until_ready()).await;
    }

    /// The cached Node `name`, if the Nodes are cached and it is there.
    pub(crate) fn node(&self, name: &str) -> Option<Arc<Node>> {
        self.nodes.get()?.get(&ObjectRef::new(name))
    }

    /// Waits until every store of `namespace`'s scope has completed its first list.
    pub(crate) async fn ready(&self, namespace: &str) -> Result<()> {
        let scope = self.scope(namespace)?;
        let stopped = |_| Error::NotWatched(namespace.to_string());
        scope.statefulsets.wait_until_ready().await.map_err(stopped)?;
        scope.services.wait_until_ready().await.map_err(stopped)?;
        scope.configmaps.wait_until_ready().await.map_err(stopped)?;
        scope.pdbs.wait_until_ready().await.map_err(stopped)?;
        scope.jobs.wait_until_ready().await.map_err(stopped)?;
        scope.pods.wait_until_ready().await.map_err(stopped)?;
        scope.secrets.wait_until_ready().await.map_err(stopped)?;
        scope.events.wait_until_ready().await.map_err(stopped)?;
        // Not the HPAs': a conflict they show is said once they are listed (their watch
        // triggers the cluster), and an installation without their RBAC still reconciles.
        Ok(())
    }

    /// The cached `name` of kind `K` in `namespace`.
    pub(crate) fn get<K: Cached>(&self, namespace: &str, name: &str) -> Result<Option<Arc<K>>> {
        let scope = self.scope(namespace)?;
        Ok(K::store(&scope).get(&ObjectRef::new(name).within(namespace)))
    }

    /// Waits, at most `deadline`, until the cached cluster `name` of `namespace` is at
    /// resourceVersion `version` (this operator's own write). `false` if it was not within the
    /// deadline (not yet, or already a later version).
    pub(crate) async fn holds(&self, namespace: &str, name: &str, version: &str, deadline: Duration) -> bool {
        let Ok(scope) = self.scope(namespace) else {
            return false;
        };
        let key = ObjectRef::new(name).within(namespace);
        let started = tokio::time::Instant::now();
        loop {
            if scope
                .clusters
                .get(&key)
                .is_some_and(|c| c.resource_version().as_deref() == Some(version))
            {
                return true;
            }
            if started.elapsed() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Every cluster (namespace, name) in every scope; `None` until every scope's clusters are
    /// listed.
    pub(crate) fn clusters(&self) -> Option<BTreeSet<(String, String)>> {
        let scopes = self.scopes.read().unwrap_or_else(|e| e.into_inner());
        listed(&scopes).then(|| {
            scopes
                .iter()
                .flat_map(|scope| scope.clusters.state())
                .map(|cluster| (cluster.namespace().unwrap_or_default(), cluster.name_any()))
                .collect()
        })
    }

    /// The clusters (`namespace/name`) whose status records a roll under way, in every scope:
    /// what a restarted operator knows of the rolls under way. `None` until every scope's
    /// clusters are listed (a scope still listing would hide its rolls).
    pub(crate) fn rolling(&self) -> Option<BTreeSet<String>> {
        let scopes = self.scopes.read().unwrap_or_else(|e| e.into_inner());
        listed(&scopes).then(|| {
            scopes
                .iter()
                .flat_map(|scope| scope.clusters.state())
                .filter(|cluster| {
                    cluster
                        .0
                        .as_ref()
                        .is_ok_and(|c| c.status.as_ref().is_some_and(|s| s.roll_under_way()))
                })
                .map(|cluster| object_key(cluster.as_ref()))
                .collect()
        })
    }

    /// What the newest cached `FailedCreate` Event of StatefulSet `name` in `namespace` says,
    /// and when it was last seen.
    pub(crate) fn failed_create(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<(String, Option<k8s_openapi::jiff::Timestamp>)>> {
        let scope = self.scope(namespace)?;
        let when = |e: &Event| {
            e.series
                .as_ref()
                .and_then(|s| s.last_observed_time.as_ref().map(|t| t.0))
                .or(e.last_timestamp.as_ref().map(|t| t.0))
                .or(e.event_time.as_ref().map(|t| t.0))
        };
        Ok(scope
            .events
            .state()
            .into_iter()
            .filter(|e| e.namespace().as_deref() == Some(namespace) && e.involved_object.name.as_deref() == Some(name))
            .max_by_key(|e| when(e))
            .and_then(|e| Some((e.message.clone()?, when(&e)))))
    }

    /// The names of the HorizontalPodAutoscalers of `namespace` that scale cluster `name`.
    pub(crate) fn scalers_of(&self, namespace: &str, name: &str) -> Result<Vec<String>> {
        let scope = self.scope(namespace)?;
        let mut names: Vec<String> = scope
            .scalers
            .state()
            .iter()
            .filter(|hpa| hpa.namespace().as_deref() == Some(namespace) && scales(hpa, name))
            .map(|hpa| hpa.name_any())
            .collect();
        names.sort();
        Ok(names)
    }

    /// The cached objects of kind `K` in `namespace` that carry every label of `labels`.
    pub(crate) fn list<K: Cached>(&self, namespace: &str, labels: &BTreeMap<String, String>) -> Result<Vec<Arc<K>>> {
        let scope = self.scope(namespace)?;
        Ok(K::store(&scope).state_filter(|object| {
            object.namespace().as_deref() == Some(namespace)
                && labels.iter().all(|(k, v)| object.labels().get(k) == Some(v))
        }))
    }
}

/// Whether `hpa` scales the `OrchestratorCluster` `name` (its `scaleTargetRef`).
pub fn scales(hpa: &HorizontalPodAutoscaler, name: &str) -> bool {
    let target = hpa.spec.as_ref().map(|s| &s.scale_target_ref);
    target.is_some_and(|t| {
        t.kind == "OrchestratorCluster"
            && t.name == name
            && t.api_version
                .as_deref()
                .is_none_or(|v| v.starts_with("orchestrator.dev/"))
    })
}
