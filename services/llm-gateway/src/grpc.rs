//! The gRPC skin of the gateway.

use std::pin::Pin;
use std::time::{Duration, Instant};

use boardroom_proto::llm::v1 as pb;
use boardroom_proto::llm::v1::llm_gateway_service_server::LlmGatewayService;
use boardroom_runtime::auth::CallerIdentity;
use boardroom_runtime::inbound::CallDeadline;
use boardroom_runtime::status::Violations;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use crate::api::{Api, StreamEvent};
use crate::conversions as conv;
use crate::error::GatewayError;

/// Implements `boardroom.llm.v1.LlmGatewayService`.
#[derive(Debug, Clone)]
pub struct LlmGrpc {
    api: Api,
}

impl LlmGrpc {
    /// Serves `api`.
    pub fn new(api: Api) -> Self {
        Self { api }
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
        let chat = conv::chat_request(request.into_inner(), self.api.limits())?;
        let answer = self.api.chat(chat, deadline, &caller).await?;
        Ok(Response::new(conv::answer(answer)))
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
        let chat = conv::chat_request(chat, self.api.limits())?;
        let answer = self.api.chat_stream(chat, deadline, &caller).await?;
        let events = ReceiverStream::new(answer.events).map(|e| match e {
            StreamEvent::Delta(text) => Ok(event(pb::chat_stream_response::Event::Delta(text))),
            StreamEvent::ToolCall(call) => Ok(event(pb::chat_stream_response::Event::ToolCall(
                conv::tool_call(call),
            ))),
            StreamEvent::Done(answer) => Ok(event(pb::chat_stream_response::Event::Done(
                conv::chat_response(
                    answer.completion,
                    answer.deployment,
                    answer.cache,
                    answer.cost_micros,
                    false,
                ),
            ))),
            StreamEvent::Failed(err) => Err(err.into()),
        });
        Ok(Response::new(Box::pin(events)))
    }

    async fn embed(
        &self,
        request: Request<pb::EmbedRequest>,
    ) -> Result<Response<pb::EmbedResponse>, Status> {
        let (caller, deadline) = (caller(&request), deadline(&request));
        let request = request.into_inner();
        let (embeddings, deployment) = self
            .api
            .embed(&request.model, request.inputs, deadline, &caller)
            .await
            .map_err(|err| match err {
                // The gRPC field is `inputs`.
                GatewayError::InvalidArgument(v) => {
                    GatewayError::InvalidArgument(v.renamed("input", "inputs"))
                }
                other => other,
            })?;
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
                .api
                .gateway()
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
