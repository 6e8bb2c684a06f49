//! Local fake LLM providers speaking the real wire formats, byte for byte as the providers
//! document them (SSE framing included): OpenAI-compatible (`/v1/chat/completions`,
//! `/v1/embeddings`, and Azure's `/openai/deployments/{d}/…?api-version=`), Anthropic Messages
//! (`/v1/messages`) and Gemini (`/v1beta/models/{m}:generateContent`,
//! `:streamGenerateContent?alt=sse`, `:batchEmbedContents`). Each checks that a request is
//! valid for its protocol (answering 400 as the provider would when it is not: roles, tool
//! call ids, required fields), and a test can script its next answers: a status with or
//! without `Retry-After`, a hang, slow headers, a dropped connection, an error event in a
//! stream, a tool call streamed in pieces. For load runs it answers at a model's pace and can
//! fail a share of its calls at random. It counts the usage it reported, so a test can compare
//! it with what the gateway accounted.

mod anthropic;
mod gemini;
mod openai;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::Value;

/// Which provider a fake plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// OpenAI-compatible, Azure OpenAI's paths included.
    OpenAi,
    /// Anthropic Messages.
    Anthropic,
    /// Google Gemini.
    Gemini,
}

/// What the next call gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Behavior {
    /// A normal answer: `echo: <last message>` (or the paced words of `set_pace`).
    Answer,
    /// This status with the provider's error JSON, with `Retry-After: secs` when given.
    Status(u16, Option<u64>),
    /// Never answer (not even headers).
    Hang,
    /// A normal answer whose headers come after this many ms.
    SlowHeaders(u64),
    /// Stream two words, then close the connection without the protocol's end.
    DropMidStream,
    /// Stream the protocol's opening event(s), then nothing (the first token never comes).
    StallAfterRole,
    /// An error event in an HTTP 200 stream after this many words (Anthropic's `error` event
    /// with `overloaded_error`; an `error` object on the others).
    ErrorEvent {
        /// Words streamed before it.
        after_words: usize,
    },
    /// Answer by calling this tool; streamed, its arguments come in several pieces (Gemini:
    /// one whole `functionCall` part, as it sends them).
    ToolCall {
        /// The tool.
        name: String,
        /// Its arguments, a JSON object.
        arguments: String,
    },
}

/// Tokens a fake reported, in the gateway's terms: `input` counts every prompt token (cache
/// reads and writes included), whatever the protocol's own split.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reported {
    /// Prompt tokens.
    pub input: u64,
    /// Completion tokens.
    pub output: u64,
    /// Prompt tokens read from the prompt cache.
    pub cache_read: u64,
    /// Prompt tokens written to the prompt cache.
    pub cache_write: u64,
}

impl Reported {
    fn add(&mut self, other: Reported) {
        self.input += other.input;
        self.output += other.output;
        self.cache_read += other.cache_read;
        self.cache_write += other.cache_write;
    }
}

#[derive(Default)]
pub(crate) struct FakeState {
    script: Mutex<VecDeque<Behavior>>,
    calls: AtomicUsize,
    in_flight: AtomicUsize,
    last_body: Mutex<Option<Value>>,
    last_headers: Mutex<HeaderMap>,
    last_path: Mutex<String>,
    reported: Mutex<Reported>,
    latency_ms: AtomicU64,
    /// Share of unscripted calls (percent) answered 500, 502 or 503.
    error_percent: AtomicU64,
    /// Streamed answers: words per second after the first (0: all at once).
    tokens_per_second: AtomicU64,
    /// Answers: this many words (0: the echo).
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

    /// Records a call and says what it gets.
    fn begin(&self, path: String, headers: &HeaderMap, body: &Value) -> Behavior {
        self.calls.fetch_add(1, Ordering::SeqCst);
        *self.last_body.lock().unwrap_or_else(|e| e.into_inner()) = Some(body.clone());
        *self.last_headers.lock().unwrap_or_else(|e| e.into_inner()) = headers.clone();
        *self.last_path.lock().unwrap_or_else(|e| e.into_inner()) = path;
        self.script
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop_front()
            .or_else(|| self.random_failure().map(|s| Behavior::Status(s, None)))
            .unwrap_or(Behavior::Answer)
    }

    /// Counts usage the fake reported.
    fn report(&self, usage: Reported) {
        self.reported
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .add(usage);
    }

