//! The turn workflow as a small typed graph: nodes are the variants of [`Node`], edges are
//! what each node returns, and [`Workflow::execute`] walks it, timing every node.
//!
//! ```text
//! Advise ──(tool calls)──▶ Tools ──▶ Advise ...
//!    └──(answers)──▶ Moderate ──▶ Persist ──▶ end
//! ```
//!
//! `Advise` runs every advisor still answering concurrently (bounded), streaming their deltas
//! as events tagged by advisor; an advisor that fails or passes its deadline is reported and
//! left out. `Tools` runs every call of the round as one batch. The last round offers no
//! tools, so every advisor ends with an answer or a failure.

pub mod context;
#[cfg(test)]
mod scripted;
#[cfg(test)]
mod tests;
pub mod tools;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tracing::Instrument;
use uuid::Uuid;

use crate::domain::{
    Advisor, AdvisorFailure, ConversationState, FailureReason, Message, NewMessage, Role,
    TurnEvent, TurnOutcome, Usage,
};
use crate::error::ConversationError;
use crate::error::Rejection;
use crate::ports::{
    ChatCall, ChatMessage, ChatRole, ModelCalls, ModelError, ModelEvent, ToolInvocation,
};
use crate::store::{ConversationStore, StoredTurn, TurnWrite};
use crate::turnlog::TurnEvents;
use tools::{TOOLS, Toolbox};

/// The workflow's bounds and models.
#[derive(Debug, Clone)]
pub struct Settings {
    pub moderator_model: String,
    pub temperature: f32,
    pub max_answer_tokens: u32,
    pub max_parallel_advisors: usize,
    pub advisor_timeout: Duration,
    pub max_tool_rounds: u32,
    pub context_budget_tokens: u32,
}

/// What the workflow needs to run one turn.
#[derive(Debug, Clone)]
pub struct TurnInput {
    pub turn_id: Uuid,
    pub thread_id: Uuid,
    pub request_id: Option<String>,
    pub author: String,
    pub content: String,
    pub advisors: Vec<Advisor>,
    pub state: Arc<ConversationState>,
    /// The most recent messages after the summary, oldest first.
    pub recent: Arc<Vec<Message>>,
    /// The thread's last seq when the turn started (what a search may see).
    pub last_seq: i64,
}

/// The nodes of the turn graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Node {
    Advise,
    Tools,
    Moderate,
    Persist,
}

impl Node {
    fn name(self) -> &'static str {
        match self {
            Node::Advise => "advise",
            Node::Tools => "tools",
            Node::Moderate => "moderate",
            Node::Persist => "persist",
        }
    }
}

/// Where an edge leads.
enum Next {
    Go(Node),
    End(Box<StoredTurn>),
}

/// One advisor's progress through the turn.
struct AdvisorRun {
    advisor: Advisor,
    conversation: Vec<ChatMessage>,
    answer: String,
    usage: Usage,
    pending: Vec<ToolInvocation>,
    /// Tool results, as stored messages.
    tool_log: Vec<NewMessage>,
    failure: Option<AdvisorFailure>,
    done: bool,
    deadline: tokio::time::Instant,
}

/// A turn whose advisors and moderator are done: what [`Workflow::store`] stores.
pub struct Answered {
    run: Run,
    started: Instant,
}

/// A turn in progress.
struct Run {
    input: TurnInput,
    advisors: Vec<AdvisorRun>,
    round: u32,
    moderator: Option<(String, Usage)>,
    /// Time spent waiting for models, to tell the engine's own time apart.
    model_time: Duration,
}

/// Everything the workflow calls.
#[derive(Clone)]
pub struct Workflow {
    pub store: ConversationStore,
    pub models: Arc<dyn ModelCalls>,
    pub tools: Toolbox,
    pub settings: Arc<Settings>,
}

impl std::fmt::Debug for Workflow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workflow")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

type Events = TurnEvents;

/// Logs an event and sends it to the caller; a caller that went away is noticed by the turn's
/// cancellation, not here.
async fn emit(events: &Events, event: TurnEvent) {
    events.emit(event).await;
}

impl Workflow {
    /// Runs the turn to its end and returns what was stored. Events go to `events` as they
    /// happen; the caller cancels by dropping this future.
    pub async fn execute(
        &self,
        input: TurnInput,
        events: &Events,
    ) -> Result<StoredTurn, ConversationError> {
        let answered = self.answer(input, events).await?;
        self.store(answered).await
    }

