//! What L1 holds per key, and how long it lives.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32};
use std::time::{Duration, Instant};

use moka::Expiry;

/// The versions of its tags an entry was stored under: it is current only while every tag
/// still has that version (see `tags.rs`).
pub(crate) type TagStamp = Arc<[(Arc<str>, u64)]>;

/// Shared by every clone of one entry (moka hands out clones).
#[derive(Debug, Default)]
pub(crate) struct EntryState {
    /// Set while a refresh-ahead of this entry runs, so only one runs.
    pub(crate) refreshing: AtomicBool,
    /// The cache's coarse clock at the last hit: memory pressure sheds the least recent.
    pub(crate) touched: AtomicU32,
}

#[derive(Clone)]
pub(crate) struct Entry<V> {
    /// `None`: the loader found nothing (negative entry).
    pub(crate) value: Option<V>,
    pub(crate) ttl: Duration,
    /// The key's stripe write epoch when the fill began.
    pub(crate) epoch: u64,
    /// When the value was read from L2 or the loader.
    pub(crate) loaded_at: Instant,
    /// Tag versions, for values stored with tags.
    pub(crate) tags: Option<TagStamp>,
    pub(crate) state: Arc<EntryState>,
}

impl<V> Entry<V> {
    /// `touched`: the cache's coarse clock now.
    pub(crate) fn new(value: Option<V>, ttl: Duration, epoch: u64, touched: u32) -> Self {
        Self {
            value,
            ttl,
            epoch,
            loaded_at: Instant::now(),
            tags: None,
            state: Arc::new(EntryState {
                refreshing: AtomicBool::new(false),
                touched: AtomicU32::new(touched),
            }),
        }
    }

    pub(crate) fn with_tags(mut self, tags: Option<TagStamp>) -> Self {
        self.tags = tags;
        self
    }
}

/// Per-entry TTL.
pub(crate) struct EntryTtl;

impl<V> Expiry<Arc<str>, Entry<V>> for EntryTtl {
    fn expire_after_create(
        &self,
        _key: &Arc<str>,
        entry: &Entry<V>,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(entry.ttl)
    }

    /// A replaced entry (a refresh) lives its own TTL; moka's default would keep the old
    /// entry's remaining time, and the refreshed value would expire when the old one would have.
    fn expire_after_update(
        &self,
        _key: &Arc<str>,
        entry: &Entry<V>,
        _updated_at: Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        Some(entry.ttl)
    }
}
