//! The LLM gateway: one pooled, cached, resilient gRPC API over every model the boardroom's
//! advisors use. Model aliases route to deployments (mock or OpenAI-compatible HTTP), with
//! retries, fallback, circuit breakers, an exact response cache in the tiered cache,
//! coalescing of identical requests in flight, and token/cost accounting.

pub mod api;
pub mod balance;
pub mod breaker;
pub mod conversions;
pub mod domain;
pub mod error;
pub mod front_door;
pub mod gateway;
pub mod grpc;
pub mod limits;
pub mod metrics;
pub mod provider;
pub mod response_cache;
pub mod semantic;
pub mod settings;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use boardroom_cache::TieredCache;
use boardroom_proto::llm::v1::llm_gateway_service_server::LlmGatewayServiceServer;
use boardroom_runtime::Config;
use boardroom_runtime::caching::cache_config;
use boardroom_runtime::config::LlmConfig;
use boardroom_runtime::metrics::MetricsScope;
use boardroom_runtime::server::GrpcServer;
use tokio_util::sync::CancellationToken;

pub use error::GatewayError;

use crate::api::Api;
use crate::breaker::Breaker;
use crate::conversions::RequestLimits;
use crate::front_door::FrontDoor;
use crate::gateway::{Alias, Deployment, Gateway};
use crate::grpc::LlmGrpc;
use crate::provider::Provider;
use crate::provider::anthropic::AnthropicProvider;
use crate::provider::gemini::GeminiProvider;
use crate::provider::http::HttpSettings;
use crate::provider::mock::{MockProvider, MockSettings};
use crate::provider::openai::{Endpoint, OpenAiProvider};
use crate::settings::{DeploymentSettings, ProviderSettings};

/// A built gateway: providers' clients made, cache connected, listeners bound.
#[derive(Debug)]
pub struct Application {
    server: GrpcServer,
    front_door: Option<FrontDoor>,
    cache_stop: CancellationToken,
}

/// The provider of deployment `name`.
fn provider(
    name: &str,
    settings: &DeploymentSettings,
    llm: &LlmConfig,
) -> anyhow::Result<Arc<dyn Provider>> {
    let t = &llm.timeouts;
    let http = |max_idle_connections: usize| HttpSettings {
        name: name.to_owned(),
        connect_timeout: Duration::from_millis(t.connect_ms),
        headers_timeout: Duration::from_millis(t.headers_ms),
        first_token_timeout: Duration::from_millis(t.first_token_ms),
        max_idle_connections,
    };
    Ok(match &settings.provider {
        ProviderSettings::Mock(c) => Arc::new(MockProvider::new(MockSettings {
            model: c.model.clone(),
            latency: Duration::from_millis(c.latency_ms),
            ttft: Duration::from_millis(c.ttft_ms),
            tokens_per_second: c.tokens_per_second,
            output_tokens: c.output_tokens,
        })),
        ProviderSettings::Openai(c) => Arc::new(OpenAiProvider::new(
            &http(c.max_idle_connections),
            Endpoint::Compatible {
                base_url: c.base_url.clone(),
                api_key: c.api_key.expose().to_owned(),
            },
            c.model.clone(),
        )?),
        ProviderSettings::Azure(c) => Arc::new(OpenAiProvider::new(
            &http(c.max_idle_connections),
            Endpoint::Azure {
                endpoint: c.endpoint.clone(),
                deployment: c.deployment.clone(),
                api_version: c.api_version.clone(),
                api_key: c.api_key.expose().to_owned(),
            },
            settings.model().to_owned(),
        )?),
        ProviderSettings::Anthropic(c) => Arc::new(AnthropicProvider::new(
            &http(c.max_idle_connections),
            &c.base_url,
            c.api_key.expose().to_owned(),
            c.version.clone(),
            c.model.clone(),
            c.max_tokens,
        )?),
        ProviderSettings::Gemini(c) => Arc::new(GeminiProvider::new(
            &http(c.max_idle_connections),
            &c.base_url,
            c.api_key.expose().to_owned(),
            c.model.clone(),
        )?),
    })
}

/// OpenTelemetry's `gen_ai.system` of a provider.
fn gen_ai_system(provider: &ProviderSettings) -> &'static str {
    match provider {
        ProviderSettings::Mock(_) => "boardroom.mock",
        ProviderSettings::Openai(_) => "openai",
        ProviderSettings::Azure(_) => "az.ai.openai",
        ProviderSettings::Anthropic(_) => "anthropic",
        ProviderSettings::Gemini(_) => "gcp.gemini",
    }
}

