//! What every HTTP provider shares: one pooled client per deployment (keep-alive; HTTP/2 where
//! TLS negotiates it), bounded waits for the headers and the first token, error statuses as
//! `ProviderError`s, and server-sent events decoded into chunks by a provider's `Decoder`.

use std::collections::VecDeque;
use std::time::Duration;

use eventsource_stream::{Event, Eventsource};
use futures::StreamExt;
use serde::de::DeserializeOwned;

use super::{ChunkStream, ProviderError};
use crate::domain::Chunk;

/// Time bounds and pool of one HTTP deployment.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// The deployment's name (metrics).
    pub name: String,
    /// TCP (+ TLS) connect bound.
    pub connect_timeout: Duration,
    /// Bound on the response headers.
    pub headers_timeout: Duration,
    /// Bound on the first streamed token after the headers.
    pub first_token_timeout: Duration,
    /// Idle keep-alive connections per host.
    pub max_idle_connections: usize,
}

/// A deployment's HTTP client.
#[derive(Debug, Clone)]
pub struct Upstream {
    client: reqwest::Client,
    headers_timeout: Duration,
    first_token_timeout: Duration,
}

/// Turns a provider's server-sent events into chunks.
pub trait Decoder: Send + 'static {
    /// Handles one event, pushing what it yields onto `out`; `Ok(true)` once the answer is
    /// complete (its `Chunk::Done` pushed).
    fn event(&mut self, event: &Event, out: &mut VecDeque<Chunk>) -> Result<bool, ProviderError>;

    /// Whether the model has begun its answer before any chunk is out (a tool call being
    /// streamed in pieces): the first-token bound is then met. Nothing has reached the caller
    /// yet, so a failure now may still fall back.
    fn generating(&self) -> bool {
        false
    }

    /// The body ended before `event` said complete: the last chunks (a protocol whose end is
    /// the end of the body), or why the answer is broken.
    fn end(&mut self, out: &mut VecDeque<Chunk>) -> Result<(), ProviderError>;
}

impl Upstream {
    /// Builds the deployment's pooled client.
    pub fn new(settings: &HttpSettings) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .connector_layer(CountConnects::layer(settings.name.clone()))
            .connect_timeout(settings.connect_timeout)
            .pool_max_idle_per_host(settings.max_idle_connections)
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .build()?;
        Ok(Self {
            client,
            headers_timeout: settings.headers_timeout,
            first_token_timeout: settings.first_token_timeout,
        })
    }

    /// A POST of `body` to `url`, in the current (model call's) span's trace.
    pub fn post(&self, url: &str, body: &serde_json::Value) -> reqwest::RequestBuilder {
        let mut trace = reqwest::header::HeaderMap::new();
        boardroom_runtime::telemetry::inject_current_context(&mut trace);
        self.client.post(url).headers(trace).json(body)
    }

    /// Sends and waits for the response headers (bounded); an error status becomes
    /// `ProviderError::Status` with its `Retry-After` and the start of its body.
    pub async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ProviderError> {
        let response = tokio::time::timeout(self.headers_timeout, request.send())
            .await
            .map_err(|_| ProviderError::Timeout("headers"))?
            .map_err(|e| {
                if e.is_timeout() {
                    ProviderError::Timeout("headers")
                } else {
                    ProviderError::Connect(e.to_string())
                }
            })?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            // Bounded: an absurd value must not overflow (it is passed on, not waited).
            .and_then(|secs| Duration::try_from_secs_f64(secs.clamp(0.0, 86_400.0)).ok());
        let body = response.text().await.unwrap_or_default();
        Err(ProviderError::Status {
            status: status.as_u16(),
            retry_after,
            body: body.chars().take(300).collect(),
        })
    }

    /// Sends and reads a JSON answer.
    pub async fn json<T: DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<T, ProviderError> {
        let response = self.send(request).await?;
        let bytes = response
            .bytes()
            .await
            .map_err(|e| ProviderError::Connect(format!("reading the body: {e}")))?;
        serde_json::from_slice(&bytes).map_err(|e| ProviderError::Protocol(e.to_string()))
    }

    /// The response's events as chunks. The first token (text or a tool call) is awaited at
    /// most the first-token bound; a body that fails or ends before the decoder says complete
    /// ends the stream with an error.
    pub fn events(&self, response: reqwest::Response, decoder: impl Decoder) -> ChunkStream {
        decode(
            response.bytes_stream().eventsource(),
            self.first_token_timeout,
            decoder,
        )
    }
}

