//! The one gRPC server stack of every service: health, reflection, the inbound layer (auth,
//! admission, deadlines, metrics, trace context), TLS, an admin HTTP port and graceful
//! shutdown (NOT_SERVING first, then drain in-flight calls).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::server::NamedService;
use tonic::service::RoutesBuilder;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::auth::Authenticator;
use crate::config::{AuthConfig, Listen, ServerConfig, TlsConfig};
use crate::inbound::{InboundLayer, InboundPolicy};
use crate::metrics::{AdminServer, Readiness};

/// A gRPC server whose listeners are bound (so `local_addr` is true even for port 0) and
/// whose services are being registered.
pub struct GrpcServer {
    name: &'static str,
    listener: TcpListener,
    admin: AdminServer,
    ready: Readiness,
    health: HealthReporter,
    routes: RoutesBuilder,
    service_names: Vec<&'static str>,
    config: ServerConfig,
    authenticator: Option<Authenticator>,
    tls: Option<ServerTlsConfig>,
    /// The inbound layer, once built: calls in process and over the network share it.
    inbound: Option<InboundLayer>,
}

impl std::fmt::Debug for GrpcServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcServer")
            .field("name", &self.name)
            .field("services", &self.service_names)
            .finish()
    }
}

impl GrpcServer {
    /// Binds the gRPC and admin listeners of a server called `name` (used in logs).
    #[inline(never)]
    pub fn bind<'a>(
        name: &'static str,
        listen: &'a Listen,
        config: &'a ServerConfig,
        auth: &'a AuthConfig,
    ) -> crate::BoxFuture<'a, anyhow::Result<Self>> {
        Box::pin(Self::bind_inner(name, listen, config, auth))
    }

    async fn bind_inner(
        name: &'static str,
        listen: &Listen,
        config: &ServerConfig,
        auth: &AuthConfig,
    ) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(listen.grpc_addr).await.map_err(|e| {
            anyhow::anyhow!("binding {name} gRPC address {}: {e}", listen.grpc_addr)
        })?;
        let ready = Readiness::default();
        let admin = AdminServer::bind(listen.admin_addr, ready.clone()).await?;
        let (health, health_service) = tonic_health::server::health_reporter();
        let mut routes = RoutesBuilder::default();
        // Reflection is added in `run`, once the port's services are known.
        routes.add_service(health_service);
        Ok(Self {
            name,
            listener,
            admin,
            ready,
            health,
            routes,
            service_names: Vec::new(),
            config: config.clone(),
            authenticator: Authenticator::from_config(auth)?,
            tls: config.tls.as_ref().map(server_tls).transpose()?,
            inbound: None,
        })
    }

    /// Registers a service; its health status follows the server's.
    pub fn add_service<S>(mut self, service: S) -> Self
    where
        S: tower::Service<
                http::Request<tonic::body::Body>,
                Error = Infallible,
                Response = http::Response<tonic::body::Body>,
            > + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.service_names.push(S::NAME);
        self.routes.add_service(service);
        self
    }

    /// The series this server's admin port serves (every series of the process unless set:
    /// in a process of several servers, each serves its own).
    pub fn metrics_scope(mut self, scope: crate::metrics::MetricsScope) -> Self {
        self.admin.set_scope(scope);
        self
    }

    /// The bound gRPC address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The bound admin HTTP address.
    pub fn admin_addr(&self) -> std::io::Result<SocketAddr> {
        self.admin.local_addr()
    }

    /// The server's services as callers in this process reach them (see
    /// `client::serve_in_process`): behind the same inbound layer as its network port, so its
    /// limits, admission and metrics count both. Call it after every `add_service`.
    pub fn in_process(&mut self) -> crate::client::LocalService {
        let layer = self.inbound_layer();
        tower::util::BoxCloneSyncService::new(tower::Layer::layer(
            &layer,
            self.routes.clone().routes().prepare(),
        ))
    }

    fn inbound_layer(&mut self) -> InboundLayer {
        if let Some(layer) = &self.inbound {
            return layer.clone();
        }
        let config = &self.config;
        let layer = InboundLayer::new(InboundPolicy {
            server: self.name,
            concurrency_limit: config.concurrency_limit,
            max_pending: config.max_pending,
            admission: (
                Duration::from_millis(config.admission_target_ms),
                Duration::from_millis(config.admission_interval_ms),
            ),
            request_timeout: config.request_timeout(),
            authenticator: self.authenticator.clone(),
            services: self
                .service_names
                .iter()
                .map(|s| (*s).to_owned())
                .chain(INFRASTRUCTURE.map(str::to_owned))
                .collect(),
        });
        self.inbound = Some(layer.clone());
        layer
    }

    /// The health reporter, for services that change their status while running.
    pub fn health(&self) -> HealthReporter {
        self.health.clone()
    }

    /// Serves until `shutdown` is cancelled, then reports NOT_SERVING, waits
    /// `shutdown_delay_ms`, stops accepting and lets in-flight calls finish within
    /// `drain_timeout_ms`.
    #[inline(never)]
    pub fn run(self, shutdown: CancellationToken) -> crate::BoxFuture<'static, anyhow::Result<()>> {
        Box::pin(self.run_inner(shutdown))
    }

    async fn run_inner(mut self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let layer = self.inbound_layer();
        let GrpcServer {
            name,
            listener,
            admin,
            ready,
            health,
            routes,
            service_names,
            config,
            tls,
            ..
        } = self;
        // Reflection lists what this port serves (in `serve` all mode each service has its own
        // port): its services, health and reflection. grpcurl 1.8 and ghz still ask for
        // v1alpha; newer clients for v1.
        let mut routes = routes;
        routes
            .add_service(reflection(&service_names).build_v1()?)
            .add_service(reflection(&service_names).build_v1alpha()?);
        set_status(&health, &service_names, ServingStatus::Serving).await;
        ready.set(true);

        let admin_stop = CancellationToken::new();
        let admin_task = admin.run(admin_stop.clone());

        let mut builder = tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .max_concurrent_streams(config.max_concurrent_streams)
            .http2_keepalive_interval(Some(Duration::from_millis(
                config.http2_keepalive_interval_ms,
            )));
        if let Some(tls) = tls {
            builder = builder.tls_config(tls)?;
        }
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));

        let drain_started = CancellationToken::new();
        let signal = {
            let shutdown = shutdown.clone();
            let drain_started = drain_started.clone();
            let health = health.clone();
            let ready = ready.clone();
            let delay = Duration::from_millis(config.shutdown_delay_ms);
            async move {
                shutdown.cancelled().await;
                tracing::info!(
                    server = name,
                    "shutting down: NOT_SERVING, draining in-flight calls"
                );
                ready.set(false);
                set_status(&health, &service_names, ServingStatus::NotServing).await;
                if !delay.is_zero() {
                    // Give load balancers time to see NOT_SERVING before the listener closes.
                    tokio::time::sleep(delay).await;
                }
                drain_started.cancel();
            }
        };
        let serve = builder
            .layer(layer)
            .add_routes(routes.routes())
            .serve_with_incoming_shutdown(incoming, signal);
        let drain_timeout = Duration::from_millis(config.drain_timeout_ms);
        let bounded = async {
            tokio::select! {
                served = serve => served.map_err(anyhow::Error::from),
                () = async { drain_started.cancelled().await; tokio::time::sleep(drain_timeout).await } => {
                    tracing::warn!(server = name, "drain timeout: abandoning calls still in flight");
                    Ok(())
                }
            }
        };
        let result = async {
            let served = bounded.await;
            admin_stop.cancel();
            served
        };
        let (served, admin_result) = tokio::join!(result, admin_task);
        if let Err(err) = admin_result {
            tracing::warn!(server = name, error = %err, "admin server failed");
        }
        tracing::info!(server = name, "stopped");
        served
    }
}

