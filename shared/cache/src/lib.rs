//! The tiered cache: an in-process L1 (moka: bytes-bounded, TinyLFU, per-entry TTL), Redis as
//! L2 (fred: pooled, RESP3) and the caller's loader as L3.
//!
//! - **Reads** go L1 → L2 → loader and fill the levels above. Concurrent misses of one key
//!   in a process run the L2 read and the loader once (single-flight).
//! - **NotFound** is cached too, for `negative_ttl`, in both levels.
//! - **Coherence across replicas**: Redis server-assisted client tracking in broadcast mode
//!   on our key prefix (a dedicated RESP3 connection). Every change of a key under the prefix,
//!   by any client (ours, another service, an operator, an expiry or eviction in Redis), evicts
//!   it from every replica's L1. A key-less invalidation (FLUSHALL/FLUSHDB) clears L1. When the
//!   tracking connection drops, invalidations may have been lost, so L1 is cleared on
//!   reconnect. Chosen over pub/sub because it needs no publish per write and cannot miss
//!   writes that bypass this library.
//! - **Invalidation delay**: a replica stops serving an old value once Redis has pushed the
//!   invalidation over the tracking connection (one loopback hop after the write is
//!   acknowledged; documented bound 50 ms, and 64 clients on two instances saw no replaced
//!   value served at all after the delete was acknowledged, `tests/tiered.rs`). Entries carry
//!   the write epoch of their key's stripe from when their fill began, and one older than a
//!   write the instance has seen is never served, so a fill that raced a write never outlives
//!   the invalidation.
//! - **Fills never overwrite writes**: a loader's result goes to Redis with `SET NX`, writes
//!   with a plain `SET`, and deletes leave a short tombstone; so a fill that read the database
//!   before a concurrent write cannot replace the newer value in L2 (the classic cache-aside
//!   race), as long as the load takes less than `tombstone_ttl`.
//! - **Redis Cluster**: tracking is turned on at every primary (a node announces only the
//!   keys it owns), followed as primaries come and go (a failover, a node added): a primary
//!   found later is tracked within the topology poll (1 s, or at once when fred sees the
//!   change) and L1 is cleared once it is. Multi-key commands go one per hash slot.
//! - **Unacknowledged invalidations are retried**: a delete, write or tag invalidation that
//!   Redis did not take (down, or a shard without a primary mid-failover) is deleted again
//!   every 100 ms until Redis acknowledges, so that a restarted server or a promoted replica
//!   cannot keep serving the value it replaced.
//! - **Redis down**: every call still succeeds from L1 and the loader; L2 calls are skipped
//!   while disconnected and bounded by `l2_timeout` otherwise; `cache_l2_up` reports it; L1
//!   entries made while L2 is down live at most `degraded_l1_ttl` (coherence is lost then);
//!   fred reconnects with backoff and L2 resumes by itself.

mod config;
mod entry;
mod kv;
mod l2;
mod pending;
mod pressure;
mod tags;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use moka::future::Cache;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

pub use config::{CacheConfig, L1Policy, MemoryPressure, RedisSettings};
use entry::{Entry, EntryTtl};
pub use kv::Item;
pub use l2::fred_builder;
use l2::{Redis, Write};
pub use pressure::{cgroup_memory_limit, process_rss_bytes};

/// Write epochs are kept per stripe of keys. Many stripes keep a write from casting doubt on
/// many unrelated L1 entries (a doubted entry is refetched, from L2 usually): with 2^16 and a
/// million cached keys, a write doubts about 15 of them. 512 KiB per cache.
const STRIPES: usize = 1 << 16;

/// What a reader learns when an invalidation arrives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalidation {
    /// One key (without the prefix).
    Key(Arc<str>),
    /// Every value stored under a tag.
    Tag(Arc<str>),
    /// Everything: a flush in Redis, or a reconnect after which invalidations may be lost.
    All,
}

/// Errors of the cache itself; loader errors are passed through as `E`.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// Redis could not be configured.
    #[error("redis configuration: {0}")]
    Config(String),
}

/// How values are kept: as themselves in L1 (no decoding on a hit), as bytes in L2.
pub trait Codec: Send + Sync + 'static {
    /// The value callers store and get.
    type Value: Clone + Send + Sync + 'static;
    /// Bytes for Redis.
    fn encode(value: &Self::Value) -> Bytes;
    /// From Redis; `None` when the bytes are not a value of this codec (a miss, then).
    fn decode(bytes: Bytes) -> Option<Self::Value>;
    /// Approximate bytes the value holds, for L1's memory bound.
    fn weight(value: &Self::Value) -> usize;
}

