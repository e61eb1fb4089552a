//! A counter that lets a repeated log message through at most once per interval.

use std::time::{Duration, Instant};

/// How often a repeated warning may be logged.
pub(crate) const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Decides whether to log one more occurrence of a repeated event, and counts the rest.
pub(crate) struct LogRateLimit {
    last_logged: Option<Instant>,
    suppressed: u64,
}

impl LogRateLimit {
    pub fn new() -> Self {
        LogRateLimit { last_logged: None, suppressed: 0 }
    }

    /// Returns `Some(n)` when this occurrence should be logged, where `n` is the number of
    /// occurrences suppressed since the last one logged, or `None` to stay silent.
    pub fn check(&mut self) -> Option<u64> {
        let now = Instant::now();
        match self.last_logged {
            Some(last) if now.duration_since(last) < LOG_INTERVAL => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last_logged = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_counts_suppressed() {
        let mut limit = LogRateLimit::new();
        assert_eq!(limit.check(), Some(0));
        assert_eq!(limit.check(), None);
        assert_eq!(limit.check(), None);
        limit.last_logged = Some(Instant::now() - LOG_INTERVAL);
        assert_eq!(limit.check(), Some(2));
    }
}
