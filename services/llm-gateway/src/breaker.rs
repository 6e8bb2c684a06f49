//! A circuit breaker per deployment: `failure_threshold` consecutive failures open it for
//! `open_for`; then one probe call is let through (half-open): its success closes the
//! circuit, its failure opens it again, and a probe that never reports (its caller went away)
//! is replaced by a new one after `open_for`.

use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { since: Instant },
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

    /// Whether a call may go out now: always when closed; when open past its time (or
    /// half-open with a probe that never reported), this call becomes the one probe.
    pub fn allow(&self) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        match *state {
            State::Closed { .. } => true,
            State::Open { until } if now >= until => {
                *state = State::HalfOpen { since: now };
                true
            }
            State::HalfOpen { since } if now >= since + self.open_for => {
                *state = State::HalfOpen { since: now };
                true
            }
            State::Open { .. } | State::HalfOpen { .. } => false,
        }
    }

    /// Whether the circuit is closed (calls flow without probing).
    pub fn is_closed(&self) -> bool {
        matches!(
            *self.state.lock().unwrap_or_else(|e| e.into_inner()),
            State::Closed { .. }
        )
    }

    /// A call succeeded (or was answered, even with a rejection of the request itself).
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
            State::HalfOpen { .. } | State::Open { .. } => true,
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
        let breaker = Breaker::new("d", 3, Duration::from_millis(0));
        breaker.failure();
        breaker.failure();
        assert!(breaker.is_closed());
        breaker.failure();
        assert!(!breaker.is_closed());
        // Open for zero time: the next call is the probe.
        assert!(breaker.allow());
        breaker.failure();
        assert!(breaker.allow(), "reopened, and due again");
        breaker.success();
        assert!(breaker.is_closed());
        assert!(breaker.allow());
    }

    #[test]
    fn one_probe_at_a_time_and_a_lost_probe_is_replaced() {
        let breaker = Breaker::new("d", 1, Duration::from_secs(60));
        breaker.failure();
        assert!(!breaker.allow(), "open");
        *breaker.state.lock().expect("lock") = State::Open {
            until: Instant::now(),
        };
        assert!(breaker.allow(), "due: this call probes");
        assert!(!breaker.allow(), "one probe at a time");
        *breaker.state.lock().expect("lock") = State::HalfOpen {
            since: Instant::now() - Duration::from_secs(61),
        };
        assert!(breaker.allow(), "the probe never reported: a new one");
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
