//! The schema gate of a version change, a pure planner (no I/O).
//!
//! The StatefulSet keeps running the current release until the new image's `schema check` Job
//! says the database needs no migration; only then does its template take the new release and
//! the rolling maintenance replace the servers one by one. A migration is never raced by
//! servers: `upgrade.schemaChange: Refuse` blocks with both versions in the message, `Recreate`
//! drains every server, scales to zero, runs the `schema migrate` Job and only then starts the
//! new release. Every stage is derived from what the cluster shows (the StatefulSet's template,
//! the Jobs named after the release, the servers' rows), so a restarted operator resumes it. Does not need a client.

use super::drain::{self, DrainPolicy};
use super::servers::PodView;
use crate::crd::{SchemaChangePolicy, ServerStatus};
use crate::release::{EXIT_MIGRATION_NEEDED, JobOutcome, Release, SchemaJob};
use crate::vocabulary::{Hold, Reason, UpgradeStage};

/// What the gate looks at.
#[derive(Clone, Debug)]
pub(crate) struct UpgradeInput<'a> {
    /// The release the StatefulSet's template runs (`None`: no StatefulSet yet).
    pub running: Option<&'a Release>,
    /// The release the spec asks for.
    pub wanted: &'a Release,
    /// A server pod runs the wanted release already: it was let through before (a rollback in
    /// the middle of a roll, a hand-edited template), so it needs no new check.
    pub admitted: bool,
    /// Outcome of the wanted release's check Job, if it exists.
    pub check: Option<&'a JobOutcome>,
    /// Outcome of the wanted release's migrate Job, if it exists.
    pub migrate: Option<&'a JobOutcome>,
    /// `upgrade.schemaChange`.
    pub policy: SchemaChangePolicy,
    /// Whether the database preflight passes.
    pub database_ready: bool,
    /// Whether a rolling maintenance step is in progress.
    pub step_in_progress: bool,
    /// The current generation waits for its approval (`maintenance.approval: Manual`): the
    /// release it brings stays out of the pod template while a step is in progress, or that
    /// step's replacement would run it unapproved.
    pub unapproved: bool,
    /// A `schema migrate` Job of this cluster runs (for this release or an abandoned one).
    pub migration_running: bool,
    /// The StatefulSet asks for no pod and has none.
    pub statefulset_stopped: bool,
    /// A `schema migrate` Job of this cluster succeeded: with the StatefulSet stopped, the
    /// running release may no longer fit the schema and must not start again.
    pub migrated: bool,
    /// The maintenance gates (`paused`, an approval, outside `windows`): stopping every server
    /// waits for them like any disruptive step.
    pub gate: Option<Hold>,
    /// The last status recorded the `StoppingServers` or `Migrating` stage: the stopping began
    /// (past the gates) and goes on. A drain of another origin (a roll step's, a scale-down's)
    /// is not this stopping, and lets nothing past the gates.
    pub stopping_started: bool,
    /// Every server, from both views.
    pub servers: &'a [ServerStatus],
    /// Seconds since each draining server's drain was requested.
    pub drain_ages: &'a [(String, f64)],
    /// `maintenance.drainTimeout` and `onDrainTimeout`.
    pub drain_policy: DrainPolicy,
}

/// The gate's decision.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct UpgradeDecision {
    /// The StatefulSet may run the wanted release (otherwise it keeps the running one).
    pub release_ready: bool,
    /// A schema Job to create.
    pub run_job: Option<SchemaJob>,
    /// `Recreate` is under way: capacity changes and new roll steps wait, drains stay.
    pub recreate: bool,
    /// Servers to ask for a friendly shutdown.
    pub drain: Vec<String>,
    /// Scale the StatefulSet to zero.
    pub stop_all: bool,
    /// The stage shown in `status.maintenance.stage`.
    pub stage: Option<UpgradeStage>,
    /// Why it waits for something that resolves by itself.
    pub waiting: Option<Hold>,
    /// Why it halted (a fix or a new spec resumes it).
    pub blocked: Option<Hold>,
}

