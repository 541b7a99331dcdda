//! The databases the operator talks to: one entry per database ([`Target`]: host, port,
//! database name, user and TLS settings), shared by every cluster whose servers use it, made at
//! a cluster's first look with usable credentials, and closed with its last cluster (deleted,
//! gone from the caches, moved to other settings, or refused by the database). Each entry
//! holds:
//!
//! - a bounded connection pool (`deadpool-postgres`, the pool the reference server uses too:
//!   async and tokio-postgres native, our own connector for the TLS modes, connections checked
//!   with a round trip before reuse) of at most [`POOL_SIZE`] connections, each closed after
//!   [`IDLE_TIMEOUT`] unused: the reads and writes of every reconcile of its clusters;
//! - the listening connection, opened once a cluster's check and read passed on the pool: the
//!   servers' notifications (`LISTEN orchestrator_servers`, see the database contract) turned
//!   into reconcile triggers.
//!
//! Every connection of every entry opens under one process-wide limit of [`CONNECTS_AT_ONCE`]
//! attempts at a time, so that an operator start over a fleet does not open hundreds of
//! sessions in one instant.
//!
//! A notification is only a trigger: the reconcile reads the table. Notifications sent while
//! the listening connection was down are lost, so every (re)connection triggers all of its
//! clusters, and the reconciles still look when a heartbeat can go stale: a lost notification
//! costs latency, never a decision.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use futures::Stream;
use kube::runtime::reflector::ObjectRef;
use orchestrator_contract as contract;
use orchestrator_contract::tls::Connector;
use tokio::sync::{Semaphore, broadcast};
use tokio::task::JoinHandle;
use tokio_postgres::{Client, Config};

use crate::crd::Watched;

/// Most connections of one database's pool.
pub(crate) const POOL_SIZE: usize = 4;
/// A pooled connection unused this long is closed.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Connection attempts at once, over every database.
pub(crate) const CONNECTS_AT_ONCE: usize = 8;
/// Longest wait for a pooled connection while all are in use.
const POOL_WAIT: Duration = Duration::from_secs(5);
/// Longest a pooled connection may take to open (TLS and login included).
const POOL_CREATE: Duration = Duration::from_secs(5);
/// Longest the round trip that checks an idle connection before reuse may take.
const POOL_RECYCLE: Duration = Duration::from_secs(2);
/// First wait before a lost listening connection is opened again; it doubles up to
/// [`RECONNECT_MAX`].
const RECONNECT_BASE: Duration = Duration::from_secs(1);
/// Longest wait between attempts to open a listening connection.
const RECONNECT_MAX: Duration = Duration::from_secs(30);
/// Longest a listening connection may take to open and subscribe.
const LISTEN_DEADLINE: Duration = Duration::from_secs(15);
/// Triggers buffered for a controller that is busy; past it the oldest are dropped (the
/// controller's own queue and the reconciles' timers cover the loss).
const TRIGGER_BUFFER: usize = 4096;

/// What identifies a database: clusters with the same target share its entry.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub(crate) struct Target {
    /// Host, port, database name and user.
    pub(crate) address: (String, u16, String, String),
    /// `sslMode/channelBinding`, and a fingerprint of the password and the CA (never the
    /// values).
    pub(crate) security: (String, u64),
}

/// How to open a session on a [`Target`].
#[derive(Clone)]
pub(crate) struct Session {
    /// Connection settings, credentials included.
    pub(crate) config: Config,
    /// Opens connections with the target's TLS mode and CA.
    pub(crate) connector: Connector,
}

/// A cluster: namespace and name.
type Cluster = (String, String);

/// Opens connections with a [`Connector`], each attempt holding a permit of the process-wide
/// limit.
#[derive(Clone)]
struct Limited {
    connector: Connector,
    permits: Arc<Semaphore>,
}

type Opening<'a> = Pin<Box<dyn Future<Output = Result<(Client, JoinHandle<()>), tokio_postgres::Error>> + Send + 'a>>;

impl deadpool_postgres::Connect for Limited {
    fn connect(&self, config: &Config) -> Opening<'_> {
        let config = config.clone();
        Box::pin(async move {
            // The semaphore is never closed.
            let _permit = self.permits.acquire().await;
            self.connector.open(&config).await
        })
    }
}