/// The event loop behind `Upstream::events`, over any event stream.
pub fn decode<S, E, D>(events: S, first_token: Duration, decoder: D) -> ChunkStream
where
    S: futures::Stream<Item = Result<Event, E>> + Send + 'static,
    E: std::fmt::Display + Send + 'static,
    D: Decoder,
{
    struct State<S, D> {
        events: std::pin::Pin<Box<S>>,
        decoder: D,
        /// Until a token is out, every event is awaited at most until this instant (events
        /// before the first token do not count as it).
        first_by: Option<tokio::time::Instant>,
        pending: VecDeque<Chunk>,
        ended: bool,
    }
    let state = State {
        events: Box::pin(events),
        decoder,
        first_by: Some(tokio::time::Instant::now() + first_token),
        pending: VecDeque::new(),
        ended: false,
    };
    Box::pin(futures::stream::unfold(state, |mut s| async move {
        loop {
            if let Some(chunk) = s.pending.pop_front() {
                if matches!(chunk, Chunk::Delta(_) | Chunk::ToolCall(_)) {
                    s.first_by = None;
                }
                return Some((Ok(chunk), s));
            }
            if s.ended {
                return None;
            }
            let next = match s.first_by {
                Some(by) => match tokio::time::timeout_at(by, s.events.next()).await {
                    Ok(next) => next,
                    Err(_) => {
                        s.ended = true;
                        return Some((Err(ProviderError::Timeout("first token")), s));
                    }
                },
                None => s.events.next().await,
            };
            let outcome = match next {
                Some(Ok(event)) => s.decoder.event(&event, &mut s.pending),
                Some(Err(err)) => Err(ProviderError::StreamBroken(err.to_string())),
                None => s.decoder.end(&mut s.pending).map(|()| true),
            };
            if s.decoder.generating() {
                s.first_by = None;
            }
            match outcome {
                Ok(complete) => s.ended = complete,
                Err(err) => {
                    s.ended = true;
                    s.pending.clear();
                    return Some((Err(err), s));
                }
            }
        }
    }))
}

/// Parses one event's JSON data.
pub fn data<T: DeserializeOwned>(event: &Event) -> Result<T, ProviderError> {
    serde_json::from_str(&event.data)
        .map_err(|e| ProviderError::Protocol(format!("event `{}`: {e}", event.event)))
}

/// Counts the connections the pool opens (`llm_upstream_connections_opened_total`): against
/// `llm_requests_total` it shows how well keep-alive reuses them.
#[derive(Clone)]
struct CountConnects<S> {
    inner: S,
    opened: metrics::Counter,
}

impl CountConnects<()> {
    fn layer<S>(deployment: String) -> impl tower::Layer<S, Service = CountConnects<S>> + Clone {
        let opened =
            metrics::counter!("llm_upstream_connections_opened_total", "deployment" => deployment);
        tower::layer::layer_fn(move |inner| CountConnects {
            inner,
            opened: opened.clone(),
        })
    }
}

impl<S, R> tower::Service<R> for CountConnects<S>
where
    S: tower::Service<R>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        let (connecting, opened) = (self.inner.call(request), self.opened.clone());
        Box::pin(async move {
            let connection = connecting.await?;
            opened.increment(1);
            Ok(connection)
        })
    }
}
