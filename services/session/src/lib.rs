//! The session service: boardrooms (advisor panels), sessions and threads, on PostgreSQL or
//! SQLite, with a read-through cache of its Get RPCs.

pub mod cache;
pub mod conversions;
pub mod domain;
pub mod echo;
pub mod entity;
pub mod error;
pub mod grpc;
pub mod page;
pub mod queries;
pub mod store;
pub mod validate;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use boardroom_cache::{CacheConfig, TieredCache};
use boardroom_proto::session::v1::session_service_server::SessionServiceServer;
use boardroom_runtime::Config;
use boardroom_runtime::db::Database;
use boardroom_runtime::metrics::MetricsScope;
use boardroom_runtime::server::GrpcServer;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use error::SessionError;
pub use store::SessionStore;

use crate::cache::EntityCache;
use crate::grpc::SessionGrpc;
use crate::validate::Limits;

/// A built session service: database connected (and migrated if configured), cache (and
/// Redis, if configured) connected, listeners bound.
#[derive(Debug)]
pub struct Application {
    server: GrpcServer,
    store: SessionStore,
    cache: Option<EntityCache>,
    cache_stop: CancellationToken,
    live: Option<watch::Receiver<Arc<Config>>>,
}

/// The tiered cache settings of the session service's Get cache.
fn cache_config(config: &Config) -> CacheConfig {
    let c = &config.session.cache;
    CacheConfig {
        negative_ttl: Duration::from_millis(c.negative_ttl_ms),
        refresh_ahead: (c.refresh_ahead > 0.0).then_some(c.refresh_ahead.min(1.0)),
        ..boardroom_runtime::caching::cache_config(config, "br:session:", c.max_bytes)
    }
}

impl Application {
    /// Connects, migrates (when `database.migrate_on_start`) and binds.
    pub async fn build(config: &Config) -> anyhow::Result<Self> {
        config.validate()?;
        let db = Database::connect(&config.database).await?.named("session");
        if config.database.migrate_on_start {
            boardroom_migrations::up(db.conn()).await?;
        }
        Self::with_database(config, db).await
    }

    /// Binds a service over an already connected (and migrated) database.
    #[inline(never)]
    pub fn with_database(
        config: &Config,
        db: Database,
    ) -> boardroom_runtime::BoxFuture<'_, anyhow::Result<Self>> {
        Box::pin(Self::with_database_inner(config, db))
    }

    async fn with_database_inner(config: &Config, db: Database) -> anyhow::Result<Self> {
        // Metric handles resolved below must find the recorder installed.
        boardroom_runtime::metrics::metrics_handle()?;
        let s = &config.session;
        let cache_stop = CancellationToken::new();
        let cache = if s.cache.enabled {
            let tiered =
                TieredCache::new("session", cache_config(config), cache_stop.clone()).await?;
            Some(EntityCache::new(
                tiered,
                Duration::from_millis(s.cache.ttl_ms),
            ))
        } else {
            None
        };
        let store = SessionStore::new(
            db,
            cache.clone(),
            Limits {
                max_advisors: s.max_advisors,
            },
        );
        let max_message = config.server.max_message_bytes;
        let mut grpc = SessionGrpc::new(store.clone(), s.default_page_size, s.max_page_size);
        // With a target, CreateSession and CreateThread are admitted at a rate while the
        // runtime keeps up (adjusted until the cache stops, at shutdown); without one
        // (the default) they pass no gate at all.
        if s.start_admission_target_ms > 0 {
            grpc = grpc.with_start_gate(boardroom_runtime::admission::RateGate::start(
                "starts",
                boardroom_runtime::admission::WorkAdmission {
                    target: Duration::from_millis(s.start_admission_target_ms),
                    interval: Duration::from_millis(s.start_admission_interval_ms),
                    min: 2,
                    max: 100_000,
                },
                cache_stop.clone(),
            ));
        }
        let service = SessionServiceServer::new(grpc)
            .max_decoding_message_size(max_message)
            .max_encoding_message_size(max_message);
        let server = GrpcServer::bind("session", &s.listen, &config.server, &config.auth)
            .await?
            .add_service(service)
            // Its calls, its cache, its pool and its start gate (in `boardroom serve` the process
            // has more).
            .metrics_scope(
                MetricsScope::server("session")
                    .label("cache", "session")
                    .label("pool_name", "session")
                    .label("gate", "starts"),
            );
        Ok(Self {
            server,
            store,
            cache,
            cache_stop,
            live: None,
        })
    }

    /// Follows config reloads (SIGHUP): cache TTLs change live.
    pub fn with_live_config(mut self, live: watch::Receiver<Arc<Config>>) -> Self {
        self.live = Some(live);
        self
    }

    /// The bound gRPC address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.server.local_addr()
    }

    /// The service as callers in this process reach it without a socket (behind the same
    /// inbound layer as its port; see `boardroom_runtime::client::serve_in_process`).
    pub fn in_process(&mut self) -> boardroom_runtime::client::LocalService {
        self.server.in_process()
    }

    /// The bound admin HTTP address.
    pub fn admin_addr(&self) -> std::io::Result<SocketAddr> {
        self.server.admin_addr()
    }

    /// The domain store behind the service.
    pub fn store(&self) -> &SessionStore {
        &self.store
    }

    /// The Get cache, when enabled (its invalidation events and L2 status, for tests).
    pub fn cache(&self) -> Option<&EntityCache> {
        self.cache.as_ref()
    }

    /// Serves until `shutdown`, then drains; the cache's Redis connections close last.
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
            store,
            cache,
            cache_stop,
            live,
        } = self;
        let pool = store
            .database()
            .clone()
            .report_pool("session", shutdown.clone());
        let reload = follow_reloads(live, cache, shutdown.clone());
        let (served, (), ()) = tokio::join!(server.run(shutdown), pool, reload);
        cache_stop.cancel();
        served
    }
}

async fn follow_reloads(
    live: Option<watch::Receiver<Arc<Config>>>,
    cache: Option<EntityCache>,
    shutdown: CancellationToken,
) {
    let (Some(mut live), Some(cache)) = (live, cache) else {
        return;
    };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = live.changed() => {
                if changed.is_err() { return; }
                let c = live.borrow_and_update().session.cache.clone();
                cache.set_ttls(Duration::from_millis(c.ttl_ms), Some(Duration::from_millis(c.negative_ttl_ms)));
                tracing::info!(ttl_ms = c.ttl_ms, negative_ttl_ms = c.negative_ttl_ms, "session cache TTLs reloaded");
            }
        }
    }
}

/// Builds and runs the service until `shutdown`.
pub async fn serve(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    Application::build(&config)
        .await?
        .run_until_stopped(shutdown)
        .await
}