/// Whether a server pod already runs `wanted`: it was let through before, so it needs no check.
pub(crate) fn admitted(wanted: &Release, pods: &[PodView]) -> bool {
    pods.iter().any(|p| p.release.as_ref() == Some(wanted))
}

/// Decides the next move of a version change.
pub(crate) fn decide(input: &UpgradeInput) -> UpgradeDecision {
    let mut out = UpgradeDecision::default();
    if input.migration_running {
        // Whatever the spec says now (a new version, a revert, another policy): no server of
        // any version starts while the schema is being changed.
        out.recreate = true;
        out.stop_all = true;
        out.stage = Some(UpgradeStage::Migrating);
        out.waiting = Some(Hold::new(
            Reason::SchemaMigration,
            "a schema migration runs; no server starts until it ends",
        ));
        return out;
    }
    let running = match input.running {
        Some(running) if running != input.wanted && !input.admitted => running,
        _ => {
            out.release_ready = true;
            return out;
        }
    };
    let (from, to) = (&running.version, &input.wanted.version);
    out.stage = Some(UpgradeStage::SchemaCheck);
    if input.migrated && input.statefulset_stopped {
        // Stopped for a migration that is done: the old release stays stopped while the new
        // one is checked against the migrated schema.
        out.recreate = true;
        out.stop_all = true;
    }
    match input.check {
        None if input.database_ready => {
            out.run_job = Some(SchemaJob::Check);
            out.waiting = Some(Hold::new(
                Reason::SchemaCheck,
                format!("checking whether version {to} needs a schema migration"),
            ));
        }
        None => {
            if input.stopping_started {
                // The check's outcome is unknown only while the database is: the stopping
                // that began stays recorded as such.
                out.stage = Some(UpgradeStage::StoppingServers);
            }
            out.waiting = Some(Hold::new(
                Reason::DatabaseNotReady,
                format!("the schema check of version {to} waits for the database"),
            ));
        }
        Some(JobOutcome::Running) => {
            out.waiting = Some(Hold::new(
                Reason::SchemaCheck,
                format!("checking whether version {to} needs a schema migration"),
            ));
        }
        Some(JobOutcome::Succeeded) if input.unapproved && input.step_in_progress && !out.recreate => {
            out.stage = None;
            out.waiting = Some(Hold::new(
                Reason::StepInProgress,
                format!(
                    "version {to} passed its schema check and waits for its approval; it enters the pod template once the maintenance step in progress ends"
                ),
            ));
        }
        Some(JobOutcome::Succeeded) => {
            out = UpgradeDecision {
                release_ready: true,
                ..UpgradeDecision::default()
            };
        }
        Some(JobOutcome::Failed {
            exit_code: Some(EXIT_MIGRATION_NEEDED),
            message,
        }) => match input.policy {
            SchemaChangePolicy::Refuse => {
                out.blocked = Some(Hold::new(
                    Reason::SchemaChangeRefused,
                    format!(
                        "version {to} needs a schema migration while version {from} runs ({message}); upgrade.schemaChange is Refuse: \
                         set it to Recreate to stop every server, migrate and start {to}, or set version back to {from}"
                    ),
                ));
            }
            SchemaChangePolicy::Recreate => recreate(input, from, to, &mut out),
        },
        Some(JobOutcome::Failed { exit_code, message }) => {
            out.blocked = Some(Hold::new(
                Reason::SchemaCheckFailed,
                format!(
                    "the schema check of version {to} failed ({}): {message}; version {from} keeps running. Fix the cause and delete the check Job to run it again, or change the version",
                    exit_description(*exit_code)
                ),
            ));
        }
    }
    out
}

fn exit_description(exit_code: Option<i32>) -> String {
    exit_code.map_or_else(|| "no exit code".into(), |code| format!("exit code {code}"))
}

