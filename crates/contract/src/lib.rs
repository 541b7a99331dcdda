//! The database contract between the operator and the orchestration servers.
//!
//! All state lives in one PostgreSQL database: `schema_info` (the schema version), `servers`
//! (membership, heartbeats, drain requests) and `jobs` (work claimed with `FOR UPDATE SKIP
//! LOCKED` and a lease). Every time is taken from the database clock (`now()`), never from a
//! server's. The queries here are the whole contract: the reference server and the operator
//! use them, and a user's own server implements the same behaviour.

pub mod env;
pub mod migrations;
pub mod tls;

use std::time::Duration;

use serde::Serialize;
use tokio_postgres::{Client, GenericClient};

pub use migrations::{LATEST_SCHEMA, SchemaCheck, SchemaRange, schema_range_for_version};

/// Errors of the contract's queries.
#[derive(Debug, thiserror::Error)]
pub enum ContractError {
    /// The database answered with an error or the connection failed.
    #[error("database: {0}")]
    Database(#[from] tokio_postgres::Error),
    /// A job payload that the contract refuses.
    #[error("invalid job: {0}")]
    InvalidJob(String),
    /// The database did not answer in time (the caller's deadline).
    #[error("database: {0}")]
    Timeout(String),
}

/// Result of the contract's queries.
pub type Result<T, E = ContractError> = std::result::Result<T, E>;

/// The PostgreSQL notification channel of server rows: every contract function that changes a
/// row of `servers` in a way the operator cares about (`register`, `set_state`,
/// `set_state_if_drain`, `request_drain`, `cancel_drain`, `remove_server`) sends
/// `pg_notify(SERVER_CHANNEL, server_id)` in the same statement, so only when a row really
/// changed and only when the write commits. [`heartbeat`] does not notify. The payload is the
/// row's `server_id` (`<namespace>/<pod>`, or a legacy bare pod name). A notification is a
/// trigger to read the table again, never the data: see [`listen`].
pub const SERVER_CHANNEL: &str = "orchestrator_servers";

/// The prefix of a line a server prints as safe to show anywhere (no value that came from a
/// Secret, no user name): the outcome of a `schema` command. The operator quotes only such a
/// line of a schema Job's log tail, never the rest of it.
pub const SAFE_LINE_PREFIX: &str = "orchestrator-outcome: ";

/// The last line of `log` marked safe to show ([`SAFE_LINE_PREFIX`]), without its prefix.
pub fn last_safe_line(log: &str) -> Option<&str> {
    log.lines()
        .rev()
        .find_map(|line| line.trim_end().strip_prefix(SAFE_LINE_PREFIX))
        .filter(|line| !line.is_empty())
}

/// Subscribes the session of `db` to [`SERVER_CHANNEL`] (`LISTEN "orchestrator_servers"`).
/// The notifications arrive on the connection itself (see
/// [`tls::Connector::connect_with_notifications`]); inside a transaction the subscription starts when it
/// commits. A listener must still read the table after subscribing and whenever its connection
/// was lost: notifications sent while nobody listened are not kept.
pub async fn listen(db: &impl GenericClient) -> Result<()> {
    db.batch_execute(&listen_statement()).await?;
    Ok(())
}

/// `LISTEN` on [`SERVER_CHANNEL`].
pub(crate) fn listen_statement() -> String {
    format!("LISTEN {}", quote_identifier(SERVER_CHANNEL))
}

/// `name` as a quoted SQL identifier (`"name"`, inner quotes doubled).
fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// States of a server row.
pub mod server_state {
    /// Registered, not yet taking work.
    pub const JOINING: &str = "joining";
    /// Taking work.
    pub const ACTIVE: &str = "active";
    /// Finishing its running jobs, taking no new ones.
    pub const DRAINING: &str = "draining";
    /// Gone after a friendly shutdown.
    pub const STOPPED: &str = "stopped";
}

/// States of a job.
pub mod job_state {
    /// Waiting to be claimed.
    pub const QUEUED: &str = "queued";
    /// Claimed by a server holding its lease.
    pub const RUNNING: &str = "running";
    /// Finished successfully.
    pub const SUCCEEDED: &str = "succeeded";
    /// Finished with an error.
    pub const FAILED: &str = "failed";
}

/// Reads the schema version; 0 when the contract's tables do not exist yet.
pub async fn schema_version(db: &impl GenericClient) -> Result<i32> {
    let exists: bool = db
        .query_one("SELECT to_regclass('schema_info') IS NOT NULL", &[])
        .await?
        .get(0);
    if !exists {
        return Ok(0);
    }
    let row = db.query_opt("SELECT version FROM schema_info", &[]).await?;
    Ok(row.map(|r| r.get(0)).unwrap_or(0))
}

/// What a server registers about itself.
#[derive(Clone, Debug)]
pub struct Registration<'a> {
    /// Server id (`<namespace>/<pod>`, see [`server_identity`]).
    pub server_id: &'a str,
    /// Server version.
    pub version: &'a str,
    /// Schema versions the server can run against.
    pub schema: SchemaRange,
}

