//! A small deterministic random source for jitter.
//!
//! The core draws jitter (how many jobs or how long before a worker is
//! recycled) from this generator, seeded by the caller: the daemon seeds it
//! from the clock and its pid, tests seed it with a constant, so a policy
//! test sees the same numbers every run.

/// xorshift64: not for secrets, only to spread recycling over time.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    /// A generator; a zero seed is replaced (xorshift needs a non-zero state).
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(if seed == 0 { 0x9e37_79b9_7f4a_7c15 } else { seed })
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// `base` plus up to 10 % more, so workers started together are not all
    /// recycled together. Zero stays zero (the limit is off).
    pub(crate) fn spread(&mut self, base: u64) -> u64 {
        if base == 0 {
            return 0;
        }
        base.saturating_add(self.next() % (base / 10 + 1))
    }
}

impl Rng {
    /// "Equal jitter": a random delay between half of `d` and `d`, so
    /// workers that failed together (a broker went down) do not all come
    /// back in the same millisecond, and none comes back sooner than half
    /// its back-off (no spin). Zero stays zero.
    pub(crate) fn jitter(&mut self, d: std::time::Duration) -> std::time::Duration {
        let nanos = d.as_nanos();
        if nanos == 0 {
            return d;
        }
        let half = nanos / 2;
        let spread = nanos - half;
        let total = half + u128::from(self.next()) % (spread + 1);
        let secs = u64::try_from(total / 1_000_000_000).unwrap_or(u64::MAX);
        std::time::Duration::new(secs, (total % 1_000_000_000) as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_stays_within_ten_percent_and_is_reproducible() {
        let mut a = Rng::new(7);
        let mut b = Rng::new(7);
        for _ in 0..1000 {
            let x = a.spread(1000);
            assert!((1000..=1100).contains(&x));
            assert_eq!(x, b.spread(1000));
        }
        assert_eq!(a.spread(0), 0);
        assert_eq!(Rng::new(0).spread(u64::MAX), u64::MAX, "saturates");
    }

    #[test]
    fn jitter_stays_between_half_and_all_and_spreads() {
        use std::time::Duration;
        let mut r = Rng::new(3);
        let d = Duration::from_millis(800);
        let got: Vec<Duration> = (0..200).map(|_| r.jitter(d)).collect();
        assert!(got.iter().all(|j| *j >= d / 2 && *j <= d));
        let distinct: std::collections::BTreeSet<_> = got.iter().collect();
        assert!(distinct.len() > 100, "spread out, not one value");
        assert_eq!(r.jitter(Duration::ZERO), Duration::ZERO);
        assert!(r.jitter(Duration::MAX) >= Duration::MAX / 2);
    }
}
