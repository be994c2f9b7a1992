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
}
