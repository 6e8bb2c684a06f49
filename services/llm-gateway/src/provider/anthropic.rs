//! Anthropic's Messages API (`POST /v1/messages`, `x-api-key`, a pinned `anthropic-version`).
//! System messages are lifted to the top-level `system`; `max_tokens` is always sent; an
//! assistant's tool calls are `tool_use` blocks and tool results `tool_result` blocks of one
//! user message; consecutive messages of one role are merged (the API wants them
//! alternating). Streams are typed events: a tool call's id and name arrive only in its
//! `content_block_start`, its arguments as `input_json_delta` pieces parsed at
//! `content_block_stop`, usage in `message_start` and (cumulative) `message_delta`; an `error`
//! event on a 200 fails the stream.

use std::collections::{BTreeMap, VecDeque};

use eventsource_stream::Event;
use futures::FutureExt;
use futures::future::BoxFuture;
use serde::Deserialize;
use serde_json::{Value, json};

use super::http::{Decoder, HttpSettings, Upstream, data};
use super::{
    ChunkStream, Provider, ProviderError, arguments_object, null_as_default, schema_object,
};
use crate::domain::{
    ChatRequest, Chunk, Completion, Embeddings, FinishReason, Role, ToolCall, ToolChoice, Usage,
};

/// An Anthropic deployment.
#[derive(Clone)]
pub struct AnthropicProvider {
    upstream: Upstream,
    url: String,
    api_key: String,
    version: String,
    model: String,
    default_max_tokens: u32,
}

impl std::fmt::Debug for AnthropicProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnthropicProvider")
            .field("url", &self.url)
            .field("model", &self.model)
            .finish_non_exhaustive()
    }
}

impl AnthropicProvider {
    /// Builds the deployment's pooled client; `default_max_tokens` is sent when a request has
    /// no `max_tokens` (the API requires one; the deployment's `max_tokens` setting).
    pub fn new(
        http: &HttpSettings,
        base_url: &str,
        api_key: String,
        version: String,
        model: String,
        default_max_tokens: u32,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            upstream: Upstream::new(http)?,
            url: format!("{}/v1/messages", base_url.trim_end_matches('/')),
            api_key,
            version,
            model,
            default_max_tokens,
        })
    }

    fn request(&self, body: &Value) -> reqwest::RequestBuilder {
        self.upstream
            .post(&self.url, body)
            .header("x-api-key", &self.api_key)
            .header("anthropic-version", &self.version)
    }
}

/// A 429 without `Retry-After` is a spend limit: waiting a moment does not help.
fn spend_limit(err: ProviderError) -> ProviderError {
    match err {
        ProviderError::Status {
            status: 429,
            retry_after: None,
            body,
        } => ProviderError::Exhausted(body),
        other => other,
    }
}

