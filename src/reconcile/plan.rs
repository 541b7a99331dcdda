//! Plan: from the resource and what was observed, the writes to make and the status to report.
//! A pure function, unit-tested on plain structs.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use serde::Serialize;
use serde_json::Value;

use std::time::Duration;

use orchestrator_contract::server_state;

use super::observe::Observed;
use crate::capacity::{self, CapacityInput, CapacityPlan};
use crate::conditions::{condition, find, reasons, status, types};
use crate::crd::{
    DatabaseStatus, MaintenanceStatus, OrchestratorCluster, OrchestratorClusterStatus, Phase, ServerStatus, SpecError,
};
use crate::database::{self, DatabaseState};
use crate::drift::is_contained;
use crate::error::{Error, Result};
use crate::maintenance::{self, Action, Decision, MaintenanceInput, ServerView, Stage, Step, next_window, window_open};
use crate::metrics::ClusterFigures;
use crate::resources::job::{self, Release};
use crate::resources::{BuildSettings, configmap, pdb, selector_string, service, statefulset};
use crate::servers::{Health, merge, problems};
use crate::upgrade::{self, UpgradeDecision, UpgradeInput};

/// An owned object to server-side apply.
// At most five live per reconcile, so the variants' size difference costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum Child {
    /// Server settings.
    ConfigMap(ConfigMap),
    /// Headless or client Service.
    Service(Service),
    /// The disruption budget.
    PodDisruptionBudget(PodDisruptionBudget),
    /// The servers.
    StatefulSet(StatefulSet),
    /// A schema check or migrate Job of a version change.
    Job(Job),
}

impl Child {
    /// Kind of the object.
    pub fn kind(&self) -> &'static str {
        match self {
            Child::ConfigMap(_) => "ConfigMap",
            Child::Service(_) => "Service",
            Child::PodDisruptionBudget(_) => "PodDisruptionBudget",
            Child::StatefulSet(_) => "StatefulSet",
            Child::Job(_) => "Job",
        }
    }

    /// Name of the object.
    pub fn name(&self) -> String {
        match self {
            Child::ConfigMap(o) => o.name_any(),
            Child::Service(o) => o.name_any(),
            Child::PodDisruptionBudget(o) => o.name_any(),
            Child::StatefulSet(o) => o.name_any(),
            Child::Job(o) => o.name_any(),
        }
    }

    fn to_value(&self) -> Result<Value> {
        match self {
            Child::ConfigMap(o) => value_of(self.kind(), o),
            Child::Service(o) => value_of(self.kind(), o),
            Child::PodDisruptionBudget(o) => value_of(self.kind(), o),
            Child::StatefulSet(o) => value_of(self.kind(), o),
            Child::Job(o) => value_of(self.kind(), o),
        }
    }
}

fn value_of(kind: &'static str, object: &impl Serialize) -> Result<Value> {
    serde_json::to_value(object).map_err(|source| Error::Serialization { kind, source })
}

/// A write the reconcile must make, and whether it creates the object or corrects drift.
#[derive(Clone, Debug, PartialEq)]
pub struct Write {
    /// The desired object.
    pub child: Child,
    /// True when the object does not exist yet.
    pub creates: bool,
}

/// An Event the reconcile publishes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedEvent {
    /// Warning (true) or Normal.
    pub warning: bool,
    /// CamelCase reason.
    pub reason: &'static str,
    /// What happened, for a person.
    pub note: String,
}

/// Reasons of the Events about capacity and health.
pub mod event_reasons {
    /// Servers are being added.
    pub const SCALING_UP: &str = "ScalingUp";
    /// Servers are being removed.
    pub const SCALING_DOWN: &str = "ScalingDown";
    /// A friendly shutdown was requested through the database.
    pub const DRAINING: &str = "Draining";
    /// Rows of gone servers were removed.
    pub const REMOVED_SERVER_ROWS: &str = "RemovedServerRows";
    /// Something is wrong that no more specific reason names.
    pub const DEGRADED: &str = "Degraded";
    /// Rolling maintenance asked a server to drain.
    pub const MAINTENANCE_DRAINING: &str = "MaintenanceDraining";
    /// Rolling maintenance evicts a server's pod.
    pub const MAINTENANCE_EVICTING: &str = "MaintenanceEvicting";
    /// Rolling maintenance waits for a replacement to join.
    pub const MAINTENANCE_WAITING_READY: &str = "MaintenanceWaitingReady";
    /// A server was replaced and joined.
    pub const MAINTENANCE_STEP_DONE: &str = "MaintenanceStepDone";
    /// The new image's `schema check` Job was started.
    pub const SCHEMA_CHECK: &str = "SchemaCheck";
    /// `Recreate`: every server is drained and stopped for a schema migration.
    pub const STOPPING_SERVERS: &str = "StoppingServers";
    /// `Recreate`: the `schema migrate` Job was started.
    pub const SCHEMA_MIGRATION: &str = "SchemaMigration";
    /// `Recreate`: the schema was migrated; the new version starts.
    pub const SCHEMA_MIGRATED: &str = "SchemaMigrated";
}

/// What a reconcile should do.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// Owned objects that are missing or differ from what the spec wants.
    pub writes: Vec<Write>,
    /// Servers to ask for a friendly shutdown through the database.
    pub drain: Vec<String>,
    /// Rows of gone servers to remove from the database.
    pub remove_rows: Vec<String>,
    /// Servers wanted again whose drain request is withdrawn.
    pub undrain: Vec<String>,
    /// Pod to evict for rolling maintenance, with the uid it must still have.
    pub evict: Option<(String, Option<String>)>,
    /// Events to publish.
    pub events: Vec<PlannedEvent>,
    /// The status to report.
    pub status: OrchestratorClusterStatus,
    /// Per-cluster gauges.
    pub figures: ClusterFigures,
    /// A maintenance stage that ended in this reconcile.
    pub finished_stage: Option<Finished>,
    /// The maintenance step that finished in this reconcile (a server replaced and joined),
    /// from its drain to its replacement joining.
    pub step_done: Option<Finished>,
    /// When to look again (the database cannot be watched).
    pub requeue: Duration,
}

