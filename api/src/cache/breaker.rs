//! The circuit breaker in front of Redis: after repeated failures the API stops calling Redis
//! for a while and serves from Postgres, so a slow or dead Redis costs requests one timeout at
//! most, not one each.

use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    Probing { since: Instant },
}

/// Opens after `threshold` consecutive failures, lets one probe through once `open_for` has
/// passed, and closes on the first success.
#[derive(Debug)]
pub struct Breaker {
    threshold: u32,
    open_for: Duration,
    /// How long a probe may take before another request probes instead.
    probe_timeout: Duration,
    state: Mutex<State>,
}

impl Breaker {
    pub fn new(threshold: u32, open_for: Duration, probe_timeout: Duration) -> Self {
        Self { threshold, open_for, probe_timeout, state: Mutex::new(State::Closed { failures: 0 }) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether a Redis call may be made now; when the open period is over, the caller becomes
    /// the probe.
    pub fn allow(&self) -> bool {
        let mut state = self.lock();
        let now = Instant::now();
        match *state {
            State::Closed { .. } => true,
            State::Open { until } if now < until => false,
            State::Probing { since } if now.duration_since(since) < self.probe_timeout => false,
            State::Open { .. } | State::Probing { .. } => {
                *state = State::Probing { since: now };
                true
            }
        }
    }

    pub fn success(&self) {
        let mut state = self.lock();
        if !matches!(*state, State::Closed { failures: 0 }) {
            *state = State::Closed { failures: 0 };
        }
    }

    pub fn failure(&self) {
        let mut state = self.lock();
        let until = Instant::now() + self.open_for;
        *state = match *state {
            State::Closed { failures } if failures + 1 < self.threshold => State::Closed { failures: failures + 1 },
            _ => State::Open { until },
        };
    }

    pub fn is_closed(&self) -> bool {
        matches!(*self.lock(), State::Closed { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_breaker_opens_after_the_threshold_and_probes_once() {
        let breaker = Breaker::new(2, Duration::from_millis(0), Duration::from_secs(60));
        assert!(breaker.allow());
        breaker.failure();
        assert!(breaker.is_closed(), "one failure is below the threshold");
        breaker.failure();
        assert!(!breaker.is_closed());
        assert!(breaker.allow(), "the open period (0 ms) is over: this caller probes");
        assert!(!breaker.allow(), "only one probe at a time");
        breaker.success();
        assert!(breaker.is_closed() && breaker.allow());
    }
}
