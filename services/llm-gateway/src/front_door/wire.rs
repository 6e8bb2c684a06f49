//! OpenAI's JSON ↔ the gateway's domain, every field checked (all violations reported at
//! once, each naming its field as OpenAI's API does: `messages[2].role`).

use base64::Engine;
use boardroom_runtime::status::Violations;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::api::{RequestLimits, check_bounds};
use crate::domain::{
    CachePolicy, ChatAnswer, ChatRequest, Completion, FinishReason, Message, Params, Role,
    ToolCall, ToolChoice, ToolDef, Usage,
};
use crate::error::GatewayError;
use crate::provider::null_as_default;

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<Value>),
}

#[derive(Deserialize)]
struct WireFunction {
    #[serde(default, deserialize_with = "null_as_default")]
    name: String,
    #[serde(default)]
    arguments: Value,
}

#[derive(Deserialize)]
struct WireToolCall {
    #[serde(default, deserialize_with = "null_as_default")]
    id: String,
    #[serde(default)]
    function: Option<WireFunction>,
}

#[derive(Deserialize)]
struct WireMessage {
    #[serde(default, deserialize_with = "null_as_default")]
    role: String,
    #[serde(default)]
    content: Option<Value>,
    #[serde(default, deserialize_with = "null_as_default")]
    tool_calls: Vec<WireToolCall>,
    #[serde(default)]
    tool_call_id: Option<String>,
    #[serde(default)]
    name: Option<String>,
}

#[derive(Deserialize)]
struct WireToolFunction {
    #[serde(default, deserialize_with = "null_as_default")]
    name: String,
    #[serde(default, deserialize_with = "null_as_default")]
    description: String,
    #[serde(default)]
    parameters: Option<Value>,
}

#[derive(Deserialize)]
struct WireTool {
    #[serde(rename = "type", default)]
    kind: String,
    function: Option<WireToolFunction>,
}

#[derive(Deserialize, Default)]
struct StreamOptions {
    #[serde(default, deserialize_with = "null_as_default")]
    include_usage: bool,
}

/// `POST /v1/chat/completions`'s body (fields the gateway does not use are ignored, as
/// OpenAI-compatible servers do).
#[derive(Deserialize)]
struct WireChatRequest {
    #[serde(default)]
    model: String,
    #[serde(default, deserialize_with = "null_as_default")]
    messages: Vec<WireMessage>,
    #[serde(default, deserialize_with = "null_as_default")]
    tools: Vec<WireTool>,
    #[serde(default)]
    tool_choice: Option<Value>,
    #[serde(default)]
    temperature: Option<f32>,
    #[serde(default)]
    top_p: Option<f32>,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    max_completion_tokens: Option<u32>,
    #[serde(default)]
    stop: Option<OneOrMany>,
    #[serde(default)]
    seed: Option<i64>,
    #[serde(default)]
    n: Option<u32>,
    #[serde(default, deserialize_with = "null_as_default")]
    stream: bool,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
}

/// A checked chat request, whether to stream, and whether a stream ends with usage.
pub struct ChatCall {
    /// The request.
    pub chat: ChatRequest,
    /// `stream: true`.
    pub stream: bool,
    /// `stream_options.include_usage`.
    pub include_usage: bool,
}

/// JSON that is not a valid body at all.
fn unparsable(err: serde_json::Error) -> GatewayError {
    GatewayError::InvalidArgument(Violations::one(
        "body",
        format!("could not parse the JSON body of the request: {err}"),
    ))
}

/// Text of a message's `content`: a string, null, or text parts.
fn text(v: &mut Violations, field: String, content: Option<Value>) -> String {
    match content {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(text)) => text,
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for (j, part) in parts.iter().enumerate() {
                match (part["type"].as_str(), part["text"].as_str()) {
                    (Some("text"), Some(t)) => text.push_str(t),
                    _ => v.add(
                        format!("{field}[{j}].type"),
                        "only text content parts are supported",
                    ),
                }
            }
            text
        }
        Some(_) => {
            v.add(field, "must be a string or an array of text parts");
            String::new()
        }
    }
}

