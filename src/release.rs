//! A release (a server version and the image that runs it) and the schema Jobs that gate a
//! change of release: what they do and what became of them. Plain values shared by the
//! planners, the builders and the observation; does not need a client.

use sha2::{Digest, Sha256};

/// Exit code of `schema check` when the database needs a migration first.
pub(crate) const EXIT_MIGRATION_NEEDED: i32 = 10;
/// Exit code of `schema check|migrate` when the database is newer than the release.
pub(crate) const EXIT_DATABASE_NEWER: i32 = 11;

/// What a schema Job does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SchemaJob {
    /// `schema check`: exit 0 compatible, 10 migration needed, 11 database newer.
    Check,
    /// `schema migrate`: bring the database to the release's schema.
    Migrate,
}

impl SchemaJob {
    /// The server subcommand's action.
    pub(crate) fn action(self) -> &'static str {
        match self {
            SchemaJob::Check => "check",
            SchemaJob::Migrate => "migrate",
        }
    }

    /// Exit codes that are the command's answer, not a failure to retry.
    pub(crate) fn final_exit_codes(self) -> Vec<i32> {
        match self {
            SchemaJob::Check => vec![EXIT_MIGRATION_NEEDED, EXIT_DATABASE_NEWER],
            SchemaJob::Migrate => vec![EXIT_DATABASE_NEWER],
        }
    }
}

/// A server version and the image that runs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Release {
    /// `spec.version` (the server's `SERVER_VERSION`).
    pub version: String,
    /// The container image.
    pub image: String,
}

impl Release {
    /// A short stable hash of version, image and the database schema it is checked against.
    pub(crate) fn hash(&self, schema: i32) -> String {
        let digest = Sha256::digest(format!("{}\n{}\n{schema}", self.version, self.image));
        digest[..5].iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// What became of a schema Job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobOutcome {
    /// Not finished yet.
    Running,
    /// Exited 0.
    Succeeded,
    /// Gave up: the last pod's exit code and the tail of its log.
    Failed {
        /// Exit code of the last failed pod, when one terminated.
        exit_code: Option<i32>,
        /// Why, for a person: the log tail, or the Job's own message.
        message: String,
    },
}
