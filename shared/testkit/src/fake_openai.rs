//! A local fake OpenAI-compatible server speaking the real protocol (`/v1/chat/completions`
//! with SSE streaming, `/v1/embeddings`), that a test can tell to answer 429 with
//! `Retry-After`, fail with 500, hang, or drop the connection mid-stream; or, for load runs,
//! to fail a share of its calls at random and stream at a model's pace.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use serde_json::{Value, json};

/// What the next call gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Behavior {
    /// A normal answer: `echo: <last message>`.
    Answer,
    /// This status, with `Retry-After: secs` when given.
    Status(u16, Option<u64>),
    /// Never answer (not even headers).
    Hang,
    /// Stream two deltas, then close the connection without `[DONE]`.
    DropMidStream,
    /// Stream the role-only first event, then nothing (headers and the event arrive in time;
    /// the first token never does).
    StallAfterRole,
}

#[derive(Default)]
struct FakeState {
    script: Mutex<VecDeque<Behavior>>,
    calls: AtomicUsize,
    in_flight: AtomicUsize,
    last_body: Mutex<Option<Value>>,
    latency_ms: AtomicU64,
    /// Share of unscripted calls (percent) answered 500, 502 or 503.
    error_percent: AtomicU64,
    /// Streamed answers: words per second after the first (0: all at once).
    tokens_per_second: AtomicU64,
    /// Streamed answers: this many words (0: the echo).
    answer_tokens: AtomicU64,
    /// xorshift state of the random failures.
    random: AtomicU64,
}

impl FakeState {
    /// A status for a call that is to fail at random, else `None`.
    fn random_failure(&self) -> Option<u16> {
        let percent = self.error_percent.load(Ordering::Relaxed);
        if percent == 0 {
            return None;
        }
        let mut x = self.random.load(Ordering::Relaxed) | 1;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.random.store(x, Ordering::Relaxed);
        (x % 100 < percent).then(|| [500, 502, 503][(x / 100 % 3) as usize])
    }
}

/// The running fake; stops when dropped.
pub struct FakeOpenAi {
    addr: SocketAddr,
    state: Arc<FakeState>,
    stop: tokio_util::sync::CancellationToken,
}

impl std::fmt::Debug for FakeOpenAi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeOpenAi")
            .field("addr", &self.addr)
            .finish()
    }
}

fn last_message(body: &Value) -> String {
    body["messages"]
        .as_array()
        .and_then(|m| m.last())
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default()
        .to_owned()
}

fn chunk(model: &str, delta: Value, finish: Option<&str>) -> Bytes {
    let event = json!({
        "id": "chatcmpl-fake", "object": "chat.completion.chunk", "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    });
    Bytes::from(format!("data: {event}\n\n"))
}

async fn chat(State(state): State<Arc<FakeState>>, body: axum::Json<Value>) -> Response {
    let body = body.0;
    state.calls.fetch_add(1, Ordering::SeqCst);
    *state.last_body.lock().unwrap_or_else(|e| e.into_inner()) = Some(body.clone());
    let behavior = state
        .script
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .pop_front()
        .or_else(|| state.random_failure().map(|s| Behavior::Status(s, None)))
        .unwrap_or(Behavior::Answer);
    let latency = state.latency_ms.load(Ordering::Relaxed);
    state.in_flight.fetch_add(1, Ordering::SeqCst);
    let _done = InFlight(state.clone());
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    match behavior {
        Behavior::Hang => {
            std::future::pending::<()>().await;
            unreachable!("pending never completes")
        }
        Behavior::Status(status, retry_after) => {
            let mut response = (
                StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                axum::Json(json!({"error": {"message": "scripted failure", "type": "fake"}})),
            )
                .into_response();
            if let Some(secs) = retry_after {
                response.headers_mut().insert(
                    header::RETRY_AFTER,
                    HeaderValue::from_str(&secs.to_string())
                        .unwrap_or(HeaderValue::from_static("1")),
                );
            }
            response
        }
        Behavior::StallAfterRole => {
            let model = body["model"].as_str().unwrap_or("fake").to_owned();
            let role = futures::stream::iter([Ok::<_, std::io::Error>(chunk(
                &model,
                json!({"role": "assistant", "content": ""}),
                None,
            ))]);
            let stalled = futures::stream::pending::<Result<Bytes, std::io::Error>>();
            Response::builder()
                .header(header::CONTENT_TYPE, "text/event-stream")
                .body(Body::from_stream(futures::StreamExt::chain(role, stalled)))
                .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
        }
        Behavior::Answer | Behavior::DropMidStream => {
            let model = body["model"].as_str().unwrap_or("fake").to_owned();
            let text = match state.answer_tokens.load(Ordering::Relaxed) {
                0 => format!("echo: {}", last_message(&body)),
                n => (0..n)
                    .map(|i| format!("w{i}"))
                    .collect::<Vec<_>>()
                    .join(" "),
            };
            let words: Vec<String> = text.split(' ').map(str::to_owned).collect();
            let completion_tokens = words.len() as u64;
            if body["stream"].as_bool() != Some(true) {
                return axum::Json(json!({
                    "id": "chatcmpl-fake", "object": "chat.completion", "model": model,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 10, "completion_tokens": completion_tokens, "total_tokens": 10 + completion_tokens},
                }))
                .into_response();
            }
            let include_usage = body["stream_options"]["include_usage"].as_bool() == Some(true);
            let mut events: Vec<Result<Bytes, std::io::Error>> = Vec::new();
            events.push(Ok(chunk(
                &model,
                json!({"role": "assistant", "content": ""}),
                None,
            )));
            for (i, word) in words.iter().enumerate() {
                let piece = if i == 0 {
                    word.clone()
                } else {
                    format!(" {word}")
                };
                events.push(Ok(chunk(&model, json!({"content": piece}), None)));
            }
            if behavior == Behavior::DropMidStream {
                events.truncate(3);
                // Sent and flushed first; then the connection breaks (hyper aborts on a body
                // error, and would send nothing at all if the error were already queued).
                let sent = futures::stream::iter(events);
                let broken = futures::stream::once(async {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Err(std::io::Error::other("connection dropped mid-stream"))
                });
                return Response::builder()
                    .header(header::CONTENT_TYPE, "text/event-stream")
                    .body(Body::from_stream(futures::StreamExt::chain(sent, broken)))
                    .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response());
            } else {
                events.push(Ok(chunk(&model, json!({}), Some("stop"))));
                if include_usage {
                    let usage = json!({
                        "id": "chatcmpl-fake", "object": "chat.completion.chunk", "model": model, "choices": [],
                        "usage": {"prompt_tokens": 10, "completion_tokens": completion_tokens, "total_tokens": 10 + completion_tokens},
                    });
                    events.push(Ok(Bytes::from(format!("data: {usage}\n\n"))));
                }
                events.push(Ok(Bytes::from_static(b"data: [DONE]\n\n")));
            }
            let pace = match state.tokens_per_second.load(Ordering::Relaxed) {
                0 => Duration::ZERO,
                n => Duration::from_secs(1) / n as u32,
            };
            // The first event at once, the rest at the model's pace.
            let paced = futures::StreamExt::then(
                futures::stream::iter(events.into_iter().enumerate()),
                move |(i, event)| async move {
                    if i > 1 && !pace.is_zero() {
                        tokio::time::sleep(pace).await;
                    }
                    event
                },
            );
            Response::builder()
                .header(header::CONTENT_TYPE, "text/event-stream")
                .body(Body::from_stream(paced))
                .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
        }
    }
}

