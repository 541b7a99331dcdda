//! Lease-based leader election: of several operator replicas only one acts, and a leader that
//! cannot renew its `coordination.k8s.io` Lease stops acting before any other replica may start.
//!
//! The rules, on each replica's own monotonic clock (never a comparison of wall clocks between
//! replicas, so clock skew between nodes cannot shorten a lease):
//!
//! - **Holder.** A renewal is a merge patch of the Lease with, as a precondition, the
//!   `resourceVersion` of this process's last successful write of it (a read follows only a
//!   409), and it counts only once the API server's answer names this process as the holder.
//!   It is sent a renewal period after the send of the last counted one (at once if that is
//!   past). The holder acts until its *deadline*: the instant the last counted renewal was
//!   sent, plus the lease duration, minus a margin ([`Timing`]). A renewal that has not been
//!   answered by then does not count; past the deadline the replica has lost its term for
//!   good (it stops acting: its controllers are dropped), whatever the API server answers
//!   later. A margin later it campaigns again ([`Campaign::again`]) as a standby, with the
//!   same holder identity: if the Lease still names this process, nobody took it meanwhile (a
//!   control plane restart, a network cut), and the standby rule below for its own identity
//!   takes it back at once.
//! - **Holder identity.** Each process writes itself as `<identity>_<8 hex digits>`, the
//!   digits random per process ([`holder_identity`]): two live processes with the same
//!   identity are two candidates, and a restarted process waits like any standby (or until its
//!   predecessor releases the Lease). A standby that finds its own holder identity in the
//!   Lease takes it at once (a take whose answer was lost, or a term of this process that
//!   lapsed while nobody else took the Lease): only this process writes that identity, and
//!   whatever it did in its lapsed term stopped when the term did.
//! - **Standby.** A standby takes the Lease only when it has no holder, or when the Lease (its
//!   `resourceVersion`) has not changed for a whole lease duration, timed from the moment the
//!   standby first received that version. The take is a write with the observed
//!   `resourceVersion` as a precondition, so a renewal that lands in between makes it fail.
//!   The holder's last counted renewal landed before the standby received the version it
//!   carries, so the holder's deadline passes at least `margin` before a standby may take.
//! - **Writes of the replica.** The margin covers how late a write checked right before the
//!   deadline may still land: it is at least [`LONGEST_WRITE`], which [`check_lease`]
//!   enforces. A write that may take a known budget is checked with
//!   [`Leadership::ensure_for`], which requires the whole budget to end before the deadline.
//! - **Field managers.** Each replica writes the Lease under its own field manager,
//!   [`field_manager`]; the objects the operator manages keep the one manager of the operator.
//!
//! `renewTime` and `acquireTime` are written (for people and other tools) but never read as a
//! time: what the holder's clock says does not matter to a standby.

use std::collections::hash_map::RandomState;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// How much later than the check right before it a database write of this replica may still
/// land, at most: a statement ends within `DATABASE_DEADLINE` (5 s, its `statement_timeout`) of
/// when the database started it, plus a second for the network and the drift of the clocks'
/// rates. A unit test keeps it at least that.
///
/// API writes are not bounded by it: each one that a late landing could make wrong carries a
/// precondition instead (the status write the resourceVersion it was planned from, an eviction
/// the uid of the pod the stored step names), so a write of a former leader that lands after a
/// standby took over is refused or does what the new leader asks too; the server-side applies
/// of owned objects write the same objects from the same spec.
pub const LONGEST_WRITE: Duration = Duration::from_secs(6);

/// The shortest lease accepted: its margin (a third of it) is [`LONGEST_WRITE`]. 18 s.
pub const MIN_LEASE: Duration = Duration::from_secs(LONGEST_WRITE.as_secs() * 3);

/// Default Lease duration: the shortest accepted.
pub const DEFAULT_LEASE: Duration = MIN_LEASE;

/// How soon a standby whose look at the Lease failed (no answer, an error) looks again.
const UNANSWERED_RETRY: Duration = Duration::from_secs(1);

/// Prefix of the per-replica field manager of Lease writes.
const FIELD_MANAGER_PREFIX: &str = "orchestrator-operator-leader";

/// Longest field manager name the API server accepts.
const FIELD_MANAGER_MAX: usize = 128;

/// How the Lease is held.
#[derive(Clone, Debug)]
pub struct LeaderSettings {
    /// Name of the Lease.
    pub lease_name: String,
    /// Namespace of the Lease.
    pub namespace: String,
    /// This replica's identity (its pod name). The Lease names the process as
    /// [`holder_identity`] of it.
    pub identity: String,
    /// Seconds a holder keeps the Lease without renewing it; at least [`MIN_LEASE`].
    pub lease_seconds: u64,
}

/// The field manager of this replica's writes of the Lease: `orchestrator-operator-leader/`
/// and the identity (its end, if the whole would be longer than the API server accepts).
pub fn field_manager(identity: &str) -> String {
    let room = FIELD_MANAGER_MAX - FIELD_MANAGER_PREFIX.len() - 1;
    let mut start = identity.len().saturating_sub(room);
    while !identity.is_char_boundary(start) {
        start += 1;
    }
    format!("{FIELD_MANAGER_PREFIX}/{}", &identity[start..])
}

/// The holder identity a campaign writes in the Lease: `identity`, `_` and eight hex digits
/// random per call (so per process: the binary campaigns once). The digits come from the
/// standard library's `RandomState`, whose keys are drawn from the operating system's random
/// source, over the process id and the time in nanoseconds; no crate of its own is needed.
pub fn holder_identity(identity: &str) -> String {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    if let Ok(since_epoch) = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH) {
        hasher.write_u128(since_epoch.as_nanos());
    }
    format!("{identity}_{:08x}", hasher.finish() & 0xffff_ffff)
}

/// Returned by [`check_lease`] for a lease too short for the margin to cover
/// [`LONGEST_WRITE`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "a leader election lease of {seconds} s is too short: it must be at least {} s, so that its margin (a third) covers the {} s a write may take to land after the leader's last check",
    MIN_LEASE.as_secs(),
    LONGEST_WRITE.as_secs()
)]
pub struct LeaseTooShort {
    /// The lease refused, in seconds.
    pub seconds: u64,
}

/// The lease of `seconds`, if it is at least [`MIN_LEASE`].
pub fn check_lease(seconds: u64) -> Result<Duration, LeaseTooShort> {
    let lease = Duration::from_secs(seconds);
    if lease >= MIN_LEASE {
        Ok(lease)
    } else {
        Err(LeaseTooShort { seconds })
    }
}

/// The times of leader election, all derived from the lease duration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// How long the Lease holds without a renewal (its `leaseDurationSeconds`).
    pub lease: Duration,
    /// How much sooner than `lease` after its last renewal the holder stops acting: the bound
    /// on how late a write sent just before the deadline may still land, plus the drift of
    /// the replicas' clock rates.
    pub margin: Duration,
    /// How often the holder renews and a standby reads the Lease.
    pub retry: Duration,
}

impl Timing {
    /// The timing of a Lease held for `lease`: a margin of a third of it, a renewal every
    /// fifth (18 s: the holder renews every 3.6 s and stops 12 s after its last renewal).
    pub fn for_lease(lease: Duration) -> Self {
        Self {
            lease,
            margin: lease / 3,
            retry: lease / 5,
        }
    }

    /// The instant after which a holder whose last counted renewal was sent at `renewal_sent`
    /// no longer acts.
    pub fn deadline(&self, renewal_sent: Instant) -> Instant {
        renewal_sent + self.lease.saturating_sub(self.margin)
    }
}

