//! `orchestrator-server`: the reference process-orchestration server.
//!
//! `serve` runs a server; `schema check|migrate` compares or brings the database schema to
//! the one this version needs; `loadgen` submits jobs and reports what became of them.

mod config;
mod db;
mod http;
mod lease;
mod loadgen;
mod metrics;
mod serve;
mod state;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use orchestrator_contract::migrations::MigrateError;
use orchestrator_contract::{self as contract, SchemaCheck};

/// Exit code of `schema check` when a migration is needed.
const EXIT_MIGRATION_NEEDED: u8 = 10;
/// Exit code of `schema check|migrate` when the database is newer than this build.
const EXIT_DATABASE_NEWER: u8 = 11;
/// Exit code of `schema migrate` when active servers cannot run the target schema.
const EXIT_MIGRATION_REFUSED: u8 = 12;
/// Exit code of a configuration error.
const EXIT_CONFIG: u8 = 2;

/// The reference process-orchestration server.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a server: register, heartbeat, claim and run jobs, shut down friendly.
    Serve,
    /// Compare or migrate the database schema.
    Schema {
        #[command(subcommand)]
        action: SchemaAction,
        /// Server version whose schema needs count (defaults to $SERVER_VERSION, then this build's).
        #[arg(long, env = contract::env::SERVER_VERSION, global = true)]
        server_version: Option<String>,
    },
    /// Submit jobs at a rate and report submitted / completed / failed / lost / run twice.
    Loadgen(loadgen::LoadgenArgs),
}

#[derive(Debug, Subcommand)]
enum SchemaAction {
    /// Exit 0 when compatible, 10 when a migration is needed, 11 when the database is newer.
    Check,
    /// Bring the schema to the version's target under an advisory lock (safe to repeat).
    Migrate {
        /// Target schema version (defaults to the one the server version needs).
        #[arg(long)]
        to: Option<i32>,
        /// Migrate even while servers that cannot run the target are active.
        #[arg(long)]
        force: bool,
    },
}

fn init_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env(contract::env::RUST_LOG)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
}

#[tokio::main]
async fn main() -> ExitCode {
    init_tracing();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve => match config::ServerSettings::from_env() {
            Err(error) => fail(EXIT_CONFIG, &error),
            Ok(settings) => match serve::run(settings).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) if error.is::<serve::Interrupted>() => {
                    tracing::info!("{error}");
                    ExitCode::SUCCESS
                }
                Err(error) => match error.downcast_ref::<serve::Refusal>() {
                    Some(refusal) => fail(refusal.code, &error),
                    None => fail(1, &error),
                },
            },
        },
        Command::Schema { action, server_version } => {
            let version = server_version.unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_string());
            schema(action, &version).await
        }
        Command::Loadgen(args) => {
            let strict = args.strict;
            match loadgen::run(args).await {
                Ok(report) => {
                    println!("{}", serde_json::to_string(&report).expect("report serializes"));
                    let o = &report.outcome;
                    eprintln!(
                        "batch {}: submitted {} (failed to submit {}), completed {}, failed {}, lost {}, executed more than once {}, database errors {}",
                        report.batch,
                        report.acknowledged,
                        report.submit_failed,
                        o.completed,
                        o.failed,
                        report.lost,
                        o.executed_more_than_once,
                        report.database_errors
                    );
                    let clean = report.lost == 0 && o.executed_more_than_once == 0 && report.submit_failed == 0;
                    if strict && !clean {
                        ExitCode::FAILURE
                    } else {
                        ExitCode::SUCCESS
                    }
                }
                Err(error) => fail(1, &error),
            }
        }
    }
}

fn fail(code: u8, error: &anyhow::Error) -> ExitCode {
    tracing::error!("{error:#}");
    ExitCode::from(code)
}

async fn schema(action: SchemaAction, version: &str) -> ExitCode {
    let settings = match config::DatabaseSettings::from_env() {
        Ok(settings) => settings,
        Err(error) => {
            return refuse(
                EXIT_CONFIG,
                "the database settings are incomplete (see the log)",
                &error,
            );
        }
    };
    let mut client = match db::connect(&settings).await {
        Ok(client) => client,
        Err(error) => return refuse(1, "cannot connect to the database (see the log)", &error),
    };
    let range = contract::schema_range_for_version(version);
    match action {
        SchemaAction::Check => match contract::schema_version(&client).await {
            Err(error) => refuse(
                1,
                "cannot read the database's schema version (see the log)",
                &error.into(),
            ),
            Ok(found) => match contract::migrations::check(found, range) {
                SchemaCheck::Compatible { database } => {
                    outcome(&format!(
                        "compatible: database schema {database}, version {version} needs {}..={}",
                        range.min, range.max
                    ));
                    ExitCode::SUCCESS
                }
                SchemaCheck::MigrationNeeded { database, target } => {
                    outcome(&format!(
                        "migration needed: database schema {database}, version {version} needs {target}"
                    ));
                    ExitCode::from(EXIT_MIGRATION_NEEDED)
                }
                SchemaCheck::DatabaseNewer { database, supported } => {
                    outcome(&format!(
                        "database newer: database schema {database}, version {version} supports up to {supported}"
                    ));
                    ExitCode::from(EXIT_DATABASE_NEWER)
                }
            },
        },
        SchemaAction::Migrate { to, force } => {
            let target = to.unwrap_or(range.max);
            match contract::migrations::migrate(&mut client, target, force).await {
                Ok(found) if found == target => {
                    outcome(&format!("schema already at {target}"));
                    ExitCode::SUCCESS
                }
                Ok(found) => {
                    outcome(&format!("migrated schema {found} -> {target}"));
                    ExitCode::SUCCESS
                }
                // Schema versions and server ids: safe to show.
                Err(error @ MigrateError::IncompatibleServersActive { .. }) => {
                    refuse(EXIT_MIGRATION_REFUSED, &error.to_string(), &error.into())
                }
                Err(error @ MigrateError::DatabaseNewer { .. }) => {
                    refuse(EXIT_DATABASE_NEWER, &error.to_string(), &error.into())
                }
                Err(error) => refuse(1, "the migration failed (see the log)", &error.into()),
            }
        }
    }
}

/// Longest outcome line: the kubelet keeps the last 2 KiB of a failed container's log as its
/// termination message, and the line must be in it whole.
const OUTCOME_LIMIT: usize = 512;

/// Prints the outcome of a `schema` command as the line the operator may quote
/// ([`contract::SAFE_LINE_PREFIX`]): one line, control characters replaced, at most
/// [`OUTCOME_LIMIT`] characters, so that nothing in it can forge a line of its own.
fn outcome(line: &str) {
    let clean: String = line
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(OUTCOME_LIMIT)
        .collect();
    println!("{}{clean}", contract::SAFE_LINE_PREFIX);
}

/// Fails with `code`: `error` (which may name the user or echo a setting) goes to the log,
/// then `safe`, the line the operator may quote, is printed last, so that it ends the log.
fn refuse(code: u8, safe: &str, error: &anyhow::Error) -> ExitCode {
    let code = fail(code, error);
    outcome(safe);
    code
}