/// `(system, messages)` of `request` in Anthropic's shape.
pub fn messages(request: &ChatRequest) -> (Option<String>, Vec<Value>) {
    let mut system: Vec<&str> = Vec::new();
    let mut messages: Vec<(&'static str, Vec<Value>)> = Vec::new();
    for m in &request.messages {
        let (role, blocks) = match m.role {
            Role::System => {
                system.push(&m.content);
                continue;
            }
            Role::User => ("user", text_block(&m.content).into_iter().collect()),
            Role::Assistant => {
                let mut blocks: Vec<Value> = text_block(&m.content).into_iter().collect();
                blocks.extend(m.tool_calls.iter().map(|c| {
                    json!({"type": "tool_use", "id": c.id, "name": c.name, "input": arguments_object(&c.arguments)})
                }));
                ("assistant", blocks)
            }
            Role::Tool => (
                "user",
                vec![json!({
                    "type": "tool_result",
                    "tool_use_id": m.tool_call_id.as_deref().unwrap_or_default(),
                    "content": m.content,
                })],
            ),
        };
        if blocks.is_empty() {
            continue;
        }
        match messages.last_mut() {
            Some((last, existing)) if *last == role => existing.extend(blocks),
            _ => messages.push((role, blocks)),
        }
    }
    let system = (!system.is_empty()).then(|| system.join("\n\n"));
    let messages = messages
        .into_iter()
        .map(|(role, mut content)| {
            // A user message's tool results must come before its text.
            content.sort_by_key(|block| block["type"] != "tool_result");
            json!({"role": role, "content": content})
        })
        .collect();
    (system, messages)
}

/// A text block; none for empty text (the API rejects empty text blocks).
fn text_block(text: &str) -> Option<Value> {
    (!text.is_empty()).then(|| json!({"type": "text", "text": text}))
}

/// The request body of `request`.
pub fn body(request: &ChatRequest, model: &str, default_max_tokens: u32, stream: bool) -> Value {
    let (system, messages) = messages(request);
    let p = &request.params;
    let mut body = json!({
        "model": model,
        "messages": messages,
        "max_tokens": p.max_tokens.unwrap_or(default_max_tokens),
    });
    if let Some(system) = system {
        body["system"] = json!(system);
    }
    if stream {
        body["stream"] = json!(true);
    }
    if let Some(t) = p.temperature {
        // Anthropic's range is 0 to 1.
        body["temperature"] = json!(t.min(1.0));
    }
    // Current models refuse both at once; temperature is the one callers mean.
    if let (Some(t), None) = (p.top_p, p.temperature) {
        body["top_p"] = json!(t);
    }
    if !p.stop.is_empty() {
        body["stop_sequences"] = json!(p.stop);
    }
    if !request.tools.is_empty() {
        body["tools"] = request
            .tools
            .iter()
            .map(|t| json!({"name": t.name, "description": t.description, "input_schema": schema_object(&t.parameters)}))
            .collect();
        match &p.tool_choice {
            ToolChoice::Auto => {}
            ToolChoice::None => body["tool_choice"] = json!({"type": "none"}),
            ToolChoice::Required => body["tool_choice"] = json!({"type": "any"}),
            ToolChoice::Named(name) => body["tool_choice"] = json!({"type": "tool", "name": name}),
        }
    }
    body
}

fn finish_reason(reason: &str) -> FinishReason {
    match reason {
        "max_tokens" => FinishReason::Length,
        "tool_use" => FinishReason::ToolCalls,
        "refusal" => FinishReason::ContentFilter,
        _ => FinishReason::Stop,
    }
}

#[derive(Deserialize, Default, Clone, Copy)]
struct WireUsage {
    #[serde(default)]
    input_tokens: Option<u32>,
    #[serde(default)]
    output_tokens: Option<u32>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u32>,
    #[serde(default)]
    cache_read_input_tokens: Option<u32>,
}

impl WireUsage {
    /// Takes the counts `later` carries (message_delta's are cumulative).
    fn update(&mut self, later: WireUsage) {
        self.input_tokens = later.input_tokens.or(self.input_tokens);
        self.output_tokens = later.output_tokens.or(self.output_tokens);
        self.cache_creation_input_tokens = later
            .cache_creation_input_tokens
            .or(self.cache_creation_input_tokens);
        self.cache_read_input_tokens = later
            .cache_read_input_tokens
            .or(self.cache_read_input_tokens);
    }

    /// The prompt is all three input counts.
    fn usage(self) -> Usage {
        let (read, write) = (
            self.cache_read_input_tokens.unwrap_or(0),
            self.cache_creation_input_tokens.unwrap_or(0),
        );
        Usage {
            input_tokens: self
                .input_tokens
                .unwrap_or(0)
                .saturating_add(read)
                .saturating_add(write),
            output_tokens: self.output_tokens.unwrap_or(0),
            cache_read_tokens: read,
            cache_write_tokens: write,
        }
    }
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireBlock {
    Text {
        #[serde(default)]
        text: String,
    },
    ToolUse {
        id: String,
        name: String,
        #[serde(default)]
        input: Value,
    },
    /// Extended thinking: not the answer, but the model is working.
    Thinking {},
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
struct WireMessage {
    #[serde(default)]
    model: String,
    #[serde(default, deserialize_with = "null_as_default")]
    content: Vec<WireBlock>,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    usage: WireUsage,
}

#[derive(Deserialize)]
struct WireError {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    message: String,
}

/// An `error` event's error as the HTTP error it stands for.
fn stream_error(error: &WireError) -> ProviderError {
    let status = match error.kind.as_str() {
        "overloaded_error" => 529,
        "rate_limit_error" => 429,
        "invalid_request_error" => 400,
        "authentication_error" => 401,
        "permission_error" => 403,
        "not_found_error" => 404,
        "request_too_large" => 413,
        _ => 500,
    };
    ProviderError::Status {
        status,
        retry_after: None,
        body: format!("error event {}: {}", error.kind, error.message),
    }
}

impl Provider for AnthropicProvider {
    fn chat<'a>(
        &'a self,
        request: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<Completion, ProviderError>> {
        async move {
            let body = body(request, &self.model, self.default_max_tokens, false);
            let wire: WireMessage = self
                .upstream
                .json(self.request(&body))
                .await
                .map_err(spend_limit)?;
            let mut content = String::new();
            let mut tool_calls = Vec::new();
            for block in wire.content {
                match block {
                    WireBlock::Text { text } => content.push_str(&text),
                    WireBlock::ToolUse { id, name, input } => tool_calls.push(ToolCall {
                        id,
                        name,
                        arguments: input.to_string(),
                    }),
                    WireBlock::Thinking {} | WireBlock::Other => {}
                }
            }
            Ok(Completion {
                content,
                tool_calls,
                finish_reason: finish_reason(wire.stop_reason.as_deref().unwrap_or("end_turn")),
                usage: wire.usage.usage(),
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
            let body = body(request, &self.model, self.default_max_tokens, true);
            let response = self
                .upstream
                .send(self.request(&body))
                .await
                .map_err(spend_limit)?;
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
        _inputs: &'a [String],
    ) -> BoxFuture<'a, Result<Embeddings, ProviderError>> {
        async move { Err(ProviderError::Unsupported("an embeddings API")) }.boxed()
    }
}

/// A tool call whose arguments are still streaming.
struct OpenCall {
    id: String,
    name: String,
    json: String,
}

#[derive(Default)]
struct StreamDecoder {
    model: String,
    usage: WireUsage,
    stop_reason: Option<String>,
    /// Tool-use blocks by index, until their `content_block_stop`.
    calls: BTreeMap<u64, OpenCall>,
    started: bool,
}

#[derive(Deserialize)]
struct Index {
    #[serde(default)]
    index: u64,
}

#[derive(Deserialize)]
struct BlockStart {
    #[serde(default)]
    index: u64,
    content_block: WireBlock,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireDelta {
    TextDelta {
        text: String,
    },
    InputJsonDelta {
        #[serde(default)]
        partial_json: String,
    },
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
struct BlockDelta {
    #[serde(default)]
    index: u64,
    delta: WireDelta,
}

#[derive(Deserialize)]
struct MessageStart {
    message: WireMessage,
}

#[derive(Deserialize, Default)]
struct StopDelta {
    #[serde(default)]
    stop_reason: Option<String>,
}

#[derive(Deserialize)]
struct MessageDelta {
    #[serde(default)]
    delta: StopDelta,
    #[serde(default)]
    usage: WireUsage,
}

#[derive(Deserialize)]
struct ErrorEvent {
    error: WireError,
}

#[derive(Deserialize)]
struct Typed {
    #[serde(rename = "type", default)]
    kind: String,
}

impl Decoder for StreamDecoder {
    fn event(&mut self, event: &Event, out: &mut VecDeque<Chunk>) -> Result<bool, ProviderError> {
        // The data's `type` is authoritative (the `event:` line repeats it).
        let kind = if event.event.is_empty() || event.event == "message" {
            data::<Typed>(event)?.kind
        } else {
            event.event.clone()
        };
        match kind.as_str() {
            "message_start" => {
                let start: MessageStart = data(event)?;
                if !start.message.model.is_empty() {
                    self.model = start.message.model;
                }
                self.usage.update(start.message.usage);
            }
            "content_block_start" => {
                let start: BlockStart = data(event)?;
                match start.content_block {
                    WireBlock::ToolUse { id, name, .. } => {
                        self.started = true;
                        self.calls.insert(
                            start.index,
                            OpenCall {
                                id,
                                name,
                                json: String::new(),
                            },
                        );
                    }
                    WireBlock::Text { text } if !text.is_empty() => {
                        out.push_back(Chunk::Delta(text));
                    }
                    WireBlock::Thinking {} => self.started = true,
                    WireBlock::Text { .. } | WireBlock::Other => {}
                }
            }
            "content_block_delta" => {
                let delta: BlockDelta = data(event)?;
                match delta.delta {
                    WireDelta::TextDelta { text } if !text.is_empty() => {
                        out.push_back(Chunk::Delta(text));
                    }
                    WireDelta::InputJsonDelta { partial_json } => {
                        let call = self.calls.get_mut(&delta.index).ok_or_else(|| {
                            ProviderError::Protocol(format!(
                                "input_json_delta for block {} with no tool_use start",
                                delta.index
                            ))
                        })?;
                        call.json.push_str(&partial_json);
                    }
                    WireDelta::TextDelta { .. } | WireDelta::Other => {}
                }
            }
            "content_block_stop" => {
                let stop: Index = data(event)?;
                if let Some(call) = self.calls.remove(&stop.index) {
                    let arguments = if call.json.trim().is_empty() {
                        "{}".to_owned()
                    } else {
                        let value: Value = serde_json::from_str(&call.json).map_err(|e| {
                            ProviderError::Protocol(format!(
                                "tool call `{}`'s streamed input is not JSON: {e}",
                                call.name
                            ))
                        })?;
                        value.to_string()
                    };
                    out.push_back(Chunk::ToolCall(ToolCall {
                        id: call.id,
                        name: call.name,
                        arguments,
                    }));
                }
            }
            "message_delta" => {
                let delta: MessageDelta = data(event)?;
                if delta.delta.stop_reason.is_some() {
                    self.stop_reason = delta.delta.stop_reason;
                }
                self.usage.update(delta.usage);
            }
            "message_stop" => {
                if let Some((_, call)) = self.calls.pop_first() {
                    return Err(ProviderError::Protocol(format!(
                        "tool call `{}` never stopped",
                        call.name
                    )));
                }
                out.push_back(Chunk::Done {
                    finish_reason: finish_reason(self.stop_reason.as_deref().unwrap_or("end_turn")),
                    usage: self.usage.usage(),
                    model: self.model.clone(),
                });
                return Ok(true);
            }
            "error" => return Err(stream_error(&data::<ErrorEvent>(event)?.error)),
            // `ping`, and event types added later, are ignored.
            _ => {}
        }
        Ok(false)
    }

    fn generating(&self) -> bool {
        self.started
    }

    fn end(&mut self, _out: &mut VecDeque<Chunk>) -> Result<(), ProviderError> {
        Err(ProviderError::StreamBroken(
            "ended before message_stop".into(),
        ))
    }
}
