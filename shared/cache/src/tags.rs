//! Tag invalidation in O(1) per tag, by versioned tags.
//!
//! Every tag has a version: a random 62-bit number kept under the key `#t:<tag>` (in Redis,
//! with the cache's prefix, living `tag_ttl` from the tag's first use; on the embedded
//! default, in this process only). A value stored
//! with tags records the version each of them had (its stamp), in L1 and in its L2 bytes. It
//! is served only while every tag still has that version. Invalidating a tag deletes its
//! version key: one command whatever the number of values under it, and no set of members to
//! keep in step (the drift problem of tag sets: members that expire or are overwritten leave
//! stale entries, and an invalidation racing a write can miss the newcomer). The next write
//! with the tag creates a fresh random version, so a stamp can never become current again,
//! and a version key that Redis evicts or expires makes the values under it misses, never
//! stale hits. A version key is never touched after it is made (extending its lifetime on
//! each write would push an invalidation of the tag to every replica each time), so a tag
//! starts a new version, and the values under it miss once, every `tag_ttl`.
//!
//! Replicas keep the versions they have read in a local map; the tracking push for
//! `#t:<tag>` drops it there, with the same stripe guard as values (a read of a version that
//! raced an invalidation is not kept). Values under a dropped tag leave L1 lazily, when next
//! read (or by TTL).

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::entry::TagStamp;
use crate::{Codec, Invalidation, TieredCache};

/// Prefix of tag version keys; caller keys must not start with it.
pub(crate) const TAG_PREFIX: &str = "#t:";

/// Versions remembered locally; a forgotten one is read again (or, on the embedded default,
/// its values become misses).
pub(crate) const MAX_TRACKED_TAGS: u64 = 1 << 20;

/// A fresh tag version: random, never 0, and below 2^62 (Redis integers are signed).
fn fresh_version() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    (RandomState::new().hash_one(n) >> 2).max(1)
}

fn tag_key(tag: &str) -> String {
    format!("{TAG_PREFIX}{tag}")
}

impl<C: Codec> TieredCache<C> {
    fn tag_stripe(&self, tag: &str) -> &AtomicU64 {
        self.stripe_of(&[TAG_PREFIX, tag])
    }

    /// The current version of each tag (`None`: it has none, so nothing stored under it is
    /// current): the local copy, else one MGET for all the unknown ones.
    pub(crate) async fn current_versions(&self, tags: &[Arc<str>]) -> Vec<Option<u64>> {
        let mut versions = Vec::with_capacity(tags.len());
        let mut unknown = Vec::new();
        for (i, tag) in tags.iter().enumerate() {
            let known = self.inner.tag_versions.get(tag).await;
            if known.is_none() {
                unknown.push(i);
            }
            versions.push(known);
        }
        let Some(l2) = &self.inner.l2 else {
            return versions;
        };
        if unknown.is_empty() {
            return versions;
        }
        let epochs: Vec<u64> = unknown
            .iter()
            .map(|&i| self.tag_stripe(&tags[i]).load(Ordering::Acquire))
            .collect();
        let keys: Vec<String> = unknown.iter().map(|&i| tag_key(&tags[i])).collect();
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        if let Some(found) = l2.tag_versions(&keys).await {
            for ((&i, version), epoch) in unknown.iter().zip(found).zip(epochs) {
                versions[i] = version;
                if let Some(version) = version {
                    self.remember_version(&tags[i], version, epoch).await;
                }
            }
        }
        versions
    }

    /// Keeps a version read from Redis unless the tag was invalidated since `epoch`.
    async fn remember_version(&self, tag: &Arc<str>, version: u64, epoch: u64) {
        self.inner.tag_versions.insert(tag.clone(), version).await;
        if self.tag_stripe(tag).load(Ordering::Acquire) != epoch {
            self.inner.tag_versions.invalidate(tag).await;
        }
    }