/// Registers (or re-registers) a server as active, clearing any old drain request. Notifies
/// [`SERVER_CHANNEL`].
pub async fn register(db: &impl GenericClient, server: &Registration<'_>) -> Result<()> {
    db.execute(
        "WITH changed AS (
             INSERT INTO servers (server_id, version, schema_min, schema_max, state, heartbeat_at, drain_requested_at, running_jobs, started_at)
             VALUES ($1, $2, $3, $4, 'active', now(), NULL, 0, now())
             ON CONFLICT (server_id) DO UPDATE SET version = $2, schema_min = $3, schema_max = $4, state = 'active',
                 heartbeat_at = now(), drain_requested_at = NULL, running_jobs = 0, started_at = now()
             RETURNING server_id)
         SELECT pg_notify($5, server_id) FROM changed",
        &[
            &server.server_id,
            &server.version,
            &server.schema.min,
            &server.schema.max,
            &SERVER_CHANNEL,
        ],
    )
    .await?;
    Ok(())
}

/// Heartbeat: what the server learns back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeartbeatReply {
    /// The row still exists.
    pub registered: bool,
    /// A drain was requested.
    pub drain_requested: bool,
}

/// Records a heartbeat and the number of running jobs. Does not notify [`SERVER_CHANNEL`]: it
/// runs every 2 s per server and changes only the heartbeat's time and the job count.
pub async fn heartbeat(db: &impl GenericClient, server_id: &str, running_jobs: i32) -> Result<HeartbeatReply> {
    let row = db
        .query_opt(
            "UPDATE servers SET heartbeat_at = now(), running_jobs = $2 WHERE server_id = $1
             RETURNING drain_requested_at IS NOT NULL",
            &[&server_id, &running_jobs],
        )
        .await?;
    Ok(HeartbeatReply {
        registered: row.is_some(),
        drain_requested: row.map(|r| r.get(0)).unwrap_or(false),
    })
}

/// Sets the state of a server's row; returns the rows written: 0 when the row is gone (deleted),
/// which is not a withdrawn drain request. Notifies [`SERVER_CHANNEL`] when a row was written.
pub async fn set_state(db: &impl GenericClient, server_id: &str, state: &str) -> Result<u64> {
    // A SELECT's count is the number of rows it returned: one per row written.
    Ok(db
        .execute(
            "WITH changed AS (
                 UPDATE servers SET state = $2, heartbeat_at = now() WHERE server_id = $1
                 RETURNING server_id)
             SELECT pg_notify($3, server_id) FROM changed",
            &[&server_id, &state, &SERVER_CHANNEL],
        )
        .await?)
}

/// What [`set_state_if_drain`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateWrite {
    /// The state is written.
    Written,
    /// Nothing written: the drain request was not as required (withdrawn, or made again).
    Refused,
    /// Nothing written: the server has no row.
    NoRow,
}

/// Writes `state` into the server's row only while a drain request is pending
/// (`drain_requested` true) or only while none is (false), in one statement: a withdrawal or a
/// new request that the server's heartbeat has not reported yet is never overwritten. A server
/// ends a drain the database asked for with `stopped` only while the request still holds, and
/// takes work again after a withdrawal with `active` only while no request is pending.
/// Notifies [`SERVER_CHANNEL`] only when the state is written.
pub async fn set_state_if_drain(
    db: &impl GenericClient,
    server_id: &str,
    state: &str,
    drain_requested: bool,
) -> Result<StateWrite> {
    let row = db
        .query_opt(
            "WITH changed AS (
                 UPDATE servers SET
                     state = CASE WHEN (drain_requested_at IS NOT NULL) = $3 THEN $2 ELSE state END,
                     heartbeat_at = CASE WHEN (drain_requested_at IS NOT NULL) = $3 THEN now() ELSE heartbeat_at END
                 WHERE server_id = $1
                 RETURNING server_id, (drain_requested_at IS NOT NULL) = $3 AS written)
             SELECT written, CASE WHEN written THEN pg_notify($4, server_id) END FROM changed",
            &[&server_id, &state, &drain_requested, &SERVER_CHANNEL],
        )
        .await?;
    Ok(match row.map(|r| r.get::<_, bool>(0)) {
        Some(true) => StateWrite::Written,
        Some(false) => StateWrite::Refused,
        None => StateWrite::NoRow,
    })
}

