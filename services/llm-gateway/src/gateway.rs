//! The gateway's core: aliases → deployments, retries and fallback within the caller's
//! deadline, circuit breakers, the exact response cache, coalescing of identical requests in
//! flight, and accounting.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use boardroom_cache::TieredCache;
use boardroom_runtime::config::{Price, RetryConfig};
use futures::future::{BoxFuture, Shared};
use futures::{FutureExt, StreamExt};
use tracing::Instrument;

use crate::balance::{self, PeakEwma};
use crate::breaker::Breaker;
use crate::domain::{
    CacheOutcome, CachePolicy, ChatAnswer, ChatRequest, Chunk, Completion, Embeddings,
    FinishReason, Usage,
};
use crate::error::GatewayError;
use crate::provider::{ChunkStream, Provider, ProviderError};
use crate::response_cache::{AnswerCodec, CachedAnswer, cache_key};
use crate::semantic::{SemanticIndex, prompt_and_scope};

/// One deployment: a provider endpoint + model, its breaker and its price.
pub struct Deployment {
    /// Its name in config.
    pub name: String,
    /// Who serves it, as OpenTelemetry's `gen_ai.system` names it (`openai`, `anthropic`, …).
    pub system: &'static str,
    /// The model it asks its provider for.
    pub model: String,
    /// What answers it.
    pub provider: Arc<dyn Provider>,
    /// Its circuit.
    pub breaker: Breaker,
    /// Its price per million tokens.
    pub price: Price,
    /// Its share of the alias's traffic.
    pub weight: u32,
    /// Its load estimate.
    pub load: PeakEwma,
}

impl Deployment {
    /// Cost of `usage` in micro-dollars: uncached prompt tokens at the input rate, cache reads
    /// and writes at theirs (the input rate when the price table has none), output at the
    /// output rate; summed before the one division, so nothing is lost to rounding per kind.
    pub fn cost_micros(&self, usage: crate::domain::Usage) -> u64 {
        let p = &self.price;
        let input = u128::from(p.input_per_million_micros);
        let micro_millions = u128::from(usage.uncached_input_tokens()) * input
            + u128::from(usage.cache_read_tokens)
                * u128::from(
                    p.cache_read_per_million_micros
                        .unwrap_or(p.input_per_million_micros),
                )
            + u128::from(usage.cache_write_tokens)
                * u128::from(
                    p.cache_write_per_million_micros
                        .unwrap_or(p.input_per_million_micros),
                )
            + u128::from(usage.output_tokens) * u128::from(p.output_per_million_micros);
        u64::try_from(micro_millions / 1_000_000).unwrap_or(u64::MAX)
    }
}

/// A model alias: balanced deployments, then fallbacks in order.
#[derive(Clone)]
pub struct Alias {
    /// Balanced by power of two choices.
    pub deployments: Arc<[Arc<Deployment>]>,
    /// Tried in order when the balanced ones fail.
    pub fallbacks: Arc<[Arc<Deployment>]>,
    /// Semantic cache on.
    pub semantic_cache: bool,
}

type Flight = Shared<BoxFuture<'static, Result<(Completion, Arc<Deployment>), GatewayError>>>;

/// Identical requests in flight: key → (flight id, the shared call).
type Flights = Arc<Mutex<HashMap<String, (u64, Flight)>>>;

/// Removes its flight from the map when the flight ends or is dropped (every waiter gone),
/// unless a newer flight took the key meanwhile.
struct FlightEntry {
    flights: Flights,
    key: String,
    id: u64,
}

impl Drop for FlightEntry {
    fn drop(&mut self) {
        let mut flights = self.flights.lock().unwrap_or_else(|e| e.into_inner());
        if flights.get(&self.key).is_some_and(|(id, _)| *id == self.id) {
            flights.remove(&self.key);
        }
    }
}

/// The gateway.
pub struct Gateway {
    aliases: BTreeMap<String, Alias>,
    cache: Option<(TieredCache<AnswerCodec>, Duration)>,
    /// The semantic index and the alias that embeds prompts.
    semantic: Option<(SemanticIndex, String)>,
    inflight: Flights,
    next_flight: std::sync::atomic::AtomicU64,
    retry: RetryConfig,
    total_timeout: Duration,
}

