//! Writes of a server's own row against a real PostgreSQL: a deleted row is told apart from a
//! withdrawn drain request, and the drain's state writes never overwrite a request or a
//! withdrawal that the server has not heard of yet.

use orchestrator_contract::{self as contract, StateWrite, server_state};
use tokio_postgres::Client;

mod support;
use support::registered;

async fn state(db: &Client) -> String {
    db.query_one("SELECT state FROM servers WHERE server_id = 'ns/s-0'", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn drain_state_writes_follow_the_request_in_the_database() {
    let (_pg, db) = registered("ns/s-0").await;
    let id = "ns/s-0";
    assert!(contract::request_drain(&db, id).await.unwrap());
    assert_eq!(
        contract::set_state_if_drain(&db, id, server_state::DRAINING, true)
            .await
            .unwrap(),
        StateWrite::Written
    );
    // The request is withdrawn just as the drain ends: `stopped` is refused.
    assert!(contract::cancel_drain(&db, id).await.unwrap());
    assert_eq!(
        contract::set_state_if_drain(&db, id, server_state::STOPPED, true)
            .await
            .unwrap(),
        StateWrite::Refused
    );
    assert_eq!(state(&db).await, server_state::DRAINING);
    // And asked for again before the server wrote `active`: `active` is refused.
    assert!(contract::request_drain(&db, id).await.unwrap());
    assert_eq!(
        contract::set_state_if_drain(&db, id, server_state::ACTIVE, false)
            .await
            .unwrap(),
        StateWrite::Refused
    );
    assert_eq!(state(&db).await, server_state::DRAINING);
    assert_eq!(
        contract::set_state_if_drain(&db, id, server_state::STOPPED, true)
            .await
            .unwrap(),
        StateWrite::Written
    );
    assert_eq!(state(&db).await, server_state::STOPPED);
}

#[tokio::test]
async fn a_deleted_row_is_not_a_withdrawn_drain() {
    let (_pg, db) = registered("ns/s-0").await;
    let id = "ns/s-0";
    assert!(contract::request_drain(&db, id).await.unwrap());
    assert_eq!(contract::set_state(&db, id, server_state::DRAINING).await.unwrap(), 1);
    db.execute("DELETE FROM servers WHERE server_id = $1", &[&id])
        .await
        .unwrap();
    let reply = contract::heartbeat(&db, id, 1).await.unwrap();
    assert!(!reply.registered);
    assert_eq!(contract::set_state(&db, id, server_state::STOPPED).await.unwrap(), 0);
    for (state, requested) in [(server_state::STOPPED, true), (server_state::ACTIVE, false)] {
        assert_eq!(
            contract::set_state_if_drain(&db, id, state, requested).await.unwrap(),
            StateWrite::NoRow,
            "{state}"
        );
    }
}

#[tokio::test]
async fn a_namespace_reads_its_own_rows_and_the_legacy_ones() {
    let (_pg, db) = registered("ns/s-0").await;
    // `ns-2` starts with `ns` but is another namespace.
    for id in ["ns-2/s-0", "other/s-0", "legacy-0"] {
        let server = contract::Registration {
            server_id: id,
            version: "2.0.0",
            schema: contract::schema_range_for_version("2.0.0"),
        };
        contract::register(&db, &server).await.unwrap();
    }
    let ids = |members: Vec<contract::Member>| -> Vec<String> { members.into_iter().map(|m| m.server_id).collect() };
    let ns = contract::membership_in_namespace(&db, "ns").await.unwrap();
    assert_eq!(ids(ns), ["legacy-0", "ns/s-0"]);
    let all = contract::membership(&db).await.unwrap();
    assert_eq!(all.len(), 4);
}

#[tokio::test]
async fn work_counts_claimable_running_and_serving_servers() {
    let (_pg, db) = registered("ns/s-0").await;
    contract::register(
        &db,
        &contract::Registration {
            server_id: "ns/s-1",
            version: "2.0.0",
            schema: contract::schema_range_for_version("2.0.0"),
        },
    )
    .await
    .unwrap();
    assert!(contract::request_drain(&db, "ns/s-1").await.unwrap());
    for _ in 0..5 {
        contract::submit_job(&db, "noop", &serde_json::json!({})).await.unwrap();
    }
    let lease = std::time::Duration::from_secs(60);
    let running = contract::claim_job(&db, "ns/s-0", lease).await.unwrap().unwrap();
    let expired = contract::claim_job(&db, "ns/s-0", lease).await.unwrap().unwrap();
    db.execute(
        "UPDATE jobs SET lease_until = now() - interval '1 second' WHERE id = $1",
        &[&expired.id],
    )
    .await
    .unwrap();
    let finished = contract::claim_job(&db, "ns/s-0", lease).await.unwrap().unwrap();
    let mut db = db;
    contract::complete_job(&mut db, "ns/s-0", &finished, true, &serde_json::json!({}))
        .await
        .unwrap();
    // 2 queued + 1 whose lease expired; 1 running; s-1 is draining, so only s-0 serves.
    let work = contract::work(&db, 10, 4).await.unwrap();
    assert_eq!(
        (work.claimable, work.running, work.serving),
        (3, 1, 1),
        "{work:?} (running job {})",
        running.id
    );
    // Counted up to (0 + 1 serving) * 1 + 1 = 2: enough to say "more than one server's".
    assert_eq!(contract::work(&db, 0, 1).await.unwrap().claimable, 2);
    db.execute("UPDATE servers SET heartbeat_at = now() - interval '11 seconds'", &[])
        .await
        .unwrap();
    assert_eq!(
        contract::work(&db, 10, 4).await.unwrap().serving,
        0,
        "a stale heartbeat serves nothing"
    );
}

#[tokio::test]
async fn outcomes_count_each_groups_finished_jobs_below_the_frontier() {
    let (_pg, mut db) = registered("ns/s-0").await;
    contract::register(
        &db,
        &contract::Registration {
            server_id: "ns/s-1",
            version: "2.1.0-failing",
            schema: contract::schema_range_for_version("2.1.0-failing"),
        },
    )
    .await
    .unwrap();
    let lease = std::time::Duration::from_secs(60);
    for server in ["ns/s-0", "ns/s-1"] {
        for n in 0..4 {
            contract::submit_job(&db, "noop", &serde_json::json!({})).await.unwrap();
            let job = contract::claim_job(&db, server, lease).await.unwrap().unwrap();
            // s-1 fails one job in two; s-0 none.
            let succeeded = server == "ns/s-0" || n % 2 == 0;
            contract::complete_job(&mut db, server, &job, succeeded, &serde_json::json!({}))
                .await
                .unwrap();
        }
    }
    // One still running: not an outcome.
    contract::submit_job(&db, "noop", &serde_json::json!({})).await.unwrap();
    contract::claim_job(&db, "ns/s-0", lease).await.unwrap().unwrap();
    let ids = |id: &str| vec![id.to_string()];
    let (s0, s1) = (ids("ns/s-0"), ids("ns/s-1"));
    let [canary, others] = contract::outcomes(&db, minute_ago(), 100, [&s1, &s0]).await.unwrap();
    assert_eq!((others.succeeded, others.failed), (4, 0), "{others:?}");
    assert_eq!((canary.succeeded, canary.failed), (2, 2), "{canary:?}");
    assert!(canary.run_p50_ms.is_some_and(|ms| ms >= 0), "{canary:?}");
    // A server in neither group is not counted.
    let [alone, none] = contract::outcomes(&db, minute_ago(), 100, [&s1, &ids("ns/s-9")])
        .await
        .unwrap();
    assert_eq!(
        (alone.succeeded + alone.failed, none),
        (4, contract::Outcomes::default())
    );
    // The running job (id 9) is the frontier: only the ids within 5 of it are read, s-1's four
    // and the running one.
    let [canary, others] = contract::outcomes(&db, minute_ago(), 5, [&s1, &s0]).await.unwrap();
    assert_eq!(
        (canary.succeeded + canary.failed, others.succeeded + others.failed),
        (4, 0),
        "{canary:?} {others:?}"
    );
    // Nothing finished in the last instant's window.
    db.execute("UPDATE jobs SET finished_at = finished_at - interval '1 hour'", &[])
        .await
        .unwrap();
    db.execute(
        "UPDATE job_executions SET finished_at = finished_at - interval '1 hour'",
        &[],
    )
    .await
    .unwrap();
    assert_eq!(
        contract::outcomes(&db, minute_ago(), 100, [&s1, &s0]).await.unwrap(),
        [contract::Outcomes::default(); 2]
    );
}

fn minute_ago() -> std::time::SystemTime {
    std::time::SystemTime::now() - std::time::Duration::from_secs(60)
}
