//! Report: the status subresource, the Events of a plan and the per-cluster metrics, before the
//! plan is acted on; also
//! what a reconcile that cannot plan reports (an unusable spec, an unreadable object, a
//! failure).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::core::error_boundary::InvalidObject;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;

use super::Watched;
use super::plan::{Plan, invalid_spec_status, with_rejection};
use crate::context::{Context, FIELD_MANAGER};
use crate::crd::{OrchestratorCluster, OrchestratorClusterStatus, SpecError, object_key};
use crate::error::{Error, Result};
use crate::metrics::ClusterLabels;
use crate::rejections::Rejection;
use crate::vocabulary::Reason;

/// What became of a plan's status write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum StatusWrite {
    /// The status holds the plan's step: the plan may be acted on. `version` is the
    /// resourceVersion of the write (`None`: the status was already so, nothing written).
    Stored {
        /// The resourceVersion the write gave the resource.
        version: Option<String>,
    },
    /// The resource changed since it was read (a newer status, a new spec): the plan was made
    /// from a stale view and is dropped; the reconcile looks again a second later.
    Stale,
    /// The resource is gone.
    Gone,
}

/// Reports a plan before it is acted on: the status first (the step it asks for is stored
/// before any drain or eviction happens), then its Events and the cluster's metrics.
///
/// A plan that touches servers (a drain asked or withdrawn, an eviction, a row removed) is
/// stored with the resourceVersion it was made from as a precondition: a plan made from a
/// stale cache, or whose status write fails, acts on nothing.
pub(crate) async fn report(ctx: &Context, cr: &OrchestratorCluster, plan: &Plan) -> Result<StatusWrite> {
    let object = object_key(cr);
    let precondition = plan.touches_servers().then(|| cr.resource_version()).flatten();
    let written = match update_status(ctx, cr, &plan.status, precondition.as_deref()).await {
        // Deleted while this reconcile ran (after the watch's Delete made the operator forget
        // it): forget again what this reconcile put back.
        Err(Error::Kube(kube::Error::Api(status))) if status.code == 404 => {
            ctx.forget(cr);
            return Ok(StatusWrite::Gone);
        }
        Err(Error::Kube(kube::Error::Api(status))) if status.code == 409 && precondition.is_some() => {
            tracing::info!(%object, "the resource changed since it was read; planning again from the new one");
            return Ok(StatusWrite::Stale);
        }
        other => other?,
    };
    let reference = cr.object_ref(&());
    for event in &plan.events {
        let type_ = if event.warning {
            EventType::Warning
        } else {
            EventType::Normal
        };
        tracing::info!(%object, reason = %event.reason, note = %event.note, "event");
        publish(ctx, &reference, type_, event.reason, event.note.clone()).await;
    }
    let labels = ClusterLabels::of(cr);
    ctx.metrics.record_cluster(&labels, plan.figures);
    // Counted once: a retried reconcile reads the stage this write stored.
    ctx.metrics
        .record_maintenance(&labels, plan.finished_stage.as_ref(), plan.step_done.as_ref());
    Ok(StatusWrite::Stored { version: written })
}

/// An owned object the API server refused: the plan's status with `Ready=False` /
/// `ChildRejected` naming it, written unless it says so already.
pub(crate) async fn rejected(
    ctx: &Context,
    cr: &OrchestratorCluster,
    plan: &Plan,
    rejection: &Rejection,
    now: &Time,
) -> Result<()> {
    let status = with_rejection(plan.status.clone(), cr, rejection, now);
    if status != plan.status {
        // The plan's own write is not in `cr` yet: compare with it, not with `cr`.
        let mut written = cr.clone();
        written.status = Some(plan.status.clone());
        update_status(ctx, &written, &status, None).await?;
    }
    Ok(())
}

/// A spec the operator cannot use: the `InvalidSpec` status and a Warning Event; nothing else
/// changes until the spec does.
pub(crate) async fn invalid_spec(
    ctx: &Context,
    cr: &OrchestratorCluster,
    error: &SpecError,
    now: &Time,
) -> Result<Action> {
    tracing::warn!(object = %object_key(cr), %error, "invalid spec; waiting for a change");
    ctx.metrics.record_failure(&Error::InvalidSpec(error.clone()));
    update_status(ctx, cr, &invalid_spec_status(cr, error, now), None).await?;
    publish(
        ctx,
        &cr.object_ref(&()),
        EventType::Warning,
        Reason::InvalidSpec,
        error.to_string(),
    )
    .await;
    Ok(Action::await_change())
}