/// An answer on its way: the first chunk is already in (retries and fallback are over).
pub struct AnswerStream {
    /// The chunks, ending with `Chunk::Done` or an error.
    pub chunks: ChunkStream,
    /// Where it comes from.
    pub meta: StreamMeta,
}

/// Where a streamed answer comes from.
#[derive(Clone)]
pub struct StreamMeta {
    /// The deployment serving it.
    pub deployment: String,
    /// How it was obtained.
    pub cache: CacheOutcome,
    /// The deployment, for accounting (none for a cached answer).
    deployment_ref: Option<Arc<Deployment>>,
    /// Stores the assembled answer when it completes (cacheable requests).
    cache_key: Option<String>,
}

/// `llm_upstream_in_flight` for one call, decremented however the call ends.
struct InFlightGauge(metrics::Gauge);

impl InFlightGauge {
    fn enter(deployment: &str) -> Self {
        let gauge =
            metrics::gauge!("llm_upstream_in_flight", "deployment" => deployment.to_owned());
        gauge.increment(1.0);
        Self(gauge)
    }
}

impl Drop for InFlightGauge {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// Full jitter: a random share of `cap`.
fn jitter(cap: Duration) -> Duration {
    let random = RandomState::new().hash_one(Instant::now());
    cap.mul_f64((random % 10_000) as f64 / 10_000.0)
}

impl Gateway {
    /// A gateway over `aliases`.
    pub fn new(
        aliases: BTreeMap<String, Alias>,
        cache: Option<(TieredCache<AnswerCodec>, Duration)>,
        semantic: Option<(SemanticIndex, String)>,
        retry: RetryConfig,
        total_timeout: Duration,
    ) -> Self {
        Self {
            aliases,
            cache,
            semantic,
            inflight: Flights::default(),
            next_flight: std::sync::atomic::AtomicU64::new(0),
            retry,
            total_timeout,
        }
    }

    /// Every alias, with its deployments.
    pub fn aliases(&self) -> &BTreeMap<String, Alias> {
        &self.aliases
    }

    fn alias(&self, model: &str) -> Result<&Alias, GatewayError> {
        self.aliases
            .get(model)
            .ok_or_else(|| GatewayError::UnknownModel(model.to_owned()))
    }

    /// One complete answer: from the cache when allowed, else shared with an identical
    /// request in flight, else from the first deployment that answers.
    pub async fn chat(
        &self,
        request: ChatRequest,
        deadline: Instant,
        caller: &str,
    ) -> Result<ChatAnswer, GatewayError> {
        let started = Instant::now();
        let alias = self.alias(&request.model)?.clone();
        let request = Arc::new(request);
        let upstream = Arc::new(Mutex::new(Duration::ZERO));
        let answer = self
            .chat_inner(&alias, request.clone(), deadline, &upstream)
            .await;
        let upstream = *upstream.lock().unwrap_or_else(|e| e.into_inner());
        metrics::histogram!("llm_gateway_overhead_seconds", "rpc" => "chat")
            .record(started.elapsed().saturating_sub(upstream).as_secs_f64());
        let (mut completion, deployment, cache) = answer.inspect_err(|err| {
            metrics::counter!("llm_requests_total", "model" => request.model.clone(), "result" => err.kind()).increment(1);
        })?;
        if cache == CacheOutcome::Miss && completion.usage == crate::domain::Usage::default() {
            completion.usage = crate::domain::Usage::estimated(
                request.prompt_tokens(),
                &completion.content,
                &completion.tool_calls,
            );
        }
        let cost_micros = match (&deployment, cache) {
            (Some(d), CacheOutcome::Miss) => account(d, completion.usage, caller),
            _ => 0,
        };
        metrics::counter!("llm_requests_total", "model" => request.model.clone(), "result" => cache.label()).increment(1);
        Ok(ChatAnswer {
            deployment: deployment.map_or_else(String::new, |d| d.name.clone()),
            completion,
            cache,
            cost_micros,
        })
    }