/// A maintenance stage or step that ended, for the metrics. A reconcile that read an older
/// status can report the same one again: `key` tells them apart.
#[derive(Clone, Debug, PartialEq)]
pub struct Finished {
    /// The stage's name (for a step: the stage it ended in).
    pub stage: &'static str,
    /// Server and start time: the same stage or step always has the same key.
    pub key: String,
    /// How long it took.
    pub seconds: f64,
}

/// Look again this soon while something changes or is wrong.
pub const BUSY_REQUEUE: Duration = Duration::from_secs(5);
/// Look again this soon while a maintenance step or a version change waits on the database
/// (a drain finishing, a replacement joining): the database cannot be watched, and every
/// second of delay here adds to every step of a roll.
pub const STEP_REQUEUE: Duration = Duration::from_secs(1);
/// Look again this soon when everything is settled.
pub const IDLE_REQUEUE: Duration = Duration::from_secs(30);

/// Plans the reconcile of `cr`. Fails only on a spec the operator cannot use.
pub fn plan(cr: &OrchestratorCluster, observed: &Observed, settings: &BuildSettings, now: &Time) -> Result<Plan> {
    let name = cr.name_any();
    let health = Health::default();
    let members = observed.database.members();
    let servers = merge(&name, &observed.pods, members, health);
    let problems = problems(&servers, &observed.pods, health);
    let current = observed
        .statefulset
        .as_ref()
        .and_then(|s| s.spec.as_ref())
        .and_then(|s| s.replicas)
        .unwrap_or(0);
    let drain_ages: Vec<(String, f64)> = members
        .unwrap_or_default()
        .iter()
        .filter_map(|m| m.drain_requested_seconds.map(|age| (m.server_id.clone(), age)))
        .collect();
    let owned_jobs: Vec<(String, i64)> = members
        .unwrap_or_default()
        .iter()
        .map(|m| (m.server_id.clone(), m.owned_jobs))
        .collect();
    let previous_step = step_from_status(cr);
    let database_ready = matches!(observed.database, DatabaseState::Ready { .. });
    let wanted_release = Release::wanted(cr, settings);
    let running_release = observed.statefulset.as_ref().and_then(statefulset::running_release);
    let upgrade = upgrade::plan(&UpgradeInput {
        running: running_release.as_ref(),
        wanted: &wanted_release,
        admitted: observed
            .pods
            .iter()
            .any(|p| p.release.as_ref() == Some(&wanted_release)),
        check: observed.schema_jobs.check.as_ref(),
        migrate: observed.schema_jobs.migrate.as_ref(),
        policy: cr.spec.upgrade.schema_change,
        database_ready,
        step_in_progress: previous_step.is_some(),
        migration_running: observed.schema_jobs.migration_running,
        migrated: observed.schema_jobs.migrated,
        statefulset_stopped: observed.statefulset.as_ref().is_some_and(|s| {
            s.spec.as_ref().and_then(|spec| spec.replicas) == Some(0)
                && s.status.as_ref().is_none_or(|status| status.replicas == 0)
        }),
        gate: maintenance::gate(
            cr.spec.maintenance.paused,
            window_open(&cr.spec.maintenance.windows, now.0),
            next_window(&cr.spec.maintenance.windows, now.0),
        ),
        servers: &servers,
        drain_ages: &drain_ages,
        drain_timeout: cr.spec.maintenance.drain_timeout()?,
        on_drain_timeout: cr.spec.maintenance.on_drain_timeout,
    });
    let mut capacity = capacity::plan(&CapacityInput {
        cluster: &name,
        wanted: cr.spec.replicas,
        max_replicas: cr.spec.capacity.max_replicas,
        add_at_once: cr.spec.capacity.add_at_once,
        current,
        servers: &servers,
        database: match &observed.database {
            DatabaseState::Ready { .. } => Ok(()),
            DatabaseState::NotReady { message, .. } => Err(message.clone()),
        },
        drain_timeout: cr.spec.maintenance.drain_timeout()?,
        on_drain_timeout: cr.spec.maintenance.on_drain_timeout,
        drain_ages: &drain_ages,
        owned_jobs: &owned_jobs,
        maintenance_drain: previous_step
            .as_ref()
            .filter(|s| s.stage != Stage::WaitingReady)
            .map(|s| s.server.as_str()),
    });
    if upgrade.recreate {
        // Every server is being stopped on purpose: no server is added, none is wanted back.
        capacity = CapacityPlan {
            replicas: if upgrade.stop_all { 0 } else { current },
            remove_rows: capacity.remove_rows,
            ..CapacityPlan::default()
        };
    }
    let roll = roll(
        cr,
        observed,
        &servers,
        roll_hold(cr, &capacity, &upgrade, current),
        previous_step.clone(),
        now,
    )?;

    let configmap = configmap::build(cr)?;
    let config_hash = configmap::data_hash(&configmap);
    let deployed = deployed_release(cr, &upgrade, running_release.as_ref());
    let statefulset = statefulset::build(&deployed, settings, capacity.replicas, &config_hash)?;
    // Jobs run only with the database ready, so its schema version is known.
    let schema_job = match (upgrade.run_job, &observed.database) {
        (Some(kind), DatabaseState::Ready { schema_version, .. }) => {
            Some(job::build(cr, settings, kind, *schema_version, &config_hash)?)
        }
        _ => None,
    };
    let desired: [(Child, Option<Value>); 5] = [
        (Child::ConfigMap(configmap), live(&observed.configmap)?),
        (
            Child::Service(service::build_headless(cr)),
            live(&observed.headless_service)?,
        ),
        (
            Child::Service(service::build_client(cr)),
            live(&observed.client_service)?,
        ),
        (Child::PodDisruptionBudget(pdb::build(cr)), live(&observed.pdb)?),
        (Child::StatefulSet(statefulset), live(&observed.statefulset)?),
    ];
    let mut writes = Vec::new();
    let new_job = schema_job.map(|job| (Child::Job(job), None));
    for (child, live) in desired.into_iter().chain(new_job) {
        let in_sync = match &live {
            Some(live) => is_contained(&child.to_value()?, live),
            None => false,
        };
        if !in_sync {
            writes.push(Write {
                child,
                creates: live.is_none(),
            });
        }
    }

    let joined = servers.iter().filter(|s| s.joined).count() as i32;
    let draining = members
        .unwrap_or_default()
        .iter()
        .filter(|m| m.state == server_state::DRAINING)
        .count() as i64;
    // A StatefulSet about to be written (new template or replicas) is not the one observed:
    // nothing is settled until the StatefulSet controller has seen the written one.
    let statefulset_current = !writes.iter().any(|w| matches!(w.child, Child::StatefulSet(_)));
    let status = status(
        cr,
        observed,
        statefulset_current,
        &servers,
        &problems,
        &capacity,
        &roll,
        &upgrade,
        now,
    );
    let events = events(cr, current, &capacity, &roll, &upgrade, &status);
    let settled = status.phase == Phase::Ready;
    // A step in progress, the next step due, or every server draining for a migration (not a
    // gate that waits for a person or a window, not a halt).
    let next_step_due = roll.outdated > 0 && roll.waiting.is_none();
    // Jobs are watched; only drains and joins need the database polled this often.
    let draining_all = upgrade.stage == Some(upgrade::stages::STOPPING_SERVERS);
    let stepping = (roll.step.is_some() || next_step_due || draining_all) && status.phase != Phase::Blocked;
    let finished_stage = previous_step.as_ref().and_then(|before| {
        let same = roll
            .step
            .as_ref()
            .is_some_and(|after| after.server == before.server && after.stage == before.stage);
        (!same).then(|| Finished {
            stage: before.stage.as_str(),
            key: format!("{}@{}", before.server, before.since),
            seconds: now.0.duration_since(before.since).as_secs_f64().max(0.0),
        })
    });
    let held_seconds = find(&status.conditions, types::MAINTENANCE_BLOCKED)
        .filter(|c| c.status == status::TRUE)
        .map(|c| now.0.duration_since(c.last_transition_time.0).as_secs_f64().max(0.0) as i64)
        .unwrap_or(0);
    Ok(Plan {
        step_done: previous_step
            .as_ref()
            .filter(|_| events.iter().any(|e| e.reason == event_reasons::MAINTENANCE_STEP_DONE))
            .map(|step| Finished {
                stage: step.stage.as_str(),
                key: format!("{}@{}", step.server, step.began),
                seconds: now.0.duration_since(step.began).as_secs_f64().max(0.0),
            }),
        finished_stage,
        writes,
        drain: capacity
            .drain
            .iter()
            .cloned()
            .chain(match &roll.action {
                Action::RequestDrain(server) => Some(server.clone()),
                _ => None,
            })
            .chain(upgrade.drain.iter().cloned())
            .collect(),
        evict: match &roll.action {
            Action::Evict(server) => Some((server.clone(), roll.step.as_ref().and_then(|s| s.pod_uid.clone()))),
            _ => None,
        },
        remove_rows: capacity.remove_rows.clone(),
        undrain: capacity.undrain.clone(),
        events,
        figures: ClusterFigures {
            desired: cr.spec.replicas.into(),
            joined: joined.into(),
            draining,
            problems: problems.len() as i64,
            database_reachable: database_ready.into(),
            maintenance_held_seconds: held_seconds,
        },
        status,
        requeue: if settled {
            IDLE_REQUEUE
        } else if stepping {
            STEP_REQUEUE
        } else {
            BUSY_REQUEUE
        },
    })
}

