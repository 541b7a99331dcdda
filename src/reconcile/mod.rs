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

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};

use crate::context::{Context, RECONCILE_TIMEOUT};
use crate::crd::{OrchestratorCluster, object_key};
use crate::error::{Error, Result};
use crate::validate::{BuildSettings, ValidSpec, validate};
use observe::{Freshness, Observed};
use plan::Plan;

pub use crate::crd::Watched;

/// Reconciles one `OrchestratorCluster`, within [`RECONCILE_TIMEOUT`]: past it the reconcile
/// is cancelled where it stands and fails with [`Error::Timeout`], reported like any failure
/// (its duration, a Warning Event, the back-off).
pub async fn reconcile(obj: Arc<Watched>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    ctx.metrics.reconciles.inc();
    let result = match &obj.0 {
        Ok(cr) => within(RECONCILE_TIMEOUT, reconcile_cluster(cr, &ctx)).await,
        Err(invalid) => {
            // Waits for no roll slot: it plans nothing until it is fixed.
            ctx.rolls.withdraw(&object_key(obj.as_ref()));
            report::malformed(&ctx, &obj, invalid).await
        }
    };
    ctx.metrics.record_duration(started.elapsed());
    match &result {
        Ok(_) => ctx.reset_backoff(&object_key(obj.as_ref())),
        // A replica that stopped leading stopped on purpose: nothing to say on the resource.
        Err(Error::NotLeading(_)) => {}
        // Said on the resource too, not only in the operator's log: a missing permission or an
        // API refusal is something its owner can act on.
        Err(error) => report::failed(&ctx, obj.as_ref(), error).await,
    }
    result
}

/// `reconcile` if it finishes within `deadline`; else it is cancelled where it stands and the
/// result is [`Error::Timeout`], so the error policy backs off.
async fn within(deadline: Duration, reconcile: impl Future<Output = Result<Action>>) -> Result<Action> {
    tokio::time::timeout(deadline, reconcile)
        .await
        .unwrap_or(Err(Error::Timeout {
            step: "reconcile",
            after: deadline,
        }))
}

async fn reconcile_cluster(cr: &OrchestratorCluster, ctx: &Context) -> Result<Action> {
    if cr.meta().deletion_timestamp.is_some() {
        // Owned objects carry owner references: garbage collection removes them.
        ctx.rolls.withdraw(&crate::crd::object_key(cr));
        return Ok(Action::await_change());
    }
    let now = Time(Timestamp::now());
    let spec = match validate(cr, &ctx.settings) {
        Ok(spec) => spec,
        Err(error) => {
            // Plans nothing, so waits for no roll slot, until the spec is fixed; the
            // autoscaler's readings start again with the first look after.
            ctx.rolls.withdraw(&crate::crd::object_key(cr));
            ctx.keep_readings(&crate::crd::object_key(cr), None);
            return report::invalid_spec(ctx, cr, &error, &now).await;
        }
    };
    let (observed, mut database) = observe::observe(ctx, &spec, Freshness::Cached).await?;
    let mut plan = plan_in_turn(ctx, &spec, observed, &now)?;
    if plan.touches_servers() {
        // A drain, an eviction or a row removal is decided again from the pods as the API
        // server has them now: a pod cache one watch event behind (a server that just went
        // down) must not start a step.
        let (fresh, fresh_database) = observe::observe(ctx, &spec, Freshness::Quorum).await?;
        plan = plan_in_turn(ctx, &spec, fresh, &now)?;
        database = fresh_database;
    }
    let rolling = plan.status.roll_under_way();
    let roll_ended = !rolling
        && cr
            .status
            .as_ref()
            .is_some_and(crate::crd::OrchestratorClusterStatus::roll_under_way);
    let written = match report::report(ctx, cr, &plan).await? {
        report::StatusWrite::Stored { version } => {
            ctx.rolls.settle(&crate::crd::object_key(cr), rolling);
            // What this look read is kept once the plan made of it is stored.
            ctx.keep_readings(&crate::crd::object_key(cr), plan.readings.clone());
            version
        }
        report::StatusWrite::Stale => return Ok(Action::requeue(plan::STEP_REQUEUE)),
        report::StatusWrite::Gone => return Ok(Action::await_change()),
    };
    if let act::Acted::Rejected(rejection) = act::act(ctx, cr, &plan, database.as_ref()).await? {
        // Said in the status before the error backs the cluster off (unless this plan's status
        // said it already, from the refusal remembered at this generation).
        report::rejected(ctx, cr, &plan, &rejection, &now).await?;
        return Err(Error::Rejected(rejection));
    }
    let Some(version) = written else {
        return Ok(Action::requeue(jittered(plan.requeue)));
    };
    if plan.step_done.is_none() && !roll_ended && !plan.recorded_decision {
        return Ok(Action::requeue(jittered(plan.requeue)));
    }
    // A step or a whole roll just ended, or a decision to act on was recorded: the next step
    // may start now, or another cluster's roll in the slot this one gives back. Status writes do not trigger reconciles, and a look
    // before the cache has this very write would still see the step (or the roll holding its
    // slot): wait (briefly) for the cache, then look at once.
    let (namespace, name) = (cr.namespace().unwrap_or_default(), cr.name_any());
    if !ctx.caches.holds(&namespace, &name, &version, CACHE_CATCH_UP).await {
        return Ok(Action::requeue(jittered(plan.requeue)));
    }
    if roll_ended && let Some(next) = ctx.rolls.longest_waiting() {
        ctx.preflight.databases.trigger(&next);
    }
    if plan.step_done.is_some() || plan.recorded_decision {
        return Ok(Action::requeue(Duration::ZERO));
    }
    Ok(Action::requeue(jittered(plan.requeue)))
}

