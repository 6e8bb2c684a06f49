//! The turn workflow as a small typed graph: nodes are the variants of [`Node`], edges are
//! what each node returns, and [`Workflow::execute`] walks it, timing every node.
//!
//! ```text
//! Advise ──(tool calls)──▶ Tools ──▶ Advise ...
//!    └──(answers)──▶ [REVIEW: Review | DEBATE: Revise ──▶ Revise ...] ──▶ Moderate ──▶ Persist
//! ```
//!
//! `Advise` runs every advisor still answering concurrently (bounded), streaming their deltas
//! as events tagged by advisor; an advisor that fails or passes its deadline is reported and
//! left out. `Tools` runs every call of the round as one batch. The last tool round offers no
//! tools, so every advisor ends with an answer or a failure. Those are round 1. REVIEW's
//! round 2 has every advisor that answered rank the others' answers (anonymised); DEBATE's
//! rounds 2.. have every advisor still in revise its answer after reading the others'. Each
//! round runs its advisors in parallel, with a deadline of its own; the moderator's is last.

pub mod context;
pub mod deliberation;
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
    Advisor, AdvisorFailure, AdvisorRank, ConversationState, Deliberation, FailureReason, Message,
    Mode, NewMessage, Review, Role, RoundKind, RoundRecord, TurnEvent, TurnOutcome, Usage,
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
    /// The share of an advisor's context the boardroom memory's facts may take.
    pub memory_budget_tokens: u32,
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
    /// How the advisors deliberate.
    pub deliberation: Deliberation,
    /// Facts recalled from the boardroom's memory, most similar to the message first.
    pub recalled: Vec<String>,
}

/// The nodes of the turn graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Node {
    Advise,
    Tools,
    Review,
    Revise,
    Moderate,
    Persist,
}

impl Node {
    fn name(self) -> &'static str {
        match self {
            Node::Advise => "advise",
            Node::Tools => "tools",
            Node::Review => "review",
            Node::Revise => "revise",
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
    /// Its latest answer.
    answer: String,
    usage: Usage,
    pending: Vec<ToolInvocation>,
    /// Tool results, as stored messages.
    tool_log: Vec<NewMessage>,
    /// Round 1 failed: it has no answer.
    failure: Option<AdvisorFailure>,
    /// Failures of later rounds (it keeps its latest answer).
    later_failures: Vec<AdvisorFailure>,
    /// Sits out the later rounds (a DEBATE round failed).
    out: bool,
    done: bool,
    deadline: tokio::time::Instant,
}

impl AdvisorRun {
    fn answered(&self) -> bool {
        self.failure.is_none()
    }
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
    /// Tool rounds of round 1 so far.
    tool_round: u32,
    /// The round running, from 1.
    round: u32,
    /// Usage of every call before the running round.
    usage_before: Usage,
    rounds: Vec<RoundRecord>,
    ranking: Vec<AdvisorRank>,
    moderator: Option<(String, Usage)>,
    /// Time spent waiting for models, to tell the engine's own time apart.
    model_time: Duration,
    /// Facts of the boardroom's memory in the advisors' contexts.
    memories_recalled: u32,
}

impl Run {
    fn usage(&self) -> Usage {
        let mut total = Usage::default();
        for a in &self.advisors {
            total.add(a.usage);
        }
        if let Some((_, u)) = &self.moderator {
            total.add(*u);
        }
        total
    }

    /// Closes the running round: its record (what it cost since the last), then the next.
    fn close_round(
        &mut self,
        kind: RoundKind,
        answers: Vec<(String, String)>,
        reviews: Vec<Review>,
    ) {
        let total = self.usage();
        self.rounds.push(RoundRecord {
            round: self.round,
            kind,
            usage: total.minus(self.usage_before),
            answers,
            reviews,
        });
        self.usage_before = total;
        self.round += 1;
    }

    /// The answers given in the round just run (by the advisors still in), for a DEBATE
    /// round's record.
    fn debate_answers(&self) -> Vec<(String, String)> {
        if self.input.deliberation.mode != Mode::Debate {
            return Vec::new();
        }
        self.advisors
            .iter()
            .filter(|a| a.answered() && !a.out)
            .map(|a| (a.advisor.name.clone(), a.answer.clone()))
            .collect()
    }

