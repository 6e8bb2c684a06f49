//! A warning that repeats for one cause (a dependency down, every running turn retrying) is
//! written at most once per interval, with how many were held back since: an outage of a few
//! seconds then leaves a few lines in the log instead of thousands. Counters still count
//! every occurrence.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Admits one occurrence per interval.
#[derive(Debug)]
pub struct Throttle {
    every: Duration,
    epoch: Instant,
    /// When the last admitted occurrence came, in ms since `epoch` plus one (0: never).
    last: AtomicU64,
    held: AtomicU64,
}

impl Throttle {
    /// At most one occurrence admitted per `every`.
    pub fn new(every: Duration) -> Self {
        Self {
            every,
            epoch: Instant::now(),
            last: AtomicU64::new(0),
            held: AtomicU64::new(0),
        }
    }

    /// Whether to write this occurrence now: how many were held back since the last one
    /// written, or `None` to hold this one back.
    pub fn admit(&self) -> Option<u64> {
        self.admit_at(Instant::now())
    }

    fn admit_at(&self, now: Instant) -> Option<u64> {
        let at = u64::try_from(now.saturating_duration_since(self.epoch).as_millis())
            .unwrap_or(u64::MAX - 1)
            + 1;
        let every = u64::try_from(self.every.as_millis()).unwrap_or(u64::MAX);
        let last = self.last.load(Ordering::Acquire);
        if last != 0 && at.saturating_sub(last) < every
            || self
                .last
                .compare_exchange(last, at, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
        {
            self.held.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(self.held.swap(0, Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_occurrence_per_interval_is_written_with_the_count_held_back() {
        let throttle = Throttle::new(Duration::from_secs(1));
        let t0 = throttle.epoch;
        assert_eq!(throttle.admit_at(t0), Some(0), "the first, at once");
        for ms in [1, 500, 999] {
            assert_eq!(throttle.admit_at(t0 + Duration::from_millis(ms)), None);
        }
        assert_eq!(
            throttle.admit_at(t0 + Duration::from_millis(1_000)),
            Some(3),
            "a second on, with the three held back"
        );
        assert_eq!(throttle.admit_at(t0 + Duration::from_millis(1_001)), None);
        assert_eq!(
            throttle.admit_at(t0 + Duration::from_secs(60)),
            Some(1),
            "after a quiet spell, at once"
        );
    }
}
