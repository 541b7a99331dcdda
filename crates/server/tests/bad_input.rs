//! Bad input gets a clear error, no panic, and nothing half-written.

mod support;

use std::time::Duration;

use orchestrator_contract::env;
use serde_json::json;
use support::{Server, ServerOptions, migrated, run_cli};
use testing_postgres::TestPostgres;

#[tokio::test(flavor = "multi_thread")]
async fn malformed_jobs_are_refused_and_nothing_is_stored() {
    let (pg, db) = migrated().await;
    let server = Server::start(&pg, "api", &ServerOptions::default()).await;
    let http = reqwest::Client::new();
    let bad = [
        (r#"{"kind": "sleep", "payload": {"ms": 5}"#, "EOF while parsing"),
        (r#"{"kind": "dance", "payload": {}}"#, "unknown kind \"dance\""),
        (r#"{"kind": "sleep", "payload": {}}"#, "sleep needs \"ms\""),
        (r#"{"kind": "sleep", "payload": {"ms": -4}}"#, "sleep needs \"ms\""),
        (
            r#"{"kind": "noop", "payload": [1, 2]}"#,
            "payload must be a JSON object",
        ),
        (r#"{"kind": "noop", "extra": 1}"#, "unknown field `extra`"),
    ];
    for (body, message) in bad {
        let response = http
            .post(server.url("/jobs"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{body}");
        let answer: serde_json::Value = response.json().await.unwrap();
        let text = answer["error"].as_str().unwrap_or_default();
        assert!(text.contains(message), "{body}: {answer}");
    }
    let stored: i64 = db.query_one("SELECT count(*) FROM jobs", &[]).await.unwrap().get(0);
    assert_eq!(stored, 0);
    let good = http
        .post(server.url("/jobs"))
        .json(&json!({"kind": "noop"}))
        .send()
        .await
        .unwrap();
    assert_eq!(good.status(), 201);
    let id = good.json::<serde_json::Value>().await.unwrap()["id"].as_i64().unwrap();
    let shown = http.get(server.url(&format!("/jobs/{id}"))).send().await.unwrap();
    assert_eq!(shown.status(), 200);
    assert_eq!(http.get(server.url("/jobs/abc")).send().await.unwrap().status(), 400);
    assert_eq!(http.get(server.url("/jobs/999999")).send().await.unwrap().status(), 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_settings_wrong_password_and_unreachable_host_fail_clearly() {
    let pg = TestPostgres::start();
    let (status, _, err) = run_cli(
        &pg,
        &["serve"],
        &[
            (env::DATABASE_HOST, ""),
            (env::DATABASE_PASSWORD, ""),
            (env::SERVER_ID, "x"),
        ],
    )
    .await;
    assert_eq!(status.code(), Some(2));
    assert!(
        err.contains("missing database settings: DATABASE_HOST, DATABASE_PASSWORD must be set"),
        "{err}"
    );

    let wrong = "definitely-the-wrong-secret";
    let (status, _, err) = run_cli(
        &pg,
        &["serve"],
        &[(env::DATABASE_PASSWORD, wrong), (env::SERVER_ID, "x")],
    )
    .await;
    assert_eq!(status.code(), Some(1));
    assert!(err.contains("password authentication failed"), "{err}");
    assert!(
        !err.contains(wrong) && !err.contains(&pg.password),
        "the password never appears: {err}"
    );

    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let started = std::time::Instant::now();
    let (status, _, err) = run_cli(&pg, &["serve"], &[(env::DATABASE_PORT, &closed), (env::SERVER_ID, "x")]).await;
    assert_eq!(status.code(), Some(1));
    assert!(
        err.contains("cannot connect to database \"process\" on 127.0.0.1:"),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(!err.contains("panicked"), "{err}");

    let (status, _, err) = run_cli(
        &pg,
        &["serve"],
        &[(env::DATABASE_SSLMODE, "sometimes"), (env::SERVER_ID, "x")],
    )
    .await;
    assert_eq!(status.code(), Some(2));
    assert!(
        err.contains("DATABASE_SSLMODE: sslmode \"sometimes\" is not one of"),
        "{err}"
    );
}
