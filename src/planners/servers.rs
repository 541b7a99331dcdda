//! Every server from both views: its pod (exists, ready, revision, restarts) and its database
//! row (state, version, heartbeat). Pure; does not need a client.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use orchestrator_contract::{Member, server_state};

use crate::crd::ServerStatus;
use crate::release::Release;

/// A server pod as the planners need it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PodView {
    /// Pod name (= server id).
    pub name: String,
    /// StatefulSet ordinal.
    pub ordinal: i32,
    /// Ready condition.
    pub ready: bool,
    /// `controller-revision-hash` label.
    pub revision: Option<String>,
    /// Container restarts.
    pub restarts: i32,
    /// Being deleted: its `deletionTimestamp`, the end of its grace period.
    pub terminating_until: Option<Timestamp>,
    /// When the container last exited with a failure, if it did.
    pub last_exit_at: Option<Timestamp>,
    /// When the pod was created.
    pub created_at: Option<k8s_openapi::jiff::Timestamp>,
    /// Uid of the pod.
    pub uid: Option<String>,
    /// The release its server container runs.
    pub release: Option<Release>,
    /// Why the pod does not run, when nothing changes by itself: the scheduler's word for a
    /// pod it cannot place (`Unschedulable: 0/3 nodes are available: ...`), or the waiting
    /// reason of a container that cannot start (`InvalidImageName: ...`).
    pub stuck: Option<String>,
    /// Its replacement was asked for (`orchestrator.dev/replace-requested-at`, `kubectl orc
    /// drain`).
    pub replace_requested: bool,
    /// The Node it is bound to.
    pub node: Option<String>,
    /// That Node's zone, when the operator could read the Node and it has one.
    pub zone: Option<String>,
    /// That Node is cordoned (`spec.unschedulable`, what `kubectl drain` does first).
    pub node_cordoned: bool,
    /// Why it is being disrupted, from its `DisruptionTarget` condition (the API server sets it
    /// on an eviction, `EvictionByEvictionAPI`; the taint manager, the scheduler's preemption
    /// and the pod garbage collector set their own reasons).
    pub disruption_target: Option<String>,
}

/// Why `pod` is down when nothing of the operator's took it down: an eviction or another
/// involuntary disruption under way (its pod terminates with a `DisruptionTarget`), said with
/// the Node and whether that Node is cordoned (a drain).
pub(crate) fn disruption(pod: &PodView) -> Option<String> {
    let reason = pod.disruption_target.as_deref()?;
    let until = pod.terminating_until?;
    let node = pod.node.as_deref().unwrap_or("its node");
    let what = match reason {
        "EvictionByEvictionAPI" if pod.node_cordoned => {
            format!("evicted from node {node}, which is cordoned (a node drain)")
        }
        "EvictionByEvictionAPI" => format!("evicted from node {node} through the Eviction API"),
        "DeletionByTaintManager" => format!("deleted by the taint manager (a NoExecute taint on node {node})"),
        "PreemptionByScheduler" => format!("preempted on node {node} by a pod of higher priority"),
        other => format!("disrupted on node {node} ({other})"),
    };
    Some(format!("{what}; its friendly shutdown runs until {until}"))
}

/// The ordinal of `name` in cluster `cluster` (`prod-3` → 3).
pub(crate) fn ordinal(cluster: &str, name: &str) -> Option<i32> {
    name.strip_prefix(cluster)?.strip_prefix('-')?.parse().ok()
}

/// Thresholds of a server's health.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Health {
    /// A heartbeat older than this is stale.
    pub stale_after_seconds: f64,
    /// A container exit younger than this is reported.
    pub recent_restart: Duration,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            stale_after_seconds: 10.0,
            recent_restart: Duration::from_secs(60),
        }
    }
}

/// The time of a row's last heartbeat, to the second (the database clock).
fn heartbeat_time(member: &Member) -> Option<Time> {
    Timestamp::from_second(member.heartbeat_at.floor() as i64)
        .ok()
        .map(Time)
}

/// Time from `at` to `now`, zero when `at` is later (another node's clock).
fn since(at: Timestamp, now: Timestamp) -> Duration {
    Duration::try_from(now.duration_since(at)).unwrap_or_default()
}

/// Whether a container exit at `at` is recent at `now`.
fn recent(at: Timestamp, now: Timestamp, health: Health) -> bool {
    since(at, now) < health.recent_restart
}

