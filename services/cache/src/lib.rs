//! The cache service: the tiered cache (in-process L1, Redis L2) for every internal caller,
//! each confined to its namespace, within configured limits.

pub mod conversions;
pub mod error;
pub mod grpc;
pub mod namespace;

use std::net::SocketAddr;

use boardroom_cache::TieredCache;
use boardroom_proto::cache::v1::cache_service_server::CacheServiceServer;
use boardroom_runtime::Config;
use boardroom_runtime::caching::{cache_config, l1_policy};
use boardroom_runtime::metrics::MetricsScope;
use boardroom_runtime::server::GrpcServer;
use tokio_util::sync::CancellationToken;

pub use error::CacheServiceError;

use crate::grpc::CacheGrpc;

/// A built cache service: cache (and Redis, if configured) connected, listeners bound.
#[derive(Debug)]
pub struct Application {
    server: GrpcServer,
    cache: TieredCache,
    cache_stop: CancellationToken,
    streams_stop: CancellationToken,
}

impl Application {
    /// Connects the cache and binds the listeners.
    #[inline(never)]
    pub fn build(config: &Config) -> boardroom_runtime::BoxFuture<'_, anyhow::Result<Self>> {
        Box::pin(Self::build_inner(config))
    }

    async fn build_inner(config: &Config) -> anyhow::Result<Self> {
        config.validate()?;
        // Metric handles resolved below must find the recorder installed.
        boardroom_runtime::metrics::metrics_handle()?;
        let c = &config.cache;
        let cache_stop = CancellationToken::new();
        let mut settings = cache_config(config, "br:cache:", c.l1_max_bytes);
        settings.l1_policy = l1_policy(c.l1_policy);
        settings.tag_ttl = std::time::Duration::from_millis(c.limits.max_ttl_ms.saturating_mul(2));
        let cache = TieredCache::new("service", settings, cache_stop.clone()).await?;
        let streams_stop = CancellationToken::new();
        let max_message = config.server.max_message_bytes;
        let service = CacheServiceServer::new(CacheGrpc::new(
            cache.clone(),
            c.limits.clone(),
            streams_stop.clone(),
        ))
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(max_message);
        let server = GrpcServer::bind("cache", &c.listen, &config.server, &config.auth)
            .await?
            .add_service(service)
            // Its calls and its cache (in `boardroom serve` the process has more).
            .metrics_scope(MetricsScope::server("cache").label("cache", "service"));
        Ok(Self {
            server,
            cache,
            cache_stop,
            streams_stop,
        })
    }

    /// The bound gRPC address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.server.local_addr()
    }

    /// The bound admin HTTP address.
    pub fn admin_addr(&self) -> std::io::Result<SocketAddr> {
        self.server.admin_addr()
    }

    /// The cache behind the service.
    pub fn cache(&self) -> &TieredCache {
        &self.cache
    }

    /// Serves until `shutdown`: invalidation streams end at once (watchers reconnect to
    /// another replica), unary calls drain; the cache's Redis connections close last.
    #[inline(never)]
    pub fn run_until_stopped(
        self,
        shutdown: CancellationToken,
    ) -> boardroom_runtime::BoxFuture<'static, anyhow::Result<()>> {
        Box::pin(self.run_until_stopped_inner(shutdown))
    }

    async fn run_until_stopped_inner(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Application {
            server,
            cache: _,
            cache_stop,
            streams_stop,
        } = self;
        let end_streams = async {
            shutdown.cancelled().await;
            streams_stop.cancel();
        };
        let (served, ()) = tokio::join!(server.run(shutdown.clone()), end_streams);
        cache_stop.cancel();
        served
    }
}