    /// Every node but the last: the advisors' rounds and the moderator. Dropping this future
    /// cancels the turn (its model calls with it); nothing is stored yet.
    pub async fn answer(
        &self,
        input: TurnInput,
        events: &Events,
    ) -> Result<Answered, ConversationError> {
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + self.settings.advisor_timeout;
        let advisors = input
            .advisors
            .iter()
            .map(|advisor| AdvisorRun {
                conversation: context::advisor_context(
                    advisor,
                    &input.state,
                    &input.recent,
                    &input.content,
                    self.settings.context_budget_tokens,
                ),
                advisor: advisor.clone(),
                answer: String::new(),
                usage: Usage::default(),
                pending: Vec::new(),
                tool_log: Vec::new(),
                failure: None,
                done: false,
                deadline,
            })
            .collect();
        let mut run = Run {
            input,
            advisors,
            round: 0,
            moderator: None,
            model_time: Duration::ZERO,
        };
        let mut node = Node::Advise;
        loop {
            let entered = Instant::now();
            let next = match node {
                Node::Advise => self.advise(&mut run, events).await,
                Node::Tools => self.run_tools(&mut run, events).await,
                Node::Moderate => self.moderate(&mut run, events).await,
                Node::Persist => return Ok(Answered { run, started }),
            };
            metrics::histogram!("conversation_node_duration_seconds", "node" => node.name())
                .record(entered.elapsed().as_secs_f64());
            match next? {
                Next::Go(to) => node = to,
                Next::End(done) => {
                    return Err(ConversationError::Internal(format!(
                        "the turn graph ended before storing (turn {})",
                        done.record.id
                    )));
                }
            }
        }
    }

    /// The last node: the turn's messages, checkpoint and record in one transaction (fenced on
    /// the turn's lease). Not to be cancelled half-way: a turn that got here is stored or fails
    /// as a whole, and its caller learns which.
    pub async fn store(&self, answered: Answered) -> Result<StoredTurn, ConversationError> {
        let Answered { run, started } = answered;
        let entered = Instant::now();
        let next = self.persist(&run).await;
        metrics::histogram!("conversation_node_duration_seconds", "node" => Node::Persist.name())
            .record(entered.elapsed().as_secs_f64());
        match next? {
            Next::End(done) => {
                let engine = started.elapsed().saturating_sub(run.model_time);
                metrics::histogram!("conversation_turn_overhead_seconds")
                    .record(engine.as_secs_f64());
                Ok(*done)
            }
            Next::Go(_) => Err(ConversationError::Internal(
                "storing a turn led to another node".into(),
            )),
        }
    }

    /// One round of every advisor still answering, concurrently.
    async fn advise(&self, run: &mut Run, events: &Events) -> Result<Next, ConversationError> {
        let round = run.round;
        let offer_tools = round < self.settings.max_tool_rounds;
        let request_id = run.input.turn_id.to_string();
        let waited = Instant::now();
        futures::stream::iter(run.advisors.iter_mut().filter(|a| !a.done))
            .for_each_concurrent(self.settings.max_parallel_advisors, |advisor| {
                let request_id = request_id.clone();
                let span = tracing::info_span!(
                    "advisor",
                    otel.name = %format_args!("advisor {}", advisor.advisor.name),
                    advisor = %advisor.advisor.name,
                    model = %advisor.advisor.model,
                    round,
                );
                async move {
                    if round == 0 {
                        emit(
                            events,
                            TurnEvent::AdvisorStarted {
                                advisor: advisor.advisor.name.clone(),
                                model: advisor.advisor.model.clone(),
                            },
                        )
                        .await;
                    }
                    let call = ChatCall {
                        model: advisor.advisor.model.clone(),
                        messages: advisor.conversation.clone(),
                        tools: if offer_tools { TOOLS.to_vec() } else { Vec::new() },
                        temperature: self.settings.temperature,
                        max_tokens: self.settings.max_answer_tokens,
                        request_id,
                        // A little past our own deadline, so that this side's timer decides
                        // (and reports a timeout) rather than the gateway's.
                        timeout: advisor
                            .deadline
                            .saturating_duration_since(tokio::time::Instant::now())
                            + DEADLINE_GRACE,
                    };
                    let deadline = advisor.deadline;
                    let outcome =
                        tokio::time::timeout_at(deadline, self.stream_answer(advisor, call, events))
                            .await
                            .unwrap_or_else(|_| {
                                Err(ModelError {
                                    reason: FailureReason::Timeout,
                                    message: "the advisor's deadline passed".into(),
                                })
                            });
                    if let Err(err) = outcome {
                        let failure = AdvisorFailure {
                            advisor: advisor.advisor.name.clone(),
                            reason: err.reason,
                            message: err.message,
                        };
                        metrics::counter!("conversation_advisor_failures_total", "reason" => format!("{:?}", failure.reason))
                            .increment(1);
                        emit(events, TurnEvent::AdvisorFailed(failure.clone())).await;
                        advisor.failure = Some(failure);
                        advisor.done = true;
                        return;
                    }
                    if advisor.pending.is_empty() {
                        advisor.done = true;
                        emit(
                            events,
                            TurnEvent::AdvisorFinished {
                                advisor: advisor.advisor.name.clone(),
                                usage: advisor.usage,
                                content: advisor.answer.clone(),
                            },
                        )
                        .await;
                    }
                }
                .instrument(span)
            })
            .await;
        run.model_time += waited.elapsed();
        run.round += 1;
        if run.advisors.iter().any(|a| !a.pending.is_empty()) {
            Ok(Next::Go(Node::Tools))
        } else {
            Ok(Next::Go(Node::Moderate))
        }
    }

