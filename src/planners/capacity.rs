//! The capacity planner: how many servers the StatefulSet may have now, which servers to
//! drain through the database, which rows to clean, and why adding servers must wait.
//! A pure function of what was observed; does not need a client.

use orchestrator_contract::server_state;

use super::drain::{self, DrainPolicy};
use super::servers::ordinal;
use crate::crd::ServerStatus;
use crate::vocabulary::{Hold, Reason};

/// What the capacity planner needs.
#[derive(Clone, Debug)]
pub(crate) struct CapacityInput<'a> {
    /// Cluster name (servers are `<name>-<ordinal>`).
    pub cluster: &'a str,
    /// `spec.replicas`.
    pub wanted: i32,
    /// `spec.capacity.maxReplicas`.
    pub max_replicas: i32,
    /// Servers added per step.
    pub add_at_once: i32,
    /// The StatefulSet's current `spec.replicas` (0 when it does not exist).
    pub current: i32,
    /// Every server from both views.
    pub servers: &'a [ServerStatus],
    /// `Err(message)` when the database preflight fails.
    pub database: Result<(), String>,
    /// `maintenance.drainTimeout` and `onDrainTimeout`.
    pub drain: DrainPolicy,
    /// Seconds since a drain was requested, per server.
    pub drain_ages: &'a [(String, f64)],
    /// Jobs each row still owns.
    pub owned_jobs: &'a [(String, i64)],
    /// Seconds since each row's last heartbeat, by the database clock.
    pub heartbeat_ages: &'a [(String, f64)],
    /// A server whose drain rolling maintenance keeps (never withdrawn here).
    pub maintenance_drain: Option<&'a str>,
    /// Removing servers waits for a person's approval (`maintenance.approval: Manual`).
    pub approval: Option<Hold>,
}

/// What the capacity planner decided.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct CapacityDecision {
    /// The StatefulSet's replicas to apply.
    pub replicas: i32,
    /// Servers to ask for a friendly shutdown.
    pub drain: Vec<String>,
    /// Rows of gone servers to remove.
    pub remove_rows: Vec<String>,
    /// Wanted servers whose drain request must be withdrawn (a scale-down was reverted).
    pub undrain: Vec<String>,
    /// Why a wanted change is blocked.
    pub blocked: Option<Hold>,
    /// What the change waits for, when it waits without being blocked.
    pub waiting: Option<String>,
}

fn server<'a>(input: &'a CapacityInput, ordinal_: i32) -> Option<&'a ServerStatus> {
    input
        .servers
        .iter()
        .find(|s| ordinal(input.cluster, &s.name) == Some(ordinal_))
}

/// Decides the next capacity step.
pub(crate) fn decide(input: &CapacityInput) -> CapacityDecision {
    let mut out = CapacityDecision {
        replicas: input.current,
        ..CapacityDecision::default()
    };
    if input.wanted > input.current {
        scale_up(input, &mut out);
    } else if input.wanted < input.current {
        scale_down(input, &mut out);
    }
    out.undrain = input
        .drain_ages
        .iter()
        .filter(|(name, _)| ordinal(input.cluster, name).is_some_and(|o| o < input.wanted))
        .filter(|(name, _)| input.maintenance_drain != Some(name.as_str()))
        .map(|(name, _)| name.clone())
        .collect();
    out.remove_rows = input
        .servers
        .iter()
        .filter(|s| !s.pod_exists && s.state.is_some())
        .filter(|s| ordinal(input.cluster, &s.name).is_some_and(|o| o >= out.replicas))
        .filter(|s| {
            s.state.as_deref() == Some(server_state::STOPPED)
                || input
                    .heartbeat_ages
                    .iter()
                    .any(|(name, age)| *name == s.name && *age > 60.0)
        })
        .filter(|s| input.owned_jobs.iter().all(|(name, n)| *name != s.name || *n == 0))
        .map(|s| s.name.clone())
        .collect();
    out
}

