//! `orchestrator-server serve`: register, heartbeat, run jobs, and shut down friendly on
//! SIGTERM or when the database asks for a drain.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use orchestrator_contract::{self as contract, ClaimedJob, Registration, SchemaCheck, server_state};
use serde_json::json;
use tokio::sync::{Mutex, watch};
use tokio::task::JoinSet;

use crate::config::ServerSettings;
use crate::db::Conn;
use crate::metrics::Metrics;
use crate::state::Shared;

/// Exit code of a server that refuses to run against the database's schema.
pub(crate) const EXIT_SCHEMA_INCOMPATIBLE: u8 = 3;

/// A start-up refusal with its exit code.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub(crate) struct Refusal {
    /// Process exit code.
    pub(crate) code: u8,
    /// What is wrong.
    pub(crate) message: String,
}

/// Runs the server until its friendly shutdown completes.
pub(crate) async fn run(settings: ServerSettings) -> anyhow::Result<()> {
    // Before any work is claimed: a SIGTERM from then on means a friendly shutdown.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut control = Conn::open(&settings.database).await?;
    let range = contract::schema_range_for_version(&settings.version);
    let found = contract::schema_version(control.get().await?)
        .await
        .context("cannot read the schema version")?;
    match contract::migrations::check(found, range) {
        SchemaCheck::Compatible { .. } => {}
        SchemaCheck::MigrationNeeded { database, target } => bail!(Refusal {
            code: EXIT_SCHEMA_INCOMPATIBLE,
            message: format!(
                "database schema version {database} is older than version {} needs ({target}); \
                 run `orchestrator-server schema migrate` first",
                settings.version
            ),
        }),
        SchemaCheck::DatabaseNewer { database, supported } => bail!(Refusal {
            code: EXIT_SCHEMA_INCOMPATIBLE,
            message: format!(
                "database schema version {database} is newer than version {} supports ({supported}); \
                 run a newer server",
                settings.version
            ),
        }),
    }
    let shared = Arc::new(Shared {
        api_db: Mutex::new(Conn::open(&settings.database).await?),
        settings: settings.clone(),
        metrics: Metrics::default(),
        draining: AtomicBool::new(true),
        running: std::sync::Mutex::default(),
        last_heartbeat: std::sync::Mutex::new(Instant::now()),
    });

    let api = tokio::net::TcpListener::bind((settings.bind_ip.as_str(), settings.http_port))
        .await
        .with_context(|| format!("cannot listen on {}:{}", settings.bind_ip, settings.http_port))?;
    let metrics = tokio::net::TcpListener::bind((settings.bind_ip.as_str(), settings.metrics_port))
        .await
        .with_context(|| format!("cannot listen on {}:{}", settings.bind_ip, settings.metrics_port))?;
    let (stop_http, http_stopped) = watch::channel(false);
    let serve = |listener, router: axum::Router| {
        let mut stopped = http_stopped.clone();
        tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.wait_for(|s| *s).await;
            };
            axum::serve(listener, router).with_graceful_shutdown(shutdown).await
        })
    };
    let api_task = serve(api, crate::http::api(shared.clone()));
    let metrics_task = serve(metrics, crate::http::metrics_router(shared.clone()));
    tracing::info!(addr = %format!("{}:{}", settings.bind_ip, settings.http_port), "serving");

    // A drain requested before a restart still holds: stay out of service until it is cleared.
    let mut announced = false;
    while contract::drain_pending(control.get().await?, &settings.server_id).await? {
        if !announced {
            tracing::info!("a drain is pending for this server: staying stopped until the request is cleared");
            contract::set_state(control.get().await?, &settings.server_id, server_state::STOPPED).await?;
            announced = true;
        }
        tokio::select! {
            _ = term.recv() => {
                tracing::info!("SIGTERM while stopped");
                let _ = stop_http.send(true);
                let _ = tokio::join!(api_task, metrics_task);
                return Ok(());
            }
            _ = tokio::time::sleep(settings.heartbeat) => {}
        }
    }

    let registration = Registration {
        server_id: &settings.server_id,
        version: &settings.version,
        schema: range,
    };
    contract::register(control.get().await?, &registration).await?;
    *shared.last_heartbeat.lock().unwrap() = Instant::now();
    shared.draining.store(false, Ordering::SeqCst);
    tracing::info!(server = %settings.server_id, version = %settings.version, schema = found, "registered as active");

    let (drain_tx, drain_rx) = watch::channel(false);
    let (cancel_tx, cancel_rx) = watch::channel(false);
    let heartbeat = tokio::spawn(heartbeat_loop(shared.clone(), control, drain_tx.clone()));
    let mut workers = JoinSet::new();
    for _ in 0..settings.workers {
        let conn = Conn::open(&settings.database).await?;
        workers.spawn(worker(shared.clone(), conn, drain_rx.clone(), cancel_rx.clone()));
    }

    let mut drain_wait = drain_rx.clone();
    // A signal sets a deadline (the pod's grace period is running); a drain requested through
    // the database does not: the operator's onDrainTimeout policy decides how long to wait,
    // and a SIGTERM during such a drain starts the deadline.
    let signalled = tokio::select! {
        _ = term.recv() => { tracing::info!("SIGTERM: friendly shutdown"); true }
        _ = tokio::signal::ctrl_c() => { tracing::info!("interrupt: friendly shutdown"); true }
        _ = drain_wait.wait_for(|d| *d) => { tracing::info!("drain requested through the database: friendly shutdown"); false }
    };
    let _ = drain_tx.send(true);
    shared.draining.store(true, Ordering::SeqCst);
    shared.metrics.draining.set(1);
    let mut db = Conn::open(&settings.database).await?;
    contract::set_state(db.get().await?, &settings.server_id, server_state::DRAINING).await?;

    let running = shared.running.lock().unwrap().len();
    tracing::info!(running, timeout = ?settings.drain_timeout, signalled, "waiting for running jobs to finish");
    let mut finished = false;
    if !signalled {
        tokio::select! {
            _ = async { while workers.join_next().await.is_some() {} } => finished = true,
            _ = term.recv() => tracing::info!("SIGTERM while draining: finishing within the drain timeout"),
        }
    }
    if !finished
        && tokio::time::timeout(settings.drain_timeout, async {
            while workers.join_next().await.is_some() {}
        })
        .await
        .is_err()
    {
        let _ = cancel_tx.send(true);
        while workers.join_next().await.is_some() {}
        let handed = contract::hand_back_jobs(db.get().await?, &settings.server_id).await?;
        shared.metrics.handed_back.inc_by(handed);
        tracing::warn!(
            handed_back = handed,
            "drain timeout: unfinished jobs handed back to the other servers"
        );
    }
    heartbeat.abort();
    contract::set_state(db.get().await?, &settings.server_id, server_state::STOPPED).await?;
    let _ = stop_http.send(true);
    let _ = tokio::join!(api_task, metrics_task);
    tracing::info!("stopped");
    Ok(())
}

