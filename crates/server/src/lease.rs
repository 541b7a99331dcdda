//! The leases of the jobs running here, as this server knows them: each job carries a local
//! deadline on the monotonic clock, earlier than its lease's expiry in the database.
//!
//! A lease is granted or extended by a statement the server sends at some local instant
//! `sent`; the database computes the expiry as its own `now() + lease`, and `now()` is taken
//! when the statement runs, after it was sent. So `sent + lease` can only come before the
//! database's expiry, whatever the clocks say, and the local deadline `sent + lease − margin`
//! comes at least the margin ([`crate::config::ServerSettings::lease_margin`]) before it: a job
//! whose deadline passes is stopped here before any other server can claim it.

use std::collections::BTreeMap;

use tokio::sync::watch;
use tokio::time::Instant;

/// Where a running job's lease stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Lease {
    /// Held until this local instant (the local deadline).
    Until(Instant),
    /// The database said the server no longer owns the job.
    Lost,
}

/// Why a job was stopped unfinished.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Loss {
    /// Its local deadline passed without a successful renewal.
    Expired,
    /// A renewal answered that the server no longer owns it.
    NotOwned,
}

impl Loss {
    /// For logs.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Loss::Expired => "no lease renewal succeeded before the local lease deadline",
            Loss::NotOwned => "the database says this server no longer owns the job",
        }
    }
}

/// The leases of the jobs running here; the heartbeat renews them.
#[derive(Debug, Default)]
pub(crate) struct Leases(std::sync::Mutex<BTreeMap<i64, watch::Sender<Lease>>>);

impl Leases {
    /// Tracks a job just claimed with the local deadline `deadline`; the receiver sees every
    /// renewal and loss.
    pub(crate) fn insert(&self, id: i64, deadline: Instant) -> watch::Receiver<Lease> {
        let (tx, rx) = watch::channel(Lease::Until(deadline));
        self.0.lock().unwrap().insert(id, tx);
        rx
    }

    /// Stops tracking a job (finished, abandoned or cancelled).
    pub(crate) fn remove(&self, id: i64) {
        self.0.lock().unwrap().remove(&id);
    }

    /// Ids of the jobs running here.
    pub(crate) fn ids(&self) -> Vec<i64> {
        self.0.lock().unwrap().keys().copied().collect()
    }

    /// Applies a successful renewal of the jobs `asked`: the ones in `owned` are held until
    /// `deadline` (never moved earlier), the others are lost. Jobs claimed since the renewal
    /// was sent are left alone.
    pub(crate) fn renewed(&self, asked: &[i64], owned: &[i64], deadline: Instant) {
        for (id, lease) in self.0.lock().unwrap().iter() {
            if !asked.contains(id) {
                continue;
            }
            if owned.contains(id) {
                lease.send_if_modified(|lease| match lease {
                    Lease::Until(until) if *until < deadline => {
                        *until = deadline;
                        true
                    }
                    _ => false,
                });
            } else {
                lease.send_replace(Lease::Lost);
            }
        }
    }
}

/// Waits until `lease` is lost or its deadline passes without a renewal.
pub(crate) async fn lost(lease: &mut watch::Receiver<Lease>) -> Loss {
    loop {
        let deadline = match *lease.borrow_and_update() {
            Lease::Lost => return Loss::NotOwned,
            Lease::Until(deadline) => deadline,
        };
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => return Loss::Expired,
            changed = lease.changed() => if changed.is_err() {
                // The job is no longer tracked: no renewal can come any more.
                tokio::time::sleep_until(deadline).await;
                return Loss::Expired;
            },
        }
    }
}

/// The local deadline of `lease`, if it still holds.
pub(crate) fn deadline(lease: &watch::Receiver<Lease>) -> Option<Instant> {
    match *lease.borrow() {
        Lease::Until(deadline) => Some(deadline),
        Lease::Lost => None,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_renewal_extends_the_owned_leases_and_loses_the_others() {
        let leases = Leases::default();
        let start = Instant::now();
        let later = start + Duration::from_secs(10);
        let (owned, stolen, claimed_since) = (
            leases.insert(1, start),
            leases.insert(2, start),
            leases.insert(3, start),
        );
        leases.renewed(&[1, 2], &[1], later);
        assert_eq!(*owned.borrow(), Lease::Until(later));
        assert_eq!(*stolen.borrow(), Lease::Lost);
        assert_eq!(*claimed_since.borrow(), Lease::Until(start), "not asked about");
        leases.renewed(&[1], &[1], start);
        assert_eq!(*owned.borrow(), Lease::Until(later), "never moved earlier");
        assert_eq!(deadline(&owned), Some(later));
        assert_eq!(deadline(&stolen), None);
        leases.remove(2);
        assert_eq!(leases.ids(), [1, 3]);
    }
}
