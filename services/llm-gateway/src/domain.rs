//! The gateway's own types: what callers ask for and what providers answer, without
//! transport (the gRPC and HTTP shapes are converted at the edges).

use serde::{Deserialize, Serialize};

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions.
    System,
    /// The user.
    User,
    /// The model.
    Assistant,
    /// A tool's result.
    Tool,
}

/// A call the model asks for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ToolCall {
    /// Echoed by the tool message that answers it.
    pub id: String,
    /// The tool.
    pub name: String,
    /// A JSON object.
    pub arguments: String,
}

/// One message.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Message {
    /// Who wrote it.
    pub role: Role,
    /// The text.
    pub content: String,
    /// Calls an assistant message asks for.
    pub tool_calls: Vec<ToolCall>,
    /// For a tool message: the call it answers.
    pub tool_call_id: Option<String>,
    /// Optional author name.
    pub name: Option<String>,
}

/// A tool the model may call.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ToolDef {
    /// Its name.
    pub name: String,
    /// What it does.
    pub description: String,
    /// JSON Schema of its arguments.
    pub parameters: String,
}

/// Whether and which tool the model must call.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ToolChoice {
    /// The model decides.
    #[default]
    Auto,
    /// No tool call (the tools stay defined: a history with calls needs them).
    None,
    /// Some tool call.
    Required,
    /// This tool.
    Named(String),
}

impl ToolChoice {
    /// The default (left out of the cache key, so keys of requests without it are unchanged).
    pub fn is_auto(&self) -> bool {
        *self == Self::Auto
    }
}

/// Sampling and length parameters.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Params {
    /// 0 to 2.
    pub temperature: Option<f32>,
    /// (0, 1].
    pub top_p: Option<f32>,
    /// Most tokens to generate.
    pub max_tokens: Option<u32>,
    /// Stop sequences.
    pub stop: Vec<String>,
    /// Sampling seed.
    pub seed: Option<i64>,
    /// Tool use.
    #[serde(default, skip_serializing_if = "ToolChoice::is_auto")]
    pub tool_choice: ToolChoice,
}

/// How the caches may be used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CachePolicy {
    /// Cache deterministic (temperature 0) requests.
    #[default]
    Default,
    /// No cache, no coalescing.
    Bypass,
    /// Only from the cache; a miss is NotFound.
    CacheOnly,
    /// Cache even sampled requests.
    Force,
}

/// A chat request as the gateway handles it.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    /// The model alias.
    pub model: String,
    /// The conversation.
    pub messages: Vec<Message>,
    /// Tools the model may call.
    pub tools: Vec<ToolDef>,
    /// Sampling parameters.
    pub params: Params,
    /// The caller's request id.
    pub request_id: String,
    /// Cache use.
    pub cache_policy: CachePolicy,
}

impl ChatRequest {
    /// Its prompt's tokens, estimated (4 bytes a token).
    pub fn prompt_tokens(&self) -> u32 {
        let bytes: usize = self
            .messages
            .iter()
            .map(|m| {
                m.content.len()
                    + m.tool_calls
                        .iter()
                        .map(|c| c.arguments.len())
                        .sum::<usize>()
            })
            .sum();
        u32::try_from(bytes.div_ceil(4)).unwrap_or(u32::MAX)
    }

    /// Whether its answer may be cached and shared: deterministic, or the caller says so.
    pub fn cacheable(&self) -> bool {
        match self.cache_policy {
            CachePolicy::Bypass => false,
            CachePolicy::Force | CachePolicy::CacheOnly => true,
            CachePolicy::Default => self.params.temperature == Some(0.0),
        }
    }
}

/// Why generation stopped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum FinishReason {
    /// Natural end or a stop sequence.
    #[default]
    Stop,
    /// `max_tokens` reached.
    Length,
    /// The model called tools.
    ToolCalls,
    /// Filtered by the provider.
    ContentFilter,
}

