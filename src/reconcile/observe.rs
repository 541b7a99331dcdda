//! Observe: read the objects the cluster owns, its server pods and schema Jobs, and the
//! database through the preflight. Kubernetes objects are read from the operator's caches
//! ([`crate::caches`]), with two exceptions: [`Freshness::Quorum`] reads the server pods and
//! the StatefulSet from the API server, which the reconcile asks for before it acts on a
//! server (a drain, an eviction, a row removed), so that a step never rests on a cache that
//! lags a pod that just went down or a template that just changed; and a StatefulSet missing
//! from the cache is looked up before it is taken as missing.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::ListParams;
use kube::core::PartialObjectMeta;
use kube::{Api, ResourceExt};
use orchestrator_contract::Outcomes;

use crate::caches::Cached;
use crate::context::Context;
use crate::crd::{CanaryPhase, OrchestratorCluster};
use crate::database::preflight::DATABASE_DEADLINE;
use crate::database::preflight::Observation;
use crate::database::{DatabaseState, ServerRows};
use crate::error::Result;
use crate::planners::autoscale::Readings;
use crate::planners::servers::{PodView, ordinal};
use crate::planners::upgrade::admitted;
use crate::rejections::Rejection;
use crate::release::{JobOutcome, Release, SchemaJob};
use crate::resources::job;
use crate::resources::statefulset::{ZONE_LABEL, release_of, running_release};
use crate::resources::{INSTANCE_LABEL, Names, selector_labels, selector_string};
use crate::validate::ValidSpec;
use crate::vocabulary::Reason;

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
    /// The server pods.
    pub pods: Vec<PodView>,
    /// The database as the preflight found it.
    pub database: DatabaseState,
    /// The schema Jobs of the release the spec asks for.
    pub schema_jobs: SchemaJobs,
    /// `Some(limit)` when `--max-concurrent-rolls` (`limit`) clusters are rolling and this one
    /// is not among them: a roll's first step must wait. Set by the reconcile when a plan would
    /// start a roll and no slot is free (not an observation of the cluster itself).
    pub rolls_full: Option<usize>,
    /// The refusal of one of the cluster's objects by the API server at this generation, as
    /// the last apply met it.
    pub rejected: Option<Rejection>,
    /// Why the StatefulSet controller cannot create a server pod (its newest `FailedCreate`
    /// Event), while the StatefulSet has fewer pods than it wants.
    pub failed_create: Option<String>,
    /// The HorizontalPodAutoscalers (KEDA's too) that scale the cluster through `/scale`.
    pub scalers: Vec<String>,
    /// The autoscaler's readings of earlier looks, as this operator kept them.
    pub readings: Option<Readings>,
    /// While a canary of the wanted release bakes: the jobs its servers and the other servers
    /// finished since the bake started (`[canary, others]`), or why they could not be read.
    pub canary_evidence: Option<Result<[Outcomes; 2], String>>,
}

/// Outcomes of the wanted release's schema Jobs (`None`: no such Job).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SchemaJobs {
    /// The `schema check` Job.
    pub check: Option<JobOutcome>,
    /// The `schema migrate` Job.
    pub migrate: Option<JobOutcome>,
    /// A `schema migrate` Job of this cluster has not finished (whatever release it is for).
    pub migration_running: bool,
    /// A `schema migrate` Job of this cluster succeeded.
    pub migrated: bool,
    /// Seconds the last succeeded `schema migrate` Job ran (start to completion).
    pub migration_seconds: Option<i64>,
}

impl Default for DatabaseState {
    fn default() -> Self {
        DatabaseState::NotReady {
            reason: Reason::Unreachable,
            message: "not checked yet".into(),
        }
    }
}

/// Where the server pods are read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Freshness {
    /// The caches: what the watches delivered so far.
    Cached,
    /// A list from the API server (a quorum read), for a plan about to act on a server.
    Quorum,
}

/// The cached `name` of kind `K` in `namespace`, as an owned object.
fn get<K: Cached>(ctx: &Context, namespace: &str, name: String) -> Result<Option<K>> {
    Ok(ctx.caches.get::<K>(namespace, &name)?.map(|k| K::clone(&k)))
}

