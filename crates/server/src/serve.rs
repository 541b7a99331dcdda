//! `orchestrator-server serve`: register, heartbeat, run jobs, and shut down friendly on
//! SIGTERM or when the database asks for a drain. A drain the database asked for is undone
//! when the request is withdrawn before the server stopped; a SIGTERM drain is final.
//!
//! Every job runs only while its lease holds by the local deadline ([`crate::lease`]): a job
//! whose lease is lost is stopped at once and its completion is not recorded, so no other
//! server can claim it while it still runs here. The heartbeat, which renews the leases, has a
//! connection of its own: the workers and the web service, which share the pool, never make it
//! wait.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use orchestrator_contract::{self as contract, Claim, ClaimedJob, Registration, SchemaCheck, StateWrite, server_state};
use serde_json::json;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_postgres::{Client, Notification};

use crate::config::ServerSettings;
use crate::db::{self, Backoff, Database, PoolOptions};
use crate::lease::{self, Lease, Leases, Loss};
use crate::metrics::Metrics;
use crate::state::{FAILING_SUFFIX, Shared};

/// Exit code of a server that refuses to run against the database's schema.
pub(crate) const EXIT_SCHEMA_INCOMPATIBLE: u8 = 3;

/// Time after the drain timeout for the shutdown's own database writes (hand-back, state
/// `stopped`) to get through a database blip: the operator gives a pod `drainTimeout + 30 s`
/// of grace, and this leaves 10 s of it.
const BOOKKEEPING_GRACE: Duration = Duration::from_secs(20);

/// A start-up refusal with its exit code.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub(crate) struct Refusal {
    /// Process exit code.
    pub(crate) code: u8,
    /// What is wrong.
    pub(crate) message: String,
}

/// A SIGTERM before the server registered: nothing was claimed, the process exits 0.
#[derive(Debug, thiserror::Error)]
#[error("SIGTERM while waiting for the database at start-up: nothing claimed, exiting")]
pub(crate) struct Interrupted;

/// The instant of the first SIGTERM (or interrupt), `None` before it.
type Signals = watch::Receiver<Option<Instant>>;

/// Starts the one task that notes the first SIGTERM or interrupt (SIGINT) and its instant.
/// From then on a signal means a friendly shutdown; its instant is kept even while the main
/// task is busy with a database write, so that the drain timeout (and the pod's grace period,
/// `drainTimeout + 30 s`) always counts from the signal itself.
fn watch_signals() -> anyhow::Result<Signals> {
    let mut term = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let (noted, signals) = watch::channel(None);
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = interrupt.recv() => "interrupt",
        };
        noted.send_replace(Some(Instant::now()));
        tracing::info!("{name}: friendly shutdown");
        // Later signals change nothing; the handlers stay installed.
        std::future::pending::<()>().await;
        drop((term, interrupt, noted));
    });
    Ok(signals)
}

/// Waits for the first signal; returns its instant.
async fn signalled(signals: &mut Signals) -> Instant {
    match signals.wait_for(Option::is_some).await {
        Ok(at) => (*at).expect("waited for a signal"),
        Err(_) => std::future::pending().await,
    }
}

/// Runs `op` for the start-up on a connection of the pool, refusals waited out
/// ([`Database::get_waiting_out_refusals`]), within the pool's time limit; errors say `what`
/// failed. A signal meanwhile ends the start-up ([`Interrupted`]).
async fn at_startup<T>(
    db: &Database,
    signals: &mut Signals,
    what: &str,
    op: impl AsyncFnOnce(&mut Client) -> contract::Result<T>,
) -> anyhow::Result<T> {
    let work = async {
        let connection = db.get_waiting_out_refusals().await?;
        db.run_on(connection, db.limit(), op).await
    };
    tokio::select! {
        done = work => done.map_err(|error| error.context(what.to_string())),
        _ = signalled(signals) => Err(Interrupted.into()),
    }
}

/// Returns when a notification says the row of `server_id` changed (never, once the listening
/// connection's sender is gone). Other servers' notifications are read and dropped.
async fn own_row_changed(notified: &mut mpsc::UnboundedReceiver<Notification>, server_id: &str) {
    while let Some(notification) = notified.recv().await {
        if notification.payload() == server_id {
            return;
        }
    }
    std::future::pending().await
}

