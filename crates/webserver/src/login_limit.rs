//! Limits on failed logins per user name and per client address, against password guessing.
//!
//! Names are counted in the folded form that the data servers compare (trimmed and
//! lowercased), so `luis`, `LUIS` and ` Luis` share one count.
//!
//! Each name and each address has a fixed window of [`WINDOW`] that starts at its first
//! failure. When a window contains the maximum failures, further logins for that name or from
//! that address are rejected with 429 until the window ends, without asking the data server.
//! A successful login clears its name's failures but not its address's.
//!
//! NOTE: the counts live in one web server's memory, so a group of N web servers admits up to
//! N times the limits, and a restart clears them.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use forum_protocol::fold;

/// The length of a window of counted failures.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Failed logins per user name per window.
pub const MAX_FAILURES_PER_NAME: u32 = 5;
/// Failed logins per client address per window.
pub const MAX_FAILURES_PER_ADDRESS: u32 = 20;
/// The maximum number of names or addresses tracked. Beyond it, windows that ended are dropped, and if none
/// did, the oldest half of the windows are dropped, which forgets some failures early.
const MAX_TRACKED: usize = 100_000;

#[derive(Clone, Copy, Debug)]
struct Window {
    started: Instant,
    failures: u32,
}

/// Failure counts keyed by one kind of key (names or addresses).
struct Counts<K> {
    max_failures: u32,
    windows: HashMap<K, Window>,
}

impl<K: Hash + Eq + Clone> Counts<K> {
    fn new(max_failures: u32) -> Self {
        Counts { max_failures, windows: HashMap::new() }
    }

    /// Returns how long `key` stays blocked, or `None` when it may try.
    fn blocked_for(&self, key: &K, now: Instant) -> Option<Duration> {
        let window = self.windows.get(key)?;
        let ends = window.started + WINDOW;
        (window.failures >= self.max_failures && ends > now).then(|| ends - now)
    }

    fn record_failure(&mut self, key: K, now: Instant) {
        if self.windows.len() >= MAX_TRACKED && !self.windows.contains_key(&key) {
            self.make_room(now);
        }
        let window = self.windows.entry(key).or_insert(Window { started: now, failures: 0 });
        if window.started + WINDOW <= now {
            *window = Window { started: now, failures: 0 };
        }
        window.failures = window.failures.saturating_add(1);
    }

    fn make_room(&mut self, now: Instant) {
        self.windows.retain(|_, window| window.started + WINDOW > now);
        if self.windows.len() >= MAX_TRACKED {
            let mut starts: Vec<Instant> = self.windows.values().map(|window| window.started).collect();
            starts.sort_unstable();
            let median = starts[starts.len() / 2];
            self.windows.retain(|_, window| window.started > median);
        }
    }
}

/// The failed-login counts of one web server.
pub struct LoginLimiter {
    names: Mutex<Counts<String>>,
    addresses: Mutex<Counts<IpAddr>>,
}

impl Default for LoginLimiter {
    fn default() -> Self {
        LoginLimiter {
            names: Mutex::new(Counts::new(MAX_FAILURES_PER_NAME)),
            addresses: Mutex::new(Counts::new(MAX_FAILURES_PER_ADDRESS)),
        }
    }
}

impl LoginLimiter {
    /// Returns how long a login for `name` from `address` must wait, or `None` when it may
    /// proceed. The wait is rounded up to whole seconds and is at least 1 s.
    pub fn check(&self, name: &str, address: Option<IpAddr>) -> Option<Duration> {
        let now = Instant::now();
        let by_name = self.names.lock().expect("login limiter lock").blocked_for(&fold(name), now);
        let by_address = address.and_then(|address| self.addresses.lock().expect("login limiter lock").blocked_for(&address, now));
        let wait = by_name.max(by_address)?;
        Some(Duration::from_secs(wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(Duration::from_secs(1)))
    }

    /// Counts a failed login for `name` from `address`.
    pub fn record_failure(&self, name: &str, address: Option<IpAddr>) {
        let now = Instant::now();
        self.names.lock().expect("login limiter lock").record_failure(fold(name), now);
        if let Some(address) = address {
            self.addresses.lock().expect("login limiter lock").record_failure(address, now);
        }
    }

    /// Clears the failures of `name` after a successful login.
    pub fn record_success(&self, name: &str) {
        self.names.lock().expect("login limiter lock").windows.remove(&fold(name));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOME: Option<IpAddr> = Some(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));

    #[test]
    fn name_blocked_after_five_failures() {
        let limiter = LoginLimiter::default();
        for _ in 0..MAX_FAILURES_PER_NAME {
            assert_eq!(limiter.check("ana", None), None);
            limiter.record_failure("ana", None);
        }
        let wait = limiter.check("ana", None).expect("ana is blocked");
        assert!(wait <= WINDOW, "{wait:?}");
        assert!(wait >= Duration::from_secs(59), "{wait:?}");
        assert_eq!(limiter.check("bea", None), None, "another name is not blocked");
    }

    #[test]
    fn name_counted_ignoring_case() {
        let limiter = LoginLimiter::default();
        let typed = ["luis", "LUIS", "Luis", " luis ", "lUiS"];
        for name in typed {
            assert_eq!(limiter.check(name, None), None, "{name:?} was blocked before five failures");
            limiter.record_failure(name, None);
        }
        for name in ["luis", "LUIS", "Luis", "  LuIs\t"] {
            assert!(limiter.check(name, None).is_some(), "{name:?} was not blocked after five failures");
        }

        limiter.record_success("Luis");
        assert_eq!(limiter.check("LUIS", None), None, "a success under another case did not clear the count");
    }

    #[test]
    fn address_blocked_after_twenty_failures() {
        let limiter = LoginLimiter::default();
        for attempt in 0..MAX_FAILURES_PER_ADDRESS {
            limiter.record_failure(&format!("user{attempt}"), HOME);
        }
        assert!(limiter.check("fresh", HOME).is_some(), "the address is blocked for every name");
        assert_eq!(limiter.check("fresh", None), None);
    }

    #[test]
    fn success_clears_name_failures() {
        let limiter = LoginLimiter::default();
        for _ in 0..MAX_FAILURES_PER_NAME - 1 {
            limiter.record_failure("ana", HOME);
        }
        limiter.record_success("ana");
        limiter.record_failure("ana", HOME);
        assert_eq!(limiter.check("ana", HOME), None);
    }

    #[test]
    fn window_ends() {
        let mut counts = Counts::new(1);
        let start = Instant::now();
        counts.record_failure("ana".to_owned(), start);
        assert!(counts.blocked_for(&"ana".to_owned(), start).is_some());
        assert_eq!(counts.blocked_for(&"ana".to_owned(), start + WINDOW), None);
        counts.record_failure("ana".to_owned(), start + WINDOW);
        assert_eq!(counts.windows["ana"].failures, 1, "a new window starts after the old one ends");
    }

    #[test]
    fn tracked_keys_are_bounded() {
        let mut counts = Counts::new(1);
        let start = Instant::now();
        for index in 0..MAX_TRACKED + 10 {
            counts.record_failure(index, start + Duration::from_millis(index as u64 / 1000));
        }
        assert!(counts.windows.len() <= MAX_TRACKED, "{}", counts.windows.len());
    }
}