    /// Streams one model call of an advisor into its run and the event stream.
    async fn stream_answer(
        &self,
        advisor: &mut AdvisorRun,
        call: ChatCall,
        events: &Events,
    ) -> Result<(), ModelError> {
        let mut stream = std::pin::pin!(self.models.stream(call).await?);
        let mut said = String::new();
        while let Some(event) = stream.next().await {
            match event? {
                ModelEvent::Delta(text) => {
                    said.push_str(&text);
                    emit(
                        events,
                        TurnEvent::AdvisorDelta {
                            advisor: advisor.advisor.name.clone(),
                            text,
                        },
                    )
                    .await;
                }
                ModelEvent::ToolCall(call) => {
                    emit(
                        events,
                        TurnEvent::ToolCalled {
                            advisor: advisor.advisor.name.clone(),
                            call_id: call.id.clone(),
                            name: call.name.clone(),
                            arguments_json: call.arguments_json.clone(),
                        },
                    )
                    .await;
                    advisor.pending.push(call);
                }
                ModelEvent::Done(usage) => advisor.usage.add(usage),
            }
        }
        if !advisor.pending.is_empty() {
            advisor.conversation.push(ChatMessage {
                role: ChatRole::Assistant,
                content: said.clone(),
                tool_calls: advisor.pending.clone(),
                tool_call_id: String::new(),
            });
        }
        advisor.answer.push_str(&said);
        Ok(())
    }

    /// Every tool call of the round, as one concurrent batch.
    async fn run_tools(&self, run: &mut Run, events: &Events) -> Result<Next, ConversationError> {
        let thread_id = run.input.thread_id;
        let through = run.input.last_seq;
        let calls: Vec<(usize, ToolInvocation)> = run
            .advisors
            .iter_mut()
            .enumerate()
            .flat_map(|(i, a)| {
                std::mem::take(&mut a.pending)
                    .into_iter()
                    .map(move |c| (i, c))
            })
            .collect();
        let outputs = futures::future::join_all(
            calls
                .iter()
                .map(|(_, call)| self.tools.run(thread_id, through, call)),
        )
        .await;
        for ((i, call), output) in calls.into_iter().zip(outputs) {
            let advisor = &mut run.advisors[i];
            emit(
                events,
                TurnEvent::ToolResult {
                    advisor: advisor.advisor.name.clone(),
                    call_id: call.id.clone(),
                    name: call.name.clone(),
                    content: output.content.clone(),
                    is_error: output.is_error,
                },
            )
            .await;
            advisor.conversation.push(ChatMessage {
                role: ChatRole::Tool,
                content: output.content.clone(),
                tool_calls: Vec::new(),
                tool_call_id: call.id.clone(),
            });
            advisor.tool_log.push(NewMessage {
                role: Role::Tool,
                author: advisor.advisor.name.clone(),
                content: format!(
                    "{}({}) → {}",
                    call.name, call.arguments_json, output.content
                ),
            });
        }
        Ok(Next::Go(Node::Advise))
    }