/// Asks a server for a friendly shutdown (keeps the first request's time). True if the server
/// has a row. Notifies [`SERVER_CHANNEL`] only when no request was pending: a repeated request
/// changes nothing, and the operator's own repeats must not wake it up again.
pub async fn request_drain(db: &impl GenericClient, server_id: &str) -> Result<bool> {
    // RETURNING sees the new row only: the request is new when it holds this transaction's
    // `now()`, which a request of an earlier transaction never holds (but for one that began
    // in the same microsecond: one notification too many, harmless).
    let n = db
        .execute(
            "WITH changed AS (
                 UPDATE servers SET drain_requested_at = coalesce(drain_requested_at, now()) WHERE server_id = $1
                 RETURNING server_id, drain_requested_at = now() AS is_new)
             SELECT CASE WHEN is_new THEN pg_notify($2, server_id) END FROM changed",
            &[&server_id, &SERVER_CHANNEL],
        )
        .await?;
    Ok(n == 1)
}

/// Whether a drain is pending for `server_id` (requested and not cleared). A server that
/// restarts while its drain is pending stays out of service until the request is cleared.
pub async fn drain_pending(db: &impl GenericClient, server_id: &str) -> Result<bool> {
    let row = db
        .query_opt(
            "SELECT drain_requested_at IS NOT NULL FROM servers WHERE server_id = $1",
            &[&server_id],
        )
        .await?;
    Ok(row.is_some_and(|r| r.get(0)))
}

/// Withdraws a drain request (the server is wanted again). True if one was pending; only then
/// notifies [`SERVER_CHANNEL`].
pub async fn cancel_drain(db: &impl GenericClient, server_id: &str) -> Result<bool> {
    let n = db
        .execute(
            "WITH changed AS (
                 UPDATE servers SET drain_requested_at = NULL WHERE server_id = $1 AND drain_requested_at IS NOT NULL
                 RETURNING server_id)
             SELECT pg_notify($2, server_id) FROM changed",
            &[&server_id, &SERVER_CHANNEL],
        )
        .await?;
    Ok(n == 1)
}

/// One server as the database sees it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Member {
    /// Server id.
    pub server_id: String,
    /// Version it registered.
    pub version: String,
    /// joining, active, draining or stopped.
    pub state: String,
    /// Jobs it reported running at its last heartbeat.
    pub running_jobs: i32,
    /// Seconds since its last heartbeat, by the database clock.
    pub heartbeat_age_seconds: f64,
    /// When its last heartbeat was, in seconds since the Unix epoch, by the database clock: a
    /// value that stays put while the server is silent (an age moves with every read).
    pub heartbeat_at: f64,
    /// Seconds since a drain was requested, by the database clock (`None`: not requested).
    pub drain_requested_seconds: Option<f64>,
    /// Jobs it currently owns (running with its lease).
    pub owned_jobs: i64,
}

/// The id of a server's row: `<namespace>/<pod>`, so that clusters of the same name in different
/// namespaces that share one database never share, drain or remove each other's rows. A server
/// that knows no namespace (outside Kubernetes) uses its name alone; so did every server before
/// this rule (a *legacy* id).
pub fn server_identity(namespace: Option<&str>, name: &str) -> String {
    match namespace.filter(|n| !n.is_empty()) {
        Some(namespace) => format!("{namespace}/{name}"),
        None => name.to_string(),
    }
}

/// The pod name a row of `server_id` stands for, seen from `namespace`: `Some((pod, false))`
/// for an id of that namespace, `Some((pod, true))` for a legacy id without a namespace, `None`
/// for a row of another namespace.
pub fn row_in_namespace<'a>(namespace: &str, server_id: &'a str) -> Option<(&'a str, bool)> {
    match server_id.split_once('/') {
        Some((ns, pod)) => (ns == namespace).then_some((pod, false)),
        None => Some((server_id, true)),
    }
}

