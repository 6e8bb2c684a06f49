//! The tower layer every gRPC server runs each call through: a tracing span continuing the
//! caller's W3C trace, caller authentication, admission (by queueing delay, see
//! `crate::admission`; a concurrency limit with a bounded wait queue, shedding beyond it), the
//! call deadline, and RED metrics named after the OpenTelemetry RPC conventions.
//!
//! One layer instead of five keeps a single boxed future per call on the hot path.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Status;
use tonic::body::Body;
use tower::{Layer, Service};
use tracing::Instrument;

use crate::admission::QueueDelay;
use crate::auth::Authenticator;
use crate::consistency;
use crate::rpc_metrics::{MethodMetrics, RpcMetrics};
use crate::telemetry;

const HEALTH_PREFIX: &str = "/grpc.health.v1.Health/";
/// Seconds a shed caller is told to wait before retrying.
const RETRY_AFTER_SECS: &str = "1";

/// Settings of [`InboundLayer`].
#[derive(Debug, Clone)]
pub struct InboundPolicy {
    /// The server's name (the `server` label of its metrics).
    pub server: &'static str,
    /// Calls executing at once.
    pub concurrency_limit: usize,
    /// Calls that may wait for a slot; more are shed.
    pub max_pending: usize,
    /// Admission by queueing delay: (target, interval); a zero target turns it off.
    pub admission: (Duration, Duration),
    /// Deadline of a call when the client sends a longer one or none.
    pub request_timeout: Duration,
    /// Caller authentication; `None` admits everyone.
    pub authenticator: Option<Authenticator>,
    /// Full names of the services the server registers (metric labels of other paths are
    /// folded into `unknown`).
    pub services: Vec<String>,
}

struct Shared {
    server: &'static str,
    permits: Arc<Semaphore>,
    pending: AtomicUsize,
    max_pending: usize,
    delay: QueueDelay,
    request_timeout: Duration,
    authenticator: Option<Authenticator>,
    metrics: RpcMetrics,
}

/// Applies [`InboundPolicy`] to every call of a server.
#[derive(Clone)]
pub struct InboundLayer {
    shared: Arc<Shared>,
}

impl InboundLayer {
    /// Builds the layer; its limits are shared by every connection of the server.
    pub fn new(policy: InboundPolicy) -> Self {
        // At zero before the first shed, so that its rate exists.
        metrics::counter!("rpc_server_shed_total", "server" => policy.server).increment(0);
        metrics::gauge!("rpc_server_overloaded", "server" => policy.server).set(0.0);
        Self {
            shared: Arc::new(Shared {
                server: policy.server,
                permits: Arc::new(Semaphore::new(policy.concurrency_limit)),
                pending: AtomicUsize::new(0),
                max_pending: policy.max_pending,
                delay: QueueDelay::new(policy.admission.0, policy.admission.1),
                request_timeout: policy.request_timeout,
                authenticator: policy.authenticator,
                metrics: RpcMetrics::new(policy.server, policy.services),
            }),
        }
    }
}

