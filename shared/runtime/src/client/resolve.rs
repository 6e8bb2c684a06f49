//! Client-side balancing over every address a name resolves to.
//!
//! gRPC keeps one HTTP/2 connection per endpoint, so a client behind a ClusterIP Service sticks
//! to one pod and new replicas get nothing. Given the name of a headless Service, a
//! [`BalancedChannel`] resolves it to every ready pod, balances calls over them (power of two
//! choices over calls in flight) and re-resolves every `client.resolve_interval_ms`, and at
//! once after a call fails at the transport level. A pod that leaves DNS leaves the balancer
//! (calls in flight on it complete); one that appears gets calls from the next resolution. A
//! resolution that fails or comes back empty changes nothing (a DNS hiccup must not empty the
//! balancer).
//!
//! Every address is also watched through `grpc.health.v1.Health/Watch`, so a pod that reports
//! NOT_SERVING (draining after SIGTERM) or cannot be reached leaves the balancer before DNS
//! notices, and comes back when it serves again (see [`Follower`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::FutureExt;
use futures::future::Either;
use tokio::sync::Notify;
use tokio::sync::mpsc::{self, Sender};
use tokio_util::task::AbortOnDropHandle;
use tonic::transport::channel::Change;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tracing::Instrument;

use super::in_process::LocalService;

/// A future of addresses.
pub type Resolution<'a> =
    Pin<Box<dyn Future<Output = std::io::Result<Vec<SocketAddr>>> + Send + 'a>>;

/// Turns a host name and port into socket addresses.
pub trait Resolve: Send + Sync + fmt::Debug + 'static {
    /// Every address of `host:port`.
    fn resolve<'a>(&'a self, host: &'a str, port: u16) -> Resolution<'a>;
}

/// The system resolver (`getaddrinfo`, which in a pod asks the cluster DNS).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemDns;

impl Resolve for SystemDns {
    fn resolve<'a>(&'a self, host: &'a str, port: u16) -> Resolution<'a> {
        Box::pin(async move { Ok(tokio::net::lookup_host((host, port)).await?.collect()) })
    }
}

/// A channel balanced over resolved addresses; cheap to clone. Calls that fail at the
/// transport level make the resolver look again at once.
#[derive(Clone)]
pub struct BalancedChannel {
    channel: Route,
    refresh: Arc<Notify>,
}

/// Where a channel's calls go.
#[derive(Clone)]
enum Route {
    /// Over the network (HTTP/2 connections, balanced).
    Network(Channel),
    /// To a server of this process, within the client's deadline (see `in_process`).
    InProcess(LocalService, Duration),
}

impl fmt::Debug for BalancedChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BalancedChannel").finish_non_exhaustive()
    }
}

impl BalancedChannel {
    /// A channel that never re-resolves (IP addresses given literally).
    pub(crate) fn fixed(channel: Channel) -> Self {
        Self {
            channel: Route::Network(channel),
            refresh: Arc::new(Notify::new()),
        }
    }

    /// A channel to a server of this process; a call that has no response within `timeout`
    /// fails as one over the network would.
    pub(crate) fn in_process(service: LocalService, timeout: Duration) -> Self {
        Self {
            channel: Route::InProcess(service, timeout),
            refresh: Arc::new(Notify::new()),
        }
    }
}

type Request = http::Request<tonic::body::Body>;
type Response = http::Response<tonic::body::Body>;

impl tower::Service<Request> for BalancedChannel {
    type Response = Response;
    type Error = tonic::codegen::StdError;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Self::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        match &mut self.channel {
            Route::Network(channel) => tower::Service::poll_ready(channel, cx).map_err(Into::into),
            Route::InProcess(service, _) => {
                tower::Service::poll_ready(service, cx).map_err(|never| match never {})
            }
        }
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        let span = client_span(&mut request);
        let call = match &mut self.channel {
            Route::Network(channel) => {
                Either::Left(tower::Service::call(channel, request).map(|result| {
                    result.map_err(|err| {
                        // No response: the connection failed or was lost. UNAVAILABLE, as gRPC
                        // defines it (tonic would report UNKNOWN): the caller may retry.
                        let mut status = tonic::Status::unavailable(format!(
                            "the connection failed or was lost: {err}"
                        ));
                        status.set_source(Arc::new(err));
                        status
                    })
                }))
            }
            Route::InProcess(service, timeout) => {
                Either::Right(call_in_process(service.call(request), *timeout))
            }
        };
        let refresh = self.refresh.clone();
        Box::pin(
            async move {
                match call.await {
                    Ok(response) => Ok(traced_response(response)),
                    Err(status) => {
                        refresh.notify_one();
                        tracing::Span::current()
                            .record("rpc.grpc.status_code", status.code() as i32);
                        Err(Box::new(status) as tonic::codegen::StdError)
                    }
                }
            }
            .instrument(span),
        )
    }
}