/// How long until time alone changes what [`merge`] and [`problems`] say of these servers: the
/// first fresh heartbeat that goes stale if no new one comes, or the first recent restart that
/// stops being recent. `None` when nothing changes by waiting. The operator looks again then,
/// instead of polling.
pub(crate) fn next_expiry(pods: &[PodView], members: &[Member], health: Health, now: Timestamp) -> Option<Duration> {
    let heartbeats = members
        .iter()
        .filter(|m| m.state != server_state::STOPPED && m.heartbeat_age_seconds < health.stale_after_seconds)
        .map(|m| Duration::from_secs_f64((health.stale_after_seconds - m.heartbeat_age_seconds).max(0.0)));
    let restarts = pods
        .iter()
        .filter_map(|p| p.last_exit_at)
        .filter(|at| recent(*at, now, health))
        .map(|at| health.recent_restart.saturating_sub(since(at, now)));
    heartbeats.chain(restarts).min()
}

/// Whether a row counts as live: active with a fresh heartbeat.
pub(crate) fn row_active(member: &Member, health: Health) -> bool {
    member.state == server_state::ACTIVE && member.heartbeat_age_seconds < health.stale_after_seconds
}

/// Merges pods and rows into one status per server, ordered by ordinal. Rows of other
/// clusters sharing the database are left out.
pub(crate) fn merge(cluster: &str, pods: &[PodView], members: Option<&[Member]>, health: Health) -> Vec<ServerStatus> {
    let mut names: Vec<(i32, String)> = pods.iter().map(|p| (p.ordinal, p.name.clone())).collect();
    for member in members.unwrap_or_default() {
        if let Some(ordinal) = ordinal(cluster, &member.server_id)
            && !names.iter().any(|(_, n)| *n == member.server_id)
        {
            names.push((ordinal, member.server_id.clone()));
        }
    }
    names.sort();
    names
        .into_iter()
        .map(|(_, name)| {
            let pod = pods.iter().find(|p| p.name == name);
            let member = members.unwrap_or_default().iter().find(|m| m.server_id == name);
            let ready = pod.is_some_and(|p| p.ready && p.terminating_until.is_none());
            ServerStatus {
                name,
                pod_exists: pod.is_some(),
                ready,
                revision: pod.and_then(|p| p.revision.clone()),
                restarts: pod.map(|p| p.restarts).unwrap_or(0),
                version: member.map(|m| m.version.clone()),
                state: member.map(|m| m.state.clone()),
                last_heartbeat_time: member
                    .filter(|m| m.heartbeat_age_seconds >= health.stale_after_seconds)
                    .and_then(heartbeat_time),
                joined: ready && member.is_some_and(|m| row_active(m, health)),
                node: pod.and_then(|p| p.node.clone()),
                zone: pod.and_then(|p| p.zone.clone()),
                disruption: pod.and_then(disruption),
            }
        })
        .collect()
}

