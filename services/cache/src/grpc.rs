//! The gRPC skin of the cache service: resolve the namespace, check limits, call the cache.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use boardroom_cache::TieredCache;
use boardroom_proto::cache::v1 as pb;
use boardroom_proto::cache::v1::cache_service_server::CacheService;
use boardroom_runtime::auth::CallerIdentity;
use boardroom_runtime::config::CacheLimits;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::conversions as conv;
use crate::namespace::Namespace;

/// Namespaces whose counters are kept; beyond it the least recently used start again at 0.
const COUNTED_NAMESPACES: u64 = 10_000;

/// Counters of one namespace on this instance.
#[derive(Debug, Default)]
struct Counters {
    reads: AtomicU64,
    hits: AtomicU64,
    writes: AtomicU64,
    deletes: AtomicU64,
    tag_invalidations: AtomicU64,
}

/// Implements `boardroom.cache.v1.CacheService`.
#[derive(Clone)]
pub struct CacheGrpc {
    cache: TieredCache,
    limits: Arc<CacheLimits>,
    counters: moka::future::Cache<Arc<str>, Arc<Counters>>,
    /// Ends every invalidation stream (server shutdown).
    streams_stop: CancellationToken,
}

impl std::fmt::Debug for CacheGrpc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheGrpc")
            .field("cache", &self.cache)
            .finish()
    }
}

impl CacheGrpc {
    /// Serves `cache` within `limits`; invalidation streams end when `streams_stop` fires.
    pub fn new(cache: TieredCache, limits: CacheLimits, streams_stop: CancellationToken) -> Self {
        Self {
            cache,
            limits: Arc::new(limits),
            counters: moka::future::Cache::new(COUNTED_NAMESPACES),
            streams_stop,
        }
    }

    async fn counters(&self, ns: &Namespace) -> Arc<Counters> {
        let name: Arc<str> = ns.key("").into();
        self.counters.get_with(name, async { Arc::default() }).await
    }
}

/// The namespace of a request.
fn namespace<T>(request: &Request<T>, requested: &str) -> Result<Namespace, Status> {
    Ok(Namespace::resolve(
        request.extensions().get::<CallerIdentity>(),
        requested,
    )?)
}

