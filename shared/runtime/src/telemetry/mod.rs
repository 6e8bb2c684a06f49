//! One `init_telemetry` for every service: `tracing` with a reloadable filter, pretty or JSON
//! output (JSON lines name their trace and span), OpenTelemetry OTLP export when an endpoint
//! is configured (each service of the process under its own `service.name`), and W3C trace
//! context carried in gRPC metadata and HTTP headers.

mod logs;
mod router;
pub mod throttle;

use std::io::IsTerminal;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{BatchSpanProcessor, SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::format::JsonFields;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry, reload};

use crate::config::{LogFormat, TelemetryConfig};
use logs::{JsonWithTraceIds, TraceIds};
pub use router::ServiceRoute;
use router::ServiceRouter;

type FilterHandle = reload::Handle<EnvFilter, Registry>;

/// Keeps telemetry alive; call [`Telemetry::shutdown`] after the servers stop to flush spans.
pub struct Telemetry {
    filter: Option<FilterHandle>,
    provider: Option<SdkTracerProvider>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("otlp", &self.provider.is_some())
            .finish()
    }
}

/// The target of the spans that exist only for traces (client calls, queries, cache round
/// trips, model calls): never logged, and not even built unless spans are exported.
pub const TRACE_TARGET: &str = "boardroom::trace";

/// Installs the global subscriber. `RUST_LOG`, when set, wins over `config.log_level`.
/// A second call in one process (tests) keeps the first subscriber and returns a handle that
/// reloads nothing.
///
/// The log level filters what is logged, not what is traced: when spans are exported, every
/// span at INFO or above is (the sampler decides which traces are kept).
///
/// `service_name` is the process's `service.name`. When the process runs several services
/// (`routes`), each exports its spans under its own name (see [`ServiceRoute`]).
pub fn init_telemetry(
    service_name: &str,
    routes: &[ServiceRoute],
    config: &TelemetryConfig,
) -> anyhow::Result<Telemetry> {
    let endpoint = if config.otlp_endpoint.is_empty() {
        std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").unwrap_or_default()
    } else {
        config.otlp_endpoint.clone()
    };
    let provider = if endpoint.is_empty() {
        None
    } else {
        Some(tracer_provider(&endpoint, service_name, routes)?)
    };

    let (log_filter, filter_handle) = reload::Layer::new(build_filter(&config.log_level)?);
    let json = match config.format {
        LogFormat::Json => true,
        LogFormat::Pretty => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let json_lines = || {
        tracing_subscriber::fmt::layer()
            .fmt_fields(JsonFields::new())
            .event_format(JsonWithTraceIds)
            .with_writer(std::io::stderr)
    };
    let log_layer: Box<dyn Layer<Registry> + Send + Sync> = match (json, &provider) {
        (true, Some(_)) => TraceIds::default()
            .and_then(json_lines())
            .with_filter(log_filter)
            .boxed(),
        (true, None) => json_lines().with_filter(log_filter).boxed(),
        (false, _) => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_filter(log_filter)
            .boxed(),
    };
    let otel_layer = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer(service_name.to_owned()))
            .with_filter(LevelFilter::INFO)
    });

    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let installed = tracing_subscriber::registry()
        .with(log_layer)
        .with(otel_layer)
        .try_init()
        .is_ok();
    Ok(Telemetry {
        filter: installed.then_some(filter_handle),
        provider,
    })
}

/// Batches spans to the OTLP/gRPC collector at `endpoint`, one exporter per service of the
/// process. Sampling follows `OTEL_TRACES_SAMPLER`/`OTEL_TRACES_SAMPLER_ARG` (the SDK's
/// default: parent-based, always on).
fn tracer_provider(
    endpoint: &str,
    service_name: &str,
    routes: &[ServiceRoute],
) -> anyhow::Result<SdkTracerProvider> {
    use opentelemetry_otlp::WithExportConfig;
    let exporter = || {
        opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint.to_owned())
            .build()
    };
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service_name.to_owned())
        .build();
    let builder = SdkTracerProvider::builder().with_resource(resource);
    if routes.is_empty() {
        return Ok(builder.with_batch_exporter(exporter()?).build());
    }
    let processors = (0..=routes.len())
        .map(|_| Ok(BatchSpanProcessor::builder(exporter()?).build()))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let router = ServiceRouter::new(routes.to_vec(), service_name.to_owned(), processors);
    Ok(builder.with_span_processor(router).build())
}

/// What is logged: `RUST_LOG` or `level`, never the trace-only spans.
fn build_filter(level: &str) -> anyhow::Result<EnvFilter> {
    let directives = match std::env::var("RUST_LOG") {
        Ok(from_env) if !from_env.is_empty() => from_env,
        _ => level.to_owned(),
    };
    Ok(EnvFilter::try_new(directives)?.add_directive(format!("{TRACE_TARGET}=off").parse()?))
}

impl Telemetry {
    /// Applies a new log level (SIGHUP). `RUST_LOG`, when set, still wins.
    pub fn set_log_level(&self, level: &str) -> anyhow::Result<()> {
        if let Some(handle) = &self.filter {
            handle.reload(build_filter(level)?)?;
        }
        Ok(())
    }

    /// Flushes and stops the OTLP exporter.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(err) = provider.shutdown()
        {
            tracing::warn!(error = %err, "OpenTelemetry shutdown failed");
        }
    }
}

/// Reads W3C `traceparent`/`tracestate` from HTTP headers (gRPC metadata).
struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

struct HeaderInjector<'a>(&'a mut http::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

/// Makes `span` a child of the remote context found in `headers`, if any.
pub fn set_remote_parent(span: &tracing::Span, headers: &http::HeaderMap) {
    if !headers.contains_key("traceparent") {
        return;
    }
    let cx = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    // Fails only when the span is disabled; nothing to do then.
    let _ = span.set_parent(cx);
}

/// Writes the current span's context as `traceparent`/`tracestate` into outgoing headers.
pub fn inject_current_context(headers: &mut http::HeaderMap) {
    inject_context(&tracing::Span::current(), headers);
}

/// Writes `span`'s context as `traceparent`/`tracestate` into outgoing headers (a client
/// span's, so that the callee's server span is its child).
pub fn inject_context(span: &tracing::Span, headers: &mut http::HeaderMap) {
    let cx = span.context();
    TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(headers));
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::TraceContextExt;

    #[test]
    fn trace_context_survives_a_hop() {
        let provider = SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, || {
            let incoming_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
            let mut inbound = http::HeaderMap::new();
            inbound.insert(
                "traceparent",
                http::HeaderValue::from_str(&format!("00-{incoming_trace}-00f067aa0ba902b7-01"))
                    .expect("ascii"),
            );
            let span = tracing::info_span!("server");
            set_remote_parent(&span, &inbound);
            let _entered = span.enter();
            assert_eq!(
                span.context().span().span_context().trace_id().to_string(),
                incoming_trace
            );

            let mut outbound = http::HeaderMap::new();
            inject_current_context(&mut outbound);
            let sent = outbound
                .get("traceparent")
                .and_then(|v| v.to_str().ok())
                .expect("traceparent sent");
            assert!(sent.starts_with(&format!("00-{incoming_trace}-")), "{sent}");
            assert!(
                !sent.contains("00f067aa0ba902b7"),
                "the outgoing parent is our span, not the caller's"
            );
        });
    }

    #[test]
    fn no_traceparent_leaves_the_span_a_root() {
        let span = tracing::info_span!("server");
        set_remote_parent(&span, &http::HeaderMap::new());
    }
}
