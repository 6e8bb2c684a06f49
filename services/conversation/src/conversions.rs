//! Proto ↔ domain, and domain errors → gRPC status (exhaustive: a new error must pick a code).

use boardroom_proto::conversation::v1 as pb;
use boardroom_runtime::status::Violations;
use chrono::{DateTime, Utc};
use tonic::Status;
use uuid::Uuid;

use crate::domain::{
    AdvisorRank, Checkpoint, ConversationState, DoubleText, FailureReason, Message, Mode,
    OnDisconnect, Role, RoundKind, RoundUsage, StateView, TurnEvent, Usage,
};
use crate::error::{ConversationError, Rejection};
use crate::memory::{Memory, MemoryKey};

impl From<ConversationError> for Status {
    fn from(err: ConversationError) -> Self {
        match err {
            ConversationError::Invalid(v) => v.to_status(),
            ConversationError::NotFound { .. } => Status::not_found(err.to_string()),
            ConversationError::FailedPrecondition(m) => Status::failed_precondition(m),
            ConversationError::Aborted(m) => Status::aborted(m),
            ConversationError::QueueFull(m) => Status::resource_exhausted(m),
            ConversationError::Unavailable(m) => boardroom_runtime::status::unavailable(m, 1),
            ConversationError::Overloaded { retry_after_secs } => {
                boardroom_runtime::status::unavailable(
                    err.to_string(),
                    u32::try_from(retry_after_secs).unwrap_or(u32::MAX),
                )
            }
            ConversationError::NoAnswer => {
                boardroom_runtime::status::unavailable(err.to_string(), 1)
            }
            ConversationError::Rejected(Rejection::Unauthenticated, m) => {
                Status::unauthenticated(m)
            }
            ConversationError::Rejected(Rejection::PermissionDenied, m) => {
                Status::permission_denied(m)
            }
            ConversationError::Rejected(Rejection::InvalidArgument, m) => {
                Status::invalid_argument(m)
            }
            ConversationError::DeadlineExceeded(m) => Status::deadline_exceeded(m),
            ConversationError::Internal(m) => {
                // The detail is for the logs; a client learns only that it was not its fault.
                tracing::error!(detail = %m, "internal error");
                Status::internal("internal error")
            }
        }
    }
}

/// A required UUID field.
pub fn uuid_field(field: &str, text: &str) -> Result<Uuid, ConversationError> {
    if text.is_empty() {
        return Err(ConversationError::invalid(field, "is required"));
    }
    Uuid::parse_str(text).map_err(|_| ConversationError::invalid(field, "is not a UUID"))
}

/// Whose memory a call names: a user (`owner_id`) in a boardroom.
pub fn memory_key(owner_id: String, boardroom_id: &str) -> Result<MemoryKey, ConversationError> {
    memory_fields(owner_id, boardroom_id, None).map(|(key, _)| key)
}

/// A fact of a user's memory in a boardroom: the memory and the fact's `id`.
pub fn memory_fact(
    owner_id: String,
    boardroom_id: &str,
    id: &str,
) -> Result<(MemoryKey, Uuid), ConversationError> {
    memory_fields(owner_id, boardroom_id, Some(id)).map(|(key, id)| (key, id.unwrap_or_default()))
}

/// Every field of a memory call checked, every problem reported at once.
fn memory_fields(
    owner_id: String,
    boardroom_id: &str,
    id: Option<&str>,
) -> Result<(MemoryKey, Option<Uuid>), ConversationError> {
    let mut v = Violations::default();
    v.required("owner_id", &owner_id, 128);
    let mut parse = |field: &str, text: &str| match uuid_field(field, text) {
        Ok(id) => Ok(id),
        Err(ConversationError::Invalid(found)) => {
            v.extend(found);
            Ok(Uuid::nil())
        }
        Err(other) => Err(other),
    };
    let boardroom_id = parse("boardroom_id", boardroom_id)?;
    let id = id.map(|text| parse("id", text)).transpose()?;
    v.finish(())?;
    Ok((
        MemoryKey {
            owner_id,
            boardroom_id,
        },
        id,
    ))
}

/// A remembered fact as the API shows it.
pub fn memory_to(m: &Memory) -> pb::Memory {
    pb::Memory {
        id: m.id.to_string(),
        owner_id: m.owner_id.clone(),
        boardroom_id: m.boardroom_id.to_string(),
        fact: m.fact.clone(),
        thread_id: m.thread_id.to_string(),
        turn_id: m.turn_id.to_string(),
        create_time: Some(timestamp(m.created_at)),
        update_time: Some(timestamp(m.updated_at)),
        use_count: m.uses,
        last_use_time: m.used_at.map(timestamp),
    }
}

/// An optional idempotency key.
pub fn request_id(text: String) -> Option<String> {
    (!text.is_empty()).then_some(text)
}

