//! Google's Gemini API (`models/{model}:generateContent`, `:streamGenerateContent?alt=sse`,
//! `:batchEmbedContents`, `x-goog-api-key`). System messages become `systemInstruction`; the
//! conversation is `contents` of `user`/`model` turns (consecutive messages of one role
//! merged); a tool call is a `functionCall` part whose `args` is a JSON object, a tool result
//! a `functionResponse` part naming the function it answers. Each streamed event is a whole
//! response chunk; the stream ends with the body (there is no end marker), so an answer is
//! complete only once a chunk carried its `finishReason`.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};

use eventsource_stream::Event;
use futures::FutureExt;
use futures::future::BoxFuture;
use serde::Deserialize;
use serde_json::{Value, json};

use super::http::{Decoder, HttpSettings, Upstream, data};
use super::{
    ChunkStream, Provider, ProviderError, StreamedError, arguments_object, estimate_tokens,
    null_as_default, schema_object,
};
use crate::domain::{
    ChatRequest, Chunk, Completion, Embeddings, FinishReason, Role, ToolCall, ToolChoice, Usage,
};

/// A Gemini deployment.
#[derive(Clone)]
pub struct GeminiProvider {
    upstream: Upstream,
    api_key: String,
    model: String,
    generate_url: String,
    stream_url: String,
    embed_url: String,
}

impl std::fmt::Debug for GeminiProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeminiProvider")
            .field("model", &self.model)
            .field("generate_url", &self.generate_url)
            .finish_non_exhaustive()
    }
}

impl GeminiProvider {
    /// Builds the deployment's pooled client; `base_url` includes the API version.
    pub fn new(
        http: &HttpSettings,
        base_url: &str,
        api_key: String,
        model: String,
    ) -> anyhow::Result<Self> {
        let base = format!("{}/models/{model}", base_url.trim_end_matches('/'));
        Ok(Self {
            upstream: Upstream::new(http)?,
            api_key,
            generate_url: format!("{base}:generateContent"),
            stream_url: format!("{base}:streamGenerateContent?alt=sse"),
            embed_url: format!("{base}:batchEmbedContents"),
            model,
        })
    }

    fn request(&self, url: &str, body: &Value) -> reqwest::RequestBuilder {
        self.upstream
            .post(url, body)
            .header("x-goog-api-key", &self.api_key)
    }
}

