//! The `OrchestratorCluster` custom resource (`orchestrator.dev/v1alpha1`).
//!
//! Every field's doc comment becomes its description in the CRD, which is what
//! `kubectl explain orchestratorcluster.spec...` prints. Validation that the API server can do
//! (minimums, enums, patterns, cross-field CEL rules) lives here too, so a bad spec is refused at
//! `kubectl apply` time with the message written next to the rule.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Affinity, EnvVar, ResourceRequirements, Toleration, TopologySpreadConstraint};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{CustomResourceDefinition, JSONSchemaProps};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use orchestrator_contract::tls;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Environment variable names the operator sets itself; `spec.template.env` may not override
/// them (the CRD's CEL rule on `template` lists them; a test keeps the two equal).
pub const RESERVED_ENV_NAMES: [&str; 15] = orchestrator_contract::env::OPERATOR_SET;

/// A DNS subdomain (RFC 1123) as a regular expression, for CEL rules.
macro_rules! dns_subdomain {
    () => {
        r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
    };
}

/// A label or annotation key (a qualified name: an optional DNS subdomain prefix and `/`, then
/// up to 63 letters, digits, `-`, `_` and `.`, alphanumeric at both ends), for CEL rules.
macro_rules! qualified_name {
    () => {
        r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
    };
}

/// A label value (empty, or up to 63 letters, digits, `-`, `_` and `.`, alphanumeric at both
/// ends), for CEL rules.
macro_rules! label_value {
    () => {
        r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$"
    };
}

/// CEL rule: `image`, when set, is a valid image reference: `[registry[:port]/]name[:tag][@digest]`
/// with a lowercase name, as the container runtime parses it.
const IMAGE_RULE: &str = r"!has(self.image) || self.image.matches('^((?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])(?:\\.(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]))*(?::[0-9]+)?/)?[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?$')";

/// Desired state of a highly available cluster of orchestration servers sharing one database.
// printcolumn(...) repeats `type_` per column, which clippy reads as a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "orchestrator.dev",
    version = "v1alpha1",
    kind = "OrchestratorCluster",
    namespaced,
    shortname = "orc",
    category = "orchestrator",
    status = "OrchestratorClusterStatus",
    derive = "PartialEq",
    cel,
    doc = "A highly available cluster of process-orchestration servers that share one external database. The operator adds servers safely, runs rolling maintenance one server at a time with a friendly shutdown and reports the health of every server.",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(
        name = "Desired",
        type_ = "integer",
        json_path = ".status.desiredReplicas",
        description = "Servers the cluster is sized for: spec.replicas, or the autoscaler's count"
    ),
    printcolumn(
        name = "Joined",
        type_ = "integer",
        json_path = ".status.readyReplicas",
        description = "Servers joined: pod ready and active in the database"
    ),
    printcolumn(
        name = "Version",
        type_ = "string",
        json_path = ".spec.version",
        description = "Server version wanted"
    ),
    printcolumn(
        name = "Phase",
        type_ = "string",
        json_path = ".status.phase",
        description = "Summary of the cluster's state"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[kube(validation = Rule::new("self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')").message("metadata.name must be a DNS-1035 label (lowercase letters, digits and -, starting with a letter): the Services named after the cluster need one"))]
#[kube(validation = Rule::new("(self.spec.database.host == oldSelf.spec.database.host && self.spec.database.name == oldSelf.spec.database.name) || !has(self.status) || self.status.replicas == 0").message("spec.database.host and spec.database.name cannot change while the cluster has servers, which would split it across two databases: set spec.replicas to 0 (and remove capacity.autoscale), wait for status.replicas to be 0, change the database, then scale up again"))]
#[x_kube(validation = Rule::new("has(self.image) || self.version.matches('^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$')").message(Message::Expression("'version ' + self.version + ' is not a valid image tag (letters, digits, _ . and -, at most 128, no +): set spec.image, or use a version that is a tag'".into())))]
#[x_kube(validation = Rule::new(IMAGE_RULE).message(Message::Expression("'image ' + self.image + ' is not a valid image reference ([registry[:port]/]name[:tag][@digest], lowercase name)'".into())))]
#[x_kube(validation = Rule::new("self.replicas <= self.capacity.maxReplicas").message("spec.replicas must not exceed spec.capacity.maxReplicas, the owner's ceiling for adding servers; raise capacity.maxReplicas first"))]
#[serde(rename_all = "camelCase")]
pub struct OrchestratorClusterSpec {
    /// Number of servers wanted. Servers are added one at a time and only once the database
    /// preflight passes; must not exceed `capacity.maxReplicas`.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0))]
    pub replicas: i32,

    /// Server version. Used as the image tag unless `image` is set, and compared with the
    /// database schema before an upgrade.
    #[schemars(length(min = 1, max = 128), regex(pattern = r"^[0-9A-Za-z][0-9A-Za-z._+-]*$"))]
    pub version: String,

    /// Full server image reference. Defaults to the operator's server image repository with
    /// `version` as the tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,

    /// The external process database every server shares.
    pub database: DatabaseSpec,

    /// Limits on adding servers.
    #[serde(default)]
    pub capacity: CapacitySpec,

    /// How rolling maintenance (restarts, upgrades, replacements) is carried out.
    #[serde(default)]
    pub maintenance: MaintenanceSpec,

    /// How upgrades that change the database schema are handled.
    #[serde(default)]
    pub upgrade: UpgradeSpec,

    /// Pod settings for every server: resources, extra environment, scheduling, metadata.
    #[serde(default)]
    pub template: ServerTemplate,
}

fn default_replicas() -> i32 {
    3
}

/// Connection settings of the shared process database.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.channelBinding) || self.channelBinding != 'require' || !has(self.sslMode) || self.sslMode != 'disable'").message("database.channelBinding require needs TLS, and sslMode disable never uses it: choose an sslMode that uses TLS, or channelBinding prefer"))]
pub struct DatabaseSpec {
    /// Host name or IP address of the PostgreSQL server.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[A-Za-z0-9]([A-Za-z0-9.:-]*[A-Za-z0-9])?$")
    )]
    pub host: String,

    /// TCP port of the PostgreSQL server.
    #[serde(default = "default_database_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,

    /// Name of the process database.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,

    /// Secret in the same namespace holding the login (and, optionally, under key `ca.crt` the
    /// CA of the database's certificate for `verify-ca` / `verify-full`). Its values are passed
    /// to servers only as `secretKeyRef` environment variables and never copied anywhere else.
    pub credentials_secret: CredentialsSecretRef,

    /// TLS mode of the connection, as in libpq's `sslmode` (default `verify-full`, with the CA
    /// from key `ca.crt` of the credentials Secret or the system roots).
    #[serde(default)]
    pub ssl_mode: SslMode,

    /// Whether the login must be bound to the TLS channel (SCRAM-SHA-256-PLUS), as libpq's
    /// `channel_binding`. `require` refuses cleartext, MD5 and unbound SCRAM logins, so that a
    /// server in the middle learns neither the password nor a hash of it; `prefer` accepts
    /// them (for poolers that end TLS, or roles with MD5-stored passwords). Default: `require`
    /// when `sslMode` always uses TLS (`require`, `verify-ca`, `verify-full`), else `prefer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel_binding: Option<ChannelBinding>,
}