/// What the server registers.
fn registration(settings: &ServerSettings) -> Registration<'_> {
    Registration {
        server_id: &settings.server_id,
        version: &settings.version,
        schema: contract::schema_range_for_version(&settings.version),
    }
}

/// What the workers may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Claim and run jobs.
    Claiming,
    /// Finish the job at hand, claim nothing new (draining).
    Paused,
    /// Exit once idle.
    Stopping,
}

/// What the workers share with the main task.
#[derive(Clone)]
struct Crew {
    /// What they may do.
    phase: watch::Receiver<Phase>,
    /// Set at the drain timeout: stop running jobs now (they are handed back).
    cancel: watch::Receiver<bool>,
    /// Workers claiming or running a job.
    busy: Arc<watch::Sender<usize>>,
}

/// Counts a worker as busy for as long as it lives.
struct Busy<'a>(&'a watch::Sender<usize>);

impl<'a> Busy<'a> {
    fn enter(count: &'a watch::Sender<usize>) -> Self {
        count.send_modify(|n| *n += 1);
        Self(count)
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

/// How serving ended.
#[derive(Clone, Copy)]
enum Shutdown {
    /// A drain the database asked for finished: every job done, no signal, the state
    /// `stopped` recorded (or the row gone).
    Drained,
    /// A signal at this instant: the drain timeout runs from it.
    Signalled(Instant),
}

/// Runs the server until its friendly shutdown completes.
pub(crate) async fn run(settings: ServerSettings) -> anyhow::Result<()> {
    // Before any work is claimed: a signal from then on means a friendly shutdown.
    let mut signals = watch_signals()?;
    let db = Database::new(
        &settings.database,
        PoolOptions {
            max_connections: settings.database.max_connections,
            application_name: db::APPLICATION_NAME,
            statement_timeout: Some(settings.query_timeout()),
            notifications: None,
        },
    )?;
    // The heartbeat's own connection, outside the pool: however busy the pool is, the lease
    // renewals never wait for it. It listens for server-row notifications, so that a drain
    // request is heard when it is written rather than at the next heartbeat.
    let (notifications, mut notified) = mpsc::unbounded_channel();
    let link = Database::new(
        &settings.database,
        PoolOptions {
            max_connections: 1,
            application_name: db::HEARTBEAT_APPLICATION_NAME,
            statement_timeout: Some(settings.heartbeat_timeout()),
            notifications: Some(notifications),
        },
    )?;
    let range = contract::schema_range_for_version(&settings.version);
    let found = at_startup(&db, &mut signals, "cannot read the schema version", async |c| {
        contract::schema_version(&*c).await
    })
    .await?;
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
        db: db.clone(),
        settings: settings.clone(),
        metrics: Metrics::default(),
        draining: AtomicBool::new(true),
        running: Leases::default(),
        last_heartbeat: std::sync::Mutex::new(std::time::Instant::now()),
        unreleased: Default::default(),
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
    // Read on the heartbeat's listening connection, so that the clearing is heard when it is
    // written (the operator clears it as the replacement starts), not a heartbeat later.
    // A read that fails (the heartbeat connection's short time limit, a database blip) is not
    // "no drain": the server stays out of service and reads again at the next heartbeat.
    let mut announced = false;
    loop {
        let pending = match at_startup(&link, &mut signals, "cannot read the drain request", async |c| {
            contract::drain_pending(&*c, &settings.server_id).await
        })
        .await
        {
            Ok(pending) => Some(pending),
            Err(error) if error.is::<Interrupted>() => return Err(error),
            Err(error) => {
                tracing::warn!(error = %format!("{error:#}"), "reading the drain request again at the next heartbeat");
                None
            }
        };
        if pending == Some(false) {
            break;
        }
        if pending == Some(true) && !announced {
            tracing::info!("a drain is pending for this server: staying stopped until the request is cleared");
            at_startup(&db, &mut signals, "cannot record the state stopped", async |c| {
                contract::set_state(&*c, &settings.server_id, server_state::STOPPED).await
            })
            .await?;
            announced = true;
        }
        tokio::select! {
            _ = signalled(&mut signals) => {
                tracing::info!("signalled while stopped");
                let _ = stop_http.send(true);
                let _ = tokio::join!(api_task, metrics_task);
                return Ok(());
            }
            _ = tokio::time::sleep(settings.heartbeat) => {}
            () = own_row_changed(&mut notified, &settings.server_id) => {}
        }
    }

    let registration = registration(&settings);
    at_startup(&db, &mut signals, "cannot register", async |c| {
        contract::register(&*c, &registration).await
    })
    .await?;
    *shared.last_heartbeat.lock().unwrap() = std::time::Instant::now();
    shared.draining.store(false, Ordering::SeqCst);
    tracing::info!(server = %settings.server_id, version = %settings.version, schema = found, "registered as active");

    let (phase, phase_rx) = watch::channel(Phase::Claiming);
    let (cancel, cancel_rx) = watch::channel(false);
    let busy = Arc::new(watch::channel(0usize).0);
    let mut idle = busy.subscribe();
    let (requested_tx, mut requested) = watch::channel(false);
    let requested_tx = Arc::new(requested_tx);
    let heartbeat = tokio::spawn(heartbeat_loop(shared.clone(), link, notified, requested_tx.clone()));
    let crew = Crew {
        phase: phase_rx,
        cancel: cancel_rx,
        busy,
    };
    let mut workers = JoinSet::new();
    for _ in 0..settings.workers {
        workers.spawn(worker(shared.clone(), crew.clone()));
    }

    // A signal sets a deadline (the pod's grace period is running); a drain requested through
    // the database does not: the operator's onDrainTimeout policy decides how long to wait,
    // and a signal during such a drain starts the deadline. The operator may withdraw its
    // request until the drain finished (the state `stopped` written only while the request
    // holds): the server then takes work again. Every database write of the drain races the
    // signal, so that a signal is acted on at once.
    let shutdown = 'serving: loop {
        tokio::select! {
            at = signalled(&mut signals) => break Shutdown::Signalled(at),
            _ = until(&mut requested, true) => {}
        }
        tracing::info!("drain requested through the database: friendly shutdown");
        tokio::select! {
            _ = enter_drain(&shared, &phase, Instant::now() + settings.drain_timeout) => {}
            at = signalled(&mut signals) => break Shutdown::Signalled(at),
        }
        loop {
            tokio::select! {
                _ = until(&mut idle, 0) => if *requested.borrow() {
                    let finished = tokio::select! {
                        finished = finish_drain(&shared) => finished,
                        at = signalled(&mut signals) => break 'serving Shutdown::Signalled(at),
                    };
                    match finished {
                        StateWrite::Written => break 'serving Shutdown::Drained,
                        StateWrite::NoRow => {
                            tracing::warn!("drain finished, but the server's row is gone: nothing to record");
                            break 'serving Shutdown::Drained;
                        }
                        StateWrite::Refused => tracing::info!(
                            "the drain request was withdrawn as the drain finished: not stopping"
                        ),
                    }
                },
                at = signalled(&mut signals) => break 'serving Shutdown::Signalled(at),
                _ = until(&mut requested, false) => {}
            }
            let resumed = tokio::select! {
                resumed = resume(&shared, &phase) => resumed,
                at = signalled(&mut signals) => break 'serving Shutdown::Signalled(at),
            };
            if resumed {
                // The database had no request pending when `active` was written, whatever the
                // heartbeat last reported: wait for the next one it reports.
                requested_tx.send_replace(false);
                continue 'serving;
            }
            // Not resumed (the request is back, or the write failed): look again after the
            // next heartbeat.
            tokio::select! {
                _ = tokio::time::sleep(settings.heartbeat) => {}
                at = signalled(&mut signals) => break 'serving Shutdown::Signalled(at),
            }
        }
    };

    let from = match shutdown {
        Shutdown::Drained => Instant::now(),
        Shutdown::Signalled(at) => at,
    };
    let bookkeeping_deadline = from + settings.drain_timeout + BOOKKEEPING_GRACE;
    let mut handed_back = false;
    if let Shutdown::Signalled(at) = shutdown {
        let drain_deadline = at + settings.drain_timeout;
        enter_drain(&shared, &phase, drain_deadline).await;
        if tokio::time::timeout_at(drain_deadline, until(&mut idle, 0))
            .await
            .is_err()
        {
            cancel.send_replace(true);
            let _ = tokio::time::timeout_at(bookkeeping_deadline, until(&mut idle, 0)).await;
            hand_back(&shared, bookkeeping_deadline, "drain timeout").await;
            handed_back = true;
        }
    }
    phase.send_replace(Phase::Stopping);
    let aborted = tokio::time::timeout_at(bookkeeping_deadline, async {
        while workers.join_next().await.is_some() {}
    })
    .await
    .is_err();
    if aborted {
        workers.abort_all();
    }
    heartbeat.abort();
    if aborted || (!handed_back && !shared.unreleased.lock().unwrap().is_empty()) {
        // Jobs stopped here (aborted, or not yet released by the heartbeat); nothing runs here
        // any more, so every job still this server's in the database is one of them.
        hand_back(&shared, bookkeeping_deadline, "jobs stopped here").await;
    }
    let stopped = match shutdown {
        Shutdown::Drained => Ok(()),
        Shutdown::Signalled(_) => record_state(&shared, server_state::STOPPED, bookkeeping_deadline)
            .await
            .map(|written| {
                if written == 0 {
                    tracing::warn!("the server's row is gone: the state stopped was not recorded");
                }
            }),
    };
    let _ = stop_http.send(true);
    let _ = tokio::join!(api_task, metrics_task);
    stopped?;
    tracing::info!("stopped");
    Ok(())
}

/// Hands back the jobs this server still owns in the database (`why`: for the log), retrying
/// until `deadline`.
async fn hand_back(shared: &Shared, deadline: Instant, why: &str) {
    let server_id = &shared.settings.server_id;
    let handed = db::retry(
        "handing back the unfinished jobs",
        &shared.metrics.database_retries,
        || Some(deadline),
        || async move {
            shared
                .db
                .run(async |c| contract::hand_back_jobs(&*c, server_id).await)
                .await
        },
    )
    .await;
    match handed {
        Ok(handed) => {
            shared.metrics.handed_back.inc_by(handed);
            shared.unreleased.lock().unwrap().clear();
            tracing::warn!(
                handed_back = handed,
                "{why}: unfinished jobs handed back to the other servers"
            );
        }
        Err(error) => tracing::error!(
            error = format!("{error:#}"),
            "{why}: the unfinished jobs could not be handed back; their leases expire \
             and other servers run them"
        ),
    }
}

/// Waits until the value of `rx` is `value` (forever if its sender is gone).
async fn until<T: PartialEq>(rx: &mut watch::Receiver<T>, value: T) {
    if rx.wait_for(|v| *v == value).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Writes the server's state, retrying until `deadline` (at least one try); returns the rows
/// written, 0 when the row is gone.
async fn record_state(shared: &Shared, state: &str, deadline: Instant) -> anyhow::Result<u64> {
    let server_id = &shared.settings.server_id;
    db::retry(
        &format!("recording the state {state}"),
        &shared.metrics.database_retries,
        || Some(deadline),
        || async move {
            shared
                .db
                .run(async |c| contract::set_state(&*c, server_id, state).await)
                .await
        },
    )
    .await
}

/// Stops claiming, reports not ready and records the state `draining`, retried until
/// `deadline` (claims stay stopped if it cannot be recorded).
async fn enter_drain(shared: &Shared, phase: &watch::Sender<Phase>, deadline: Instant) {
    let settings = &shared.settings;
    phase.send_replace(Phase::Paused);
    shared.draining.store(true, Ordering::SeqCst);
    shared.metrics.draining.set(1);
    if let Err(error) = record_state(shared, server_state::DRAINING, deadline).await {
        tracing::error!(error = format!("{error:#}"), "draining without the state recorded");
    }
    let running = shared.running.ids().len();
    tracing::info!(running, timeout = ?settings.drain_timeout, "waiting for running jobs to finish");
}

/// Ends a drain the database asked for, its jobs done: records `stopped` only while the
/// request is still pending ([`contract::set_state_if_drain`]), so that a withdrawal the
/// heartbeat has not reported yet is not overwritten ([`StateWrite::Refused`]: take work
/// again). Retried until it gets through; the caller races it against a signal.
async fn finish_drain(shared: &Shared) -> StateWrite {
    let server_id = &shared.settings.server_id;
    db::persist(
        "recording the state stopped",
        &shared.metrics.database_retries,
        || async move {
            shared
                .db
                .run(async |c| contract::set_state_if_drain(&*c, server_id, server_state::STOPPED, true).await)
                .await
        },
    )
    .await
}

/// Takes work again after the database withdrew its drain request: records the state
/// `active` first (claims need it), only while no request is pending, then reports ready and
/// lets the workers claim. A row gone since the withdrawal is registered again. False when the
/// state could not be recorded (the request is back, or the database does not answer): the
/// server stays draining and tries again.
async fn resume(shared: &Shared, phase: &watch::Sender<Phase>) -> bool {
    let settings = &shared.settings;
    let server_id = &settings.server_id;
    let deadline = Instant::now() + settings.lease;
    let written = db::retry(
        "recording the state active",
        &shared.metrics.database_retries,
        || Some(deadline),
        || async move {
            shared
                .db
                .run(async |c| contract::set_state_if_drain(&*c, server_id, server_state::ACTIVE, false).await)
                .await
        },
    )
    .await;
    match written {
        Ok(StateWrite::Written) => {}
        Ok(StateWrite::Refused) => {
            tracing::info!("drain withdrawn, but requested again before the state active was recorded: still draining");
            return false;
        }
        Ok(StateWrite::NoRow) => {
            tracing::warn!("drain withdrawn, but the server's row is gone since: registering again");
            let registration = registration(settings);
            if let Err(error) = shared
                .db
                .run(async |c| contract::register(&*c, &registration).await)
                .await
            {
                tracing::warn!(error = format!("{error:#}"), "registering again failed");
                return false;
            }
        }
        Err(error) => {
            tracing::warn!(
                error = format!("{error:#}"),
                "drain withdrawn, but the state active cannot be recorded yet"
            );
            return false;
        }
    }
    shared.draining.store(false, Ordering::SeqCst);
    shared.metrics.draining.set(0);
    phase.send_replace(Phase::Claiming);
    tracing::info!("drain withdrawn: active again, claiming work");
    true
}

/// Heartbeats on the heartbeat's own connection (`link`), renews the leases of the running
/// jobs, releases the jobs stopped here, and publishes in `requested` whether the database asks
/// for a drain. Each heartbeat gets [`ServerSettings::heartbeat_timeout`]; one that overruns
/// loses its connection, and the next one opens a fresh connection.
async fn heartbeat_loop(
    shared: Arc<Shared>,
    link: Database,
    mut notified: mpsc::UnboundedReceiver<Notification>,
    requested: Arc<watch::Sender<bool>>,
) {
    let settings = &shared.settings;
    let server_id = settings.server_id.as_str();
    let limit = settings.heartbeat_timeout();
    let mut tick = tokio::time::interval(settings.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut warned_gone = false;
    loop {
        // A beat is due, or this server's row changed (a drain asked or withdrawn): beat now,
        // which reads the request. Other servers' notifications are not this one's business.
        tokio::select! {
            _ = tick.tick() => {}
            () = own_row_changed(&mut notified, server_id) => {}
        }
        shared
            .metrics
            .database_connections
            .set((shared.db.open_connections() + link.open_connections()) as i64);
        let ids = shared.running.ids();
        let beat = link
            .run_within(limit, async |c| {
                let reply = contract::heartbeat(&*c, server_id, ids.len() as i32).await?;
                if !ids.is_empty() {
                    // The send time of the renewal, not its answer's: the local deadline then
                    // comes before the database's expiry (see `lease`).
                    let sent = Instant::now();
                    let owned = contract::renew_owned_leases(&*c, server_id, &ids, settings.lease).await?;
                    shared.running.renewed(&ids, &owned, settings.lease_deadline(sent));
                }
                let depth = contract::queue_depth(&*c).await?;
                Ok((reply, depth))
            })
            .await;
        match beat {
            Ok((reply, depth)) => {
                *shared.last_heartbeat.lock().unwrap() = std::time::Instant::now();
                shared.metrics.heartbeat_age.set(0.0);
                shared.metrics.queue_depth.set(depth);
                if reply.registered {
                    warned_gone = false;
                    requested
                        .send_if_modified(|r| std::mem::replace(r, reply.drain_requested) != reply.drain_requested);
                } else if shared.draining.load(Ordering::SeqCst) {
                    // A deleted row is not a withdrawn drain request: the drain goes on.
                    if !std::mem::replace(&mut warned_gone, true) {
                        tracing::warn!("the server's row is gone while it drains: the drain goes on");
                    }
                } else {
                    tracing::warn!("the server's row is gone; registering again");
                    let registration = registration(settings);
                    if let Err(error) = link
                        .run_within(limit, async |c| contract::register(&*c, &registration).await)
                        .await
                    {
                        tracing::warn!(error = format!("{error:#}"), "registering again failed");
                    }
                }
                release_stopped_jobs(&shared, &link, limit).await;
            }
            Err(error) => {
                let age = shared.last_heartbeat.lock().unwrap().elapsed().as_secs_f64();
                shared.metrics.heartbeat_age.set(age);
                tracing::warn!(error = format!("{error:#}"), age, "heartbeat failed");
            }
        }
    }
}

/// Releases the jobs stopped here whose rows may still say this server runs them
/// ([`Shared::unreleased`]), now that the database answers: queued again at once, instead of
/// after their leases expire. Stops at the first failure; the next heartbeat goes on.
async fn release_stopped_jobs(shared: &Shared, link: &Database, limit: Duration) {
    let server_id = shared.settings.server_id.as_str();
    let pending: Vec<(i64, i32)> = shared
        .unreleased
        .lock()
        .unwrap()
        .iter()
        .map(|(id, attempt)| (*id, *attempt))
        .collect();
    for (id, attempt) in pending {
        let released = link
            .run_within(limit, async |c| {
                contract::release_job(&*c, server_id, id, attempt).await
            })
            .await;
        match released {
            Ok(released) => {
                let mut unreleased = shared.unreleased.lock().unwrap();
                if unreleased.get(&id) == Some(&attempt) {
                    unreleased.remove(&id);
                }
                drop(unreleased);
                if released {
                    tracing::info!(job = id, attempt, "a job stopped here is released: queued again");
                }
            }
            Err(error) => {
                tracing::warn!(
                    job = id,
                    error = format!("{error:#}"),
                    "releasing a job stopped here failed"
                );
                return;
            }
        }
    }
}

/// Claims and runs jobs while the phase allows; idles while paused.
async fn worker(shared: Arc<Shared>, mut crew: Crew) {
    let settings = &shared.settings;
    let mut backoff = Backoff::default();
    loop {
        let phase = match crew.phase.wait_for(|p| *p != Phase::Paused).await {
            Ok(phase) => *phase,
            Err(_) => return,
        };
        if phase == Phase::Stopping {
            return;
        }
        let busy = Busy::enter(&crew.busy);
        // Checked after counting as busy: a drain that began before is seen here, one that
        // begins after waits for this claim.
        if *crew.phase.borrow() != Phase::Claiming {
            continue;
        }
        let started = Instant::now();
        let claimed = tokio::select! {
            claimed = claim(&shared) => claimed,
            _ = until(&mut crew.cancel, true) => continue,
        };
        match claimed {
            Ok(Some((job, sent))) => {
                backoff = Backoff::default();
                shared.metrics.claim_latency.observe(started.elapsed().as_secs_f64());
                run_job(&shared, job, settings.lease_deadline(sent), crew.cancel.clone()).await;
            }
            Ok(None) => {
                backoff = Backoff::default();
                drop(busy);
                let _ = tokio::time::timeout(settings.idle_poll, crew.phase.changed()).await;
            }
            Err(error) => {
                drop(busy);
                shared.metrics.database_retries.inc();
                let pause = backoff.pause();
                tracing::warn!(error = format!("{error:#}"), retry_in = ?pause, "claim failed; retrying");
                let _ = tokio::time::timeout(pause, crew.phase.changed()).await;
            }
        }
    }
}

/// Claims a job to run, dead-lettering on the way the jobs that ran out of attempts; returns it
/// with the instant its claim was sent.
/// The claim runs within the pool's time limit: one the database does not answer in time
/// fails (its connection discarded) and the worker tries again.
async fn claim(shared: &Shared) -> anyhow::Result<Option<(ClaimedJob, Instant)>> {
    let settings = &shared.settings;
    shared
        .db
        .run(async |c| {
            loop {
                let sent = Instant::now();
                match contract::claim_job_bounded(&*c, &settings.server_id, settings.lease, settings.max_attempts)
                    .await?
                {
                    None => return Ok(None),
                    Some(Claim::Run(job)) => return Ok(Some((job, sent))),
                    Some(Claim::DeadLettered { id, attempts }) => {
                        shared.metrics.dead_lettered.inc();
                        tracing::warn!(
                            job = id,
                            attempts,
                            "dead-lettered: its lease expired after {attempts} attempts; marked failed"
                        );
                    }
                }
            }
        })
        .await
}

/// Runs one job while its lease holds (`deadline` is the claim's local deadline). A job whose
/// lease is lost is stopped at once and its completion is not recorded; when its local
/// deadline passed (the database may still say this server runs it) it is released at the next
/// heartbeat that gets through. A cancelled one (drain timeout) is left for the hand-back.
async fn run_job(shared: &Shared, job: ClaimedJob, deadline: Instant, mut cancel: watch::Receiver<bool>) {
    let mut lease = shared.running.insert(job.id, deadline);
    shared.metrics.running.inc();
    let outcome = tokio::select! {
        outcome = execute(&job, &shared.settings.version) => Some(outcome),
        loss = lease::lost(&mut lease) => {
            shared.metrics.abandoned.inc();
            tracing::warn!(
                job = job.id,
                attempt = job.attempt,
                reason = loss.reason(),
                "lease lost: job stopped here, its completion is not recorded"
            );
            if loss == Loss::Expired {
                shared.unreleased.lock().unwrap().insert(job.id, job.attempt);
            }
            None
        }
        _ = until(&mut cancel, true) => None,
    };
    if let Some((succeeded, result)) = outcome {
        complete(shared, &job, succeeded, &result, &lease).await;
    }
    shared.running.remove(job.id);
    shared.metrics.running.dec();
}

/// Records the end of a job, retrying while its lease holds (a retry after a lost answer is
/// safe, see [`contract::complete_job`]). When it cannot be recorded in time the job is
/// released at the next heartbeat that gets through, or else stays claimed until its lease
/// expires; either way another server runs it again.
async fn complete(
    shared: &Shared,
    job: &ClaimedJob,
    succeeded: bool,
    result: &serde_json::Value,
    lease: &watch::Receiver<Lease>,
) {
    let server_id = &shared.settings.server_id;
    let completed = db::retry(
        "recording a job's completion",
        &shared.metrics.database_retries,
        || lease::deadline(lease),
        || async move {
            shared
                .db
                .run(async |c| contract::complete_job(c, server_id, job, succeeded, result).await)
                .await
        },
    )
    .await;
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
        Err(error) => {
            shared.metrics.abandoned.inc();
            shared.unreleased.lock().unwrap().insert(job.id, job.attempt);
            tracing::warn!(
                job = job.id,
                error = format!("{error:#}"),
                "cannot record completion while the lease holds: the job is released (or its lease expires) and another server runs it"
            );
        }
    }
}

/// The work of each job kind: `(succeeded, result)`. A server of a version ending in
/// [`FAILING_SUFFIX`] fails every job, after the work, as a bad release would.
async fn execute(job: &ClaimedJob, version: &str) -> (bool, serde_json::Value) {
    let outcome = work(job).await;
    if version.ends_with(FAILING_SUFFIX) {
        return (
            false,
            json!({"error": format!("version {version} simulates a release that fails its jobs")}),
        );
    }
    outcome
}

/// The work of each job kind: `(succeeded, result)`.
async fn work(job: &ClaimedJob) -> (bool, serde_json::Value) {
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
