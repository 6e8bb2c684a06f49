//! The conversation domain's operations: appends, lists, state, checkpoints, forks, and turns
//! (started, replayed, cancelled, summarised after).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use boardroom_cache::TieredCache;
use boardroom_runtime::status::Violations;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::domain::{
    Checkpoint, ConversationState, Direction, FailureReason, Message, NewMessage, Page, Role,
    StateView, TurnEvent, TurnRecord, TurnRequest, estimate_tokens,
};
use crate::error::ConversationError;
use crate::page;
use crate::peers::{ChatCall, Directory};
use crate::recent::{RECENT_LIMIT, RecentWindows};
use crate::state::StateCodec;
use crate::store::{self, ConversationStore};
use crate::workflow::{TurnInput, Workflow, context};

/// Most messages folded into the summary by one summarisation call.
const FOLD_LIMIT: u64 = 200;
/// Events buffered per turn stream before the workflow waits for the client.
const EVENT_BUFFER: usize = 256;

/// Bounds of requests and of the workflow, from config.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_message_bytes: usize,
    pub default_page_size: u32,
    pub max_page_size: u32,
    pub turn_timeout: Duration,
    pub context_budget_tokens: u32,
    pub history_budget_tokens: u32,
    pub summary_model: String,
    pub summary_max_tokens: u32,
    pub state_ttl: Duration,
}

/// A running turn that CancelTurn can stop.
#[derive(Debug, Clone)]
struct Running {
    turn_id: Uuid,
    cancel: CancellationToken,
}

/// How much longer than a turn's bound its lease on the thread lasts.
const LEASE_GRACE: Duration = Duration::from_secs(30);

/// The conversation service's domain.
#[derive(Clone)]
pub struct Conversations {
    store: ConversationStore,
    directory: Directory,
    workflow: Workflow,
    hot: TieredCache<StateCodec>,
    recent: RecentWindows,
    limits: Arc<Limits>,
    running: Arc<Mutex<HashMap<Uuid, Running>>>,
    summarising: Arc<Mutex<HashSet<Uuid>>>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

impl std::fmt::Debug for Conversations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conversations").finish_non_exhaustive()
    }
}

fn check_text(v: &mut Violations, field: &str, text: &str, max: usize, required: bool) {
    if required && text.trim().is_empty() {
        v.add(field, "must not be empty");
    } else if text.len() > max {
        v.add(field, format!("must be at most {max} bytes"));
    }
}

fn check_request_id(v: &mut Violations, request_id: &Option<String>) {
    check_text(
        v,
        "request_id",
        request_id.as_deref().unwrap_or(""),
        128,
        false,
    );
}