/// Whether a standby may take a Lease held for `held_for` whose version it first received at
/// `unchanged_since` and still sees at `now`.
fn may_take(held_for: Duration, unchanged_since: Instant, now: Instant) -> bool {
    now >= unchanged_since + held_for
}

/// Where this replica stands in the election.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Term {
    /// It has not held the Lease yet.
    Candidate,
    /// It holds the Lease until `deadline` unless a renewal extends it.
    Holding {
        /// When it stops acting.
        deadline: Instant,
    },
    /// It lost the Lease: this term never leads again (a new campaign may start another).
    Lost,
}

impl Term {
    /// Whether the replica may act at `now`.
    fn leading_at(self, now: Instant) -> bool {
        self.leading_for(now, Duration::ZERO)
    }

    /// Whether the replica may act at `now` and still will `budget` later.
    fn leading_for(self, now: Instant, budget: Duration) -> bool {
        matches!(self, Term::Holding { deadline } if now < deadline && now + budget <= deadline)
    }

    /// The term after a renewal with `deadline` was counted at `now`: a renewal answered after
    /// the current deadline does not revive a lost term.
    fn renewed(self, deadline: Instant, now: Instant) -> Term {
        let next = match self {
            Term::Lost => Term::Lost,
            Term::Holding { deadline: current } if now >= current => Term::Lost,
            Term::Holding { deadline: current } => Term::Holding {
                deadline: deadline.max(current),
            },
            Term::Candidate => Term::Holding { deadline },
        };
        if next.leading_at(now) { next } else { Term::Lost }
    }
}

/// Returned by [`Leadership::ensure`] when this replica must not act: it does not hold the
/// leader Lease, or its deadline to renew it has passed (or, for [`Leadership::ensure_for`],
/// is too close).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("this replica does not hold the leader Lease (lost, or its renewal deadline passed); it writes nothing")]
pub struct NotLeading;

/// Whether this replica may act: a cheap check (a read of the monotonic clock and of a shared
/// value under an uncontended read lock) for every caller about to write. Clones share the
/// state.
#[derive(Clone, Debug)]
pub struct Leadership {
    /// `None` when leader election is off: always leading.
    term: Option<Arc<watch::Sender<Term>>>,
}

impl Leadership {
    /// Always leading: for a single replica without leader election, and for tests.
    pub fn always() -> Self {
        Self { term: None }
    }

    /// A replica that has not held the Lease yet.
    fn candidate() -> Self {
        Self {
            term: Some(Arc::new(watch::channel(Term::Candidate).0)),
        }
    }

    /// Whether this replica may act now: it holds the Lease and its deadline has not passed.
    pub fn is_leading(&self) -> bool {
        match &self.term {
            None => true,
            Some(term) => term.borrow().leading_at(Instant::now()),
        }
    }

    /// `Ok` if this replica may act now, else [`NotLeading`] (an [`crate::Error::NotLeading`]
    /// through `?`). Call it right before every write.
    pub fn ensure(&self) -> Result<(), NotLeading> {
        self.ensure_for(Duration::ZERO)
    }

    /// `Ok` if this replica may act now and its deadline is at least `budget` away, else
    /// [`NotLeading`]. Call it right before a write (or a run of writes) bounded by `budget`
    /// (a timeout), so that the whole of it ends before the deadline.
    pub fn ensure_for(&self, budget: Duration) -> Result<(), NotLeading> {
        let leading = match &self.term {
            None => true,
            Some(term) => term.borrow().leading_for(Instant::now(), budget),
        };
        if leading { Ok(()) } else { Err(NotLeading) }
    }

    /// The instant this replica stops acting unless it renews first; `None` when leader
    /// election is off or the Lease is not held.
    pub fn deadline(&self) -> Option<Instant> {
        match *self.term.as_ref()?.borrow() {
            Term::Holding { deadline } => Some(deadline),
            Term::Candidate | Term::Lost => None,
        }
    }

    /// Completes once this replica leads (at once when leader election is off), or with
    /// [`NotLeading`] if it lost before it could act.
    pub async fn acquired(&self) -> Result<(), NotLeading> {
        let Some(term) = &self.term else { return Ok(()) };
        let mut changes = term.subscribe();
        loop {
            let current = *changes.borrow_and_update();
            match current {
                Term::Candidate => {}
                held => {
                    return if held.leading_at(Instant::now()) {
                        Ok(())
                    } else {
                        Err(NotLeading)
                    };
                }
            }
            // The sender lives as long as `self`: this never fails.
            changes.changed().await.map_err(|_| NotLeading)?;
        }
    }

    /// Completes once this replica, having led, may no longer act: the Lease was lost or the
    /// deadline passed, whether or not the API server answers. Never completes when leader
    /// election is off, nor before the Lease is first held.
    pub async fn lost(&self) {
        let Some(term) = &self.term else {
            return std::future::pending().await;
        };
        let mut changes = term.subscribe();
        loop {
            let current = *changes.borrow_and_update();
            match current {
                Term::Lost => return,
                Term::Holding { deadline } if Instant::now() >= deadline => return,
                Term::Holding { deadline } => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(deadline) => {}
                        _ = changes.changed() => {}
                    }
                }
                Term::Candidate => {
                    let _ = changes.changed().await;
                }
            }
        }
    }

    /// Runs `work` while this replica leads. When it stops leading, `work` is dropped at once
    /// (cancelled, never awaited: a kube-runtime controller dropped this way aborts its
    /// in-flight reconciles) and the result is [`NotLeading`].
    pub async fn while_leading<F: Future>(&self, work: F) -> Result<F::Output, NotLeading> {
        self.ensure()?;
        tokio::select! {
            biased;
            () = self.lost() => Err(NotLeading),
            output = work => Ok(output),
        }
    }

    /// Counts a renewal whose request was sent at `sent`.
    fn renewed(&self, timing: &Timing, sent: Instant) {
        if let Some(term) = &self.term {
            let now = Instant::now();
            term.send_if_modified(|current| {
                let next = current.renewed(timing.deadline(sent), now);
                let changed = next != *current;
                *current = next;
                changed
            });
        }
    }

    /// Back to a candidate, for a new campaign of this process after a lost term.
    fn campaign_again(&self) {
        if let Some(term) = &self.term {
            term.send_replace(Term::Candidate);
        }
    }

    /// Gives up the Lease for good.
    fn lose(&self) {
        if let Some(term) = &self.term {
            term.send_if_modified(|current| {
                let changed = *current != Term::Lost;
                *current = Term::Lost;
                changed
            });
        }
    }
}

/// A campaign for the Lease, run in the background from [`campaign`].
pub struct Campaign {
    leadership: Leadership,
    elector: Arc<Elector>,
    task: JoinHandle<()>,
}

/// Starts campaigning for the Lease in the background with `client` (better a client of its
/// own, with request timeouts, so that reconcile traffic does not delay renewals). The
/// campaign's [`Leadership`] says when this replica may act. Refuses a lease shorter than
/// [`MIN_LEASE`].
pub fn campaign(client: Client, settings: &LeaderSettings) -> Result<Campaign, LeaseTooShort> {
    let lease = check_lease(settings.lease_seconds)?;
    Ok(start(client, settings, Timing::for_lease(lease)))
}

