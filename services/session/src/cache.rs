//! The session service's Get cache: the shared tiered cache (`boardroom-cache`) holding
//! boardrooms, sessions and threads. Entities live decoded in L1 (`Arc`, no copy on a hit)
//! and as JSON in Redis (L2) when Redis is configured; writes invalidate across replicas.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use boardroom_cache::{Codec, TieredCache};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::domain::{Boardroom, Session, Thread};

/// What is cached, by id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EntityKey {
    Boardroom(Uuid),
    Session(Uuid),
    Thread(Uuid),
}

/// A key as the cache stores it: a kind letter and the id's 32 hex digits, built on the stack.
pub(crate) struct KeyText([u8; 34]);

impl KeyText {
    pub(crate) fn new(key: EntityKey) -> Self {
        let (kind, id) = match key {
            EntityKey::Boardroom(id) => (b'b', id),
            EntityKey::Session(id) => (b's', id),
            EntityKey::Thread(id) => (b't', id),
        };
        let mut text = [0u8; 34];
        text[0] = kind;
        text[1] = b':';
        id.simple().encode_lower(&mut text[2..]);
        Self(text)
    }

    pub(crate) fn as_str(&self) -> &str {
        // Only ASCII was written.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

/// A cached entity.
#[derive(Debug, Clone)]
pub enum Cached {
    Boardroom(Arc<Boardroom>),
    Session(Arc<Session>),
    Thread(Arc<Thread>),
}

#[derive(Serialize)]
enum CachedRef<'a> {
    B(&'a Boardroom),
    S(&'a Session),
    T(&'a Thread),
}

#[derive(Deserialize)]
enum CachedOwned {
    B(Boardroom),
    S(Session),
    T(Thread),
}

/// JSON in Redis; values in L1.
#[derive(Debug, Clone, Copy)]
pub struct EntityCodec;

impl Codec for EntityCodec {
    type Value = Cached;

    fn encode(value: &Cached) -> Bytes {
        let repr = match value {
            Cached::Boardroom(b) => CachedRef::B(b),
            Cached::Session(s) => CachedRef::S(s),
            Cached::Thread(t) => CachedRef::T(t),
        };
        serde_json::to_vec(&repr)
            .map(Bytes::from)
            .unwrap_or_default()
    }

    fn decode(bytes: Bytes) -> Option<Cached> {
        Some(match serde_json::from_slice(&bytes).ok()? {
            CachedOwned::B(b) => Cached::Boardroom(Arc::new(b)),
            CachedOwned::S(s) => Cached::Session(Arc::new(s)),
            CachedOwned::T(t) => Cached::Thread(Arc::new(t)),
        })
    }

    fn weight(value: &Cached) -> usize {
        32 + match value {
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
            Cached::Session(s) => 96 + s.user_id.len() + s.title.len(),
            Cached::Thread(t) => 96 + t.title.len(),
        }
    }
}

/// The Get cache and its live TTL.
#[derive(Clone, Debug)]
pub struct EntityCache {
    cache: TieredCache<EntityCodec>,
    ttl_ms: Arc<AtomicU64>,
}

impl EntityCache {
    /// Wraps a tiered cache; `ttl` applies to found entities (NotFound uses the cache's
    /// negative TTL).
    pub fn new(cache: TieredCache<EntityCodec>, ttl: Duration) -> Self {
        let this = Self {
            cache,
            ttl_ms: Arc::new(AtomicU64::new(0)),
        };
        this.set_ttls(ttl, None);
        this
    }

    /// Applies reloaded TTLs to entries cached from now on.
    pub fn set_ttls(&self, ttl: Duration, negative_ttl: Option<Duration>) {
        self.ttl_ms.store(
            u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        if let Some(negative) = negative_ttl {
            self.cache.set_negative_ttl(negative);
        }
    }

    pub(crate) fn ttl(&self) -> Duration {
        Duration::from_millis(self.ttl_ms.load(Ordering::Relaxed))
    }

    /// The tiered cache underneath (its invalidation events, its L2 status).
    pub fn tiered(&self) -> &TieredCache<EntityCodec> {
        &self.cache
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_kind_and_hex_id() {
        let id = Uuid::now_v7();
        assert_eq!(
            KeyText::new(EntityKey::Session(id)).as_str(),
            format!("s:{}", id.simple())
        );
    }

    #[test]
    fn entities_survive_the_l2_encoding() {
        let session = Session {
            id: Uuid::now_v7(),
            boardroom_id: Uuid::now_v7(),
            user_id: "u".into(),
            title: "t".into(),
            active: false,
            created_at: chrono::Utc::now(),
            ended_at: Some(chrono::Utc::now()),
        };
        let decoded = EntityCodec::decode(EntityCodec::encode(&Cached::Session(Arc::new(
            session.clone(),
        ))));
        assert!(matches!(decoded, Some(Cached::Session(s)) if *s == session));
        assert!(EntityCodec::decode(Bytes::from_static(b"not json")).is_none());
    }
}