/// Reads every owned object of the cluster of `spec`, its pods (from where `freshness` says),
/// and the database through the preflight; also the database connection when it is usable.
pub(crate) async fn observe(
    ctx: &Context,
    spec: &ValidSpec<'_>,
    freshness: Freshness,
) -> Result<(Observed, Option<ServerRows>)> {
    let cr = spec.cr;
    let ns = cr.namespace().unwrap_or_default();
    ctx.caches.ready(&ns).await?;
    // A first reconcile of the process may come before the Nodes' first list (before the
    // pods are read: a quorum read is not made stale by this wait).
    ctx.caches.nodes_ready(NODES_DEADLINE).await;
    let cluster = cr.name_any();
    // Read in place: a cached pod is not copied, only its view is made.
    let pods: Vec<PodView> = match freshness {
        Freshness::Cached => ctx
            .caches
            .list::<Pod>(&ns, &selector_labels(cr))?
            .iter()
            .filter_map(|pod| pod_view(&cluster, pod))
            .collect(),
        Freshness::Quorum => Api::<Pod>::namespaced(ctx.client.clone(), &ns)
            .list(&ListParams::default().labels(&selector_string(cr)))
            .await?
            .items
            .iter()
            .filter_map(|pod| pod_view(&cluster, pod))
            .collect(),
    };
    let pods = on_nodes(ctx, pods);
    let started = std::time::Instant::now();
    let names: BTreeSet<String> = pods.iter().map(|p| p.name.clone()).collect();
    let secret = ctx
        .caches
        .get::<PartialObjectMeta<Secret>>(&ns, &cr.spec.database.credentials_secret.name)?;
    let database = ctx
        .preflight
        .observe(
            &ctx.client,
            cr,
            secret.as_deref(),
            &names,
            (
                i64::from(cr.spec.capacity.max_replicas),
                i64::from(spec.autoscale.as_ref().map_or(spec.workers, |p| p.jobs_per_server)),
            ),
        )
        .await?;
    ctx.metrics.preflight_duration.observe(started.elapsed().as_secs_f64());
    let databases = &ctx.preflight.databases;
    ctx.sweep();
    ctx.metrics.database_listeners.set(databases.count() as i64);
    ctx.metrics
        .database_connections
        .set(databases.pooled_connections() as i64);
    // The StatefulSet decides how many servers there are: one missing from the cache (its
    // managed-by label changed by hand hides it from the filtered watch) is looked up in the
    // API server before it is created or scaled from nothing, and a plan about to act on a
    // server reads it fresh with the pods (its update revision says which are outdated).
    let statefulset: Option<StatefulSet> = match (freshness, get(ctx, &ns, Names::statefulset(cr))?) {
        (Freshness::Cached, Some(cached)) => Some(cached),
        _ => {
            Api::<StatefulSet>::namespaced(ctx.client.clone(), &ns)
                .get_opt(&Names::statefulset(cr))
                .await?
        }
    };
    let wanted = &spec.wanted;
    // The schema Jobs matter while the wanted release is not running yet, and while the
    // servers are stopped (a migration may run, even one a changed spec abandoned).
    let changing = statefulset
        .as_ref()
        .and_then(running_release)
        .is_some_and(|running| running != *wanted)
        && !admitted(wanted, &pods);
    let stopped = statefulset
        .as_ref()
        .and_then(|s| s.spec.as_ref())
        .is_some_and(|s| s.replicas == Some(0));
    let schema_jobs = if changing || stopped {
        schema_jobs(ctx, cr, wanted, &database)?
    } else {
        SchemaJobs::default()
    };
    let missing_pods = statefulset
        .as_ref()
        .and_then(|s| s.spec.as_ref())
        .and_then(|s| s.replicas)
        .is_some_and(|wanted| (pods.len() as i32) < wanted);
    // The StatefulSet controller repeats the Event at each retry (a minute apart at most): an
    // older one is about a cause that went away.
    let failed_create = if missing_pods {
        ctx.caches
            .failed_create(&ns, &Names::statefulset(cr))?
            .filter(|(_, seen)| {
                seen.is_some_and(|seen| k8s_openapi::jiff::Timestamp::now().duration_since(seen) < FAILED_CREATE_RECENT)
            })
            .map(|(message, _)| message)
    } else {
        None
    };
    let canary_evidence = match &database.pool {
        Some(pool) => canary_evidence(cr, wanted, &pods, pool, &database.row_ids).await,
        None => None,
    };
    let observed = Observed {
        canary_evidence,
        failed_create,
        scalers: ctx.caches.scalers_of(&ns, &cluster)?,
        readings: ctx.readings(&crate::crd::object_key(cr)),
        rolls_full: None,
        rejected: ctx.rejections.of(&crate::crd::object_key(cr), cr.metadata.generation),
        schema_jobs,
        statefulset,
        pods,
        database: database.state,
        configmap: get(ctx, &ns, Names::configmap(cr))?,
        headless_service: get(ctx, &ns, Names::headless_service(cr))?,
        client_service: get(ctx, &ns, Names::client_service(cr))?,
        pdb: get(ctx, &ns, Names::pdb(cr))?,
    };
    let rows = database.pool.map(|pool| ServerRows {
        pool,
        namespace: ns,
        ids: database.row_ids,
    });
    Ok((observed, rows))
}

