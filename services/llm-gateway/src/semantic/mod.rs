//! The semantic response cache: a request whose prompt means the same as one answered before,
//! in the same scope, gets that answer. Scope = the alias, the conversation before the
//! prompt, the tools and the parameters (a prompt is only compared with prompts asked in the
//! same situation). A candidate must be at least `threshold` similar (cosine of embeddings
//! from the configured embedding alias) AND pass the guard (`boardroom_semantic::guard`).
//!
//! Each scope's prompts (text, vector, the exact-cache key of their answer) are one entry of
//! a tiered cache: in L1 as a shared list (a lookup decodes nothing), in Redis so replicas
//! share them, kept coherent by the cache's tracking. An insert rewrites the scope's list
//! (last writer wins between replicas: a lost entry only costs a future hit). Lookups scan
//! the scope linearly: scopes are bounded by `max_entries_per_scope`. A prompt that was
//! served an answer is remembered with it (up to `variants_per_answer`), so later prompts
//! are compared with every way the question was asked; a hit must pass the guard against all
//! of them (no drift from paraphrase to paraphrase). The prompt is embedded normalised
//! (`text::normalise`: case, contractions, politeness and filler), the guard reads it as
//! written.

use std::sync::Arc;
use std::time::Duration;

use boardroom_cache::{Codec, TieredCache};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::domain::{ChatRequest, Role};
use crate::response_cache::digest_key;
pub mod verifier;

/// The guard and the prompt's words live in their own crate (the conversation's memory uses
/// them too); the gateway's paths stay as they were.
pub use boardroom_semantic::{guard, text};

use boardroom_runtime::config::SemanticConfig;
use guard::{cosine, meaning_differs};
use verifier::{Verdict, Verifier};

/// One remembered prompt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Remembered {
    /// The prompt's text.
    pub prompt: String,
    /// Its embedding.
    pub vector: Vec<f32>,
    /// The exact-cache key of its answer.
    pub answer_key: String,
}

/// A scope's prompts: JSON in Redis, a shared list in L1.
#[derive(Debug, Clone, Copy)]
pub struct ScopeCodec;

impl Codec for ScopeCodec {
    type Value = Arc<Vec<Remembered>>;
    fn encode(value: &Self::Value) -> Bytes {
        Bytes::from(serde_json::to_vec(value.as_ref()).unwrap_or_default())
    }
    fn decode(bytes: Bytes) -> Option<Self::Value> {
        serde_json::from_slice(&bytes).ok().map(Arc::new)
    }
    fn weight(value: &Self::Value) -> usize {
        value
            .iter()
            .map(|r| 64 + r.prompt.len() + r.answer_key.len() + 4 * r.vector.len())
            .sum()
    }
}

/// The prompt a request is compared by, and the scope it is compared in; `None` when the
/// request does not end with a user message.
pub fn prompt_and_scope(request: &ChatRequest) -> Option<(String, String)> {
    let (last, before) = request.messages.split_last()?;
    if last.role != Role::User {
        return None;
    }
    #[derive(Serialize)]
    struct Scope<'a> {
        model: &'a str,
        before: &'a [crate::domain::Message],
        tools: &'a [crate::domain::ToolDef],
        params: &'a crate::domain::Params,
    }
    let scope = serde_json::to_vec(&Scope {
        model: &request.model,
        before,
        tools: &request.tools,
        params: &request.params,
    })
    .unwrap_or_default();
    Some((last.content.clone(), digest_key("s:", &scope)))
}

/// Candidates (distinct answers) a lookup may put to the verifier.
const VERIFIED_PER_LOOKUP: usize = 2;

/// The semantic index.
pub struct SemanticIndex {
    scopes: TieredCache<ScopeCodec>,
    ttl: Duration,
    threshold: f32,
    max_entries: usize,
    variants: usize,
    verifier: Option<Verifier>,
}

