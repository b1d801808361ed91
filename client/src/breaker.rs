//! A circuit breaker per endpoint: closed → open after K consecutive
//! failures → half-open (one probe) after a cool-down → closed on success.
//!
//! Its job is to stop spending a retry budget (and a connect timeout) on a
//! node that is down: while open, the client skips the endpoint without
//! touching the network. Only the transport counts: a node that answers,
//! even with UNAVAILABLE or OVERLOADED, is up. Pure logic with the time
//! passed in, so the state machine is tested without sleeping.

use std::time::{Duration, Instant};

/// The breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Requests flow; counts consecutive failures.
    Closed {
        /// Consecutive failures so far (reset by any success).
        failures: u32,
    },
    /// Requests are refused without trying until `until`.
    Open {
        /// When a probe may be let through.
        until: Instant,
    },
    /// One probe is in flight; everyone else is refused until it reports.
    HalfOpen,
}

/// One endpoint's breaker.
#[derive(Debug, Clone)]
pub struct Breaker {
    state: State,
    threshold: u32,
    cool_down: Duration,
}

impl Breaker {
    /// A closed breaker that opens after `threshold` consecutive failures
    /// (at least 1) and lets a probe through `cool_down` after opening.
    pub fn new(threshold: u32, cool_down: Duration) -> Self {
        Breaker {
            state: State::Closed { failures: 0 },
            threshold: threshold.max(1),
            cool_down,
        }
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// May a request go to this endpoint now? An open breaker whose
    /// cool-down has passed turns half-open and admits exactly this caller
    /// as the probe; the caller must then report with
    /// [`Breaker::on_success`] or [`Breaker::on_failure`].
    pub fn try_acquire(&mut self, now: Instant) -> bool {
        match self.state {
            State::Closed { .. } => true,
            State::Open { until } if now >= until => {
                self.state = State::HalfOpen;
                true
            }
            State::Open { .. } | State::HalfOpen => false,
        }
    }

    /// How long until this breaker lets a request through (zero when it
    /// would now); `None` while a half-open probe is in flight.
    pub fn wait_hint(&self, now: Instant) -> Option<Duration> {
        match self.state {
            State::Closed { .. } => Some(Duration::ZERO),
            State::Open { until } => Some(until.saturating_duration_since(now)),
            State::HalfOpen => None,
        }
    }

    /// The endpoint answered: close (or stay closed) and forget failures.
    pub fn on_success(&mut self) {
        self.state = State::Closed { failures: 0 };
    }

    /// The endpoint failed at the transport level. Opens after the
    /// threshold, and at once when the half-open probe fails.
    pub fn on_failure(&mut self, now: Instant) {
        self.state = match self.state {
            State::Closed { failures } if failures.saturating_add(1) < self.threshold => {
                State::Closed {
                    failures: failures + 1,
                }
            }
            State::Closed { .. } | State::HalfOpen | State::Open { .. } => State::Open {
                until: now + self.cool_down,
            },
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COOL: Duration = Duration::from_secs(2);

    #[test]
    fn opens_after_k_consecutive_failures_only() {
        let t0 = Instant::now();
        let mut b = Breaker::new(3, COOL);
        b.on_failure(t0);
        b.on_failure(t0);
        b.on_success(); // a success in between resets the count
        b.on_failure(t0);
        b.on_failure(t0);
        assert_eq!(b.state(), State::Closed { failures: 2 });
        assert!(b.try_acquire(t0));
        b.on_failure(t0);
        assert_eq!(b.state(), State::Open { until: t0 + COOL });
        assert!(!b.try_acquire(t0), "open fails fast");
        assert!(!b.try_acquire(t0 + COOL - Duration::from_millis(1)));
        assert_eq!(
            b.wait_hint(t0 + Duration::from_secs(1)),
            Some(Duration::from_secs(1))
        );
    }

    #[test]
    fn half_open_admits_one_probe_then_closes_on_success() {
        let t0 = Instant::now();
        let mut b = Breaker::new(1, COOL);
        b.on_failure(t0);
        let later = t0 + COOL;
        assert!(b.try_acquire(later), "the probe");
        assert_eq!(b.state(), State::HalfOpen);
        assert!(!b.try_acquire(later), "only one probe at a time");
        assert_eq!(b.wait_hint(later), None);
        b.on_success();
        assert_eq!(b.state(), State::Closed { failures: 0 });
        assert!(b.try_acquire(later));
    }

    #[test]
    fn a_failed_probe_reopens_for_a_full_cool_down() {
        let t0 = Instant::now();
        let mut b = Breaker::new(2, COOL);
        b.on_failure(t0);
        b.on_failure(t0);
        let probe_at = t0 + COOL + Duration::from_millis(5);
        assert!(b.try_acquire(probe_at));
        b.on_failure(probe_at);
        assert_eq!(
            b.state(),
            State::Open {
                until: probe_at + COOL
            }
        );
        assert!(!b.try_acquire(probe_at + COOL - Duration::from_millis(1)));
        assert!(b.try_acquire(probe_at + COOL));
    }

    #[test]
    fn a_zero_threshold_is_treated_as_one() {
        let t0 = Instant::now();
        let mut b = Breaker::new(0, COOL);
        assert!(b.try_acquire(t0));
        b.on_failure(t0);
        assert!(matches!(b.state(), State::Open { .. }));
    }
}
