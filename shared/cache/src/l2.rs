//! L2: Redis through fred. A pool for reads and writes, and two connections for coherence per
//! node: `tracker` turns on client tracking (broadcast mode, our prefix) with its invalidations
//! redirected to `subscriber`, a RESP2 connection subscribed to `__redis__:invalidate`. On a
//! Redis Cluster every primary gets such a pair (a node tracks and announces only the keys it
//! owns; fred's own `start_tracking` would reach one node), followed as primaries come and go,
//! and multi-key commands go one per hash slot.
//! (fred 10.1 drops the RESP3 push that announces a flush, whose key list is null; the
//! pub/sub form of the same message reaches us as an empty key list.)

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use fred::interfaces::{ClusterInterface, MetricsInterface};
use fred::prelude::{
    Client, ClientInterface, ClientLike, Config, EventInterface, Expiration, KeysInterface, Pool,
    PubsubInterface, ReconnectPolicy, Server, ServerConfig, TrackingInterface,
};
use fred::types::{RespVersion, SetOptions, Value};
use fred::util::redis_keyslot;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::entry::TagStamp;
use crate::pending::{Pending, RETRY};
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

/// Coherence over one Redis node: `tracker` has tracking on (broadcast, our prefix) with its
/// invalidations redirected to `subscriber`. On a cluster there is one per primary (Redis keeps
/// tracking state per node, and a node announces only the keys it owns).
struct Node {
    /// The primary it follows; `None` off a cluster (the configured server).
    server: Option<Server>,
    tracker: Client,
    subscriber: Client,
    /// Tracking is on and nothing was missed since it last (re)started.
    tracking: AtomicBool,
    /// Ends its follower (the node left the cluster's primaries, or the cache stopped).
    stop: CancellationToken,
}

pub(crate) struct Redis {
    name: &'static str,
    prefix: Arc<str>,
    pool: Pool,
    /// The URL's configuration, from which the nodes' clients are built.
    config: Config,
    clustered: bool,
    connect_timeout: Duration,
    timeout: Duration,
    nodes: RwLock<Vec<Arc<Node>>>,
    /// Invalidations Redis did not acknowledge, retried.
    pending: Pending,
    tombstone_ttl: Duration,
    status: watch::Sender<bool>,
    in_flight: metrics::Gauge,
}

fn millis(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX).max(1)
}

/// How often a cluster's topology is read again (and at once on a change fred noticed):
/// a primary that appears (a failover, a node added) is tracked within this bound; while a
/// node is not tracked, every [`RETRY`].
const TOPOLOGY_POLL: Duration = Duration::from_secs(1);

