//! Turns: started (the lease taken, or waited for by the double-text policy; the workflow
//! driven in a task of its own, its events logged), replayed by request id, cancelled and
//! joined from any replica.

use std::sync::Arc;

use boardroom_runtime::status::Violations;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use crate::bus::Registration;
use crate::conversations::{Conversations, check_request_id, check_text};
use crate::domain::{
    Deliberation, DoubleText, FailureReason, Message, Mode, OnDisconnect, Role, RoundKind,
    RoundRecord, TurnEvent, TurnRecord, TurnRequest, Usage, estimate_tokens,
};
use crate::error::ConversationError;
use crate::lease::TurnLease;
use crate::memories::{Distillable, Recall};
use crate::memory::MemoryKey;
use crate::recent::RECENT_LIMIT;
use crate::store::{Source, now};
use crate::turnlog::{IndexedEvent, TurnEvents, is_last};
use crate::workflow::{MODERATOR, TurnInput};

/// Events buffered per turn stream before the workflow waits for the client.
const EVENT_BUFFER: usize = 256;
/// How far ahead of every merely queued turn an interrupting one is placed (µs: ~146k years).
const INTERRUPT_AHEAD: i64 = 1 << 62;

impl Conversations {
    /// Cancels the running turn of a thread (only `turn_id`, when given), wherever it runs:
    /// here directly, on another instance through the bus. Whether a running turn was found
    /// (and told to stop).
    pub async fn cancel(
        &self,
        thread_id: Uuid,
        turn_id: Option<Uuid>,
    ) -> Result<bool, ConversationError> {
        if self.bus.cancel_here(thread_id, turn_id) {
            return Ok(true);
        }
        if !self.bus.is_shared() {
            return Ok(false);
        }
        // Another instance may run it: the thread's lease says which turn runs, if any.
        let Some(running) = self
            .store
            .head(thread_id)
            .await?
            .and_then(|head| head.running_turn_now())
        else {
            return Ok(false);
        };
        if turn_id.is_some_and(|t| t != running) {
            return Ok(false);
        }
        self.bus.publish_cancel(thread_id, running).await?;
        Ok(true)
    }

    /// Starts a turn (or replays a completed one) and returns its events. Problems found
    /// before the turn starts are errors; after that, the stream ends with `Completed` or
    /// `Failed`.
    pub async fn run_turn(
        &self,
        request: TurnRequest,
    ) -> Result<mpsc::Receiver<IndexedEvent>, ConversationError> {
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
        // Refused before it costs anything (no query, no lease) while the instance is short
        // of CPU: the turns admitted keep their pace.
        let admitted = self
            .turn_gate
            .try_enter()
            .map_err(|retry_after_secs| ConversationError::Overloaded { retry_after_secs })?;
        let thread_id = request.thread_id;
        // The thread's state version when the request was looked up (none without one).
        let mut looked_at = None;
        if let Some(id) = &request.request_id {
            let (done, version) = self.store.request_lookup(thread_id, id).await?;
            if let Some(done) = done {
                return self.replay(done).await;
            }
            looked_at = Some(version);
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
        let deliberation = self.deliberation(&request, &thread)?;
        if advisors.is_empty() {
            advisors = thread.advisors.clone();
        }
        if advisors.is_empty() {
            return Err(ConversationError::FailedPrecondition(
                "the thread's boardroom has no advisors".into(),
            ));
        }
        let turn_id = Uuid::now_v7();
        // From here every way out gives the lease back: the guard does it when dropped.
        let (lease, head) = match self.leases.acquire(thread_id, turn_id).await? {
            Some(taken) => taken,
            None => {
                // The request's policy, else the boardroom's, else reject.
                let policy = request
                    .double_text
                    .or(thread.double_text)
                    .unwrap_or_default();
                self.wait_for_thread(thread_id, turn_id, policy).await?
            }
        };
        // Cancellable from the moment it holds the thread (a cancel or an interrupt may come
        // while its state loads).
        let cancel = self.shutdown.child_token();
        let registration = self.bus.register(thread_id, turn_id, cancel.clone());
        // The first run of this request may have completed between the lookup above and the
        // lease: its record is committed with its lease release, so it is visible now. Had
        // it, the state version would have moved (a completed turn bumps it).
        if let Some(id) = &request.request_id
            && looked_at != Some(head.state_version)
            && let Some(done) = self.store.turn_by_request(thread_id, id).await?
        {
            lease.release().await;
            return self.replay(done).await;
        }
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
            deliberation,
            recalled: Vec::new(),
        };
        let memory = MemoryKey {
            owner_id: thread.owner_id.clone(),
            boardroom_id: thread.boardroom_id,
        };
        let (tx, rx) = mpsc::channel(EVENT_BUFFER);
        let events = self.logs.open(thread_id, turn_id, tx).await;
        let this = self.clone();
        let on_disconnect = request.on_disconnect;
        // The turn outlives the call that started it (a caller may leave): its span is a
        // child of the call's, so the turn's work joins the caller's trace.
        let span = tracing::info_span!("turn", turn_id = %turn_id, thread_id = %thread_id);
        // Owned: ends when the turn ends, is cancelled, or the service shuts down. It keeps
        // the call's consistency token (its calls to other services carry it).
        self.tasks.spawn(
            boardroom_runtime::consistency::carry(async move {
                let _admitted = admitted;
                this.drive(
                    (input, memory),
                    (lease, registration),
                    events,
                    on_disconnect,
                    cancel,
                )
                .await
            })
            .instrument(span),
        );
        Ok(rx)
    }

