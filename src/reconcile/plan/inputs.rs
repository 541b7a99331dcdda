//! Inputs: what was observed, adapted once to what the planners read (both views of every
//! server, drain ages, the step the last status recorded). Pure; does not need a client.

use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use orchestrator_contract::server_state;

use crate::crd::{OrchestratorCluster, ServerStatus};
use crate::database::DatabaseState;
use crate::planners::maintenance::{ServerView, Step};
use crate::planners::servers::{Health, merge, next_expiry, ordinal, problems};
use crate::reconcile::observe::Observed;
use crate::release::Release;
use crate::resources::statefulset;
use crate::vocabulary::RollStage;

/// A row whose heartbeat is younger than this may still have a process running jobs (the
/// heartbeat that makes a server joined must be younger than 10 s; this is the margin for a
/// server whose heartbeats were held up, e.g. by a database blip).
const SERVING_HEARTBEAT_SECONDS: f64 = 60.0;

/// The observation, adapted.
#[derive(Clone, Debug)]
pub(super) struct Inputs {
    /// Every server from both views, by ordinal.
    pub(super) servers: Vec<ServerStatus>,
    /// Problems worth a `Degraded` condition, one line each.
    pub(super) problems: Vec<String>,
    /// How long until time alone changes the servers' view (a heartbeat goes stale, a restart
    /// stops being recent).
    pub(super) next_expiry: Option<Duration>,
    /// Jobs the cluster's servers reported running.
    pub(super) running_jobs: i64,
    /// Age of the oldest heartbeat of a server not stopped, in seconds.
    pub(super) oldest_heartbeat_seconds: f64,
    /// The StatefulSet's `spec.replicas` (0 without a StatefulSet).
    pub(super) current: i32,
    /// Seconds since each draining server's drain was requested.
    pub(super) drain_ages: Vec<(String, f64)>,
    /// Jobs each row still owns.
    pub(super) owned_jobs: Vec<(String, i64)>,
    /// Seconds since each row's last heartbeat.
    pub(super) heartbeat_ages: Vec<(String, f64)>,
    /// Rows in state `draining`.
    pub(super) draining: i64,
    /// Servers of this cluster taking work (active, no drain requested, a fresh heartbeat), as
    /// the database's work counts them.
    pub(super) own_serving: i64,
    /// The step in progress, as the last status recorded it.
    pub(super) previous_step: Option<Step>,
    /// The database preflight passes.
    pub(super) database_ready: bool,
    /// The release the StatefulSet's template runs.
    pub(super) running_release: Option<Release>,
    /// Every server as the rolling-maintenance planner reads it.
    pub(super) views: Vec<ServerView>,
    /// The StatefulSet asks for no pod and has none.
    pub(super) statefulset_stopped: bool,
    /// The StatefulSet's update revision.
    pub(super) update_revision: Option<String>,
    /// The StatefulSet controller has observed the StatefulSet's latest spec, so its update
    /// revision is that spec's (no StatefulSet: nothing to observe).
    pub(super) statefulset_observed: bool,
}