struct InFlight(Arc<FakeState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn embeddings(State(state): State<Arc<FakeState>>, body: axum::Json<Value>) -> Response {
    state.calls.fetch_add(1, Ordering::SeqCst);
    let inputs: Vec<String> = body["input"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, text)| json!({"object": "embedding", "index": i, "embedding": [text.len() as f32, 1.0, 0.0]}))
        .collect();
    axum::Json(json!({"object": "list", "data": data, "model": body["model"], "usage": {"prompt_tokens": inputs.len(), "total_tokens": inputs.len()}}))
        .into_response()
}

impl FakeOpenAi {
    /// Starts on a free port of 127.0.0.1.
    pub async fn start() -> Self {
        Self::start_on("127.0.0.1:0").await
    }

    /// Starts on `addr` (benchmarks that point other proxies at it need a known port).
    pub async fn start_on(addr: &str) -> Self {
        let state = Arc::new(FakeState::default());
        let app = Router::new()
            .route("/v1/chat/completions", post(chat))
            .route("/v1/embeddings", post(embeddings))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .expect("binding the fake upstream");
        let addr = listener.local_addr().expect("bound");
        let stop = tokio_util::sync::CancellationToken::new();
        let stopped = stop.clone();
        // Owned: ends when the fake is dropped (its stop token).
        #[allow(clippy::disallowed_methods)]
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stopped.cancelled().await })
                .await;
        });
        Self { addr, state, stop }
    }

    /// `http://127.0.0.1:PORT/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// The next calls get these behaviors, in order; then normal answers.
    pub fn script(&self, behaviors: impl IntoIterator<Item = Behavior>) {
        self.state
            .script
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(behaviors);
    }

    /// Delay before every answer.
    pub fn set_latency(&self, latency: Duration) {
        self.state
            .latency_ms
            .store(latency.as_millis() as u64, Ordering::Relaxed);
    }

    /// From now on `percent` % of the calls not scripted fail with 500, 502 or 503, at
    /// random (seeded, so runs repeat).
    pub fn set_error_percent(&self, percent: u64) {
        self.state
            .random
            .store(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed);
        self.state
            .error_percent
            .store(percent.min(100), Ordering::Relaxed);
    }

    /// Streamed answers: `answer_tokens` words (0: the echo), `tokens_per_second` after the
    /// first (0: all at once).
    pub fn set_pace(&self, answer_tokens: u64, tokens_per_second: u64) {
        self.state
            .answer_tokens
            .store(answer_tokens, Ordering::Relaxed);
        self.state
            .tokens_per_second
            .store(tokens_per_second, Ordering::Relaxed);
    }

    /// Requests received so far.
    pub fn calls(&self) -> usize {
        self.state.calls.load(Ordering::SeqCst)
    }

    /// Requests being answered now.
    pub fn in_flight(&self) -> usize {
        self.state.in_flight.load(Ordering::SeqCst)
    }

    /// The last chat request's JSON body.
    pub fn last_body(&self) -> Option<Value> {
        self.state
            .last_body
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Drop for FakeOpenAi {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