impl DatabaseSpec {
    /// The channel binding in force: the spec's, else the default for `sslMode`.
    pub fn channel_binding(&self) -> tls::ChannelBinding {
        match self.channel_binding {
            Some(ChannelBinding::Prefer) => tls::ChannelBinding::Prefer,
            Some(ChannelBinding::Require) => tls::ChannelBinding::Require,
            None => tls::ChannelBinding::default_for(self.ssl_mode.into()),
        }
    }
}

/// Channel binding of the database login (libpq `channel_binding`).
#[derive(JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum ChannelBinding {
    /// Bind the channel when the database offers it; accept any other login it asks for.
    Prefer,
    /// Accept only a login bound to the TLS channel (SCRAM-SHA-256-PLUS).
    Require,
}

fn default_database_port() -> i32 {
    5432
}

/// The label a credentials Secret must carry (value `"true"`) before the operator reads its
/// values: naming a Secret in a cluster's spec is not enough, so that whoever may edit an
/// `OrchestratorCluster` cannot make the operator read an unrelated Secret of the namespace.
pub const CREDENTIALS_OPT_IN_LABEL: &str = "orchestrator.dev/credentials";

/// Reference to the Secret holding the database login.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(concat!("self.name.matches('", dns_subdomain!(), "')")).message("database.credentialsSecret.name must be a DNS subdomain (lowercase letters, digits, - and ., starting and ending with a letter or digit), as Secret names are"))]
#[x_kube(validation = Rule::new("self.usernameKey.matches('^[-._a-zA-Z0-9]+$') && self.passwordKey.matches('^[-._a-zA-Z0-9]+$')").message("database.credentialsSecret.usernameKey and passwordKey must be Secret keys: letters, digits, -, _ and ."))]
pub struct CredentialsSecretRef {
    /// Name of the Secret. It must carry the label `orchestrator.dev/credentials: "true"`; the
    /// operator reads no Secret without it.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,

    /// Key in the Secret whose value is the database user name.
    #[serde(default = "default_username_key")]
    #[schemars(length(min = 1, max = 253))]
    pub username_key: String,

    /// Key in the Secret whose value is the database password.
    #[serde(default = "default_password_key")]
    #[schemars(length(min = 1, max = 253))]
    pub password_key: String,
}

fn default_username_key() -> String {
    "username".into()
}

fn default_password_key() -> String {
    "password".into()
}

/// TLS mode of the database connection (libpq `sslmode`).
#[derive(JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    /// Plain TCP, no TLS.
    Disable,
    /// TLS when the server offers it, certificate not verified.
    Prefer,
    /// TLS required, certificate not verified.
    Require,
    /// TLS required, certificate verified against a CA.
    VerifyCa,
    /// TLS required, certificate and host name verified. The default.
    #[default]
    VerifyFull,
}

impl From<SslMode> for tls::SslMode {
    fn from(mode: SslMode) -> Self {
        match mode {
            SslMode::Disable => tls::SslMode::Disable,
            SslMode::Prefer => tls::SslMode::Prefer,
            SslMode::Require => tls::SslMode::Require,
            SslMode::VerifyCa => tls::SslMode::VerifyCa,
            SslMode::VerifyFull => tls::SslMode::VerifyFull,
        }
    }
}

impl SslMode {
    /// The value as libpq spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// Limits on adding servers.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.addAtOnce <= self.maxReplicas").message("capacity.addAtOnce must not exceed capacity.maxReplicas: no step can add more servers than the ceiling"))]
#[x_kube(validation = Rule::new("!has(self.autoscale) || self.autoscale.maxReplicas <= self.maxReplicas").message("capacity.autoscale.maxReplicas must not exceed capacity.maxReplicas, the owner's ceiling"))]
pub struct CapacitySpec {
    /// The owner's permission ceiling: the operator never runs more servers than this.
    #[serde(default = "default_max_replicas")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_replicas: i32,

    /// Servers added per step when scaling up; each step waits until the previous servers
    /// joined, so a broken image or bad credentials cost this many pods, not all of them.
    #[serde(default = "default_add_at_once")]
    #[schemars(range(min = 1, max = 100))]
    pub add_at_once: i32,

    /// Queue-depth autoscaling: when set, the operator sizes the cluster from the jobs waiting
    /// in and running on the shared database, and `spec.replicas` is ignored (the count it
    /// runs is `status.desiredReplicas`). Adding keeps every rule above; removing drains
    /// through the database first, one server at a time, never during a roll step, a schema
    /// change or another drain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscale: Option<AutoscaleSpec>,
}

impl Default for CapacitySpec {
    fn default() -> Self {
        Self {
            max_replicas: default_max_replicas(),
            add_at_once: default_add_at_once(),
            autoscale: None,
        }
    }
}

/// Queue-depth autoscaling: servers follow the work in the shared database.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.minReplicas <= self.maxReplicas").message("capacity.autoscale.minReplicas must not exceed capacity.autoscale.maxReplicas"))]
#[x_kube(validation = Rule::new("!has(self.schedules) || self.schedules.all(s, s.minReplicas <= self.maxReplicas)").message("a capacity.autoscale schedule's minReplicas must not exceed capacity.autoscale.maxReplicas"))]
pub struct AutoscaleSpec {
    /// Fewest servers, however idle the queue.
    #[serde(default = "default_min_replicas")]
    #[schemars(range(min = 1, max = 1000))]
    pub min_replicas: i32,

    /// Most servers, however long the queue; at most `capacity.maxReplicas`.
    #[schemars(range(min = 1, max = 1000))]
    pub max_replicas: i32,

    /// The target: jobs (claimable plus running) one server should carry. The cluster wants
    /// `ceil(jobs / jobsPerServer)` servers, less the servers of other clusters that take work
    /// from the same database. Default: the servers' `WORKERS` from `template.env`, else 4
    /// (the reference server's), which keeps every worker busy with no backlog.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub jobs_per_server: Option<i32>,

    /// How fast servers are added.
    #[serde(default)]
    pub scale_up: ScaleUpPolicy,

