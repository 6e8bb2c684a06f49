//! Any OpenAI-compatible endpoint (`/chat/completions` with SSE streaming, `/embeddings`):
//! OpenAI, vLLM, Ollama, llama.cpp server, LiteLLM. One pooled HTTP client per deployment
//! (keep-alive; HTTP/2 where TLS negotiates it).

use std::collections::BTreeMap;
use std::time::Duration;

use eventsource_stream::Eventsource;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{ChunkStream, Provider, ProviderError};
use crate::domain::{
    ChatRequest, Chunk, Completion, Embeddings, FinishReason, Role, ToolCall, Usage,
};

/// Settings of one OpenAI-compatible deployment.
#[derive(Clone)]
pub struct OpenAiSettings {
    /// The deployment's name (metrics).
    pub name: String,
    /// `http(s)://host:port/v1`.
    pub base_url: String,
    /// The provider's model name.
    pub model: String,
    /// Bearer key; empty sends none.
    pub api_key: String,
    /// TCP (+ TLS) connect bound.
    pub connect_timeout: Duration,
    /// Bound on the response headers.
    pub headers_timeout: Duration,
    /// Bound on the first streamed event after the headers.
    pub first_token_timeout: Duration,
    /// Idle keep-alive connections per host.
    pub max_idle_connections: usize,
}

impl std::fmt::Debug for OpenAiSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiSettings")
            .field("name", &self.name)
            .field("base_url", &self.base_url)
            .field("model", &self.model)
            .field("api_key", &"[redacted]")
            .finish()
    }
}

/// The OpenAI-compatible provider.
#[derive(Debug, Clone)]
pub struct OpenAiProvider {
    settings: OpenAiSettings,
    client: reqwest::Client,
    chat_url: String,
    embeddings_url: String,
}

impl OpenAiProvider {
    /// Builds the deployment's pooled client.
    pub fn new(settings: OpenAiSettings) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .connector_layer(CountConnects::layer(settings.name.clone()))
            .connect_timeout(settings.connect_timeout)
            .pool_max_idle_per_host(settings.max_idle_connections)
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .build()?;
        let base = settings.base_url.trim_end_matches('/');
        Ok(Self {
            chat_url: format!("{base}/chat/completions"),
            embeddings_url: format!("{base}/embeddings"),
            client,
            settings,
        })
    }

    fn body(&self, request: &ChatRequest, stream: bool) -> Value {
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
                }
                if let Some(id) = &m.tool_call_id {
                    message["tool_call_id"] = json!(id);
                }
                if let Some(name) = &m.name {
                    message["name"] = json!(name);
                }
                message
            })
            .collect();
        let mut body = json!({
            "model": self.settings.model,
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
            body["max_tokens"] = json!(t);
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
                .map(|t| {
                    let parameters: Value =
                        serde_json::from_str(&t.parameters).unwrap_or_else(|_| json!({}));
                    json!({"type": "function", "function": {"name": t.name, "description": t.description, "parameters": parameters}})
                })
                .collect();
        }
        if stream {
            // Streamed calls are accounted too, not recorded as zero.
            body["stream_options"] = json!({"include_usage": true});
        }
        body
    }

    /// Sends `body` and waits for the response headers (bounded); error statuses become
    /// errors with their `Retry-After`.
    async fn send(&self, url: &str, body: &Value) -> Result<reqwest::Response, ProviderError> {
        let mut request = self.client.post(url).json(body);
        if !self.settings.api_key.is_empty() {
            request = request.bearer_auth(&self.settings.api_key);
        }
        let response = tokio::time::timeout(self.settings.headers_timeout, request.send())
            .await
            .map_err(|_| ProviderError::Timeout("headers"))?
            .map_err(|e| {
                if e.is_connect() {
                    ProviderError::Connect(e.to_string())
                } else if e.is_timeout() {
                    ProviderError::Timeout("headers")
                } else {
                    ProviderError::Connect(e.to_string())
                }
            })?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            // Bounded: an absurd value must not overflow (it is passed on, not waited).
            .and_then(|secs| Duration::try_from_secs_f64(secs.clamp(0.0, 86_400.0)).ok());
        let body = response.text().await.unwrap_or_default();
        Err(ProviderError::Status {
            status: status.as_u16(),
            retry_after,
            body: body.chars().take(300).collect(),
        })
    }
}

/// Counts the connections the pool opens (`llm_upstream_connections_opened_total`): against
/// `llm_requests_total` it shows how well keep-alive reuses them.
#[derive(Clone)]
struct CountConnects<S> {
    inner: S,
    opened: metrics::Counter,
}

impl CountConnects<()> {
    fn layer<S>(deployment: String) -> impl tower::Layer<S, Service = CountConnects<S>> + Clone {
        let opened =
            metrics::counter!("llm_upstream_connections_opened_total", "deployment" => deployment);
        tower::layer::layer_fn(move |inner| CountConnects {
            inner,
            opened: opened.clone(),
        })
    }
}