async fn heartbeat_loop(shared: Arc<Shared>, mut conn: Conn, drain: watch::Sender<bool>) {
    let settings = &shared.settings;
    let mut tick = tokio::time::interval(settings.heartbeat);
    loop {
        tick.tick().await;
        let ids: Vec<i64> = shared.running.lock().unwrap().iter().copied().collect();
        let beat = async {
            let db = conn.get().await?;
            let reply = contract::heartbeat(db, &settings.server_id, ids.len() as i32).await?;
            if !ids.is_empty() {
                contract::renew_leases(db, &settings.server_id, &ids, settings.lease).await?;
            }
            let depth = contract::queue_depth(db).await?;
            anyhow::Ok((reply, depth))
        };
        match beat.await {
            Ok((reply, depth)) => {
                *shared.last_heartbeat.lock().unwrap() = Instant::now();
                shared.metrics.heartbeat_age.set(0.0);
                shared.metrics.queue_depth.set(depth);
                if reply.drain_requested {
                    let _ = drain.send(true);
                }
                if !reply.registered {
                    tracing::warn!("the server's row is gone; registering again");
                    let range = contract::schema_range_for_version(&settings.version);
                    let registration = Registration {
                        server_id: &settings.server_id,
                        version: &settings.version,
                        schema: range,
                    };
                    if let Ok(db) = conn.get().await
                        && let Err(error) = contract::register(db, &registration).await
                    {
                        tracing::warn!(%error, "registering again failed");
                    }
                }
            }
            Err(error) => {
                let age = shared.last_heartbeat.lock().unwrap().elapsed().as_secs_f64();
                shared.metrics.heartbeat_age.set(age);
                tracing::warn!(error = format!("{error:#}"), age, "heartbeat failed");
            }
        }
    }
}

