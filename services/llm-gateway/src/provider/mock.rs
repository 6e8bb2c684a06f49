//! The mock provider: a real provider selected by config, answering without a model.
//! The text is derived from the prompt (same prompt, same answer), at a configured latency,
//! time to first token and token rate; embeddings are deterministic bags of hashed words, so
//! texts sharing words are close. It asks for a tool when the last user message says
//! `use tool <name> <argument>` and the request offers that tool; the argument fills the
//! tool's first required parameter. It ranks when the last user message ends with a line
//! `Labels: A, B, C.` (the conversation service's review): `{"ranking": [...], "reason": ...}`
//! with the labels ordered by a hash of the answers shown under them (`[A] text`), so every
//! reviewer agrees on the order of the same answers. It distils facts when the last user
//! message ends with the line `Facts: JSON.` (the conversation service's memory):
//! `{"facts": [...]}` holding every statement (a sentence ending in `.` or `!`, not `?`) of
//! its `[user] ` line.

use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;

use super::{ChunkStream, Provider, ProviderError, estimate_tokens};
use crate::domain::{
    ChatRequest, Chunk, Completion, Embeddings, FinishReason, Role, ToolCall, ToolChoice, Usage,
};

const WORDS: &[&str] = &[
    "revenue",
    "margin",
    "risk",
    "growth",
    "customers",
    "pricing",
    "runway",
    "hiring",
    "market",
    "roadmap",
    "churn",
    "cash",
    "partners",
    "launch",
    "quality",
    "costs",
    "brand",
    "scale",
    "focus",
    "data",
    "security",
    "timing",
    "budget",
    "team",
    "strategy",
    "signal",
    "forecast",
    "supply",
    "demand",
    "retention",
    "velocity",
    "trust",
];

/// Dimensions of mock embeddings.
pub const EMBEDDING_DIMENSIONS: usize = 256;

/// Settings of one mock deployment.
#[derive(Debug, Clone)]
pub struct MockSettings {
    /// The model name it reports.
    pub model: String,
    /// Time to a whole unary answer.
    pub latency: Duration,
    /// Time to the first streamed token.
    pub ttft: Duration,
    /// Streamed tokens per second after the first (0: all at once).
    pub tokens_per_second: u32,
    /// Tokens in an answer.
    pub output_tokens: u32,
}

/// The mock provider.
#[derive(Debug, Clone)]
pub struct MockProvider {
    settings: MockSettings,
}

fn fnv(text: &str, seed: u64) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325 ^ seed;
    for byte in text.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

impl MockProvider {
    /// A mock deployment.
    pub fn new(settings: MockSettings) -> Self {
        Self { settings }
    }

