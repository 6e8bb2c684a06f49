//! Outgoing gRPC channels for service-to-service calls: timeouts, keep-alive, optional TLS,
//! client-side balancing over every address of a name (re-resolved), and an interceptor that adds the caller's bearer token
//! and the W3C trace context of each call's client span.

mod in_process;
mod resolve;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tonic::metadata::AsciiMetadataValue;
use tonic::service::Interceptor;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, Uri};
use tonic::{Request, Status};

pub use in_process::{LocalService, serve_in_process};
pub use resolve::{BalancedChannel, Resolution, Resolve, SystemDns};

use crate::config::{ClientConfig, Secret};

/// Builds channels from [`ClientConfig`].
#[derive(Debug, Clone)]
pub struct ChannelFactory {
    config: ClientConfig,
    resolver: Arc<dyn Resolve>,
}

impl ChannelFactory {
    /// A factory for channels configured by `config`, resolving names with the system DNS.
    pub fn new(config: ClientConfig) -> Self {
        Self {
            config,
            resolver: Arc::new(SystemDns),
        }
    }

    /// The same, resolving names with `resolver` (tests control what a name resolves to).
    pub fn with_resolver(config: ClientConfig, resolver: Arc<dyn Resolve>) -> Self {
        Self { config, resolver }
    }

    /// A lazily connecting channel to `addresses` (`http://host:port`), balanced over every
    /// address they stand for (power of two choices over calls in flight). IP addresses are
    /// used as given; a name (a headless Service) is resolved to all its addresses and
    /// re-resolved every `client.resolve_interval_ms` and after a failed call. With more than
    /// one address, each one's health is watched: one that reports NOT_SERVING (draining for
    /// shutdown) or cannot be reached gets no new calls until it serves again. One address
    /// served by this process ([`serve_in_process`]) is called without a socket while
    /// `client.in_process` is on.
    pub fn channel(&self, addresses: &[String]) -> anyhow::Result<BalancedChannel> {
        if addresses.is_empty() {
            anyhow::bail!("no address to connect to");
        }
        if let [address] = addresses
            && self.config.in_process
            && let Some(service) = in_process::in_process(address)
        {
            return Ok(BalancedChannel::in_process(
                service,
                Duration::from_millis(self.config.request_timeout_ms),
            ));
        }
        let mut targets = Vec::new();
        for address in addresses {
            let uri: Uri = address.parse()?;
            let host = uri
                .host()
                .ok_or_else(|| anyhow::anyhow!("{address}: no host"))?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            let https = uri.scheme_str() == Some("https");
            let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
            let this = self.clone();
            let (scheme, tls_name) = (if https { "https" } else { "http" }, host.clone());
            targets.push(resolve::Target {
                host,
                port,
                endpoint: Arc::new(move |addr: SocketAddr| {
                    this.endpoint(&format!("{scheme}://{addr}"), Some(&tls_name))
                }),
            });
        }
        // One address given as an IP: nothing to balance or follow.
        if let [target] = targets.as_slice()
            && let Ok(ip) = target.host.parse::<IpAddr>()
        {
            let endpoint = (target.endpoint)(SocketAddr::new(ip, target.port))?;
            return Ok(BalancedChannel::fixed(endpoint.connect_lazy()));
        }
        Ok(resolve::resolving_channel(
            targets,
            self.resolver.clone(),
            Duration::from_millis(self.config.resolve_interval_ms.max(10)),
        ))
    }

    fn endpoint(&self, address: &str, tls_name: Option<&str>) -> anyhow::Result<Endpoint> {
        let c = &self.config;
        let mut endpoint = Endpoint::from_shared(address.to_owned())?
            .connect_timeout(Duration::from_millis(c.connect_timeout_ms))
            .timeout(Duration::from_millis(c.request_timeout_ms))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_millis(c.keepalive_interval_ms))
            .keep_alive_while_idle(true)
            .keep_alive_timeout(Duration::from_secs(10));
        if let Some(ca) = &c.ca_path {
            let mut tls =
                ClientTlsConfig::new().ca_certificate(Certificate::from_pem(std::fs::read(ca)?));
            // Connected by IP, verified by the name the address was given as.
            if let Some(name) = tls_name {
                tls = tls.domain_name(name);
            }
            if let (Some(cert), Some(key)) = (&c.cert_path, &c.key_path) {
                tls = tls.identity(Identity::from_pem(
                    std::fs::read(cert)?,
                    std::fs::read(key)?,
                ));
            }
            endpoint = endpoint.tls_config(tls)?;
        }
        Ok(endpoint)
    }
}

/// Adds `authorization: Bearer <token>` (when a token is set) to every call, and the
/// consistency token of the call being served (`x-boardroom-lsn`). (The channel sends
/// `traceparent`, from the call's client span.)
#[derive(Clone, Debug, Default)]
pub struct OutboundInterceptor {
    authorization: Option<AsciiMetadataValue>,
}

impl OutboundInterceptor {
    /// An interceptor presenting `token` (empty: no authorization header).
    pub fn new(token: &Secret) -> anyhow::Result<Self> {
        if token.is_empty() {
            return Ok(Self::default());
        }
        let mut value: AsciiMetadataValue = format!("Bearer {}", token.expose()).parse()?;
        value.set_sensitive(true);
        Ok(Self {
            authorization: Some(value),
        })
    }
}

impl Interceptor for OutboundInterceptor {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.authorization {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        // The consistency token of the call being served goes on to the services it calls.
        if let Some(required) = crate::consistency::current().and_then(|t| t.required())
            && let Ok(value) = required.to_string().parse()
        {
            request
                .metadata_mut()
                .insert(crate::consistency::HEADER, value);
        }
        Ok(request)
    }
}
