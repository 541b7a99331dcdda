//! The database watched: the servers' notifications (`LISTEN orchestrator_servers`, see the
//! database contract) turned into reconcile triggers. One listening connection per database
//! (host, port, database name, user and TLS settings), shared by every cluster whose servers
//! use it, not one per cluster; it is opened after a cluster's first successful preflight and
//! closed when its last cluster is deleted.
//!
//! A notification is only a trigger: the reconcile reads the table. Notifications sent while
//! the connection was down are lost, so every (re)connection triggers all of its clusters, and
//! the reconciles still look when a heartbeat can go stale: a lost notification costs latency,
//! never a decision.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::Stream;
use kube::runtime::reflector::ObjectRef;
use orchestrator_contract as contract;
use orchestrator_contract::tls;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use crate::reconcile::Watched;

/// First wait before a lost listening connection is opened again; it doubles up to
/// [`RECONNECT_MAX`].
const RECONNECT_BASE: Duration = Duration::from_secs(1);
/// Longest wait between attempts to open a listening connection.
const RECONNECT_MAX: Duration = Duration::from_secs(30);
/// Triggers buffered for a controller that is busy; past it the oldest are dropped (the
/// controller's own queue and the reconciles' timers cover the loss).
const TRIGGER_BUFFER: usize = 4096;

/// What identifies a database to listen on: two clusters with the same target share one
/// connection.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub(crate) struct Target {
    /// Host, port, database name and user.
    pub(crate) address: (String, u16, String, String),
    /// `sslMode`, and a fingerprint of the password and the CA (never the values).
    pub(crate) security: (String, u64),
}

/// How to open a listening connection to a [`Target`].
#[derive(Clone)]
pub(crate) struct Session {
    /// Connection settings, credentials included.
    pub(crate) config: tokio_postgres::Config,
    /// TLS mode.
    pub(crate) mode: tls::SslMode,
    /// CA of the server's certificate, PEM.
    pub(crate) ca: Option<String>,
}

/// A cluster: namespace and name.
type Cluster = (String, String);

struct Listener {
    clusters: Arc<Mutex<BTreeSet<Cluster>>>,
    task: JoinHandle<()>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        // Its connection closes with the task.
        self.task.abort();
    }
}

/// Every listening connection, and the triggers they produce.
pub(crate) struct Listeners {
    listeners: Mutex<HashMap<Target, Listener>>,
    triggers: broadcast::Sender<ObjectRef<Watched>>,
}

impl Default for Listeners {
    fn default() -> Self {
        Self {
            listeners: Mutex::default(),
            triggers: broadcast::channel(TRIGGER_BUFFER).0,
        }
    }
}

impl Listeners {
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

    /// Listens for the servers of `cluster` on `target` (opening its connection if no other
    /// cluster did), and no longer on any other target.
    pub(crate) fn watch(&self, cluster: &Cluster, target: Target, session: impl FnOnce() -> Session) {
        let mut listeners = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        if listeners
            .get(&target)
            .is_some_and(|l| l.clusters.lock().unwrap_or_else(|e| e.into_inner()).contains(cluster))
        {
            return;
        }
        remove(&mut listeners, cluster);
        if let Some(listener) = listeners.get(&target) {
            listener
                .clusters
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(cluster.clone());
            // The new cluster may have missed notifications: look once.
            let _ = self.triggers.send(object_ref(cluster));
            return;
        }
        let clusters = Arc::new(Mutex::new(BTreeSet::from([cluster.clone()])));
        let task = tokio::spawn(listen(
            target.clone(),
            session(),
            clusters.clone(),
            self.triggers.clone(),
        ));
        listeners.insert(target, Listener { clusters, task });
    }

    /// Stops listening for `cluster` (deleted); a connection no cluster needs is closed.
    pub(crate) fn forget(&self, cluster: &Cluster) {
        remove(&mut self.listeners.lock().unwrap_or_else(|e| e.into_inner()), cluster);
    }

    /// Listening connections open or being opened.
    pub(crate) fn count(&self) -> usize {
        self.listeners.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// Removes `cluster` from every listener, and the listeners left without a cluster.
fn remove(listeners: &mut HashMap<Target, Listener>, cluster: &Cluster) {
    listeners.retain(|_, listener| {
        let mut clusters = listener.clusters.lock().unwrap_or_else(|e| e.into_inner());
        clusters.remove(cluster);
        !clusters.is_empty()
    });
}

fn object_ref((namespace, name): &Cluster) -> ObjectRef<Watched> {
    ObjectRef::new(name).within(namespace)
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
    session: Session,
    clusters: Arc<Mutex<BTreeSet<Cluster>>>,
    triggers: broadcast::Sender<ObjectRef<Watched>>,
) {
    let (host, port, database, _) = &target.address;
    let mut delay = RECONNECT_BASE;
    loop {
        let connected =
            tls::connect_with_notifications(&session.config, session.mode, session.ca.as_deref().map(str::as_bytes))
                .await;
        match connected {
            Ok((client, mut notifications)) => match contract::listen(&client).await {
                Ok(()) => {
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
                Err(error) => tracing::warn!(%host, port, %database, %error, "LISTEN failed"),
            },
            Err(error) => tracing::debug!(%host, port, %database, %error, "cannot open a listening connection yet"),
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
    async fn clusters_of_one_database_share_one_listener_until_the_last_is_deleted() {
        let listeners = Listeners::default();
        let target = Target {
            address: ("127.0.0.1".into(), 1, "db".into(), "app".into()),
            security: ("disable".into(), 0),
        };
        let session = || Session {
            config: tokio_postgres::Config::new(),
            mode: tls::SslMode::Disable,
            ca: None,
        };
        let a = ("automation".to_string(), "prod".to_string());
        let b = ("staging".to_string(), "prod".to_string());
        listeners.watch(&a, target.clone(), session);
        listeners.watch(&b, target.clone(), session);
        assert_eq!(listeners.count(), 1);
        let mut other = target.clone();
        other.address.2 = "other".into();
        // A cluster moved to another database leaves the first listener.
        listeners.watch(&b, other, session);
        assert_eq!(listeners.count(), 2);
        listeners.forget(&b);
        assert_eq!(listeners.count(), 1);
        listeners.forget(&a);
        assert_eq!(listeners.count(), 0);
    }
}
