//! Counters that several tasks increment and the status report reads.
//!
//! They are plain atomics, not state owned by the actor, because each one only grows and no
//! decision depends on reading two of them together.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use forum_protocol::{Counters, Rates};

/// The period over which [`Metrics::rates`] averages.
const RATE_WINDOW: Duration = Duration::from_secs(10);
/// The minimum time between two samples kept for the rates.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

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
    /// Samples of the counters, oldest first, spanning [`RATE_WINDOW`] at most.
    samples: Mutex<VecDeque<(Instant, Counters)>>,
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

    /// Records the counters for the rates; the replicator calls it on every tick, and at most
    /// one sample per second is kept.
    pub fn sample(&self, now: Instant) {
        let mut samples = self.samples.lock().expect("the lock is never poisoned");
        if samples.back().is_some_and(|(at, _)| now.duration_since(*at) < SAMPLE_EVERY) {
            return;
        }
        samples.push_back((now, self.snapshot()));
        while samples.front().is_some_and(|(at, _)| now.duration_since(*at) > RATE_WINDOW) {
            samples.pop_front();
        }
    }

    /// Returns the per-second rates between the oldest sample and now.
    pub fn rates(&self, now: Instant) -> Rates {
        let samples = self.samples.lock().expect("the lock is never poisoned");
        let Some((since, old)) = samples.front() else { return Rates::default() };
        let seconds = now.duration_since(*since).as_secs_f64();
        if seconds < 0.5 {
            return Rates::default();
        }
        let new = self.snapshot();
        let rate = |new: u64, old: u64| (new.saturating_sub(old) as f64 / seconds) as u64;
        Rates {
            requests: rate(new.requests, old.requests),
            local_changes: rate(new.local_changes, old.local_changes),
            replicated_changes: rate(new.replicated_changes, old.replicated_changes),
            fetched_changes: rate(new.fetched_changes, old.fetched_changes),
            commits: rate(new.commits, old.commits),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_average_over_the_window() {
        let metrics = Metrics::default();
        let start = Instant::now();
        assert_eq!(metrics.rates(start), Rates::default(), "no sample yet");
        metrics.sample(start);
        add(&metrics.requests, 500);
        add(&metrics.local_changes, 40);
        let rates = metrics.rates(start + Duration::from_secs(2));
        assert_eq!((rates.requests, rates.local_changes, rates.commits), (250, 20, 0));

        // Samples older than the window are dropped, so old activity stops counting.
        for second in 1..=12 {
            metrics.sample(start + Duration::from_secs(second));
        }
        assert_eq!(metrics.rates(start + Duration::from_secs(13)).requests, 0);
    }
}
