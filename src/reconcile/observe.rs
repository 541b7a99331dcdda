//! Observe: read the objects the cluster owns, its server pods and schema Jobs, and the
//! database through the preflight. Every read is fresh from the API server.

use std::collections::BTreeSet;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::ListParams;
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;

use crate::context::Context;
use crate::crd::OrchestratorCluster;
use crate::database::preflight::Observation;
use crate::database::{DatabaseState, ServerRows};
use crate::error::Result;
use crate::planners::servers::{PodView, ordinal};
use crate::planners::upgrade::admitted;
use crate::release::{JobOutcome, Release, SchemaJob};
use crate::resources::job;
use crate::resources::statefulset::{release_of, running_release};
use crate::resources::{Names, selector_string};
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
}

impl Default for DatabaseState {
    fn default() -> Self {
        DatabaseState::NotReady {
            reason: Reason::Unreachable,
            message: "not checked yet".into(),
        }
    }
}

async fn get<K>(client: &Client, namespace: &str, name: String) -> Result<Option<K>>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    Ok(Api::<K>::namespaced(client.clone(), namespace).get_opt(&name).await?)
}

/// Reads every owned object of the cluster of `spec`, its pods, and the database through the
/// preflight; also the database connection when it is usable.
pub(crate) async fn observe(ctx: &Context, spec: &ValidSpec<'_>) -> Result<(Observed, Option<ServerRows>)> {
    let cr = spec.cr;
    let client = &ctx.client;
    let ns = cr.namespace().unwrap_or_default();
    let selector = selector_string(cr);
    let now = k8s_openapi::jiff::Timestamp::now();
    let pods: Vec<PodView> = Api::<Pod>::namespaced(client.clone(), &ns)
        .list(&ListParams::default().labels(&selector))
        .await?
        .items
        .iter()
        .filter_map(|pod| pod_view(&cr.name_any(), pod, now))
        .collect();
    let started = std::time::Instant::now();
    let names: BTreeSet<String> = pods.iter().map(|p| p.name.clone()).collect();
    let database = ctx.preflight.observe(client, cr, &names).await?;
    ctx.metrics.preflight_duration.observe(started.elapsed().as_secs_f64());
    let statefulset: Option<StatefulSet> = get(client, &ns, Names::statefulset(cr)).await?;
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
        schema_jobs(ctx, cr, wanted, &database).await?
    } else {
        SchemaJobs::default()
    };
    let observed = Observed {
        schema_jobs,
        statefulset,
        pods,
        database: database.state,
        configmap: get(client, &ns, Names::configmap(cr)).await?,
        headless_service: get(client, &ns, Names::headless_service(cr)).await?,
        client_service: get(client, &ns, Names::client_service(cr)).await?,
        pdb: get(client, &ns, Names::pdb(cr)).await?,
    };
    let rows = database.client.map(|client| ServerRows {
        client,
        namespace: ns,
        ids: database.row_ids,
    });
    Ok((observed, rows))
}

/// The cluster's schema Jobs: the outcomes of the wanted release's (against the database's
/// current schema), and whether any migration still runs. Log tails are redacted.
async fn schema_jobs(
    ctx: &Context,
    cr: &OrchestratorCluster,
    wanted: &Release,
    database: &Observation,
) -> Result<SchemaJobs> {
    let ns = cr.namespace().unwrap_or_default();
    let selector = format!("app.kubernetes.io/instance={},{}", cr.name_any(), job::ACTION_LABEL);
    let jobs = Api::<Job>::namespaced(ctx.client.clone(), &ns)
        .list(&ListParams::default().labels(&selector))
        .await?
        .items;
    if jobs.is_empty() {
        return Ok(SchemaJobs::default());
    }
    let pods = Api::<Pod>::namespaced(ctx.client.clone(), &ns)
        .list(&ListParams::default().labels(&job::pod_selector(cr)))
        .await?
        .items;
    let migrations: Vec<&Job> = jobs
        .iter()
        .filter(|j| j.labels().get(job::ACTION_LABEL).map(String::as_str) == Some(SchemaJob::Migrate.action()))
        .collect();
    let migration_running = migrations.iter().any(|j| !job::finished(j));
    let migrated = migrations.iter().any(|j| job::outcome(j, &[]) == JobOutcome::Succeeded);
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
    })
}

/// Reads a pod of cluster `cluster`; `None` for a pod that is not one of its servers.
fn pod_view(cluster: &str, pod: &Pod, now: k8s_openapi::jiff::Timestamp) -> Option<PodView> {
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
    let last_exit_seconds = container
        .and_then(|c| c.last_state.as_ref())
        .and_then(|s| s.terminated.as_ref())
        .filter(|t| t.exit_code != 0)
        .and_then(|t| t.finished_at.as_ref())
        .map(|t| now.duration_since(t.0).as_secs());
    Some(PodView {
        name,
        ordinal,
        ready,
        revision: pod.labels().get("controller-revision-hash").cloned(),
        restarts: container.map(|c| c.restart_count).unwrap_or(0),
        terminating: pod.metadata.deletion_timestamp.is_some(),
        last_exit_seconds,
        created_at: pod.metadata.creation_timestamp.as_ref().map(|t| t.0),
        uid: pod.uid(),
        release: pod.spec.as_ref().and_then(release_of),
    })
}