/// The resource as the StatefulSet must run it: the wanted release once the schema gate lets
/// it through, the running one until then.
fn deployed_release(
    cr: &OrchestratorCluster,
    upgrade: &UpgradeDecision,
    running: Option<&Release>,
) -> OrchestratorCluster {
    let mut deployed = cr.clone();
    if let (false, Some(running)) = (upgrade.release_ready, running) {
        deployed.spec.version = running.version.clone();
        deployed.spec.image = Some(running.image.clone());
    }
    deployed
}

fn live<T: Serialize>(object: &Option<T>) -> Result<Option<Value>> {
    object.as_ref().map(|o| value_of("live object", o)).transpose()
}

/// The status: servers from both views, counts, phase and conditions.
#[allow(clippy::too_many_arguments)]
fn status(
    cr: &OrchestratorCluster,
    observed: &Observed,
    statefulset_current: bool,
    servers: &[ServerStatus],
    problems: &[String],
    capacity: &CapacityPlan,
    roll: &Decision,
    upgrade: &UpgradeDecision,
    now: &Time,
) -> OrchestratorClusterStatus {
    let previous = cr.status.clone().unwrap_or_default();
    let generation = cr.metadata.generation;
    let wanted = cr.spec.replicas;
    let joined = servers.iter().filter(|s| s.joined).count() as i32;
    let pods = observed.pods.len() as i32;
    let sts_observed = statefulset_current
        && observed
            .statefulset
            .as_ref()
            .is_some_and(|s| s.status.as_ref().and_then(|st| st.observed_generation) >= s.metadata.generation);
    let updated = observed
        .statefulset
        .as_ref()
        .and_then(|s| s.status.as_ref())
        .and_then(|s| s.updated_replicas);
    let settled = sts_observed
        && capacity.replicas == wanted
        && pods == wanted
        && joined == wanted
        && updated.unwrap_or(0) >= wanted
        && problems.is_empty()
        && roll.outdated == 0
        && roll.step.is_none()
        && upgrade.release_ready
        && upgrade.stage.is_none();
    let rolling = roll.outdated > 0 || roll.step.is_some() || upgrade.stage.is_some();
    let maintenance_blocked = roll.blocked.as_ref().or(upgrade.blocked.as_ref());

    let phase = if capacity.blocked.is_some() || maintenance_blocked.is_some() {
        Phase::Blocked
    } else if settled {
        Phase::Ready
    } else if rolling {
        Phase::Maintaining
    } else if !problems.is_empty() {
        Phase::Degraded
    } else if joined == 0 && wanted > 0 {
        Phase::Pending
    } else {
        Phase::Scaling
    };
    let condition = |type_, holds, reason, message: String| {
        condition(&previous.conditions, type_, holds, reason, message, generation, now)
    };
    let joined_message = format!("{joined} of {wanted} servers joined");
    let (database_reason, database_message, reachable, schema_version) = match &observed.database {
        DatabaseState::Ready {
            schema_version,
            members,
        } => (
            database::reasons::CONNECTED,
            format!("schema version {schema_version}, {} servers registered", members.len()),
            true,
            Some(*schema_version),
        ),
        DatabaseState::NotReady { reason, message } => (*reason, message.clone(), false, None),
    };
    let progress_message = roll_message(roll)
        .or(upgrade.waiting.as_ref().map(|(_, message)| message.clone()))
        .or(capacity.waiting.clone())
        .unwrap_or_else(|| {
            format!(
                "{pods} server pods, {} wanted by the capacity plan, {wanted} in the spec; {joined_message}",
                capacity.replicas
            )
        });
    let conditions = vec![
        condition(
            types::READY,
            settled,
            if settled {
                reasons::ALL_SERVERS_JOINED
            } else {
                reasons::SERVERS_NOT_READY
            },
            joined_message,
        ),
        condition(
            types::PROGRESSING,
            !settled && capacity.blocked.is_none(),
            if settled { reasons::STABLE } else { reasons::SCALING },
            if settled {
                "nothing to change".into()
            } else {
                progress_message
            },
        ),
        condition(
            types::DEGRADED,
            !problems.is_empty(),
            if problems.is_empty() {
                reasons::AS_EXPECTED
            } else {
                reasons::SERVER_PROBLEMS
            },
            problems.join("; "),
        ),
        condition(types::DATABASE_READY, reachable, database_reason, database_message),
        match &capacity.blocked {
            Some((reason, message)) => condition(types::CAPACITY_BLOCKED, true, reason, message.clone()),
            None => condition(
                types::CAPACITY_BLOCKED,
                false,
                capacity::reasons::NOT_BLOCKED,
                String::new(),
            ),
        },
        match maintenance_blocked
            .or(roll.waiting.as_ref())
            .or(upgrade.waiting.as_ref())
        {
            Some((reason, message)) => condition(types::MAINTENANCE_BLOCKED, true, reason, message.clone()),
            None => condition(
                types::MAINTENANCE_BLOCKED,
                false,
                capacity::reasons::NOT_BLOCKED,
                String::new(),
            ),
        },
    ];
    OrchestratorClusterStatus {
        observed_generation: generation,
        phase,
        replicas: pods,
        ready_replicas: joined,
        selector: Some(selector_string(cr)),
        current_version: if settled {
            Some(cr.spec.version.clone())
        } else {
            previous.current_version.clone()
        },
        target_version: Some(cr.spec.version.clone()),
        database: Some(DatabaseStatus {
            reachable,
            schema_version,
            checked_at: Some(now.clone()),
        }),
        servers: servers.to_vec(),
        maintenance: maintenance_status(roll, upgrade, servers.len(), &previous),
        conditions,
    }
}