/// The plan of `observed`; a plan that would start a roll (a first step, none recorded) takes a
/// slot of `--max-concurrent-rolls` first, and is made again without the step when none is
/// free.
fn plan_in_turn(ctx: &Context, spec: &ValidSpec, mut observed: Observed, now: &Time) -> Result<Plan> {
    let planned = plan::plan(spec, &observed, now)?;
    let key = crate::crd::object_key(spec.cr);
    let starts_roll = planned.status.roll_under_way()
        && !spec
            .cr
            .status
            .as_ref()
            .is_some_and(crate::crd::OrchestratorClusterStatus::roll_under_way);
    if !starts_roll {
        ctx.rolls.withdraw(&key);
        return Ok(planned);
    }
    if let Err(limit) = ctx.rolls.reserve(&key, &ctx.caches) {
        observed.rolls_full = Some(limit);
        return plan::plan(spec, &observed, now);
    }
    Ok(planned)
}

/// Longest a reconcile waits for the cache to hold its own status write before the next look.
const CACHE_CATCH_UP: Duration = Duration::from_secs(1);

/// `delay` lengthened by up to a tenth, at random: clusters that settled together (an operator
/// restart, a fleet-wide change) do not all look again in the same instant.
fn jittered(delay: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    // `RandomState` draws new keys per instance: its hash of nothing is a fresh random number.
    let random = std::collections::hash_map::RandomState::new().build_hasher().finish();
    delay + delay.mul_f64((random % 1000) as f64 / 10_000.0)
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

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};

    use http::{Request, Response, StatusCode};
    use kube::Client;
    use kube::client::Body;
    use serde_json::Value;

    use super::*;
    use crate::metrics::Metrics;
    use crate::testing::fixtures;
    use crate::vocabulary::Reason;

    #[tokio::test(start_paused = true)]
    async fn a_reconcile_that_hangs_fails_with_a_timeout_at_its_deadline() {
        let started = tokio::time::Instant::now();
        let result = within(RECONCILE_TIMEOUT, std::future::pending()).await;
        assert!(
            matches!(result, Err(Error::Timeout { step: "reconcile", after }) if after == RECONCILE_TIMEOUT),
            "{result:?}"
        );
        assert_eq!(started.elapsed(), RECONCILE_TIMEOUT);
        let error = result.unwrap_err();
        assert_eq!(error.to_string(), "reconcile did not finish within 60 s; cancelled");
        assert_eq!(error.event_reason(), Reason::ReconcileTimeout);
    }

    #[test]
    fn requeues_are_spread_over_a_tenth_of_their_delay() {
        let delay = Duration::from_secs(10);
        let spread: std::collections::BTreeSet<Duration> = (0..50).map(|_| jittered(delay)).collect();
        assert!(
            spread.iter().all(|d| *d >= delay && *d < delay + delay / 10),
            "{spread:?}"
        );
        assert!(spread.len() > 10, "not spread: {spread:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_reconcile_in_time_is_untouched() {
        let finished = Arc::new(AtomicBool::new(false));
        let flag = finished.clone();
        let result = within(RECONCILE_TIMEOUT, async move {
            tokio::time::sleep(RECONCILE_TIMEOUT - Duration::from_millis(1)).await;
            flag.store(true, Ordering::SeqCst);
            Ok(Action::await_change())
        })
        .await;
        assert!(result.is_ok());
        assert!(finished.load(Ordering::SeqCst));
    }

    /// An API server that answers Events (and keeps their bodies) and nothing else.
    fn events_only() -> (Client, Arc<Mutex<Vec<Value>>>) {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let events = Arc::new(Mutex::new(Vec::new()));
        let recorded = events.clone();
        tokio::spawn(async move {
            let mut unanswered = Vec::new();
            while let Some((request, send)) = handle.next_request().await {
                let (parts, body) = request.into_parts();
                if !(parts.method == "POST" && parts.uri.path().ends_with("/events")) {
                    unanswered.push(send);
                    continue;
                }
                let body: Value = serde_json::from_slice(&body.collect_bytes().await.unwrap()).unwrap();
                recorded.lock().unwrap().push(body.clone());
                let response = Response::builder()
                    .status(StatusCode::CREATED)
                    .header("content-type", "application/json")
                    .body(Body::from(serde_json::to_vec(&body).unwrap()))
                    .unwrap();
                send.send_response(response);
            }
        });
        (Client::new(service, "automation"), events)
    }

    #[tokio::test(start_paused = true)]
    async fn a_reconcile_past_its_deadline_is_reported_like_any_failure() {
        let (client, events) = events_only();
        let metrics = Arc::new(Metrics::default());
        let ctx = Arc::new(Context::new(
            client,
            metrics.clone(),
            BuildSettings::default(),
            Some("test".into()),
        ));
        // Caches that never fill (their watches never answer): the reconcile waits for them.
        let (scope, _writers) = crate::caches::Scope::new(None);
        ctx.caches.add(scope);
        let cluster = Arc::new(kube::core::DeserializeGuard(Ok(fixtures::minimal())));
        let started = tokio::time::Instant::now();
        let result = tokio::time::timeout(RECONCILE_TIMEOUT * 2, reconcile(cluster, ctx))
            .await
            .expect("the reconcile ends at its own deadline");
        assert!(matches!(result, Err(Error::Timeout { .. })), "{result:?}");
        assert_eq!(started.elapsed(), RECONCILE_TIMEOUT);
        let events = events.lock().unwrap();
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0]["type"], "Warning");
        assert_eq!(events[0]["reason"], Reason::ReconcileTimeout.as_str());
        let text = metrics.encode();
        assert!(
            text.contains("orchestrator_operator_reconcile_duration_seconds_count 1"),
            "{text}"
        );
    }
}