    /// The words of an answer to `last`.
    fn words(&self, last: &str) -> Vec<String> {
        let text = match self.answer_tokens.load(Ordering::Relaxed) {
            0 => format!("echo: {last}"),
            n => (0..n)
                .map(|i| format!("w{i}"))
                .collect::<Vec<_>>()
                .join(" "),
        };
        text.split(' ')
            .enumerate()
            .map(|(i, w)| {
                if i == 0 {
                    w.to_owned()
                } else {
                    format!(" {w}")
                }
            })
            .collect()
    }

    fn pace(&self) -> Duration {
        match self.tokens_per_second.load(Ordering::Relaxed) {
            0 => Duration::ZERO,
            n => Duration::from_secs(1) / n as u32,
        }
    }
}

/// Waits what the behavior and the configured latency say before answering; `None` for a
/// behavior that never answers.
async fn wait(state: &FakeState, behavior: &Behavior) -> Option<()> {
    let latency = state.latency_ms.load(Ordering::Relaxed);
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    match behavior {
        Behavior::Hang => {
            std::future::pending::<()>().await;
            None
        }
        Behavior::SlowHeaders(ms) => {
            tokio::time::sleep(Duration::from_millis(*ms)).await;
            Some(())
        }
        _ => Some(()),
    }
}

/// Waits as `behavior` and the configured latency say; `Err` is the response to send instead
/// of an answer: a scripted status in `protocol`'s error JSON, or a 500 for a hang that ended.
async fn scripted(
    state: &FakeState,
    protocol: Protocol,
    behavior: &Behavior,
) -> Result<(), Response> {
    if wait(state, behavior).await.is_none() {
        return Err(status(500, None, Value::Object(Default::default())));
    }
    match behavior {
        Behavior::Status(code, retry_after) => Err(status(
            *code,
            *retry_after,
            error_body(protocol, *code, "scripted failure"),
        )),
        _ => Ok(()),
    }
}

/// An error status with `body`, and `Retry-After` when given.
fn status(code: u16, retry_after: Option<u64>, body: Value) -> Response {
    let mut response = (
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        axum::Json(body),
    )
        .into_response();
    if let Some(secs) = retry_after {
        response.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from_str(&secs.to_string()).unwrap_or(HeaderValue::from_static("1")),
        );
    }
    response
}

/// 400 with `message` in the protocol's error JSON.
fn invalid(protocol: Protocol, message: String) -> Response {
    status(400, None, error_body(protocol, 400, &message))
}

/// The protocol's error JSON.
fn error_body(protocol: Protocol, code: u16, message: &str) -> Value {
    match protocol {
        Protocol::OpenAi => {
            serde_json::json!({"error": {"message": message, "type": "invalid_request_error", "code": code}})
        }
        Protocol::Anthropic => {
            let kind = match code {
                429 => "rate_limit_error",
                529 => "overloaded_error",
                400 => "invalid_request_error",
                _ => "api_error",
            };
            serde_json::json!({"type": "error", "error": {"type": kind, "message": message}})
        }
        Protocol::Gemini => {
            let status = match code {
                429 => "RESOURCE_EXHAUSTED",
                400 => "INVALID_ARGUMENT",
                503 => "UNAVAILABLE",
                _ => "INTERNAL",
            };
            serde_json::json!({"error": {"code": code, "message": message, "status": status}})
        }
    }
}

/// A `text/event-stream` of `events`: the first two at once, the rest at `pace`; then, for
/// `broken`, a dropped connection instead of the end, or, for `stalled`, nothing ever.
fn sse(events: Vec<String>, pace: Duration, end: StreamEnd) -> Response {
    let paced = futures::StreamExt::then(
        futures::stream::iter(events.into_iter().enumerate()),
        move |(i, event)| async move {
            if i > 1 && !pace.is_zero() {
                tokio::time::sleep(pace).await;
            }
            Ok::<_, std::io::Error>(Bytes::from(event))
        },
    );
    let body = match end {
        StreamEnd::Complete => Body::from_stream(paced),
        StreamEnd::Dropped => Body::from_stream(futures::StreamExt::chain(
            paced,
            // Sent and flushed first; then the connection breaks (hyper aborts on a body
            // error, and would send nothing at all if the error were already queued).
            futures::stream::once(async {
                tokio::time::sleep(Duration::from_millis(50)).await;
                Err(std::io::Error::other("connection dropped mid-stream"))
            }),
        )),
        StreamEnd::Stalled => Body::from_stream(futures::StreamExt::chain(
            paced,
            futures::stream::pending::<Result<Bytes, std::io::Error>>(),
        )),
    };
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(body)
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// How a streamed answer ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StreamEnd {
    Complete,
    Dropped,
    Stalled,
}