/// Reads the TLS material at start-up, so that a missing or unreadable file stops the
/// service before it reports itself ready.
fn server_tls(tls: &TlsConfig) -> anyhow::Result<ServerTlsConfig> {
    let read = |path: &std::path::Path| {
        std::fs::read(path)
            .map_err(|e| anyhow::anyhow!("reading server.tls file {}: {e}", path.display()))
    };
    let mut config = ServerTlsConfig::new().identity(Identity::from_pem(
        read(&tls.cert_path)?,
        read(&tls.key_path)?,
    ));
    if let Some(ca) = &tls.client_ca_path {
        config = config.client_ca_root(Certificate::from_pem(read(ca)?));
    }
    Ok(config)
}

/// The names reflection and the inbound layer know besides a port's own services.
const INFRASTRUCTURE: [&str; 3] = [
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// Reflection advertising `services` (and health and reflection), with the descriptors of every
/// Boardroom contract, health, and the google.rpc error details our errors carry (so grpcurl can
/// describe any type and print a BadRequest).
fn reflection(services: &[&'static str]) -> tonic_reflection::server::Builder<'static> {
    services.iter().copied().chain(INFRASTRUCTURE).fold(
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(boardroom_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET),
        |builder, name| builder.with_service_name(name),
    )
}

async fn set_status(health: &HealthReporter, names: &[&'static str], status: ServingStatus) {
    health.set_service_status("", status).await;
    for name in names {
        health.set_service_status(*name, status).await;
    }
}