/// One database: its clusters, its pool and its listening connection.
struct Entry {
    clusters: Arc<Mutex<BTreeSet<Cluster>>>,
    pool: Pool,
    /// How the listening connection opens.
    session: (Config, Limited),
    /// The listening connection's task, once started.
    listener: Option<JoinHandle<()>>,
}

impl Drop for Entry {
    fn drop(&mut self) {
        // The listening connection closes with its task, the pooled ones with the pool.
        if let Some(listener) = &self.listener {
            listener.abort();
        }
        self.pool.close();
    }
}

/// Every database in use, and the triggers their notifications produce.
pub(crate) struct Databases {
    entries: Mutex<HashMap<Target, Entry>>,
    triggers: broadcast::Sender<ObjectRef<Watched>>,
    permits: Arc<Semaphore>,
}

impl Default for Databases {
    fn default() -> Self {
        Self {
            entries: Mutex::default(),
            triggers: broadcast::channel(TRIGGER_BUFFER).0,
            permits: Arc::new(Semaphore::new(CONNECTS_AT_ONCE)),
        }
    }
}

impl Databases {
    /// The clusters to reconcile because their servers notified, for one controller (each
    /// controller reconciles the ones of its namespaces and ignores the rest).
    pub(crate) fn triggers(&self) -> impl Stream<Item = ObjectRef<Watched>> + Send + 'static {
        futures::stream::unfold(self.triggers.subscribe(), |mut receiver| async move {
            loop {
                match receiver.recv().await {
                    Ok(cluster) => return Some((cluster, receiver)),
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::debug!(missed, "database notifications dropped: the controller is busy");
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        })
    }

    /// Reconciles the cluster `key` (`namespace/name`) for a reason of its own (a roll slot
    /// it waits for just freed), through the same trigger stream as the notifications.
    pub(crate) fn trigger(&self, key: &str) {
        if let Some((namespace, name)) = key.split_once('/') {
            let _ = self
                .triggers
                .send(object_ref(&(namespace.to_string(), name.to_string())));
        }
    }

    /// The pool of `target` for `cluster`: the entry of that database (made, with its pool, if
    /// no other cluster uses it), which `cluster` joins, leaving any other (its settings or
    /// credentials changed). When `session` fails, `cluster` is left in no entry.
    pub(crate) fn join<E>(
        &self,
        cluster: &Cluster,
        target: Target,
        session: impl FnOnce() -> Result<Session, E>,
    ) -> Result<Pool, E> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = entries.get(&target) {
            // No trigger for a cluster that joins: the reconcile that joins reads the table
            // right after, so it has missed nothing.
            let joined = entry
                .clusters
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(cluster.clone());
            let pool = entry.pool.clone();
            if joined {
                remove(&mut entries, cluster, Some(&target));
            }
            return Ok(pool);
        }
        remove(&mut entries, cluster, None);
        let Session { config, connector } = session()?;
        let limited = Limited {
            connector,
            permits: self.permits.clone(),
        };
        let manager = Manager::from_connect(
            config.clone(),
            limited.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Verified,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(POOL_WAIT))
            .create_timeout(Some(POOL_CREATE))
            .recycle_timeout(Some(POOL_RECYCLE))
            .build()
            .expect("a pool with a runtime and its timeouts builds");
        entries.insert(
            target,
            Entry {
                clusters: Arc::new(Mutex::new(BTreeSet::from([cluster.clone()]))),
                pool: pool.clone(),
                session: (config, limited),
                listener: None,
            },
        );
        Ok(pool)
    }

