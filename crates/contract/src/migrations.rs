//! Schema versions and their migrations, applied under an advisory lock so that concurrent
//! `schema migrate` runs are safe, and refused while servers that cannot run the new schema
//! are still active.

use tokio_postgres::Client;

use crate::Result;

/// The newest schema version this build can create.
pub const LATEST_SCHEMA: i32 = 2;

/// Advisory lock key of schema migrations ("orcmigr" in ASCII).
pub const MIGRATION_LOCK: i64 = 0x006f_7263_6d69_6772;

/// Seconds after which a server that stopped heartbeating no longer counts as running.
pub const STALE_AFTER_SECONDS: f64 = 30.0;

/// The SQL of each schema version, applied in order.
pub const MIGRATIONS: [(i32, &str); 2] = [
    (
        1,
        "CREATE TABLE schema_info (
             singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
             version integer NOT NULL,
             migrated_at timestamptz NOT NULL DEFAULT now());
         CREATE TABLE servers (
             server_id text PRIMARY KEY,
             version text NOT NULL,
             schema_min integer NOT NULL,
             schema_max integer NOT NULL,
             state text NOT NULL CHECK (state IN ('joining', 'active', 'draining', 'stopped')),
             heartbeat_at timestamptz NOT NULL DEFAULT now(),
             drain_requested_at timestamptz,
             running_jobs integer NOT NULL DEFAULT 0,
             started_at timestamptz NOT NULL DEFAULT now());
         CREATE TABLE jobs (
             id bigserial PRIMARY KEY,
             kind text NOT NULL,
             payload jsonb NOT NULL,
             state text NOT NULL DEFAULT 'queued' CHECK (state IN ('queued', 'running', 'succeeded', 'failed')),
             owner text,
             lease_until timestamptz,
             attempts integer NOT NULL DEFAULT 0,
             result jsonb,
             submitted_at timestamptz NOT NULL DEFAULT now(),
             started_at timestamptz,
             finished_at timestamptz);
         CREATE INDEX jobs_claimable ON jobs (id) WHERE state IN ('queued', 'running');
         CREATE INDEX jobs_owner ON jobs (owner) WHERE state = 'running';
         CREATE TABLE job_executions (
             job_id bigint NOT NULL REFERENCES jobs (id),
             server_id text NOT NULL,
             attempt integer NOT NULL,
             finished_at timestamptz NOT NULL DEFAULT now());
         CREATE INDEX job_executions_job ON job_executions (job_id);",
    ),
    (
        2,
        "ALTER TABLE jobs ADD COLUMN priority integer NOT NULL DEFAULT 0;
         CREATE INDEX jobs_batch ON jobs ((payload->>'batch'));",
    ),
];

/// Schema versions a server build can run against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SchemaRange {
    /// Oldest schema version supported.
    pub min: i32,
    /// Newest schema version supported (the one `migrate` brings the database to).
    pub max: i32,
}

impl SchemaRange {
    /// Whether `version` is supported.
    pub fn contains(self, version: i32) -> bool {
        (self.min..=self.max).contains(&version)
    }
}

/// The reference server simulates product releases: its major version selects the schema
/// generation it needs (1.x needs schema 1, 2.x schema 2); any other version needs the latest.
pub fn schema_range_for_version(version: &str) -> SchemaRange {
    let major = version
        .split('.')
        .next()
        .and_then(|m| m.trim_start_matches('v').parse::<i32>().ok());
    match major {
        Some(m) if (1..=LATEST_SCHEMA).contains(&m) => SchemaRange { min: m, max: m },
        _ => SchemaRange {
            min: LATEST_SCHEMA,
            max: LATEST_SCHEMA,
        },
    }
}

/// How a database compares with what a server build needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SchemaCheck {
    /// The server can run against it as it is.
    Compatible {
        /// Version found.
        database: i32,
    },
    /// A migration must run first.
    MigrationNeeded {
        /// Version found (0: empty database).
        database: i32,
        /// Version the server needs.
        target: i32,
    },
    /// The database was migrated by a newer build; this one cannot run against it.
    DatabaseNewer {
        /// Version found.
        database: i32,
        /// Newest version this build supports.
        supported: i32,
    },
}

