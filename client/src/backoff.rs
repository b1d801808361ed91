//! How long to wait before the next attempt: exponential backoff with full
//! jitter, never shorter than the node's `retry_after_ms` hint.
//!
//! Pure functions of their inputs (the random draw is an argument), so the
//! policy is unit-tested without sleeping; this module never reads a clock.

use std::time::Duration;

/// The wait before retry number `retry` (1 for the first retry).
///
/// Full jitter (a uniform draw in `[0, cap]`, where `cap = min(max_delay,
/// base_delay * 2^(retry-1))`) spreads the retries of many clients that
/// failed together, e.g. every worker of a load generator when the leader
/// dies, instead of having them hit the new leader in lock step. A node's
/// `retry_after_ms` is a floor: it knows better than we do when retrying
/// can help (an election takes about that long).
///
/// `random` is a uniformly distributed `u64`.
pub fn delay(
    base_delay: Duration,
    max_delay: Duration,
    retry: u32,
    retry_after: Option<Duration>,
    random: u64,
) -> Duration {
    let exponent = retry.saturating_sub(1).min(31);
    let cap = base_delay
        .checked_mul(1u32 << exponent)
        .unwrap_or(max_delay)
        .min(max_delay);
    // Scale in u128 nanoseconds: exact, and cannot overflow for any cap
    // below 2^64 ns (584 years).
    let cap_ns = cap.as_nanos();
    let jittered_ns = cap_ns * u128::from(random) / u128::from(u64::MAX);
    let jittered = Duration::from_nanos(u64::try_from(jittered_ns).unwrap_or(u64::MAX));
    jittered.max(retry_after.unwrap_or(Duration::ZERO))
}

/// A small non-cryptographic generator (SplitMix64) for jitter: the draws
/// only need to differ between clients and between retries.
#[derive(Debug, Clone)]
pub struct Jitter {
    state: u64,
}

impl Jitter {
    /// A generator with this seed (tests pass a fixed one).
    pub fn with_seed(seed: u64) -> Self {
        Jitter { state: seed }
    }

    /// A generator seeded from the process's hash randomness, so two
    /// clients (or two runs) do not draw the same sequence.
    pub fn from_entropy() -> Self {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(std::process::id().into());
        Jitter::with_seed(h.finish())
    }

    /// The next uniformly distributed `u64`.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: Duration = Duration::from_millis(50);
    const MAX: Duration = Duration::from_secs(2);

    #[test]
    fn the_cap_doubles_per_retry_up_to_max_delay() {
        // A draw of u64::MAX gives the cap itself.
        let caps: Vec<u128> = (1..=8)
            .map(|r| delay(BASE, MAX, r, None, u64::MAX).as_millis())
            .collect();
        assert_eq!(caps, vec![50, 100, 200, 400, 800, 1600, 2000, 2000]);
        assert_eq!(delay(BASE, MAX, u32::MAX, None, u64::MAX), MAX);
    }

    #[test]
    fn full_jitter_spans_zero_to_the_cap() {
        assert_eq!(delay(BASE, MAX, 3, None, 0), Duration::ZERO);
        let half = delay(BASE, MAX, 3, None, u64::MAX / 2);
        assert!(half >= Duration::from_millis(99) && half <= Duration::from_millis(101));
        let mut jitter = Jitter::with_seed(7);
        for _ in 0..1000 {
            let d = delay(BASE, MAX, 4, None, jitter.next_u64());
            assert!(d <= Duration::from_millis(400), "{d:?}");
        }
    }

    #[test]
    fn retry_after_is_a_floor_not_a_cap() {
        let hint = Some(Duration::from_millis(500));
        assert_eq!(delay(BASE, MAX, 1, hint, 0), Duration::from_millis(500));
        assert_eq!(
            delay(BASE, MAX, 1, hint, u64::MAX),
            Duration::from_millis(500)
        );
        // A hint above max_delay is still honoured.
        let long = Some(Duration::from_secs(5));
        assert_eq!(delay(BASE, MAX, 1, long, u64::MAX), Duration::from_secs(5));
        // A larger jittered value wins over a small hint.
        let small = Some(Duration::from_millis(1));
        assert_eq!(delay(BASE, MAX, 7, small, u64::MAX), MAX);
    }

    #[test]
    fn jitter_draws_differ_and_are_reproducible_by_seed() {
        let a: Vec<u64> = {
            let mut j = Jitter::with_seed(1);
            (0..4).map(|_| j.next_u64()).collect()
        };
        let b: Vec<u64> = {
            let mut j = Jitter::with_seed(1);
            (0..4).map(|_| j.next_u64()).collect()
        };
        assert_eq!(a, b);
        assert!(a.windows(2).all(|w| w[0] != w[1]));
    }
}