    async fn chat_inner(
        &self,
        alias: &Alias,
        request: Arc<ChatRequest>,
        deadline: Instant,
        upstream: &Arc<Mutex<Duration>>,
    ) -> Result<(Completion, Option<Arc<Deployment>>, CacheOutcome), GatewayError> {
        let retry = self.retry.clone();
        let total = self.total_timeout;
        let call = {
            let (alias, request, upstream) = (alias.clone(), request.clone(), upstream.clone());
            move |deadline: Instant| {
                let (alias, request, upstream, retry) = (
                    alias.clone(),
                    request.clone(),
                    upstream.clone(),
                    retry.clone(),
                );
                async move {
                    call_with_fallback(&alias, &request, deadline, &retry, total, &upstream).await
                }
            }
        };
        if let (true, Some((cache, ttl))) = (request.cacheable(), &self.cache) {
            let key = cache_key(&request);
            if request.cache_policy == CachePolicy::CacheOnly {
                return match cache.get(&key).await {
                    Some(hit) => Ok((hit.completion.clone(), None, CacheOutcome::Exact)),
                    None => Err(GatewayError::NotCached),
                };
            }
            let loaded: Arc<Mutex<Option<Arc<Deployment>>>> = Arc::default();
            let semantic_hit = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let semantic = self
                .semantic
                .as_ref()
                .filter(|_| alias.semantic_cache)
                .zip(prompt_and_scope(&request));
            let found = cache
                .get_or_load(&key, *ttl, || {
                    let (call, loaded, semantic_hit) =
                        (call.clone(), loaded.clone(), semantic_hit.clone());
                    let key = key.clone();
                    let semantic = semantic.clone();
                    async move {
                        // Semantic: a prompt that means the same in this scope.
                        let mut remember = None;
                        if let Some(((index, embedder), (prompt, scope))) = semantic {
                            let embedded = self
                                .embed(
                                    embedder,
                                    vec![crate::semantic::text::normalise(&prompt)],
                                    deadline,
                                    "semantic-cache",
                                )
                                .await;
                            if let Ok((mut embeddings, _)) = embedded
                                && !embeddings.vectors.is_empty()
                            {
                                let vector = embeddings.vectors.swap_remove(0);
                                if let Some(answer_key) = index.find(&scope, &prompt, &vector).await
                                    && let Some(answer) = cache.get(&answer_key).await
                                {
                                    semantic_hit.store(true, std::sync::atomic::Ordering::Release);
                                    // Remembered as a variant of the answer's question.
                                    index
                                        .remember(&scope, prompt, vector, answer_key, true)
                                        .await;
                                    return Ok::<_, GatewayError>(Some(answer));
                                }
                                remember = Some((index, scope, prompt, vector));
                            }
                        }
                        let (completion, deployment) = call(deadline).await?;
                        let answer = CachedAnswer {
                            completion,
                            deployment: deployment.name.clone(),
                        };
                        *loaded.lock().unwrap_or_else(|e| e.into_inner()) = Some(deployment);
                        if let Some((index, scope, prompt, vector)) = remember {
                            index.remember(&scope, prompt, vector, key, false).await;
                        }
                        Ok(Some(Arc::new(answer)))
                    }
                })
                .await
                .map_err(|err| (*err).clone())?
                .ok_or(GatewayError::NotCached)?;
            let deployment = loaded.lock().unwrap_or_else(|e| e.into_inner()).take();
            let outcome = if semantic_hit.load(std::sync::atomic::Ordering::Acquire) {
                CacheOutcome::Semantic
            } else if deployment.is_some() {
                CacheOutcome::Miss
            } else {
                CacheOutcome::Exact
            };
            let deployment = deployment.or_else(|| {
                alias
                    .deployments
                    .iter()
                    .chain(alias.fallbacks.iter())
                    .find(|d| d.name == found.deployment)
                    .cloned()
            });
            return Ok((found.completion.clone(), deployment, outcome));
        }
        if request.cache_policy == CachePolicy::CacheOnly {
            return Err(GatewayError::NotCached); // the cache is off
        }
        if request.cache_policy == CachePolicy::Bypass {
            let (completion, deployment) = call(deadline).await?;
            return Ok((completion, Some(deployment), CacheOutcome::Miss));
        }
        // Coalesce identical requests in flight: one upstream call, every waiter the answer.
        // The flight removes itself from the map when it ends or when every waiter is gone; it
        // runs to the gateway's own bound, not its first caller's deadline (a later caller may
        // wait longer), and each waiter waits until its own deadline.
        let key = cache_key(&request);
        let (flight, leader) = {
            let mut inflight = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
            match inflight.get(&key) {
                Some((_, flight)) => (flight.clone(), false),
                None => {
                    let entry = FlightEntry {
                        flights: self.inflight.clone(),
                        key: key.clone(),
                        id: self
                            .next_flight
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                    };
                    let id = entry.id;
                    let call = call(Instant::now() + self.total_timeout);
                    let flight = async move {
                        let _entry = entry;
                        call.await
                    }
                    .boxed()
                    .shared();
                    inflight.insert(key, (id, flight.clone()));
                    (flight, true)
                }
            }
        };
        let result = tokio::time::timeout_at(deadline.into(), flight)
            .await
            .map_err(|_| GatewayError::DeadlineExceeded)?;
        let (completion, deployment) = result?;
        let outcome = if leader {
            CacheOutcome::Miss
        } else {
            CacheOutcome::Coalesced
        };
        Ok((completion, Some(deployment), outcome))
    }

