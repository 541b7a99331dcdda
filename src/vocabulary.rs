//! The operator's words, in one place: condition types, reasons (of conditions and Events),
//! the stages of a step and what triggers a roll. Each is an enum whose variant name is the
//! CamelCase string Kubernetes shows, with `as_str` and `FromStr`; `Hold` pairs a reason with
//! its message wherever something waits or halts.

use std::fmt;
use std::str::FromStr;

/// A string that is not a word of the enum it was parsed as.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} {value:?}")]
pub struct UnknownWord {
    /// The enum parsed into.
    pub kind: &'static str,
    /// The string that did not match.
    pub value: String,
}

/// Declares an enum whose variants are written as their own names.
macro_rules! words {
    ($(#[$meta:meta])* $vis:vis enum $name:ident { $($(#[$vmeta:meta])* $variant:ident,)+ }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        $vis enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// Every word, in declaration order.
            $vis const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The string Kubernetes shows.
            $vis fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => stringify!($variant),)+
                }
            }
        }

        impl FromStr for $name {
            type Err = UnknownWord;

            fn from_str(value: &str) -> Result<Self, Self::Err> {
                $name::ALL.iter().copied().find(|w| w.as_str() == value).ok_or_else(|| UnknownWord {
                    kind: stringify!($name),
                    value: value.to_string(),
                })
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

words! {
    /// Condition types reported on an `OrchestratorCluster`.
    pub enum ConditionType {
        /// Every wanted server has joined and the spec has been acted on.
        Ready,
        /// The operator is changing the cluster (adding, removing or replacing servers).
        Progressing,
        /// Servers are unhealthy, or the spec cannot be acted on.
        Degraded,
        /// The operator can reach and use the process database.
        DatabaseReady,
        /// A maintenance step or a version change is wanted but must wait; the message says why.
        MaintenanceBlocked,
        /// Adding or removing servers is wanted but a precondition fails; the message says which.
        CapacityBlocked,
    }
}

words! {
    /// Reasons of conditions and Events (CamelCase, as Kubernetes expects). A condition's reason
    /// that turns bad is also the reason of the Warning Event that says so.
    pub enum Reason {
        // Ready, Progressing, Degraded.
        /// Every wanted server has joined.
        AllServersJoined,
        /// Some wanted servers have not joined yet.
        ServersNotReady,
        /// Server pods are being added or removed (also: a roll waits for that to finish).
        Scaling,
        /// Nothing is changing.
        Stable,
        /// The spec passed the CRD schema but the operator cannot use it.
        InvalidSpec,
        /// The API server refused an owned object the spec asks for (a value it does not
        /// accept, an admission policy, a missing permission); the message names the object.
        ChildRejected,
        /// No problem to report.
        AsExpected,
        /// Some servers are unhealthy; the message names them.
        ServerProblems,
        /// Nothing blocks (`CapacityBlocked` and `MaintenanceBlocked` false).
        NotBlocked,

        // DatabaseReady.
        /// Connected, logged in, privileges and schema readable.
        Connected,
        /// Connected, but the settings leave the connection open to whoever answers at the
        /// database's address: no TLS, a certificate not verified, or a login not bound to the
        /// TLS channel; the message says which and what to set.
        ConnectedUnverified,
        /// The credentials Secret does not exist.
        SecretMissing,
        /// The credentials Secret exists but does not carry the opt-in label that lets the
        /// operator read it.
        SecretNotOptedIn,
        /// The Secret lacks a key the spec names.
        SecretKeyMissing,
        /// The host name does not resolve.
        HostUnresolvable,
        /// Nothing accepts connections at host:port.
        Unreachable,
        /// The login was refused.
        LoginFailed,
        /// The database name does not exist.
        DatabaseMissing,
        /// The user lacks privileges the contract needs.
        InsufficientPrivileges,
        /// The contract's tables are not there yet.
        SchemaMissing,
        /// The TLS handshake or the CA failed (per `sslMode`).
        TlsFailed,
        /// Channel binding is required and the database asked for a login that does not bind
        /// the TLS channel (cleartext, MD5 or SCRAM without channel binding).
        ChannelBindingRefused,
        /// Another database error.
        QueryFailed,

        // CapacityBlocked and MaintenanceBlocked.
        /// The database preflight fails.
        DatabaseNotReady,
        /// The wanted count is above `capacity.maxReplicas`.
        AboveMaxReplicas,
        /// Servers exist but none has joined.
        NoServerJoined,
        /// An existing server's row is stale while its pod is ready.
        ServerUnhealthy,
        /// A server did not finish draining within `drainTimeout` and `onDrainTimeout` is Halt.
        DrainTimeout,
        /// `maintenance.paused` is set.
        Paused,
        /// Maintenance windows are set and none is open.
        OutsideWindow,
        /// `maintenance.approval` is `Manual` and the current generation is not approved (the
        /// annotation `orchestrator.dev/approve` names another one, or none).
        AwaitingApproval,
        /// Another server is not joined; replacing one now would take two down.
        ServerNotJoined,
        /// The canary servers run the new release; the roll goes on once they pass.
        CanaryBaking,
        /// The canary's bake is over but it finished too few jobs to judge; the roll waits.
        CanaryInconclusive,
        /// The canary did worse than the other servers: it is rolled back, the roll halts.
        CanaryFailed,
        /// The canary did as well as the other servers: the roll goes on.
        CanaryPassed,
        /// A failed canary's servers run the previous release again.
        CanaryRolledBack,
        /// The operator would change the servers' pod template on its own (a new operator
        /// version, a changed default); `maintenance.operatorChanges` holds it.
        OperatorChangePending,
        /// A held operator change reaches the pod template; the roll replaces the servers.
        OperatorChangeApplied,
        /// The StatefulSet is being written (a drift corrected, a new template): which servers
        /// are outdated is known once the written one is observed.
        StatefulSetChanging,
        /// As many clusters are rolling as `--max-concurrent-rolls` allows: this roll's first
        /// step waits for one of them to finish.
        RollLimit,
        /// A replacement did not join within `readyTimeout`.
        ReadyTimeout,
        /// An eviction has been refused for a while (a PodDisruptionBudget that allows no
        /// disruption now); the step keeps trying.
        EvictionRefused,
        /// The evicted pod is still there well after its grace period ended (a finalizer, or a
        /// node that does not confirm the process stopped); the step waits for it to be gone.
        PodTerminating,
        /// The new image's `schema check` Job runs (also its Event: the Job was started).
        SchemaCheck,
        /// A migration is needed and `upgrade.schemaChange` is `Refuse`.
        SchemaChangeRefused,
        /// The schema check failed for another reason than "migration needed".
        SchemaCheckFailed,
        /// `Recreate` waits for the maintenance step in progress before stopping every server.
        StepInProgress,
        /// `Recreate` drains and stops every server (also its Event).
        StoppingServers,
        /// A schema migration runs; no server starts meanwhile (also its Event: the Job was started).
        SchemaMigration,
        /// The `schema migrate` Job failed.
        SchemaMigrationFailed,

        // status.autoscale: what limits the desired count, and why it changed (also Events).
        /// The database's queue cannot be read: the autoscaler keeps its count (unknown is not
        /// idle).
        SignalUnknown,
        /// Every reading asks for a change, but not yet for its whole stabilization window.
        Stabilizing,
        /// The signal asks for more servers than `capacity.autoscale.maxReplicas`.
        AtMaxReplicas,
        /// A roll step, a schema change, a drain or a server out of service is in progress: the
        /// autoscaler removes no server meanwhile.
        DisruptionInProgress,
        /// The work in the database asked for more servers.
        AutoscaledUp,
        /// The work in the database asked for fewer servers (each removal drains first).
        AutoscaledDown,
        /// An autoscale schedule opened: its floor applies (when it closes, the work decides
        /// again, through the scale-down window).
        ScheduleFloor,
        /// `minReplicas` or `maxReplicas` changed: the count was brought within them.
        AutoscaleBounds,
        /// A HorizontalPodAutoscaler (or KEDA's) scales the cluster through `/scale` while
        /// `capacity.autoscale` is set: the autoscaler stops following the signal until one of
        /// them is removed.
        AutoscalerConflict,

        // Events of steps.
        /// Servers are being added.
        ScalingUp,
        /// Servers are being removed.
        ScalingDown,
        /// A friendly shutdown was requested through the database.
        Draining,
        /// Rows of gone servers were removed.
        RemovedServerRows,
        /// Rolling maintenance asked a server to drain.
        MaintenanceDraining,
        /// Rolling maintenance evicts a server's pod.
        MaintenanceEvicting,
        /// Rolling maintenance waits for a replacement to join.
        MaintenanceWaitingReady,
        /// A server was replaced and joined.
        MaintenanceStepDone,
        /// A step ended without its server replaced (another server went down mid-drain, a
        /// scale-down removed the server); the note says why.
        MaintenanceStepAbandoned,
        /// `Recreate`: the schema was migrated; the new version starts.
        SchemaMigrated,
        /// Owned objects were created or corrected.
        Applied,

        // Events of failed reconciles.
        /// The object could not be read as an `OrchestratorCluster`.
        Malformed,
        /// The API server refused a request for lack of permission (403).
        ApiForbidden,
        /// The API server rejected a request (409, 422).
        ApiRejected,
        /// The API server could not be reached or failed.
        ApiUnavailable,
        /// A write to the process database failed.
        DatabaseWriteFailed,
        /// An object the operator built could not be serialized.
        SerializationFailed,
        /// A reconcile did not finish within its deadline and was cancelled where it stood;
        /// the next one plans again from what it observes.
        ReconcileTimeout,
    }
}

words! {
    /// Stage of a rolling-maintenance step (`status.maintenance.stage`).
    pub enum RollStage {
        /// Friendly shutdown requested through the database; waiting for `stopped`.
        Draining,
        /// Evicting the pod through the Eviction API (a PDB refusal is a wait).
        Evicting,
        /// Waiting for the replacement to be ready and joined on the new revision.
        WaitingReady,
    }
}

words! {
    /// Stage of a version change before its roll (`status.maintenance.stage`).
    pub enum UpgradeStage {
        /// The new image's `schema check` Job decides.
        SchemaCheck,
        /// `Recreate`: draining and stopping every server.
        StoppingServers,
        /// `Recreate`: the `schema migrate` Job runs while no server does.
        Migrating,
    }
}

words! {
    /// What started a roll (`status.maintenance.reason`), in order of precedence: a roll for
    /// several says the first (a drain asked during a template roll is still a template roll).
    pub enum Trigger {
        /// The pod template changed (version, image, settings, resources).
        TemplateChange,
        /// `maintenance.restartRequestedAt` is after a server started.
        RestartRequested,
        /// A server's pod carries `orchestrator.dev/replace-requested-at` (`kubectl orc drain`).
        ReplaceRequested,
        /// A new version or image waits for its schema check (or a migration) before the roll.
        VersionChange,
    }
}

/// Why something waits or halts: the condition reason and a message for a person.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hold {
    /// The reason.
    pub reason: Reason,
    /// What waits and for what, naming the field or server to look at.
    pub message: String,
}

impl Hold {
    /// A hold for `reason` with `message`.
    pub fn new(reason: Reason, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn camel_case(word: &str) -> bool {
        word.chars().next().is_some_and(|c| c.is_ascii_uppercase()) && word.chars().all(|c| c.is_ascii_alphanumeric())
    }

    #[test]
    fn every_reason_is_unique_and_camel_case() {
        let words: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(words.iter().collect::<BTreeSet<_>>().len(), words.len(), "{words:?}");
        for word in words
            .iter()
            .copied()
            .chain(ConditionType::ALL.iter().map(|c| c.as_str()))
        {
            assert!(camel_case(word), "{word} is not CamelCase");
            // Kubernetes' own rule for condition reasons.
            assert!(word.len() <= 1024);
        }
    }

    #[test]
    fn every_word_parses_back() {
        for reason in Reason::ALL {
            assert_eq!(reason.as_str().parse::<Reason>(), Ok(*reason));
        }
        for stage in RollStage::ALL {
            assert_eq!(stage.as_str().parse::<RollStage>(), Ok(*stage));
        }
        for stage in UpgradeStage::ALL {
            assert_eq!(stage.as_str().parse::<UpgradeStage>(), Ok(*stage));
        }
        for trigger in Trigger::ALL {
            assert_eq!(trigger.as_str().parse::<Trigger>(), Ok(*trigger));
        }
        assert_eq!(
            "Drainin".parse::<RollStage>(),
            Err(UnknownWord {
                kind: "RollStage",
                value: "Drainin".into()
            })
        );
    }
}
