//! The reconcile pipeline, one module per step:
//!
//! ```text
//! validate (pure) → observe → plan (pure) → report → act
//! ```
//!
//! `validate` comes first: it needs only the resource, `observe` needs the release it wants,
//! and a spec that cannot be used costs no API or database read. A spec error is reported here
//! and nowhere else; only transport failures are errors. `report` comes before `act`: the step
//! a plan asks for is stored in the status (against the resourceVersion it was planned from)
//! before any server is drained or evicted, so a failed status write or a stale read acts on
//! nothing.

pub(crate) mod act;
pub(crate) mod observe;
pub(crate) mod plan;
pub(crate) mod report;

use std::sync::Arc;
use std::time::Instant;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::Resource;
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;

use crate::context::Context;
use crate::crd::{OrchestratorCluster, object_key};
use crate::error::{Error, Result};
use crate::validate::{BuildSettings, validate};
use observe::Observed;
use plan::Plan;

/// The watched resource: an object that does not deserialize is kept (with its metadata) so
/// that it gets a Warning Event instead of breaking the watch.
pub type Watched = DeserializeGuard<OrchestratorCluster>;

/// Reconciles one `OrchestratorCluster`.
pub async fn reconcile(obj: Arc<Watched>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    ctx.metrics.reconciles.inc();
    let result = match &obj.0 {
        Ok(cr) => reconcile_cluster(cr, &ctx).await,
        Err(invalid) => report::malformed(&ctx, &obj, invalid).await,
    };
    ctx.metrics.record_duration(started.elapsed());
    match &result {
        Ok(_) => ctx.reset_backoff(&object_key(obj.as_ref())),
        // Said on the resource too, not only in the operator's log: a missing permission or an
        // API refusal is something its owner can act on.
        Err(error) => report::failed(&ctx, obj.as_ref(), error).await,
    }
    result
}

async fn reconcile_cluster(cr: &OrchestratorCluster, ctx: &Context) -> Result<Action> {
    if cr.meta().deletion_timestamp.is_some() {
        // Owned objects carry owner references: garbage collection removes them.
        return Ok(Action::await_change());
    }
    let now = Time(Timestamp::now());
    let spec = match validate(cr, &ctx.settings) {
        Ok(spec) => spec,
        Err(error) => return report::invalid_spec(ctx, cr, &error, &now).await,
    };
    let (observed, database) = observe::observe(ctx, &spec).await?;
    let plan = plan::plan(&spec, &observed, &now)?;
    match report::report(ctx, cr, &plan).await? {
        report::Stored::Stored => {}
        report::Stored::Stale => return Ok(Action::requeue(plan::STEP_REQUEUE)),
        report::Stored::Gone => return Ok(Action::await_change()),
    }
    act::act(ctx, cr, &plan, database.as_deref()).await?;
    Ok(Action::requeue(plan.requeue))
}

/// What one reconcile of `cr` would do given `observed`, without any I/O: validate and plan.
pub fn dry_run(cr: &OrchestratorCluster, observed: &Observed, settings: &BuildSettings, now: &Time) -> Result<Plan> {
    let spec = validate(cr, settings).map_err(Error::InvalidSpec)?;
    plan::plan(&spec, observed, now)
}

/// Retry policy after a failed reconcile: exponential back-off per object.
pub fn error_policy(obj: Arc<Watched>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.record_failure(error);
    let key = object_key(obj.as_ref());
    let delay = ctx.next_backoff(&key);
    tracing::warn!(object = %key, %error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}
