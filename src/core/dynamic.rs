//! The dynamic pool (php-fpm's `pm = dynamic`): keep between `min_idle`
//! and `max_idle` idle workers, within `min..max` workers.

use std::time::Duration;

use crate::config::WorkersConfig;

/// What the pool should do about its size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Resize {
    /// Nothing.
    Keep,
    /// Start this many more workers.
    Grow {
        /// How many.
        add: u32,
        /// Idle (or starting) workers counted.
        idle: u32,
    },
    /// Retire these slots (idle longest past `idle_timeout`, highest first).
    Shrink {
        /// The slots.
        slots: Vec<u32>,
        /// Idle workers counted.
        idle: u32,
    },
}

/// Decides from the pool's `size`, the workers still `starting` (counted
/// as idle: they will be), and each ready idle worker's slot and idle time.
pub(crate) fn decide(w: &WorkersConfig, size: u32, starting: u32, idle: &[(u32, Duration)]) -> Resize {
    let idle_now = u32::try_from(idle.len())
        .unwrap_or(u32::MAX)
        .saturating_add(starting);
    if idle_now < w.min_idle && size < w.max {
        return Resize::Grow {
            add: (w.min_idle - idle_now).min(w.max - size),
            idle: idle_now,
        };
    }
    if idle_now > w.max_idle && size > w.min {
        let mut long_idle: Vec<u32> = idle
            .iter()
            .filter(|(_, d)| *d >= w.idle_timeout)
            .map(|(s, _)| *s)
            .collect();
        long_idle.sort_unstable_by(|a, b| b.cmp(a));
        let surplus = (idle_now - w.max_idle).min(size - w.min) as usize;
        long_idle.truncate(surplus);
        if !long_idle.is_empty() {
            return Resize::Shrink {
                slots: long_idle,
                idle: idle_now,
            };
        }
    }
    Resize::Keep
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Mode};

    fn cfg() -> WorkersConfig {
        let mut w = Config::defaults("t").workers;
        w.mode = Mode::Dynamic;
        w.min = 1;
        w.max = 6;
        w.min_idle = 1;
        w.max_idle = 2;
        w.idle_timeout = Duration::from_secs(10);
        w
    }

    #[test]
    fn decisions() {
        let w = cfg();
        let s = Duration::from_secs;
        assert_eq!(decide(&w, 3, 0, &[]), Resize::Grow { add: 1, idle: 0 });
        assert_eq!(decide(&w, 6, 0, &[]), Resize::Keep, "at max");
        assert_eq!(
            decide(&w, 3, 1, &[]),
            Resize::Keep,
            "a starting worker counts as idle"
        );
        assert_eq!(decide(&w, 3, 0, &[(1, s(1))]), Resize::Keep);
        assert_eq!(
            decide(&w, 4, 0, &[(1, s(20)), (2, s(20)), (3, s(5)), (4, s(20))]),
            Resize::Shrink {
                slots: vec![4, 2],
                idle: 4
            },
            "only the long idle, highest slots first"
        );
        assert_eq!(
            decide(&w, 3, 0, &[(1, s(20)), (2, s(20)), (3, s(20))]),
            Resize::Shrink {
                slots: vec![3],
                idle: 3
            }
        );
        let mut w1 = w.clone();
        w1.min = 3;
        assert_eq!(
            decide(&w1, 3, 0, &[(1, s(20)), (2, s(20)), (3, s(20))]),
            Resize::Keep,
            "never below min"
        );
    }
}
