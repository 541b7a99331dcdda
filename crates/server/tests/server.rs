//! The reference server against a real PostgreSQL: exactly-once completion, friendly shutdown
//! on SIGTERM and on a database drain request, recovery after SIGKILL, hand-back at the drain
//! timeout.

mod support;

use std::time::Duration;

use orchestrator_contract as contract;
use support::{Server, ServerOptions, migrated, owned_jobs, server_state, settle, submit};

const MINUTE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread")]
async fn three_servers_complete_2000_jobs_exactly_once() {
    let (pg, db) = migrated().await;
    let options = ServerOptions::default();
    let _servers = [
        Server::start(&pg, "s-0", &options).await,
        Server::start(&pg, "s-1", &options).await,
        Server::start(&pg, "s-2", &options).await,
    ];
    submit(&db, "bulk", 2000, contract::job_kind::SLEEP, 1).await;
    let outcome = settle(&db, "bulk", 2 * MINUTE).await;
    assert_eq!(outcome.submitted, 2000);
    assert_eq!(outcome.completed, 2000, "{outcome:?}");
    assert_eq!(outcome.executed_more_than_once, 0, "{outcome:?}");
    let workers: i64 = db
        .query_one("SELECT count(DISTINCT server_id) FROM job_executions", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(workers, 3, "every server took work");
}

/// Asserts the friendly shutdown of `server` after `trigger`: the jobs it ran at that time
/// complete on it, it claims nothing new, exits 0 and its row says stopped.
async fn assert_friendly_shutdown(trigger: impl AsyncFnOnce(&Server, &tokio_postgres::Client)) {
    let (pg, db) = migrated().await;
    let options = ServerOptions {
        workers: 3,
        ..ServerOptions::default()
    };
    let mut leaving = Server::start(&pg, "leaving", &options).await;
    let staying = Server::start(&pg, "staying", &options).await;
    submit(&db, "drain", 24, contract::job_kind::SLEEP, 1500).await;
    owned_jobs(&db, "leaving", Duration::from_secs(10)).await;
    trigger(&leaving, &db).await;
    // Once its row says draining (the server learnt of the drain), plus a claim's duration,
    // it owns all it will ever finish.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while server_state(&db, "leaving").await.as_deref() == Some("active") {
        assert!(
            std::time::Instant::now() < deadline,
            "the server never started draining"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let at: std::time::SystemTime = db.query_one("SELECT now()", &[]).await.unwrap().get(0);
    let owned: Vec<i64> = db
        .query(
            "SELECT id FROM jobs WHERE owner = 'leaving' AND state = 'running' ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(!owned.is_empty(), "the 1.5s jobs it claimed are still running");
    let status = leaving.wait_exit(Duration::from_secs(20)).await;
    assert!(status.success(), "exit {status}:\n{}", leaving.log());
    assert_eq!(server_state(&db, "leaving").await.as_deref(), Some("stopped"));
    let late: Vec<i64> = db
        .query(
            "SELECT job_id FROM job_executions WHERE server_id = 'leaving' AND finished_at > $1 ORDER BY job_id",
            &[&at],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        late, owned,
        "after the trigger it only finished the jobs it was running"
    );
    let outcome = settle(&db, "drain", MINUTE).await;
    assert_eq!(
        (outcome.completed, outcome.executed_more_than_once),
        (24, 0),
        "{outcome:?}"
    );
    assert_eq!(server_state(&db, "staying").await.as_deref(), Some("active"));
    assert!(
        reqwest::get(staying.url("/readyz"))
            .await
            .unwrap()
            .status()
            .is_success()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_finishes_running_jobs_and_exits_zero() {
    assert_friendly_shutdown(async |server, _db| server.signal("TERM")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn drain_requested_through_the_database_needs_no_signal() {
    assert_friendly_shutdown(async |server, db| {
        assert!(contract::request_drain(db, &server.id).await.unwrap());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_mid_job_leaves_its_jobs_to_the_others() {
    let (pg, db) = migrated().await;
    let options = ServerOptions {
        workers: 3,
        lease_ms: 1500,
        ..ServerOptions::default()
    };
    let mut victim = Server::start(&pg, "victim", &options).await;
    let _survivor = Server::start(&pg, "survivor", &options).await;
    submit(&db, "kill", 30, contract::job_kind::SLEEP, 800).await;
    let in_flight = owned_jobs(&db, "victim", Duration::from_secs(10)).await;
    victim.signal("KILL");
    victim.wait_exit(Duration::from_secs(5)).await;
    let outcome = settle(&db, "kill", MINUTE).await;
    assert_eq!(outcome.completed, 30, "none lost: {outcome:?}");
    assert_eq!(outcome.executed_more_than_once, 0, "{outcome:?}");
    let retried: Vec<i64> = db
        .query(
            "SELECT id FROM jobs WHERE payload->>'batch' = 'kill' AND attempts > 1 ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        retried.len() <= 3,
        "re-claims bounded by the victim's workers: {retried:?}"
    );
    assert!(
        in_flight.iter().all(|id| retried.contains(id)),
        "its in-flight jobs were claimed again"
    );
    println!(
        "sigkill: {} jobs in flight on the victim, {} re-claimed, 0 run twice",
        in_flight.len(),
        retried.len()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn drain_timeout_hands_back_unfinished_jobs() {
    let (pg, db) = migrated().await;
    let slow = ServerOptions {
        workers: 1,
        drain_timeout_seconds: 1,
        ..ServerOptions::default()
    };
    let mut leaving = Server::start(&pg, "slow", &slow).await;
    let long = submit(&db, "long", 1, contract::job_kind::SLEEP, 4000).await;
    owned_jobs(&db, "slow", Duration::from_secs(10)).await;
    leaving.signal("TERM");
    let status = leaving.wait_exit(Duration::from_secs(10)).await;
    assert!(status.success(), "{}", leaving.log());
    let state: String = db
        .query_one("SELECT state FROM jobs WHERE id = $1", &[&long[0]])
        .await
        .unwrap()
        .get(0);
    assert_eq!(state, "queued", "handed back with owner and lease cleared");
    let owner: Option<String> = db
        .query_one("SELECT owner FROM jobs WHERE id = $1", &[&long[0]])
        .await
        .unwrap()
        .get(0);
    assert_eq!(owner, None);
    let _other = Server::start(&pg, "other", &ServerOptions::default()).await;
    let outcome = settle(&db, "long", MINUTE).await;
    assert_eq!((outcome.completed, outcome.executed_more_than_once), (1, 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn load_generator_reports_every_job_through_the_web_service() {
    let (pg, _db) = migrated().await;
    let a = Server::start(&pg, "lg-0", &ServerOptions::default()).await;
    let b = Server::start(&pg, "lg-1", &ServerOptions::default()).await;
    let (status, out, err) = support::run_cli(
        &pg,
        &[
            "loadgen",
            "--url",
            &a.url(""),
            "--url",
            &b.url(""),
            "--rate",
            "100",
            "--duration",
            "2",
            "--kind",
            "sleep",
        ]
        .into_iter()
        .chain(["--sleep-ms", "20", "--batch", "lg", "--strict"])
        .collect::<Vec<_>>(),
        &[],
    )
    .await;
    assert!(status.success(), "{out}{err}");
    let report: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let acknowledged = report["acknowledged"].as_i64().unwrap();
    assert!(acknowledged >= 100, "about 200 submitted in 2s at 100/s: {report}");
    assert_eq!(report["outcome"]["completed"].as_i64(), Some(acknowledged), "{report}");
    assert_eq!(report["lost"], 0);
    assert_eq!(report["outcome"]["executed_more_than_once"], 0);
    assert!(err.contains("lost 0, executed more than once 0"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_drained_server_that_restarts_stays_out_until_the_drain_is_withdrawn() {
    let (pg, db) = migrated().await;
    let mut first = Server::start(&pg, "again", &ServerOptions::default()).await;
    assert!(contract::request_drain(&db, "again").await.unwrap());
    assert!(first.wait_exit(Duration::from_secs(10)).await.success());
    // Restarted (as a kubelet restarts an exited container): it must not rejoin on its own.
    let mut restarted = Server::spawn(&pg, "again", &ServerOptions::default());
    submit(&db, "after", 3, contract::job_kind::NOOP, 0).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(server_state(&db, "again").await.as_deref(), Some("stopped"));
    let ready = reqwest::get(restarted.url("/readyz")).await.unwrap();
    assert_eq!(ready.status(), 503, "not ready while its drain is pending");
    assert_eq!(
        contract::batch_outcome(&db, "after").await.unwrap().completed,
        0,
        "claimed nothing"
    );
    assert!(contract::cancel_drain(&db, "again").await.unwrap());
    settle(&db, "after", Duration::from_secs(20)).await;
    assert_eq!(server_state(&db, "again").await.as_deref(), Some("active"));
    restarted.signal("TERM");
    assert!(restarted.wait_exit(Duration::from_secs(10)).await.success());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_release_runs_its_jobs_and_records_them_failed() {
    let (pg, db) = migrated().await;
    let _good = Server::start(&pg, "s-0", &ServerOptions::default()).await;
    let failing = ServerOptions {
        version: "2.1.0-failing",
        ..ServerOptions::default()
    };
    let _bad = Server::start(&pg, "s-1", &failing).await;
    submit(&db, "canary", 200, contract::job_kind::SLEEP, 5).await;
    let outcome = settle(&db, "canary", MINUTE).await;
    assert_eq!(outcome.executed_more_than_once, 0, "{outcome:?}");
    let (s0, s1) = (vec!["s-0".to_string()], vec!["s-1".to_string()]);
    let [good, bad] = contract::outcomes(
        &db,
        std::time::SystemTime::now() - Duration::from_secs(600),
        1000,
        [&s0, &s1],
    )
    .await
    .unwrap();
    assert!(good.succeeded > 0 && good.failed == 0, "{good:?}");
    assert!(bad.failed > 0 && bad.succeeded == 0, "{bad:?}");
    assert_eq!(good.succeeded + bad.failed, 200, "{good:?} {bad:?}");
}
