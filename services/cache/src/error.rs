//! Errors of the cache service, and their gRPC codes.

use boardroom_runtime::status::Violations;
use tonic::Status;

/// What a cache call can fail with (the cache itself never fails a call).
#[derive(Debug, Clone, thiserror::Error)]
pub enum CacheServiceError {
    /// Fields out of bounds: `(field, what is wrong)`.
    #[error("invalid argument: {0:?}")]
    InvalidArgument(Violations),
    /// The caller asked for a namespace that is not its own.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
}

impl CacheServiceError {
    /// One field violation.
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self::InvalidArgument(Violations::one(field, description))
    }
}

impl From<Violations> for CacheServiceError {
    fn from(violations: Violations) -> Self {
        Self::InvalidArgument(violations)
    }
}

impl From<CacheServiceError> for Status {
    fn from(err: CacheServiceError) -> Self {
        match err {
            CacheServiceError::InvalidArgument(violations) => violations.to_status(),
            CacheServiceError::PermissionDenied(message) => Status::permission_denied(message),
        }
    }
}
