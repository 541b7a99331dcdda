//! The state shared by every reconcile: API clients, event recorder, metrics, settings, the
//! leadership check and the per-object failure counts that drive the error back-off; and the
//! deadlines of API requests and of a whole reconcile.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::Client;
use kube::runtime::events::{Recorder, Reporter};

use crate::caches::Caches;
use crate::crd::object_key;
use crate::database::preflight::Preflight;
use crate::leader::Leadership;
use crate::metrics::{ClusterLabels, Metrics};
use crate::planners::autoscale::Readings;
use crate::rejections::Rejections;
use crate::rolls::{DEFAULT_CONCURRENT_ROLLS, Rolls};
use crate::validate::BuildSettings;

/// Field manager of every server-side apply the operator makes.
pub(crate) const FIELD_MANAGER: &str = "orchestrator-operator";

/// How long a successful database preflight (and its connection) is reused unless a read on it
/// fails or the Secret changes: privileges and the schema are checked again this often.
pub(crate) const PREFLIGHT_TTL: Duration = Duration::from_secs(300);

/// Reconciles that run at once unless the operator is told otherwise: enough to keep a few
/// database round trips in flight, few enough that a fleet's start does not flood the API
/// server or the databases.
pub const DEFAULT_CONCURRENT_RECONCILES: u16 = 16;

/// How often [`Context::sweep`] forgets clusters deleted while unwatched.
const SWEEP_PERIOD: Duration = Duration::from_secs(30);

/// First retry delay after a failed reconcile; it doubles per consecutive failure.
pub(crate) const BACKOFF_BASE: Duration = Duration::from_secs(5);
/// Longest retry delay after failed reconciles.
pub(crate) const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// Longest a whole reconcile may take; past it the reconcile is cancelled and fails with
/// [`crate::Error::Timeout`], so the error policy backs off.
pub(crate) const RECONCILE_TIMEOUT: Duration = Duration::from_secs(60);

