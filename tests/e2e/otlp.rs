//! Traces through a real OTLP/gRPC receiver (the test kit's tonic server on the
//! opentelemetry-proto trace service): spans continue the caller's W3C trace, a turn is one
//! trace across every service of `boardroom serve`, each service under its own
//! `service.name`, and sampling follows `OTEL_TRACES_SAMPLER`.

use std::time::Duration;

use boardroom_proto::conversation::v1 as cpb;
use boardroom_proto::conversation::v1::conversation_service_client::ConversationServiceClient;
use boardroom_proto::session::v1::session_service_client::SessionServiceClient;
use boardroom_testkit::channel;
use boardroom_testkit::otlp::{OtlpReceiver, ReceivedSpan, Trace};
use tokio_stream::StreamExt;

use crate::binary::{Server, boardroom_of, new_thread, serve_with_env};

/// An interceptor sending `traceparent` for trace `trace_id` with parent `parent_id`.
fn traceparent(
    trace_id: &'static str,
    parent_id: &'static str,
) -> impl FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Clone {
    move |mut req: tonic::Request<()>| {
        req.metadata_mut().insert(
            "traceparent",
            format!("00-{trace_id}-{parent_id}-01")
                .parse()
                .expect("ascii"),
        );
        Ok(req)
    }
}

/// Stops `server` with SIGTERM (which flushes the exporter) and waits for a clean exit.
async fn stop(mut server: Server) -> Server {
    server.signal("TERM");
    let status = tokio::time::timeout(Duration::from_secs(30), server.child.wait())
        .await
        .expect("exits")
        .expect("status");
    assert!(status.success());
    server
}

