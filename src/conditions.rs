//! Condition types and reasons as named constants, and the helper that keeps
//! `lastTransitionTime` stable while a condition's status does not change.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// Condition types reported on an `OrchestratorCluster`.
pub mod types {
    /// Every wanted server has joined and the spec has been acted on.
    pub const READY: &str = "Ready";
    /// The operator is changing the cluster (adding, removing or replacing servers).
    pub const PROGRESSING: &str = "Progressing";
    /// Fewer servers are healthy than wanted, or the spec cannot be acted on.
    pub const DEGRADED: &str = "Degraded";
    /// The operator can reach and use the process database.
    pub const DATABASE_READY: &str = "DatabaseReady";
    /// A maintenance step is wanted but must wait; the message says why.
    pub const MAINTENANCE_BLOCKED: &str = "MaintenanceBlocked";
    /// Adding servers is wanted but a precondition fails; the message says which.
    pub const CAPACITY_BLOCKED: &str = "CapacityBlocked";
}

/// Reasons of the conditions above (CamelCase, as Kubernetes expects).
pub mod reasons {
    /// Every wanted server has joined.
    pub const ALL_SERVERS_JOINED: &str = "AllServersJoined";
    /// Some wanted servers have not joined yet.
    pub const SERVERS_NOT_READY: &str = "ServersNotReady";
    /// The StatefulSet has not been created or observed yet.
    pub const STATEFULSET_PENDING: &str = "StatefulSetPending";
    /// Server pods are being added or removed.
    pub const SCALING: &str = "Scaling";
    /// Nothing is changing.
    pub const STABLE: &str = "Stable";
    /// The spec passed the CRD schema but the operator cannot use it.
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// No problem to report.
    pub const AS_EXPECTED: &str = "AsExpected";
    /// Some servers are unhealthy; the message names them.
    pub const SERVER_PROBLEMS: &str = "ServerProblems";
}

/// Condition status values.
pub mod status {
    /// The condition holds.
    pub const TRUE: &str = "True";
    /// The condition does not hold.
    pub const FALSE: &str = "False";
}

/// Builds a condition, keeping the previous `lastTransitionTime` when the status is unchanged.
pub fn condition(
    previous: &[Condition],
    type_: &str,
    holds: bool,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    let status = if holds { status::TRUE } else { status::FALSE };
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.clone());
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message: message.into(),
        observed_generation: generation,
        last_transition_time,
    }
}

/// Finds a condition by type.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn at(seconds: i64) -> Time {
        Time(Timestamp::from_second(seconds).unwrap())
    }

    #[test]
    fn transition_time_moves_only_when_status_changes() {
        let first = condition(&[], types::READY, false, reasons::SCALING, "", Some(1), &at(10));
        assert_eq!(first.last_transition_time, at(10));
        let same = condition(
            std::slice::from_ref(&first),
            types::READY,
            false,
            reasons::SERVERS_NOT_READY,
            "x",
            Some(2),
            &at(20),
        );
        assert_eq!(same.last_transition_time, at(10));
        let flipped = condition(
            &[same],
            types::READY,
            true,
            reasons::ALL_SERVERS_JOINED,
            "",
            Some(2),
            &at(30),
        );
        assert_eq!(flipped.last_transition_time, at(30));
        assert_eq!(flipped.status, status::TRUE);
    }
}