/// Starts campaigning with `timing`, whatever its lease.
fn start(client: Client, settings: &LeaderSettings, timing: Timing) -> Campaign {
    let leadership = Leadership::candidate();
    let elector = Arc::new(Elector {
        api: Api::namespaced(client, &settings.namespace),
        name: settings.lease_name.clone(),
        holder: holder_identity(&settings.identity),
        field_manager: field_manager(&settings.identity),
        timing,
        leadership: leadership.clone(),
    });
    let task = tokio::spawn(elector.clone().run());
    Campaign {
        leadership,
        elector,
        task,
    }
}

impl Campaign {
    /// The campaign's view of whether this replica may act.
    pub fn leadership(&self) -> Leadership {
        self.leadership.clone()
    }

    /// The holder identity this campaign writes in the Lease ([`holder_identity`]).
    pub fn holder_identity(&self) -> &str {
        &self.elector.holder
    }

    /// Waits until this replica leads and returns the campaign. A campaign that lost before
    /// this replica could act (a take answered after its own deadline, as may happen while the
    /// API server comes back) campaigns [`again`](Campaign::again). If `stop` completes first
    /// (a termination request while still a standby), it ends the campaign
    /// ([`Campaign::release`]) and returns `None`.
    pub async fn until_leading(mut self, stop: impl Future<Output = ()>) -> Option<Self> {
        let mut stop = std::pin::pin!(stop);
        loop {
            let leadership = self.leadership.clone();
            let acquired = tokio::select! {
                biased;
                () = &mut stop => None,
                acquired = leadership.acquired() => Some(acquired),
            };
            match acquired {
                Some(Ok(())) => return Some(self),
                None => {
                    self.release().await;
                    return None;
                }
                Some(Err(NotLeading)) => self = self.again().await,
            }
        }
    }

    /// Campaigns again after this replica stopped leading, once everything that acted in its
    /// term has stopped (the controllers run under [`Leadership::while_leading`], which drops
    /// them when the term ends): as a standby with the same holder identity, so that a Lease
    /// that still names this process (nobody took it while this process could not renew it,
    /// say while the API server restarted) is taken back as soon as the API server answers,
    /// with the version read as precondition. A Lease taken by another replica is waited for
    /// like any standby does. The [`Leadership`] clones given out follow the new campaign.
    ///
    /// It first waits the margin, as any other replica would have to: a database write
    /// checked right before the lapsed deadline may land up to [`LONGEST_WRITE`] later, and
    /// the new term must not read the database before it has.
    pub async fn again(self) -> Campaign {
        // No renewal of the old term may be counted in the new one.
        let (leadership, elector) = self.stop().await;
        tokio::time::sleep(elector.timing.margin).await;
        leadership.campaign_again();
        let task = tokio::spawn(elector.clone().run());
        Campaign {
            leadership,
            elector,
            task,
        }
    }

    /// Stops campaigning: once it returns, no take or renewal of this campaign is sent or
    /// counted, and this replica does not act.
    async fn stop(self) -> (Leadership, Arc<Elector>) {
        let Campaign {
            leadership,
            elector,
            task,
        } = self;
        task.abort();
        let _ = task.await;
        leadership.lose();
        (leadership, elector)
    }

    /// Ends the campaign after a clean stop (every writer of this replica has finished, or it
    /// never led): it stops campaigning and acting, then, if the Lease names this process, it
    /// clears the holder so that a standby takes over at once instead of after a lease
    /// duration. Gives up quietly after one renewal period.
    pub async fn release(self) {
        let (_, elector) = self.stop().await;
        let within = elector.timing.retry.max(Duration::from_secs(1));
        match tokio::time::timeout(within, elector.release()).await {
            Ok(Ok(true)) => tracing::info!(lease = %elector.name, "released the leader Lease"),
            Ok(Ok(false)) => {}
            Ok(Err(error)) => tracing::warn!(%error, "could not release the leader Lease"),
            Err(_) => tracing::warn!("releasing the leader Lease took too long; a standby takes it when it expires"),
        }
    }
}

/// A write of the Lease by this process that named it as the holder.
#[derive(Clone, Debug)]
struct Written {
    /// The Lease's `resourceVersion` after the write: the precondition of the next renewal.
    version: String,
    /// When the write was sent.
    sent: Instant,
}

/// What a standby's look at the Lease came to.
enum Attempt {
    /// This process now holds the Lease and leads.
    Held(Written),
    /// Look again after this long.
    Wait(Duration),
    /// The write that took the Lease was answered after its own deadline: this process never
    /// leads.
    Lost,
}

/// What a holder's renewal came to.
enum Renewal {
    /// Renewed and counted.
    Renewed(Written),
    /// The Lease is gone or held by someone else.
    Taken(Option<String>),
}

/// The version of the Lease a standby sees, and since when.
struct Seen {
    resource_version: String,
    since: Instant,
}

/// The campaign's loop and its Lease requests.
struct Elector {
    api: Api<Lease>,
    name: String,
    /// The holder identity of this process.
    holder: String,
    field_manager: String,
    timing: Timing,
    leadership: Leadership,
}

/// The holder named by `lease`, if any.
fn holder(lease: &Lease) -> Option<&str> {
    lease
        .spec
        .as_ref()
        .and_then(|spec| spec.holder_identity.as_deref())
        .filter(|holder| !holder.is_empty())
}

/// Whether a request failed on its precondition or because the object already exists.
fn is_conflict(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 409)
}

/// Whether a request failed because the object does not exist.
fn is_not_found(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 404)
}

impl Elector {
    async fn run(self: Arc<Self>) {
        let Some(held) = self.campaign_until_held().await else {
            tracing::error!(
                lease = %self.name,
                "the leader Lease was taken too late to act on (the answer came after the local deadline)"
            );
            return;
        };
        tracing::info!(lease = %self.name, identity = %self.holder, "holding the leader Lease");
        self.hold(held).await;
    }