type InvalidationStream =
    Pin<Box<dyn Stream<Item = Result<pb::WatchInvalidationsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl CacheService for CacheGrpc {
    async fn get(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::GetResponse>, Status> {
        let ns = namespace(&request, &request.get_ref().namespace)?;
        let pb::GetRequest { key, .. } = request.into_inner();
        let full = conv::key(&ns, &key, &self.limits)?;
        let value = self.cache.get(&full).await;
        let counters = self.counters(&ns).await;
        counters.reads.fetch_add(1, Ordering::Relaxed);
        counters
            .hits
            .fetch_add(u64::from(value.is_some()), Ordering::Relaxed);
        Ok(Response::new(pb::GetResponse {
            lookup: Some(conv::lookup(key, value)),
        }))
    }

    async fn get_many(
        &self,
        request: Request<pb::GetManyRequest>,
    ) -> Result<Response<pb::GetManyResponse>, Status> {
        let ns = namespace(&request, &request.get_ref().namespace)?;
        let pb::GetManyRequest { keys, .. } = request.into_inner();
        let full = conv::keys(&ns, &keys, &self.limits)?;
        let full: Vec<&str> = full.iter().map(String::as_str).collect();
        let values = self.cache.get_many(&full).await;
        let counters = self.counters(&ns).await;
        counters
            .reads
            .fetch_add(values.len() as u64, Ordering::Relaxed);
        counters.hits.fetch_add(
            values.iter().filter(|v| v.is_some()).count() as u64,
            Ordering::Relaxed,
        );
        Ok(Response::new(pb::GetManyResponse {
            lookups: keys
                .into_iter()
                .zip(values)
                .map(|(key, value)| conv::lookup(key, value))
                .collect(),
        }))
    }

    async fn set(
        &self,
        request: Request<pb::SetRequest>,
    ) -> Result<Response<pb::SetResponse>, Status> {
        let ns = namespace(&request, &request.get_ref().namespace)?;
        let item = conv::single_entry(&ns, request.into_inner().entry, &self.limits)?;
        let replicated = self.cache.set_many(vec![item]).await;
        self.counters(&ns)
            .await
            .writes
            .fetch_add(1, Ordering::Relaxed);
        Ok(Response::new(pb::SetResponse { replicated }))
    }

    async fn set_many(
        &self,
        request: Request<pb::SetManyRequest>,
    ) -> Result<Response<pb::SetManyResponse>, Status> {
        let ns = namespace(&request, &request.get_ref().namespace)?;
        let items = conv::entries(&ns, request.into_inner().entries, &self.limits)?;
        let count = items.len() as u64;
        let replicated = self.cache.set_many(items).await;
        self.counters(&ns)
            .await
            .writes
            .fetch_add(count, Ordering::Relaxed);
        Ok(Response::new(pb::SetManyResponse { replicated }))
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let ns = namespace(&request, &request.get_ref().namespace)?;
        let full = conv::keys(&ns, &request.get_ref().keys, &self.limits)?;
        let full: Vec<&str> = full.iter().map(String::as_str).collect();
        let replicated = self.cache.delete_many(&full).await;
        self.counters(&ns)
            .await
            .deletes
            .fetch_add(full.len() as u64, Ordering::Relaxed);
        Ok(Response::new(pb::DeleteResponse { replicated }))
    }

    async fn invalidate_tags(
        &self,
        request: Request<pb::InvalidateTagsRequest>,
    ) -> Result<Response<pb::InvalidateTagsResponse>, Status> {
        let ns = namespace(&request, &request.get_ref().namespace)?;
        let full = conv::tags(&ns, &request.get_ref().tags, &self.limits)?;
        let full: Vec<&str> = full.iter().map(String::as_str).collect();
        let replicated = self.cache.invalidate_tags(&full).await;
        self.counters(&ns)
            .await
            .tag_invalidations
            .fetch_add(full.len() as u64, Ordering::Relaxed);
        Ok(Response::new(pb::InvalidateTagsResponse { replicated }))
    }

    async fn stats(
        &self,
        request: Request<pb::StatsRequest>,
    ) -> Result<Response<pb::StatsResponse>, Status> {
        let ns = namespace(&request, &request.get_ref().namespace)?;
        let c = self.counters(&ns).await;
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        Ok(Response::new(pb::StatsResponse {
            reads: read(&c.reads),
            hits: read(&c.hits),
            writes: read(&c.writes),
            deletes: read(&c.deletes),
            tag_invalidations: read(&c.tag_invalidations),
            l1_entries: self.cache.l1_entries(),
            l1_bytes: self.cache.l1_bytes().await,
            l2_up: self.cache.l2_up(),
        }))
    }

    type WatchInvalidationsStream = InvalidationStream;

    async fn watch_invalidations(
        &self,
        request: Request<pb::WatchInvalidationsRequest>,
    ) -> Result<Response<Self::WatchInvalidationsStream>, Status> {
        let ns = namespace(&request, &request.get_ref().namespace)?;
        // Subscribed before the response: everything after the caller sees the headers
        // reaches it.
        let mut events = self.cache.invalidations();
        let (tx, rx) = mpsc::channel(256);
        let stop = self.streams_stop.clone();
        // Owned: ends when the caller goes away or the server shuts down.
        #[allow(clippy::disallowed_methods)]
        tokio::spawn(async move {
            loop {
                let event = tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tx.closed() => return,
                    event = events.recv() => event,
                };
                let message = match event {
                    Ok(event) => conv::invalidation(&ns, &event),
                    // Fell behind: some are lost, so the caller must drop everything.
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        conv::invalidation(&ns, &boardroom_cache::Invalidation::All)
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                if let Some(message) = message
                    && tx.send(Ok(message)).await.is_err()
                {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
