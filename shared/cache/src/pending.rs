//! Invalidations Redis did not acknowledge, retried until it does.
//!
//! A delete (or a write, or a tag invalidation) that cannot reach Redis — the server is down,
//! or on a cluster its key's shard has no primary while a replica takes over — leaves the value
//! it replaces in Redis: a restarted server with persistence, or a promoted replica, would
//! serve it to every instance until its TTL. So the key (or tag) is kept here and deleted again
//! every [`RETRY`] until Redis acknowledges: the replaced value outlives the outage by at most
//! about that long. Deleting again is always safe in a cache (at worst a miss).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// How often unacknowledged invalidations are tried again.
pub(crate) const RETRY: Duration = Duration::from_millis(100);

/// At most this many keys and tags wait; past it the oldest are given up (counted in
/// `cache_l2_invalidations_dropped_total`: those values live until their TTL).
const CAPACITY: usize = 100_000;

/// Keys and tag keys (without the prefix), each with the sequence number of its last failure.
#[derive(Default)]
pub(crate) struct Pending {
    keys: Mutex<HashMap<String, u64>>,
    tags: Mutex<HashMap<String, u64>>,
    len: AtomicUsize,
    seq: AtomicU64,
}

/// A batch taken for a retry: what to delete, and the failures it settles.
pub(crate) type Batch = Vec<(String, u64)>;

impl Pending {
    pub(crate) fn is_empty(&self) -> bool {
        self.len.load(Ordering::Acquire) == 0
    }

    pub(crate) fn add_keys<'a>(&self, name: &'static str, keys: impl IntoIterator<Item = &'a str>) {
        self.add(&self.keys, name, keys);
    }

    pub(crate) fn add_tags<'a>(&self, name: &'static str, tags: impl IntoIterator<Item = &'a str>) {
        self.add(&self.tags, name, tags);
    }

    fn add<'a>(
        &self,
        map: &Mutex<HashMap<String, u64>>,
        name: &'static str,
        keys: impl IntoIterator<Item = &'a str>,
    ) {
        let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
        for key in keys {
            let seq = self.seq.fetch_add(1, Ordering::Relaxed);
            if map.insert(key.to_owned(), seq).is_none() {
                self.len.fetch_add(1, Ordering::AcqRel);
            }
        }
        if map.len() > CAPACITY {
            let mut oldest: Vec<(u64, String)> =
                map.iter().map(|(k, seq)| (*seq, k.clone())).collect();
            oldest.sort_unstable();
            let excess = map.len() - CAPACITY;
            for (_, key) in oldest.into_iter().take(excess) {
                map.remove(&key);
            }
            self.len.fetch_sub(excess, Ordering::AcqRel);
            metrics::counter!("cache_l2_invalidations_dropped_total", "cache" => name)
                .increment(excess as u64);
        }
    }

    /// Up to `limit` keys and up to `limit` tag keys to delete again.
    pub(crate) fn take(&self, limit: usize) -> (Batch, Batch) {
        let batch = |map: &Mutex<HashMap<String, u64>>| -> Batch {
            let map = map.lock().unwrap_or_else(|e| e.into_inner());
            map.iter()
                .take(limit)
                .map(|(k, seq)| (k.clone(), *seq))
                .collect()
        };
        (batch(&self.keys), batch(&self.tags))
    }

    /// Forgets what a retry delivered, unless it failed again meanwhile (a newer sequence).
    pub(crate) fn settle_keys(&self, batch: &Batch) {
        self.settle(&self.keys, batch);
    }

    pub(crate) fn settle_tags(&self, batch: &Batch) {
        self.settle(&self.tags, batch);
    }

    fn settle(&self, map: &Mutex<HashMap<String, u64>>, batch: &Batch) {
        let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
        for (key, seq) in batch {
            if map.get(key) == Some(seq) {
                map.remove(key);
                self.len.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }

    /// Keys and tags waiting.
    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retry_settles_only_what_did_not_fail_again() {
        let pending = Pending::default();
        pending.add_keys("t", ["a", "b"]);
        pending.add_tags("t", ["x"]);
        assert_eq!(pending.len(), 3);
        let (keys, tags) = pending.take(10);
        assert_eq!((keys.len(), tags.len()), (2, 1));
        pending.add_keys("t", ["a"]); // failed again while the retry ran
        pending.settle_keys(&keys);
        pending.settle_tags(&tags);
        assert_eq!(pending.len(), 1);
        assert_eq!(pending.take(10).0[0].0, "a");
    }

    #[test]
    fn past_capacity_the_oldest_are_given_up() {
        let pending = Pending::default();
        let keys: Vec<String> = (0..CAPACITY + 10).map(|i| format!("k{i}")).collect();
        pending.add_keys("t", keys.iter().map(String::as_str));
        assert_eq!(pending.len(), CAPACITY);
        let (left, _) = pending.take(CAPACITY);
        assert!(left.iter().all(|(k, _)| k != "k0" && k != "k9"));
    }
}