    fn answer(&self, request: &ChatRequest) -> Completion {
        let prompt: String = request
            .messages
            .iter()
            .map(|m| m.content.as_str())
            .collect::<Vec<_>>()
            .join("\n");
        let input_tokens = estimate_tokens(&prompt);
        if let Some(call) = self.tool_call(request) {
            return Completion {
                content: String::new(),
                tool_calls: vec![call],
                finish_reason: FinishReason::ToolCalls,
                usage: Usage {
                    input_tokens,
                    output_tokens: 8,
                    ..Usage::default()
                },
                model: self.settings.model.clone(),
            };
        }
        if let Some(content) = ranking(request).or_else(|| facts(request)) {
            return Completion {
                usage: Usage {
                    input_tokens,
                    output_tokens: estimate_tokens(&content),
                    ..Usage::default()
                },
                content,
                tool_calls: Vec::new(),
                finish_reason: FinishReason::Stop,
                model: self.settings.model.clone(),
            };
        }
        let wanted = request
            .params
            .max_tokens
            .unwrap_or(u32::MAX)
            .min(self.settings.output_tokens);
        let mut state = fnv(&prompt, 0) | 1;
        let words: Vec<&str> = (0..wanted)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                WORDS[(state % WORDS.len() as u64) as usize]
            })
            .collect();
        Completion {
            content: words.join(" "),
            tool_calls: Vec::new(),
            finish_reason: if wanted < self.settings.output_tokens {
                FinishReason::Length
            } else {
                FinishReason::Stop
            },
            usage: Usage {
                input_tokens,
                output_tokens: wanted,
                ..Usage::default()
            },
            model: self.settings.model.clone(),
        }
    }

    fn tool_call(&self, request: &ChatRequest) -> Option<ToolCall> {
        if request.params.tool_choice == ToolChoice::None {
            return None;
        }
        let last = request.messages.last().filter(|m| m.role == Role::User)?;
        let asked = last.content.split("use tool ").nth(1)?;
        let name = asked.split_whitespace().next()?;
        let tool = request.tools.iter().find(|t| t.name == name)?;
        // The rest of the line fills the tool's first required argument.
        let rest = asked[name.len()..]
            .lines()
            .next()
            .unwrap_or_default()
            .trim();
        let arguments = serde_json::from_str::<serde_json::Value>(&tool.parameters)
            .ok()
            .and_then(|schema| schema.get("required")?.get(0)?.as_str().map(str::to_owned))
            .filter(|_| !rest.is_empty())
            .map(|field| serde_json::json!({ field: rest }).to_string())
            .unwrap_or_else(|| "{}".into());
        Some(ToolCall {
            id: format!("call_{:x}", fnv(&last.content, 7) & 0xffff_ffff),
            name: tool.name.clone(),
            arguments,
        })
    }
}

/// The ranking a review asks for (see the module's doc), or `None` when none is asked.
fn ranking(request: &ChatRequest) -> Option<String> {
    let last = request.messages.last().filter(|m| m.role == Role::User)?;
    let line = last
        .content
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())?
        .strip_prefix("Labels: ")?;
    let labels: Vec<&str> = line
        .trim_end_matches('.')
        .split(',')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if labels.is_empty() {
        return None;
    }
    let shown = |label: &str| {
        let mark = format!("[{label}] ");
        last.content
            .lines()
            .find_map(|l| l.strip_prefix(mark.as_str()))
            .unwrap_or(label)
            .to_owned()
    };
    let mut ranked = labels.clone();
    ranked.sort_by_key(|label| fnv(&shown(label), 3));
    let reason = format!("{} reads as the most concrete answer", ranked[0]);
    Some(serde_json::json!({ "ranking": ranked, "reason": reason }).to_string())
}

/// The facts a memory's distillation asks for (see the module's doc), or `None` when none
/// are asked.
fn facts(request: &ChatRequest) -> Option<String> {
    let last = request.messages.last().filter(|m| m.role == Role::User)?;
    let mut lines = last.content.lines().filter(|l| !l.trim().is_empty());
    if lines.next_back()?.trim() != "Facts: JSON." {
        return None;
    }
    let user = last
        .content
        .lines()
        .find_map(|l| l.strip_prefix("[user] "))
        .unwrap_or_default();
    let mut facts = Vec::new();
    let mut start = 0;
    let chars: Vec<(usize, char)> = user.char_indices().collect();
    for (i, &(at, c)) in chars.iter().enumerate() {
        let ends = chars
            .get(i + 1)
            .is_none_or(|(_, next)| next.is_whitespace());
        if matches!(c, '.' | '!' | '?') && ends {
            let sentence = user[start..at + c.len_utf8()].trim();
            if c != '?' && sentence.len() > 1 {
                facts.push(sentence.to_owned());
            }
            start = at + c.len_utf8();
        }
    }
    Some(serde_json::json!({ "facts": facts }).to_string())
}

