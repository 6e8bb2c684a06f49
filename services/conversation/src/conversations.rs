//! The conversation domain: what every operation shares. The operations live by what they
//! do: `history` (append, list), `checkpoints` (state, checkpoints, fork), `turns` (run, replay,
//! cancel, join), `summaries` (the rolling summary, in the background) and `memories` (the
//! boardroom memory: recall, distillation, what users see and remove).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use boardroom_cache::TieredCache;
use boardroom_runtime::status::Violations;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::bus::TurnBus;
use crate::domain::{ConversationState, ThreadContext};
use crate::error::ConversationError;
use crate::lease::Leases;
use crate::memories::Memories;
use crate::ports::{ModelCalls, ThreadDirectory};
use crate::recent::RecentWindows;
use crate::state::StateCodec;
use crate::store::ConversationStore;
use crate::turnlog::TurnLogs;
use crate::workflow::Workflow;

/// Bounds of requests and of the workflow, from config.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_message_bytes: usize,
    pub default_page_size: u32,
    pub max_page_size: u32,
    pub turn_timeout: Duration,
    /// A running turn's lease on its thread, renewed every third of it.
    pub turn_lease: Duration,
    /// Turns that may wait for one thread (ENQUEUE, INTERRUPT).
    pub max_queued_turns: u64,
    pub context_budget_tokens: u32,
    pub history_budget_tokens: u32,
    pub summary_model: String,
    pub summary_max_tokens: u32,
    pub state_ttl: Duration,
    /// DEBATE's rounds when neither the turn nor its boardroom says.
    pub debate_rounds: u32,
    /// Most DEBATE rounds a turn may run.
    pub max_debate_rounds: u32,
}

/// The outside world, through the ports.
#[derive(Clone)]
pub struct Ports {
    pub directory: Arc<dyn ThreadDirectory>,
    pub models: Arc<dyn ModelCalls>,
}

/// The conversation service's domain.
#[derive(Clone)]
pub struct Conversations {
    pub(crate) store: ConversationStore,
    pub(crate) directory: Arc<dyn ThreadDirectory>,
    pub(crate) models: Arc<dyn ModelCalls>,
    pub(crate) workflow: Workflow,
    pub(crate) hot: TieredCache<StateCodec>,
    pub(crate) recent: RecentWindows,
    pub(crate) limits: Arc<Limits>,
    pub(crate) leases: Leases,
    pub(crate) bus: TurnBus,
    pub(crate) logs: TurnLogs,
    pub(crate) summarising: Arc<Mutex<HashSet<Uuid>>>,
    pub(crate) memories: Memories,
    pub(crate) tasks: TaskTracker,
    pub(crate) shutdown: CancellationToken,
}

impl std::fmt::Debug for Conversations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conversations").finish_non_exhaustive()
    }
}

pub(crate) fn check_text(v: &mut Violations, field: &str, text: &str, max: usize, required: bool) {
    if required && text.trim().is_empty() {
        v.add(field, "must not be empty");
    } else if text.len() > max {
        v.add(field, format!("must be at most {max} bytes"));
    }
}

pub(crate) fn check_request_id(v: &mut Violations, request_id: &Option<String>) {
    check_text(
        v,
        "request_id",
        request_id.as_deref().unwrap_or(""),
        128,
        false,
    );
}

impl Conversations {
    /// The domain over its dependencies; background work (turns, leases, summaries, the
    /// turns' logs) is tracked by `tasks` and ends with `shutdown`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: ConversationStore,
        ports: Ports,
        workflow: Workflow,
        hot: TieredCache<StateCodec>,
        recent: RecentWindows,
        limits: Limits,
        memories: Memories,
        (bus, logs): (TurnBus, TurnLogs),
        (tasks, shutdown): (TaskTracker, CancellationToken),
    ) -> Self {
        let leases = Leases::new(
            store.clone(),
            limits.turn_lease,
            tasks.clone(),
            shutdown.clone(),
        );
        Self {
            store,
            directory: ports.directory,
            models: ports.models,
            workflow,
            hot,
            recent,
            limits: Arc::new(limits),
            leases,
            bus,
            logs,
            summarising: Arc::default(),
            memories,
            tasks,
            shutdown,
        }
    }

    /// The store, for pool metrics and tests.
    pub fn store(&self) -> &ConversationStore {
        &self.store
    }

    /// Waits for background work (turn tasks, leases, summaries) to end after shutdown.
    pub async fn drained(&self) {
        self.tasks.close();
        self.tasks.wait().await;
    }

    /// The state at `version` of a thread: L1, then Redis, then its checkpoint.
    pub(crate) async fn state(
        &self,
        thread_id: Uuid,
        version: i64,
    ) -> Result<Arc<ConversationState>, ConversationError> {
        if version == 0 {
            return Ok(Arc::new(ConversationState::default()));
        }
        let store = self.store.clone();
        let loaded = self
            .hot
            .get_or_load(
                &format!("{thread_id}:{version}"),
                self.limits.state_ttl,
                || {
                    let store = store.clone();
                    async move {
                        store
                            .state_at(thread_id, version)
                            .await
                            .map(|s| Some(Arc::new(s)))
                    }
                },
            )
            .await
            .map_err(|shared| (*shared).clone())?;
        loaded.ok_or_else(|| {
            ConversationError::not_found("checkpoint", format!("{thread_id}@{version}"))
        })
    }

    pub(crate) async fn remember(&self, thread_id: Uuid, state: &ConversationState) {
        self.hot
            .set(
                &format!("{thread_id}:{}", state.version),
                Arc::new(state.clone()),
                self.limits.state_ttl,
            )
            .await;
    }

    pub(crate) async fn writable_thread(
        &self,
        thread_id: Uuid,
    ) -> Result<Arc<ThreadContext>, ConversationError> {
        let thread = self.directory.thread(thread_id).await?;
        if !thread.writable {
            // The cached context may predate a reopen; ask again before refusing.
            self.directory.forget(thread_id).await;
            let fresh = self.directory.thread(thread_id).await?;
            if !fresh.writable {
                return Err(ConversationError::FailedPrecondition(
                    "the thread is not open or its session has ended".into(),
                ));
            }
            return Ok(fresh);
        }
        Ok(thread)
    }

    pub(crate) fn page_size(&self, size: i32) -> Result<u64, ConversationError> {
        match size {
            0 => Ok(u64::from(self.limits.default_page_size)),
            n if n < 0 || n as u32 > self.limits.max_page_size => Err(ConversationError::invalid(
                "page_size",
                format!("must be in 0..={}", self.limits.max_page_size),
            )),
            n => Ok(n as u64),
        }
    }
}
