//! Notifications of server rows against a real PostgreSQL: every write of the contract that
//! changes a row of `servers` notifies `SERVER_CHANNEL` with the row's id, once, on commit;
//! heartbeats, writes that change nothing and rolled-back writes never do.
//!
//! "Nothing came" is checked twice: nothing arrives within `QUIET`, and a sentinel notified
//! after the writes (notifications arrive in commit order) is the very next one, which also
//! proves that the listener still listens.

use std::time::Duration;

use orchestrator_contract::tls::{SslMode, connect_with_notifications};
use orchestrator_contract::{self as contract, Registration, SERVER_CHANNEL, StateWrite, server_state};
use testing_postgres::{DATABASE, TestPostgres, USER};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::timeout;
use tokio_postgres::{Client, Config, NoTls, Notification};

mod support;
use support::registered;

/// How long "no notification" is waited for.
const QUIET: Duration = Duration::from_millis(300);
/// How long an expected notification may take.
const PATIENCE: Duration = Duration::from_secs(10);
/// Payload of the sentinel (no server has this id).
const SENTINEL: &str = "sentinel: no server row";

/// A session that listens on `SERVER_CHANNEL`, as the operator's would.
struct Listener {
    client: Client,
    notifications: UnboundedReceiver<Notification>,
}

impl Listener {
    async fn open(config: &Config, mode: SslMode, ca: Option<&[u8]>) -> Self {
        let (client, notifications) = connect_with_notifications(config, mode, ca).await.unwrap();
        contract::listen(&client).await.unwrap();
        Self { client, notifications }
    }

    async fn plain(pg: &TestPostgres) -> Self {
        Self::open(&pg.url().parse().unwrap(), SslMode::Disable, None).await
    }

    async fn next(&mut self) -> Notification {
        timeout(PATIENCE, self.notifications.recv())
            .await
            .expect("a notification in time")
            .expect("the listening connection is open")
    }

    /// Exactly one notification came of the writes so far, for `server_id`.
    async fn expect(&mut self, server_id: &str) {
        let got = self.next().await;
        assert_eq!(
            (got.channel(), got.payload()),
            (SERVER_CHANNEL, server_id),
            "the notification of {server_id}"
        );
        self.expect_sentinel(server_id).await;
    }

    /// No notification came of the writes so far (`what` names them).
    async fn expect_none(&mut self, what: &str) {
        if let Ok(got) = timeout(QUIET, self.notifications.recv()).await {
            panic!("{what} notified: {got:?}");
        }
        self.expect_sentinel(what).await;
    }

    /// Notifies the sentinel (from the listener's own session, after every write committed so
    /// far) and checks that it is the next notification.
    async fn expect_sentinel(&mut self, what: &str) {
        self.client
            .execute("SELECT pg_notify($1, $2)", &[&SERVER_CHANNEL, &SENTINEL])
            .await
            .unwrap();
        let got = self.next().await;
        assert_eq!(got.payload(), SENTINEL, "after {what}: one notification too many");
    }
}

fn registration(server_id: &str) -> Registration<'_> {
    Registration {
        server_id,
        version: "2.0.0",
        schema: contract::schema_range_for_version("2.0.0"),
    }
}

#[tokio::test]
async fn writes_that_change_a_server_row_notify_its_id() {
    let (pg, db) = registered("ns/s-0").await;
    let mut listener = Listener::plain(&pg).await;
    let id = "ns/s-0";

    contract::register(&db, &registration("ns/s-1")).await.unwrap();
    listener.expect("ns/s-1").await;
    contract::register(&db, &registration(id)).await.unwrap();
    listener.expect(id).await;
    contract::register(&db, &registration("s-2")).await.unwrap();
    listener.expect("s-2").await;

    for state in [
        server_state::JOINING,
        server_state::ACTIVE,
        server_state::DRAINING,
        server_state::STOPPED,
    ] {
        assert_eq!(contract::set_state(&db, id, state).await.unwrap(), 1, "{state}");
        listener.expect(id).await;
    }

    assert!(contract::request_drain(&db, id).await.unwrap());
    listener.expect(id).await;
    assert_eq!(
        contract::set_state_if_drain(&db, id, server_state::DRAINING, true)
            .await
            .unwrap(),
        StateWrite::Written
    );
    listener.expect(id).await;
    assert!(contract::cancel_drain(&db, id).await.unwrap());
    listener.expect(id).await;
    assert_eq!(
        contract::set_state_if_drain(&db, id, server_state::ACTIVE, false)
            .await
            .unwrap(),
        StateWrite::Written
    );
    listener.expect(id).await;

    assert!(contract::remove_server(&db, "ns/s-1").await.unwrap());
    listener.expect("ns/s-1").await;
    assert!(contract::remove_server(&db, "s-2").await.unwrap());
    listener.expect("s-2").await;
}

