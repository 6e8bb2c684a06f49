//! The OpenAI-compatible front door: `POST /v1/chat/completions` (unary and SSE, tools),
//! `POST /v1/embeddings`, `GET /v1/models` over HTTP on its own port, so any service that
//! already uses an OpenAI SDK points its base URL here. The same callers' bearer tokens,
//! limits, caches, coalescing, fallback and metrics as the gRPC API (both call `Api`); errors
//! in OpenAI's error JSON with the matching HTTP status.

mod wire;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use boardroom_runtime::auth::{AuthError, Authenticator};
use boardroom_runtime::config::{AuthConfig, ServerConfig};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::api::{Api, StreamEvent};
use crate::domain::{CacheOutcome, CachePolicy};
use crate::error::GatewayError;

/// The bound front door.
#[derive(Debug)]
pub struct FrontDoor {
    listener: TcpListener,
    router: Router,
    drain_timeout: Duration,
}

struct Door {
    api: Api,
    authenticator: Option<Authenticator>,
    request_timeout: Duration,
    /// Calls in flight, bounded like the gRPC server's (`server.concurrency_limit`, its own
    /// bound beside gRPC's); up to `server.max_pending` more wait for a permit until their
    /// deadline; beyond that a call is refused at once with 503.
    admission: Arc<Semaphore>,
    waiting: AtomicUsize,
    max_pending: usize,
}