impl<S> Layer<S> for InboundLayer {
    type Service = Inbound<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Inbound {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service produced by [`InboundLayer`].
#[derive(Clone)]
pub struct Inbound<S> {
    inner: S,
    shared: Arc<Shared>,
}

type BoxFuture<T, E> = Pin<Box<dyn std::future::Future<Output = Result<T, E>> + Send>>;

impl<S, B> Service<http::Request<B>> for Inbound<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        // Take the service that was polled ready; leave a fresh clone behind.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let shared = self.shared.clone();
        let started = Instant::now();
        let path = req.uri().path();
        let (service, method) = split_path(path);
        let span = tracing::info_span!(
            "grpc.server",
            otel.name = %path.trim_start_matches('/'),
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.service = %service,
            rpc.method = %method,
            rpc.grpc.status_code = tracing::field::Empty,
        );
        telemetry::set_remote_parent(&span, req.headers());
        let exempt = path.starts_with(HEALTH_PREFIX);
        let method_metrics = shared.metrics.for_path(path);

        let fut = async move {
            let observer = CallObserver::start(method_metrics, started);
            if !exempt && let Some(auth) = &shared.authenticator {
                let header = req
                    .headers()
                    .get(http::header::AUTHORIZATION)
                    .map(|v| v.as_bytes());
                match auth.authenticate(header) {
                    Ok(caller) => {
                        req.extensions_mut().insert(caller);
                    }
                    Err(err) => {
                        return Ok(observer.reject(Status::unauthenticated(err.to_string())));
                    }
                }
            }
            let deadline = client_timeout(req.headers())
                .map_or(shared.request_timeout, |t| t.min(shared.request_timeout));
            req.extensions_mut()
                .insert(CallDeadline(observer.started + deadline));
            let permit = if exempt {
                None
            } else {
                match admit(&shared, observer.started, deadline).await {
                    Ok(permit) => Some(permit),
                    Err(status) => return Ok(observer.reject(status)),
                }
            };
            let remaining = deadline.saturating_sub(observer.started.elapsed());
            // Read-your-writes: only with replicas configured, or for a caller that sent a token.
            let token = (consistency::enabled() || req.headers().contains_key(consistency::HEADER))
                .then(|| consistency::Token::new(consistency::from_headers(req.headers())));
            // A call's first query on a pool with a standing queue may be refused (`db::PoolGate`).
            let call = crate::db::in_call(async {
                let Some(token) = token else {
                    return inner.call(req).await;
                };
                let mut result = consistency::scope(token.clone(), inner.call(req)).await;
                // A call that used the primary answers with its commit position (a unary call's
                // writes are done by now; a stream's later writes are not covered).
                if let Ok(response) = &mut result
                    && let Some(lsn) = token.commit_position().await
                    && let Ok(value) = http::HeaderValue::from_str(&lsn.to_string())
                {
                    response.headers_mut().insert(consistency::HEADER, value);
                }
                result
            });
            match tokio::time::timeout(remaining, call).await {
                Ok(Ok(response)) => Ok(observer.observe(response, permit)),
                Ok(Err(err)) => {
                    observer.finish(tonic::Code::Internal as i32);
                    Err(err)
                }
                Err(_) => Ok(observer.reject(Status::deadline_exceeded(format!(
                    "deadline of {} ms exceeded",
                    deadline.as_millis()
                )))),
            }
        };
        Box::pin(fut.instrument(span))
    }
}

/// When the call must be answered by: min(`server.request_timeout_ms`, the client's
/// `grpc-timeout`) from its arrival. In the request's extensions, for handlers that retry or
/// stream (the layer's own bound covers a unary call, and a stream only until its headers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallDeadline(pub std::time::Instant);

/// A slot for a call that arrived at `arrived`, or why it gets none: refused at once when it
/// has waited longer than the admission allows (`target` while the server is overloaded, an
/// interval otherwise: see `crate::admission`), shed when too many wait, refused when its wait
/// for a slot passes that limit, DEADLINE_EXCEEDED when its own deadline comes first.
async fn admit(
    shared: &Shared,
    arrived: Instant,
    deadline: Duration,
) -> Result<OwnedSemaphorePermit, Status> {
    let waited = arrived.elapsed();
    if shared.delay.refuses(waited) {
        return Err(shed(
            shared,
            "server overloaded: calls wait too long to start",
        ));
    }
    if let Ok(permit) = shared.permits.clone().try_acquire_owned() {
        admitted(shared, waited);
        return Ok(permit);
    }
    if shared.pending.fetch_add(1, Ordering::AcqRel) >= shared.max_pending {
        shared.pending.fetch_sub(1, Ordering::AcqRel);
        return Err(shed(shared, "server overloaded: admission queue full"));
    }
    let left = deadline.saturating_sub(waited);
    let patience = shared.delay.patience(waited, left);
    let got = tokio::time::timeout(patience, shared.permits.clone().acquire_owned()).await;
    shared.pending.fetch_sub(1, Ordering::AcqRel);
    match got {
        Ok(Ok(permit)) => {
            admitted(shared, arrived.elapsed());
            Ok(permit)
        }
        Ok(Err(_closed)) => Err(overloaded("server shutting down")),
        Err(_) if patience < left => Err(shed(
            shared,
            "server overloaded: calls wait too long for a slot",
        )),
        Err(_) => Err(Status::deadline_exceeded(
            "deadline exceeded while queued for admission",
        )),
    }
}