/// The Progressing message of a roll in progress.
fn roll_message(roll: &Decision) -> Option<String> {
    let step = roll.step.as_ref()?;
    Some(format!(
        "rolling maintenance: {} {}, {} servers outdated",
        step.server,
        step.stage.as_str().to_lowercase(),
        roll.outdated
    ))
}

/// `status.maintenance`: the step in progress (it is also what a restarted operator resumes).
fn maintenance_status(
    roll: &Decision,
    upgrade: &UpgradeDecision,
    servers: usize,
    previous: &OrchestratorClusterStatus,
) -> Option<MaintenanceStatus> {
    if roll.step.is_none()
        && let Some(stage) = upgrade.stage
    {
        return Some(MaintenanceStatus {
            reason: Some(maintenance::triggers::VERSION_CHANGE.into()),
            stage: Some(stage.into()),
            blocked_reason: upgrade
                .blocked
                .as_ref()
                .or(upgrade.waiting.as_ref())
                .map(|(_, message)| message.clone()),
            ..MaintenanceStatus::default()
        });
    }
    if roll.outdated == 0 && roll.step.is_none() {
        return None;
    }
    // A replacement being waited for is no longer outdated but its step is not done yet.
    let waiting_ready = roll.step.as_ref().is_some_and(|s| s.stage == Stage::WaitingReady);
    let done = servers.saturating_sub(roll.outdated + usize::from(waiting_ready));
    Some(MaintenanceStatus {
        reason: roll
            .trigger
            .map(String::from)
            .or_else(|| previous.maintenance.as_ref().and_then(|m| m.reason.clone())),
        step: Some(format!("{}/{servers}", (done + 1).min(servers.max(1)))),
        server: roll.step.as_ref().map(|s| s.server.clone()),
        stage: roll.step.as_ref().map(|s| s.stage.as_str().to_string()),
        started_at: roll.step.as_ref().map(|s| Time(s.since)),
        step_started_at: roll.step.as_ref().map(|s| Time(s.began)),
        pod_uid: roll.step.as_ref().and_then(|s| s.pod_uid.clone()),
        blocked_reason: roll
            .blocked
            .as_ref()
            .or(roll.waiting.as_ref())
            .map(|(_, message)| message.clone()),
    })
}

