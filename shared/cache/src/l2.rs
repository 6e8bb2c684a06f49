//! L2: Redis through fred. A pool for reads and writes, and two connections for coherence:
//! `tracker` turns on client tracking (broadcast mode, our prefix) with its invalidations
//! redirected to `subscriber`, a RESP2 connection subscribed to `__redis__:invalidate`.
//! (fred 10.1 drops the RESP3 push that announces a flush, whose key list is null; the
//! pub/sub form of the same message reaches us as an empty key list.)

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use fred::interfaces::MetricsInterface;
use fred::prelude::{
    Client, ClientInterface, ClientLike, Config, EventInterface, Expiration, KeysInterface, Pool,
    PubsubInterface, ReconnectPolicy, TrackingInterface,
};
use fred::types::{RespVersion, SetOptions, Value};
use tokio::sync::watch;
use tracing::Instrument;

use crate::entry::TagStamp;
use crate::{CacheError, Codec, Invalidation, RedisSettings, TieredCache};

/// Stored values carry one tag byte: a value, a value with tag versions, "the loader found
/// nothing", or a tombstone left by a delete.
const FOUND: u8 = 1;
const NOT_FOUND: u8 = 0;
const TOMBSTONE: u8 = 2;
/// `[3][tag count: u8]([tag length: u16][tag][version: u64])*[value]`, all big-endian.
const TAGGED: u8 = 3;

/// How a fill or a write lands in Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Write {
    /// A write of the truth: replaces whatever is there.
    Overwrite,
    /// A loader's fill: only where nothing is stored, so a fill that read the database before
    /// a concurrent write (or delete) can never replace that write's value (or tombstone).
    IfAbsent,
}

/// A value (or cached NotFound) found in L2.
pub(crate) struct Found {
    /// `None`: a cached NotFound.
    pub(crate) value: Option<Bytes>,
    pub(crate) tags: Option<TagStamp>,
}

/// The stored form of a value; `None` for a cached NotFound.
pub(crate) fn encode(value: Option<&Bytes>, tags: Option<&TagStamp>) -> Bytes {
    let Some(value) = value else {
        return Bytes::from_static(&[NOT_FOUND]);
    };
    match tags {
        Some(tags) if !tags.is_empty() => {
            let header: usize = tags.iter().map(|(tag, _)| 10 + tag.len()).sum();
            let mut stored = BytesMut::with_capacity(2 + header + value.len());
            stored.put_u8(TAGGED);
            // Callers bound tags to u8 counts and u16 lengths (`MAX_TAGS`, `MAX_TAG_BYTES`).
            stored.put_u8(u8::try_from(tags.len()).unwrap_or(u8::MAX));
            for (tag, version) in tags.iter().take(usize::from(u8::MAX)) {
                let len = tag.len().min(usize::from(u16::MAX));
                stored.put_u16(u16::try_from(len).unwrap_or(u16::MAX));
                stored.put_slice(&tag.as_bytes()[..len]);
                stored.put_u64(*version);
            }
            stored.put_slice(value);
            stored.freeze()
        }
        _ => {
            let mut stored = BytesMut::with_capacity(1 + value.len());
            stored.put_u8(FOUND);
            stored.put_slice(value);
            stored.freeze()
        }
    }
}

/// `None` for a tombstone or bytes that are not ours (a miss either way).
pub(crate) fn decode(mut stored: Bytes) -> Option<Found> {
    if stored.is_empty() {
        return None;
    }
    match stored.get_u8() {
        FOUND => Some(Found {
            value: Some(stored),
            tags: None,
        }),
        NOT_FOUND => Some(Found {
            value: None,
            tags: None,
        }),
        TAGGED => {
            let count = usize::from(take::<1>(&mut stored)?[0]);
            let mut tags = Vec::with_capacity(count);
            for _ in 0..count {
                let len = usize::from(u16::from_be_bytes(take::<2>(&mut stored)?));
                if stored.len() < len {
                    return None;
                }
                let tag = std::str::from_utf8(&stored.split_to(len)).ok()?.into();
                tags.push((tag, u64::from_be_bytes(take::<8>(&mut stored)?)));
            }
            Some(Found {
                value: Some(stored),
                tags: Some(tags.into()),
            })
        }
        _ => None, // TOMBSTONE, or not ours
    }
}

fn take<const N: usize>(bytes: &mut Bytes) -> Option<[u8; N]> {
    if bytes.len() < N {
        return None;
    }
    let mut out = [0; N];
    bytes.copy_to_slice(&mut out);
    Some(out)
}

/// One write of a batch.
pub(crate) struct L2Write {
    pub(crate) key: String,
    pub(crate) stored: Bytes,
    pub(crate) ttl: Duration,
    pub(crate) mode: Write,
}

pub(crate) struct Redis {
    name: &'static str,
    prefix: Arc<str>,
    pool: Pool,
    tracker: fred::clients::Client,
    subscriber: fred::clients::Client,
    timeout: Duration,
    status: watch::Sender<bool>,
    in_flight: metrics::Gauge,
}