/// Adapts `observed` of cluster `cr`.
pub(super) fn gather(cr: &OrchestratorCluster, observed: &Observed, now: Timestamp) -> Inputs {
    let name = cr.name_any();
    let health = Health::default();
    let members = observed.database.members().unwrap_or_default();
    let mut servers = merge(&name, &observed.pods, observed.database.members(), health);
    let previous_step = step_from_status(cr);
    // The operator's own step evicts its server's pod too: that is no involuntary disruption
    // (its replacement, a pod of another uid, can be).
    for server in &mut servers {
        let uid = observed
            .pods
            .iter()
            .find(|p| p.name == server.name)
            .and_then(|p| p.uid.as_ref());
        if previous_step
            .as_ref()
            .is_some_and(|step| step.server == server.name && step.pod_uid.as_ref().is_none_or(|own| Some(own) == uid))
        {
            server.disruption = None;
        }
    }
    let views = servers
        .iter()
        .filter_map(|s| {
            let ordinal = ordinal(&name, &s.name)?;
            let pod = observed.pods.iter().find(|p| p.name == s.name);
            let member = members.iter().find(|m| m.server_id == s.name);
            Some(ServerView {
                serving: member.is_some_and(|m| {
                    matches!(m.state.as_str(), server_state::ACTIVE | server_state::DRAINING)
                        && m.heartbeat_age_seconds < SERVING_HEARTBEAT_SECONDS
                }),
                name: s.name.clone(),
                ordinal,
                pod_exists: s.pod_exists,
                terminating_until: pod.and_then(|p| p.terminating_until),
                uid: pod.and_then(|p| p.uid.clone()),
                revision: s.revision.clone(),
                started_at: pod.and_then(|p| p.created_at),
                ready: s.ready,
                joined: s.joined,
                running_jobs: member.map(|m| m.running_jobs).unwrap_or(0),
                state: s.state.clone(),
                drain_age_seconds: member.and_then(|m| m.drain_requested_seconds),
                replace_requested: pod.is_some_and(|p| p.replace_requested),
                zone: s.zone.clone(),
                disruption: s.disruption.clone(),
            })
        })
        .collect();
    let statefulset = observed.statefulset.as_ref();
    let mut problems = problems(&servers, &observed.pods, health, now);
    if let Some(why) = &observed.failed_create {
        problems.push(format!("the StatefulSet cannot create a server pod: {why}"));
    }
    Inputs {
        problems,
        next_expiry: next_expiry(&observed.pods, members, health, now),
        running_jobs: members.iter().map(|m| i64::from(m.running_jobs)).sum(),
        oldest_heartbeat_seconds: members
            .iter()
            .filter(|m| m.state != server_state::STOPPED)
            .map(|m| m.heartbeat_age_seconds)
            .fold(0.0, f64::max),
        current: replicas(statefulset),
        drain_ages: members
            .iter()
            .filter_map(|m| m.drain_requested_seconds.map(|age| (m.server_id.clone(), age)))
            .collect(),
        owned_jobs: members.iter().map(|m| (m.server_id.clone(), m.owned_jobs)).collect(),
        heartbeat_ages: members
            .iter()
            .map(|m| (m.server_id.clone(), m.heartbeat_age_seconds))
            .collect(),
        draining: members.iter().filter(|m| m.state == server_state::DRAINING).count() as i64,
        own_serving: members
            .iter()
            .filter(|m| ordinal(&name, &m.server_id).is_some())
            .filter(|m| m.state == server_state::ACTIVE && m.drain_requested_seconds.is_none())
            .filter(|m| m.heartbeat_age_seconds < orchestrator_contract::SERVING_HEARTBEAT_SECONDS)
            .count() as i64,
        previous_step,
        database_ready: matches!(observed.database, DatabaseState::Ready { .. }),
        running_release: statefulset.and_then(statefulset::running_release),
        views,
        statefulset_stopped: statefulset.is_some_and(|s| {
            s.spec.as_ref().and_then(|spec| spec.replicas) == Some(0)
                && s.status.as_ref().is_none_or(|status| status.replicas == 0)
        }),
        update_revision: statefulset
            .and_then(|s| s.status.as_ref())
            .and_then(|s| s.update_revision.clone()),
        statefulset_observed: statefulset
            .is_none_or(|s| s.status.as_ref().and_then(|st| st.observed_generation) >= s.metadata.generation),
        servers,
    }
}

fn replicas(statefulset: Option<&StatefulSet>) -> i32 {
    statefulset
        .and_then(|s| s.spec.as_ref())
        .and_then(|s| s.replicas)
        .unwrap_or(0)
}

/// The step in progress, as the last status recorded it (a stage of a version change is not a
/// step: it is derived from the cluster each time).
pub(super) fn step_from_status(cr: &OrchestratorCluster) -> Option<Step> {
    let m = cr.status.as_ref()?.maintenance.as_ref()?;
    let stage: RollStage = m.stage.as_deref()?.parse().ok()?;
    Some(Step {
        server: m.server.clone()?,
        stage,
        since: m.started_at.as_ref()?.0,
        began: m.step_started_at.as_ref().or(m.started_at.as_ref())?.0,
        pod_uid: m.pod_uid.clone(),
    })
}