    /// The moderator's synthesis of the answers.
    async fn moderate(&self, run: &mut Run, events: &Events) -> Result<Next, ConversationError> {
        let answers: Vec<(String, String)> = run
            .advisors
            .iter()
            .filter(|a| a.failure.is_none())
            .map(|a| (a.advisor.name.clone(), a.answer.clone()))
            .collect();
        if answers.is_empty() {
            // Refused everywhere (credentials, permission): running it again will not help.
            if run.advisors.iter().all(|a| {
                a.failure
                    .as_ref()
                    .is_some_and(|f| f.reason == FailureReason::Rejected)
            }) {
                return Err(ConversationError::Rejected(
                    Rejection::PermissionDenied,
                    "the gateway refused every advisor's call".into(),
                ));
            }
            return Err(ConversationError::NoAnswer);
        }
        let call = ChatCall {
            model: self.settings.moderator_model.clone(),
            messages: context::moderator_context(&run.input.content, &answers),
            tools: Vec::new(),
            temperature: self.settings.temperature,
            max_tokens: self.settings.max_answer_tokens,
            request_id: run.input.turn_id.to_string(),
            timeout: self.settings.advisor_timeout + DEADLINE_GRACE,
        };
        let waited = Instant::now();
        let span = tracing::info_span!("moderator", model = %call.model);
        let synthesis = tokio::time::timeout(
            self.settings.advisor_timeout,
            async {
                let mut stream = std::pin::pin!(self.models.stream(call).await?);
                let (mut text, mut usage) = (String::new(), Usage::default());
                while let Some(event) = stream.next().await {
                    match event? {
                        ModelEvent::Delta(delta) => {
                            text.push_str(&delta);
                            emit(events, TurnEvent::ModeratorDelta { text: delta }).await;
                        }
                        ModelEvent::Done(u) => usage.add(u),
                        ModelEvent::ToolCall(_) => {}
                    }
                }
                Ok::<_, ModelError>((text, usage))
            }
            .instrument(span),
        )
        .await
        .unwrap_or_else(|_| {
            Err(ModelError {
                reason: FailureReason::Timeout,
                message: "the moderator's deadline passed".into(),
            })
        });
        run.model_time += waited.elapsed();
        match synthesis {
            Ok(done) => run.moderator = Some(done),
            Err(err) => {
                emit(
                    events,
                    TurnEvent::AdvisorFailed(AdvisorFailure {
                        advisor: MODERATOR.into(),
                        reason: err.reason,
                        message: err.message,
                    }),
                )
                .await;
            }
        }
        Ok(Next::Go(Node::Persist))
    }

    /// The turn's messages, checkpoint and record, in one transaction.
    async fn persist(&self, run: &Run) -> Result<Next, ConversationError> {
        let input = &run.input;
        let mut messages = vec![NewMessage {
            role: Role::User,
            author: input.author.clone(),
            content: input.content.clone(),
        }];
        let mut outcome = TurnOutcome {
            advisors: run
                .advisors
                .iter()
                .map(|a| a.advisor.name.clone())
                .collect(),
            ..TurnOutcome::default()
        };
        let mut memory = Vec::new();
        for a in &run.advisors {
            messages.extend(a.tool_log.iter().cloned());
            outcome.usage.add(a.usage);
            outcome
                .advisor_usage
                .insert(a.advisor.name.clone(), a.usage);
            match &a.failure {
                Some(failure) => outcome.failures.push(failure.clone()),
                None => {
                    messages.push(NewMessage {
                        role: Role::Advisor,
                        author: a.advisor.name.clone(),
                        content: a.answer.clone(),
                    });
                    memory.push((a.advisor.name.clone(), a.answer.clone()));
                }
            }
        }
        if let Some((text, usage)) = &run.moderator {
            outcome.usage.add(*usage);
            outcome.advisor_usage.insert(MODERATOR.into(), *usage);
            messages.push(NewMessage {
                role: Role::Moderator,
                author: MODERATOR.into(),
                content: text.clone(),
            });
        }
        let stored = self
            .store
            .persist_turn(TurnWrite {
                thread_id: input.thread_id,
                turn_id: input.turn_id,
                request_id: input.request_id.clone(),
                base: input.state.clone(),
                messages,
                memory,
                outcome,
            })
            .await?;
        Ok(Next::End(Box::new(stored)))
    }
}

/// How much later than the workflow's own deadline the gateway's is.
const DEADLINE_GRACE: Duration = Duration::from_millis(250);

/// The author name of the moderator's messages and failures.
pub const MODERATOR: &str = "moderator";