fn millis(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX).max(1)
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
            in_flight: metrics::gauge!("cache_l2_commands_in_flight", "cache" => name),
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

    /// Publishes the pool's state: connections up, and commands buffered in fred waiting for
    /// a connection (the pool's wait queue). In-flight commands are counted as they run.
    pub(crate) fn report_pool(&self) {
        let clients = self.pool.clients();
        let connected = clients.iter().filter(|c| c.is_connected()).count();
        let queued: usize = clients.iter().map(|c| c.command_queue_len()).sum();
        let name = self.name;
        metrics::gauge!("cache_l2_pool_connections", "cache" => name, "state" => "connected")
            .set(connected as f64);
        metrics::gauge!("cache_l2_pool_connections", "cache" => name, "state" => "disconnected")
            .set((clients.len() - connected) as f64);
        metrics::gauge!("cache_l2_commands_queued", "cache" => name).set(queued as f64);
    }

    /// Runs one L2 call on a connected pooled client, bounded by the timeout, timed under
    /// `op`; `None` when L2 is unavailable, slow or failing (counted, never raised).
    async fn run<T, F, Fut>(&self, op: &'static str, call: F) -> Option<T>
    where
        F: FnOnce(Client) -> Fut,
        Fut: Future<Output = Result<T, fred::error::Error>>,
    {
        let client = self.pool.next_connected();
        if !client.is_connected() {
            return None;
        }
        // Built only when spans are exported (the runtime's trace-only target).
        let span = tracing::info_span!(
            target: "boardroom::trace",
            "redis",
            otel.name = %format_args!("redis {op}"),
            otel.kind = "client",
            db.system = "redis",
            db.operation.name = op,
            cache = self.name,
        );
        self.in_flight.increment(1.0);
        let started = Instant::now();
        let result = tokio::time::timeout(self.timeout, call(client.clone()))
            .instrument(span)
            .await;
        self.in_flight.decrement(1.0);
        metrics::histogram!("cache_l2_duration_seconds", "cache" => self.name, "op" => op)
            .record(started.elapsed().as_secs_f64());
        match result {
            Ok(Ok(value)) => Some(value),
            Ok(Err(err)) => {
                tracing::debug!(cache = self.name, op, error = %err, "L2 call failed");
                metrics::counter!("cache_l2_errors_total", "cache" => self.name).increment(1);
                None
            }
            Err(_) => {
                metrics::counter!("cache_l2_errors_total", "cache" => self.name).increment(1);
                None
            }
        }
    }

    /// A value or cached NotFound; `None` for a miss, a tombstone, or L2 unavailable.
    pub(crate) async fn get(&self, key: &str) -> Option<Found> {
        let key = self.key(key);
        self.run(
            "get",
            |c| async move { c.get::<Option<Bytes>, _>(key).await },
        )
        .await
        .flatten()
        .and_then(decode)
    }

    /// Many keys and their remaining lifetimes in one round trip (MGET and PTTLs, pipelined);
    /// `None` when L2 is unavailable.
    pub(crate) async fn get_many_with_ttl(
        &self,
        keys: &[&str],
    ) -> Option<Vec<Option<(Found, Duration)>>> {
        let replies = self
            .run("mget", |c| async move {
                let pipeline = c.pipeline();
                let () = pipeline
                    .mget(keys.iter().map(|k| self.key(k)).collect::<Vec<_>>())
                    .await?;
                for key in keys {
                    let () = pipeline.pttl(self.key(key)).await?;
                }
                pipeline.all::<Vec<Value>>().await
            })
            .await?;
        let mut replies = replies.into_iter();
        let stored: Vec<Option<Bytes>> = replies.next()?.convert().ok()?;
        Some(
            stored
                .into_iter()
                .zip(replies)
                .map(|(stored, ttl)| {
                    // PTTL: -1 no expiry (not ours), -2 gone since the MGET.
                    let ttl = u64::try_from(ttl.as_i64()?).ok().filter(|ms| *ms > 0)?;
                    Some((decode(stored?)?, Duration::from_millis(ttl)))
                })
                .collect(),
        )
    }

    /// Stores one value; `true` once Redis acknowledged it.
    pub(crate) async fn set(&self, key: &str, stored: Bytes, ttl: Duration, mode: Write) -> bool {
        let key = self.key(key);
        let condition = (mode == Write::IfAbsent).then_some(SetOptions::NX);
        let op = if mode == Write::IfAbsent {
            "fill"
        } else {
            "set"
        };
        self.run(op, |c| async move {
            c.set::<Value, _, _>(
                key,
                stored,
                Some(Expiration::PX(millis(ttl))),
                condition,
                false,
            )
            .await
        })
        .await
        .is_some()
    }

    /// Replaces values with tombstones for `ttl`: fills that read the database before the
    /// delete cannot land after it (they write only where nothing is stored).
    pub(crate) async fn delete(&self, keys: &[&str], tombstone_ttl: Duration) -> bool {
        let writes: Vec<L2Write> = keys
            .iter()
            .map(|key| L2Write {
                key: (*key).to_owned(),
                stored: Bytes::from_static(&[TOMBSTONE]),
                ttl: tombstone_ttl,
                mode: Write::Overwrite,
            })
            .collect();
        self.write_many(&writes).await
    }

    /// Many writes in one pipelined round trip; `true` once Redis acknowledged all of them.
    pub(crate) async fn write_many(&self, writes: &[L2Write]) -> bool {
        if writes.len() == 1 {
            let w = &writes[0];
            return self.set(&w.key, w.stored.clone(), w.ttl, w.mode).await;
        }
        self.run("set_many", |c| async move {
            let pipeline = c.pipeline();
            for w in writes {
                let condition = (w.mode == Write::IfAbsent).then_some(SetOptions::NX);
                let () = pipeline
                    .set(
                        self.key(&w.key),
                        w.stored.clone(),
                        Some(Expiration::PX(millis(w.ttl))),
                        condition,
                        false,
                    )
                    .await?;
            }
            pipeline.all::<Value>().await
        })
        .await
        .is_some()
    }

    /// The current versions of tag keys (MGET); `None` when L2 is unavailable.
    pub(crate) async fn tag_versions(&self, tag_keys: &[&str]) -> Option<Vec<Option<u64>>> {
        let keys: Vec<String> = tag_keys.iter().map(|k| self.key(k)).collect();
        let found = self
            .run("tag_versions", |c| async move {
                c.mget::<Vec<Option<u64>>, _>(keys).await
            })
            .await?;
        Some(found)
    }

    /// Gives each tag key a version if it has none (`SET NX GET`: the fresh one, else the one
    /// it has), living `ttl` from now; one pipelined round trip. An existing version is not
    /// touched (touching it would push an invalidation of the tag to every replica).
    pub(crate) async fn ensure_tags(
        &self,
        tag_keys: &[(&str, u64)],
        ttl: Duration,
    ) -> Option<Vec<u64>> {
        let existing = self
            .run("tag_ensure", |c| async move {
                let pipeline = c.pipeline();
                for (key, fresh) in tag_keys {
                    let () = pipeline
                        .set(
                            self.key(key),
                            *fresh,
                            Some(Expiration::PX(millis(ttl))),
                            Some(SetOptions::NX),
                            true,
                        )
                        .await?;
                }
                // Per reply: fred folds a one-command pipeline's array into its only value.
                let replies = pipeline.try_all::<Value>().await;
                replies
                    .into_iter()
                    .map(|reply| reply.map(|value| value.as_u64()))
                    .collect::<Result<Vec<Option<u64>>, _>>()
            })
            .await?;
        Some(
            existing
                .into_iter()
                .zip(tag_keys)
                .map(|(old, (_, fresh))| old.unwrap_or(*fresh))
                .collect(),
        )
    }

    /// Drops tag keys: every value stored under their current versions is stale from now on.
    pub(crate) async fn drop_tags(&self, tag_keys: &[&str]) -> bool {
        let keys: Vec<String> = tag_keys.iter().map(|k| self.key(k)).collect();
        self.run(
            "tag_invalidate",
            |c| async move { c.del::<i64, _>(keys).await },
        )
        .await
        .is_some()
    }

    /// Subscribes to invalidations and turns tracking on for our prefix, redirected to the
    /// subscriber's current connection. Run again after either connection comes back.
    async fn start_tracking(&self) -> bool {
        let started = async {
            // CLIENT ID is refused on a connection in subscribed mode (RESP2), which is where
            // fred's own resubscription after a reconnect (or an earlier start) leaves it.
            let _ = self.subscriber.unsubscribe("__redis__:invalidate").await;
            let id: i64 = self.subscriber.client_id().await?;
            self.subscriber.subscribe("__redis__:invalidate").await?;
            // Tracking may still be on from an earlier start on this connection: Redis refuses
            // the same prefix twice. Off, then on (a start clears L1 afterwards anyway).
            let _ = self
                .tracker
                .client_tracking::<(), _, _>(
                    "off",
                    None,
                    Vec::<String>::new(),
                    false,
                    false,
                    false,
                    false,
                )
                .await;
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
        #[allow(clippy::disallowed_methods)]
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
                // The first connections announce themselves as reconnections too: tracking
                // has just started on them, so starting it again would only open a gap.
                while reconnects.try_recv().is_ok() {}
                while sub_reconnects.try_recv().is_ok() {}
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
                        // Once, on the way down (failed reconnects keep erroring): from here on
                        // invalidations may be lost; entries made meanwhile get the degraded TTL.
                        if failed
                            && *l2.status.borrow()
                            && !(l2.tracker.is_connected() && l2.subscriber.is_connected())
                        {
                            tracing::warn!(cache = cache.name(), "L2 unreachable; serving L1 and the loader");
                            cache.apply(Invalidation::All).await;
                            l2.set_up(false);
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
