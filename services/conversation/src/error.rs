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
    /// The thread's queue of waiting turns is full.
    #[error("{0}")]
    QueueFull(String),
    /// A dependency (database, session service, gateway) cannot be reached.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// Too many turns run on this instance for its CPU (the turn gate): retry after the
    /// seconds given.
    #[error("too many turns running: this instance is short of CPU")]
    Overloaded { retry_after_secs: u64 },
    /// Every advisor of a turn failed.
    #[error("no advisor answered")]
    NoAnswer,
    /// A neighbour refused a call for a reason that retrying does not fix; its code is kept.
    #[error("{1}")]
    Rejected(Rejection, String),
    /// The call's deadline passed.
    #[error("deadline exceeded: {0}")]
    DeadlineExceeded(String),
    /// A bug or a corrupt row.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Why a neighbour refused a call (its gRPC code, passed on as is).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// UNAUTHENTICATED: this service's credentials were not accepted.
    Unauthenticated,
    /// PERMISSION_DENIED.
    PermissionDenied,
    /// INVALID_ARGUMENT: the neighbour refuses the request as made.
    InvalidArgument,
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

/// A database error is logged here, with its text; what goes on (and may reach a client)
/// names no table, statement or value.
impl From<DbErr> for ConversationError {
    fn from(err: DbErr) -> Self {
        if boardroom_runtime::db::is_refused(&err) {
            // Overload refuses many calls: counted (db_client_refused_total), not logged.
            ConversationError::Unavailable(boardroom_runtime::db::REFUSED.into())
        } else if boardroom_runtime::db::is_connection_failure(&err) {
            tracing::warn!(error = %err, "the database cannot be reached");
            ConversationError::Unavailable("the database cannot be reached".into())
        } else {
            tracing::error!(error = %err, "a database statement failed");
            ConversationError::Internal("a database statement failed".into())
        }
    }
}