/// Records an admission's queueing delay; logs and reports the overload turning on or off.
fn admitted(shared: &Shared, waited: Duration) {
    if shared.delay.admitted(waited, Instant::now()) {
        let on = shared.delay.overloaded();
        metrics::gauge!("rpc_server_overloaded", "server" => shared.server).set(if on {
            1.0
        } else {
            0.0
        });
        if on {
            tracing::warn!(
                server = shared.server,
                "overloaded: refusing calls that wait to start"
            );
        } else {
            tracing::info!(server = shared.server, "no longer overloaded");
        }
    }
}

fn shed(shared: &Shared, message: &str) -> Status {
    metrics::counter!("rpc_server_shed_total", "server" => shared.server).increment(1);
    overloaded(message)
}

fn overloaded(message: &str) -> Status {
    let mut status = Status::unavailable(message);
    status.metadata_mut().insert(
        "retry-after",
        tonic::metadata::MetadataValue::from_static(RETRY_AFTER_SECS),
    );
    status
}

/// `/pkg.Service/Method` → (`pkg.Service`, `Method`).
pub(crate) fn split_path(path: &str) -> (&str, &str) {
    let trimmed = path.trim_start_matches('/');
    trimmed.split_once('/').unwrap_or((trimmed, ""))
}

/// Parses the `grpc-timeout` header (`<digits><H|M|S|m|u|n>`).
fn client_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.saturating_mul(3600)),
        "M" => Duration::from_secs(amount.saturating_mul(60)),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// Records one call's metrics exactly once, when its outcome is known.
struct CallObserver {
    metrics: Arc<MethodMetrics>,
    started: Instant,
    span: tracing::Span,
}

impl CallObserver {
    fn start(metrics: Arc<MethodMetrics>, started: Instant) -> Self {
        metrics.started();
        Self {
            metrics,
            started,
            span: tracing::Span::current(),
        }
    }

    fn reject(self, status: Status) -> http::Response<Body> {
        self.finish(status.code() as i32);
        status.into_http()
    }

    fn observe(
        self,
        response: http::Response<Body>,
        permit: Option<OwnedSemaphorePermit>,
    ) -> http::Response<Body> {
        // A trailers-only response (every error a handler returns) carries the status in its
        // headers; otherwise it comes in the trailers at the end of the body.
        let header_status = Status::from_header_map(response.headers()).map(|s| s.code() as i32);
        let (parts, body) = response.into_parts();
        let body = ObservedBody {
            inner: body,
            observer: Some(self),
            header_status,
            _permit: permit,
        };
        http::Response::from_parts(parts, Body::new(body))
    }

    fn finish(self, code: i32) {
        self.metrics
            .finished(code, self.started.elapsed().as_secs_f64());
        self.span.record("rpc.grpc.status_code", code);
        if code != 0 {
            tracing::debug!(parent: &self.span, code, "rpc failed");
        }
    }
}

/// The response body, watched for the trailers that carry the final status. Holds the
/// admission permit until the last byte is sent, so streams count against the limit.
struct ObservedBody {
    inner: Body,
    observer: Option<CallObserver>,
    header_status: Option<i32>,
    _permit: Option<OwnedSemaphorePermit>,
}

impl ObservedBody {
    fn complete(&mut self, code: i32) {
        if let Some(observer) = self.observer.take() {
            observer.finish(code);
        }
    }
}

