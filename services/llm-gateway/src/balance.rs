//! Choosing a deployment: power of two choices over peak-EWMA latency. Two deployments are
//! sampled by weight and the one with the lower expected cost is tried first, cost being the
//! peak-EWMA round trip times the calls in flight plus one (Finagle's and tower's
//! `PeakEwma`: a slow answer raises the estimate at once, fast ones lower it gradually).

use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How fast old round trips are forgotten.
const DECAY: Duration = Duration::from_secs(10);
/// The estimate of a deployment nothing is known about yet.
const DEFAULT_RTT: Duration = Duration::from_millis(30);
/// What a failed call counts as (so a deployment failing fast does not look fast).
const FAILURE_RTT: Duration = Duration::from_secs(1);

/// A deployment's load estimate.
#[derive(Debug)]
pub struct PeakEwma {
    /// (estimate in ns, when it was last updated).
    estimate: Mutex<(f64, Instant)>,
    in_flight: AtomicUsize,
}

impl Default for PeakEwma {
    fn default() -> Self {
        Self {
            estimate: Mutex::new((DEFAULT_RTT.as_nanos() as f64, Instant::now())),
            in_flight: AtomicUsize::new(0),
        }
    }
}

/// One call in flight; records its round trip when finished.
pub struct InFlight<'a> {
    load: &'a PeakEwma,
    started: Instant,
    failed: bool,
}

impl InFlight<'_> {
    /// The call failed: it counts as a slow one.
    pub fn failed(mut self) {
        self.failed = true;
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let rtt = if self.failed {
            self.started.elapsed().max(FAILURE_RTT)
        } else {
            self.started.elapsed()
        };
        self.load.observe(rtt);
        self.load.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl PeakEwma {
    /// Counts a call until the guard drops.
    pub fn start(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight {
            load: self,
            started: Instant::now(),
            failed: false,
        }
    }

    fn observe(&self, rtt: Duration) {
        let rtt = rtt.as_nanos() as f64;
        let mut estimate = self.estimate.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let (ewma, at) = *estimate;
        let next = if rtt > ewma {
            rtt
        } else {
            let w = (-(now.duration_since(at).as_secs_f64()) / DECAY.as_secs_f64()).exp();
            ewma * w + rtt * (1.0 - w)
        };
        *estimate = (next, now);
    }

    /// Expected cost of one more call.
    pub fn cost(&self) -> f64 {
        let (ewma, _) = *self.estimate.lock().unwrap_or_else(|e| e.into_inner());
        ewma * (self.in_flight.load(Ordering::Acquire) + 1) as f64
    }
}

fn random() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    RandomState::new().hash_one(COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// Orders `candidates` (each with its weight and cost) for one call: two sampled by weight,
/// the cheaper of them first, then the other, then the rest by cost.
pub fn order<T>(mut candidates: Vec<(T, u32, f64)>) -> Vec<T> {
    if candidates.len() > 1 {
        let mut picked = Vec::with_capacity(2);
        for _ in 0..2 {
            let total: u64 = candidates
                .iter()
                .map(|(_, w, _)| u64::from((*w).max(1)))
                .sum();
            let mut target = random() % total.max(1);
            let index = candidates
                .iter()
                .position(|(_, w, _)| {
                    let w = u64::from((*w).max(1));
                    if target < w {
                        true
                    } else {
                        target -= w;
                        false
                    }
                })
                .unwrap_or(0);
            picked.push(candidates.swap_remove(index));
        }
        picked.sort_by(|a, b| a.2.total_cmp(&b.2));
        candidates.sort_by(|a, b| a.2.total_cmp(&b.2));
        picked.append(&mut candidates);
        candidates = picked;
    }
    candidates.into_iter().map(|(t, _, _)| t).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cheaper_of_two_goes_first_and_weights_steer_the_sample() {
        for _ in 0..100 {
            let ordered = order(vec![("slow", 1, 100.0), ("fast", 1, 1.0)]);
            assert_eq!(ordered, ["fast", "slow"]);
        }
        // Three candidates: the most expensive is first only if sampled with an even worse
        // one, which cannot happen; so it is never first.
        for _ in 0..100 {
            let ordered = order(vec![("a", 1, 3.0), ("b", 1, 2.0), ("c", 1, 1.0)]);
            assert_ne!(ordered[0], "a");
            assert_eq!(ordered.len(), 3);
        }
    }

    #[test]
    fn a_slow_answer_raises_the_estimate_at_once() {
        let load = PeakEwma::default();
        drop(load.start());
        let fast = load.cost();
        {
            let call = load.start();
            assert!(load.cost() > fast, "a call in flight adds to the cost");
            call.failed();
        }
        assert!(
            load.cost() >= FAILURE_RTT.as_nanos() as f64,
            "peak: the failure counts in full"
        );
    }
}
