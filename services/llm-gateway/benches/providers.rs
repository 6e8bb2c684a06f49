//! The provider adapters' cost and the OpenAI-compatible front door against LiteLLM, in one
//! run each (ratios against a baseline measured in the same run).
//!
//! 1. Per adapter (OpenAI-compatible, Azure OpenAI, Anthropic, Gemini), each in front of a fake
//!    of its wire format answering after 50 ms: the same open-loop load (unique prompts, so no
//!    cache hits and no coalescing) sent straight to the fake in its own protocol and through
//!    the gateway's gRPC API, unary and streamed (time to the first token); overhead = through
//!    − direct at p50 and p99. Fakes, gateway and load each on their own single-threaded
//!    runtime.
//! 2. With `PROVIDERS_FRONT_DOOR` (the gateway's `/v1` URL, a separate process) and/or
//!    `PROVIDERS_LITELLM` (LiteLLM's `/v1`, key in `LITELLM_MASTER_KEY`), both routed to model
//!    `fake` on the OpenAI fake this bench serves on `PROVIDERS_UPSTREAM` (default
//!    127.0.0.1:18090) at 50 ms: the same HTTP client, closed loop at 8 and 64 connections,
//!    direct and then each proxy: p50, p99, RPS. `bench/llm-providers.sh` starts it all and
//!    measures each proxy while the other is idle.
//!
//! Env: `PROVIDERS_SECONDS` (default 8), `PROVIDERS_RPS` (default 200).

// The front door's handler futures are deep: their layout needs more than the default 128.
#![recursion_limit = "256"]
// A benchmark owns the tasks it spawns: they end with its runtime.
#![allow(clippy::disallowed_methods)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use boardroom_llm_gateway::settings::{
    AnthropicConfig, AzureConfig, GeminiConfig, OpenAiConfig, ProviderSettings,
};
use boardroom_proto::llm::v1 as pb;
use boardroom_proto::llm::v1::llm_gateway_service_client::LlmGatewayServiceClient;
use boardroom_runtime::config::{ModelAlias, Secret};
use boardroom_testkit::{FakeProvider, Protocol, service_test_config};
use futures::StreamExt;
use serde_json::json;
use support::{Call, Summary, closed_loop, gateway_clients, open_loop, runtime};

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One adapter: how a direct call to its fake is made.
struct Adapter {
    alias: &'static str,
    protocol: Protocol,
}

/// A direct call in the fake's own protocol; streamed ones are done at the first token.
fn direct(client: reqwest::Client, fake_url: String, adapter: &Adapter, stream: bool) -> Call {
    let (alias, protocol) = (adapter.alias, adapter.protocol);
    Arc::new(move |i| {
        let (client, base) = (client.clone(), fake_url.clone());
        Box::pin(async move {
            let prompt = format!("unique prompt {i}");
            let request = match (protocol, alias) {
                (Protocol::OpenAi, "azure") => client
                    .post(format!(
                        "{base}/openai/deployments/d/chat/completions?api-version=2024-10-21"
                    ))
                    .header("api-key", "k")
                    .json(&json!({"messages": [{"role": "user", "content": prompt}], "temperature": 0.7, "stream": stream, "stream_options": {"include_usage": true}})),
                (Protocol::OpenAi, _) => client
                    .post(format!("{base}/v1/chat/completions"))
                    .json(&json!({"model": "fake", "messages": [{"role": "user", "content": prompt}], "temperature": 0.7, "stream": stream, "stream_options": {"include_usage": true}})),
                (Protocol::Anthropic, _) => client
                    .post(format!("{base}/v1/messages"))
                    .header("x-api-key", "k")
                    .header("anthropic-version", "2023-06-01")
                    .json(&json!({"model": "claude-fake", "max_tokens": 512, "messages": [{"role": "user", "content": prompt}], "temperature": 0.7, "stream": stream})),
                (Protocol::Gemini, _) => {
                    let action = if stream {
                        "streamGenerateContent?alt=sse"
                    } else {
                        "generateContent"
                    };
                    client
                        .post(format!("{base}/v1beta/models/gemini-fake:{action}"))
                        .header("x-goog-api-key", "k")
                        .json(&json!({"contents": [{"role": "user", "parts": [{"text": prompt}]}], "generationConfig": {"temperature": 0.7}}))
                }
            };
            let Ok(response) = request.send().await else {
                return false;
            };
            if !response.status().is_success() {
                return false;
            }
            if !stream {
                return response.bytes().await.is_ok();
            }
            // The first token is the answer's first word.
            let mut body = response.bytes_stream();
            let mut seen = Vec::new();
            while let Some(Ok(bytes)) = body.next().await {
                seen.extend_from_slice(&bytes);
                if seen.windows(5).any(|w| w == b"echo:") {
                    return true;
                }
            }
            false
        })
    })
}

