//! The database preflight: Secret, keys, host, connection, login, privileges, schema. Each
//! failure is a `DatabaseReady` reason with a message a person can act on. A successful
//! check is cached for a short time (and its connection reused) unless the Secret or the
//! connection settings change.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt};
use orchestrator_contract as contract;
use orchestrator_contract::tls;
use tokio_postgres::Client;
use tokio_postgres::error::SqlState;

use super::{DatabaseState, rows_of};
use crate::crd::OrchestratorCluster;
use crate::crd::object_key as key;
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
}

struct Cached {
    fingerprint: u64,
    checked: Instant,
    outcome: Result<Arc<Client>, Hold>,
}

/// A preflight outcome: the state for the plan, and the connection when usable.
pub(crate) struct Observation {
    /// What the plan sees.
    pub state: DatabaseState,
    /// Connection for the reconcile's database writes.
    pub client: Option<Arc<Client>>,
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

fn not_ready(reason: Reason, message: String) -> Observation {
    Observation {
        state: DatabaseState::NotReady { reason, message },
        client: None,
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
        }
    }

    /// Forgets a cluster (deleted).
    pub(crate) fn forget(&self, cluster: &impl kube::Resource) {
        self.cache.lock().unwrap().remove(&key(cluster));
    }

    /// Checks the database of `cr` (or reuses a recent check) and reads its membership.
    /// Legacy rows are read as the cluster's only for `pods` (the server pods running here).
    pub(crate) async fn observe(
        &self,
        kube: &kube::Client,
        cr: &OrchestratorCluster,
        pods: &BTreeSet<String>,
    ) -> Result<Observation> {
        let db = &cr.spec.database;
        let namespace = cr.namespace().unwrap_or_default();
        let secret_ref = &db.credentials_secret;
        let Some(secret) = Api::<Secret>::namespaced(kube.clone(), &namespace)
            .get_opt(&secret_ref.name)
            .await?
        else {
            return Ok(not_ready(
                Reason::SecretMissing,
                format!("secret {} does not exist in namespace {namespace}", secret_ref.name),
            ));
        };
        let value = |key: &str| {
            secret
                .data
                .as_ref()
                .and_then(|d| d.get(key))
                .map(|v| String::from_utf8_lossy(&v.0).into_owned())
                .filter(|v| !v.is_empty())
        };
        let Some(user) = value(&secret_ref.username_key) else {
            return Ok(not_ready(
                Reason::SecretKeyMissing,
                format!(
                    "secret {} has no key '{}' (the database user)",
                    secret_ref.name, secret_ref.username_key
                ),
            ));
        };
        let Some(password) = value(&secret_ref.password_key) else {
            return Ok(not_ready(
                Reason::SecretKeyMissing,
                format!(
                    "secret {} has no key '{}' (the database password)",
                    secret_ref.name, secret_ref.password_key
                ),
            ));
        };
        let mut hasher = DefaultHasher::new();
        (
            secret.resource_version(),
            &db.host,
            db.port,
            &db.name,
            db.ssl_mode.as_str(),
            &user,
        )
            .hash(&mut hasher);
        let fingerprint = hasher.finish();

        // A single failed read is not an outage: a read on a cached connection that fails is
        // tried once more on a fresh connection before the database is called not ready.
        let mut reuse = true;
        loop {
            let (client, fresh) = match self
                .connect(cr, fingerprint, reuse, &user, &password, value(CA_KEY))
                .await
            {
                Ok(connected) => connected,
                Err(Hold { reason, message }) => {
                    return Ok(Observation {
                        redactor: Redactor(Some(password.clone())),
                        ..not_ready(reason, redact(message, &password))
                    });
                }
            };
            match read(&client).await {
                Ok((schema_version, rows)) => {
                    let (members, row_ids) = rows_of(&namespace, pods, rows);
                    return Ok(Observation {
                        state: DatabaseState::Ready {
                            schema_version,
                            members,
                        },
                        client: Some(client),
                        redactor: Redactor(Some(password)),
                        row_ids,
                    });
                }
                Err(error) => {
                    self.cache.lock().unwrap().remove(&key(cr));
                    if !fresh {
                        tracing::debug!(cluster = %key(cr), %error, "a read on the cached connection failed; checking again");
                        reuse = false;
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

    /// A connection that passed the preflight: the cached one when `reuse` allows it (and it is
    /// recent and of the same settings), else a fresh check. `true` with a fresh connection.
    async fn connect(
        &self,
        cr: &OrchestratorCluster,
        fingerprint: u64,
        reuse: bool,
        user: &str,
        password: &str,
        ca: Option<String>,
    ) -> Result<(Arc<Client>, bool), Hold> {
        let cached = reuse
            .then(|| {
                let cache = self.cache.lock().unwrap();
                cache
                    .get(&key(cr))
                    .filter(|c| c.fingerprint == fingerprint && c.checked.elapsed() < self.ttl)
                    .map(|c| c.outcome.clone())
            })
            .flatten();
        match cached {
            Some(Ok(client)) if !client.is_closed() => return Ok((client, false)),
            Some(Err(failure)) => return Err(failure),
            _ => {}
        }
        let db = &cr.spec.database;
        let fresh = tokio::time::timeout(CHECK_DEADLINE, check(cr, user, password, ca.as_deref().map(str::as_bytes)))
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
                outcome: fresh.clone(),
            },
        );
        fresh.map(|client| (client, true))
    }
}

/// The schema version and every server's row, within [`DATABASE_DEADLINE`].
async fn read(client: &Client) -> Result<(i32, Vec<contract::Member>), contract::ContractError> {
    let read = async {
        let schema_version = contract::schema_version(client).await?;
        let members = contract::membership(client).await?;
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

/// The uncached check, step by step.
async fn check(
    cr: &OrchestratorCluster,
    user: &str,
    password: &str,
    ca_pem: Option<&[u8]>,
) -> Result<Arc<Client>, Hold> {
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
        .collect::<Vec<_>>();
    let Some(address) = addresses.first() else {
        return Err(Hold::new(
            Reason::HostUnresolvable,
            format!("host {} resolves to no address", db.host),
        ));
    };
    tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(address))
        .await
        .map_err(|_| {
            Hold::new(
                Reason::Unreachable,
                format!("no answer from {}:{port} within 3s", db.host),
            )
        })?
        .map_err(|e| {
            Hold::new(
                Reason::Unreachable,
                format!("cannot connect to {}:{port}: {e}", db.host),
            )
        })?;
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
    let mode: tls::SslMode = db
        .ssl_mode
        .as_str()
        .parse()
        .map_err(|e: tls::ConnectError| Hold::new(Reason::TlsFailed, e.to_string()))?;
    let client = match tls::connect(&config, mode, ca_pem).await {
        Ok(client) => client,
        Err(tls::ConnectError::Postgres(e)) => return Err(classify_login(&e, cr, user)),
        Err(e) => {
            let secret = &db.credentials_secret.name;
            return Err(Hold::new(
                Reason::TlsFailed,
                format!(
                    "{e} (sslMode {}, CA from key {CA_KEY} of secret {secret})",
                    db.ssl_mode.as_str()
                ),
            ));
        }
    };
    let version = contract::schema_version(&client)
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
            format!("user {user} needs SELECT, UPDATE and DELETE on table servers and SELECT on table jobs"),
        ));
    }
    Ok(Arc::new(client))
}

fn classify_login(error: &tokio_postgres::Error, cr: &OrchestratorCluster, user: &str) -> Hold {
    let db = &cr.spec.database;
    match error.code() {
        Some(code) if *code == SqlState::INVALID_PASSWORD || *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION => {
            Hold::new(
                Reason::LoginFailed,
                format!(
                    "login as {user} to {}:{} was refused: check the password in secret {}",
                    db.host, db.port, db.credentials_secret.name
                ),
            )
        }
        Some(code) if *code == SqlState::INVALID_CATALOG_NAME => Hold::new(
            Reason::DatabaseMissing,
            format!("database {} does not exist on {}:{}", db.name, db.host, db.port),
        ),
        _ => Hold::new(
            Reason::Unreachable,
            format!("cannot open a session on {}:{}: {error}", db.host, db.port),
        ),
    }
}
