//! L2: Redis through fred. A pool for reads and writes, and two connections for coherence:
//! `tracker` turns on client tracking (broadcast mode, our prefix) with its invalidations
//! redirected to `subscriber`, a RESP2 connection subscribed to `__redis__:invalidate`.
//! (fred 10.1 drops the RESP3 push that announces a flush, whose key list is null; the
//! pub/sub form of the same message reaches us as an empty key list.)

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use fred::prelude::{
    ClientInterface, ClientLike, Config, EventInterface, Expiration, KeysInterface, Pool,
    PubsubInterface, ReconnectPolicy, TrackingInterface,
};
use fred::types::RespVersion;
use tokio::sync::watch;

use crate::{CacheError, Codec, Invalidation, RedisSettings, TieredCache};

/// Stored values carry one tag byte: a value, "the loader found nothing", or a tombstone
/// left by a delete.
const FOUND: u8 = 1;
const NOT_FOUND: u8 = 0;
const TOMBSTONE: u8 = 2;

/// How a fill or a write lands in Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Write {
    /// A write of the truth: replaces whatever is there.
    Overwrite,
    /// A loader's fill: only where nothing is stored, so a fill that read the database before
    /// a concurrent write (or delete) can never replace that write's value (or tombstone).
    IfAbsent,
}

pub(crate) struct Redis {
    name: &'static str,
    prefix: Arc<str>,
    pool: Pool,
    tracker: fred::clients::Client,
    subscriber: fred::clients::Client,
    timeout: Duration,
    status: watch::Sender<bool>,
}

impl Redis {
    pub(crate) async fn connect(
        name: &'static str,
        prefix: &str,
        settings: &RedisSettings,
    ) -> Result<Self, CacheError> {
        let mut config =
            Config::from_url(&settings.url).map_err(|e| CacheError::Config(e.to_string()))?;
        config.version = RespVersion::RESP3;
        let mut builder = fred::types::Builder::from_config(config);
        builder
            .with_connection_config(|c| {
                c.connection_timeout = settings.timeout.max(Duration::from_millis(200));
                c.internal_command_timeout = settings.timeout.max(Duration::from_millis(200));
                // Fail fast: a command is never replayed after a disconnect; the caller falls
                // back to the loader instead.
                c.max_command_attempts = 1;
            })
            .with_performance_config(|p| p.default_command_timeout = settings.timeout)
            // Reconnect for ever, 50 ms doubling to 2 s.
            .set_policy(ReconnectPolicy::new_exponential(0, 50, 2_000, 2));
        let pool = builder
            .build_pool(settings.pool_size.max(1))
            .map_err(|e| CacheError::Config(e.to_string()))?;
        let tracker = builder
            .build()
            .map_err(|e| CacheError::Config(e.to_string()))?;
        builder.with_config(|c| c.version = RespVersion::RESP2);
        let subscriber = builder
            .build()
            .map_err(|e| CacheError::Config(e.to_string()))?;
        // Connection tasks run (and reconnect) on their own; an absent Redis is not fatal.
        let _pool_tasks = pool.connect_pool();
        let _tracker_task = tracker.connect();
        let _subscriber_task = subscriber.connect();
        let (status, _) = watch::channel(false);
        let redis = Self {
            name,
            prefix: prefix.into(),
            pool,
            tracker,
            subscriber,
            timeout: settings.timeout,
            status,
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), redis.pool.wait_for_connect()).await;
        Ok(redis)
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    pub(crate) fn is_up(&self) -> bool {
        self.tracker.is_connected()
            && self.subscriber.is_connected()
            && self.pool.next_connected().is_connected()
    }

    pub(crate) fn status(&self) -> watch::Receiver<bool> {
        self.status.subscribe()
    }

    fn observe(&self, op: &'static str, started: Instant) {
        metrics::histogram!("cache_l2_duration_seconds", "cache" => self.name, "op" => op)
            .record(started.elapsed().as_secs_f64());
    }

    /// `Some(Some(v))` a value, `Some(None)` a cached NotFound, `None` a miss (or a tombstone,
    /// or L2 unavailable).
    pub(crate) async fn get(&self, key: &str) -> Option<Option<Bytes>> {
        let client = self.pool.next_connected();
        if !client.is_connected() {
            return None;
        }
        let started = Instant::now();
        let result =
            tokio::time::timeout(self.timeout, client.get::<Option<Bytes>, _>(self.key(key))).await;
        self.observe("get", started);
        match result {
            Ok(Ok(Some(stored))) => match stored.first() {
                Some(&FOUND) => Some(Some(stored.slice(1..))),
                Some(&NOT_FOUND) => Some(None),
                _ => None, // TOMBSTONE, or not ours
            },
            Ok(Ok(None)) => None,
            Ok(Err(err)) => {
                tracing::debug!(cache = self.name, error = %err, "L2 get failed");
                None
            }
            Err(_) => None,
        }
    }