    /// How fast servers are removed.
    #[serde(default)]
    pub scale_down: ScaleDownPolicy,

    /// Times (UTC, same form as maintenance windows) when more servers are kept, for known
    /// busy hours: while one is open, its `minReplicas` is the floor.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub schedules: Vec<AutoscaleSchedule>,
}

fn default_min_replicas() -> i32 {
    1
}

/// How fast the autoscaler adds servers. Each step adds at most `capacity.addAtOnce` and
/// waits until the servers added before have joined.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("duration(self.stabilizationWindow) <= duration('1h')").message("capacity.autoscale.scaleUp.stabilizationWindow must be at most 1h"))]
pub struct ScaleUpPolicy {
    /// How long the signal must ask for more servers before they are added; the lowest count
    /// it asked for in that time is used (Go duration; `0s` adds at once).
    #[serde(default = "default_scale_up_window")]
    #[schemars(length(max = 32), regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    pub stabilization_window: String,
}

impl Default for ScaleUpPolicy {
    fn default() -> Self {
        Self {
            stabilization_window: default_scale_up_window(),
        }
    }
}

fn default_scale_up_window() -> String {
    "0s".into()
}

/// How fast the autoscaler removes servers: each removal drains through the database first.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("duration(self.stabilizationWindow) <= duration('24h')").message("capacity.autoscale.scaleDown.stabilizationWindow must be at most 24h"))]
pub struct ScaleDownPolicy {
    /// How long the signal must ask for fewer servers before one is removed; the highest
    /// count it asked for in that time is used (Go duration).
    #[serde(default = "default_scale_down_window")]
    #[schemars(length(max = 32), regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    pub stabilization_window: String,

    /// Servers drained at once per step; the next step waits until they are gone.
    #[serde(default = "default_scale_down_step")]
    #[schemars(range(min = 1, max = 100))]
    pub step: i32,
}

impl Default for ScaleDownPolicy {
    fn default() -> Self {
        Self {
            stabilization_window: default_scale_down_window(),
            step: default_scale_down_step(),
        }
    }
}

fn default_scale_down_window() -> String {
    "5m".into()
}

fn default_scale_down_step() -> i32 {
    1
}

/// A recurring time (UTC, the form of a maintenance window) during which the autoscaler keeps
/// at least `minReplicas` servers.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AutoscaleSchedule {
    /// When: days, start (`HH:MM` UTC) and duration, as a maintenance window.
    #[serde(flatten)]
    pub window: MaintenanceWindow,

    /// The floor while it lasts.
    #[schemars(range(min = 1, max = 1000))]
    pub min_replicas: i32,
}

fn default_add_at_once() -> i32 {
    1
}

fn default_max_replicas() -> i32 {
    10
}

/// How rolling maintenance is carried out: one server at a time, each shut down friendly.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("duration(self.drainTimeout) >= duration('1s') && duration(self.drainTimeout) <= duration('24h')").message("maintenance.drainTimeout must be between 1s and 24h"))]
#[x_kube(validation = Rule::new("duration(self.readyTimeout) >= duration('1s') && duration(self.readyTimeout) <= duration('24h')").message("maintenance.readyTimeout must be between 1s and 24h"))]
#[x_kube(validation = Rule::new("!has(self.windows) || self.windows.all(w, duration(w.duration) >= duration(self.drainTimeout) + duration(self.readyTimeout))").message("every maintenance window must last at least drainTimeout + readyTimeout, the longest one step can take: shorten the timeouts or lengthen the window"))]
pub struct MaintenanceSpec {
    /// Stop starting new maintenance steps; a step already running finishes.
    #[serde(default)]
    pub paused: bool,

    /// Who lets a disruptive change of the spec start (a roll, a Recreate, removing servers):
    /// `Automatic`, or `Manual`, where it waits with `MaintenanceBlocked` (or
    /// `CapacityBlocked`) reason `AwaitingApproval` until the cluster carries the annotation
    /// `orchestrator.dev/approve: "<metadata.generation>"`. Approving another generation than
    /// the current one does nothing. A step in progress finishes; the autoscaler's removals
    /// need no approval.
    #[serde(default)]
    pub approval: Approval,

    /// Longest time a server may take to finish its running jobs after a drain request
    /// (Go duration, e.g. `10m`). Also sets the pods' termination grace period.
    #[serde(default = "default_timeout")]
    #[schemars(length(max = 32), regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    pub drain_timeout: String,

    /// What to do when a server does not finish draining within `drainTimeout`.
    #[serde(default)]
    pub on_drain_timeout: DrainTimeoutPolicy,

    /// Longest time a new or replaced server may take to join (pod ready and active in the
    /// database) before maintenance halts (Go duration, e.g. `10m`).
    #[serde(default = "default_timeout")]
    #[schemars(length(max = 32), regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    pub ready_timeout: String,

    /// Set to the current time to request a rolling restart of every server started before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_requested_at: Option<Time>,

    /// Times when disruptive steps may run. Empty means any time.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub windows: Vec<MaintenanceWindow>,

    /// A canary for version changes that roll: the first servers replaced run the new release
    /// for `bakeTime`, and the roll goes on only if they do as well as the other servers;
    /// otherwise they are rolled back and the roll halts with `CanaryFailed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanarySpec>,

    /// When a change of the pod template that comes from the operator itself (a new operator
    /// version, a changed default, `--server-image-repository`), not from this spec, is rolled
    /// out: `Immediate`, `NextWindow` (the next maintenance window) or `Manual` (annotation
    /// `orchestrator.dev/operator-change`, or `kubectl orc approve`). Default: `NextWindow` when
    /// `windows` are set, else `Immediate`. Until then it is `status.pendingOperatorChange`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator_changes: Option<OperatorChanges>,
}

/// When an operator-originated change of the pod template is rolled out.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum OperatorChanges {
    /// At once (the roll still waits for `--max-concurrent-rolls`, paused and the approval).
    Immediate,
    /// Once a maintenance window is open (at once without windows).
    NextWindow,
    /// Once a person applies it: annotation `orchestrator.dev/operator-change` set to
    /// `status.pendingOperatorChange.templateHash`.
    Manual,
}

/// The annotation that applies a pending operator change of a cluster whose
/// `maintenance.operatorChanges` is `Manual`: its value is the change's `templateHash`.
pub const OPERATOR_CHANGE_ANNOTATION: &str = "orchestrator.dev/operator-change";

