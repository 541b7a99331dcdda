//! The database preflight: Secret, keys, host, connection, login, privileges, schema. Each
//! failure is a `DatabaseReady` reason with a message a person can act on. A successful check
//! (login, privileges, schema) is kept until a read fails, the Secret or the connection
//! settings change, or [`Preflight`]'s `ttl` passes; a failed one is kept for a few seconds.
//! Connections come from the database's shared pool ([`super::shared`]). The Secret's data is read from the API server once per
//! change of the Secret (its resourceVersion comes from the metadata cache).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use deadpool_postgres::{Object, Pool, PoolError};
use k8s_openapi::api::core::v1::Secret;
use kube::core::PartialObjectMeta;
use kube::{Api, ResourceExt};
use orchestrator_contract as contract;
use orchestrator_contract::tls;
use orchestrator_contract::tls::Connector;
use tokio_postgres::Client;
use tokio_postgres::error::SqlState;

use super::shared::{Databases, Session, Target};
use super::{DatabaseState, rows_of};
use crate::crd::object_key as key;
use crate::crd::{CREDENTIALS_OPT_IN_LABEL, OrchestratorCluster};
use crate::error::Result;
use crate::vocabulary::{Hold, Reason};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest time a read of the servers, or the drain requests and row removals of a reconcile,
/// may take: a database that accepts connections and never answers stalls only its own
/// cluster's status, which says so. The server applies the same limit to each statement
/// (`statement_timeout`, `lock_timeout`), so a statement given up here does not land later.
pub(crate) const DATABASE_DEADLINE: Duration = Duration::from_secs(5);
/// Longest time a whole check may take: resolving, the TCP probe and the session (TLS and
/// login) have `CONNECT_TIMEOUT` each, then the privilege and schema queries.
const CHECK_DEADLINE: Duration = Duration::from_secs(15);

/// Key of the credentials Secret holding the CA of the database's certificate (optional).
pub(crate) const CA_KEY: &str = "ca.crt";

/// The preflight with its per-cluster cache.
pub(crate) struct Preflight {
    ttl: Duration,
    cache: Mutex<HashMap<String, Cached>>,
    credentials: Mutex<HashMap<String, Credentials>>,
    /// The databases in use: pools and listening connections.
    pub(crate) databases: Databases,
}

/// How long a failed check is reused: a fixed password or a created database is seen soon.
const FAILED_TTL: Duration = Duration::from_secs(10);

/// The credentials read from one version of a cluster's Secret.
#[derive(Clone)]
struct Credentials {
    /// Secret name and resourceVersion they were read from.
    source: (String, String),
    /// `NotReady` state when the Secret lacks a key.
    outcome: Result<(String, String, Option<String>), (Reason, String)>,
}

struct Cached {
    fingerprint: u64,
    checked: Instant,
    outcome: Result<(), Hold>,
}

/// A preflight outcome: the state for the plan, and the connection when usable.
pub(crate) struct Observation {
    /// What the plan sees.
    pub state: DatabaseState,
    /// Connection for the reconcile's database writes.
    pub pool: Option<Pool>,
    /// Removes the credentials from text the operator did not write (a Job's log tail).
    pub redactor: Redactor,
    /// The row id of each server the read found.
    pub row_ids: BTreeMap<String, String>,
}

/// Removes the database password from text before it reaches status or Events.
#[derive(Clone, Default)]
pub(crate) struct Redactor(Option<String>);

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Redactor(..)")
    }
}

impl Redactor {
    /// `text` with every occurrence of the password replaced.
    pub(crate) fn redact(&self, text: &str) -> String {
        match &self.0 {
            Some(password) => redact(text.to_string(), password),
            None => text.to_string(),
        }
    }
}

/// Whether a Secret's `labels` let the operator read it as credentials.
fn opted_in(labels: &BTreeMap<String, String>) -> bool {
    labels.get(CREDENTIALS_OPT_IN_LABEL).map(String::as_str) == Some("true")
}

/// Why a cluster whose credentials Secret `name` exists without the opt-in label waits.
fn not_opted_in(name: &str) -> (Reason, String) {
    (
        Reason::SecretNotOptedIn,
        format!(
            "secret {name} does not carry the label {CREDENTIALS_OPT_IN_LABEL}=true, without which the operator reads no Secret: `kubectl label secret {name} {CREDENTIALS_OPT_IN_LABEL}=true`"
        ),
    )
}

fn not_ready(reason: Reason, message: String) -> Observation {
    Observation {
        state: DatabaseState::NotReady { reason, message },
        pool: None,
        redactor: Redactor::default(),
        row_ids: BTreeMap::new(),
    }
}