/// The step in progress, as the last status recorded it.
fn step_from_status(cr: &OrchestratorCluster) -> Option<Step> {
    let m = cr.status.as_ref()?.maintenance.as_ref()?;
    let stage = match m.stage.as_deref()? {
        "Draining" => Stage::Draining,
        "Evicting" => Stage::Evicting,
        "WaitingReady" => Stage::WaitingReady,
        _ => return None,
    };
    Some(Step {
        server: m.server.clone()?,
        stage,
        since: m.started_at.as_ref()?.0,
        began: m.step_started_at.as_ref().or(m.started_at.as_ref())?.0,
        pod_uid: m.pod_uid.clone(),
    })
}

/// What must finish before a roll step starts: a schema migration, a capacity change.
fn roll_hold(
    cr: &OrchestratorCluster,
    capacity: &CapacityPlan,
    upgrade: &UpgradeDecision,
    current: i32,
) -> Option<(&'static str, String)> {
    let scaling = capacity.replicas != current || current != cr.spec.replicas || !capacity.drain.is_empty();
    if upgrade.recreate {
        Some((
            maintenance::reasons::SCHEMA_MIGRATION,
            "every server is stopped for a schema migration".into(),
        ))
    } else if scaling {
        Some((
            maintenance::reasons::SCALING,
            "servers are being added or removed".into(),
        ))
    } else {
        None
    }
}