/// Awaits a call to a server of this process as the network path would. The handler runs in a
/// task of its own, as hyper runs each HTTP/2 stream's: the caller's task does not run the
/// callee's handler (a turn's advisors' calls proceed on both workers, and a long handler does
/// not hold up the caller's other work), a handler's panic ends that task only, and a call the
/// caller lets go of is aborted, as a reset stream is. The wait is bounded by the client's
/// timeout (UNAVAILABLE past it, as tonic's channel timeout is seen through this channel).
async fn call_in_process(
    call: <LocalService as tower::Service<Request>>::Future,
    timeout: Duration,
) -> Result<Response, tonic::Status> {
    // Owned by the call: aborted when it is dropped.
    #[allow(clippy::disallowed_methods)]
    let handler = AbortOnDropHandle::new(tokio::spawn(call.in_current_span()));
    match tokio::time::timeout(timeout, handler).await {
        Ok(Ok(Ok(response))) => Ok(response),
        Ok(Ok(Err(never))) => match never {},
        Ok(Err(ended)) if ended.is_panic() => Err(tonic::Status::internal(
            "the in-process server's handler panicked",
        )),
        Ok(Err(_cancelled)) => Err(tonic::Status::unavailable(
            "the in-process server's handler was cancelled",
        )),
        Err(_elapsed) => Err(tonic::Status::unavailable(
            "the connection failed or was lost: request timed out",
        )),
    }
}

/// The span of an outgoing call (built only when spans are exported), its context sent as
/// `traceparent` so that the callee's server span is its child.
fn client_span(request: &mut Request) -> tracing::Span {
    let path = request.uri().path();
    let (service, method) = crate::inbound::split_path(path);
    let span = tracing::info_span!(
        target: crate::telemetry::TRACE_TARGET,
        "grpc.client",
        otel.name = %path.trim_start_matches('/'),
        otel.kind = "client",
        rpc.system = "grpc",
        rpc.service = %service,
        rpc.method = %method,
        rpc.grpc.status_code = tracing::field::Empty,
    );
    if !span.is_disabled() {
        crate::telemetry::inject_context(&span, request.headers_mut());
    }
    span
}

/// Keeps the call's span open until its last message, and records the final status.
fn traced_response(response: Response) -> Response {
    // Without exported spans the body is still wrapped: a body cut off by its connection
    // must fail UNAVAILABLE (`connection_lost`).
    let span = tracing::Span::current();
    if let Some(status) = tonic::Status::from_header_map(response.headers()) {
        // Trailers-only: the call ended with its headers.
        span.record("rpc.grpc.status_code", status.code() as i32);
        return response;
    }
    response.map(|body| tonic::body::Body::new(TracedBody { inner: body, span }))
}

/// A response body holding its call's span until it ends.
struct TracedBody {
    inner: tonic::body::Body,
    span: tracing::Span,
}

impl http_body::Body for TracedBody {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, tonic::Status>>> {
        let polled = match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Err(status))) => Poll::Ready(Some(Err(connection_lost(status)))),
            other => other,
        };
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    let code =
                        tonic::Status::from_header_map(trailers).map_or(0, |s| s.code() as i32);
                    self.span.record("rpc.grpc.status_code", code);
                }
            }
            Poll::Ready(Some(Err(status))) => {
                self.span
                    .record("rpc.grpc.status_code", status.code() as i32);
            }
            Poll::Ready(None) | Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// A response body cut off by its connection (the instance died, the network broke) fails
/// as UNKNOWN; it is UNAVAILABLE, as gRPC defines connection loss: the call may be retried
/// (the contract's writes are idempotent by request id). (A status the server sent arrives in
/// the trailers, a frame, never as a body error.)
fn connection_lost(status: tonic::Status) -> tonic::Status {
    if status.code() == tonic::Code::Unknown {
        let mut lost =
            tonic::Status::unavailable(format!("the connection was lost: {}", status.message()));
        lost.set_source(Arc::new(status));
        lost
    } else {
        status
    }
}

