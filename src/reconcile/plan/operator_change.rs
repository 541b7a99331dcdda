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

/// The hash of what in `spec` makes the pod template, the StatefulSet running `deployed`: the
/// spec without the fields that never reach the template (servers wanted, capacity, the roll's
/// gates, the canary, this policy), the deployed release's version and whether it is the
/// wanted release (the schema gate letting a release through is a change of the spec's).
pub(super) fn spec_hash(spec: &ValidSpec, deployed: &Release) -> String {
    let mut value = serde_json::to_value(&spec.cr.spec).unwrap_or(Value::Null);
    if let Some(object) = value.as_object_mut() {
        object.remove("replicas");
        object.remove("capacity");
        if let Some(maintenance) = object.get_mut("maintenance").and_then(Value::as_object_mut) {
            for gate in [
                "paused",
                "approval",
                "windows",
                "restartRequestedAt",
                "canary",
                "operatorChanges",
            ] {
                maintenance.remove(gate);
            }
        }
    }
    hash(&format!("{value}\n{}\n{}", deployed.version, *deployed == spec.wanted))
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
    let annotations = live.annotations();
    let template = template_hash(desired);
    let (want, have) = (
        serde_json::to_value(desired).unwrap_or(Value::Null),
        serde_json::to_value(live_template).unwrap_or(Value::Null),
    );
    let operators = match (
        annotations.get(SPEC_HASH_ANNOTATION),
        annotations.get(TEMPLATE_HASH_ANNOTATION),
    ) {
        (Some(written_spec), Some(written)) => written_spec == spec_hash && *written != template,
        // Written before these annotations: nothing says whose the difference is; the spec was
        // acted on before, so it is the operator's.
        _ => !is_contained(&want, &have),
    };
    if !operators {
        return OperatorChange::default();
    }
    let cr = spec.cr;
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
