//! The gateway's added latency: the same open-loop load (unique prompts, so no cache hits and
//! no coalescing) sent straight to a fake OpenAI-compatible upstream and through the gateway,
//! in one run; overhead = through − direct at p50, p99 and p99.9. Latency counts from each
//! request's scheduled time, so queueing is charged (no coordinated omission). Upstream,
//! gateway and load generator each run on their own single-threaded tokio runtime.
//!
//! `cargo bench -p boardroom-llm-gateway --bench overhead` (env: `OVERHEAD_SECONDS`, default 8;
//! `OVERHEAD_UPSTREAM`, default 127.0.0.1:18090, the fake's address; `OVERHEAD_LITELLM`, the
//! `/v1` URL of a LiteLLM proxy routed to that fake as model `fake`, with its key in
//! `LITELLM_MASTER_KEY`, to compare at `OVERHEAD_LITELLM_RPS`, default 20, a rate it sustains; `OVERHEAD_ONLY_LITELLM` skips the rest).

// A benchmark owns the tasks it spawns: they end with its runtime.
// The front door's handler futures are deep: their layout needs more than the default 128.
#![recursion_limit = "256"]
#![allow(clippy::disallowed_methods)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use boardroom_llm_gateway::settings::{OpenAiConfig, ProviderSettings};
use boardroom_proto::llm::v1 as pb;
use boardroom_proto::llm::v1::llm_gateway_service_client::LlmGatewayServiceClient;
use boardroom_runtime::config::ModelAlias;
use boardroom_testkit::{FakeOpenAi, service_test_config};
use support::{Call, Summary, gateway_clients, open_loop, runtime};

