//! Memory pressure: L1 gives memory back when the process nears its limit.
//!
//! The limit is the cgroup's (v2 `memory.max`, else v1 `memory.limit_in_bytes`) or a
//! configured ceiling, whichever is lower; the trigger is a configured share of it. A watcher
//! reads the process's resident memory every `check_every`; while it is above the trigger, L1
//! drops its least recently hit entries, as many bytes as the excess, and does it again on the
//! next check if that was not enough (freed memory reaches the operating system only as the
//! allocator returns it). Each cache watches on its own; with several caches in a process,
//! each sheds the excess from its own L1.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::entry::Entry;
use crate::{Codec, MemoryPressure, TieredCache, weigh};

/// The process's resident memory (`VmRSS`), if the platform reports it.
pub fn process_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The memory limit of the process's cgroup, if it has one.
pub fn cgroup_memory_limit() -> Option<u64> {
    let read = |path: &str| std::fs::read_to_string(path).ok();
    if let Some(v2) = read("/sys/fs/cgroup/memory.max") {
        return v2.trim().parse().ok(); // "max": no limit
    }
    let v1: u64 = read("/sys/fs/cgroup/memory/memory.limit_in_bytes")?
        .trim()
        .parse()
        .ok()?;
    // v1 reports "no limit" as a huge page-aligned number.
    (v1 < 1 << 60).then_some(v1)
}

impl<C: Codec> TieredCache<C> {
    /// Starts the watcher (owned: ends with the cache's stop token). Without a known limit
    /// the coarse clock still advances, and nothing is shed.
    pub(crate) fn watch_memory(&self, pressure: MemoryPressure) {
        let limit = match (cgroup_memory_limit(), pressure.ceiling_bytes) {
            (Some(cgroup), Some(ceiling)) => Some(cgroup.min(ceiling)),
            (cgroup, ceiling) => cgroup.or(ceiling),
        };
        let share = pressure.limit_share.clamp(0.01, 1.0);
        let trigger = limit.map(|limit| (limit as f64 * share) as u64);
        let name = self.inner.name;
        match trigger {
            Some(trigger) => {
                metrics::gauge!("cache_memory_trigger_bytes", "cache" => name).set(trigger as f64);
                tracing::debug!(cache = name, trigger, "L1 sheds above this resident memory");
            }
            None => tracing::debug!(cache = name, "no memory limit known; L1 never sheds"),
        }
        let cache = self.clone();
        // Owned: ends with the cache's stop token.
        #[allow(clippy::disallowed_methods)]
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(pressure.check_every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let under = metrics::gauge!("cache_memory_pressure", "cache" => name);
            loop {
                tokio::select! {
                    _ = cache.inner.stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                cache.inner.clock.fetch_add(1, Ordering::Relaxed);
                let (Some(trigger), Some(rss)) = (trigger, process_rss_bytes()) else {
                    continue;
                };
                if rss <= trigger {
                    under.set(0.0);
                    continue;
                }
                under.set(1.0);
                let freed = cache.shed_l1(rss - trigger).await;
                tracing::warn!(
                    cache = name,
                    rss,
                    trigger,
                    freed,
                    "memory pressure: L1 shed its coldest entries"
                );
            }
        });
    }

    /// Drops L1's least recently hit entries until `bytes` of them are gone (or L1 is empty);
    /// returns the bytes dropped. Counted in `cache_l1_shed_bytes_total`.
    pub async fn shed_l1(&self, bytes: u64) -> u64 {
        let mut coldest: Vec<(u32, Arc<str>, u64)> = self
            .inner
            .l1
            .iter()
            .map(|(key, entry): (Arc<Arc<str>>, Entry<C::Value>)| {
                let weight = u64::from(weigh::<C>(&key, &entry));
                (
                    entry.state.touched.load(Ordering::Relaxed),
                    (*key).clone(),
                    weight,
                )
            })
            .collect();
        coldest.sort_unstable_by_key(|(touched, _, _)| *touched);
        let mut freed = 0;
        for (_, key, weight) in coldest {
            if freed >= bytes {
                break;
            }
            self.inner.l1.invalidate(&key).await;
            freed += weight;
        }
        self.inner.l1.run_pending_tasks().await;
        let name = self.inner.name;
        metrics::counter!("cache_l1_shed_bytes_total", "cache" => name).increment(freed);
        metrics::counter!("cache_l1_sheds_total", "cache" => name).increment(1);
        freed
    }
}
