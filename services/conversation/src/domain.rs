//! The conversation domain's types, free of any transport.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The user.
    User,
    /// An advisor of the panel.
    Advisor,
    /// The moderator's synthesis.
    Moderator,
    /// A tool's result.
    Tool,
    /// A note framing the conversation.
    System,
}

impl Role {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Advisor => "advisor",
            Role::Moderator => "moderator",
            Role::Tool => "tool",
            Role::System => "system",
        }
    }

    /// From the stored name.
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "user" => Role::User,
            "advisor" => Role::Advisor,
            "moderator" => Role::Moderator,
            "tool" => Role::Tool,
            "system" => Role::System,
            _ => return None,
        })
    }
}

/// A stored message.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub thread_id: Uuid,
    pub seq: i64,
    pub role: Role,
    pub author: String,
    pub content: String,
    pub turn_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
}

/// A message to write (its seq is allocated when it is written).
#[derive(Debug, Clone, PartialEq)]
pub struct NewMessage {
    pub role: Role,
    pub author: String,
    pub content: String,
}

/// One advisor of a boardroom, as the workflow needs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Advisor {
    pub name: String,
    pub role: String,
    pub system_prompt: String,
    pub model: String,
}

/// What a turn needs to know about its thread, from the session service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadContext {
    pub thread_id: Uuid,
    pub session_id: Uuid,
    /// The session's boardroom.
    pub boardroom_id: Uuid,
    /// The session's user: whose memory of the boardroom the thread reads and adds to.
    pub owner_id: String,
    /// The thread is open and its session active: turns and appends are allowed.
    pub writable: bool,
    pub advisors: Vec<Advisor>,
    /// The boardroom's double-text policy, when it chose one.
    pub double_text: Option<DoubleText>,
    /// The boardroom's deliberation mode, when it chose one.
    pub deliberation: Option<Mode>,
    /// The boardroom's DEBATE rounds, when it chose them.
    pub debate_rounds: Option<u32>,
}

/// How a turn's advisors deliberate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Every advisor once, in parallel, then the moderator.
    #[default]
    Panel,
    /// The answers, then each advisor ranks the others' (anonymised), then the moderator.
    Review,
    /// The answers, then rounds of revision, then the moderator.
    Debate,
}

/// A turn's deliberation, resolved: its mode and, for DEBATE, the rounds of revision.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deliberation {
    pub mode: Mode,
    /// DEBATE's rounds of revision after the first answers (0 otherwise).
    pub debate_rounds: u32,
}

impl Deliberation {
    /// Rounds the turn runs, the moderator's included.
    pub fn rounds(self) -> u32 {
        match self.mode {
            Mode::Panel => 2,
            Mode::Review => 3,
            Mode::Debate => 2 + self.debate_rounds,
        }
    }
}

/// What a round of a turn does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoundKind {
    /// The first answers (tool calls included).
    Answer,
    /// REVIEW's rankings.
    Review,
    /// A DEBATE round of revision.
    Revision,
    /// The moderator's synthesis.
    Synthesis,
}

/// One advisor's ranking of the others' answers, by name, best first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Review {
    /// The reviewer.
    pub advisor: String,
    pub ranking: Vec<String>,
    /// In its words (it may cite the labels it saw).
    pub reason: String,
    /// The advisors behind the labels it saw, in label order (A first).
    #[serde(default)]
    pub shown: Vec<String>,
}

/// An advisor's place in a review's aggregate ranking.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdvisorRank {
    pub advisor: String,
    /// Mean position over the rankings that placed it (1 = best).
    pub mean_rank: f64,
    /// Rankings that placed it.
    pub votes: u32,
}

/// What one round cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoundUsage {
    pub round: u32,
    pub kind: RoundKind,
    pub usage: Usage,
}

