//! The OpenAI wire format (`/chat/completions` with SSE streaming, `/embeddings`): any
//! OpenAI-compatible endpoint (OpenAI, vLLM, Ollama, llama.cpp server, LiteLLM), and Azure
//! OpenAI, which speaks it on `/openai/deployments/{deployment}/…?api-version=` with an
//! `api-key` header.

use std::collections::{BTreeMap, VecDeque};

use eventsource_stream::Event;
use futures::FutureExt;
use futures::future::BoxFuture;
use serde::Deserialize;
use serde_json::{Value, json};

use super::http::{Decoder, HttpSettings, Upstream, data};
use super::{ChunkStream, Provider, ProviderError, StreamedError, null_as_default, schema_object};
use crate::domain::{
    ChatRequest, Chunk, Completion, Embeddings, FinishReason, Role, ToolCall, ToolChoice, Usage,
};

/// Where and how an OpenAI-format deployment is called.
#[derive(Clone)]
pub enum Endpoint {
    /// `base_url` (`…/v1`) with a bearer key (none when empty).
    Compatible {
        /// `http(s)://host:port/v1`.
        base_url: String,
        /// Bearer key.
        api_key: String,
    },
    /// An Azure OpenAI resource's deployment.
    Azure {
        /// `https://<resource>.openai.azure.com`.
        endpoint: String,
        /// The Azure deployment.
        deployment: String,
        /// `api-version`.
        api_version: String,
        /// `api-key`.
        api_key: String,
    },
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Compatible { base_url, .. } => f
                .debug_struct("Compatible")
                .field("base_url", base_url)
                .finish_non_exhaustive(),
            Self::Azure {
                endpoint,
                deployment,
                ..
            } => f
                .debug_struct("Azure")
                .field("endpoint", endpoint)
                .field("deployment", deployment)
                .finish_non_exhaustive(),
        }
    }
}

/// An OpenAI-format provider.
#[derive(Debug, Clone)]
pub struct OpenAiProvider {
    upstream: Upstream,
    endpoint: Endpoint,
    model: String,
    chat_url: String,
    embeddings_url: String,
}

impl OpenAiProvider {
    /// Builds the deployment's pooled client.
    pub fn new(http: &HttpSettings, endpoint: Endpoint, model: String) -> anyhow::Result<Self> {
        let (chat_url, embeddings_url) = match &endpoint {
            Endpoint::Compatible { base_url, .. } => {
                let base = base_url.trim_end_matches('/');
                (
                    format!("{base}/chat/completions"),
                    format!("{base}/embeddings"),
                )
            }
            Endpoint::Azure {
                endpoint,
                deployment,
                api_version,
                ..
            } => {
                let base = format!(
                    "{}/openai/deployments/{deployment}",
                    endpoint.trim_end_matches('/')
                );
                (
                    format!("{base}/chat/completions?api-version={api_version}"),
                    format!("{base}/embeddings?api-version={api_version}"),
                )
            }
        };
        Ok(Self {
            upstream: Upstream::new(http)?,
            endpoint,
            model,
            chat_url,
            embeddings_url,
        })
    }

    fn max_tokens_key(&self) -> &'static str {
        match self.endpoint {
            Endpoint::Compatible { .. } => "max_tokens",
            Endpoint::Azure { .. } => "max_completion_tokens",
        }
    }

    fn request(&self, url: &str, body: &Value) -> reqwest::RequestBuilder {
        let request = self.upstream.post(url, body);
        match &self.endpoint {
            Endpoint::Compatible { api_key, .. } if api_key.is_empty() => request,
            Endpoint::Compatible { api_key, .. } => request.bearer_auth(api_key),
            Endpoint::Azure { api_key, .. } => request.header("api-key", api_key),
        }
    }

    async fn send(&self, url: &str, body: &Value) -> Result<reqwest::Response, ProviderError> {
        self.upstream
            .send(self.request(url, body))
            .await
            .map_err(quota)
    }
}

/// OpenAI's `insufficient_quota` 429 waits for billing, not for a moment.
fn quota(err: ProviderError) -> ProviderError {
    match err {
        ProviderError::Status {
            status: 429, body, ..
        } if body.contains("insufficient_quota") => ProviderError::Exhausted(body),
        other => other,
    }
}

