//! The conversation service: a thread's messages, its workflow state and checkpoints, and the
//! turn workflow that answers a user's message with every advisor of the boardroom in
//! parallel, then a moderator's synthesis.
//!
//! ```text
//!  grpc ── conversions ──▶ Conversations (conversations.rs)
//!                            ├─ history      append, list
//!                            ├─ checkpoints  state, checkpoints, fork
//!                            ├─ turns        run (lease · double-text queue), replay, cancel, join
//!                            │    └─ workflow   Advise ⇄ Tools → Moderate → Persist
//!                            ├─ summaries    the rolling summary, in the background
//!                            └─ memories     the boardroom memory: recall, distil, list, forget
//!  ports (traits, domain types) ◀── clients (tonic: session service, LLM gateway)
//!  store (sea-orm)   lease (guard + heartbeat)   bus (cancels: Redis pub/sub)
//!  turnlog (events: memory + Redis Streams)     recent, state (hot state)
//! ```
//!
//! Tonic appears only in `grpc`, `conversions` and `clients`.

pub mod bus;
pub mod checkpoints;
pub mod clients;
pub mod conversations;
pub mod conversions;
pub mod domain;
pub mod entity;
pub mod error;
pub mod grpc;
pub mod history;
pub mod lease;
pub mod memories;
pub mod memory;
pub mod metrics;
pub mod page;
pub mod ports;
pub mod recent;
mod redis;
pub mod state;
pub mod store;
pub mod summaries;
pub mod turnlog;
pub mod turns;
pub mod workflow;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use boardroom_cache::TieredCache;
use boardroom_proto::conversation::v1::conversation_service_server::ConversationServiceServer;
use boardroom_runtime::Config;
use boardroom_runtime::client::{ChannelFactory, OutboundInterceptor};
use boardroom_runtime::db::Database;
use boardroom_runtime::metrics::MetricsScope;
use boardroom_runtime::server::GrpcServer;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use conversations::{Conversations, Resident};
pub use error::ConversationError;
pub use store::ConversationStore;

use crate::bus::TurnBus;
use crate::clients::{GatewayModels, SessionDirectory};
use crate::conversations::{Limits, Ports};
use crate::grpc::ConversationGrpc;
use crate::turnlog::{TurnLogs, WriteWindows};
use crate::workflow::tools::Toolbox;
use crate::workflow::{Settings, Workflow};

/// A built conversation service: database connected (and migrated if configured), hot state
/// cache up, channels to the session service and the gateway set up (they connect lazily),
/// listeners bound.
#[derive(Debug)]
pub struct Application {
    server: GrpcServer,
    domain: Conversations,
    stop: CancellationToken,
    /// The turn bus's listener.
    bus_tasks: TaskTracker,
}