/// How a new release is tried on a few servers before the rest of the roll.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CanarySpec {
    /// Servers replaced first, then judged (at least 1, fewer than the cluster's servers).
    #[serde(default = "default_canary_servers")]
    #[schemars(range(min = 1, max = 100))]
    pub servers: i32,

    /// How long the canary runs before it can pass (Go duration, e.g. `10m`). A canary that
    /// fails conclusively is rolled back before it ends.
    #[serde(default = "default_bake_time")]
    #[schemars(length(max = 32), regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    pub bake_time: String,

    /// Jobs the canary must have finished for any verdict on its failures; with fewer by the
    /// end of the bake, the roll waits (`CanaryInconclusive`), it never passes on no evidence.
    #[serde(default = "default_canary_min_jobs")]
    #[schemars(range(min = 1, max = 1000000))]
    pub min_jobs: i64,

    /// Percentage points by which the canary's job failure ratio may exceed the other
    /// servers' over the same time.
    #[serde(default = "default_failure_increase")]
    #[schemars(range(min = 0, max = 100))]
    pub max_failure_increase_percent: i32,

    /// How many times the other servers' median job run time the canary's may be (run
    /// times under a second always pass).
    #[serde(default = "default_slowdown_factor")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_slowdown_factor: i32,
}

fn default_canary_servers() -> i32 {
    1
}

fn default_bake_time() -> String {
    "5m".into()
}

fn default_canary_min_jobs() -> i64 {
    20
}

fn default_failure_increase() -> i32 {
    10
}

fn default_slowdown_factor() -> i32 {
    3
}

impl Default for MaintenanceSpec {
    fn default() -> Self {
        Self {
            paused: false,
            approval: Approval::default(),
            drain_timeout: default_timeout(),
            on_drain_timeout: DrainTimeoutPolicy::default(),
            ready_timeout: default_timeout(),
            restart_requested_at: None,
            windows: Vec::new(),
            canary: None,
            operator_changes: None,
        }
    }
}

fn default_timeout() -> String {
    "10m".into()
}

/// Who lets a disruptive change start.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Approval {
    /// The operator starts it as soon as the other gates allow.
    #[default]
    Automatic,
    /// A person approves each generation first (annotation `orchestrator.dev/approve`).
    Manual,
}

/// The annotation that approves a generation of a cluster whose `maintenance.approval` is
/// `Manual`: its value is the approved `metadata.generation`.
pub const APPROVE_ANNOTATION: &str = "orchestrator.dev/approve";

/// The annotation that lets the roll of a cluster whose `maintenance.approval` is `Manual` go
/// on past its canary once the canary passed: its value is the promoted `metadata.generation`
/// (`kubectl orc approve` sets it when the canary passed).
pub const PROMOTE_ANNOTATION: &str = "orchestrator.dev/promote";

/// The annotation on a server's pod that asks for its replacement (`kubectl orc drain`): the
/// roll drains it through the database, evicts it and waits for its replacement, under the
/// same gates and one-at-a-time rules as any step. Its value is when it was asked.
pub const REPLACE_ANNOTATION: &str = "orchestrator.dev/replace-requested-at";

/// What happens when a server does not finish draining in time.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DrainTimeoutPolicy {
    /// Keep the server running and block maintenance until a person decides.
    #[default]
    Halt,
    /// Continue: the server is stopped and its unfinished jobs are handed back to the others.
    Proceed,
}

/// A recurring time window, in UTC, in which disruptive maintenance steps may run.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("duration(self.duration) >= duration('1m') && duration(self.duration) <= duration('168h')").message("a maintenance window's duration must be between 1m and 168h"))]
pub struct MaintenanceWindow {
    /// Days of the week the window opens on. Empty means every day.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 7))]
    pub days: Vec<Weekday>,

    /// Opening time of day in UTC, `HH:MM`.
    #[schemars(regex(pattern = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"))]
    pub start: String,

    /// How long the window stays open (Go duration, e.g. `2h`).
    #[schemars(length(max = 32), regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    pub duration: String,
}

/// Day of the week.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Weekday {
    Mon,
    Tue,
    Wed,
    Thu,
    Fri,
    Sat,
    Sun,
}

/// How upgrades that change the database schema are handled.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct UpgradeSpec {
    /// Policy when the new version needs a schema migration.
    #[serde(default)]
    pub schema_change: SchemaChangePolicy,
}

/// Policy for a version change that needs a database schema migration.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SchemaChangePolicy {
    /// Do not upgrade; report `MaintenanceBlocked` with both schema versions.
    #[default]
    Refuse,
    /// Drain and stop every server, migrate the schema, then start the new version.
    Recreate,
}

