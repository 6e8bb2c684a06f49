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
    /// An L1 entry not read or written this long leaves L1 (Redis keeps it); `None` keeps
    /// entries until their TTL or eviction.
    pub l1_idle: Option<Duration>,
    /// Lifetime of a cached NotFound.
    pub negative_ttl: Duration,
    /// L1 lifetime cap while L2 is down (no invalidations arrive then).
    pub degraded_l1_ttl: Duration,
    /// How long a delete's tombstone keeps fills from storing a value in L2; longer than any
    /// load takes.
    pub tombstone_ttl: Duration,
    /// Lifetime of a tag's version in Redis from the tag's first use; values under the tag
    /// are misses after it (see `tags.rs`). At least the longest TTL written with tags.
    pub tag_ttl: Duration,
    /// Refresh-ahead: a hit on an entry older than this share of its TTL reloads it in the
    /// background (`get_or_load_refreshing`); `None` switches it off.
    pub refresh_ahead: Option<f64>,
    /// Background refreshes running at once; a hit that finds none free is served and not
    /// refreshed (the next one past the mark tries again).
    pub max_concurrent_refreshes: usize,
    /// L2; `None` runs L1 + loader only (the embedded default).
    pub redis: Option<RedisSettings>,
    /// Shed L1 when the process nears its memory limit; `None` never sheds.
    pub memory: Option<MemoryPressure>,
}

/// When L1 gives memory back: the process's resident memory passes `limit_share` of its
/// cgroup's limit (in a container) or of `ceiling_bytes` (outside one, or below the cgroup's).
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryPressure {
    /// Share of the limit above which L1 sheds, in (0, 1].
    pub limit_share: f64,
    /// A limit for processes without a cgroup limit, or a lower one than the cgroup's.
    pub ceiling_bytes: Option<u64>,
    /// How often resident memory is read.
    pub check_every: Duration,
}

impl Default for MemoryPressure {
    fn default() -> Self {
        Self {
            limit_share: 0.85,
            ceiling_bytes: None,
            check_every: Duration::from_secs(1),
        }
    }
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            prefix: "br:".into(),
            l1_max_bytes: 64 * 1024 * 1024,
            l1_policy: L1Policy::default(),
            l1_idle: None,
            negative_ttl: Duration::from_secs(2),
            degraded_l1_ttl: Duration::from_secs(1),
            tombstone_ttl: Duration::from_secs(5),
            tag_ttl: Duration::from_secs(7 * 24 * 3600),
            refresh_ahead: Some(0.8),
            max_concurrent_refreshes: 4,
            redis: None,
            memory: Some(MemoryPressure::default()),
        }
    }
}
