//! `sslmode` semantics against a real PostgreSQL with TLS on.

use orchestrator_contract::tls::{ChannelBinding, ConnectError, Connector, SslMode, connect};
use testing_postgres::{DATABASE, TestPostgres, USER};

fn config(pg: &TestPostgres, host: &str) -> tokio_postgres::Config {
    let mut config = tokio_postgres::Config::new();
    config
        .host(host)
        .port(pg.port)
        .user(USER)
        .password(&pg.password)
        .dbname(DATABASE);
    config
}

async fn uses_tls(client: &tokio_postgres::Client) -> bool {
    client
        .query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn each_sslmode_behaves_like_libpq() {
    let pg = TestPostgres::start_with_tls();
    let ca = pg.ca_pem();
    let ip = config(&pg, "127.0.0.1");
    let by_name = config(&pg, "localhost");

    assert!(!uses_tls(&connect(&ip, SslMode::Disable, None).await.unwrap()).await);
    assert!(uses_tls(&connect(&ip, SslMode::Prefer, None).await.unwrap()).await);
    assert!(
        uses_tls(&connect(&ip, SslMode::Require, None).await.unwrap()).await,
        "require needs no CA"
    );
    assert!(uses_tls(&connect(&ip, SslMode::VerifyFull, Some(&ca)).await.unwrap()).await);
    assert!(
        uses_tls(&connect(&by_name, SslMode::VerifyCa, Some(&ca)).await.unwrap()).await,
        "verify-ca ignores the name"
    );

    let wrong_name = connect(&by_name, SslMode::VerifyFull, Some(&ca)).await.unwrap_err();
    assert!(
        matches!(&wrong_name, ConnectError::Tls(m) if m.contains("not valid for name")),
        "{wrong_name:?}"
    );
    let unknown_ca = connect(&ip, SslMode::VerifyFull, None).await.unwrap_err();
    assert!(
        matches!(&unknown_ca, ConnectError::Tls(m) if m.contains("UnknownIssuer")),
        "{unknown_ca:?}"
    );
    let garbage = connect(&ip, SslMode::VerifyCa, Some(b"not a certificate"))
        .await
        .unwrap_err();
    assert!(matches!(garbage, ConnectError::Tls(_)), "{garbage:?}");
    assert!(matches!(
        "sometimes".parse::<SslMode>(),
        Err(ConnectError::UnknownMode(_))
    ));
}

#[tokio::test]
async fn the_default_mode_verifies_with_the_ca_and_refuses_a_plain_server() {
    let pg = TestPostgres::start_with_tls();
    let ca = pg.ca_pem();
    let client = connect(&config(&pg, "127.0.0.1"), SslMode::VerifyFull, Some(&ca))
        .await
        .unwrap();
    assert!(uses_tls(&client).await);
    let plain = TestPostgres::start();
    let refused = connect(&config(&plain, "127.0.0.1"), SslMode::VerifyFull, Some(&ca)).await;
    assert!(refused.is_err(), "a plain server is refused under verify-full");
}

fn login(pg: &TestPostgres, user: &str, password: &str) -> tokio_postgres::Config {
    let mut config = config(pg, "127.0.0.1");
    config.user(user).password(password);
    config
}

#[tokio::test]
async fn required_channel_binding_refuses_logins_that_do_not_bind_the_channel() {
    let pg = TestPostgres::start_with_tls();
    let ca = pg.ca_pem();
    pg.add_login("md5_login", "md5-secret", "md5", "md5");
    pg.add_login("cleartext_login", "plain-secret", "password", "scram-sha-256");
    let require = Connector::with_binding(SslMode::VerifyFull, ChannelBinding::Require, Some(&ca)).unwrap();
    let prefer = Connector::with_binding(SslMode::VerifyFull, ChannelBinding::Prefer, Some(&ca)).unwrap();
    assert_eq!(
        ChannelBinding::default_for(SslMode::VerifyFull),
        ChannelBinding::Require,
        "verify-full binds by default"
    );

    let scram = require.connect(&config(&pg, "127.0.0.1")).await.unwrap();
    assert!(uses_tls(&scram).await, "SCRAM-SHA-256-PLUS over TLS passes");
    for (user, password) in [("md5_login", "md5-secret"), ("cleartext_login", "plain-secret")] {
        let refused = require.connect(&login(&pg, user, password)).await.unwrap_err();
        assert!(matches!(refused, ConnectError::Unbound), "{user}: {refused:?}");
        assert!(refused.to_string().contains("channel binding is required"), "{refused}");
        let accepted = prefer.connect(&login(&pg, user, password)).await;
        assert!(accepted.is_ok(), "{user} passes when the spec opts in: {accepted:?}");
    }

    // `prefer` may end up without TLS, where no login binds: required binding refuses it.
    let plain = TestPostgres::start();
    let without_tls = Connector::with_binding(SslMode::Prefer, ChannelBinding::Require, None).unwrap();
    let refused = without_tls.connect(&config(&plain, "127.0.0.1")).await.unwrap_err();
    assert!(matches!(refused, ConnectError::Unbound), "{refused:?}");
    assert!(matches!(
        Connector::with_binding(SslMode::Disable, ChannelBinding::Require, None),
        Err(ConnectError::BindingWithoutTls)
    ));
    assert_eq!(ChannelBinding::default_for(SslMode::Disable), ChannelBinding::Prefer);
    assert!(matches!(
        "disable".parse::<ChannelBinding>(),
        Err(ConnectError::UnknownChannelBinding(_))
    ));
}