    /// Whether the rounds of review or revision have anyone to read: two answers at least.
    fn deliberates(&self) -> bool {
        self.advisors.iter().filter(|a| a.answered()).count() >= 2
    }
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

/// The model failure of a call that passed its deadline.
fn timed_out(what: &str) -> ModelError {
    ModelError {
        reason: FailureReason::Timeout,
        message: format!("the {what}'s deadline passed"),
    }
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
        let memory =
            crate::memory::recall_block(&input.recalled, self.settings.memory_budget_tokens);
        let advisors = input
            .advisors
            .iter()
            .map(|advisor| AdvisorRun {
                conversation: context::advisor_context(
                    advisor,
                    &input.state,
                    memory.as_ref().map(|(block, _)| block.as_str()),
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
                later_failures: Vec::new(),
                out: false,
                done: false,
                deadline,
            })
            .collect();
        let mut run = Run {
            input,
            advisors,
            tool_round: 0,
            round: 1,
            usage_before: Usage::default(),
            rounds: Vec::new(),
            ranking: Vec::new(),
            moderator: None,
            model_time: Duration::ZERO,
            memories_recalled: memory.map_or(0, |(_, count)| count),
        };
        if run.input.deliberation.mode != Mode::Panel {
            self.round_started(&run, RoundKind::Answer, events).await;
        }
        let mut node = Node::Advise;
        loop {
            let entered = Instant::now();
            let next = match node {
                Node::Advise => self.advise(&mut run, events).await,
                Node::Tools => self.run_tools(&mut run, events).await,
                Node::Review => self.review(&mut run, events).await,
                Node::Revise => self.revise(&mut run, events).await,
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
                let rounds = run.input.deliberation.rounds().max(1);
                metrics::histogram!("conversation_round_overhead_seconds", "mode" => mode_name(run.input.deliberation.mode))
                    .record(engine.as_secs_f64() / f64::from(rounds));
                Ok(*done)
            }
            Next::Go(_) => Err(ConversationError::Internal(
                "storing a turn led to another node".into(),
            )),
        }
    }

    /// Announces the running round (REVIEW and DEBATE) with those taking part.
    async fn round_started(&self, run: &Run, kind: RoundKind, events: &Events) {
        let advisors = match kind {
            RoundKind::Answer => run
                .advisors
                .iter()
                .map(|a| a.advisor.name.clone())
                .collect(),
            RoundKind::Review => run
                .advisors
                .iter()
                .filter(|a| a.answered())
                .map(|a| a.advisor.name.clone())
                .collect(),
            RoundKind::Revision => run
                .advisors
                .iter()
                .filter(|a| a.answered() && !a.out)
                .map(|a| a.advisor.name.clone())
                .collect(),
            RoundKind::Synthesis => vec![MODERATOR.to_owned()],
        };
        emit(
            events,
            TurnEvent::RoundStarted {
                round: run.round,
                kind,
                advisors,
            },
        )
        .await;
    }

    /// Where round 1 leads once every advisor has answered or failed.
    async fn after_answers(&self, run: &mut Run, events: &Events) -> Node {
        let answers = run.debate_answers();
        run.close_round(RoundKind::Answer, answers, Vec::new());
        let next = match run.input.deliberation.mode {
            Mode::Review if run.deliberates() => (Node::Review, RoundKind::Review),
            Mode::Debate if run.deliberates() && run.input.deliberation.debate_rounds > 0 => {
                (Node::Revise, RoundKind::Revision)
            }
            Mode::Panel | Mode::Review | Mode::Debate => {
                return self.to_moderator(run, events).await;
            }
        };
        self.round_started(run, next.1, events).await;
        next.0
    }

    /// The moderator's round comes next: the planned last (with fewer than two answers the
    /// rounds of review or revision are left out, and the moderator's number stays).
    async fn to_moderator(&self, run: &mut Run, events: &Events) -> Node {
        run.round = run.input.deliberation.rounds();
        if run.input.deliberation.mode != Mode::Panel {
            self.round_started(run, RoundKind::Synthesis, events).await;
        }
        Node::Moderate
    }

    /// One tool round of every advisor still answering round 1, concurrently.
    async fn advise(&self, run: &mut Run, events: &Events) -> Result<Next, ConversationError> {
        let tool_round = run.tool_round;
        let round = run.round;
        let offer_tools = tool_round < self.settings.max_tool_rounds;
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
                    tool_round,
                );
                async move {
                    if tool_round == 0 {
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
                        tools: if offer_tools {
                            TOOLS.to_vec()
                        } else {
                            Vec::new()
                        },
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
                    let outcome = tokio::time::timeout_at(
                        deadline,
                        self.stream_answer(advisor, call, events),
                    )
                    .await
                    .unwrap_or_else(|_| Err(timed_out("advisor")));
                    if let Err(err) = outcome {
                        let failure = self
                            .advisor_failed(&advisor.advisor.name, err, round, events)
                            .await;
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
                                round,
                            },
                        )
                        .await;
                    }
                }
                .instrument(span)
            })
            .await;
        run.model_time += waited.elapsed();
        run.tool_round += 1;
        if run.advisors.iter().any(|a| !a.pending.is_empty()) {
            Ok(Next::Go(Node::Tools))
        } else {
            Ok(Next::Go(self.after_answers(run, events).await))
        }
    }

    /// Reports an advisor's failure in `round` (counted by reason) and returns it.
    async fn advisor_failed(
        &self,
        advisor: &str,
        err: ModelError,
        round: u32,
        events: &Events,
    ) -> AdvisorFailure {
        let failure = AdvisorFailure {
            advisor: advisor.to_owned(),
            reason: err.reason,
            message: err.message,
            round,
        };
        metrics::counter!("conversation_advisor_failures_total", "reason" => format!("{:?}", failure.reason))
            .increment(1);
        emit(events, TurnEvent::AdvisorFailed(failure.clone())).await;
        failure
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
                            round: 1,
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

    /// A text call of a later round (review, revision, synthesis): its text and usage, each
    /// delta passed to `on_delta` (which may emit it). Tool calls are not offered, and ignored.
    async fn stream_text<F, Fut>(
        &self,
        call: ChatCall,
        mut on_delta: F,
    ) -> Result<(String, Usage), ModelError>
    where
        F: FnMut(String) -> Fut,
        Fut: Future<Output = ()>,
    {
        let mut stream = std::pin::pin!(self.models.stream(call).await?);
        let (mut text, mut usage) = (String::new(), Usage::default());
        while let Some(event) = stream.next().await {
            match event? {
                ModelEvent::Delta(delta) => {
                    text.push_str(&delta);
                    on_delta(delta).await;
                }
                ModelEvent::Done(u) => usage.add(u),
                ModelEvent::ToolCall(_) => {}
            }
        }
        Ok((text, usage))
    }

    /// A call of a later round (review, revision, synthesis) to `model`: no tools.
    fn round_call(&self, model: &str, messages: Vec<ChatMessage>, turn_id: Uuid) -> ChatCall {
        ChatCall {
            model: model.to_owned(),
            messages,
            tools: Vec::new(),
            temperature: self.settings.temperature,
            max_tokens: self.settings.max_answer_tokens,
            request_id: turn_id.to_string(),
            timeout: self.settings.advisor_timeout + DEADLINE_GRACE,
        }
    }

    /// REVIEW's round: every advisor that answered ranks the others' answers, shown under
    /// labels in an order drawn for the turn; then the aggregate.
    async fn review(&self, run: &mut Run, events: &Events) -> Result<Next, ConversationError> {
        let round = run.round;
        let answered: Vec<usize> = (0..run.advisors.len())
            .filter(|&i| run.advisors[i].answered())
            .collect();
        let order: Vec<usize> = deliberation::shuffled(run.input.turn_id, answered.len())
            .into_iter()
            .map(|k| answered[k])
            .collect();
        let budget = self.settings.context_budget_tokens;
        let (question, turn_id) = (run.input.content.as_str(), run.input.turn_id);
        let deadline = tokio::time::Instant::now() + self.settings.advisor_timeout;
        let waited = Instant::now();
        let advisors = &run.advisors;
        // Each reviewer, its review or failure streamed as it comes: (index, usage, outcome).
        let outcomes: Vec<(usize, Usage, Result<Review, AdvisorFailure>)> =
            futures::stream::iter(answered.iter().copied())
                .map(|me| {
                    let shown: Vec<usize> = order.iter().copied().filter(|&i| i != me).collect();
                    let labelled: Vec<(String, &str)> = shown
                        .iter()
                        .enumerate()
                        .map(|(k, &i)| (deliberation::label(k), advisors[i].answer.as_str()))
                        .collect();
                    let labels: Vec<String> = labelled.iter().map(|(l, _)| l.clone()).collect();
                    let reviewer = &advisors[me].advisor;
                    let call = self.round_call(
                        &reviewer.model,
                        deliberation::review_context(reviewer, question, &labelled, budget),
                        turn_id,
                    );
                    let span = tracing::info_span!("review", advisor = %reviewer.name, round);
                    async move {
                        let reply =
                            tokio::time::timeout_at(deadline, self.stream_text(call, |_| async {}))
                                .await
                                .unwrap_or_else(|_| Err(timed_out("review")));
                        let (review, usage) = match reply {
                            Ok((text, usage)) => (
                                deliberation::parse_ranking(&text, &labels)
                                    .map(|(ranking, reason)| Review {
                                        advisor: reviewer.name.clone(),
                                        ranking: ranking
                                            .into_iter()
                                            .map(|k| advisors[shown[k]].advisor.name.clone())
                                            .collect(),
                                        reason,
                                        shown: shown
                                            .iter()
                                            .map(|&i| advisors[i].advisor.name.clone())
                                            .collect(),
                                    })
                                    .map_err(|why| {
                                        tracing::debug!(%why, reply = %text, "a malformed ranking");
                                        ModelError::new(
                                            FailureReason::Malformed,
                                            format!("the ranking could not be used: {why}"),
                                        )
                                    }),
                                usage,
                            ),
                            Err(err) => (Err(err), Usage::default()),
                        };
                        let outcome = match review {
                            Ok(review) => {
                                emit(
                                    events,
                                    TurnEvent::ReviewRanked {
                                        round,
                                        review: review.clone(),
                                    },
                                )
                                .await;
                                Ok(review)
                            }
                            Err(err) => Err(self
                                .advisor_failed(&reviewer.name, err, round, events)
                                .await),
                        };
                        (me, usage, outcome)
                    }
                    .instrument(span)
                })
                .buffer_unordered(self.settings.max_parallel_advisors)
                .collect()
                .await;
        run.model_time += waited.elapsed();
        let mut reviews = Vec::new();
        for (me, usage, outcome) in outcomes {
            run.advisors[me].usage.add(usage);
            match outcome {
                Ok(review) => reviews.push(review),
                Err(failure) => run.advisors[me].later_failures.push(failure),
            }
        }
        // In the advisors' order, whatever order the reviews arrived in.
        reviews.sort_by_key(|r| {
            run.advisors
                .iter()
                .position(|a| a.advisor.name == r.advisor)
        });
        run.ranking = deliberation::aggregate(&reviews);
        emit(
            events,
            TurnEvent::RankingAggregated {
                round,
                ranks: run.ranking.clone(),
            },
        )
        .await;
        run.close_round(RoundKind::Review, Vec::new(), reviews);
        Ok(Next::Go(self.to_moderator(run, events).await))
    }

    /// A DEBATE round: every advisor still in reads the others' latest answers and revises
    /// its own, streamed; one that fails sits out the later rounds and keeps its answer.
    async fn revise(&self, run: &mut Run, events: &Events) -> Result<Next, ConversationError> {
        let round = run.round;
        let latest: Vec<(String, String)> = run
            .advisors
            .iter()
            .map(|a| (a.advisor.name.clone(), a.answer.clone()))
            .collect();
        let answered: Vec<bool> = run.advisors.iter().map(AdvisorRun::answered).collect();
        let budget = self.settings.context_budget_tokens;
        let (question, turn_id) = (run.input.content.clone(), run.input.turn_id);
        let deadline = tokio::time::Instant::now() + self.settings.advisor_timeout;
        let waited = Instant::now();
        let (latest, answered, question) = (&latest, &answered, &question);
        futures::stream::iter(
            run.advisors
                .iter_mut()
                .enumerate()
                .filter(|(_, a)| a.answered() && !a.out),
        )
        .for_each_concurrent(self.settings.max_parallel_advisors, |(me, advisor)| {
            let others: Vec<(&str, &str)> = latest
                .iter()
                .enumerate()
                .filter(|&(i, _)| i != me && answered[i])
                .map(|(_, (name, answer))| (name.as_str(), answer.as_str()))
                .collect();
            let call = self.round_call(
                &advisor.advisor.model,
                deliberation::revision_context(
                    &advisor.advisor,
                    question,
                    &latest[me].1,
                    &others,
                    budget,
                ),
                turn_id,
            );
            let span = tracing::info_span!("revision", advisor = %advisor.advisor.name, round);
            async move {
                let name = advisor.advisor.name.clone();
                let reply = tokio::time::timeout_at(
                    deadline,
                    self.stream_text(call, |text| {
                        let advisor = name.clone();
                        async move {
                            emit(
                                events,
                                TurnEvent::AdvisorDelta {
                                    advisor,
                                    text,
                                    round,
                                },
                            )
                            .await;
                        }
                    }),
                )
                .await
                .unwrap_or_else(|_| Err(timed_out("advisor")));
                match reply {
                    Ok((text, usage)) => {
                        advisor.usage.add(usage);
                        advisor.answer = text;
                        emit(
                            events,
                            TurnEvent::AdvisorFinished {
                                advisor: name,
                                usage,
                                content: advisor.answer.clone(),
                                round,
                            },
                        )
                        .await;
                    }
                    Err(err) => {
                        let failure = self.advisor_failed(&name, err, round, events).await;
                        advisor.later_failures.push(failure);
                        advisor.out = true;
                    }
                }
            }
            .instrument(span)
        })
        .await;
        run.model_time += waited.elapsed();
        let answers = run.debate_answers();
        run.close_round(RoundKind::Revision, answers, Vec::new());
        let last = 1 + run.input.deliberation.debate_rounds;
        if run.round <= last && run.advisors.iter().any(|a| a.answered() && !a.out) {
            self.round_started(run, RoundKind::Revision, events).await;
            Ok(Next::Go(Node::Revise))
        } else {
            Ok(Next::Go(self.to_moderator(run, events).await))
        }
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

    /// The moderator's synthesis of the latest answers (with REVIEW's aggregate ranking).
    async fn moderate(&self, run: &mut Run, events: &Events) -> Result<Next, ConversationError> {
        let round = run.round;
        let answers: Vec<(String, String)> = run
            .advisors
            .iter()
            .filter(|a| a.answered())
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
        let note = match run.input.deliberation.mode {
            Mode::Review if !run.ranking.is_empty() => {
                Some(deliberation::ranking_note(&run.ranking))
            }
            Mode::Debate if run.rounds.len() > 1 => Some(format!(
                "These are the advisors' answers after {} round(s) of debate, in which each read \
                 the others' answers and revised its own.",
                run.rounds.len() - 1
            )),
            Mode::Panel | Mode::Review | Mode::Debate => None,
        };
        let call = self.round_call(
            &self.settings.moderator_model,
            context::moderator_context(&run.input.content, &answers, note.as_deref()),
            run.input.turn_id,
        );
        let waited = Instant::now();
        let span = tracing::info_span!("moderator", model = %call.model);
        let synthesis = tokio::time::timeout(
            self.settings.advisor_timeout,
            self.stream_text(call, |text| async move {
                emit(events, TurnEvent::ModeratorDelta { text, round }).await;
            })
            .instrument(span),
        )
        .await
        .unwrap_or_else(|_| Err(timed_out("moderator")));
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
                        round,
                    }),
                )
                .await;
            }
        }
        run.close_round(RoundKind::Synthesis, Vec::new(), Vec::new());
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
            deliberation: input.deliberation,
            rounds: run.rounds.clone(),
            ranking: run.ranking.clone(),
            memories_recalled: run.memories_recalled,
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
            outcome.failures.extend(a.later_failures.iter().cloned());
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
                base_seq: input.last_seq,
                messages,
                memory,
                outcome,
            })
            .await?;
        Ok(Next::End(Box::new(stored)))
    }
}

/// The metric label of a mode.
fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Panel => "panel",
        Mode::Review => "review",
        Mode::Debate => "debate",
    }
}

/// How much later than the workflow's own deadline the gateway's is.
const DEADLINE_GRACE: Duration = Duration::from_millis(250);

/// The author name of the moderator's messages and failures.
pub const MODERATOR: &str = "moderator";
