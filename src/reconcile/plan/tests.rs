//! Unit tests of the whole plan: the README's examples in the worlds a reconcile meets.

mod basics {
    use super::super::*;
    use crate::conditions::status::TRUE;
    use crate::crd::{OrchestratorCluster, Phase};
    use crate::database::DatabaseState;
    use crate::error::Error;
    use crate::planners::servers::PodView;
    use crate::reconcile::dry_run;
    use crate::testing::{fixtures, member};
    use crate::validate::BuildSettings;
    use crate::vocabulary::{ConditionType, Reason};
    use k8s_openapi::api::apps::v1::StatefulSetStatus;
    use k8s_openapi::jiff::Timestamp;
    use kube::ResourceExt;

    pub(super) fn now() -> Time {
        Time(Timestamp::from_second(1_800_000_000).unwrap())
    }

    fn ready_db(members: Vec<orchestrator_contract::Member>) -> DatabaseState {
        DatabaseState::Ready {
            schema_version: 2,
            members,
            work: Ok(orchestrator_contract::Work::default()),
        }
    }

    /// The cluster after its objects were applied, with `current` server pods of which the
    /// first `joined` are ready and active in the database.
    pub(super) fn world(cr: &OrchestratorCluster, current: i32, joined: i32) -> Observed {
        let first = dry_run(
            cr,
            &Observed {
                database: ready_db(vec![]),
                ..Observed::default()
            },
            &BuildSettings::default(),
            &now(),
        )
        .unwrap();
        let mut observed = Observed::default();
        for write in first.writes {
            match write.child {
                Child::ConfigMap(o) => observed.configmap = Some(o),
                Child::Service(o) if o.name_any().ends_with("-servers") => observed.headless_service = Some(o),
                Child::Service(o) => observed.client_service = Some(o),
                Child::PodDisruptionBudget(o) => observed.pdb = Some(o),
                Child::StatefulSet(mut o) => {
                    o.spec.as_mut().unwrap().replicas = Some(current);
                    o.metadata.generation = Some(1);
                    o.status = Some(StatefulSetStatus {
                        observed_generation: Some(1),
                        replicas: current,
                        ready_replicas: Some(joined),
                        updated_replicas: Some(current),
                        ..StatefulSetStatus::default()
                    });
                    observed.statefulset = Some(o);
                }
                Child::Job(o) => panic!("a new cluster runs no schema Job, got {}", o.name_any()),
            }
        }
        let name = cr.name_any();
        observed.pods = (0..current)
            .map(|o| PodView {
                name: format!("{name}-{o}"),
                ordinal: o,
                ready: o < joined,
                release: Some(crate::testing::valid(cr).wanted),
                ..PodView::default()
            })
            .collect();
        observed.database = ready_db(
            (0..joined)
                .map(|o| member(&format!("{name}-{o}"), "active", 1.0))
                .collect(),
        );
        observed
    }

    #[test]
    fn fresh_cluster_creates_every_owned_object_and_adds_the_first_server() {
        let cr = fixtures::minimal();
        let observed = Observed {
            database: ready_db(vec![]),
            ..Observed::default()
        };
        let plan = dry_run(&cr, &observed, &BuildSettings::default(), &now()).unwrap();
        let kinds: Vec<_> = plan
            .writes
            .iter()
            .map(|w| (w.child.kind(), w.child.name(), w.creates))
            .collect();
        assert_eq!(
            kinds,
            vec![
                ("ConfigMap", "minimal-config".to_string(), true),
                ("Service", "minimal-servers".to_string(), true),
                ("Service", "minimal".to_string(), true),
                ("PodDisruptionBudget", "minimal".to_string(), true),
                ("StatefulSet", "minimal".to_string(), true),
            ]
        );
        let Child::StatefulSet(sts) = &plan.writes[4].child else {
            panic!()
        };
        assert_eq!(sts.spec.as_ref().unwrap().replicas, Some(1), "one server at a time");
        assert_eq!(plan.status.phase, Phase::Pending);
        assert_eq!(plan.events[0].note, "adding minimal-0 (0 -> 1 of 3 servers)");
        assert_eq!(
            find(&plan.status.conditions, ConditionType::DatabaseReady)
                .unwrap()
                .status,
            TRUE
        );
        assert_eq!(plan.requeue, BUSY_REQUEUE);
    }

    #[test]
    fn a_connection_left_unverified_is_said_in_database_ready() {
        let observed = Observed {
            database: ready_db(vec![]),
            ..Observed::default()
        };
        let database_ready = |cr: &OrchestratorCluster| {
            let plan = dry_run(cr, &observed, &BuildSettings::default(), &now()).unwrap();
            find(&plan.status.conditions, ConditionType::DatabaseReady)
                .unwrap()
                .clone()
        };
        let verified = database_ready(&fixtures::minimal());
        assert_eq!(
            (verified.status.as_str(), verified.reason.as_str()),
            (TRUE, "Connected")
        );

        let mut cr = fixtures::minimal();
        cr.spec.database.ssl_mode = crate::crd::SslMode::Require;
        cr.spec.database.channel_binding = Some(crate::crd::ChannelBinding::Prefer);
        let unverified = database_ready(&cr);
        assert_eq!(
            (unverified.status.as_str(), unverified.reason.as_str()),
            (TRUE, Reason::ConnectedUnverified.as_str())
        );
        for words in [
            "certificate is not verified (sslMode require)",
            "channelBinding prefer",
            "set sslMode verify-full",
        ] {
            assert!(unverified.message.contains(words), "{words}: {}", unverified.message);
        }
    }

    #[test]
    fn database_not_ready_blocks_and_creates_no_server() {
        let cr = fixtures::minimal();
        let message = "secret process-db has no key 'password' (the database password)".to_string();
        let observed = Observed {
            database: DatabaseState::NotReady {
                reason: Reason::SecretKeyMissing,
                message: message.clone(),
            },
            ..Observed::default()
        };
        let plan = dry_run(&cr, &observed, &BuildSettings::default(), &now()).unwrap();
        let Child::StatefulSet(sts) = &plan.writes[4].child else {
            panic!()
        };
        assert_eq!(sts.spec.as_ref().unwrap().replicas, Some(0));
        assert_eq!(plan.status.phase, Phase::Blocked);
        let blocked = find(&plan.status.conditions, ConditionType::CapacityBlocked).unwrap();
        assert_eq!(
            (blocked.status.as_str(), blocked.reason.as_str()),
            ("True", Reason::DatabaseNotReady.as_str())
        );
        assert!(blocked.message.contains(&message));
        let db = find(&plan.status.conditions, ConditionType::DatabaseReady).unwrap();
        assert_eq!(
            (db.status.as_str(), db.reason.as_str()),
            ("False", Reason::SecretKeyMissing.as_str())
        );
        let reasons: Vec<_> = plan.events.iter().map(|e| (e.warning, e.reason)).collect();
        assert_eq!(
            reasons,
            vec![(true, Reason::DatabaseNotReady), (true, Reason::SecretKeyMissing)]
        );
    }

    #[test]
    fn unchanged_cluster_needs_no_writes_and_reports_ready() {
        let mut cr = fixtures::full();
        let observed = world(&cr, 4, 4);
        let first = dry_run(&cr, &observed, &BuildSettings::default(), &now()).unwrap();
        assert_eq!(first.writes, vec![]);
        assert_eq!(first.status.phase, Phase::Ready);
        assert_eq!(first.status.ready_replicas, 4);
        assert_eq!(first.status.servers.len(), 4);
        assert!(
            first
                .status
                .servers
                .iter()
                .all(|s| s.joined && s.state.as_deref() == Some("active"))
        );
        assert_eq!(first.status.current_version.as_deref(), Some("1.0.0"));
        assert_eq!(
            find(&first.status.conditions, ConditionType::Ready).unwrap().status,
            TRUE
        );
        // Nothing polled: the next look is when the heartbeats (1 s old, stale at 10 s) can
        // have gone stale, just after.
        assert_eq!(first.requeue, Duration::from_millis(9_250));
        assert!(first.requeue < IDLE_REQUEUE);
        cr.status = Some(first.status.clone());
        let second = dry_run(&cr, &observed, &BuildSettings::default(), &now()).unwrap();
        assert!(second.events.is_empty(), "{:?}", second.events);
        // The next look finds the same status (no age in it): nothing to write.
        let mut later = observed.clone();
        if let DatabaseState::Ready { members, .. } = &mut later.database {
            for m in members.iter_mut() {
                m.heartbeat_age_seconds = 7.5;
            }
        }
        let third = dry_run(&cr, &later, &BuildSettings::default(), &now()).unwrap();
        assert_eq!(third.status, first.status);
    }

