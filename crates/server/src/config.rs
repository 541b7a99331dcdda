//! Settings from the environment (as the operator's pod template sets them); the names are
//! the contract's, [`orchestrator_contract::env`].

use std::time::Duration;

use anyhow::{Context, bail};
use orchestrator_contract::{self as contract, env};

/// Default size of the connection pool: the web service and the workers share it, each
/// holding a connection only for the length of a query (a job runs without one). The
/// heartbeat has a connection of its own besides: 3 per server, so that 30 servers and the
/// operator fit PostgreSQL's default `max_connections` of 100.
pub(crate) const DEFAULT_MAX_CONNECTIONS: usize = 2;

/// Default number of claims after which a job whose lease expired is dead-lettered.
pub(crate) const DEFAULT_MAX_ATTEMPTS: i32 = 3;

/// Longest wait for the database to accept a TCP connection.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Idle time of a connection before TCP keepalive probes start: with
/// [`KEEPALIVE_INTERVAL`] and [`KEEPALIVE_RETRIES`], a silent peer (a database host gone,
/// a dropped NAT entry) closes an idle connection within about 25 s.
pub(crate) const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);

/// Time between unanswered TCP keepalive probes.
pub(crate) const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);

/// Unanswered TCP keepalive probes after which a connection is closed.
pub(crate) const KEEPALIVE_RETRIES: u32 = 3;

/// Longest time data sent on a connection may stay unacknowledged by the peer's TCP stack
/// before the connection is closed (`TCP_USER_TIMEOUT`).
pub(crate) const TCP_USER_TIMEOUT: Duration = Duration::from_secs(15);

/// Longest time the pool's queries may take, for servers with a long lease (see
/// [`ServerSettings::query_timeout`]).
pub(crate) const MAX_QUERY_TIMEOUT: Duration = Duration::from_secs(5);

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
    /// libpq `channel_binding` ([`env::DATABASE_CHANNEL_BINDING`]).
    pub(crate) channel_binding: orchestrator_contract::tls::ChannelBinding,
    /// PEM of the CA that signed the database's certificate ([`env::DATABASE_CA`]), else system
    /// roots.
    pub(crate) ca_pem: Option<String>,
    /// Size of the process's connection pool ([`env::DATABASE_MAX_CONNECTIONS`]).
    pub(crate) max_connections: usize,
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
            .field("channel_binding", &self.channel_binding)
            .field("ca_pem", &self.ca_pem.as_ref().map(|_| "<given>"))
            .field("max_connections", &self.max_connections)
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
        let max_connections: usize = parsed(env::DATABASE_MAX_CONNECTIONS, DEFAULT_MAX_CONNECTIONS)?;
        if max_connections == 0 {
            bail!("{} must be at least 1", env::DATABASE_MAX_CONNECTIONS);
        }
        let sslmode = var(env::DATABASE_SSLMODE).unwrap_or_else(|| "prefer".into());
        let sslmode = sslmode
            .parse()
            .map_err(|e| anyhow::anyhow!("{}: {e}", env::DATABASE_SSLMODE))?;
        let channel_binding = match var(env::DATABASE_CHANNEL_BINDING) {
            Some(value) => value
                .parse()
                .map_err(|e| anyhow::anyhow!("{}: {e}", env::DATABASE_CHANNEL_BINDING))?,
            None => orchestrator_contract::tls::ChannelBinding::default_for(sslmode),
        };
        Ok(Self {
            host: var(env::DATABASE_HOST).unwrap_or_default(),
            port: parsed(env::DATABASE_PORT, 5432)?,
            name: var(env::DATABASE_NAME).unwrap_or_default(),
            user: var(env::DATABASE_USER).unwrap_or_default(),
            password: var(env::DATABASE_PASSWORD).unwrap_or_default(),
            sslmode,
            channel_binding,
            ca_pem: var(env::DATABASE_CA),
            max_connections,
        })
    }

    /// The tokio-postgres configuration: TCP keepalives and a `TCP_USER_TIMEOUT`, so that a
    /// connection whose peer went silent is closed by the kernel rather than kept forever.
    pub(crate) fn pg_config(&self) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config
            .host(&self.host)
            .port(self.port)
            .dbname(&self.name)
            .user(&self.user)
            .password(&self.password)
            .application_name("orchestrator-server")
            .connect_timeout(CONNECT_TIMEOUT)
            .keepalives(true)
            .keepalives_idle(KEEPALIVE_IDLE)
            .keepalives_interval(KEEPALIVE_INTERVAL)
            .keepalives_retries(KEEPALIVE_RETRIES)
            .tcp_user_timeout(TCP_USER_TIMEOUT);
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
    /// Lease of a claimed job; renewed with every heartbeat.
    pub(crate) lease: Duration,
    /// How long a friendly shutdown waits for running jobs before handing them back.
    pub(crate) drain_timeout: Duration,
    /// Pause between claims when the queue is empty.
    pub(crate) idle_poll: Duration,
    /// Claims after which a job whose lease expired is dead-lettered.
    pub(crate) max_attempts: i32,
}

