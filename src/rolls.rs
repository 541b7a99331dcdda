//! The fleet-wide limit on clusters rolling at once (`--max-concurrent-rolls`): a change that
//! reaches every cluster at once (an operator upgrade that changes every pod template, a new
//! default) rolls a few clusters at a time, the others waiting with `MaintenanceBlocked` /
//! `RollLimit` until a slot frees.
//!
//! A cluster holds a slot from its roll's first step until no server is outdated
//! (`status.maintenance.rollStartedAt`, what a restarted operator reads back from the clusters'
//! cache; between steps too, and while a step halts), or while a reconcile reserved one for the
//! first step it is about to store. A slot is reserved atomically, so that concurrent reconciles
//! never start more rolls than the limit, and given back once the cluster's stored status shows
//! no roll under way; a cluster deleted, even unseen, gives its slot back. The cluster that has
//! waited longest is woken as soon as a roll ends (the others look again on their own); it is
//! not promised the slot: a cluster whose own requeue comes first may take it, and the one
//! woken stays first in line for the next.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Mutex;

use crate::caches::Caches;

/// Clusters rolling at once unless the operator is told otherwise: enough that a fleet-wide
/// change progresses, few enough that it is not everywhere at once.
pub const DEFAULT_CONCURRENT_ROLLS: usize = 10;

/// The slots of the rolls under way.
pub(crate) struct Rolls {
    limit: usize,
    reserved: Mutex<BTreeSet<String>>,
    /// Clusters refused a slot, longest waiting first.
    waiting: Mutex<VecDeque<String>>,
}

impl Rolls {
    /// At most `limit` clusters rolling at once (0: no limit).
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            limit,
            reserved: Mutex::default(),
            waiting: Mutex::default(),
        }
    }

    /// A slot for cluster `key` (`namespace/name`): kept if it has one, else taken if one is
    /// free. `Err(limit)` when every slot is held by other clusters.
    pub(crate) fn reserve(&self, key: &str, caches: &Caches) -> Result<(), usize> {
        if self.limit == 0 {
            return Ok(());
        }
        let mut reserved = self.reserved.lock().unwrap_or_else(|e| e.into_inner());
        // Until every cluster is listed (an operator start), the rolls under way are not known:
        // none starts.
        let Some(mut holders) = caches.rolling() else {
            return Err(self.limit);
        };
        holders.extend(reserved.iter().cloned());
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        if holders.contains(key) || holders.len() < self.limit {
            reserved.insert(key.to_string());
            waiting.retain(|k| k != key);
            Ok(())
        } else {
            if !waiting.iter().any(|k| k == key) {
                waiting.push_back(key.to_string());
            }
            Err(self.limit)
        }
    }

    /// Gives back the reservation of `key` unless the status just stored for it records a roll
    /// under way (`rolling`); a deleted cluster gives it back too.
    pub(crate) fn settle(&self, key: &str, rolling: bool) {
        if !rolling {
            self.reserved.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
        }
    }

    /// `key` no longer waits for a slot: its plan starts no roll (the change was reverted,
    /// the roll started), or it was deleted.
    pub(crate) fn withdraw(&self, key: &str) {
        self.waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|k| k != key);
    }
}

impl Rolls {
    /// The cluster that has waited longest for a slot, to wake when a roll ends so that it
    /// looks again now rather than at its next requeue. It keeps its place until it takes a
    /// slot or withdraws: woken but beaten to the slot by another cluster, it is woken first
    /// again at the next roll's end.
    pub(crate) fn longest_waiting(&self) -> Option<String> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner()).front().cloned()
    }

    /// Gives back the reservations of clusters not in `live` (deleted while unwatched), and
    /// forgets them as waiting.
    pub(crate) fn retain(&self, live: &BTreeSet<String>) {
        self.reserved
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|key| live.contains(key));
        self.waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|key| live.contains(key));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_more_clusters_roll_than_the_limit_and_a_slot_frees_when_a_roll_ends() {
        let caches = Caches::default();
        let rolls = Rolls::new(2);
        assert_eq!(rolls.reserve("ns/a", &caches), Ok(()));
        assert_eq!(rolls.reserve("ns/b", &caches), Ok(()));
        assert_eq!(rolls.reserve("ns/c", &caches), Err(2));
        // A cluster holding a slot keeps it.
        assert_eq!(rolls.reserve("ns/a", &caches), Ok(()));
        // b's reconcile found nothing to roll: its slot goes to c.
        rolls.settle("ns/b", false);
        assert_eq!(rolls.reserve("ns/c", &caches), Ok(()));
        // a stored its first step: it keeps its slot.
        rolls.settle("ns/a", true);
        assert_eq!(rolls.reserve("ns/d", &caches), Err(2));
        assert_eq!(Rolls::new(0).reserve("ns/d", &caches), Ok(()));
        // a deleted while unwatched: its slot goes back.
        rolls.retain(&BTreeSet::from(["ns/c".to_string()]));
        assert_eq!(rolls.reserve("ns/d", &caches), Ok(()));
    }

    #[test]
    fn the_cluster_waiting_longest_is_woken_until_it_takes_a_slot_or_withdraws() {
        let caches = Caches::default();
        let rolls = Rolls::new(1);
        assert_eq!(rolls.reserve("ns/a", &caches), Ok(()));
        assert_eq!(rolls.reserve("ns/b", &caches), Err(1));
        assert_eq!(rolls.reserve("ns/c", &caches), Err(1));
        // b asks again while waiting: it keeps its place.
        assert_eq!(rolls.reserve("ns/b", &caches), Err(1));
        assert_eq!(rolls.longest_waiting().as_deref(), Some("ns/b"));
        // a's roll ended; c looked first and took the slot: b is still first in line.
        rolls.settle("ns/a", false);
        assert_eq!(rolls.reserve("ns/c", &caches), Ok(()));
        assert_eq!(rolls.longest_waiting().as_deref(), Some("ns/b"));
        // c's roll ended; b takes the slot and leaves the queue.
        rolls.settle("ns/c", false);
        assert_eq!(rolls.reserve("ns/b", &caches), Ok(()));
        assert_eq!(rolls.longest_waiting(), None);
        // A cluster whose change was reverted, or that was deleted, waits no more.
        assert_eq!(rolls.reserve("ns/d", &caches), Err(1));
        assert_eq!(rolls.reserve("ns/e", &caches), Err(1));
        rolls.withdraw("ns/d");
        assert_eq!(rolls.longest_waiting().as_deref(), Some("ns/e"));
        rolls.retain(&BTreeSet::from(["ns/b".to_string()]));
        assert_eq!(rolls.longest_waiting(), None);
    }
}
