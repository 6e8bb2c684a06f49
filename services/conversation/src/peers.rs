//! The services a turn calls: the session service (what a thread is, its boardroom's
//! advisors; cached briefly) and the LLM gateway (streamed and unary chat). Proto types stay
//! in here; the workflow sees domain types.

use std::sync::Arc;
use std::time::Duration;

use boardroom_proto::llm::v1 as llm;
use boardroom_proto::llm::v1::llm_gateway_service_client::LlmGatewayServiceClient;
use boardroom_proto::session::v1 as session;
use boardroom_proto::session::v1::session_service_client::SessionServiceClient;
use boardroom_runtime::client::{BalancedChannel, OutboundInterceptor};
use futures::{Stream, StreamExt};
use tonic::Code;
use tonic::service::interceptor::InterceptedService;
use uuid::Uuid;

use crate::domain::{Advisor, FailureReason, ThreadContext, Usage};
use crate::error::ConversationError;

type Intercepted = InterceptedService<BalancedChannel, OutboundInterceptor>;

fn parse_uuid(text: &str, what: &str) -> Result<Uuid, ConversationError> {
    Uuid::parse_str(text)
        .map_err(|_| ConversationError::Internal(format!("the session service sent a bad {what}")))
}

fn peer_error(service: &str, status: &tonic::Status) -> ConversationError {
    match status.code() {
        Code::DeadlineExceeded => {
            ConversationError::DeadlineExceeded(format!("{service}: {}", status.message()))
        }
        Code::InvalidArgument | Code::FailedPrecondition => {
            ConversationError::FailedPrecondition(format!("{service}: {}", status.message()))
        }
        _ => ConversationError::Unavailable(format!("{service}: {}", status.message())),
    }
}

/// Threads and boardrooms, from the session service, each thread's context cached for
/// `conversation.context_ttl_ms`.
#[derive(Clone)]
pub struct Directory {
    client: SessionServiceClient<Intercepted>,
    contexts: moka::future::Cache<Uuid, Arc<ThreadContext>>,
}

impl std::fmt::Debug for Directory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Directory").finish_non_exhaustive()
    }
}

impl Directory {
    /// A directory over `channel`, caching up to 100k thread contexts for `ttl`.
    pub fn new(channel: BalancedChannel, interceptor: OutboundInterceptor, ttl: Duration) -> Self {
        Self {
            client: SessionServiceClient::with_interceptor(channel, interceptor),
            contexts: moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(ttl)
                .build(),
        }
    }

    /// The thread's session, writability and advisors. Concurrent lookups of one thread
    /// share one load.
    pub async fn thread(&self, thread_id: Uuid) -> Result<Arc<ThreadContext>, ConversationError> {
        self.contexts
            .try_get_with(thread_id, self.load(thread_id))
            .await
            .map_err(|shared| (*shared).clone())
    }

    /// Forgets a cached context (after a change this service made).
    pub async fn forget(&self, thread_id: Uuid) {
        self.contexts.invalidate(&thread_id).await;
    }

    async fn load(&self, thread_id: Uuid) -> Result<Arc<ThreadContext>, ConversationError> {
        let mut client = self.client.clone();
        let thread = client
            .get_thread(session::GetThreadRequest {
                id: thread_id.to_string(),
            })
            .await
            .map_err(|status| match status.code() {
                Code::NotFound => ConversationError::not_found("thread", thread_id),
                _ => peer_error("session service", &status),
            })?
            .into_inner()
            .thread
            .ok_or_else(|| ConversationError::Internal("GetThread answered no thread".into()))?;
        let session_id = parse_uuid(&thread.session_id, "session id")?;
        let found = client
            .get_session(session::GetSessionRequest {
                id: thread.session_id.clone(),
            })
            .await
            .map_err(|s| peer_error("session service", &s))?
            .into_inner()
            .session
            .ok_or_else(|| ConversationError::Internal("GetSession answered no session".into()))?;
        let boardroom = client
            .get_boardroom(session::GetBoardroomRequest {
                id: found.boardroom_id.clone(),
            })
            .await
            .map_err(|s| peer_error("session service", &s))?
            .into_inner()
            .boardroom
            .ok_or_else(|| {
                ConversationError::Internal("GetBoardroom answered no boardroom".into())
            })?;
        Ok(Arc::new(ThreadContext {
            thread_id,
            session_id,
            writable: found.active && thread.status == session::ThreadStatus::Open as i32,
            advisors: boardroom
                .advisors
                .into_iter()
                .map(|a| Advisor {
                    name: a.name,
                    role: a.role,
                    system_prompt: a.system_prompt,
                    model: a.model,
                })
                .collect(),
        }))
    }