impl Preflight {
    /// A preflight whose successful checks are reused for `ttl`.
    pub(crate) fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            cache: Mutex::default(),
            credentials: Mutex::default(),
            databases: Databases::default(),
        }
    }

    /// Forgets the checks and credentials of every cluster whose key (`namespace/name`) `live`
    /// does not list (deleted while unwatched).
    pub(crate) fn retain(&self, live: &BTreeSet<String>) {
        self.cache.lock().unwrap().retain(|k, _| live.contains(k));
        self.credentials.lock().unwrap().retain(|k, _| live.contains(k));
    }

    /// Forgets a cluster (deleted): its credentials, and its connection, which closes.
    pub(crate) fn forget(&self, cluster: &impl kube::Resource) {
        self.cache.lock().unwrap().remove(&key(cluster));
        self.credentials.lock().unwrap().remove(&key(cluster));
        self.databases.forget(&cluster_of(cluster));
    }

    /// The user, password and CA of `cr` from version `version` of its Secret: remembered from
    /// the last read of that version, else read from the API server.
    async fn credentials(
        &self,
        kube: &kube::Client,
        cr: &OrchestratorCluster,
        version: &str,
    ) -> Result<Result<(String, String, Option<String>), (Reason, String)>> {
        let secret_ref = &cr.spec.database.credentials_secret;
        let source = (secret_ref.name.clone(), version.to_string());
        if let Some(known) = self
            .credentials
            .lock()
            .unwrap()
            .get(&key(cr))
            .filter(|c| c.source == source)
        {
            return Ok(known.outcome.clone());
        }
        let namespace = cr.namespace().unwrap_or_default();
        let Some(secret) = Api::<Secret>::namespaced(kube.clone(), &namespace)
            .get_opt(&secret_ref.name)
            .await?
        else {
            return Ok(Err((
                Reason::SecretMissing,
                format!("secret {} does not exist in namespace {namespace}", secret_ref.name),
            )));
        };
        // Labelled when the cache saw it; a label removed since is not an opt-in.
        if !opted_in(secret.labels()) {
            return Ok(Err(not_opted_in(&secret_ref.name)));
        }
        let outcome = read_credentials(cr, &secret);
        // Remembered for the version read, which may be newer than the cached one.
        let source = (secret_ref.name.clone(), secret.resource_version().unwrap_or_default());
        self.credentials.lock().unwrap().insert(
            key(cr),
            Credentials {
                source,
                outcome: outcome.clone(),
            },
        );
        Ok(outcome)
    }

    /// Checks the database of `cr` (or reuses a recent check) and reads its membership and its
    /// work (counted up to `work_cap`: most servers, jobs per server; see `contract::work`).
    /// `secret` is the cached metadata of its credentials Secret (`None`: there is no
    /// such Secret). Legacy rows are read as the cluster's only for `pods` (the server pods
    /// running here).
    pub(crate) async fn observe(
        &self,
        kube: &kube::Client,
        cr: &OrchestratorCluster,
        secret: Option<&PartialObjectMeta<Secret>>,
        pods: &BTreeSet<String>,
        work_cap: (i64, i64),
    ) -> Result<Observation> {
        let db = &cr.spec.database;
        let namespace = cr.namespace().unwrap_or_default();
        let secret_ref = &db.credentials_secret;
        let version = match secret {
            Some(secret) if opted_in(secret.labels()) => secret.resource_version().unwrap_or_default(),
            found => {
                // Its database is no longer this cluster's: no session goes on with old
                // credentials, and none are kept.
                self.forget(cr);
                return Ok(match found {
                    // Not opted in: its values are not read.
                    Some(_) => {
                        let (reason, message) = not_opted_in(&secret_ref.name);
                        not_ready(reason, message)
                    }
                    None => not_ready(
                        Reason::SecretMissing,
                        format!("secret {} does not exist in namespace {namespace}", secret_ref.name),
                    ),
                });
            }
        };
        let version = version.as_str();
        let (user, password, ca) = match self.credentials(kube, cr, version).await? {
            Ok(credentials) => credentials,
            Err((reason, message)) => {
                self.databases.forget(&cluster_of(cr));
                return Ok(not_ready(reason, message));
            }
        };
        let mut hasher = DefaultHasher::new();
        (
            version,
            &db.host,
            db.port,
            &db.name,
            db.ssl_mode.as_str(),
            db.channel_binding().as_str(),
            &user,
        )
            .hash(&mut hasher);
        let fingerprint = hasher.finish();
        let failed = |Hold { reason, message }: Hold| Observation {
            redactor: Redactor(Some(password.clone())),
            ..not_ready(reason, redact(message, &password))
        };
        let pool = match self.pool(cr, &user, &password, ca.as_deref()) {
            Ok(pool) => pool,
            Err(hold) => return Ok(failed(hold)),
        };
        if let Err(hold) = self.checked(cr, fingerprint, &pool).await {
            // Nothing stays open for a database that refuses this cluster (a wrong password is
            // not retried by a listener in the background; the reconcile checks again).
            self.databases.forget(&cluster_of(cr));
            return Ok(failed(hold));
        }
        // A single failed read is not an outage: a read that fails is tried once more on
        // another connection (its own is closed) before the database is called not ready.
        let mut tries = 0;
        loop {
            tries += 1;
            let connection = match connection(&pool, cr).await {
                Ok(connection) => connection,
                Err(hold) => return Ok(failed(hold)),
            };
            match read(&connection, &namespace).await {
                Ok((schema_version, rows)) => {
                    // The autoscaler's signal, read on its own: a count that fails or times out
                    // leaves the work unknown, not the database unusable.
                    let work = match tokio::time::timeout(
                        DATABASE_DEADLINE,
                        contract::work(&**connection, work_cap.0, work_cap.1),
                    )
                    .await
                    {
                        Ok(Ok(work)) => Ok(work),
                        // The state's code only: the database's words may name the user.
                        Ok(Err(contract::ContractError::Database(error))) => Err(format!(
                            "counting the jobs failed (SQLSTATE {})",
                            error.code().map_or("none", |c| c.code())
                        )),
                        Ok(Err(error)) => Err(redact(format!("counting the jobs failed: {error}"), &password)),
                        Err(_) => Err(format!("counting the jobs took more than {DATABASE_DEADLINE:?}")),
                    };
                    if let Err(why) = &work {
                        tracing::debug!(cluster = %key(cr), %why, "the work is unknown");
                        // It may hang or hold a late answer: closed, not returned.
                        drop(Object::take(connection));
                    } else {
                        drop(connection);
                    }
                    self.databases.listen(&cluster_of(cr));
                    let (members, row_ids) = rows_of(&namespace, pods, rows);
                    return Ok(Observation {
                        state: DatabaseState::Ready {
                            schema_version,
                            members,
                            work,
                        },
                        pool: Some(pool),
                        redactor: Redactor(Some(password)),
                        row_ids,
                    });
                }
                Err(error) => {
                    // Closed, not returned to the pool: it may hang or hold a late answer.
                    drop(Object::take(connection));
                    self.cache.lock().unwrap().remove(&key(cr));
                    if tries < 2 {
                        tracing::debug!(cluster = %key(cr), error = %redact(error.to_string(), &password), "a read failed; trying another connection");
                        continue;
                    }
                    return Ok(not_ready(
                        Reason::QueryFailed,
                        redact(format!("reading the servers table failed: {error}"), &password),
                    ));
                }
            }
        }
    }

    /// The connection pool of `cr`'s database (shared with the other clusters on it, with its
    /// listening connection), as `user`.
    fn pool(&self, cr: &OrchestratorCluster, user: &str, password: &str, ca: Option<&str>) -> Result<Pool, Hold> {
        let db = &cr.spec.database;
        let port = u16::try_from(db.port)
            .map_err(|_| Hold::new(Reason::Unreachable, format!("port {} is out of range", db.port)))?;
        let mut hasher = DefaultHasher::new();
        (password, ca).hash(&mut hasher);
        let target = Target {
            address: (db.host.clone(), port, db.name.clone(), user.to_string()),
            security: (
                format!("{}/{}", db.ssl_mode.as_str(), db.channel_binding().as_str()),
                hasher.finish(),
            ),
        };
        self.databases.join(&cluster_of(cr), target, || {
            let connector = Connector::with_binding(db.ssl_mode.into(), db.channel_binding(), ca.map(str::as_bytes))
                .map_err(|e| connect_failure(cr, e))?;
            Ok(Session {
                config: session_config(cr, port, user, password),
                connector,
            })
        })
    }

    /// Whether `cr` passed the check (login, privileges, schema) on `pool`: a recent outcome
    /// of the same settings, else a fresh check.
    async fn checked(&self, cr: &OrchestratorCluster, fingerprint: u64, pool: &Pool) -> Result<(), Hold> {
        let cached = self
            .cache
            .lock()
            .unwrap()
            .get(&key(cr))
            .filter(|c| {
                let ttl = if c.outcome.is_ok() { self.ttl } else { FAILED_TTL };
                c.fingerprint == fingerprint && c.checked.elapsed() < ttl
            })
            .map(|c| c.outcome.clone());
        if let Some(outcome) = cached {
            return outcome;
        }
        let db = &cr.spec.database;
        let outcome = tokio::time::timeout(CHECK_DEADLINE, check(cr, pool))
            .await
            .unwrap_or_else(|_| {
                Err(Hold::new(
                    Reason::Unreachable,
                    format!(
                        "{}:{} did not complete the preflight (connection, TLS, login, privileges, schema) within {CHECK_DEADLINE:?}",
                        db.host, db.port
                    ),
                ))
            });
        self.cache.lock().unwrap().insert(
            key(cr),
            Cached {
                fingerprint,
                checked: Instant::now(),
                outcome: outcome.clone(),
            },
        );
        outcome
    }
}