/// A deterministic unit vector of `text`'s words.
pub fn embed_text(text: &str) -> Vec<f32> {
    let mut vector = vec![0f32; EMBEDDING_DIMENSIONS];
    for word in text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        let hash = fnv(&word.to_lowercase(), 11);
        let index = (hash % EMBEDDING_DIMENSIONS as u64) as usize;
        vector[index] += if hash & (1 << 40) == 0 { 1.0 } else { -1.0 };
    }
    let norm = vector.iter().map(|v| v * v).sum::<f32>().sqrt();
    if norm > 0.0 {
        vector.iter_mut().for_each(|v| *v /= norm);
    }
    vector
}

impl Provider for MockProvider {
    fn chat<'a>(
        &'a self,
        request: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<Completion, ProviderError>> {
        async move {
            if !self.settings.latency.is_zero() {
                tokio::time::sleep(self.settings.latency).await;
            }
            Ok(self.answer(request))
        }
        .boxed()
    }

    fn chat_stream<'a>(
        &'a self,
        request: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<ChunkStream, ProviderError>> {
        let answer = self.answer(request);
        let (ttft, rate) = (self.settings.ttft, self.settings.tokens_per_second);
        async move {
            let mut chunks: Vec<Chunk> = Vec::new();
            for (i, word) in answer
                .content
                .split(' ')
                .filter(|w| !w.is_empty())
                .enumerate()
            {
                chunks.push(Chunk::Delta(if i == 0 {
                    word.to_owned()
                } else {
                    format!(" {word}")
                }));
            }
            chunks.extend(answer.tool_calls.iter().cloned().map(Chunk::ToolCall));
            chunks.push(Chunk::Done {
                finish_reason: answer.finish_reason,
                usage: answer.usage,
                model: answer.model.clone(),
            });
            let gap = (rate > 0).then(|| Duration::from_secs_f64(1.0 / f64::from(rate)));
            let stream = futures::stream::unfold(
                (chunks.into_iter(), true),
                move |(mut chunks, first)| async move {
                    let chunk = chunks.next()?;
                    let wait = if first { Some(ttft) } else { gap };
                    if let Some(wait) = wait.filter(|w| !w.is_zero()) {
                        tokio::time::sleep(wait).await;
                    }
                    Some((Ok(chunk), (chunks, false)))
                },
            );
            Ok(Box::pin(stream) as ChunkStream)
        }
        .boxed()
    }

    fn embed<'a>(
        &'a self,
        inputs: &'a [String],
    ) -> BoxFuture<'a, Result<Embeddings, ProviderError>> {
        async move {
            Ok(Embeddings {
                vectors: inputs.iter().map(|text| embed_text(text)).collect(),
                usage: Usage {
                    input_tokens: inputs.iter().map(|t| estimate_tokens(t)).sum(),
                    ..Usage::default()
                },
                model: self.settings.model.clone(),
            })
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{CachePolicy, Message, Params};

    fn asked(text: &str) -> ChatRequest {
        ChatRequest {
            model: "mock".into(),
            messages: vec![Message {
                role: Role::User,
                content: text.into(),
                tool_calls: Vec::new(),
                tool_call_id: None,
                name: None,
            }],
            tools: Vec::new(),
            params: Params::default(),
            request_id: String::new(),
            cache_policy: CachePolicy::default(),
        }
    }

    #[test]
    fn a_distillation_gets_the_user_s_statements_and_nothing_else_does() {
        let reply = facts(&asked(
            "[user] Our runway is 14.5 months. Should we raise prices? We sell to mid-market!\n[moderator] Raise them.\n\nFacts: JSON.",
        ));
        assert_eq!(
            reply.as_deref(),
            Some(r#"{"facts":["Our runway is 14.5 months.","We sell to mid-market!"]}"#)
        );
        assert_eq!(
            facts(&asked("[user] Hi?\n\nFacts: JSON.")).as_deref(),
            Some(r#"{"facts":[]}"#)
        );
        assert_eq!(facts(&asked("[user] Our runway is 14 months.")), None);
    }
}
