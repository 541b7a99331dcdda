//! The operator's view of the shared process database: the preflight (can the cluster's
//! credentials reach, log in, use and read the database?) and the membership it reads.

pub(crate) mod preflight;

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
