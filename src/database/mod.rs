//! The operator's view of the shared process database: the preflight (can the cluster's
//! credentials reach, log in, use and read the database?) and the membership it reads.

pub(crate) mod preflight;

use std::collections::BTreeSet;
use std::sync::Arc;

use orchestrator_contract::Member;

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
    /// The members when the database is usable.
    pub fn members(&self) -> Option<&[Member]> {
        match self {
            DatabaseState::Ready { members, .. } => Some(members),
            DatabaseState::NotReady { .. } => None,
        }
    }
}

/// The connection of a reconcile's database writes, and the ids of the rows it writes: a
/// server's row is `<namespace>/<pod>` ([`orchestrator_contract::server_identity`]), or its pod
/// name alone when the read found it under that legacy id.
#[derive(Clone)]
pub(crate) struct ServerRows {
    /// The connection that passed the preflight.
    pub(crate) client: Arc<tokio_postgres::Client>,
    /// The cluster's namespace.
    pub(crate) namespace: String,
    /// Servers whose row has a legacy id (written by a server that knew no namespace).
    pub(crate) legacy: BTreeSet<String>,
}

impl ServerRows {
    /// The id of the row of server (pod) `server`.
    pub(crate) fn id(&self, server: &str) -> String {
        if self.legacy.contains(server) {
            server.to_string()
        } else {
            orchestrator_contract::server_identity(Some(&self.namespace), server)
        }
    }
}

/// The rows of `namespace` among `rows`, each named by its pod, and the pods whose row has a
/// legacy id. A server with both (restarted since it last knew no namespace) is its namespaced
/// row; rows of other namespaces are not this cluster's and are dropped.
pub(crate) fn rows_of(namespace: &str, rows: Vec<Member>) -> (Vec<Member>, BTreeSet<String>) {
    let namespaced: BTreeSet<String> = rows
        .iter()
        .filter_map(|m| orchestrator_contract::row_in_namespace(namespace, &m.server_id))
        .filter(|(_, legacy)| !legacy)
        .map(|(pod, _)| pod.to_string())
        .collect();
    let mut legacy = BTreeSet::new();
    let members = rows
        .into_iter()
        .filter_map(|mut m| {
            let (pod, is_legacy) = orchestrator_contract::row_in_namespace(namespace, &m.server_id)?;
            let pod = pod.to_string();
            if is_legacy {
                if namespaced.contains(&pod) {
                    return None;
                }
                legacy.insert(pod.clone());
            }
            m.server_id = pod;
            Some(m)
        })
        .collect();
    (members, legacy)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::member;

    #[test]
    fn a_cluster_sees_its_namespaces_rows_and_legacy_ones_by_pod_name() {
        let rows = vec![
            member("automation/prod-0", "active", 1.0),
            member("staging/prod-0", "active", 1.0),
            member("prod-1", "active", 1.0),
            member("prod-0", "stopped", 1.0),
        ];
        let (members, legacy) = rows_of("automation", rows);
        let names: Vec<(&str, &str)> = members
            .iter()
            .map(|m| (m.server_id.as_str(), m.state.as_str()))
            .collect();
        assert_eq!(names, vec![("prod-0", "active"), ("prod-1", "active")]);
        assert_eq!(legacy, BTreeSet::from(["prod-1".to_string()]));
    }
}
