//! Settings from the environment (as the operator's pod template sets them).

use std::time::Duration;

use anyhow::{Context, bail};

/// Connection settings of the process database.
#[derive(Clone)]
pub struct DatabaseSettings {
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Database name.
    pub name: String,
    /// Login.
    pub user: String,
    /// Password (never logged: `Debug` hides it).
    pub password: String,
    /// libpq `sslmode`.
    pub sslmode: orchestrator_contract::tls::SslMode,
    /// PEM of the CA that signed the database's certificate (`DATABASE_CA`), else system roots.
    pub ca_pem: Option<String>,
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
    /// Reads `DATABASE_*`; names every missing variable at once.
    pub fn from_env() -> anyhow::Result<Self> {
        let required = ["DATABASE_HOST", "DATABASE_NAME", "DATABASE_USER", "DATABASE_PASSWORD"];
        let missing: Vec<&str> = required.iter().copied().filter(|n| var(n).is_none()).collect();
        if !missing.is_empty() {
            bail!("missing database settings: {} must be set", missing.join(", "));
        }
        let sslmode = var("DATABASE_SSLMODE").unwrap_or_else(|| "prefer".into());
        let sslmode = sslmode.parse().map_err(|e| anyhow::anyhow!("DATABASE_SSLMODE: {e}"))?;
        Ok(Self {
            host: var("DATABASE_HOST").unwrap_or_default(),
            port: parsed("DATABASE_PORT", 5432)?,
            name: var("DATABASE_NAME").unwrap_or_default(),
            user: var("DATABASE_USER").unwrap_or_default(),
            password: var("DATABASE_PASSWORD").unwrap_or_default(),
            sslmode,
            ca_pem: var("DATABASE_CA"),
        })
    }

    /// The tokio-postgres configuration.
    pub fn pg_config(&self) -> tokio_postgres::Config {
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
pub struct ServerSettings {
    /// Database connection.
    pub database: DatabaseSettings,
    /// Server id (the pod name).
    pub server_id: String,
    /// Server version.
    pub version: String,
    /// Address to bind (the pod IP).
    pub bind_ip: String,
    /// Port of the web service.
    pub http_port: u16,
    /// Port of `/metrics`.
    pub metrics_port: u16,
    /// Concurrent jobs.
    pub workers: usize,
    /// Time between heartbeats.
    pub heartbeat: Duration,
    /// Lease of a claimed job; renewed at a third of it.
    pub lease: Duration,
    /// How long a friendly shutdown waits for running jobs before handing them back.
    pub drain_timeout: Duration,
    /// Pause between claims when the queue is empty.
    pub idle_poll: Duration,
}

impl ServerSettings {
    /// Reads every setting from the environment.
    pub fn from_env() -> anyhow::Result<Self> {
        let database = DatabaseSettings::from_env()?;
        let server_id = var("SERVER_ID")
            .or_else(|| var("HOSTNAME"))
            .context("SERVER_ID (or HOSTNAME) must be set: it is the server's id in the database")?;
        let workers: usize = parsed("WORKERS", 4)?;
        if workers == 0 {
            bail!("WORKERS must be at least 1");
        }
        Ok(Self {
            database,
            server_id,
            version: var("SERVER_VERSION").unwrap_or_else(|| env!("CARGO_PKG_VERSION").into()),
            bind_ip: var("POD_IP").unwrap_or_else(|| "127.0.0.1".into()),
            http_port: parsed("HTTP_PORT", 8080)?,
            metrics_port: parsed("METRICS_PORT", 9090)?,
            workers,
            heartbeat: Duration::from_millis(parsed("HEARTBEAT_MILLISECONDS", 2000)?),
            lease: Duration::from_millis(parsed("LEASE_MILLISECONDS", 15_000)?),
            drain_timeout: Duration::from_secs(parsed("DRAIN_TIMEOUT_SECONDS", 30)?),
            idle_poll: Duration::from_millis(parsed("IDLE_POLL_MILLISECONDS", 100)?),
        })
    }
}
