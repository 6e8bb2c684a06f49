//! The session domain: boardrooms, sessions and threads, and the inputs that create or change
//! them. No transport types here.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// One AI persona of a boardroom's panel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Advisor {
    /// Display name, unique within the boardroom.
    pub name: String,
    /// What the advisor is for.
    pub role: String,
    /// The system prompt it answers with.
    pub system_prompt: String,
    /// The model alias the LLM gateway routes to.
    pub model: String,
}

/// What a second message does while a turn runs on a thread of the boardroom.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DoubleText {
    /// Not chosen: the conversation service's default (reject).
    #[default]
    Unspecified,
    Reject,
    Enqueue,
    Interrupt,
}

impl DoubleText {
    /// The stored name (`None` for unspecified).
    pub fn as_str(self) -> Option<&'static str> {
        match self {
            DoubleText::Unspecified => None,
            DoubleText::Reject => Some("reject"),
            DoubleText::Enqueue => Some("enqueue"),
            DoubleText::Interrupt => Some("interrupt"),
        }
    }

    /// From the stored name.
    pub fn parse(text: Option<&str>) -> Self {
        match text {
            Some("reject") => DoubleText::Reject,
            Some("enqueue") => DoubleText::Enqueue,
            Some("interrupt") => DoubleText::Interrupt,
            _ => DoubleText::Unspecified,
        }
    }
}

/// How a boardroom's advisors deliberate on a turn.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Deliberation {
    /// Not chosen: the conversation service's default (panel).
    #[default]
    Unspecified,
    Panel,
    Review,
    Debate,
}

impl Deliberation {
    /// The stored name (`None` for unspecified).
    pub fn as_str(self) -> Option<&'static str> {
        match self {
            Deliberation::Unspecified => None,
            Deliberation::Panel => Some("panel"),
            Deliberation::Review => Some("review"),
            Deliberation::Debate => Some("debate"),
        }
    }

    /// From the stored name.
    pub fn parse(text: Option<&str>) -> Self {
        match text {
            Some("panel") => Deliberation::Panel,
            Some("review") => Deliberation::Review,
            Some("debate") => Deliberation::Debate,
            _ => Deliberation::Unspecified,
        }
    }
}

/// Most DEBATE rounds of revision a boardroom may ask for.
pub const MAX_DEBATE_ROUNDS: u32 = 4;

/// A configured panel of advisors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Boardroom {
    pub id: Uuid,
    pub owner_id: String,
    pub name: String,
    pub advisors: Vec<Advisor>,
    /// Entries cached before the field existed read as unspecified.
    #[serde(default)]
    pub double_text: DoubleText,
    /// Entries cached before the field existed read as unspecified.
    #[serde(default)]
    pub deliberation: Deliberation,
    /// DEBATE's rounds of revision; 0: the conversation service's default.
    #[serde(default)]
    pub debate_rounds: u32,
    /// Incremented by every update.
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A user's conversation in a boardroom.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub id: Uuid,
    pub boardroom_id: Uuid,
    pub user_id: String,
    pub title: String,
    pub active: bool,
    pub created_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
}

/// The kind of a thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ThreadType {
    Main,
    Breakout,
    Private,
}

/// The lifecycle state of a thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ThreadStatus {
    Open,
    Paused,
    Closed,
}

macro_rules! stored_enum {
    ($ty:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        impl $ty {
            /// The value stored in the database.
            pub fn as_str(self) -> &'static str {
                match self { $($ty::$variant => $text),+ }
            }
            /// Parses a stored value.
            pub fn parse(text: &str) -> Option<Self> {
                match text { $($text => Some($ty::$variant),)+ _ => None }
            }
        }
    };
}

stored_enum!(ThreadType { Main => "main", Breakout => "breakout", Private => "private" });
stored_enum!(ThreadStatus { Open => "open", Paused => "paused", Closed => "closed" });

/// A line of conversation in a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Thread {
    pub id: Uuid,
    pub session_id: Uuid,
    pub thread_type: ThreadType,
    pub status: ThreadStatus,
    pub title: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A session with its boardroom and every thread, oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionTree {
    pub session: Session,
    pub boardroom: Boardroom,
    pub threads: Vec<Thread>,
}

/// Input of CreateBoardroom.
#[derive(Debug, Clone)]
pub struct NewBoardroom {
    pub owner_id: String,
    pub name: String,
    pub advisors: Vec<Advisor>,
    pub double_text: DoubleText,
    pub deliberation: Deliberation,
    /// 0..=[`MAX_DEBATE_ROUNDS`].
    pub debate_rounds: u32,
    pub request_id: Option<String>,
}

/// Input of UpdateBoardroom: `None` fields are left as they are.
#[derive(Debug, Clone)]
pub struct BoardroomUpdate {
    pub id: Uuid,
    pub name: Option<String>,
    pub advisors: Option<Vec<Advisor>>,
    pub double_text: Option<DoubleText>,
    pub deliberation: Option<Deliberation>,
    pub debate_rounds: Option<u32>,
    /// Fail with [`crate::SessionError::VersionMismatch`] unless the stored version is this.
    pub expected_version: Option<i64>,
}

/// Input of CreateSession.
#[derive(Debug, Clone)]
pub struct NewSession {
    pub boardroom_id: Uuid,
    pub user_id: String,
    pub title: String,
    pub request_id: Option<String>,
}

/// Input of CreateThread.
#[derive(Debug, Clone)]
pub struct NewThread {
    pub session_id: Uuid,
    pub thread_type: ThreadType,
    pub title: String,
    pub request_id: Option<String>,
}

/// Which threads of a session to list.
#[derive(Debug, Clone)]
pub struct ThreadFilter {
    pub session_id: Uuid,
    pub thread_type: Option<ThreadType>,
    pub status: Option<ThreadStatus>,
}

/// A page request: `size` already bounded, `token` as the client sent it.
#[derive(Debug, Clone)]
pub struct PageRequest {
    pub size: u32,
    pub token: Option<String>,
}

/// A page of results and the token of the next one (`None` on the last page).
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_page_token: Option<String>,
}
