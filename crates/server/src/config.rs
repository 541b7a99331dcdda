//! Settings from the environment (as the operator's pod template sets them); the names are
//! the contract's, [`orchestrator_contract::env`].

use std::time::Duration;

use anyhow::{Context, bail};
use orchestrator_contract::env;

/// Connection settings of the process database.
#[derive(Clone)]
pub(crate) struct DatabaseSettings {
    /// Host name or address.
    pub(crate) host: String,
    /// TCP port.
    pub(crate) port: u16,
    /// Database name.
    pub(crate) name: String,
    /// Login.
    pub(crate) user: String,
    /// Password (never logged: `Debug` hides it).
    pub(crate) password: String,
    /// libpq `sslmode`.
    pub(crate) sslmode: orchestrator_contract::tls::SslMode,
    /// PEM of the CA that signed the database's certificate ([`env::DATABASE_CA`]), else system
    /// roots.
    pub(crate) ca_pem: Option<String>,
}

impl std::fmt::Debug for DatabaseSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseSettings")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("name", &self.name)
            .field("user", &self.user)
            .field("password", &"<hidden>")
            .field("sslmode", &self.sslmode)
            .field("ca_pem", &self.ca_pem.as_ref().map(|_| "<given>"))
            .finish()
    }
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn parsed<T: std::str::FromStr>(name: &str, default: T) -> anyhow::Result<T> {
    match var(name) {
        None => Ok(default),
        Some(v) => v
            .parse()
            .map_err(|_| anyhow::anyhow!("{name}={v:?} is not a valid value")),
    }
}

impl DatabaseSettings {
    /// Reads `DATABASE_*` ([`env`]); names every missing variable at once.
    pub(crate) fn from_env() -> anyhow::Result<Self> {
        let required = [
            env::DATABASE_HOST,
            env::DATABASE_NAME,
            env::DATABASE_USER,
            env::DATABASE_PASSWORD,
        ];
        let missing: Vec<&str> = required.iter().copied().filter(|n| var(n).is_none()).collect();
        if !missing.is_empty() {
            bail!("missing database settings: {} must be set", missing.join(", "));
        }
        let sslmode = var(env::DATABASE_SSLMODE).unwrap_or_else(|| "prefer".into());
        let sslmode = sslmode
            .parse()
            .map_err(|e| anyhow::anyhow!("{}: {e}", env::DATABASE_SSLMODE))?;
        Ok(Self {
            host: var(env::DATABASE_HOST).unwrap_or_default(),
            port: parsed(env::DATABASE_PORT, 5432)?,
            name: var(env::DATABASE_NAME).unwrap_or_default(),
            user: var(env::DATABASE_USER).unwrap_or_default(),
            password: var(env::DATABASE_PASSWORD).unwrap_or_default(),
            sslmode,
            ca_pem: var(env::DATABASE_CA),
        })
    }

    /// The tokio-postgres configuration.
    pub(crate) fn pg_config(&self) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config
            .host(&self.host)
            .port(self.port)
            .dbname(&self.name)
            .user(&self.user)
            .password(&self.password)
            .application_name("orchestrator-server")
            .connect_timeout(Duration::from_secs(5));
        config
    }
}

/// Settings of `serve`.
#[derive(Clone, Debug)]
pub(crate) struct ServerSettings {
    /// Database connection.
    pub(crate) database: DatabaseSettings,
    /// Server id (the pod name).
    pub(crate) server_id: String,
    /// Server version.
    pub(crate) version: String,
    /// Address to bind (the pod IP).
    pub(crate) bind_ip: String,
    /// Port of the web service.
    pub(crate) http_port: u16,
    /// Port of `/metrics`.
    pub(crate) metrics_port: u16,
    /// Concurrent jobs.
    pub(crate) workers: usize,
    /// Time between heartbeats.
    pub(crate) heartbeat: Duration,
    /// Lease of a claimed job; renewed at a third of it.
    pub(crate) lease: Duration,
    /// How long a friendly shutdown waits for running jobs before handing them back.
    pub(crate) drain_timeout: Duration,
    /// Pause between claims when the queue is empty.
    pub(crate) idle_poll: Duration,
}

impl ServerSettings {
    /// Reads every setting from the environment.
    pub(crate) fn from_env() -> anyhow::Result<Self> {
        let database = DatabaseSettings::from_env()?;
        let server_id = var(env::SERVER_ID).or_else(|| var(env::HOSTNAME)).with_context(|| {
            format!(
                "{} (or {}) must be set: it is the server's id in the database",
                env::SERVER_ID,
                env::HOSTNAME
            )
        })?;
        let workers: usize = parsed(env::WORKERS, 4)?;
        if workers == 0 {
            bail!("{} must be at least 1", env::WORKERS);
        }
        Ok(Self {
            database,
            server_id,
            version: var(env::SERVER_VERSION).unwrap_or_else(|| env!("CARGO_PKG_VERSION").into()),
            bind_ip: var(env::POD_IP).unwrap_or_else(|| "127.0.0.1".into()),
            http_port: parsed(env::HTTP_PORT, 8080)?,
            metrics_port: parsed(env::METRICS_PORT, 9090)?,
            workers,
            heartbeat: Duration::from_millis(parsed(env::HEARTBEAT_MILLISECONDS, 2000)?),
            lease: Duration::from_millis(parsed(env::LEASE_MILLISECONDS, 15_000)?),
            drain_timeout: Duration::from_secs(parsed(env::DRAIN_TIMEOUT_SECONDS, 30)?),
            idle_poll: Duration::from_millis(parsed(env::IDLE_POLL_MILLISECONDS, 100)?),
        })
    }
}
