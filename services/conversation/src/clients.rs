//! The ports over gRPC: the session service (what a thread is, its boardroom's advisors;
//! cached briefly) implements [`ThreadDirectory`], the LLM gateway (streamed and unary chat)
//! [`ModelCalls`]. Proto types and tonic stay in here; the domain sees `crate::ports`.

use std::sync::Arc;
use std::time::Duration;

use boardroom_proto::llm::v1 as llm;
use boardroom_proto::llm::v1::llm_gateway_service_client::LlmGatewayServiceClient;
use boardroom_proto::session::v1 as session;
use boardroom_proto::session::v1::session_service_client::SessionServiceClient;
use boardroom_runtime::client::{BalancedChannel, OutboundInterceptor};
use futures::StreamExt;
use futures::future::BoxFuture;
use tonic::Code;
use tonic::service::interceptor::InterceptedService;
use uuid::Uuid;

use crate::domain::{Advisor, DoubleText, FailureReason, Mode, ThreadContext, Usage};
use crate::error::{ConversationError, Rejection};
use crate::ports::{
    ChatCall, ChatRole, ModelCalls, ModelError, ModelEvent, ModelStream, ThreadDirectory,
    ToolInvocation,
};

type Intercepted = InterceptedService<BalancedChannel, OutboundInterceptor>;

fn parse_uuid(text: &str, what: &str) -> Result<Uuid, ConversationError> {
    Uuid::parse_str(text)
        .map_err(|_| ConversationError::Internal(format!("the session service sent a bad {what}")))
}

/// A neighbour's status as a domain error that keeps its meaning: what retrying cannot fix
/// (credentials, permission, a request it refuses) is not turned into a retryable UNAVAILABLE.
pub(crate) fn peer_error(service: &str, status: &tonic::Status) -> ConversationError {
    let message = format!("{service}: {}", status.message());
    match status.code() {
        Code::DeadlineExceeded => ConversationError::DeadlineExceeded(message),
        Code::FailedPrecondition => ConversationError::FailedPrecondition(message),
        Code::InvalidArgument => ConversationError::Rejected(Rejection::InvalidArgument, message),
        Code::Unauthenticated => ConversationError::Rejected(Rejection::Unauthenticated, message),
        Code::PermissionDenied => ConversationError::Rejected(Rejection::PermissionDenied, message),
        Code::Ok
        | Code::Cancelled
        | Code::Unknown
        | Code::NotFound
        | Code::AlreadyExists
        | Code::ResourceExhausted
        | Code::Aborted
        | Code::OutOfRange
        | Code::Unimplemented
        | Code::Internal
        | Code::Unavailable
        | Code::DataLoss => ConversationError::Unavailable(message),
    }
}

/// A gateway status as a model failure.
fn model_error(status: tonic::Status) -> ModelError {
    let reason = match status.code() {
        Code::DeadlineExceeded => FailureReason::Timeout,
        Code::ResourceExhausted => FailureReason::RateLimited,
        Code::Cancelled => FailureReason::Cancelled,
        // An unknown alias, bad credentials, a request the gateway refuses: retrying will not
        // help.
        Code::InvalidArgument | Code::NotFound | Code::Unauthenticated | Code::PermissionDenied => {
            FailureReason::Rejected
        }
        _ => FailureReason::Upstream,
    };
    ModelError::new(reason, format!("{:?}: {}", status.code(), status.message()))
}

/// Threads and boardrooms, from the session service, each thread's context cached for
/// `conversation.context_ttl_ms`.
#[derive(Clone)]
pub struct SessionDirectory {
    client: SessionServiceClient<Intercepted>,
    contexts: moka::future::Cache<Uuid, Arc<ThreadContext>>,
}

impl std::fmt::Debug for SessionDirectory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionDirectory").finish_non_exhaustive()
    }
}

impl SessionDirectory {
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
            boardroom_id: parse_uuid(&boardroom.id, "boardroom id")?,
            owner_id: found.user_id,
            writable: found.active && thread.status == session::ThreadStatus::Open as i32,
            double_text: match session::DoubleTextPolicy::try_from(boardroom.double_text) {
                Ok(session::DoubleTextPolicy::Reject) => Some(DoubleText::Reject),
                Ok(session::DoubleTextPolicy::Enqueue) => Some(DoubleText::Enqueue),
                Ok(session::DoubleTextPolicy::Interrupt) => Some(DoubleText::Interrupt),
                Ok(session::DoubleTextPolicy::Unspecified) | Err(_) => None,
            },
            deliberation: match session::DeliberationMode::try_from(boardroom.deliberation) {
                Ok(session::DeliberationMode::Panel) => Some(Mode::Panel),
                Ok(session::DeliberationMode::Review) => Some(Mode::Review),
                Ok(session::DeliberationMode::Debate) => Some(Mode::Debate),
                Ok(session::DeliberationMode::Unspecified) | Err(_) => None,
            },
            debate_rounds: (boardroom.debate_rounds > 0).then_some(boardroom.debate_rounds),
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