impl ServerSettings {
    /// Reads every setting from the environment.
    pub(crate) fn from_env() -> anyhow::Result<Self> {
        let database = DatabaseSettings::from_env()?;
        let name = var(env::SERVER_ID).or_else(|| var(env::HOSTNAME)).with_context(|| {
            format!(
                "{} (or {}) must be set: it is the server's id in the database",
                env::SERVER_ID,
                env::HOSTNAME
            )
        })?;
        // Qualified by the namespace: same-named clusters of two namespaces never share a row.
        let server_id = contract::server_identity(var(env::POD_NAMESPACE).as_deref(), &name);
        let workers: usize = parsed(env::WORKERS, usize::from(env::DEFAULT_WORKERS))?;
        if workers == 0 {
            bail!("{} must be at least 1", env::WORKERS);
        }
        let max_attempts: i32 = parsed(env::JOB_MAX_ATTEMPTS, DEFAULT_MAX_ATTEMPTS)?;
        if max_attempts < 1 {
            bail!("{} must be at least 1", env::JOB_MAX_ATTEMPTS);
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
            max_attempts,
        })
        .and_then(Self::checked)
    }

    /// Refuses settings under which no lease could be kept: at least two heartbeats (which
    /// renew the leases) must come before a local lease deadline passes, so that one failed
    /// heartbeat (a connection to replace) does not cost every running job. The heartbeat is
    /// at most half of the lease less its margin.
    fn checked(self) -> anyhow::Result<Self> {
        if self.heartbeat.is_zero() || self.heartbeat > self.lease_window() / 2 {
            bail!(
                "{} ({} ms) must be more than 0 and at most half of {} ({} ms) less its safety margin ({} ms): at most {} ms",
                env::HEARTBEAT_MILLISECONDS,
                self.heartbeat.as_millis(),
                env::LEASE_MILLISECONDS,
                self.lease.as_millis(),
                self.lease_margin().as_millis(),
                (self.lease_window() / 2).as_millis()
            );
        }
        Ok(self)
    }

    /// The time a lease holds here: the lease less its margin, from the send of a claim or a
    /// renewal to its local deadline.
    fn lease_window(&self) -> Duration {
        self.lease - self.lease_margin()
    }

    /// Longest time one of the pool's operations may take (a claim, a completion, a state
    /// write, a query of the web service), and the `statement_timeout` of the pool's sessions:
    /// the lease window (a claim answered later would be lost at once), at most
    /// [`MAX_QUERY_TIMEOUT`].
    pub(crate) fn query_timeout(&self) -> Duration {
        self.lease_window().min(MAX_QUERY_TIMEOUT)
    }

    /// Longest time one heartbeat (with its lease renewal) may take on the heartbeat's own
    /// connection, and that connection's `statement_timeout`: one heartbeat interval, at
    /// least 1 s, but at most half the lease window, so that a second heartbeat on a fresh
    /// connection still comes before the local lease deadlines.
    pub(crate) fn heartbeat_timeout(&self) -> Duration {
        self.heartbeat.max(Duration::from_secs(1)).min(self.lease_window() / 2)
    }

    /// The safety margin of this server's lease ([`lease_margin`]).
    pub(crate) fn lease_margin(&self) -> Duration {
        lease_margin(self.lease)
    }

    /// The local deadline of a lease granted or renewed by a statement sent at `sent`.
    pub(crate) fn lease_deadline(&self, sent: tokio::time::Instant) -> tokio::time::Instant {
        sent + self.lease - self.lease_margin()
    }
}