/// The columns a [`Member`] is read from (`s`: the `servers` row).
const MEMBER_COLUMNS: &str = "s.server_id, s.version, s.state, s.running_jobs,
        extract(epoch FROM now() - s.heartbeat_at)::float8,
        extract(epoch FROM now() - s.drain_requested_at)::float8,
        (SELECT count(*) FROM jobs j WHERE j.owner = s.server_id AND j.state = 'running'),
        extract(epoch FROM s.heartbeat_at)::float8";

/// A [`Member`] from a row of [`MEMBER_COLUMNS`].
fn member(r: tokio_postgres::Row) -> Member {
    Member {
        server_id: r.get(0),
        version: r.get(1),
        state: r.get(2),
        running_jobs: r.get(3),
        heartbeat_age_seconds: r.get(4),
        drain_requested_seconds: r.get(5),
        owned_jobs: r.get(6),
        heartbeat_at: r.get(7),
    }
}

/// Every registered server.
pub async fn membership(db: &impl GenericClient) -> Result<Vec<Member>> {
    let rows = db
        .query(
            &format!("SELECT {MEMBER_COLUMNS} FROM servers s ORDER BY s.server_id"),
            &[],
        )
        .await?;
    Ok(rows.into_iter().map(member).collect())
}

/// The rows a cluster in `namespace` may own: those of that namespace and the legacy ones
/// (no namespace, see [`server_identity`]). Clusters of many namespaces that share one
/// database each get only their own rows back, not the whole fleet's (the table is still
/// scanned: the per-row job count is what this saves).
pub async fn membership_in_namespace(db: &impl GenericClient, namespace: &str) -> Result<Vec<Member>> {
    let prefix = format!("{namespace}/");
    let rows = db
        .query(
            &format!(
                "SELECT {MEMBER_COLUMNS} FROM servers s
                 WHERE starts_with(s.server_id, $1) OR strpos(s.server_id, '/') = 0
                 ORDER BY s.server_id"
            ),
            &[&prefix],
        )
        .await?;
    Ok(rows.into_iter().map(member).collect())
}

/// Removes the row of a server that is gone, only if it owns no running job. True if removed;
/// only then notifies [`SERVER_CHANNEL`].
pub async fn remove_server(db: &impl GenericClient, server_id: &str) -> Result<bool> {
    let n = db
        .execute(
            "WITH changed AS (
                 DELETE FROM servers WHERE server_id = $1
                 AND NOT EXISTS (SELECT 1 FROM jobs WHERE owner = $1 AND state = 'running')
                 RETURNING server_id)
             SELECT pg_notify($2, server_id) FROM changed",
            &[&server_id, &SERVER_CHANNEL],
        )
        .await?;
    Ok(n == 1)
}

/// Kinds of job the reference server runs.
pub mod job_kind {
    /// Does nothing (throughput benchmarks).
    pub const NOOP: &str = "noop";
    /// Sleeps `ms` milliseconds (simulated work).
    pub const SLEEP: &str = "sleep";
    /// Fails with `message`.
    pub const FAIL: &str = "fail";
    /// All kinds.
    pub const ALL: [&str; 3] = [NOOP, SLEEP, FAIL];
}

/// Validates a job before it is stored: a known kind and an object payload.
pub fn validate_job(kind: &str, payload: &serde_json::Value) -> Result<()> {
    if !job_kind::ALL.contains(&kind) {
        return Err(ContractError::InvalidJob(format!(
            "unknown kind {kind:?}; known kinds: {}",
            job_kind::ALL.join(", ")
        )));
    }
    if !payload.is_object() {
        return Err(ContractError::InvalidJob("payload must be a JSON object".into()));
    }
    if kind == job_kind::SLEEP {
        match payload.get("ms").and_then(|v| v.as_u64()) {
            Some(ms) if ms <= 3_600_000 => {}
            _ => {
                return Err(ContractError::InvalidJob(
                    "sleep needs \"ms\": an integer from 0 to 3600000".into(),
                ));
            }
        }
    }
    Ok(())
}

/// Stores a new job; returns its id.
pub async fn submit_job(db: &impl GenericClient, kind: &str, payload: &serde_json::Value) -> Result<i64> {
    validate_job(kind, payload)?;
    let row = db
        .query_one(
            "INSERT INTO jobs (kind, payload) VALUES ($1, $2) RETURNING id",
            &[&kind, payload],
        )
        .await?;
    Ok(row.get(0))
}

