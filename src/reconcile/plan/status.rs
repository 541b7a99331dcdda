//! Status: servers from both views, counts, phase, conditions and the step in progress (which
//! is also what a restarted operator resumes). Pure; does not need a client.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use orchestrator_contract::tls::ChannelBinding;

use super::decide::Decisions;
use super::inputs::Inputs;
use crate::conditions::condition;
use crate::crd::{
    DatabaseSpec, DatabaseStatus, MaintenanceStatus, OrchestratorCluster, OrchestratorClusterStatus, Phase, SpecError,
    SslMode,
};
use crate::database::DatabaseState;
use crate::planners::maintenance::MaintenanceDecision;
use crate::planners::upgrade::UpgradeDecision;
use crate::reconcile::observe::Observed;
use crate::rejections::Rejection;
use crate::resources::selector_string;
use crate::vocabulary::{ConditionType, Hold, Reason, RollStage, Trigger};

/// The status after this reconcile. `statefulset_current` is false when the StatefulSet is
/// about to be written: nothing is settled until its controller has seen the written one.
pub(super) fn status(
    cr: &OrchestratorCluster,
    observed: &Observed,
    inputs: &Inputs,
    decisions: &Decisions,
    statefulset_current: bool,
    now: &Time,
) -> OrchestratorClusterStatus {
    let Decisions {
        wanted,
        autoscale,
        upgrade,
        capacity,
        roll,
        ..
    } = decisions;
    let wanted = *wanted;
    let servers = &inputs.servers;
    let problems = &inputs.problems;
    let previous = cr.status.clone().unwrap_or_default();
    let generation = cr.metadata.generation;
    let joined = servers.iter().filter(|s| s.joined).count() as i32;
    let pods = observed.pods.len() as i32;
    let sts_observed = statefulset_current && observed.statefulset.is_some() && inputs.statefulset_observed;
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
            ..
        } => {
            let connected = format!("schema version {schema_version}, {} servers registered", members.len());
            let (reason, message) = match unprotected(&cr.spec.database) {
                None => (Reason::Connected, connected),
                Some(caveat) => (Reason::ConnectedUnverified, format!("{connected}; {caveat}")),
            };
            (reason, message, true, Some(*schema_version))
        }
        DatabaseState::NotReady { reason, message } => (*reason, message.clone(), false, None),
    };
    let progress_message = roll_message(roll)
        .or(upgrade.waiting.as_ref().map(|hold| hold.message.clone()))
        .or(capacity.waiting.clone())
        .unwrap_or_else(|| {
            format!(
                "{pods} server pods, {} wanted by the capacity plan, {wanted} {}; {joined_message}",
                capacity.replicas,
                if autoscale.is_some() {
                    "by the autoscaler"
                } else {
                    "in the spec"
                }
            )
        });
    let blocked = |type_, hold: Option<&Hold>| match hold {
        Some(hold) => condition(type_, true, hold.reason, hold.message.clone()),
        None => condition(type_, false, Reason::NotBlocked, String::new()),
    };
    let conditions = vec![
        condition(
            ConditionType::Ready,
            settled,
            if settled {
                Reason::AllServersJoined
            } else {
                Reason::ServersNotReady
            },
            joined_message,
        ),
        condition(
            ConditionType::Progressing,
            !settled && capacity.blocked.is_none(),
            if settled { Reason::Stable } else { Reason::Scaling },
            if settled {
                "nothing to change".into()
            } else {
                progress_message
            },
        ),
        condition(
            ConditionType::Degraded,
            !problems.is_empty(),
            if problems.is_empty() {
                Reason::AsExpected
            } else {
                Reason::ServerProblems
            },
            problems.join("; "),
        ),
        condition(
            ConditionType::DatabaseReady,
            reachable,
            database_reason,
            database_message,
        ),
        blocked(ConditionType::CapacityBlocked, capacity.blocked.as_ref()),
        blocked(
            ConditionType::MaintenanceBlocked,
            maintenance_blocked
                .or(roll.waiting.as_ref())
                .or(upgrade.waiting.as_ref()),
        ),
    ];
    let status = OrchestratorClusterStatus {
        observed_generation: generation,
        phase,
        replicas: pods,
        ready_replicas: joined,
        desired_replicas: Some(wanted),
        autoscale: autoscale.as_ref().map(|outcome| {
            let mut status = outcome.status.clone();
            // A scale-up the capacity rules block says so where the autoscaler's count is.
            if let Some(hold) = capacity.blocked.as_ref().filter(|_| wanted > inputs.current) {
                status.limited_by = Some(hold.reason.as_str().to_string());
                status.message = Some(hold.message.clone());
            }
            status
        }),
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
        }),
        servers: servers.to_vec(),
        maintenance: maintenance_status(roll, upgrade, servers.len(), &previous, now),
        // Made by `change`, from the same decisions, once the status and its events are.
        plan: None,
        history: None,
        // Found by `desired`, with the template it holds.
        pending_operator_change: None,
        canary: decisions.canary.status.clone(),
        conditions,
    };
    match &observed.rejected {
        Some(rejection) => with_rejection(status, cr, rejection, now),
        None => status,
    }
}

