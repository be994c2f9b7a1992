//! Restart back-off: how long a slot waits before its next worker.

use std::time::Duration;

/// The delay after the `failures`-th quick failure in a row: `initial`,
/// doubled each time, capped at `max`. Zero failures (a worker that stayed
/// up long enough to count as healthy) restarts at once.
pub(crate) fn delay(failures: u32, initial: Duration, max: Duration) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    let factor = 2u32.saturating_pow((failures - 1).min(31));
    initial.saturating_mul(factor).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_never_overflows() {
        let ms = Duration::from_millis;
        let d: Vec<u128> = (0..7).map(|f| delay(f, ms(100), ms(1000)).as_millis()).collect();
        assert_eq!(d, [0, 100, 200, 400, 800, 1000, 1000]);
        assert_eq!(delay(u32::MAX, Duration::MAX, Duration::MAX), Duration::MAX);
    }
}
