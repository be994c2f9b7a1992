//! Crash-loop detection: too many failures within a window.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// What a failure did to the crash-loop state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change {
    /// Nothing new.
    None,
    /// A crash loop began, with this many failures in the window.
    Began(u32),
    /// The crash loop ended; this many failures remain in the window.
    Ended(u32),
}

/// Failures within the last `window`.
#[derive(Debug, Default)]
pub(crate) struct CrashWatch {
    failures: VecDeque<Instant>,
    in_loop: bool,
    /// Restarts not logged one by one since the last summary.
    pub(crate) suppressed: u64,
    last_summary: Option<Instant>,
}

impl CrashWatch {
    /// Records a failure at `now`.
    pub(crate) fn failure(&mut self, now: Instant, limit: u32, window: Duration) -> Change {
        self.failures.push_back(now);
        while self
            .failures
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) > window)
        {
            self.failures.pop_front();
        }
        let n = self.count();
        if n >= limit {
            if self.in_loop {
                return Change::None;
            }
            self.in_loop = true;
            self.last_summary = Some(now);
            self.suppressed = 0;
            Change::Began(n)
        } else if self.in_loop {
            self.in_loop = false;
            Change::Ended(n)
        } else {
            Change::None
        }
    }

    /// Whether the pool is in a crash loop.
    pub(crate) fn in_loop(&self) -> bool {
        self.in_loop
    }

    /// Failures in the window (as of the last failure).
    pub(crate) fn count(&self) -> u32 {
        u32::try_from(self.failures.len()).unwrap_or(u32::MAX)
    }

    /// Whether a summary line is due (once per window while in a loop);
    /// if so, resets the counter and returns how many restarts it covers.
    pub(crate) fn summary_due(&mut self, now: Instant, window: Duration) -> Option<u64> {
        let due = self
            .last_summary
            .is_none_or(|t| now.saturating_duration_since(t) >= window);
        if !due {
            return None;
        }
        self.last_summary = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn begins_at_the_limit_and_ends_when_failures_age_out() {
        let t0 = Instant::now();
        let w = Duration::from_secs(10);
        let mut c = CrashWatch::default();
        assert_eq!(c.failure(t0, 3, w), Change::None);
        assert_eq!(c.failure(t0, 3, w), Change::None);
        assert_eq!(c.failure(t0, 3, w), Change::Began(3));
        assert_eq!(c.failure(t0, 3, w), Change::None, "reported once");
        assert!(c.in_loop());
        assert_eq!(c.failure(t0 + Duration::from_secs(11), 3, w), Change::Ended(1));
        assert!(!c.in_loop());
    }
}
