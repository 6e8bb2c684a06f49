//! Spans reach an OTLP collector, continue the caller's W3C trace, and are flushed when the
//! server stops: a fake collector (the real OTLP gRPC contract) receives what `boardroom serve`
//! exports when `OTEL_EXPORTER_OTLP_ENDPOINT` points at it.

use std::time::Duration;

use boardroom_proto::session::v1 as pb;
use boardroom_proto::session::v1::session_service_client::SessionServiceClient;
use boardroom_testkit::channel;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::TcpListenerStream;

use crate::binary::serve_with_env;

struct Collector(mpsc::UnboundedSender<ExportTraceServiceRequest>);

#[tonic::async_trait]
impl TraceService for Collector {
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

/// A fake collector on a free port: its address, what it receives, and its stop.
async fn collector() -> (
    std::net::SocketAddr,
    mpsc::UnboundedReceiver<ExportTraceServiceRequest>,
    tokio_util::sync::CancellationToken,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let collector_addr = listener.local_addr().expect("addr");
    let (spans_tx, spans) = mpsc::unbounded_channel();
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Collector(spans_tx)))
            .serve_with_incoming_shutdown(
                TcpListenerStream::new(listener),
                stop.clone().cancelled_owned(),
            ),
    );
    (collector_addr, spans, stop)
}

/// `boardroom serve` exporting to `collector` (with `env` on top) takes one CreateBoardroom
/// call inside the caller's trace, then stops (which flushes the exporter).
async fn one_traced_call(
    collector: std::net::SocketAddr,
    env: &[(&str, String)],
    trace_id: &'static str,
    parent_id: &'static str,
) {
    let mut otlp = vec![("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{collector}"))];
    otlp.extend(env.iter().cloned());
    let mut server = serve_with_env(&[], &otlp).await;
    let mut client = SessionServiceClient::with_interceptor(
        channel(server.grpc).await,
        move |mut req: tonic::Request<()>| {
            req.metadata_mut().insert(
                "traceparent",
                format!("00-{trace_id}-{parent_id}-01")
                    .parse()
                    .expect("ascii"),
            );
            Ok(req)
        },
    );
    client
        .create_boardroom(pb::CreateBoardroomRequest {
            owner_id: "o".into(),
            name: "Traced".into(),
            advisors: vec![pb::Advisor {
                name: "CFO".into(),
                role: String::new(),
                system_prompt: String::new(),
                model: "m".into(),
            }],
            request_id: String::new(),
            double_text: pb::DoubleTextPolicy::Unspecified as i32,
        })
        .await
        .expect("call");

    // Stopping the server flushes the batch exporter.
    server.signal("TERM");
    let status = tokio::time::timeout(Duration::from_secs(30), server.child.wait())
        .await
        .expect("exits")
        .expect("status");
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standard_sampler_variable_turns_tracing_off() {
    let (addr, mut spans, stop) = collector().await;
    one_traced_call(
        addr,
        &[("OTEL_TRACES_SAMPLER", "always_off".into())],
        "5bf92f3577b34da6a3ce929d0e0e4736",
        "10f067aa0ba902b7",
    )
    .await;
    // The process exited after its last export was answered: whatever it sent is here.
    let mut exported = 0;
    while let Ok(export) = spans.try_recv() {
        exported += export
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum::<usize>();
    }
    assert_eq!(
        exported, 0,
        "always_off samples nothing, a sampled parent neither"
    );
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_continue_the_callers_trace_and_reach_the_collector() {
    let (addr, mut spans, stop) = collector().await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent_id = "00f067aa0ba902b7";
    one_traced_call(addr, &[], trace_id, parent_id).await;

    let mut found = None;
    while let Ok(Some(export)) = tokio::time::timeout(Duration::from_secs(10), spans.recv()).await {
        for resource_spans in export.resource_spans {
            let service = resource_spans
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
                .and_then(|a| a.value.as_ref())
                .map(|v| format!("{:?}", v.value));
            for span in resource_spans.scope_spans.into_iter().flat_map(|s| s.spans) {
                if span.name == "boardroom.session.v1.SessionService/CreateBoardroom" {
                    found = Some((span, service.clone()));
                }
            }
        }
        if found.is_some() {
            break;
        }
    }
    let (span, service) = found.expect("the RPC's span reached the collector");
    assert_eq!(
        hex(&span.trace_id),
        trace_id,
        "the span continues the caller's trace"
    );
    assert_eq!(
        hex(&span.parent_span_id),
        parent_id,
        "its parent is the caller's span"
    );
    assert!(
        service.unwrap_or_default().contains("boardroom"),
        "resource names the service"
    );
    stop.cancel();
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
