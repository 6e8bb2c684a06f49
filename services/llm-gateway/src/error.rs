//! Errors of the gateway, and their gRPC codes.

use std::time::Duration;

use boardroom_runtime::status::{Violations, unavailable};
use tonic::Status;

/// What a gateway call can fail with.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GatewayError {
    /// Fields out of bounds: `(field, what is wrong)`.
    #[error("invalid argument: {0:?}")]
    InvalidArgument(Violations),
    /// No such model alias.
    #[error("unknown model `{0}`")]
    UnknownModel(String),
    /// `CACHE_ONLY` and nothing cached.
    #[error("not in the cache")]
    NotCached,
    /// The upstream rejected the request itself (a 4xx other than 429).
    #[error("the provider rejected the request: {0}")]
    Rejected(String),
    /// Every deployment failed or is open-circuited.
    #[error("{message}")]
    Unavailable {
        /// What happened last.
        message: String,
        /// When to come back, when an upstream said.
        retry_after: Option<Duration>,
    },
    /// The caller's deadline passed.
    #[error("deadline exceeded")]
    DeadlineExceeded,
    /// The caller is over one of its limits.
    #[error("{message}")]
    ResourceExhausted {
        /// Which limit.
        message: String,
        /// When enough budget is back.
        retry_after: Duration,
    },
}

impl GatewayError {
    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::InvalidArgument(_) => "invalid_argument",
            Self::UnknownModel(_) => "unknown_model",
            Self::NotCached => "not_cached",
            Self::Rejected(_) => "rejected",
            Self::Unavailable { .. } => "unavailable",
            Self::DeadlineExceeded => "deadline_exceeded",
            Self::ResourceExhausted { .. } => "resource_exhausted",
        }
    }
}

impl From<Violations> for GatewayError {
    fn from(violations: Violations) -> Self {
        Self::InvalidArgument(violations)
    }
}

impl From<GatewayError> for Status {
    fn from(err: GatewayError) -> Self {
        match err {
            GatewayError::InvalidArgument(violations) => violations.to_status(),
            GatewayError::UnknownModel(model) => {
                Status::not_found(format!("unknown model alias `{model}`"))
            }
            GatewayError::NotCached => {
                Status::not_found("no cached answer (cache policy CACHE_ONLY)")
            }
            GatewayError::Rejected(message) => Status::invalid_argument(message),
            GatewayError::Unavailable {
                message,
                retry_after,
            } => unavailable(
                message,
                retry_after.map_or(1, |d| u32::try_from(d.as_secs().max(1)).unwrap_or(u32::MAX)),
            ),
            GatewayError::DeadlineExceeded => Status::deadline_exceeded("deadline exceeded"),
            GatewayError::ResourceExhausted {
                message,
                retry_after,
            } => {
                let mut status = Status::resource_exhausted(message);
                let secs = retry_after.as_secs_f64().ceil().max(1.0) as u64;
                if let Ok(value) = secs.to_string().parse() {
                    status.metadata_mut().insert("retry-after", value);
                }
                status
            }
        }
    }
}