/// A claimed job.
#[derive(Clone, Debug, PartialEq)]
pub struct ClaimedJob {
    /// Job id.
    pub id: i64,
    /// Kind of work.
    pub kind: String,
    /// Parameters.
    pub payload: serde_json::Value,
    /// Attempt number (1 for the first).
    pub attempt: i32,
}

/// Claims the oldest claimable job: queued, or running under an expired lease (its server
/// died). Concurrent claimers skip each other's locked rows. Only a registered, active server
/// without a drain request can claim: the contract itself stops a draining server's claims.
///
/// This claim has no attempt limit; [`claim_job_bounded`] dead-letters poison jobs.
pub async fn claim_job(db: &impl GenericClient, server_id: &str, lease: Duration) -> Result<Option<ClaimedJob>> {
    // Without a limit nothing is dead-lettered: every claim is a job to run.
    Ok(match claim_next(db, server_id, lease, None).await? {
        Some(Claim::Run(job)) => Some(job),
        Some(Claim::DeadLettered { .. }) | None => None,
    })
}

/// What [`claim_job_bounded`] did with the oldest claimable job.
#[derive(Clone, Debug, PartialEq)]
pub enum Claim {
    /// The job is the caller's to run, under its lease.
    Run(ClaimedJob),
    /// The job's lease had expired after `attempts` counted claims, as many as the limit
    /// allows: it is now `failed` with the result `{"error": "dead-lettered after N attempts",
    /// "deadLettered": true}`, owner and lease cleared, and nobody runs it again. The caller
    /// claims again for work.
    DeadLettered {
        /// Job id.
        id: i64,
        /// Counted claims it had: each ended by an expired lease (a claim that was handed back
        /// or released is not counted, see [`hand_back_jobs`] and [`release_job`]).
        attempts: i32,
    },
}

/// Like [`claim_job`], but a job whose lease expired (its server died or lost it) after
/// `max_attempts` counted claims or more is dead-lettered instead of run again: a job that
/// keeps crashing servers stops. Queued jobs (new, handed back or released) are always run, and
/// claims that were handed back or released do not count (`attempts` went down again).
pub async fn claim_job_bounded(
    db: &impl GenericClient,
    server_id: &str,
    lease: Duration,
    max_attempts: i32,
) -> Result<Option<Claim>> {
    claim_next(db, server_id, lease, Some(max_attempts)).await
}

async fn claim_next(
    db: &impl GenericClient,
    server_id: &str,
    lease: Duration,
    max_attempts: Option<i32>,
) -> Result<Option<Claim>> {
    let lease_seconds = lease.as_secs_f64();
    let row = db
        .query_opt(
            "WITH next AS (
                 SELECT id, (state = 'running' AND $3::int IS NOT NULL AND attempts >= $3::int) AS dead
                 FROM jobs
                 WHERE (state = 'queued' OR (state = 'running' AND lease_until < now()))
                   AND EXISTS (SELECT 1 FROM servers s WHERE s.server_id = $1
                               AND s.state = 'active' AND s.drain_requested_at IS NULL)
                 ORDER BY id FOR UPDATE SKIP LOCKED LIMIT 1)
             UPDATE jobs j SET
                 state = CASE WHEN next.dead THEN 'failed' ELSE 'running' END,
                 owner = CASE WHEN next.dead THEN NULL ELSE $1 END,
                 lease_until = CASE WHEN next.dead THEN NULL ELSE now() + make_interval(secs => $2) END,
                 attempts = CASE WHEN next.dead THEN j.attempts ELSE j.attempts + 1 END,
                 started_at = coalesce(j.started_at, now()),
                 finished_at = CASE WHEN next.dead THEN now() ELSE j.finished_at END,
                 result = CASE WHEN next.dead
                     THEN jsonb_build_object('error', format('dead-lettered after %s attempts', j.attempts),
                                             'deadLettered', true)
                     ELSE j.result END
             FROM next WHERE j.id = next.id
             RETURNING j.id, j.kind, j.payload, j.attempts, next.dead",
            &[&server_id, &lease_seconds, &max_attempts],
        )
        .await?;
    Ok(row.map(|r| {
        if r.get(4) {
            Claim::DeadLettered {
                id: r.get(0),
                attempts: r.get(3),
            }
        } else {
            Claim::Run(ClaimedJob {
                id: r.get(0),
                kind: r.get(1),
                payload: r.get(2),
                attempt: r.get(3),
            })
        }
    }))
}