    #[test]
    fn hand_edits_are_reverted_and_only_the_edited_object_is_written() {
        let cr = fixtures::minimal();
        let mut observed = world(&cr, 3, 3);
        observed.pdb = None;
        let pod_spec = observed
            .statefulset
            .as_mut()
            .unwrap()
            .spec
            .as_mut()
            .unwrap()
            .template
            .spec
            .as_mut()
            .unwrap();
        pod_spec.containers[0].image = Some("hand-edited:latest".into());
        let second = dry_run(&cr, &observed, &BuildSettings::default(), &now()).unwrap();
        let writes: Vec<_> = second.writes.iter().map(|w| (w.child.kind(), w.creates)).collect();
        assert_eq!(writes, vec![("PodDisruptionBudget", true), ("StatefulSet", false)]);
    }

    #[test]
    fn a_hand_edited_template_being_reverted_starts_no_step() {
        let cr = fixtures::minimal();
        let mut observed = world(&cr, 3, 3);
        for pod in &mut observed.pods {
            pod.revision = Some("prod-original".into());
        }
        // The hand edit's revision is already the update revision: every pod looks outdated.
        let sts = observed.statefulset.as_mut().unwrap();
        sts.status.as_mut().unwrap().update_revision = Some("prod-edited".into());
        sts.spec.as_mut().unwrap().template.spec.as_mut().unwrap().containers[0].image =
            Some("hand-edited:latest".into());
        let plan = dry_run(&cr, &observed, &BuildSettings::default(), &now()).unwrap();
        assert!(
            plan.writes.iter().any(|w| w.child.kind() == "StatefulSet"),
            "the edit is reverted"
        );
        assert_eq!(
            (plan.drain.clone(), plan.evict.clone()),
            (vec![], None),
            "no server is touched"
        );
        assert!(
            plan.status.maintenance.as_ref().is_none_or(|m| m.server.is_none()),
            "no step stored"
        );
        // The revert is written (a new generation) but the StatefulSet controller has not yet
        // observed it: the update revision is still the hand edit's, and says nothing.
        let sts = observed.statefulset.as_mut().unwrap();
        sts.spec.as_mut().unwrap().template.spec.as_mut().unwrap().containers[0].image = world(&cr, 3, 3)
            .statefulset
            .unwrap()
            .spec
            .unwrap()
            .template
            .spec
            .unwrap()
            .containers[0]
            .image
            .clone();
        let observed_generation = sts.status.as_ref().unwrap().observed_generation;
        sts.metadata.generation = observed_generation.map(|g| g + 1);
        let plan = dry_run(&cr, &observed, &BuildSettings::default(), &now()).unwrap();
        assert_eq!(plan.writes.len(), 0, "the revert is already written");
        assert_eq!(
            (plan.drain.clone(), plan.evict.clone()),
            (vec![], None),
            "no server is touched"
        );
        // Once the reverted StatefulSet is observed (its update revision is the pods' again),
        // nothing is outdated.
        let sts = observed.statefulset.as_mut().unwrap();
        sts.status.as_mut().unwrap().update_revision = Some("prod-original".into());
        sts.status.as_mut().unwrap().observed_generation = sts.metadata.generation;
        let plan = dry_run(&cr, &observed, &BuildSettings::default(), &now()).unwrap();
        assert_eq!((plan.writes.len(), plan.drain.len()), (0, 0));
    }

    #[test]
    fn a_roll_without_a_slot_waits_with_its_reason_and_touches_nothing() {
        let cr = fixtures::minimal();
        let mut observed = world(&cr, 3, 3);
        for pod in &mut observed.pods {
            pod.revision = Some("prod-old".into());
        }
        let sts = observed.statefulset.as_mut().unwrap();
        sts.status.as_mut().unwrap().update_revision = Some("prod-new".into());
        let free = dry_run(&cr, &observed, &BuildSettings::default(), &now()).unwrap();
        assert_eq!(free.drain.len(), 1, "with a slot, the first step starts");
        observed.rolls_full = Some(2);
        let full = dry_run(&cr, &observed, &BuildSettings::default(), &now()).unwrap();
        assert_eq!((full.drain.clone(), full.evict.clone()), (vec![], None));
        assert!(full.status.maintenance.as_ref().is_some_and(|m| m.server.is_none()));
        let blocked = find(&full.status.conditions, ConditionType::MaintenanceBlocked).unwrap();
        assert_eq!((blocked.status.as_str(), blocked.reason.as_str()), (TRUE, "RollLimit"));
        assert!(
            blocked.message.contains("2 clusters are rolling"),
            "{}",
            blocked.message
        );
        // A roll already under way (its step recorded) is never held back.
        let mut rolling = cr.clone();
        rolling.status = Some(free.status.clone());
        let next = dry_run(&rolling, &observed, &BuildSettings::default(), &now()).unwrap();
        assert!(next.status.maintenance.as_ref().is_some_and(|m| m.server.is_some()));
        // Between two steps of that roll (no step recorded, servers still outdated) it keeps
        // its slot: its next step is not held back, and the roll's start is kept.
        let started = free.status.maintenance.as_ref().unwrap().roll_started_at.clone();
        assert!(started.is_some());
        let mut between = rolling.clone();
        let maintenance = between.status.as_mut().unwrap().maintenance.as_mut().unwrap();
        (maintenance.server, maintenance.stage, maintenance.started_at) = (None, None, None);
        let resumed = dry_run(&between, &observed, &BuildSettings::default(), &now()).unwrap();
        assert_eq!(resumed.drain.len(), 1, "{:?}", resumed.status.maintenance);
        assert_eq!(resumed.status.maintenance.unwrap().roll_started_at, started);
        // Once nothing is outdated, the roll and its slot end.
        let mut done = world(&cr, 3, 3);
        done.rolls_full = Some(2);
        let ended = dry_run(&between, &done, &BuildSettings::default(), &now()).unwrap();
        assert!(ended.status.maintenance.is_none() && !ended.status.roll_under_way());
    }

    #[test]
    fn next_server_waits_for_the_previous_to_join() {
        let cr = fixtures::minimal();
        let plan = dry_run(&cr, &world(&cr, 2, 1), &BuildSettings::default(), &now()).unwrap();
        assert_eq!(plan.status.phase, Phase::Scaling);
        assert!(plan.writes.is_empty(), "no new server: {:?}", plan.writes);
        let ready = find(&plan.status.conditions, ConditionType::Ready).unwrap();
        assert_eq!(ready.message, "1 of 3 servers joined");
        let progressing = find(&plan.status.conditions, ConditionType::Progressing).unwrap();
        assert_eq!(
            progressing.message,
            "waiting for minimal-1 to join before adding more servers"
        );
        assert_eq!(plan.status.current_version, None);
    }

    #[test]
    fn the_replacement_of_a_step_gets_its_drain_withdrawn_the_drained_server_keeps_it() {
        // Withdrawn as soon as the step sees its pod replaced (Evicting → WaitingReady in the
        // same reconcile), since the replacement stays stopped until then.
        use crate::crd::MaintenanceStatus;
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
        let mut cr = fixtures::minimal();
        let mut observed = world(&cr, 3, 2);
        // minimal-2 was drained by the roll; its replacement pod runs and waits for the drain to
        // be withdrawn.
        let mut row = member("minimal-2", "stopped", 1.0);
        row.drain_requested_seconds = Some(30.0);
        if let DatabaseState::Ready { members, .. } = &mut observed.database {
            members.push(row);
        }
        let running = Some("the-running-pod".to_string());
        observed.pods.iter_mut().find(|p| p.name == "minimal-2").unwrap().uid = running.clone();
        let gone = Some("the-evicted-pod".to_string());
        for (stage, pod_uid, withdrawn) in [
            ("WaitingReady", None, true),
            ("Draining", running.clone(), false),
            ("Evicting", running, false),
            ("Evicting", gone, true),
        ] {
            cr.status = Some(crate::crd::OrchestratorClusterStatus {
                maintenance: Some(MaintenanceStatus {
                    server: Some("minimal-2".into()),
                    stage: Some(stage.into()),
                    started_at: Some(Time(now().0)),
                    pod_uid,
                    ..MaintenanceStatus::default()
                }),
                ..Default::default()
            });
            let plan = dry_run(&cr, &observed, &BuildSettings::default(), &now()).unwrap();
            assert_eq!(
                plan.undrain.contains(&"minimal-2".to_string()),
                withdrawn,
                "{stage}: {:?} {:?}",
                plan.undrain,
                plan.status.maintenance
            );
        }
    }

