//! `orchestrator-server loadgen`: submits jobs at a steady rate for a while, waits for them to
//! settle, then reports from the database what became of them.
//!
//! It keeps going through a database restart or a refused connection: its connections come
//! from a pool that opens them again, each database operation is retried with capped
//! back-off, and every failure is counted in the report's `database_errors`.

use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use orchestrator_contract::{self as contract, Outcome};
use prometheus_client::metrics::counter::Counter;
use serde::Serialize;
use serde_json::json;
use tokio::time::Instant;

use crate::config::DatabaseSettings;
use crate::db::{self, Backoff, Database, PoolOptions};

/// Options of the load generator.
#[derive(Debug, Args)]
pub(crate) struct LoadgenArgs {
    /// Servers to submit to (`http://IP:PORT`), used round-robin; a failed submission is retried
    /// on the next one. Without any, jobs are inserted into the database directly.
    #[arg(long = "url")]
    pub(crate) urls: Vec<String>,
    /// Jobs per second.
    #[arg(long, default_value_t = 20.0)]
    pub(crate) rate: f64,
    /// Seconds of submitting.
    #[arg(long, default_value_t = 10.0)]
    pub(crate) duration: f64,
    /// Job kind: noop, sleep or fail.
    #[arg(long, default_value = "sleep")]
    pub(crate) kind: String,
    /// Milliseconds each sleep job works.
    #[arg(long, default_value_t = 100)]
    pub(crate) sleep_ms: u64,
    /// Name of this batch (defaults to a fresh one).
    #[arg(long)]
    pub(crate) batch: Option<String>,
    /// Seconds to wait for the submitted jobs to finish before counting the rest as lost.
    #[arg(long, default_value_t = 120.0)]
    pub(crate) settle_timeout: f64,
    /// Exit 1 when a job was lost, ran twice or could not be submitted.
    #[arg(long)]
    pub(crate) strict: bool,
}

/// What the load generator reports.
#[derive(Debug, Serialize)]
pub(crate) struct Report {
    /// Batch name.
    pub(crate) batch: String,
    /// Submissions acknowledged with a job id.
    pub(crate) acknowledged: u64,
    /// Submissions that failed on every server tried.
    pub(crate) submit_failed: u64,
    /// Acknowledged jobs not finished after the settle timeout (or missing).
    pub(crate) lost: i64,
    /// Database operations that failed and were retried or counted as failed submissions.
    pub(crate) database_errors: u64,
    /// Counts read from the database.
    pub(crate) outcome: Outcome,
}

fn payload(args: &LoadgenArgs, batch: &str, seq: u64) -> serde_json::Value {
    match args.kind.as_str() {
        "sleep" => json!({"batch": batch, "seq": seq, "ms": args.sleep_ms}),
        _ => json!({"batch": batch, "seq": seq}),
    }
}

/// Submissions in flight at most.
const MAX_IN_FLIGHT: usize = 64;

fn tally(done: Option<Result<bool, tokio::task::JoinError>>, acknowledged: &mut u64, failed: &mut u64) {
    match done {
        Some(Ok(true)) => *acknowledged += 1,
        Some(_) => *failed += 1,
        None => {}
    }
}

/// How long a direct submission waits for a database connection, and how long past the settle
/// timeout reading the outcome is retried.
const DATABASE_PATIENCE: Duration = Duration::from_secs(30);

/// Inserts one job straight into the database. Getting a connection is retried (nothing was
/// sent yet); the insert itself is tried once, since a failed one may or may not have
/// happened.
async fn submit_direct(db: &Database, errors: &Counter, kind: &str, body: &serde_json::Value) -> bool {
    let until = Instant::now() + DATABASE_PATIENCE;
    let Ok(client) = db::retry(
        "getting a database connection",
        errors,
        || Some(until),
        || async { Ok(db.get().await?) },
    )
    .await
    else {
        return false;
    };
    match contract::submit_job(&**client, kind, body).await {
        Ok(_) => true,
        Err(error) => {
            errors.inc();
            tracing::warn!(%error, "submission failed");
            false
        }
    }
}

