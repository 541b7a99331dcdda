//! The short-lived Jobs of a version change: the new image's `schema check` (does the database
//! need a migration?) and `schema migrate`. Each runs the server's pod template (same
//! credentials, same restricted security) with the schema command instead of `serve`, and is
//! named after the release it is about, so its outcome is found again after an operator restart.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{
    Job, JobSpec, PodFailurePolicy, PodFailurePolicyOnExitCodesRequirement, PodFailurePolicyRule,
};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

use super::statefulset::{CONTAINER_NAME, pod_template};
use super::{MANAGED_BY, Names, owned_meta};
use crate::crd::OrchestratorCluster;
use crate::release::{JobOutcome, Release, SchemaJob};
use crate::validate::ValidSpec;

/// Label value of `app.kubernetes.io/name` on the schema Jobs' pods (not the servers' value, so
/// that they are never taken for servers).
pub(crate) const SCHEMA_APP_NAME: &str = "orchestrator-schema";
/// Label on the schema Jobs naming their action (`check` or `migrate`).
pub(crate) const ACTION_LABEL: &str = "orchestrator.dev/schema-action";
/// Retries of a Job whose pod fails for another reason than its answer (a network hiccup).
const BACKOFF_LIMIT: i32 = 3;
/// A schema check that has not answered after this long has failed. A migration has no such
/// deadline: stopping it half-way while every server is down would be worse than waiting.
const CHECK_DEADLINE_SECONDS: i64 = 600;

/// Name of the `kind` Job of `release` against database schema `schema` (at most 63
/// characters, the limit of the `job-name` label). A schema that changed since (another
/// migration) makes a new name, so an old answer is never reused.
pub(crate) fn name(cr: &OrchestratorCluster, kind: SchemaJob, release: &Release, schema: i32) -> String {
    let suffix = format!("-schema-{}-{}", kind.action(), release.hash(schema));
    let mut prefix = Names::statefulset(cr);
    prefix.truncate(63 - suffix.len());
    format!("{}{suffix}", prefix.trim_end_matches('-'))
}

/// Whether `job` has finished (completed or failed for good).
pub(crate) fn finished(job: &Job) -> bool {
    job.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| {
            c.iter()
                .any(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
        })
}

/// The labels that select the schema Jobs' pods of `cr`.
pub(crate) fn pod_selector_labels(cr: &OrchestratorCluster) -> BTreeMap<String, String> {
    let mut labels = pod_labels(cr);
    labels.retain(|k, _| !k.ends_with("managed-by"));
    labels
}

/// Labels of the schema Jobs' pods.
pub(crate) fn pod_labels(cr: &OrchestratorCluster) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), SCHEMA_APP_NAME.to_string()),
        (super::INSTANCE_LABEL.to_string(), cr.name_any()),
        ("app.kubernetes.io/managed-by".to_string(), MANAGED_BY.to_string()),
    ])
}

/// Builds the `kind` Job for the release the spec asks for, against database schema `schema`.
pub(crate) fn build(spec: &ValidSpec, kind: SchemaJob, schema: i32, config_hash: &str) -> Job {
    let cr = spec.cr;
    let release = &spec.wanted;
    let mut template = pod_template(spec, release, config_hash);
    if let Some(meta) = template.metadata.as_mut() {
        meta.labels = Some(pod_labels(cr));
    }
    if let Some(pod) = template.spec.as_mut() {
        pod.restart_policy = Some("Never".into());
        // A schema Job's pod is not a server: the servers' spread does not count it.
        pod.topology_spread_constraints = None;
        pod.termination_grace_period_seconds = Some(30);
        for container in &mut pod.containers {
            container.args = Some(vec!["schema".into(), kind.action().into()]);
            container.ports = None;
            container.readiness_probe = None;
            container.liveness_probe = None;
            // The log tail of a failed run becomes its termination message, which the
            // operator quotes in its Event (no log access needed).
            container.termination_message_policy = Some("FallbackToLogsOnError".into());
        }
    }
    let mut metadata = owned_meta(cr, name(cr, kind, release, schema));
    metadata
        .labels
        .get_or_insert_with(Default::default)
        .insert(ACTION_LABEL.into(), kind.action().into());
    Job {
        metadata,
        spec: Some(JobSpec {
            backoff_limit: Some(BACKOFF_LIMIT),
            active_deadline_seconds: (kind == SchemaJob::Check).then_some(CHECK_DEADLINE_SECONDS),
            pod_failure_policy: Some(PodFailurePolicy {
                rules: vec![PodFailurePolicyRule {
                    action: "FailJob".into(),
                    on_exit_codes: Some(PodFailurePolicyOnExitCodesRequirement {
                        container_name: Some(CONTAINER_NAME.into()),
                        operator: "In".into(),
                        values: kind.final_exit_codes(),
                    }),
                    on_pod_conditions: None,
                }],
            }),
            template,
            ..JobSpec::default()
        }),
        ..Job::default()
    }
}