/// The request body of `request` in OpenAI's format. `max_tokens_key`: `max_tokens` for
/// OpenAI-compatible servers, `max_completion_tokens` for Azure (its reasoning models refuse
/// `max_tokens`).
pub fn body(request: &ChatRequest, model: &str, stream: bool, max_tokens_key: &str) -> Value {
    let messages: Vec<Value> = request
        .messages
        .iter()
        .map(|m| {
            let mut message = json!({
                "role": match m.role {
                    Role::System => "system",
                    Role::User => "user",
                    Role::Assistant => "assistant",
                    Role::Tool => "tool",
                },
                "content": m.content,
            });
            if !m.tool_calls.is_empty() {
                message["tool_calls"] = m
                    .tool_calls
                    .iter()
                    .map(|c| json!({"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}))
                    .collect();
                if m.content.is_empty() {
                    message["content"] = Value::Null;
                }
            }
            if let Some(id) = &m.tool_call_id {
                message["tool_call_id"] = json!(id);
            }
            if let Some(name) = &m.name
                && m.role != Role::Tool
            {
                message["name"] = json!(name);
            }
            message
        })
        .collect();
    let mut body = json!({
        "model": model,
        "messages": messages,
        "stream": stream,
    });
    let p = &request.params;
    if let Some(t) = p.temperature {
        body["temperature"] = json!(t);
    }
    if let Some(t) = p.top_p {
        body["top_p"] = json!(t);
    }
    if let Some(t) = p.max_tokens {
        body[max_tokens_key] = json!(t);
    }
    if !p.stop.is_empty() {
        body["stop"] = json!(p.stop);
    }
    if let Some(seed) = p.seed {
        body["seed"] = json!(seed);
    }
    if !request.tools.is_empty() {
        body["tools"] = request
            .tools
            .iter()
            .map(|t| json!({"type": "function", "function": {"name": t.name, "description": t.description, "parameters": schema_object(&t.parameters)}}))
            .collect();
        match &p.tool_choice {
            ToolChoice::Auto => {}
            ToolChoice::None => body["tool_choice"] = json!("none"),
            ToolChoice::Required => body["tool_choice"] = json!("required"),
            ToolChoice::Named(name) => {
                body["tool_choice"] = json!({"type": "function", "function": {"name": name}});
            }
        }
    }
    if stream {
        // Streamed calls are accounted too, not recorded as zero.
        body["stream_options"] = json!({"include_usage": true});
    }
    body
}

#[derive(Deserialize)]
struct WireToolCall {
    #[serde(default)]
    index: Option<u32>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    function: Option<WireFunction>,
}

#[derive(Deserialize)]
struct WireFunction {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    arguments: Option<String>,
}

#[derive(Deserialize)]
struct WireMessage {
    #[serde(default)]
    content: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    tool_calls: Vec<WireToolCall>,
    /// Reasoning models' thinking (DeepSeek, vLLM): not the answer, but the model is working.
    #[serde(default)]
    reasoning_content: Option<String>,
}

#[derive(Deserialize)]
struct WireChoice {
    #[serde(default)]
    message: Option<WireMessage>,
    #[serde(default)]
    delta: Option<WireMessage>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize, Default, Clone, Copy)]
struct WirePromptDetails {
    #[serde(default, deserialize_with = "null_as_default")]
    cached_tokens: u32,
}

#[derive(Deserialize, Default, Clone, Copy)]
struct WireUsage {
    #[serde(default, deserialize_with = "null_as_default")]
    prompt_tokens: u32,
    #[serde(default, deserialize_with = "null_as_default")]
    completion_tokens: u32,
    #[serde(default)]
    prompt_tokens_details: Option<WirePromptDetails>,
}

#[derive(Deserialize)]
struct WireCompletion {
    #[serde(default)]
    model: String,
    #[serde(default, deserialize_with = "null_as_default")]
    choices: Vec<WireChoice>,
    #[serde(default)]
    usage: Option<WireUsage>,
    #[serde(default)]
    error: Option<StreamedError>,
}

#[derive(Deserialize)]
struct WireEmbedding {
    embedding: Vec<f32>,
    #[serde(default)]
    index: usize,
}

#[derive(Deserialize)]
struct WireEmbeddings {
    data: Vec<WireEmbedding>,
    #[serde(default)]
    model: String,
    #[serde(default)]
    usage: Option<WireUsage>,
}

fn usage(wire: Option<WireUsage>) -> Usage {
    let wire = wire.unwrap_or_default();
    Usage {
        input_tokens: wire.prompt_tokens,
        output_tokens: wire.completion_tokens,
        // OpenAI counts cached prompt tokens within `prompt_tokens`, and bills no writes.
        cache_read_tokens: wire.prompt_tokens_details.unwrap_or_default().cached_tokens,
        cache_write_tokens: 0,
    }
}

/// Tool calls assembled from streamed pieces, by index.
#[derive(Default)]
struct PartialCalls(BTreeMap<u32, ToolCall>);

impl PartialCalls {
    fn add(&mut self, pieces: Vec<WireToolCall>) {
        for (position, piece) in pieces.into_iter().enumerate() {
            let index = piece.index.unwrap_or(u32::try_from(position).unwrap_or(0));
            let call = self.0.entry(index).or_insert_with(|| ToolCall {
                id: String::new(),
                name: String::new(),
                arguments: String::new(),
            });
            if let Some(id) = piece.id {
                call.id = id;
            }
            if let Some(function) = piece.function {
                if let Some(name) = function.name {
                    call.name.push_str(&name);
                }
                if let Some(arguments) = function.arguments {
                    call.arguments.push_str(&arguments);
                }
            }
        }
    }
}

impl Provider for OpenAiProvider {
    fn chat<'a>(
        &'a self,
        request: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<Completion, ProviderError>> {
        async move {
            let wire: WireCompletion = self
                .upstream
                .json(self.request(
                    &self.chat_url,
                    &body(request, &self.model, false, self.max_tokens_key()),
                ))
                .await
                .map_err(quota)?;
            let choice = wire
                .choices
                .into_iter()
                .next()
                .ok_or_else(|| ProviderError::Protocol("no choices".into()))?;
            let message = choice
                .message
                .ok_or_else(|| ProviderError::Protocol("no message".into()))?;
            let mut calls = PartialCalls::default();
            calls.add(message.tool_calls);
            Ok(Completion {
                content: message.content.unwrap_or_default(),
                tool_calls: calls.0.into_values().collect(),
                finish_reason: FinishReason::from_openai(
                    choice.finish_reason.as_deref().unwrap_or("stop"),
                ),
                usage: usage(wire.usage),
                model: if wire.model.is_empty() {
                    self.model.clone()
                } else {
                    wire.model
                },
            })
        }
        .boxed()
    }

    fn chat_stream<'a>(
        &'a self,
        request: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<ChunkStream, ProviderError>> {
        async move {
            let response = self
                .send(
                    &self.chat_url,
                    &body(request, &self.model, true, self.max_tokens_key()),
                )
                .await?;
            Ok(self.upstream.events(
                response,
                StreamDecoder {
                    model: self.model.clone(),
                    ..StreamDecoder::default()
                },
            ))
        }
        .boxed()
    }

    fn embed<'a>(
        &'a self,
        inputs: &'a [String],
    ) -> BoxFuture<'a, Result<Embeddings, ProviderError>> {
        async move {
            let body = json!({"model": self.model, "input": inputs});
            let mut wire: WireEmbeddings = self
                .upstream
                .json(self.request(&self.embeddings_url, &body))
                .await
                .map_err(quota)?;
            if wire.data.len() != inputs.len() {
                return Err(ProviderError::Protocol(format!(
                    "{} embeddings for {} inputs",
                    wire.data.len(),
                    inputs.len()
                )));
            }
            wire.data.sort_by_key(|e| e.index);
            Ok(Embeddings {
                vectors: wire.data.into_iter().map(|e| e.embedding).collect(),
                usage: usage(wire.usage),
                model: wire.model,
            })
        }
        .boxed()
    }
}