/// Longest the API server may stay silent on a request (not a watch) before the request fails.
/// It is the socket's read timeout: it restarts with every byte read and with every write.
pub(crate) const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest a request may take to be written to the API server.
pub(crate) const REQUEST_WRITE_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest a connection to the API server may take to open.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Read timeout of the watch client: longer than a watch stays silent when healthy (the API
/// server ends it after kube's `timeoutSeconds=290`; kube-runtime's own idle timeout is 295 s),
/// so it never cuts a watch and still ends a list or a connection that hangs for good.
pub(crate) const WATCH_READ_TIMEOUT: Duration = Duration::from_secs(330);

/// Shared state of the controller.
pub struct Context {
    /// Kubernetes API client of requests (not watches), with [`Context::request_config`]'s
    /// timeouts in the binary.
    pub client: Client,
    /// Client of the controllers' watches, without the request read timeout (a watch stays
    /// silent for minutes); `client` until [`Context::with_watch_client`] gives watches their
    /// own.
    pub(crate) watch_client: Client,
    /// Client for evictions: built without kube's retry of 429 answers, it returns a
    /// PodDisruptionBudget's refusal at once, so that a refused eviction is a wait of the roll,
    /// not a blocked reconcile.
    pub(crate) eviction_client: Client,
    /// The one Event recorder of the process.
    pub recorder: Recorder,
    /// Operator metrics.
    pub metrics: Arc<Metrics>,
    /// Settings the builders need.
    pub settings: BuildSettings,
    /// Whether this replica may write: check it ([`Leadership::ensure`]) right before every
    /// write. Always leading until [`Context::with_leadership`] says otherwise.
    pub leadership: Leadership,
    /// The database preflight and its cache.
    pub(crate) preflight: Preflight,
    /// What the watches saw: every read of a reconcile but the database's.
    pub caches: Caches,
    /// Reconciles that may run at once (of different clusters; one cluster is never reconciled
    /// twice at once).
    pub(crate) max_concurrent_reconciles: u16,
    /// The fleet-wide limit on clusters rolling at once.
    pub(crate) rolls: Rolls,
    /// Owned objects the API server refused, per cluster.
    pub(crate) rejections: Rejections,
    failures: Mutex<HashMap<String, Failures>>,
    swept: Mutex<Option<Instant>>,
    /// The autoscaler's readings of the last stabilization windows, per cluster.
    readings: Mutex<HashMap<String, Readings>>,
}

impl Context {
    /// A context for `client`, reporting Events as `instance` of the operator. Evictions and
    /// watches use `client` too until [`Context::with_eviction_client`] and
    /// [`Context::with_watch_client`] give them their own; it always leads until
    /// [`Context::with_leadership`].
    pub fn new(client: Client, metrics: Arc<Metrics>, settings: BuildSettings, instance: Option<String>) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.into(),
            instance,
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            eviction_client: client.clone(),
            watch_client: client.clone(),
            client,
            metrics,
            settings,
            leadership: Leadership::always(),
            preflight: Preflight::new(PREFLIGHT_TTL),
            caches: Caches::default(),
            max_concurrent_reconciles: DEFAULT_CONCURRENT_RECONCILES,
            rolls: Rolls::new(DEFAULT_CONCURRENT_ROLLS),
            swept: Mutex::default(),
            rejections: Rejections::default(),
            failures: Mutex::default(),
            readings: Mutex::default(),
        }
    }

    /// The autoscaler's readings of cluster `key`, as the last look kept them.
    pub(crate) fn readings(&self, key: &str) -> Option<Readings> {
        self.readings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned()
    }

    /// Keeps the autoscaler's `readings` of cluster `key` for its next look (`None`: start
    /// again).
    pub(crate) fn keep_readings(&self, key: &str, readings: Option<Readings>) {
        let mut kept = self.readings.lock().unwrap_or_else(|e| e.into_inner());
        match readings {
            Some(readings) => kept.insert(key.to_string(), readings),
            None => kept.remove(key),
        };
    }

    /// Uses `client` (built without kube's retry of 429 answers) for evictions.
    pub fn with_eviction_client(self, client: Client) -> Self {
        Self {
            eviction_client: client,
            ..self
        }
    }

    /// Uses `client` for the controllers' watches: one without [`Context::request_config`]'s
    /// read timeout, which would cut every watch.
    pub fn with_watch_client(self, client: Client) -> Self {
        Self {
            watch_client: client,
            ..self
        }
    }

    /// Runs at most `limit` reconciles at once (0: no limit).
    pub fn with_max_concurrent_reconciles(self, limit: u16) -> Self {
        Self {
            max_concurrent_reconciles: limit,
            ..self
        }
    }

    /// Rolls at most `limit` clusters at once (0: no limit).
    pub fn with_max_concurrent_rolls(self, limit: usize) -> Self {
        Self {
            rolls: Rolls::new(limit),
            ..self
        }
    }

    /// Acts only while `leadership` says this replica leads.
    pub fn with_leadership(self, leadership: Leadership) -> Self {
        Self { leadership, ..self }
    }

    /// `config` with the deadlines of requests: connect, write and read timeouts, the read
    /// timeout restarted by every write (else the time a pooled connection sat idle would count
    /// against the next answer). For the client of requests, never of watches.
    pub fn request_config(mut config: kube::Config) -> kube::Config {
        identify(&mut config);
        config.connect_timeout = Some(CONNECT_TIMEOUT);
        config.write_timeout = Some(REQUEST_WRITE_TIMEOUT);
        config.read_timeout = Some(REQUEST_READ_TIMEOUT);
        config.reset_reader_on_write = true;
        config
    }

    /// `config` for the client of watches: a read timeout only past the longest a healthy watch
    /// stays silent.
    pub fn watch_config(mut config: kube::Config) -> kube::Config {
        identify(&mut config);
        config.connect_timeout = Some(CONNECT_TIMEOUT);
        config.read_timeout = Some(WATCH_READ_TIMEOUT);
        config.reset_reader_on_write = true;
        config
    }

    /// Forgets everything kept about a deleted cluster: its cached database connection, its
    /// back-off entry and its metric series.
    pub(crate) fn forget(&self, cluster: &impl kube::Resource) {
        self.preflight.forget(cluster);
        self.rolls.settle(&object_key(cluster), false);
        self.rolls.withdraw(&object_key(cluster));
        self.reset_backoff(&object_key(cluster));
        self.rejections.clear(&object_key(cluster));
        self.keep_readings(&object_key(cluster), None);
        self.metrics.forget_cluster(&ClusterLabels::of(cluster));
    }

    /// Forgets what is kept about every cluster when this replica stops leading: checks and
    /// credentials, database connections (pools and listeners close), roll slots, back-offs,
    /// refusals and each cluster's metric series. A standby holds no connection and exports no
    /// stale figures; the next term derives everything again from the cluster and the database.
    pub fn stand_down(&self) {
        self.metrics.forget_clusters();
        self.keep_only(&BTreeSet::new());
    }

    /// At most once per [`SWEEP_PERIOD`]: forgets what is kept about clusters the caches no
    /// longer list (deleted while the watch was down: a relist shows no Delete), closes idle
    /// database connections.
    pub(crate) fn sweep(&self) {
        {
            let mut swept = self.swept.lock().unwrap_or_else(|e| e.into_inner());
            if swept.is_some_and(|at| at.elapsed() < SWEEP_PERIOD) {
                return;
            }
            *swept = Some(Instant::now());
        }
        if let Some(live) = self.caches.clusters() {
            self.keep_only(&live);
        }
    }

    /// Forgets the checks, credentials, database sessions, roll slots, back-offs and refusals
    /// of every cluster but the `live` ones (namespace, name), and closes idle database
    /// connections.
    fn keep_only(&self, live: &BTreeSet<(String, String)>) {
        let keys: BTreeSet<String> = live.iter().map(|(ns, name)| format!("{ns}/{name}")).collect();
        self.preflight.retain(&keys);
        self.preflight.databases.sweep(live);
        self.rolls.retain(&keys);
        self.rejections.retain(&keys);
        self.readings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|key, _| keys.contains(key));
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|key, _| keys.contains(key));
    }

    /// Records a failure of `key` and returns how long to wait before retrying it. Only a
    /// failure of the retry itself lengthens the back-off: a reconcile that a watch event or a
    /// notification triggered before the retry was due fails without doubling it, so that a
    /// busy cluster's many triggers during an outage do not push its retry out to minutes.
    pub(crate) fn next_backoff(&self, key: &str) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let entry = failures.entry(key.to_string()).or_insert(Failures {
            count: 0,
            retry_at: now,
        });
        if entry.count == 0 || now >= entry.retry_at {
            entry.count = entry.count.saturating_add(1);
        }
        let delay = backoff_for(entry.count);
        entry.retry_at = now + delay;
        delay
    }

    /// Forgets the failures of `key` after a successful reconcile.
    pub(crate) fn reset_backoff(&self, key: &str) {
        self.failures.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
    }
}

