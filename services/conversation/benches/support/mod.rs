//! What the conversation benches share: latency histograms in microseconds, and a turn's
//! model calls made straight to the gateway (the baseline of the engine's overhead).

use std::time::{Duration, Instant};

use boardroom_proto::llm::v1 as llm;
use boardroom_proto::llm::v1::llm_gateway_service_client::LlmGatewayServiceClient;
use futures::StreamExt;
use hdrhistogram::Histogram;

/// 1 µs to 10 min, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram")
}

/// The quantile `q` of `h`, in milliseconds.
pub fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

/// The benches' runtime: two workers, like the machine's two cores.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// The model calls of one turn, straight to the gateway: `rounds` rounds of every advisor's
/// stream at once, one after the other, then the moderator's.
#[allow(dead_code)] // not every bench measures overhead
pub async fn direct_turn(
    gateway: &LlmGatewayServiceClient<tonic::transport::Channel>,
    advisors: usize,
    rounds: usize,
    text: &str,
) -> Duration {
    let chat = |prompt: String| llm::ChatStreamRequest {
        chat: Some(llm::ChatRequest {
            model: "mock".into(),
            messages: vec![
                llm::Message {
                    role: llm::Role::System as i32,
                    content: "You are an advisor on this board. Answer from your role.".into(),
                    ..llm::Message::default()
                },
                llm::Message {
                    role: llm::Role::User as i32,
                    content: prompt,
                    ..llm::Message::default()
                },
            ],
            temperature: Some(0.7),
            max_tokens: Some(512),
            ..llm::ChatRequest::default()
        }),
    };
    let drain = |request: llm::ChatStreamRequest| {
        let mut client = gateway.clone();
        async move {
            let mut stream = client
                .chat_stream(request)
                .await
                .expect("stream")
                .into_inner();
            while let Some(event) = stream.next().await {
                event.expect("event");
            }
        }
    };
    let started = Instant::now();
    for round in 0..rounds {
        futures::future::join_all(
            (0..advisors).map(|i| drain(chat(format!("{text} #{i} round {round}")))),
        )
        .await;
    }
    drain(chat(format!("synthesise: {text}"))).await;
    started.elapsed()
}