/// Compares the database's schema version with `range`.
pub fn check(database: i32, range: SchemaRange) -> SchemaCheck {
    if range.contains(database) {
        SchemaCheck::Compatible { database }
    } else if database < range.min {
        SchemaCheck::MigrationNeeded {
            database,
            target: range.max,
        }
    } else {
        SchemaCheck::DatabaseNewer {
            database,
            supported: range.max,
        }
    }
}

/// Why a migration did not run.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// The database answered with an error.
    #[error(transparent)]
    Contract(#[from] crate::ContractError),
    /// Servers that cannot run the target schema are still active.
    #[error(
        "refusing to migrate to schema {target}: active servers cannot run it: {servers}; drain them first or pass --force"
    )]
    IncompatibleServersActive {
        /// Target version.
        target: i32,
        /// `id (version)` of each such server.
        servers: String,
    },
    /// The database is already newer than the target.
    #[error("the database has schema {database}, newer than the target {target}; refusing to go back")]
    DatabaseNewer {
        /// Version found.
        database: i32,
        /// Target version.
        target: i32,
    },
    /// The target is not a version this build knows.
    #[error("schema {0} is unknown to this build (latest: {LATEST_SCHEMA})")]
    UnknownTarget(i32),
}

impl From<tokio_postgres::Error> for MigrateError {
    fn from(e: tokio_postgres::Error) -> Self {
        MigrateError::Contract(e.into())
    }
}

/// Brings the database to schema `target` under the migration advisory lock. Running it
/// twice, or concurrently, applies each migration once. Returns the version found before.
pub async fn migrate(db: &mut Client, target: i32, force: bool) -> Result<i32, MigrateError> {
    if !(1..=LATEST_SCHEMA).contains(&target) {
        return Err(MigrateError::UnknownTarget(target));
    }
    let tx = db.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    let found = crate::schema_version(&tx).await?;
    if found > target {
        return Err(MigrateError::DatabaseNewer {
            database: found,
            target,
        });
    }
    if found == target {
        return Ok(found);
    }
    if found > 0 && !force {
        let rows = tx
            .query(
                "SELECT server_id, version FROM servers
                 WHERE state IN ('joining', 'active', 'draining')
                   AND extract(epoch FROM now() - heartbeat_at)::float8 < $2
                   AND NOT ($1 BETWEEN schema_min AND schema_max)
                 ORDER BY server_id",
                &[&target, &STALE_AFTER_SECONDS],
            )
            .await?;
        if !rows.is_empty() {
            let servers = rows
                .iter()
                .map(|r| format!("{} ({})", r.get::<_, String>(0), r.get::<_, String>(1)))
                .collect::<Vec<_>>()
                .join(", ");
            return Err(MigrateError::IncompatibleServersActive { target, servers });
        }
    }
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > found && *v <= target) {
        tracing::info!(version, "applying schema migration");
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO schema_info (version, migrated_at) VALUES ($1, now())
             ON CONFLICT (singleton) DO UPDATE SET version = $1, migrated_at = now()",
            &[version],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn major_version_selects_the_schema() {
        assert_eq!(schema_range_for_version("1.4.2"), SchemaRange { min: 1, max: 1 });
        assert_eq!(schema_range_for_version("v2.0.0"), SchemaRange { min: 2, max: 2 });
        assert_eq!(
            schema_range_for_version("dev"),
            SchemaRange {
                min: LATEST_SCHEMA,
                max: LATEST_SCHEMA
            }
        );
    }

    #[test]
    fn check_covers_every_case() {
        let range = SchemaRange { min: 2, max: 2 };
        assert_eq!(check(2, range), SchemaCheck::Compatible { database: 2 });
        assert_eq!(check(0, range), SchemaCheck::MigrationNeeded { database: 0, target: 2 });
        assert_eq!(check(1, range), SchemaCheck::MigrationNeeded { database: 1, target: 2 });
        assert_eq!(
            check(3, range),
            SchemaCheck::DatabaseNewer {
                database: 3,
                supported: 2
            }
        );
    }

    #[test]
    fn migrations_are_consecutive_up_to_the_latest() {
        let versions: Vec<i32> = MIGRATIONS.iter().map(|(v, _)| *v).collect();
        assert_eq!(versions, (1..=LATEST_SCHEMA).collect::<Vec<_>>());
    }
}
