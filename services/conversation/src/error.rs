//! Errors of the conversation domain.

use boardroom_runtime::status::Violations;
use sea_orm::DbErr;

/// Everything a conversation operation can fail with.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConversationError {
    /// The request is malformed; nothing was written.
    #[error("invalid request: {0:?}")]
    Invalid(Violations),
    /// No such thread, checkpoint or turn.
    #[error("{kind} {id} not found")]
    NotFound { kind: &'static str, id: String },
    /// The thread does not accept this now (closed, ended session).
    #[error("{0}")]
    FailedPrecondition(String),
    /// Another writer holds the thread (a turn is running); retry later.
    #[error("{0}")]
    Aborted(String),
    /// A dependency (database, session service, gateway) cannot be reached.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// Every advisor of a turn failed.
    #[error("no advisor answered")]
    NoAnswer,
    /// The call's deadline passed.
    #[error("deadline exceeded: {0}")]
    DeadlineExceeded(String),
    /// A bug or a corrupt row.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ConversationError {
    /// A single-field validation error.
    pub fn invalid(field: &str, description: impl Into<String>) -> Self {
        ConversationError::Invalid(Violations::one(field, description))
    }

    /// A missing entity.
    pub fn not_found(kind: &'static str, id: impl ToString) -> Self {
        ConversationError::NotFound {
            kind,
            id: id.to_string(),
        }
    }
}

impl From<Violations> for ConversationError {
    fn from(v: Violations) -> Self {
        ConversationError::Invalid(v)
    }
}

impl From<DbErr> for ConversationError {
    fn from(err: DbErr) -> Self {
        if boardroom_runtime::db::is_connection_failure(&err) {
            ConversationError::Unavailable(format!("database: {err}"))
        } else {
            ConversationError::Internal(format!("database: {err}"))
        }
    }
}
