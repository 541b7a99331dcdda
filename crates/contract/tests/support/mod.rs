//! Shared set-up of the contract's database tests.

use orchestrator_contract::{self as contract, Registration};
use testing_postgres::TestPostgres;
use tokio_postgres::{Client, NoTls};

/// A throwaway PostgreSQL at the latest schema, with server `server_id` registered (version
/// 2.0.0, active), and a connection to it.
pub(crate) async fn registered(server_id: &str) -> (TestPostgres, Client) {
    let pg = TestPostgres::start();
    let (mut db, connection) = tokio_postgres::connect(&pg.url(), NoTls).await.unwrap();
    tokio::spawn(connection);
    contract::migrations::migrate(&mut db, contract::LATEST_SCHEMA, false)
        .await
        .unwrap();
    let server = Registration {
        server_id,
        version: "2.0.0",
        schema: contract::schema_range_for_version("2.0.0"),
    };
    contract::register(&db, &server).await.unwrap();
    (pg, db)
}