/// Pod settings applied to every server.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.env.all(e, !(e.name in ['SERVER_ID', 'POD_IP', 'SERVER_VERSION', 'POD_NAMESPACE', 'DATABASE_HOST', 'DATABASE_PORT', 'DATABASE_NAME', 'DATABASE_SSLMODE', 'DATABASE_CHANNEL_BINDING', 'DATABASE_USER', 'DATABASE_PASSWORD', 'DATABASE_CA', 'HTTP_PORT', 'METRICS_PORT', 'DRAIN_TIMEOUT_SECONDS']))").message("template.env may not set SERVER_ID, POD_IP, SERVER_VERSION, POD_NAMESPACE, HTTP_PORT, METRICS_PORT, DRAIN_TIMEOUT_SECONDS or DATABASE_*: the operator sets them from the spec"))]
#[x_kube(validation = Rule::new(concat!("!has(self.labels) || self.labels.all(k, k.matches('", qualified_name!(), "'))")).message("template.labels keys must be qualified names: an optional DNS prefix and /, then at most 63 letters, digits, -, _ and ., alphanumeric at both ends"))]
#[x_kube(validation = Rule::new(concat!("!has(self.labels) || self.labels.all(k, self.labels[k].matches('", label_value!(), "'))")).message("template.labels values must be at most 63 letters, digits, -, _ and ., alphanumeric at both ends"))]
#[x_kube(validation = Rule::new("!has(self.labels) || !self.labels.exists(k, k in ['app.kubernetes.io/name', 'app.kubernetes.io/instance', 'app.kubernetes.io/managed-by', 'controller-revision-hash', 'statefulset.kubernetes.io/pod-name', 'apps.kubernetes.io/pod-index'] || k.startsWith('orchestrator.dev/'))").message("template.labels may not set app.kubernetes.io/name, app.kubernetes.io/instance, app.kubernetes.io/managed-by, the StatefulSet controller's pod labels or orchestrator.dev/ keys: the operator and the StatefulSet controller own them"))]
#[x_kube(validation = Rule::new(concat!("!has(self.annotations) || self.annotations.all(k, k.lowerAscii().matches('", qualified_name!(), "') && !k.startsWith('orchestrator.dev/'))")).message("template.annotations keys must be qualified names (an optional DNS prefix and /, then at most 63 letters, digits, -, _ and .), and orchestrator.dev/ keys are the operator's"))]
#[x_kube(validation = Rule::new(concat!("!has(self.nodeSelector) || self.nodeSelector.all(k, k.matches('", qualified_name!(), "') && self.nodeSelector[k].matches('", label_value!(), "'))")).message("template.nodeSelector must hold node label keys (qualified names) and label values (at most 63 letters, digits, -, _ and .)"))]
#[x_kube(validation = Rule::new("!has(self.resources) || ((!has(self.resources.limits) || self.resources.limits.all(k, isQuantity(string(self.resources.limits[k])))) && (!has(self.resources.requests) || self.resources.requests.all(k, isQuantity(string(self.resources.requests[k])))))").message("template.resources: every request and limit must be a quantity, for example 500m, 2, 256Mi or 1Gi"))]
#[x_kube(validation = Rule::new("!has(self.resources) || !has(self.resources.requests) || !has(self.resources.limits) || self.resources.requests.all(k, !(k in self.resources.limits) || !isQuantity(string(self.resources.requests[k])) || !isQuantity(string(self.resources.limits[k])) || quantity(string(self.resources.requests[k])).compareTo(quantity(string(self.resources.limits[k]))) <= 0)").message("template.resources: a request may not exceed the limit of the same resource"))]
#[x_kube(validation = Rule::new("self.env.all(e, e.name.matches('^[ -<>-~]+$'))").message("template.env names must be printable ASCII characters other than ="))]
#[x_kube(validation = Rule::new("self.env.all(e, !(has(e.value) && e.value != '' && has(e.valueFrom)))").message("template.env: an entry sets value or valueFrom, not both"))]
#[x_kube(validation = Rule::new("!has(self.tolerations) || self.tolerations.all(t, (!has(t.operator) || t.operator in ['', 'Exists', 'Equal']) && (!has(t.effect) || t.effect in ['', 'NoSchedule', 'PreferNoSchedule', 'NoExecute']))").message("template.tolerations: operator must be Exists or Equal, and effect NoSchedule, PreferNoSchedule, NoExecute or empty (every effect)"))]
#[x_kube(validation = Rule::new(concat!("!has(self.tolerations) || self.tolerations.all(t, !has(t.key) || t.key == '' || t.key.matches('", qualified_name!(), "'))")).message("template.tolerations: a key must be a qualified name, as taint keys are"))]
#[x_kube(validation = Rule::new("!has(self.tolerations) || self.tolerations.all(t, (has(t.key) && t.key != '') || (has(t.operator) && t.operator == 'Exists'))").message("template.tolerations: a toleration without a key must use operator Exists (it then tolerates every taint)"))]
#[x_kube(validation = Rule::new("!has(self.tolerations) || self.tolerations.all(t, !(has(t.operator) && t.operator == 'Exists' && has(t.value) && t.value != ''))").message("template.tolerations: a toleration with operator Exists has no value"))]
#[x_kube(validation = Rule::new("!has(self.tolerations) || self.tolerations.all(t, !has(t.tolerationSeconds) || (has(t.effect) && t.effect == 'NoExecute'))").message("template.tolerations: tolerationSeconds applies only to effect NoExecute"))]
#[x_kube(validation = Rule::new(concat!("!has(self.priorityClassName) || self.priorityClassName == '' || self.priorityClassName.matches('", dns_subdomain!(), "')")).message("template.priorityClassName must be a DNS subdomain (lowercase letters, digits, - and .), as PriorityClass names are"))]
pub struct ServerTemplate {
    /// CPU and memory requests and limits of the server container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "resources_schema")]
    pub resources: Option<ResourceRequirements>,

    /// Extra environment variables of the server container (names unique).
    #[serde(default)]
    #[schemars(schema_with = "env_schema")]
    pub env: Vec<EnvVar>,

    /// Node labels a server pod must match.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "label_map_schema")]
    pub node_selector: BTreeMap<String, String>,

    /// Tolerations of the server pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "tolerations_schema")]
    pub tolerations: Vec<Toleration>,

    /// Affinity rules of the server pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,

    /// How the server pods spread across the cluster. Unset: across zones
    /// (`topology.kubernetes.io/zone`, maxSkew 1, ScheduleAnyway, so a cluster without zones or
    /// with a cordoned zone still schedules every server). An empty list: no spread at all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxItems" = 8))]
    pub topology_spread_constraints: Option<Vec<TopologySpreadConstraint>>,

    /// Extra annotations of the server pods (`orchestrator.dev/` keys are the operator's).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64))]
    pub annotations: BTreeMap<String, String>,

    /// Extra labels of the server pods. The labels that select them
    /// (`app.kubernetes.io/name`, `app.kubernetes.io/instance`), `app.kubernetes.io/managed-by`,
    /// the StatefulSet controller's and `orchestrator.dev/` keys are refused.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "label_map_schema")]
    pub labels: BTreeMap<String, String>,

    /// Priority class of the server pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub priority_class_name: Option<String>,
}

/// `T`'s schema with `bounds` set: each a path of properties (`[]` for list items, `{}` for map
/// values), a keyword and its value. The API server estimates the cost of a CEL rule from the
/// longest strings, lists and maps it may see, so every one a rule reads is bounded.
fn bounded<T: JsonSchema>(
    generator: &mut schemars::SchemaGenerator,
    bounds: &[(&[&str], &str, serde_json::Value)],
) -> schemars::Schema {
    let mut schema = serde_json::Value::from(generator.subschema_for::<T>());
    for (path, keyword, value) in bounds {
        let mut at = &mut schema;
        for step in *path {
            at = match *step {
                "[]" => &mut at["items"],
                "{}" => &mut at["additionalProperties"],
                property => &mut at["properties"][property],
            };
        }
        at[*keyword] = value.clone();
    }
    schemars::Schema::try_from(schema).expect("a schema with keywords added is a schema")
}

/// `template.resources`: at most 16 requests and limits, each a short quantity.
fn resources_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    bounded::<Option<ResourceRequirements>>(
        generator,
        &[
            (&["limits"], "maxProperties", 16.into()),
            (&["requests"], "maxProperties", 16.into()),
            (&["limits", "{}"], "maxLength", 64.into()),
            (&["requests", "{}"], "maxLength", 64.into()),
        ],
    )
}

/// `template.env`: a list keyed by name (a repeated name is refused, and server-side apply
/// merges entries by name), at most 64 entries with names of at most 256 characters.
fn env_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    bounded::<Vec<EnvVar>>(
        generator,
        &[
            (&[], "maxItems", 64.into()),
            (&[], "x-kubernetes-list-type", "map".into()),
            (&[], "x-kubernetes-list-map-keys", serde_json::json!(["name"])),
            (&["[]", "name"], "maxLength", 256.into()),
        ],
    )
}

