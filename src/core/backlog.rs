//! Sizing the pool on the queue's backlog (`mode = "backlog"`), as KEDA,
//! Horizon's auto-balancing and uWSGI's backlog cheaper do.
//!
//! Workers report the backlog they see (the number of jobs waiting in the
//! queue); the pool wants `ceil(backlog / jobs_per_worker)` workers within
//! `min..max`. It grows at once, by at most `scale_up_step` per decision
//! (a burst of jobs is served quickly, but one bad reading does not fork
//! the maximum), and shrinks only when the backlog has stayed below what
//! the pool is sized for during the whole `scale_down_cooldown` (no
//! flapping when the queue hovers around a boundary).

use std::time::Instant;

use crate::config::WorkersConfig;

/// What the pool should do, and why (for the log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Nothing.
    Keep,
    /// Go to this many workers (more).
    Grow(u32),
    /// Go to this many workers (fewer).
    Shrink(u32),
}

/// The workers the backlog asks for, within `min..max`.
pub(crate) fn wanted(w: &WorkersConfig, backlog: u64) -> u32 {
    let per = u64::from(w.jobs_per_worker.max(1));
    let n = backlog.div_ceil(per);
    u32::try_from(n)
        .unwrap_or(u32::MAX)
        .clamp(w.min.max(1), w.max.max(1))
}

/// The policy's memory between decisions: since when the backlog has
/// asked for fewer workers than the pool has.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct State {
    below_since: Option<Instant>,
    /// issue 12: the backlog of the latest decision, for the metrics.
    pub(crate) last_seen: Option<u64>,
}

impl State {
    /// issue 11: forgets since when the backlog was low (a pause and a
    /// resume start the cool-down afresh: paused time is no evidence).
    pub(crate) fn restart_cooldown(&mut self) {
        self.below_since = None;
    }
}

/// Decides from the pool's `size` and the latest `backlog` at `now`.
pub(crate) fn decide(
    w: &WorkersConfig,
    state: &mut State,
    size: u32,
    backlog: u64,
    now: Instant,
) -> Decision {
    state.last_seen = Some(backlog);
    let want = wanted(w, backlog);
    if want > size {
        state.below_since = None;
        return Decision::Grow(size.saturating_add(w.scale_up_step.max(1)).min(want));
    }
    if want == size {
        state.below_since = None;
        return Decision::Keep;
    }
    let since = *state.below_since.get_or_insert(now);
    if now.saturating_duration_since(since) >= w.scale_down_cooldown {
        state.below_since = None;
        return Decision::Shrink(want);
    }
    Decision::Keep
}

/// When a pending shrink is due (the tests check that a growing backlog
/// cancels it).
#[cfg(test)]
pub(crate) fn shrink_due(w: &WorkersConfig, state: &State) -> Option<Instant> {
    state.below_since.map(|t| {
        t.checked_add(w.scale_down_cooldown)
            .unwrap_or(t + std::time::Duration::from_secs(1))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Mode};
    use std::time::Duration;

    fn cfg() -> WorkersConfig {
        let mut w = Config::defaults("t").workers;
        w.mode = Mode::Backlog;
        w.min = 1;
        w.max = 8;
        w.jobs_per_worker = 10;
        w.scale_up_step = 3;
        w.scale_down_cooldown = Duration::from_secs(30);
        w
    }

    #[test]
    fn wanted_is_the_backlog_over_jobs_per_worker_within_min_and_max() {
        let w = cfg();
        assert_eq!(wanted(&w, 0), 1, "never below min");
        assert_eq!(wanted(&w, 1), 1);
        assert_eq!(wanted(&w, 10), 1);
        assert_eq!(wanted(&w, 11), 2, "rounded up");
        assert_eq!(wanted(&w, 75), 8);
        assert_eq!(wanted(&w, 3000), 8, "never above max");
        assert_eq!(wanted(&w, u64::MAX), 8);
    }

    #[test]
    fn a_growing_queue_grows_the_pool_in_steps_at_once() {
        let w = cfg();
        let mut s = State::default();
        let t = Instant::now();
        // 3,000 jobs: 1 -> 4 -> 7 -> 8, one step per decision.
        let mut size = 1;
        let mut sizes = Vec::new();
        for i in 0..4 {
            if let Decision::Grow(n) = decide(&w, &mut s, size, 3000, t + Duration::from_secs(i)) {
                size = n;
            }
            sizes.push(size);
        }
        assert_eq!(sizes, [4, 7, 8, 8]);
    }

    #[test]
    fn an_emptied_queue_shrinks_the_pool_only_after_the_cool_down() {
        let w = cfg();
        let mut s = State::default();
        let t = Instant::now();
        assert_eq!(decide(&w, &mut s, 8, 0, t), Decision::Keep);
        assert_eq!(
            decide(&w, &mut s, 8, 0, t + Duration::from_secs(29)),
            Decision::Keep
        );
        assert_eq!(
            decide(&w, &mut s, 8, 0, t + Duration::from_secs(30)),
            Decision::Shrink(1)
        );
    }

    #[test]
    fn a_backlog_that_hovers_does_not_flap() {
        let w = cfg();
        let mut s = State::default();
        let t = Instant::now();
        let mut size = 4;
        let mut changes = 0;
        // Around 40 jobs (4 workers' worth): 35, 45, 38, 41, ... every 5 s.
        for (i, backlog) in [35, 45, 38, 41, 36, 44, 39, 40, 37, 42].iter().enumerate() {
            match decide(&w, &mut s, size, *backlog, t + Duration::from_secs(5 * i as u64)) {
                Decision::Grow(n) | Decision::Shrink(n) => {
                    size = n;
                    changes += 1;
                }
                Decision::Keep => {}
            }
        }
        assert!(changes <= 1, "grew once at most, never shrank back: {changes}");
        assert!(size >= 4);
    }

    #[test]
    fn a_growing_backlog_cancels_a_pending_shrink() {
        let w = cfg();
        let mut s = State::default();
        let t = Instant::now();
        decide(&w, &mut s, 8, 0, t);
        assert!(shrink_due(&w, &s).is_some());
        decide(&w, &mut s, 8, 100, t + Duration::from_secs(20));
        assert_eq!(shrink_due(&w, &s), None);
        assert_eq!(
            decide(&w, &mut s, 8, 0, t + Duration::from_secs(31)),
            Decision::Keep
        );
    }
}