    /// Creates a breakout thread in `session_id` (idempotent by `request_id`).
    pub async fn create_thread(
        &self,
        session_id: Uuid,
        title: String,
        request_id: String,
    ) -> Result<Uuid, ConversationError> {
        let thread = self
            .client
            .clone()
            .create_thread(session::CreateThreadRequest {
                session_id: session_id.to_string(),
                thread_type: session::ThreadType::Breakout as i32,
                title,
                request_id,
            })
            .await
            .map_err(|s| peer_error("session service", &s))?
            .into_inner()
            .thread
            .ok_or_else(|| ConversationError::Internal("CreateThread answered no thread".into()))?;
        parse_uuid(&thread.id, "thread id")
    }
}

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

impl From<tonic::Status> for ModelError {
    fn from(status: tonic::Status) -> Self {
        let reason = match status.code() {
            Code::DeadlineExceeded => FailureReason::Timeout,
            Code::ResourceExhausted => FailureReason::RateLimited,
            Code::Cancelled => FailureReason::Cancelled,
            _ => FailureReason::Upstream,
        };
        ModelError {
            reason,
            message: format!("{:?}: {}", status.code(), status.message()),
        }
    }
}

/// The LLM gateway.
#[derive(Clone)]
pub struct Gateway {
    client: LlmGatewayServiceClient<Intercepted>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").finish_non_exhaustive()
    }
}

fn chat_request(call: ChatCall) -> (llm::ChatRequest, Duration) {
    let messages = call
        .messages
        .into_iter()
        .map(|m| llm::Message {
            role: match m.role {
                ChatRole::System => llm::Role::System,
                ChatRole::User => llm::Role::User,
                ChatRole::Assistant => llm::Role::Assistant,
                ChatRole::Tool => llm::Role::Tool,
            } as i32,
            content: m.content,
            tool_calls: m
                .tool_calls
                .into_iter()
                .map(|c| llm::ToolCall {
                    id: c.id,
                    name: c.name,
                    arguments_json: c.arguments_json,
                })
                .collect(),
            tool_call_id: m.tool_call_id,
            name: String::new(),
        })
        .collect();
    let tools = call
        .tools
        .iter()
        .map(|t| llm::Tool {
            name: t.name.to_owned(),
            description: t.description.to_owned(),
            parameters_json_schema: t.parameters_json_schema.to_owned(),
        })
        .collect();
    (
        llm::ChatRequest {
            model: call.model,
            messages,
            tools,
            temperature: Some(call.temperature),
            max_tokens: Some(call.max_tokens),
            request_id: call.request_id,
            ..llm::ChatRequest::default()
        },
        call.timeout,
    )
}

fn usage_of(done: &llm::ChatResponse) -> Usage {
    done.usage
        .map(|u| Usage {
            input_tokens: u.input_tokens,
            output_tokens: u.output_tokens,
            cost_micros: u.cost_micros,
        })
        .unwrap_or_default()
}

impl Gateway {
    /// A gateway client over `channel`.
    pub fn new(channel: BalancedChannel, interceptor: OutboundInterceptor) -> Self {
        Self {
            client: LlmGatewayServiceClient::with_interceptor(channel, interceptor),
        }
    }

    /// Streams one call. Dropping the stream cancels the call at the gateway (and upstream).
    pub async fn stream(
        &self,
        call: ChatCall,
    ) -> Result<impl Stream<Item = Result<ModelEvent, ModelError>> + Send + 'static, ModelError>
    {
        let (chat, timeout) = chat_request(call);
        let mut request = tonic::Request::new(llm::ChatStreamRequest { chat: Some(chat) });
        request.set_timeout(timeout);
        let stream = self.client.clone().chat_stream(request).await?.into_inner();
        Ok(stream.filter_map(|item| async move {
            match item {
                Ok(llm::ChatStreamResponse { event: Some(event) }) => Some(Ok(match event {
                    llm::chat_stream_response::Event::Delta(text) => ModelEvent::Delta(text),
                    llm::chat_stream_response::Event::ToolCall(c) => {
                        ModelEvent::ToolCall(ToolInvocation {
                            id: c.id,
                            name: c.name,
                            arguments_json: c.arguments_json,
                        })
                    }
                    llm::chat_stream_response::Event::Done(done) => {
                        ModelEvent::Done(usage_of(&done))
                    }
                })),
                Ok(llm::ChatStreamResponse { event: None }) => None,
                Err(status) => Some(Err(ModelError::from(status))),
            }
        }))
    }

    /// One call, whole.
    pub async fn complete(&self, call: ChatCall) -> Result<(String, Usage), ModelError> {
        let (chat, timeout) = chat_request(call);
        let mut request = tonic::Request::new(chat);
        request.set_timeout(timeout);
        let response = self.client.clone().chat(request).await?.into_inner();
        let usage = usage_of(&response);
        Ok((
            response.message.map(|m| m.content).unwrap_or_default(),
            usage,
        ))
    }
}
