//! Building conditions: the helper that keeps `lastTransitionTime` stable while a condition's
//! status does not change. Types and reasons are words of [`crate::vocabulary`].

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::vocabulary::{ConditionType, Reason};

/// Condition status values.
pub(crate) mod status {
    /// The condition holds.
    pub(crate) const TRUE: &str = "True";
    /// The condition does not hold.
    pub(crate) const FALSE: &str = "False";
}

/// Builds a condition, keeping the previous `lastTransitionTime` when the status is unchanged.
pub(crate) fn condition(
    previous: &[Condition],
    type_: ConditionType,
    holds: bool,
    reason: Reason,
    message: impl Into<String>,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    let status = if holds { status::TRUE } else { status::FALSE };
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == type_.as_str() && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.clone());
    Condition {
        type_: type_.as_str().into(),
        status: status.into(),
        reason: reason.as_str().into(),
        message: message.into(),
        observed_generation: generation,
        last_transition_time,
    }
}

/// Finds a condition by type.
pub(crate) fn find(conditions: &[Condition], type_: ConditionType) -> Option<&Condition> {
    conditions.iter().find(|c| c.type_ == type_.as_str())
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
        let first = condition(&[], ConditionType::Ready, false, Reason::Scaling, "", Some(1), &at(10));
        assert_eq!(first.last_transition_time, at(10));
        let same = condition(
            std::slice::from_ref(&first),
            ConditionType::Ready,
            false,
            Reason::ServersNotReady,
            "x",
            Some(2),
            &at(20),
        );
        assert_eq!(same.last_transition_time, at(10));
        let flipped = condition(
            &[same],
            ConditionType::Ready,
            true,
            Reason::AllServersJoined,
            "",
            Some(2),
            &at(30),
        );
        assert_eq!(flipped.last_transition_time, at(30));
        assert_eq!(flipped.status, status::TRUE);
    }
}