/// An object that cannot be read as an `OrchestratorCluster`: a Warning Event on it, and a wait
/// for a change.
pub(crate) async fn malformed(ctx: &Context, obj: &Watched, invalid: &InvalidObject) -> Result<Action> {
    let error = Error::Malformed(invalid.error.clone());
    tracing::warn!(object = %object_key(obj), %error, "cannot read object; waiting for a change");
    ctx.metrics.record_failure(&error);
    publish(
        ctx,
        &obj.object_ref(&()),
        EventType::Warning,
        Reason::Malformed,
        error.to_string(),
    )
    .await;
    Ok(Action::await_change())
}

/// A failed reconcile, said on the resource (a missing permission or an API refusal is
/// something its owner can act on).
pub(crate) async fn failed(ctx: &Context, obj: &Watched, error: &Error) {
    publish(
        ctx,
        &obj.object_ref(&()),
        EventType::Warning,
        error.event_reason(),
        format!("reconcile failed, retrying with back-off: {error}"),
    )
    .await;
}

/// Writes `status` to the status subresource unless it is already there. With
/// `resource_version`, the write is refused (409) unless the resource still has that version,
/// and it is made even when the status looks unchanged: it proves the view is current. The
/// resourceVersion the write gave the resource, if it wrote.
async fn update_status(
    ctx: &Context,
    cr: &OrchestratorCluster,
    status: &OrchestratorClusterStatus,
    resource_version: Option<&str>,
) -> Result<Option<String>> {
    if resource_version.is_none() && cr.status.as_ref() == Some(status) {
        return Ok(None);
    }
    ctx.leadership.ensure()?;
    let api = Api::<OrchestratorCluster>::namespaced(ctx.client.clone(), &cr.namespace().unwrap_or_default());
    let mut patch = json!({
        "apiVersion": OrchestratorCluster::api_version(&()),
        "kind": OrchestratorCluster::kind(&()),
        "status": status,
    });
    if let Some(version) = resource_version {
        patch["metadata"] = json!({"resourceVersion": version});
    }
    let written = api
        .patch_status(
            &cr.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
    Ok(written.resource_version())
}

/// Bytes the API server accepts in an Event's note.
const NOTE_LIMIT: usize = 1024;

/// `note` cut to `limit` bytes on a character boundary, keeping its end (a log tail's last
/// lines say the most); the full text stays in the status.
fn shorten(note: String, limit: usize) -> String {
    if note.len() <= limit {
        return note;
    }
    let marker = "…";
    let mut start = note.len() - (limit - marker.len());
    while !note.is_char_boundary(start) {
        start += 1;
    }
    format!("{marker}{}", &note[start..])
}

/// Publishes an Event about `reference` (its note cut to what the API server accepts). A
/// failure to publish is logged, not fatal: Events are best-effort in Kubernetes.
pub(crate) async fn publish(
    ctx: &Context,
    reference: &k8s_openapi::api::core::v1::ObjectReference,
    type_: EventType,
    reason: Reason,
    note: String,
) {
    // Events are writes too: a replica that does not lead says nothing.
    if !ctx.leadership.is_leading() {
        return;
    }
    let event = Event {
        type_,
        reason: reason.as_str().into(),
        note: Some(shorten(note, NOTE_LIMIT)),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(error) = ctx.recorder.publish(&event, reference).await {
        tracing::warn!(%error, %reason, "could not publish event");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_notes_keep_their_end_within_the_limit() {
        assert_eq!(shorten("short".into(), NOTE_LIMIT), "short");
        let long = format!("{}the last line", "é".repeat(2000));
        let cut = shorten(long, NOTE_LIMIT);
        assert!(cut.len() <= NOTE_LIMIT && cut.ends_with("the last line") && cut.starts_with('…'));
    }
}