/// How long before the database's lease expiry a job's local deadline falls:
/// `max(lease / 5, 1 s)`, but at most half the lease. It covers the time the cancelled work
/// takes to stop and any difference in rate between this host's monotonic clock and the
/// database's clock.
pub(crate) fn lease_margin(lease: Duration) -> Duration {
    (lease / 5).max(Duration::from_secs(1)).min(lease / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Settings with `heartbeat` and `lease` in milliseconds, the rest irrelevant.
    fn settings(heartbeat: u64, lease: u64) -> ServerSettings {
        ServerSettings {
            database: DatabaseSettings {
                host: "db".into(),
                port: 5432,
                name: "process".into(),
                user: "someone".into(),
                password: "secret".into(),
                sslmode: orchestrator_contract::tls::SslMode::Disable,
                channel_binding: orchestrator_contract::tls::ChannelBinding::Prefer,
                ca_pem: None,
                max_connections: 4,
            },
            server_id: "s".into(),
            version: "2.0.0".into(),
            bind_ip: "127.0.0.1".into(),
            http_port: 8080,
            metrics_port: 9090,
            workers: 1,
            heartbeat: Duration::from_millis(heartbeat),
            lease: Duration::from_millis(lease),
            drain_timeout: Duration::from_secs(30),
            idle_poll: Duration::from_millis(100),
            max_attempts: 3,
        }
    }

    #[test]
    fn the_heartbeat_is_at_most_half_the_lease_less_its_margin() {
        // 15 s lease, 3 s margin: at most 6 s.
        assert!(settings(6000, 15_000).checked().is_ok());
        let error = settings(6001, 15_000).checked().unwrap_err().to_string();
        assert!(error.contains("at most 6000 ms"), "{error}");
        // One heartbeat per window would lose every job at the first failed heartbeat.
        assert!(settings(11_000, 15_000).checked().is_err());
        assert!(settings(0, 15_000).checked().is_err());
        // The test servers: 300 ms heartbeats, 1.5 s lease (750 ms margin).
        assert!(settings(300, 1500).checked().is_ok());
    }

    #[test]
    fn timeouts_follow_the_lease() {
        let defaults = settings(2000, 15_000);
        assert_eq!(defaults.query_timeout(), Duration::from_secs(5));
        assert_eq!(defaults.heartbeat_timeout(), Duration::from_secs(2));
        let short = settings(300, 3000);
        assert_eq!(short.query_timeout(), Duration::from_secs(2));
        assert_eq!(short.heartbeat_timeout(), Duration::from_secs(1));
    }

    #[test]
    fn connections_close_when_the_peer_goes_silent() {
        let config = settings(2000, 15_000).database.pg_config();
        assert!(config.get_keepalives());
        assert_eq!(config.get_keepalives_idle(), KEEPALIVE_IDLE);
        assert_eq!(config.get_keepalives_interval(), Some(KEEPALIVE_INTERVAL));
        assert_eq!(config.get_keepalives_retries(), Some(KEEPALIVE_RETRIES));
        assert_eq!(config.get_tcp_user_timeout(), Some(&TCP_USER_TIMEOUT));
    }

    #[test]
    fn the_lease_margin_is_a_fifth_at_least_a_second_at_most_half() {
        let ms = Duration::from_millis;
        assert_eq!(lease_margin(ms(15_000)), ms(3000));
        assert_eq!(lease_margin(ms(60_000)), ms(12_000));
        assert_eq!(lease_margin(ms(3000)), ms(1000));
        assert_eq!(lease_margin(ms(1500)), ms(750));
        assert_eq!(lease_margin(ms(0)), ms(0));
    }
}