/// `template.tolerations`: at most 32, keys as long as a qualified name can be.
fn tolerations_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    bounded::<Vec<Toleration>>(
        generator,
        &[(&[], "maxItems", 32.into()), (&["[]", "key"], "maxLength", 317.into())],
    )
}

/// A map of labels (`template.labels`, `template.nodeSelector`): at most 64, values of at most
/// 63 characters.
fn label_map_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    bounded::<BTreeMap<String, String>>(
        generator,
        &[(&[], "maxProperties", 64.into()), (&["{}"], "maxLength", 63.into())],
    )
}

/// Observed state of an `OrchestratorCluster`.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OrchestratorClusterStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// One-word summary of the cluster's state.
    #[serde(default)]
    pub phase: Phase,

    /// Server pods that exist.
    #[serde(default)]
    pub replicas: i32,

    /// Servers that have joined: pod ready (and, once the database is watched, active there).
    #[serde(default)]
    pub ready_replicas: i32,

    /// Servers the cluster is sized for: `spec.replicas`, or the autoscaler's count when
    /// `capacity.autoscale` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_replicas: Option<i32>,

    /// Queue-depth autoscaling, when `capacity.autoscale` is set: the signal, the count wanted
    /// and what limits it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscale: Option<AutoscaleStatus>,

    /// Label selector of the server pods, for the scale subresource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,

    /// Version every server runs, once they all run the same one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_version: Option<String>,

    /// Version the cluster is moving to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_version: Option<String>,

    /// Health of the shared database as the operator sees it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<DatabaseStatus>,

    /// Every server, from both the pod and the database view.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<ServerStatus>,

    /// The maintenance step in progress, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance: Option<MaintenanceStatus>,

    /// What the operator will do about the current spec, as its planners see it: made when the
    /// spec changes (or its strategy, reason or gates do), so a GitOps user can read it before
    /// anything moves (with `maintenance.approval: Manual`, before approving it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<ChangePlan>,

    /// How long recent maintenance took: what the plan's estimates rest on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<MaintenanceHistory>,

    /// The canary of the version change under way or last made (`maintenance.canary`): the
    /// release tried, the bake, the evidence read from the database and the verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryStatus>,

    /// A change of the pod template that comes from the operator, not from the spec, held by
    /// `maintenance.operatorChanges`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_operator_change: Option<PendingOperatorChange>,

    /// Standard conditions: Ready, Progressing, Degraded, DatabaseReady, MaintenanceBlocked,
    /// CapacityBlocked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// One-word summary of the cluster's state.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Phase {
    /// Nothing has joined yet.
    #[default]
    Pending,
    /// Every wanted server has joined.
    Ready,
    /// Servers are being added or removed.
    Scaling,
    /// A rolling maintenance is in progress.
    Maintaining,
    /// A change is wanted but a precondition stops it; see the conditions.
    Blocked,
    /// Fewer servers are healthy than wanted.
    Degraded,
}

/// Health of the shared database.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseStatus {
    /// The operator could connect and log in.
    pub reachable: bool,
    /// Schema version read from the database.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_version: Option<i32>,
}

/// One server, as seen by Kubernetes and by the database.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServerStatus {
    /// Server id: the pod name, which is also its row key in the database.
    pub name: String,
    /// The pod exists.
    #[serde(default)]
    pub pod_exists: bool,
    /// The pod is ready.
    #[serde(default)]
    pub ready: bool,
    /// StatefulSet revision of the pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// Container restarts of the pod.
    #[serde(default)]
    pub restarts: i32,
    /// Version the server reports in the database.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// State in the database: joining, active, draining or stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// When the server last beat, by the database clock; shown only once its heartbeat is late
    /// (older than the 10 s that keeps a server joined), so the status does not change with
    /// every beat. Heartbeat ages and running jobs are metrics
    /// (`orchestrator_operator_oldest_heartbeat_seconds`, `orchestrator_operator_running_jobs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heartbeat_time: Option<Time>,
    /// The server has joined: pod ready and row active with a fresh heartbeat.
    #[serde(default)]
    pub joined: bool,
    /// The Node its pod runs on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// That Node's zone (`topology.kubernetes.io/zone`), when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// Why the server is down when neither the operator nor a crash took it down: its pod was
    /// evicted (a `kubectl drain` of its Node, a taint, a preemption). Set while its pod
    /// terminates; the operator starts no step of its own meanwhile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disruption: Option<String>,
}

/// What the autoscaler saw and decided. Written when the recommendation, the count or a
/// limit changes (the live figures are the `orchestrator_operator_claimable_jobs` and
/// `orchestrator_operator_busy_ratio` metrics), so the status does not change with every job.
/// The readings of the stabilization windows are kept in the operator's memory; a restarted
/// operator takes a whole window of new ones before it changes the count.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AutoscaleStatus {
    /// Servers the autoscaler wants now; servers are added (or drained) towards it.
    pub desired_replicas: i32,
    /// Servers the work asks for over the stabilization windows (every reading of the
    /// scale-up window asks for at least this many more, or every reading of the scale-down
    /// window for at most this many fewer; else the desired count), within the floor and
    /// `maxReplicas`. Absent while the database cannot be read: the count is then kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recommended_replicas: Option<i32>,
    /// The floor in force: `minReplicas`, or the `minReplicas` of an open schedule.
    pub floor: i32,
    /// The figures the recommendation was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<AutoscaleSignal>,
    /// What keeps the cluster from the recommendation, if anything: `AtMaxReplicas`,
    /// `Stabilizing`, `DisruptionInProgress`, `SignalUnknown`, or the reason a scale-up is
    /// blocked (`CapacityBlocked`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limited_by: Option<String>,
    /// What the limit is, for a person.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The last change of the desired count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_decision: Option<AutoscaleDecision>,
}

/// The autoscaler's signal, read from the shared database.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AutoscaleSignal {
    /// Jobs a server could claim: queued, or running under an expired lease.
    pub claimable_jobs: i64,
    /// Jobs running under a live lease.
    pub running_jobs: i64,
    /// Servers of other clusters (or outside Kubernetes) taking work from the same database;
    /// their share of the work is not this cluster's.
    #[serde(default)]
    pub other_servers: i64,
    /// The target in force: jobs one server should carry.
    pub jobs_per_server: i32,
    /// When the figures were read.
    pub observed_at: Time,
}

