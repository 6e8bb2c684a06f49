use std::net::SocketAddr;

use boardroom_llm_gateway::settings::{MockConfig, OpenAiConfig, ProviderSettings};
use boardroom_proto::llm::v1 as pb;
use boardroom_proto::llm::v1::llm_gateway_service_client::LlmGatewayServiceClient;
use boardroom_runtime::Config;
use boardroom_runtime::config::{DeploymentConfig, ModelAlias};
use boardroom_testkit::{channel, service_test_config};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic_types::StatusExt;

pub type Client = LlmGatewayServiceClient<Channel>;

pub struct TestApp {
    pub client: Client,
    pub admin: SocketAddr,
    /// The OpenAI-compatible API, when on.
    pub openai: Option<SocketAddr>,
    pub shutdown: CancellationToken,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub async fn spawn_app(configure: impl FnOnce(&mut Config)) -> TestApp {
    let mut config = service_test_config();
    configure(&mut config);
    let app = boardroom_llm_gateway::Application::build(&config)
        .await
        .expect("building the gateway");
    let addr = app.local_addr().expect("bound");
    let admin = app.admin_addr().expect("bound");
    let openai = app.openai_addr();
    let shutdown = CancellationToken::new();
    tokio::spawn(app.run_until_stopped(shutdown.clone()));
    TestApp {
        client: LlmGatewayServiceClient::new(channel(addr).await),
        admin,
        openai,
        shutdown,
    }
}

/// A deployment on a fake (or real) OpenAI-compatible upstream.
pub fn upstream(base_url: &str) -> DeploymentConfig {
    ProviderSettings::Openai(OpenAiConfig {
        model: "gpt-fake".into(),
        base_url: base_url.to_owned(),
        ..OpenAiConfig::default()
    })
    .into()
}

/// The mock answers a unary call after 2 s.
pub fn slow_mock(config: &mut Config) {
    config.llm.deployments.insert(
        "mock".into(),
        ProviderSettings::Mock(MockConfig {
            latency_ms: 2_000,
            ..MockConfig::default()
        })
        .into(),
    );
}

/// Alias `model` on the first of `deployments` (name, config), the others its fallbacks in
/// order.
pub fn route(config: &mut Config, model: &str, deployments: Vec<(&str, DeploymentConfig)>) {
    let names: Vec<String> = deployments.iter().map(|(n, _)| (*n).to_owned()).collect();
    config.llm.models.insert(
        model.to_owned(),
        ModelAlias {
            deployments: names[..1].to_vec(),
            fallbacks: names[1..].to_vec(),
            semantic_cache: false,
        },
    );
    for (name, deployment) in deployments {
        config.llm.deployments.insert(name.to_owned(), deployment);
    }
    // Retries in tests wait little.
    config.llm.retry.base_backoff_ms = 5;
}

pub fn user(text: &str) -> pb::Message {
    pb::Message {
        role: pb::Role::User as i32,
        content: text.to_owned(),
        ..pb::Message::default()
    }
}

pub fn chat(model: &str, text: &str, temperature: f32) -> pb::ChatRequest {
    pb::ChatRequest {
        model: model.to_owned(),
        messages: vec![user(text)],
        temperature: Some(temperature),
        ..pb::ChatRequest::default()
    }
}

/// What a stream delivered until it ended.
#[derive(Debug, Default)]
pub struct Streamed {
    /// The text of its deltas.
    pub text: String,
    /// Its tool calls.
    pub calls: Vec<pb::ToolCall>,
    /// Its final response.
    pub done: Option<pb::ChatResponse>,
    /// The error it ended with.
    pub error: Option<tonic::Status>,
}

/// A stream's events until it ends.
pub async fn streamed(client: &mut Client, request: pb::ChatRequest) -> Streamed {
    let mut out = Streamed::default();
    let mut stream = match client
        .chat_stream(pb::ChatStreamRequest {
            chat: Some(request),
        })
        .await
    {
        Ok(stream) => stream.into_inner(),
        Err(status) => {
            out.error = Some(status);
            return out;
        }
    };
    while let Some(event) = stream.next().await {
        match event.map(|e| e.event) {
            Ok(Some(pb::chat_stream_response::Event::Delta(delta))) => out.text.push_str(&delta),
            Ok(Some(pb::chat_stream_response::Event::ToolCall(call))) => out.calls.push(call),
            Ok(Some(pb::chat_stream_response::Event::Done(response))) => out.done = Some(response),
            Ok(None) => {}
            Err(status) => {
                out.error = Some(status);
                break;
            }
        }
    }
    out
}

/// A stream's (text of the deltas, final response, error).
pub async fn drain(
    client: &mut Client,
    request: pb::ChatRequest,
) -> (String, Option<pb::ChatResponse>, Option<tonic::Status>) {
    let s = streamed(client, request).await;
    (s.text, s.done, s.error)
}

/// The fields named by an INVALID_ARGUMENT.
pub fn fields(status: &tonic::Status) -> Vec<String> {
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    status
        .get_error_details()
        .bad_request()
        .expect("BadRequest")
        .field_violations
        .iter()
        .map(|v| v.field.clone())
        .collect()
}