impl SemanticIndex {
    /// An index over `scopes`, with `config`'s threshold, bounds and verifier.
    pub fn new(
        scopes: TieredCache<ScopeCodec>,
        ttl: Duration,
        config: &SemanticConfig,
        client: reqwest::Client,
    ) -> Self {
        guard::warm();
        Self {
            scopes,
            ttl,
            threshold: config.threshold,
            max_entries: config.max_entries_per_scope.max(1),
            variants: config.variants_per_answer,
            verifier: Verifier::new(&config.verifier, client),
        }
    }

    /// The answer key of the most similar remembered answer whose every remembered prompt
    /// (the first and its variants) passes the guard, and the verifier when there is one.
    pub async fn find(&self, scope: &str, prompt: &str, vector: &[f32]) -> Option<String> {
        let remembered = self.scopes.get(scope).await?;
        let mut candidates: Vec<(f32, &Remembered)> = remembered
            .iter()
            .map(|r| (cosine(vector, &r.vector), r))
            .filter(|(similarity, _)| *similarity >= self.threshold)
            .collect();
        candidates.sort_by(|a, b| b.0.total_cmp(&a.0));
        let mut tried: Vec<&str> = Vec::new();
        let mut verified = 0;
        for (similarity, candidate) in candidates {
            if tried.contains(&candidate.answer_key.as_str()) {
                continue;
            }
            tried.push(&candidate.answer_key);
            let refusal = remembered
                .iter()
                .filter(|r| r.answer_key == candidate.answer_key)
                .find_map(|r| meaning_differs(prompt, &r.prompt).map(|d| (d, r)));
            if let Some((difference, against)) = refusal {
                tracing::debug!(
                    similarity,
                    kind = difference.kind,
                    difference = %difference.detail,
                    cached = %against.prompt,
                    "semantic candidate refused by the guard"
                );
                metrics::counter!("llm_semantic_guard_rejections_total", "reason" => difference.kind)
                    .increment(1);
                continue;
            }
            if let Some(verifier) = &self.verifier {
                if verified == VERIFIED_PER_LOOKUP {
                    break;
                }
                verified += 1;
                match verifier.verify(prompt, &candidate.prompt).await {
                    Verdict::Same => {}
                    verdict => {
                        let reason = if verdict == Verdict::Different {
                            "verifier"
                        } else {
                            "verifier unavailable"
                        };
                        metrics::counter!("llm_semantic_guard_rejections_total", "reason" => reason)
                            .increment(1);
                        continue;
                    }
                }
            }
            metrics::counter!("llm_semantic_lookups_total", "result" => "hit").increment(1);
            tracing::debug!(similarity, cached = %candidate.prompt, "semantic hit");
            return Some(candidate.answer_key.clone());
        }
        metrics::counter!("llm_semantic_lookups_total", "result" => "miss").increment(1);
        None
    }

    /// Remembers a prompt whose answer is under `answer_key`: the first prompt of an answer,
    /// or (`variant`) one that was served it, while the answer has fewer than
    /// `variants_per_answer` variants.
    pub async fn remember(
        &self,
        scope: &str,
        prompt: String,
        vector: Vec<f32>,
        answer_key: String,
        variant: bool,
    ) {
        let mut entries: Vec<Remembered> = self
            .scopes
            .get(scope)
            .await
            .map(|list| list.as_ref().clone())
            .unwrap_or_default();
        if entries.iter().any(|r| r.prompt == prompt) {
            return;
        }
        if variant
            && entries
                .iter()
                .filter(|r| r.answer_key == answer_key)
                .count()
                > self.variants
        {
            return;
        }
        entries.push(Remembered {
            prompt,
            vector,
            answer_key,
        });
        if entries.len() > self.max_entries {
            let excess = entries.len() - self.max_entries;
            entries.drain(..excess);
        }
        self.scopes.set(scope, Arc::new(entries), self.ttl).await;
    }
}