    /// The turn's deliberation: the request's mode, else the boardroom's, else PANEL; DEBATE's
    /// rounds likewise, else the configured default. A request beyond the bound is refused; a
    /// boardroom's (valid when it was written) is bounded.
    fn deliberation(
        &self,
        request: &TurnRequest,
        thread: &crate::domain::ThreadContext,
    ) -> Result<Deliberation, ConversationError> {
        let max = self.limits.max_debate_rounds;
        if let Some(rounds) = request.debate_rounds
            && rounds > max
        {
            return Err(ConversationError::invalid(
                "debate_rounds",
                format!("must be in 0..={max} (conversation.max_debate_rounds)"),
            ));
        }
        let mode = request
            .deliberation
            .or(thread.deliberation)
            .unwrap_or_default();
        let debate_rounds = match mode {
            Mode::Debate => request
                .debate_rounds
                .or(thread.debate_rounds)
                .unwrap_or(self.limits.debate_rounds)
                .clamp(1, max),
            Mode::Panel | Mode::Review => 0,
        };
        Ok(Deliberation {
            mode,
            debate_rounds,
        })
    }

    /// The thread is taken: refused, or waited for in its queue (an interrupt first cancels
    /// the running turn, and goes ahead of every turn that merely waits).
    async fn wait_for_thread(
        &self,
        thread_id: Uuid,
        turn_id: Uuid,
        policy: DoubleText,
    ) -> Result<(TurnLease, crate::store::Head), ConversationError> {
        let micros = now().timestamp_micros();
        let (place, interrupt) = match policy {
            DoubleText::Reject => {
                return Err(ConversationError::Aborted(
                    "another turn is running on this thread, or waits for it".into(),
                ));
            }
            DoubleText::Enqueue => (micros, false),
            DoubleText::Interrupt => (micros - INTERRUPT_AHEAD, true),
        };
        let once_queued = async {
            if interrupt {
                let stopped = self.cancel(thread_id, None).await?;
                metrics::counter!("conversation_turns_interrupted_total")
                    .increment(u64::from(stopped));
            }
            Ok(())
        };
        self.leases
            .wait_for(
                (thread_id, turn_id),
                place,
                self.limits.max_queued_turns,
                once_queued,
            )
            .await
    }