#[tokio::test]
async fn heartbeats_and_writes_that_change_nothing_do_not_notify() {
    let (pg, db) = registered("ns/s-0").await;
    let mut listener = Listener::plain(&pg).await;
    let id = "ns/s-0";
    let gone = "ns/gone";

    let reply = contract::heartbeat(&db, id, 0).await.unwrap();
    assert!(reply.registered);
    listener.expect_none("a heartbeat").await;

    assert_eq!(contract::set_state(&db, gone, server_state::ACTIVE).await.unwrap(), 0);
    listener.expect_none("set_state of no row").await;
    assert_eq!(
        contract::set_state_if_drain(&db, gone, server_state::STOPPED, true)
            .await
            .unwrap(),
        StateWrite::NoRow
    );
    listener.expect_none("set_state_if_drain of no row").await;
    assert!(!contract::request_drain(&db, gone).await.unwrap());
    listener.expect_none("request_drain of no row").await;
    assert!(!contract::remove_server(&db, gone).await.unwrap());
    listener.expect_none("remove_server of no row").await;
    assert!(!contract::cancel_drain(&db, id).await.unwrap());
    listener.expect_none("cancel_drain without a request").await;

    // A server that owns a running job keeps its row.
    contract::submit_job(&db, contract::job_kind::NOOP, &serde_json::json!({}))
        .await
        .unwrap();
    let job = contract::claim_job(&db, id, Duration::from_secs(60)).await.unwrap();
    assert!(job.is_some());
    assert!(!contract::remove_server(&db, id).await.unwrap());
    listener.expect_none("remove_server of a server owning a job").await;
    let reply = contract::heartbeat(&db, id, 1).await.unwrap();
    assert!(reply.registered);
    listener.expect_none("a heartbeat with a running job").await;

    // A repeated drain request keeps the first one: nothing changed.
    assert!(contract::request_drain(&db, id).await.unwrap());
    listener.expect(id).await;
    assert!(contract::request_drain(&db, id).await.unwrap());
    listener.expect_none("a repeated request_drain").await;
    let reply = contract::heartbeat(&db, id, 1).await.unwrap();
    assert!(reply.drain_requested);
    listener.expect_none("a heartbeat that learns of the drain").await;
    assert_eq!(
        contract::set_state_if_drain(&db, id, server_state::ACTIVE, false)
            .await
            .unwrap(),
        StateWrite::Refused
    );
    listener.expect_none("a refused set_state_if_drain").await;
}

#[tokio::test]
async fn notifications_are_sent_on_commit_only() {
    let (pg, mut db) = registered("ns/s-0").await;
    let mut listener = Listener::plain(&pg).await;
    let id = "ns/s-0";

    let tx = db.transaction().await.unwrap();
    contract::register(&tx, &registration("ns/s-1")).await.unwrap();
    assert_eq!(contract::set_state(&tx, id, server_state::DRAINING).await.unwrap(), 1);
    assert!(contract::request_drain(&tx, id).await.unwrap());
    listener.expect_none("writes of an open transaction").await;
    tx.rollback().await.unwrap();
    listener.expect_none("writes rolled back").await;
    let state: String = db
        .query_one("SELECT state FROM servers WHERE server_id = $1", &[&id])
        .await
        .unwrap()
        .get(0);
    assert_eq!(state, server_state::ACTIVE, "the rollback undid the write");

    let tx = db.transaction().await.unwrap();
    assert_eq!(contract::set_state(&tx, id, server_state::DRAINING).await.unwrap(), 1);
    listener.expect_none("a write of an open transaction").await;
    tx.commit().await.unwrap();
    listener.expect(id).await;
}