/// Values that are bytes already (the cache service).
#[derive(Debug, Clone, Copy)]
pub struct RawBytes;

impl Codec for RawBytes {
    type Value = Bytes;
    fn encode(value: &Bytes) -> Bytes {
        value.clone()
    }
    fn decode(bytes: Bytes) -> Option<Bytes> {
        Some(bytes)
    }
    fn weight(value: &Bytes) -> usize {
        value.len()
    }
}

struct Inner<C: Codec> {
    name: &'static str,
    requests: Requests,
    /// Bounds background refreshes, so that a cohort of keys coming due together reloads
    /// at a pace instead of as a burst that starves foreground calls.
    refresh_slots: Arc<tokio::sync::Semaphore>,
    config: CacheConfig,
    negative_ttl_ms: AtomicU64,
    l1: Cache<Arc<str>, Entry<C::Value>>,
    l2: Option<Redis>,
    /// Tag → its current version (in L2 mode, a coherent copy of Redis's).
    tag_versions: Cache<Arc<str>, u64>,
    /// Coarse time for "least recently hit", advanced by the memory watcher.
    clock: AtomicU32,
    write_epochs: Box<[AtomicU64]>,
    events: broadcast::Sender<Invalidation>,
    stop: CancellationToken,
}

/// A tiered cache of `C::Value`s. Cheap to clone; clones share everything.
pub struct TieredCache<C: Codec = RawBytes> {
    inner: Arc<Inner<C>>,
}

impl<C: Codec> Clone for TieredCache<C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<C: Codec> std::fmt::Debug for TieredCache<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TieredCache")
            .field("name", &self.inner.name)
            .field("l2", &self.inner.l2.is_some())
            .finish()
    }
}

/// Request counters by level and outcome, resolved once (the hit path touches one atomic).
struct Requests {
    l1_hit: metrics::Counter,
    l1_miss: metrics::Counter,
    l2_hit: metrics::Counter,
    l2_miss: metrics::Counter,
}

impl Requests {
    fn new(name: &'static str) -> Self {
        let counter = |level: &'static str, result: &'static str| metrics::counter!("cache_requests_total", "cache" => name, "level" => level, "result" => result);
        Self {
            l1_hit: counter("l1", "hit"),
            l1_miss: counter("l1", "miss"),
            l2_hit: counter("l2", "hit"),
            l2_miss: counter("l2", "miss"),
        }
    }
}

impl<C: Codec> TieredCache<C> {
    /// Builds the cache; with `config.redis`, connects L2 and starts tracking (an unreachable
    /// Redis is not an error: the cache starts degraded and connects when Redis appears).
    /// Background work ends when `stop` is cancelled.
    pub async fn new(
        name: &'static str,
        config: CacheConfig,
        stop: CancellationToken,
    ) -> Result<Self, CacheError> {
        let mut l1 = Cache::builder();
        if let Some(idle) = config.l1_idle {
            l1 = l1.time_to_idle(idle);
        }
        let l1 = l1
            .name(name)
            .max_capacity(config.l1_max_bytes)
            .eviction_policy(match config.l1_policy {
                L1Policy::Lru => moka::policy::EvictionPolicy::lru(),
                L1Policy::TinyLfu => moka::policy::EvictionPolicy::tiny_lfu(),
            })
            .weigher(|key: &Arc<str>, entry: &Entry<C::Value>| weigh::<C>(key, entry))
            .expire_after(EntryTtl)
            .eviction_listener(move |_k, _v, cause| {
                if cause.was_evicted() {
                    metrics::counter!("cache_evictions_total", "cache" => name, "level" => "l1")
                        .increment(1);
                }
            })
            .build();
        let (events, _) = broadcast::channel(1024);
        let write_epochs = (0..STRIPES).map(|_| AtomicU64::new(0)).collect();
        let l2 = match &config.redis {
            Some(settings) => {
                Some(Redis::connect(name, &config.prefix, settings, config.tombstone_ttl).await?)
            }
            None => None,
        };
        let cache = Self {
            inner: Arc::new(Inner {
                name,
                requests: Requests::new(name),
                refresh_slots: Arc::new(tokio::sync::Semaphore::new(
                    config.max_concurrent_refreshes.max(1),
                )),
                negative_ttl_ms: AtomicU64::new(
                    u64::try_from(config.negative_ttl.as_millis()).unwrap_or(u64::MAX),
                ),
                config,
                l1,
                l2,
                tag_versions: Cache::builder()
                    .max_capacity(tags::MAX_TRACKED_TAGS)
                    .build(),
                clock: AtomicU32::new(1),
                write_epochs,
                events,
                stop,
            }),
        };
        if let Some(l2) = &cache.inner.l2 {
            l2.follow_invalidations(cache.clone());
        }
        cache.report_size();
        if let Some(pressure) = cache.inner.config.memory.clone() {
            cache.watch_memory(pressure);
        }
        metrics::gauge!("cache_l2_up", "cache" => name).set(if cache.l2_up() { 1.0 } else { 0.0 });
        Ok(cache)
    }