async fn worker(shared: Arc<Shared>, mut conn: Conn, drain: watch::Receiver<bool>, cancel: watch::Receiver<bool>) {
    let settings = &shared.settings;
    while !*drain.borrow() {
        let started = Instant::now();
        let claimed = match conn.get().await {
            Ok(db) => contract::claim_job(db, &settings.server_id, settings.lease)
                .await
                .map_err(anyhow::Error::from),
            Err(e) => Err(e),
        };
        match claimed {
            Ok(Some(job)) => {
                shared.metrics.claim_latency.observe(started.elapsed().as_secs_f64());
                run_job(&shared, &mut conn, job, cancel.clone()).await;
            }
            Ok(None) => {
                let mut drain = drain.clone();
                let _ = tokio::time::timeout(settings.idle_poll, drain.wait_for(|d| *d)).await;
            }
            Err(error) => {
                tracing::warn!(error = format!("{error:#}"), "claim failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Runs one job; a cancelled job (drain timeout) is left for the hand-back.
async fn run_job(shared: &Shared, conn: &mut Conn, job: ClaimedJob, mut cancel: watch::Receiver<bool>) {
    shared.running.lock().unwrap().insert(job.id);
    shared.metrics.running.inc();
    let work = execute(&job);
    let outcome = tokio::select! {
        outcome = work => Some(outcome),
        _ = cancel.wait_for(|c| *c) => None,
    };
    if let Some((succeeded, result)) = outcome {
        let server_id = &shared.settings.server_id;
        let completed = match conn.get().await {
            Ok(db) => contract::complete_job(db, server_id, &job, succeeded, &result)
                .await
                .map_err(anyhow::Error::from),
            Err(e) => Err(e),
        };
        match completed {
            Ok(true) if succeeded => {
                shared.metrics.completed.inc();
            }
            Ok(true) => {
                shared.metrics.failed.inc();
            }
            Ok(false) => tracing::warn!(
                job = job.id,
                "lease lost before completion; another server owns the job"
            ),
            Err(error) => tracing::warn!(job = job.id, error = format!("{error:#}"), "cannot record completion"),
        };
    }
    shared.running.lock().unwrap().remove(&job.id);
    shared.metrics.running.dec();
}

/// The work of each job kind: `(succeeded, result)`.
async fn execute(job: &ClaimedJob) -> (bool, serde_json::Value) {
    match job.kind.as_str() {
        contract::job_kind::NOOP => (true, json!({})),
        contract::job_kind::SLEEP => {
            let ms = job.payload.get("ms").and_then(|v| v.as_u64()).unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            (true, json!({"slept_ms": ms}))
        }
        contract::job_kind::FAIL => {
            let message = job
                .payload
                .get("message")
                .and_then(|v| v.as_str())
                .unwrap_or("failed on purpose");
            (false, json!({"error": message}))
        }
        other => (false, json!({"error": format!("unknown job kind {other:?}")})),
    }
}
