//! Reads and writes without a loader: the cache as a key-value store (the cache service).
//!
//! Values written here go to L2 when it is reachable (and every replica's L1 forgets the old
//! value; the next read fills L1 from L2), else into this instance's L1 only, for at most the
//! degraded TTL. Batches take one Redis round trip: MGET for reads, one pipeline for writes
//! (plus one more for tags whose version this instance has not seen yet).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::entry::{Entry, TagStamp};
use crate::l2::{self, L2Write, Write};
use crate::{Codec, Invalidation, TieredCache, decode_found};

/// One value to store.
#[derive(Debug, Clone)]
pub struct Item<V> {
    /// The key (must not start with `#`, which the cache reserves).
    pub key: String,
    /// The value.
    pub value: V,
    /// How long it lives.
    pub ttl: Duration,
    /// Tags it is invalidated with ([`TieredCache::invalidate_tags`]); at most 255, each at
    /// most 65 535 bytes.
    pub tags: Vec<Arc<str>>,
}

impl<C: Codec> TieredCache<C> {
    /// The value of `key` from L1, else L2 (filling L1); `None` for a miss.
    pub async fn get(&self, key: &str) -> Option<C::Value> {
        self.get_many(&[key]).await.pop().flatten()
    }

    /// The values of `keys`, in order: L1 first, then one MGET for the rest.
    pub async fn get_many(&self, keys: &[&str]) -> Vec<Option<C::Value>> {
        let mut values = Vec::with_capacity(keys.len());
        let mut missing = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            let seen = self.stripe(key).load(Ordering::Acquire);
            match self.inner.l1.get(*key).await {
                Some(hit) if self.servable(&hit, seen).await => {
                    self.inner.requests.l1_hit.increment(1);
                    values.push(hit.value);
                    continue;
                }
                Some(_) => self.inner.l1.invalidate(*key).await,
                None => {}
            }
            self.inner.requests.l1_miss.increment(1);
            values.push(None);
            missing.push((i, seen));
        }
        let Some(l2) = &self.inner.l2 else {
            return values;
        };
        if missing.is_empty() {
            return values;
        }
        let wanted: Vec<&str> = missing.iter().map(|&(i, _)| keys[i]).collect();
        let Some(found) = l2.get_many_with_ttl(&wanted).await else {
            return values;
        };
        for ((i, seen), found) in missing.into_iter().zip(found) {
            let Some((found, ttl)) = found else {
                self.inner.requests.l2_miss.increment(1);
                continue;
            };
            let current = match &found.tags {
                Some(stamp) => self.stamp_current(stamp).await,
                None => true,
            };
            let Some(value) = decode_found::<C>(found.value).filter(|_| current) else {
                self.inner.requests.l2_miss.increment(1);
                continue;
            };
            self.inner.requests.l2_hit.increment(1);
            let entry =
                Entry::new(value.clone(), self.l1_ttl(ttl), seen, self.now()).with_tags(found.tags);
            self.admit(keys[i], entry).await;
            values[i] = value;
        }
        values
    }

    /// Puts a filled entry in L1 unless a write to its stripe happened since its fill began.
    async fn admit(&self, key: &str, entry: Entry<C::Value>) {
        let key: Arc<str> = key.into();
        let epoch = entry.epoch;
        self.inner.l1.insert(key.clone(), entry).await;
        if self.stripe(&key).load(Ordering::Acquire) != epoch {
            self.inner.l1.invalidate(&key).await;
        }
    }

    /// Stores `value` for `ttl`. See [`TieredCache::set_many`].
    pub async fn set(&self, key: &str, value: C::Value, ttl: Duration) -> bool {
        self.set_many(vec![Item {
            key: key.to_owned(),
            value,
            ttl,
            tags: Vec::new(),
        }])
        .await
    }

    /// Stores every item (one pipelined round trip to L2) and makes every replica's L1 forget
    /// the values they replace. Returns whether L2 acknowledged the writes; never fails: with
    /// L2 absent or down, the values are kept in this instance's L1 (for at most the
    /// degraded TTL when L2 is configured but down).
    ///
    /// Last writer wins, as in Redis: two concurrent writes of one key can land in either
    /// order. A value derived from a record that several writers may change at once should be
    /// invalidated with [`TieredCache::delete`] after the write and refilled by a loader.
    pub async fn set_many(&self, items: Vec<Item<C::Value>>) -> bool {
        let l2 = self.inner.l2.as_ref().filter(|l2| l2.pool_up());
        let tags: Vec<Arc<str>> = items.iter().flat_map(|i| i.tags.iter().cloned()).collect();
        let versions = if tags.is_empty() {
            HashMap::new()
        } else {
            self.stamp(&tags, l2.is_none()).await
        };
        let acknowledged = match l2 {
            Some(l2) => {
                let writes: Vec<L2Write> = items
                    .iter()
                    .map(|item| L2Write {
                        key: item.key.clone(),
                        stored: l2::encode(
                            Some(&C::encode(&item.value)),
                            stamp_of(&item.tags, &versions).as_ref(),
                        ),
                        ttl: item.ttl,
                        mode: Write::Overwrite,
                    })
                    .collect();
                l2.write_many(&writes).await
            }
            None => false,
        };
        if !acknowledged && let Some(l2) = &self.inner.l2 {
            l2.unacknowledged_writes(items.iter().map(|item| item.key.as_str()));
        }
        for item in items {
            self.forget_local(&item.key).await;
            if acknowledged {
                continue; // L1 fills from L2 on the next read; the push tells the others.
            }
            let epoch = self.stripe(&item.key).load(Ordering::Acquire);
            // Not in Redis while Redis is configured: other replicas keep the old value and
            // will not hear of this one, so it lives here only briefly.
            let ttl = if self.inner.l2.is_some() {
                item.ttl.min(self.inner.config.degraded_l1_ttl)
            } else {
                item.ttl
            };
            let entry = Entry::new(Some(item.value), ttl, epoch, self.now())
                .with_tags(stamp_of(&item.tags, &versions));
            let key: Arc<str> = item.key.into();
            self.admit(&key, entry).await;
            let _ = self.inner.events.send(Invalidation::Key(key));
        }
        acknowledged
    }

    /// Removes `key` everywhere. See [`TieredCache::delete_many`].
    pub async fn delete(&self, key: &str) -> bool {
        self.delete_many(&[key]).await
    }

    /// Removes keys everywhere, in one pipelined round trip. In L2 a tombstone stays for
    /// `tombstone_ttl`, so that a fill which read the database before this delete cannot
    /// store the old value after it. Returns whether L2 acknowledged it.
    pub async fn delete_many(&self, keys: &[&str]) -> bool {
        let acknowledged = match &self.inner.l2 {
            Some(l2) => l2.delete(keys).await,
            None => false,
        };
        for key in keys {
            if acknowledged {
                self.forget_local(key).await;
            } else {
                self.apply(Invalidation::Key((*key).into())).await;
            }
        }
        acknowledged
    }
}

/// The versions `tags` are stored under (each tag once).
fn stamp_of(tags: &[Arc<str>], versions: &HashMap<Arc<str>, u64>) -> Option<TagStamp> {
    if tags.is_empty() {
        return None;
    }
    let mut stamp: Vec<(Arc<str>, u64)> = Vec::with_capacity(tags.len());
    for tag in tags {
        if let Some(version) = versions.get(tag)
            && !stamp.iter().any(|(t, _)| t == tag)
        {
            stamp.push((tag.clone(), *version));
        }
    }
    Some(stamp.into())
}
