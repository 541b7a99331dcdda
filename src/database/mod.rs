//! The operator's view of the shared process database: the preflight (can the cluster's
//! credentials reach, log in, use and read the database?) and the membership it reads.

pub mod preflight;

use orchestrator_contract::Member;

/// Reasons of the `DatabaseReady` condition.
pub mod reasons {
    /// Connected, logged in, privileges and schema readable.
    pub const CONNECTED: &str = "Connected";
    /// The credentials Secret does not exist.
    pub const SECRET_MISSING: &str = "SecretMissing";
    /// The Secret lacks a key the spec names.
    pub const SECRET_KEY_MISSING: &str = "SecretKeyMissing";
    /// The host name does not resolve.
    pub const HOST_UNRESOLVABLE: &str = "HostUnresolvable";
    /// Nothing accepts connections at host:port.
    pub const UNREACHABLE: &str = "Unreachable";
    /// The login was refused.
    pub const LOGIN_FAILED: &str = "LoginFailed";
    /// The database name does not exist.
    pub const DATABASE_MISSING: &str = "DatabaseMissing";
    /// The user lacks privileges the contract needs.
    pub const INSUFFICIENT_PRIVILEGES: &str = "InsufficientPrivileges";
    /// The contract's tables are not there yet.
    pub const SCHEMA_MISSING: &str = "SchemaMissing";
    /// The TLS handshake or the CA failed (per `sslMode`).
    pub const TLS_FAILED: &str = "TlsFailed";
    /// Another database error.
    pub const QUERY_FAILED: &str = "QueryFailed";
}

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
    /// Not usable; the reason is a `reasons` constant, the message says what to fix.
    NotReady {
        /// Condition reason.
        reason: &'static str,
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
