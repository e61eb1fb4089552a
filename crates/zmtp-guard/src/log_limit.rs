//! Rate limit for log lines that a hostile client can trigger at will.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Admits at most `max_lines` log lines per `window` and counts the rest.
#[derive(Debug)]
pub(crate) struct LogRateLimiter {
    max_lines: u32,
    window: Duration,
    state: Mutex<WindowState>,
}

#[derive(Debug)]
struct WindowState {
    start: Instant,
    logged: u32,
    suppressed: u64,
}

impl LogRateLimiter {
    pub(crate) fn new(max_lines: u32, window: Duration) -> Self {
        let state = WindowState {
            start: Instant::now(),
            logged: 0,
            suppressed: 0,
        };
        Self {
            max_lines,
            window,
            state: Mutex::new(state),
        }
    }

    /// Returns `Some(n)` if the caller should log, where `n` is the number of
    /// lines suppressed since the last admitted one, or `None` to stay silent.
    pub(crate) fn admit(&self) -> Option<u64> {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = Instant::now();
        if now.duration_since(state.start) >= self.window {
            state.start = now;
            state.logged = 0;
        }
        if state.logged >= self.max_lines {
            state.suppressed += 1;
            return None;
        }
        state.logged += 1;
        Some(std::mem::take(&mut state.suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_counts_suppressed_lines() {
        let limiter = LogRateLimiter::new(2, Duration::from_millis(50));
        assert_eq!(limiter.admit(), Some(0));
        assert_eq!(limiter.admit(), Some(0));
        assert_eq!(limiter.admit(), None);
        assert_eq!(limiter.admit(), None);

        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(limiter.admit(), Some(2));
        assert_eq!(limiter.admit(), Some(0));
    }
}