impl Application {
    /// Connects, migrates (when `database.migrate_on_start`) and binds.
    pub async fn build(config: &Config) -> anyhow::Result<Self> {
        config.validate()?;
        let db = Database::connect(&config.database)
            .await?
            .named("conversation");
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
        boardroom_runtime::metrics::metrics_handle()?;
        boardroom_runtime::metrics::describe(metrics::FAMILIES);
        metrics::zero_known_series();
        let c = &config.conversation;
        let stop = CancellationToken::new();
        let hot = TieredCache::new(
            "conversation_state",
            boardroom_cache::CacheConfig {
                l1_idle: Some(Duration::from_millis(c.state_cache.idle_ms)),
                // Keys name immutable versions: nothing to refresh.
                refresh_ahead: None,
                ..boardroom_runtime::caching::cache_config(
                    config,
                    "br:conv:",
                    c.state_cache.max_bytes,
                )
            },
            stop.clone(),
        )
        .await?;
        let memory_cache = TieredCache::new(
            "conversation_memory",
            boardroom_runtime::caching::cache_config(config, "br:mem:", c.memory.cache_max_bytes),
            stop.clone(),
        )
        .await?;
        let channels = ChannelFactory::new(config.client.clone());
        let interceptor = OutboundInterceptor::new(&config.auth.outgoing_token)?;
        let ports = Ports {
            directory: Arc::new(SessionDirectory::new(
                channels.channel(&c.session_addresses)?,
                interceptor.clone(),
                Duration::from_millis(c.context_ttl_ms),
            )),
            models: Arc::new(GatewayModels::new(
                channels.channel(&c.llm_addresses)?,
                interceptor,
            )),
        };
        let bus_tasks = TaskTracker::new();
        let redis_timeout = Duration::from_millis(config.redis.timeout_ms);
        let bus = TurnBus::connect(
            config.redis.url.expose(),
            redis_timeout,
            &bus_tasks,
            stop.clone(),
        )
        .await?;
        let tasks = TaskTracker::new();
        let logs = TurnLogs::new(
            (config.redis.url.expose(), redis_timeout),
            c.turn_log_memory_bytes,
            Duration::from_millis(c.turn_log_ttl_ms.min(60_000)),
            (
                Duration::from_millis(c.turn_log_ttl_ms),
                WriteWindows {
                    followed: Duration::from_millis(c.turn_log_write_ms),
                    idle: Duration::from_millis(c.turn_log_idle_write_ms),
                },
            ),
            tasks.clone(),
            stop.clone(),
        )?;
        let leases = Database::connect_relaxed(&config.database)
            .await?
            .named("conversation_leases");
        let store = ConversationStore::new(db, leases, c.checkpoint_retention);
        let workflow = Workflow {
            tools: Toolbox::new(store.clone()),
            store: store.clone(),
            models: ports.models.clone(),
            settings: Arc::new(Settings {
                moderator_model: c.moderator_model.clone(),
                temperature: c.temperature,
                max_answer_tokens: c.max_answer_tokens,
                max_parallel_advisors: c.max_parallel_advisors,
                advisor_timeout: Duration::from_millis(c.advisor_timeout_ms),
                max_tool_rounds: c.max_tool_rounds,
                context_budget_tokens: c.context_budget_tokens,
                memory_budget_tokens: (c.context_budget_tokens as f32 * c.memory.budget_share)
                    as u32,
            }),
        };
        let domain = Conversations::new(
            store,
            ports,
            workflow,
            hot,
            recent::RecentWindows::new(
                c.state_cache.recent_max_bytes,
                Duration::from_millis(c.state_cache.idle_ms),
            ),
            Limits {
                max_message_bytes: c.max_message_bytes,
                default_page_size: c.default_page_size,
                max_page_size: c.max_page_size,
                turn_timeout: Duration::from_millis(c.turn_timeout_ms),
                turn_lease: Duration::from_millis(c.turn_lease_ms),
                max_queued_turns: u64::from(c.max_queued_turns),
                turn_admission: boardroom_runtime::admission::WorkAdmission {
                    target: Duration::from_millis(c.turn_admission_target_ms),
                    interval: Duration::from_millis(c.turn_admission_interval_ms),
                    min: 4,
                    max: c.max_running_turns as usize,
                },
                context_budget_tokens: c.context_budget_tokens,
                history_budget_tokens: c.history_budget_tokens,
                summary_model: c.summary_model.clone(),
                summary_max_tokens: c.summary_max_tokens,
                state_ttl: Duration::from_millis(c.state_cache.ttl_ms),
                debate_rounds: c.debate_rounds,
                max_debate_rounds: c.max_debate_rounds,
            },
            memories::Memories::new(memory_cache, c.memory.clone()),
            (bus, logs),
            (tasks, stop.clone()),
        );
        let max_message = config.server.max_message_bytes;
        let service = ConversationServiceServer::new(ConversationGrpc::new(domain.clone()))
            .max_decoding_message_size(max_message)
            .max_encoding_message_size(max_message);
        let server = GrpcServer::bind("conversation", &c.listen, &config.server, &config.auth)
            .await?
            .add_service(service)
            // Its calls, its outgoing channels, its hot state and its pool (in `boardroom
            // serve` the process has more).
            .metrics_scope(
                MetricsScope::server("conversation")
                    .family("conversation_")
                    .family("rpc_client_")
                    .label("cache", "conversation_state")
                    .label("cache", "conversation_memory")
                    .label("pool_name", "conversation")
                    .label("pool_name", "conversation_leases")
                    .label("gate", "turns"),
            );
        Ok(Self {
            server,
            domain,
            stop,
            bus_tasks,
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

    /// The domain behind the service.
    pub fn domain(&self) -> &Conversations {
        &self.domain
    }

    /// Serves until `shutdown`, drains (running turns finish within the drain period), then
    /// stops background summaries and the cache.
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
            domain,
            stop,
            bus_tasks,
        } = self;
        let pool = domain
            .store()
            .database()
            .clone()
            .report_pool("conversation", shutdown.clone());
        let (served, ()) = tokio::join!(server.run(shutdown), pool);
        stop.cancel();
        domain.drained().await;
        bus_tasks.close();
        bus_tasks.wait().await;
        served
    }
}

/// Builds and runs the service until `shutdown`.
pub async fn serve(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    Application::build(&config)
        .await?
        .run_until_stopped(shutdown)
        .await
}