    /// Opens the listening connection of `cluster`'s database, unless it is open: called once
    /// the cluster's check and read passed, so that a database that refuses the credentials
    /// gets no session retried in the background.
    pub(crate) fn listen(&self, cluster: &Cluster) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let Some((target, entry)) = entries
            .iter_mut()
            .find(|(_, e)| e.clusters.lock().unwrap_or_else(|e| e.into_inner()).contains(cluster))
        else {
            return;
        };
        if entry.listener.is_none() {
            let (config, limited) = entry.session.clone();
            entry.listener = Some(tokio::spawn(listen(
                target.clone(),
                config,
                limited,
                entry.clusters.clone(),
                self.triggers.clone(),
            )));
        }
    }

    /// Forgets every cluster not in `live` (deleted while the operator did not watch: a
    /// relist shows no Delete); a database left without a cluster is closed.
    fn retain_clusters(&self, live: &BTreeSet<Cluster>) {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, entry| {
                let mut clusters = entry.clusters.lock().unwrap_or_else(|e| e.into_inner());
                clusters.retain(|c| live.contains(c));
                !clusters.is_empty()
            });
    }

    /// `cluster` (deleted) leaves its database; a database no cluster uses is closed.
    pub(crate) fn forget(&self, cluster: &Cluster) {
        remove(
            &mut self.entries.lock().unwrap_or_else(|e| e.into_inner()),
            cluster,
            None,
        );
    }

    /// Closes the pooled connections unused for [`IDLE_TIMEOUT`], and forgets the clusters
    /// `live` does not list.
    pub(crate) fn sweep(&self, live: &BTreeSet<Cluster>) {
        self.retain_clusters(live);
        for entry in self.entries.lock().unwrap_or_else(|e| e.into_inner()).values() {
            entry.pool.retain(|_, metrics| metrics.last_used() < IDLE_TIMEOUT);
        }
    }

    /// Databases in use (each with its listening connection once one of its clusters passed).
    pub(crate) fn count(&self) -> usize {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Pooled connections open, over every database.
    pub(crate) fn pooled_connections(&self) -> usize {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|entry| entry.pool.status().size)
            .sum()
    }
}

/// Removes `cluster` from every entry but `keep`'s, and the entries left without a cluster.
fn remove(entries: &mut HashMap<Target, Entry>, cluster: &Cluster, keep: Option<&Target>) {
    entries.retain(|target, entry| {
        if Some(target) == keep {
            return true;
        }
        let mut clusters = entry.clusters.lock().unwrap_or_else(|e| e.into_inner());
        clusters.remove(cluster);
        !clusters.is_empty()
    });
}

fn object_ref((namespace, name): &Cluster) -> ObjectRef<Watched> {
    ObjectRef::new(name).within(namespace)
}