/// Ends session `pid` from the database's side (a restart, a failover, an administrator).
async fn terminate(db: &Client, pid: i32) {
    let terminated: bool = db
        .query_one("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap()
        .get(0);
    assert!(terminated);
}

#[tokio::test]
async fn the_notifications_end_when_the_connection_closes() {
    let (pg, db) = registered("ns/s-0").await;

    // The database ends the session (a restart, a failover, an administrator).
    let mut listener = Listener::plain(&pg).await;
    let pid: i32 = listener
        .client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    terminate(&db, pid).await;
    let end = timeout(PATIENCE, listener.notifications.recv())
        .await
        .expect("the end in time");
    assert!(end.is_none(), "{end:?}");

    // The client is dropped.
    let Listener {
        client,
        mut notifications,
    } = Listener::plain(&pg).await;
    drop(client);
    let end = timeout(PATIENCE, notifications.recv()).await.expect("the end in time");
    assert!(end.is_none(), "{end:?}");
}

#[tokio::test]
async fn notifications_arrive_over_verified_tls() {
    let pg = TestPostgres::start_with_tls();
    let (mut db, connection) = tokio_postgres::connect(&pg.url(), NoTls).await.unwrap();
    tokio::spawn(connection);
    contract::migrations::migrate(&mut db, contract::LATEST_SCHEMA, false)
        .await
        .unwrap();
    let mut config = Config::new();
    config
        .host("127.0.0.1")
        .port(pg.port)
        .user(USER)
        .password(&pg.password)
        .dbname(DATABASE);
    let mut listener = Listener::open(&config, SslMode::VerifyFull, Some(&pg.ca_pem())).await;
    let tls: bool = listener
        .client
        .query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    assert!(tls, "the listener uses TLS");

    contract::register(&db, &registration("ns/s-0")).await.unwrap();
    listener.expect("ns/s-0").await;
    assert!(contract::heartbeat(&db, "ns/s-0", 0).await.unwrap().registered);
    listener.expect_none("a heartbeat").await;
}

#[tokio::test]
async fn a_listening_pool_hears_the_rows_and_listens_again_on_a_new_connection() {
    let (pg, db) = registered("ns/s-0").await;
    let (sink, mut heard) = tokio::sync::mpsc::unbounded_channel();
    let connector = orchestrator_contract::tls::Connector::new(SslMode::Disable, None)
        .unwrap()
        .listening(sink);
    let manager = deadpool_postgres::Manager::from_connect(
        pg.url().parse().unwrap(),
        connector,
        deadpool_postgres::ManagerConfig::default(),
    );
    let pool = deadpool_postgres::Pool::builder(manager).max_size(1).build().unwrap();
    let mut next = async || {
        timeout(PATIENCE, heard.recv())
            .await
            .expect("a notification in time")
            .expect("the sink is open")
    };

    // The connection listens from the moment the pool hands it out.
    let pid: i32 = pool
        .get()
        .await
        .unwrap()
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    assert!(contract::request_drain(&db, "ns/s-0").await.unwrap());
    assert_eq!(next().await.payload(), "ns/s-0");

    // The database ends the session; the pool's next connection listens again.
    terminate(&db, pid).await;
    let again: i32 = loop {
        // The pool finds its connection closed (recycling checks it) and opens another.
        match pool.get().await {
            Ok(client) => match client.query_one("SELECT pg_backend_pid()", &[]).await {
                Ok(row) => break row.get(0),
                Err(_) => drop(deadpool_postgres::Object::take(client)),
            },
            Err(error) => panic!("no new connection: {error}"),
        }
    };
    assert_ne!(again, pid);
    assert!(contract::cancel_drain(&db, "ns/s-0").await.unwrap());
    assert_eq!(next().await.payload(), "ns/s-0");
}