/// A round as stored with its turn: what it cost, and what is not among the turn's messages
/// (a debate's earlier answers, a review's rankings).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoundRecord {
    pub round: u32,
    pub kind: RoundKind,
    pub usage: Usage,
    /// (advisor, answer) of this round, when it is not the advisor's final answer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub answers: Vec<(String, String)>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reviews: Vec<Review>,
}

/// What one advisor remembers of the thread.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdvisorMemory {
    /// Its latest answer, shortened.
    pub last_answer: String,
    /// Turns it answered.
    pub turns: i64,
}

/// A thread's workflow state: what a checkpoint stores. Never a copy of the messages.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversationState {
    /// 0 before the first checkpoint.
    pub version: i64,
    /// The last seq the state has seen.
    pub covers_seq: i64,
    /// The rolling summary of messages `1..=summarized_through_seq`.
    pub summary: String,
    pub summarized_through_seq: i64,
    /// Per advisor, by name.
    pub advisors: BTreeMap<String, AdvisorMemory>,
    /// Turns completed.
    pub turns: i64,
}

/// A checkpoint's metadata (its state is read separately).
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    pub thread_id: Uuid,
    pub version: i64,
    pub parent_version: Option<i64>,
    pub covers_seq: i64,
    pub pinned: bool,
    pub stored_bytes: i64,
    pub created_at: DateTime<Utc>,
}

/// Tokens (and their cost) of calls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub input_tokens: u32,
    pub output_tokens: u32,
    pub cost_micros: u64,
}

impl Usage {
    /// Adds `other` to this.
    pub fn add(&mut self, other: Usage) {
        self.input_tokens = self.input_tokens.saturating_add(other.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(other.output_tokens);
        self.cost_micros = self.cost_micros.saturating_add(other.cost_micros);
    }

    /// What this costs beyond `earlier` (a part of it).
    pub fn minus(self, earlier: Usage) -> Usage {
        Usage {
            input_tokens: self.input_tokens.saturating_sub(earlier.input_tokens),
            output_tokens: self.output_tokens.saturating_sub(earlier.output_tokens),
            cost_micros: self.cost_micros.saturating_sub(earlier.cost_micros),
        }
    }
}

/// Why an advisor or a turn failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureReason {
    Timeout,
    Upstream,
    Cancelled,
    NoAnswer,
    Conflict,
    Storage,
    RateLimited,
    /// The gateway refused the call (credentials, permission, a request it cannot take).
    Rejected,
    /// The model's answer did not have the form asked for (a review's ranking).
    Malformed,
}

impl FailureReason {
    /// Every reason.
    pub const ALL: [Self; 9] = [
        Self::Timeout,
        Self::Upstream,
        Self::Cancelled,
        Self::NoAnswer,
        Self::Conflict,
        Self::Storage,
        Self::RateLimited,
        Self::Rejected,
        Self::Malformed,
    ];
}

/// An advisor that did not answer, as recorded with its turn.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdvisorFailure {
    pub advisor: String,
    pub reason: FailureReason,
    pub message: String,
    /// The round it failed in (0 in records written before rounds existed).
    #[serde(default)]
    pub round: u32,
}

/// What a completed turn recorded, so that a retry replays it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TurnOutcome {
    pub advisors: Vec<String>,
    pub failures: Vec<AdvisorFailure>,
    pub usage: Usage,
    /// Usage per advisor, by name.
    pub advisor_usage: BTreeMap<String, Usage>,
    #[serde(default)]
    pub deliberation: Deliberation,
    /// Every round, in order (empty in records written before rounds existed).
    #[serde(default)]
    pub rounds: Vec<RoundRecord>,
    /// REVIEW's aggregate ranking, best first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ranking: Vec<AdvisorRank>,
    /// Facts of the boardroom's memory given to the advisors.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub memories_recalled: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl TurnOutcome {
    /// Usage per round.
    pub fn round_usage(&self) -> Vec<RoundUsage> {
        self.rounds
            .iter()
            .map(|r| RoundUsage {
                round: r.round,
                kind: r.kind,
                usage: r.usage,
            })
            .collect()
    }
}

