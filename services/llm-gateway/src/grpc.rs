//! The gRPC skin of the gateway.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use boardroom_proto::llm::v1 as pb;
use boardroom_proto::llm::v1::llm_gateway_service_server::LlmGatewayService;
use boardroom_runtime::auth::CallerIdentity;
use boardroom_runtime::inbound::CallDeadline;
use boardroom_runtime::status::Violations;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::conversions::{self as conv, RequestLimits};
use crate::domain::{CacheOutcome, ChatRequest, Chunk, Completion};
use crate::error::GatewayError;
use crate::gateway::Gateway;
use crate::limits::{Admission, Limiter};
use crate::provider::estimate_tokens;

/// Implements `boardroom.llm.v1.LlmGatewayService`.
#[derive(Clone)]
pub struct LlmGrpc {
    gateway: Arc<Gateway>,
    limiter: Arc<Limiter>,
    limits: RequestLimits,
    stream_flush: Duration,
}

impl std::fmt::Debug for LlmGrpc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlmGrpc").finish_non_exhaustive()
    }
}

impl LlmGrpc {
    /// Serves `gateway`; streamed text after the first delta is sent at most every
    /// `stream_flush` (zero: every delta as it comes).
    pub fn new(
        gateway: Arc<Gateway>,
        limiter: Arc<Limiter>,
        limits: RequestLimits,
        stream_flush: Duration,
    ) -> Self {
        Self {
            gateway,
            limiter,
            limits,
            stream_flush,
        }
    }

    /// Reserves the call's tokens against the caller's budget.
    fn admit(&self, caller: &str, chat: &ChatRequest) -> Result<Admission, GatewayError> {
        let prompt: u32 = chat
            .messages
            .iter()
            .map(|m| estimate_tokens(&m.content))
            .sum();
        self.limiter.admit(
            caller,
            self.limiter.reservation(prompt, chat.params.max_tokens),
        )
    }
}

/// The caller's name for accounting ("anonymous" without authentication).
fn caller<T>(request: &Request<T>) -> String {
    request
        .extensions()
        .get::<CallerIdentity>()
        .map_or_else(|| "anonymous".to_owned(), |c| c.name().to_owned())
}

fn deadline<T>(request: &Request<T>) -> Instant {
    request
        .extensions()
        .get::<CallDeadline>()
        .map_or_else(|| Instant::now() + Duration::from_secs(30), |d| d.0)
}

type ChatEvents = Pin<Box<dyn Stream<Item = Result<pb::ChatStreamResponse, Status>> + Send>>;

/// Sends the text held back as one delta (nothing when none is); `false` when the caller is
/// gone.
async fn flush(
    tx: &mpsc::Sender<Result<pb::ChatStreamResponse, Status>>,
    held: &mut String,
    last_sent: &mut Option<tokio::time::Instant>,
) -> bool {
    if held.is_empty() {
        return true;
    }
    *last_sent = Some(tokio::time::Instant::now());
    let text = std::mem::take(held);
    tx.send(Ok(event(pb::chat_stream_response::Event::Delta(text))))
        .await
        .is_ok()
}

fn event(event: pb::chat_stream_response::Event) -> pb::ChatStreamResponse {
    pb::ChatStreamResponse { event: Some(event) }
}

#[tonic::async_trait]
impl LlmGatewayService for LlmGrpc {
    async fn chat(
        &self,
        request: Request<pb::ChatRequest>,
    ) -> Result<Response<pb::ChatResponse>, Status> {
        let (caller, deadline) = (caller(&request), deadline(&request));
        let chat = conv::chat_request(request.into_inner(), self.limits)?;
        let admission = self.admit(&caller, &chat)?;
        let answer = self.gateway.chat(chat, deadline, &caller).await;
        admission.settle(match &answer {
            Ok(a) if a.cache == CacheOutcome::Miss => {
                let usage = a.completion.usage;
                u64::from(usage.input_tokens) + u64::from(usage.output_tokens)
            }
            _ => 0,
        });
        Ok(Response::new(conv::answer(answer?)))
    }

    type ChatStreamStream = ChatEvents;

