//! Database connections: bounded pools, operations under a time limit whose connections are
//! discarded when they overrun, and retries with capped back-off.
//!
//! Messages about connections name the database, host and port but never the login or the
//! password: the login is replaced by `<user>` where the database quotes it.

use std::time::Duration;

use anyhow::Context;
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime, TimeoutType};
use orchestrator_contract::ContractError;
use orchestrator_contract::tls::{ConnectError, Connector};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Notification};

use crate::config::DatabaseSettings;

/// Longest wait for a free connection of the pool.
const WAIT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest time to open a connection: TCP (within [`crate::config::CONNECT_TIMEOUT`]), TLS
/// and login.
const CREATE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest time to check an idle connection before reuse (a round trip, see
/// [`RecyclingMethod::Verified`]); one that does not answer in time is discarded.
const RECYCLE_TIMEOUT: Duration = Duration::from_secs(1);
/// Time an operation is given past its pool's `statement_timeout`, so that the database
/// cancels a slow statement (the connection stays usable) before the client gives up on it
/// (the connection is discarded).
const SLACK: Duration = Duration::from_secs(1);
/// Time limit of an operation of a pool without a `statement_timeout`.
const DEFAULT_LIMIT: Duration = Duration::from_secs(30);
/// Time the first try of [`retry`] gets even when the deadline is (nearly) over.
pub(crate) const FIRST_TRY: Duration = Duration::from_secs(3);

/// Where the process connects, for messages: database, host and port, no login.
fn target(settings: &DatabaseSettings) -> String {
    format!(
        "cannot connect to database {:?} on {}:{}",
        settings.name, settings.host, settings.port
    )
}

/// `text` with the login, where the database quotes it (`for user "name"`), replaced.
fn redacted(settings: &DatabaseSettings, text: &str) -> String {
    if settings.user.is_empty() {
        return text.to_string();
    }
    text.replace(&format!("\"{}\"", settings.user), "\"<user>\"")
}

/// An error with its causes, `error: cause: cause`.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

/// The connector of `settings`' `sslmode`, channel binding and CA.
fn connector(settings: &DatabaseSettings) -> Result<Connector, ConnectError> {
    let ca = settings.ca_pem.as_ref().map(|pem| pem.as_bytes());
    Connector::with_binding(settings.sslmode, settings.channel_binding, ca)
}

/// Opens one connection (for one-shot commands); its driver task runs in the background.
/// Errors say where it failed (database, host, port) but never show the login or password.
pub(crate) async fn connect(settings: &DatabaseSettings) -> anyhow::Result<Client> {
    connector(settings)
        .with_context(|| target(settings))?
        .connect(&settings.pg_config())
        .await
        .map_err(|e| anyhow::anyhow!("{}: {}", target(settings), redacted(settings, &chain(&e))))
}

/// Whether the database refused a connection for now rather than for good: SQLSTATE 53300
/// (`too many clients already`, `remaining connection slots are reserved`, `too many
/// connections for role`) or 57P03 (`the database system is starting up` or shutting down).
fn is_refusal(error: &tokio_postgres::Error) -> bool {
    error
        .code()
        .is_some_and(|code| *code == SqlState::TOO_MANY_CONNECTIONS || *code == SqlState::CANNOT_CONNECT_NOW)
}

/// No connection could be had from the pool.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub(crate) struct Unavailable {
    /// The database refused the connection for now ([`is_refusal`]): waiting helps.
    pub(crate) refused: bool,
    message: String,
}

/// How a pool is made.
#[derive(Clone, Debug)]
pub(crate) struct PoolOptions {
    /// Most connections open at once.
    pub(crate) max_connections: usize,
    /// The name its connections show in `pg_stat_activity`.
    pub(crate) application_name: &'static str,
    /// The `statement_timeout` of its sessions (`None`: the database's default); its
    /// operations' default time limit is this plus [`SLACK`].
    pub(crate) statement_timeout: Option<Duration>,
    /// Where its connections send the server-row notifications they `LISTEN` for (`None`:
    /// they do not listen).
    pub(crate) notifications: Option<mpsc::UnboundedSender<Notification>>,
}

/// The name the connections of a server's pool, and of the load generator's, show in
/// `pg_stat_activity`.
pub(crate) const APPLICATION_NAME: &str = "orchestrator-server";
/// The name the heartbeat's own connection shows in `pg_stat_activity`.
pub(crate) const HEARTBEAT_APPLICATION_NAME: &str = "orchestrator-server-heartbeat";

/// An operation that did not complete within its time limit; its connection was discarded.
#[derive(Debug, thiserror::Error)]
#[error("the database did not answer within {0:?}")]
pub(crate) struct TimedOut(pub(crate) Duration);

/// A connection taken from the pool for one operation. [`Checkout::release`] returns it to the
/// pool once the operation completed; dropped before that (the operation timed out, or its
/// caller stopped waiting), it is closed and discarded, since it may hang or still carry the
/// answer of an abandoned statement.
struct Checkout(Option<Object>);

impl Checkout {
    /// The connection's client.
    fn client(&mut self) -> &mut Client {
        self.0.as_mut().expect("a checkout holds its connection until released")
    }