fn scale_up(input: &CapacityInput, out: &mut CapacityDecision) {
    let existing: Vec<&ServerStatus> = (0..input.current).filter_map(|o| server(input, o)).collect();
    let joined = existing.iter().filter(|s| s.joined).count();
    if let Err(message) = &input.database {
        out.blocked = Some(Hold::new(
            Reason::DatabaseNotReady,
            format!("not adding servers: {message}"),
        ));
    } else if input.wanted > input.max_replicas {
        out.blocked = Some(Hold::new(
            Reason::AboveMaxReplicas,
            format!(
                "{} servers wanted but capacity.maxReplicas is {}",
                input.wanted, input.max_replicas
            ),
        ));
    } else if input.current > 0 && joined == 0 {
        out.blocked = Some(Hold::new(
            Reason::NoServerJoined,
            format!(
                "none of the {} existing servers has joined; a new server needs a running one",
                input.current
            ),
        ));
    } else if let Some(stale) = existing.iter().find(|s| s.ready && !s.joined && s.state.is_some()) {
        out.blocked = Some(Hold::new(
            Reason::ServerUnhealthy,
            format!(
                "{} is ready but its database row is not active and fresh (state {}{})",
                stale.name,
                stale.state.clone().unwrap_or_default(),
                stale
                    .last_heartbeat_time
                    .as_ref()
                    .map(|t| format!(", last heartbeat at {}", t.0))
                    .unwrap_or_default()
            ),
        ));
    } else if let Some(pending) = (0..input.current).find(|o| !server(input, *o).is_some_and(|s| s.joined)) {
        out.waiting = Some(format!(
            "waiting for {}-{pending} to join before adding more servers",
            input.cluster
        ));
    } else {
        out.replicas = input.wanted.min(input.current + input.add_at_once.max(1));
    }
}