impl<S, R> tower::Service<R> for CountConnects<S>
where
    S: tower::Service<R>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        let (connecting, opened) = (self.inner.call(request), self.opened.clone());
        Box::pin(async move {
            let connection = connecting.await?;
            opened.increment(1);
            Ok(connection)
        })
    }
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
    #[serde(default)]
    tool_calls: Vec<WireToolCall>,
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

#[derive(Deserialize, Serialize, Default, Clone, Copy)]
struct WireUsage {
    #[serde(default)]
    prompt_tokens: u32,
    #[serde(default)]
    completion_tokens: u32,
}

#[derive(Deserialize)]
struct WireCompletion {
    #[serde(default)]
    model: String,
    #[serde(default)]
    choices: Vec<WireChoice>,
    #[serde(default)]
    usage: Option<WireUsage>,
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
            let response = self
                .send(&self.chat_url, &self.body(request, false))
                .await?;
            let wire: WireCompletion = response
                .json()
                .await
                .map_err(|e| ProviderError::Protocol(e.to_string()))?;
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
                    self.settings.model.clone()
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
            let response = self.send(&self.chat_url, &self.body(request, true)).await?;
            let events = response.bytes_stream().eventsource();
            let first_token = self.settings.first_token_timeout;
            let model = self.settings.model.clone();
            let stream = async_stream(events, first_token, model);
            Ok(stream)
        }
        .boxed()
    }

    fn embed<'a>(
        &'a self,
        inputs: &'a [String],
    ) -> BoxFuture<'a, Result<Embeddings, ProviderError>> {
        async move {
            let body = json!({"model": self.settings.model, "input": inputs});
            let response = self.send(&self.embeddings_url, &body).await?;
            let mut wire: WireEmbeddings = response
                .json()
                .await
                .map_err(|e| ProviderError::Protocol(e.to_string()))?;
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

/// Turns SSE events into chunks: deltas as they come, then the assembled tool calls and
/// `Done` at `[DONE]`. The first token (text or a tool call; not a role-only event) is
/// awaited at most `first_token`; a stream that ends
/// or fails before `[DONE]` ends with `StreamBroken`.
fn async_stream<S, E>(events: S, first_token: Duration, model: String) -> ChunkStream
where
    S: futures::Stream<Item = Result<eventsource_stream::Event, E>> + Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    struct State<S> {
        events: std::pin::Pin<Box<S>>,
        /// Until a chunk is out, every event is awaited at most until this instant (a
        /// role-only first event does not count as the first token).
        first_by: Option<tokio::time::Instant>,
        finish: Option<String>,
        usage: Option<WireUsage>,
        model: String,
        calls: PartialCalls,
        pending: std::collections::VecDeque<Chunk>,
        ended: bool,
    }
    let state = State {
        events: Box::pin(events),
        first_by: Some(tokio::time::Instant::now() + first_token),
        finish: None,
        usage: None,
        model,
        calls: PartialCalls::default(),
        pending: std::collections::VecDeque::new(),
        ended: false,
    };
    Box::pin(futures::stream::unfold(state, move |mut s| async move {
        loop {
            if let Some(chunk) = s.pending.pop_front() {
                return Some((Ok(chunk), s));
            }
            if s.ended {
                return None;
            }
            let next = match s.first_by {
                Some(by) => match tokio::time::timeout_at(by, s.events.next()).await {
                    Ok(next) => next,
                    Err(_) => {
                        s.ended = true;
                        return Some((Err(ProviderError::Timeout("first token")), s));
                    }
                },
                None => s.events.next().await,
            };
            let event = match next {
                Some(Ok(event)) => event,
                Some(Err(err)) => {
                    s.ended = true;
                    return Some((Err(ProviderError::StreamBroken(err.to_string())), s));
                }
                None => {
                    s.ended = true;
                    return Some((
                        Err(ProviderError::StreamBroken("ended before [DONE]".into())),
                        s,
                    ));
                }
            };
            if event.data.trim() == "[DONE]" {
                s.ended = true;
                let calls = std::mem::take(&mut s.calls.0);
                s.pending.extend(calls.into_values().map(Chunk::ToolCall));
                s.pending.push_back(Chunk::Done {
                    finish_reason: FinishReason::from_openai(s.finish.as_deref().unwrap_or("stop")),
                    usage: usage(s.usage),
                    model: s.model.clone(),
                });
                continue;
            }
            let wire: WireCompletion = match serde_json::from_str(&event.data) {
                Ok(wire) => wire,
                Err(err) => {
                    s.ended = true;
                    return Some((Err(ProviderError::Protocol(err.to_string())), s));
                }
            };
            if !wire.model.is_empty() {
                s.model = wire.model;
            }
            if wire.usage.is_some() {
                s.usage = wire.usage;
            }
            for choice in wire.choices {
                if let Some(reason) = choice.finish_reason {
                    s.finish = Some(reason);
                }
                if let Some(delta) = choice.delta {
                    if !delta.tool_calls.is_empty() {
                        s.first_by = None;
                    }
                    s.calls.add(delta.tool_calls);
                    if let Some(text) = delta.content.filter(|t| !t.is_empty()) {
                        s.pending.push_back(Chunk::Delta(text));
                        s.first_by = None;
                    }
                }
            }
        }
    }))
}