/// OpenAI's stream: deltas as they come; the tool calls, assembled by index, and `Done` at
/// `[DONE]` (usage comes in the last event before it, with `include_usage`).
#[derive(Default)]
struct StreamDecoder {
    finish: Option<String>,
    usage: Option<WireUsage>,
    model: String,
    calls: PartialCalls,
    /// A reasoning model is thinking (its first token may be far off, but it is working).
    thinking: bool,
}

impl Decoder for StreamDecoder {
    fn event(&mut self, event: &Event, out: &mut VecDeque<Chunk>) -> Result<bool, ProviderError> {
        if event.data.trim() == "[DONE]" {
            let calls = std::mem::take(&mut self.calls.0);
            out.extend(calls.into_values().map(Chunk::ToolCall));
            out.push_back(Chunk::Done {
                finish_reason: FinishReason::from_openai(self.finish.as_deref().unwrap_or("stop")),
                usage: usage(self.usage),
                model: self.model.clone(),
            });
            return Ok(true);
        }
        let wire: WireCompletion = data(event)?;
        if let Some(error) = wire.error {
            return Err(error.into_error());
        }
        if !wire.model.is_empty() {
            self.model = wire.model;
        }
        if wire.usage.is_some() {
            self.usage = wire.usage;
        }
        for choice in wire.choices {
            if let Some(reason) = choice.finish_reason {
                self.finish = Some(reason);
            }
            if let Some(delta) = choice.delta {
                self.calls.add(delta.tool_calls);
                self.thinking |= delta.reasoning_content.is_some_and(|t| !t.is_empty());
                if let Some(text) = delta.content.filter(|t| !t.is_empty()) {
                    out.push_back(Chunk::Delta(text));
                }
            }
        }
        Ok(false)
    }

    fn generating(&self) -> bool {
        self.thinking || !self.calls.0.is_empty()
    }

    fn end(&mut self, _out: &mut VecDeque<Chunk>) -> Result<(), ProviderError> {
        Err(ProviderError::StreamBroken("ended before [DONE]".into()))
    }
}