impl FrontDoor {
    /// Binds `addr` and serves `api`.
    pub async fn bind(
        addr: SocketAddr,
        api: Api,
        auth: &AuthConfig,
        server: &ServerConfig,
    ) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("binding the OpenAI-compatible API on {addr}: {e}"))?;
        let door = Arc::new(Door {
            api,
            authenticator: Authenticator::from_config(auth)?,
            request_timeout: server.request_timeout(),
            admission: Arc::new(Semaphore::new(server.concurrency_limit)),
            waiting: AtomicUsize::new(0),
            max_pending: server.max_pending,
        });
        let router = Router::new()
            .route("/v1/chat/completions", post(chat))
            .route("/v1/embeddings", post(embeddings))
            .route("/v1/models", get(models))
            .route("/v1/models/{id}", get(model))
            .route_layer(axum::middleware::from_fn(traced))
            .fallback(not_found)
            .layer(DefaultBodyLimit::max(server.max_message_bytes))
            .with_state(door);
        Ok(Self {
            listener,
            router,
            drain_timeout: Duration::from_millis(server.drain_timeout_ms),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown`, then lets calls in flight finish within the drain timeout.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let listener = self.listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let stop = shutdown.clone();
        let serve = axum::serve(listener, self.router)
            .with_graceful_shutdown(async move { stop.cancelled().await });
        tokio::select! {
            served = serve => served.map_err(anyhow::Error::from),
            () = async { shutdown.cancelled().await; tokio::time::sleep(self.drain_timeout).await } => {
                tracing::warn!("openai api: drain timeout, abandoning calls still in flight");
                Ok(())
            }
        }
    }
}

/// An error in OpenAI's JSON, with its HTTP status (and `retry-after` where one applies).
fn error(err: GatewayError) -> Response {
    let (status, kind, code, param, retry_after) = match &err {
        GatewayError::InvalidArgument(v) => (
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            None,
            v.fields().next().map(str::to_owned),
            None,
        ),
        GatewayError::UnknownModel(_) => (
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            Some("model_not_found"),
            Some("model".to_owned()),
            None,
        ),
        GatewayError::NotCached => (
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            Some("not_cached"),
            None,
            None,
        ),
        GatewayError::Rejected(_) => (
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            Some("upstream_rejected"),
            None,
            None,
        ),
        GatewayError::Unavailable { retry_after, .. } => (
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            Some("unavailable"),
            None,
            Some(retry_after.map_or(1, |d| d.as_secs().max(1))),
        ),
        GatewayError::DeadlineExceeded => (
            StatusCode::GATEWAY_TIMEOUT,
            "server_error",
            Some("timeout"),
            None,
            None,
        ),
        GatewayError::ResourceExhausted { retry_after, .. } => (
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            Some("rate_limit_exceeded"),
            None,
            Some(retry_after.as_secs_f64().ceil().max(1.0) as u64),
        ),
    };
    let message = match &err {
        GatewayError::InvalidArgument(v) => v.to_string(),
        GatewayError::UnknownModel(model) => format!("The model `{model}` does not exist"),
        other => other.to_string(),
    };
    let mut response = (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        json!({"error": {"message": message, "type": kind, "param": param, "code": code}})
            .to_string(),
    )
        .into_response();
    if let Some(secs) = retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

fn unauthorized(err: AuthError) -> Response {
    let message = match err {
        AuthError::Missing => {
            "You didn't provide an API key: send it as `Authorization: Bearer KEY`"
        }
        AuthError::Invalid => "Incorrect API key provided",
    };
    (
        StatusCode::UNAUTHORIZED,
        [(header::CONTENT_TYPE, "application/json")],
        json!({"error": {"message": message, "type": "invalid_request_error", "param": null, "code": "invalid_api_key"}})
            .to_string(),
    )
        .into_response()
}

fn ok_json(value: &Value) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        value.to_string(),
    )
        .into_response()
}

/// Each call in a server span continuing the caller's W3C trace (`traceparent`).
async fn traced(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or("", |p| p.as_str())
        .to_owned();
    let method = request.method().clone();
    let span = tracing::info_span!(
        "http.server",
        otel.name = %format_args!("{method} {route}"),
        otel.kind = "server",
        boardroom.service = "boardroom-llm-gateway",
        http.request.method = %method,
        http.route = %route,
        http.response.status_code = tracing::field::Empty,
    );
    boardroom_runtime::telemetry::set_remote_parent(&span, request.headers());
    let response = next.run(request).instrument(span.clone()).await;
    span.record("http.response.status_code", response.status().as_u16());
    response
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "application/json")],
        json!({"error": {"message": "Unknown path: this server offers /v1/chat/completions, /v1/embeddings and /v1/models", "type": "invalid_request_error", "param": null, "code": "unknown_url"}})
            .to_string(),
    )
        .into_response()
}

/// One call through the door: authenticated and admitted; counted when it answers.
struct Call {
    caller: String,
    deadline: Instant,
    route: &'static str,
    started: Instant,
    /// Held until the answer is complete (a stream's last event).
    permit: OwnedSemaphorePermit,
}

impl Call {
    /// Records the answer's status and time to its headers.
    fn answer(&self, response: Response) -> Response {
        finish(self.route, self.started, response)
    }
}

fn finish(route: &'static str, started: Instant, response: Response) -> Response {
    metrics::counter!("llm_http_requests_total", "route" => route, "status" => response.status().as_str().to_owned())
        .increment(1);
    metrics::histogram!("llm_http_request_duration_seconds", "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}

impl Door {
    /// A permit for one call: at once, or after waiting (bounded) until the deadline.
    async fn admit(&self, deadline: Instant) -> Result<OwnedSemaphorePermit, GatewayError> {
        if let Ok(permit) = self.admission.clone().try_acquire_owned() {
            return Ok(permit);
        }
        let busy = |message: &str| GatewayError::Unavailable {
            message: message.to_owned(),
            retry_after: None,
        };
        // Counted out however the wait ends: a caller that hangs up drops this future mid-wait.
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::AcqRel);
            }
        }
        let _waiting = Waiting(&self.waiting);
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.max_pending {
            return Err(busy(
                "the gateway is at its limit of calls in flight and waiting",
            ));
        }
        let waited =
            tokio::time::timeout_at(deadline.into(), self.admission.clone().acquire_owned()).await;
        match waited {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_)) => Err(busy("the gateway is shutting down")),
            Err(_) => Err(GatewayError::DeadlineExceeded),
        }
    }

    async fn enter(&self, route: &'static str, headers: &HeaderMap) -> Result<Call, Response> {
        let started = Instant::now();
        let caller = match &self.authenticator {
            None => "anonymous".to_owned(),
            Some(auth) => auth
                .authenticate(
                    headers
                        .get(header::AUTHORIZATION)
                        .map(HeaderValue::as_bytes),
                )
                .map_err(|err| finish(route, started, unauthorized(err)))?
                .name()
                .to_owned(),
        };
        let deadline = started + self.request_timeout;
        let permit = self
            .admit(deadline)
            .await
            .map_err(|err| finish(route, started, error(err)))?;
        Ok(Call {
            caller,
            deadline,
            route,
            started,
            permit,
        })
    }
}

/// `x-boardroom-cache-policy`: `bypass`, `cache-only`, `force` (default: cache deterministic
/// requests).
fn cache_policy(headers: &HeaderMap) -> Result<CachePolicy, GatewayError> {
    match headers
        .get("x-boardroom-cache-policy")
        .map(|v| v.to_str().unwrap_or("?"))
    {
        None | Some("default") => Ok(CachePolicy::Default),
        Some("bypass") => Ok(CachePolicy::Bypass),
        Some("cache-only") => Ok(CachePolicy::CacheOnly),
        Some("force") => Ok(CachePolicy::Force),
        Some(_) => Err(GatewayError::InvalidArgument(
            boardroom_runtime::status::Violations::one(
                "x-boardroom-cache-policy",
                "must be default, bypass, cache-only or force",
            ),
        )),
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Where an answer came from, as headers.
fn provenance(response: &mut Response, deployment: &str, cache: CacheOutcome) {
    if let Ok(value) = HeaderValue::from_str(deployment) {
        response
            .headers_mut()
            .insert("x-boardroom-deployment", value);
    }
    response
        .headers_mut()
        .insert("x-boardroom-cache", HeaderValue::from_static(cache.label()));
}

async fn chat(State(door): State<Arc<Door>>, headers: HeaderMap, body: Bytes) -> Response {
    let call = match door.enter("chat_completions", &headers).await {
        Ok(call) => call,
        Err(refused) => return refused,
    };
    let request_id = headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let parsed = cache_policy(&headers)
        .and_then(|policy| wire::chat_request(&body, door.api.limits(), request_id, policy));
    let request = match parsed {
        Ok(request) => request,
        Err(err) => return call.answer(error(err)),
    };
    let id = format!("chatcmpl-{}", uuid::Uuid::now_v7().simple());
    let (created, model) = (now_secs(), request.chat.model.clone());
    if !request.stream {
        return match door
            .api
            .chat(request.chat, call.deadline, &call.caller)
            .await
        {
            Ok(answer) => {
                let mut response = ok_json(&wire::completion(&id, created, &model, &answer));
                provenance(&mut response, &answer.deployment, answer.cache);
                call.answer(response)
            }
            Err(err) => call.answer(error(err)),
        };
    }
    let answer = match door
        .api
        .chat_stream(request.chat, call.deadline, &call.caller)
        .await
    {
        Ok(answer) => answer,
        Err(err) => return call.answer(error(err)),
    };
    let (deployment, cache) = (answer.deployment.clone(), answer.cache);
    let events = Sse {
        id,
        created,
        model,
        include_usage: request.include_usage,
        tool_calls: 0,
        ended: false,
    }
    .events(answer.events, call.permit);
    let mut response = Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(events))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response());
    provenance(&mut response, &deployment, cache);
    finish(call.route, call.started, response)
}

/// A streamed answer as OpenAI's chunks.
struct Sse {
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
    /// Tool calls sent so far (each gets the next `index`).
    tool_calls: usize,
    ended: bool,
}

impl Sse {
    fn data(value: &Value) -> String {
        format!("data: {value}\n\n")
    }

    fn chunk(&self, delta: Value, finish: Option<&str>) -> String {
        Self::data(&wire::chunk(
            &self.id,
            self.created,
            &self.model,
            delta,
            finish,
        ))
    }

    /// The SSE text of one event.
    fn event(&mut self, event: StreamEvent) -> String {
        match event {
            StreamEvent::Delta(text) => self.chunk(json!({ "content": text }), None),
            StreamEvent::ToolCall(call) => {
                let index = self.tool_calls;
                self.tool_calls += 1;
                self.chunk(
                    json!({ "tool_calls": [wire::tool_call(&call, Some(index))] }),
                    None,
                )
            }
            StreamEvent::Done(answer) => {
                self.ended = true;
                let mut out = self.chunk(
                    json!({}),
                    Some(wire::finish_reason(answer.completion.finish_reason)),
                );
                if self.include_usage {
                    out.push_str(&Self::data(&wire::usage_chunk(
                        &self.id,
                        self.created,
                        &self.model,
                        &answer,
                    )));
                }
                out.push_str("data: [DONE]\n\n");
                out
            }
            // A failure after the first token: OpenAI's SDKs raise on an `error` event.
            StreamEvent::Failed(err) => {
                self.ended = true;
                let message = err.to_string();
                Self::data(
                    &json!({"error": {"message": message, "type": "server_error", "param": null, "code": "stream_broken"}}),
                )
            }
        }
    }

    /// The body: the role chunk, then one SSE write per event; the permit is held to the end.
    fn events(
        self,
        events: tokio::sync::mpsc::Receiver<StreamEvent>,
        permit: OwnedSemaphorePermit,
    ) -> impl futures::Stream<Item = Result<Bytes, Infallible>> + Send {
        let first = self.chunk(json!({"role": "assistant", "content": ""}), None);
        let rest = futures::stream::unfold(
            (self, events, permit),
            |(mut sse, mut events, permit)| async move {
                if sse.ended {
                    return None;
                }
                let text = match events.recv().await {
                    Some(event) => sse.event(event),
                    // The relay ended without a last event (it does not): end cleanly broken.
                    None => {
                        sse.ended = true;
                        Sse::data(
                            &json!({"error": {"message": "the answer ended early", "type": "server_error", "param": null, "code": "stream_broken"}}),
                        )
                    }
                };
                Some((Ok(Bytes::from(text)), (sse, events, permit)))
            },
        );
        futures::stream::once(async move { Ok(Bytes::from(first)) }).chain(rest)
    }
}

async fn embeddings(State(door): State<Arc<Door>>, headers: HeaderMap, body: Bytes) -> Response {
    let call = match door.enter("embeddings", &headers).await {
        Ok(call) => call,
        Err(refused) => return refused,
    };
    let (model, inputs, base64) = match wire::embeddings_request(&body) {
        Ok(parsed) => parsed,
        Err(err) => return call.answer(error(err)),
    };
    match door
        .api
        .embed(&model, inputs, call.deadline, &call.caller)
        .await
    {
        Ok((embeddings, deployment)) => {
            let mut response = ok_json(&wire::embeddings(
                &model,
                embeddings.vectors,
                embeddings.usage,
                base64,
            ));
            provenance(&mut response, &deployment, CacheOutcome::Miss);
            call.answer(response)
        }
        Err(err) => call.answer(error(err)),
    }
}

async fn models(State(door): State<Arc<Door>>, headers: HeaderMap) -> Response {
    let call = match door.enter("models", &headers).await {
        Ok(call) => call,
        Err(refused) => return refused,
    };
    let data: Vec<Value> = door
        .api
        .gateway()
        .aliases()
        .keys()
        .map(|a| wire::model(a))
        .collect();
    call.answer(ok_json(&json!({"object": "list", "data": data})))
}

async fn model(
    State(door): State<Arc<Door>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let call = match door.enter("models", &headers).await {
        Ok(call) => call,
        Err(refused) => return refused,
    };
    if door.api.gateway().aliases().contains_key(&id) {
        call.answer(ok_json(&wire::model(&id)))
    } else {
        call.answer(error(GatewayError::UnknownModel(id)))
    }
}