/// A change of the autoscaler's desired count.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AutoscaleDecision {
    /// When it was decided.
    pub time: Time,
    /// The desired count before.
    pub from: i32,
    /// The desired count after.
    pub to: i32,
    /// Why: `AutoscaledUp`, `AutoscaledDown` (the work), `ScheduleFloor` (a schedule opened
    /// and raised the floor), `AutoscaleBounds` (minReplicas or maxReplicas changed).
    pub reason: String,
    /// The figures and arithmetic behind it, for a person.
    pub message: String,
}

/// The plan of a spec change: what changes, how, in which order, and what it waits for.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ChangePlan {
    /// The `metadata.generation` this plan is for (the one to approve).
    pub generation: i64,
    /// What differs between what runs and what the spec asks, one line each (`version 2.0.0 ->
    /// 2.1.0`, `servers 3 -> 5`, `pod template`, `restart requested`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<String>,
    /// How the change is carried out.
    pub strategy: PlanStrategy,
    /// Why this strategy: `SchemaCompatible`, `SchemaCheck` (the new version's check decides),
    /// `SchemaChangeRefused`, `SchemaCheckFailed`, `SchemaMigration` (or `DrainTimeout`,
    /// `SchemaMigrationFailed` when a Recreate halted), `TemplateChange`, `RestartRequested`,
    /// `ReplaceRequested`, `Scaling`, or `PreconditionFailed:<reason>`.
    pub reason: String,
    /// The steps in the order the planners would take them now (at most 10 listed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<PlanStep>,
    /// Steps beyond those listed.
    #[serde(default)]
    pub more_steps: i32,
    /// What the first disruptive step waits for (`Paused`, `AwaitingApproval`,
    /// `OutsideWindow: ...`), in that order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gates: Vec<String>,
    /// How long the plan should take and how long no server serves, from recent maintenance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimate: Option<PlanEstimate>,
}

/// The expected duration and downtime of a plan, from the durations in `status.history`.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PlanEstimate {
    /// Seconds the plan's steps should take once under way (the gates' waits not counted):
    /// for a roll, its replacements times the median of the recent steps; for a Recreate, its
    /// downtime. Absent while nothing has been timed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_seconds: Option<i64>,
    /// Seconds during which no server serves: 0 for a roll or a scale; for a Recreate, at
    /// least the last migration's duration (absent while none has been timed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downtime_seconds: Option<i64>,
    /// What the figures rest on, for a person.
    pub basis: String,
}

/// Durations of recent maintenance, kept in the status so a restarted operator still has them.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct MaintenanceHistory {
    /// Seconds each of the last roll steps took, from its drain to its replacement joined,
    /// oldest first (at most 5).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub step_seconds: Vec<i64>,
    /// Seconds the last `schema migrate` Job ran, from its start to its completion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration_seconds: Option<i64>,
}

/// A change of the servers' pod template that the operator would make on its own.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PendingOperatorChange {
    /// When the operator first saw it.
    pub since: Time,
    /// A hash of the pod template it would write: what `Manual` approves.
    pub template_hash: String,
    /// What would change, as paths of the pod template (with the old and new image).
    pub changes: Vec<String>,
    /// What it waits for, for a person.
    pub waiting_for: String,
}

/// A canary: the first servers of a roll to a new release, judged before the others.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CanaryStatus {
    /// Where the canary stands.
    pub phase: CanaryPhase,
    /// The version tried.
    pub version: String,
    /// The image of the version tried.
    pub image: String,
    /// The version the other servers run: what a failed canary goes back to.
    pub from_version: String,
    /// The image of that version.
    pub from_image: String,
    /// The canary servers (those that run the version tried), once there are enough.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<String>,
    /// When every canary server had joined: the bake and the evidence count from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bake_started_at: Option<Time>,
    /// When the verdict (`Passed` or `Failed`) was reached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_at: Option<Time>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shortfall: Option<CanaryShortfall>,
    /// The jobs the canary servers finished since the bake started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_jobs: Option<JobOutcomes>,
    /// The jobs the other servers finished over the same time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub other_jobs: Option<JobOutcomes>,
    /// The evidence and what it means, for a person.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl CanaryStatus {
    /// Whether this is the canary of `release`.
    pub(crate) fn is_of(&self, release: &crate::release::Release) -> bool {
        self.version == release.version && self.image == release.image
    }
}

/// Where a canary stands.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CanaryPhase {
    /// The canary servers are being replaced with the new release.
    #[default]
    Replacing,
    /// Every canary server joined; it runs for `bakeTime` while the evidence is read.
    Baking,
    /// The bake is over but the canary finished fewer than `minJobs` jobs: the roll waits.
    Inconclusive,
    /// It did as well as the other servers: the roll goes on.
    Passed,
    /// It did worse, or did not join: the canary servers are being replaced with the previous
    /// release, and the roll halts (`CanaryFailed`) until `spec.version` (or the image) changes.
    Failed,
    /// A failed canary's servers run the previous release again.
    RolledBack,
    /// The version change recreates every server after a schema migration: there is no canary,
    /// and going back would need the database restored from before the migration.
    NotApplicable,
}

/// Why a canary failed.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CanaryShortfall {
    /// Its job failure ratio exceeds the other servers' by more than
    /// `maxFailureIncreasePercent`.
    FailureRatio,
    /// Its jobs' median run time is over `maxSlowdownFactor` times the other servers'.
    SlowRuns,
    /// A canary server stopped being joined during the bake.
    LeftTheCluster,
    /// A canary server did not join within `readyTimeout`.
    NeverJoined,
}

/// Jobs some servers finished over a time, by outcome.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct JobOutcomes {
    /// Jobs that succeeded.
    pub succeeded: i64,
    /// Jobs that failed.
    pub failed: i64,
    /// Median milliseconds from a job's claim to its end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_p50_ms: Option<i64>,
}

impl From<&orchestrator_contract::Outcomes> for JobOutcomes {
    fn from(o: &orchestrator_contract::Outcomes) -> Self {
        Self {
            succeeded: o.succeeded,
            failed: o.failed,
            run_p50_ms: o.run_p50_ms,
        }
    }
}

impl std::fmt::Display for JobOutcomes {
    /// `3 of 40 jobs failed, median run 210 ms`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} of {} jobs failed", self.failed, self.succeeded + self.failed)?;
        match self.run_p50_ms {
            Some(ms) => write!(f, ", median run {ms} ms"),
            None => Ok(()),
        }
    }
}

/// How a spec change is carried out.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PlanStrategy {
    /// Nothing differs.
    #[default]
    NothingToDo,
    /// Servers are added or removed, none replaced.
    Scaling,
    /// Servers are replaced one at a time, each drained first: no downtime.
    Rolling,
    /// Every server is drained and stopped, the schema migrated, then the new version starts:
    /// downtime.
    Recreate,
    /// The new version's schema check runs; it decides between Rolling, Recreate and Refused.
    Pending,
    /// The change cannot be carried out as the spec stands; `reason` says why.
    Refused,
}

