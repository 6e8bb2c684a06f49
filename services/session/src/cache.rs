//! The read-through, in-process cache of the Get RPCs (moka: TinyLFU admission, bounded by
//! bytes, per-entry TTL). Concurrent misses for one key load once. NotFound is cached briefly.
//!
//! Writes invalidate what they change. A load that raced a write is not trusted: every key
//! hashes to one of [`STRIPES`] write counters; a loader notes its stripe's counter before
//! reading the database and drops its own result if the counter moved meanwhile, so a stale
//! read can never outlive the write that made it stale.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use moka::Expiry;
use moka::future::Cache;
use uuid::Uuid;

use crate::domain::{Boardroom, Session, Thread};
use crate::error::SessionError;

const STRIPES: usize = 1024;
const CACHE_LABEL: &str = "session_entities";

/// What is cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EntityKey {
    Boardroom(Uuid),
    Session(Uuid),
    Thread(Uuid),
}

/// A cached entity, or the knowledge that it does not exist.
#[derive(Debug, Clone)]
pub enum Cached {
    Boardroom(Arc<Boardroom>),
    Session(Arc<Session>),
    Thread(Arc<Thread>),
    Missing,
}

impl Cached {
    /// Approximate bytes held, for the byte bound.
    fn weight(&self) -> u32 {
        let base = 96u32;
        let text = match self {
            Cached::Boardroom(b) => {
                b.owner_id.len()
                    + b.name.len()
                    + b.advisors
                        .iter()
                        .map(|a| {
                            96 + a.name.len() + a.role.len() + a.system_prompt.len() + a.model.len()
                        })
                        .sum::<usize>()
            }
            Cached::Session(s) => s.user_id.len() + s.title.len(),
            Cached::Thread(t) => t.title.len(),
            Cached::Missing => 0,
        };
        base.saturating_add(u32::try_from(text).unwrap_or(u32::MAX))
    }
}

/// TTLs that SIGHUP may change while the cache runs.
#[derive(Debug)]
pub struct LiveTtls {
    positive_ms: AtomicU64,
    negative_ms: AtomicU64,
}

impl LiveTtls {
    /// TTLs for found and not-found entries.
    pub fn new(positive: Duration, negative: Duration) -> Self {
        let ttls = Self {
            positive_ms: AtomicU64::new(0),
            negative_ms: AtomicU64::new(0),
        };
        ttls.set(positive, negative);
        ttls
    }