/// Namespace and name of `cluster`.
fn cluster_of(cluster: &impl kube::Resource) -> (String, String) {
    (
        cluster.meta().namespace.clone().unwrap_or_default(),
        cluster.meta().name.clone().unwrap_or_default(),
    )
}

/// The user, password and CA (optional) in `secret`, the cluster's credentials Secret.
fn read_credentials(
    cr: &OrchestratorCluster,
    secret: &Secret,
) -> Result<(String, String, Option<String>), (Reason, String)> {
    let secret_ref = &cr.spec.database.credentials_secret;
    let value = |key: &str| {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .map(|v| String::from_utf8_lossy(&v.0).into_owned())
            .filter(|v| !v.is_empty())
    };
    let user = value(&secret_ref.username_key).ok_or_else(|| {
        (
            Reason::SecretKeyMissing,
            format!(
                "secret {} has no key '{}' (the database user)",
                secret_ref.name, secret_ref.username_key
            ),
        )
    })?;
    let password = value(&secret_ref.password_key).ok_or_else(|| {
        (
            Reason::SecretKeyMissing,
            format!(
                "secret {} has no key '{}' (the database password)",
                secret_ref.name, secret_ref.password_key
            ),
        )
    })?;
    Ok((user, password, value(CA_KEY)))
}