/// The roll's decision; it waits while capacity changes or a schema migration are under way.
fn roll(
    cr: &OrchestratorCluster,
    observed: &Observed,
    servers: &[ServerStatus],
    hold: Option<(&'static str, String)>,
    step: Option<Step>,
    now: &Time,
) -> Result<Decision> {
    let name = cr.name_any();
    let members = observed.database.members().unwrap_or_default();
    let views: Vec<ServerView> = servers
        .iter()
        .filter_map(|s| {
            let ordinal = crate::servers::ordinal(&name, &s.name)?;
            let pod = observed.pods.iter().find(|p| p.name == s.name);
            Some(ServerView {
                name: s.name.clone(),
                ordinal,
                pod_exists: s.pod_exists,
                uid: pod.and_then(|p| p.uid.clone()),
                revision: s.revision.clone(),
                started_at: pod.and_then(|p| p.created_at),
                ready: s.ready,
                joined: s.joined,
                running_jobs: s.running_jobs.unwrap_or(0),
                state: s.state.clone(),
                drain_age_seconds: members
                    .iter()
                    .find(|m| m.server_id == s.name)
                    .and_then(|m| m.drain_requested_seconds),
            })
        })
        .collect();
    let update_revision = observed
        .statefulset
        .as_ref()
        .and_then(|s| s.status.as_ref())
        .and_then(|s| s.update_revision.clone());
    let maintenance = &cr.spec.maintenance;
    let input = MaintenanceInput {
        servers: &views,
        update_revision: update_revision.as_deref(),
        restart_requested_at: maintenance.restart_requested_at.as_ref().map(|t| t.0),
        paused: maintenance.paused,
        window_open: window_open(&maintenance.windows, now.0),
        next_window: next_window(&maintenance.windows, now.0),
        database_ready: matches!(observed.database, DatabaseState::Ready { .. }),
        hold,
        step,
        drain_timeout: maintenance.drain_timeout()?,
        ready_timeout: maintenance.ready_timeout()?,
        on_drain_timeout: maintenance.on_drain_timeout,
        now: now.0,
    };
    Ok(maintenance::plan(&input))
}

/// Events for capacity steps, and for conditions that just turned bad or changed message.
fn events(
    cr: &OrchestratorCluster,
    current: i32,
    capacity: &CapacityPlan,
    roll: &Decision,
    upgrade: &UpgradeDecision,
    status: &OrchestratorClusterStatus,
) -> Vec<PlannedEvent> {
    let name = cr.name_any();
    let wanted = cr.spec.replicas;
    let mut events = roll_events(cr, roll, upgrade, status);
    let mut normal = |reason, note: String| {
        events.push(PlannedEvent {
            warning: false,
            reason,
            note,
        })
    };
    if capacity.replicas > current {
        let added: Vec<String> = (current..capacity.replicas).map(|o| format!("{name}-{o}")).collect();
        normal(
            event_reasons::SCALING_UP,
            format!(
                "adding {} ({current} -> {} of {wanted} servers)",
                added.join(", "),
                capacity.replicas
            ),
        );
    }
    if capacity.replicas < current {
        normal(
            event_reasons::SCALING_DOWN,
            format!("removing drained servers ({current} -> {} servers)", capacity.replicas),
        );
    }
    if !capacity.drain.is_empty() {
        normal(
            event_reasons::DRAINING,
            format!("asked {} for a friendly shutdown", capacity.drain.join(", ")),
        );
    }
    if !capacity.undrain.is_empty() {
        normal(
            event_reasons::DRAINING,
            format!(
                "withdrew the drain request of {}: wanted again",
                capacity.undrain.join(", ")
            ),
        );
    }
    if !capacity.remove_rows.is_empty() {
        normal(
            event_reasons::REMOVED_SERVER_ROWS,
            format!("removed the database rows of {}", capacity.remove_rows.join(", ")),
        );
    }
    let previous = cr.status.clone().unwrap_or_default().conditions;
    let turned = |type_: &str, bad_when_true: bool| {
        let now = find(&status.conditions, type_)?;
        let bad = (now.status == status::TRUE) == bad_when_true;
        let before = find(&previous, type_);
        let changed = before.is_none_or(|b| b.status != now.status || b.message != now.message);
        (bad && changed).then(|| now.message.clone())
    };
    // Events with the same reason are merged into one series that keeps the first note, so
    // each distinct problem gets its own reason: the condition's.
    for (type_, bad_when_true) in [
        (types::CAPACITY_BLOCKED, true),
        (types::DEGRADED, true),
        (types::DATABASE_READY, false),
    ] {
        if let Some(note) = turned(type_, bad_when_true) {
            let reason = find(&status.conditions, type_)
                .map(|c| c.reason.clone())
                .unwrap_or_default();
            events.push(PlannedEvent {
                warning: true,
                reason: event_reason(&reason),
                note,
            });
        }
    }
    events
}

/// An Event per stage of the roll, and one when it halts.
fn roll_events(
    cr: &OrchestratorCluster,
    roll: &Decision,
    upgrade: &UpgradeDecision,
    status: &OrchestratorClusterStatus,
) -> Vec<PlannedEvent> {
    let before = cr
        .status
        .as_ref()
        .and_then(|s| s.maintenance.clone())
        .unwrap_or_default();
    let after = status.maintenance.clone().unwrap_or_default();
    let mut events = Vec::new();
    let progress = after.step.clone().unwrap_or_default();
    let trigger = after.reason.clone().unwrap_or_default();
    if (before.server.as_ref(), before.stage.as_ref()) != (after.server.as_ref(), after.stage.as_ref()) {
        match (&after.server, &after.stage) {
            (Some(server), Some(stage)) => events.push(PlannedEvent {
                warning: false,
                reason: match stage.as_str() {
                    "Draining" => event_reasons::MAINTENANCE_DRAINING,
                    "Evicting" => event_reasons::MAINTENANCE_EVICTING,
                    _ => event_reasons::MAINTENANCE_WAITING_READY,
                },
                note: format!("{server}: {} (step {progress}, {trigger})", stage.to_lowercase()),
            }),
            (None, stage) => {
                if let Some(server) = before.server.clone() {
                    events.push(PlannedEvent {
                        warning: false,
                        reason: event_reasons::MAINTENANCE_STEP_DONE,
                        note: format!("{server} replaced and joined"),
                    });
                }
                if let Some(stage) = stage {
                    events.push(PlannedEvent {
                        warning: false,
                        reason: match stage.as_str() {
                            upgrade::stages::STOPPING_SERVERS => event_reasons::STOPPING_SERVERS,
                            upgrade::stages::MIGRATING => event_reasons::SCHEMA_MIGRATION,
                            _ => event_reasons::SCHEMA_CHECK,
                        },
                        note: format!(
                            "version {}: {}",
                            cr.spec.version,
                            after.blocked_reason.clone().unwrap_or_default()
                        ),
                    });
                }
            }
            (Some(_), None) => {}
        }
        if before.stage.as_deref() == Some(upgrade::stages::MIGRATING)
            && upgrade.stage != Some(upgrade::stages::MIGRATING)
            && upgrade.blocked.is_none()
        {
            events.push(PlannedEvent {
                warning: false,
                reason: event_reasons::SCHEMA_MIGRATED,
                note: format!("schema migrated for version {}", cr.spec.version),
            });
        }
    }
    if let Some((reason, message)) = roll.blocked.as_ref().or(upgrade.blocked.as_ref())
        && before.blocked_reason.as_ref() != Some(message)
    {
        events.push(PlannedEvent {
            warning: true,
            reason,
            note: message.clone(),
        });
    }
    events
}

/// The `&'static str` of a condition reason (they are all constants of this crate).
fn event_reason(reason: &str) -> &'static str {
    use crate::database::reasons as db;
    [
        capacity::reasons::DATABASE_NOT_READY,
        capacity::reasons::ABOVE_MAX_REPLICAS,
        capacity::reasons::NO_SERVER_JOINED,
        capacity::reasons::SERVER_UNHEALTHY,
        capacity::reasons::DRAIN_TIMEOUT,
        reasons::SERVER_PROBLEMS,
        db::SECRET_MISSING,
        db::SECRET_KEY_MISSING,
        db::HOST_UNRESOLVABLE,
        db::UNREACHABLE,
        db::LOGIN_FAILED,
        db::DATABASE_MISSING,
        db::INSUFFICIENT_PRIVILEGES,
        db::SCHEMA_MISSING,
        db::TLS_FAILED,
        db::QUERY_FAILED,
    ]
    .into_iter()
    .find(|known| *known == reason)
    .unwrap_or(event_reasons::DEGRADED)
}