/// Builds the endpoint of one resolved address (scheme, TLS name and settings of its target).
pub(crate) type EndpointFor = Arc<dyn Fn(SocketAddr) -> anyhow::Result<Endpoint> + Send + Sync>;

/// One configured target: a name (or address) and port, and how to reach what it resolves to.
#[derive(Clone)]
pub(crate) struct Target {
    pub host: String,
    pub port: u16,
    pub endpoint: EndpointFor,
}

/// A balanced channel over `targets`, with a resolver task that lives as long as the channel.
pub(crate) fn resolving_channel(
    targets: Vec<Target>,
    resolver: Arc<dyn Resolve>,
    interval: Duration,
) -> BalancedChannel {
    let (channel, changes) = Channel::balance_channel::<SocketAddr>(64);
    let refresh = Arc::new(Notify::new());
    let name = targets
        .iter()
        .map(|t| format!("{}:{}", t.host, t.port))
        .collect::<Vec<_>>()
        .join(",");
    // Owned by the channel: it ends when the balancer (every clone of the channel) is gone.
    #[allow(clippy::disallowed_methods)]
    tokio::spawn(
        Follower {
            name,
            targets,
            resolver,
            interval,
            changes,
            known: BTreeMap::new(),
            balanced: BTreeSet::new(),
            generation: 0,
        }
        .run(refresh.clone()),
    );
    BalancedChannel {
        channel: Route::Network(channel),
        refresh,
    }
}

/// What an address's health watch last said, worst first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Health {
    /// It could not be reached.
    Unreachable,
    /// It answered NOT_SERVING (draining for shutdown, or not ready).
    NotServing,
    /// It answered SERVING (or has no health service).
    Serving,
}

/// An address the targets resolve to, and what its health watch last said.
struct Known {
    endpoint: Endpoint,
    health: Health,
    generation: u64,
    watch: tokio::task::JoinHandle<()>,
}

impl Drop for Known {
    fn drop(&mut self) {
        self.watch.abort();
    }
}

/// (address, generation of its watch, health)
type HealthReport = (SocketAddr, u64, Health);

/// Keeps the balancer's endpoints in step with what the targets resolve to and with each
/// address's health: the balancer holds the addresses in the best health there is — those
/// SERVING; when none is, those that answer at all; when none does, every one (with nothing
/// better, trying beats refusing every call).
struct Follower {
    name: String,
    targets: Vec<Target>,
    resolver: Arc<dyn Resolve>,
    interval: Duration,
    changes: Sender<Change<SocketAddr, Endpoint>>,
    known: BTreeMap<SocketAddr, Known>,
    balanced: BTreeSet<SocketAddr>,
    generation: u64,
}

