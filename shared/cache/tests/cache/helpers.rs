//! Shared by the cache tests.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use boardroom_cache::{CacheConfig, Invalidation, RedisSettings, TieredCache};
use bytes::Bytes;
use tokio_util::sync::CancellationToken;

pub const TTL: Duration = Duration::from_secs(60);

pub async fn cache(url: &str, prefix: &str, stop: &CancellationToken) -> TieredCache {
    let config = CacheConfig {
        prefix: prefix.to_owned(),
        redis: Some(RedisSettings {
            url: url.to_owned(),
            pool_size: 2,
            timeout: Duration::from_millis(200),
        }),
        ..CacheConfig::default()
    };
    TieredCache::new("test", config, stop.clone())
        .await
        .expect("cache")
}

/// A loader that counts its calls and returns `value`.
pub fn loader(
    calls: &Arc<AtomicUsize>,
    value: Option<&'static str>,
) -> impl Fn() -> std::future::Ready<Result<Option<Bytes>, anyhow::Error>> {
    let calls = calls.clone();
    move || {
        calls.fetch_add(1, Ordering::SeqCst);
        std::future::ready(Ok(value.map(|v| Bytes::from_static(v.as_bytes()))))
    }
}

pub async fn wait_until(mut status: tokio::sync::watch::Receiver<bool>, wanted: bool) {
    tokio::time::timeout(Duration::from_secs(20), status.wait_for(|up| *up == wanted))
        .await
        .unwrap_or_else(|_| panic!("L2 never became {}", if wanted { "up" } else { "down" }))
        .expect("status channel open");
}

pub async fn next_invalidation(
    events: &mut tokio::sync::broadcast::Receiver<Invalidation>,
    wanted: &Invalidation,
) {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if &events.recv().await.expect("events open") == wanted {
                return;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no invalidation {wanted:?}"));
}

/// Returns once `events` (another instance's) has heard every invalidation of `writer`'s
/// writes so far: Redis pushes them in order, so hearing a fresh write means the rest arrived.
pub async fn barrier(
    writer: &TieredCache,
    events: &mut tokio::sync::broadcast::Receiver<Invalidation>,
) {
    let key = format!("barrier-{}", boardroom_testkit::unique_suffix());
    writer.set(&key, Bytes::from_static(b"-"), TTL).await;
    next_invalidation(events, &Invalidation::Key(key.into())).await;
}
