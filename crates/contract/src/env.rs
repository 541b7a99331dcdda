//! The environment contract between the operator and a server pod: the names of the
//! environment variables a server reads its settings from.
//!
//! The operator sets the names of [`OPERATOR_SET`] in every server container, from four
//! places:
//!
//! - pod fields (downward API `fieldRef`): [`SERVER_ID`], [`POD_NAMESPACE`], [`POD_IP`];
//! - the cluster's spec, as a literal value: [`SERVER_VERSION`];
//! - `secretKeyRef`s to the credentials Secret (`spec.database.credentialsSecret`):
//!   [`DATABASE_USER`], [`DATABASE_PASSWORD`], [`DATABASE_CA`];
//! - the cluster's settings ConfigMap (`envFrom`), computed from the spec: [`DATABASE_HOST`],
//!   [`DATABASE_PORT`], [`DATABASE_NAME`], [`DATABASE_SSLMODE`], [`DATABASE_CHANNEL_BINDING`],
//!   [`HTTP_PORT`],
//!   [`METRICS_PORT`], [`DRAIN_TIMEOUT_SECONDS`].
//!
//! Those names are reserved: `spec.template.env` may not override them. The names of
//! [`NOT_OPERATOR_SET`] are read by the reference server too, but the operator never sets
//! them; each has a default, and a user may set them through `spec.template.env`.
//!
//! An empty value counts as unset for the reference server.

/// The server's id in the database (its row in `servers`, the owner of the jobs it claims).
///
/// Set by the operator from the pod field `metadata.name` (the pod name, stable across
/// restarts of a StatefulSet pod). Any non-empty string; when unset the reference server falls
/// back to [`HOSTNAME`].
pub const SERVER_ID: &str = "SERVER_ID";

/// The address the server binds its HTTP and metrics ports on.
///
/// Set by the operator from the pod field `status.podIP`. An IPv4 or IPv6 address; the
/// reference server defaults to `127.0.0.1`.
pub const POD_IP: &str = "POD_IP";

/// The server version the pod runs: the version the server registers in the database, and
/// the one whose schema needs `schema check|migrate` compare against.
///
/// Set by the operator as a literal value from `spec.version`; the operator also reads it back
/// from the pod template to learn which release a StatefulSet runs. A version string such as
/// `2.0.0` (a suffix `-unready` makes the reference server simulate a release that never gets
/// ready); the reference server defaults to its own build version.
pub const SERVER_VERSION: &str = "SERVER_VERSION";

/// The namespace of the server's pod.
///
/// Set by the operator from the pod field `metadata.namespace`. A Kubernetes namespace name;
/// the reference server does not read it.
pub const POD_NAMESPACE: &str = "POD_NAMESPACE";

/// Host of the process database.
///
/// Set by the operator through the settings ConfigMap from `spec.database.host`. A host name
/// or IP address; required by the server.
pub const DATABASE_HOST: &str = "DATABASE_HOST";

/// TCP port of the process database.
///
/// Set by the operator through the settings ConfigMap from `spec.database.port`. A decimal
/// port number; the reference server defaults to `5432`.
pub const DATABASE_PORT: &str = "DATABASE_PORT";

/// Name of the process database.
///
/// Set by the operator through the settings ConfigMap from `spec.database.name`. Required by
/// the server.
pub const DATABASE_NAME: &str = "DATABASE_NAME";

/// TLS mode of the database connection.
///
/// Set by the operator through the settings ConfigMap from `spec.database.sslMode`. One of
/// libpq's `sslmode` values `disable`, `prefer`, `require`, `verify-ca`, `verify-full` (see
/// [`crate::tls`]); the reference server defaults to `prefer`.
pub const DATABASE_SSLMODE: &str = "DATABASE_SSLMODE";

/// Whether the login must be bound to the TLS channel (SCRAM-SHA-256-PLUS).
///
/// Set by the operator through the settings ConfigMap from `spec.database.channelBinding`, or
/// its default for the `sslMode`. One of libpq's `channel_binding` values `prefer`, `require`
/// (see [`crate::tls::ChannelBinding`]); `require` refuses cleartext, MD5 and unbound SCRAM
/// logins. The reference server defaults to `require` when [`DATABASE_SSLMODE`] always uses
/// TLS, else `prefer`.
pub const DATABASE_CHANNEL_BINDING: &str = "DATABASE_CHANNEL_BINDING";

/// Database login.
///
/// Set by the operator as a `secretKeyRef` to the credentials Secret
/// (`spec.database.credentialsSecret.name`, key `usernameKey`, default `username`; not
/// optional). Required by the server.
pub const DATABASE_USER: &str = "DATABASE_USER";

/// Database password.
///
/// Set by the operator as a `secretKeyRef` to the credentials Secret (key `passwordKey`,
/// default `password`; not optional): its value never appears in the pod template. Required by
/// the server, never logged.
pub const DATABASE_PASSWORD: &str = "DATABASE_PASSWORD";

/// The CA that signed the database's certificate, for `verify-ca` and `verify-full`.
///
/// Set by the operator as an optional `secretKeyRef` to key `ca.crt` of the credentials
/// Secret: unset when the Secret has no such key. PEM text; when unset the server verifies
/// against the system's roots.
pub const DATABASE_CA: &str = "DATABASE_CA";

/// Port of the server's web service (`/livez`, `/readyz`, `/jobs`).
///
/// Set by the operator through the settings ConfigMap, always `8080` (the container port
/// named `http` its probes and Service use). A decimal port number; the reference server
/// defaults to `8080`.
pub const HTTP_PORT: &str = "HTTP_PORT";