/// Waiting reasons of a container that will not start without a change (a wrong image, a
/// missing Secret or ConfigMap).
pub(crate) const CANNOT_START: [&str; 5] = [
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
];

/// The outcome of `job` from its status and its pods.
pub(crate) fn outcome(job: &Job, pods: &[Pod]) -> JobOutcome {
    let conditions = job
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let holds = |type_: &str| conditions.iter().find(|c| c.type_ == type_ && c.status == "True");
    if holds("Complete").is_some() {
        return JobOutcome::Succeeded;
    }
    let job_name = job.name_any();
    let job_uid = job.uid();
    // A pod of an earlier Job of the same name (deleted and created again) is not this one's.
    let pods: Vec<&Pod> = pods
        .iter()
        .filter(|p| {
            p.labels().get("batch.kubernetes.io/job-name") == Some(&job_name)
                && (job_uid.is_none() || p.labels().get("batch.kubernetes.io/controller-uid") == job_uid.as_ref())
        })
        .collect();
    let Some(failed) = holds("Failed") else {
        // The pod's exit 0 is the answer; the Job's `Complete` condition follows it a second or
        // so later (the Job controller batches pod updates), which would add to every version
        // change. (A migration is still counted as running until the Job says so.)
        if pods
            .iter()
            .any(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Succeeded"))
        {
            return JobOutcome::Succeeded;
        }
        // A pod that cannot start would keep the Job running until its deadline: say so now.
        return pods
            .iter()
            .find_map(|p| {
                let waiting = p
                    .status
                    .as_ref()?
                    .container_statuses
                    .as_ref()?
                    .first()?
                    .state
                    .as_ref()?
                    .waiting
                    .clone()?;
                let reason = waiting.reason.filter(|r| CANNOT_START.contains(&r.as_str()))?;
                Some(JobOutcome::Failed {
                    exit_code: None,
                    message: format!(
                        "its pod cannot start: {reason}: {}",
                        waiting.message.unwrap_or_default()
                    ),
                })
            })
            .unwrap_or(JobOutcome::Running);
    };
    let last = pods
        .iter()
        .filter_map(|p| {
            let status = p.status.as_ref()?.container_statuses.as_ref()?.first()?.clone();
            let terminated = status.state?.terminated?;
            Some((terminated.finished_at.clone(), terminated))
        })
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, terminated)| terminated);
    // Only the line the server marked safe is quoted: the rest of a log tail may hold what a
    // Secret gave the pod (an env value, a user name in a refused login).
    let message = match last.as_ref().and_then(|t| t.message.as_deref()) {
        Some(tail) => orchestrator_contract::last_safe_line(tail)
            .map(str::to_string)
            .unwrap_or_else(|| {
                format!("its log is not quoted here, as it may hold values from Secrets: `kubectl logs job/{job_name}`")
            }),
        None => failed.message.clone().unwrap_or_default(),
    };
    JobOutcome::Failed {
        exit_code: last.map(|t| t.exit_code),
        message: message.trim().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::selector_labels;
    use crate::testing::{fixtures, valid};
    use serde_json::json;

    #[test]
    fn the_job_runs_the_new_image_schema_command_and_is_never_taken_for_a_server() {
        let cr = fixtures::minimal();
        let spec = valid(&cr);
        let job = build(&spec, SchemaJob::Check, 1, "hash");
        let template = job.spec.as_ref().unwrap().template.clone();
        let container = &template.spec.as_ref().unwrap().containers[0];
        assert_eq!(container.args, Some(vec!["schema".into(), "check".into()]));
        assert_eq!(container.image, Some(spec.wanted.image.clone()));
        assert!(container.readiness_probe.is_none() && container.ports.is_none());
        let labels = template.metadata.unwrap().labels.unwrap();
        assert!(selector_labels(&cr).iter().any(|(k, v)| labels.get(k) != Some(v)));
        assert_eq!(template.spec.unwrap().restart_policy.as_deref(), Some("Never"));
    }

    #[test]
    fn names_follow_the_release_and_fit_the_label_limit() {
        let mut cr = fixtures::minimal();
        let a = name(&cr, SchemaJob::Check, &valid(&cr).wanted, 1);
        assert_ne!(a, name(&cr, SchemaJob::Check, &valid(&cr).wanted, 2), "another schema");
        cr.spec.version = "9.9.9".into();
        let b = name(&cr, SchemaJob::Check, &valid(&cr).wanted, 1);
        assert_ne!(a, b);
        cr.metadata.name = Some("x".repeat(60));
        let long = name(&cr, SchemaJob::Migrate, &valid(&cr).wanted, 1);
        assert!(long.len() <= 63 && long.contains("-schema-migrate-"), "{long}");
    }

    fn job(condition: Option<(&str, &str)>) -> Job {
        let conditions: Vec<_> = condition
            .into_iter()
            .map(|(type_, message)| json!({"type": type_, "status": "True", "message": message}))
            .collect();
        serde_json::from_value(json!({"metadata": {"name": "prod-schema-check-1"},
                                      "status": {"conditions": conditions}}))
        .unwrap()
    }

    fn pod(exit_code: i32, finished: &str, message: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": format!("p-{finished}"), "labels": {"batch.kubernetes.io/job-name": "prod-schema-check-1"}},
            "status": {"containerStatuses": [{"name": "server", "image": "i", "imageID": "", "ready": false,
                "restartCount": 0, "state": {"terminated": {"exitCode": exit_code, "finishedAt": finished, "message": message}}}]}
        }))
        .unwrap()
    }

    #[test]
    fn outcome_reads_the_job_and_its_last_pod() {
        assert_eq!(outcome(&job(None), &[]), JobOutcome::Running);
        assert_eq!(outcome(&job(Some(("Complete", ""))), &[]), JobOutcome::Succeeded);
        let pods = [
            pod(1, "2026-01-01T00:00:00Z", "connection refused"),
            pod(
                10,
                "2026-01-01T00:01:00Z",
                "connecting as orchestrator\norchestrator-outcome: migration needed: database schema 1, version 2.0.0 needs 2\n",
            ),
        ];
        assert_eq!(
            outcome(&job(Some(("Failed", "matched rule"))), &pods),
            JobOutcome::Failed {
                exit_code: Some(10),
                message: "migration needed: database schema 1, version 2.0.0 needs 2".into()
            }
        );
        // A tail with no line marked safe is not quoted.
        let unmarked = [pod(
            1,
            "2026-01-01T00:00:00Z",
            "password authentication failed for user \"orchestrator\"",
        )];
        let JobOutcome::Failed { message, .. } = outcome(&job(Some(("Failed", "BackoffLimitExceeded"))), &unmarked)
        else {
            panic!("a failed Job is Failed")
        };
        assert!(
            !message.contains("orchestrator") && message.contains("kubectl logs job/prod-schema-check-1"),
            "{message}"
        );
        let mut succeeded = pod(0, "2026-01-01T00:02:00Z", "");
        succeeded.status.as_mut().unwrap().phase = Some("Succeeded".into());
        assert_eq!(
            outcome(&job(None), std::slice::from_ref(&succeeded)),
            JobOutcome::Succeeded,
            "a pod that exited 0 answers before the Job says Complete"
        );
        let mut earlier_job = job(None);
        earlier_job.metadata.uid = Some("job-2".into());
        succeeded
            .labels_mut()
            .insert("batch.kubernetes.io/controller-uid".into(), "job-1".into());
        assert_eq!(
            outcome(&earlier_job, &[succeeded]),
            JobOutcome::Running,
            "the pod of an earlier Job of the same name says nothing"
        );
        let unpullable: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "labels": {"batch.kubernetes.io/job-name": "prod-schema-check-1"}},
            "status": {"containerStatuses": [{"name": "server", "image": "i", "imageID": "", "ready": false,
                "restartCount": 0, "state": {"waiting": {"reason": "ErrImagePull", "message": "no such image"}}}]}
        }))
        .unwrap();
        assert_eq!(
            outcome(&job(None), &[unpullable]),
            JobOutcome::Failed {
                exit_code: None,
                message: "its pod cannot start: ErrImagePull: no such image".into()
            }
        );
        assert_eq!(
            outcome(&job(Some(("Failed", "DeadlineExceeded"))), &[]),
            JobOutcome::Failed {
                exit_code: None,
                message: "DeadlineExceeded".into()
            }
        );
    }
}