    /// The events of a running or just-finished turn after `after`, then the live ones, to
    /// its end. Ends with an error when the log cannot be followed to the end (join again
    /// from the last index), and with TurnFailed when the turn's instance died (its lease
    /// gone, no last event, nothing stored).
    pub async fn join_turn(
        &self,
        thread_id: Uuid,
        turn_id: Uuid,
        after: u64,
    ) -> Result<mpsc::Receiver<Result<IndexedEvent, ConversationError>>, ConversationError> {
        if self.logs.elsewhere(thread_id, turn_id).await {
            // The instance running it writes its log at the short window from now on (what it
            // gathered, at once: likely in Redis by the time the reads below look).
            self.bus.publish_follow(thread_id, turn_id).await;
        }
        let mut events = match self.logs.join(thread_id, turn_id, after, false).await {
            Err(ConversationError::NotFound { .. }) => {
                // Just started elsewhere? Its lease says so before its first event is written.
                let running = self.store.head(thread_id).await?;
                if running.and_then(|h| h.running_turn_now()) != Some(turn_id) {
                    return Err(ConversationError::not_found("turn events", turn_id));
                }
                self.logs.join(thread_id, turn_id, after, true).await?
            }
            joined => joined?,
        };
        let (tx, rx) = mpsc::channel(EVENT_BUFFER);
        let this = self.clone();
        let quiet = self.leases.length();
        // Owned: ends at the turn's last event, when the joiner leaves, or at shutdown.
        self.tasks.spawn(
            async move {
            let mut last = after;
            loop {
                let next = tokio::select! {
                    _ = this.shutdown.cancelled() => return,
                    _ = tx.closed() => return,
                    next = tokio::time::timeout(quiet, events.recv()) => next,
                };
                match next {
                    Ok(Some(event)) => {
                        last = event.0;
                        let end = is_last(&event.1);
                        if tx.send(Ok(event)).await.is_err() || end {
                            return;
                        }
                    }
                    Ok(None) => {
                        let _ = tx
                            .send(Err(ConversationError::Unavailable(format!(
                                "the turn's log could not be followed to its end; join again after event {last}"
                            ))))
                            .await;
                        return;
                    }
                    Err(_) => {
                        // Quiet for a whole lease: is anyone still running it?
                        let Ok(Some(head)) = this.store.head(thread_id).await else {
                            continue;
                        };
                        if head.running_turn_now() == Some(turn_id) {
                            continue;
                        }
                        let end = match this.store.turn_stored(thread_id, turn_id).await {
                            Ok(true) => Err(ConversationError::FailedPrecondition(
                                "the turn was stored but its last events are not in its log: read it with ListMessages".into(),
                            )),
                            Ok(false) => Ok((
                                last + 1,
                                TurnEvent::Failed {
                                    reason: FailureReason::Storage,
                                    message: "the instance running the turn stopped before storing it".into(),
                                },
                            )),
                            Err(_) => continue,
                        };
                        let _ = tx.send(end).await;
                        return;
                    }
                }
            }
            }
            .in_current_span(),
        );
        Ok(rx)
    }

