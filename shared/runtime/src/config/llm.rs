//! The LLM gateway's settings: model aliases, deployments, resilience, caching, prices.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Listen;

/// One deployment's settings: `provider = "<kind>"` and that kind's keys (`mock`, `openai`,
/// `anthropic`, `gemini`, `azure`), plus `weight`. The LLM gateway owns the kinds and checks
/// these keys when it starts (an unknown key, or a key of another kind, stops it naming the
/// key); here they are kept as given, so the shared runtime knows no provider.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DeploymentConfig(pub figment::value::Dict);

impl DeploymentConfig {
    /// The value of `key`, as a string, when it is one.
    pub fn str(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(figment::value::Value::as_str)
    }
}

impl Default for DeploymentConfig {
    /// The embedded default: the mock provider.
    fn default() -> Self {
        Self(
            [
                ("provider".to_owned(), "mock".into()),
                ("model".to_owned(), "mock-1".into()),
            ]
            .into(),
        )
    }
}

impl std::fmt::Debug for DeploymentConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut map = f.debug_map();
        for (key, value) in &self.0 {
            if key.contains("key") || key.contains("secret") || key.contains("token") {
                map.entry(key, &"[redacted]");
            } else {
                map.entry(key, value);
            }
        }
        map.finish()
    }
}

/// A model alias callers name.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelAlias {
    /// Deployments balanced by power of two choices over peak-EWMA latency (and weight).
    pub deployments: Vec<String>,
    /// Deployments tried in this order when the balanced ones fail.
    pub fallbacks: Vec<String>,
    /// Semantic cache on for this alias.
    pub semantic_cache: bool,
}

/// Retries of one deployment before falling back to the next.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Attempts per deployment (1: no retry).
    pub max_attempts: u32,
    /// First backoff; doubles each retry, with full jitter.
    pub base_backoff_ms: u64,
    /// Longest backoff (a `Retry-After` longer than the remaining deadline is not waited).
    pub max_backoff_ms: u64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            base_backoff_ms: 50,
            max_backoff_ms: 2_000,
        }
    }
}

/// Upstream time bounds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LlmTimeouts {
    /// TCP (+ TLS) connect.
    pub connect_ms: u64,
    /// From sending the request to the response headers.
    pub headers_ms: u64,
    /// From the headers to the first streamed token.
    pub first_token_ms: u64,
    /// The whole call (the caller's deadline may be shorter).
    pub total_ms: u64,
}

impl Default for LlmTimeouts {
    fn default() -> Self {
        Self {
            connect_ms: 2_000,
            headers_ms: 30_000,
            first_token_ms: 30_000,
            total_ms: 120_000,
        }
    }
}

/// Circuit breaker per deployment, judged on a rolling window of outcomes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// Length of the rolling window of outcomes.
    pub window_ms: u64,
    /// Fewest calls in the window for its failure rate to count.
    pub min_calls: u32,
    /// Failure rate (percent of the window's calls) that opens the circuit.
    pub failure_rate_percent: u32,
    /// Failures in the window without one success that open it (low traffic).
    pub failure_threshold: u32,
    /// How long it stays open before one probe call is let through.
    pub open_ms: u64,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            window_ms: 10_000,
            min_calls: 20,
            failure_rate_percent: 50,
            failure_threshold: 5,
            open_ms: 10_000,
        }
    }
}

/// The exact response cache.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResponseCacheConfig {
    /// Feature switch.
    pub enabled: bool,
    /// Lifetime of a cached response.
    pub ttl_ms: u64,
    /// Memory bound of its L1.
    pub max_bytes: u64,
}

impl Default for ResponseCacheConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            ttl_ms: 3_600_000,
            max_bytes: 64 * 1024 * 1024,
        }
    }
}

/// Price of a provider model, per million tokens, in micro-dollars.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Price {
    /// Per million prompt tokens.
    pub input_per_million_micros: u64,
    /// Per million completion tokens.
    pub output_per_million_micros: u64,
    /// Per million prompt tokens read from the provider's prompt cache (unset: the input
    /// rate, what a provider without prompt caching charges).
    pub cache_read_per_million_micros: Option<u64>,
    /// Per million prompt tokens written to the provider's prompt cache (unset: the input
    /// rate).
    pub cache_write_per_million_micros: Option<u64>,
}