fn request(alias: &str, i: u64) -> pb::ChatRequest {
    pb::ChatRequest {
        model: alias.into(),
        messages: vec![pb::Message {
            role: pb::Role::User as i32,
            content: format!("unique prompt {i}"),
            ..pb::Message::default()
        }],
        temperature: Some(0.7),
        ..pb::ChatRequest::default()
    }
}

/// Through the gateway's gRPC API; streamed ones are done at the first delta.
fn through(
    clients: Vec<LlmGatewayServiceClient<tonic::transport::Channel>>,
    alias: &'static str,
    stream: bool,
) -> Call {
    Arc::new(move |i| {
        let mut client = clients[(i as usize) % clients.len()].clone();
        Box::pin(async move {
            if !stream {
                return client.chat(request(alias, i)).await.is_ok();
            }
            let Ok(events) = client
                .chat_stream(pb::ChatStreamRequest {
                    chat: Some(request(alias, i)),
                })
                .await
            else {
                return false;
            };
            matches!(
                events.into_inner().message().await,
                Ok(Some(pb::ChatStreamResponse {
                    event: Some(pb::chat_stream_response::Event::Delta(_))
                }))
            )
        })
    })
}

/// An OpenAI chat completion at `url`, as any OpenAI client sends it.
fn openai_http(client: reqwest::Client, url: String, key: Option<String>) -> Call {
    Arc::new(move |i| {
        let (client, url, key) = (client.clone(), url.clone(), key.clone());
        Box::pin(async move {
            let mut request = client.post(&url).json(&json!({
                "model": "fake",
                "messages": [{"role": "user", "content": format!("unique prompt {i}")}],
                "temperature": 0.7,
            }));
            if let Some(key) = key {
                request = request.bearer_auth(key);
            }
            match request.send().await {
                Ok(response) if response.status().is_success() => response.bytes().await.is_ok(),
                _ => false,
            }
        })
    })
}

fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(512)
        .tcp_nodelay(true)
        .build()
        .expect("client")
}

fn adapters(
    seconds: u64,
    rps: u32,
    client_rt: &tokio::runtime::Runtime,
    upstream_rt: &tokio::runtime::Runtime,
) {
    let gateway_rt = runtime();
    let adapters = [
        Adapter {
            alias: "openai",
            protocol: Protocol::OpenAi,
        },
        Adapter {
            alias: "azure",
            protocol: Protocol::OpenAi,
        },
        Adapter {
            alias: "anthropic",
            protocol: Protocol::Anthropic,
        },
        Adapter {
            alias: "gemini",
            protocol: Protocol::Gemini,
        },
    ];
    let fakes: Vec<FakeProvider> = adapters
        .iter()
        .map(|a| upstream_rt.block_on(FakeProvider::serve(a.protocol, "127.0.0.1:0")))
        .collect();
    let mut config = service_test_config();
    config.telemetry.log_level = "warn".into();
    config.server.max_pending = 100_000;
    config.llm.openai_api.enabled = false;
    for (adapter, fake) in adapters.iter().zip(&fakes) {
        fake.set_latency(Duration::from_millis(50));
        let key = Secret::new("k");
        let settings = match adapter.alias {
            "openai" => ProviderSettings::Openai(OpenAiConfig {
                model: "fake".into(),
                base_url: fake.base_url(),
                max_idle_connections: 512,
                ..OpenAiConfig::default()
            }),
            "azure" => ProviderSettings::Azure(AzureConfig {
                endpoint: fake.root_url(),
                deployment: "d".into(),
                api_key: key,
                max_idle_connections: 512,
                ..AzureConfig::default()
            }),
            "anthropic" => ProviderSettings::Anthropic(AnthropicConfig {
                model: "claude-fake".into(),
                base_url: fake.base_url(),
                api_key: key,
                max_idle_connections: 512,
                ..AnthropicConfig::default()
            }),
            _ => ProviderSettings::Gemini(GeminiConfig {
                model: "gemini-fake".into(),
                base_url: fake.base_url(),
                api_key: key,
                max_idle_connections: 512,
            }),
        };
        config
            .llm
            .deployments
            .insert(adapter.alias.into(), settings.into());
        config.llm.models.insert(
            adapter.alias.into(),
            ModelAlias {
                deployments: vec![adapter.alias.into()],
                fallbacks: Vec::new(),
                semantic_cache: false,
            },
        );
    }
    let stop = tokio_util::sync::CancellationToken::new();
    let app = gateway_rt
        .block_on(boardroom_llm_gateway::Application::build(&config))
        .expect("gateway");
    let addr = app.local_addr().expect("bound");
    gateway_rt.spawn(app.run_until_stopped(stop.clone()));
    let grpc = gateway_clients(client_rt, addr);
    let http = http_client();
    println!(
        "Per adapter: fake upstream at 50 ms, {rps} calls/s open loop, {seconds} s (first left out).\n"
    );
    println!(
        "| adapter | call | direct p50 / p99 ms | through the gateway p50 / p99 | overhead p50 / p99 | errors (direct / gateway) |"
    );
    println!("|---|---|---|---|---|---|");
    for (adapter, fake) in adapters.iter().zip(&fakes) {
        for stream in [false, true] {
            let d = client_rt.block_on(open_loop(
                rps,
                seconds,
                direct(http.clone(), fake.root_url(), adapter, stream),
            ));
            let g = client_rt.block_on(open_loop(
                rps,
                seconds,
                through(grpc.clone(), adapter.alias, stream),
            ));
            println!(
                "| {} | {} | {:.2} / {:.2} | {:.2} / {:.2} | {:.2} / {:.2} | {} / {} |",
                adapter.alias,
                if stream {
                    "stream, first token"
                } else {
                    "unary"
                },
                d.p50,
                d.p99,
                g.p50,
                g.p99,
                g.p50 - d.p50,
                g.p99 - d.p99,
                d.errors,
                g.errors
            );
        }
    }
    stop.cancel();
}