/// The operator's User-Agent: `orchestrator-operator/<version>`, what the API server's audit
/// log and its request metrics name the operator's requests by.
pub const USER_AGENT: &str = concat!("orchestrator-operator/", env!("CARGO_PKG_VERSION"));

/// Names the operator in every request of `config` ([`USER_AGENT`]).
fn identify(config: &mut kube::Config) {
    config.headers.retain(|(name, _)| name != http::header::USER_AGENT);
    config
        .headers
        .push((http::header::USER_AGENT, http::HeaderValue::from_static(USER_AGENT)));
}

/// The consecutive failures of one object, and when its retry is due.
struct Failures {
    count: u32,
    retry_at: Instant,
}

/// Delay before the retry that follows `failures` consecutive failures.
fn backoff_for(failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(16);
    BACKOFF_BASE.saturating_mul(1 << exponent).min(BACKOFF_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_have_deadlines_that_watches_do_not() {
        let config = kube::Config::new("https://127.0.0.1:6443".parse().unwrap());
        let requests = Context::request_config(config.clone());
        assert_eq!(requests.read_timeout, Some(REQUEST_READ_TIMEOUT));
        assert_eq!(requests.write_timeout, Some(REQUEST_WRITE_TIMEOUT));
        assert_eq!(requests.connect_timeout, Some(CONNECT_TIMEOUT));
        assert!(requests.reset_reader_on_write, "pooled idle time does not count");
        // A request that hangs fails well within a reconcile's deadline.
        assert!(CONNECT_TIMEOUT + REQUEST_WRITE_TIMEOUT + REQUEST_READ_TIMEOUT < RECONCILE_TIMEOUT);
        // A watch stays silent up to its timeoutSeconds (290 s), plus kube-runtime's 5 s margin.
        let watches = Context::watch_config(config);
        assert!(watches.read_timeout.unwrap() > Duration::from_secs(295));
        for config in [&requests, &watches] {
            let agents: Vec<_> = config
                .headers
                .iter()
                .filter(|(name, _)| name == http::header::USER_AGENT)
                .collect();
            assert_eq!(agents.len(), 1);
            assert!(agents[0].1.to_str().unwrap().starts_with("orchestrator-operator/"));
        }
    }

    #[test]
    fn the_chart_gives_a_graceful_stop_the_time_to_finish() {
        let path = format!(
            "{}/charts/orchestrator-operator/templates/deployment.yaml",
            env!("CARGO_MANIFEST_DIR")
        );
        let deployment = std::fs::read_to_string(path).unwrap();
        let grace = deployment
            .lines()
            .find_map(|line| line.trim().strip_prefix("terminationGracePeriodSeconds:"))
            .map(|seconds| Duration::from_secs(seconds.trim().parse().unwrap()))
            .expect("a grace period");
        // The reconciles in flight finish (each within its deadline), then the leader releases
        // the Lease (giving up after a renewal period), before the kubelet's SIGKILL.
        let release = crate::leader::Timing::for_lease(crate::leader::DEFAULT_LEASE).retry;
        assert!(
            grace >= RECONCILE_TIMEOUT + release + Duration::from_secs(5),
            "{grace:?}"
        );
    }

    #[tokio::test]
    async fn only_a_failed_retry_doubles_the_backoff() {
        let ctx = Context::new(
            kube::Client::new(
                tower_test::mock::pair::<http::Request<kube::client::Body>, http::Response<kube::client::Body>>().0,
                "default",
            ),
            std::sync::Arc::new(crate::metrics::Metrics::default()),
            crate::validate::BuildSettings::default(),
            None,
        );
        assert_eq!(ctx.next_backoff("a"), BACKOFF_BASE);
        // Triggered again at once, failing again: the retry is not pushed further out.
        assert_eq!(ctx.next_backoff("a"), BACKOFF_BASE);
        assert_eq!(ctx.next_backoff("a"), BACKOFF_BASE);
        // The retry itself failing doubles it.
        ctx.failures.lock().unwrap().get_mut("a").unwrap().retry_at = Instant::now();
        assert_eq!(ctx.next_backoff("a"), BACKOFF_BASE * 2);
        ctx.reset_backoff("a");
        assert_eq!(ctx.next_backoff("a"), BACKOFF_BASE);
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let delays: Vec<_> = (1..=8).map(|n| backoff_for(n).as_secs()).collect();
        assert_eq!(delays, vec![5, 10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(backoff_for(u32::MAX), BACKOFF_MAX);
    }
}
