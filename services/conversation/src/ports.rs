//! What the conversation domain needs from the outside, in domain types only: model calls
//! (the LLM gateway in production) and thread lookups (the session service). Each is a trait;
//! `crate::clients` implements them over gRPC, and the workflow's unit tests over memory.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use uuid::Uuid;

use crate::domain::{FailureReason, ThreadContext, Usage};
use crate::error::ConversationError;

/// Who wrote a message of a model call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatRole {
    System,
    User,
    Assistant,
    Tool,
}

/// A tool call a model asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolInvocation {
    pub id: String,
    pub name: String,
    pub arguments_json: String,
}

/// One message of a model call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    pub role: ChatRole,
    pub content: String,
    pub tool_calls: Vec<ToolInvocation>,
    pub tool_call_id: String,
}

impl ChatMessage {
    /// A message with text only.
    pub fn text(role: ChatRole, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: String::new(),
        }
    }
}

/// A tool offered to the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolSpec {
    pub name: &'static str,
    pub description: &'static str,
    pub parameters_json_schema: &'static str,
}

/// One model call.
#[derive(Debug, Clone)]
pub struct ChatCall {
    pub model: String,
    pub messages: Vec<ChatMessage>,
    pub tools: Vec<ToolSpec>,
    pub temperature: f32,
    pub max_tokens: u32,
    pub request_id: String,
    /// The whole call's bound, passed on to the callee as its deadline.
    pub timeout: Duration,
}

/// What a streamed model call produces.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelEvent {
    Delta(String),
    ToolCall(ToolInvocation),
    Done(Usage),
}

/// A model call that failed, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelError {
    pub reason: FailureReason,
    pub message: String,
}

impl ModelError {
    /// A failure of `reason`.
    pub fn new(reason: FailureReason, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }
}

/// A streamed model call's events. Dropping it cancels the call.
pub type ModelStream = BoxStream<'static, Result<ModelEvent, ModelError>>;

/// Model calls: the LLM gateway in production.
pub trait ModelCalls: Send + Sync + 'static {
    /// Starts a streamed call.
    fn stream(&self, call: ChatCall) -> BoxFuture<'_, Result<ModelStream, ModelError>>;

    /// One call, whole: its text and usage.
    fn complete(&self, call: ChatCall) -> BoxFuture<'_, Result<(String, Usage), ModelError>>;

    /// Embeddings of `texts` by the embedding `model`, one per text, in order, within
    /// `timeout`. Models without embeddings refuse.
    fn embed(
        &self,
        model: String,
        texts: Vec<String>,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<Vec<Vec<f32>>, ModelError>> {
        let _ = (model, texts, timeout);
        Box::pin(async {
            Err(ModelError::new(
                FailureReason::Rejected,
                "these model calls have no embeddings",
            ))
        })
    }
}

/// Threads and their boardrooms: the session service in production.
pub trait ThreadDirectory: Send + Sync + 'static {
    /// The thread's session, writability and advisors (`NotFound` for an unknown thread).
    fn thread(
        &self,
        thread_id: Uuid,
    ) -> BoxFuture<'_, Result<Arc<ThreadContext>, ConversationError>>;

    /// Forgets what is cached of a thread, so the next lookup asks again.
    fn forget(&self, thread_id: Uuid) -> BoxFuture<'_, ()>;

    /// Creates a breakout thread in `session_id` (idempotent by `request_id`).
    fn create_thread(
        &self,
        session_id: Uuid,
        title: String,
        request_id: String,
    ) -> BoxFuture<'_, Result<Uuid, ConversationError>>;

    /// Thread lookups held in memory now (for the resident-size gauges; 0 where none are).
    fn cached(&self) -> u64 {
        0
    }
}
