//! Claims against a real PostgreSQL: a job whose lease keeps expiring is dead-lettered after
//! the attempt limit, and the jobs around it are not; hand-backs and releases do not count
//! toward the limit; a retried completion is recorded once.

use std::time::Duration;

use orchestrator_contract::{self as contract, Claim, job_state};
use tokio_postgres::Client;

mod support;
use support::registered;

/// A lease that expires while the test waits.
const SHORT: Duration = Duration::from_millis(100);
/// A lease that holds for the whole test.
const LONG: Duration = Duration::from_secs(600);

/// Claims with the limit `max_attempts` and `lease`, expecting a job to run.
async fn claim_run(db: &Client, lease: Duration, max_attempts: i32) -> contract::ClaimedJob {
    match contract::claim_job_bounded(db, "s", lease, max_attempts).await.unwrap() {
        Some(Claim::Run(job)) => job,
        other => panic!("expected a job to run, got {other:?}"),
    }
}

/// Waits until every lease shorter than `SHORT` has expired by the database clock.
async fn expire() {
    tokio::time::sleep(SHORT + Duration::from_millis(50)).await;
}

#[tokio::test]
async fn a_job_whose_lease_keeps_expiring_is_dead_lettered_after_the_limit() {
    let (_pg, db) = registered("s").await;
    let poison = contract::submit_job(&db, "noop", &serde_json::json!({"batch": "p"}))
        .await
        .unwrap();
    let healthy = contract::submit_job(&db, "noop", &serde_json::json!({"batch": "h"}))
        .await
        .unwrap();
    let max_attempts = 3;

    // Each claim of the poison job "crashes" its server: the lease runs out unrenewed.
    let first = claim_run(&db, SHORT, max_attempts).await;
    assert_eq!((first.id, first.attempt), (poison, 1), "oldest first");
    let other = claim_run(&db, SHORT, max_attempts).await;
    assert_eq!((other.id, other.attempt), (healthy, 1));
    expire().await;
    let second = claim_run(&db, SHORT, max_attempts).await;
    assert_eq!((second.id, second.attempt), (poison, 2));
    // The healthy job's lease expired once too: below the limit, it runs again.
    let other = claim_run(&db, LONG, max_attempts).await;
    assert_eq!((other.id, other.attempt), (healthy, 2));
    expire().await;
    let third = claim_run(&db, SHORT, max_attempts).await;
    assert_eq!((third.id, third.attempt), (poison, 3));
    expire().await;

    match contract::claim_job_bounded(&db, "s", LONG, max_attempts).await.unwrap() {
        Some(Claim::DeadLettered { id, attempts }) => assert_eq!((id, attempts), (poison, 3)),
        other => panic!("expected the poison job to be dead-lettered, got {other:?}"),
    }
    let dead = contract::get_job(&db, poison).await.unwrap().unwrap();
    assert_eq!(dead.state, job_state::FAILED);
    assert_eq!(dead.owner, None);
    assert_eq!(dead.attempts, 3, "dead-lettering is not an attempt");
    assert_eq!(
        dead.result,
        Some(serde_json::json!({"error": "dead-lettered after 3 attempts", "deadLettered": true}))
    );
    let executions: i64 = db
        .query_one("SELECT count(*) FROM job_executions WHERE job_id = $1", &[&poison])
        .await
        .unwrap()
        .get(0);
    assert_eq!(executions, 0, "nobody ran it to its end");
    assert_eq!(
        contract::claim_job_bounded(&db, "s", LONG, max_attempts).await.unwrap(),
        None,
        "nothing else to claim: the healthy job is still leased, the poison one is gone"
    );

    // The healthy job, claimed twice, finishes normally.
    let mut db = db;
    let job = contract::ClaimedJob {
        id: healthy,
        kind: "noop".into(),
        payload: serde_json::json!({"batch": "h"}),
        attempt: 2,
    };
    assert!(
        contract::complete_job(&mut db, "s", &job, true, &serde_json::json!({}))
            .await
            .unwrap()
    );
    let done = contract::get_job(&db, healthy).await.unwrap().unwrap();
    assert_eq!((done.state.as_str(), done.attempts), (job_state::SUCCEEDED, 2));
}