impl Redis {
    pub(crate) async fn connect(
        name: &'static str,
        prefix: &str,
        settings: &RedisSettings,
        tombstone_ttl: Duration,
    ) -> Result<Self, CacheError> {
        let mut config =
            Config::from_url(&settings.url).map_err(|e| CacheError::Config(e.to_string()))?;
        config.version = RespVersion::RESP3;
        let clustered = config.server.is_clustered();
        let pool = builder(config.clone(), settings.timeout)
            .build_pool(settings.pool_size.max(1))
            .map_err(|e| CacheError::Config(e.to_string()))?;
        // Connection tasks run (and reconnect) on their own; an absent Redis is not fatal.
        let _pool_tasks = pool.connect_pool();
        let (status, _) = watch::channel(false);
        let redis = Self {
            name,
            prefix: prefix.into(),
            pool,
            config,
            clustered,
            connect_timeout: connect_timeout(settings.timeout),
            timeout: settings.timeout,
            nodes: RwLock::new(Vec::new()),
            pending: Pending::default(),
            tombstone_ttl,
            status,
            in_flight: metrics::gauge!("cache_l2_commands_in_flight", "cache" => name),
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), redis.pool.wait_for_connect()).await;
        Ok(redis)
    }

    /// The two connections of a node (`None`: the configured server), connecting.
    fn node(&self, server: Option<Server>, stop: CancellationToken) -> Result<Node, CacheError> {
        let mut config = self.config.clone();
        if let Some(server) = &server {
            config.server = ServerConfig::Centralized {
                server: server.clone(),
            };
        }
        let tracker = builder(config.clone(), self.timeout)
            .build()
            .map_err(|e| CacheError::Config(e.to_string()))?;
        config.version = RespVersion::RESP2;
        let subscriber = builder(config, self.timeout)
            .build()
            .map_err(|e| CacheError::Config(e.to_string()))?;
        let _tracker_task = tracker.connect();
        let _subscriber_task = subscriber.connect();
        Ok(Node {
            server,
            tracker,
            subscriber,
            tracking: AtomicBool::new(false),
            stop,
        })
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// The pool is connected and tracking is on at every node: L2 is up and L1 coherent.
    pub(crate) fn is_up(&self) -> bool {
        self.pool_up() && self.tracking_everywhere()
    }

    /// The pool is connected: writes can reach Redis (whether or not this instance's own
    /// tracking has started yet; the others' is what a write must reach).
    pub(crate) fn pool_up(&self) -> bool {
        self.pool.next_connected().is_connected()
    }

    fn tracking_everywhere(&self) -> bool {
        let nodes = self.nodes.read().unwrap_or_else(|e| e.into_inner());
        !nodes.is_empty()
            && nodes.iter().all(|n| {
                n.tracking.load(Ordering::Acquire)
                    && n.tracker.is_connected()
                    && n.subscriber.is_connected()
            })
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
        let tracked = self
            .nodes
            .read()
            .map(|n| {
                n.iter()
                    .filter(|n| n.tracking.load(Ordering::Acquire))
                    .count()
            })
            .unwrap_or(0);
        metrics::gauge!("cache_l2_tracked_nodes", "cache" => name).set(tracked as f64);
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

    /// `keys` (prefixed) in groups that each stay in one hash slot, each group with the
    /// positions of its keys in `keys`: a multi-key command per group never meets CROSSSLOT.
    /// Off a cluster, one group.
    fn slot_groups(&self, keys: &[&str]) -> Vec<(Vec<usize>, Vec<String>)> {
        if !self.clustered {
            return vec![(
                (0..keys.len()).collect(),
                keys.iter().map(|k| self.key(k)).collect(),
            )];
        }
        let mut groups: BTreeMap<u16, (Vec<usize>, Vec<String>)> = BTreeMap::new();
        for (i, key) in keys.iter().enumerate() {
            let key = self.key(key);
            let group = groups.entry(redis_keyslot(key.as_bytes())).or_default();
            group.0.push(i);
            group.1.push(key);
        }
        groups.into_values().collect()
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

    /// Many keys and their remaining lifetimes in one round trip (MGET per hash slot and
    /// PTTLs, pipelined); `None` when L2 is unavailable.
    pub(crate) async fn get_many_with_ttl(
        &self,
        keys: &[&str],
    ) -> Option<Vec<Option<(Found, Duration)>>> {
        if keys.is_empty() {
            return Some(Vec::new());
        }
        let groups = self.slot_groups(keys);
        let replies = self
            .run("mget", |c| {
                let groups = &groups;
                async move {
                    let pipeline = c.pipeline();
                    for (_, group) in groups {
                        let () = pipeline.mget(group.clone()).await?;
                        for key in group {
                            let () = pipeline.pttl(key.as_str()).await?;
                        }
                    }
                    replies::<Value>(pipeline).await
                }
            })
            .await?;
        let mut out: Vec<Option<(Found, Duration)>> = (0..keys.len()).map(|_| None).collect();
        let mut replies = replies.into_iter();
        for (positions, _) in &groups {
            let stored: Vec<Option<Bytes>> = replies.next()?.convert().ok()?;
            for (position, stored) in positions.iter().zip(stored) {
                let ttl = replies.next()?;
                // PTTL: -1 no expiry (not ours), -2 gone since the MGET.
                out[*position] = u64::try_from(ttl.as_i64().unwrap_or(-2))
                    .ok()
                    .filter(|ms| *ms > 0)
                    .and_then(|ms| Some((decode(stored?)?, Duration::from_millis(ms))));
            }
        }
        Some(out)
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

    /// Replaces values with tombstones: fills that read the database before the delete
    /// cannot land after it (they write only where nothing is stored). Not acknowledged, the
    /// keys are deleted again until Redis acknowledges ([`Pending`]).
    pub(crate) async fn delete(&self, keys: &[&str]) -> bool {
        let acknowledged = self.delete_now(keys).await;
        if !acknowledged {
            self.pending.add_keys(self.name, keys.iter().copied());
        }
        acknowledged
    }

    async fn delete_now<K: AsRef<str>>(&self, keys: &[K]) -> bool {
        let writes: Vec<L2Write> = keys
            .iter()
            .map(|key| L2Write {
                key: key.as_ref().to_owned(),
                stored: Bytes::from_static(&[TOMBSTONE]),
                ttl: self.tombstone_ttl,
                mode: Write::Overwrite,
            })
            .collect();
        self.write_many(&writes).await
    }

    /// Writes of `keys` that Redis did not take: the values they replace must go (see
    /// [`Pending`]).
    pub(crate) fn unacknowledged_writes<'a>(&self, keys: impl IntoIterator<Item = &'a str>) {
        self.pending.add_keys(self.name, keys);
    }

    /// Deletes again what Redis did not acknowledge, a batch at a time.
    async fn retry_pending(&self) {
        if self.pending.is_empty() {
            return;
        }
        let (keys, tags) = self.pending.take(512);
        if !keys.is_empty() {
            let names: Vec<&str> = keys.iter().map(|(k, _)| k.as_str()).collect();
            if self.delete_now(&names).await {
                self.pending.settle_keys(&keys);
            }
        }
        if !tags.is_empty() {
            let names: Vec<&str> = tags.iter().map(|(k, _)| k.as_str()).collect();
            if self.drop_tags_now(&names).await {
                self.pending.settle_tags(&tags);
            }
        }
        metrics::gauge!("cache_l2_pending_invalidations", "cache" => self.name)
            .set(self.pending.len() as f64);
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

    /// The current versions of tag keys (MGET per hash slot, pipelined); `None` when L2 is
    /// unavailable.
    pub(crate) async fn tag_versions(&self, tag_keys: &[&str]) -> Option<Vec<Option<u64>>> {
        let groups = self.slot_groups(tag_keys);
        if let [(_, keys)] = groups.as_slice() {
            let keys = keys.clone();
            return self
                .run("tag_versions", |c| async move {
                    c.mget::<Vec<Option<u64>>, _>(keys).await
                })
                .await;
        }
        let replies = self
            .run("tag_versions", |c| {
                let groups = &groups;
                async move {
                    let pipeline = c.pipeline();
                    for (_, keys) in groups {
                        let () = pipeline.mget(keys.clone()).await?;
                    }
                    replies::<Vec<Option<u64>>>(pipeline).await
                }
            })
            .await?;
        let mut out = vec![None; tag_keys.len()];
        for ((positions, _), versions) in groups.iter().zip(replies) {
            for (position, version) in positions.iter().zip(versions) {
                out[*position] = version;
            }
        }
        Some(out)
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
                let versions = replies::<Value>(pipeline).await?;
                Ok(versions.iter().map(Value::as_u64).collect::<Vec<_>>())
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
    /// One DEL per hash slot, pipelined. Not acknowledged, they are dropped again until Redis
    /// acknowledges.
    pub(crate) async fn drop_tags(&self, tag_keys: &[&str]) -> bool {
        let acknowledged = self.drop_tags_now(tag_keys).await;
        if !acknowledged {
            self.pending.add_tags(self.name, tag_keys.iter().copied());
        }
        acknowledged
    }

    async fn drop_tags_now(&self, tag_keys: &[&str]) -> bool {
        let groups = self.slot_groups(tag_keys);
        self.run("tag_invalidate", |c| {
            let groups = &groups;
            async move {
                let pipeline = c.pipeline();
                for (_, keys) in groups {
                    let () = pipeline.del(keys.clone()).await?;
                }
                replies::<Value>(pipeline).await
            }
        })
        .await
        .is_some()
    }

    /// Subscribes `node`'s subscriber to invalidations and turns tracking on for our prefix,
    /// redirected to it. Run again after either connection comes back.
    async fn start_tracking(&self, node: &Node) -> bool {
        let started = async {
            // CLIENT ID is refused on a connection in subscribed mode (RESP2), which is where
            // fred's own resubscription after a reconnect (or an earlier start) leaves it.
            let _ = node.subscriber.unsubscribe("__redis__:invalidate").await;
            let id: i64 = node.subscriber.client_id().await?;
            node.subscriber.subscribe("__redis__:invalidate").await?;
            // Tracking may still be on from an earlier start on this connection: Redis refuses
            // the same prefix twice. Off, then on (a start clears L1 afterwards anyway).
            let _ = node
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
            node.tracker
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
                tracing::warn!(cache = self.name, node = ?node.server, error = %err, "client tracking could not start");
                false
            }
        }
    }

    /// Publishes whether tracking is on everywhere, when that changed.
    fn refresh_status(&self) {
        let up = self.tracking_everywhere();
        if *self.status.borrow() != up {
            self.status.send_replace(up);
            metrics::gauge!("cache_l2_up", "cache" => self.name).set(if up { 1.0 } else { 0.0 });
        }
    }

    /// Keeps `cache`'s L1 coherent: follows the configured server, or on a cluster every
    /// primary, adding a follower for each primary that appears and ending the followers of
    /// nodes that are no longer primaries. Ends with the cache's stop token.
    pub(crate) fn follow_invalidations<C: Codec>(&self, cache: TieredCache<C>) {
        let stop = cache.stop_token().clone();
        // Owned: ends when the cache's stop token is cancelled.
        #[allow(clippy::disallowed_methods)]
        tokio::spawn(async move {
            let Some(l2) = cache.inner.l2.as_ref() else {
                return;
            };
            if l2.clustered {
                l2.follow_topology(&cache, &stop).await;
            } else {
                l2.add_node(&cache, None, false, &stop);
                let mut retry = tokio::time::interval(RETRY);
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = retry.tick() => l2.retry_pending().await,
                    }
                }
            }
            let _ = l2.pool.quit().await;
        });
    }

    /// The cluster's primaries, read from the pool's routing table: at once when fred sees
    /// the topology change, and every [`TOPOLOGY_POLL`] from a fresh `CLUSTER SLOTS`.
    async fn follow_topology<C: Codec>(&self, cache: &TieredCache<C>, stop: &CancellationToken) {
        let client = self.pool.next().clone();
        let mut changes = client.cluster_change_rx();
        let mut tick = tokio::time::interval(TOPOLOGY_POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut retry = tokio::time::interval(RETRY);
        let mut changes_open = true;
        // The nodes known when the cache is built start clean; any found later may have
        // taken writes before its tracking started.
        let mut announce = false;
        loop {
            if let Some(routing) = client.cached_cluster_state() {
                let primaries = routing.unique_primary_nodes();
                if !primaries.is_empty() {
                    self.track_primaries(cache, primaries, announce, stop);
                    announce = true;
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                // A closed channel (its client gone) is ready for ever: stop listening then.
                change = changes.recv(), if changes_open => {
                    changes_open = !matches!(change, Err(tokio::sync::broadcast::error::RecvError::Closed));
                }
                _ = retry.tick() => {
                    self.retry_pending().await;
                    if self.tracking_everywhere() {
                        continue;
                    }
                    let _ = tokio::time::timeout(self.connect_timeout, client.sync_cluster()).await;
                }
                _ = tick.tick() => {
                    let _ = tokio::time::timeout(self.connect_timeout, client.sync_cluster()).await;
                }
            }
        }
    }

    /// Follows each of `primaries` not yet followed; ends the followers of other nodes.
    fn track_primaries<C: Codec>(
        &self,
        cache: &TieredCache<C>,
        primaries: Vec<Server>,
        announce: bool,
        stop: &CancellationToken,
    ) {
        let fresh: Vec<Server> = {
            let mut nodes = self.nodes.write().unwrap_or_else(|e| e.into_inner());
            nodes.retain(|node| {
                let keep = node.server.as_ref().is_some_and(|s| primaries.contains(s));
                if !keep {
                    tracing::info!(cache = self.name, node = ?node.server, "no longer a primary; not followed");
                    node.stop.cancel();
                }
                keep
            });
            primaries
                .into_iter()
                .filter(|p| !nodes.iter().any(|n| n.server.as_ref() == Some(p)))
                .collect()
        };
        for server in fresh {
            tracing::info!(cache = self.name, node = %server, "following a primary");
            self.add_node(cache, Some(server), announce, stop);
        }
        self.refresh_status();
    }

    fn add_node<C: Codec>(
        &self,
        cache: &TieredCache<C>,
        server: Option<Server>,
        announce: bool,
        stop: &CancellationToken,
    ) {
        match self.node(server, stop.child_token()) {
            Ok(node) => {
                let node = Arc::new(node);
                self.nodes
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(node.clone());
                follow_node(cache.clone(), node, announce);
            }
            Err(err) => {
                tracing::warn!(cache = self.name, error = %err, "cannot follow a Redis node")
            }
        }
    }
}

/// The settings of every Redis client of the suite: commands bounded by `timeout` and tried
/// once (a command is never replayed after a disconnect: the caller falls back instead),
/// connecting within `timeout` (at least 200 ms), reconnecting for ever from 50 ms, doubling
/// to `max_backoff`.
pub fn fred_builder(
    config: Config,
    timeout: Duration,
    max_backoff: Duration,
) -> fred::types::Builder {
    let connect = connect_timeout(timeout);
    let mut builder = fred::types::Builder::from_config(config);
    builder
        .with_connection_config(|c| {
            c.connection_timeout = connect;
            c.internal_command_timeout = connect;
            c.max_command_attempts = 1;
        })
        .with_performance_config(|p| p.default_command_timeout = timeout)
        .set_policy(ReconnectPolicy::new_exponential(
            0,
            50,
            u32::try_from(max_backoff.as_millis()).unwrap_or(u32::MAX),
            2,
        ));
    builder
}

fn connect_timeout(timeout: Duration) -> Duration {
    timeout.max(Duration::from_millis(200))
}

/// The caches' clients: a failed-over shard is found again within half a second of its
/// promotion.
fn builder(config: Config, timeout: Duration) -> fred::types::Builder {
    fred_builder(config, timeout, Duration::from_millis(500))
}

/// Applies `node`'s invalidation pushes to `cache`'s L1 and follows its two connections: L1
/// is cleared whenever either drops or comes back (pushes may have been lost), and when
/// tracking starts on a node found after the cache was built (`announce`). Ends with the
/// node's stop token.
fn follow_node<C: Codec>(cache: TieredCache<C>, node: Arc<Node>, announce: bool) {
    let mut pushes = node.subscriber.invalidation_rx();
    let (mut reconnects, mut errors) = (node.tracker.reconnect_rx(), node.tracker.error_rx());
    let (mut sub_reconnects, mut sub_errors) =
        (node.subscriber.reconnect_rx(), node.subscriber.error_rx());
    // Owned: ends when the node's stop token (a child of the cache's) is cancelled.
    #[allow(clippy::disallowed_methods)]
    tokio::spawn(async move {
        let Some(l2) = cache.inner.l2.as_ref() else {
            return;
        };
        let connected = async {
            tokio::join!(
                node.tracker.wait_for_connect(),
                node.subscriber.wait_for_connect()
            )
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), connected).await;
        if node.tracker.is_connected()
            && node.subscriber.is_connected()
            && l2.start_tracking(&node).await
        {
            if announce {
                cache.apply(Invalidation::All).await;
            }
            node.tracking.store(true, Ordering::Release);
            // The first connections announce themselves as reconnections too: tracking
            // has just started on them, so starting it again would only open a gap.
            while reconnects.try_recv().is_ok() {}
            while sub_reconnects.try_recv().is_ok() {}
        }
        l2.refresh_status();
        let both_connected = || node.tracker.is_connected() && node.subscriber.is_connected();
        loop {
            tokio::select! {
                _ = node.stop.cancelled() => {
                    let _ = node.tracker.quit().await;
                    let _ = node.subscriber.quit().await;
                    return;
                }
                push = pushes.recv() => match push {
                    Ok(invalidation) if invalidation.keys.is_empty() => cache.apply(Invalidation::All).await,
                    Ok(invalidation) => {
                        for key in invalidation.keys {
                            if let Some(key) = key.as_str().and_then(|k| k.strip_prefix(&*l2.prefix)) {
                                cache.apply(Invalidation::Key(key.into())).await;
                            }
                        }
                    }
                    // Fell behind the broadcast buffer: some pushes are gone.
                    Err(_) => cache.apply(Invalidation::All).await,
                },
                reconnected = first(reconnects.recv(), sub_reconnects.recv()) => {
                    if reconnected && both_connected() && l2.start_tracking(&node).await {
                        // The pool reconnects on its own schedule; report L2 up with it.
                        let _ = tokio::time::timeout(Duration::from_secs(5), l2.pool.wait_for_connect()).await;
                        tracing::info!(cache = cache.name(), node = ?node.server, "L2 reconnected; L1 cleared");
                        cache.apply(Invalidation::All).await;
                        node.tracking.store(true, Ordering::Release);
                        l2.refresh_status();
                    }
                }
                failed = first(errors.recv(), sub_errors.recv()) => {
                    // Once, on the way down (failed reconnects keep erroring): from here on
                    // invalidations may be lost; entries made meanwhile get the degraded TTL.
                    if failed && !both_connected() && node.tracking.swap(false, Ordering::AcqRel) {
                        tracing::warn!(cache = cache.name(), node = ?node.server, "L2 unreachable; serving L1 and the loader");
                        cache.apply(Invalidation::All).await;
                        l2.refresh_status();
                    }
                }
            }
        }
    });
}

/// Every reply of `pipeline`, one per command (`all` would fold a one-command pipeline's
/// array into its only value); the first error if any failed.
async fn replies<T: fred::types::FromValue>(
    pipeline: fred::clients::Pipeline<Client>,
) -> Result<Vec<T>, fred::error::Error> {
    pipeline.try_all::<T>().await.into_iter().collect()
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
