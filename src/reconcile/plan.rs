//! Plan: from the resource and what was observed, the writes to make and the status to report.
//! A pure function, unit-tested on plain structs.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use serde::Serialize;
use serde_json::Value;

use super::observe::Observed;
use crate::conditions::{condition, reasons, types};
use crate::crd::{OrchestratorCluster, OrchestratorClusterStatus, Phase, SpecError};
use crate::drift::is_contained;
use crate::error::{Error, Result};
use crate::resources::{BuildSettings, configmap, pdb, selector_string, service, statefulset};

/// An owned object to server-side apply.
// At most five live per reconcile, so the variants' size difference costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum Child {
    /// Server settings.
    ConfigMap(ConfigMap),
    /// Headless or client Service.
    Service(Service),
    /// The disruption budget.
    PodDisruptionBudget(PodDisruptionBudget),
    /// The servers.
    StatefulSet(StatefulSet),
}

impl Child {
    /// Kind of the object.
    pub fn kind(&self) -> &'static str {
        match self {
            Child::ConfigMap(_) => "ConfigMap",
            Child::Service(_) => "Service",
            Child::PodDisruptionBudget(_) => "PodDisruptionBudget",
            Child::StatefulSet(_) => "StatefulSet",
        }
    }

    /// Name of the object.
    pub fn name(&self) -> String {
        match self {
            Child::ConfigMap(o) => o.name_any(),
            Child::Service(o) => o.name_any(),
            Child::PodDisruptionBudget(o) => o.name_any(),
            Child::StatefulSet(o) => o.name_any(),
        }
    }

    fn to_value(&self) -> Result<Value> {
        match self {
            Child::ConfigMap(o) => value_of(self.kind(), o),
            Child::Service(o) => value_of(self.kind(), o),
            Child::PodDisruptionBudget(o) => value_of(self.kind(), o),
            Child::StatefulSet(o) => value_of(self.kind(), o),
        }
    }
}

fn value_of(kind: &'static str, object: &impl Serialize) -> Result<Value> {
    serde_json::to_value(object).map_err(|source| Error::Serialization { kind, source })
}

/// A write the reconcile must make, and whether it creates the object or corrects drift.
#[derive(Clone, Debug, PartialEq)]
pub struct Write {
    /// The desired object.
    pub child: Child,
    /// True when the object does not exist yet.
    pub creates: bool,
}

/// What a reconcile should do.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// Owned objects that are missing or differ from what the spec wants.
    pub writes: Vec<Write>,
    /// The status to report.
    pub status: OrchestratorClusterStatus,
}

/// Plans the reconcile of `cr`. Fails only on a spec the operator cannot use.
pub fn plan(cr: &OrchestratorCluster, observed: &Observed, settings: &BuildSettings, now: &Time) -> Result<Plan> {
    let configmap = configmap::build(cr)?;
    let config_hash = configmap::data_hash(&configmap);
    let statefulset = statefulset::build(cr, settings, cr.spec.replicas, &config_hash)?;
    let desired: [(Child, Option<Value>); 5] = [
        (Child::ConfigMap(configmap), live(&observed.configmap)?),
        (
            Child::Service(service::build_headless(cr)),
            live(&observed.headless_service)?,
        ),
        (
            Child::Service(service::build_client(cr)),
            live(&observed.client_service)?,
        ),
        (Child::PodDisruptionBudget(pdb::build(cr)), live(&observed.pdb)?),
        (Child::StatefulSet(statefulset), live(&observed.statefulset)?),
    ];
    let mut writes = Vec::new();
    for (child, live) in desired {
        let in_sync = match &live {
            Some(live) => is_contained(&child.to_value()?, live),
            None => false,
        };
        if !in_sync {
            writes.push(Write {
                child,
                creates: live.is_none(),
            });
        }
    }
    Ok(Plan {
        writes,
        status: status(cr, observed, now),
    })
}

fn live<T: Serialize>(object: &Option<T>) -> Result<Option<Value>> {
    object.as_ref().map(|o| value_of("live object", o)).transpose()
}