impl Conversations {
    /// The domain over its dependencies; background work (summaries) ends with `shutdown`.
    pub fn new(
        store: ConversationStore,
        directory: Directory,
        workflow: Workflow,
        hot: TieredCache<StateCodec>,
        recent: RecentWindows,
        limits: Limits,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            store,
            directory,
            workflow,
            hot,
            recent,
            limits: Arc::new(limits),
            running: Arc::default(),
            summarising: Arc::default(),
            tasks: TaskTracker::new(),
            shutdown,
        }
    }

    /// The store, for pool metrics and tests.
    pub fn store(&self) -> &ConversationStore {
        &self.store
    }

    /// Waits for background work (turn tasks, summaries) to end after shutdown.
    pub async fn drained(&self) {
        self.tasks.close();
        self.tasks.wait().await;
    }

    /// The state at `version` of a thread: L1, then Redis, then its checkpoint.
    async fn state(
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

    async fn remember(&self, thread_id: Uuid, state: &ConversationState) {
        self.hot
            .set(
                &format!("{thread_id}:{}", state.version),
                Arc::new(state.clone()),
                self.limits.state_ttl,
            )
            .await;
    }

    async fn writable_thread(
        &self,
        thread_id: Uuid,
    ) -> Result<Arc<crate::domain::ThreadContext>, ConversationError> {
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

    /// Appends a user or system message.
    pub async fn append(
        &self,
        thread_id: Uuid,
        message: NewMessage,
        request_id: Option<String>,
    ) -> Result<Message, ConversationError> {
        let mut v = Violations::default();
        if !matches!(message.role, Role::User | Role::System) {
            v.add("role", "must be ROLE_USER or ROLE_SYSTEM");
        }
        check_text(
            &mut v,
            "content",
            &message.content,
            self.limits.max_message_bytes,
            true,
        );
        check_text(&mut v, "author", &message.author, 128, false);
        check_request_id(&mut v, &request_id);
        v.finish(())?;
        self.writable_thread(thread_id).await?;
        self.store.append(thread_id, message, request_id).await
    }

    fn page_size(&self, size: i32) -> Result<u64, ConversationError> {
        match size {
            0 => Ok(u64::from(self.limits.default_page_size)),
            n if n < 0 || n as u32 > self.limits.max_page_size => Err(ConversationError::invalid(
                "page_size",
                format!("must be in 0..={}", self.limits.max_page_size),
            )),
            n => Ok(n as u64),
        }
    }

    /// A page of a thread's messages.
    pub async fn list_messages(
        &self,
        thread_id: Uuid,
        direction: Direction,
        page_size: i32,
        token: &str,
    ) -> Result<Page<Message>, ConversationError> {
        let size = self.page_size(page_size)?;
        let list = page::fingerprint(&[
            thread_id.as_bytes(),
            if direction == Direction::Forward {
                b"f"
            } else {
                b"b"
            },
        ]);
        let from = page::decode(token, list)?;
        self.directory.thread(thread_id).await?;
        let mut items = self
            .store
            .list_messages(thread_id, direction, from, size + 1)
            .await?;
        let next_page_token = (items.len() as u64 > size).then(|| {
            items.truncate(size as usize);
            page::encode(list, items.last().map_or(0, |m| m.seq))
        });
        Ok(Page {
            items,
            next_page_token,
        })
    }

    /// The thread's current state, last seq and running turn.
    pub async fn get_state(&self, thread_id: Uuid) -> Result<StateView, ConversationError> {
        let head = self.store.head(thread_id).await?;
        if head.is_none() {
            // Never written: it exists only if the session service knows it.
            self.directory.thread(thread_id).await?;
        }
        let head = head.unwrap_or(store::Head {
            last_seq: 0,
            state_version: 0,
            running_turn: None,
        });
        let state = self.state(thread_id, head.state_version).await?;
        Ok(StateView {
            thread_id,
            state: (*state).clone(),
            last_seq: head.last_seq,
            running_turn: head.running_turn,
        })
    }

    /// A page of the thread's retained checkpoints, newest first.
    pub async fn list_checkpoints(
        &self,
        thread_id: Uuid,
        page_size: i32,
        token: &str,
    ) -> Result<Page<Checkpoint>, ConversationError> {
        let size = self.page_size(page_size)?;
        let list = page::fingerprint(&[thread_id.as_bytes(), b"checkpoints"]);
        let before = page::decode(token, list)?;
        self.directory.thread(thread_id).await?;
        let mut items = self
            .store
            .list_checkpoints(thread_id, before, size + 1)
            .await?;
        let next_page_token = (items.len() as u64 > size).then(|| {
            items.truncate(size as usize);
            page::encode(list, items.last().map_or(0, |c| c.version))
        });
        Ok(Page {
            items,
            next_page_token,
        })
    }

    /// Forks a thread from one of its checkpoints into a new breakout thread of its session.
    pub async fn fork(
        &self,
        thread_id: Uuid,
        version: i64,
        title: String,
        request_id: Option<String>,
    ) -> Result<(Uuid, ConversationState), ConversationError> {
        let mut v = Violations::default();
        if version < 0 {
            v.add("version", "must be >= 0 (0: the latest)");
        }
        check_text(&mut v, "title", &title, 200, false);
        check_request_id(&mut v, &request_id);
        v.finish(())?;
        let source = self.directory.thread(thread_id).await?;
        if version > 0
            && self
                .store
                .list_checkpoints(thread_id, Some(version + 1), 1)
                .await?
                .first()
                .is_none_or(|c| c.version != version)
        {
            return Err(ConversationError::not_found(
                "checkpoint",
                format!("{thread_id}@{version}"),
            ));
        }
        let title = if title.trim().is_empty() {
            format!("Fork of {thread_id} at version {version}")
        } else {
            title
        };
        let request = request_id
            .map(|r| format!("fork:{r}"))
            .unwrap_or_else(|| Uuid::now_v7().to_string());
        let target = self
            .directory
            .create_thread(source.session_id, title, request)
            .await?;
        let state = self.store.fork(thread_id, version, target).await?;
        self.remember(target, &state).await;
        Ok((target, state))
    }

    /// Cancels the running turn of a thread (only `turn_id`, when given).
    pub fn cancel(&self, thread_id: Uuid, turn_id: Option<Uuid>) -> bool {
        let running = self
            .running
            .lock()
            .map(|r| r.get(&thread_id).cloned())
            .ok()
            .flatten();
        match running {
            Some(run) if turn_id.is_none_or(|t| t == run.turn_id) => {
                run.cancel.cancel();
                true
            }
            _ => false,
        }
    }

    /// Starts a turn (or replays a completed one) and returns its events. Problems found
    /// before the turn starts are errors; after that, the stream ends with `Completed` or
    /// `Failed`.
    pub async fn run_turn(
        &self,
        request: TurnRequest,
    ) -> Result<mpsc::Receiver<TurnEvent>, ConversationError> {
        let mut v = Violations::default();
        check_text(
            &mut v,
            "content",
            &request.content,
            self.limits.max_message_bytes,
            true,
        );
        check_text(&mut v, "author", &request.author, 128, false);
        check_request_id(&mut v, &request.request_id);
        v.finish(())?;
        let thread_id = request.thread_id;
        if let Some(id) = &request.request_id
            && let Some(done) = self.store.turn_by_request(thread_id, id).await?
        {
            return self.replay(done).await;
        }
        let thread = self.writable_thread(thread_id).await?;
        let mut v = Violations::default();
        let mut advisors = Vec::new();
        for (i, name) in request.advisors.iter().enumerate() {
            match thread.advisors.iter().find(|a| &a.name == name) {
                Some(a) if !advisors.contains(a) => advisors.push(a.clone()),
                Some(_) => v.add(format!("advisors[{i}]"), "is named twice"),
                None => v.add(
                    format!("advisors[{i}]"),
                    format!("no advisor named {name:?} in this boardroom"),
                ),
            }
        }
        v.finish(())?;
        if advisors.is_empty() {
            advisors = thread.advisors.clone();
        }
        if advisors.is_empty() {
            return Err(ConversationError::FailedPrecondition(
                "the thread's boardroom has no advisors".into(),
            ));
        }
        let turn_id = Uuid::now_v7();
        let lease = self.limits.turn_timeout + LEASE_GRACE;
        let Some(head) = self
            .store
            .acquire_lease(thread_id, turn_id, store::lease_until(lease))
            .await?
        else {
            return Err(ConversationError::Aborted(
                "another turn is running on this thread".into(),
            ));
        };
        // The first run of this request may have completed between the check above and the
        // lease: its record is committed with its lease release, so it is visible now.
        if let Some(id) = &request.request_id {
            match self.store.turn_by_request(thread_id, id).await {
                Ok(Some(done)) => {
                    self.release_lease(thread_id, turn_id).await;
                    return self.replay(done).await;
                }
                Ok(None) => {}
                Err(err) => {
                    self.release_lease(thread_id, turn_id).await;
                    return Err(err);
                }
            }
        }
        let prepared = async {
            let state = match self.recent.state(thread_id, head.state_version).await {
                Some(state) => state,
                None => self.state(thread_id, head.state_version).await?,
            };
            let recent = self
                .recent
                .get(
                    &self.store,
                    thread_id,
                    state.summarized_through_seq,
                    head.last_seq,
                )
                .await?;
            Ok::<_, ConversationError>((state, recent))
        }
        .await;
        let (state, recent) = match prepared {
            Ok(p) => p,
            Err(err) => {
                self.release_lease(thread_id, turn_id).await;
                return Err(err);
            }
        };
        let input = TurnInput {
            turn_id,
            thread_id,
            request_id: request.request_id,
            author: request.author,
            content: request.content,
            advisors,
            state,
            recent: Arc::new(recent),
            last_seq: head.last_seq,
        };
        let (tx, rx) = mpsc::channel(EVENT_BUFFER);
        let cancel = self.shutdown.child_token();
        if let Ok(mut running) = self.running.lock() {
            running.insert(
                thread_id,
                Running {
                    turn_id,
                    cancel: cancel.clone(),
                },
            );
        }
        let this = self.clone();
        // Owned: ends when the turn ends, is cancelled, or the service shuts down.
        self.tasks
            .spawn(async move { this.drive(input, tx, cancel).await });
        Ok(rx)
    }

    async fn drive(
        &self,
        input: TurnInput,
        tx: mpsc::Sender<TurnEvent>,
        cancel: CancellationToken,
    ) {
        let (thread_id, turn_id) = (input.thread_id, input.turn_id);
        let unsummarised = input
            .recent
            .iter()
            .map(|m| estimate_tokens(&m.content))
            .sum::<u32>();
        let recent_full = input.recent.len() >= RECENT_LIMIT;
        let (recent, last_seq, after_seq) = (
            input.recent.clone(),
            input.last_seq,
            input.state.summarized_through_seq,
        );
        let _ = tx
            .send(TurnEvent::Started {
                turn_id,
                advisors: input.advisors.iter().map(|a| a.name.clone()).collect(),
                replayed: false,
            })
            .await;
        metrics::gauge!("conversation_turns_running").increment(1.0);
        // The run first: a turn that finished (and committed) is reported as done even if the
        // caller left or a cancel arrived in the same instant.
        let outcome = tokio::select! {
            biased;
            run = tokio::time::timeout(self.limits.turn_timeout, self.workflow.execute(input, &tx)) => match run {
                Ok(Ok(done)) => Ok(done),
                Ok(Err(err)) => Err((failure_reason(&err), err.to_string())),
                Err(_) => Err((FailureReason::Timeout, "the turn passed conversation.turn_timeout_ms".to_owned())),
            },
            _ = cancel.cancelled() => Err((FailureReason::Cancelled, "the turn was cancelled".to_owned())),
            _ = tx.closed() => Err((FailureReason::Cancelled, "the caller went away".to_owned())),
        };
        metrics::gauge!("conversation_turns_running").decrement(1.0);
        if let Ok(mut running) = self.running.lock()
            && running
                .get(&thread_id)
                .is_some_and(|r| r.turn_id == turn_id)
        {
            running.remove(&thread_id);
        }
        match outcome {
            Ok(stored) => {
                metrics::counter!("conversation_turns_total", "outcome" => "completed")
                    .increment(1);
                let state = Arc::new(stored.state);
                let turn_tokens: u32 = stored
                    .messages
                    .iter()
                    .map(|m| estimate_tokens(&m.content))
                    .sum();
                self.recent
                    .after_turn(
                        thread_id,
                        after_seq,
                        &recent,
                        last_seq,
                        &stored.messages,
                        state.clone(),
                    )
                    .await;
                let _ = tx.send(completed(&stored.record, false)).await;
                drop(tx);
                // After the caller has its answer: the next turn (here or on another
                // instance) finds the state warm.
                self.remember(thread_id, &state).await;
                // The history after the summary: what the turn read, and what it added.
                if recent_full || unsummarised + turn_tokens > self.limits.history_budget_tokens {
                    self.summarise_later(thread_id);
                }
            }
            Err((reason, message)) => {
                metrics::counter!("conversation_turns_total", "outcome" => "failed").increment(1);
                self.release_lease(thread_id, turn_id).await;
                let _ = tx.send(TurnEvent::Failed { reason, message }).await;
            }
        }
    }

    /// The recorded outcome of a completed turn, as events.
    async fn replay(
        &self,
        record: TurnRecord,
    ) -> Result<mpsc::Receiver<TurnEvent>, ConversationError> {
        let messages = self
            .store
            .messages_between(record.thread_id, record.first_seq, record.last_seq)
            .await?;
        let mut events = vec![TurnEvent::Started {
            turn_id: record.id,
            advisors: record.outcome.advisors.clone(),
            replayed: true,
        }];
        for m in messages {
            match m.role {
                Role::Advisor => events.push(TurnEvent::AdvisorFinished {
                    usage: record
                        .outcome
                        .advisor_usage
                        .get(&m.author)
                        .copied()
                        .unwrap_or_default(),
                    advisor: m.author,
                    content: m.content,
                }),
                Role::Moderator => events.push(TurnEvent::ModeratorDelta { text: m.content }),
                Role::User | Role::Tool | Role::System => {}
            }
        }
        events.extend(
            record
                .outcome
                .failures
                .iter()
                .cloned()
                .map(TurnEvent::AdvisorFailed),
        );
        events.push(completed(&record, true));
        let (tx, rx) = mpsc::channel(events.len());
        for event in events {
            let _ = tx.try_send(event);
        }
        metrics::counter!("conversation_turns_total", "outcome" => "replayed").increment(1);
        Ok(rx)
    }

    /// Gives back the lease of a turn that did not store anything. When the database cannot
    /// take the write now (restarting), it is retried in the background (250 ms doubling to
    /// 2 s) until it succeeds or the lease has expired anyway, so the caller's retry of the
    /// turn is not refused as "another turn is running" for the lease's whole length.
    async fn release_lease(&self, thread_id: Uuid, turn_id: Uuid) {
        let Err(err) = self.store.release_lease(thread_id, turn_id).await else {
            return;
        };
        tracing::warn!(%thread_id, %turn_id, error = %err, "releasing a turn's lease failed; retrying in the background");
        let this = self.clone();
        let expires = tokio::time::Instant::now() + self.limits.turn_timeout + LEASE_GRACE;
        // Owned: ends with the service's shutdown token, or by the lease's expiry.
        self.tasks.spawn(async move {
            let mut backoff = Duration::from_millis(250);
            while tokio::time::Instant::now() + backoff < expires {
                tokio::select! {
                    _ = this.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                if this.store.release_lease(thread_id, turn_id).await.is_ok() {
                    metrics::counter!("conversation_lease_releases_retried_total").increment(1);
                    return;
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        });
    }

    /// Folds the oldest unsummarised messages into the rolling summary, in the background
    /// (one at a time per thread in this instance; across instances the store's check keeps
    /// only the first).
    fn summarise_later(&self, thread_id: Uuid) {
        let fresh = self
            .summarising
            .lock()
            .map(|mut s| s.insert(thread_id))
            .unwrap_or(false);
        if !fresh {
            return;
        }
        let this = self.clone();
        // Owned: ends with the service's shutdown token.
        self.tasks.spawn(async move {
            tokio::select! {
                _ = this.shutdown.cancelled() => {}
                result = this.summarise(thread_id) => {
                    if let Err(err) = result {
                        metrics::counter!("conversation_summaries_total", "outcome" => "failed").increment(1);
                        tracing::warn!(%thread_id, error = %err, "summarising a thread failed; the next turn retries");
                    }
                }
            }
            if let Ok(mut s) = this.summarising.lock() {
                s.remove(&thread_id);
            }
        });
    }

    async fn summarise(&self, thread_id: Uuid) -> Result<(), ConversationError> {
        let Some(head) = self.store.head(thread_id).await? else {
            return Ok(());
        };
        let state = self.state(thread_id, head.state_version).await?;
        let messages = self
            .store
            .list_messages(
                thread_id,
                Direction::Forward,
                Some(state.summarized_through_seq),
                FOLD_LIMIT,
            )
            .await?;
        // Keep the newest messages that fit half the context budget; fold the rest.
        let mut kept_tokens = 0u32;
        let mut keep = 0;
        for m in messages.iter().rev() {
            kept_tokens += estimate_tokens(&m.content);
            if kept_tokens > self.limits.context_budget_tokens / 2 {
                break;
            }
            keep += 1;
        }
        let fold = &messages[..messages.len() - keep];
        let Some(through) = fold.last().map(|m| m.seq) else {
            return Ok(());
        };
        let (text, _usage) = self
            .workflow
            .gateway
            .complete(ChatCall {
                model: self.limits.summary_model.clone(),
                messages: context::summary_context(&state.summary, fold),
                tools: Vec::new(),
                temperature: 0.0,
                max_tokens: self.limits.summary_max_tokens,
                request_id: format!("summary:{thread_id}:{through}"),
                timeout: self.limits.turn_timeout,
            })
            .await
            .map_err(|e| ConversationError::Unavailable(e.message))?;
        let max_bytes = self.limits.summary_max_tokens as usize * 4;
        let summary = crate::domain::truncated(&text, max_bytes).to_owned();
        if let Some(next) = self
            .store
            .apply_summary(thread_id, state.summarized_through_seq, through, summary)
            .await?
        {
            self.remember(thread_id, &next).await;
            metrics::counter!("conversation_summaries_total", "outcome" => "applied").increment(1);
        }
        Ok(())
    }
}

fn completed(record: &TurnRecord, replayed: bool) -> TurnEvent {
    TurnEvent::Completed {
        turn_id: record.id,
        state_version: record.state_version,
        first_seq: record.first_seq,
        last_seq: record.last_seq,
        usage: record.outcome.usage,
        replayed,
    }
}

fn failure_reason(err: &ConversationError) -> FailureReason {
    match err {
        ConversationError::Aborted(_) => FailureReason::Conflict,
        ConversationError::DeadlineExceeded(_) => FailureReason::Timeout,
        ConversationError::NoAnswer => FailureReason::NoAnswer,
        ConversationError::Invalid(_)
        | ConversationError::NotFound { .. }
        | ConversationError::FailedPrecondition(_)
        | ConversationError::Unavailable(_)
        | ConversationError::Internal(_) => FailureReason::Storage,
    }
}