/// The status of a cluster whose spec cannot be used: nothing is changed until the spec is.
pub fn invalid_spec_status(cr: &OrchestratorCluster, error: &SpecError, now: &Time) -> OrchestratorClusterStatus {
    let previous = cr.status.clone().unwrap_or_default();
    let generation = cr.metadata.generation;
    let message = error.to_string();
    OrchestratorClusterStatus {
        observed_generation: generation,
        phase: Phase::Blocked,
        conditions: vec![
            condition(
                &previous.conditions,
                types::READY,
                false,
                reasons::INVALID_SPEC,
                message.clone(),
                generation,
                now,
            ),
            condition(
                &previous.conditions,
                types::PROGRESSING,
                false,
                reasons::INVALID_SPEC,
                message.clone(),
                generation,
                now,
            ),
            condition(
                &previous.conditions,
                types::DEGRADED,
                true,
                reasons::INVALID_SPEC,
                message,
                generation,
                now,
            ),
        ],
        ..previous
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conditions::status::TRUE;
    use crate::resources::fixtures;
    use crate::servers::PodView;
    use crate::servers::tests::member;
    use k8s_openapi::api::apps::v1::StatefulSetStatus;
    use k8s_openapi::jiff::Timestamp;

    pub(super) fn now() -> Time {
        Time(Timestamp::from_second(1_800_000_000).unwrap())
    }

    fn ready_db(members: Vec<orchestrator_contract::Member>) -> DatabaseState {
        DatabaseState::Ready {
            schema_version: 2,
            members,
        }
    }

    /// The cluster after its objects were applied, with `current` server pods of which the
    /// first `joined` are ready and active in the database.
    pub(super) fn world(cr: &OrchestratorCluster, current: i32, joined: i32) -> Observed {
        let first = plan(
            cr,
            &Observed {
                database: ready_db(vec![]),
                ..Observed::default()
            },
            &BuildSettings::default(),
            &now(),
        )
        .unwrap();
        let mut observed = Observed::default();
        for write in first.writes {
            match write.child {
                Child::ConfigMap(o) => observed.configmap = Some(o),
                Child::Service(o) if o.name_any().ends_with("-servers") => observed.headless_service = Some(o),
                Child::Service(o) => observed.client_service = Some(o),
                Child::PodDisruptionBudget(o) => observed.pdb = Some(o),
                Child::StatefulSet(mut o) => {
                    o.spec.as_mut().unwrap().replicas = Some(current);
                    o.metadata.generation = Some(1);
                    o.status = Some(StatefulSetStatus {
                        observed_generation: Some(1),
                        replicas: current,
                        ready_replicas: Some(joined),
                        updated_replicas: Some(current),
                        ..StatefulSetStatus::default()
                    });
                    observed.statefulset = Some(o);
                }
                Child::Job(o) => panic!("a new cluster runs no schema Job, got {}", o.name_any()),
            }
        }
        let name = cr.name_any();
        observed.pods = (0..current)
            .map(|o| PodView {
                name: format!("{name}-{o}"),
                ordinal: o,
                ready: o < joined,
                release: Some(Release::wanted(cr, &BuildSettings::default())),
                ..PodView::default()
            })
            .collect();
        observed.database = ready_db(
            (0..joined)
                .map(|o| member(&format!("{name}-{o}"), "active", 1.0))
                .collect(),
        );
        observed
    }

    #[test]
    fn fresh_cluster_creates_every_owned_object_and_adds_the_first_server() {
        let cr = fixtures::minimal();
        let observed = Observed {
            database: ready_db(vec![]),
            ..Observed::default()
        };
        let plan = plan(&cr, &observed, &BuildSettings::default(), &now()).unwrap();
        let kinds: Vec<_> = plan
            .writes
            .iter()
            .map(|w| (w.child.kind(), w.child.name(), w.creates))
            .collect();
        assert_eq!(
            kinds,
            vec![
                ("ConfigMap", "minimal-config".to_string(), true),
                ("Service", "minimal-servers".to_string(), true),
                ("Service", "minimal".to_string(), true),
                ("PodDisruptionBudget", "minimal".to_string(), true),
                ("StatefulSet", "minimal".to_string(), true),
            ]
        );
        let Child::StatefulSet(sts) = &plan.writes[4].child else {
            panic!()
        };
        assert_eq!(sts.spec.as_ref().unwrap().replicas, Some(1), "one server at a time");
        assert_eq!(plan.status.phase, Phase::Pending);
        assert_eq!(plan.events[0].note, "adding minimal-0 (0 -> 1 of 3 servers)");
        assert_eq!(
            find(&plan.status.conditions, types::DATABASE_READY).unwrap().status,
            TRUE
        );
        assert_eq!(plan.requeue, BUSY_REQUEUE);
    }

    #[test]
    fn database_not_ready_blocks_and_creates_no_server() {
        let cr = fixtures::minimal();
        let message = "secret process-db has no key 'password' (the database password)".to_string();
        let observed = Observed {
            database: DatabaseState::NotReady {
                reason: database::reasons::SECRET_KEY_MISSING,
                message: message.clone(),
            },
            ..Observed::default()
        };
        let plan = plan(&cr, &observed, &BuildSettings::default(), &now()).unwrap();
        let Child::StatefulSet(sts) = &plan.writes[4].child else {
            panic!()
        };
        assert_eq!(sts.spec.as_ref().unwrap().replicas, Some(0));
        assert_eq!(plan.status.phase, Phase::Blocked);
        let blocked = find(&plan.status.conditions, types::CAPACITY_BLOCKED).unwrap();
        assert_eq!(
            (blocked.status.as_str(), blocked.reason.as_str()),
            ("True", capacity::reasons::DATABASE_NOT_READY)
        );
        assert!(blocked.message.contains(&message));
        let db = find(&plan.status.conditions, types::DATABASE_READY).unwrap();
        assert_eq!(
            (db.status.as_str(), db.reason.as_str()),
            ("False", database::reasons::SECRET_KEY_MISSING)
        );
        let reasons: Vec<_> = plan.events.iter().map(|e| (e.warning, e.reason)).collect();
        assert_eq!(
            reasons,
            vec![
                (true, capacity::reasons::DATABASE_NOT_READY),
                (true, database::reasons::SECRET_KEY_MISSING)
            ]
        );
    }

    #[test]
    fn unchanged_cluster_needs_no_writes_and_reports_ready() {
        let mut cr = fixtures::full();
        let observed = world(&cr, 4, 4);
        let first = plan(&cr, &observed, &BuildSettings::default(), &now()).unwrap();
        assert_eq!(first.writes, vec![]);
        assert_eq!(first.status.phase, Phase::Ready);
        assert_eq!(first.status.ready_replicas, 4);
        assert_eq!(first.status.servers.len(), 4);
        assert!(
            first
                .status
                .servers
                .iter()
                .all(|s| s.joined && s.state.as_deref() == Some("active"))
        );
        assert_eq!(first.status.current_version.as_deref(), Some("1.0.0"));
        assert_eq!(find(&first.status.conditions, types::READY).unwrap().status, TRUE);
        assert_eq!(first.requeue, IDLE_REQUEUE);
        cr.status = Some(first.status);
        let second = plan(&cr, &observed, &BuildSettings::default(), &now()).unwrap();
        assert!(second.events.is_empty(), "{:?}", second.events);
    }

    #[test]
    fn hand_edits_are_reverted_and_only_the_edited_object_is_written() {
        let cr = fixtures::minimal();
        let mut observed = world(&cr, 3, 3);
        observed.pdb = None;
        let pod_spec = observed
            .statefulset
            .as_mut()
            .unwrap()
            .spec
            .as_mut()
            .unwrap()
            .template
            .spec
            .as_mut()
            .unwrap();
        pod_spec.containers[0].image = Some("hand-edited:latest".into());
        let second = plan(&cr, &observed, &BuildSettings::default(), &now()).unwrap();
        let writes: Vec<_> = second.writes.iter().map(|w| (w.child.kind(), w.creates)).collect();
        assert_eq!(writes, vec![("PodDisruptionBudget", true), ("StatefulSet", false)]);
    }

    #[test]
    fn next_server_waits_for_the_previous_to_join() {
        let cr = fixtures::minimal();
        let plan = plan(&cr, &world(&cr, 2, 1), &BuildSettings::default(), &now()).unwrap();
        assert_eq!(plan.status.phase, Phase::Scaling);
        assert!(plan.writes.is_empty(), "no new server: {:?}", plan.writes);
        let ready = find(&plan.status.conditions, types::READY).unwrap();
        assert_eq!(ready.message, "1 of 3 servers joined");
        let progressing = find(&plan.status.conditions, types::PROGRESSING).unwrap();
        assert_eq!(
            progressing.message,
            "waiting for minimal-1 to join before adding more servers"
        );
        assert_eq!(plan.status.current_version, None);
    }

    #[test]
    fn unusable_spec_is_an_error_with_the_field() {
        let mut cr = fixtures::minimal();
        cr.spec.maintenance.drain_timeout = "10 minutes".into();
        let err = plan(&cr, &Observed::default(), &BuildSettings::default(), &now()).unwrap_err();
        let Error::InvalidSpec(spec_error) = err else {
            panic!("wrong error {err}")
        };
        assert_eq!(spec_error.field, "spec.maintenance.drainTimeout");
        let status = invalid_spec_status(&cr, &spec_error, &now());
        assert_eq!(status.phase, Phase::Blocked);
        let degraded = find(&status.conditions, types::DEGRADED).unwrap();
        assert_eq!(
            (degraded.status.as_str(), degraded.reason.as_str()),
            ("True", reasons::INVALID_SPEC)
        );
        assert!(degraded.message.contains("drainTimeout"));
    }
}

#[cfg(test)]
mod version_change_tests {
    use super::*;
    use crate::conditions::status::TRUE;
    use crate::crd::SchemaChangePolicy;
    use crate::resources::fixtures;
    use crate::resources::job::{EXIT_MIGRATION_NEEDED, JobOutcome};
    use crate::upgrade::{reasons as upgrade_reasons, stages};

    fn settled(cr: &OrchestratorCluster) -> Observed {
        super::tests::world(cr, 3, 3)
    }

    fn statefulset_version(plan: &Plan) -> Option<String> {
        plan.writes.iter().find_map(|w| match &w.child {
            Child::StatefulSet(s) => statefulset::running_release(s).map(|r| r.version),
            _ => None,
        })
    }

    #[test]
    fn a_new_version_waits_for_its_schema_check_before_the_template_changes() {
        let old = fixtures::minimal();
        let observed = settled(&old);
        let mut cr = old.clone();
        cr.spec.version = "2.0.0".into();
        let settings = BuildSettings::default();
        let first = plan(&cr, &observed, &settings, &super::tests::now()).unwrap();
        let kinds: Vec<_> = first.writes.iter().map(|w| (w.child.kind(), w.creates)).collect();
        assert_eq!(
            kinds,
            vec![("Job", true)],
            "only the check Job; the template keeps the old release"
        );
        assert_eq!(first.status.phase, Phase::Maintaining);
        let maintenance = first.status.maintenance.clone().unwrap();
        assert_eq!(maintenance.stage.as_deref(), Some(stages::SCHEMA_CHECK));

        let mut checked = observed.clone();
        checked.schema_jobs.check = Some(JobOutcome::Succeeded);
        let second = plan(&cr, &checked, &settings, &super::tests::now()).unwrap();
        assert_eq!(statefulset_version(&second), Some("2.0.0".into()));
    }

    #[test]
    fn a_refused_schema_change_blocks_and_disrupts_nothing() {
        let old = fixtures::minimal();
        let mut observed = settled(&old);
        observed.schema_jobs.check = Some(JobOutcome::Failed {
            exit_code: Some(EXIT_MIGRATION_NEEDED),
            message: "migration needed: database schema 1, version 2.0.0 needs 2".into(),
        });
        let mut cr = old.clone();
        cr.spec.version = "2.0.0".into();
        let refused = plan(&cr, &observed, &BuildSettings::default(), &super::tests::now()).unwrap();
        assert!(refused.writes.is_empty() && refused.drain.is_empty() && refused.evict.is_none());
        assert_eq!(refused.status.phase, Phase::Blocked);
        let blocked = find(&refused.status.conditions, types::MAINTENANCE_BLOCKED).unwrap();
        assert_eq!(
            (blocked.status.as_str(), blocked.reason.as_str()),
            (TRUE, upgrade_reasons::SCHEMA_CHANGE_REFUSED)
        );
        assert!(refused.events.iter().any(|e| e.warning && e.note.contains("needs 2")));

        cr.spec.upgrade.schema_change = SchemaChangePolicy::Recreate;
        let recreate = plan(&cr, &observed, &BuildSettings::default(), &super::tests::now()).unwrap();
        assert_eq!(recreate.drain.len(), 3, "{:?}", recreate.drain);
        assert!(recreate.undrain.is_empty() && recreate.writes.is_empty());
    }
}