/// The schema version and the rows a cluster in `namespace` may own, within
/// [`DATABASE_DEADLINE`].
async fn read(client: &Client, namespace: &str) -> Result<(i32, Vec<contract::Member>), contract::ContractError> {
    let read = async {
        let schema_version = contract::schema_version(client).await?;
        let members = contract::membership_in_namespace(client, namespace).await?;
        Ok((schema_version, members))
    };
    tokio::time::timeout(DATABASE_DEADLINE, read).await.unwrap_or_else(|_| {
        Err(contract::ContractError::Timeout(format!(
            "no answer within {DATABASE_DEADLINE:?}"
        )))
    })
}

/// Removes the password from a message, whatever produced it.
pub(crate) fn redact(message: String, password: &str) -> String {
    if password.is_empty() {
        message
    } else {
        message.replace(password, "<redacted>")
    }
}

/// The settings of a session of `cr`'s database as `user`: statement and lock timeouts of
/// [`DATABASE_DEADLINE`], keepalives, and the operator's application name.
fn session_config(cr: &OrchestratorCluster, port: u16, user: &str, password: &str) -> tokio_postgres::Config {
    let db = &cr.spec.database;
    let mut config = tokio_postgres::Config::new();
    config
        .host(&db.host)
        .port(port)
        .dbname(&db.name)
        .user(user)
        .password(password)
        .application_name("orchestrator-operator")
        .options(format!(
            "-c statement_timeout={ms} -c lock_timeout={ms}",
            ms = DATABASE_DEADLINE.as_millis()
        ))
        .connect_timeout(CONNECT_TIMEOUT)
        // A connection whose peer went silent (a partition, a failover that moved the address)
        // is closed within seconds, not after the kernel's retransmissions (about 15 minutes).
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(10))
        .keepalives_interval(Duration::from_secs(5))
        .keepalives_retries(3)
        .tcp_user_timeout(Duration::from_secs(15));
    config
}

