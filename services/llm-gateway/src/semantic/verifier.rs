//! The semantic cache's optional verifier: a cross-encoder behind a `/v1/rerank`-style
//! endpoint scores "the asked prompt" against "the cached prompt", and the hit is served only
//! at `min_score` or above. A cross-encoder reads both prompts together, so it sees what an
//! embedding of each alone and the guard's rules may miss; it costs a round trip, so it runs
//! only for candidates that already passed the similarity and the guard, within a budget, and
//! its verdicts are cached by the pair. A verifier that fails or is late refuses the hit (a
//! miss costs one upstream call; a wrong hit serves a wrong answer).

use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant};

use boardroom_runtime::config::VerifierConfig;
use serde::Deserialize;

/// What the verifier said of a pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The same question: serve the hit.
    Same,
    /// Another question: refuse it.
    Different,
    /// No verdict in time (an error, a timeout, a malformed answer): refuse it.
    Unavailable,
}

/// The verifier client.
pub struct Verifier {
    client: reqwest::Client,
    url: String,
    model: String,
    api_key: Option<String>,
    min_score: f32,
    budget: Duration,
    verdicts: moka::future::Cache<u64, bool>,
}

#[derive(Deserialize)]
struct RerankResponse {
    results: Vec<RerankResult>,
}

#[derive(Deserialize)]
struct RerankResult {
    #[serde(default)]
    index: usize,
    #[serde(alias = "score")]
    relevance_score: f32,
}

impl Verifier {
    /// The verifier `config` describes; `None` when it has no URL.
    pub fn new(config: &VerifierConfig, client: reqwest::Client) -> Option<Self> {
        if config.url.is_empty() {
            return None;
        }
        Some(Self {
            client,
            url: config.url.clone(),
            model: config.model.clone(),
            api_key: config.api_key.as_ref().map(|k| k.expose().to_owned()),
            min_score: config.min_score,
            budget: Duration::from_millis(config.budget_ms),
            verdicts: moka::future::Cache::new(config.cache_entries),
        })
    }

    /// Whether `asked` may get the answer of `cached`.
    pub async fn verify(&self, asked: &str, cached: &str) -> Verdict {
        let key = {
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            (asked, cached).hash(&mut hasher);
            hasher.finish()
        };
        if let Some(same) = self.verdicts.get(&key).await {
            metrics::counter!("llm_semantic_verifier_calls_total", "result" => "cached")
                .increment(1);
            return if same {
                Verdict::Same
            } else {
                Verdict::Different
            };
        }
        let started = Instant::now();
        let score = tokio::time::timeout(self.budget, self.score(asked, cached)).await;
        metrics::histogram!("llm_semantic_verifier_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        let verdict = match score {
            Ok(Ok(score)) => {
                let same = score >= self.min_score;
                self.verdicts.insert(key, same).await;
                tracing::debug!(score, same, "semantic verifier");
                if same {
                    Verdict::Same
                } else {
                    Verdict::Different
                }
            }
            Ok(Err(error)) => {
                tracing::warn!(%error, url = %self.url, "semantic verifier failed; the hit is refused");
                Verdict::Unavailable
            }
            Err(_) => {
                tracing::warn!(
                    budget_ms = self.budget.as_millis() as u64,
                    "semantic verifier late; the hit is refused"
                );
                Verdict::Unavailable
            }
        };
        let label = match verdict {
            Verdict::Same => "same",
            Verdict::Different => "different",
            Verdict::Unavailable => "unavailable",
        };
        metrics::counter!("llm_semantic_verifier_calls_total", "result" => label).increment(1);
        verdict
    }

    async fn score(&self, asked: &str, cached: &str) -> Result<f32, String> {
        let body = serde_json::json!({
            "model": self.model,
            "query": asked,
            "documents": [cached],
            "top_n": 1,
        });
        let mut request = self.client.post(&self.url).json(&body);
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.map_err(|e| e.to_string())?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("HTTP {status}"));
        }
        let parsed: RerankResponse = response
            .json()
            .await
            .map_err(|e| format!("not a rerank response: {e}"))?;
        parsed
            .results
            .iter()
            .find(|r| r.index == 0)
            .map(|r| r.relevance_score)
            .filter(|s| s.is_finite())
            .ok_or_else(|| "no score for the document".to_owned())
    }
}