/// The status of a cluster whose StatefulSet is as observed.
pub fn status(cr: &OrchestratorCluster, observed: &Observed, now: &Time) -> OrchestratorClusterStatus {
    let previous = cr.status.clone().unwrap_or_default();
    let generation = cr.metadata.generation;
    let wanted = cr.spec.replicas;
    let sts = observed.statefulset.as_ref();
    let sts_status = sts.and_then(|s| s.status.clone()).unwrap_or_default();
    let sts_observed = sts.is_some_and(|s| sts_status.observed_generation >= s.metadata.generation);
    let replicas = sts_status.replicas;
    let ready = sts_status.ready_replicas.unwrap_or(0);
    let updated = sts_status.updated_replicas.unwrap_or(0);
    let settled = sts_observed && replicas == wanted && ready >= wanted && updated >= wanted;

    let phase = if settled {
        Phase::Ready
    } else if ready == 0 {
        Phase::Pending
    } else {
        Phase::Scaling
    };
    let (ready_reason, ready_message) = if settled {
        (
            reasons::ALL_SERVERS_JOINED,
            format!("{ready} of {wanted} servers ready"),
        )
    } else if sts.is_none() {
        (
            reasons::STATEFULSET_PENDING,
            "the StatefulSet of servers is being created".to_string(),
        )
    } else {
        (reasons::SERVERS_NOT_READY, format!("{ready} of {wanted} servers ready"))
    };
    let (progress_reason, progress_message) = if settled {
        (reasons::STABLE, "nothing to change".to_string())
    } else {
        (
            reasons::SCALING,
            format!("{replicas} server pods exist, {wanted} wanted, {ready} ready"),
        )
    };
    let conditions = vec![
        condition(
            &previous.conditions,
            types::READY,
            settled,
            ready_reason,
            ready_message,
            generation,
            now,
        ),
        condition(
            &previous.conditions,
            types::PROGRESSING,
            !settled,
            progress_reason,
            progress_message,
            generation,
            now,
        ),
        condition(
            &previous.conditions,
            types::DEGRADED,
            false,
            reasons::AS_EXPECTED,
            "",
            generation,
            now,
        ),
    ];
    OrchestratorClusterStatus {
        observed_generation: generation,
        phase,
        replicas,
        ready_replicas: ready,
        selector: Some(selector_string(cr)),
        current_version: if settled {
            Some(cr.spec.version.clone())
        } else {
            previous.current_version.clone()
        },
        target_version: Some(cr.spec.version.clone()),
        conditions,
        ..previous
    }
}