fn scale_down(input: &CapacityInput, out: &mut CapacityDecision) {
    if let Err(message) = &input.database {
        // Unknown is not stopped: without the rows nothing says who still drains.
        out.blocked = Some(Hold::new(
            Reason::DatabaseNotReady,
            format!("not removing servers: {message}"),
        ));
        return;
    }
    let leaving = (input.wanted..input.current).rev().filter_map(|o| server(input, o));
    let progress = drain::progress(leaving, input.drain_ages, input.drain);
    out.blocked = progress.halt(input.drain, "");
    // A removal not approved asks no new drain (`request` holds only servers never asked);
    // one whose drains were all asked before (approved, or before approvals were required)
    // goes on to its end.
    if let Some(hold) = &input.approval
        && !progress.request.is_empty()
    {
        if out.blocked.is_none() {
            out.blocked = Some(Hold::new(
                hold.reason,
                format!("not removing servers: {}", hold.message),
            ));
        }
        return;
    }
    // A server that stays, down by an involuntary disruption (a node drain): no new drain of
    // the operator's own meanwhile; drains asked before go on (their servers leave anyway),
    // and the StatefulSet keeps its count until every leaving server has drained.
    if !progress.request.is_empty()
        && let Some(down) = (0..input.wanted)
            .filter_map(|o| server(input, o))
            .find(|s| s.disruption.is_some())
    {
        out.waiting = Some(format!(
            "not removing servers while {} is down ({})",
            down.name,
            down.disruption.as_deref().unwrap_or_default()
        ));
        return;
    }
    out.drain = progress.request;
    if progress.still_draining.is_empty() {
        out.replicas = input.wanted;
    } else if out.blocked.is_none() {
        out.waiting = Some(format!(
            "draining {} before removing it",
            progress.still_draining.join(", ")
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::DrainTimeoutPolicy;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;
    use proptest::prelude::*;
    use std::time::Duration;

    fn status(name: &str, ready: bool, state: Option<&str>, age: i64) -> ServerStatus {
        let active = state == Some("active") && age < 10;
        ServerStatus {
            name: name.into(),
            pod_exists: true,
            ready,
            state: state.map(String::from),
            last_heartbeat_time: (state.is_some() && age >= 10)
                .then(|| Time(Timestamp::from_second(crate::testing::NOW as i64 - age).unwrap())),
            joined: ready && active,
            ..ServerStatus::default()
        }
    }

    #[test]
    fn no_server_is_removed_while_one_that_stays_is_down_from_a_drain() {
        let mut servers: Vec<ServerStatus> = (0..3)
            .map(|o| status(&format!("prod-{o}"), true, Some("active"), 1))
            .collect();
        servers[0].ready = false;
        servers[0].joined = false;
        servers[0].disruption = Some("evicted from node n1, which is cordoned (a node drain)".into());
        let decision = decide(&input(2, 3, &servers));
        assert!(decision.drain.is_empty(), "{decision:?}");
        assert_eq!(decision.replicas, 3);
        assert!(
            decision
                .waiting
                .unwrap()
                .contains("prod-0 is down (evicted from node n1")
        );
        // Once it is back, the removal goes on.
        servers[0].disruption = None;
        assert_eq!(decide(&input(2, 3, &servers)).drain, ["prod-2"]);
    }

    fn input<'a>(wanted: i32, current: i32, servers: &'a [ServerStatus]) -> CapacityInput<'a> {
        CapacityInput {
            cluster: "prod",
            wanted,
            max_replicas: 10,
            add_at_once: 1,
            current,
            servers,
            database: Ok(()),
            drain: DrainPolicy {
                timeout: Duration::from_secs(60),
                on_timeout: DrainTimeoutPolicy::Halt,
            },
            drain_ages: &[],
            owned_jobs: &[],
            heartbeat_ages: &[],
            maintenance_drain: None,
            approval: None,
        }
    }

    #[test]
    fn first_server_needs_only_the_database() {
        assert_eq!(decide(&input(3, 0, &[])).replicas, 1);
        let mut blocked = input(3, 0, &[]);
        blocked.database = Err("secret process-db does not exist".into());
        let out = decide(&blocked);
        assert_eq!(out.replicas, 0);
        assert_eq!(out.blocked.unwrap().reason, Reason::DatabaseNotReady);
    }

    #[test]
    fn servers_are_added_one_at_a_time_after_the_previous_joined() {
        let joining = [
            status("prod-0", true, Some("active"), 1),
            status("prod-1", false, None, 0),
        ];
        let out = decide(&input(3, 2, &joining));
        assert_eq!(out.replicas, 2);
        assert_eq!(
            out.waiting.as_deref(),
            Some("waiting for prod-1 to join before adding more servers")
        );
        let joined = [
            status("prod-0", true, Some("active"), 1),
            status("prod-1", true, Some("active"), 1),
        ];
        assert_eq!(decide(&input(3, 2, &joined)).replicas, 3);
        let mut several = input(6, 2, &joined);
        several.add_at_once = 3;
        assert_eq!(decide(&several).replicas, 5);
    }

    #[test]
    fn each_blocked_precondition_has_its_reason() {
        let none_joined = [status("prod-0", false, Some("active"), 40)];
        assert_eq!(
            decide(&input(2, 1, &none_joined)).blocked.unwrap().reason,
            Reason::NoServerJoined
        );
        let stale = [
            status("prod-0", true, Some("active"), 1),
            status("prod-1", true, Some("active"), 30),
        ];
        let out = decide(&input(3, 2, &stale));
        let Hold { reason, message } = out.blocked.unwrap();
        assert_eq!(reason, Reason::ServerUnhealthy);
        let late = Timestamp::from_second(crate::testing::NOW as i64 - 30).unwrap();
        assert!(
            message.contains("prod-1") && message.contains(&format!("last heartbeat at {late}")),
            "{message}"
        );
        let mut above = input(12, 2, &stale);
        above.max_replicas = 10;
        assert_eq!(decide(&above).blocked.unwrap().reason, Reason::AboveMaxReplicas);
    }

    /// Five joined servers; the same with prod-2..4 stopped after a drain; those drains' ages.
    fn five_down_to_two() -> (Vec<ServerStatus>, Vec<ServerStatus>, Vec<(String, f64)>) {
        let five: Vec<_> = (0..5)
            .map(|i| status(&format!("prod-{i}"), true, Some("active"), 1))
            .collect();
        let mut stopped = five.clone();
        for s in &mut stopped[2..] {
            s.state = Some("stopped".into());
            s.ready = false;
            s.joined = false;
        }
        let ages = (2..5).map(|i| (format!("prod-{i}"), 5.0)).collect();
        (five, stopped, ages)
    }

    #[test]
    fn scale_down_drains_highest_first_then_lowers_and_cleans_rows() {
        let (five, stopped, ages) = five_down_to_two();
        let out = decide(&input(2, 5, &five));
        assert_eq!(out.drain, vec!["prod-4", "prod-3", "prod-2"]);
        assert_eq!(out.replicas, 5);
        let mut draining = input(2, 5, &stopped);
        draining.drain_ages = &ages;
        assert_eq!(decide(&draining).replicas, 2);
        let mut gone = stopped.clone();
        for s in &mut gone[2..] {
            s.pod_exists = false;
        }
        let owned = [("prod-3".to_string(), 1i64)];
        let mut cleaning = input(2, 2, &gone);
        cleaning.owned_jobs = &owned;
        assert_eq!(
            decide(&cleaning).remove_rows,
            vec!["prod-2", "prod-4"],
            "prod-3 still owns a job"
        );
    }

    #[test]
    fn no_server_is_removed_while_the_database_cannot_be_read() {
        // What the merge gives when the preflight fails: pods, but no rows.
        let unknown: Vec<ServerStatus> = (0..3).map(|o| status(&format!("prod-{o}"), true, None, 0)).collect();
        let mut down = input(1, 3, &unknown);
        down.database = Err("cannot connect to 127.0.0.1:5432".into());
        let out = decide(&down);
        assert_eq!((out.replicas, out.drain.len()), (3, 0), "{out:?}");
        let Hold { reason, message } = out.blocked.unwrap();
        assert_eq!(reason, Reason::DatabaseNotReady);
        assert!(message.contains("not removing servers"), "{message}");
    }

    #[test]
    fn a_removal_waits_for_its_approval() {
        let (five, stopped, ages) = five_down_to_two();
        let mut waiting = input(2, 5, &five);
        waiting.approval = Some(Hold::new(Reason::AwaitingApproval, "approve generation 4"));
        let out = decide(&waiting);
        assert_eq!((out.replicas, out.drain.len()), (5, 0), "{out:?}");
        assert_eq!(out.blocked.unwrap().reason, Reason::AwaitingApproval);
        // Drains asked before go on to their end, and the servers are removed.
        let mut asked_before = input(2, 5, &stopped);
        asked_before.drain_ages = &ages;
        asked_before.approval = waiting.approval.clone();
        let out = decide(&asked_before);
        assert_eq!((out.replicas, out.blocked), (2, None));
        // Adding needs none.
        let mut adding = input(6, 5, &five);
        adding.approval = waiting.approval.clone();
        assert_eq!(decide(&adding).replicas, 6);
    }

    #[test]
    fn drain_timeout_halts_or_proceeds_by_policy() {
        let two = [
            status("prod-0", true, Some("active"), 1),
            status("prod-1", true, Some("draining"), 1),
        ];
        let ages = [("prod-1".to_string(), 120.0)];
        let mut halt = input(1, 2, &two);
        halt.drain_ages = &ages;
        let out = decide(&halt);
        assert_eq!((out.replicas, out.blocked.unwrap().reason), (2, Reason::DrainTimeout));
        halt.drain.on_timeout = DrainTimeoutPolicy::Proceed;
        assert_eq!(decide(&halt).replicas, 1);
    }

    fn arbitrary_server(i: i32) -> impl Strategy<Value = ServerStatus> {
        (
            any::<bool>(),
            prop::option::of(prop::sample::select(vec!["active", "draining", "stopped"])),
            0i64..40,
        )
            .prop_map(move |(ready, state, age)| status(&format!("prod-{i}"), ready, state, age))
    }

    proptest! {
        #[test]
        fn never_exceeds_the_ceiling_nor_adds_more_than_allowed(
            wanted in 0i32..12, current in 0i32..8, max in 1i32..10, step in 1i32..4,
            servers in (0i32..8).prop_flat_map(|n| (0..n).map(arbitrary_server).collect::<Vec<_>>()),
            db_ok in any::<bool>(),
        ) {
            let mut i = input(wanted, current, &servers);
            i.max_replicas = max;
            i.add_at_once = step;
            if !db_ok { i.database = Err("down".into()); }
            let out = decide(&i);
            if out.replicas > current {
                prop_assert!(out.replicas <= max && out.replicas <= wanted && out.replicas - current <= step);
                prop_assert!(db_ok, "never adds while the database is not ready");
                prop_assert!(out.blocked.is_none());
            }
            prop_assert!(out.replicas >= wanted.min(current), "never removes below what is wanted");
            if out.replicas == current && wanted != current {
                prop_assert!(out.blocked.is_some() || out.waiting.is_some(), "every wait has a reason");
            }
        }
    }
}
