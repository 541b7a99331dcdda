//! Every server from both views: its pod (exists, ready, revision, restarts) and its database
//! row (state, version, heartbeat age, running jobs). Pure; does not need a client.

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
    /// Being deleted.
    pub terminating: bool,
    /// Seconds since the container last exited, if it restarted.
    pub last_exit_seconds: Option<i64>,
    /// When the pod was created.
    pub created_at: Option<k8s_openapi::jiff::Timestamp>,
    /// Uid of the pod.
    pub uid: Option<String>,
    /// The release its server container runs.
    pub release: Option<Release>,
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
    pub recent_restart_seconds: i64,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            stale_after_seconds: 10.0,
            recent_restart_seconds: 60,
        }
    }
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
            let ready = pod.is_some_and(|p| p.ready && !p.terminating);
            ServerStatus {
                name,
                pod_exists: pod.is_some(),
                ready,
                revision: pod.and_then(|p| p.revision.clone()),
                restarts: pod.map(|p| p.restarts).unwrap_or(0),
                version: member.map(|m| m.version.clone()),
                state: member.map(|m| m.state.clone()),
                running_jobs: member.map(|m| m.running_jobs),
                heartbeat_age_seconds: member.map(|m| m.heartbeat_age_seconds.round() as i64),
                joined: ready && member.is_some_and(|m| row_active(m, health)),
            }
        })
        .collect()
}

/// Problems worth a `Degraded` condition: a ready pod whose row is missing or stale, a row
/// without a pod, a container that restarted recently.
pub(crate) fn problems(servers: &[ServerStatus], pods: &[PodView], health: Health) -> Vec<String> {
    let mut found = Vec::new();
    for server in servers {
        let stopped = server.state.as_deref() == Some(server_state::STOPPED);
        let age = server.heartbeat_age_seconds.unwrap_or_default();
        match (server.pod_exists, &server.state) {
            (true, None) if server.ready => {
                found.push(format!("{}: pod ready but no row in the database", server.name))
            }
            (true, Some(_)) if server.ready && !stopped && age as f64 >= health.stale_after_seconds => {
                found.push(format!("{}: pod ready but its heartbeat is {age}s old", server.name))
            }
            (false, Some(state)) if !stopped => {
                found.push(format!("{}: {state} in the database but has no pod", server.name))
            }
            _ => {}
        }
        if let Some(pod) = pods.iter().find(|p| p.name == server.name)
            && let Some(seconds) = pod.last_exit_seconds.filter(|s| *s < health.recent_restart_seconds)
        {
            found.push(format!(
                "{}: process exited {seconds}s ago and was restarted ({} restarts)",
                server.name, pod.restarts
            ));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{member, pod};

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
        assert_eq!(servers[1].heartbeat_age_seconds, Some(30));
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

    #[test]
    fn problems_name_each_server() {
        let mut restarted = pod("prod-2", 2, true);
        restarted.last_exit_seconds = Some(4);
        restarted.restarts = 1;
        let pods = [pod("prod-0", 0, true), pod("prod-1", 1, true), restarted];
        let members = [
            member("prod-0", "active", 1.0),
            member("prod-1", "active", 25.0),
            member("prod-2", "active", 1.0),
            member("prod-5", "active", 2.0),
            member("prod-6", "stopped", 90.0),
        ];
        let servers = merge("prod", &pods, Some(&members), Health::default());
        assert_eq!(
            problems(&servers, &pods, Health::default()),
            vec![
                "prod-1: pod ready but its heartbeat is 25s old".to_string(),
                "prod-2: process exited 4s ago and was restarted (1 restarts)".to_string(),
                "prod-5: active in the database but has no pod".to_string(),
            ]
        );
    }
}