    /// Applies new TTLs to entries created from now on.
    pub fn set(&self, positive: Duration, negative: Duration) {
        self.positive_ms.store(
            u64::try_from(positive.as_millis()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        self.negative_ms.store(
            u64::try_from(negative.as_millis()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }
}

struct TtlPolicy(Arc<LiveTtls>);

impl Expiry<EntityKey, Cached> for TtlPolicy {
    fn expire_after_create(
        &self,
        _key: &EntityKey,
        value: &Cached,
        _created_at: Instant,
    ) -> Option<Duration> {
        let ms = match value {
            Cached::Missing => self.0.negative_ms.load(Ordering::Relaxed),
            _ => self.0.positive_ms.load(Ordering::Relaxed),
        };
        Some(Duration::from_millis(ms))
    }
}

/// The Get cache.
#[derive(Clone)]
pub struct EntityCache {
    cache: Cache<EntityKey, Cached>,
    write_epochs: Arc<[AtomicU64]>,
    ttls: Arc<LiveTtls>,
    hits: metrics::Counter,
    misses: metrics::Counter,
}

impl std::fmt::Debug for EntityCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EntityCache")
            .field("entries", &self.cache.entry_count())
            .finish()
    }
}

impl EntityCache {
    /// A cache holding at most `max_bytes` of entities.
    pub fn new(max_bytes: u64, ttls: Arc<LiveTtls>) -> Self {
        let cache = Cache::builder()
            .name(CACHE_LABEL)
            .max_capacity(max_bytes)
            .weigher(|_k: &EntityKey, v: &Cached| v.weight())
            .expire_after(TtlPolicy(ttls.clone()))
            .eviction_listener(|_k, _v, cause| {
                if cause.was_evicted() {
                    metrics::counter!("cache_evictions_total", "cache" => CACHE_LABEL, "level" => "l1").increment(1);
                }
            })
            .build();
        let write_epochs: Arc<[AtomicU64]> = (0..STRIPES).map(|_| AtomicU64::new(0)).collect();
        let requests = |result: &'static str| metrics::counter!("cache_requests_total", "cache" => CACHE_LABEL, "level" => "l1", "result" => result);
        Self {
            cache,
            write_epochs,
            ttls,
            hits: requests("hit"),
            misses: requests("miss"),
        }
    }

    /// The live TTLs.
    pub fn ttls(&self) -> &Arc<LiveTtls> {
        &self.ttls
    }

    fn stripe(&self, key: &EntityKey) -> &AtomicU64 {
        let id = match key {
            EntityKey::Boardroom(id) | EntityKey::Session(id) | EntityKey::Thread(id) => id,
        };
        // The low bits of a UUIDv7 are random.
        let index = (id.as_u128() as usize) % STRIPES;
        &self.write_epochs[index]
    }

    /// The cached value of `key`, if present: the hot path, with no loader built.
    pub async fn get(&self, key: &EntityKey) -> Option<Cached> {
        let found = self.cache.get(key).await;
        if found.is_some() {
            self.hits.increment(1);
        }
        found
    }

    /// The cached value of `key`, loading it with `load` (once for all concurrent callers)
    /// on a miss. Errors are returned and not cached.
    pub async fn get_or_load<F>(&self, key: EntityKey, load: F) -> Result<Cached, SessionError>
    where
        F: Future<Output = Result<Cached, SessionError>>,
    {
        let stripe = self.stripe(&key);
        let epoch = stripe.load(Ordering::Acquire);
        let entry = self
            .cache
            .entry(key)
            .or_try_insert_with(load)
            .await
            .map_err(|err: Arc<SessionError>| clone_error(&err))?;
        if entry.is_fresh() {
            &self.misses
        } else {
            &self.hits
        }
        .increment(1);
        if entry.is_fresh() && stripe.load(Ordering::Acquire) != epoch {
            // A write to this stripe overlapped our load: the value may predate it.
            self.cache.invalidate(&key).await;
        }
        Ok(entry.into_value())
    }

    /// Forgets `key` after a write changed it.
    pub async fn invalidate(&self, key: EntityKey) {
        self.stripe(&key).fetch_add(1, Ordering::AcqRel);
        self.cache.invalidate(&key).await;
    }

    /// Entries currently held (approximate until pending maintenance runs).
    pub fn entry_count(&self) -> u64 {
        self.cache.entry_count()
    }
}

/// moka shares one error among all waiters; give each its own copy.
fn clone_error(err: &SessionError) -> SessionError {
    match err {
        SessionError::Invalid(v) => SessionError::Invalid(v.clone()),
        SessionError::NotFound { kind, id } => SessionError::NotFound {
            kind,
            id: id.clone(),
        },
        SessionError::VersionMismatch { expected, actual } => SessionError::VersionMismatch {
            expected: *expected,
            actual: *actual,
        },
        SessionError::FailedPrecondition(m) => SessionError::FailedPrecondition(m.clone()),
        SessionError::Unavailable(m) => SessionError::Unavailable(m.clone()),
        SessionError::Internal(m) => SessionError::Internal(m.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn cache() -> EntityCache {
        EntityCache::new(
            1 << 20,
            Arc::new(LiveTtls::new(
                Duration::from_secs(60),
                Duration::from_secs(60),
            )),
        )
    }

    #[tokio::test]
    async fn concurrent_misses_load_once() {
        let cache = cache();
        let loads = Arc::new(AtomicUsize::new(0));
        let key = EntityKey::Thread(Uuid::now_v7());
        let (gate_tx, gate_rx) = tokio::sync::watch::channel(false);
        let mut tasks = Vec::new();
        for _ in 0..64 {
            let (cache, loads, mut gate) = (cache.clone(), loads.clone(), gate_rx.clone());
            tasks.push(tokio::spawn(async move {
                cache
                    .get_or_load(key, async move {
                        loads.fetch_add(1, Ordering::SeqCst);
                        // Hold the load open until every caller is waiting on it.
                        let _ = gate.wait_for(|open| *open).await;
                        Ok(Cached::Missing)
                    })
                    .await
            }));
        }
        tokio::task::yield_now().await;
        gate_tx.send_replace(true);
        for task in tasks {
            assert!(matches!(task.await.expect("joined"), Ok(Cached::Missing)));
        }
        assert_eq!(loads.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_load_that_races_a_write_is_not_kept() {
        let cache = cache();
        let key = EntityKey::Session(Uuid::now_v7());
        let racing = cache.clone();
        cache
            .get_or_load(key, async move {
                // A write lands while the (stale) value is being read.
                racing.invalidate(key).await;
                Ok(Cached::Missing)
            })
            .await
            .expect("loaded");
        let reloaded = Arc::new(AtomicUsize::new(0));
        let counter = reloaded.clone();
        cache
            .get_or_load(key, async move {
                counter.fetch_add(1, Ordering::SeqCst);
                Ok(Cached::Missing)
            })
            .await
            .expect("loaded");
        assert_eq!(
            reloaded.load(Ordering::SeqCst),
            1,
            "the raced value must not have been served from cache"
        );
    }

    #[tokio::test]
    async fn errors_are_not_cached() {
        let cache = cache();
        let key = EntityKey::Boardroom(Uuid::now_v7());
        let err = cache
            .get_or_load(key, async { Err(SessionError::Unavailable("down".into())) })
            .await;
        assert!(matches!(err, Err(SessionError::Unavailable(_))));
        let ok = cache.get_or_load(key, async { Ok(Cached::Missing) }).await;
        assert!(matches!(ok, Ok(Cached::Missing)));
    }
}