#[tokio::test]
async fn handed_back_and_unbounded_claims_never_dead_letter() {
    let (_pg, db) = registered("s").await;
    let handed = contract::submit_job(&db, "noop", &serde_json::json!({})).await.unwrap();
    // Three claims, each handed back (a drain timeout), not expired: none of them counts.
    for _ in 1..=3 {
        let job = claim_run(&db, LONG, 1).await;
        assert_eq!((job.id, job.attempt), (handed, 1), "a hand-back takes its claim back");
        assert_eq!(contract::hand_back_jobs(&db, "s").await.unwrap(), 1);
    }
    let job = claim_run(&db, SHORT, 2).await;
    assert_eq!((job.id, job.attempt), (handed, 1), "a queued job always runs");
    expire().await;
    // One expired lease, below the limit of 2: the bounded claim runs it again, however often
    // it was handed back before.
    let job = claim_run(&db, SHORT, 2).await;
    assert_eq!((job.id, job.attempt), (handed, 2), "run again, not dead-lettered");
    expire().await;
    // The unbounded claim of the contract's first version runs an expired job again, past any
    // limit.
    let again = contract::claim_job(&db, "s", LONG).await.unwrap().unwrap();
    assert_eq!((again.id, again.attempt), (handed, 3));
}

#[tokio::test]
async fn a_released_job_is_queued_again_without_counting_its_claim() {
    let (_pg, db) = registered("s").await;
    let id = contract::submit_job(&db, "noop", &serde_json::json!({})).await.unwrap();
    let job = claim_run(&db, LONG, 1).await;
    assert_eq!((job.id, job.attempt), (id, 1));
    assert!(
        !contract::release_job(&db, "other", id, 1).await.unwrap(),
        "another server's claim is left alone"
    );
    assert!(
        !contract::release_job(&db, "s", id, 2).await.unwrap(),
        "a later claim (claimed again since) is left alone"
    );
    assert!(contract::release_job(&db, "s", id, 1).await.unwrap());
    let released = contract::get_job(&db, id).await.unwrap().unwrap();
    assert_eq!(
        (released.state.as_str(), released.owner, released.attempts),
        (job_state::QUEUED, None, 0)
    );
    assert!(!contract::release_job(&db, "s", id, 1).await.unwrap(), "once");
    // Claimed at once (no lease to wait for), and the limit of 1 does not stop it.
    let again = claim_run(&db, LONG, 1).await;
    assert_eq!((again.id, again.attempt), (id, 1));
}

#[tokio::test]
async fn a_completion_retried_after_its_answer_was_lost_counts_once() {
    let (_pg, mut db) = registered("s").await;
    let id = contract::submit_job(&db, "noop", &serde_json::json!({})).await.unwrap();
    let job = claim_run(&db, LONG, 3).await;
    let result = serde_json::json!({"ok": true});
    assert!(contract::complete_job(&mut db, "s", &job, true, &result).await.unwrap());
    // The first try's COMMIT went through but its answer was lost: the server tries again.
    assert!(
        contract::complete_job(&mut db, "s", &job, true, &result).await.unwrap(),
        "finished by this server's own first try: a success"
    );
    let runs: Vec<(String, i32)> = db
        .query(
            "SELECT server_id, attempt FROM job_executions WHERE job_id = $1",
            &[&id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(runs, [("s".to_string(), 1)], "one run, recorded once");
    let done = contract::get_job(&db, id).await.unwrap().unwrap();
    assert_eq!(
        (done.state.as_str(), done.result),
        (job_state::SUCCEEDED, Some(result.clone()))
    );

    // A server that lost the lease learns it on every try, and its run is recorded once.
    let other = contract::submit_job(&db, "noop", &serde_json::json!({})).await.unwrap();
    let mine = claim_run(&db, SHORT, 3).await;
    assert_eq!(mine.id, other);
    expire().await;
    let theirs = contract::claim_job(&db, "s", LONG).await.unwrap().unwrap();
    assert_eq!(theirs.attempt, 2);
    db.execute("UPDATE jobs SET owner = 'thief' WHERE id = $1", &[&other])
        .await
        .unwrap();
    assert!(
        contract::complete_job(&mut db, "thief", &theirs, true, &result)
            .await
            .unwrap()
    );
    for _ in 0..2 {
        assert!(
            !contract::complete_job(&mut db, "s", &mine, true, &result)
                .await
                .unwrap(),
            "finished by someone else"
        );
    }
    let runs: i64 = db
        .query_one(
            "SELECT count(*) FROM job_executions WHERE job_id = $1 AND server_id = 's'",
            &[&other],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(runs, 1);
}
