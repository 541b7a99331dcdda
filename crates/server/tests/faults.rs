//! The reference server keeps its promises under faults, against a real PostgreSQL: a job
//! whose lease is lost stops before anyone else can claim it and is released once the
//! database answers again, poison jobs are dead-lettered, the shutdown gets through a database
//! restart and notices a signal at once, a withdrawn drain returns the server to work (even as
//! the drain finishes) while a deleted row does not, hung connections are discarded, the
//! heartbeat keeps the leases while the pool hangs, the connections stay bounded, and refused
//! connections are waited out.

mod support;

use std::time::{Duration, Instant};

use orchestrator_contract::{self as contract, env};
use support::{
    Server, ServerOptions, connect, create_login, migrated, owned_jobs, server_state, settle, start_database,
    stop_database, submit, wait_state,
};

const MINUTE: Duration = Duration::from_secs(60);
const ABANDONED: &str = "orchestrator_server_jobs_abandoned_total";
/// The name of the connections of a server's pool in `pg_stat_activity`.
const POOL: &str = "orchestrator-server";
/// The name of a server's heartbeat connection in `pg_stat_activity`.
const HEARTBEAT: &str = "orchestrator-server-heartbeat";

/// Process ids of the database backends of the connections named `application_name`.
async fn backends(db: &tokio_postgres::Client, application_name: &str) -> Vec<i32> {
    db.query(
        "SELECT pid FROM pg_stat_activity WHERE application_name = $1",
        &[&application_name],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// Database backends stopped with SIGSTOP: their connections stay open but never answer, as
/// over a network that silently drops everything. Continued when dropped.
struct Frozen(Vec<i32>);

impl Frozen {
    /// Stops the backends `pids`.
    fn new(pids: Vec<i32>) -> Self {
        assert!(!pids.is_empty(), "no backend to freeze");
        for pid in &pids {
            signal_process(*pid, "STOP");
        }
        Self(pids)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        for pid in &self.0 {
            signal_process(*pid, "CONT");
        }
    }
}

/// Sends `signal` to process `pid` (the tests run as root, the backends as `postgres`).
fn signal_process(pid: i32, signal: &str) {
    let status = std::process::Command::new("kill")
        .args(["-s", signal, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -s {signal} {pid}");
}

/// Waits until the log of `server` contains `text`.
async fn wait_log(server: &Server, text: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while !server.log().contains(text) {
        assert!(
            Instant::now() < deadline,
            "{text:?} not logged within {timeout:?}:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Rows of `job_executions` for `job`, as `(server, attempt)`.
async fn executions(db: &tokio_postgres::Client, job: i64) -> Vec<(String, i32)> {
    db.query(
        "SELECT server_id, attempt FROM job_executions WHERE job_id = $1 ORDER BY attempt",
        &[&job],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_cut_off_from_the_database_stops_its_job_before_the_lease_expires() {
    let (pg, db) = migrated().await;
    let login = create_login(&pg, "cutoff");
    // An 8 s lease: the local deadline comes 1.6 s before the database's expiry.
    let options = ServerOptions {
        workers: 1,
        lease_ms: 8000,
        env: login,
        ..ServerOptions::default()
    };
    let server = Server::start(&pg, "lonely", &options).await;
    let job = submit(&db, "cut", 1, contract::job_kind::SLEEP, 60_000).await[0];
    owned_jobs(&db, "lonely", Duration::from_secs(10)).await;

    // Only this server loses the database: its login may not connect any more, and its
    // connections are closed.
    pg.psql_as_superuser("postgres", "ALTER ROLE cutoff CONNECTION LIMIT 0");
    pg.psql_as_superuser(
        "postgres",
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'cutoff'",
    );
    let cut = Instant::now();
    server.wait_metric(ABANDONED, 1.0, Duration::from_secs(15)).await;
    let (still_leased, lease_until): (bool, std::time::SystemTime) = db
        .query_one(
            "SELECT lease_until > now() AND owner = 'lonely' AND state = 'running' AND attempts = 1, lease_until
             FROM jobs WHERE id = $1",
            &[&job],
        )
        .await
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert!(
        still_leased,
        "the job stopped while its lease still held in the database: nobody else could have claimed it yet"
    );
    assert!(cut.elapsed() < Duration::from_secs(8), "stopped within a lease");
    let log = server.log();
    assert!(log.contains("lease lost: job stopped here"), "{log}");
    assert!(
        log.contains("no lease renewal succeeded before the local lease deadline"),
        "{log}"
    );
    assert!(
        log.contains("too many connections for role") && log.contains("<user>"),
        "{log}"
    );
    assert!(!log.contains("cutoff"), "the login is never logged:\n{log}");

    // Back on the database: the job stopped here is released at once, without waiting for
    // its lease and without counting its claim, and runs again.
    pg.psql_as_superuser("postgres", "ALTER ROLE cutoff CONNECTION LIMIT -1");
    let deadline = Instant::now() + Duration::from_secs(20);
    let (state, attempts, released_in_time) = loop {
        let row = db
            .query_one(
                "SELECT state, attempts, now() < $2,
                        state = 'running' AND attempts = 1 AND lease_until = $2
                 FROM jobs WHERE id = $1",
                &[&job, &lease_until],
            )
            .await
            .unwrap();
        let unchanged: bool = row.get(3);
        if !unchanged {
            let (state, attempts, in_time): (String, i32, bool) = (row.get(0), row.get(1), row.get(2));
            break (state, attempts, in_time);
        }
        assert!(Instant::now() < deadline, "the job was never released or claimed again");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        attempts <= 1 && released_in_time,
        "released before its lease expired, its claim not counted: {state}, {attempts} attempts, in time {released_in_time}\n{}",
        server.log()
    );
    wait_log(&server, "a job stopped here is released", Duration::from_secs(5)).await;
    let (owner, attempts): (Option<String>, i32) = loop {
        let job = contract::get_job(&db, job).await.unwrap().unwrap();
        if job.state == "running" {
            break (job.owner, job.attempts);
        }
        assert!(Instant::now() < deadline, "not claimed again: {job:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        (owner.as_deref(), attempts),
        (Some("lonely"), 1),
        "run again as its first counted claim"
    );
    assert!(executions(&db, job).await.is_empty(), "the stopped run is not recorded");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_the_database_gives_to_another_server_stops_at_the_next_renewal() {
    let (pg, mut db) = migrated().await;
    let options = ServerOptions {
        workers: 1,
        lease_ms: 10_000,
        ..ServerOptions::default()
    };
    let server = Server::start(&pg, "robbed", &options).await;
    let job = submit(&db, "steal", 1, contract::job_kind::SLEEP, 20_000).await[0];
    owned_jobs(&db, "robbed", Duration::from_secs(10)).await;
    db.execute("UPDATE jobs SET owner = 'thief' WHERE id = $1", &[&job])
        .await
        .unwrap();
    let stolen = Instant::now();
    server.wait_metric(ABANDONED, 1.0, Duration::from_secs(5)).await;
    assert!(
        stolen.elapsed() < Duration::from_secs(2),
        "stopped at a renewal (every 300 ms), long before its 8 s local deadline"
    );
    assert!(
        server
            .log()
            .contains("the database says this server no longer owns the job")
    );
    let claimed = contract::ClaimedJob {
        id: job,
        kind: "sleep".into(),
        payload: serde_json::json!({}),
        attempt: 1,
    };
    assert!(
        contract::complete_job(&mut db, "thief", &claimed, true, &serde_json::json!({}))
            .await
            .unwrap(),
        "the new owner finishes it"
    );
    assert_eq!(executions(&db, job).await, [("thief".to_string(), 1)]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_whose_lease_expired_too_often_is_dead_lettered_and_the_others_run() {
    let (pg, db) = migrated().await;
    // Three servers died running it: claimed three times, the last lease expired.
    let poison = submit(&db, "poison", 1, contract::job_kind::SLEEP, 10).await[0];
    db.execute(
        "UPDATE jobs SET state = 'running', owner = 'ghost', attempts = 3,
                lease_until = now() - interval '1 second' WHERE id = $1",
        &[&poison],
    )
    .await
    .unwrap();
    // Another one died once: below the default limit of 3.
    let unlucky = submit(&db, "unlucky", 1, contract::job_kind::SLEEP, 10).await[0];
    db.execute(
        "UPDATE jobs SET state = 'running', owner = 'ghost', attempts = 1,
                lease_until = now() - interval '1 second' WHERE id = $1",
        &[&unlucky],
    )
    .await
    .unwrap();
    submit(&db, "healthy", 5, contract::job_kind::SLEEP, 10).await;
    let server = Server::start(&pg, "reaper", &ServerOptions::default()).await;
    settle(&db, "healthy", MINUTE).await;
    let unlucky_outcome = settle(&db, "unlucky", MINUTE).await;
    assert_eq!(unlucky_outcome.completed, 1, "{unlucky_outcome:?}");
    let dead = contract::get_job(&db, poison).await.unwrap().unwrap();
    assert_eq!(dead.state, "failed");
    assert_eq!(
        dead.result,
        Some(serde_json::json!({"error": "dead-lettered after 3 attempts", "deadLettered": true}))
    );
    assert!(executions(&db, poison).await.is_empty(), "never run again");
    assert_eq!(server.metric("orchestrator_server_jobs_dead_lettered_total").await, 1.0);
    assert!(server.log().contains("dead-lettered"));
}

#[tokio::test(flavor = "multi_thread")]
async fn database_restarts_during_shutdown_lose_nothing() {
    let (pg, db) = migrated().await;
    let options = ServerOptions {
        workers: 1,
        lease_ms: 10_000,
        ..ServerOptions::default()
    };
    let mut server = Server::start(&pg, "blip", &options).await;
    let job = submit(&db, "blip", 1, contract::job_kind::SLEEP, 6000).await[0];
    owned_jobs(&db, "blip", Duration::from_secs(10)).await;
    let claimed = Instant::now();
    drop(db);

    // The database goes away, the pod gets its SIGTERM, the database comes back: the state
    // draining is recorded late.
    stop_database(&pg);
    server.signal("TERM");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    start_database(&pg);
    let db = connect(&pg).await;
    wait_state(&db, "blip", "draining", Duration::from_secs(5)).await;
    drop(db);

    // Away again when the job ends: its completion is recorded once the database is back,
    // then the state stopped.
    tokio::time::sleep((claimed + Duration::from_millis(5500)).saturating_duration_since(Instant::now())).await;
    stop_database(&pg);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    start_database(&pg);
    let status = server.wait_exit(Duration::from_secs(40)).await;
    let log = server.log();
    assert!(status.success(), "exit {status}:\n{log}");
    assert!(log.contains("recording a job's completion failed; retrying"), "{log}");
    let db = connect(&pg).await;
    assert_eq!(server_state(&db, "blip").await.as_deref(), Some("stopped"));
    let finished = contract::get_job(&db, job).await.unwrap().unwrap();
    assert_eq!(finished.state, "succeeded", "completion recorded after the restart");
    assert_eq!(executions(&db, job).await, [("blip".to_string(), 1)]);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_hand_back_at_the_drain_timeout_waits_out_a_database_restart() {
    let (pg, db) = migrated().await;
    let options = ServerOptions {
        workers: 1,
        lease_ms: 10_000,
        drain_timeout_seconds: 1,
        ..ServerOptions::default()
    };
    let mut server = Server::start(&pg, "handy", &options).await;
    let job = submit(&db, "handy", 1, contract::job_kind::SLEEP, 30_000).await[0];
    owned_jobs(&db, "handy", Duration::from_secs(10)).await;
    drop(db);
    server.signal("TERM");
    stop_database(&pg);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    start_database(&pg);
    let status = server.wait_exit(Duration::from_secs(40)).await;
    let log = server.log();
    assert!(status.success(), "exit {status}:\n{log}");
    assert!(
        log.contains("handing back the unfinished jobs failed; retrying"),
        "{log}"
    );
    let db = connect(&pg).await;
    assert_eq!(server_state(&db, "handy").await.as_deref(), Some("stopped"));
    let handed = contract::get_job(&db, job).await.unwrap().unwrap();
    assert_eq!((handed.state.as_str(), handed.owner), ("queued", None));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_withdrawn_drain_returns_the_server_to_work() {
    let (pg, db) = migrated().await;
    let options = ServerOptions {
        workers: 2,
        ..ServerOptions::default()
    };
    let mut server = Server::start(&pg, "wanted", &options).await;
    let long = submit(&db, "long", 1, contract::job_kind::SLEEP, 4000).await[0];
    owned_jobs(&db, "wanted", Duration::from_secs(10)).await;
    assert!(contract::request_drain(&db, "wanted").await.unwrap());
    wait_state(&db, "wanted", "draining", Duration::from_secs(5)).await;
    assert_eq!(server.metric("orchestrator_server_draining").await, 1.0);
    let after = submit(&db, "after", 1, contract::job_kind::NOOP, 0).await[0];
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        contract::get_job(&db, after).await.unwrap().unwrap().state,
        "queued",
        "nothing claimed while draining"
    );

    // Withdrawn while the long job still runs.
    assert!(contract::cancel_drain(&db, "wanted").await.unwrap());
    wait_state(&db, "wanted", "active", Duration::from_secs(5)).await;
    let outcome = settle(&db, "after", Duration::from_secs(10)).await;
    assert_eq!(outcome.completed, 1);
    assert_eq!(executions(&db, after).await, [("wanted".to_string(), 1)]);
    assert_eq!(
        contract::get_job(&db, long).await.unwrap().unwrap().state,
        "running",
        "the new job was claimed while the long one still ran"
    );
    assert_eq!(server.metric("orchestrator_server_draining").await, 0.0);
    server.wait_ready(Duration::from_secs(5)).await;
    assert!(server.log().contains("drain withdrawn"));
    let outcome = settle(&db, "long", Duration::from_secs(10)).await;
    assert_eq!((outcome.completed, outcome.executed_more_than_once), (1, 0));

    server.signal("TERM");
    assert!(server.wait_exit(Duration::from_secs(10)).await.success());
    assert_eq!(server_state(&db, "wanted").await.as_deref(), Some("stopped"));
}

#[tokio::test(flavor = "multi_thread")]
async fn four_workers_share_a_pool_of_two_connections() {
    let (pg, db) = migrated().await;
    let options = ServerOptions {
        workers: 4,
        env: vec![(env::DATABASE_MAX_CONNECTIONS, "2".into())],
        ..ServerOptions::default()
    };
    let server = Server::start(&pg, "frugal", &options).await;
    submit(&db, "pool", 200, contract::job_kind::SLEEP, 20).await;
    let mut most = 0;
    let deadline = Instant::now() + MINUTE;
    while contract::batch_outcome(&db, "pool").await.unwrap().unfinished > 0 {
        assert!(Instant::now() < deadline, "the batch did not finish");
        let open: i64 = db
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'orchestrator-server'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        most = most.max(open);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!((1..=2).contains(&most), "{most} pool connections open at once");
    assert_eq!(backends(&db, HEARTBEAT).await.len(), 1, "and the heartbeat's own");
    let outcome = settle(&db, "pool", MINUTE).await;
    assert_eq!((outcome.completed, outcome.executed_more_than_once), (200, 0));
    let parallel: i64 = db
        .query_one(
            "SELECT count(*) FROM jobs a JOIN jobs b ON a.id < b.id
             WHERE a.started_at < b.finished_at AND b.started_at < a.finished_at",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(parallel > 0, "jobs still ran side by side");
    assert!(server.metric("orchestrator_server_database_connections").await <= 3.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_refused_for_too_many_connections_waits_then_serves() {
    let (pg, db) = migrated().await;
    let login = create_login(&pg, "crowded");
    pg.psql_as_superuser("postgres", "ALTER ROLE crowded CONNECTION LIMIT 1");
    // Another client holds the login's only connection.
    let (_, password) = login[1].clone();
    let (blocker, connection) = tokio_postgres::connect(
        &format!(
            "host=127.0.0.1 port={} user=crowded password={password} dbname={}",
            pg.port,
            testing_postgres::DATABASE
        ),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    let holder = tokio::spawn(connection);
    let options = ServerOptions {
        env: login,
        ..ServerOptions::default()
    };
    let mut server = Server::spawn(&pg, "patient", &options);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server.log().contains("the database refused a connection; waiting") {
        assert!(Instant::now() < deadline, "no refusal seen:\n{}", server.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "still waiting, not exited:\n{}",
        server.log()
    );
    // A server told to stop while it waits (it claimed nothing) exits at once, friendly.
    let mut quitter = Server::spawn(&pg, "quitter", &options);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !quitter.log().contains("the database refused a connection; waiting") {
        assert!(Instant::now() < deadline, "no refusal seen:\n{}", quitter.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    quitter.signal("TERM");
    let status = quitter.wait_exit(Duration::from_secs(5)).await;
    assert!(status.success(), "exit {status}:\n{}", quitter.log());
    drop(blocker);
    holder.await.unwrap().unwrap();
    pg.psql_as_superuser("postgres", "ALTER ROLE crowded CONNECTION LIMIT -1");
    server.wait_ready(Duration::from_secs(20)).await;
    submit(&db, "late", 3, contract::job_kind::NOOP, 0).await;
    assert_eq!(settle(&db, "late", Duration::from_secs(20)).await.completed, 3);
    let log = server.log();
    assert!(
        log.contains("too many connections for role") && log.contains("<user>"),
        "{log}"
    );
    assert!(!log.contains("crowded"), "the login is never logged:\n{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_load_generator_keeps_going_through_a_database_restart() {
    let (pg, db) = migrated().await;
    let _server = Server::start(&pg, "steady", &ServerOptions::default()).await;
    drop(db);
    let loadgen = support::server_command(&pg)
        .args([
            "loadgen",
            "--rate",
            "40",
            "--duration",
            "5",
            "--kind",
            "sleep",
            "--sleep-ms",
            "10",
            "--batch",
            "restart",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let output = tokio::spawn(loadgen.wait_with_output());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop_database(&pg);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    start_database(&pg);
    let output = tokio::time::timeout(2 * MINUTE, output)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let (out, err) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert!(output.status.success(), "{out}{err}");
    let report: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert!(report["database_errors"].as_u64().unwrap() > 0, "{report}");
    assert!(report["acknowledged"].as_u64().unwrap() > 100, "{report}");
    assert_eq!(report["lost"], 0, "{report}");
    assert_eq!(report["outcome"]["executed_more_than_once"], 0, "{report}");
    assert_eq!(
        report["outcome"]["completed"], report["outcome"]["submitted"],
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn pooled_connections_keep_tls() {
    let pg = testing_postgres::TestPostgres::start_with_tls();
    let db = support::migrate(&pg).await;
    let options = ServerOptions {
        env: vec![
            (env::DATABASE_SSLMODE, "verify-full".into()),
            (env::DATABASE_CA, String::from_utf8(pg.ca_pem()).unwrap()),
        ],
        ..ServerOptions::default()
    };
    let _server = Server::start(&pg, "sealed", &options).await;
    submit(&db, "tls", 20, contract::job_kind::NOOP, 0).await;
    assert_eq!(settle(&db, "tls", MINUTE).await.completed, 20);
    let (all_tls, connections): (Option<bool>, i64) = db
        .query_one(
            "SELECT bool_and(s.ssl), count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
             WHERE a.application_name LIKE 'orchestrator-server%'",
            &[],
        )
        .await
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert!(connections >= 2, "the pool's and the heartbeat's");
    assert_eq!(all_tls, Some(true), "every connection uses TLS");
}

#[tokio::test(flavor = "multi_thread")]
async fn hung_connections_are_discarded_and_the_work_goes_on() {
    let (pg, db) = migrated().await;
    // A 3 s lease: the pool's operations get 2 s (statement_timeout) and 1 s more.
    let server = Server::start(&pg, "stuck", &ServerOptions::default()).await;
    // A completion that waits for a lock: its statement is under way when its backend stops.
    let mut blocker = connect(&pg).await;
    let lock = blocker.transaction().await.unwrap();
    lock.execute("LOCK TABLE job_executions IN ACCESS EXCLUSIVE MODE", &[])
        .await
        .unwrap();
    let job = submit(&db, "stuck", 1, contract::job_kind::NOOP, 0).await[0];
    let deadline = Instant::now() + Duration::from_secs(10);
    while db
        .query(
            "SELECT 1 FROM pg_stat_activity WHERE application_name = $1 AND wait_event_type = 'Lock'",
            &[&POOL],
        )
        .await
        .unwrap()
        .is_empty()
    {
        assert!(Instant::now() < deadline, "no completion waits for the lock");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Every connection of the pool stops answering, that one and the idle ones, as over a
    // network that drops everything; then the lock goes.
    let _frozen = Frozen::new(backends(&db, POOL).await);
    lock.rollback().await.unwrap();

    let asked = Instant::now();
    let answer = reqwest::Client::new()
        .get(server.url(&format!("/jobs/{job}")))
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .expect("the web service answers, it does not hang");
    assert!([200, 503].contains(&answer.status().as_u16()), "{}", answer.status());
    assert!(
        asked.elapsed() < Duration::from_secs(8),
        "answered in {:?}",
        asked.elapsed()
    );

    // The hung connections are dropped, fresh ones opened, and the work goes on: the
    // completion is recorded once, and new jobs run.
    let outcome = settle(&db, "stuck", Duration::from_secs(30)).await;
    assert_eq!(
        (outcome.completed, outcome.executed_more_than_once),
        (1, 0),
        "{outcome:?}"
    );
    assert_eq!(executions(&db, job).await, [("stuck".to_string(), 1)]);
    submit(&db, "after", 8, contract::job_kind::NOOP, 0).await;
    let outcome = settle(&db, "after", Duration::from_secs(30)).await;
    assert_eq!(
        (outcome.completed, outcome.executed_more_than_once),
        (8, 0),
        "{outcome:?}"
    );
    assert_eq!(server.metric(ABANDONED).await, 0.0);
    let log = server.log();
    assert!(
        log.contains("a database operation did not complete: its connection is discarded"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_statement_stuck_on_a_lock_is_cancelled_by_the_database() {
    let (pg, db) = migrated().await;
    let options = ServerOptions {
        workers: 1,
        ..ServerOptions::default()
    };
    let server = Server::start(&pg, "locked", &options).await;
    // Completions wait for this lock; the session's statement_timeout (2 s) ends the wait.
    let mut blocker = connect(&pg).await;
    let lock = blocker.transaction().await.unwrap();
    lock.execute("LOCK TABLE job_executions IN ACCESS EXCLUSIVE MODE", &[])
        .await
        .unwrap();
    let job = submit(&db, "locked", 1, contract::job_kind::NOOP, 0).await[0];
    wait_log(
        &server,
        "canceling statement due to statement timeout",
        Duration::from_secs(15),
    )
    .await;
    lock.rollback().await.unwrap();
    let outcome = settle(&db, "locked", Duration::from_secs(20)).await;
    assert_eq!(
        (outcome.completed, outcome.executed_more_than_once),
        (1, 0),
        "{outcome:?}"
    );
    assert_eq!(executions(&db, job).await, [("locked".to_string(), 1)]);
    assert!(server.log().contains("recording a job's completion failed; retrying"));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_heartbeat_keeps_the_leases_while_the_pool_hangs() {
    let (pg, db) = migrated().await;
    let options = ServerOptions {
        workers: 1,
        env: vec![(env::DATABASE_MAX_CONNECTIONS, "1".into())],
        ..ServerOptions::default()
    };
    let server = Server::start(&pg, "steady", &options).await;
    let job = submit(&db, "patient", 1, contract::job_kind::SLEEP, 6000).await[0];
    owned_jobs(&db, "steady", Duration::from_secs(10)).await;
    // The pool's connection stops answering for longer than two leases; the heartbeat's own
    // connection keeps renewing the job's lease, so the job runs to its end.
    let frozen = Frozen::new(backends(&db, POOL).await);
    let outcome = settle(&db, "patient", Duration::from_secs(30)).await;
    drop(frozen);
    assert_eq!(
        (outcome.completed, outcome.executed_more_than_once),
        (1, 0),
        "{outcome:?}"
    );
    assert_eq!(executions(&db, job).await, [("steady".to_string(), 1)]);
    assert_eq!(server.metric(ABANDONED).await, 0.0, "{}", server.log());
    assert!(!server.log().contains("heartbeat failed"), "{}", server.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_drain_withdrawn_as_it_finishes_returns_the_server_to_work() {
    let (pg, db) = migrated().await;
    // Heartbeats 2 s apart, from the registration, and a job of 5 s claimed right after it:
    // the withdrawal below comes 0.1 s before the job ends, about 0.9 s before the heartbeat
    // that would report it, so the drain finishes first.
    let options = ServerOptions {
        workers: 1,
        lease_ms: 15_000,
        env: vec![(env::HEARTBEAT_MILLISECONDS, "2000".into())],
        ..ServerOptions::default()
    };
    let mut server = Server::start(&pg, "fickle", &options).await;
    let last = submit(&db, "last", 1, contract::job_kind::SLEEP, 5000).await[0];
    owned_jobs(&db, "fickle", Duration::from_secs(10)).await;
    assert!(contract::request_drain(&db, "fickle").await.unwrap());
    wait_state(&db, "fickle", "draining", Duration::from_secs(5)).await;
    let left: f64 = db
        .query_one(
            "SELECT extract(epoch FROM started_at + interval '5 seconds' - now())::float8 FROM jobs WHERE id = $1",
            &[&last],
        )
        .await
        .unwrap()
        .get(0);
    assert!(left > 0.5, "the drain was seen {left} s before the job's end");
    tokio::time::sleep(Duration::from_secs_f64(left - 0.1)).await;
    assert!(contract::cancel_drain(&db, "fickle").await.unwrap());

    settle(&db, "last", Duration::from_secs(10)).await;
    wait_state(&db, "fickle", "active", Duration::from_secs(10)).await;
    let after = submit(&db, "after", 1, contract::job_kind::NOOP, 0).await[0];
    settle(&db, "after", Duration::from_secs(10)).await;
    assert_eq!(executions(&db, after).await, [("fickle".to_string(), 1)]);
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "the server never exited:\n{}",
        server.log()
    );
    assert_eq!(server_state(&db, "fickle").await.as_deref(), Some("active"));
    assert!(
        server.log().contains("drain withdrawn: active again"),
        "{}",
        server.log()
    );
    server.signal("TERM");
    assert!(server.wait_exit(Duration::from_secs(10)).await.success());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sigterm_while_the_drain_cannot_be_recorded_starts_the_drain_timeout_at_once() {
    let (pg, db) = migrated().await;
    let options = ServerOptions {
        workers: 1,
        drain_timeout_seconds: 10,
        ..ServerOptions::default()
    };
    let mut server = Server::start(&pg, "hurried", &options).await;
    let job = submit(&db, "endless", 1, contract::job_kind::SLEEP, 60_000).await[0];
    owned_jobs(&db, "hurried", Duration::from_secs(10)).await;
    // The state draining cannot be written: the server retries it (for up to the drain
    // timeout) when the database asks for a drain.
    db.batch_execute(
        "CREATE FUNCTION refuse_draining() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF NEW.state = 'draining' THEN RAISE EXCEPTION 'draining refused by the test'; END IF;
             RETURN NEW;
         END $$;
         CREATE TRIGGER refuse_draining BEFORE UPDATE ON servers
             FOR EACH ROW EXECUTE FUNCTION refuse_draining();",
    )
    .await
    .unwrap();
    assert!(contract::request_drain(&db, "hurried").await.unwrap());
    wait_log(
        &server,
        "recording the state draining failed; retrying",
        Duration::from_secs(10),
    )
    .await;

    // The pod is deleted meanwhile: the drain timeout counts from this signal, so the job is
    // handed back and the state stopped recorded within the pod's grace period.
    server.signal("TERM");
    let signalled = Instant::now();
    let status = server.wait_exit(Duration::from_secs(15)).await;
    let took = signalled.elapsed();
    let log = server.log();
    assert!(status.success(), "exit {status}:\n{log}");
    assert!(
        took >= Duration::from_secs(9),
        "the jobs had their drain timeout: {took:?}\n{log}"
    );
    assert_eq!(server_state(&db, "hurried").await.as_deref(), Some("stopped"));
    let handed = contract::get_job(&db, job).await.unwrap().unwrap();
    assert_eq!(
        (handed.state.as_str(), handed.owner, handed.attempts),
        ("queued", None, 0)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_row_is_not_a_withdrawn_drain() {
    let (pg, db) = migrated().await;
    let options = ServerOptions {
        workers: 1,
        ..ServerOptions::default()
    };
    let mut server = Server::start(&pg, "erased", &options).await;
    let job = submit(&db, "draining", 1, contract::job_kind::SLEEP, 3000).await[0];
    owned_jobs(&db, "erased", Duration::from_secs(10)).await;
    assert!(contract::request_drain(&db, "erased").await.unwrap());
    wait_state(&db, "erased", "draining", Duration::from_secs(5)).await;
    db.execute("DELETE FROM servers WHERE server_id = 'erased'", &[])
        .await
        .unwrap();
    let later = submit(&db, "later", 1, contract::job_kind::NOOP, 0).await[0];

    // The drain goes on: the job finishes, nothing new is claimed, and the server stops.
    let status = server.wait_exit(Duration::from_secs(15)).await;
    let log = server.log();
    assert!(status.success(), "exit {status}:\n{log}");
    assert!(log.contains("the server's row is gone while it drains"), "{log}");
    assert_eq!(contract::get_job(&db, job).await.unwrap().unwrap().state, "succeeded");
    assert_eq!(contract::get_job(&db, later).await.unwrap().unwrap().state, "queued");
    assert_eq!(server_state(&db, "erased").await, None, "not registered again");
}