/// Why a listening connection could not be opened, without the database's own words (a
/// refused login names the user).
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("no answer within {LISTEN_DEADLINE:?}")]
    TimedOut,
    #[error("{}", describe(.0))]
    Connect(#[from] orchestrator_contract::tls::ConnectError),
    #[error("{}", describe_postgres(.0))]
    Listen(#[from] orchestrator_contract::ContractError),
}

fn describe(error: &orchestrator_contract::tls::ConnectError) -> String {
    match error {
        orchestrator_contract::tls::ConnectError::Postgres(e) => describe_postgres_error(e),
        orchestrator_contract::tls::ConnectError::Unbound => "the login was not bound to the TLS channel".into(),
        _ => "TLS setup or handshake failed".into(),
    }
}

fn describe_postgres(error: &orchestrator_contract::ContractError) -> String {
    match error {
        orchestrator_contract::ContractError::Database(e) => describe_postgres_error(e),
        _ => "LISTEN failed".into(),
    }
}

fn describe_postgres_error(error: &tokio_postgres::Error) -> String {
    error.code().map_or("the connection failed".into(), |code| {
        format!("SQLSTATE {}", code.code())
    })
}

/// The clusters among `clusters` a notification about row `server_id` concerns: the cluster of
/// its pod (`<namespace>/<cluster>-<ordinal>`); for a legacy id without a namespace, every
/// cluster of that name.
pub(crate) fn concerned(server_id: &str, clusters: &BTreeSet<Cluster>) -> Vec<Cluster> {
    let (namespace, pod) = match server_id.split_once('/') {
        Some((namespace, pod)) => (Some(namespace), pod),
        None => (None, server_id),
    };
    let Some((name, ordinal)) = pod.rsplit_once('-') else {
        return Vec::new();
    };
    if ordinal.is_empty() || !ordinal.bytes().all(|b| b.is_ascii_digit()) {
        return Vec::new();
    }
    clusters
        .iter()
        .filter(|(ns, n)| n == name && namespace.is_none_or(|wanted| wanted == ns))
        .cloned()
        .collect()
}

/// Keeps a listening connection to `target` open for as long as the task runs, and sends a
/// trigger for each notification about one of `clusters`.
async fn listen(
    target: Target,
    config: Config,
    limited: Limited,
    clusters: Arc<Mutex<BTreeSet<Cluster>>>,
    triggers: broadcast::Sender<ObjectRef<Watched>>,
) {
    let (host, port, database, _) = &target.address;
    let mut delay = RECONNECT_BASE;
    loop {
        let connected = tokio::time::timeout(LISTEN_DEADLINE, async {
            let _permit = limited.permits.acquire().await;
            let (client, notifications) = limited.connector.connect_with_notifications(&config).await?;
            contract::listen(&client).await?;
            Ok::<_, Failure>((client, notifications))
        })
        .await
        .unwrap_or(Err(Failure::TimedOut));
        match connected {
            Ok((_client, mut notifications)) => {
                tracing::info!(%host, port, %database, "listening for the servers' notifications");
                delay = RECONNECT_BASE;
                // Whatever was notified while nobody listened: every cluster looks once.
                let all: Vec<Cluster> = clusters
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .iter()
                    .cloned()
                    .collect();
                for cluster in &all {
                    let _ = triggers.send(object_ref(cluster));
                }
                while let Some(notification) = notifications.recv().await {
                    let concerned = concerned(
                        notification.payload(),
                        &clusters.lock().unwrap_or_else(|e| e.into_inner()),
                    );
                    for cluster in &concerned {
                        let _ = triggers.send(object_ref(cluster));
                    }
                }
                tracing::info!(%host, port, %database, "the listening connection closed; opening it again");
            }
            Err(failure) => {
                tracing::debug!(%host, port, %database, why = %failure, "cannot listen yet");
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(RECONNECT_MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clusters() -> BTreeSet<Cluster> {
        [("automation", "prod"), ("staging", "prod"), ("automation", "prod-eu")]
            .into_iter()
            .map(|(ns, n)| (ns.to_string(), n.to_string()))
            .collect()
    }

    #[test]
    fn a_notification_concerns_the_cluster_of_its_pod() {
        let found = concerned("automation/prod-eu-2", &clusters());
        assert_eq!(found, vec![("automation".to_string(), "prod-eu".to_string())]);
        let found = concerned("staging/prod-0", &clusters());
        assert_eq!(found, vec![("staging".to_string(), "prod".to_string())]);
        // A legacy id names no namespace: every cluster of that name looks.
        assert_eq!(concerned("prod-1", &clusters()).len(), 2);
        // Not a server of a cluster listened for.
        assert!(concerned("other/prod-1", &clusters()).is_empty());
        assert!(concerned("automation/prod", &clusters()).is_empty());
        assert!(concerned("automation/prod-x", &clusters()).is_empty());
    }

    #[tokio::test]
    async fn clusters_of_one_database_share_one_entry_until_the_last_is_deleted() {
        let databases = Databases::default();
        let target = Target {
            address: ("127.0.0.1".into(), 1, "db".into(), "app".into()),
            security: ("disable".into(), 0),
        };
        let session = || {
            Ok::<_, ()>(Session {
                config: Config::new(),
                connector: Connector::new(orchestrator_contract::tls::SslMode::Disable, None).unwrap(),
            })
        };
        let a = ("automation".to_string(), "prod".to_string());
        let b = ("staging".to_string(), "prod".to_string());
        let pool_a = databases.join(&a, target.clone(), session).unwrap();
        let pool_b = databases.join(&b, target.clone(), session).unwrap();
        assert_eq!(databases.count(), 1);
        assert_eq!(pool_a.status().max_size, POOL_SIZE);
        assert_eq!(pool_b.status().max_size, POOL_SIZE);
        let mut other = target.clone();
        other.address.2 = "other".into();
        // A cluster moved to another database leaves the first one.
        databases.join(&b, other, session).unwrap();
        assert_eq!(databases.count(), 2);
        databases.forget(&b);
        assert_eq!(databases.count(), 1);
        assert!(!pool_a.is_closed());
        databases.forget(&a);
        assert_eq!(databases.count(), 0);
        assert!(pool_a.is_closed(), "the last cluster gone, its pool is closed");
    }
}