/// `arguments` cut in three pieces, as providers stream a tool call's JSON.
fn pieces(arguments: &str) -> Vec<String> {
    let chars: Vec<char> = arguments.chars().collect();
    let third = chars.len().div_ceil(3).max(1);
    chars
        .chunks(third)
        .map(|c| c.iter().collect::<String>())
        .collect()
}

struct InFlight(Arc<FakeState>);

impl InFlight {
    /// Records a chat call (see `FakeState::begin`) and counts it in flight until dropped.
    fn begin(
        state: &Arc<FakeState>,
        uri: &axum::http::Uri,
        headers: &HeaderMap,
        body: &Value,
    ) -> (Behavior, Self) {
        let behavior = state.begin(uri.to_string(), headers, body);
        state.in_flight.fetch_add(1, Ordering::SeqCst);
        (behavior, Self(state.clone()))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A running fake provider; stops when dropped.
pub struct FakeProvider {
    addr: SocketAddr,
    protocol: Protocol,
    state: Arc<FakeState>,
    stop: tokio_util::sync::CancellationToken,
}

/// The fake OpenAI-compatible provider (its name before the others came).
pub type FakeOpenAi = FakeProvider;

impl std::fmt::Debug for FakeProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeProvider")
            .field("addr", &self.addr)
            .field("protocol", &self.protocol)
            .finish()
    }
}

impl FakeProvider {
    /// An OpenAI-compatible fake on a free port of 127.0.0.1.
    pub async fn start() -> Self {
        Self::serve(Protocol::OpenAi, "127.0.0.1:0").await
    }

    /// An OpenAI-compatible fake on `addr` (benchmarks that point other proxies at it need a
    /// known port).
    pub async fn start_on(addr: &str) -> Self {
        Self::serve(Protocol::OpenAi, addr).await
    }

    /// An Anthropic fake on a free port.
    pub async fn anthropic() -> Self {
        Self::serve(Protocol::Anthropic, "127.0.0.1:0").await
    }

    /// A Gemini fake on a free port.
    pub async fn gemini() -> Self {
        Self::serve(Protocol::Gemini, "127.0.0.1:0").await
    }

    /// A fake of `protocol` on `addr`.
    pub async fn serve(protocol: Protocol, addr: &str) -> Self {
        let state = Arc::new(FakeState::default());
        let app: Router = match protocol {
            Protocol::OpenAi => openai::router(state.clone()),
            Protocol::Anthropic => anthropic::router(state.clone()),
            Protocol::Gemini => gemini::router(state.clone()),
        };
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
        Self {
            addr,
            protocol,
            state,
            stop,
        }
    }

    /// The provider's API root as its deployments take it: `http://ADDR/v1` (OpenAI),
    /// `http://ADDR` (Anthropic; Azure's endpoint too), `http://ADDR/v1beta` (Gemini).
    pub fn base_url(&self) -> String {
        match self.protocol {
            Protocol::OpenAi => format!("http://{}/v1", self.addr),
            Protocol::Anthropic => format!("http://{}", self.addr),
            Protocol::Gemini => format!("http://{}/v1beta", self.addr),
        }
    }

    /// `http://ADDR`.
    pub fn root_url(&self) -> String {
        format!("http://{}", self.addr)
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

    /// Answers: `answer_tokens` words (0: the echo), streamed `tokens_per_second` after the
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

    /// The last request's JSON body.
    pub fn last_body(&self) -> Option<Value> {
        self.state
            .last_body
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The last request's header `name`.
    pub fn last_header(&self, name: &str) -> Option<String> {
        self.state
            .last_headers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }

    /// The last request's path and query.
    pub fn last_path(&self) -> String {
        self.state
            .last_path
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The usage it reported so far, in the gateway's terms.
    pub fn reported(&self) -> Reported {
        *self
            .state
            .reported
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for FakeProvider {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