    /// Best effort: a failed write is counted; the caller is not failed.
    pub(crate) async fn set(&self, key: &str, value: Option<&Bytes>, ttl: Duration, mode: Write) {
        let mut stored = BytesMut::with_capacity(1 + value.map_or(0, Bytes::len));
        match value {
            Some(v) => {
                stored.put_u8(FOUND);
                stored.put_slice(v);
            }
            None => stored.put_u8(NOT_FOUND),
        }
        let millis = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX).max(1);
        self.write(key, stored.freeze(), millis, mode).await;
    }

    /// Replaces the value with a tombstone for `ttl`: fills that read the database before the
    /// delete cannot land after it (they write only where nothing is stored).
    pub(crate) async fn delete(&self, key: &str, tombstone_ttl: Duration) {
        let millis = i64::try_from(tombstone_ttl.as_millis())
            .unwrap_or(i64::MAX)
            .max(1);
        self.write(
            key,
            Bytes::from_static(&[TOMBSTONE]),
            millis,
            Write::Overwrite,
        )
        .await;
    }

    async fn write(&self, key: &str, stored: Bytes, millis: i64, mode: Write) {
        let client = self.pool.next_connected();
        if !client.is_connected() {
            return;
        }
        let condition = (mode == Write::IfAbsent).then_some(fred::types::SetOptions::NX);
        let started = Instant::now();
        let write = client.set::<fred::types::Value, _, _>(
            self.key(key),
            stored,
            Some(Expiration::PX(millis)),
            condition,
            false,
        );
        let result = tokio::time::timeout(self.timeout, write).await;
        self.observe(
            if mode == Write::IfAbsent {
                "fill"
            } else {
                "set"
            },
            started,
        );
        if !matches!(result, Ok(Ok(_))) {
            metrics::counter!("cache_l2_errors_total", "cache" => self.name).increment(1);
        }
    }

    /// Subscribes to invalidations and turns tracking on for our prefix, redirected to the
    /// subscriber's current connection. Run again after either connection comes back.
    async fn start_tracking(&self) -> bool {
        let started = async {
            let id: i64 = self.subscriber.client_id().await?;
            self.subscriber.subscribe("__redis__:invalidate").await?;
            self.tracker
                .client_tracking::<(), _, _>(
                    "on",
                    Some(id),
                    vec![self.prefix.to_string()],
                    true,
                    false,
                    false,
                    false,
                )
                .await
        };
        match started.await {
            Ok(()) => true,
            Err(err) => {
                tracing::warn!(cache = self.name, error = %err, "client tracking could not start");
                false
            }
        }
    }

    fn set_up(&self, up: bool) {
        self.status.send_replace(up);
        metrics::gauge!("cache_l2_up", "cache" => self.name).set(if up { 1.0 } else { 0.0 });
    }

    /// Applies Redis's invalidation pushes to `cache`'s L1 and follows the tracking
    /// connection: L1 is cleared whenever it drops or comes back (pushes may have been lost).
    /// The task ends with the cache's stop token.
    pub(crate) fn follow_invalidations<C: Codec>(&self, cache: TieredCache<C>) {
        let mut pushes = self.subscriber.invalidation_rx();
        let (mut reconnects, mut errors) = (self.tracker.reconnect_rx(), self.tracker.error_rx());
        let (mut sub_reconnects, mut sub_errors) =
            (self.subscriber.reconnect_rx(), self.subscriber.error_rx());
        let stop = cache.stop_token().clone();
        let prefix = self.prefix.clone();
        // Owned: ends when the cache's stop token is cancelled.
        tokio::spawn(async move {
            let Some(l2) = cache.inner.l2.as_ref() else {
                return;
            };
            let connected = async {
                tokio::join!(
                    l2.tracker.wait_for_connect(),
                    l2.subscriber.wait_for_connect()
                )
            };
            let _ = tokio::time::timeout(Duration::from_secs(1), connected).await;
            if l2.tracker.is_connected()
                && l2.subscriber.is_connected()
                && l2.start_tracking().await
            {
                l2.set_up(true);
            }
            loop {
                tokio::select! {
                    _ = stop.cancelled() => {
                        let _ = l2.tracker.quit().await;
                        let _ = l2.subscriber.quit().await;
                        let _ = l2.pool.quit().await;
                        return;
                    }
                    push = pushes.recv() => match push {
                        Ok(invalidation) if invalidation.keys.is_empty() => cache.apply(Invalidation::All).await,
                        Ok(invalidation) => {
                            for key in invalidation.keys {
                                if let Some(key) = key.as_str().and_then(|k| k.strip_prefix(&*prefix)) {
                                    cache.apply(Invalidation::Key(key.into())).await;
                                }
                            }
                        }
                        // Fell behind the broadcast buffer: some pushes are gone.
                        Err(_) => cache.apply(Invalidation::All).await,
                    },
                    reconnected = first(reconnects.recv(), sub_reconnects.recv()) => {
                        if reconnected && l2.tracker.is_connected() && l2.subscriber.is_connected() && l2.start_tracking().await {
                            // The pool reconnects on its own schedule; report L2 up with it.
                            let _ = tokio::time::timeout(Duration::from_secs(5), l2.pool.wait_for_connect()).await;
                            tracing::info!(cache = cache.name(), "L2 reconnected; L1 cleared");
                            cache.apply(Invalidation::All).await;
                            l2.set_up(true);
                        }
                    }
                    failed = first(errors.recv(), sub_errors.recv()) => {
                        if failed && !(l2.tracker.is_connected() && l2.subscriber.is_connected()) {
                            tracing::warn!(cache = cache.name(), "L2 unreachable; serving L1 and the loader");
                            l2.set_up(false);
                            cache.apply(Invalidation::All).await;
                        }
                    }
                }
            }
        });
    }
}

/// Whichever of two event streams yields first; `true` when it yielded an event.
async fn first<A, B, E1, E2>(a: A, b: B) -> bool
where
    A: Future<Output = Result<E1, E2>>,
    B: Future<Output = Result<E1, E2>>,
{
    tokio::select! {
        event = a => event.is_ok(),
        event = b => event.is_ok(),
    }
}