/// Problems worth a `Degraded` condition: a ready pod whose row is missing or stale, a row
/// without a pod, a container that restarted recently. The messages hold times, not ages: they
/// do not change while the problem lasts.
pub(crate) fn problems(servers: &[ServerStatus], pods: &[PodView], health: Health, now: Timestamp) -> Vec<String> {
    let mut found = Vec::new();
    for server in servers {
        let stopped = server.state.as_deref() == Some(server_state::STOPPED);
        match (server.pod_exists, &server.state) {
            (true, None) if server.ready => {
                found.push(format!("{}: pod ready but no row in the database", server.name))
            }
            (true, Some(_)) if server.ready && !stopped && server.last_heartbeat_time.is_some() => {
                let last = server
                    .last_heartbeat_time
                    .as_ref()
                    .map(|t| t.0.to_string())
                    .unwrap_or_default();
                found.push(format!(
                    "{}: pod ready but its last heartbeat was at {last}",
                    server.name
                ))
            }
            (false, Some(state)) if !stopped => {
                found.push(format!("{}: {state} in the database but has no pod", server.name))
            }
            _ => {}
        }
        if let Some(disruption) = &server.disruption {
            found.push(format!(
                "{}: down, {disruption}; no maintenance step starts until it is back",
                server.name
            ));
        }
        if let Some(stuck) = pods
            .iter()
            .find(|p| p.name == server.name)
            .and_then(|p| p.stuck.as_ref())
        {
            found.push(format!("{}: {stuck}", server.name));
        }
        if let Some(pod) = pods.iter().find(|p| p.name == server.name)
            && let Some(at) = pod.last_exit_at.filter(|at| recent(*at, now, health))
        {
            found.push(format!(
                "{}: process exited at {at} and was restarted ({} restarts)",
                server.name, pod.restarts
            ));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{NOW, member, pod};

    #[test]
    fn joined_needs_a_ready_pod_and_a_fresh_active_row() {
        let pods = [pod("prod-0", 0, true), pod("prod-1", 1, true), pod("prod-2", 2, false)];
        let members = [
            member("prod-0", "active", 1.0),
            member("prod-1", "active", 30.0),
            member("prod-2", "active", 1.0),
        ];
        let servers = merge("prod", &pods, Some(&members), Health::default());
        let joined: Vec<_> = servers.iter().map(|s| (s.name.as_str(), s.joined)).collect();
        assert_eq!(joined, vec![("prod-0", true), ("prod-1", false), ("prod-2", false)]);
        // Only the late heartbeat is shown, as the time it was (which does not move).
        let shown: Vec<_> = servers.iter().map(|s| s.last_heartbeat_time.clone()).collect();
        let late = Timestamp::from_second((NOW - 30.0) as i64).unwrap();
        assert_eq!(shown, vec![None, Some(Time(late)), None]);
    }

    #[test]
    fn a_late_heartbeat_reads_the_same_on_every_look() {
        let pods = [pod("prod-0", 0, true)];
        let mut first = member("prod-0", "active", 30.2);
        first.heartbeat_at = NOW - 30.2;
        let mut later = first.clone();
        later.heartbeat_age_seconds = 47.9;
        let look = |m: &Member| merge("prod", &pods, Some(std::slice::from_ref(m)), Health::default());
        assert_eq!(look(&first), look(&later));
    }

    #[test]
    fn rows_of_other_clusters_are_ignored_and_pods_without_rows_are_listed() {
        let members = [
            member("prod-4", "draining", 1.0),
            member("staging-0", "active", 1.0),
            member("product-1", "active", 1.0),
        ];
        let servers = merge("prod", &[pod("prod-0", 0, false)], Some(&members), Health::default());
        let names: Vec<_> = servers.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, vec!["prod-0", "prod-4"]);
        assert!(!servers[1].pod_exists);
    }

    fn now() -> Timestamp {
        Timestamp::from_second(NOW as i64).unwrap()
    }

    #[test]
    fn problems_name_each_server() {
        let mut restarted = pod("prod-2", 2, true);
        restarted.last_exit_at = Some(now() - Duration::from_secs(4));
        restarted.restarts = 1;
        let mut long_ago = pod("prod-3", 3, true);
        long_ago.last_exit_at = Some(now() - Duration::from_secs(60));
        let pods = [pod("prod-0", 0, true), pod("prod-1", 1, true), restarted, long_ago];
        let members = [
            member("prod-0", "active", 1.0),
            member("prod-1", "active", 25.0),
            member("prod-2", "active", 1.0),
            member("prod-3", "active", 1.0),
            member("prod-5", "active", 2.0),
            member("prod-6", "stopped", 90.0),
        ];
        let servers = merge("prod", &pods, Some(&members), Health::default());
        let late = Timestamp::from_second((NOW - 25.0) as i64).unwrap();
        let exited = now() - Duration::from_secs(4);
        assert_eq!(
            problems(&servers, &pods, Health::default(), now()),
            vec![
                format!("prod-1: pod ready but its last heartbeat was at {late}"),
                format!("prod-2: process exited at {exited} and was restarted (1 restarts)"),
                "prod-5: active in the database but has no pod".to_string(),
            ]
        );
    }

    #[test]
    fn the_next_look_is_when_a_heartbeat_can_go_stale_or_a_restart_stops_being_recent() {
        let health = Health::default();
        let members = [
            member("prod-0", "active", 3.0),
            member("prod-1", "active", 6.5),
            // Already stale, or stopped: waiting changes nothing for them.
            member("prod-2", "active", 30.0),
            member("prod-3", "stopped", 1.0),
        ];
        let next = next_expiry(&[], &members, health, now()).unwrap();
        assert_eq!(next, Duration::from_secs_f64(3.5));
        let mut restarted = pod("prod-0", 0, true);
        restarted.last_exit_at = Some(now() - Duration::from_secs(58));
        assert_eq!(
            next_expiry(&[restarted.clone()], &members, health, now()),
            Some(Duration::from_secs(2))
        );
        restarted.last_exit_at = Some(now() - Duration::from_secs(61));
        assert_eq!(next_expiry(&[restarted], &members[2..], health, now()), None);
    }
}
