//! Report: the status subresource and Events.

use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;

use crate::context::{Context, FIELD_MANAGER};
use crate::crd::{OrchestratorCluster, OrchestratorClusterStatus};
use crate::error::Result;

/// Reasons of the Events the operator publishes.
pub mod event_reasons {
    /// Owned objects were created or corrected.
    pub const APPLIED: &str = "Applied";
    /// The spec cannot be used; nothing changes until it is fixed.
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// The object cannot be read as an `OrchestratorCluster`.
    pub const MALFORMED: &str = "Malformed";
}

/// Writes `status` to the status subresource unless it is already there.
pub async fn update_status(
    client: &Client,
    cr: &OrchestratorCluster,
    status: &OrchestratorClusterStatus,
) -> Result<()> {
    if cr.status.as_ref() == Some(status) {
        return Ok(());
    }
    let api = Api::<OrchestratorCluster>::namespaced(client.clone(), &cr.namespace().unwrap_or_default());
    let patch = json!({
        "apiVersion": OrchestratorCluster::api_version(&()),
        "kind": OrchestratorCluster::kind(&()),
        "status": status,
    });
    api.patch_status(
        &cr.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
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
pub async fn publish(
    ctx: &Context,
    reference: &k8s_openapi::api::core::v1::ObjectReference,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(shorten(note, NOTE_LIMIT)),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(error) = ctx.recorder.publish(&event, reference).await {
        tracing::warn!(%error, reason, "could not publish event");
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