    /// An answer as it is generated. A cached answer streams as one delta. Retries and
    /// fallback happen until the first chunk arrives; after it, a broken upstream ends the
    /// stream with an error.
    pub async fn chat_stream(
        &self,
        request: ChatRequest,
        deadline: Instant,
    ) -> Result<AnswerStream, GatewayError> {
        let started = Instant::now();
        let alias = self.alias(&request.model)?.clone();
        let key = (request.cacheable() && self.cache.is_some()).then(|| cache_key(&request));
        if let (Some(key), Some((cache, _))) = (&key, &self.cache)
            && let Some(hit) = cache.get(key).await
        {
            let completion = hit.completion.clone();
            let mut chunks = Vec::new();
            if !completion.content.is_empty() {
                chunks.push(Ok(Chunk::Delta(completion.content.clone())));
            }
            chunks.extend(
                completion
                    .tool_calls
                    .iter()
                    .cloned()
                    .map(|c| Ok(Chunk::ToolCall(c))),
            );
            chunks.push(Ok(Chunk::Done {
                finish_reason: completion.finish_reason,
                usage: completion.usage,
                model: completion.model.clone(),
            }));
            metrics::counter!("llm_requests_total", "model" => request.model.clone(), "result" => "exact").increment(1);
            return Ok(AnswerStream {
                chunks: Box::pin(futures::stream::iter(chunks)),
                meta: StreamMeta {
                    deployment: hit.deployment.clone(),
                    cache: CacheOutcome::Exact,
                    deployment_ref: None,
                    cache_key: None,
                },
            });
        }
        if request.cache_policy == CachePolicy::CacheOnly {
            return Err(GatewayError::NotCached);
        }
        let (first, rest, deployment) = stream_with_fallback(
            &alias,
            &request,
            deadline,
            &self.retry,
            self.total_timeout,
        )
        .await
        .inspect_err(|err| {
            metrics::counter!("llm_requests_total", "model" => request.model.clone(), "result" => err.kind()).increment(1);
        })?;
        metrics::histogram!("llm_time_to_first_token_seconds", "deployment" => deployment.name.clone())
            .record(started.elapsed().as_secs_f64());
        metrics::counter!("llm_requests_total", "model" => request.model.clone(), "result" => "miss").increment(1);
        let chunks = futures::stream::once(async move { Ok(first) }).chain(rest);
        Ok(AnswerStream {
            chunks: Box::pin(chunks),
            meta: StreamMeta {
                deployment: deployment.name.clone(),
                cache: CacheOutcome::Miss,
                deployment_ref: Some(deployment),
                cache_key: key,
            },
        })
    }

    /// A stream broke after its first chunk: the deployment's breaker hears of it.
    pub fn stream_broke(&self, stream: &StreamMeta) {
        if let Some(deployment) = &stream.deployment_ref {
            deployment.breaker.failure();
        }
    }

    /// Accounts a stream that ended before its usage came (broken, past the deadline, or left
    /// by its caller): the provider bills what it generated, so the estimate is counted.
    /// Returns its cost.
    pub fn account_unfinished(&self, stream: &StreamMeta, usage: Usage, caller: &str) -> u64 {
        match &stream.deployment_ref {
            Some(deployment) => account(deployment, usage, caller),
            None => 0,
        }
    }