impl HttpBody for ObservedBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    let code = Status::from_header_map(trailers).map_or(0, |s| s.code() as i32);
                    self.complete(code);
                }
            }
            Poll::Ready(Some(Err(status))) => {
                let code = status.code() as i32;
                self.complete(code);
            }
            Poll::Ready(None) => {
                let code = self.header_status.unwrap_or(0);
                self.complete(code);
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ObservedBody {
    fn drop(&mut self) {
        // Dropped before its end: the client went away (or the body was empty from the start).
        let code = if self.inner.is_end_stream() {
            self.header_status.unwrap_or(0)
        } else {
            tonic::Code::Cancelled as i32
        };
        self.complete(code);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_units() {
        let mut headers = http::HeaderMap::new();
        for (value, expected) in [
            ("100m", Duration::from_millis(100)),
            ("2S", Duration::from_secs(2)),
            ("1M", Duration::from_secs(60)),
            ("5u", Duration::from_micros(5)),
        ] {
            headers.insert("grpc-timeout", http::HeaderValue::from_static(value));
            assert_eq!(client_timeout(&headers), Some(expected), "{value}");
        }
        headers.insert("grpc-timeout", http::HeaderValue::from_static("12x"));
        assert_eq!(client_timeout(&headers), None);
        headers.insert(
            "grpc-timeout",
            http::HeaderValue::from_static("1234567890S"),
        );
        assert_eq!(
            client_timeout(&headers),
            None,
            "more than 8 digits is invalid"
        );
    }

    #[test]
    fn paths_split_into_service_and_method() {
        assert_eq!(
            split_path("/boardroom.session.v1.SessionService/GetSession"),
            ("boardroom.session.v1.SessionService", "GetSession")
        );
        assert_eq!(split_path("/weird"), ("weird", ""));
    }

    /// A handler that echoes the authenticated caller in a header.
    fn echo_caller() -> impl Service<
        http::Request<()>,
        Response = http::Response<Body>,
        Error = std::convert::Infallible,
        Future = impl Send,
    > + Clone
    + Send {
        tower::service_fn(|req: http::Request<()>| async move {
            let mut response = http::Response::new(Body::empty());
            if let Some(caller) = req.extensions().get::<crate::auth::CallerIdentity>() {
                response
                    .headers_mut()
                    .insert("x-caller", caller.name().parse().expect("ascii"));
            }
            response
                .headers_mut()
                .insert("grpc-status", http::HeaderValue::from_static("0"));
            Ok(response)
        })
    }

    #[tokio::test]
    async fn the_authenticated_caller_reaches_the_handler() {
        use tower::ServiceExt;
        let mut auth = crate::config::AuthConfig {
            enabled: true,
            ..Default::default()
        };
        auth.tokens
            .insert("conversation".into(), crate::config::Secret::new("tok"));
        let layer = InboundLayer::new(InboundPolicy {
            server: "test",
            concurrency_limit: 4,
            max_pending: 4,
            admission: (Duration::from_millis(5), Duration::from_millis(100)),
            request_timeout: Duration::from_secs(1),
            authenticator: Authenticator::from_config(&auth).expect("valid"),
            services: vec!["pkg.Svc".into()],
        });
        let request = |token: Option<&str>| {
            let mut builder = http::Request::builder().uri("/pkg.Svc/Call");
            if let Some(token) = token {
                builder = builder.header("authorization", format!("Bearer {token}"));
            }
            builder.body(()).expect("request")
        };
        let ok = layer
            .layer(echo_caller())
            .oneshot(request(Some("tok")))
            .await
            .expect("infallible");
        assert_eq!(
            ok.headers().get("x-caller").and_then(|v| v.to_str().ok()),
            Some("conversation")
        );
        let refused = layer
            .layer(echo_caller())
            .oneshot(request(None))
            .await
            .expect("infallible");
        assert_eq!(
            refused
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok()),
            Some("16"),
            "UNAUTHENTICATED"
        );
        assert!(
            refused.headers().get("x-caller").is_none(),
            "the handler never ran"
        );
        let health = http::Request::builder()
            .uri("/grpc.health.v1.Health/Check")
            .body(())
            .expect("request");
        let probe = layer
            .layer(echo_caller())
            .oneshot(health)
            .await
            .expect("infallible");
        assert_eq!(
            probe
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok()),
            Some("0"),
            "probes need no token"
        );
    }

    fn shared(permits: usize, max_pending: usize, target: Duration) -> Shared {
        Shared {
            server: "test",
            permits: Arc::new(Semaphore::new(permits)),
            pending: AtomicUsize::new(0),
            max_pending,
            // A long interval: the test's steps must fit in one on a loaded machine.
            delay: QueueDelay::new(target, Duration::from_millis(250)),
            request_timeout: Duration::from_secs(1),
            authenticator: None,
            metrics: RpcMetrics::new("test", Vec::new()),
        }
    }

    fn retry_after(status: &Status) -> Option<&str> {
        status
            .metadata()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
    }

    #[tokio::test]
    async fn admission_sheds_beyond_the_queue() {
        let shared = shared(1, 0, Duration::ZERO);
        let held = admit(&shared, Instant::now(), Duration::from_secs(1))
            .await
            .expect("first call admitted");
        let shed = admit(&shared, Instant::now(), Duration::from_secs(1))
            .await
            .expect_err("second call shed");
        assert_eq!(shed.code(), tonic::Code::Unavailable);
        assert_eq!(retry_after(&shed), Some("1"));
        drop(held);
        let _again = admit(&shared, Instant::now(), Duration::from_secs(1))
            .await
            .expect("admitted once the slot is free");
    }

    #[tokio::test]
    async fn queued_call_times_out_with_deadline_exceeded() {
        let shared = shared(1, 4, Duration::ZERO);
        let _held = admit(&shared, Instant::now(), Duration::from_secs(1))
            .await
            .expect("admitted");
        let err = admit(&shared, Instant::now(), Duration::from_millis(10))
            .await
            .expect_err("queued past deadline");
        assert_eq!(err.code(), tonic::Code::DeadlineExceeded);
        assert_eq!(
            shared.pending.load(Ordering::Acquire),
            0,
            "queue slot released"
        );
    }

    #[tokio::test]
    async fn an_overloaded_server_refuses_late_calls_at_once_and_admits_again_once_it_drains() {
        let target = Duration::from_millis(5);
        let shared = shared(2, 16, target);
        let late = || Instant::now() - Duration::from_millis(40);
        // A standing queue: every call of an interval waited 40 ms to start.
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_millis(800) && !shared.delay.overloaded() {
            let permit = admit(&shared, late(), Duration::from_secs(1)).await;
            drop(permit);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(shared.delay.overloaded(), "the standing queue was seen");
        // A call that already waited past the target is refused at once, slot free or not.
        let asked = Instant::now();
        let refused = admit(&shared, late(), Duration::from_secs(1))
            .await
            .expect_err("refused");
        assert_eq!(refused.code(), tonic::Code::Unavailable);
        assert_eq!(retry_after(&refused), Some("1"));
        assert!(
            asked.elapsed() < Duration::from_millis(5),
            "{:?}",
            asked.elapsed()
        );
        // A fresh call still runs; one that must queue for a slot waits the target at most
        // and is refused (not left to wait out its deadline).
        let a = admit(&shared, Instant::now(), Duration::from_secs(1))
            .await
            .expect("fresh call admitted");
        let b = admit(&shared, Instant::now(), Duration::from_secs(1))
            .await
            .expect("fresh call admitted");
        let queued = Instant::now();
        let refused = admit(&shared, Instant::now(), Duration::from_secs(1))
            .await
            .expect_err("no slot within the target");
        assert_eq!(refused.code(), tonic::Code::Unavailable);
        assert!(
            queued.elapsed() < Duration::from_millis(100),
            "{:?}",
            queued.elapsed()
        );
        drop((a, b));
        // The queue drains: quick admissions for an interval turn the refusals off.
        let t1 = Instant::now();
        while t1.elapsed() < Duration::from_millis(800) && shared.delay.overloaded() {
            let permit = admit(&shared, Instant::now(), Duration::from_secs(1)).await;
            drop(permit);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(!shared.delay.overloaded(), "recovered");
        let _admitted = admit(&shared, late(), Duration::from_secs(1))
            .await
            .expect("a late call is admitted again");
    }
}