/// Parses and checks a chat completion request; `cache_policy` from the caller's header.
pub fn chat_request(
    body: &[u8],
    limits: RequestLimits,
    request_id: String,
    cache_policy: CachePolicy,
) -> Result<ChatCall, GatewayError> {
    let wire: WireChatRequest = serde_json::from_slice(body).map_err(unparsable)?;
    let mut v = Violations::default();
    let messages: Vec<Message> = wire
        .messages
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            let role = match m.role.as_str() {
                "system" | "developer" => Role::System,
                "user" => Role::User,
                "assistant" => Role::Assistant,
                "tool" => Role::Tool,
                _ => {
                    v.add(
                        format!("messages[{i}].role"),
                        "must be system, developer, user, assistant or tool",
                    );
                    Role::User
                }
            };
            if role == Role::Tool && m.tool_call_id.as_deref().is_none_or(str::is_empty) {
                v.add(
                    format!("messages[{i}].tool_call_id"),
                    "required on a tool message",
                );
            }
            let tool_calls = m
                .tool_calls
                .into_iter()
                .enumerate()
                .map(|(j, c)| {
                    let function = c.function.unwrap_or(WireFunction {
                        name: String::new(),
                        arguments: Value::Null,
                    });
                    if function.name.is_empty() {
                        v.add(
                            format!("messages[{i}].tool_calls[{j}].function.name"),
                            "must not be empty",
                        );
                    }
                    let arguments = match function.arguments {
                        Value::String(s) => s,
                        Value::Null => "{}".to_owned(),
                        other => {
                            v.add(
                                format!("messages[{i}].tool_calls[{j}].function.arguments"),
                                "must be a string of JSON",
                            );
                            other.to_string()
                        }
                    };
                    ToolCall {
                        id: c.id,
                        name: function.name,
                        arguments,
                    }
                })
                .collect();
            Message {
                role,
                content: text(&mut v, format!("messages[{i}].content"), m.content),
                tool_calls,
                tool_call_id: m.tool_call_id.filter(|id| !id.is_empty()),
                name: m.name.filter(|n| !n.is_empty()),
            }
        })
        .collect();
    let tool_choice = match wire.tool_choice {
        None | Some(Value::Null) => ToolChoice::Auto,
        Some(Value::String(choice)) => match choice.as_str() {
            "auto" => ToolChoice::Auto,
            "none" => ToolChoice::None,
            "required" => ToolChoice::Required,
            _ => {
                v.add("tool_choice", "must be auto, none, required or a function");
                ToolChoice::Auto
            }
        },
        Some(choice) => match choice["function"]["name"].as_str() {
            Some(name) if choice["type"] == "function" && !name.is_empty() => {
                ToolChoice::Named(name.to_owned())
            }
            _ => {
                v.add(
                    "tool_choice",
                    "must be auto, none, required or {\"type\": \"function\", \"function\": {\"name\": …}}",
                );
                ToolChoice::Auto
            }
        },
    };
    let tools: Vec<ToolDef> = wire
        .tools
        .into_iter()
        .enumerate()
        .filter_map(|(i, t)| {
            if t.kind != "function" {
                v.add(
                    format!("tools[{i}].type"),
                    "only `function` tools are supported",
                );
                return None;
            }
            let Some(f) = t.function else {
                v.add(format!("tools[{i}].function"), "required");
                return None;
            };
            if f.name.is_empty() {
                v.add(format!("tools[{i}].function.name"), "must not be empty");
            }
            let parameters = match f.parameters {
                None | Some(Value::Null) => String::new(),
                Some(schema @ Value::Object(_)) => schema.to_string(),
                Some(_) => {
                    v.add(
                        format!("tools[{i}].function.parameters"),
                        "must be a JSON Schema object",
                    );
                    String::new()
                }
            };
            Some(ToolDef {
                name: f.name,
                description: f.description,
                parameters,
            })
        })
        .collect();
    if wire.n.is_some_and(|n| n != 1) {
        v.add("n", "only 1 choice is supported");
    }
    let stop = match wire.stop {
        None => Vec::new(),
        Some(OneOrMany::One(s)) => vec![s],
        Some(OneOrMany::Many(items)) => items
            .into_iter()
            .filter_map(|s| match s {
                Value::String(s) => Some(s),
                _ => {
                    v.add("stop", "must be a string or an array of strings");
                    None
                }
            })
            .collect(),
    };
    let chat = ChatRequest {
        model: wire.model,
        messages,
        tools,
        params: Params {
            temperature: wire.temperature,
            top_p: wire.top_p,
            max_tokens: wire.max_completion_tokens.or(wire.max_tokens),
            stop,
            seed: wire.seed,
            tool_choice,
        },
        request_id,
        cache_policy,
    };
    check_bounds(&chat, limits, &mut v);
    let include_usage = wire.stream_options.unwrap_or_default().include_usage;
    Ok(v.finish(ChatCall {
        chat,
        stream: wire.stream,
        include_usage,
    })?)
}