    async fn chat_stream(
        &self,
        request: Request<pb::ChatStreamRequest>,
    ) -> Result<Response<Self::ChatStreamStream>, Status> {
        let (caller, deadline) = (caller(&request), deadline(&request));
        let Some(chat) = request.into_inner().chat else {
            return Err(GatewayError::InvalidArgument(Violations::one("chat", "required")).into());
        };
        let chat = conv::chat_request(chat, self.limits)?;
        let admission = self.admit(&caller, &chat)?;
        let answer = match self.gateway.chat_stream(chat, deadline).await {
            Ok(answer) => answer,
            Err(err) => {
                admission.settle(0);
                return Err(err.into());
            }
        };
        let (mut chunks, meta) = (answer.chunks, answer.meta);
        let (tx, rx) = mpsc::channel(64);
        let gateway = self.gateway.clone();
        let flush_every = self.stream_flush;
        // Owned by the call: ends when the caller goes away (dropping the upstream stream
        // cancels the upstream request), at the deadline, or at the end of the answer.
        #[allow(clippy::disallowed_methods)]
        tokio::spawn(async move {
            let first_at = Instant::now();
            let mut content = String::new();
            let mut calls = Vec::new();
            // Text held back until `flush_every` after the last delta sent: one message (one
            // write, one wake-up at each hop) for the tokens of that window. The first delta
            // goes at once, so the time to the first token is the model's.
            let mut held = String::new();
            let mut last_sent: Option<tokio::time::Instant> = None;
            loop {
                let flush_at = last_sent.map(|at| at + flush_every);
                let next = tokio::select! {
                    _ = tx.closed() => return,
                    _ = async {
                        match flush_at {
                            Some(at) => tokio::time::sleep_until(at).await,
                            None => std::future::pending().await,
                        }
                    }, if !held.is_empty() => {
                        if !flush(&tx, &mut held, &mut last_sent).await {
                            return;
                        }
                        continue;
                    }
                    next = tokio::time::timeout_at(deadline.into(), chunks.next()) => next,
                };
                if let Ok(Some(Ok(Chunk::Delta(text)))) = next {
                    content.push_str(&text);
                    held.push_str(&text);
                    let due = flush_at.is_none_or(|at| tokio::time::Instant::now() >= at);
                    if due && !flush(&tx, &mut held, &mut last_sent).await {
                        return;
                    }
                    continue;
                }
                // Anything else goes after the text held back.
                if !flush(&tx, &mut held, &mut last_sent).await {
                    return;
                }
                let message = match next {
                    Err(_) => Err(Status::deadline_exceeded("deadline exceeded mid-stream")),
                    Ok(None) => Err(Status::unavailable(
                        "the upstream stream ended without a finish",
                    )),
                    Ok(Some(Err(err))) => {
                        gateway.stream_broke(&meta);
                        Err(Status::unavailable(format!(
                            "the upstream stream broke: {err}"
                        )))
                    }
                    // Handled above.
                    Ok(Some(Ok(Chunk::Delta(_)))) => continue,
                    Ok(Some(Ok(Chunk::ToolCall(call)))) => {
                        calls.push(call.clone());
                        Ok(event(pb::chat_stream_response::Event::ToolCall(
                            conv::tool_call(call),
                        )))
                    }
                    Ok(Some(Ok(Chunk::Done {
                        finish_reason,
                        usage,
                        model,
                    }))) => {
                        let completion = Completion {
                            content: std::mem::take(&mut content),
                            tool_calls: std::mem::take(&mut calls),
                            finish_reason,
                            usage,
                            model,
                        };
                        let used = u64::from(completion.usage.input_tokens)
                            + u64::from(completion.usage.output_tokens);
                        let cost = gateway
                            .finish_stream(&meta, completion.clone(), &caller, first_at.elapsed())
                            .await;
                        admission.settle(if meta.cache == CacheOutcome::Miss {
                            used
                        } else {
                            0
                        });
                        let done = conv::chat_response(
                            completion,
                            meta.deployment.clone(),
                            meta.cache,
                            cost,
                            false,
                        );
                        let _ = tx
                            .send(Ok(event(pb::chat_stream_response::Event::Done(done))))
                            .await;
                        return;
                    }
                };
                let failed = message.is_err();
                if tx.send(message).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn embed(
        &self,
        request: Request<pb::EmbedRequest>,
    ) -> Result<Response<pb::EmbedResponse>, Status> {
        let (caller, deadline) = (caller(&request), deadline(&request));
        let request = request.into_inner();
        let mut violations = Violations::default();
        if request.model.is_empty() {
            violations.add("model", "must not be empty");
        }
        if request.inputs.is_empty() {
            violations.add("inputs", "must hold at least one text");
        }
        if request.inputs.iter().map(String::len).sum::<usize>() > self.limits.max_prompt_bytes {
            violations.add(
                "inputs",
                format!(
                    "over the limit llm.max_prompt_bytes ({})",
                    self.limits.max_prompt_bytes
                ),
            );
        }
        violations.finish(()).map_err(GatewayError::from)?;
        let prompt: u32 = request.inputs.iter().map(|t| estimate_tokens(t)).sum();
        let admission = self.limiter.admit(&caller, u64::from(prompt))?;
        let embedded = self
            .gateway
            .embed(&request.model, request.inputs, deadline, &caller)
            .await;
        admission.settle(
            embedded
                .as_ref()
                .map_or(0, |(e, _)| u64::from(e.usage.input_tokens)),
        );
        let (embeddings, deployment) = embedded?;
        Ok(Response::new(pb::EmbedResponse {
            embeddings: embeddings
                .vectors
                .into_iter()
                .map(|values| pb::Embedding { values })
                .collect(),
            model: embeddings.model,
            provider: deployment,
            usage: Some(conv::usage(embeddings.usage, 0)),
        }))
    }

    async fn list_models(
        &self,
        _request: Request<pb::ListModelsRequest>,
    ) -> Result<Response<pb::ListModelsResponse>, Status> {
        Ok(Response::new(pb::ListModelsResponse {
            models: self
                .gateway
                .aliases()
                .iter()
                .map(|(alias, a)| pb::Model {
                    alias: alias.clone(),
                    deployments: a
                        .deployments
                        .iter()
                        .chain(a.fallbacks.iter())
                        .map(|d| d.name.clone())
                        .collect(),
                    semantic_cache: a.semantic_cache,
                })
                .collect(),
        }))
    }
}