    #[test]
    fn a_refused_object_is_said_in_the_ready_condition_and_a_stuck_pod_in_degraded() {
        let mut cr = fixtures::minimal();
        cr.metadata.generation = Some(4);
        let mut observed = world(&cr, 3, 2);
        let rejection = crate::rejections::Rejection {
            generation: Some(4),
            kind: "StatefulSet",
            name: "minimal".into(),
            code: 422,
            message: "spec.template.spec.affinity: Required value".into(),
        };
        observed.rejected = Some(rejection);
        observed.pods[2].stuck = Some("not scheduled: 0/3 nodes are available".into());
        let plan = dry_run(&cr, &observed, &BuildSettings::default(), &now()).unwrap();
        assert_eq!(plan.status.phase, Phase::Blocked);
        assert!(
            plan.events.iter().all(|e| e.warning),
            "no step Event: {:?}",
            plan.events
        );
        let ready = find(&plan.status.conditions, ConditionType::Ready).unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "ChildRejected")
        );
        assert!(
            ready
                .message
                .starts_with("the API server refused StatefulSet minimal (422): spec.template.spec.affinity"),
            "{}",
            ready.message
        );
        let degraded = find(&plan.status.conditions, ConditionType::Degraded).unwrap();
        assert!(
            degraded
                .message
                .contains("minimal-2: not scheduled: 0/3 nodes are available"),
            "{}",
            degraded.message
        );
        // Said the same way on the next look: no write.
        let mut again = cr.clone();
        again.status = Some(plan.status.clone());
        let next = dry_run(&again, &observed, &BuildSettings::default(), &now()).unwrap();
        assert_eq!(next.status, plan.status);
    }

    #[test]
    fn unusable_spec_is_an_error_with_the_field() {
        let mut cr = fixtures::minimal();
        cr.spec.maintenance.drain_timeout = "10 minutes".into();
        let err = dry_run(&cr, &Observed::default(), &BuildSettings::default(), &now()).unwrap_err();
        let Error::InvalidSpec(spec_error) = err else {
            panic!("wrong error {err}")
        };
        assert_eq!(spec_error.field, "spec.maintenance.drainTimeout");
        let status = invalid_spec_status(&cr, &spec_error, &now());
        assert_eq!(status.phase, Phase::Blocked);
        let degraded = find(&status.conditions, ConditionType::Degraded).unwrap();
        assert_eq!(
            (degraded.status.as_str(), degraded.reason.as_str()),
            ("True", Reason::InvalidSpec.as_str())
        );
        assert!(degraded.message.contains("drainTimeout"));
    }
}

mod version_change {
    use super::super::*;
    use crate::conditions::status::TRUE;
    use crate::crd::SchemaChangePolicy;
    use crate::crd::{OrchestratorCluster, Phase};
    use crate::reconcile::dry_run;
    use crate::release::{EXIT_MIGRATION_NEEDED, JobOutcome};
    use crate::resources::statefulset;
    use crate::testing::Cluster;
    use crate::testing::fixtures;
    use crate::validate::BuildSettings;
    use crate::vocabulary::UpgradeStage;
    use crate::vocabulary::{ConditionType, Reason};

    fn settled(cr: &OrchestratorCluster) -> Observed {
        super::basics::world(cr, 3, 3)
    }

    fn statefulset_version(plan: &Plan) -> Option<String> {
        plan.writes.iter().find_map(|w| match &w.child {
            Child::StatefulSet(s) => statefulset::running_release(s).map(|r| r.version),
            _ => None,
        })
    }

    #[test]
    fn a_new_version_waits_for_its_schema_check_before_the_template_changes() {
        let observed = settled(&fixtures::minimal());
        let cr = Cluster::minimal().version("2.0.0").build();
        let settings = BuildSettings::default();
        let first = dry_run(&cr, &observed, &settings, &super::basics::now()).unwrap();
        let kinds: Vec<_> = first.writes.iter().map(|w| (w.child.kind(), w.creates)).collect();
        assert_eq!(
            kinds,
            vec![("Job", true)],
            "only the check Job; the template keeps the old release (and its hashes)"
        );
        assert_eq!(first.status.phase, Phase::Maintaining);
        let maintenance = first.status.maintenance.clone().unwrap();
        assert_eq!(maintenance.stage.as_deref(), Some(UpgradeStage::SchemaCheck.as_str()));

        let mut checked = observed.clone();
        checked.schema_jobs.check = Some(JobOutcome::Succeeded);
        let second = dry_run(&cr, &checked, &settings, &super::basics::now()).unwrap();
        assert_eq!(statefulset_version(&second), Some("2.0.0".into()));
    }

    #[test]
    fn a_refused_schema_change_blocks_and_disrupts_nothing() {
        let mut observed = settled(&fixtures::minimal());
        observed.schema_jobs.check = Some(JobOutcome::Failed {
            exit_code: Some(EXIT_MIGRATION_NEEDED),
            message: "migration needed: database schema 1, version 2.0.0 needs 2".into(),
        });
        let mut cr = Cluster::minimal().version("2.0.0").build();
        let refused = dry_run(&cr, &observed, &BuildSettings::default(), &super::basics::now()).unwrap();
        assert!(refused.writes.is_empty() && refused.drain.is_empty() && refused.evict.is_none());
        assert_eq!(refused.status.phase, Phase::Blocked);
        let blocked = find(&refused.status.conditions, ConditionType::MaintenanceBlocked).unwrap();
        assert_eq!(
            (blocked.status.as_str(), blocked.reason.as_str()),
            (TRUE, Reason::SchemaChangeRefused.as_str())
        );
        assert!(refused.events.iter().any(|e| e.warning && e.note.contains("needs 2")));

        cr.spec.upgrade.schema_change = SchemaChangePolicy::Recreate;
        let recreate = dry_run(&cr, &observed, &BuildSettings::default(), &super::basics::now()).unwrap();
        assert_eq!(recreate.drain.len(), 3, "{:?}", recreate.drain);
        assert!(recreate.undrain.is_empty() && recreate.writes.is_empty());
    }
}

mod autoscaling {
    use super::super::*;
    use super::basics::{now, world};
    use crate::crd::{AutoscaleSpec, MaintenanceStatus, OrchestratorCluster, ScaleDownPolicy, ScaleUpPolicy};
    use crate::database::DatabaseState;
    use crate::reconcile::dry_run;
    use crate::testing::fixtures;
    use crate::validate::BuildSettings;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use orchestrator_contract::Work;

    /// `minimal`, autoscaled from 1 to 4 servers at 4 jobs each, a 60 s scale-down window.
    fn autoscaled() -> OrchestratorCluster {
        let mut cr = fixtures::minimal();
        cr.spec.capacity.autoscale = Some(AutoscaleSpec {
            min_replicas: 1,
            max_replicas: 4,
            jobs_per_server: Some(4),
            scale_up: ScaleUpPolicy::default(),
            scale_down: ScaleDownPolicy {
                stabilization_window: "60s".into(),
                step: 1,
            },
            schedules: Vec::new(),
        });
        cr
    }

    fn with_work(mut observed: Observed, claimable: i64, running: i64) -> Observed {
        if let DatabaseState::Ready { work, members, .. } = &mut observed.database {
            *work = Ok(Work {
                claimable,
                running,
                serving: members.len() as i64,
            });
        }
        observed
    }

    fn later(seconds: i64) -> Time {
        Time(now().0 + k8s_openapi::jiff::SignedDuration::from_secs(seconds))
    }

    #[test]
    fn work_adds_one_server_per_step_and_spec_replicas_is_ignored() {
        let cr = autoscaled();
        assert_eq!(cr.spec.replicas, 3);
        let plan = dry_run(
            &cr,
            &with_work(world(&cr, 2, 2), 30, 8),
            &BuildSettings::default(),
            &now(),
        )
        .unwrap();
        let Some(Child::StatefulSet(sts)) = plan.writes.iter().map(|w| &w.child).find(|c| c.kind() == "StatefulSet")
        else {
            panic!("the StatefulSet grows: {:?}", plan.writes)
        };
        assert_eq!(sts.spec.as_ref().unwrap().replicas, Some(3), "addAtOnce 1");
        assert_eq!(plan.status.desired_replicas, Some(4), "not spec.replicas (3)");
        let autoscale = plan.status.autoscale.as_ref().unwrap();
        assert_eq!(autoscale.limited_by.as_deref(), Some("AtMaxReplicas"));
        let reasons: Vec<_> = plan.events.iter().map(|e| e.reason).collect();
        assert!(
            reasons.contains(&Reason::AutoscaledUp) && reasons.contains(&Reason::ScalingUp),
            "{reasons:?}"
        );
        assert!(plan.requeue <= SIGNAL_PERIOD);
    }