/// The semantic response cache (on per alias with `models.<alias>.semantic_cache`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SemanticConfig {
    /// The alias that embeds prompts.
    pub embedding_model: String,
    /// Least cosine similarity of a cached prompt to be considered (the guard decides then).
    pub threshold: f32,
    /// Prompts remembered per scope (alias + conversation before the prompt + parameters).
    pub max_entries_per_scope: usize,
    /// Prompts that were served an answer remembered with it, besides the one that was
    /// asked first (a later prompt may be close to any of them, and must pass the guard
    /// against all of them); 0 keeps only the first.
    pub variants_per_answer: usize,
    /// The optional verifier stage.
    pub verifier: VerifierConfig,
}

impl Default for SemanticConfig {
    fn default() -> Self {
        Self {
            embedding_model: "mock".into(),
            // Chosen on the development pairs: below 0.80 the guard, not the cosine, decides
            // (acronyms spelled out score 0.60-0.73 with all-MiniLM-L6-v2).
            threshold: 0.70,
            max_entries_per_scope: 1_000,
            variants_per_answer: 3,
            verifier: VerifierConfig::default(),
        }
    }
}

/// A second opinion on a semantic hit: a candidate that passes the similarity and the guard
/// is served only if a cross-encoder behind a `/v1/rerank`-style endpoint (Cohere, Jina,
/// vLLM, Infinity and TEI-compatible servers: `{model, query, documents}` →
/// `{results: [{index, relevance_score}]}`) scores the pair at least `min_score`, within
/// `budget_ms`. Off when `url` is empty. A verifier that fails or is late refuses the hit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VerifierConfig {
    /// The rerank endpoint, e.g. `http://127.0.0.1:8080/v1/rerank`; empty: no verifier.
    pub url: String,
    /// The model named in the request.
    pub model: String,
    /// Sent as a bearer token when set.
    pub api_key: Option<super::Secret>,
    /// Least relevance score of a confirmed pair.
    pub min_score: f32,
    /// Time the verifier may take before the hit is refused.
    pub budget_ms: u64,
    /// Verdicts remembered (by the pair of prompts).
    pub cache_entries: u64,
}

impl Default for VerifierConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            model: "reranker".into(),
            api_key: None,
            min_score: 0.5,
            budget_ms: 250,
            cache_entries: 10_000,
        }
    }
}

/// One caller's limits; 0 leaves a limit off.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CallerLimits {
    /// Calls per minute.
    pub requests_per_minute: u64,
    /// Tokens (prompt + output) per minute, reserved before each call.
    pub tokens_per_minute: u64,
    /// Calls in flight.
    pub max_concurrent: usize,
}

/// Limits of every caller, and per caller.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LlmLimits {
    /// Every caller without its own entry.
    pub default: CallerLimits,
    /// Caller (its auth identity, or `anonymous`) → its limits.
    pub callers: BTreeMap<String, CallerLimits>,
    /// Output tokens reserved for a call without `max_tokens`.
    pub default_output_tokens: u32,
}

impl Default for LlmLimits {
    fn default() -> Self {
        Self {
            default: CallerLimits::default(),
            callers: BTreeMap::new(),
            default_output_tokens: 512,
        }
    }
}

/// The OpenAI-compatible HTTP API (`/v1/chat/completions`, `/v1/embeddings`, `/v1/models`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpenAiApiConfig {
    /// Served at all.
    pub enabled: bool,
    /// Its HTTP listener.
    pub addr: std::net::SocketAddr,
}

impl Default for OpenAiApiConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            addr: ([127, 0, 0, 1], 8054).into(),
        }
    }
}