    /// Whether every tag of a stamp still has the recorded version.
    pub(crate) async fn stamp_current(&self, stamp: &TagStamp) -> bool {
        if stamp.len() == 1 {
            let (tag, version) = &stamp[0];
            if let Some(current) = self.inner.tag_versions.get(tag).await {
                return current == *version;
            }
        }
        let tags: Vec<Arc<str>> = stamp.iter().map(|(tag, _)| tag.clone()).collect();
        let current = self.current_versions(&tags).await;
        stamp
            .iter()
            .zip(current)
            .all(|((_, version), current)| current == Some(*version))
    }

    /// The versions values written now with these tags are stamped with: a version for each
    /// tag, created where it has none (living `tag_ttl` in Redis). Without L2 the local
    /// versions are the truth. With L2 configured but unreachable (`local_only`, or the
    /// version could not be made), a tag with no confirmed version gets a one-off version that
    /// is never remembered: its values are misses, since no replica could hear of a later
    /// invalidation of a version Redis never had.
    pub(crate) async fn stamp(
        &self,
        tags: &[Arc<str>],
        local_only: bool,
    ) -> HashMap<Arc<str>, u64> {
        let mut versions = HashMap::with_capacity(tags.len());
        let mut missing = Vec::new();
        let mut seen = std::collections::HashSet::with_capacity(tags.len());
        for tag in tags {
            if !seen.insert(tag) {
                continue;
            }
            match self.inner.tag_versions.get(tag).await {
                Some(version) => {
                    versions.insert(tag.clone(), version);
                }
                None if self.inner.l2.is_none() => {
                    let version = self
                        .inner
                        .tag_versions
                        .get_with(tag.clone(), async { fresh_version() })
                        .await;
                    versions.insert(tag.clone(), version);
                }
                None if local_only => {
                    versions.insert(tag.clone(), fresh_version());
                }
                None => missing.push(tag.clone()),
            }
        }
        if let (Some(l2), false) = (&self.inner.l2, missing.is_empty()) {
            let epochs: Vec<u64> = missing
                .iter()
                .map(|tag| self.tag_stripe(tag).load(Ordering::Acquire))
                .collect();
            let keys: Vec<(String, u64)> = missing
                .iter()
                .map(|tag| (tag_key(tag), fresh_version()))
                .collect();
            let keys: Vec<(&str, u64)> = keys.iter().map(|(k, v)| (k.as_str(), *v)).collect();
            match l2.ensure_tags(&keys, self.inner.config.tag_ttl).await {
                Some(found) => {
                    for ((tag, version), epoch) in missing.into_iter().zip(found).zip(epochs) {
                        self.remember_version(&tag, version, epoch).await;
                        versions.insert(tag, version);
                    }
                }
                // Unconfirmed: one-off versions, never remembered (see above).
                None => {
                    for tag in missing {
                        versions.insert(tag, fresh_version());
                    }
                }
            }
        }
        versions
    }

    /// Makes every value stored under any of `tags` stale, on every replica: one DEL for all
    /// of them. Returns whether Redis acknowledged it (always `false` without L2; this
    /// instance is invalidated either way, and other instances' copies expire with their
    /// degraded TTL when L2 is down).
    pub async fn invalidate_tags(&self, tags: &[&str]) -> bool {
        let acknowledged = match &self.inner.l2 {
            Some(l2) => {
                let keys: Vec<String> = tags.iter().map(|tag| tag_key(tag)).collect();
                let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
                l2.drop_tags(&keys).await
            }
            None => false,
        };
        for tag in tags {
            if acknowledged {
                // The tracking push reports it (to every replica, this one included).
                self.forget_tag(tag).await;
            } else {
                self.apply(Invalidation::Tag((*tag).into())).await;
            }
        }
        acknowledged
    }

    /// Forgets the local version of `tag`.
    pub(crate) async fn forget_tag(&self, tag: &str) {
        self.tag_stripe(tag).fetch_add(1, Ordering::AcqRel);
        self.inner.tag_versions.invalidate(tag).await;
    }
}