    #[test]
    fn a_steady_signal_writes_the_same_status() {
        let mut cr = autoscaled();
        let first = dry_run(
            &cr,
            &with_work(world(&cr, 2, 2), 4, 4),
            &BuildSettings::default(),
            &now(),
        )
        .unwrap();
        assert_eq!(first.status.desired_replicas, Some(2));
        assert!(first.writes.is_empty(), "{:?}", first.writes);
        cr.status = Some(first.status.clone());
        // Five seconds on, other figures that ask for as many servers: nothing to write.
        let second = dry_run(
            &cr,
            &with_work(world(&cr, 2, 2), 2, 5),
            &BuildSettings::default(),
            &later(5),
        )
        .unwrap();
        assert_eq!(second.status, first.status);
        assert!(second.events.is_empty(), "{:?}", second.events);
    }

    #[test]
    fn no_server_is_removed_during_a_roll_step_even_after_the_window() {
        let mut cr = autoscaled();
        cr.status = Some(crate::crd::OrchestratorClusterStatus {
            maintenance: Some(MaintenanceStatus {
                server: Some("minimal-0".into()),
                stage: Some("Draining".into()),
                started_at: Some(now()),
                step_started_at: Some(now()),
                ..MaintenanceStatus::default()
            }),
            ..Default::default()
        });
        // Idle, looked at every 5 s for two minutes, the operator keeping its readings.
        let mut readings = None;
        let mut look = |cr: &OrchestratorCluster, seconds: i64| {
            let observed = Observed {
                readings: readings.clone(),
                ..with_work(world(&autoscaled(), 3, 3), 0, 0)
            };
            let plan = dry_run(cr, &observed, &BuildSettings::default(), &later(seconds)).unwrap();
            readings = plan.readings.clone();
            plan
        };
        for seconds in (0..=120).step_by(5) {
            let during = look(&cr, seconds);
            assert_eq!(during.status.desired_replicas, Some(3), "at {seconds} s");
            assert!(!during.drain.contains(&"minimal-2".to_string()), "{:?}", during.drain);
            let mut status = during.status.clone();
            status.maintenance = cr.status.as_ref().unwrap().maintenance.clone();
            cr.status = Some(status);
        }
        let autoscale = cr.status.as_ref().unwrap().autoscale.clone().unwrap();
        assert_eq!(
            autoscale.limited_by.as_deref(),
            Some("DisruptionInProgress"),
            "{autoscale:?}"
        );
        // The step done, the window long past: one server, the highest, drains.
        cr.status.as_mut().unwrap().maintenance = None;
        let after = look(&cr, 125);
        assert_eq!(after.status.desired_replicas, Some(2));
        assert_eq!(after.drain, vec!["minimal-2"]);
    }
}

mod change_plan {
    use super::basics::{now, world};
    use crate::crd::{Approval, MaintenanceHistory, PlanAction, PlanStrategy, SchemaChangePolicy};
    use crate::reconcile::dry_run;
    use crate::release::{EXIT_MIGRATION_NEEDED, JobOutcome};
    use crate::testing::{Cluster, fixtures};
    use crate::validate::BuildSettings;

    fn servers(plan: &crate::crd::ChangePlan) -> Vec<(Option<&str>, PlanAction)> {
        plan.steps.iter().map(|s| (s.server.as_deref(), s.action)).collect()
    }

    #[test]
    fn a_settled_cluster_has_nothing_to_do_and_scaling_lists_the_servers_added() {
        let cr = fixtures::minimal();
        let plan = dry_run(&cr, &world(&cr, 3, 3), &BuildSettings::default(), &now()).unwrap();
        let change = plan.status.plan.unwrap();
        assert_eq!((change.strategy, change.steps.len()), (PlanStrategy::NothingToDo, 0));
        let plan = dry_run(&cr, &world(&cr, 1, 1), &BuildSettings::default(), &now()).unwrap();
        let change = plan.status.plan.unwrap();
        assert_eq!(change.strategy, PlanStrategy::Scaling);
        assert_eq!(change.changes, vec!["servers 1 -> 3"]);
        assert_eq!(
            servers(&change),
            vec![
                (Some("minimal-1"), PlanAction::Add),
                (Some("minimal-2"), PlanAction::Add)
            ]
        );
        assert!(change.gates.is_empty(), "adding waits for no person");
    }

    #[test]
    fn a_version_change_is_pending_its_check_then_rolls_in_the_rolls_order_behind_its_gates() {
        let observed = world(&fixtures::minimal(), 3, 3);
        let mut cr = Cluster::minimal().version("2.0.0").build();
        cr.spec.maintenance.approval = Approval::Manual;
        cr.metadata.generation = Some(2);
        let pending = dry_run(&cr, &observed, &BuildSettings::default(), &now()).unwrap();
        let change = pending.status.plan.unwrap();
        assert_eq!(
            (change.strategy, change.reason.as_str()),
            (PlanStrategy::Pending, "SchemaCheck")
        );
        assert_eq!(change.changes, vec!["version 1.0.0 -> 2.0.0"]);
        // All joined and equally busy: highest ordinal first.
        let order: Vec<_> = servers(&change).into_iter().map(|(s, _)| s.unwrap()).collect();
        assert_eq!(order, vec!["minimal-2", "minimal-1", "minimal-0"]);
        assert!(change.gates[0].starts_with("AwaitingApproval: "), "{:?}", change.gates);
        let mut checked = observed.clone();
        checked.schema_jobs.check = Some(JobOutcome::Succeeded);
        let rolling = dry_run(&cr, &checked, &BuildSettings::default(), &now()).unwrap();
        let change = rolling.status.plan.unwrap();
        assert_eq!(
            (change.strategy, change.reason.as_str()),
            (PlanStrategy::Rolling, "SchemaCompatible")
        );
        assert_eq!(change.steps.len(), 3);
        assert!(
            rolling.drain.is_empty() && rolling.evict.is_none(),
            "nothing moves unapproved"
        );
    }

    #[test]
    fn a_refused_and_a_recreated_schema_change_say_so() {
        let mut observed = world(&fixtures::minimal(), 3, 3);
        observed.schema_jobs.check = Some(JobOutcome::Failed {
            exit_code: Some(EXIT_MIGRATION_NEEDED),
            message: "migration needed: database schema 1, version 2.0.0 needs 2".into(),
        });
        let mut cr = Cluster::minimal().version("2.0.0").build();
        let refused = dry_run(&cr, &observed, &BuildSettings::default(), &now()).unwrap();
        let change = refused.status.plan.unwrap();
        assert_eq!(
            (change.strategy, change.reason.as_str()),
            (PlanStrategy::Refused, "SchemaChangeRefused")
        );
        assert!(change.steps.is_empty());
        cr.spec.upgrade.schema_change = SchemaChangePolicy::Recreate;
        let recreate = dry_run(&cr, &observed, &BuildSettings::default(), &now()).unwrap();
        let change = recreate.status.plan.unwrap();
        assert_eq!(change.strategy, PlanStrategy::Recreate);
        assert_eq!(
            servers(&change),
            vec![
                (Some("minimal-2"), PlanAction::Stop),
                (Some("minimal-1"), PlanAction::Stop),
                (Some("minimal-0"), PlanAction::Stop),
                (None, PlanAction::Migrate),
                (None, PlanAction::Start),
            ]
        );
        let unknown = change.estimate.unwrap();
        assert_eq!(unknown.downtime_seconds, None, "no migration timed: unknown, not 0");
        // The last migration's Job ran 42 s: the downtime is at least that.
        observed.schema_jobs.migration_seconds = Some(42);
        let timed = dry_run(&cr, &observed, &BuildSettings::default(), &now()).unwrap();
        assert_eq!(timed.status.history.unwrap().migration_seconds, Some(42));
        let estimate = timed.status.plan.unwrap().estimate.unwrap();
        assert_eq!(estimate.downtime_seconds, Some(42));
        assert!(estimate.basis.contains("42 s"), "{}", estimate.basis);
    }

