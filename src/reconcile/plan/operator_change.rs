//! Operator changes: a change of the servers' pod template that comes from the operator itself
//! (a new operator version, a changed default, `--server-image-repository`), not from the
//! cluster's spec. Held by `maintenance.operatorChanges` so that upgrading the operator does not
//! roll every cluster at once. Pure; does not need a client.
//!
//! The StatefulSet carries two annotations the operator writes with each template:
//! `orchestrator.dev/spec-hash`, of what in the spec makes the template (with the release the
//! schema gate or a canary lets through), and `orchestrator.dev/template-hash`, of the template
//! written. A template that would differ under the same spec hash is the operator's change.
//! A StatefulSet written by an operator before these annotations has neither: a template that
//! would differ is then taken as the operator's too (the annotations are written with the held
//! template, so this is said once).

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::crd::{OPERATOR_CHANGE_ANNOTATION, OperatorChanges, PendingOperatorChange};
use crate::drift::{differences, is_contained};
use crate::release::Release;
use crate::validate::ValidSpec;

/// StatefulSet annotation: the hash of what in the spec made its pod template.
pub(crate) const SPEC_HASH_ANNOTATION: &str = "orchestrator.dev/spec-hash";
/// StatefulSet annotation: the hash of the pod template the operator wrote.
pub(crate) const TEMPLATE_HASH_ANNOTATION: &str = "orchestrator.dev/template-hash";

/// Paths listed in `status.pendingOperatorChange.changes`.
const LISTED_CHANGES: usize = 10;

fn hash(text: &str) -> String {
    Sha256::digest(text)[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// The hash of what in `spec` makes the pod template and the servers' settings, the
/// StatefulSet running `deployed`: `version`, `image`, `database`, `template` and
/// `maintenance.drainTimeout` (an allowlist: a field a later operator adds elsewhere in the spec
/// is no change of the template), without empty values (a field added with an empty default is
/// none either), with the deployed release's version and whether it is the wanted release (a
/// canary's rollback is a change of the spec's).
pub(super) fn spec_hash(spec: &ValidSpec, deployed: &Release) -> String {
    let cr = &spec.cr.spec;
    let mut value = serde_json::json!({
        "version": cr.version,
        "image": cr.image,
        "database": cr.database,
        "template": cr.template,
        "drainTimeout": cr.maintenance.drain_timeout,
        // An explicit `[]` (no spread) is not the unset default (the zone spread), though
        // pruning would make them one.
        "noTopologySpread": cr.template.topology_spread_constraints.as_ref().is_some_and(Vec::is_empty).then_some(true),
    });
    prune(&mut value);
    hash(&format!("{value}\n{}\n{}", deployed.version, *deployed == spec.wanted))
}

/// `value` without nulls and empty lists or maps, at any depth.
fn prune(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.values_mut().for_each(prune);
            map.retain(|_, v| !is_empty(v));
        }
        Value::Array(items) => items.iter_mut().for_each(prune),
        _ => {}
    }
}

fn is_empty(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Object(map) => map.is_empty(),
        Value::Array(items) => items.is_empty(),
        _ => false,
    }
}

/// The hash of a pod template.
pub(super) fn template_hash(template: &PodTemplateSpec) -> String {
    hash(&serde_json::to_string(template).unwrap_or_default())
}

/// The operator's own change of the template, if there is one.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct OperatorChange {
    /// `status.pendingOperatorChange`: the change while it is held.
    pub(super) pending: Option<PendingOperatorChange>,
    /// The live template is kept (with the annotations to write beside it).
    pub(super) hold: Option<(String, String)>,
}

/// Whether `desired` (under spec hash `spec_hash`) differs from the `live` StatefulSet's
/// template by the operator's doing, and whether `maintenance.operatorChanges` lets it through
/// now.
pub(super) fn judge(
    spec: &ValidSpec,
    live: Option<&StatefulSet>,
    desired: &PodTemplateSpec,
    spec_hash: &str,
    now: Timestamp,
) -> OperatorChange {
    let Some(live) = live else {
        return OperatorChange::default();
    };
    let Some(live_template) = live.spec.as_ref().map(|s| &s.template) else {
        return OperatorChange::default();
    };
    let cr = spec.cr;
    let annotations = live.annotations();
    let template = template_hash(desired);
    let (want, have) = (
        serde_json::to_value(desired).unwrap_or(Value::Null),
        serde_json::to_value(live_template).unwrap_or(Value::Null),
    );
    let acted_on = cr.status.as_ref().and_then(|s| s.observed_generation) == cr.metadata.generation;
    let operators = !is_contained(&want, &have)
        && match (
            annotations.get(SPEC_HASH_ANNOTATION),
            annotations.get(TEMPLATE_HASH_ANNOTATION),
        ) {
            (Some(written_spec), Some(written)) => written_spec == spec_hash && *written != template,
            // Written before these annotations: nothing says whose the difference is. With the
            // current generation acted on before, it is the operator's; a spec changed since
            // (with the operator upgraded) goes through as a change of the spec.
            _ => acted_on,
        };
    if !operators {
        return OperatorChange::default();
    }
    let maintenance = &cr.spec.maintenance;
    let policy = maintenance
        .operator_changes
        .unwrap_or(if maintenance.windows.is_empty() {
            OperatorChanges::Immediate
        } else {
            OperatorChanges::NextWindow
        });
    let waiting_for = match policy {
        OperatorChanges::Immediate => None,
        OperatorChanges::NextWindow if maintenance.windows.is_empty() || spec.calendar.is_open(now) => None,
        OperatorChanges::NextWindow => Some(format!(
            "maintenance.operatorChanges is NextWindow: it is rolled out once a maintenance window is open{}",
            spec.calendar
                .next_opening(now)
                .map(|at| format!(" (the next opens at {at})"))
                .unwrap_or_default()
        )),
        OperatorChanges::Manual if cr.annotations().get(OPERATOR_CHANGE_ANNOTATION) == Some(&template) => None,
        OperatorChanges::Manual => Some(format!(
            "maintenance.operatorChanges is Manual: `kubectl orc approve {name}` (or `kubectl -n {} annotate orc {name} {OPERATOR_CHANGE_ANNOTATION}={template} --overwrite`) rolls it out",
            cr.namespace().unwrap_or_default(),
            name = cr.name_any()
        )),
    };
    let Some(waiting_for) = waiting_for else {
        return OperatorChange::default();
    };
    let previous = cr
        .status
        .as_ref()
        .and_then(|s| s.pending_operator_change.as_ref())
        .filter(|p| p.template_hash == template);
    let mut changes: Vec<String> = differences(&want, &have);
    if changes.len() > LISTED_CHANGES {
        let more = changes.len() - LISTED_CHANGES;
        changes.truncate(LISTED_CHANGES);
        changes.push(format!("and {more} more"));
    }
    OperatorChange {
        pending: Some(PendingOperatorChange {
            since: previous.map_or_else(|| Time(now), |p| p.since.clone()),
            template_hash: template,
            changes,
            waiting_for,
        }),
        // The held template keeps the hashes it was written with (or gets this spec's, and
        // the live template's, when it had none): the change stays visible as the operator's.
        hold: Some((
            annotations
                .get(SPEC_HASH_ANNOTATION)
                .cloned()
                .unwrap_or_else(|| spec_hash.to_string()),
            annotations
                .get(TEMPLATE_HASH_ANNOTATION)
                .cloned()
                .unwrap_or_else(|| template_hash(live_template)),
        )),
    }
}
