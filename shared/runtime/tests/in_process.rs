//! Calls to a server of the same process: no socket, but the server's own inbound layer
//! (authentication, deadline, metrics), streams that end when the caller lets go, and a
//! handler's panic that fails the call only.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use boardroom_proto::llm::v1 as pb;
use boardroom_proto::llm::v1::llm_gateway_service_client::LlmGatewayServiceClient;
use boardroom_proto::llm::v1::llm_gateway_service_server::{
    LlmGatewayService, LlmGatewayServiceServer,
};
use boardroom_runtime::client::{ChannelFactory, OutboundInterceptor, serve_in_process};
use boardroom_runtime::config::{AuthConfig, ClientConfig, Listen, Secret, ServerConfig};
use boardroom_runtime::server::GrpcServer;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::WatchStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Code, Request, Response, Status};

const TOKEN: &str = "in-process-token";

/// A gateway whose Chat answers by the model asked for: "slow" never answers (and says it
/// waits), "panic" panics,
/// any other echoes the model; ChatStream sends what the test sets, as deltas.
#[derive(Debug, Clone)]
struct Probe {
    said: Arc<watch::Sender<String>>,
    /// Held by each "slow" call while it waits.
    waiting: Arc<watch::Sender<()>>,
    /// Told when a "slow" call starts waiting.
    started: mpsc::UnboundedSender<()>,
}

#[tonic::async_trait]
impl LlmGatewayService for Probe {
    async fn chat(
        &self,
        request: Request<pb::ChatRequest>,
    ) -> Result<Response<pb::ChatResponse>, Status> {
        match request.get_ref().model.as_str() {
            "slow" => {
                let _held = self.waiting.subscribe();
                let _ = self.started.send(());
                std::future::pending().await
            }
            "panic" => panic!("the probe was asked to panic"),
            model => Ok(Response::new(pb::ChatResponse {
                model: model.to_owned(),
                ..pb::ChatResponse::default()
            })),
        }
    }

    type ChatStreamStream =
        Pin<Box<dyn Stream<Item = Result<pb::ChatStreamResponse, Status>> + Send + 'static>>;

    async fn chat_stream(
        &self,
        _request: Request<pb::ChatStreamRequest>,
    ) -> Result<Response<Self::ChatStreamStream>, Status> {
        let said = WatchStream::new(self.said.subscribe()).map(|text| {
            Ok(pb::ChatStreamResponse {
                event: Some(pb::chat_stream_response::Event::Delta(text)),
            })
        });
        Ok(Response::new(Box::pin(said)))
    }

    async fn embed(
        &self,
        _request: Request<pb::EmbedRequest>,
    ) -> Result<Response<pb::EmbedResponse>, Status> {
        Err(Status::unimplemented("not in the probe"))
    }

    async fn list_models(
        &self,
        _request: Request<pb::ListModelsRequest>,
    ) -> Result<Response<pb::ListModelsResponse>, Status> {
        Err(Status::unimplemented("not in the probe"))
    }
}

/// An address nothing listens on: a call that reaches the server there did not use a socket.
fn unused_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr: SocketAddr = listener.local_addr().expect("address");
    format!("http://{addr}")
}

fn client_config(in_process: bool) -> ClientConfig {
    ClientConfig {
        connect_timeout_ms: 500,
        request_timeout_ms: 2_000,
        in_process,
        ..ClientConfig::default()
    }
}