    /// Accounts a completed stream and caches its assembled answer (only a complete,
    /// successful one). Returns its cost.
    pub async fn finish_stream(
        &self,
        stream: &StreamMeta,
        completion: Completion,
        caller: &str,
        elapsed_after_first: Duration,
    ) -> u64 {
        let Some(deployment) = &stream.deployment_ref else {
            return 0;
        };
        if completion.usage.output_tokens > 1 && !elapsed_after_first.is_zero() {
            metrics::histogram!("llm_output_tokens_per_second", "deployment" => deployment.name.clone())
                .record(f64::from(completion.usage.output_tokens) / elapsed_after_first.as_secs_f64());
        }
        let cost = account(deployment, completion.usage, caller);
        if let (Some(key), Some((cache, ttl))) = (&stream.cache_key, &self.cache) {
            let answer = CachedAnswer {
                completion,
                deployment: deployment.name.clone(),
            };
            cache.set(key, Arc::new(answer), *ttl).await;
        }
        cost
    }

    /// Embeddings through the alias's deployments, with retries and fallback.
    pub async fn embed(
        &self,
        model: &str,
        inputs: Vec<String>,
        deadline: Instant,
        caller: &str,
    ) -> Result<(Embeddings, String), GatewayError> {
        let alias = self.alias(model)?.clone();
        let inputs = &inputs;
        let (embeddings, deployment) = with_fallback(
            &alias,
            deadline,
            &self.retry,
            self.total_timeout,
            "total",
            |deployment| {
                let span = upstream_span(&deployment, "embeddings");
                async move { deployment.provider.embed(inputs).await }.instrument(span)
            },
        )
        .await?;
        metrics::counter!("llm_tokens_total", "deployment" => deployment.name.clone(), "direction" => "input", "caller" => caller.to_owned())
            .increment(u64::from(embeddings.usage.input_tokens));
        Ok((embeddings, deployment.name.clone()))
    }
}

/// Tokens and cost of an answer the deployment produced, per caller. `llm_tokens_total`'s
/// `direction`s are disjoint: `input` (prompt tokens the prompt cache did not serve),
/// `cache_read`, `cache_write` and `output`; their sum is every token of the call.
fn account(deployment: &Deployment, usage: Usage, caller: &str) -> u64 {
    let name = &deployment.name;
    for (direction, tokens) in [
        ("input", usage.uncached_input_tokens()),
        ("cache_read", usage.cache_read_tokens),
        ("cache_write", usage.cache_write_tokens),
        ("output", usage.output_tokens),
    ] {
        metrics::counter!("llm_tokens_total", "deployment" => name.clone(), "direction" => direction, "caller" => caller.to_owned())
            .increment(u64::from(tokens));
    }
    let cost = deployment.cost_micros(usage);
    metrics::counter!("llm_cost_micros_total", "deployment" => name.clone(), "caller" => caller.to_owned())
        .increment(cost);
    cost
}

/// The deployments to try, in order: the balanced ones whose circuit lets a call through,
/// ordered by power of two choices, then the fallbacks in their order; when every circuit is
/// open, a due probe, else UNAVAILABLE.
fn routable(alias: &Alias) -> Result<Vec<Arc<Deployment>>, GatewayError> {
    // A closed circuit lets the call through; an open one only as its one due probe.
    let usable = |d: &&Arc<Deployment>| d.breaker.is_closed() || d.breaker.allow();
    let balanced: Vec<(Arc<Deployment>, u32, f64)> = alias
        .deployments
        .iter()
        .filter(usable)
        .map(|d| (d.clone(), d.weight, d.load.cost()))
        .collect();
    let mut chosen = balance::order(balanced);
    chosen.extend(alias.fallbacks.iter().filter(usable).cloned());
    if chosen.is_empty() {
        return Err(GatewayError::Unavailable {
            message: "every deployment's circuit is open".into(),
            retry_after: None,
        });
    }
    Ok(chosen)
}

/// After a failed attempt: records it on the breaker, and says how long to wait before
/// retrying the same deployment (`None`: move on to the next one). A request the upstream
/// rejects as invalid ends everything.
fn settle(
    deployment: &Deployment,
    err: &ProviderError,
    attempt: u32,
    retry: &RetryConfig,
    deadline: Instant,
) -> Result<Option<Duration>, GatewayError> {
    tracing::debug!(deployment = %deployment.name, attempt, error = %err, "upstream call failed");
    if err.caller_fault() {
        // The deployment answered: it is healthy, the request is not.
        deployment.breaker.success();
        return Err(GatewayError::Rejected(err.to_string()));
    }
    if matches!(err, ProviderError::Unsupported(_)) {
        // The deployment is healthy; it just lacks this API: the next one may have it.
        return Ok(None);
    }
    deployment.breaker.failure();
    if !err.retryable() || attempt + 1 >= retry.max_attempts {
        metrics::counter!("llm_fallbacks_total", "deployment" => deployment.name.clone())
            .increment(1);
        return Ok(None);
    }
    let cap = Duration::from_millis(retry.max_backoff_ms);
    let wait = match err.retry_after() {
        Some(after) if after > cap => return Ok(None),
        Some(after) => after,
        None => jitter(
            Duration::from_millis(retry.base_backoff_ms.saturating_mul(1 << attempt.min(16)))
                .min(cap),
        ),
    };
    if Instant::now() + wait >= deadline {
        return Ok(None);
    }
    metrics::counter!("llm_retries_total", "deployment" => deployment.name.clone()).increment(1);
    Ok(Some(wait))
}

fn unavailable(last: Option<ProviderError>) -> GatewayError {
    if let Some(err @ ProviderError::Unsupported(_)) = &last {
        // No deployment of the alias offers the API: the request is wrong for it.
        return GatewayError::Rejected(err.to_string());
    }
    GatewayError::Unavailable {
        retry_after: last.as_ref().and_then(ProviderError::retry_after),
        message: last.map_or_else(
            || "no deployment could be tried".into(),
            |err| format!("every deployment failed; last: {err}"),
        ),
    }
}

/// Tries the alias's deployments in order, each up to `retry.max_attempts` times, every
/// attempt bounded by the caller's deadline and `total` (`bound` names it in the error, and
/// its time counts in the deployment's load); the first success wins.
async fn with_fallback<T, F, Fut>(
    alias: &Alias,
    deadline: Instant,
    retry: &RetryConfig,
    total: Duration,
    bound: &'static str,
    mut attempt: F,
) -> Result<(T, Arc<Deployment>), GatewayError>
where
    F: FnMut(Arc<Deployment>) -> Fut,
    Fut: Future<Output = Result<T, ProviderError>>,
{
    let mut last = None;
    for deployment in routable(alias)? {
        for n in 0..retry.max_attempts {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(GatewayError::DeadlineExceeded);
            }
            let call = deployment.load.start();
            let result = tokio::time::timeout(remaining.min(total), attempt(deployment.clone()))
                .await
                .unwrap_or(Err(ProviderError::Timeout(bound)));
            if result.is_err() {
                call.failed();
            } else {
                drop(call);
            }
            match result {
                Ok(value) => {
                    deployment.breaker.success();
                    return Ok((value, deployment));
                }
                Err(err) => {
                    let next = settle(&deployment, &err, n, retry, deadline)?;
                    last = Some(err);
                    match next {
                        Some(wait) => tokio::time::sleep(wait).await,
                        None => break,
                    }
                }
            }
        }
    }
    // Out of time is the caller's deadline, not the deployments' failing.
    if Instant::now() >= deadline {
        return Err(GatewayError::DeadlineExceeded);
    }
    Err(unavailable(last))
}

