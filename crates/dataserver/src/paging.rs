//! Pages of histories: the index that finds a paging cursor, and the walk that collects a page.
//!
//! A history is a `BTreeMap` by order key (lamport, origin, seq), but a cursor is a message id
//! (origin, seq), without its Lamport time. [`LamportIndex`] stores the Lamport time of every
//! message by id, so a page starts with one index lookup and one `BTreeMap` range. Without
//! it, each page would scan the history from its newest end to the cursor, which for a
//! million-message subject read back to its start is about 5 × 10^8 steps in all.
//!
//! `page_cost_at_depth` below measures both in one history of 1,000,000 entries, with the
//! cursor 1000 entries from its start (`cargo test --release -p forum-dataserver page_cost --
//! --ignored --nocapture`). In four runs on a 2-core Xeon VM that other work shared, the scan
//! for the cursor took 9 to 21 ms. The lookup and the collection of the 999-entry page took
//! 63 to 80 µs.

use std::collections::BTreeMap;
use std::ops::Bound;

use forum_protocol::{ChangeId, ServerId};
use rustc_hash::FxHashMap;

/// The total order of changes: (lamport, origin, seq). Histories sort by it, and the smallest
/// key wins a conflict.
pub(crate) type OrderKey = (u64, ServerId, u64);

/// How far beyond the end of an origin's dense slots a sequence number may be and still get
/// a slot there. A farther one goes to the sparse map, so a change whose sequence number is
/// far ahead adds at most 65,537 slots (256 KiB) to its origin's `Vec`.
const MAX_DENSE_GAP: u64 = 1 << 16;

/// The Lamport time of every public and private message, by id.
///
/// Sequence numbers of one origin are dense from 1, and changes mostly arrive in sequence
/// order, so each origin gets a `Vec` of 4 bytes per change (0 for a change that is not a
/// message, or not applied yet). Lamport times above `u32::MAX` (four billion changes) go to
/// the hash map. A hash map would take about 4 to 7 times as much: 24-byte
/// entries plus a control byte, in a table that is kept between 7/16 and 7/8 full. Ids far
/// beyond the end of their origin's `Vec` (a server that receives live changes before it has
/// caught up) go to a hash map instead.
#[derive(Default)]
pub(crate) struct LamportIndex {
    dense: FxHashMap<ServerId, Vec<u32>>,
    sparse: FxHashMap<ChangeId, u64>,
}

impl LamportIndex {
    /// Records the Lamport time of a message. Lamport times start at 1, so 0 marks an empty slot.
    pub fn insert(&mut self, id: ChangeId, lamport: u64) {
        let (Some(slot), Ok(small)) = (id.seq.checked_sub(1), u32::try_from(lamport)) else {
            self.sparse.insert(id, lamport);
            return;
        };
        let slots = self.dense.entry(id.origin).or_default();
        let length = slots.len() as u64;
        if slot < length {
            slots[slot as usize] = small;
        } else if slot - length <= MAX_DENSE_GAP {
            slots.resize(slot as usize + 1, 0);
            slots[slot as usize] = small;
        } else {
            self.sparse.insert(id, lamport);
        }
    }

    /// Returns the order key of the message with this id, or `None` when no message has it.
    pub fn order_key(&self, id: ChangeId) -> Option<OrderKey> {
        let dense = id.seq.checked_sub(1).and_then(|slot| self.dense.get(&id.origin)?.get(usize::try_from(slot).ok()?));
        let lamport = match dense {
            Some(&lamport) if lamport != 0 => u64::from(lamport),
            _ => *self.sparse.get(&id)?,
        };
        Some((lamport, id.origin, id.seq))
    }
}