    async fn create(
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

impl ThreadDirectory for SessionDirectory {
    /// Concurrent lookups of one thread share one load.
    fn thread(
        &self,
        thread_id: Uuid,
    ) -> BoxFuture<'_, Result<Arc<ThreadContext>, ConversationError>> {
        Box::pin(async move {
            self.contexts
                .try_get_with(thread_id, self.load(thread_id))
                .await
                .map_err(|shared| (*shared).clone())
        })
    }

    fn forget(&self, thread_id: Uuid) -> BoxFuture<'_, ()> {
        Box::pin(async move { self.contexts.invalidate(&thread_id).await })
    }

    fn cached(&self) -> u64 {
        self.contexts.entry_count()
    }

    fn create_thread(
        &self,
        session_id: Uuid,
        title: String,
        request_id: String,
    ) -> BoxFuture<'_, Result<Uuid, ConversationError>> {
        Box::pin(self.create(session_id, title, request_id))
    }
}

/// The LLM gateway.
#[derive(Clone)]
pub struct GatewayModels {
    client: LlmGatewayServiceClient<Intercepted>,
}

impl std::fmt::Debug for GatewayModels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayModels").finish_non_exhaustive()
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

impl GatewayModels {
    /// A gateway client over `channel`.
    pub fn new(channel: BalancedChannel, interceptor: OutboundInterceptor) -> Self {
        Self {
            client: LlmGatewayServiceClient::with_interceptor(channel, interceptor),
        }
    }
}

impl ModelCalls for GatewayModels {
    /// Streams one call. Dropping the stream cancels the call at the gateway (and upstream).
    fn stream(&self, call: ChatCall) -> BoxFuture<'_, Result<ModelStream, ModelError>> {
        Box::pin(async move {
            let (chat, timeout) = chat_request(call);
            let mut request = tonic::Request::new(llm::ChatStreamRequest { chat: Some(chat) });
            request.set_timeout(timeout);
            let stream = self
                .client
                .clone()
                .chat_stream(request)
                .await
                .map_err(model_error)?
                .into_inner();
            let events = stream.filter_map(|item| async move {
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
                    Err(status) => Some(Err(model_error(status))),
                }
            });
            Ok(events.boxed())
        })
    }

    fn complete(&self, call: ChatCall) -> BoxFuture<'_, Result<(String, Usage), ModelError>> {
        Box::pin(async move {
            let (chat, timeout) = chat_request(call);
            let mut request = tonic::Request::new(chat);
            request.set_timeout(timeout);
            let response = self
                .client
                .clone()
                .chat(request)
                .await
                .map_err(model_error)?
                .into_inner();
            let usage = usage_of(&response);
            Ok((
                response.message.map(|m| m.content).unwrap_or_default(),
                usage,
            ))
        })
    }
    fn embed(
        &self,
        model: String,
        texts: Vec<String>,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<Vec<Vec<f32>>, ModelError>> {
        Box::pin(async move {
            let wanted = texts.len();
            let mut request = tonic::Request::new(llm::EmbedRequest {
                model,
                inputs: texts,
                ..llm::EmbedRequest::default()
            });
            request.set_timeout(timeout);
            let response = self
                .client
                .clone()
                .embed(request)
                .await
                .map_err(model_error)?
                .into_inner();
            if response.embeddings.len() != wanted {
                return Err(ModelError::new(
                    FailureReason::Upstream,
                    format!(
                        "Embed answered {} vectors for {wanted} texts",
                        response.embeddings.len()
                    ),
                ));
            }
            Ok(response.embeddings.into_iter().map(|e| e.values).collect())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_s_refusals_keep_their_meaning_and_only_outages_are_retryable() {
        let refusals = [
            (Code::Unauthenticated, Rejection::Unauthenticated),
            (Code::PermissionDenied, Rejection::PermissionDenied),
            (Code::InvalidArgument, Rejection::InvalidArgument),
        ];
        for (code, rejection) in refusals {
            let err = peer_error("session service", &tonic::Status::new(code, "no"));
            assert!(
                matches!(err, ConversationError::Rejected(r, _) if r == rejection),
                "{code:?}: {err:?}"
            );
            let status = tonic::Status::from(err);
            assert_eq!(status.code(), code);
            assert_eq!(
                model_error(tonic::Status::new(code, "no")).reason,
                FailureReason::Rejected
            );
        }
        for code in [Code::Unavailable, Code::Internal, Code::ResourceExhausted] {
            let err = peer_error("session service", &tonic::Status::new(code, "down"));
            assert!(matches!(err, ConversationError::Unavailable(_)), "{err:?}");
        }
        assert_eq!(
            model_error(tonic::Status::unavailable("down")).reason,
            FailureReason::Upstream
        );
    }
}