fn front_doors(
    seconds: u64,
    front_door: Option<&str>,
    client_rt: &tokio::runtime::Runtime,
    upstream_rt: &tokio::runtime::Runtime,
) {
    let upstream: String = env("PROVIDERS_UPSTREAM", "127.0.0.1:18090".to_owned());
    let fake = upstream_rt.block_on(FakeProvider::start_on(&upstream));
    fake.set_latency(Duration::from_millis(50));
    let litellm = std::env::var("PROVIDERS_LITELLM")
        .ok()
        .filter(|url| !url.is_empty());
    let key = std::env::var("LITELLM_MASTER_KEY").ok();
    let http = http_client();
    println!(
        "\nThe same HTTP client, closed loop, OpenAI chat completions (unique prompts) to model `fake` on the fake upstream at 50 ms, {seconds} s each:\n"
    );
    println!("| connections | path | p50 / p99 ms | overhead p50 / p99 ms | RPS | errors |");
    println!("|---|---|---|---|---|---|");
    for connections in [8usize, 64] {
        let mut paths = vec![(
            "direct",
            format!("{}/chat/completions", fake.base_url()),
            None,
        )];
        if let Some(front_door) = front_door {
            paths.push((
                "Boardroom front door",
                format!("{front_door}/chat/completions"),
                None,
            ));
        }
        if let Some(litellm) = &litellm {
            paths.push((
                "LiteLLM proxy",
                format!("{litellm}/chat/completions"),
                key.clone(),
            ));
        }
        let mut direct: Option<Summary> = None;
        let mut overheads = Vec::new();
        for (name, url, key) in paths {
            let s = client_rt.block_on(closed_loop(
                connections,
                seconds,
                openai_http(http.clone(), url, key),
            ));
            let base = *direct.get_or_insert(s);
            println!(
                "| {connections} | {name} | {:.2} / {:.2} | {:.2} / {:.2} | {:.0} | {} |",
                s.p50,
                s.p99,
                s.p50 - base.p50,
                s.p99 - base.p99,
                s.rps,
                s.errors
            );
            overheads.push((name, s.p50 - base.p50, s.p99 - base.p99));
        }
        if let [_, (_, g50, g99), (_, l50, l99)] = overheads[..] {
            // Overheads under 0.05 ms are below what one run resolves: floored there.
            println!(
                "| {connections} | LiteLLM's overhead ÷ the gateway's | p50 {:.0}× / p99 {:.0}× | | | |",
                l50 / g50.max(0.05),
                l99 / g99.max(0.05)
            );
        }
    }
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let seconds: u64 = env("PROVIDERS_SECONDS", 8);
    let rps: u32 = env("PROVIDERS_RPS", 200);
    let (upstream_rt, client_rt) = (runtime(), runtime());
    if std::env::var("PROVIDERS_SKIP_ADAPTERS").is_err() {
        adapters(seconds, rps, &client_rt, &upstream_rt);
    }
    let front_door = std::env::var("PROVIDERS_FRONT_DOOR")
        .ok()
        .filter(|url| !url.is_empty());
    let litellm = std::env::var("PROVIDERS_LITELLM")
        .ok()
        .filter(|url| !url.is_empty());
    if front_door.is_some() || litellm.is_some() {
        front_doors(seconds, front_door.as_deref(), &client_rt, &upstream_rt);
    }
}
