//! Settings of a [`crate::TieredCache`].

use std::time::Duration;

/// Redis (L2) connection settings.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// `redis://host:port/db`.
    pub url: String,
    /// Pooled connections for reads and writes (the tracking connection is extra).
    pub pool_size: usize,
    /// Bound of one L2 command; slower answers count as misses.
    pub timeout: Duration,
}

/// How L1 chooses what to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum L1Policy {
    /// Least recently used: best when the hot set moves (new sessions and threads are the
    /// hot ones); the default, from `benches/hit_ratio.rs`.
    #[default]
    Lru,
    /// TinyLFU admission: best when popularity is stable and skewed (Zipf).
    TinyLfu,
}

/// Settings of one cache.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// Prefix of every key in Redis; tracking watches exactly this prefix.
    pub prefix: String,
    /// Memory bound of L1, in bytes of keys and values.
    pub l1_max_bytes: u64,
    /// What L1 keeps when full.
    pub l1_policy: L1Policy,
    /// Lifetime of a cached NotFound.
    pub negative_ttl: Duration,
    /// L1 lifetime cap while L2 is down (no invalidations arrive then).
    pub degraded_l1_ttl: Duration,
    /// How long a delete's tombstone keeps fills from storing a value in L2; longer than any
    /// load takes.
    pub tombstone_ttl: Duration,
    /// Refresh-ahead: a hit on an entry older than this share of its TTL reloads it in the
    /// background (`get_or_load_refreshing`); `None` switches it off.
    pub refresh_ahead: Option<f64>,
    /// Background refreshes running at once; a hit that finds none free is served and not
    /// refreshed (the next one past the mark tries again).
    pub max_concurrent_refreshes: usize,
    /// L2; `None` runs L1 + loader only (the embedded default).
    pub redis: Option<RedisSettings>,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            prefix: "br:".into(),
            l1_max_bytes: 64 * 1024 * 1024,
            l1_policy: L1Policy::default(),
            negative_ttl: Duration::from_secs(2),
            degraded_l1_ttl: Duration::from_secs(1),
            tombstone_ttl: Duration::from_secs(5),
            refresh_ahead: Some(0.8),
            max_concurrent_refreshes: 4,
            redis: None,
        }
    }
}