/// `boardroom serve` exporting to `receiver` (with `env` on top) takes one CreateBoardroom
/// call inside the caller's trace, then stops.
async fn one_traced_call(
    receiver: &OtlpReceiver,
    env: &[(&str, String)],
    trace_id: &'static str,
    parent_id: &'static str,
) {
    let mut otlp = vec![("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint())];
    otlp.extend(env.iter().cloned());
    let server = serve_with_env(&[], &otlp).await;
    let mut client = SessionServiceClient::with_interceptor(
        channel(server.grpc).await,
        traceparent(trace_id, parent_id),
    );
    client
        .create_boardroom(boardroom_of(&["CFO"]))
        .await
        .expect("call");
    stop(server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standard_sampler_variable_turns_tracing_off() {
    let mut receiver = OtlpReceiver::start().await;
    one_traced_call(
        &receiver,
        &[("OTEL_TRACES_SAMPLER", "always_off".into())],
        "5bf92f3577b34da6a3ce929d0e0e4736",
        "10f067aa0ba902b7",
    )
    .await;
    // The process exited after its last export was answered: whatever it sent is here.
    let exported = receiver.received();
    assert!(
        exported.is_empty(),
        "always_off samples nothing, a sampled parent neither: {exported:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_continue_the_callers_trace_and_reach_the_collector() {
    let mut receiver = OtlpReceiver::start().await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent_id = "00f067aa0ba902b7";
    one_traced_call(&receiver, &[], trace_id, parent_id).await;

    let spans = receiver.received();
    let span = spans
        .iter()
        .find(|s| s.span.name == "boardroom.session.v1.SessionService/CreateBoardroom")
        .unwrap_or_else(|| panic!("the RPC's span reached the collector: {spans:?}"));
    assert_eq!(
        span.trace_id(),
        trace_id,
        "the span continues the caller's trace"
    );
    assert_eq!(
        span.parent_id(),
        parent_id,
        "its parent is the caller's span"
    );
    assert_eq!(span.service, "boardroom-session", "its service's own name");
}

/// A turn with two advisors through `boardroom serve` (every service in one process, on
/// SQLite and Redis) is one trace: the conversation's server span → its session lookups
/// (client span → the session's server span → its query) → one gateway call per advisor and
/// one for the moderator (client span → the gateway's server span) → the upstream model call,
/// with the GenAI attributes and its first token as an event. Every span's parent is in the
/// trace, and each service exports under its own name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_is_one_trace_across_every_service() {
    let mut receiver = OtlpReceiver::start().await;
    let (redis, _) = boardroom_testkit::redis_url().await;
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint()),
        ("BOARDROOM_REDIS__URL", redis),
        // The turn's own debug line is written inside its span.
        ("RUST_LOG", "info,boardroom_conversation=debug".into()),
    ];
    let mut server = serve_with_env(&[], &env).await;
    let trace_id = "6bf92f3577b34da6a3ce929d0e0e4736";
    let parent_id = "20f067aa0ba902b7";

    let thread_id = new_thread(server.grpc, &["CFO", "CTO"]).await;
    let mut conversation = ConversationServiceClient::with_interceptor(
        channel(
            server
                .conversation_grpc
                .expect("serve runs the conversation"),
        )
        .await,
        traceparent(trace_id, parent_id),
    );
    let mut events = conversation
        .run_turn(cpb::RunTurnRequest {
            thread_id,
            content: "Should we raise prices?".into(),
            author: "u".into(),
            ..cpb::RunTurnRequest::default()
        })
        .await
        .expect("run turn")
        .into_inner();
    let mut completed = false;
    while let Some(event) = events.next().await {
        if let Some(cpb::run_turn_response::Event::TurnCompleted(_)) = event.expect("event").event {
            completed = true;
        }
    }
    assert!(completed, "the turn completed");
    // The turn's line, written inside its span, names the trace.
    let line = crate::binary::wait_for_log(&mut server.log, "turn stored").await;
    let logged: serde_json::Value = serde_json::from_str(&line).expect("JSON log line");
    assert_eq!(logged["trace_id"], trace_id, "{line}");
    assert_eq!(logged["span"]["name"], "turn", "{line}");
    assert_eq!(logged["span_id"].as_str().map(str::len), Some(16), "{line}");
    let server = stop(server).await;
    drop(server);

    let spans = receiver.received();
    let trace = Trace::of(&spans, trace_id);
    let tree = trace.render();
    let one = |name: &str| -> &ReceivedSpan {
        let found: Vec<_> = trace.named(name).collect();
        assert_eq!(found.len(), 1, "one {name} in\n{tree}");
        found[0]
    };

    // The root continues the caller; nothing in the trace hangs loose.
    let root = one("boardroom.conversation.v1.ConversationService/RunTurn");
    assert_eq!(root.parent_id(), parent_id, "{tree}");
    assert_eq!(root.service, "boardroom-conversation");
    for span in trace.spans() {
        if span.span_id() != root.span_id() {
            assert!(
                trace.descends_from(span, root),
                "{} is not under the turn's root:\n{tree}",
                span.span.name
            );
        }
    }
    let turn = one("turn");
    assert_eq!(turn.service, "boardroom-conversation");

    // Every outgoing gRPC call is a client span whose child is the callee's server span.
    let server_spans = |prefix: &str| -> Vec<&ReceivedSpan> {
        trace
            .spans()
            .filter(|s| s.span.name.starts_with(prefix) && s.attribute("rpc.system").is_some())
            .filter(|s| s.span.kind == 2) // SPAN_KIND_SERVER
            .collect()
    };
    let check_hop = |callee: &ReceivedSpan, service: &str| {
        assert_eq!(callee.service, service, "{tree}");
        let client = trace.parent(callee).expect("a parent");
        assert_eq!(client.span.kind, 3, "the parent is a client span:\n{tree}"); // CLIENT
        assert_eq!(client.span.name, callee.span.name, "{tree}");
        assert_eq!(client.service, "boardroom-conversation", "{tree}");
        assert!(trace.descends_from(client, turn) || trace.descends_from(client, root));
    };
    let lookups = server_spans("boardroom.session.v1.SessionService/");
    assert!(
        !lookups.is_empty(),
        "the turn looked its thread up:\n{tree}"
    );
    for lookup in &lookups {
        check_hop(lookup, "boardroom-session");
    }
    let model_calls = server_spans("boardroom.llm.v1.LlmGatewayService/ChatStream");
    assert_eq!(
        model_calls.len(),
        3,
        "one gateway call per advisor and the moderator:\n{tree}"
    );
    for call in &model_calls {
        check_hop(call, "boardroom-llm-gateway");
        let asker = trace.ancestors(call);
        assert!(
            asker
                .iter()
                .any(|s| s.span.name.starts_with("advisor ") || s.span.name == "moderator"),
            "a gateway call is an advisor's or the moderator's:\n{tree}"
        );
        // The upstream call, after the GenAI conventions.
        let upstream: Vec<_> = trace
            .spans()
            .filter(|s| s.attribute("gen_ai.system").is_some() && trace.descends_from(s, call))
            .collect();
        assert_eq!(upstream.len(), 1, "one upstream call under each:\n{tree}");
        let upstream = upstream[0];
        assert_eq!(upstream.service, "boardroom-llm-gateway");
        assert_eq!(upstream.span.kind, 3, "client");
        assert_eq!(
            upstream.attribute("gen_ai.system").as_deref(),
            Some("boardroom.mock")
        );
        assert_eq!(
            upstream.attribute("gen_ai.operation.name").as_deref(),
            Some("chat")
        );
        assert!(upstream.attribute("gen_ai.request.model").is_some());
        for usage in ["gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens"] {
            let tokens: u64 = upstream
                .attribute(usage)
                .and_then(|t| t.parse().ok())
                .unwrap_or_else(|| panic!("{usage} on {:?}", upstream.span.attributes));
            assert!(tokens > 0, "{usage}");
        }
        assert!(
            upstream
                .span
                .events
                .iter()
                .any(|e| e.name == "gen_ai.first_token"),
            "time to first token as an event: {:?}",
            upstream.span.events
        );
    }
    let advisors: Vec<_> = trace
        .spans()
        .filter(|s| s.span.name.starts_with("advisor "))
        .map(|s| s.span.name.clone())
        .collect();
    assert_eq!(advisors.len(), 2, "{tree}");

    // Queries and Redis round trips, by statement name, never SQL with values.
    let queries: Vec<_> = trace
        .spans()
        .filter(|s| s.attribute("db.system").as_deref() == Some("sqlite"))
        .collect();
    assert!(!queries.is_empty(), "database spans:\n{tree}");
    for query in &queries {
        let name = query
            .attribute("db.operation.name")
            .expect("a statement name");
        assert_eq!(query.span.name, name);
        assert!(!name.contains(' '), "a name, not SQL: {name}");
    }
    assert!(
        trace
            .spans()
            .any(|s| s.attribute("db.system").as_deref() == Some("redis")),
        "Redis round trips:\n{tree}"
    );
}
