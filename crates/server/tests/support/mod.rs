//! Harness of the server tests: a real PostgreSQL, and `orchestrator-server` processes with
//! their own loopback address.
#![allow(dead_code)]

use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use orchestrator_contract::{self as contract, env};
use testing_postgres::TestPostgres;
use tokio::process::{Child, Command};
use tokio_postgres::{Client, NoTls};

static NEXT_IP: AtomicU32 = AtomicU32::new(2);

/// A fresh loopback address for one server.
pub(crate) fn next_ip() -> String {
    let n = NEXT_IP.fetch_add(1, Ordering::SeqCst) + (std::process::id() % 200) * 256;
    format!("127.3.{}.{}", n / 256 % 256, n % 256)
}

/// Connects as the application user.
pub(crate) async fn connect(pg: &TestPostgres) -> Client {
    let (client, connection) = tokio_postgres::connect(&pg.url(), NoTls)
        .await
        .expect("connect to the test database");
    tokio::spawn(connection);
    client
}

/// A database at the latest schema.
pub(crate) async fn migrated() -> (TestPostgres, Client) {
    let pg = TestPostgres::start();
    let db = migrate(&pg).await;
    (pg, db)
}

/// Migrates `pg` to the latest schema; a connection to it.
pub(crate) async fn migrate(pg: &TestPostgres) -> Client {
    let mut db = connect(pg).await;
    contract::migrations::migrate(&mut db, contract::LATEST_SCHEMA, false)
        .await
        .unwrap();
    db
}

/// The server binary with the database settings of `pg`.
pub(crate) fn server_command(pg: &TestPostgres) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_orchestrator-server"));
    command
        .envs(pg.env())
        .env(env::RUST_LOG, "info")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    command
}

