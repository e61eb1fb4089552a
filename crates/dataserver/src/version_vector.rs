//! The version tracker: the changes of each origin that a server has, as a contiguous prefix
//! and a set beyond a gap.

use std::collections::BTreeSet;

use forum_protocol::{ChangeId, ServerId, VersionVector};
use rustc_hash::FxHashMap;

/// Tracks, per origin, the highest sequence number up to which every change is held, and the
/// sequence numbers held above it. A change that arrives after a gap is applied and stored at
/// once, but it counts in the vector only when the gap below it is filled.
#[derive(Default)]
pub(crate) struct VersionTracker {
    contiguous: FxHashMap<ServerId, u64>,
    /// Sequence numbers above the contiguous prefix, per origin. Empty sets are removed.
    beyond_gap: FxHashMap<ServerId, BTreeSet<u64>>,
}

impl VersionTracker {
    /// Returns whether the change with this id is held.
    pub fn contains(&self, id: ChangeId) -> bool {
        let contiguous = self.contiguous.get(&id.origin).copied().unwrap_or(0);
        (id.seq >= 1 && id.seq <= contiguous) || self.beyond_gap.get(&id.origin).is_some_and(|held| held.contains(&id.seq))
    }

    /// Records a change and returns true, or returns false when it was held already.
    pub fn record(&mut self, id: ChangeId) -> bool {
        let contiguous = self.contiguous.entry(id.origin).or_default();
        if id.seq <= *contiguous && id.seq >= 1 {
            return false;
        }
        if id.seq != *contiguous + 1 {
            // Sequence numbers start at 1, so a 0 is held beyond the gap and never joins the prefix.
            return self.beyond_gap.entry(id.origin).or_default().insert(id.seq);
        }
        *contiguous = id.seq;
        if let Some(held) = self.beyond_gap.get_mut(&id.origin) {
            while held.first() == Some(&(*contiguous + 1)) {
                held.pop_first();
                *contiguous += 1;
            }
            if held.is_empty() {
                self.beyond_gap.remove(&id.origin);
            }
        }
        true
    }

    /// Returns the contiguous sequence number per origin.
    pub fn vector(&self) -> VersionVector {
        self.contiguous.iter().map(|(origin, seq)| (*origin, *seq)).filter(|(_, seq)| *seq > 0).collect()
    }

    /// Returns the number of changes held beyond a gap, over all origins.
    #[cfg(test)]
    pub fn beyond_gap_count(&self) -> usize {
        self.beyond_gap.values().map(BTreeSet::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gap_holds_vector_until_filled() {
        let mut tracker = VersionTracker::default();
        tracker.record(ChangeId::new(1, 1));
        tracker.record(ChangeId::new(1, 3));
        tracker.record(ChangeId::new(1, 4));
        tracker.record(ChangeId::new(2, 2));
        assert_eq!(tracker.vector(), VersionVector::from([(1, 1)]));
        assert_eq!(tracker.beyond_gap_count(), 3);

        tracker.record(ChangeId::new(1, 2));
        tracker.record(ChangeId::new(2, 1));
        assert_eq!(tracker.vector(), VersionVector::from([(1, 4), (2, 2)]));
        assert_eq!(tracker.beyond_gap_count(), 0);
    }

    #[test]
    fn record_reports_changes_held_already() {
        let mut tracker = VersionTracker::default();
        assert!(tracker.record(ChangeId::new(1, 2)), "beyond a gap");
        assert!(!tracker.record(ChangeId::new(1, 2)), "beyond a gap, again");
        assert!(tracker.contains(ChangeId::new(1, 2)));
        assert!(!tracker.contains(ChangeId::new(1, 1)));
        assert!(tracker.record(ChangeId::new(1, 1)));
        assert!(!tracker.record(ChangeId::new(1, 1)), "in the prefix, again");
        assert!(tracker.contains(ChangeId::new(1, 1)));
        assert!(tracker.contains(ChangeId::new(1, 2)));
        assert!(!tracker.contains(ChangeId::new(1, 3)));
        assert!(!tracker.contains(ChangeId::new(2, 1)));
        assert!(tracker.record(ChangeId::new(1, 0)), "seq 0 is recorded");
        assert!(!tracker.record(ChangeId::new(1, 0)), "seq 0 is recorded once");
        assert!(tracker.contains(ChangeId::new(1, 0)));
    }
}