    async fn drive(
        &self,
        (mut input, memory): (TurnInput, MemoryKey),
        (lease, registration): (TurnLease, Registration),
        events: TurnEvents,
        on_disconnect: OnDisconnect,
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
        events
            .emit(TurnEvent::Started {
                turn_id,
                advisors: input.advisors.iter().map(|a| a.name.clone()).collect(),
                replayed: false,
                deliberation: input.deliberation,
            })
            .await;
        let cancel_when_gone = on_disconnect == OnDisconnect::Cancel;
        metrics::gauge!("conversation_turns_running").increment(1.0);
        // What the boardroom remembers of this user, for the advisors (bounded by its own
        // timeout; a cancel stops it at once).
        let recall = tokio::select! {
            biased;
            _ = cancel.cancelled() => Recall::default(),
            recall = self.recall(&memory, &input.content) => recall,
        };
        input.recalled = recall.facts;
        // The run first: a turn that finished (and committed) is reported as done even if the
        // caller left or a cancel arrived in the same instant.
        // Answering may be cut short (a cancel, the bound, a lost lease, the caller leaving);
        // storing may not: a turn that starts storing itself is stored or fails as a whole,
        // and its caller is told which.
        let answered = tokio::select! {
            biased;
            run = tokio::time::timeout(self.limits.turn_timeout, self.workflow.answer(input, &events)) => match run {
                Ok(Ok(answered)) => Ok(answered),
                Ok(Err(err)) => Err((failure_reason(&err), err.to_string())),
                Err(_) => Err((FailureReason::Timeout, "the turn passed conversation.turn_timeout_ms".to_owned())),
            },
            _ = cancel.cancelled() => Err((FailureReason::Cancelled, "the turn was cancelled".to_owned())),
            _ = lease.lost() => Err((FailureReason::Conflict, "the turn lost its lease on the thread (another turn took it)".to_owned())),
            _ = events.caller_gone(), if cancel_when_gone => Err((FailureReason::Cancelled, "the caller went away".to_owned())),
        };
        let outcome = match answered {
            Ok(answered) => {
                // The write is fenced on the lease: no renewal needed while it runs.
                lease.storing();
                self.workflow
                    .store(answered)
                    .await
                    .map_err(|err| (failure_reason(&err), err.to_string()))
            }
            Err(failed) => Err(failed),
        };
        metrics::gauge!("conversation_turns_running").decrement(1.0);
        // Over: a cancel from now on finds nothing to stop.
        drop(registration);
        match outcome {
            Ok(stored) => {
                lease.committed();
                metrics::counter!("conversation_turns_total", "outcome" => "completed")
                    .increment(1);
                tracing::debug!(messages = stored.messages.len(), "turn stored");
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
                let position = self.store.commit_position().await;
                events
                    .emit(completed(&stored.record, false, position))
                    .await;
                self.logs.finished(turn_id).await;
                drop(events);
                // After the caller has its answer: the next turn (here or on another
                // instance) finds the state warm.
                self.remember(thread_id, &state).await;
                // The history after the summary: what the turn read, and what it added.
                if recent_full || unsummarised + turn_tokens > self.limits.history_budget_tokens {
                    self.summarise_later(thread_id);
                }
                self.distil_later(Distillable {
                    key: memory,
                    source: Source { thread_id, turn_id },
                    user_message: first_of(&stored.messages, Role::User),
                    synthesis: first_of(&stored.messages, Role::Moderator),
                    // The facts that fit the advisors' contexts, not every one found.
                    used: recall
                        .ids
                        .into_iter()
                        .take(stored.record.outcome.memories_recalled as usize)
                        .collect(),
                });
            }
            Err((reason, message)) => {
                metrics::counter!("conversation_turns_total", "outcome" => "failed").increment(1);
                lease.release().await;
                events.emit(TurnEvent::Failed { reason, message }).await;
                self.logs.finished(turn_id).await;
                drop(events);
            }
        }
    }

    /// The recorded outcome of a completed turn, as events.
    async fn replay(
        &self,
        record: TurnRecord,
    ) -> Result<mpsc::Receiver<IndexedEvent>, ConversationError> {
        let messages = self
            .store
            .messages_between(record.thread_id, record.first_seq, record.last_seq)
            .await?;
        let mut events = replayed_events(&record, messages);
        events.push(completed(&record, true, self.store.commit_position().await));
        let (tx, rx) = mpsc::channel(events.len());
        for event in events {
            // Index 0: a replay is not a live turn's log.
            let _ = tx.try_send((0, event));
        }
        metrics::counter!("conversation_turns_total", "outcome" => "replayed").increment(1);
        Ok(rx)
    }
}

