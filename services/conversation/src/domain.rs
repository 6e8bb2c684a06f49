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
    /// The thread is open and its session active: turns and appends are allowed.
    pub writable: bool,
    pub advisors: Vec<Advisor>,
    /// The boardroom's double-text policy, when it chose one.
    pub double_text: Option<DoubleText>,
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
}

impl FailureReason {
    /// Every reason.
    pub const ALL: [Self; 8] = [
        Self::Timeout,
        Self::Upstream,
        Self::Cancelled,
        Self::NoAnswer,
        Self::Conflict,
        Self::Storage,
        Self::RateLimited,
        Self::Rejected,
    ];
}

/// An advisor that did not answer, as recorded with its turn.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdvisorFailure {
    pub advisor: String,
    pub reason: FailureReason,
    pub message: String,
}

/// What a completed turn recorded, so that a retry replays it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TurnOutcome {
    pub advisors: Vec<String>,
    pub failures: Vec<AdvisorFailure>,
    pub usage: Usage,
    /// Usage per advisor, by name.
    pub advisor_usage: BTreeMap<String, Usage>,
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
    },
    AdvisorStarted {
        advisor: String,
        model: String,
    },
    AdvisorDelta {
        advisor: String,
        text: String,
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
    },
    AdvisorFailed(AdvisorFailure),
    ModeratorDelta {
        text: String,
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
    },
    Failed {
        reason: FailureReason,
        message: String,
    },
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