    #[test]
    fn a_roll_is_estimated_from_the_median_of_the_recent_steps_with_no_downtime() {
        let observed = world(&fixtures::minimal(), 3, 3);
        let mut cr = Cluster::minimal().version("2.0.0").build();
        let mut checked = observed.clone();
        checked.schema_jobs.check = Some(JobOutcome::Succeeded);
        let untimed = dry_run(&cr, &checked, &BuildSettings::default(), &now()).unwrap();
        let estimate = untimed.status.plan.unwrap().estimate.unwrap();
        assert_eq!((estimate.duration_seconds, estimate.downtime_seconds), (None, Some(0)));
        cr.status = Some(crate::crd::OrchestratorClusterStatus {
            history: Some(MaintenanceHistory {
                step_seconds: vec![30, 400, 20],
                migration_seconds: None,
            }),
            ..Default::default()
        });
        let timed = dry_run(&cr, &checked, &BuildSettings::default(), &now()).unwrap();
        let estimate = timed.status.plan.unwrap().estimate.unwrap();
        assert_eq!(
            (estimate.duration_seconds, estimate.downtime_seconds),
            (Some(90), Some(0)),
            "3 replacements of the median 30 s, not dragged by one slow step: {}",
            estimate.basis
        );
    }

    #[test]
    fn the_history_keeps_the_last_five_steps_and_the_last_migration() {
        use super::super::change::history;
        let mut kept = None;
        for seconds in 1..=7 {
            kept = history(kept.as_ref(), Some(f64::from(seconds) + 0.4), None);
        }
        assert_eq!(kept.as_ref().unwrap().step_seconds, vec![3, 4, 5, 6, 7]);
        let kept = history(kept.as_ref(), None, Some(12));
        let kept = history(kept.as_ref(), None, None).unwrap();
        assert_eq!(kept.migration_seconds, Some(12), "kept once the Job is gone");
        assert_eq!(history(None, None, None), None);
    }

    #[test]
    fn servers_a_scale_down_removes_are_not_replaced_and_a_removal_waits_only_for_its_approval() {
        let observed = world(&fixtures::minimal(), 3, 3);
        let mut cr = Cluster::minimal().version("2.0.0").build();
        cr.spec.replicas = 2;
        cr.spec.maintenance.approval = Approval::Manual;
        cr.spec.maintenance.paused = true;
        let plan = dry_run(&cr, &observed, &BuildSettings::default(), &now()).unwrap();
        let change = plan.status.plan.unwrap();
        assert_eq!(
            servers(&change),
            vec![
                (Some("minimal-2"), PlanAction::Remove),
                (Some("minimal-1"), PlanAction::Replace),
                (Some("minimal-0"), PlanAction::Replace),
            ]
        );
        assert_eq!(
            change.gates.len(),
            2,
            "paused and the approval hold the roll: {:?}",
            change.gates
        );
        let mut scale_down_only = fixtures::minimal();
        scale_down_only.spec.replicas = 2;
        scale_down_only.spec.maintenance.approval = Approval::Manual;
        scale_down_only.spec.maintenance.paused = true;
        let plan = dry_run(&scale_down_only, &observed, &BuildSettings::default(), &now()).unwrap();
        let change = plan.status.plan.unwrap();
        assert_eq!(change.strategy, PlanStrategy::Scaling);
        assert_eq!(change.gates.len(), 1, "a removal ignores paused: {:?}", change.gates);
        assert!(change.gates[0].starts_with("AwaitingApproval"));
    }

    #[test]
    fn a_replacement_asked_for_is_its_own_approval_but_not_beside_a_new_release() {
        let mut observed = world(&fixtures::minimal(), 3, 3);
        observed.pods[1].replace_requested = true;
        let mut cr = fixtures::minimal();
        cr.spec.maintenance.approval = Approval::Manual;
        cr.metadata.generation = Some(2);
        let plan = dry_run(&cr, &observed, &BuildSettings::default(), &now()).unwrap();
        let change = plan.status.plan.clone().unwrap();
        assert_eq!(
            (change.strategy, change.reason.as_str()),
            (PlanStrategy::Rolling, "ReplaceRequested")
        );
        assert_eq!(servers(&change), vec![(Some("minimal-1"), PlanAction::Replace)]);
        assert!(change.gates.is_empty(), "{:?}", change.gates);
        assert_eq!(plan.drain, vec!["minimal-1"]);
        // A new version at its schema check: the drain waits for the approval too.
        let mut newer = Cluster::minimal().version("2.0.0").build();
        newer.spec.maintenance.approval = Approval::Manual;
        newer.metadata.generation = Some(2);
        let plan = dry_run(&newer, &observed, &BuildSettings::default(), &now()).unwrap();
        assert!(plan.drain.is_empty() && plan.evict.is_none(), "{:?}", plan.drain);
        let blocked = plan
            .status
            .conditions
            .iter()
            .find(|c| c.type_ == "MaintenanceBlocked")
            .unwrap();
        assert_eq!(blocked.reason, "AwaitingApproval", "{}", blocked.message);
    }

    #[test]
    fn an_unapproved_generation_stays_out_of_the_template_while_a_step_is_in_progress() {
        use crate::crd::{MaintenanceStatus, OrchestratorClusterStatus};
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
        let mut observed = world(&fixtures::minimal(), 3, 3);
        observed.schema_jobs.check = Some(JobOutcome::Succeeded);
        let mut cr = Cluster::minimal().version("2.0.0").build();
        cr.spec.maintenance.approval = Approval::Manual;
        cr.metadata.generation = Some(2);
        let since = Time(
            now()
                .0
                .checked_sub(k8s_openapi::jiff::SignedDuration::from_secs(5))
                .unwrap(),
        );
        cr.status = Some(OrchestratorClusterStatus {
            maintenance: Some(MaintenanceStatus {
                reason: Some("RestartRequested".into()),
                server: Some("minimal-1".into()),
                stage: Some("Draining".into()),
                started_at: Some(since.clone()),
                step_started_at: Some(since),
                ..MaintenanceStatus::default()
            }),
            ..OrchestratorClusterStatus::default()
        });
        // The server images of the StatefulSets a plan writes.
        let images = |plan: &crate::Plan| -> Vec<String> {
            plan.writes
                .iter()
                .filter_map(|w| match &w.child {
                    crate::reconcile::plan::Child::StatefulSet(sts) => {
                        sts.spec.as_ref()?.template.spec.as_ref()?.containers[0].image.clone()
                    }
                    _ => None,
                })
                .collect()
        };
        let plan = dry_run(&cr, &observed, &BuildSettings::default(), &now()).unwrap();
        let images_held = images(&plan);
        assert!(
            images_held.iter().all(|image| !image.ends_with(":2.0.0")),
            "the step's replacement would run it: {images_held:?}"
        );
        let change = plan.status.plan.unwrap();
        assert_eq!(
            (change.strategy, change.reason.as_str()),
            (PlanStrategy::Rolling, "SchemaCompatible")
        );
        let order: Vec<_> = servers(&change).into_iter().map(|(s, _)| s.unwrap()).collect();
        assert_eq!(
            order,
            vec!["minimal-1", "minimal-2", "minimal-1", "minimal-0"],
            "the step ends on the running release, then every server is replaced"
        );
        // Any change of the template, not only a release.
        let mut settings = fixtures::minimal();
        settings.spec.maintenance.approval = Approval::Manual;
        settings.metadata.generation = Some(2);
        settings.status = cr.status.clone();
        settings.spec.template.env.push(k8s_openapi::api::core::v1::EnvVar {
            name: "UNAPPROVED".into(),
            value: Some("1".into()),
            ..Default::default()
        });
        let settled = world(&fixtures::minimal(), 3, 3);
        let writes = |cr: &crate::crd::OrchestratorCluster| {
            let plan = dry_run(cr, &settled, &BuildSettings::default(), &now()).unwrap();
            format!("{:?}", plan.writes)
        };
        let rendered = writes(&settings);
        assert!(!rendered.contains("UNAPPROVED"), "{rendered}");
        // Without a step in progress it is written (the roll waits for the approval).
        settings.status = None;
        assert!(writes(&settings).contains("UNAPPROVED"));
        // Approved, the release goes into the template at once.
        cr.metadata
            .annotations
            .get_or_insert_default()
            .insert(crate::crd::APPROVE_ANNOTATION.into(), "2".into());
        let plan = dry_run(&cr, &observed, &BuildSettings::default(), &now()).unwrap();
        assert!(
            images(&plan).iter().any(|image| image.ends_with(":2.0.0")),
            "approved: the template takes the release"
        );
    }

    #[test]
    fn the_plan_of_a_generation_is_kept_while_running_jobs_move() {
        let observed = world(&fixtures::minimal(), 3, 3);
        let mut cr = Cluster::minimal().version("2.0.0").build();
        let first = dry_run(&cr, &observed, &BuildSettings::default(), &now()).unwrap();
        cr.status = Some(first.status.clone());
        let mut busier = observed.clone();
        if let crate::database::DatabaseState::Ready { members, .. } = &mut busier.database {
            members[2].running_jobs = 9;
        }
        let second = dry_run(&cr, &busier, &BuildSettings::default(), &now()).unwrap();
        assert_eq!(second.status.plan, first.status.plan, "same generation, same plan");
    }
}