/// The gateway described by `config.llm`.
pub async fn build_gateway(
    config: &Config,
    cache_stop: &CancellationToken,
) -> anyhow::Result<Gateway> {
    let llm = &config.llm;
    let t = &llm.timeouts;
    let mut deployments: BTreeMap<String, Arc<Deployment>> = BTreeMap::new();
    for (name, d) in &llm.deployments {
        let settings = DeploymentSettings::parse(name, d).map_err(anyhow::Error::msg)?;
        let provider = provider(name, &settings, llm)?;
        // At zero before its first call, so that its series exists.
        ::metrics::gauge!("llm_upstream_in_flight", "deployment" => name.clone()).set(0.0);
        deployments.insert(
            name.clone(),
            Arc::new(Deployment {
                name: name.clone(),
                system: gen_ai_system(&settings.provider),
                model: settings.model().to_owned(),
                provider,
                breaker: Breaker::new(
                    name,
                    breaker::Policy {
                        window: Duration::from_millis(llm.breaker.window_ms),
                        min_calls: llm.breaker.min_calls,
                        failure_rate_percent: llm.breaker.failure_rate_percent,
                        failure_threshold: llm.breaker.failure_threshold,
                        open_for: Duration::from_millis(llm.breaker.open_ms),
                    },
                ),
                price: llm
                    .prices
                    .get(settings.model())
                    .cloned()
                    .unwrap_or_default(),
                weight: settings.weight,
                load: balance::PeakEwma::default(),
            }),
        );
    }
    let aliases = llm
        .models
        .iter()
        .map(|(alias, model)| {
            let named = |names: &[String]| -> Arc<[Arc<Deployment>]> {
                names
                    .iter()
                    .filter_map(|name| deployments.get(name).cloned())
                    .collect()
            };
            (
                alias.clone(),
                Alias {
                    deployments: named(&model.deployments),
                    fallbacks: named(&model.fallbacks),
                    semantic_cache: model.semantic_cache,
                },
            )
        })
        .collect();
    let cache = if llm.cache.enabled {
        let settings = cache_config(config, "br:llm:", llm.cache.max_bytes);
        let cache = TieredCache::new("llm", settings, cache_stop.clone()).await?;
        Some((cache, Duration::from_millis(llm.cache.ttl_ms)))
    } else {
        None
    };
    let semantic = if llm.cache.enabled && llm.models.values().any(|m| m.semantic_cache) {
        let settings = cache_config(config, "br:llm-sem:", llm.cache.max_bytes / 4);
        let scopes = TieredCache::new("llm_semantic", settings, cache_stop.clone()).await?;
        Some((
            semantic::SemanticIndex::new(
                scopes,
                Duration::from_millis(llm.cache.ttl_ms),
                &llm.semantic,
                reqwest::Client::builder()
                    .connect_timeout(Duration::from_millis(llm.semantic.verifier.budget_ms))
                    .tcp_nodelay(true)
                    .build()?,
            ),
            llm.semantic.embedding_model.clone(),
        ))
    } else {
        None
    };
    Ok(Gateway::new(
        aliases,
        cache,
        semantic,
        llm.retry.clone(),
        Duration::from_millis(t.total_ms),
    ))
}

impl Application {
    /// Builds the gateway and binds the listeners.
    #[inline(never)]
    pub fn build(config: &Config) -> boardroom_runtime::BoxFuture<'_, anyhow::Result<Self>> {
        Box::pin(Self::build_inner(config))
    }

    async fn build_inner(config: &Config) -> anyhow::Result<Self> {
        config.validate()?;
        // One crypto provider for every TLS user (upstream HTTPS, tonic).
        let _ = rustls::crypto::ring::default_provider().install_default();
        boardroom_runtime::metrics::metrics_handle()?;
        boardroom_runtime::metrics::describe(metrics::FAMILIES);
        let cache_stop = CancellationToken::new();
        let gateway = Arc::new(build_gateway(config, &cache_stop).await?);
        let limits = RequestLimits {
            max_messages: config.llm.max_messages,
            max_prompt_bytes: config.llm.max_prompt_bytes,
        };
        let max_message = config.server.max_message_bytes;
        let l = &config.llm.limits;
        let limiter = Arc::new(limits::Limiter::new(
            l.default.clone(),
            l.callers.clone().into_iter().collect(),
            l.default_output_tokens,
        ));
        let api = Api::new(
            gateway,
            limiter,
            limits,
            Duration::from_millis(config.llm.stream_flush_ms),
        );
        let front_door = if config.llm.openai_api.enabled {
            Some(
                FrontDoor::bind(
                    config.llm.openai_api.addr,
                    api.clone(),
                    &config.auth,
                    &config.server,
                )
                .await?,
            )
        } else {
            None
        };
        let service = LlmGatewayServiceServer::new(LlmGrpc::new(api))
            .max_decoding_message_size(max_message)
            .max_encoding_message_size(max_message);
        let server = GrpcServer::bind(
            "llm-gateway",
            &config.llm.listen,
            &config.server,
            &config.auth,
        )
        .await?
        .add_service(service)
        // Its calls, its LLM metrics and its caches (in `boardroom serve` the process has more).
        .metrics_scope(
            MetricsScope::server("llm-gateway")
                .family("llm_")
                .label("cache", "llm")
                .label("cache", "llm_semantic"),
        );
        Ok(Self {
            server,
            front_door,
            cache_stop,
        })
    }

    /// The bound address of the OpenAI-compatible HTTP API, when it is on.
    pub fn openai_addr(&self) -> Option<SocketAddr> {
        self.front_door.as_ref().and_then(|d| d.local_addr().ok())
    }

    /// The bound gRPC address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.server.local_addr()
    }

    /// The service as callers in this process reach it without a socket (behind the same
    /// inbound layer as its port; see `boardroom_runtime::client::serve_in_process`).
    pub fn in_process(&mut self) -> boardroom_runtime::client::LocalService {
        self.server.in_process()
    }

    /// The bound admin HTTP address.
    pub fn admin_addr(&self) -> std::io::Result<SocketAddr> {
        self.server.admin_addr()
    }

    /// Serves gRPC and the OpenAI-compatible API until `shutdown`, then drains both; the
    /// cache's Redis connections close last.
    #[inline(never)]
    pub fn run_until_stopped(
        self,
        shutdown: CancellationToken,
    ) -> boardroom_runtime::BoxFuture<'static, anyhow::Result<()>> {
        Box::pin(self.run_until_stopped_inner(shutdown))
    }

    async fn run_until_stopped_inner(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let door = async {
            match self.front_door {
                Some(door) => door.run(shutdown.clone()).await,
                None => Ok(()),
            }
        };
        let (served, door) = tokio::join!(self.server.run(shutdown.clone()), door);
        self.cache_stop.cancel();
        served.and(door)
    }
}