/// The `rpc_server_requests_total` of the probe's server for `method` and `code`.
fn served(method: &str, code: Code) -> f64 {
    let text = boardroom_runtime::metrics::metrics_handle()
        .expect("metrics")
        .render();
    text.lines()
        .filter(|line| line.starts_with("rpc_server_requests_total{"))
        .filter(|line| line.contains("server=\"probe\""))
        .filter(|line| line.contains(&format!("rpc_method=\"{method}\"")))
        .filter(|line| line.contains(&format!("rpc_grpc_status_code=\"{}\"", code as i32)))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn chat(model: &str) -> pb::ChatRequest {
    pb::ChatRequest {
        model: model.to_owned(),
        ..pb::ChatRequest::default()
    }
}

fn delta(event: Option<pb::ChatStreamResponse>) -> String {
    match event.and_then(|e| e.event) {
        Some(pb::chat_stream_response::Event::Delta(text)) => text,
        other => panic!("expected a delta, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_of_the_process_is_called_through_its_inbound_layer_without_a_socket() {
    // The recorder first: the server's metric handles are made with the layer.
    boardroom_runtime::metrics::metrics_handle().expect("metrics");
    let (said, _) = watch::channel("first".to_owned());
    let said = Arc::new(said);
    let waiting = Arc::new(watch::channel(()).0);
    let (started, mut slow_calls) = mpsc::unbounded_channel();
    let localhost = "127.0.0.1:0".parse().expect("address");
    let auth = AuthConfig {
        enabled: true,
        tokens: BTreeMap::from([("caller".to_owned(), Secret::new(TOKEN))]),
        ..AuthConfig::default()
    };
    let mut server = GrpcServer::bind(
        "probe",
        &Listen {
            grpc_addr: localhost,
            admin_addr: localhost,
        },
        &ServerConfig::default(),
        &auth,
    )
    .await
    .expect("bind")
    .add_service(LlmGatewayServiceServer::new(Probe {
        said: said.clone(),
        waiting: waiting.clone(),
        started,
    }));
    let address = unused_address();
    serve_in_process(&address, server.in_process());

    let channel = ChannelFactory::new(client_config(true))
        .channel(std::slice::from_ref(&address))
        .expect("channel");
    let interceptor = OutboundInterceptor::new(&Secret::new(TOKEN)).expect("token");
    let mut client =
        LlmGatewayServiceClient::with_interceptor(channel.clone(), interceptor.clone());

    // Served, though nothing listens at the address.
    let before = served("Chat", Code::Ok);
    let answer = client.chat(chat("m")).await.expect("in-process call");
    assert_eq!(answer.into_inner().model, "m");
    assert_eq!(
        served("Chat", Code::Ok) - before,
        1.0,
        "counted as the server's call"
    );

    // The server's authentication applies.
    let refused = LlmGatewayServiceClient::new(channel.clone())
        .chat(chat("m"))
        .await
        .expect_err("no token");
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");

    // The caller's deadline is the server's deadline.
    let mut slow = Request::new(chat("slow"));
    slow.set_timeout(Duration::from_millis(50));
    let late = client.chat(slow).await.expect_err("past its deadline");
    assert_eq!(late.code(), Code::DeadlineExceeded, "{late:?}");
    // And a call that ended is not left running on the server.
    tokio::time::timeout(Duration::from_secs(5), waiting.closed())
        .await
        .expect("the handler of the call past its deadline was dropped");
    // Nor is one the caller let go of.
    slow_calls
        .recv()
        .await
        .expect("the first slow call started");
    tokio::select! {
        _ = client.chat(chat("slow")) => panic!("a slow call answered"),
        started = slow_calls.recv() => started.expect("the second slow call started"),
    }
    tokio::time::timeout(Duration::from_secs(5), waiting.closed())
        .await
        .expect("the handler of the call its caller dropped was dropped");

    // A handler that panics fails its call, not the caller; the next call is served.
    let panicked = client.chat(chat("panic")).await.expect_err("panicked");
    assert_eq!(panicked.code(), Code::Internal, "{panicked:?}");
    assert!(client.chat(chat("m")).await.is_ok());

    // A stream follows the server, and ends on the server's side when the caller drops it.
    let request = pb::ChatStreamRequest {
        chat: Some(chat("m")),
    };
    let mut events = client
        .chat_stream(request)
        .await
        .expect("stream")
        .into_inner();
    assert_eq!(delta(events.message().await.expect("first")), "first");
    said.send_replace("second".to_owned());
    assert_eq!(delta(events.message().await.expect("second")), "second");
    assert_eq!(said.receiver_count(), 1, "the server's stream is open");
    drop(events);
    tokio::time::timeout(Duration::from_secs(5), said.closed())
        .await
        .expect("the server's stream ended with the caller's");

    // With `client.in_process` off, the same address is called over the network, where
    // nothing listens.
    let network = ChannelFactory::new(client_config(false))
        .channel(std::slice::from_ref(&address))
        .expect("channel");
    let unreachable = LlmGatewayServiceClient::with_interceptor(network, interceptor)
        .chat(chat("m"))
        .await
        .expect_err("nothing listens");
    assert_eq!(unreachable.code(), Code::Unavailable, "{unreachable:?}");
}