/// A completed turn's events, rebuilt from its record and its messages, round by round:
/// every advisor's answers (a debate's earlier ones from the record, the final ones from the
/// messages), the reviews and their aggregate, the failures, the moderator. No deltas.
fn replayed_events(record: &TurnRecord, messages: Vec<Message>) -> Vec<TurnEvent> {
    let outcome = &record.outcome;
    let deliberation = outcome.deliberation;
    let mut finals: Vec<(String, String)> = Vec::new();
    let mut moderator = None;
    for m in messages {
        match m.role {
            Role::Advisor => finals.push((m.author, m.content)),
            Role::Moderator => moderator = Some(m.content),
            Role::User | Role::Tool | Role::System => {}
        }
    }
    // Records written before rounds existed: one round of answers, then the moderator.
    let rounds = if outcome.rounds.is_empty() {
        vec![
            RoundRecord {
                round: 1,
                kind: RoundKind::Answer,
                usage: outcome.usage,
                answers: Vec::new(),
                reviews: Vec::new(),
            },
            RoundRecord {
                round: 2,
                kind: RoundKind::Synthesis,
                usage: Usage::default(),
                answers: Vec::new(),
                reviews: Vec::new(),
            },
        ]
    } else {
        outcome.rounds.clone()
    };
    // The round of each advisor's final answer: its last in the record (a debate's), else 1.
    let final_round = |advisor: &str| {
        rounds
            .iter()
            .filter(|r| r.answers.iter().any(|(a, _)| a == advisor))
            .map(|r| r.round)
            .max()
            .unwrap_or(1)
    };
    let failed_in = |round: u32| {
        outcome
            .failures
            .iter()
            // Records written before rounds existed say 0: their failures were of round 1.
            .filter(move |f| f.round.max(1) == round)
    };
    let mut events = vec![TurnEvent::Started {
        turn_id: record.id,
        advisors: outcome.advisors.clone(),
        replayed: true,
        deliberation,
    }];
    for r in &rounds {
        if deliberation.mode != Mode::Panel {
            let advisors = match r.kind {
                RoundKind::Answer => outcome.advisors.clone(),
                RoundKind::Review => r
                    .reviews
                    .iter()
                    .map(|v| v.advisor.clone())
                    .chain(failed_in(r.round).map(|f| f.advisor.clone()))
                    .collect(),
                RoundKind::Revision => r
                    .answers
                    .iter()
                    .map(|(a, _)| a.clone())
                    .chain(failed_in(r.round).map(|f| f.advisor.clone()))
                    .collect(),
                RoundKind::Synthesis => vec![MODERATOR.to_owned()],
            };
            events.push(TurnEvent::RoundStarted {
                round: r.round,
                kind: r.kind,
                advisors,
            });
        }
        match r.kind {
            RoundKind::Answer | RoundKind::Revision => {
                let answers: Vec<(String, String)> = if r.answers.is_empty() {
                    finals.clone()
                } else {
                    r.answers.clone()
                };
                for (advisor, content) in answers {
                    let last = final_round(&advisor) == r.round;
                    let (content, usage) = match finals.iter().find(|(a, _)| *a == advisor) {
                        Some((_, text)) if last => (
                            text.clone(),
                            outcome
                                .advisor_usage
                                .get(&advisor)
                                .copied()
                                .unwrap_or_default(),
                        ),
                        _ => (content, Usage::default()),
                    };
                    events.push(TurnEvent::AdvisorFinished {
                        advisor,
                        usage,
                        content,
                        round: r.round,
                    });
                }
            }
            RoundKind::Review => {
                for review in &r.reviews {
                    events.push(TurnEvent::ReviewRanked {
                        round: r.round,
                        review: review.clone(),
                    });
                }
                events.push(TurnEvent::RankingAggregated {
                    round: r.round,
                    ranks: outcome.ranking.clone(),
                });
            }
            RoundKind::Synthesis => {
                if let Some(text) = moderator.take() {
                    events.push(TurnEvent::ModeratorDelta {
                        text,
                        round: r.round,
                    });
                }
            }
        }
        events.extend(failed_in(r.round).cloned().map(TurnEvent::AdvisorFailed));
    }
    events
}

fn completed(record: &TurnRecord, replayed: bool, commit_position: Option<String>) -> TurnEvent {
    TurnEvent::Completed {
        turn_id: record.id,
        state_version: record.state_version,
        first_seq: record.first_seq,
        last_seq: record.last_seq,
        usage: record.outcome.usage,
        replayed,
        commit_position,
        deliberation: record.outcome.deliberation,
        rounds: record.outcome.round_usage(),
        ranking: record.outcome.ranking.clone(),
        memories_recalled: record.outcome.memories_recalled,
    }
}

/// The content of the first of `messages` written by `role` (empty when none is).
fn first_of(messages: &[Message], role: Role) -> String {
    messages
        .iter()
        .find(|m| m.role == role)
        .map(|m| m.content.clone())
        .unwrap_or_default()
}

fn failure_reason(err: &ConversationError) -> FailureReason {
    match err {
        ConversationError::Aborted(_) => FailureReason::Conflict,
        ConversationError::DeadlineExceeded(_) => FailureReason::Timeout,
        ConversationError::NoAnswer => FailureReason::NoAnswer,
        ConversationError::Rejected(..) => FailureReason::Rejected,
        ConversationError::Invalid(_)
        | ConversationError::QueueFull(_)
        | ConversationError::NotFound { .. }
        | ConversationError::FailedPrecondition(_)
        | ConversationError::Unavailable(_)
        | ConversationError::Overloaded { .. }
        | ConversationError::Internal(_) => FailureReason::Storage,
    }
}
