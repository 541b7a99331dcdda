//! `orchestrator-server loadgen`: submits jobs at a steady rate for a while, waits for them to
//! settle, then reports from the database what became of them.

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use orchestrator_contract::{self as contract, Outcome};
use serde::Serialize;
use serde_json::json;

use crate::config::DatabaseSettings;
use crate::db::connect;

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

/// Runs the load generator.
pub(crate) async fn run(args: LoadgenArgs) -> anyhow::Result<Report> {
    contract::validate_job(&args.kind, &payload(&args, "check", 0))?;
    anyhow::ensure!(args.rate > 0.0 && args.rate <= 10_000.0, "--rate must be in (0, 10000]");
    let settings = DatabaseSettings::from_env()?;
    let db = connect(&settings).await?;
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
    let db = std::sync::Arc::new(db);
    let urls = std::sync::Arc::new(args.urls.clone());
    // Submissions run concurrently (bounded), so a slow answer does not lower the rate.
    let mut in_flight = tokio::task::JoinSet::new();
    let (mut acknowledged, mut submit_failed, mut seq) = (0u64, 0u64, 0u64);
    while Instant::now() < end {
        tick.tick().await;
        seq += 1;
        while in_flight.len() >= MAX_IN_FLIGHT {
            tally(in_flight.join_next().await, &mut acknowledged, &mut submit_failed);
        }
        let (db, urls, http, kind) = (db.clone(), urls.clone(), http.clone(), args.kind.clone());
        let body = payload(&args, &batch, seq);
        in_flight.spawn(async move {
            if urls.is_empty() {
                return contract::submit_job(&*db, &kind, &body).await.is_ok();
            }
            for attempt in 0..urls.len().max(3) {
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
        });
    }
    while let Some(done) = in_flight.join_next().await {
        tally(Some(done), &mut acknowledged, &mut submit_failed);
    }
    let deadline = Instant::now() + Duration::from_secs_f64(args.settle_timeout);
    let mut outcome = contract::batch_outcome(&*db, &batch)
        .await
        .context("cannot read the outcome")?;
    while outcome.unfinished > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        outcome = contract::batch_outcome(&*db, &batch).await?;
    }
    let missing = acknowledged as i64 - outcome.submitted;
    Ok(Report {
        batch,
        acknowledged,
        submit_failed,
        lost: outcome.unfinished + missing.max(0),
        outcome,
    })
}