/// Port of the server's `/metrics`.
///
/// Set by the operator through the settings ConfigMap, always `9090` (the container port
/// named `metrics`). A decimal port number; the reference server defaults to `9090`.
pub const METRICS_PORT: &str = "METRICS_PORT";

/// How long a friendly shutdown started by SIGTERM waits for running jobs before handing
/// them back to the other servers.
///
/// Set by the operator through the settings ConfigMap from `spec.maintenance.drainTimeout`.
/// Whole seconds, a decimal integer of at least 1 (the operator rounds down and sets at least
/// 1); the reference server defaults to `30`.
pub const DRAIN_TIMEOUT_SECONDS: &str = "DRAIN_TIMEOUT_SECONDS";

/// Jobs a server runs at once.
///
/// Not set by the operator (a user may set it through `spec.template.env`). A decimal integer
/// of at least 1; the reference server defaults to [`DEFAULT_WORKERS`].
pub const WORKERS: &str = "WORKERS";

/// [`WORKERS`] of a server that is not told: the jobs one server runs at once, which is also
/// the operator's default target of queue-depth autoscaling (jobs per server).
pub const DEFAULT_WORKERS: u16 = 4;

/// Time between a server's heartbeats (which also renew its jobs' leases); a server is not
/// ready when its last successful heartbeat is older than three of them.
///
/// Not set by the operator. Milliseconds, a decimal integer, more than 0 and at most half of
/// [`LEASE_MILLISECONDS`] less its safety margin (`max(lease / 5, 1 s)`, at most half the
/// lease); the reference server defaults to `2000` and refuses to start otherwise.
pub const HEARTBEAT_MILLISECONDS: &str = "HEARTBEAT_MILLISECONDS";

/// Lease of a claimed job: another server may claim the job once the lease expired.
///
/// Not set by the operator. Milliseconds, a decimal integer; the reference server defaults to
/// `15000`.
pub const LEASE_MILLISECONDS: &str = "LEASE_MILLISECONDS";

/// Pause of an idle worker between claims while the queue is empty.
///
/// Not set by the operator. Milliseconds, a decimal integer; the reference server defaults to
/// `100`.
pub const IDLE_POLL_MILLISECONDS: &str = "IDLE_POLL_MILLISECONDS";

/// The size of a server process's (or the load generator's) connection pool to the process
/// database, shared by its workers and its web service. A server opens one more connection,
/// its heartbeat's own: `DATABASE_MAX_CONNECTIONS + 1` in all.
///
/// Not set by the operator. A decimal integer of at least 1; the reference server defaults to
/// `2` (3 connections per server). Size the database's `max_connections` for it (see the
/// database contract's sizing note).
pub const DATABASE_MAX_CONNECTIONS: &str = "DATABASE_MAX_CONNECTIONS";

/// Claims a job may have before it is dead-lettered: a job whose lease expired (its server
/// died or lost the database) after this many claims is marked `failed` instead of being run
/// again.
///
/// Not set by the operator. A decimal integer of at least 1; the reference server defaults to
/// `3`.
pub const JOB_MAX_ATTEMPTS: &str = "JOB_MAX_ATTEMPTS";

/// Host name of the container, the fallback for [`SERVER_ID`].
///
/// Not set by the operator: the container runtime sets it (Kubernetes: to the pod name).
pub const HOSTNAME: &str = "HOSTNAME";

/// Log filter of the reference server (`tracing_subscriber::EnvFilter` directives).
///
/// Not set by the operator. Directives such as `info` or `orchestrator_server=debug`; the
/// reference server defaults to `info`.
pub const RUST_LOG: &str = "RUST_LOG";

/// Exactly the names the operator sets in a server container: the reserved names that
/// `spec.template.env` may not override.
pub const OPERATOR_SET: [&str; 15] = [
    SERVER_ID,
    POD_IP,
    SERVER_VERSION,
    POD_NAMESPACE,
    DATABASE_HOST,
    DATABASE_PORT,
    DATABASE_NAME,
    DATABASE_SSLMODE,
    DATABASE_CHANNEL_BINDING,
    DATABASE_USER,
    DATABASE_PASSWORD,
    DATABASE_CA,
    HTTP_PORT,
    METRICS_PORT,
    DRAIN_TIMEOUT_SECONDS,
];

/// The other names the reference server reads: the operator never sets them, each has a
/// default in the server (or, for [`HOSTNAME`], is set by the container runtime), and a user
/// may set them through `spec.template.env`.
pub const NOT_OPERATOR_SET: [&str; 8] = [
    WORKERS,
    HEARTBEAT_MILLISECONDS,
    LEASE_MILLISECONDS,
    IDLE_POLL_MILLISECONDS,
    DATABASE_MAX_CONNECTIONS,
    JOB_MAX_ATTEMPTS,
    HOSTNAME,
    RUST_LOG,
];

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn all() -> impl Iterator<Item = &'static str> {
        OPERATOR_SET.into_iter().chain(NOT_OPERATOR_SET)
    }

    #[test]
    fn names_are_unique() {
        let mut seen = BTreeSet::new();
        for name in all() {
            assert!(seen.insert(name), "{name} is listed twice");
        }
    }

    #[test]
    fn names_are_upper_snake_case() {
        for name in all() {
            let well_formed = name.starts_with(|c: char| c.is_ascii_uppercase())
                && !name.ends_with('_')
                && !name.contains("__")
                && name
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
            assert!(well_formed, "{name:?} is not UPPER_SNAKE_CASE");
        }
    }
}