/// The cluster's schema Jobs: the outcomes of the wanted release's (against the database's
/// current schema), and whether any migration still runs. Log tails are redacted.
fn schema_jobs(
    ctx: &Context,
    cr: &OrchestratorCluster,
    wanted: &Release,
    database: &Observation,
) -> Result<SchemaJobs> {
    let ns = cr.namespace().unwrap_or_default();
    let instance = BTreeMap::from([(INSTANCE_LABEL.to_string(), cr.name_any())]);
    let jobs: Vec<Job> = ctx
        .caches
        .list::<Job>(&ns, &instance)?
        .iter()
        .filter(|j| j.labels().contains_key(job::ACTION_LABEL))
        .map(|j| Job::clone(j))
        .collect();
    if jobs.is_empty() {
        return Ok(SchemaJobs::default());
    }
    let pods: Vec<Pod> = ctx
        .caches
        .list::<Pod>(&ns, &job::pod_selector_labels(cr))?
        .iter()
        .map(|p| Pod::clone(p))
        .collect();
    let migrations: Vec<&Job> = jobs
        .iter()
        .filter(|j| j.labels().get(job::ACTION_LABEL).map(String::as_str) == Some(SchemaJob::Migrate.action()))
        .collect();
    let migration_running = migrations.iter().any(|j| !job::finished(j));
    let migrated = migrations.iter().any(|j| job::outcome(j, &[]) == JobOutcome::Succeeded);
    let migration_seconds = migrations
        .iter()
        .filter_map(|j| {
            let status = j.status.as_ref()?;
            let (started, completed) = (status.start_time.as_ref()?, status.completion_time.as_ref()?);
            Some((completed.0, completed.0.duration_since(started.0).as_secs()))
        })
        .max_by_key(|(completed, _)| *completed)
        .map(|(_, seconds)| seconds.max(0));
    let outcome = |kind: SchemaJob| {
        let DatabaseState::Ready { schema_version, .. } = &database.state else {
            return None;
        };
        let name = job::name(cr, kind, wanted, *schema_version);
        let found = jobs.iter().find(|j| j.name_any() == name)?;
        Some(match job::outcome(found, &pods) {
            JobOutcome::Failed { exit_code, message } => JobOutcome::Failed {
                exit_code,
                message: database.redactor.redact(&message),
            },
            other => other,
        })
    };
    Ok(SchemaJobs {
        check: outcome(SchemaJob::Check),
        migrate: outcome(SchemaJob::Migrate),
        migration_running,
        migrated,
        migration_seconds,
    })
}

/// Finished jobs a canary is judged on at most: the cost of its read, whatever the bake.
const CANARY_RECENT_JOBS: i64 = 10_000;

/// The jobs the canary servers (the pods on `wanted`) and the other servers of `cr` finished
/// since the bake of its recorded canary started; `None` when no canary of `wanted` bakes. Read
/// on its own deadline: a failure is said (a SQLSTATE, never the database's words, which may
/// name the user), and the canary is then not judged.
async fn canary_evidence(
    cr: &OrchestratorCluster,
    wanted: &Release,
    pods: &[PodView],
    pool: &deadpool_postgres::Pool,
    row_ids: &BTreeMap<String, String>,
) -> Option<Result<[Outcomes; 2], String>> {
    cr.spec.maintenance.canary.as_ref()?;
    let record = cr.status.as_ref()?.canary.as_ref()?;
    if !record.is_of(wanted) {
        return None;
    }
    let since = record.bake_started_at.as_ref()?.0;
    if !matches!(record.phase, CanaryPhase::Baking | CanaryPhase::Inconclusive) {
        return None;
    }
    let namespace = cr.namespace().unwrap_or_default();
    let id = |pod: &str| {
        row_ids
            .get(pod)
            .cloned()
            .unwrap_or_else(|| orchestrator_contract::server_identity(Some(&namespace), pod))
    };
    // The canary servers recorded when the bake started, against the servers of the other
    // release (one added since on the new release is neither).
    let canary: Vec<String> = record.servers.iter().map(|s| id(s)).collect();
    let others: Vec<String> = pods
        .iter()
        .filter(|p| p.release.as_ref().is_some_and(|r| r != wanted))
        .map(|p| id(&p.name))
        .collect();
    let since = std::time::SystemTime::from(since);
    let read = async {
        let connection = pool.get().await.map_err(|error| match error {
            deadpool_postgres::PoolError::Backend(e) => e
                .code()
                .map_or("no connection".to_string(), |code| format!("SQLSTATE {}", code.code())),
            _ => "no connection free or opened in time".to_string(),
        })?;
        orchestrator_contract::outcomes(&**connection, since, CANARY_RECENT_JOBS, [&canary, &others])
            .await
            .map_err(|error| match error {
                orchestrator_contract::ContractError::Database(e) => match e.code() {
                    Some(code) if *code == tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE => {
                        "SQLSTATE 42501: the login needs SELECT on job_executions for a canary".to_string()
                    }
                    code => format!("SQLSTATE {}", code.map_or("none", |c| c.code())),
                },
                _ => "the read failed".to_string(),
            })
    };
    Some(
        tokio::time::timeout(DATABASE_DEADLINE, read)
            .await
            .unwrap_or_else(|_| Err(format!("the read took more than {DATABASE_DEADLINE:?}")))
            .map_err(|why| format!("the canary's evidence could not be read: {why}")),
    )
}