    /// Looks at the Lease until this process holds it; `None` if it took it too late to lead.
    async fn campaign_until_held(&self) -> Option<Written> {
        let mut seen = None;
        loop {
            // A request that never returns must not stop the campaign.
            let attempt = tokio::time::timeout(self.timing.lease, self.try_take(&mut seen)).await;
            let wait = match attempt {
                Ok(Ok(Attempt::Held(written))) => return Some(written),
                Ok(Ok(Attempt::Lost)) => return None,
                Ok(Ok(Attempt::Wait(wait))) => wait,
                Ok(Err(error)) => {
                    tracing::warn!(%error, lease = %self.name, "leader election: cannot read or take the Lease");
                    // The API server is away or refused: look again soon, so that a Lease this
                    // process may take back is taken within a second of its return.
                    UNANSWERED_RETRY.min(self.timing.retry)
                }
                Err(_) => self.timing.retry,
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// Renews the Lease a renewal period after the send of the last counted renewal (at once
    /// if that is past) until the deadline passes or another replica holds it.
    async fn hold(&self, held: Written) {
        let mut last = held;
        let mut next = last.sent + self.timing.retry;
        loop {
            tokio::time::sleep_until(next).await;
            let Some(deadline) = self.leadership.deadline() else {
                return self.leadership.lose();
            };
            let attempt = Instant::now();
            match tokio::time::timeout_at(deadline, self.renew(&last.version)).await {
                Ok(Ok(Renewal::Renewed(written))) => {
                    next = written.sent + self.timing.retry;
                    last = written;
                }
                Ok(Ok(Renewal::Taken(holder))) => {
                    tracing::error!(holder = holder.unwrap_or_default(), "the leader Lease was taken over");
                    return self.leadership.lose();
                }
                Ok(Err(error)) => {
                    tracing::warn!(%error, "could not renew the leader Lease; retrying before the deadline");
                    next = attempt + self.timing.retry / 3;
                }
                Err(_) => {
                    tracing::error!("the leader Lease was not renewed before the local deadline");
                    return self.leadership.lose();
                }
            }
        }
    }

    /// One look at the Lease as a standby: take it if it is free, names this very process (a
    /// take whose answer was lost), or is unchanged for a whole lease duration.
    async fn try_take(&self, seen: &mut Option<Seen>) -> Result<Attempt, kube::Error> {
        let Some(lease) = self.api.get_opt(&self.name).await? else {
            return self.create().await;
        };
        let now = Instant::now();
        match holder(&lease) {
            None => self.take(&lease, true).await,
            // Only this process writes its holder identity, and the take is counted from its
            // own send: another process of the same replica does not match.
            Some(holder) if holder == self.holder => self.take(&lease, false).await,
            Some(holder) => {
                let version = lease.metadata.resource_version.clone().unwrap_or_default();
                let since = match seen {
                    Some(seen) if seen.resource_version == version => seen.since,
                    _ => {
                        *seen = Some(Seen {
                            resource_version: version,
                            since: now,
                        });
                        now
                    }
                };
                // The holder's duration if it is longer than ours.
                let held_for = lease
                    .spec
                    .as_ref()
                    .and_then(|spec| spec.lease_duration_seconds)
                    .and_then(|seconds| u64::try_from(seconds).ok())
                    .map(Duration::from_secs)
                    .unwrap_or_default()
                    .max(self.timing.lease);
                if may_take(held_for, since, now) {
                    tracing::info!(%holder, "the leader Lease was not renewed for a lease duration; taking it");
                    self.take(&lease, true).await
                } else {
                    tracing::debug!(%holder, "the leader Lease is held");
                    Ok(Attempt::Wait(
                        (since + held_for).saturating_duration_since(now).min(self.timing.retry),
                    ))
                }
            }
        }
    }

    /// Seconds of the lease, as the Lease spells them.
    fn lease_seconds(&self) -> i32 {
        i32::try_from(self.timing.lease.as_secs()).unwrap_or(i32::MAX)
    }

    /// Creates the Lease with this process as its holder.
    async fn create(&self) -> Result<Attempt, kube::Error> {
        let now = MicroTime(Timestamp::now());
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(self.holder.clone()),
                lease_duration_seconds: Some(self.lease_seconds()),
                acquire_time: Some(now.clone()),
                renew_time: Some(now),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        let params = PostParams {
            field_manager: Some(self.field_manager.clone()),
            ..PostParams::default()
        };
        let sent = Instant::now();
        match self.api.create(&params, &lease).await {
            Ok(created) => Ok(self.count(&created, sent)),
            // Another replica created it first.
            Err(error) if is_conflict(&error) => Ok(Attempt::Wait(Duration::ZERO)),
            Err(error) => Err(error),
        }
    }

    /// Writes this process as the holder of `lease`, unless it changed since it was read.
    async fn take(&self, lease: &Lease, new_holder: bool) -> Result<Attempt, kube::Error> {
        let now = MicroTime(Timestamp::now());
        let mut spec = json!({
            "holderIdentity": self.holder,
            "leaseDurationSeconds": self.lease_seconds(),
            "renewTime": now,
        });
        if new_holder {
            let transitions = lease.spec.as_ref().and_then(|s| s.lease_transitions).unwrap_or(0);
            spec["acquireTime"] = json!(now);
            spec["leaseTransitions"] = json!(transitions.saturating_add(1));
        }
        let sent = Instant::now();
        match self.write(lease.metadata.resource_version.as_deref(), spec).await {
            Ok(written) => Ok(self.count(&written, sent)),
            // It changed since it was read: look again.
            Err(error) if is_conflict(&error) => Ok(Attempt::Wait(Duration::ZERO)),
            Err(error) => Err(error),
        }
    }

    /// Counts a take sent at `sent` that answered `written`, if it names this process. Held
    /// only if this process then leads: a take answered after its own deadline never does.
    fn count(&self, written: &Lease, sent: Instant) -> Attempt {
        if holder(written) != Some(self.holder.as_str()) {
            return Attempt::Wait(self.timing.retry);
        }
        self.leadership.renewed(&self.timing, sent);
        if self.leadership.is_leading() {
            Attempt::Held(Written {
                version: written.metadata.resource_version.clone().unwrap_or_default(),
                sent,
            })
        } else {
            Attempt::Lost
        }
    }

    /// One renewal by the holder: a patch with `version` (of its last write) as precondition;
    /// only if the Lease changed since, a read of who holds it and, if still this process, a
    /// patch with the version read.
    async fn renew(&self, version: &str) -> Result<Renewal, kube::Error> {
        let spec = json!({
            "holderIdentity": self.holder,
            "leaseDurationSeconds": self.lease_seconds(),
            "renewTime": MicroTime(Timestamp::now()),
        });
        let sent = Instant::now();
        match self.write(Some(version), spec.clone()).await {
            Ok(written) => return Ok(self.renewal(&written, sent)),
            Err(error) if is_not_found(&error) => return Ok(Renewal::Taken(None)),
            Err(error) if is_conflict(&error) => {}
            Err(error) => return Err(error),
        }
        // Changed since this process last wrote it: by a standby's take, or by a write of this
        // process whose answer was lost.
        let Some(lease) = self.api.get_opt(&self.name).await? else {
            return Ok(Renewal::Taken(None));
        };
        if holder(&lease) != Some(self.holder.as_str()) {
            return Ok(Renewal::Taken(holder(&lease).map(String::from)));
        }
        let sent = Instant::now();
        let written = self.write(lease.metadata.resource_version.as_deref(), spec).await?;
        Ok(self.renewal(&written, sent))
    }

    /// Counts a renewal sent at `sent` that answered `written`, if it names this process.
    fn renewal(&self, written: &Lease, sent: Instant) -> Renewal {
        match holder(written) {
            Some(holder) if holder == self.holder => {
                self.leadership.renewed(&self.timing, sent);
                Renewal::Renewed(Written {
                    version: written.metadata.resource_version.clone().unwrap_or_default(),
                    sent,
                })
            }
            other => Renewal::Taken(other.map(String::from)),
        }
    }

    /// Clears the holder if it is this process. Returns whether it did.
    async fn release(&self) -> Result<bool, kube::Error> {
        let Some(lease) = self.api.get_opt(&self.name).await? else {
            return Ok(false);
        };
        if holder(&lease) != Some(self.holder.as_str()) {
            return Ok(false);
        }
        self.write(
            lease.metadata.resource_version.as_deref(),
            json!({"holderIdentity": null}),
        )
        .await?;
        Ok(true)
    }

    /// A merge patch of `spec` onto the Lease, refused (409) if the Lease is no longer at
    /// `version`.
    async fn write(&self, version: Option<&str>, spec: serde_json::Value) -> Result<Lease, kube::Error> {
        let patch = json!({
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"resourceVersion": version},
            "spec": spec,
        });
        let params = PatchParams {
            field_manager: Some(self.field_manager.clone()),
            ..PatchParams::default()
        };
        self.api.patch(&self.name, &params, &Patch::Merge(&patch)).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use http::{Request, Response, StatusCode};
    use kube::client::Body;
    use serde_json::Value;

    use super::*;

    /// The lease of these tests: the algorithm does not depend on it, and its round numbers
    /// (a 5 s margin, a 3 s renewal period, a 10 s deadline) read well. [`start`] takes it;
    /// [`campaign`] would refuse it as shorter than [`MIN_LEASE`].
    const LEASE: Duration = Duration::from_secs(15);

    #[test]
    fn the_deadline_is_a_lease_less_the_margin_after_the_renewal_was_sent() {
        let timing = Timing::for_lease(LEASE);
        assert_eq!(timing.margin, Duration::from_secs(5));
        assert_eq!(timing.retry, Duration::from_secs(3));
        let sent = Instant::now();
        assert_eq!(timing.deadline(sent), sent + Duration::from_secs(10));
        // Every renewal period leaves room for three attempts before the deadline.
        assert!(timing.retry * 3 < timing.lease - timing.margin);
    }

    #[test]
    fn the_margin_of_the_shortest_lease_covers_the_longest_write() {
        // LONGEST_WRITE bounds every write checked against the deadline.
        assert!(LONGEST_WRITE >= crate::database::preflight::DATABASE_DEADLINE + Duration::from_secs(1));
        assert_eq!(MIN_LEASE, Duration::from_secs(18));
        assert_eq!(DEFAULT_LEASE, MIN_LEASE);
        let timing = Timing::for_lease(MIN_LEASE);
        assert!(timing.margin >= LONGEST_WRITE);
        // Between two renewals the deadline stays at least the longest budget away (less the
        // time a renewal takes to be answered), so `ensure_for` passes while renewals do.
        assert!(timing.lease - timing.margin - timing.retry >= LONGEST_WRITE);
    }

    #[test]
    fn a_lease_shorter_than_the_minimum_is_refused() {
        assert_eq!(check_lease(18), Ok(Duration::from_secs(18)));
        assert_eq!(check_lease(300), Ok(Duration::from_secs(300)));
        let refused = check_lease(17).unwrap_err();
        assert_eq!(refused, LeaseTooShort { seconds: 17 });
        let message = refused.to_string();
        assert!(
            message.contains("17 s is too short") && message.contains("at least 18 s"),
            "{message}"
        );
        assert_eq!(check_lease(0), Err(LeaseTooShort { seconds: 0 }));
    }

    /// The chart's default lease, its schema's minimum and the template's fallback are the
    /// binary's minimum.
    #[test]
    fn the_chart_passes_no_lease_shorter_than_the_minimum() {
        let chart = format!("{}/charts/orchestrator-operator", env!("CARGO_MANIFEST_DIR"));
        let read = |file: &str| std::fs::read_to_string(format!("{chart}/{file}")).unwrap();
        let values: serde_yaml::Value = serde_yaml::from_str(&read("values.yaml")).unwrap();
        assert_eq!(
            values["leaderElection"]["leaseSeconds"].as_u64(),
            Some(DEFAULT_LEASE.as_secs())
        );
        let schema: Value = serde_json::from_str(&read("values.schema.json")).unwrap();
        assert_eq!(
            schema["properties"]["leaderElection"]["properties"]["leaseSeconds"]["minimum"],
            json!(MIN_LEASE.as_secs())
        );
        let deployment = read("templates/deployment.yaml");
        assert!(
            deployment.contains(&format!("leaseSeconds | default {} |", DEFAULT_LEASE.as_secs())),
            "{deployment}"
        );
    }

    #[test]
    fn a_term_leads_only_before_its_deadline_and_never_comes_back() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let held = Term::Candidate.renewed(t0 + s(10), t0);
        assert_eq!(held, Term::Holding { deadline: t0 + s(10) });
        assert!(held.leading_at(t0));
        assert!(held.leading_at(t0 + s(10) - Duration::from_nanos(1)));
        assert!(!held.leading_at(t0 + s(10)));
        // A renewal answered in time extends the deadline, never shortens it.
        assert_eq!(
            held.renewed(t0 + s(13), t0 + s(3)),
            Term::Holding { deadline: t0 + s(13) }
        );
        assert_eq!(held.renewed(t0 + s(9), t0 + s(3)), held);
        // A renewal answered after the deadline does not count: the term is over.
        assert_eq!(held.renewed(t0 + s(20), t0 + s(10)), Term::Lost);
        assert_eq!(Term::Lost.renewed(t0 + s(20), t0), Term::Lost);
        assert!(!Term::Lost.leading_at(t0));
        assert!(!Term::Candidate.leading_at(t0));
        // An acquisition answered after its own deadline never leads.
        assert_eq!(Term::Candidate.renewed(t0, t0), Term::Lost);
    }

    #[test]
    fn a_standby_takes_only_after_a_whole_unchanged_lease() {
        let t0 = Instant::now();
        assert!(!may_take(LEASE, t0, t0));
        assert!(!may_take(LEASE, t0, t0 + LEASE - Duration::from_millis(1)));
        assert!(may_take(LEASE, t0, t0 + LEASE));
    }

    #[test]
    fn each_replica_has_its_own_field_manager() {
        assert_eq!(
            field_manager("op-7d9f-abcde"),
            "orchestrator-operator-leader/op-7d9f-abcde"
        );
        assert_ne!(field_manager("a"), field_manager("b"));
        let long = format!("{}-tail", "x".repeat(300));
        let manager = field_manager(&long);
        assert_eq!(manager.len(), FIELD_MANAGER_MAX);
        assert!(manager.ends_with("x-tail"));
    }

    #[test]
    fn each_campaign_names_itself_with_a_random_suffix() {
        let first = holder_identity("op-7d9f-abcde");
        let (pod, suffix) = first.rsplit_once('_').unwrap();
        assert_eq!(pod, "op-7d9f-abcde");
        assert_eq!(suffix.len(), 8);
        assert!(
            suffix.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()),
            "{suffix}"
        );
        assert_ne!(
            holder_identity("op-7d9f-abcde"),
            first,
            "another campaign, another suffix"
        );
    }

    #[tokio::test]
    async fn without_election_a_replica_always_leads() {
        let leadership = Leadership::always();
        assert!(leadership.is_leading());
        assert_eq!(leadership.ensure(), Ok(()));
        assert_eq!(leadership.ensure_for(Duration::from_secs(3600)), Ok(()));
        assert_eq!(leadership.deadline(), None);
        assert_eq!(leadership.acquired().await, Ok(()));
        assert_eq!(leadership.while_leading(async { 7 }).await, Ok(7));
    }

    /// A request the fake API server answered.
    #[derive(Clone, Debug)]
    struct Answered {
        method: String,
        query: String,
        code: u16,
    }

    /// The Lease as a fake API server keeps it, and the requests it answered.
    #[derive(Default)]
    struct FakeApi {
        lease: Option<Value>,
        version: u64,
        requests: Vec<Answered>,
    }

    fn status(code: StatusCode, reason: &str) -> Value {
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": reason, "reason": reason, "code": code.as_u16()})
    }

    /// RFC 7386 merge patch.
    fn merge(target: &mut Value, patch: &Value) {
        let Value::Object(fields) = patch else {
            *target = patch.clone();
            return;
        };
        if !target.is_object() {
            *target = json!({});
        }
        let object = target.as_object_mut().expect("an object");
        for (key, value) in fields {
            if value.is_null() {
                object.remove(key);
            } else {
                merge(object.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
    }

    impl FakeApi {
        fn answer(&mut self, method: &str, body: Value) -> (StatusCode, Value) {
            match (method, self.lease.as_mut()) {
                ("GET", Some(lease)) => (StatusCode::OK, lease.clone()),
                ("GET" | "PATCH", None) => (StatusCode::NOT_FOUND, status(StatusCode::NOT_FOUND, "NotFound")),
                ("POST", Some(_)) => (StatusCode::CONFLICT, status(StatusCode::CONFLICT, "AlreadyExists")),
                ("POST", None) => {
                    self.version += 1;
                    let mut lease = body;
                    lease["metadata"]["resourceVersion"] = json!(self.version.to_string());
                    self.lease = Some(lease.clone());
                    (StatusCode::CREATED, lease)
                }
                ("PATCH", Some(lease)) => {
                    let precondition = &body["metadata"]["resourceVersion"];
                    if !precondition.is_null() && *precondition != lease["metadata"]["resourceVersion"] {
                        return (StatusCode::CONFLICT, status(StatusCode::CONFLICT, "Conflict"));
                    }
                    merge(lease, &body);
                    self.version += 1;
                    lease["metadata"]["resourceVersion"] = json!(self.version.to_string());
                    (StatusCode::OK, lease.clone())
                }
                _ => (
                    StatusCode::METHOD_NOT_ALLOWED,
                    status(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed"),
                ),
            }
        }

        /// A write of someone else (a label, say): a new `resourceVersion`, the holder kept.
        fn touch(&mut self) {
            self.version += 1;
            let lease = self.lease.as_mut().expect("a Lease");
            lease["metadata"]["resourceVersion"] = json!(self.version.to_string());
        }

        fn holder(&self) -> Option<String> {
            self.lease.as_ref()?["spec"]["holderIdentity"]
                .as_str()
                .map(String::from)
        }

        /// The methods answered, in order.
        fn methods(&self) -> Vec<&str> {
            self.requests.iter().map(|r| r.method.as_str()).collect()
        }

        fn count(&self, method: &str) -> usize {
            self.requests.iter().filter(|r| r.method == method).count()
        }
    }

    /// One replica's connection to the shared fake API server.
    #[derive(Default)]
    struct Link {
        /// Requests that arrive while set are kept, never answered.
        frozen: AtomicBool,
        /// How long each request that arrives is answered after (and applied then).
        delay_ms: AtomicU64,
        /// Whether `delay_ms` spares reads.
        reads_quick: AtomicBool,
        /// Requests received.
        received: AtomicUsize,
    }

    impl Link {
        fn new() -> Arc<Self> {
            Arc::default()
        }

        fn slow(delay: Duration) -> Arc<Self> {
            let link = Self::new();
            link.delay_ms
                .store(u64::try_from(delay.as_millis()).unwrap(), Ordering::SeqCst);
            link
        }

        /// Writes answered after `delay`, reads at once.
        fn slow_writes(delay: Duration) -> Arc<Self> {
            let link = Self::slow(delay);
            link.reads_quick.store(true, Ordering::SeqCst);
            link
        }

        fn freeze(&self) {
            self.frozen.store(true, Ordering::SeqCst);
        }

        /// Answers requests again from now on (those kept while frozen stay unanswered).
        fn thaw(&self) {
            self.frozen.store(false, Ordering::SeqCst);
        }

        fn received(&self) -> usize {
            self.received.load(Ordering::SeqCst)
        }
    }

    /// A client of the shared fake API server through `link`.
    fn connect(api: &Arc<Mutex<FakeApi>>, link: &Arc<Link>) -> Client {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let (api, link) = (api.clone(), link.clone());
        tokio::spawn(async move {
            while let Some((request, send)) = handle.next_request().await {
                link.received.fetch_add(1, Ordering::SeqCst);
                let frozen = link.frozen.load(Ordering::SeqCst);
                let read = request.method() == http::Method::GET;
                let delay = if read && link.reads_quick.load(Ordering::SeqCst) {
                    Duration::ZERO
                } else {
                    Duration::from_millis(link.delay_ms.load(Ordering::SeqCst))
                };
                let api = api.clone();
                tokio::spawn(async move {
                    if frozen {
                        // Kept open, never answered.
                        let _send = send;
                        return std::future::pending().await;
                    }
                    let (parts, body) = request.into_parts();
                    let body = body.collect_bytes().await.expect("a body");
                    let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    let (code, answer) = {
                        let mut api = api.lock().expect("the fake API");
                        let method = parts.method.to_string();
                        let answer = api.answer(&method, body);
                        api.requests.push(Answered {
                            method,
                            query: parts.uri.query().unwrap_or_default().to_string(),
                            code: answer.0.as_u16(),
                        });
                        answer
                    };
                    let response = Response::builder()
                        .status(code)
                        .header("content-type", "application/json")
                        .body(Body::from(serde_json::to_vec(&answer).expect("json")))
                        .expect("a response");
                    send.send_response(response);
                });
            }
        });
        Client::new(service, "operators")
    }

    fn settings(identity: &str) -> LeaderSettings {
        LeaderSettings {
            lease_name: "orchestrator-operator".into(),
            namespace: "operators".into(),
            identity: identity.into(),
            lease_seconds: LEASE.as_secs(),
        }
    }

    /// A campaign of `identity` over `client`, with the tests' [`LEASE`].
    fn run_campaign(client: Client, identity: &str) -> Campaign {
        start(client, &settings(identity), Timing::for_lease(LEASE))
    }

    /// An elector of `identity` that has not campaigned yet, to drive by hand.
    fn elector(client: Client, identity: &str) -> Elector {
        Elector {
            api: Api::namespaced(client, "operators"),
            name: "orchestrator-operator".into(),
            holder: holder_identity(identity),
            field_manager: field_manager(identity),
            timing: Timing::for_lease(LEASE),
            leadership: Leadership::candidate(),
        }
    }

    /// Campaign `a`, leading, and campaign `b`, a standby, each over a link of its own.
    async fn leader_and_standby(api: &Arc<Mutex<FakeApi>>) -> ((Arc<Link>, Campaign), (Arc<Link>, Campaign)) {
        let (link_a, link_b) = (Link::new(), Link::new());
        let a = run_campaign(connect(api, &link_a), "a");
        a.leadership().acquired().await.unwrap();
        let b = run_campaign(connect(api, &link_b), "b");
        ((link_a, a), (link_b, b))
    }

    /// Sets `flag` when dropped.
    struct DropFlag(Arc<AtomicBool>);

    impl Drop for DropFlag {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn a_campaign_refuses_a_lease_shorter_than_the_minimum() {
        let (service, _handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let refused = campaign(Client::new(service, "operators"), &settings("a")).err();
        assert_eq!(refused, Some(LeaseTooShort { seconds: 15 }));
    }

    #[tokio::test(start_paused = true)]
    async fn a_leader_stops_at_its_deadline_when_the_api_never_answers() {
        let api = Arc::new(Mutex::new(FakeApi::default()));
        let link = Link::new();
        let started = Instant::now();
        let campaign = run_campaign(connect(&api, &link), "a");
        let leadership = campaign.leadership();
        assert!(!leadership.is_leading(), "a candidate does not act");
        leadership.acquired().await.unwrap();
        // Created at once (paused time does not move while requests are answered).
        let deadline = started + Duration::from_secs(10);
        assert_eq!(leadership.deadline(), Some(deadline));
        assert_eq!(
            api.lock().unwrap().holder().as_deref(),
            Some(campaign.holder_identity())
        );

        // From now on nothing answers: not the renewals, not anything else.
        link.freeze();
        let cancelled = Arc::new(AtomicBool::new(false));
        let guard = DropFlag(cancelled.clone());
        let work = leadership.clone();
        let reconciles = tokio::spawn(async move {
            work.while_leading(async move {
                let _guard = guard;
                std::future::pending::<()>().await
            })
            .await
        });

        tokio::time::sleep_until(deadline - Duration::from_millis(1)).await;
        assert!(leadership.is_leading(), "still leading just before the deadline");
        assert!(!cancelled.load(Ordering::SeqCst));
        tokio::time::sleep_until(deadline).await;
        assert!(!leadership.is_leading(), "not leading at the deadline");
        assert_eq!(leadership.ensure(), Err(NotLeading));
        assert_eq!(reconciles.await.unwrap(), Err(NotLeading));
        assert!(cancelled.load(Ordering::SeqCst), "the work was dropped, not awaited");
        assert_eq!(Instant::now(), deadline, "stopped at the deadline, not later");
        leadership.lost().await;
        // Lost for good: this term never leads again (only a new campaign may).
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(!leadership.is_leading());
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_with_a_budget_must_end_before_the_deadline() {
        let api = Arc::new(Mutex::new(FakeApi::default()));
        let link = Link::new();
        let started = Instant::now();
        let leadership = run_campaign(connect(&api, &link), "a").leadership();
        assert_eq!(leadership.ensure_for(Duration::ZERO), Err(NotLeading), "a candidate");
        leadership.acquired().await.unwrap();
        link.freeze();
        let deadline = started + Duration::from_secs(10);
        let budget = Duration::from_secs(5);
        assert_eq!(leadership.ensure_for(budget), Ok(()));
        tokio::time::sleep_until(deadline - budget).await;
        assert_eq!(leadership.ensure_for(budget), Ok(()), "ends right at the deadline");
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(
            leadership.ensure_for(budget),
            Err(NotLeading),
            "would end after the deadline"
        );
        assert_eq!(leadership.ensure(), Ok(()), "a write without a budget still may");
        assert_eq!(leadership.ensure_for(Duration::ZERO), Ok(()));
        tokio::time::sleep_until(deadline).await;
        assert_eq!(leadership.ensure_for(Duration::ZERO), Err(NotLeading));
    }

    #[tokio::test(start_paused = true)]
    async fn renewals_keep_the_leader_leading() {
        let api = Arc::new(Mutex::new(FakeApi::default()));
        let link = Link::new();
        let campaign = run_campaign(connect(&api, &link), "a");
        let leadership = campaign.leadership();
        leadership.acquired().await.unwrap();
        for _ in 0..60 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            assert!(leadership.is_leading());
        }
        let deadline = leadership.deadline().unwrap();
        assert!(deadline > Instant::now() + Duration::from_secs(6), "renewed every 3 s");
        let api = api.lock().unwrap();
        let patches = api.count("PATCH");
        assert!((19..=21).contains(&patches), "{patches} renewals in 60 s");
        assert_eq!(api.count("GET"), 1, "renewals are patches alone: {:?}", api.methods());
        assert!(
            api.requests
                .iter()
                .filter(|r| r.method != "GET")
                .all(|r| r.query.contains("fieldManager=orchestrator-operator-leader%2Fa")),
            "every write under the replica's own field manager: {:?}",
            api.requests
        );
    }

    /// Every call answered 2.4 s after it was made: a renewal that reads before it writes,
    /// sent a renewal period after the previous answer, lands after the 10 s deadline.
    #[tokio::test(start_paused = true)]
    async fn a_slow_api_does_not_cost_the_lease() {
        let api = Arc::new(Mutex::new(FakeApi::default()));
        let latency = Duration::from_millis(2400);
        let link = Link::slow(latency);
        let started = Instant::now();
        let leadership = run_campaign(connect(&api, &link), "a").leadership();
        leadership.acquired().await.unwrap();
        // A read, then the create: the deadline counts from the create's send.
        assert_eq!(started.elapsed(), latency * 2);
        assert_eq!(leadership.deadline(), Some(started + latency + Duration::from_secs(10)));
        for second in 1..=60 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            assert!(leadership.is_leading(), "lost the Lease after {second} s");
        }
        let api = api.lock().unwrap();
        assert_eq!(api.count("GET"), 1, "{:?}", api.methods());
        // One renewal sent every 3 s, each answered 2.4 s later.
        let patches = api.count("PATCH");
        assert!((19..=21).contains(&patches), "{patches} renewals in 60 s");
        assert!(
            api.requests.iter().filter(|r| r.method != "GET").all(|r| r.code < 300),
            "{:?}",
            api.requests
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_renewal_refused_on_its_version_reads_the_lease_and_renews() {
        let api = Arc::new(Mutex::new(FakeApi::default()));
        let link = Link::new();
        let leadership = run_campaign(connect(&api, &link), "a").leadership();
        leadership.acquired().await.unwrap();
        let acquired = Instant::now();
        tokio::time::sleep(Duration::from_secs(4)).await;
        api.lock().unwrap().touch();
        let before = api.lock().unwrap().requests.len();
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(leadership.is_leading());
        let api = api.lock().unwrap();
        let after: Vec<_> = api.requests[before..]
            .iter()
            .map(|r| (r.method.as_str(), r.code))
            .collect();
        assert_eq!(after, vec![("PATCH", 409), ("GET", 200), ("PATCH", 200)]);
        // Counted from the send of the second patch, at the renewal after the touch.
        assert_eq!(leadership.deadline(), Some(acquired + Duration::from_secs(6 + 10)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_standby_takes_over_only_after_the_leader_stopped() {
        let api = Arc::new(Mutex::new(FakeApi::default()));
        let ((link_a, campaign_a), (_, campaign_b)) = leader_and_standby(&api).await;
        let (a, b) = (campaign_a.leadership(), campaign_b.leadership());

        // The holder renews: the standby waits, however long.
        tokio::time::sleep(Duration::from_millis(31_500)).await;
        assert!(a.is_leading());
        assert!(!b.is_leading());
        assert_eq!(
            api.lock().unwrap().holder().as_deref(),
            Some(campaign_a.holder_identity())
        );

        // The holder's API connection goes silent; the standby's does not.
        link_a.freeze();
        let a_deadline = a.deadline().unwrap();
        let timing = Timing::for_lease(LEASE);
        while !b.is_leading() {
            assert!(!a.is_leading() || !b.is_leading(), "never two leaders");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let taken = Instant::now();
        assert!(!a.is_leading());
        assert!(
            taken >= a_deadline + timing.margin,
            "taken {:?} after the holder's deadline",
            taken - a_deadline
        );
        assert!(
            taken <= a_deadline + timing.margin + timing.retry * 2,
            "and not much later"
        );
        assert_eq!(
            api.lock().unwrap().holder().as_deref(),
            Some(campaign_b.holder_identity())
        );
        let lease = api.lock().unwrap().lease.clone().unwrap();
        assert_eq!(lease["spec"]["leaseTransitions"], json!(1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_lapsed_term_is_taken_back_at_once_when_nobody_took_the_lease() {
        let api = Arc::new(Mutex::new(FakeApi::default()));
        let link = Link::new();
        let campaign = run_campaign(connect(&api, &link), "a");
        let leadership = campaign.leadership();
        leadership.acquired().await.unwrap();
        let holder = campaign.holder_identity().to_string();
        let transitions = api.lock().unwrap().lease.clone().unwrap()["spec"]["leaseTransitions"].clone();

        // The API server goes away for longer than the lease: the term lapses.
        link.freeze();
        leadership.lost().await;
        tokio::time::sleep(LEASE).await;
        assert!(!leadership.is_leading());

        // It comes back: the same process campaigns again and takes its Lease back once the
        // margin of the lapsed term has passed, without waiting for a lease duration.
        link.thaw();
        let back = Instant::now();
        let campaign = campaign.again().await;
        leadership.acquired().await.unwrap();
        assert!(leadership.is_leading(), "the clones given out follow the new campaign");
        assert_eq!(Instant::now(), back + Timing::for_lease(LEASE).margin);
        assert_eq!(campaign.holder_identity(), holder);
        let lease = api.lock().unwrap().lease.clone().unwrap();
        assert_eq!(lease["spec"]["holderIdentity"], json!(holder));
        assert_eq!(lease["spec"]["leaseTransitions"], transitions, "not a new holder");
        // And it holds it as any term does.
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(leadership.is_leading());
    }

    #[tokio::test(start_paused = true)]
    async fn a_lapsed_term_does_not_take_back_a_lease_another_took() {
        let api = Arc::new(Mutex::new(FakeApi::default()));
        let ((link_a, campaign_a), (_, campaign_b)) = leader_and_standby(&api).await;
        let (a, b) = (campaign_a.leadership(), campaign_b.leadership());
        link_a.freeze();
        b.acquired().await.unwrap();
        assert!(!a.is_leading());

        link_a.thaw();
        let _campaign_a = campaign_a.again().await;
        for _ in 0..60 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            assert!(b.is_leading() && !a.is_leading(), "a stands by while b renews");
        }
        assert_eq!(
            api.lock().unwrap().holder().as_deref(),
            Some(campaign_b.holder_identity())
        );
    }

    #[tokio::test(start_paused = true)]
    async fn two_processes_with_one_identity_do_not_both_lead() {
        let api = Arc::new(Mutex::new(FakeApi::default()));
        let first = run_campaign(connect(&api, &Link::new()), "a");
        first.leadership().acquired().await.unwrap();
        // Another process of the same pod (a restart, or a copy) campaigns too.
        let second = run_campaign(connect(&api, &Link::new()), "a");
        let leading = second.leadership();
        for elapsed in 1..=60 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            assert!(!leading.is_leading(), "two leaders after {elapsed} s");
        }
        assert_ne!(first.holder_identity(), second.holder_identity());
        assert_eq!(api.lock().unwrap().holder().as_deref(), Some(first.holder_identity()));
        // It takes over as soon as the first lets go.
        let released = Instant::now();
        first.release().await;
        leading.acquired().await.unwrap();
        assert!(released.elapsed() <= Timing::for_lease(LEASE).retry);
        assert_eq!(api.lock().unwrap().holder().as_deref(), Some(second.holder_identity()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_take_over_a_changed_lease_is_refused() {
        let api = Arc::new(Mutex::new(FakeApi::default()));
        let link = Link::new();
        let a = run_campaign(connect(&api, &link), "a");
        a.leadership().acquired().await.unwrap();
        let stale: Lease = serde_json::from_value(api.lock().unwrap().lease.clone().unwrap()).unwrap();
        // The holder renews after the standby read the Lease.
        tokio::time::sleep(Duration::from_secs(4)).await;
        let elector = elector(connect(&api, &link), "b");
        let attempt = elector.take(&stale, true).await.unwrap();
        assert!(matches!(attempt, Attempt::Wait(_)));
        assert!(!elector.leadership.is_leading());
        assert_eq!(api.lock().unwrap().holder().as_deref(), Some(a.holder_identity()));
        assert!(a.leadership().is_leading());
    }

    /// Every write answered 11 s after it was made: the create lands, but its answer comes
    /// after the 10 s deadline it would have started.
    #[tokio::test(start_paused = true)]
    async fn a_take_answered_after_its_deadline_does_not_hold() {
        let api = Arc::new(Mutex::new(FakeApi::default()));
        let link = Link::slow_writes(Duration::from_secs(11));
        let elector = elector(connect(&api, &link), "b");
        let attempt = elector.try_take(&mut None).await.unwrap();
        assert_eq!(
            api.lock().unwrap().holder(),
            Some(elector.holder.clone()),
            "the create landed"
        );
        assert!(matches!(attempt, Attempt::Lost), "not held: answered too late");
        assert!(!elector.leadership.is_leading());

        // A whole campaign ends there: it never leads and never renews.
        let api = Arc::new(Mutex::new(FakeApi::default()));
        let campaign = run_campaign(connect(&api, &link), "a");
        assert_eq!(campaign.leadership().acquired().await, Err(NotLeading));
        let received = link.received();
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(link.received(), received, "no renewal after a lost take");
    }

    #[tokio::test(start_paused = true)]
    async fn a_released_lease_is_taken_at_once() {
        let api = Arc::new(Mutex::new(FakeApi::default()));
        let link = Link::new();
        let a = run_campaign(connect(&api, &link), "a");
        a.leadership().acquired().await.unwrap();
        let leadership = a.leadership();
        a.release().await;
        assert!(!leadership.is_leading());
        assert_eq!(api.lock().unwrap().holder(), None);
        let started = Instant::now();
        let b = run_campaign(connect(&api, &link), "b").leadership();
        b.acquired().await.unwrap();
        assert_eq!(Instant::now(), started, "no wait for the lease to expire");
        assert!(api.lock().unwrap().holder().unwrap().starts_with("b_"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_that_names_this_process_is_released_even_past_the_deadline() {
        let api = Arc::new(Mutex::new(FakeApi::default()));
        let a = run_campaign(connect(&api, &Link::new()), "a");
        a.leadership().acquired().await.unwrap();
        // It no longer leads (its deadline passed, say), but nobody took the Lease.
        a.leadership.lose();
        a.release().await;
        assert_eq!(api.lock().unwrap().holder(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_standby_told_to_stop_ends_its_campaign() {
        let api = Arc::new(Mutex::new(FakeApi::default()));
        let a = run_campaign(connect(&api, &Link::new()), "a");
        a.leadership().acquired().await.unwrap();
        let link_b = Link::new();
        let b = run_campaign(connect(&api, &link_b), "b");
        let leadership = b.leadership();
        let stopped = b.until_leading(tokio::time::sleep(Duration::from_secs(5))).await;
        assert!(stopped.is_none());
        assert!(link_b.received() > 0, "it had campaigned");
        // The campaign is over: it reads nothing more, and never takes the Lease, even once
        // the leader stops renewing.
        let received = link_b.received();
        a.release().await;
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(link_b.received(), received);
        assert!(!leadership.is_leading());
        assert_eq!(api.lock().unwrap().holder(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_take_answered_too_late_campaigns_again_until_it_leads() {
        let api = Arc::new(Mutex::new(FakeApi::default()));
        // Writes answered after the deadline they would start (the API server coming back).
        let link = Link::slow_writes(Duration::from_secs(11));
        let campaign = run_campaign(connect(&api, &link), "a");
        let leadership = campaign.leadership();
        let waiting = tokio::spawn(campaign.until_leading(std::future::pending()));
        tokio::time::sleep(Duration::from_secs(40)).await;
        assert!(!leadership.is_leading(), "no term from a late answer");
        assert!(!waiting.is_finished(), "still campaigning, not given up");
        link.delay_ms.store(0, Ordering::SeqCst);
        let campaign = tokio::time::timeout(Duration::from_secs(60), waiting)
            .await
            .expect("leads once answers are quick")
            .unwrap()
            .expect("leading");
        assert!(campaign.leadership().is_leading());
    }

    #[tokio::test(start_paused = true)]
    async fn until_leading_returns_the_campaign_once_it_leads() {
        let api = Arc::new(Mutex::new(FakeApi::default()));
        let a = run_campaign(connect(&api, &Link::new()), "a");
        let a = a.until_leading(std::future::pending()).await.expect("leading");
        assert!(a.leadership().is_leading());
    }
}