/// Time on the upstream of one chat attempt, recorded however the attempt ends (a timeout
/// drops it unfinished).
struct UpstreamTimer<'a> {
    deployment: &'a str,
    started: Instant,
    total: &'a Mutex<Duration>,
}

impl Drop for UpstreamTimer<'_> {
    fn drop(&mut self) {
        let took = self.started.elapsed();
        *self.total.lock().unwrap_or_else(|e| e.into_inner()) += took;
        metrics::histogram!("llm_upstream_duration_seconds", "deployment" => self.deployment.to_owned())
            .record(took.as_secs_f64());
    }
}

async fn call_with_fallback(
    alias: &Alias,
    request: &ChatRequest,
    deadline: Instant,
    retry: &RetryConfig,
    total: Duration,
    upstream: &Mutex<Duration>,
) -> Result<(Completion, Arc<Deployment>), GatewayError> {
    with_fallback(alias, deadline, retry, total, "total", |deployment| {
        let span = upstream_span(&deployment, "chat");
        async move {
            let _in_flight = InFlightGauge::enter(&deployment.name);
            let _timer = UpstreamTimer {
                deployment: &deployment.name,
                started: Instant::now(),
                total: upstream,
            };
            let result = deployment.provider.chat(request).await;
            let span = tracing::Span::current();
            match &result {
                Ok(completion) => {
                    record_usage(
                        &span,
                        completion.usage,
                        completion.finish_reason,
                        &completion.model,
                    );
                }
                Err(err) => {
                    span.record("error.type", err.kind());
                }
            }
            result
        }
        .instrument(span)
    })
    .await
}