    /// Invalidations as they are applied to this instance's L1 (for tests and for callers
    /// that keep their own copies).
    pub fn invalidations(&self) -> broadcast::Receiver<Invalidation> {
        self.inner.events.subscribe()
    }

    /// Whether L2 is reachable now.
    pub fn l2_up(&self) -> bool {
        self.inner.l2.as_ref().is_some_and(Redis::is_up)
    }

    /// Follows L2 reachability (always `false` without Redis).
    pub fn l2_status(&self) -> watch::Receiver<bool> {
        match &self.inner.l2 {
            Some(l2) => l2.status(),
            None => watch::channel(false).1,
        }
    }

    fn stripe(&self, key: &str) -> &AtomicU64 {
        self.stripe_of(&[key])
    }

    /// The stripe of the concatenation of `parts`.
    fn stripe_of(&self, parts: &[&str]) -> &AtomicU64 {
        // FNV-1a: cheap and good enough to spread keys over stripes.
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in parts.iter().flat_map(|part| part.as_bytes()) {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        &self.inner.write_epochs[(hash as usize) % STRIPES]
    }

    /// The coarse clock, for "last hit" marks.
    fn now(&self) -> u32 {
        self.inner.clock.load(Ordering::Relaxed)
    }

    /// An L1 entry that may be served: no later write to its stripe, tags current. Marks
    /// it hit for the memory watcher's coldness order.
    async fn servable(&self, hit: &Entry<C::Value>, seen: u64) -> bool {
        if hit.epoch != seen {
            return false;
        }
        if let Some(stamp) = &hit.tags
            && !self.stamp_current(stamp).await
        {
            return false;
        }
        let now = self.now();
        if hit.state.touched.load(Ordering::Relaxed) != now {
            hit.state.touched.store(now, Ordering::Relaxed);
        }
        true
    }

    fn l1_ttl(&self, ttl: Duration) -> Duration {
        if self.inner.l2.is_some() && !self.l2_up() {
            ttl.min(self.inner.config.degraded_l1_ttl)
        } else {
            ttl
        }
    }

    /// The value of `key`: from L1, else L2, else `load` (run once for all concurrent callers
    /// of this key in this process). `Ok(None)` is a cached NotFound. Loader errors are
    /// returned to every waiter and cached nowhere.
    ///
    /// Every L1 entry remembers its stripe's write epoch when its fill began; an entry older
    /// than a write this instance has seen is never served (not from L1, not to a caller that
    /// joined its fill after the write), so no read that starts after an invalidation arrived
    /// returns the value it replaced. `load` may run again in that case (at most twice more).
    pub async fn get_or_load<F, Fut, E>(
        &self,
        key: &str,
        ttl: Duration,
        load: F,
    ) -> Result<Option<C::Value>, Arc<E>>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<Option<C::Value>, E>>,
        E: Send + Sync + 'static,
    {
        let stripe = self.stripe(key);
        let mut retries = 0;
        loop {
            let seen = stripe.load(Ordering::Acquire);
            if let Some(hit) = self.inner.l1.get(key).await {
                if self.servable(&hit, seen).await {
                    self.inner.requests.l1_hit.increment(1);
                    return Ok(hit.value);
                }
                // Filled before a later write to this stripe, or a tag moved on.
                self.inner.l1.invalidate(key).await;
            }
            let key: Arc<str> = key.into();
            let entry = self
                .inner
                .l1
                .entry(key.clone())
                .or_try_insert_with(Box::pin(self.fill(&key, ttl, &load)))
                .await?
                .into_value();
            if entry.epoch == stripe.load(Ordering::Acquire) {
                return Ok(entry.value);
            }
            // A write overlapped the fill: keep it out of L1. The value is still as new as this
            // call (the fill began after the call did) unless the call joined an older fill.
            self.inner.l1.invalidate(&key).await;
            if entry.epoch >= seen || retries == 2 {
                return Ok(entry.value);
            }
            retries += 1;
        }
    }

    /// [`TieredCache::get_or_load`], plus refresh-ahead when `config.refresh_ahead` is set: a
    /// hit on an entry older than that share of its TTL returns the cached value at once and
    /// reloads it in the background (once per entry at a time), so hot keys do not all expire
    /// into a stampede of loads (Caffeine's refreshAfterWrite). The background reload ends with
    /// the cache's stop token; its result replaces the entry only if no write to the key's
    /// stripe happened meanwhile.
    pub async fn get_or_load_refreshing<F, Fut, E>(
        &self,
        key: &str,
        ttl: Duration,
        load: F,
    ) -> Result<Option<C::Value>, Arc<E>>
    where
        F: Fn() -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<Option<C::Value>, E>> + Send + 'static,
        E: Send + Sync + 'static,
    {
        if let Some(hit) = self.inner.l1.get(key).await
            && self
                .servable(&hit, self.stripe(key).load(Ordering::Acquire))
                .await
        {
            self.inner.requests.l1_hit.increment(1);
            if let Some(share) = self.inner.config.refresh_ahead
                && hit.value.is_some()
                && hit.loaded_at.elapsed() >= hit.ttl.mul_f64(share)
                && let Ok(slot) = self.inner.refresh_slots.clone().try_acquire_owned()
                && !hit.state.refreshing.swap(true, Ordering::AcqRel)
            {
                self.spawn_refresh(key.into(), hit.epoch, ttl, load, slot);
            }
            return Ok(hit.value);
        }
        self.get_or_load(key, ttl, load).await
    }

    /// `epoch` is the write epoch the refreshed entry was current at: any write after it
    /// (even before this task runs) keeps the reload out.
    fn spawn_refresh<F, Fut, E>(
        &self,
        key: Arc<str>,
        epoch: u64,
        ttl: Duration,
        load: F,
        slot: tokio::sync::OwnedSemaphorePermit,
    ) where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Option<C::Value>, E>> + Send + 'static,
        E: Send + Sync + 'static,
    {
        let cache = self.clone();
        let stop = self.inner.stop.clone();
        // Owned: ends with the cache's stop token.
        #[allow(clippy::disallowed_methods)]
        tokio::spawn(async move {
            let _slot = slot;
            let loaded = tokio::select! {
                _ = stop.cancelled() => return,
                loaded = load() => loaded,
            };
            metrics::counter!("cache_refreshes_total", "cache" => cache.inner.name).increment(1);
            match loaded {
                Ok(value) if cache.stripe(&key).load(Ordering::Acquire) == epoch => {
                    let ttl = if value.is_some() {
                        ttl
                    } else {
                        cache.negative_ttl()
                    };
                    cache
                        .inner
                        .l1
                        .insert(
                            key,
                            Entry::new(value, cache.l1_ttl(ttl), epoch, cache.now()),
                        )
                        .await;
                }
                // A write raced the reload (the next read loads afresh) or the load failed (the
                // current value stays until its TTL; the next hit past the mark tries again).
                _ => {
                    if let Some(current) = cache.inner.l1.get(&key).await {
                        current.state.refreshing.store(false, Ordering::Release);
                    }
                }
            }
        });
    }

    /// L2, else the loader; the entry carries the stripe epoch at the start of the fill.
    async fn fill<F, Fut, E>(
        &self,
        key: &Arc<str>,
        ttl: Duration,
        load: &F,
    ) -> Result<Entry<C::Value>, E>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<Option<C::Value>, E>>,
    {
        let name = self.inner.name;
        let epoch = self.stripe(key).load(Ordering::Acquire);
        self.inner.requests.l1_miss.increment(1);
        // A value that does not decode (another version wrote it) is a miss, and so is one
        // stored under a tag version that has moved on.
        if let Some(l2) = &self.inner.l2
            && let Some(found) = l2.get(key).await
            && let Some(value) = decode_found::<C>(found.value)
            && match &found.tags {
                Some(stamp) => self.stamp_current(stamp).await,
                None => true,
            }
        {
            self.inner.requests.l2_hit.increment(1);
            let ttl = if value.is_some() {
                ttl
            } else {
                self.negative_ttl()
            };
            return Ok(Entry::new(value, self.l1_ttl(ttl), epoch, self.now()).with_tags(found.tags));
        }
        if self.inner.l2.is_some() {
            self.inner.requests.l2_miss.increment(1);
        }
        let started = Instant::now();
        let loaded = load().await;
        metrics::histogram!("cache_load_duration_seconds", "cache" => name)
            .record(started.elapsed().as_secs_f64());
        metrics::counter!("cache_loads_total", "cache" => name).increment(1);
        let value = loaded?;
        let ttl = if value.is_some() {
            ttl
        } else {
            self.negative_ttl()
        };
        if let Some(l2) = &self.inner.l2 {
            let stored = l2::encode(value.as_ref().map(C::encode).as_ref(), None);
            l2.set(key, stored, ttl, Write::IfAbsent).await;
        }
        Ok(Entry::new(value, self.l1_ttl(ttl), epoch, self.now()))
    }

    fn negative_ttl(&self) -> Duration {
        Duration::from_millis(self.inner.negative_ttl_ms.load(Ordering::Relaxed))
    }

    /// Changes the lifetime of cached NotFounds from now on (config reload).
    pub fn set_negative_ttl(&self, ttl: Duration) {
        self.inner.negative_ttl_ms.store(
            u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// Drops `key` from this instance's L1 only; Redis and the other instances keep theirs.
    /// For a value this instance will not read again (a superseded version under a key of its
    /// own), so that it leaves memory now rather than when it is idle or evicted.
    pub async fn evict_local(&self, key: &str) {
        self.forget_local(key).await;
    }

    async fn forget_local(&self, key: &str) {
        self.stripe(key).fetch_add(1, Ordering::AcqRel);
        self.inner.l1.invalidate(key).await;
    }

    /// Applies an invalidation pushed by Redis (or made here while no push will come).
    pub(crate) async fn apply(&self, invalidation: Invalidation) {
        let invalidation = match invalidation {
            Invalidation::Key(key) => match key.strip_prefix(tags::TAG_PREFIX) {
                Some(tag) => Invalidation::Tag(tag.into()),
                None => Invalidation::Key(key),
            },
            other => other,
        };
        let name = self.inner.name;
        match &invalidation {
            Invalidation::Key(key) => {
                self.forget_local(key).await;
                metrics::counter!("cache_invalidations_total", "cache" => name, "scope" => "key")
                    .increment(1);
            }
            Invalidation::Tag(tag) => {
                self.forget_tag(tag).await;
                metrics::counter!("cache_invalidations_total", "cache" => name, "scope" => "tag")
                    .increment(1);
            }
            Invalidation::All => {
                for stripe in self.inner.write_epochs.iter() {
                    stripe.fetch_add(1, Ordering::AcqRel);
                }
                self.inner.l1.invalidate_all();
                self.inner.tag_versions.invalidate_all();
                metrics::counter!("cache_invalidations_total", "cache" => name, "scope" => "all")
                    .increment(1);
            }
        }
        let _ = self.inner.events.send(invalidation);
    }

    /// Publishes `cache_l1_bytes`, `cache_l1_entries` and the Redis pool gauges every 5 s
    /// until the stop token.
    fn report_size(&self) {
        let cache = self.clone();
        // Owned: ends with the cache's stop token.
        #[allow(clippy::disallowed_methods)]
        tokio::spawn(async move {
            let name = cache.inner.name;
            let (bytes, entries) = (
                metrics::gauge!("cache_l1_bytes", "cache" => name),
                metrics::gauge!("cache_l1_entries", "cache" => name),
            );
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tokio::select! {
                    _ = cache.inner.stop.cancelled() => return,
                    _ = tick.tick() => {
                        bytes.set(cache.inner.l1.weighted_size() as f64);
                        entries.set(cache.inner.l1.entry_count() as f64);
                        if let Some(l2) = &cache.inner.l2 {
                            l2.report_pool();
                        }
                    }
                }
            }
        });
    }

    /// Entries in L1 (approximate until pending maintenance runs).
    pub fn l1_entries(&self) -> u64 {
        self.inner.l1.entry_count()
    }

    /// Bytes held by L1 (approximate until pending maintenance runs).
    pub async fn l1_bytes(&self) -> u64 {
        self.inner.l1.run_pending_tasks().await;
        self.inner.l1.weighted_size()
    }

    pub(crate) fn stop_token(&self) -> &CancellationToken {
        &self.inner.stop
    }

    pub(crate) fn name(&self) -> &'static str {
        self.inner.name
    }
}

/// L1's weight of an entry: key, value and a fixed overhead.
fn weigh<C: Codec>(key: &str, entry: &Entry<C::Value>) -> u32 {
    let tags: usize = entry
        .tags
        .as_ref()
        .map_or(0, |stamp| stamp.iter().map(|(tag, _)| 24 + tag.len()).sum());
    let bytes = 64 + key.len() + tags + entry.value.as_ref().map_or(0, C::weight);
    u32::try_from(bytes).unwrap_or(u32::MAX)
}

/// A value found in L2 through the codec: `Some(None)` a cached NotFound, `None` bytes the
/// codec does not read (a miss).
fn decode_found<C: Codec>(found: Option<Bytes>) -> Option<Option<C::Value>> {
    match found {
        None => Some(None),
        Some(bytes) => C::decode(bytes).map(Some),
    }
}