/// OpenAI's `finish_reason`.
pub fn finish_reason(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
        FinishReason::ToolCalls => "tool_calls",
        FinishReason::ContentFilter => "content_filter",
    }
}

/// OpenAI's `usage`.
pub fn usage(usage: Usage) -> Value {
    json!({
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.total(),
        "prompt_tokens_details": {"cached_tokens": usage.cache_read_tokens},
    })
}

/// A tool call as OpenAI writes it; `index` in streams.
pub fn tool_call(call: &ToolCall, index: Option<usize>) -> Value {
    let mut value = json!({
        "id": call.id, "type": "function",
        "function": {"name": call.name, "arguments": call.arguments},
    });
    if let Some(index) = index {
        value["index"] = json!(index);
    }
    value
}

/// A cached or coalesced answer cost nothing: its usage is zero.
fn billed(answer: &ChatAnswer) -> Usage {
    match answer.cache {
        crate::domain::CacheOutcome::Miss => answer.completion.usage,
        _ => Usage::default(),
    }
}

/// A `chat.completion`.
pub fn completion(id: &str, created: u64, model: &str, answer: &ChatAnswer) -> Value {
    let Completion {
        content,
        tool_calls,
        finish_reason: finish,
        ..
    } = &answer.completion;
    let mut message = json!({
        "role": "assistant",
        "content": if content.is_empty() && !tool_calls.is_empty() { Value::Null } else { json!(content) },
    });
    if !tool_calls.is_empty() {
        message["tool_calls"] = tool_calls.iter().map(|c| tool_call(c, None)).collect();
    }
    json!({
        "id": id, "object": "chat.completion", "created": created, "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason(*finish), "logprobs": null}],
        "usage": usage(billed(answer)),
        "system_fingerprint": null,
    })
}

/// One `chat.completion.chunk` with one choice.
pub fn chunk(id: &str, created: u64, model: &str, delta: Value, finish: Option<&str>) -> Value {
    json!({
        "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": null}],
    })
}

/// The last chunk of a stream with `include_usage`: no choices, the usage.
pub fn usage_chunk(id: &str, created: u64, model: &str, answer: &ChatAnswer) -> Value {
    json!({
        "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
        "choices": [], "usage": usage(billed(answer)),
    })
}

/// `POST /v1/embeddings`'s body.
#[derive(Deserialize)]
struct WireEmbeddingsRequest {
    #[serde(default)]
    model: String,
    #[serde(default)]
    input: Option<Value>,
    #[serde(default)]
    encoding_format: Option<String>,
}

/// A checked embeddings request: model, texts, and whether vectors go as base64.
pub fn embeddings_request(body: &[u8]) -> Result<(String, Vec<String>, bool), GatewayError> {
    let wire: WireEmbeddingsRequest = serde_json::from_slice(body).map_err(unparsable)?;
    let mut v = Violations::default();
    let inputs = match wire.input {
        Some(Value::String(text)) => vec![text],
        Some(Value::Array(items)) => items
            .into_iter()
            .enumerate()
            .filter_map(|(i, item)| match item {
                Value::String(text) => Some(text),
                _ => {
                    v.add(
                        format!("input[{i}]"),
                        "must be a string (token arrays are not supported)",
                    );
                    None
                }
            })
            .collect(),
        _ => {
            v.add("input", "must be a string or an array of strings");
            Vec::new()
        }
    };
    let base64 = match wire.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(_) => {
            v.add("encoding_format", "must be `float` or `base64`");
            false
        }
    };
    Ok(v.finish((wire.model, inputs, base64))?)
}

/// An `embedding` list; vectors as little-endian f32 in base64 when asked.
pub fn embeddings(model: &str, vectors: Vec<Vec<f32>>, usage: Usage, base64: bool) -> Value {
    let data: Vec<Value> = vectors
        .into_iter()
        .enumerate()
        .map(|(index, vector)| {
            let embedding = if base64 {
                let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(vector)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    json!({
        "object": "list", "data": data, "model": model,
        "usage": {"prompt_tokens": usage.input_tokens, "total_tokens": usage.input_tokens},
    })
}

/// A `model`.
pub fn model(alias: &str) -> Value {
    json!({"id": alias, "object": "model", "created": 0, "owned_by": "boardroom"})
}