/// `Recreate`: drain every server, stop them all, migrate, then release the new version.
fn recreate(input: &UpgradeInput, from: &str, to: &str, out: &mut UpgradeDecision) {
    if input.migrate == Some(&JobOutcome::Succeeded) {
        out.stage = None;
        out.release_ready = true;
        return;
    }
    out.recreate = true;
    if input.stopping_started {
        // Begun: recorded as such even while it waits (a database blip), so that it never
        // has to pass the gates a second time.
        out.stage = Some(UpgradeStage::StoppingServers);
    }
    if input.step_in_progress {
        out.waiting = Some(Hold::new(
            Reason::StepInProgress,
            format!("version {to} needs a schema migration; finishing the maintenance step in progress first"),
        ));
        return;
    }
    if !input.database_ready {
        // Without the servers' rows nothing says who still drains: stop nobody meanwhile.
        out.waiting = Some(Hold::new(
            Reason::DatabaseNotReady,
            format!("the schema migration for version {to} waits for the database"),
        ));
        return;
    }
    let with_pods: Vec<&ServerStatus> = input.servers.iter().filter(|s| s.pod_exists).collect();
    // The gates hold the start of a Recreate, even of a cluster without servers: its
    // migration changes the database for good.
    if !input.stopping_started
        && let Some(gate) = &input.gate
    {
        out.waiting = Some(Hold::new(
            gate.reason,
            format!(
                "version {to} needs every server stopped for a schema migration; waiting: {}",
                gate.message
            ),
        ));
        return;
    }
    if !with_pods.is_empty() || !input.statefulset_stopped {
        out.stage = Some(UpgradeStage::StoppingServers);
        let progress = drain::progress(with_pods, input.drain_ages, input.drain_policy);
        out.blocked = progress.halt(
            input.drain_policy,
            &format!(" for the schema migration of version {to}"),
        );
        out.drain = progress.request;
        let still_draining = progress.still_draining;
        if still_draining.is_empty() {
            out.stop_all = true;
            out.waiting = Some(Hold::new(
                Reason::StoppingServers,
                format!(
                    "every server of version {from} drained; stopping them for the schema migration of version {to}"
                ),
            ));
        } else if out.blocked.is_none() {
            out.waiting = Some(Hold::new(
                Reason::StoppingServers,
                format!(
                    "version {to} needs a schema migration: draining {} before stopping every server",
                    still_draining.join(", ")
                ),
            ));
        }
        return;
    }
    out.stage = Some(UpgradeStage::Migrating);
    out.stop_all = true;
    match input.migrate {
        None => {
            out.run_job = Some(SchemaJob::Migrate);
            out.waiting = Some(Hold::new(
                Reason::SchemaMigration,
                format!("migrating the schema for version {to}"),
            ));
        }
        Some(JobOutcome::Failed { exit_code, message }) => {
            out.blocked = Some(Hold::new(
                Reason::SchemaMigrationFailed,
                format!(
                    "the schema migration for version {to} failed ({}): {message}; no server runs. Fix the cause and delete the migrate Job to run it again, or set version back to {from}",
                    exit_description(*exit_code)
                ),
            ));
        }
        Some(_) => {
            out.waiting = Some(Hold::new(
                Reason::SchemaMigration,
                format!("migrating the schema for version {to}"),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::DrainTimeoutPolicy;
    use proptest::prelude::*;
    use std::time::Duration;

    fn release(version: &str) -> Release {
        Release {
            version: version.into(),
            image: format!("orchestrator-server:{version}"),
        }
    }

    fn server(n: i32, state: Option<&str>, pod_exists: bool) -> ServerStatus {
        ServerStatus {
            name: format!("prod-{n}"),
            pod_exists,
            state: state.map(String::from),
            ..ServerStatus::default()
        }
    }

    struct Case {
        running: Release,
        wanted: Release,
        check: Option<JobOutcome>,
        migrate: Option<JobOutcome>,
        policy: SchemaChangePolicy,
        step_in_progress: bool,
        unapproved: bool,
        migration_running: bool,
        migrated: bool,
        gate: Option<Hold>,
        stopping_started: bool,
        servers: Vec<ServerStatus>,
        drain_ages: Vec<(String, f64)>,
        on_drain_timeout: DrainTimeoutPolicy,
    }

    impl Case {
        fn new() -> Self {
            Case {
                running: release("1.0.0"),
                wanted: release("2.0.0"),
                check: None,
                migrate: None,
                policy: SchemaChangePolicy::Recreate,
                step_in_progress: false,
                unapproved: false,
                migration_running: false,
                migrated: false,
                gate: None,
                stopping_started: false,
                servers: vec![server(0, Some("active"), true), server(1, Some("active"), true)],
                drain_ages: vec![],
                on_drain_timeout: DrainTimeoutPolicy::Halt,
            }
        }

        fn decide(&self) -> UpgradeDecision {
            decide(&input_of(self))
        }
    }

    fn migration_needed() -> Option<JobOutcome> {
        Some(JobOutcome::Failed {
            exit_code: Some(EXIT_MIGRATION_NEEDED),
            message: "migration needed: database schema 1, version 2.0.0 needs 2".into(),
        })
    }

    #[test]
    fn no_version_change_or_a_new_cluster_needs_no_check() {
        let mut case = Case::new();
        case.wanted = case.running.clone();
        assert_eq!(
            case.decide(),
            UpgradeDecision {
                release_ready: true,
                ..UpgradeDecision::default()
            }
        );
        let fresh = decide(&UpgradeInput {
            running: None,
            ..input_of(&Case::new())
        });
        assert!(fresh.release_ready && fresh.run_job.is_none());
    }

    #[test]
    fn a_release_a_server_already_runs_needs_no_check() {
        let case = Case::new();
        let d = decide(&UpgradeInput {
            admitted: true,
            ..input_of(&case)
        });
        assert!(d.release_ready && d.run_job.is_none() && d.stage.is_none());
    }

    #[test]
    fn the_new_release_waits_for_its_check() {
        let mut case = Case::new();
        let d = case.decide();
        assert_eq!(
            (d.release_ready, d.run_job, d.stage),
            (false, Some(SchemaJob::Check), Some(UpgradeStage::SchemaCheck))
        );
        case.check = Some(JobOutcome::Running);
        let d = case.decide();
        assert_eq!(
            (d.release_ready, d.run_job, d.waiting.unwrap().reason),
            (false, None, Reason::SchemaCheck)
        );
        case.check = Some(JobOutcome::Succeeded);
        let d = case.decide();
        assert!(d.release_ready && d.stage.is_none() && d.waiting.is_none() && !d.recreate);
        // Unapproved, it waits for the step in progress: that step's replacement keeps the
        // running release.
        case.unapproved = true;
        case.step_in_progress = true;
        let d = case.decide();
        assert!(!d.release_ready && d.stage.is_none(), "{d:?}");
        assert_eq!(d.waiting.unwrap().reason, Reason::StepInProgress);
        case.step_in_progress = false;
        assert!(
            case.decide().release_ready,
            "no step: the template takes it, the roll waits"
        );
    }

    #[test]
    fn refuse_blocks_with_both_versions_and_disrupts_nothing() {
        let mut case = Case::new();
        case.policy = SchemaChangePolicy::Refuse;
        case.check = migration_needed();
        let d = case.decide();
        let Hold { reason, message } = d.blocked.clone().unwrap();
        assert_eq!(reason, Reason::SchemaChangeRefused);
        assert!(
            message.contains("1.0.0") && message.contains("2.0.0") && message.contains("schema 1"),
            "{message}"
        );
        assert!(!d.release_ready && d.drain.is_empty() && !d.stop_all && !d.recreate);
    }

    #[test]
    fn a_failed_check_blocks_with_its_log_tail() {
        let mut case = Case::new();
        case.check = Some(JobOutcome::Failed {
            exit_code: Some(1),
            message: "error: connection refused".into(),
        });
        let Hold { reason, message } = case.decide().blocked.unwrap();
        assert_eq!(reason, Reason::SchemaCheckFailed);
        assert!(
            message.contains("exit code 1") && message.contains("connection refused"),
            "{message}"
        );
    }

    #[test]
    fn recreate_drains_all_then_stops_all_then_migrates_then_releases() {
        let mut case = Case::new();
        case.check = migration_needed();
        case.step_in_progress = true;
        let d = case.decide();
        assert_eq!(
            (d.recreate, d.drain.len(), d.waiting.unwrap().reason),
            (true, 0, Reason::StepInProgress)
        );
        case.step_in_progress = false;
        let d = case.decide();
        assert_eq!(d.drain, vec!["prod-0".to_string(), "prod-1".to_string()]);
        assert!(!d.stop_all && d.recreate && d.stage == Some(UpgradeStage::StoppingServers));
        case.drain_ages = vec![("prod-0".into(), 1.0), ("prod-1".into(), 1.0)];
        case.servers[0].state = Some("stopped".into());
        let d = case.decide();
        assert!(d.drain.is_empty() && !d.stop_all, "prod-1 still drains");
        case.servers[1].state = Some("stopped".into());
        assert!(case.decide().stop_all);
        case.servers.iter_mut().for_each(|s| s.pod_exists = false);
        let d = case.decide();
        assert_eq!(
            (d.stop_all, d.run_job, d.stage),
            (true, Some(SchemaJob::Migrate), Some(UpgradeStage::Migrating))
        );
        case.migrate = Some(JobOutcome::Failed {
            exit_code: Some(12),
            message: "servers active".into(),
        });
        let d = case.decide();
        assert_eq!(d.blocked.unwrap().reason, Reason::SchemaMigrationFailed);
        assert!(d.stop_all, "a failed migration starts no server of either version");
        case.migrate = Some(JobOutcome::Succeeded);
        let d = case.decide();
        assert!(d.release_ready && !d.stop_all && !d.recreate && d.stage.is_none());
    }

    #[test]
    fn the_gates_hold_the_migration_of_a_cluster_without_servers_too() {
        let mut case = Case::new();
        case.check = migration_needed();
        case.servers.iter_mut().for_each(|s| s.pod_exists = false);
        case.gate = Some(Hold::new(Reason::AwaitingApproval, "approve generation 3"));
        let d = case.decide();
        assert_eq!(d.run_job, None, "no migration before the approval");
        assert_eq!(d.waiting.unwrap().reason, Reason::AwaitingApproval);
        case.stopping_started = true;
        assert_eq!(
            case.decide().run_job,
            Some(SchemaJob::Migrate),
            "once begun, it goes on"
        );
    }

    #[test]
    fn recreate_waits_for_the_database_the_gates_and_an_empty_statefulset() {
        let mut case = Case::new();
        case.check = migration_needed();
        case.gate = Some(Hold::new(Reason::Paused, "maintenance.paused is set"));
        let d = case.decide();
        assert_eq!(
            (d.drain.len(), d.stop_all, d.waiting.unwrap().reason),
            (0, false, Reason::Paused)
        );
        case.drain_ages = vec![("prod-0".into(), 1.0)];
        assert!(
            case.decide().drain.is_empty(),
            "a drain of another origin lets nothing past the gate"
        );
        case.stopping_started = true;
        assert_eq!(
            case.decide().drain,
            vec!["prod-1".to_string()],
            "once started, the drain goes on"
        );
        let down = decide(&UpgradeInput {
            database_ready: false,
            ..input_of(&case)
        });
        assert_eq!(
            down.stage,
            Some(UpgradeStage::StoppingServers),
            "a blip keeps the stopping recorded as begun"
        );
        assert!(
            !down.stop_all && down.drain.is_empty(),
            "no row, no proof of a finished drain"
        );
        assert_eq!(down.waiting.unwrap().reason, Reason::DatabaseNotReady);
        case.servers.iter_mut().for_each(|s| s.pod_exists = false);
        let not_yet_empty = decide(&UpgradeInput {
            statefulset_stopped: false,
            ..input_of(&case)
        });
        assert!(
            not_yet_empty.stop_all && not_yet_empty.run_job.is_none(),
            "migrate only once the StatefulSet is empty"
        );
    }

    #[test]
    fn after_the_migration_the_old_release_stays_stopped_until_the_new_one_is_checked() {
        let mut case = Case::new();
        case.servers.iter_mut().for_each(|s| s.pod_exists = false);
        case.migrated = true;
        let d = case.decide();
        assert_eq!(
            (d.stop_all, d.run_job, d.release_ready),
            (true, Some(SchemaJob::Check), false)
        );
        case.check = Some(JobOutcome::Succeeded);
        let d = case.decide();
        assert!(d.release_ready && !d.stop_all && !d.recreate);
    }

    #[test]
    fn a_running_migration_keeps_every_server_stopped_whatever_the_spec_says() {
        let mut case = Case::new();
        case.migration_running = true;
        for wanted in ["2.0.0", "1.0.0"] {
            case.wanted = release(wanted);
            let d = case.decide();
            assert!(d.stop_all && d.recreate && !d.release_ready, "{wanted}: {d:?}");
        }
    }

    fn input_of(case: &Case) -> UpgradeInput<'_> {
        UpgradeInput {
            running: Some(&case.running),
            wanted: &case.wanted,
            admitted: false,
            check: case.check.as_ref(),
            migrate: case.migrate.as_ref(),
            policy: case.policy,
            database_ready: true,
            step_in_progress: case.step_in_progress,
            unapproved: case.unapproved,
            migration_running: case.migration_running,
            statefulset_stopped: case.servers.iter().all(|s| !s.pod_exists),
            migrated: case.migrated,
            gate: case.gate.clone(),
            stopping_started: case.stopping_started,
            servers: &case.servers,
            drain_ages: &case.drain_ages,
            drain_policy: DrainPolicy {
                timeout: Duration::from_secs(60),
                on_timeout: case.on_drain_timeout,
            },
        }
    }

    #[test]
    fn recreate_drain_timeout_follows_the_policy() {
        let mut case = Case::new();
        case.check = migration_needed();
        case.servers[1].state = Some("stopped".into());
        case.drain_ages = vec![("prod-0".into(), 61.0), ("prod-1".into(), 5.0)];
        let d = case.decide();
        assert_eq!(d.blocked.unwrap().reason, Reason::DrainTimeout);
        assert!(!d.stop_all);
        case.on_drain_timeout = DrainTimeoutPolicy::Proceed;
        let d = case.decide();
        assert!(d.blocked.is_none() && d.stop_all);
    }

    fn any_outcome() -> impl Strategy<Value = Option<JobOutcome>> {
        prop_oneof![
            Just(None),
            Just(Some(JobOutcome::Running)),
            Just(Some(JobOutcome::Succeeded)),
            prop_oneof![
                Just(None),
                Just(Some(1)),
                Just(Some(10)),
                Just(Some(11)),
                Just(Some(12))
            ]
            .prop_map(|exit_code| Some(JobOutcome::Failed {
                exit_code,
                message: "log tail".into()
            })),
        ]
    }

    fn any_server() -> impl Strategy<Value = (Option<&'static str>, bool, Option<f64>)> {
        (
            prop_oneof![
                Just(None),
                Just(Some("active")),
                Just(Some("draining")),
                Just(Some("stopped"))
            ],
            any::<bool>(),
            prop_oneof![Just(None), (0.0..120.0f64).prop_map(Some)],
        )
    }

    proptest! {
        #[test]
        fn the_gate_never_lets_a_release_race_a_migration(
            check in any_outcome(),
            migrate in any_outcome(),
            recreate in any::<bool>(),
            proceed in any::<bool>(),
            database_ready in any::<bool>(),
            step_in_progress in any::<bool>(),
            unapproved in any::<bool>(),
            migration_running in any::<bool>(),
            statefulset_stopped in any::<bool>(),
            migrated in any::<bool>(),
            gated in any::<bool>(),
            started in any::<bool>(),
            servers in proptest::collection::vec(any_server(), 0..5),
        ) {
            let (running, wanted) = (release("1.0.0"), release("2.0.0"));
            let statuses: Vec<ServerStatus> = servers
                .iter()
                .enumerate()
                .map(|(n, (state, pod, _))| server(n as i32, *state, *pod))
                .collect();
            let drain_ages: Vec<(String, f64)> = servers
                .iter()
                .enumerate()
                .filter_map(|(n, (_, _, age))| age.map(|a| (format!("prod-{n}"), a)))
                .collect();
            let policy = if recreate { SchemaChangePolicy::Recreate } else { SchemaChangePolicy::Refuse };
            let d = decide(&UpgradeInput {
                running: Some(&running),
                wanted: &wanted,
                admitted: false,
                check: check.as_ref(),
                migrate: migrate.as_ref(),
                policy,
                database_ready,
                step_in_progress,
                unapproved,
                migration_running,
                statefulset_stopped,
                migrated,
                gate: gated.then(|| Hold::new(Reason::Paused, "paused")),
                stopping_started: started,
                servers: &statuses,
                drain_ages: &drain_ages,
                drain_policy: DrainPolicy {
                    timeout: Duration::from_secs(60),
                    on_timeout: if proceed { DrainTimeoutPolicy::Proceed } else { DrainTimeoutPolicy::Halt },
                },
            });
            let migration_needed = matches!(&check, Some(JobOutcome::Failed { exit_code: Some(10), .. }));
            // No server of any version runs beside a migration.
            if migration_running {
                prop_assert!(d.stop_all && !d.release_ready);
            }
            // The new release runs only after a clean check, or after the migration.
            if d.release_ready {
                prop_assert!(
                    check == Some(JobOutcome::Succeeded)
                        || (migration_needed && recreate && migrate == Some(JobOutcome::Succeeded))
                );
            }
            // An unapproved release never reaches a step's replacement through the template
            // (a Recreate's migration, approved before it started, releases it after).
            if unapproved && step_in_progress && !(migrated && statefulset_stopped) && !migration_needed {
                prop_assert!(!d.release_ready);
            }
            // Nothing is disrupted unless Recreate was chosen for a needed migration.
            // After a migration, the stopped old release stays stopped until the new one passes.
            if migrated && statefulset_stopped && check != Some(JobOutcome::Succeeded) {
                prop_assert!(d.stop_all);
            }
            if !(migration_running || migration_needed && recreate || migrated && statefulset_stopped) {
                prop_assert!(d.drain.is_empty() && !d.stop_all && !d.recreate);
            }
            // Servers are stopped only once none of them still drains, and the migration
            // only runs with every server gone.
            let held_for_migration = migration_running || migrated && statefulset_stopped;
            if d.stop_all && !d.release_ready && !held_for_migration {
                prop_assert!(!step_in_progress && database_ready);
                for (n, (state, pod, age)) in servers.iter().enumerate() {
                    let finished = !pod || state.is_none() || *state == Some("stopped");
                    let timed_out = proceed && age.is_some_and(|a| a >= 60.0);
                    prop_assert!(finished || timed_out, "prod-{} still runs", n);
                }
            }
            if d.run_job == Some(SchemaJob::Migrate) {
                prop_assert!(servers.iter().all(|(_, pod, _)| !pod) && database_ready && statefulset_stopped);
            }
            // The gates hold back the first drain.
            if gated && !started {
                prop_assert!(d.drain.is_empty());
            }
            // Every decision that is not "go" says why.
            if !d.release_ready {
                prop_assert!(d.waiting.is_some() || d.blocked.is_some());
            }
        }
    }
}
