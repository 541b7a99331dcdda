//! `sslmode` semantics against a real PostgreSQL with TLS on.

use orchestrator_contract::tls::{ConnectError, SslMode, connect};
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

/// Logs in as `user` with `password` under `mode`.
async fn login(
    pg: &TestPostgres,
    user: &str,
    password: &str,
    mode: SslMode,
    ca: Option<&[u8]>,
) -> Result<tokio_postgres::Client, ConnectError> {
    let mut config = config(pg, "127.0.0.1");
    config.user(user).password(password);
    connect(&config, mode, ca).await
}

#[tokio::test]
async fn with_tls_required_only_a_channel_bound_scram_login_is_accepted() {
    let pg = TestPostgres::start_with_tls();
    let ca = pg.ca_pem();
    // Two logins the server authenticates the old ways: MD5, and the password in clear.
    pg.psql_as_superuser(
        DATABASE,
        "SET password_encryption = 'md5'; CREATE ROLE md5_login LOGIN PASSWORD 'md5-secret'; \
         RESET password_encryption; CREATE ROLE clear_login LOGIN PASSWORD 'clear-secret'",
    );
    let hba = pg.dir().join("data/pg_hba.conf");
    let rules = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(
        &hba,
        format!("host all md5_login 127.0.0.1/32 md5\nhost all clear_login 127.0.0.1/32 password\n{rules}"),
    )
    .unwrap();
    pg.psql_as_superuser(DATABASE, "SELECT pg_reload_conf()");

    // The default mode, with its CA: the SCRAM login is bound to the TLS channel.
    let scram = login(&pg, USER, &pg.password, SslMode::VerifyFull, Some(&ca)).await;
    assert!(uses_tls(&scram.unwrap()).await);
    for (user, password) in [("md5_login", "md5-secret"), ("clear_login", "clear-secret")] {
        for mode in [SslMode::Require, SslMode::VerifyCa, SslMode::VerifyFull] {
            match login(&pg, user, password, mode, Some(&ca)).await {
                Err(ConnectError::Postgres(error)) => assert!(
                    orchestrator_contract::tls::is_insecure_authentication(&error),
                    "{user} under {mode:?}: {error}"
                ),
                Err(other) => panic!("{user} under {mode:?}: {other:?}"),
                Ok(_) => panic!("{user} under {mode:?}: a login that does not bind the channel was accepted"),
            }
        }
        // `prefer` and `disable` are the explicit choice to accept them.
        for mode in [SslMode::Prefer, SslMode::Disable] {
            login(&pg, user, password, mode, None)
                .await
                .unwrap_or_else(|e| panic!("{user} under {mode:?}: {e:?}"));
        }
    }

    // A server without TLS is refused by the default mode.
    let plain = TestPostgres::start();
    let refused = login(&plain, USER, &plain.password, SslMode::VerifyFull, Some(&ca)).await;
    assert!(refused.is_err(), "a plain server is refused under verify-full");
}