/// How recent a `FailedCreate` Event must be to say why a pod is missing now.
const FAILED_CREATE_RECENT: k8s_openapi::jiff::SignedDuration = k8s_openapi::jiff::SignedDuration::from_secs(300);

/// How long a reconcile waits for the Nodes' first list (only the first reconciles of a
/// process can wait at all).
const NODES_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);

/// `pods` with what their Nodes say: the zone, and whether the Node is cordoned. A Node the
/// operator cannot read (not cached yet, no RBAC to list Nodes) leaves both unknown: zones
/// only order a roll's steps, they never gate one.
fn on_nodes(ctx: &Context, mut pods: Vec<PodView>) -> Vec<PodView> {
    for pod in &mut pods {
        if let Some(node) = pod.node.as_deref().and_then(|name| ctx.caches.node(name)) {
            pod.zone = node.labels().get(ZONE_LABEL).cloned();
            pod.node_cordoned = node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true);
        }
    }
    pods
}

/// Reads a pod of cluster `cluster`; `None` for a pod that is not one of its servers.
fn pod_view(cluster: &str, pod: &Pod) -> Option<PodView> {
    let name = pod.name_any();
    let ordinal = ordinal(cluster, &name)?;
    let status = pod.status.as_ref();
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let container = status
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first());
    // A clean exit (a drained server) is not a problem; a crash is.
    let last_exit_at = container
        .and_then(|c| c.last_state.as_ref())
        .and_then(|s| s.terminated.as_ref())
        .filter(|t| t.exit_code != 0)
        .and_then(|t| t.finished_at.as_ref())
        .map(|t| t.0);
    let unschedulable = status
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| {
            c.iter().find(|c| {
                c.type_ == "PodScheduled" && c.status == "False" && c.reason.as_deref() == Some("Unschedulable")
            })
        })
        .map(|c| format!("not scheduled: {}", c.message.as_deref().unwrap_or("Unschedulable")));
    // Words that stay the same while the problem lasts (the status is written when they
    // change): the kubelet alternates ErrImagePull and ImagePullBackOff at every retry, and a
    // CreateContainerError's message carries container ids.
    let cannot_start = container.and_then(|c| {
        let waiting = c.state.as_ref()?.waiting.as_ref()?;
        let reason = waiting.reason.as_deref().filter(|r| job::CANNOT_START.contains(r))?;
        Some(match reason {
            "ErrImagePull" | "ImagePullBackOff" => format!("cannot start: cannot pull image {}", c.image),
            "CreateContainerError" => "cannot start: CreateContainerError".to_string(),
            _ => format!(
                "cannot start: {reason}: {}",
                waiting.message.as_deref().unwrap_or_default()
            ),
        })
    });
    let disruption_target = status
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "DisruptionTarget" && c.status == "True"))
        .map(|c| c.reason.clone().unwrap_or_else(|| "DisruptionTarget".into()));
    Some(PodView {
        node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
        zone: None,
        node_cordoned: false,
        disruption_target,
        stuck: unschedulable.or(cannot_start),
        replace_requested: pod.annotations().contains_key(crate::crd::REPLACE_ANNOTATION),
        name,
        ordinal,
        ready,
        revision: pod.labels().get("controller-revision-hash").cloned(),
        restarts: container.map(|c| c.restart_count).unwrap_or(0),
        terminating_until: pod.metadata.deletion_timestamp.as_ref().map(|t| t.0),
        last_exit_at,
        created_at: pod.metadata.creation_timestamp.as_ref().map(|t| t.0),
        uid: pod.uid(),
        release: pod.spec.as_ref().and_then(release_of),
    })
}