mod canary {
    use super::basics::{now, world};
    use crate::conditions::{find, status::TRUE};
    use crate::crd::{CanaryPhase, CanaryShortfall, CanarySpec, OrchestratorCluster, PlanAction};
    use crate::reconcile::dry_run;
    use crate::reconcile::observe::Observed;
    use crate::reconcile::plan::{Child, Plan};
    use crate::release::JobOutcome;
    use crate::resources::statefulset;
    use crate::testing::{Cluster, fixtures};
    use crate::validate::BuildSettings;
    use crate::vocabulary::{ConditionType, Reason};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use orchestrator_contract::Outcomes;

    fn at(seconds: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(now().0.as_second() + seconds).unwrap())
    }

    /// The plan of `cr` at `seconds`, the StatefulSet carrying the hashes the operator wrote with
    /// its template (as after the write that put the template there).
    fn look(cr: &OrchestratorCluster, observed: &Observed, seconds: i64) -> Plan {
        let first = dry_run(cr, observed, &BuildSettings::default(), &at(seconds)).unwrap();
        let mut observed = observed.clone();
        let written = first.writes.iter().find_map(|w| match &w.child {
            Child::StatefulSet(s) => Some(s.metadata.annotations.clone().unwrap_or_default()),
            _ => None,
        });
        if let (Some(written), Some(live)) = (written, observed.statefulset.as_mut()) {
            live.metadata.annotations.get_or_insert_default().extend(written);
        }
        dry_run(cr, &observed, &BuildSettings::default(), &at(seconds)).unwrap()
    }

    /// `cr` with the status `plan` wrote.
    fn recorded(cr: &OrchestratorCluster, plan: &Plan) -> OrchestratorCluster {
        let mut cr = cr.clone();
        cr.status = Some(plan.status.clone());
        cr
    }

    /// Three joined servers: `new` of them (the highest ordinals) on version 2.0.0, the others on
    /// 1.0.0, and the StatefulSet's template at `template`.
    fn servers_on(new: i32, template: &str) -> Observed {
        let mut observed = world(&fixtures::minimal(), 3, 3);
        let old = crate::testing::valid(&fixtures::minimal()).wanted;
        let wanted = crate::testing::valid(&Cluster::minimal().version("2.0.0").build()).wanted;
        for pod in &mut observed.pods {
            let on_new = pod.ordinal >= 3 - new;
            pod.release = Some(if on_new { wanted.clone() } else { old.clone() });
            pod.revision = Some(if on_new { "new" } else { "old" }.into());
        }
        let sts = observed.statefulset.as_mut().unwrap();
        sts.status.as_mut().unwrap().update_revision = Some(template.into());
        let release = if template == "new" { &wanted } else { &old };
        let container = &mut sts.spec.as_mut().unwrap().template.spec.as_mut().unwrap().containers[0];
        container.image = Some(release.image.clone());
        for env in container.env.iter_mut().flatten() {
            if env.name == orchestrator_contract::env::SERVER_VERSION {
                env.value = Some(release.version.clone());
            }
        }
        observed.schema_jobs.check = Some(JobOutcome::Succeeded);
        observed
    }

    fn canary_cluster() -> OrchestratorCluster {
        let mut cr = Cluster::minimal().version("2.0.0").build();
        cr.spec.maintenance.canary = Some(CanarySpec {
            servers: 1,
            bake_time: "60s".into(),
            min_jobs: 20,
            max_failure_increase_percent: 10,
            max_slowdown_factor: 3,
        });
        cr
    }

    /// `cr` once its change began: the release let through, the canary recorded (Replacing).
    fn begun(cr: &OrchestratorCluster) -> OrchestratorCluster {
        let start = look(cr, &servers_on(0, "old"), -5);
        assert_eq!(start.status.canary.as_ref().unwrap().phase, CanaryPhase::Replacing);
        recorded(cr, &start)
    }

    fn outcomes(succeeded: i64, failed: i64) -> Outcomes {
        Outcomes {
            succeeded,
            failed,
            run_p50_ms: Some(20),
        }
    }

    fn template_version(plan: &Plan) -> Option<String> {
        plan.writes.iter().find_map(|w| match &w.child {
            Child::StatefulSet(s) => statefulset::running_release(s).map(|r| r.version),
            _ => None,
        })
    }

    #[test]
    fn a_canary_bakes_then_a_failure_is_recorded_before_it_is_rolled_back() {
        let cr = canary_cluster();
        // The release let through: the canary is ahead in the plan, after one replacement.
        let start = look(&cr, &servers_on(0, "old"), 0);
        assert_eq!(template_version(&start).as_deref(), Some("2.0.0"));
        let actions: Vec<PlanAction> = start
            .status
            .plan
            .as_ref()
            .unwrap()
            .steps
            .iter()
            .map(|s| s.action)
            .collect();
        assert_eq!(
            actions,
            vec![
                PlanAction::Replace,
                PlanAction::Bake,
                PlanAction::Replace,
                PlanAction::Replace
            ]
        );
        let canary = start.status.canary.clone().unwrap();
        assert_eq!(
            (canary.phase, canary.from_version.as_str()),
            (CanaryPhase::Replacing, "1.0.0")
        );
        // The first step is the canary's.
        let cr = recorded(&cr, &start);
        let first = look(&cr, &servers_on(0, "new"), 1);
        assert_eq!(first.drain, vec!["minimal-2"]);

        // minimal-2 runs 2.0.0 and joined: the bake starts, recorded, nobody else is drained.
        let cr = recorded(&cr, &first);
        let mut baking = servers_on(1, "new");
        let mut cr = cr;
        cr.status.as_mut().unwrap().maintenance = None;
        let bake = look(&cr, &baking, 10);
        let canary = bake.status.canary.clone().unwrap();
        assert_eq!(
            (canary.phase, canary.bake_started_at, canary.servers.clone()),
            (CanaryPhase::Baking, Some(at(10)), vec!["minimal-2".to_string()])
        );
        assert!(bake.drain.is_empty() && bake.evict.is_none(), "{:?}", bake.drain);
        assert!(bake.events.iter().any(|e| e.reason == Reason::CanaryBaking));

        // Bad figures, early in the bake: a verdict, recorded; the template stays.
        let cr = recorded(&cr, &bake);
        baking.canary_evidence = Some(Ok([outcomes(2, 28), outcomes(60, 1)]));
        let judged = look(&cr, &baking, 30);
        let canary = judged.status.canary.clone().unwrap();
        assert_eq!(
            (canary.phase, canary.shortfall),
            (CanaryPhase::Failed, Some(CanaryShortfall::FailureRatio))
        );
        assert_eq!(canary.canary_jobs.unwrap().failed, 28);
        assert_eq!(
            template_version(&judged),
            None,
            "no rollback before the failure is recorded"
        );
        assert!(judged.drain.is_empty());
        let blocked = find(&judged.status.conditions, ConditionType::MaintenanceBlocked).unwrap();
        assert_eq!(
            (blocked.status.as_str(), blocked.reason.as_str()),
            (TRUE, "CanaryFailed")
        );
        assert!(blocked.message.contains("28 of 30 jobs failed"), "{}", blocked.message);

        // Recorded: the template goes back to 1.0.0, no schema Job, and the canary server is
        // the roll's only outdated one once the StatefulSet says so.
        let cr = recorded(&cr, &judged);
        let back = look(&cr, &baking, 31);
        assert_eq!(template_version(&back).as_deref(), Some("1.0.0"));
        assert!(!back.writes.iter().any(|w| w.child.kind() == "Job"));
        let rolling_back = servers_on(1, "old");
        let step = look(&recorded(&cr, &back), &rolling_back, 32);
        assert_eq!(step.drain, vec!["minimal-2"], "the canary server is drained first");
        let change = step.status.plan.clone().unwrap();
        assert_eq!(change.reason, "CanaryFailed");

        // Every server on 1.0.0 again: rolled back, halted until the spec changes.
        let mut cr = recorded(&cr, &step);
        cr.status.as_mut().unwrap().maintenance = None;
        let done = look(&cr, &servers_on(0, "old"), 60);
        assert_eq!(done.status.canary.as_ref().unwrap().phase, CanaryPhase::RolledBack);
        assert!(done.drain.is_empty() && done.writes.is_empty(), "{:?}", done.writes);
        let blocked = find(&done.status.conditions, ConditionType::MaintenanceBlocked).unwrap();
        assert_eq!(blocked.reason, "CanaryFailed");
        assert!(done.events.iter().any(|e| e.reason == Reason::CanaryRolledBack));
        // No check Job known: without the recorded failure one would be made for 2.0.0.
        let mut unchecked = servers_on(0, "old");
        unchecked.schema_jobs.check = None;
        let again = look(&recorded(&cr, &done), &unchecked, 90);
        assert!(
            again.writes.is_empty() && again.drain.is_empty(),
            "stays rolled back: {:?}",
            again.writes
        );
        // Removing the canary does not let the failed release back in.
        let mut removed = recorded(&cr, &done);
        removed.spec.maintenance.canary = None;
        let without = look(&removed, &servers_on(0, "old"), 91);
        assert!(without.writes.is_empty(), "{:?}", without.writes);
        assert_eq!(without.status.canary.unwrap().phase, CanaryPhase::RolledBack);
        // Another release: a canary of its own, from the release the servers run.
        let mut next = recorded(&cr, &done);
        next.spec.version = "2.2.0".into();
        let other = look(&next, &servers_on(0, "old"), 92);
        let canary = other.status.canary.unwrap();
        assert_eq!(
            (canary.version.as_str(), canary.from_version.as_str(), canary.phase),
            ("2.2.0", "1.0.0", CanaryPhase::Replacing)
        );
    }

    #[test]
    fn a_healthy_canary_passes_after_its_bake_and_the_roll_goes_on() {
        let cr = begun(&canary_cluster());
        let mut baking = servers_on(1, "new");
        let bake = look(&cr, &baking, 0);
        assert_eq!(bake.status.canary.as_ref().unwrap().phase, CanaryPhase::Baking);
        let cr = recorded(&cr, &bake);
        baking.canary_evidence = Some(Ok([outcomes(30, 0), outcomes(60, 0)]));
        let early = look(&cr, &baking, 30);
        assert_eq!(early.status.canary.as_ref().unwrap().phase, CanaryPhase::Baking);
        assert!(early.drain.is_empty(), "the bake is not over");
        let waiting = find(&early.status.conditions, ConditionType::MaintenanceBlocked).unwrap();
        assert_eq!(waiting.reason, "CanaryBaking");
        // Over, but too few jobs: it waits, never passes.
        baking.canary_evidence = Some(Ok([outcomes(5, 0), outcomes(60, 0)]));
        let few = look(&cr, &baking, 61);
        assert_eq!(few.status.canary.as_ref().unwrap().phase, CanaryPhase::Inconclusive);
        assert!(few.drain.is_empty());
        baking.canary_evidence = Some(Ok([outcomes(30, 0), outcomes(60, 0)]));
        let passed = look(&cr, &baking, 62);
        assert_eq!(passed.status.canary.as_ref().unwrap().phase, CanaryPhase::Passed);
        assert!(passed.events.iter().any(|e| e.reason == Reason::CanaryPassed));
        assert_eq!(passed.drain, vec!["minimal-1"], "the roll goes on");
        // The pass is kept: no evidence read later undoes it.
        let mut later = baking.clone();
        later.canary_evidence = Some(Ok([outcomes(0, 30), outcomes(60, 0)]));
        let next = look(&recorded(&cr, &passed), &later, 63);
        assert_eq!(next.status.canary.as_ref().unwrap().phase, CanaryPhase::Passed);
    }

    #[test]
    fn a_recreated_version_has_no_canary_and_says_a_rollback_needs_a_restore() {
        let mut cr = canary_cluster();
        cr.spec.upgrade.schema_change = crate::crd::SchemaChangePolicy::Recreate;
        let mut observed = world(&fixtures::minimal(), 3, 3);
        observed.schema_jobs.check = Some(JobOutcome::Failed {
            exit_code: Some(crate::release::EXIT_MIGRATION_NEEDED),
            message: "migration needed".into(),
        });
        let recreate = look(&cr, &observed, 0);
        let canary = recreate.status.canary.unwrap();
        assert_eq!(canary.phase, CanaryPhase::NotApplicable);
        assert!(
            canary.message.unwrap().contains("restored from before the migration"),
            "says what a rollback would need"
        );
        let steps = recreate.status.plan.unwrap().steps;
        assert!(!steps.iter().any(|s| s.action == PlanAction::Bake), "{steps:?}");
    }

    #[test]
    fn a_revert_during_the_bake_has_no_canary_and_puts_the_canary_back() {
        let cr = begun(&canary_cluster());
        let baking = servers_on(1, "new");
        let mut cr = recorded(&cr, &look(&cr, &baking, 0));
        // Back to 1.0.0, which two servers run: no canary of it, and the canary server is the
        // roll's to replace (the template back at the old revision).
        cr.spec.version = "1.0.0".into();
        cr.status.as_mut().unwrap().maintenance = None;
        let mut reverted = servers_on(1, "old");
        reverted.schema_jobs.check = None;
        let revert = look(&cr, &reverted, 5);
        assert_eq!(
            revert.status.canary, None,
            "a baking canary of another release is dropped"
        );
        assert_eq!(revert.drain, vec!["minimal-2"]);
    }

    #[test]
    fn a_server_added_during_the_bake_is_not_judged_and_a_late_heartbeat_is_no_failure() {
        let cr = begun(&canary_cluster());
        let mut baking = servers_on(1, "new");
        let cr = recorded(&cr, &look(&cr, &baking, 0));
        // A fourth server on the new release, not joined yet.
        let mut added = baking.pods[2].clone();
        added.name = "minimal-3".into();
        added.ordinal = 3;
        added.ready = false;
        baking.pods.push(added);
        // The canary's heartbeat is late: not joined, but its pod is ready and it serves.
        if let crate::database::DatabaseState::Ready { members, .. } = &mut baking.database {
            members
                .iter_mut()
                .find(|m| m.server_id == "minimal-2")
                .unwrap()
                .heartbeat_age_seconds = 12.0;
        }
        baking.canary_evidence = Some(Ok([outcomes(30, 0), outcomes(60, 0)]));
        let later = look(&cr, &baking, 30);
        let canary = later.status.canary.unwrap();
        assert_eq!(
            (canary.phase, canary.servers),
            (CanaryPhase::Baking, vec!["minimal-2".to_string()])
        );
    }

    #[test]
    fn no_verdict_on_an_unreadable_database_or_evidence() {
        let cr = begun(&canary_cluster());
        let mut baking = servers_on(1, "new");
        let cr = recorded(&cr, &look(&cr, &baking, 0));
        baking.canary_evidence = Some(Err("the canary's evidence could not be read: SQLSTATE 42501".into()));
        let unread = look(&cr, &baking, 90);
        let canary = unread.status.canary.clone().unwrap();
        assert_eq!(canary.phase, CanaryPhase::Baking);
        assert!(canary.message.unwrap().contains("42501"));
        assert!(unread.drain.is_empty());
        let mut down = baking.clone();
        down.database = crate::database::DatabaseState::default();
        let unknown = look(&cr, &down, 90);
        assert_eq!(
            unknown.status.canary.unwrap().phase,
            CanaryPhase::Baking,
            "not LeftTheCluster"
        );
    }
}