/// Extends the leases of the server's running jobs; returns how many it still owns.
pub async fn renew_leases(db: &impl GenericClient, server_id: &str, ids: &[i64], lease: Duration) -> Result<u64> {
    Ok(renew_owned_leases(db, server_id, ids, lease).await?.len() as u64)
}

/// Extends the leases of the server's running jobs; returns the ids among `ids` that it still
/// owns (their leases now end `lease` after the statement's `now()`). A job missing from the
/// answer is no longer the server's: it finished, was handed back, or its lease expired and
/// another server claimed it. The server must stop running it at once.
pub async fn renew_owned_leases(
    db: &impl GenericClient,
    server_id: &str,
    ids: &[i64],
    lease: Duration,
) -> Result<Vec<i64>> {
    let rows = db
        .query(
            "UPDATE jobs SET lease_until = now() + make_interval(secs => $3)
             WHERE id = ANY($2) AND owner = $1 AND state = 'running'
             RETURNING id",
            &[&server_id, &ids, &lease.as_secs_f64()],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Records that a server ran a job to its end (whatever the outcome), then finishes the job
/// if the server still owns it. False when the lease was lost to another server.
///
/// Safe to retry: a try whose COMMIT went through but whose answer was lost left the
/// execution row of `(job, server, attempt)`, which a retry does not write again; and a job
/// already finished by that row (the same transaction wrote both, so they share `finished_at`)
/// counts as finished by this call. No schema change: the insert checks for the row itself,
/// which is safe since only the server of the attempt writes it, one try at a time.
pub async fn complete_job(
    db: &mut Client,
    server_id: &str,
    job: &ClaimedJob,
    succeeded: bool,
    result: &serde_json::Value,
) -> Result<bool> {
    let tx = db.transaction().await?;
    let recorded = tx
        .execute(
            "INSERT INTO job_executions (job_id, server_id, attempt, finished_at)
             SELECT $1::bigint, $2::text, $3::integer, now()
             WHERE NOT EXISTS (SELECT 1 FROM job_executions
                               WHERE job_id = $1 AND server_id = $2 AND attempt = $3)",
            &[&job.id, &server_id, &job.attempt],
        )
        .await?;
    let state = if succeeded {
        job_state::SUCCEEDED
    } else {
        job_state::FAILED
    };
    let n = tx
        .execute(
            "UPDATE jobs SET state = $3, result = $4, finished_at = now(), owner = NULL, lease_until = NULL
             WHERE id = $1 AND owner = $2 AND state = 'running'",
            &[&job.id, &server_id, &state, result],
        )
        .await?;
    let finished = if n == 1 {
        true
    } else if recorded == 0 {
        // A retry: did the first try, whose answer was lost, finish the job?
        tx.query_one(
            "SELECT EXISTS (SELECT 1 FROM jobs j JOIN job_executions e ON e.job_id = j.id
                            WHERE j.id = $1 AND e.server_id = $2 AND e.attempt = $3
                              AND j.state IN ('succeeded', 'failed') AND j.finished_at = e.finished_at)",
            &[&job.id, &server_id, &job.attempt],
        )
        .await?
        .get(0)
    } else {
        false
    };
    tx.commit().await?;
    Ok(finished)
}

/// Hands back every job the server still runs: owner and lease cleared, queued again, and its
/// claim no longer counted toward the dead-letter limit (`attempts - 1`): a hand-back is not a
/// crash.
pub async fn hand_back_jobs(db: &impl GenericClient, server_id: &str) -> Result<u64> {
    Ok(db
        .execute(
            "UPDATE jobs SET state = 'queued', owner = NULL, lease_until = NULL, attempts = greatest(attempts - 1, 0)
             WHERE owner = $1 AND state = 'running'",
            &[&server_id],
        )
        .await?)
}

/// Releases one job that the server stopped running by itself (its local lease deadline passed
/// while the database could not be reached, or its completion could not be recorded in time):
/// queued again at once instead of waiting for its lease to expire, its claim not counted
/// toward the dead-letter limit. Only while the row still is the server's claim `attempt` of
/// the job: a job claimed again since (by anyone, this server too) is left alone. True if
/// released.
pub async fn release_job(db: &impl GenericClient, server_id: &str, id: i64, attempt: i32) -> Result<bool> {
    let n = db
        .execute(
            "UPDATE jobs SET state = 'queued', owner = NULL, lease_until = NULL, attempts = greatest(attempts - 1, 0)
             WHERE id = $1 AND owner = $2 AND state = 'running' AND attempts = $3",
            &[&id, &server_id, &attempt],
        )
        .await?;
    Ok(n == 1)
}

/// Jobs waiting to be claimed.
pub async fn queue_depth(db: &impl GenericClient) -> Result<i64> {
    Ok(db
        .query_one("SELECT count(*) FROM jobs WHERE state = 'queued'", &[])
        .await?
        .get(0))
}

/// The work waiting in and running on a database, and the servers taking it: the signal of
/// queue-depth autoscaling. Read with [`work`] in one statement.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Work {
    /// Jobs a server can claim now: queued, or running under an expired lease (its server
    /// died).
    pub claimable: i64,
    /// Jobs running under a live lease.
    pub running: i64,
    /// Servers taking work: active, no drain requested, a heartbeat younger than
    /// [`SERVING_HEARTBEAT_SECONDS`].
    pub serving: i64,
}

