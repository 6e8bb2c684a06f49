//! Admission by queueing delay: a server that cannot keep up refuses the excess at once
//! instead of letting every call wait in a queue that only grows (CoDel, Nichols and Jacobson
//! 2012; as Facebook applies it to RPC queues, "Fail at Scale", 2015).
//!
//! A call's queueing delay is the time from its arrival until it may run: waiting for the
//! runtime to first poll it (the scheduler's queue, where an overloaded process's calls wait)
//! and for a concurrency slot. Short bursts make delays that drain: some call in every
//! `interval` gets through quickly. A standing queue does not drain: when even the quickest
//! admission of a whole `interval` waited longer than `target`, the server is overloaded, and
//! until an interval passes whose quickest admission is back under `target`, a call that has
//! already waited `target` is refused (UNAVAILABLE with `retry-after`) rather than run late.
//! Otherwise a call may wait `interval` at most (Facebook's long and short queue timeouts).
//! Refusals cost next to nothing, so the queue drains; as load falls the callers' retries are
//! admitted again.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The admission state of one server, shared by its connections.
#[derive(Debug)]
pub struct QueueDelay {
    target: Duration,
    interval: Duration,
    epoch: Instant,
    /// Start of the current interval, in nanoseconds since `epoch`.
    window_start: AtomicU64,
    /// The smallest queueing delay admitted in the current interval, in nanoseconds.
    window_min: AtomicU64,
    overloaded: AtomicBool,
}

impl QueueDelay {
    /// A controller refusing calls that waited `target` while the quickest admission of an
    /// `interval` waited longer than `target`. A zero `target` never refuses.
    pub fn new(target: Duration, interval: Duration) -> Self {
        Self {
            target,
            interval: interval.max(Duration::from_millis(1)),
            epoch: Instant::now(),
            window_start: AtomicU64::new(0),
            window_min: AtomicU64::new(u64::MAX),
            overloaded: AtomicBool::new(false),
        }
    }

    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    /// How long a call may wait to start now: `target` while overloaded, `interval`
    /// otherwise (a call that waited longer is stale: its caller is better served by a fast
    /// refusal and a retry than by a late answer).
    fn limit(&self) -> Duration {
        if self.overloaded.load(Ordering::Relaxed) {
            self.target
        } else {
            self.interval
        }
    }

    /// Whether a call that has waited `waited` so far is refused now.
    pub fn refuses(&self, waited: Duration) -> bool {
        !self.target.is_zero() && waited > self.limit()
    }

    /// How much longer a call that has waited `waited` may wait for a concurrency slot: until
    /// it has waited the limit (see [`QueueDelay::refuses`]), and never past `left`.
    pub fn patience(&self, waited: Duration, left: Duration) -> Duration {
        if self.target.is_zero() {
            left
        } else {
            self.limit().saturating_sub(waited).min(left)
        }
    }

    /// Whether the server is refusing late calls now.
    pub fn overloaded(&self) -> bool {
        self.overloaded.load(Ordering::Relaxed)
    }

    /// Records the queueing delay of a call admitted at `now`; at the end of an interval,
    /// decides whether the next one refuses late calls. Whether the state changed.
    pub fn admitted(&self, waited: Duration, now: Instant) -> bool {
        if self.target.is_zero() {
            return false;
        }
        let waited = u64::try_from(waited.as_nanos()).unwrap_or(u64::MAX);
        self.window_min.fetch_min(waited, Ordering::Relaxed);
        let now = self.nanos(now);
        let start = self.window_start.load(Ordering::Relaxed);
        let interval = u64::try_from(self.interval.as_nanos()).unwrap_or(u64::MAX);
        if now.saturating_sub(start) < interval
            || self
                .window_start
                .compare_exchange(start, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
        {
            return false;
        }
        // This call closes the interval (one caller wins the exchange).
        let quickest = self.window_min.swap(u64::MAX, Ordering::AcqRel);
        let target = u64::try_from(self.target.as_nanos()).unwrap_or(u64::MAX);
        let overloaded = quickest > target;
        self.overloaded.swap(overloaded, Ordering::AcqRel) != overloaded
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_standing_queue_turns_refusal_on_and_a_quick_admission_turns_it_off() {
        let q = QueueDelay::new(5 * MS, 100 * MS);
        let t0 = q.epoch;
        // A burst: slow admissions, but one quick one in the interval.
        q.admitted(40 * MS, t0 + 10 * MS);
        q.admitted(MS, t0 + 20 * MS);
        assert!(!q.admitted(50 * MS, t0 + 101 * MS));
        assert!(!q.overloaded() && !q.refuses(80 * MS));
        // Not overloaded, a call may still wait an interval at most.
        assert!(q.refuses(101 * MS));
        assert_eq!(q.patience(30 * MS, Duration::from_secs(30)), 70 * MS);
        // A standing queue: every admission of an interval waited more than the target.
        for i in 1..10 {
            q.admitted(20 * MS, t0 + 110 * MS + i * 10 * MS);
        }
        assert!(q.admitted(30 * MS, t0 + 210 * MS), "turned on");
        assert!(q.overloaded());
        assert!(q.refuses(6 * MS) && !q.refuses(4 * MS));
        assert_eq!(q.patience(2 * MS, 30 * MS * 1000), 3 * MS);
        // Never past the call's own deadline.
        assert_eq!(q.patience(2 * MS, MS), MS);
        // Load falls: an interval with a quick admission turns it off.
        q.admitted(MS, t0 + 250 * MS);
        assert!(q.admitted(MS, t0 + 311 * MS), "turned off");
        assert!(!q.refuses(100 * MS));
        assert_eq!(q.patience(2 * MS, 30 * MS), 30 * MS);
        assert_eq!(q.patience(2 * MS, Duration::from_secs(30)), 98 * MS);
    }

    #[test]
    fn a_zero_target_never_refuses() {
        let q = QueueDelay::new(Duration::ZERO, 100 * MS);
        for i in 0..50 {
            q.admitted(Duration::from_secs(1), q.epoch + i * 10 * MS);
        }
        assert!(!q.overloaded() && !q.refuses(Duration::from_secs(10)));
    }
}
