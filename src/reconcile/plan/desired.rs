//! Desired objects and drift: what every owned object must look like after the decisions, and
//! which of them differ from the live ones (only those are written). Pure; does not need a
//! client.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, PodTemplateSpec, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use serde::Serialize;
use serde_json::Value;

use super::decide::Decisions;
use super::inputs::Inputs;
use super::operator_change::{self, SPEC_HASH_ANNOTATION, TEMPLATE_HASH_ANNOTATION};
use crate::crd::PendingOperatorChange;
use crate::database::DatabaseState;
use crate::drift::is_contained;
use crate::error::{Error, Result};
use crate::reconcile::observe::Observed;
use crate::release::Release;
use crate::resources::{CONFIG_HASH_ANNOTATION, configmap, job, pdb, service, statefulset};
use crate::validate::ValidSpec;
use crate::vocabulary::Reason;

/// An owned object to server-side apply.
// At most six live per reconcile, so the variants' size difference costs nothing.
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
    /// A schema check or migrate Job of a version change.
    Job(Job),
}

impl Child {
    /// Kind of the object.
    pub fn kind(&self) -> &'static str {
        match self {
            Child::ConfigMap(_) => "ConfigMap",
            Child::Service(_) => "Service",
            Child::PodDisruptionBudget(_) => "PodDisruptionBudget",
            Child::StatefulSet(_) => "StatefulSet",
            Child::Job(_) => "Job",
        }
    }

    /// Name of the object.
    pub fn name(&self) -> String {
        match self {
            Child::ConfigMap(o) => o.name_any(),
            Child::Service(o) => o.name_any(),
            Child::PodDisruptionBudget(o) => o.name_any(),
            Child::StatefulSet(o) => o.name_any(),
            Child::Job(o) => o.name_any(),
        }
    }

    fn to_value(&self) -> Result<Value> {
        match self {
            Child::ConfigMap(o) => value_of(self.kind(), o),
            Child::Service(o) => value_of(self.kind(), o),
            Child::PodDisruptionBudget(o) => value_of(self.kind(), o),
            Child::StatefulSet(o) => value_of(self.kind(), o),
            Child::Job(o) => value_of(self.kind(), o),
        }
    }
}

fn value_of(kind: &'static str, object: &impl Serialize) -> Result<Value> {
    serde_json::to_value(object).map_err(|source| Error::Serialization { kind, source })
}

fn live<T: Serialize>(object: &Option<T>) -> Result<Option<Value>> {
    object.as_ref().map(|o| value_of("live object", o)).transpose()
}

/// A write the reconcile must make, and whether it creates the object or corrects drift.
#[derive(Clone, Debug, PartialEq)]
pub struct Write {
    /// The desired object.
    pub child: Child,
    /// True when the object does not exist yet.
    pub creates: bool,
}