impl Follower {
    async fn run(mut self, refresh: Arc<Notify>) {
        let (health_tx, mut health_rx) = mpsc::unbounded_channel::<HealthReport>();
        loop {
            self.resolve(&health_tx).await;
            if self.sync().await.is_err() {
                return;
            }
            let next = tokio::time::Instant::now() + self.interval;
            loop {
                tokio::select! {
                    _ = self.changes.closed() => return,
                    _ = tokio::time::sleep_until(next) => break,
                    _ = refresh.notified() => {
                        // A burst of failures asks once; the next look waits a little.
                        tokio::time::sleep(self.interval.min(Duration::from_millis(100))).await;
                        break;
                    }
                    Some((address, generation, health)) = health_rx.recv() => {
                        let Some(known) = self.known.get_mut(&address) else { continue };
                        if known.generation != generation || known.health == health {
                            continue;
                        }
                        known.health = health;
                        tracing::info!(target = %self.name, %address, ?health, "endpoint health changed");
                        if self.sync().await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
    }

    /// Resolves every target; a failed or empty resolution keeps the known addresses.
    async fn resolve(&mut self, health: &mpsc::UnboundedSender<HealthReport>) {
        let mut found: HashMap<SocketAddr, usize> = HashMap::new();
        let mut failed = false;
        for (index, target) in self.targets.iter().enumerate() {
            let resolved = match target.host.parse::<IpAddr>() {
                Ok(ip) => Ok(vec![SocketAddr::new(ip, target.port)]),
                Err(_) => self.resolver.resolve(&target.host, target.port).await,
            };
            match resolved {
                Ok(addresses) => found.extend(addresses.into_iter().map(|a| (a, index))),
                Err(err) => {
                    failed = true;
                    tracing::warn!(target = %self.name, host = %target.host, error = %err, "resolving a service address failed; keeping the known ones");
                }
            }
        }
        let outcome = if failed { "error" } else { "ok" };
        metrics::counter!("rpc_client_resolutions_total", "target" => self.name.clone(), "result" => outcome).increment(1);
        if found.is_empty() {
            return;
        }
        self.known.retain(|address, _| {
            let keep = found.contains_key(address);
            if !keep {
                tracing::info!(target = %self.name, %address, "endpoint left");
            }
            keep
        });
        for (address, index) in found {
            if self.known.contains_key(&address) {
                continue;
            }
            match (self.targets[index].endpoint)(address) {
                Ok(endpoint) => {
                    self.generation += 1;
                    // Owned by the balancer: aborted when its address leaves the set or the channel is gone.
                    #[allow(clippy::disallowed_methods)]
                    let watch = tokio::spawn(watch_health(
                        address,
                        self.generation,
                        endpoint.clone(),
                        self.interval,
                        health.clone(),
                    ));
                    tracing::info!(target = %self.name, %address, "endpoint joined");
                    self.known.insert(
                        address,
                        Known {
                            endpoint,
                            // Optimistic until its health watch says otherwise.
                            health: Health::Serving,
                            generation: self.generation,
                            watch,
                        },
                    );
                }
                Err(err) => {
                    tracing::warn!(target = %self.name, %address, error = %err, "bad endpoint")
                }
            }
        }
    }

    /// Tells the balancer what came and went; `Err` when the balancer is gone.
    async fn sync(&mut self) -> Result<(), ()> {
        let best = self.known.values().map(|k| k.health).max();
        let wanted: BTreeSet<SocketAddr> = self
            .known
            .iter()
            .filter(|(_, k)| Some(k.health) == best)
            .map(|(a, _)| *a)
            .collect();
        for gone in self.balanced.difference(&wanted) {
            self.changes
                .send(Change::Remove(*gone))
                .await
                .map_err(|_| ())?;
        }
        for new in wanted.difference(&self.balanced) {
            if let Some(known) = self.known.get(new) {
                self.changes
                    .send(Change::Insert(*new, known.endpoint.clone()))
                    .await
                    .map_err(|_| ())?;
            }
        }
        self.balanced = wanted;
        metrics::gauge!("rpc_client_endpoints", "target" => self.name.clone())
            .set(self.balanced.len() as f64);
        Ok(())
    }
}

/// Watches the server health of one address (`grpc.health.v1.Health/Watch`, service "") on a
/// connection of its own and reports every change of SERVING or not. A server without the
/// health service counts as serving. On NOT_SERVING the watch is dropped (a server draining
/// for shutdown must not wait on it) and asked again after `interval`; an address that cannot
/// be reached counts as not serving until it can.
async fn watch_health(
    address: SocketAddr,
    generation: u64,
    endpoint: Endpoint,
    interval: Duration,
    report: mpsc::UnboundedSender<HealthReport>,
) {
    let mut client = HealthClient::new(endpoint.connect_lazy());
    let send = |health: Health| report.send((address, generation, health)).is_ok();
    loop {
        let opened = tokio::time::Instant::now();
        let serving = match client
            .watch(HealthCheckRequest {
                service: String::new(),
            })
            .await
        {
            Ok(response) => {
                let mut stream = response.into_inner();
                let mut serving = true;
                // Until the stream ends (then ask again at once: a server that is gone
                // will not answer) or says NOT_SERVING.
                while let Ok(Some(message)) = stream.message().await {
                    serving = message.status == ServingStatus::Serving as i32;
                    let health = if serving {
                        Health::Serving
                    } else {
                        Health::NotServing
                    };
                    if !send(health) {
                        return;
                    }
                    if !serving {
                        break;
                    }
                }
                serving
            }
            Err(status) if status.code() == tonic::Code::Unimplemented => {
                send(Health::Serving);
                return;
            }
            Err(_) => {
                if !send(Health::Unreachable) {
                    return;
                }
                false
            }
        };
        if !serving {
            tokio::time::sleep(interval).await;
        } else if opened.elapsed() < Duration::from_millis(100) {
            // A server that ends watches at once must not make this a busy loop.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
