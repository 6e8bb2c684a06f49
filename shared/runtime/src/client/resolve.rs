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

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::sync::mpsc::Sender;
use tonic::transport::channel::Change;
use tonic::transport::{Channel, Endpoint};

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
    channel: Channel,
    refresh: Arc<Notify>,
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
            channel,
            refresh: Arc::new(Notify::new()),
        }
    }
}

type Request = http::Request<tonic::body::Body>;
type Response = http::Response<tonic::body::Body>;

impl tower::Service<Request> for BalancedChannel {
    type Response = Response;
    type Error = tonic::transport::Error;
    type Future =
        Pin<Box<dyn Future<Output = Result<Response, tonic::transport::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        tower::Service::poll_ready(&mut self.channel, cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let call = tower::Service::call(&mut self.channel, request);
        let refresh = self.refresh.clone();
        Box::pin(async move {
            let result = call.await;
            if result.is_err() {
                refresh.notify_one();
            }
            result
        })
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
    tokio::spawn(follow(
        name,
        targets,
        resolver,
        interval,
        changes,
        refresh.clone(),
    ));
    BalancedChannel { channel, refresh }
}

/// Resolves every target, then again every `interval` (or sooner when asked), and tells the
/// balancer what came and went.
async fn follow(
    name: String,
    targets: Vec<Target>,
    resolver: Arc<dyn Resolve>,
    interval: Duration,
    changes: Sender<Change<SocketAddr, Endpoint>>,
    refresh: Arc<Notify>,
) {
    let mut current: BTreeSet<SocketAddr> = BTreeSet::new();
    loop {
        let mut found: HashMap<SocketAddr, &Target> = HashMap::new();
        let mut failed = false;
        for target in &targets {
            match resolver.resolve(&target.host, target.port).await {
                Ok(addresses) => found.extend(addresses.into_iter().map(|a| (a, target))),
                Err(err) => {
                    failed = true;
                    tracing::warn!(target = %name, host = %target.host, error = %err, "resolving a service address failed; keeping the known ones");
                }
            }
        }
        let outcome = if failed { "error" } else { "ok" };
        metrics::counter!("rpc_client_resolutions_total", "target" => name.clone(), "result" => outcome).increment(1);
        if !found.is_empty() {
            let next: BTreeSet<SocketAddr> = found.keys().copied().collect();
            for gone in current.difference(&next) {
                if changes.send(Change::Remove(*gone)).await.is_err() {
                    return;
                }
                tracing::info!(target = %name, address = %gone, "endpoint left");
            }
            for new in next.difference(&current) {
                let Some(target) = found.get(new) else {
                    continue;
                };
                match (target.endpoint)(*new) {
                    Ok(endpoint) => {
                        if changes.send(Change::Insert(*new, endpoint)).await.is_err() {
                            return;
                        }
                        tracing::info!(target = %name, address = %new, "endpoint joined");
                    }
                    Err(err) => {
                        tracing::warn!(target = %name, address = %new, error = %err, "bad endpoint")
                    }
                }
            }
            current = next;
            metrics::gauge!("rpc_client_endpoints", "target" => name.clone())
                .set(current.len() as f64);
        }
        tokio::select! {
            _ = changes.closed() => return,
            _ = tokio::time::sleep(interval) => {}
            _ = refresh.notified() => {
                // A burst of failures asks once; the next look waits a little.
                tokio::time::sleep(interval.min(Duration::from_millis(100))).await;
            }
        }
    }
}