/// What the database settings leave unprotected, for a person, or `None` when the connection is
/// encrypted, the certificate verified (`verify-ca` or `verify-full`) and the login bound to
/// the TLS channel.
fn unprotected(db: &DatabaseSpec) -> Option<String> {
    let mut caveats = Vec::new();
    match db.ssl_mode {
        SslMode::Disable => caveats.push("connections are not encrypted (sslMode disable)".to_string()),
        SslMode::Prefer => caveats.push(
            "connections may fall back to no encryption and the database's certificate is not verified (sslMode prefer), so whoever answers at its address sees the login".to_string(),
        ),
        SslMode::Require => caveats.push(
            "the database's certificate is not verified (sslMode require), so whoever answers at its address sees the login".to_string(),
        ),
        SslMode::VerifyCa | SslMode::VerifyFull => {}
    }
    if db.ssl_mode != SslMode::Disable && db.channel_binding() == ChannelBinding::Prefer {
        caveats.push("logins need not be bound to the TLS channel (channelBinding prefer), so cleartext and MD5 password authentication are accepted".to_string());
    }
    (!caveats.is_empty()).then(|| {
        format!(
            "{}: set sslMode verify-full (the CA under key ca.crt of secret {}) and leave channelBinding at require",
            caveats.join("; "),
            db.credentials_secret.name
        )
    })
}

/// `status` with the refusal of an owned object said: `Ready=False` with reason
/// `ChildRejected`, naming the object and the API server's words, and phase `Blocked`.
pub(crate) fn with_rejection(
    mut status: OrchestratorClusterStatus,
    cr: &OrchestratorCluster,
    rejection: &Rejection,
    now: &Time,
) -> OrchestratorClusterStatus {
    let previous = cr.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
    let ready = condition(
        previous,
        ConditionType::Ready,
        false,
        Reason::ChildRejected,
        format!("{rejection}; fix the spec (or what the message names) and the operator applies it again"),
        cr.metadata.generation,
        now,
    );
    match status.conditions.iter_mut().find(|c| c.type_ == ready.type_) {
        Some(existing) => *existing = ready,
        None => status.conditions.push(ready),
    }
    status.phase = Phase::Blocked;
    status
}

/// The Progressing message of a roll in progress.
fn roll_message(roll: &MaintenanceDecision) -> Option<String> {
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
    roll: &MaintenanceDecision,
    upgrade: &UpgradeDecision,
    servers: usize,
    previous: &OrchestratorClusterStatus,
    now: &Time,
) -> Option<MaintenanceStatus> {
    if roll.step.is_none()
        && let Some(stage) = upgrade.stage
    {
        return Some(MaintenanceStatus {
            reason: Some(Trigger::VersionChange.as_str().into()),
            stage: Some(stage.as_str().into()),
            blocked_reason: upgrade
                .blocked
                .as_ref()
                .or(upgrade.waiting.as_ref())
                .map(|hold| hold.message.clone()),
            ..MaintenanceStatus::default()
        });
    }
    if roll.outdated == 0 && roll.step.is_none() {
        return None;
    }
    // A replacement being waited for is no longer outdated but its step is not done yet.
    let waiting_ready = roll.step.as_ref().is_some_and(|s| s.stage == RollStage::WaitingReady);
    let done = servers.saturating_sub(roll.outdated + usize::from(waiting_ready));
    Some(MaintenanceStatus {
        reason: roll
            .trigger
            .map(|t| t.as_str().to_string())
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
            .map(|hold| hold.message.clone()),
        // Set by the first step, kept between steps (and while a step halts or waits) until
        // nothing is outdated.
        roll_started_at: previous
            .maintenance
            .as_ref()
            .and_then(|m| m.roll_started_at.clone())
            .or_else(|| roll.step.as_ref().map(|_| now.clone())),
    })
}

/// The status of a cluster whose spec cannot be used: nothing is changed until the spec is.
pub(crate) fn invalid_spec_status(
    cr: &OrchestratorCluster,
    error: &SpecError,
    now: &Time,
) -> OrchestratorClusterStatus {
    let previous = cr.status.clone().unwrap_or_default();
    let generation = cr.metadata.generation;
    let message = error.to_string();
    let condition = |type_, holds| {
        condition(
            &previous.conditions,
            type_,
            holds,
            Reason::InvalidSpec,
            message.clone(),
            generation,
            now,
        )
    };
    OrchestratorClusterStatus {
        observed_generation: generation,
        phase: Phase::Blocked,
        conditions: vec![
            condition(ConditionType::Ready, false),
            condition(ConditionType::Progressing, false),
            condition(ConditionType::Degraded, true),
        ],
        ..previous
    }
}