/// The owned objects that are missing or differ from what the decisions want, in a fixed
/// order (ConfigMap, Services, PDB, StatefulSet, then a schema Job). Fails only if an object
/// cannot be serialized for the comparison.
pub(super) fn writes(
    spec: &ValidSpec,
    observed: &Observed,
    inputs: &Inputs,
    decisions: &Decisions,
    now: Timestamp,
) -> Result<(Vec<Write>, Option<PendingOperatorChange>)> {
    let cr = spec.cr;
    let configmap = configmap::build(spec);
    let config_hash = configmap::data_hash(&configmap);
    let release = deployed_release(spec, decisions, inputs.running_release.as_ref());
    let mut statefulset = statefulset::build(spec, release, decisions.capacity.replicas, &config_hash);
    let live_statefulset = observed.statefulset.as_ref();
    let live_annotations = live_statefulset.map(|s| s.annotations().clone()).unwrap_or_default();
    let spec_hash = operator_change::spec_hash(spec, release);
    if live_annotations
        .get(SPEC_HASH_ANNOTATION)
        .is_none_or(|written| *written == spec_hash)
    {
        adopt_zone_spread_with_other_changes(&mut statefulset, spec, live_statefulset)?;
    }
    let pending;
    // Under `approval: Manual`, a generation not approved yet does not reach the pod template
    // while a step is in progress: the step's replacement would be made from it.
    let unapproved = decisions
        .gates
        .iter()
        .any(|hold| hold.reason == Reason::AwaitingApproval);
    let live_hashes = [SPEC_HASH_ANNOTATION, TEMPLATE_HASH_ANNOTATION].map(|key| live_annotations.get(key).cloned());
    let hashes = if let Some(live) = live_statefulset.and_then(|s| s.spec.as_ref())
        && unapproved
        && inputs.previous_step.is_some()
    {
        // Held with the hashes it was written with; an operator change held before stays said.
        set_template(&mut statefulset, &live.template);
        pending = cr.status.as_ref().and_then(|s| s.pending_operator_change.clone());
        live_hashes
    } else {
        let desired = statefulset
            .spec
            .as_ref()
            .map(|s| s.template.clone())
            .unwrap_or_default();
        let change = operator_change::judge(spec, live_statefulset, &desired, &spec_hash, now);
        pending = change.pending;
        let template_hash = operator_change::template_hash(&desired);
        match (change.hold, live_statefulset.and_then(|s| s.spec.as_ref())) {
            (Some((held_spec, held_template)), Some(live)) => {
                set_template(&mut statefulset, &live.template);
                [Some(held_spec), Some(held_template)]
            }
            // The same template keeps the hashes it was written with (a spec whose new release
            // waits for its schema check has not reached it yet); a new one is written with
            // this spec's.
            _ if live_hashes[0].is_some() && live_hashes[1].as_ref() == Some(&template_hash) => live_hashes,
            _ => [Some(spec_hash), Some(template_hash)],
        }
    };
    let annotations = statefulset.metadata.annotations.get_or_insert_default();
    for (key, value) in [SPEC_HASH_ANNOTATION, TEMPLATE_HASH_ANNOTATION].into_iter().zip(hashes) {
        if let Some(value) = value {
            annotations.insert(key.to_string(), value);
        }
    }
    // Jobs run only with the database ready, so its schema version is known.
    let schema_job = match (decisions.upgrade.run_job, &observed.database) {
        (Some(kind), DatabaseState::Ready { schema_version, .. }) => {
            Some(job::build(spec, kind, *schema_version, &config_hash))
        }
        _ => None,
    };
    // The servers' settings go with the template that names them: a held template (an operator
    // change, an unapproved generation) keeps the ConfigMap it was made with, or a server
    // started meanwhile would read settings its template does not expect.
    let template_config = statefulset
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.annotations.as_ref())
        .and_then(|a| a.get(CONFIG_HASH_ANNOTATION))
        .cloned();
    let configmap_held = observed.configmap.is_some() && template_config.as_deref() != Some(config_hash.as_str());
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
    let new_job = schema_job.map(|job| (Child::Job(job), None));
    for (child, live) in desired.into_iter().chain(new_job) {
        if configmap_held && matches!(child, Child::ConfigMap(_)) {
            continue;
        }
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
    Ok((writes, pending))
}

/// The default zone spread enters a live StatefulSet that has none only with another change
/// of its pod template: an operator upgrade that brings the default replaces no server for it
/// alone (the next roll, of a version or a setting, carries it). Called only while the live
/// StatefulSet was written for this same spec (or carries no spec hash): a spec that changed
/// (a `topologySpreadConstraints: []` removed) gets the spread at once, as any change of the
/// spec; so does a spread the spec sets.
fn adopt_zone_spread_with_other_changes(
    statefulset: &mut StatefulSet,
    spec: &ValidSpec,
    live: Option<&StatefulSet>,
) -> Result<()> {
    let Some(live) = live.and_then(|s| s.spec.as_ref()) else {
        return Ok(());
    };
    let live_has_none = live
        .template
        .spec
        .as_ref()
        .is_none_or(|p| p.topology_spread_constraints.is_none());
    if spec.cr.spec.template.topology_spread_constraints.is_some() || !live_has_none {
        return Ok(());
    }
    let Some(desired) = statefulset.spec.as_mut() else {
        return Ok(());
    };
    let mut without = desired.template.clone();
    if let Some(pod) = without.spec.as_mut() {
        pod.topology_spread_constraints = None;
    }
    if is_contained(
        &value_of("pod template", &without)?,
        &value_of("live pod template", &live.template)?,
    ) {
        desired.template = without;
    }
    Ok(())
}

fn set_template(statefulset: &mut StatefulSet, template: &PodTemplateSpec) {
    if let Some(spec) = statefulset.spec.as_mut() {
        spec.template = template.clone();
    }
}

/// The release the StatefulSet must run: a failed canary's previous release, else the wanted
/// one once the schema gate lets it through, the running one until then.
fn deployed_release<'a>(spec: &'a ValidSpec, decisions: &'a Decisions, running: Option<&'a Release>) -> &'a Release {
    if let Some(previous) = &decisions.canary.rollback_to {
        return previous;
    }
    match (decisions.upgrade.release_ready, running) {
        (false, Some(running)) => running,
        _ => &spec.wanted,
    }
}