mod operator_changes {
    use super::basics::{now, world};
    use crate::crd::{MaintenanceWindow, OPERATOR_CHANGE_ANNOTATION, OperatorChanges, OrchestratorCluster};
    use crate::reconcile::dry_run;
    use crate::reconcile::observe::Observed;
    use crate::reconcile::plan::{Child, Plan};
    use crate::release::JobOutcome;
    use crate::resources::statefulset;
    use crate::testing::fixtures;
    use crate::validate::BuildSettings;
    use crate::vocabulary::Reason;

    /// The operator restarted with another default image repository.
    fn upgraded() -> BuildSettings {
        BuildSettings {
            server_image_repository: "registry.example/orchestrator-server".into(),
        }
    }

    fn image(plan: &Plan) -> Option<String> {
        plan.writes.iter().find_map(|w| match &w.child {
            Child::StatefulSet(s) => statefulset::running_release(s).map(|r| r.image),
            _ => None,
        })
    }

    fn window(start: &str) -> MaintenanceWindow {
        MaintenanceWindow {
            days: Vec::new(),
            start: start.into(),
            duration: "1h".into(),
        }
    }

    /// A settled cluster written by the operator before its upgrade, whose new image passed its
    /// schema check.
    fn checked(cr: &OrchestratorCluster) -> Observed {
        let mut observed = world(cr, 3, 3);
        observed.schema_jobs.check = Some(JobOutcome::Succeeded);
        observed
    }

