//! The reconcile pipeline: `observe` → `plan` (pure) → `act` → `report`.

pub mod act;
pub mod observe;
pub mod plan;
pub mod report;

use std::sync::Arc;
use std::time::Instant;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::DynamicObject;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};

use crate::context::Context;
use crate::crd::OrchestratorCluster;
use crate::error::{Error, Result};
use crate::metrics::ClusterLabels;
use report::event_reasons;

fn object_key(obj: &DynamicObject) -> String {
    format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any())
}

/// Reconciles one `OrchestratorCluster`. The controller watches it as a `DynamicObject` so that
/// an object the operator cannot deserialize gets a warning Event instead of breaking the watch.
pub async fn reconcile(obj: Arc<DynamicObject>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    ctx.metrics.reconciles.inc();
    let result = reconcile_inner(&obj, &ctx).await;
    ctx.metrics.record_duration(started.elapsed());
    match &result {
        Ok(_) => ctx.reset_backoff(&object_key(&obj)),
        // Said on the resource too, not only in the operator's log: a missing permission or an
        // API refusal is something its owner can act on.
        Err(error) => {
            let reference = obj.object_ref(&kube::core::ApiResource::erase::<OrchestratorCluster>(&()));
            report::publish(
                &ctx,
                &reference,
                EventType::Warning,
                error.event_reason(),
                format!("reconcile failed, retrying with back-off: {error}"),
            )
            .await;
        }
    }
    result
}

async fn reconcile_inner(obj: &DynamicObject, ctx: &Context) -> Result<Action> {
    let ar = kube::core::ApiResource::erase::<OrchestratorCluster>(&());
    let cr: OrchestratorCluster = match obj.clone().try_parse() {
        Ok(cr) => cr,
        Err(error) => {
            let error = Error::Malformed(error.to_string());
            tracing::warn!(object = %object_key(obj), %error, "cannot read object; waiting for a change");
            ctx.metrics.record_failure(&error);
            report::publish(
                ctx,
                &obj.object_ref(&ar),
                EventType::Warning,
                event_reasons::MALFORMED,
                error.to_string(),
            )
            .await;
            return Ok(Action::await_change());
        }
    };
    if cr.meta().deletion_timestamp.is_some() {
        // Owned objects carry owner references: garbage collection removes them.
        return Ok(Action::await_change());
    }
    let reference = cr.object_ref(&());
    let now = Time(Timestamp::now());
    let (observed, database) = observe::observe(ctx, &cr).await?;
    let plan = match plan::plan(&cr, &observed, &ctx.settings, &now) {
        Ok(plan) => plan,
        Err(Error::InvalidSpec(spec_error)) => {
            tracing::warn!(object = %object_key(obj), error = %spec_error, "invalid spec; waiting for a change");
            ctx.metrics.record_failure(&Error::InvalidSpec(spec_error.clone()));
            report::update_status(&ctx.client, &cr, &plan::invalid_spec_status(&cr, &spec_error, &now)).await?;
            report::publish(
                ctx,
                &reference,
                EventType::Warning,
                event_reasons::INVALID_SPEC,
                spec_error.to_string(),
            )
            .await;
            return Ok(Action::await_change());
        }
        Err(other) => return Err(other),
    };
    if !plan.writes.is_empty() {
        act::apply_writes(&ctx.client, &cr.namespace().unwrap_or_default(), &plan.writes).await?;
        let summary = plan
            .writes
            .iter()
            .map(|w| {
                format!(
                    "{} {} {}",
                    if w.creates { "created" } else { "corrected" },
                    w.child.kind(),
                    w.child.name()
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        tracing::info!(object = %object_key(obj), %summary, "applied owned objects");
        report::publish(ctx, &reference, EventType::Normal, event_reasons::APPLIED, summary).await;
    }
    if let Some(database) = database {
        act::database_steps(&database, &plan).await?;
    }
    if let Some((pod, uid)) = &plan.evict {
        let namespace = cr.namespace().unwrap_or_default();
        tracing::info!(object = %object_key(obj), %pod, uid = uid.as_deref().unwrap_or("<none>"), "evicting");
        if !act::evict(&ctx.eviction_client, &namespace, pod, uid.clone()).await? {
            tracing::info!(object = %object_key(obj), %pod, "eviction refused by the PodDisruptionBudget for now; waiting");
        }
    }
    for event in &plan.events {
        let type_ = if event.warning {
            EventType::Warning
        } else {
            EventType::Normal
        };
        tracing::info!(object = %object_key(obj), reason = event.reason, note = %event.note, "event");
        report::publish(ctx, &reference, type_, event.reason, event.note.clone()).await;
    }
    let labels = ClusterLabels {
        namespace: cr.namespace().unwrap_or_default(),
        cluster: cr.name_any(),
    };
    ctx.metrics.record_cluster(&labels, plan.figures);
    report::update_status(&ctx.client, &cr, &plan.status).await?;
    // After the status write: a retried reconcile must not count the same stage twice.
    ctx.metrics
        .record_maintenance(&labels, plan.finished_stage.as_ref(), plan.step_done.as_ref());
    Ok(Action::requeue(plan.requeue))
}

/// Retry policy after a failed reconcile: exponential back-off per object.
pub fn error_policy(obj: Arc<DynamicObject>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.record_failure(error);
    let delay = ctx.next_backoff(&object_key(&obj));
    tracing::warn!(object = %object_key(&obj), %error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}
