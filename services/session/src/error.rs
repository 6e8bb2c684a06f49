//! Errors of the session domain.

use boardroom_runtime::status::Violations;
use sea_orm::{DbErr, SqlErr};

/// Everything a session operation can fail with.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SessionError {
    /// The request is malformed; nothing was written.
    #[error("invalid request: {0}")]
    Invalid(Violations),
    /// No such entity.
    #[error("{kind} {id} not found")]
    NotFound { kind: &'static str, id: String },
    /// An optimistic-concurrency check failed.
    #[error("boardroom version is {actual}, not the expected {expected}")]
    VersionMismatch { expected: i64, actual: i64 },
    /// The operation does not apply to the entity's current state.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The database cannot be reached or is overloaded; the caller may retry.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// Refused at once: the database pool has a standing queue; the caller may retry.
    #[error("{}", boardroom_runtime::db::REFUSED)]
    Overloaded,
    /// A bug or a corrupt row.
    #[error("internal error: {0}")]
    Internal(String),
}

impl SessionError {
    /// A single-field validation error.
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        SessionError::Invalid(Violations::one(field, description))
    }
}

impl From<Violations> for SessionError {
    fn from(v: Violations) -> Self {
        SessionError::Invalid(v)
    }
}

impl From<DbErr> for SessionError {
    fn from(err: DbErr) -> Self {
        match &err {
            DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => {
                SessionError::Unavailable(err.to_string())
            }
            _ if boardroom_runtime::db::is_refused(&err) => SessionError::Overloaded,
            _ => match err.sql_err() {
                Some(SqlErr::ForeignKeyConstraintViolation(msg)) => {
                    SessionError::FailedPrecondition(format!(
                        "referenced entity does not exist: {msg}"
                    ))
                }
                _ if boardroom_runtime::db::is_connection_failure(&err) => {
                    SessionError::Unavailable(err.to_string())
                }
                _ => SessionError::Internal(err.to_string()),
            },
        }
    }
}