    #[test]
    fn an_operator_change_waits_for_the_next_window_or_a_person() {
        // Outside its window (it is 08:00, the window opens at 20:00): held, and said.
        let mut cr = fixtures::minimal();
        cr.spec.maintenance.windows = vec![window("20:00")];
        // The new image's schema check first: the template and its hashes stay as written.
        let mut unchecked = world(&cr, 3, 3);
        unchecked.schema_jobs.check = Some(JobOutcome::Running);
        let checking = dry_run(&cr, &unchecked, &upgraded(), &now()).unwrap();
        assert!(checking.writes.is_empty(), "{:?}", checking.writes);
        assert_eq!(checking.status.pending_operator_change, None);
        let held = dry_run(&cr, &checked(&cr), &upgraded(), &now()).unwrap();
        assert_eq!(image(&held), None, "the template is not written: {:?}", held.writes);
        let pending = held.status.pending_operator_change.clone().unwrap();
        assert!(
            pending
                .changes
                .iter()
                .any(|c| c.contains("image: ghcr.io/orchestrator-dev/orchestrator-server:1.0.0 -> registry.example/orchestrator-server:1.0.0")),
            "{pending:?}"
        );
        assert!(pending.waiting_for.contains("NextWindow"), "{pending:?}");
        assert!(held.events.iter().any(|e| e.reason == Reason::OperatorChangePending));
        assert!(held.drain.is_empty());
        // Inside a window: rolled out, and said.
        let mut open = cr.clone();
        open.spec.maintenance.windows = vec![window("07:30")];
        open.status = Some(held.status.clone());
        let applied = dry_run(&open, &checked(&cr), &upgraded(), &now()).unwrap();
        assert_eq!(
            image(&applied).as_deref(),
            Some("registry.example/orchestrator-server:1.0.0")
        );
        assert_eq!(applied.status.pending_operator_change, None);
        assert!(applied.events.iter().any(|e| e.reason == Reason::OperatorChangeApplied));
        // No windows and no policy: at once.
        let at_once = dry_run(
            &fixtures::minimal(),
            &checked(&fixtures::minimal()),
            &upgraded(),
            &now(),
        )
        .unwrap();
        assert!(image(&at_once).is_some());
        // Manual: held until the annotation names this very change.
        let mut manual = fixtures::minimal();
        manual.spec.maintenance.operator_changes = Some(OperatorChanges::Manual);
        let observed = checked(&manual);
        let waiting = dry_run(&manual, &observed, &upgraded(), &now()).unwrap();
        assert_eq!(image(&waiting), None);
        let pending = waiting.status.pending_operator_change.clone().unwrap();
        assert!(
            pending.waiting_for.contains("kubectl orc approve minimal"),
            "{pending:?}"
        );
        manual
            .metadata
            .annotations
            .get_or_insert_default()
            .insert(OPERATOR_CHANGE_ANNOTATION.into(), "an-older-one".into());
        assert_eq!(image(&dry_run(&manual, &observed, &upgraded(), &now()).unwrap()), None);
        manual
            .metadata
            .annotations
            .get_or_insert_default()
            .insert(OPERATOR_CHANGE_ANNOTATION.into(), pending.template_hash.clone());
        assert!(image(&dry_run(&manual, &observed, &upgraded(), &now()).unwrap()).is_some());
    }

    #[test]
    fn a_change_of_the_spec_is_not_held_and_a_hand_edit_is_reverted() {
        let mut cr = fixtures::minimal();
        cr.spec.maintenance.windows = vec![window("20:00")];
        cr.spec.maintenance.operator_changes = Some(OperatorChanges::Manual);
        let observed = world(&cr, 3, 3);
        // A setting of the spec: written at once, nothing pending.
        let mut changed = cr.clone();
        changed.spec.template.labels.insert("team".into(), "jobs".into());
        let plan = dry_run(&changed, &observed, &BuildSettings::default(), &now()).unwrap();
        assert!(plan.writes.iter().any(|w| w.child.kind() == "StatefulSet"));
        assert_eq!(plan.status.pending_operator_change, None);
        // A hand edit of the template: reverted at once, nothing pending.
        let mut edited = observed.clone();
        let template = &mut edited.statefulset.as_mut().unwrap().spec.as_mut().unwrap().template;
        template.spec.as_mut().unwrap().containers[0].image = Some("elsewhere/server:1".into());
        let plan = dry_run(&cr, &edited, &BuildSettings::default(), &now()).unwrap();
        assert_eq!(
            image(&plan).as_deref(),
            Some("ghcr.io/orchestrator-dev/orchestrator-server:1.0.0")
        );
        assert_eq!(plan.status.pending_operator_change, None);
    }
}

mod zone_spread {
    use super::basics::{now, world};
    use crate::reconcile::dry_run;
    use crate::reconcile::plan::{Child, Plan};
    use crate::testing::fixtures;
    use crate::validate::BuildSettings;
    use k8s_openapi::api::apps::v1::StatefulSet;

    fn statefulset(plan: &Plan) -> Option<&StatefulSet> {
        plan.writes.iter().find_map(|w| match &w.child {
            Child::StatefulSet(s) => Some(s),
            _ => None,
        })
    }

    fn spread_of(statefulset: &StatefulSet) -> Option<usize> {
        let pod = statefulset.spec.as_ref()?.template.spec.as_ref()?;
        pod.topology_spread_constraints.as_ref().map(Vec::len)
    }

    #[test]
    fn a_new_cluster_spreads_across_zones_and_an_empty_list_spreads_nothing() {
        let cr = fixtures::minimal();
        let observed = world(&cr, 3, 3);
        let sts = observed.statefulset.as_ref().unwrap();
        let pod = sts.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        let spread = &pod.topology_spread_constraints.as_ref().unwrap()[0];
        assert_eq!(spread.topology_key, "topology.kubernetes.io/zone");
        assert_eq!(
            (spread.max_skew, spread.when_unsatisfiable.as_str()),
            (1, "ScheduleAnyway")
        );
        // `[]`: no spread, a change of the spec (its own spec hash), written at once.
        // Under Manual, an operator's change would be held: this one is not.
        let mut none = cr.clone();
        none.spec.maintenance.operator_changes = Some(crate::crd::OperatorChanges::Manual);
        none.spec.template.topology_spread_constraints = Some(Vec::new());
        let plan = dry_run(&none, &observed, &BuildSettings::default(), &now()).unwrap();
        let written = statefulset(&plan).expect("the template changes");
        assert_eq!(spread_of(written), None);
        assert_eq!(
            plan.status.pending_operator_change, None,
            "a change of the spec, not the operator's"
        );
    }

    #[test]
    fn an_existing_statefulset_takes_the_default_spread_only_with_another_change() {
        // A StatefulSet written by an operator before the default spread existed.
        let cr = fixtures::minimal();
        let mut observed = world(&cr, 3, 3);
        let sts = observed.statefulset.as_mut().unwrap();
        let template = &mut sts.spec.as_mut().unwrap().template;
        template.spec.as_mut().unwrap().topology_spread_constraints = None;
        let hash = crate::reconcile::plan::operator_change::template_hash(template);
        sts.metadata.annotations.get_or_insert_default().insert(
            crate::reconcile::plan::operator_change::TEMPLATE_HASH_ANNOTATION.into(),
            hash,
        );
        let plan = dry_run(&cr, &observed, &BuildSettings::default(), &now()).unwrap();
        assert!(
            statefulset(&plan).is_none(),
            "no roll for the spread alone: {:?}",
            plan.writes
        );
        assert_eq!(plan.status.pending_operator_change, None);
        // Another change of the template carries it.
        let mut changed = cr.clone();
        changed.spec.template.env.push(k8s_openapi::api::core::v1::EnvVar {
            name: "EXTRA".into(),
            value: Some("1".into()),
            ..Default::default()
        });
        let plan = dry_run(&changed, &observed, &BuildSettings::default(), &now()).unwrap();
        assert_eq!(statefulset(&plan).and_then(spread_of), Some(1));
        // A spec that goes from `[]` back to unset gets the spread at once, not as an operator
        // change (which Manual would hold): `[]` has a spec hash of its own.
        let mut manual = cr.clone();
        manual.spec.maintenance.operator_changes = Some(crate::crd::OperatorChanges::Manual);
        let mut none = manual.clone();
        none.spec.template.topology_spread_constraints = Some(Vec::new());
        let plan = dry_run(&manual, &world(&none, 3, 3), &BuildSettings::default(), &now()).unwrap();
        assert_eq!(statefulset(&plan).and_then(spread_of), Some(1), "{:?}", plan.writes);
        assert_eq!(plan.status.pending_operator_change, None);
    }
}