/// The LLM gateway.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LlmConfig {
    /// Where it listens.
    pub listen: Listen,
    /// The OpenAI-compatible HTTP front door.
    pub openai_api: OpenAiApiConfig,
    /// Alias → deployments.
    pub models: BTreeMap<String, ModelAlias>,
    /// Deployment name → endpoint and model.
    pub deployments: BTreeMap<String, DeploymentConfig>,
    /// Retries per deployment.
    pub retry: RetryConfig,
    /// Upstream time bounds.
    pub timeouts: LlmTimeouts,
    /// Circuit breaker per deployment.
    pub breaker: BreakerConfig,
    /// The exact response cache.
    pub cache: ResponseCacheConfig,
    /// The semantic response cache.
    pub semantic: SemanticConfig,
    /// Provider model → price.
    pub prices: BTreeMap<String, Price>,
    /// Per-caller rate and concurrency limits.
    pub limits: LlmLimits,
    /// ChatStream: after the first delta, text is sent at most once a window of this length
    /// (the tokens of the window in one message), on the ticks of one clock for every stream
    /// of the process so that concurrent streams' messages travel together; 0 sends every
    /// delta as it comes.
    pub stream_flush_ms: u64,
    /// Most messages in one request.
    pub max_messages: usize,
    /// Largest request, in bytes of message text.
    pub max_prompt_bytes: usize,
}

impl Default for LlmConfig {
    fn default() -> Self {
        let mock = DeploymentConfig::default();
        Self {
            listen: Listen {
                grpc_addr: ([127, 0, 0, 1], 50054).into(),
                admin_addr: ([127, 0, 0, 1], 9094).into(),
            },
            openai_api: OpenAiApiConfig::default(),
            models: [(
                "mock".to_owned(),
                ModelAlias {
                    deployments: vec!["mock".into()],
                    fallbacks: Vec::new(),
                    semantic_cache: false,
                },
            )]
            .into(),
            deployments: [("mock".to_owned(), mock)].into(),
            retry: RetryConfig::default(),
            timeouts: LlmTimeouts::default(),
            breaker: BreakerConfig::default(),
            cache: ResponseCacheConfig::default(),
            semantic: SemanticConfig::default(),
            prices: BTreeMap::new(),
            limits: LlmLimits::default(),
            stream_flush_ms: 50,
            max_messages: 1_000,
            max_prompt_bytes: 1024 * 1024,
        }
    }
}

impl LlmConfig {
    /// Every alias names known deployments, and every deployment says its provider (the
    /// gateway checks the rest of its keys).
    pub fn check(&self) -> Result<(), String> {
        for (alias, model) in &self.models {
            if model.deployments.is_empty() {
                return Err(format!("key `llm.models.{alias}.deployments` is empty"));
            }
            for name in model.deployments.iter().chain(&model.fallbacks) {
                if !self.deployments.contains_key(name) {
                    return Err(format!(
                        "key `llm.models.{alias}.deployments` names `{name}`, which is not in `llm.deployments`"
                    ));
                }
            }
        }
        for (name, d) in &self.deployments {
            if d.str("provider").is_none() {
                return Err(format!(
                    "key `llm.deployments.{name}.provider` is required (mock, openai, anthropic, gemini or azure)"
                ));
            }
        }
        if self.models.values().any(|m| m.semantic_cache)
            && !self.models.contains_key(&self.semantic.embedding_model)
        {
            return Err(format!(
                "key `llm.semantic.embedding_model` names `{}`, which is not in `llm.models`",
                self.semantic.embedding_model
            ));
        }
        if !(0.0..=1.0).contains(&self.semantic.threshold) {
            return Err("key `llm.semantic.threshold` must be in 0..=1".into());
        }
        let verifier = &self.semantic.verifier;
        if !verifier.url.is_empty() {
            if !(verifier.url.starts_with("http://") || verifier.url.starts_with("https://")) {
                return Err("key `llm.semantic.verifier.url` must be an http(s) URL".into());
            }
            if verifier.budget_ms == 0 {
                return Err("key `llm.semantic.verifier.budget_ms` must be > 0".into());
            }
        }
        if self.retry.max_attempts == 0 {
            return Err("key `llm.retry.max_attempts` must be > 0".into());
        }
        if !(1..=100).contains(&self.breaker.failure_rate_percent) {
            return Err("key `llm.breaker.failure_rate_percent` must be in 1..=100".into());
        }
        if self.breaker.window_ms == 0 || self.breaker.min_calls == 0 {
            return Err(
                "keys `llm.breaker.window_ms` and `llm.breaker.min_calls` must be > 0".into(),
            );
        }
        Ok(())
    }
}