/// The status of a cluster whose spec cannot be used: nothing is changed until the spec is.
pub fn invalid_spec_status(cr: &OrchestratorCluster, error: &SpecError, now: &Time) -> OrchestratorClusterStatus {
    let previous = cr.status.clone().unwrap_or_default();
    let generation = cr.metadata.generation;
    let message = error.to_string();
    OrchestratorClusterStatus {
        observed_generation: generation,
        phase: Phase::Blocked,
        conditions: vec![
            condition(
                &previous.conditions,
                types::READY,
                false,
                reasons::INVALID_SPEC,
                message.clone(),
                generation,
                now,
            ),
            condition(
                &previous.conditions,
                types::PROGRESSING,
                false,
                reasons::INVALID_SPEC,
                message.clone(),
                generation,
                now,
            ),
            condition(
                &previous.conditions,
                types::DEGRADED,
                true,
                reasons::INVALID_SPEC,
                message,
                generation,
                now,
            ),
        ],
        ..previous
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conditions::{find, status::TRUE};
    use crate::resources::fixtures;
    use k8s_openapi::api::apps::v1::StatefulSetStatus;
    use k8s_openapi::jiff::Timestamp;

    fn now() -> Time {
        Time(Timestamp::from_second(1_800_000_000).unwrap())
    }

    /// What the API server would return after applying every write of `plan`, with the
    /// StatefulSet reporting `ready` ready pods.
    fn applied(plan: &Plan, ready: i32) -> Observed {
        let mut observed = Observed::default();
        for write in &plan.writes {
            match write.child.clone() {
                Child::ConfigMap(o) => observed.configmap = Some(o),
                Child::Service(o) if o.name_any().ends_with("-servers") => observed.headless_service = Some(o),
                Child::Service(o) => observed.client_service = Some(o),
                Child::PodDisruptionBudget(o) => observed.pdb = Some(o),
                Child::StatefulSet(mut o) => {
                    o.metadata.generation = Some(1);
                    o.status = Some(StatefulSetStatus {
                        observed_generation: Some(1),
                        replicas: o.spec.as_ref().unwrap().replicas.unwrap(),
                        ready_replicas: Some(ready),
                        updated_replicas: Some(ready),
                        ..StatefulSetStatus::default()
                    });
                    observed.statefulset = Some(o);
                }
            }
        }
        observed
    }

    #[test]
    fn fresh_cluster_creates_every_owned_object() {
        let cr = fixtures::minimal();
        let plan = plan(&cr, &Observed::default(), &BuildSettings::default(), &now()).unwrap();
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
        assert_eq!(plan.status.phase, Phase::Pending);
        let ready = find(&plan.status.conditions, types::READY).unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", reasons::STATEFULSET_PENDING)
        );
        assert_eq!(
            plan.status.selector.as_deref(),
            Some("app.kubernetes.io/instance=minimal,app.kubernetes.io/name=orchestrator-server")
        );
    }

    #[test]
    fn unchanged_cluster_needs_no_writes_and_reports_ready() {
        let cr = fixtures::full();
        let first = plan(&cr, &Observed::default(), &BuildSettings::default(), &now()).unwrap();
        let observed = applied(&first, 4);
        let second = plan(&cr, &observed, &BuildSettings::default(), &now()).unwrap();
        assert_eq!(second.writes, vec![]);
        assert_eq!(second.status.phase, Phase::Ready);
        assert_eq!(second.status.ready_replicas, 4);
        assert_eq!(second.status.current_version.as_deref(), Some("1.0.0"));
        assert_eq!(find(&second.status.conditions, types::READY).unwrap().status, TRUE);
    }

    #[test]
    fn hand_edits_are_reverted_and_only_the_edited_object_is_written() {
        let cr = fixtures::minimal();
        let first = plan(&cr, &Observed::default(), &BuildSettings::default(), &now()).unwrap();
        let mut observed = applied(&first, 3);
        observed.pdb = None;
        observed.statefulset.as_mut().unwrap().spec.as_mut().unwrap().replicas = Some(9);
        let second = plan(&cr, &observed, &BuildSettings::default(), &now()).unwrap();
        let writes: Vec<_> = second.writes.iter().map(|w| (w.child.kind(), w.creates)).collect();
        assert_eq!(writes, vec![("PodDisruptionBudget", true), ("StatefulSet", false)]);
    }

    #[test]
    fn partly_ready_cluster_is_scaling() {
        let cr = fixtures::minimal();
        let first = plan(&cr, &Observed::default(), &BuildSettings::default(), &now()).unwrap();
        let second = plan(&cr, &applied(&first, 2), &BuildSettings::default(), &now()).unwrap();
        assert_eq!(second.status.phase, Phase::Scaling);
        let ready = find(&second.status.conditions, types::READY).unwrap();
        assert_eq!(ready.message, "2 of 3 servers ready");
        assert_eq!(
            find(&second.status.conditions, types::PROGRESSING).unwrap().status,
            TRUE
        );
        assert_eq!(second.status.current_version, None);
    }

    #[test]
    fn unusable_spec_is_an_error_with_the_field() {
        let mut cr = fixtures::minimal();
        cr.spec.maintenance.drain_timeout = "10 minutes".into();
        let err = plan(&cr, &Observed::default(), &BuildSettings::default(), &now()).unwrap_err();
        let Error::InvalidSpec(spec_error) = err else {
            panic!("wrong error {err}")
        };
        assert_eq!(spec_error.field, "spec.maintenance.drainTimeout");
        let status = invalid_spec_status(&cr, &spec_error, &now());
        assert_eq!(status.phase, Phase::Blocked);
        let degraded = find(&status.conditions, types::DEGRADED).unwrap();
        assert_eq!(
            (degraded.status.as_str(), degraded.reason.as_str()),
            ("True", reasons::INVALID_SPEC)
        );
        assert!(degraded.message.contains("drainTimeout"));
    }
}