/// One step of a plan.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PlanStep {
    /// The server (absent for a step of the whole cluster, such as a migration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// What happens to it.
    pub action: PlanAction,
}

/// What a step does.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PlanAction {
    /// A new server is added and waited for until it joined.
    Add,
    /// The server is drained through the database, then removed.
    Remove,
    /// The server is drained, evicted and replaced by one on the new template, which must join.
    #[default]
    Replace,
    /// The canary servers, replaced first, run for `maintenance.canary.bakeTime` and are
    /// judged before any other server is replaced.
    Bake,
    /// The server is drained and stopped (Recreate).
    Stop,
    /// The schema is migrated while no server runs (Recreate).
    Migrate,
    /// The servers start on the new version (Recreate).
    Start,
}

/// The maintenance step in progress.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MaintenanceStatus {
    /// What started the maintenance: VersionChange, TemplateChange, RestartRequested or
    /// ReplaceRequested.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Progress as `n/m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// Server being maintained.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// Stage of the step: Draining, Evicting or WaitingReady.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    /// When the current stage of the step started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// When the step started (its first stage).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_started_at: Option<Time>,
    /// Uid of the pod being replaced; its replacement has the same name and another uid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    /// Why maintenance waits, if it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocked_reason: Option<String>,
    /// When the roll's first step started; kept until no server is outdated. A roll with this
    /// set holds one of the operator's `--max-concurrent-rolls` slots, between its steps too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roll_started_at: Option<Time>,
}

/// The watched resource: an object that does not deserialize is kept (with its metadata) so
/// that it gets a Warning Event instead of breaking the watch.
pub type Watched = kube::core::DeserializeGuard<OrchestratorCluster>;

impl OrchestratorClusterStatus {
    /// Whether this status records a roll under way (its first step started, servers still
    /// outdated; or a step recorded, as an operator before `rollStartedAt` stored it): such a
    /// roll holds a slot of `--max-concurrent-rolls` until it ends.
    pub fn roll_under_way(&self) -> bool {
        self.maintenance
            .as_ref()
            .is_some_and(|m| m.roll_started_at.is_some() || m.server.is_some())
    }
}

/// A spec value the CRD schema accepted but the operator cannot use.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
#[error("{field}: {message}")]
pub struct SpecError {
    /// Path of the offending field.
    pub field: &'static str,
    /// What is wrong, for a person.
    pub message: String,
}

/// Parses a Go-style duration (`30s`, `10m`, `1h30m`, `250ms`).
pub fn parse_duration(field: &'static str, text: &str) -> Result<Duration, SpecError> {
    let invalid = || SpecError {
        field,
        message: format!("{text:?} is not a duration like 30s, 10m or 1h30m"),
    };
    if text.is_empty() {
        return Err(invalid());
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(invalid)?;
        if digits == 0 {
            return Err(invalid());
        }
        let value: u64 = rest[..digits].parse().map_err(|_| invalid())?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (Duration::from_millis(1), 2)
        } else if rest.starts_with('s') {
            (Duration::from_secs(1), 1)
        } else if rest.starts_with('m') {
            (Duration::from_secs(60), 1)
        } else if rest.starts_with('h') {
            (Duration::from_secs(3600), 1)
        } else {
            return Err(invalid());
        };
        let part = unit
            .checked_mul(u32::try_from(value).map_err(|_| invalid())?)
            .ok_or_else(invalid)?;
        total = total.checked_add(part).ok_or_else(invalid)?;
        rest = &rest[len..];
    }
    Ok(total)
}

impl MaintenanceSpec {
    /// `drainTimeout` as a duration.
    pub fn drain_timeout(&self) -> Result<Duration, SpecError> {
        parse_duration("spec.maintenance.drainTimeout", &self.drain_timeout)
    }

    /// `readyTimeout` as a duration.
    pub fn ready_timeout(&self) -> Result<Duration, SpecError> {
        parse_duration("spec.maintenance.readyTimeout", &self.ready_timeout)
    }
}

/// `namespace/name` of a cluster (or of an object that would not parse as one), for logs, the
/// back-off and the preflight cache.
pub(crate) fn object_key(obj: &impl kube::Resource) -> String {
    format!(
        "{}/{}",
        obj.meta().namespace.clone().unwrap_or_default(),
        obj.meta().name.clone().unwrap_or_default()
    )
}

/// Longest `metadata.name` of a cluster: the StatefulSet's `controller-revision-hash` label is
/// `<name>-<hash>` (a hash of up to 10 characters) and must fit a label value's 63.
pub const MAX_NAME_LENGTH: i64 = 52;

/// The CRD: the derived one, with `metadata.name` limited to what the names derived from it
/// allow (a CRD schema may restrict only the name of the metadata).
pub fn crd() -> CustomResourceDefinition {
    let mut crd = <OrchestratorCluster as kube::CustomResourceExt>::crd();
    for version in &mut crd.spec.versions {
        let Some(schema) = version.schema.as_mut().and_then(|s| s.open_api_v3_schema.as_mut()) else {
            continue;
        };
        let name = JSONSchemaProps {
            type_: Some("string".into()),
            max_length: Some(MAX_NAME_LENGTH),
            ..JSONSchemaProps::default()
        };
        schema.properties.get_or_insert_default().insert(
            "metadata".into(),
            JSONSchemaProps {
                type_: Some("object".into()),
                properties: Some(BTreeMap::from([("name".to_string(), name)])),
                ..JSONSchemaProps::default()
            },
        );
    }
    crd
}

/// The CRD as the YAML document checked in under `crds/`.
pub fn crd_yaml() -> String {
    let crd = crd();
    let yaml = serde_yaml::to_string(&crd).expect("the CRD serializes");
    format!("# Generated by `cargo run --bin crdgen`; do not edit.\n{yaml}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_durations() {
        let parse = |s| parse_duration("f", s);
        assert_eq!(parse("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("1m30s"), Ok(Duration::from_secs(90)));
        for bad in ["", "10", "m", "10x", "1.5h", "-1s", "10 m", "99999999999h"] {
            let err = parse(bad).unwrap_err();
            assert!(err.message.contains("is not a duration"), "{bad}: {err}");
        }
    }

    #[test]
    fn reserved_env_names_match_the_cel_rule() {
        let schema = serde_json::to_string(&crd()).unwrap();
        for name in RESERVED_ENV_NAMES {
            assert!(
                schema.contains(&format!("'{name}'")),
                "{name} missing from the CEL rule"
            );
        }
    }
}