/// A server's heartbeat younger than this counts it as taking work in [`Work::serving`] (the
/// same freshness that makes a server joined).
pub const SERVING_HEARTBEAT_SECONDS: f64 = 10.0;

/// Reads the [`Work`] of the database in one statement: the servers taking work, and the
/// claimable and running jobs, each counted up to `(servers + serving) * jobs_per_server + 1`
/// rows only (over the claimable jobs' partial index), so that a backlog of millions costs what
/// a backlog of a few servers' worth does. A caller that scales to at most `servers` servers
/// of `jobs_per_server` jobs each learns all it needs: "more than that".
pub async fn work(db: &impl GenericClient, servers: i64, jobs_per_server: i64) -> Result<Work> {
    let row = db
        .query_one(
            "WITH serving AS (
                 SELECT count(*) AS n FROM servers WHERE state = 'active' AND drain_requested_at IS NULL
                     AND heartbeat_at > now() - make_interval(secs => $1)),
             cap AS (SELECT (greatest($2::bigint, 0) + n) * greatest($3::bigint, 1) + 1 AS n FROM serving)
             SELECT
                 (SELECT count(*) FROM (SELECT 1 FROM jobs WHERE state IN ('queued', 'running')
                      AND (state = 'queued' OR lease_until < now()) LIMIT (SELECT n FROM cap)) claimable),
                 (SELECT count(*) FROM (SELECT 1 FROM jobs WHERE state = 'running'
                      AND lease_until >= now() LIMIT (SELECT n FROM cap)) running),
                 (SELECT n FROM serving)",
            &[&SERVING_HEARTBEAT_SECONDS, &servers, &jobs_per_server],
        )
        .await?;
    Ok(Work {
        claimable: row.get(0),
        running: row.get(1),
        serving: row.get(2),
    })
}

/// How the jobs one server finished went over a window: the evidence a canary is judged by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Outcomes {
    /// Jobs it finished that succeeded.
    pub succeeded: i64,
    /// Jobs it finished that failed.
    pub failed: i64,
    /// Median milliseconds its jobs ran, from their claim to their end (a job run more than
    /// once counts from its first claim); `None` without any.
    pub run_p50_ms: Option<i64>,
}

/// The [`Outcomes`] of two groups of servers (by row id): the jobs each group finished since
/// `since`, `[first, second]`, each counted for the server that ran it to its end (the execution
/// sharing the job's `finished_at`: the same transaction wrote both) and only while that server
/// ran as its current incarnation (after its row's `started_at`, on the database's clock, so a
/// pod name reused by a replacement never brings its predecessor's jobs). The medians are of
/// each group's jobs, not of its servers' medians.
///
/// A sample bounded without an index on `finished_at`: jobs are claimed in id order (priority
/// aside), so the jobs finishing lately are near the oldest unfinished one; only the ids within
/// `recent` of it are read, over the primary key, and their executions over
/// `job_executions_job`. Both groups are sampled alike, so what it leaves out (a long job, a
/// high-priority one far ahead) biases neither.
pub async fn outcomes(
    db: &impl GenericClient,
    since: std::time::SystemTime,
    recent: i64,
    groups: [&[String]; 2],
) -> Result<[Outcomes; 2]> {
    let [first, second] = groups;
    let rows = db
        .query(
            "WITH frontier AS (
                 SELECT coalesce(least((SELECT min(id) FROM jobs WHERE state IN ('queued', 'running')),
                                       (SELECT max(id) FROM jobs)), 0) AS id)
             SELECT CASE WHEN e.server_id = ANY($3) THEN 0 ELSE 1 END AS side,
                    count(*) FILTER (WHERE j.state = 'succeeded'),
                    count(*) FILTER (WHERE j.state = 'failed'),
                    (percentile_disc(0.5) WITHIN GROUP
                        (ORDER BY extract(epoch FROM j.finished_at - j.started_at)) * 1000)::bigint
             FROM frontier f
             JOIN jobs j ON j.id > f.id - greatest($2::bigint, 0) AND j.id <= f.id + greatest($2::bigint, 0)
             JOIN job_executions e ON e.job_id = j.id AND e.finished_at = j.finished_at
             JOIN servers s ON s.server_id = e.server_id AND e.finished_at >= s.started_at
             WHERE j.state IN ('succeeded', 'failed')
               AND j.finished_at > $1
               AND (e.server_id = ANY($3) OR e.server_id = ANY($4))
             GROUP BY side",
            &[&since, &recent, &first, &second],
        )
        .await?;
    let mut seen = [Outcomes::default(); 2];
    for row in &rows {
        let side: i32 = row.get(0);
        seen[usize::from(side != 0)] = Outcomes {
            succeeded: row.get(1),
            failed: row.get(2),
            run_p50_ms: row.get(3),
        };
    }
    Ok(seen)
}