fn timestamp(at: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: i32::try_from(at.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

/// A role of AppendMessage.
pub fn role_from(value: i32) -> Result<Role, ConversationError> {
    match pb::Role::try_from(value) {
        Ok(pb::Role::User) => Ok(Role::User),
        Ok(pb::Role::System) => Ok(Role::System),
        Ok(pb::Role::Unspecified) => Err(ConversationError::Invalid(Violations::one(
            "role",
            "is required (ROLE_USER or ROLE_SYSTEM)",
        ))),
        _ => Err(ConversationError::invalid(
            "role",
            "must be ROLE_USER or ROLE_SYSTEM",
        )),
    }
}

fn role_to(role: Role) -> pb::Role {
    match role {
        Role::User => pb::Role::User,
        Role::Advisor => pb::Role::Advisor,
        Role::Moderator => pb::Role::Moderator,
        Role::Tool => pb::Role::Tool,
        Role::System => pb::Role::System,
    }
}

/// A stored message.
pub fn message_to(m: &Message) -> pb::Message {
    pb::Message {
        thread_id: m.thread_id.to_string(),
        seq: m.seq,
        role: role_to(m.role) as i32,
        author: m.author.clone(),
        content: m.content.clone(),
        turn_id: m.turn_id.map(|t| t.to_string()).unwrap_or_default(),
        create_time: Some(timestamp(m.created_at)),
    }
}

/// A state.
pub fn state_to(thread_id: Uuid, s: &ConversationState) -> pb::ConversationState {
    pb::ConversationState {
        thread_id: thread_id.to_string(),
        version: s.version,
        covers_seq: s.covers_seq,
        summary: s.summary.clone(),
        summarized_through_seq: s.summarized_through_seq,
        advisors: s
            .advisors
            .iter()
            .map(|(name, m)| pb::AdvisorMemory {
                advisor: name.clone(),
                last_answer: m.last_answer.clone(),
                turns: m.turns,
            })
            .collect(),
        turns: s.turns,
    }
}

/// GetState's answer.
pub fn state_view_to(view: &StateView) -> pb::GetStateResponse {
    pb::GetStateResponse {
        state: Some(state_to(view.thread_id, &view.state)),
        last_seq: view.last_seq,
        running_turn_id: view.running_turn.map(|t| t.to_string()).unwrap_or_default(),
    }
}

/// A checkpoint's metadata.
pub fn checkpoint_to(c: &Checkpoint) -> pb::Checkpoint {
    pb::Checkpoint {
        thread_id: c.thread_id.to_string(),
        version: c.version,
        parent_version: c.parent_version.unwrap_or(0),
        covers_seq: c.covers_seq,
        pinned: c.pinned,
        stored_bytes: c.stored_bytes,
        create_time: Some(timestamp(c.created_at)),
    }
}

fn usage_to(u: Usage) -> pb::Usage {
    pb::Usage {
        input_tokens: u.input_tokens,
        output_tokens: u.output_tokens,
        cost_micros: u.cost_micros,
    }
}

fn reason_to(r: FailureReason) -> pb::FailureReason {
    match r {
        FailureReason::Timeout => pb::FailureReason::Timeout,
        FailureReason::Upstream => pb::FailureReason::Upstream,
        FailureReason::Cancelled => pb::FailureReason::Cancelled,
        FailureReason::NoAnswer => pb::FailureReason::NoAnswer,
        FailureReason::Conflict => pb::FailureReason::Conflict,
        FailureReason::Storage => pb::FailureReason::Storage,
        FailureReason::RateLimited => pb::FailureReason::RateLimited,
        FailureReason::Rejected => pb::FailureReason::Rejected,
        FailureReason::Malformed => pb::FailureReason::Malformed,
    }
}

fn mode_to(mode: Mode) -> pb::DeliberationMode {
    match mode {
        Mode::Panel => pb::DeliberationMode::Panel,
        Mode::Review => pb::DeliberationMode::Review,
        Mode::Debate => pb::DeliberationMode::Debate,
    }
}

fn kind_to(kind: RoundKind) -> pb::RoundKind {
    match kind {
        RoundKind::Answer => pb::RoundKind::Answer,
        RoundKind::Review => pb::RoundKind::Review,
        RoundKind::Revision => pb::RoundKind::Revision,
        RoundKind::Synthesis => pb::RoundKind::Synthesis,
    }
}

fn ranks_to(ranks: Vec<AdvisorRank>) -> Vec<pb::AdvisorRank> {
    ranks
        .into_iter()
        .map(|r| pb::AdvisorRank {
            advisor: r.advisor,
            mean_rank: r.mean_rank,
            votes: r.votes,
        })
        .collect()
}

fn round_usage_to(rounds: Vec<RoundUsage>) -> Vec<pb::RoundUsage> {
    rounds
        .into_iter()
        .map(|r| pb::RoundUsage {
            round: r.round,
            kind: kind_to(r.kind) as i32,
            usage: Some(usage_to(r.usage)),
        })
        .collect()
}

/// A RunTurn's deliberation mode (`None`: not given).
pub fn mode_from(value: i32) -> Result<Option<Mode>, ConversationError> {
    match pb::DeliberationMode::try_from(value) {
        Ok(pb::DeliberationMode::Unspecified) => Ok(None),
        Ok(pb::DeliberationMode::Panel) => Ok(Some(Mode::Panel)),
        Ok(pb::DeliberationMode::Review) => Ok(Some(Mode::Review)),
        Ok(pb::DeliberationMode::Debate) => Ok(Some(Mode::Debate)),
        Err(_) => Err(ConversationError::invalid(
            "deliberation",
            "is not a DeliberationMode",
        )),
    }
}

/// One turn event, at `index` in its turn.
pub fn event_to(index: u64, event: TurnEvent) -> pb::RunTurnResponse {
    use pb::run_turn_response::Event;
    let round = event.round();
    let event = match event {
        TurnEvent::Started {
            turn_id,
            advisors,
            replayed,
            deliberation,
        } => Event::TurnStarted(pb::TurnStarted {
            turn_id: turn_id.to_string(),
            advisors,
            replayed,
            deliberation: mode_to(deliberation.mode) as i32,
            rounds: deliberation.rounds(),
        }),
        TurnEvent::AdvisorStarted { advisor, model } => {
            Event::AdvisorStarted(pb::AdvisorStarted { advisor, model })
        }
        TurnEvent::AdvisorDelta { advisor, text, .. } => {
            Event::AdvisorDelta(pb::AdvisorDelta { advisor, text })
        }
        TurnEvent::ToolCalled {
            advisor,
            call_id,
            name,
            arguments_json,
        } => Event::ToolCalled(pb::ToolCalled {
            advisor,
            call_id,
            name,
            arguments_json,
        }),
        TurnEvent::ToolResult {
            advisor,
            call_id,
            name,
            content,
            is_error,
        } => Event::ToolResult(pb::ToolResult {
            advisor,
            call_id,
            name,
            content,
            is_error,
        }),
        TurnEvent::AdvisorFinished {
            advisor,
            usage,
            content,
            ..
        } => Event::AdvisorFinished(pb::AdvisorFinished {
            advisor,
            usage: Some(usage_to(usage)),
            content,
        }),
        TurnEvent::AdvisorFailed(f) => Event::AdvisorFailed(pb::AdvisorFailed {
            advisor: f.advisor,
            reason: reason_to(f.reason) as i32,
            message: f.message,
        }),
        TurnEvent::ModeratorDelta { text, .. } => {
            Event::ModeratorDelta(pb::ModeratorDelta { text })
        }
        TurnEvent::RoundStarted {
            round,
            kind,
            advisors,
        } => Event::RoundStarted(pb::RoundStarted {
            round,
            kind: kind_to(kind) as i32,
            advisors,
        }),
        TurnEvent::ReviewRanked { review, .. } => Event::ReviewRanked(pb::ReviewRanked {
            advisor: review.advisor,
            ranking: review.ranking,
            reason: review.reason,
            shown: review.shown,
        }),
        TurnEvent::RankingAggregated { ranks, .. } => {
            Event::RankingAggregated(pb::RankingAggregated {
                ranks: ranks_to(ranks),
            })
        }
        TurnEvent::Completed {
            turn_id,
            state_version,
            first_seq,
            last_seq,
            usage,
            replayed,
            commit_position,
            deliberation,
            rounds,
            ranking,
            memories_recalled,
        } => Event::TurnCompleted(pb::TurnCompleted {
            turn_id: turn_id.to_string(),
            state_version,
            first_seq,
            last_seq,
            usage: Some(usage_to(usage)),
            replayed,
            commit_position: commit_position.unwrap_or_default(),
            rounds: round_usage_to(rounds),
            ranking: ranks_to(ranking),
            deliberation: mode_to(deliberation.mode) as i32,
            memories_recalled,
        }),
        TurnEvent::Failed { reason, message } => Event::TurnFailed(pb::TurnFailed {
            reason: reason_to(reason) as i32,
            message,
        }),
    };
    pb::RunTurnResponse {
        event: Some(event),
        event_index: index,
        round,
    }
}

/// A RunTurn's double-text policy (`None`: not given).
pub fn double_text_from(value: i32) -> Result<Option<DoubleText>, ConversationError> {
    match pb::DoubleTextPolicy::try_from(value) {
        Ok(pb::DoubleTextPolicy::Unspecified) => Ok(None),
        Ok(pb::DoubleTextPolicy::Reject) => Ok(Some(DoubleText::Reject)),
        Ok(pb::DoubleTextPolicy::Enqueue) => Ok(Some(DoubleText::Enqueue)),
        Ok(pb::DoubleTextPolicy::Interrupt) => Ok(Some(DoubleText::Interrupt)),
        Err(_) => Err(ConversationError::invalid(
            "double_text",
            "is not a DoubleTextPolicy",
        )),
    }
}

/// A RunTurn's disconnect policy.
pub fn on_disconnect_from(value: i32) -> Result<OnDisconnect, ConversationError> {
    match pb::DisconnectPolicy::try_from(value) {
        Ok(pb::DisconnectPolicy::Unspecified | pb::DisconnectPolicy::Cancel) => {
            Ok(OnDisconnect::Cancel)
        }
        Ok(pb::DisconnectPolicy::Continue) => Ok(OnDisconnect::Continue),
        Err(_) => Err(ConversationError::invalid(
            "on_disconnect",
            "is not a DisconnectPolicy",
        )),
    }
}
