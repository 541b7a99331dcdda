//! `schema check` and `schema migrate` against a real PostgreSQL, and servers refusing a
//! database whose schema they cannot run.

mod support;

use orchestrator_contract::{self as contract, env};
use support::{Server, ServerOptions, connect, run_cli};
use testing_postgres::TestPostgres;

fn code(status: std::process::ExitStatus) -> i32 {
    status.code().expect("exited normally")
}

#[tokio::test(flavor = "multi_thread")]
async fn check_exit_codes_and_servers_refusing_other_schemas() {
    let pg = TestPostgres::start();
    let check = async |version: &str| {
        code(
            run_cli(&pg, &["schema", "check"], &[(env::SERVER_VERSION, version)])
                .await
                .0,
        )
    };
    assert_eq!(check("2.0.0").await, 10, "empty database: migration needed");
    let (status, out, _) = run_cli(
        &pg,
        &["schema", "migrate", "--to", "1"],
        &[(env::SERVER_VERSION, "2.0.0")],
    )
    .await;
    assert!(status.success(), "{out}");
    assert_eq!(check("1.0.0").await, 0, "1.x runs on schema 1");
    assert_eq!(check("2.0.0").await, 10, "2.x needs schema 2");

    let mut refused = Server::spawn(
        &pg,
        "new-on-old",
        &ServerOptions {
            version: "2.0.0",
            ..Default::default()
        },
    );
    let status = refused.wait_exit(std::time::Duration::from_secs(10)).await;
    assert_eq!(code(status), 3, "{}", refused.log());
    assert!(
        refused
            .log()
            .contains("database schema version 1 is older than version 2.0.0 needs (2)"),
        "{}",
        refused.log()
    );

    let (status, out, _) = run_cli(&pg, &["schema", "migrate"], &[(env::SERVER_VERSION, "2.0.0")]).await;
    assert!(status.success(), "{out}");
    assert_eq!(check("2.0.0").await, 0);
    assert_eq!(check("1.0.0").await, 11, "database newer than 1.x");
    let mut old = Server::spawn(
        &pg,
        "old-on-new",
        &ServerOptions {
            version: "1.0.0",
            ..Default::default()
        },
    );
    assert_eq!(
        code(old.wait_exit(std::time::Duration::from_secs(10)).await),
        3,
        "{}",
        old.log()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn migrate_twice_and_concurrently_is_safe() {
    let pg = TestPostgres::start();
    let runs: Vec<_> = (0..4)
        .map(|_| run_cli(&pg, &["schema", "migrate"], &[(env::SERVER_VERSION, "2.0.0")]))
        .collect();
    for (status, out, err) in futures::future::join_all(runs).await {
        assert!(status.success(), "{out}{err}");
    }
    let (status, out, _) = run_cli(&pg, &["schema", "migrate"], &[(env::SERVER_VERSION, "2.0.0")]).await;
    assert!(status.success());
    assert!(out.contains("schema already at 2"), "{out}");
    let db = connect(&pg).await;
    assert_eq!(contract::schema_version(&db).await.unwrap(), 2);
    let rows: i64 = db
        .query_one("SELECT count(*) FROM schema_info", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn migrate_refuses_while_incompatible_servers_are_active() {
    let pg = TestPostgres::start();
    run_cli(&pg, &["schema", "migrate", "--to", "1"], &[]).await;
    let _old = Server::start(
        &pg,
        "old-0",
        &ServerOptions {
            version: "1.3.0",
            ..Default::default()
        },
    )
    .await;
    let (status, _, err) = run_cli(&pg, &["schema", "migrate"], &[(env::SERVER_VERSION, "2.0.0")]).await;
    assert_eq!(code(status), 12, "{err}");
    assert!(err.contains("active servers cannot run it: old-0 (1.3.0)"), "{err}");
    let db = connect(&pg).await;
    assert_eq!(contract::schema_version(&db).await.unwrap(), 1, "nothing half-migrated");
    let (status, _, err) = run_cli(
        &pg,
        &["schema", "migrate", "--force"],
        &[(env::SERVER_VERSION, "2.0.0")],
    )
    .await;
    assert!(status.success(), "{err}");
    assert_eq!(contract::schema_version(&db).await.unwrap(), 2);
}
