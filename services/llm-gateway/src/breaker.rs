//! A circuit breaker per deployment, judged on a rolling window of outcomes (`window`, in ten
//! buckets). It opens when the window's failure rate reaches `failure_rate_percent` over at
//! least `min_calls` calls — or, at low traffic, when `failure_threshold` calls failed in the
//! window without a single success. A share of random upstream errors at high concurrency
//! therefore never opens it (consecutive failures among hundreds of calls in flight are
//! chance, not a verdict); a dead deployment opens it within `min_calls` calls.
//!
//! Open for `open_for`; then one probe call is let through (half-open): its success closes the
//! circuit, its failure opens it again, and a probe that never reports (its caller went away)
//! is replaced by a new one after `open_for`. A success reported while open (a call that left
//! before it opened) closes it too: the deployment answers.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// When the circuit opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Length of the rolling window.
    pub window: Duration,
    /// Fewest calls in the window for its failure rate to count.
    pub min_calls: u32,
    /// Failure rate (percent) that opens the circuit.
    pub failure_rate_percent: u32,
    /// Failures in the window without a success that open it (low traffic).
    pub failure_threshold: u32,
    /// How long it stays open before a probe.
    pub open_for: Duration,
}

/// Outcomes of one slice of the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Bucket {
    start: Instant,
    ok: u32,
    failed: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Closed { window: VecDeque<Bucket> },
    Open { until: Instant },
    HalfOpen { since: Instant },
}

impl State {
    fn closed() -> Self {
        State::Closed {
            window: VecDeque::new(),
        }
    }
}

/// One deployment's breaker. The lock is held for a few instructions, never across `.await`.
#[derive(Debug)]
pub struct Breaker {
    name: String,
    policy: Policy,
    state: Mutex<State>,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(name: &str, policy: Policy) -> Self {
        let breaker = Self {
            name: name.to_owned(),
            policy: Policy {
                window: policy.window.max(Duration::from_millis(10)),
                min_calls: policy.min_calls.max(1),
                failure_rate_percent: policy.failure_rate_percent.clamp(1, 100),
                failure_threshold: policy.failure_threshold.max(1),
                open_for: policy.open_for,
            },
            state: Mutex::new(State::closed()),
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
            State::HalfOpen { since } if now >= since + self.policy.open_for => {
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
        self.success_at(Instant::now());
    }

    /// A call failed (in a way that says something about the deployment).
    pub fn failure(&self) {
        self.failure_at(Instant::now());
    }

    fn success_at(&self, now: Instant) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match &mut *state {
            State::Closed { window } => self.bucket(window, now).ok += 1,
            State::Open { .. } | State::HalfOpen { .. } => {
                tracing::info!(deployment = %self.name, "circuit closed");
                self.report(false);
                *state = State::closed();
            }
        }
    }

    fn failure_at(&self, now: Instant) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let open = match &mut *state {
            State::Closed { window } => {
                self.bucket(window, now).failed += 1;
                let (ok, failed) = window.iter().fold((0u64, 0u64), |(o, f), b| {
                    (o + u64::from(b.ok), f + u64::from(b.failed))
                });
                let calls = ok + failed;
                (calls >= u64::from(self.policy.min_calls)
                    && failed * 100 >= u64::from(self.policy.failure_rate_percent) * calls)
                    || (ok == 0 && failed >= u64::from(self.policy.failure_threshold))
            }
            State::HalfOpen { .. } | State::Open { .. } => true,
        };
        if open {
            *state = State::Open {
                until: now + self.policy.open_for,
            };
            tracing::warn!(deployment = %self.name, open_for_ms = self.policy.open_for.as_millis() as u64, "circuit opened");
            metrics::counter!("llm_circuit_opened_total", "deployment" => self.name.clone())
                .increment(1);
            self.report(true);
        }
    }

    /// The bucket `now` falls in, dropping the ones that left the window.
    fn bucket<'a>(&self, window: &'a mut VecDeque<Bucket>, now: Instant) -> &'a mut Bucket {
        let slice = self.policy.window / 10;
        while window
            .front()
            .is_some_and(|b| now.saturating_duration_since(b.start) >= self.policy.window)
        {
            window.pop_front();
        }
        if window
            .back()
            .is_none_or(|b| now.saturating_duration_since(b.start) >= slice)
        {
            window.push_back(Bucket {
                start: now,
                ok: 0,
                failed: 0,
            });
        }
        window.back_mut().expect("a bucket was just ensured")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(open_for: Duration) -> Policy {
        Policy {
            window: Duration::from_secs(10),
            min_calls: 20,
            failure_rate_percent: 50,
            failure_threshold: 5,
            open_for,
        }
    }

    #[test]
    fn a_fifth_of_calls_failing_at_high_traffic_never_opens_it() {
        let breaker = Breaker::new("d", policy(Duration::from_secs(60)));
        let start = Instant::now();
        // 2000 calls over 20 s, a fifth failing, in runs of 8 failures in a row as
        // concurrency produces them (32 successes, then 8 failures, repeating).
        for i in 0..2000u32 {
            let now = start + Duration::from_millis(u64::from(i) * 10);
            if i % 40 >= 32 {
                breaker.failure_at(now);
            } else {
                breaker.success_at(now);
            }
            assert!(breaker.is_closed(), "opened at call {i}");
        }
    }

    #[test]
    fn a_dead_deployment_opens_it_at_either_traffic() {
        // High traffic: the failure rate over the window.
        let breaker = Breaker::new("d", policy(Duration::from_secs(60)));
        let start = Instant::now();
        for i in 0..15u64 {
            breaker.success_at(start + Duration::from_millis(i));
        }
        for i in 0..15u64 {
            assert!(breaker.is_closed(), "open after {i} failures");
            breaker.failure_at(start + Duration::from_millis(20 + i));
        }
        assert!(!breaker.is_closed(), "15 of 30 failed");
        assert!(!breaker.allow());

        // Low traffic: five failures in the window and not one success.
        let breaker = Breaker::new("d", policy(Duration::from_secs(60)));
        for i in 0..5u64 {
            assert!(breaker.is_closed());
            breaker.failure_at(start + Duration::from_secs(i));
        }
        assert!(!breaker.is_closed());
    }

    #[test]
    fn failures_that_left_the_window_no_longer_count() {
        let breaker = Breaker::new("d", policy(Duration::from_secs(60)));
        let start = Instant::now();
        for i in 0..4u64 {
            breaker.failure_at(start + Duration::from_millis(i));
        }
        // Eleven seconds later the four are out of the window: four more do not open it.
        for i in 0..4u64 {
            breaker.failure_at(start + Duration::from_secs(11) + Duration::from_millis(i));
        }
        assert!(breaker.is_closed());
        breaker.failure_at(start + Duration::from_secs(12));
        assert!(!breaker.is_closed(), "five in the window, no success");
    }

    #[test]
    fn closes_after_a_good_probe_and_reopens_after_a_bad_one() {
        let breaker = Breaker::new("d", policy(Duration::ZERO));
        for _ in 0..5 {
            breaker.failure();
        }
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
        let breaker = Breaker::new(
            "d",
            Policy {
                failure_threshold: 1,
                ..policy(Duration::from_secs(60))
            },
        );
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
}
