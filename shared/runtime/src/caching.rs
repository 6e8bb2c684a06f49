//! The settings every tiered cache of the suite shares: Redis (L2) and memory pressure.

use std::time::Duration;

use boardroom_cache::{CacheConfig, MemoryPressure, RedisSettings};

use crate::Config;
use crate::config::L1Policy;

/// A [`CacheConfig`] for a cache of this suite: keys under `prefix` in Redis (when
/// `redis.url` is set), L1 bounded by `l1_max_bytes`, shedding under memory pressure as
/// `memory` says. The caller adjusts the rest (TTLs, refresh-ahead).
pub fn cache_config(config: &Config, prefix: &str, l1_max_bytes: u64) -> CacheConfig {
    let redis = (!config.redis.url.is_empty()).then(|| RedisSettings {
        url: config.redis.url.expose().to_owned(),
        pool_size: config.redis.pool_size,
        timeout: Duration::from_millis(config.redis.timeout_ms),
    });
    let m = &config.memory;
    CacheConfig {
        prefix: prefix.to_owned(),
        l1_max_bytes,
        redis,
        memory: Some(MemoryPressure {
            limit_share: m.limit_share,
            ceiling_bytes: (m.ceiling_bytes > 0).then_some(m.ceiling_bytes),
            check_every: Duration::from_millis(m.check_every_ms.max(10)),
        }),
        ..CacheConfig::default()
    }
}

/// The cache library's policy for a configured one.
pub fn l1_policy(policy: L1Policy) -> boardroom_cache::L1Policy {
    match policy {
        L1Policy::Lru => boardroom_cache::L1Policy::Lru,
        L1Policy::Tinylfu => boardroom_cache::L1Policy::TinyLfu,
    }
}
