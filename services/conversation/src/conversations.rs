//! The conversation domain: what every operation shares. The operations live by what they
//! do: `history` (append, list), `checkpoints` (state, checkpoints, fork), `turns` (run, replay,
//! cancel, join), `summaries` (the rolling summary, in the background) and `memories` (the
//! boardroom memory: recall, distillation, what users see and remove).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use boardroom_cache::TieredCache;
use boardroom_runtime::admission::WorkGate;
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
    /// Turns admitted at once, by the runtime's scheduling delay (`WorkGate`).
    pub turn_admission: boardroom_runtime::admission::WorkAdmission,
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
    /// Admits turns while the instance keeps up.
    pub(crate) turn_gate: WorkGate,
    pub(crate) tasks: TaskTracker,
    pub(crate) shutdown: CancellationToken,
}

impl std::fmt::Debug for Conversations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conversations").finish_non_exhaustive()
    }
}

/// Sizes of what a conversation instance keeps in memory (see [`Conversations::resident`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resident {
    /// Threads whose recent messages are kept, and their weighed bytes.
    pub recent_windows: u64,
    pub recent_window_bytes: u64,
    /// Event logs of the turns running here, of finished ones, and the latter's weighed bytes.
    pub turn_logs_running: u64,
    pub turn_logs_finished: u64,
    pub turn_log_bytes: u64,
    /// Cached thread lookups.
    pub thread_contexts: u64,
    /// Turns registered to be cancelled here.
    pub running_turns: u64,
    /// Cached tool results.
    pub tool_results: u64,
    /// Threads being summarised.
    pub summaries_running: u64,
    /// States in the hot cache's L1.
    pub hot_states: u64,
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
        // Another instance follows a turn through Redis: if it runs here, its log hastens.
        bus.on_follow({
            let logs = logs.clone();
            move |thread_id, turn_id| {
                logs.hasten(thread_id, turn_id);
            }
        });
        let turn_gate = WorkGate::start("turns", limits.turn_admission, shutdown.clone());
        let conversations = Self {
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
            turn_gate,
            tasks,
            shutdown,
        };
        conversations.report_resident();
        conversations
    }

    /// Publishes every 5 s, until shutdown, [`Conversations::resident`] as
    /// `conversation_resident_entries` and `conversation_resident_bytes` by structure.
    fn report_resident(&self) {
        let this = self.clone();
        self.tasks.spawn(async move {
            let entries =
                |structure: &'static str| metrics::gauge!("conversation_resident_entries", "structure" => structure);
            let bytes =
                |structure: &'static str| metrics::gauge!("conversation_resident_bytes", "structure" => structure);
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tokio::select! {
                    () = this.shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let now = this.resident().await;
                entries("recent_windows").set(now.recent_windows as f64);
                bytes("recent_windows").set(now.recent_window_bytes as f64);
                entries("turn_logs_running").set(now.turn_logs_running as f64);
                entries("turn_logs_finished").set(now.turn_logs_finished as f64);
                bytes("turn_logs_finished").set(now.turn_log_bytes as f64);
                entries("thread_contexts").set(now.thread_contexts as f64);
                entries("running_turns").set(now.running_turns as f64);
                entries("tool_results").set(now.tool_results as f64);
                entries("summaries_running").set(now.summaries_running as f64);
            }
        });
    }

    /// What this instance keeps in memory now, per structure (its tiered caches' L1 states
    /// included: they report their bytes themselves).
    pub async fn resident(&self) -> Resident {
        let (recent_windows, recent_window_bytes) = self.recent.resident().await;
        let (turn_logs_running, turn_logs_finished, turn_log_bytes) = self.logs.resident().await;
        self.hot.l1_bytes().await;
        Resident {
            recent_windows,
            recent_window_bytes,
            turn_logs_running,
            turn_logs_finished,
            turn_log_bytes,
            thread_contexts: self.directory.cached(),
            running_turns: self.bus.running() as u64,
            tool_results: self.workflow.tools.cached(),
            summaries_running: self.summarising.lock().map_or(0, |s| s.len() as u64),
            hot_states: self.hot.l1_entries(),
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

    /// Stores a thread's new state in the hot cache (Redis keeps it warm for every instance);
    /// the version it superseded leaves this instance's L1 (the next turn reads the new one),
    /// so L1 holds about one state per thread in use rather than every version read in the
    /// last idle period.
    pub(crate) async fn remember(&self, thread_id: Uuid, state: &ConversationState) {
        self.hot
            .set(
                &format!("{thread_id}:{}", state.version),
                Arc::new(state.clone()),
                self.limits.state_ttl,
            )
            .await;
        if state.version > 1 {
            self.hot
                .evict_local(&format!("{thread_id}:{}", state.version - 1))
                .await;
        }
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
