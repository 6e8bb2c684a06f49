//! Providers: what answers a deployment. One trait, implementations chosen by config
//! (`mock`, the embedded default; `openai`, any OpenAI-compatible HTTP endpoint, and Azure
//! OpenAI on the same wire format; `anthropic`, Anthropic's Messages API; `gemini`, Google's
//! Gemini API).

pub mod anthropic;
pub mod gemini;
pub mod http;
pub mod mock;
pub mod openai;

use std::pin::Pin;
use std::time::Duration;

use futures::Stream;
use futures::future::BoxFuture;

use crate::domain::{ChatRequest, Chunk, Completion, Embeddings};

/// A stream of answer pieces; ends after `Chunk::Done`, or with an error.
pub type ChunkStream = Pin<Box<dyn Stream<Item = Result<Chunk, ProviderError>> + Send>>;

/// What went wrong upstream.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProviderError {
    /// No connection (refused, reset, DNS): retryable.
    #[error("connect: {0}")]
    Connect(String),
    /// An HTTP error status; 429 and 5xx are retryable.
    #[error("upstream answered {status}: {body}")]
    Status {
        /// The HTTP status.
        status: u16,
        /// `Retry-After`, when given.
        retry_after: Option<Duration>,
        /// The start of the body, for the log.
        body: String,
    },
    /// A time bound passed: "headers", "first token" or "total".
    #[error("no {0} in time")]
    Timeout(&'static str),
    /// The answer was not what the protocol says: not retried here, but another deployment
    /// may do better.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The stream broke after it started: never retried (tokens were sent).
    #[error("stream broken: {0}")]
    StreamBroken(String),
    /// The provider refuses until a quota or spend limit resets (a 429 without
    /// `Retry-After`): not retried here, but another deployment may answer.
    #[error("quota exhausted: {0}")]
    Exhausted(String),
    /// The provider has no such API (Anthropic has no embeddings): the request is wrong for
    /// this alias.
    #[error("{0} is not offered by this provider")]
    Unsupported(&'static str),
}

impl ProviderError {
    /// Whether the same deployment may be tried again.
    pub fn retryable(&self) -> bool {
        match self {
            Self::Connect(_) | Self::Timeout(_) => true,
            Self::Status { status, .. } => *status == 429 || *status >= 500,
            Self::Protocol(_)
            | Self::StreamBroken(_)
            | Self::Exhausted(_)
            | Self::Unsupported(_) => false,
        }
    }

    /// Whether the request itself is at fault (400, 413, 422): no other deployment would take
    /// it either. A 401, 403 or 404 is the deployment's (a revoked key, a wrong model name), so
    /// the next deployment is tried; so is one that lacks the API asked for.
    pub fn caller_fault(&self) -> bool {
        matches!(
            self,
            Self::Status {
                status: 400 | 413 | 422,
                ..
            }
        )
    }

    /// Its kind, for `error.type` on the call's span.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Connect(_) => "connect",
            Self::Status { .. } => "status",
            Self::Timeout(_) => "timeout",
            Self::Protocol(_) => "protocol",
            Self::StreamBroken(_) => "stream_broken",
            Self::Exhausted(_) => "exhausted",
            Self::Unsupported(_) => "unsupported",
        }
    }

    /// The upstream's `Retry-After`.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// One deployment's model behind one endpoint.
pub trait Provider: Send + Sync + 'static {
    /// A complete answer.
    fn chat<'a>(
        &'a self,
        request: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<Completion, ProviderError>>;

    /// An answer as it is generated. Resolves once the upstream accepted the request (its
    /// headers arrived); the first chunk may take longer.
    fn chat_stream<'a>(
        &'a self,
        request: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<ChunkStream, ProviderError>>;

    /// Embeddings of `inputs`, in order.
    fn embed<'a>(
        &'a self,
        inputs: &'a [String],
    ) -> BoxFuture<'a, Result<Embeddings, ProviderError>>;
}

/// The JSON object a tool call's arguments hold (`{}` when empty; a value that is not an
/// object is wrapped as `{"value": …}`, since the providers that take objects reject others).
pub fn arguments_object(arguments: &str) -> serde_json::Value {
    match serde_json::from_str::<serde_json::Value>(arguments) {
        Ok(value @ serde_json::Value::Object(_)) => value,
        Ok(other) => serde_json::json!({ "value": other }),
        Err(_) if arguments.trim().is_empty() => serde_json::json!({}),
        Err(_) => serde_json::json!({ "value": arguments }),
    }
}

/// An error object inside an HTTP 200 stream (`{"error": {"code", "message", …}}`): a
/// failure, as the HTTP status its code names (500 when it names none), never the end of a
/// successful answer.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct StreamedError {
    /// A number (Gemini, some OpenAI-compatible servers) or a string.
    #[serde(default)]
    pub code: serde_json::Value,
    /// What happened.
    #[serde(default)]
    pub message: String,
}

impl StreamedError {
    /// As the error of an HTTP status.
    pub fn into_error(self) -> ProviderError {
        let status = self
            .code
            .as_u64()
            .and_then(|c| u16::try_from(c).ok())
            .filter(|c| (400..600).contains(c))
            .unwrap_or(500);
        ProviderError::Status {
            status,
            retry_after: None,
            body: format!("error in the stream: {}", self.message),
        }
    }
}

/// For `#[serde(deserialize_with)]`: an explicit `null` as the default, as a missing field
/// (OpenAI-compatible servers write `"tool_calls": null`).
pub fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + serde::Deserialize<'de>,
{
    Ok(<Option<T> as serde::Deserialize>::deserialize(deserializer)?.unwrap_or_default())
}

/// A tool's JSON Schema as a value (`{"type": "object"}` when none is given).
pub fn schema_object(parameters: &str) -> serde_json::Value {
    serde_json::from_str(parameters).unwrap_or_else(|_| serde_json::json!({"type": "object"}))
}

/// Rough token count of a text (4 bytes a token), for providers that do not count.
pub fn estimate_tokens(text: &str) -> u32 {
    u32::try_from(text.len().div_ceil(4)).unwrap_or(u32::MAX)
}