/// A completed turn.
#[derive(Debug, Clone, PartialEq)]
pub struct TurnRecord {
    pub id: Uuid,
    pub thread_id: Uuid,
    pub first_seq: i64,
    pub last_seq: i64,
    pub state_version: i64,
    pub outcome: TurnOutcome,
}

/// One event of a running (or replayed) turn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TurnEvent {
    Started {
        turn_id: Uuid,
        advisors: Vec<String>,
        replayed: bool,
        #[serde(default)]
        deliberation: Deliberation,
    },
    AdvisorStarted {
        advisor: String,
        model: String,
    },
    AdvisorDelta {
        advisor: String,
        text: String,
        #[serde(default)]
        round: u32,
    },
    ToolCalled {
        advisor: String,
        call_id: String,
        name: String,
        arguments_json: String,
    },
    ToolResult {
        advisor: String,
        call_id: String,
        name: String,
        content: String,
        is_error: bool,
    },
    AdvisorFinished {
        advisor: String,
        usage: Usage,
        content: String,
        #[serde(default)]
        round: u32,
    },
    AdvisorFailed(AdvisorFailure),
    ModeratorDelta {
        text: String,
        #[serde(default)]
        round: u32,
    },
    /// A round began (REVIEW and DEBATE).
    RoundStarted {
        round: u32,
        kind: RoundKind,
        advisors: Vec<String>,
    },
    /// One advisor's ranking of the others' answers.
    ReviewRanked {
        round: u32,
        review: Review,
    },
    /// The review's aggregate ranking, best first.
    RankingAggregated {
        round: u32,
        ranks: Vec<AdvisorRank>,
    },
    Completed {
        turn_id: Uuid,
        state_version: i64,
        first_seq: i64,
        last_seq: i64,
        usage: Usage,
        replayed: bool,
        /// The primary's WAL position once stored, with replicas configured.
        #[serde(default)]
        commit_position: Option<String>,
        #[serde(default)]
        deliberation: Deliberation,
        #[serde(default)]
        rounds: Vec<RoundUsage>,
        #[serde(default)]
        ranking: Vec<AdvisorRank>,
        /// Facts of the boardroom's memory given to the advisors.
        #[serde(default)]
        memories_recalled: u32,
    },
    Failed {
        reason: FailureReason,
        message: String,
    },
}

/// Bytes a string holds on the heap, with the allocator's bookkeeping (for memory bounds).
pub(crate) fn heap_bytes(text: &str) -> usize {
    if text.is_empty() { 0 } else { text.len() + 16 }
}

fn names_bytes(names: &[String]) -> usize {
    std::mem::size_of_val(names) + names.iter().map(|n| heap_bytes(n)).sum::<usize>()
}