/// The uncached check, step by step: the host resolves, a pooled connection opens (TLS and
/// login), the schema exists, the user has the privileges the operator needs.
async fn check(cr: &OrchestratorCluster, pool: &Pool) -> Result<(), Hold> {
    let db = &cr.spec.database;
    let port = u16::try_from(db.port)
        .map_err(|_| Hold::new(Reason::Unreachable, format!("port {} is out of range", db.port)))?;
    let addresses = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::lookup_host((db.host.as_str(), port)))
        .await
        .map_err(|_| {
            Hold::new(
                Reason::HostUnresolvable,
                format!("host {} did not resolve within 3s", db.host),
            )
        })?
        .map_err(|e| {
            Hold::new(
                Reason::HostUnresolvable,
                format!("host {} does not resolve: {e}", db.host),
            )
        })?
        .count();
    if addresses == 0 {
        return Err(Hold::new(
            Reason::HostUnresolvable,
            format!("host {} resolves to no address", db.host),
        ));
    }
    // No bare TCP probe: the session's own connection attempt says whether the host answers.
    let client = connection(pool, cr).await?;
    let version = contract::schema_version(&**client)
        .await
        .map_err(|e| Hold::new(Reason::QueryFailed, format!("reading the schema version failed: {e}")))?;
    if version == 0 {
        return Err(Hold::new(
            Reason::SchemaMissing,
            format!(
                "database {} has no orchestrator schema yet; run `orchestrator-server schema migrate`",
                db.name
            ),
        ));
    }
    let privileged: bool = client
        .query_one(
            "SELECT has_table_privilege('servers', 'SELECT, UPDATE, DELETE') AND has_table_privilege('jobs', 'SELECT')",
            &[],
        )
        .await
        .map_err(|e| Hold::new(Reason::QueryFailed, format!("checking privileges failed: {e}")))?
        .get(0);
    if !privileged {
        return Err(Hold::new(
            Reason::InsufficientPrivileges,
            format!(
                "the user in secret {} needs SELECT, UPDATE and DELETE on table servers and SELECT on table jobs",
                db.credentials_secret.name
            ),
        ));
    }
    Ok(())
}

/// A connection of `pool`, or why none could be opened, for a person.
async fn connection(pool: &Pool, cr: &OrchestratorCluster) -> Result<Object, Hold> {
    let db = &cr.spec.database;
    pool.get().await.map_err(|error| match error {
        PoolError::Backend(e) => connect_failure(cr, tls::ConnectError::from_connect(e)),
        PoolError::Timeout(_) => Hold::new(
            Reason::Unreachable,
            format!("no connection to {}:{} could be opened in time", db.host, db.port),
        ),
        other => Hold::new(
            Reason::Unreachable,
            format!("no connection to {}:{}: {other}", db.host, db.port),
        ),
    })
}

/// Why a connection to `cr`'s database could not be opened, for a person.
fn connect_failure(cr: &OrchestratorCluster, error: tls::ConnectError) -> Hold {
    let db = &cr.spec.database;
    match error {
        tls::ConnectError::Postgres(e) => classify_login(&e, cr),
        tls::ConnectError::Unbound => Hold::new(
            Reason::ChannelBindingRefused,
            format!(
                "the database at {}:{} asked for a login that does not bind the TLS channel (cleartext, MD5 or SCRAM without channel binding), or its certificate's signature algorithm cannot be bound, and channelBinding is {}: let the role log in with SCRAM-SHA-256 over TLS (password_encryption scram-sha-256, pg_hba method scram-sha-256), or set database.channelBinding: prefer if the database cannot (a pooler that ends TLS)",
                db.host,
                db.port,
                db.channel_binding().as_str()
            ),
        ),
        other => Hold::new(
            Reason::TlsFailed,
            format!(
                "{other} (sslMode {}, CA from key {CA_KEY} of secret {})",
                db.ssl_mode.as_str(),
                db.credentials_secret.name
            ),
        ),
    }
}

fn classify_login(error: &tokio_postgres::Error, cr: &OrchestratorCluster) -> Hold {
    let db = &cr.spec.database;
    match error.code() {
        Some(code) if *code == SqlState::INVALID_PASSWORD || *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION => {
            Hold::new(
                Reason::LoginFailed,
                format!(
                    "login to {}:{} was refused: check the user and password in secret {}",
                    db.host, db.port, db.credentials_secret.name
                ),
            )
        }
        Some(code) if *code == SqlState::INVALID_CATALOG_NAME => Hold::new(
            Reason::DatabaseMissing,
            format!("database {} does not exist on {}:{}", db.name, db.host, db.port),
        ),
        // The database's own words may name the user (too many connections for role "x"):
        // its code only.
        Some(code) => Hold::new(
            Reason::Unreachable,
            format!(
                "the database at {}:{} refused the session (SQLSTATE {})",
                db.host,
                db.port,
                code.code()
            ),
        ),
        None => Hold::new(
            Reason::Unreachable,
            format!("cannot connect to {}:{}: {error}", db.host, db.port),
        ),
    }
}