/// Runs `orchestrator-server ARGS` to completion: exit status, stdout and stderr.
pub(crate) async fn run_cli(pg: &TestPostgres, args: &[&str], env: &[(&str, &str)]) -> (ExitStatus, String, String) {
    let output = server_command(pg)
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .await
        .unwrap();
    (
        output.status,
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A running server process.
pub(crate) struct Server {
    /// Its id in the database.
    pub(crate) id: String,
    /// Its address.
    pub(crate) ip: String,
    /// The process.
    pub(crate) child: Child,
    log: std::path::PathBuf,
}

/// Options of a test server.
pub(crate) struct ServerOptions {
    /// Concurrent jobs.
    pub(crate) workers: u32,
    /// Friendly-shutdown limit.
    pub(crate) drain_timeout_seconds: u32,
    /// Job lease.
    pub(crate) lease_ms: u32,
    /// Version (selects the schema it needs).
    pub(crate) version: &'static str,
    /// More environment, set last (overrides the rest).
    pub(crate) env: Vec<(&'static str, String)>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            workers: 4,
            drain_timeout_seconds: 30,
            lease_ms: 3000,
            version: "2.0.0",
            env: Vec::new(),
        }
    }
}

impl Server {
    /// Starts server `id`; does not wait for it to be ready.
    pub(crate) fn spawn(pg: &TestPostgres, id: &str, options: &ServerOptions) -> Self {
        let ip = next_ip();
        let log = pg.dir().join(format!("{id}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let child = server_command(pg)
            .arg("serve")
            .env(env::SERVER_ID, id)
            .env(env::SERVER_VERSION, options.version)
            .env(env::POD_IP, &ip)
            .env(env::WORKERS, options.workers.to_string())
            .env(env::DRAIN_TIMEOUT_SECONDS, options.drain_timeout_seconds.to_string())
            .env(env::LEASE_MILLISECONDS, options.lease_ms.to_string())
            .env(env::HEARTBEAT_MILLISECONDS, "300")
            .env(env::IDLE_POLL_MILLISECONDS, "20")
            .envs(options.env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::from(file.try_clone().unwrap()))
            .stderr(Stdio::from(file))
            .spawn()
            .unwrap();
        Self {
            id: id.to_string(),
            ip,
            child,
            log,
        }
    }

    /// Starts server `id` and waits until `/readyz` answers 200.
    pub(crate) async fn start(pg: &TestPostgres, id: &str, options: &ServerOptions) -> Self {
        let mut server = Self::spawn(pg, id, options);
        server.wait_ready(Duration::from_secs(20)).await;
        server
    }

    /// Waits until `/readyz` answers 200.
    pub(crate) async fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(r) = reqwest::get(self.url("/readyz")).await
                && r.status().is_success()
            {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("server {} exited with {status} before ready:\n{}", self.id, self.log());
            }
            assert!(
                Instant::now() < deadline,
                "server {} not ready within {timeout:?}:\n{}",
                self.id,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The value of metric `name` (its full name, as `/metrics` shows it), 0 when absent.
    pub(crate) async fn metric(&self, name: &str) -> f64 {
        let text = reqwest::get(format!("http://{}:9090/metrics", self.ip))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// Waits until metric `name` reaches `value`; returns when it did.
    pub(crate) async fn wait_metric(&self, name: &str, value: f64, timeout: Duration) -> Instant {
        let deadline = Instant::now() + timeout;
        loop {
            if self.metric(name).await >= value {
                return Instant::now();
            }
            assert!(
                Instant::now() < deadline,
                "{name} of {} did not reach {value} within {timeout:?}:\n{}",
                self.id,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// URL of `path` on its web service.
    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}:8080{path}", self.ip)
    }

    /// Its log so far.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends `signal` to the process.
    pub(crate) fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("running").to_string();
        let status = std::process::Command::new("kill")
            .args(["-s", signal, &pid])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit within `timeout`.
    pub(crate) async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(status) => status.unwrap(),
            Err(_) => panic!("server {} did not exit within {timeout:?}:\n{}", self.id, self.log()),
        }
    }
}

/// Submits `count` jobs of `kind` in batch `batch` straight into the database.
pub(crate) async fn submit(db: &Client, batch: &str, count: usize, kind: &str, ms: u64) -> Vec<i64> {
    let mut ids = Vec::with_capacity(count);
    for seq in 0..count {
        let payload = serde_json::json!({"batch": batch, "seq": seq, "ms": ms});
        ids.push(contract::submit_job(db, kind, &payload).await.unwrap());
    }
    ids
}

/// Waits until every job of `batch` finished; returns the outcome.
pub(crate) async fn settle(db: &Client, batch: &str, timeout: Duration) -> contract::Outcome {
    let deadline = Instant::now() + timeout;
    loop {
        let outcome = contract::batch_outcome(db, batch).await.unwrap();
        if outcome.unfinished == 0 {
            return outcome;
        }
        assert!(
            Instant::now() < deadline,
            "batch {batch} not settled within {timeout:?}: {outcome:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `server_id` runs at least one job; returns the ids it owns.
pub(crate) async fn owned_jobs(db: &Client, server_id: &str, timeout: Duration) -> Vec<i64> {
    let deadline = Instant::now() + timeout;
    loop {
        let rows = db
            .query(
                "SELECT id FROM jobs WHERE owner = $1 AND state = 'running' ORDER BY id",
                &[&server_id],
            )
            .await
            .unwrap();
        if !rows.is_empty() {
            return rows.iter().map(|r| r.get(0)).collect();
        }
        assert!(
            Instant::now() < deadline,
            "{server_id} claimed nothing within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the row of `server_id` is in `state`.
pub(crate) async fn wait_state(db: &Client, server_id: &str, state: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while server_state(db, server_id).await.as_deref() != Some(state) {
        assert!(
            Instant::now() < deadline,
            "{server_id} not {state} within {timeout:?}: {:?}",
            server_state(db, server_id).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Creates login `name` with the application user's privileges (a member of it), so that a
/// test can cut one server off the database without cutting off the others.
pub(crate) fn create_login(pg: &TestPostgres, name: &str) -> Vec<(&'static str, String)> {
    let password = format!("pw-{name}-{}", pg.port);
    pg.psql_as_superuser(
        "postgres",
        &format!(
            "CREATE ROLE {name} LOGIN PASSWORD '{password}' IN ROLE {}",
            testing_postgres::USER
        ),
    );
    vec![
        (env::DATABASE_USER, name.to_string()),
        (env::DATABASE_PASSWORD, password),
    ]
}

/// Stops PostgreSQL (fast shutdown: connections are closed) from async code.
pub(crate) fn stop_database(pg: &TestPostgres) {
    tokio::task::block_in_place(|| pg.stop());
}

/// Starts PostgreSQL again on the same port from async code.
pub(crate) fn start_database(pg: &TestPostgres) {
    tokio::task::block_in_place(|| pg.start_again());
}

/// The state of a server's row.
pub(crate) async fn server_state(db: &Client, server_id: &str) -> Option<String> {
    db.query_opt("SELECT state FROM servers WHERE server_id = $1", &[&server_id])
        .await
        .unwrap()
        .map(|r| r.get(0))
}