/// A stream's attempt ends at its first chunk: time to it is what a stream's latency means
/// for balancing, and after it nothing is retried.
async fn stream_with_fallback(
    alias: &Alias,
    request: &ChatRequest,
    deadline: Instant,
    retry: &RetryConfig,
    total: Duration,
) -> Result<(Chunk, ChunkStream, Arc<Deployment>), GatewayError> {
    let ((first, rest), deployment) =
        with_fallback(alias, deadline, retry, total, "first token", |deployment| {
            let span = upstream_span(&deployment, "chat");
            let started = Instant::now();
            async move {
                let span = tracing::Span::current();
                let opened = async {
                    let mut stream = deployment.provider.chat_stream(request).await?;
                    match stream.next().await {
                        Some(Ok(first)) => Ok((first, stream)),
                        Some(Err(err)) => Err(err),
                        None => Err(ProviderError::StreamBroken("no chunk".into())),
                    }
                }
                .await;
                match opened {
                    Ok((first, stream)) => {
                        tracing::info!(
                            target: boardroom_runtime::telemetry::TRACE_TARGET,
                            time_to_first_token_s = started.elapsed().as_secs_f64(),
                            "gen_ai.first_token"
                        );
                        if let Chunk::Done {
                            finish_reason,
                            usage,
                            model,
                        } = &first
                        {
                            record_usage(&span, *usage, *finish_reason, model);
                        }
                        // The span lasts as long as the stream, which records its end.
                        let rest: ChunkStream =
                            Box::pin(stream.inspect(move |chunk| record_chunk(&span, chunk)));
                        Ok((first, rest))
                    }
                    Err(err) => {
                        span.record("error.type", err.kind());
                        Err(err)
                    }
                }
            }
            .instrument(span)
        })
        .await?;
    Ok((first, rest, deployment))
}

/// The client span of one upstream model call (one attempt), after OpenTelemetry's GenAI
/// conventions; built only when spans are exported.
fn upstream_span(deployment: &Deployment, operation: &'static str) -> tracing::Span {
    tracing::info_span!(
        target: boardroom_runtime::telemetry::TRACE_TARGET,
        "gen_ai",
        otel.name = %format_args!("{operation} {}", deployment.model),
        otel.kind = "client",
        gen_ai.operation.name = operation,
        gen_ai.system = deployment.system,
        gen_ai.request.model = %deployment.model,
        gen_ai.response.model = tracing::field::Empty,
        gen_ai.response.finish_reasons = tracing::field::Empty,
        gen_ai.usage.input_tokens = tracing::field::Empty,
        gen_ai.usage.output_tokens = tracing::field::Empty,
        error.type = tracing::field::Empty,
        boardroom.deployment = %deployment.name,
    )
}

/// What a streamed chunk tells the call's span: usage at the end, or the error.
fn record_chunk(span: &tracing::Span, chunk: &Result<Chunk, ProviderError>) {
    match chunk {
        Ok(Chunk::Done {
            finish_reason,
            usage,
            model,
        }) => record_usage(span, *usage, *finish_reason, model),
        Ok(_) => {}
        Err(err) => {
            span.record("error.type", err.kind());
        }
    }
}

fn record_usage(span: &tracing::Span, usage: Usage, finish: FinishReason, model: &str) {
    if span.is_disabled() {
        return;
    }
    span.record("gen_ai.usage.input_tokens", usage.input_tokens);
    span.record("gen_ai.usage.output_tokens", usage.output_tokens);
    span.record("gen_ai.response.finish_reasons", finish.label());
    if !model.is_empty() {
        span.record("gen_ai.response.model", model);
    }
}
