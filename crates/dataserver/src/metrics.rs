//! Counters that several tasks increment and the status report reads.
//!
//! They are plain atomics, not state owned by the actor, because each one only grows and no
//! decision depends on reading two of them together.

use std::sync::atomic::{AtomicU64, Ordering};

use forum_protocol::Counters;

/// The counters of one data server since it started. See [`Counters`] for their meaning.
#[derive(Default)]
pub(crate) struct Metrics {
    pub requests: AtomicU64,
    pub local_changes: AtomicU64,
    pub replicated_changes: AtomicU64,
    pub fetched_changes: AtomicU64,
    pub commits: AtomicU64,
    pub duplicate_changes: AtomicU64,
    pub heartbeats_received: AtomicU64,
    pub fetches_served: AtomicU64,
    pub fetch_failures: AtomicU64,
}

/// Adds `amount` to a counter.
pub(crate) fn add(counter: &AtomicU64, amount: u64) {
    counter.fetch_add(amount, Ordering::Relaxed);
}

impl Metrics {
    pub fn snapshot(&self) -> Counters {
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        Counters {
            requests: read(&self.requests),
            local_changes: read(&self.local_changes),
            replicated_changes: read(&self.replicated_changes),
            fetched_changes: read(&self.fetched_changes),
            commits: read(&self.commits),
            duplicate_changes: read(&self.duplicate_changes),
            heartbeats_received: read(&self.heartbeats_received),
            fetches_served: read(&self.fetches_served),
            fetch_failures: read(&self.fetch_failures),
        }
    }
}