fn direct(client: reqwest::Client, url: String, model: &'static str, key: Option<String>) -> Call {
    Arc::new(move |i| {
        let (client, url, key) = (client.clone(), url.clone(), key.clone());
        Box::pin(async move {
            let body = serde_json::json!({
                "model": model,
                "messages": [{"role": "user", "content": format!("unique prompt {i}")}],
                "temperature": 0.7,
                "stream": false,
            });
            let mut request = client.post(&url).json(&body);
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

fn through(clients: Vec<LlmGatewayServiceClient<tonic::transport::Channel>>) -> Call {
    Arc::new(move |i| {
        let mut client = clients[(i as usize) % clients.len()].clone();
        Box::pin(async move {
            client
                .chat(pb::ChatRequest {
                    model: "gpt".into(),
                    messages: vec![pb::Message {
                        role: pb::Role::User as i32,
                        content: format!("unique prompt {i}"),
                        ..pb::Message::default()
                    }],
                    temperature: Some(0.7),
                    ..pb::ChatRequest::default()
                })
                .await
                .is_ok()
        })
    })
}

/// A streamed request straight to the upstream; done at the first content event.
fn first_token_direct(client: reqwest::Client, url: String) -> Call {
    Arc::new(move |i| {
        let (client, url) = (client.clone(), url.clone());
        Box::pin(async move {
            use futures::StreamExt;
            let body = serde_json::json!({
                "model": "fake",
                "messages": [{"role": "user", "content": format!("unique prompt {i}")}],
                "temperature": 0.7,
                "stream": true,
            });
            let Ok(response) = client.post(&url).json(&body).send().await else {
                return false;
            };
            let mut body = response.bytes_stream();
            let mut seen = Vec::new();
            while let Some(Ok(bytes)) = body.next().await {
                seen.extend_from_slice(&bytes);
                if seen.windows(9).any(|w| w == b"\"content\"")
                    && seen.windows(5).any(|w| w == b"echo:")
                {
                    return true;
                }
            }
            false
        })
    })
}

/// A ChatStream through the gateway; done at the first delta.
fn first_token_through(clients: Vec<LlmGatewayServiceClient<tonic::transport::Channel>>) -> Call {
    Arc::new(move |i| {
        let mut client = clients[(i as usize) % clients.len()].clone();
        Box::pin(async move {
            let request = pb::ChatStreamRequest {
                chat: Some(pb::ChatRequest {
                    model: "gpt".into(),
                    messages: vec![pb::Message {
                        role: pb::Role::User as i32,
                        content: format!("unique prompt {i}"),
                        ..pb::Message::default()
                    }],
                    temperature: Some(0.7),
                    ..pb::ChatRequest::default()
                }),
            };
            let Ok(stream) = client.chat_stream(request).await else {
                return false;
            };
            let mut stream = stream.into_inner();
            matches!(
                stream.message().await,
                Ok(Some(pb::ChatStreamResponse {
                    event: Some(pb::chat_stream_response::Event::Delta(_))
                }))
            )
        })
    })
}

fn row(label: &str, d: Summary, g: Summary) {
    println!(
        "| {label} | {:.2} / {:.2} / {:.2} | {:.2} / {:.2} / {:.2} | {:.2} / {:.2} / {:.2} | {} / {} |",
        d.p50,
        d.p99,
        d.p999,
        g.p50,
        g.p99,
        g.p999,
        g.p50 - d.p50,
        g.p99 - d.p99,
        g.p999 - d.p999,
        d.errors,
        g.errors
    );
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let seconds: u64 = std::env::var("OVERHEAD_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    let upstream_addr =
        std::env::var("OVERHEAD_UPSTREAM").unwrap_or_else(|_| "127.0.0.1:18090".into());
    let (upstream_rt, gateway_rt, client_rt) = (runtime(), runtime(), runtime());
    let fake = upstream_rt.block_on(FakeOpenAi::start_on(&upstream_addr));

    let mut config = service_test_config();
    config.telemetry.log_level = "warn".into();
    config.server.max_pending = 100_000;
    config.llm.models.insert(
        "gpt".into(),
        ModelAlias {
            deployments: vec!["fake".into()],
            fallbacks: Vec::new(),
            semantic_cache: false,
        },
    );
    config.llm.deployments.insert(
        "fake".into(),
        ProviderSettings::Openai(OpenAiConfig {
            model: "fake".into(),
            base_url: fake.base_url(),
            max_idle_connections: 512,
            ..OpenAiConfig::default()
        })
        .into(),
    );
    let stop = tokio_util::sync::CancellationToken::new();
    // An external gateway (its own process, pinned apart: bench/llm-overhead.sh), else one
    // in this process on its own runtime.
    let addr: std::net::SocketAddr = match std::env::var("OVERHEAD_GATEWAY") {
        Ok(addr) => addr.parse().expect("OVERHEAD_GATEWAY is host:port"),
        Err(_) => {
            let app = gateway_rt
                .block_on(boardroom_llm_gateway::Application::build(&config))
                .expect("gateway");
            let addr = app.local_addr().expect("bound");
            gateway_rt.spawn(app.run_until_stopped(stop.clone()));
            addr
        }
    };

    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(512)
        .tcp_nodelay(true)
        .build()
        .expect("client");
    let url = format!("{}/chat/completions", fake.base_url());
    let grpc = gateway_clients(&client_rt, addr);
    let run =
        |rps: u32, seconds: u64, call: Call| client_rt.block_on(open_loop(rps, seconds, call));
    let straight = || direct(http.clone(), url.clone(), "fake", None);

    let only_litellm = std::env::var("OVERHEAD_ONLY_LITELLM").is_ok();
    println!("{seconds} s per run (the first second left out), unique prompts, open loop.\n");
    println!(
        "| upstream latency, rate | direct p50 / p99 / p99.9 ms | through the gateway | overhead | errors (direct / gateway) |"
    );
    println!("|---|---|---|---|---|");
    for latency in [0u64, 50].into_iter().filter(|_| !only_litellm) {
        fake.set_latency(Duration::from_millis(latency));
        for rps in [500u32, 2000] {
            let d = run(rps, seconds, straight());
            let g = run(rps, seconds, through(grpc.clone()));
            row(&format!("{latency} ms, {rps}/s"), d, g);
        }
    }

    if !only_litellm {
        fake.set_latency(Duration::from_millis(50));
        println!("\nStreaming, time to the first token (upstream 50 ms, 500/s):\n");
        println!("| path | TTFT p50 / p99 / p99.9 ms | added p50 / p99 / p99.9 | errors |");
        println!("|---|---|---|---|");
        let d = run(500, seconds, first_token_direct(http.clone(), url.clone()));
        let g = run(500, seconds, first_token_through(grpc.clone()));
        for (name, s) in [("direct (SSE)", d), ("through the gateway (ChatStream)", g)] {
            println!(
                "| {name} | {:.2} / {:.2} / {:.2} | {:.2} / {:.2} / {:.2} | {} |",
                s.p50,
                s.p99,
                s.p999,
                s.p50 - d.p50,
                s.p99 - d.p99,
                s.p999 - d.p999,
                s.errors
            );
        }
    }

    fake.set_latency(Duration::ZERO);
    println!("\nHigher rates, upstream 0 ms (stops at the first with p99 overhead >= 5 ms):\n");
    let mut best = None;
    for rps in [3000u32, 4000, 5000, 6000, 8000]
        .into_iter()
        .filter(|_| !only_litellm)
    {
        let d = run(rps, seconds.min(5), straight());
        let g = run(rps, seconds.min(5), through(grpc.clone()));
        row(&format!("0 ms, {rps}/s"), d, g);
        if g.p99 - d.p99 < 5.0 && g.errors == 0 {
            best = Some(rps);
        } else {
            break;
        }
    }
    println!(
        "\nHighest rate with p99 overhead < 5 ms: {}",
        best.map_or("below 3000/s".to_owned(), |r| format!("{r}/s"))
    );

    if let Ok(litellm) = std::env::var("OVERHEAD_LITELLM") {
        let key = std::env::var("LITELLM_MASTER_KEY").ok();
        let rps: u32 = std::env::var("OVERHEAD_LITELLM_RPS")
            .ok()
            .and_then(|r| r.parse().ok())
            .unwrap_or(20);
        fake.set_latency(Duration::from_millis(50));
        println!("\nAgainst the LiteLLM proxy (upstream 50 ms, {rps}/s):\n");
        println!("| path | p50 / p99 / p99.9 ms | overhead p50 / p99 / p99.9 | errors |");
        println!("|---|---|---|---|");
        let d = run(rps, seconds, straight());
        let l = run(
            rps,
            seconds,
            direct(
                http.clone(),
                format!("{litellm}/chat/completions"),
                "fake",
                key,
            ),
        );
        let g = run(rps, seconds, through(grpc.clone()));
        for (name, s) in [
            ("direct", d),
            ("LiteLLM proxy", l),
            ("Boardroom gateway", g),
        ] {
            println!(
                "| {name} | {:.2} / {:.2} / {:.2} | {:.2} / {:.2} / {:.2} | {} |",
                s.p50,
                s.p99,
                s.p999,
                s.p50 - d.p50,
                s.p99 - d.p99,
                s.p999 - d.p999,
                s.errors
            );
        }
        // Overheads under 0.05 ms are below what one run resolves: floored there.
        let ratio = |l: f64, g: f64| l / g.max(0.05);
        println!(
            "\nLiteLLM's overhead ÷ the gateway's: p50 {:.0}×, p99 {:.0}× (gateway overheads floored at 0.05 ms)",
            ratio(l.p50 - d.p50, g.p50 - d.p50),
            ratio(l.p99 - d.p99, g.p99 - d.p99)
        );
    }
    stop.cancel();
}