    /// Returns the connection to the pool (checked again before its next use).
    fn release(mut self) {
        drop(self.0.take());
    }
}

impl Drop for Checkout {
    fn drop(&mut self) {
        if let Some(object) = self.0.take() {
            tracing::warn!("a database operation did not complete: its connection is discarded");
            // Out of the pool for good; dropping the client closes the connection.
            drop(Object::take(object));
        }
    }
}

/// A connection pool: at most [`PoolOptions::max_connections`] connections, opened when
/// needed, checked with a round trip before reuse, dropped when closed (a database restart) or
/// unanswered, and opened again on the next use.
#[derive(Clone)]
pub(crate) struct Database {
    pool: Pool,
    settings: DatabaseSettings,
    options: PoolOptions,
}

impl Database {
    /// Makes the pool; connects nothing yet. Fails when the TLS settings (CA) are unusable.
    pub(crate) fn new(settings: &DatabaseSettings, options: PoolOptions) -> anyhow::Result<Self> {
        let connector = connector(settings).with_context(|| target(settings))?;
        let mut config = settings.pg_config();
        config.application_name(options.application_name);
        if let Some(timeout) = options.statement_timeout {
            config.options(format!("-c statement_timeout={}", timeout.as_millis().max(1)));
        }
        // `Verified` (a round trip before reuse) keeps a listening connection's `LISTEN`;
        // `Clean` would run `UNLISTEN *` on every recycle and silence it.
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Verified,
        };
        let manager = match &options.notifications {
            Some(sink) => Manager::from_connect(config, connector.listening(sink.clone()), manager_config),
            None => Manager::from_connect(config, connector, manager_config),
        };
        let pool = Pool::builder(manager)
            .max_size(options.max_connections)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(WAIT_TIMEOUT))
            .create_timeout(Some(CREATE_TIMEOUT))
            .recycle_timeout(Some(RECYCLE_TIMEOUT))
            .build()
            .context("cannot build the connection pool")?;
        Ok(Self {
            pool,
            settings: settings.clone(),
            options,
        })
    }

    /// The time limit of [`Database::run`]: the pool's `statement_timeout` plus [`SLACK`].
    pub(crate) fn limit(&self) -> Duration {
        self.options
            .statement_timeout
            .map_or(DEFAULT_LIMIT, |timeout| timeout + SLACK)
    }

    /// Runs `op` on a connection of the pool within [`Database::limit`] (waiting for the
    /// connection included); see [`Database::run_within`].
    pub(crate) async fn run<T>(
        &self,
        op: impl AsyncFnOnce(&mut Client) -> Result<T, ContractError>,
    ) -> anyhow::Result<T> {
        self.run_within(self.limit(), op).await
    }

    /// Runs `op` on a connection of the pool within `limit` (waiting for the connection
    /// included). A connection whose operation does not complete, because it overran `limit`
    /// or because the caller stopped waiting, is closed and discarded instead of going back to
    /// the pool; an operation that overran fails with [`TimedOut`].
    pub(crate) async fn run_within<T>(
        &self,
        limit: Duration,
        op: impl AsyncFnOnce(&mut Client) -> Result<T, ContractError>,
    ) -> anyhow::Result<T> {
        let deadline = Instant::now() + limit;
        let connection = match tokio::time::timeout_at(deadline, self.get()).await {
            Ok(connection) => connection?,
            Err(_) => return Err(TimedOut(limit).into()),
        };
        self.run_on(connection, limit, op).await
    }

    /// Runs `op` on `connection` (one of this pool's) within `limit`, like
    /// [`Database::run_within`].
    pub(crate) async fn run_on<T>(
        &self,
        connection: Object,
        limit: Duration,
        op: impl AsyncFnOnce(&mut Client) -> Result<T, ContractError>,
    ) -> anyhow::Result<T> {
        let mut checkout = Checkout(Some(connection));
        let done = tokio::time::timeout(limit, op(checkout.client())).await;
        match done {
            Ok(result) => {
                checkout.release();
                Ok(result?)
            }
            // The checkout, dropped unreleased, discards the connection.
            Err(_) => Err(TimedOut(limit).into()),
        }
    }

    /// A connection of the pool (returned to it when dropped).
    pub(crate) async fn get(&self) -> Result<Object, Unavailable> {
        self.pool.get().await.map_err(|error| {
            let (refused, cause) = match error {
                PoolError::Backend(e) => (is_refusal(&e), chain(&ConnectError::from_connect(e))),
                PoolError::Timeout(TimeoutType::Wait) => (
                    false,
                    format!(
                        "no free connection within {WAIT_TIMEOUT:?} (all {} in use)",
                        self.options.max_connections
                    ),
                ),
                PoolError::Timeout(_) => (false, format!("no connection within {CREATE_TIMEOUT:?}")),
                other => (false, other.to_string()),
            };
            Unavailable {
                refused,
                message: format!("{}: {}", target(&self.settings), redacted(&self.settings, &cause)),
            }
        })
    }

    /// A connection, waiting out refusals ([`is_refusal`]: too many clients, starting up) with
    /// capped back-off and a warning each time; any other failure is returned at once.
    pub(crate) async fn get_waiting_out_refusals(&self) -> anyhow::Result<Object> {
        let mut backoff = Backoff::default();
        loop {
            match self.get().await {
                Ok(db) => return Ok(db),
                Err(error) if error.refused => {
                    let pause = backoff.pause();
                    tracing::warn!(%error, retry_in = ?pause, "the database refused a connection; waiting");
                    tokio::time::sleep(pause).await;
                }
                Err(error) => return Err(error.into()),
            }
        }
    }

    /// Connections open now (idle or in use).
    pub(crate) fn open_connections(&self) -> usize {
        self.pool.status().size
    }
}