/// The request body of `request` in Gemini's shape.
pub fn body(request: &ChatRequest) -> Value {
    let mut system: Vec<Value> = Vec::new();
    let mut contents: Vec<(&'static str, Vec<Value>)> = Vec::new();
    // A tool result names the function it answers, which the history's calls tell.
    let names: HashMap<&str, &str> = request
        .messages
        .iter()
        .flat_map(|m| m.tool_calls.iter())
        .map(|c| (c.id.as_str(), c.name.as_str()))
        .collect();
    for m in &request.messages {
        let (role, parts) = match m.role {
            Role::System => {
                system.push(json!({"text": m.content}));
                continue;
            }
            Role::User => ("user", text_part(&m.content).into_iter().collect()),
            Role::Assistant => {
                let mut parts: Vec<Value> = text_part(&m.content).into_iter().collect();
                parts.extend(m.tool_calls.iter().map(|c| {
                    json!({"functionCall": {"name": c.name, "args": arguments_object(&c.arguments)}})
                }));
                ("model", parts)
            }
            Role::Tool => {
                let id = m.tool_call_id.as_deref().unwrap_or_default();
                let name = names
                    .get(id)
                    .copied()
                    .or(m.name.as_deref())
                    .unwrap_or("tool");
                // `response` must be an object: a JSON object result as it is, anything else
                // as its text.
                let response = match serde_json::from_str::<Value>(&m.content) {
                    Ok(object @ Value::Object(_)) => object,
                    _ => json!({"result": m.content}),
                };
                (
                    "user",
                    vec![json!({"functionResponse": {"name": name, "response": response}})],
                )
            }
        };
        if parts.is_empty() {
            continue;
        }
        match contents.last_mut() {
            Some((last, existing)) if *last == role => existing.extend(parts),
            _ => contents.push((role, parts)),
        }
    }
    let mut body = json!({
        "contents": contents
            .into_iter()
            .map(|(role, parts)| json!({"role": role, "parts": parts}))
            .collect::<Vec<_>>(),
    });
    if !system.is_empty() {
        body["systemInstruction"] = json!({ "parts": system });
    }
    if !request.tools.is_empty() {
        let declarations: Vec<Value> = request
            .tools
            .iter()
            .map(|t| json!({"name": t.name, "description": t.description, "parameters": schema_object(&t.parameters)}))
            .collect();
        body["tools"] = json!([{ "functionDeclarations": declarations }]);
        let calling = match &request.params.tool_choice {
            ToolChoice::Auto => None,
            ToolChoice::None => Some(json!({"mode": "NONE"})),
            ToolChoice::Required => Some(json!({"mode": "ANY"})),
            ToolChoice::Named(name) => Some(json!({"mode": "ANY", "allowedFunctionNames": [name]})),
        };
        if let Some(calling) = calling {
            body["toolConfig"] = json!({ "functionCallingConfig": calling });
        }
    }
    let p = &request.params;
    let mut config = serde_json::Map::new();
    if let Some(t) = p.temperature {
        config.insert("temperature".into(), json!(t));
    }
    if let Some(t) = p.top_p {
        config.insert("topP".into(), json!(t));
    }
    if let Some(t) = p.max_tokens {
        config.insert("maxOutputTokens".into(), json!(t));
    }
    if !p.stop.is_empty() {
        config.insert("stopSequences".into(), json!(p.stop));
    }
    if let Some(seed) = p.seed {
        config.insert("seed".into(), json!(seed));
    }
    if !config.is_empty() {
        body["generationConfig"] = Value::Object(config);
    }
    body
}

fn text_part(text: &str) -> Option<Value> {
    (!text.is_empty()).then(|| json!({ "text": text }))
}

#[derive(Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "camelCase")]
struct WireUsage {
    #[serde(default)]
    prompt_token_count: u32,
    #[serde(default)]
    candidates_token_count: u32,
    #[serde(default)]
    cached_content_token_count: u32,
    #[serde(default)]
    thoughts_token_count: u32,
}

impl WireUsage {
    fn usage(self) -> Usage {
        Usage {
            // The prompt count includes the cached content; thoughts are billed as output.
            input_tokens: self.prompt_token_count,
            output_tokens: self
                .candidates_token_count
                .saturating_add(self.thoughts_token_count),
            cache_read_tokens: self.cached_content_token_count,
            cache_write_tokens: 0,
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireCall {
    name: String,
    #[serde(default)]
    args: Value,
    #[serde(default)]
    id: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WirePart {
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    thought: bool,
    #[serde(default)]
    function_call: Option<WireCall>,
}

#[derive(Deserialize, Default)]
struct WireContent {
    #[serde(default, deserialize_with = "null_as_default")]
    parts: Vec<WirePart>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireCandidate {
    #[serde(default)]
    content: WireContent,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireFeedback {
    #[serde(default)]
    block_reason: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireResponse {
    #[serde(default, deserialize_with = "null_as_default")]
    candidates: Vec<WireCandidate>,
    #[serde(default)]
    usage_metadata: Option<WireUsage>,
    #[serde(default)]
    model_version: Option<String>,
    #[serde(default)]
    prompt_feedback: Option<WireFeedback>,
    #[serde(default)]
    error: Option<StreamedError>,
}

/// A call id for a `functionCall` without one (the API's ids are optional): unique, so the
/// tool result that answers it finds it.
fn call_id(call: &WireCall) -> String {
    match &call.id {
        Some(id) if !id.is_empty() => id.clone(),
        _ => format!(
            "call_{:016x}",
            RandomState::new().hash_one((&call.name, call.args.to_string()))
        ),
    }
}

/// What one response (or stream chunk) holds.
struct Parsed {
    text: String,
    calls: Vec<ToolCall>,
    finish: Option<FinishReason>,
    /// A thought part: not the answer, but the model is working.
    thought: bool,
}

fn parse(response: WireResponse) -> Result<Parsed, ProviderError> {
    let mut parsed = Parsed {
        text: String::new(),
        calls: Vec::new(),
        finish: None,
        thought: false,
    };
    if let Some(reason) = response.prompt_feedback.and_then(|f| f.block_reason) {
        tracing::debug!(%reason, "gemini blocked the prompt");
        parsed.finish = Some(FinishReason::ContentFilter);
        return Ok(parsed);
    }
    let Some(candidate) = response.candidates.into_iter().next() else {
        return Ok(parsed);
    };
    for part in candidate.content.parts {
        parsed.thought |= part.thought;
        if let Some(text) = part.text.filter(|_| !part.thought) {
            parsed.text.push_str(&text);
        }
        if let Some(call) = part.function_call {
            parsed.calls.push(ToolCall {
                id: call_id(&call),
                arguments: arguments_object(&call.args.to_string()).to_string(),
                name: call.name,
            });
        }
    }
    parsed.finish = match candidate.finish_reason.as_deref() {
        None | Some("FINISH_REASON_UNSPECIFIED") => None,
        Some("STOP") => Some(FinishReason::Stop),
        Some("MAX_TOKENS") => Some(FinishReason::Length),
        Some("MALFORMED_FUNCTION_CALL") => {
            return Err(ProviderError::Protocol(
                "the model produced a malformed function call".into(),
            ));
        }
        Some("SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII") => {
            Some(FinishReason::ContentFilter)
        }
        Some(_) => Some(FinishReason::Stop),
    };
    Ok(parsed)
}

impl Provider for GeminiProvider {
    fn chat<'a>(
        &'a self,
        request: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<Completion, ProviderError>> {
        async move {
            let wire: WireResponse = self
                .upstream
                .json(self.request(&self.generate_url, &body(request)))
                .await?;
            let usage = wire.usage_metadata.unwrap_or_default().usage();
            let model = wire
                .model_version
                .clone()
                .unwrap_or_else(|| self.model.clone());
            let parsed = parse(wire)?;
            let finish = match parsed.finish {
                _ if !parsed.calls.is_empty() => FinishReason::ToolCalls,
                Some(reason) => reason,
                None => FinishReason::Stop,
            };
            Ok(Completion {
                content: parsed.text,
                tool_calls: parsed.calls,
                finish_reason: finish,
                usage,
                model,
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
                .upstream
                .send(self.request(&self.stream_url, &body(request)))
                .await?;
            Ok(self.upstream.events(
                response,
                StreamDecoder {
                    model: self.model.clone(),
                    usage: WireUsage::default(),
                    finish: None,
                    called: false,
                    thinking: false,
                },
            ))
        }
        .boxed()
    }

    fn embed<'a>(
        &'a self,
        inputs: &'a [String],
    ) -> BoxFuture<'a, Result<Embeddings, ProviderError>> {
        #[derive(Deserialize)]
        struct WireEmbedding {
            #[serde(default)]
            values: Vec<f32>,
        }
        #[derive(Deserialize)]
        struct WireEmbeddings {
            #[serde(default)]
            embeddings: Vec<WireEmbedding>,
        }
        async move {
            let model = format!("models/{}", self.model);
            let mut vectors = Vec::with_capacity(inputs.len());
            // The API takes at most 100 texts a call.
            for batch in inputs.chunks(100) {
                let requests: Vec<Value> = batch
                    .iter()
                    .map(|text| json!({"model": model, "content": {"parts": [{"text": text}]}}))
                    .collect();
                let wire: WireEmbeddings = self
                    .upstream
                    .json(self.request(&self.embed_url, &json!({ "requests": requests })))
                    .await?;
                if wire.embeddings.len() != batch.len() {
                    return Err(ProviderError::Protocol(format!(
                        "{} embeddings for {} inputs",
                        wire.embeddings.len(),
                        batch.len()
                    )));
                }
                vectors.extend(wire.embeddings.into_iter().map(|e| e.values));
            }
            Ok(Embeddings {
                vectors,
                // The API reports no usage for embeddings.
                usage: Usage {
                    input_tokens: inputs.iter().map(|t| estimate_tokens(t)).sum(),
                    ..Usage::default()
                },
                model: self.model.clone(),
            })
        }
        .boxed()
    }
}

struct StreamDecoder {
    model: String,
    usage: WireUsage,
    finish: Option<FinishReason>,
    called: bool,
    thinking: bool,
}

impl Decoder for StreamDecoder {
    fn event(&mut self, event: &Event, out: &mut VecDeque<Chunk>) -> Result<bool, ProviderError> {
        let wire: WireResponse = data(event)?;
        if let Some(error) = wire.error {
            return Err(error.into_error());
        }
        if let Some(usage) = wire.usage_metadata {
            // Each chunk's counts are the totals so far.
            self.usage = usage;
        }
        if let Some(model) = wire.model_version.clone() {
            self.model = model;
        }
        let parsed = parse(wire)?;
        if !parsed.text.is_empty() {
            out.push_back(Chunk::Delta(parsed.text));
        }
        self.called |= !parsed.calls.is_empty();
        self.thinking |= parsed.thought;
        out.extend(parsed.calls.into_iter().map(Chunk::ToolCall));
        if parsed.finish.is_some() {
            self.finish = parsed.finish;
        }
        Ok(false)
    }

    fn generating(&self) -> bool {
        self.thinking
    }

    fn end(&mut self, out: &mut VecDeque<Chunk>) -> Result<(), ProviderError> {
        let finish = self.finish.ok_or_else(|| {
            ProviderError::StreamBroken("the stream ended without a finishReason".into())
        })?;
        out.push_back(Chunk::Done {
            finish_reason: if self.called {
                FinishReason::ToolCalls
            } else {
                finish
            },
            usage: self.usage.usage(),
            model: self.model.clone(),
        });
        Ok(())
    }
}