impl FinishReason {
    /// OpenTelemetry's `gen_ai.response.finish_reasons` value (OpenAI's names).
    pub fn label(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
            Self::ToolCalls => "tool_calls",
            Self::ContentFilter => "content_filter",
        }
    }

    /// From OpenAI's `finish_reason`.
    pub fn from_openai(reason: &str) -> Self {
        match reason {
            "length" => Self::Length,
            "tool_calls" | "function_call" => Self::ToolCalls,
            "content_filter" => Self::ContentFilter,
            _ => Self::Stop,
        }
    }
}

/// Tokens a call cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Prompt tokens, all of them (those read from and written to the provider's prompt
    /// cache included).
    pub input_tokens: u32,
    /// Completion tokens (a model's reasoning tokens included).
    pub output_tokens: u32,
    /// Of `input_tokens`, those read from the provider's prompt cache.
    #[serde(default)]
    pub cache_read_tokens: u32,
    /// Of `input_tokens`, those written to the provider's prompt cache.
    #[serde(default)]
    pub cache_write_tokens: u32,
}

impl Usage {
    /// Prompt tokens neither read from nor written to the prompt cache.
    pub fn uncached_input_tokens(&self) -> u32 {
        self.input_tokens
            .saturating_sub(self.cache_read_tokens)
            .saturating_sub(self.cache_write_tokens)
    }

    /// What a call cost when the upstream did not say (an OpenAI-compatible server that
    /// ignores `include_usage`, a stream that broke or was abandoned): `prompt_tokens` in, the
    /// text and tool calls generated out, 4 bytes a token.
    pub fn estimated(prompt_tokens: u32, content: &str, calls: &[ToolCall]) -> Self {
        let out: usize = content.len()
            + calls
                .iter()
                .map(|c| c.name.len() + c.arguments.len())
                .sum::<usize>();
        Self {
            input_tokens: prompt_tokens,
            output_tokens: u32::try_from(out.div_ceil(4)).unwrap_or(u32::MAX),
            ..Self::default()
        }
    }

    /// Prompt and completion tokens.
    pub fn total(&self) -> u64 {
        u64::from(self.input_tokens) + u64::from(self.output_tokens)
    }
}

/// A provider's complete answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Completion {
    /// The assistant's text.
    pub content: String,
    /// Tools it calls.
    pub tool_calls: Vec<ToolCall>,
    /// Why it stopped.
    pub finish_reason: FinishReason,
    /// What it cost.
    pub usage: Usage,
    /// The provider's model that answered.
    pub model: String,
}

/// One piece of a streamed answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Chunk {
    /// Generated text.
    Delta(String),
    /// A complete tool call.
    ToolCall(ToolCall),
    /// The end: finish reason and usage (the text came in deltas).
    Done {
        /// Why it stopped.
        finish_reason: FinishReason,
        /// What it cost.
        usage: Usage,
        /// The provider's model.
        model: String,
    },
}

/// How a response was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// From the provider.
    Miss,
    /// From the exact cache.
    Exact,
    /// Shared with an identical request in flight.
    Coalesced,
    /// From the semantic cache: a prompt that means the same.
    Semantic,
}

impl CacheOutcome {
    /// Its name in metrics and headers.
    pub fn label(self) -> &'static str {
        match self {
            Self::Miss => "miss",
            Self::Exact => "exact",
            Self::Coalesced => "coalesced",
            Self::Semantic => "semantic",
        }
    }
}

/// The gateway's answer to a chat request.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatAnswer {
    /// The completion.
    pub completion: Completion,
    /// The deployment that served it.
    pub deployment: String,
    /// How it was obtained.
    pub cache: CacheOutcome,
    /// Cost in micro-dollars (0 when cached).
    pub cost_micros: u64,
}

/// Embeddings of texts.
#[derive(Debug, Clone, PartialEq)]
pub struct Embeddings {
    /// One per input.
    pub vectors: Vec<Vec<f32>>,
    /// What it cost.
    pub usage: Usage,
    /// The provider's model.
    pub model: String,
}
