//! Drain progress, shared by the planners that stop servers on purpose (a scale-down removes
//! the highest ordinals, a `Recreate` version change stops them all): which servers still need
//! a drain request, which are still draining, and which overran `drainTimeout`. Pure; does not
//! need a client.

use std::time::Duration;

use orchestrator_contract::server_state;

use crate::crd::{DrainTimeoutPolicy, ServerStatus};
use crate::vocabulary::{Hold, Reason};

/// Where the drains of a set of leaving servers stand.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct DrainProgress {
    /// Servers not yet asked to drain: ask them now.
    pub(crate) request: Vec<String>,
    /// Servers that must still stop before the caller goes on (those just asked included).
    pub(crate) still_draining: Vec<String>,
    /// The last server (in the caller's order) that overran `drainTimeout` under `Halt`.
    pub(crate) timed_out: Option<String>,
}

impl DrainProgress {
    /// The `DrainTimeout` hold when a server overran `drainTimeout` under `Halt`; `purpose`
    /// says what the drain was for (empty for a scale-down).
    pub(crate) fn halt(&self, policy: DrainPolicy, purpose: &str) -> Option<Hold> {
        self.timed_out.as_ref().map(|server| {
            Hold::new(
                Reason::DrainTimeout,
                format!(
                    "{server} did not finish draining within {:?}{purpose}; onDrainTimeout is Halt: finish or cancel its jobs, or set Proceed",
                    policy.timeout
                ),
            )
        })
    }
}

/// The drain settings of the spec.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DrainPolicy {
    /// `maintenance.drainTimeout`.
    pub(crate) timeout: Duration,
    /// `maintenance.onDrainTimeout`.
    pub(crate) on_timeout: DrainTimeoutPolicy,
}

/// Drain progress of `leaving`, given the seconds since each server's drain was requested.
/// A server without a pod or without a row, or whose row says `stopped`, is done. Under
/// `Proceed` a server past `drainTimeout` counts as done (its pod is stopped anyway and hands
/// its jobs back); under `Halt` it keeps everything waiting and is named in `timed_out`.
pub(crate) fn progress<'a>(
    leaving: impl IntoIterator<Item = &'a ServerStatus>,
    drain_ages: &[(String, f64)],
    policy: DrainPolicy,
) -> DrainProgress {
    let mut out = DrainProgress::default();
    for server in leaving {
        let done =
            !server.pod_exists || server.state.is_none() || server.state.as_deref() == Some(server_state::STOPPED);
        if done {
            continue;
        }
        match drain_ages
            .iter()
            .find(|(name, _)| *name == server.name)
            .map(|(_, age)| *age)
        {
            None => {
                out.request.push(server.name.clone());
                out.still_draining.push(server.name.clone());
            }
            Some(age) if age >= policy.timeout.as_secs_f64() => {
                if policy.on_timeout == DrainTimeoutPolicy::Halt {
                    out.timed_out = Some(server.name.clone());
                    out.still_draining.push(server.name.clone());
                }
            }
            Some(_) => out.still_draining.push(server.name.clone()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(name: &str, pod_exists: bool, state: Option<&str>) -> ServerStatus {
        ServerStatus {
            name: name.into(),
            pod_exists,
            state: state.map(String::from),
            ..ServerStatus::default()
        }
    }

    #[test]
    fn requests_waits_and_times_out_per_policy() {
        let servers = [
            server("a", true, Some("active")),
            server("b", true, Some("draining")),
            server("c", true, Some("draining")),
            server("d", true, Some("stopped")),
            server("e", false, Some("active")),
            server("f", true, None),
        ];
        let ages = [("b".to_string(), 5.0), ("c".to_string(), 61.0)];
        let halt = DrainPolicy {
            timeout: Duration::from_secs(60),
            on_timeout: DrainTimeoutPolicy::Halt,
        };
        assert_eq!(
            progress(&servers, &ages, halt),
            DrainProgress {
                request: vec!["a".into()],
                still_draining: vec!["a".into(), "b".into(), "c".into()],
                timed_out: Some("c".into()),
            }
        );
        let proceed = DrainPolicy {
            on_timeout: DrainTimeoutPolicy::Proceed,
            ..halt
        };
        assert_eq!(
            progress(&servers, &ages, proceed),
            DrainProgress {
                request: vec!["a".into()],
                still_draining: vec!["a".into(), "b".into()],
                timed_out: None,
            }
        );
    }
}