/// Capped exponential back-off between retries: 0.2 s, doubling, at most 2 s.
#[derive(Debug)]
pub(crate) struct Backoff {
    next: Duration,
}

impl Backoff {
    /// The first pause.
    const FIRST: Duration = Duration::from_millis(200);
    /// The longest pause.
    const CAP: Duration = Duration::from_secs(2);

    /// The pause before the next try.
    pub(crate) fn pause(&mut self) -> Duration {
        let pause = self.next;
        self.next = (pause * 2).min(Self::CAP);
        pause
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self { next: Self::FIRST }
    }
}

/// Runs `op` until it succeeds, pausing with [`Backoff`] between tries and counting each
/// failure in `retries`, while `deadline()` gives a time still ahead (`None`: no longer worth
/// trying). The first try is always made when `deadline()` gives a time, and gets at least
/// [`FIRST_TRY`] even when that time is (nearly) over; any later try still running at the
/// deadline is cut off. Returns the last error once out of time.
pub(crate) async fn retry<T, F>(
    what: &str,
    retries: &Counter,
    mut deadline: impl FnMut() -> Option<Instant>,
    mut op: impl FnMut() -> F,
) -> anyhow::Result<T>
where
    F: Future<Output = anyhow::Result<T>>,
{
    let mut backoff = Backoff::default();
    let mut last = None;
    let mut first = true;
    while let Some(until) = deadline() {
        let until = if first {
            until.max(Instant::now() + FIRST_TRY)
        } else if until > Instant::now() {
            until
        } else {
            break;
        };
        first = false;
        let error = match tokio::time::timeout_at(until, op()).await {
            Ok(Ok(done)) => return Ok(done),
            Ok(Err(error)) => error,
            Err(_) => anyhow::anyhow!("no answer in time"),
        };
        retries.inc();
        let pause = backoff.pause();
        tracing::warn!(error = format!("{error:#}"), retry_in = ?pause, "{what} failed; retrying");
        last = Some(error);
        tokio::time::sleep_until(until.min(Instant::now() + pause)).await;
    }
    Err(last
        .unwrap_or_else(|| anyhow::anyhow!("no time left"))
        .context(format!("gave up on {what}")))
}

/// Runs `op` until it succeeds, pausing with [`Backoff`] between tries and counting each
/// failure in `retries`, without end: for a write the server cannot go on without, whose
/// caller races it against what may make it moot (a signal).
pub(crate) async fn persist<T, F>(what: &str, retries: &Counter, mut op: impl FnMut() -> F) -> T
where
    F: Future<Output = anyhow::Result<T>>,
{
    let mut backoff = Backoff::default();
    loop {
        match op().await {
            Ok(done) => return done,
            Err(error) => {
                retries.inc();
                let pause = backoff.pause();
                tracing::warn!(error = format!("{error:#}"), retry_in = ?pause, "{what} failed; retrying");
                tokio::time::sleep(pause).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_retry_past_its_deadline_still_tries_once() {
        let retries = Counter::default();
        let tries = AtomicU32::new(0);
        let over = Instant::now() - Duration::from_secs(1);
        let done = retry(
            "recording the state stopped",
            &retries,
            || Some(over),
            || async {
                tries.fetch_add(1, Ordering::SeqCst);
                // Slower than the deadline allows, within the first try's own time.
                tokio::time::sleep(FIRST_TRY / 2).await;
                anyhow::Ok(7)
            },
        )
        .await;
        assert_eq!(done.unwrap(), 7);
        assert_eq!(tries.load(Ordering::SeqCst), 1);

        let failed: anyhow::Result<()> = retry(
            "a write",
            &retries,
            || Some(over),
            || async {
                tries.fetch_add(1, Ordering::SeqCst);
                anyhow::bail!("refused")
            },
        )
        .await;
        assert!(format!("{:#}", failed.unwrap_err()).contains("refused"));
        assert_eq!(tries.load(Ordering::SeqCst), 2, "one try, no more past the deadline");
        assert_eq!(retries.get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_with_no_deadline_makes_no_try() {
        let retries = Counter::default();
        let tries = AtomicU32::new(0);
        let done = retry(
            "lost",
            &retries,
            || None,
            || async {
                tries.fetch_add(1, Ordering::SeqCst);
                anyhow::Ok(())
            },
        )
        .await;
        assert!(done.is_err());
        assert_eq!(tries.load(Ordering::SeqCst), 0, "a lost lease is not worth a try");
    }
}
