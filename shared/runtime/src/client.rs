//! Outgoing gRPC channels for service-to-service calls: timeouts, keep-alive, optional TLS,
//! balancing over several addresses, and an interceptor that adds the caller's bearer token
//! and the W3C trace context.

use std::time::Duration;

use tonic::metadata::{AsciiMetadataValue, MetadataKey};
use tonic::service::Interceptor;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Request, Status};

use crate::config::{ClientConfig, Secret};

/// Builds channels from [`ClientConfig`].
#[derive(Debug, Clone)]
pub struct ChannelFactory {
    config: ClientConfig,
}

impl ChannelFactory {
    /// A factory for channels configured by `config`.
    pub fn new(config: ClientConfig) -> Self {
        Self { config }
    }

    /// A lazily connecting channel to `addresses` (`http://host:port`). With several, calls
    /// are balanced over all of them (power of two choices over pending requests).
    pub fn channel(&self, addresses: &[String]) -> anyhow::Result<Channel> {
        let endpoints = addresses
            .iter()
            .map(|a| self.endpoint(a))
            .collect::<anyhow::Result<Vec<_>>>()?;
        match endpoints.as_slice() {
            [] => anyhow::bail!("no address to connect to"),
            [one] => Ok(one.connect_lazy()),
            _ => Ok(Channel::balance_list(endpoints.into_iter())),
        }
    }

    fn endpoint(&self, address: &str) -> anyhow::Result<Endpoint> {
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

/// Adds `authorization: Bearer <token>` (when a token is set) and `traceparent` to every call.
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
        let mut headers = http::HeaderMap::new();
        crate::telemetry::inject_current_context(&mut headers);
        for (name, value) in headers.iter() {
            if let (Ok(key), Ok(value)) = (
                MetadataKey::from_bytes(name.as_str().as_bytes()),
                AsciiMetadataValue::try_from(value.as_bytes()),
            ) {
                request.metadata_mut().insert(key, value);
            }
        }
        Ok(request)
    }
}