impl TurnEvent {
    /// Bytes the event holds on the heap besides its own size (for memory bounds).
    pub fn heap_bytes(&self) -> usize {
        match self {
            TurnEvent::Started { advisors, .. } | TurnEvent::RoundStarted { advisors, .. } => {
                names_bytes(advisors)
            }
            TurnEvent::AdvisorStarted { advisor, model } => heap_bytes(advisor) + heap_bytes(model),
            TurnEvent::AdvisorDelta { advisor, text, .. }
            | TurnEvent::AdvisorFinished {
                advisor,
                content: text,
                ..
            } => heap_bytes(advisor) + heap_bytes(text),
            TurnEvent::ToolCalled {
                advisor,
                call_id,
                name,
                arguments_json: text,
            }
            | TurnEvent::ToolResult {
                advisor,
                call_id,
                name,
                content: text,
                ..
            } => heap_bytes(advisor) + heap_bytes(call_id) + heap_bytes(name) + heap_bytes(text),
            TurnEvent::AdvisorFailed(failure) => {
                heap_bytes(&failure.advisor) + heap_bytes(&failure.message)
            }
            TurnEvent::ModeratorDelta { text, .. } | TurnEvent::Failed { message: text, .. } => {
                heap_bytes(text)
            }
            TurnEvent::ReviewRanked { review, .. } => {
                heap_bytes(&review.advisor)
                    + heap_bytes(&review.reason)
                    + names_bytes(&review.ranking)
                    + names_bytes(&review.shown)
            }
            TurnEvent::RankingAggregated { ranks, .. } => ranks
                .iter()
                .map(|r| std::mem::size_of::<AdvisorRank>() + heap_bytes(&r.advisor))
                .sum(),
            TurnEvent::Completed {
                rounds,
                ranking,
                commit_position,
                ..
            } => {
                rounds.len() * std::mem::size_of::<RoundUsage>()
                    + ranking
                        .iter()
                        .map(|r| std::mem::size_of::<AdvisorRank>() + heap_bytes(&r.advisor))
                        .sum::<usize>()
                    + commit_position.as_deref().map_or(0, heap_bytes)
            }
        }
    }

    /// The round the event belongs to: from 1 for the advisors' and the moderator's events,
    /// 0 for the turn's own (started, completed, failed).
    pub fn round(&self) -> u32 {
        match self {
            TurnEvent::Started { .. } | TurnEvent::Completed { .. } | TurnEvent::Failed { .. } => 0,
            TurnEvent::AdvisorStarted { .. }
            | TurnEvent::ToolCalled { .. }
            | TurnEvent::ToolResult { .. } => 1,
            TurnEvent::AdvisorDelta { round, .. }
            | TurnEvent::AdvisorFinished { round, .. }
            | TurnEvent::ModeratorDelta { round, .. }
            | TurnEvent::RoundStarted { round, .. }
            | TurnEvent::ReviewRanked { round, .. }
            | TurnEvent::RankingAggregated { round, .. } => *round,
            TurnEvent::AdvisorFailed(failure) => failure.round,
        }
    }
}

/// What a turn does when its thread is running another (double-texting).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DoubleText {
    /// Refused (ABORTED).
    #[default]
    Reject,
    /// Waits its turn, in order of arrival, in a bounded queue.
    Enqueue,
    /// Cancels the running turn and runs next.
    Interrupt,
}

/// What a turn does when its caller goes away.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OnDisconnect {
    /// It is cancelled; nothing is stored.
    #[default]
    Cancel,
    /// It runs to completion and is stored.
    Continue,
}

/// A request to run a turn.
#[derive(Debug, Clone, PartialEq)]
pub struct TurnRequest {
    pub thread_id: Uuid,
    pub content: String,
    pub author: String,
    pub request_id: Option<String>,
    /// Empty: every advisor.
    pub advisors: Vec<String>,
    /// `None`: the boardroom's policy (reject when it has none).
    pub double_text: Option<DoubleText>,
    pub on_disconnect: OnDisconnect,
    /// `None`: the boardroom's mode (panel when it has none).
    pub deliberation: Option<Mode>,
    /// `None`: the boardroom's, else the configured default.
    pub debate_rounds: Option<u32>,
}

/// The order of a message list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Forward,
    Backward,
}

/// A page of a list.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_page_token: Option<String>,
}

/// The thread's state as GetState answers it.
#[derive(Debug, Clone, PartialEq)]
pub struct StateView {
    pub thread_id: Uuid,
    pub state: ConversationState,
    pub last_seq: i64,
    pub running_turn: Option<Uuid>,
}

/// Tokens of a text, estimated (4 bytes a token, as the gateway estimates prompts).
pub fn estimate_tokens(text: &str) -> u32 {
    u32::try_from(text.len().div_ceil(4)).unwrap_or(u32::MAX)
}

/// `text` cut to at most `max` bytes, at a char boundary.
pub fn truncated(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}