/// A job as `GET /jobs/{id}` shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct JobView {
    /// Job id.
    pub id: i64,
    /// Kind of work.
    pub kind: String,
    /// queued, running, succeeded or failed.
    pub state: String,
    /// Server running or last running it.
    pub owner: Option<String>,
    /// Counted claims so far (hand-backs and releases take theirs back).
    pub attempts: i32,
    /// Outcome, once finished.
    pub result: Option<serde_json::Value>,
}

/// Reads one job.
pub async fn get_job(db: &impl GenericClient, id: i64) -> Result<Option<JobView>> {
    let row = db
        .query_opt(
            "SELECT id, kind, state, owner, attempts, result FROM jobs WHERE id = $1",
            &[&id],
        )
        .await?;
    Ok(row.map(|r| JobView {
        id: r.get(0),
        kind: r.get(1),
        state: r.get(2),
        owner: r.get(3),
        attempts: r.get(4),
        result: r.get(5),
    }))
}

/// Outcome counts of a set of jobs, for the load generator's report.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Outcome {
    /// Jobs in the set.
    pub submitted: i64,
    /// Finished successfully.
    pub completed: i64,
    /// Finished with an error.
    pub failed: i64,
    /// Not finished (queued or running).
    pub unfinished: i64,
    /// Jobs that servers ran to the end more than once.
    pub executed_more_than_once: i64,
    /// Extra executions over all jobs (sum of executions beyond the first).
    pub extra_executions: i64,
}

/// Counts the outcome of the jobs whose payload has `"batch": batch`.
pub async fn batch_outcome(db: &impl GenericClient, batch: &str) -> Result<Outcome> {
    let row = db
        .query_one(
            "WITH b AS (SELECT id, state FROM jobs WHERE payload->>'batch' = $1),
                  e AS (SELECT job_id, count(*) AS n FROM job_executions WHERE job_id IN (SELECT id FROM b) GROUP BY job_id)
             SELECT (SELECT count(*) FROM b),
                    (SELECT count(*) FROM b WHERE state = 'succeeded'),
                    (SELECT count(*) FROM b WHERE state = 'failed'),
                    (SELECT count(*) FROM b WHERE state IN ('queued', 'running')),
                    (SELECT count(*) FROM e WHERE n > 1),
                    (SELECT coalesce(sum(n - 1), 0)::bigint FROM e)",
            &[&batch],
        )
        .await?;
    Ok(Outcome {
        submitted: row.get(0),
        completed: row.get(1),
        failed: row.get(2),
        unfinished: row.get(3),
        executed_more_than_once: row.get(4),
        extra_executions: row.get(5),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_told_apart_by_namespace_and_legacy_ids_are_kept() {
        assert_eq!(server_identity(Some("automation"), "prod-0"), "automation/prod-0");
        assert_eq!(server_identity(Some(""), "prod-0"), "prod-0");
        assert_eq!(server_identity(None, "prod-0"), "prod-0");
        assert_eq!(
            row_in_namespace("automation", "automation/prod-0"),
            Some(("prod-0", false))
        );
        assert_eq!(row_in_namespace("automation", "staging/prod-0"), None);
        assert_eq!(row_in_namespace("automation", "prod-0"), Some(("prod-0", true)));
    }
}
