//! A circuit breaker per deployment: `failure_threshold` consecutive failures open it for
//! `open_for`; then one probe call is let through (half-open): its success closes the
//! circuit, its failure opens it again.

use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen,
}

/// One deployment's breaker. The lock is held for a few instructions, never across `.await`.
#[derive(Debug)]
pub struct Breaker {
    name: String,
    threshold: u32,
    open_for: Duration,
    state: Mutex<State>,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(name: &str, threshold: u32, open_for: Duration) -> Self {
        let breaker = Self {
            name: name.to_owned(),
            threshold: threshold.max(1),
            open_for,
            state: Mutex::new(State::Closed { failures: 0 }),
        };
        breaker.report(false);
        breaker
    }

    fn report(&self, open: bool) {
        metrics::gauge!("llm_circuit_open", "deployment" => self.name.clone()).set(if open {
            1.0
        } else {
            0.0
        });
    }

    /// Whether a call may go out now (an open circuit past its time lets one probe through).
    pub fn allow(&self) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match *state {
            State::Closed { .. } => true,
            State::Open { until } if Instant::now() >= until => {
                *state = State::HalfOpen;
                true
            }
            State::Open { .. } | State::HalfOpen => false,
        }
    }

    /// Whether the circuit is open now (for routing around it).
    pub fn is_open(&self) -> bool {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match *state {
            State::Open { until } => Instant::now() < until,
            State::HalfOpen => true,
            State::Closed { .. } => false,
        }
    }

    /// A call succeeded.
    pub fn success(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if *state != (State::Closed { failures: 0 }) {
            if !matches!(*state, State::Closed { .. }) {
                tracing::info!(deployment = %self.name, "circuit closed");
                self.report(false);
            }
            *state = State::Closed { failures: 0 };
        }
    }

    /// A call failed (in a way that says something about the deployment).
    pub fn failure(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let open = match *state {
            State::Closed { failures } if failures + 1 >= self.threshold => true,
            State::Closed { failures } => {
                *state = State::Closed {
                    failures: failures + 1,
                };
                false
            }
            State::HalfOpen | State::Open { .. } => true,
        };
        if open {
            *state = State::Open {
                until: Instant::now() + self.open_for,
            };
            tracing::warn!(deployment = %self.name, open_for_ms = self.open_for.as_millis() as u64, "circuit opened");
            self.report(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_the_threshold_and_closes_after_a_good_probe() {
        let breaker = Breaker::new("d", 3, Duration::ZERO);
        breaker.failure();
        breaker.failure();
        assert!(!breaker.is_open());
        breaker.failure();
        assert!(matches!(
            *breaker.state.lock().expect("lock"),
            State::Open { .. }
        ));
        // Open for zero time: the next call is the probe, and only it.
        assert!(breaker.allow());
        assert!(!breaker.allow(), "one probe at a time");
        breaker.failure();
        assert!(breaker.allow(), "reopened, and due again");
        breaker.success();
        assert!(!breaker.is_open());
        assert!(breaker.allow());
    }

    #[test]
    fn a_success_resets_the_count() {
        let breaker = Breaker::new("d", 2, Duration::from_secs(60));
        breaker.failure();
        breaker.success();
        breaker.failure();
        assert!(breaker.allow(), "two failures, but not consecutive");
        breaker.failure();
        assert!(!breaker.allow());
    }
}
