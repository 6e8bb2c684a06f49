//! A real OTLP/gRPC trace receiver: a tonic server on opentelemetry-proto's trace service, on
//! a free loopback port, keeping every span it is sent with the `service.name` of its resource.

use std::collections::HashMap;
use std::net::SocketAddr;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::Span;
use tokio::sync::mpsc;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;

struct Receiver(mpsc::UnboundedSender<ExportTraceServiceRequest>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let _ = self.0.send(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// A span as received, with the service that sent it.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    /// `service.name` of the resource it came under.
    pub service: String,
    /// The span.
    pub span: Span,
}

impl ReceivedSpan {
    /// Its trace id in hex.
    pub fn trace_id(&self) -> String {
        hex(&self.span.trace_id)
    }
    /// Its span id in hex.
    pub fn span_id(&self) -> String {
        hex(&self.span.span_id)
    }
    /// Its parent's span id in hex (empty for a root).
    pub fn parent_id(&self) -> String {
        hex(&self.span.parent_span_id)
    }
    /// The value of attribute `key`, as text (numbers and booleans formatted).
    pub fn attribute(&self, key: &str) -> Option<String> {
        attribute(&self.span.attributes, key)
    }
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attribute(attributes: &[KeyValue], key: &str) -> Option<String> {
    let value = attributes.iter().find(|a| a.key == key)?.value.as_ref()?;
    text(value)
}

fn text(value: &AnyValue) -> Option<String> {
    Some(match value.value.as_ref()? {
        Value::StringValue(s) => s.clone(),
        Value::IntValue(i) => i.to_string(),
        Value::DoubleValue(d) => d.to_string(),
        Value::BoolValue(b) => b.to_string(),
        other => format!("{other:?}"),
    })
}

/// The receiver: where to export to, and what has arrived.
pub struct OtlpReceiver {
    /// Its address (`http://{addr}` is the OTLP endpoint).
    pub addr: SocketAddr,
    exports: mpsc::UnboundedReceiver<ExportTraceServiceRequest>,
    stop: CancellationToken,
}

impl OtlpReceiver {
    /// Listens on a free loopback port.
    pub async fn start() -> Self {
        Self::bind("127.0.0.1:0".parse().expect("an address")).await
    }

    /// Listens on `addr`.
    pub async fn bind(addr: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .expect("bind the OTLP receiver");
        let addr = listener.local_addr().expect("addr");
        let (tx, exports) = mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        // Owned by the receiver: stopped when it is dropped.
        #[allow(clippy::disallowed_methods)]
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(Receiver(tx)))
                .serve_with_incoming_shutdown(
                    TcpListenerStream::new(listener),
                    stop.clone().cancelled_owned(),
                ),
        );
        Self {
            addr,
            exports,
            stop,
        }
    }

    /// The endpoint to configure (`OTEL_EXPORTER_OTLP_ENDPOINT`).
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far (call it after the exporting process has exited: it
    /// flushed what it had, and each export was answered before it exited).
    pub fn received(&mut self) -> Vec<ReceivedSpan> {
        let mut spans = Vec::new();
        while let Ok(export) = self.exports.try_recv() {
            for resource_spans in export.resource_spans {
                let service = resource_spans
                    .resource
                    .as_ref()
                    .and_then(|r| attribute(&r.attributes, "service.name"))
                    .unwrap_or_default();
                for span in resource_spans.scope_spans.into_iter().flat_map(|s| s.spans) {
                    spans.push(ReceivedSpan {
                        service: service.clone(),
                        span,
                    });
                }
            }
        }
        spans
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The spans of one trace, indexed by span id.
#[derive(Debug)]
pub struct Trace {
    spans: HashMap<String, ReceivedSpan>,
}

impl Trace {
    /// The spans of `spans` in trace `trace_id`.
    pub fn of(spans: &[ReceivedSpan], trace_id: &str) -> Self {
        Self {
            spans: spans
                .iter()
                .filter(|s| s.trace_id() == trace_id)
                .map(|s| (s.span_id(), s.clone()))
                .collect(),
        }
    }

    /// Every span of the trace.
    pub fn spans(&self) -> impl Iterator<Item = &ReceivedSpan> {
        self.spans.values()
    }

    /// The spans named `name`.
    pub fn named<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a ReceivedSpan> + 'a {
        let name = name.to_owned();
        self.spans.values().filter(move |s| s.span.name == name)
    }

    /// The parent of `span`, when it is in the trace.
    pub fn parent(&self, span: &ReceivedSpan) -> Option<&ReceivedSpan> {
        self.spans.get(&span.parent_id())
    }

    /// `span`'s ancestors in the trace, nearest first.
    pub fn ancestors<'a>(&'a self, span: &'a ReceivedSpan) -> Vec<&'a ReceivedSpan> {
        let mut chain = Vec::new();
        let mut at = span;
        while let Some(parent) = self.parent(at) {
            if chain.len() > self.spans.len() {
                break; // a cycle: never in a real trace
            }
            chain.push(parent);
            at = parent;
        }
        chain
    }

    /// Whether `ancestor` is above `span`.
    pub fn descends_from(&self, span: &ReceivedSpan, ancestor: &ReceivedSpan) -> bool {
        self.ancestors(span)
            .iter()
            .any(|a| a.span_id() == ancestor.span_id())
    }

    /// The spans whose parent is `span`.
    pub fn children<'a>(
        &'a self,
        span: &'a ReceivedSpan,
    ) -> impl Iterator<Item = &'a ReceivedSpan> + 'a {
        let id = span.span_id();
        self.spans.values().filter(move |s| s.parent_id() == id)
    }

    /// The trace as an indented tree (service, name), for failure messages.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut roots: Vec<&ReceivedSpan> = self
            .spans
            .values()
            .filter(|s| self.parent(s).is_none())
            .collect();
        roots.sort_by_key(|s| s.span.start_time_unix_nano);
        for root in roots {
            self.render_into(root, 0, &mut out);
        }
        out
    }

    fn render_into(&self, span: &ReceivedSpan, depth: usize, out: &mut String) {
        out.push_str(&format!(
            "{}{} [{}]\n",
            "  ".repeat(depth),
            span.span.name,
            span.service
        ));
        let mut children: Vec<&ReceivedSpan> = self.children(span).collect();
        children.sort_by_key(|s| s.span.start_time_unix_nano);
        for child in children {
            self.render_into(child, depth + 1, out);
        }
    }
}
