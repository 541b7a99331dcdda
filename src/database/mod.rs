//! The operator's view of the shared process database: the preflight (can the cluster's
//! credentials reach, log in, use and read the database?) and the membership it reads.

pub(crate) mod preflight;
pub(crate) mod shared;

use std::collections::{BTreeMap, BTreeSet};

use orchestrator_contract::{Member, Work, server_state};

use crate::vocabulary::Reason;

/// What the operator knows about the database at this reconcile.
#[derive(Clone, Debug, PartialEq)]
pub enum DatabaseState {
    /// Usable: schema version and every registered server.
    Ready {
        /// Schema version read from `schema_info`.
        schema_version: i32,
        /// Rows of the `servers` table.
        members: Vec<Member>,
        /// The jobs waiting and running, and the servers taking them (the whole database's),
        /// or why they could not be counted (unknown, not idle).
        work: Result<Work, String>,
    },
    /// Not usable; the message says what to fix.
    NotReady {
        /// Condition reason.
        reason: Reason,
        /// What is wrong, for a person (never the password).
        message: String,
    },
}

impl DatabaseState {
    /// The work in the database, or why it is not known.
    pub fn work(&self) -> Result<Work, String> {
        match self {
            DatabaseState::Ready { work, .. } => work.clone(),
            DatabaseState::NotReady { message, .. } => Err(message.clone()),
        }
    }

    /// The members when the database is usable.
    pub fn members(&self) -> Option<&[Member]> {
        match self {
            DatabaseState::Ready { members, .. } => Some(members),
            DatabaseState::NotReady { .. } => None,
        }
    }
}

/// Where a reconcile's database writes go, and the ids of the rows it writes: a server's row is
/// `<namespace>/<pod>` ([`orchestrator_contract::server_identity`]), or the exact id the read
/// found for it (a legacy id, without the namespace).
#[derive(Clone)]
pub(crate) struct ServerRows {
    /// The pool of the database that passed the preflight: a connection is taken only for the
    /// writes, never held across the reconcile's API calls.
    pub(crate) pool: deadpool_postgres::Pool,
    /// The cluster's namespace.
    pub(crate) namespace: String,
    /// The row id the read found for each server (pod) it saw.
    pub(crate) ids: BTreeMap<String, String>,
}

impl ServerRows {
    /// The id of the row of server (pod) `server`.
    pub(crate) fn id(&self, server: &str) -> String {
        self.ids
            .get(server)
            .cloned()
            .unwrap_or_else(|| orchestrator_contract::server_identity(Some(&self.namespace), server))
    }
}

/// The rows of the cluster in `namespace` among `rows`, each named by its pod, and the row id
/// of each. A row of another namespace is not this cluster's. A legacy row (no namespace: a
/// server that knew none) is this cluster's only while a pod of that name runs here: a
/// same-named cluster of another namespace may own it. A server with two rows (it restarted
/// under the other kind of id: an upgrade, or a rollback) is the one that is not stopped and
/// beat last.
pub(crate) fn rows_of(
    namespace: &str,
    pods: &BTreeSet<String>,
    rows: Vec<Member>,
) -> (Vec<Member>, BTreeMap<String, String>) {
    let mut chosen: BTreeMap<String, Member> = BTreeMap::new();
    for row in rows {
        let Some((pod, legacy)) = orchestrator_contract::row_in_namespace(namespace, &row.server_id) else {
            continue;
        };
        if legacy && !pods.contains(pod) {
            continue;
        }
        let pod = pod.to_string();
        let liveness = |m: &Member| (m.state != server_state::STOPPED, -m.heartbeat_age_seconds);
        match chosen.get(&pod) {
            Some(other) if liveness(other) >= liveness(&row) => {}
            _ => {
                chosen.insert(pod, row);
            }
        }
    }
    let ids = chosen
        .iter()
        .map(|(pod, m)| (pod.clone(), m.server_id.clone()))
        .collect();
    let members = chosen
        .into_iter()
        .map(|(pod, mut m)| {
            m.server_id = pod;
            m
        })
        .collect();
    (members, ids)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::member;

    #[test]
    fn a_cluster_sees_its_namespaces_rows_and_legacy_ones_of_its_pods() {
        let pods = BTreeSet::from(["prod-0".to_string(), "prod-1".to_string()]);
        let rows = vec![
            member("automation/prod-0", "active", 1.0),
            member("staging/prod-0", "active", 1.0),
            member("prod-1", "active", 1.0),
            member("prod-0", "stopped", 1.0),
            // A legacy row of a pod that does not run here: another namespace's.
            member("prod-2", "active", 1.0),
        ];
        let (members, ids) = rows_of("automation", &pods, rows);
        let names: Vec<(&str, &str)> = members
            .iter()
            .map(|m| (m.server_id.as_str(), m.state.as_str()))
            .collect();
        assert_eq!(names, vec![("prod-0", "active"), ("prod-1", "active")]);
        assert_eq!(ids["prod-0"], "automation/prod-0");
        assert_eq!(ids["prod-1"], "prod-1");
    }

    #[test]
    fn after_a_rollback_to_legacy_ids_the_live_row_wins() {
        let pods = BTreeSet::from(["prod-0".to_string()]);
        let rows = vec![
            member("automation/prod-0", "stopped", 30.0),
            member("prod-0", "active", 1.0),
        ];
        let (members, ids) = rows_of("automation", &pods, rows);
        assert_eq!(
            (members[0].state.as_str(), ids["prod-0"].as_str()),
            ("active", "prod-0")
        );
    }
}