/// Submits one job through the servers, trying the next one after a pause ([`Backoff`]) when
/// one fails.
async fn submit_http(http: &reqwest::Client, urls: &[String], seq: u64, kind: &str, body: &serde_json::Value) -> bool {
    let mut backoff = Backoff::default();
    for attempt in 0..urls.len().max(3) {
        if attempt > 0 {
            tokio::time::sleep(backoff.pause()).await;
        }
        let url = format!("{}/jobs", urls[(seq as usize + attempt) % urls.len()]);
        let sent = http
            .post(&url)
            .json(&json!({"kind": kind, "payload": body}))
            .send()
            .await;
        if matches!(sent, Ok(ref r) if r.status() == reqwest::StatusCode::CREATED) {
            return true;
        }
    }
    false
}

/// Reads the outcome of `batch`, retrying until `until`.
async fn outcome(db: &Database, errors: &Counter, batch: &str, until: Instant) -> anyhow::Result<Outcome> {
    db::retry(
        "reading the outcome",
        errors,
        || Some(until),
        || async { Ok(contract::batch_outcome(&**db.get().await?, batch).await?) },
    )
    .await
}

/// Runs the load generator.
pub(crate) async fn run(args: LoadgenArgs) -> anyhow::Result<Report> {
    contract::validate_job(&args.kind, &payload(&args, "check", 0))?;
    anyhow::ensure!(args.rate > 0.0 && args.rate <= 10_000.0, "--rate must be in (0, 10000]");
    let settings = DatabaseSettings::from_env()?;
    let db = Database::new(
        &settings,
        PoolOptions {
            max_connections: settings.max_connections,
            application_name: db::APPLICATION_NAME,
            statement_timeout: None,
            notifications: None,
        },
    )?;
    let errors = Arc::new(Counter::default());
    let batch = args.batch.clone().unwrap_or_else(|| {
        format!(
            "load-{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis()
        )
    });
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(3))
        .build()?;
    let interval = Duration::from_secs_f64(1.0 / args.rate);
    let end = Instant::now() + Duration::from_secs_f64(args.duration);
    let mut tick = tokio::time::interval(interval);
    let urls = Arc::new(args.urls.clone());
    // Submissions run concurrently (bounded), so a slow answer does not lower the rate.
    let mut in_flight = tokio::task::JoinSet::new();
    let (mut acknowledged, mut submit_failed, mut seq) = (0u64, 0u64, 0u64);
    while Instant::now() < end {
        tick.tick().await;
        seq += 1;
        while in_flight.len() >= MAX_IN_FLIGHT {
            tally(in_flight.join_next().await, &mut acknowledged, &mut submit_failed);
        }
        let (db, errors, urls, http, kind) = (
            db.clone(),
            errors.clone(),
            urls.clone(),
            http.clone(),
            args.kind.clone(),
        );
        let body = payload(&args, &batch, seq);
        in_flight.spawn(async move {
            if urls.is_empty() {
                submit_direct(&db, &errors, &kind, &body).await
            } else {
                submit_http(&http, &urls, seq, &kind, &body).await
            }
        });
    }
    while let Some(done) = in_flight.join_next().await {
        tally(Some(done), &mut acknowledged, &mut submit_failed);
    }
    let deadline = Instant::now() + Duration::from_secs_f64(args.settle_timeout);
    let mut settled = outcome(&db, &errors, &batch, deadline + DATABASE_PATIENCE).await?;
    while settled.unfinished > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        settled = outcome(&db, &errors, &batch, deadline + DATABASE_PATIENCE).await?;
    }
    let missing = acknowledged as i64 - settled.submitted;
    Ok(Report {
        batch,
        acknowledged,
        submit_failed,
        lost: settled.unfinished + missing.max(0),
        database_errors: errors.get(),
        outcome: settled,
    })
}