/// Collects the newest `limit` entries older than `before` (or the newest of all without it)
/// across `histories`, in history order, and returns them with whether older entries remain.
///
/// Each history is read backwards from the cursor for at most `limit + 1` entries, so a page
/// costs O(h × (log n + limit)) for h histories of n entries, whatever its depth.
pub(crate) fn newest_before<'a, V>(
    histories: impl IntoIterator<Item = &'a BTreeMap<OrderKey, V>>,
    before: Option<OrderKey>,
    limit: usize,
) -> (Vec<(OrderKey, &'a V)>, bool) {
    let upper = before.map_or(Bound::Unbounded, Bound::Excluded);
    let mut entries: Vec<(OrderKey, &'a V)> = Vec::new();
    for history in histories {
        let older = history.range((Bound::Unbounded, upper)).rev().take(limit + 1);
        entries.extend(older.map(|(key, value)| (*key, value)));
    }
    // A subject with merged histories has entries from several maps, so they are sorted
    // together before the page is cut.
    entries.sort_unstable_by(|(first, _), (second, _)| second.cmp(first));
    let more = entries.len() > limit;
    entries.truncate(limit);
    entries.reverse();
    (entries, more)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_finds_dense_and_sparse_ids() {
        let mut index = LamportIndex::default();
        index.insert(ChangeId::new(1, 1), 5);
        index.insert(ChangeId::new(1, 3), 9);
        index.insert(ChangeId::new(2, 1 << 40), 11);
        index.insert(ChangeId::new(3, 0), 2);
        index.insert(ChangeId::new(1, 5), 1 << 33);

        assert_eq!(index.order_key(ChangeId::new(1, 1)), Some((5, 1, 1)));
        assert_eq!(index.order_key(ChangeId::new(1, 3)), Some((9, 1, 3)));
        assert_eq!(index.order_key(ChangeId::new(2, 1 << 40)), Some((11, 2, 1 << 40)));
        assert_eq!(index.order_key(ChangeId::new(3, 0)), Some((2, 3, 0)));
        assert_eq!(index.order_key(ChangeId::new(1, 5)), Some((1 << 33, 1, 5)), "a Lamport time above u32::MAX");
        assert_eq!(index.order_key(ChangeId::new(1, 2)), None, "a slot between two messages is empty");
        assert_eq!(index.order_key(ChangeId::new(1, 4)), None, "a slot past the end");
        assert_eq!(index.order_key(ChangeId::new(9, 1)), None, "an origin never seen");
        assert!(index.dense.get(&2).is_none_or(Vec::is_empty), "a far sequence number allocates no slots");
    }

    #[test]
    fn newest_before_merges_histories() {
        let first: BTreeMap<OrderKey, &str> = [((1, 1, 1), "a"), ((3, 1, 3), "c"), ((5, 1, 5), "e")].into();
        let second: BTreeMap<OrderKey, &str> = [((2, 2, 1), "b"), ((4, 2, 2), "d")].into();

        let (page, more) = newest_before([&first, &second], None, 2);
        assert_eq!(page.iter().map(|(_, text)| **text).collect::<Vec<_>>(), ["d", "e"]);
        assert!(more);

        let (page, more) = newest_before([&first, &second], Some((4, 2, 2)), 2);
        assert_eq!(page.iter().map(|(_, text)| **text).collect::<Vec<_>>(), ["b", "c"]);
        assert!(more);

        let (page, more) = newest_before([&first, &second], Some((2, 2, 1)), 2);
        assert_eq!(page.iter().map(|(_, text)| **text).collect::<Vec<_>>(), ["a"]);
        assert!(!more);
    }

    /// Compares a page read through the index with a scan for the cursor, at the deep end
    /// of a million-entry history. It prints the times, and runs only when asked for.
    #[test]
    #[ignore = "a timing for release builds; see the module documentation"]
    fn page_cost_at_depth() {
        const ENTRIES: u64 = 1_000_000;
        const CURSOR_SEQ: u64 = 1000;
        let mut history: BTreeMap<OrderKey, ()> = BTreeMap::new();
        let mut index = LamportIndex::default();
        for seq in 1..=ENTRIES {
            history.insert((seq, 1, seq), ());
            index.insert(ChangeId::new(1, seq), seq);
        }
        let cursor = ChangeId::new(1, CURSOR_SEQ);

        let started = std::time::Instant::now();
        let scanned = history.keys().rev().find(|key| key.1 == cursor.origin && key.2 == cursor.seq).copied();
        let scan = started.elapsed();

        let started = std::time::Instant::now();
        let key = index.order_key(cursor);
        let (page, _) = newest_before([&history], key, 1000);
        let indexed = started.elapsed();

        assert_eq!(scanned, key);
        assert_eq!(page.len(), (CURSOR_SEQ - 1) as usize);
        println!("scan for the cursor: {scan:?}; index lookup and page: {indexed:?}");
    }
}
