//! Turn control across two conversation instances (one database, one Redis), each figure
//! against the same thing done on the instance that runs the turn, in the same run.
//!
//! `cargo bench -p boardroom-conversation --bench replicas`; `REPLICAS_PART` picks `cancel` or
//! `join`.
//!
//! - cancel: CancelTurn through the other replica (Redis pub/sub) until the turn's upstream
//!   call is gone (seen at a fake OpenAI-compatible upstream); baseline: CancelTurn on the
//!   instance running the turn. 100 turns each, p50/p99.
//! - join: 50 turns running at once (mock model: 300 ms to the first token, 40 tokens/s); each
//!   is joined mid-turn from the other replica (the Redis Stream) and from its own (memory):
//!   time to the first replayed event, and the lag of each later (live) event behind the
//!   turn's own stream, p50/p99. `REPLICAS_IDLE_WRITE_MS` sets the running instance's
//!   `conversation.turn_log_idle_write_ms` (0: every write at the short window).

// A benchmark owns the tasks it spawns: they end with its runtime.
#![allow(clippy::disallowed_methods)]

#[path = "support/mod.rs"]
mod common;
#[allow(dead_code)]
#[path = "../tests/api/helpers.rs"]
mod helpers;

use std::sync::Arc;
use std::time::{Duration, Instant};

use boardroom_llm_gateway::settings::{MockConfig, ProviderSettings};
use boardroom_proto::conversation::v1 as pb;
use boardroom_proto::conversation::v1::run_turn_response::Event;
use boardroom_testkit::{Behavior, FakeOpenAi};
use common::{histogram, ms};
use futures::StreamExt;
use helpers::*;

/// Starts a turn that hangs at the upstream; its id and stream once the call is in flight.
async fn hanging(
    client: &Client,
    slow: &FakeOpenAi,
    thread: &str,
) -> (String, tonic::Streaming<pb::RunTurnResponse>) {
    let started = started_turn(client, thread, "").await;
    while slow.in_flight() == 0 {
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    started
}

async fn cancelling() {
    let slow = FakeOpenAi::start().await;
    slow.script(std::iter::repeat_n(Behavior::Hang, 1_000));
    let suite = suite(|c| upstream_alias(c, "slow", &slow.base_url())).await;
    let other = suite.replica(|_| {}).await;
    let thread = suite.thread_with(&[("cto", "slow")]).await;
    println!("\n## CancelTurn until the upstream call is gone (100 turns each)\n");
    println!("| cancelled through | p50 ms | p99 ms | max ms |");
    println!("|---|---|---|---|");
    let mut p99s = Vec::new();
    for (name, via) in [
        ("the instance running the turn (baseline)", &suite.client),
        ("the other replica (Redis pub/sub)", &other.client),
    ] {
        let mut h = histogram();
        for _ in 0..100 {
            let (turn_id, mut stream) = hanging(&suite.client, &slow, &thread).await;
            let asked = Instant::now();
            assert!(cancel(via, &thread, &turn_id).await);
            while slow.in_flight() > 0 {
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
            h.record(asked.elapsed().as_micros() as u64)
                .expect("record");
            while let Some(event) = stream.next().await {
                event.expect("event");
            }
            // The lease is given back before TurnFailed is sent: the next turn may start.
        }
        println!(
            "| {name} | {:.2} | {:.2} | {:.2} |",
            ms(&h, 0.5),
            ms(&h, 0.99),
            h.max() as f64 / 1000.0
        );
        p99s.push(ms(&h, 0.99));
    }
    println!(
        "\nother replica / same instance, p99: {:.2}×",
        p99s[1] / p99s[0]
    );
}

/// Per event index, when it arrived.
type Arrivals = Vec<(u64, Instant)>;

async fn follow(mut stream: tonic::Streaming<pb::JoinTurnResponse>) -> Arrivals {
    let mut seen = Vec::new();
    while let Some(item) = stream.next().await {
        let event = item.expect("event").event.expect("an event");
        seen.push((event.event_index, Instant::now()));
    }
    seen
}

async fn joining() {
    let suite = suite(|c| {
        c.llm.deployments.insert(
            "mock".into(),
            ProviderSettings::Mock(MockConfig {
                ttft_ms: 300,
                tokens_per_second: 40,
                output_tokens: 60,
                ..MockConfig::default()
            })
            .into(),
        );
        c.llm.stream_flush_ms = 0;
        // REPLICAS_IDLE_WRITE_MS=0: the turn log written at the short window from the start
        // (as before a follower had to ask for it).
        if let Some(ms) = std::env::var("REPLICAS_IDLE_WRITE_MS")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            c.conversation.turn_log_idle_write_ms = ms;
        }
    })
    .await;
    let other = suite.replica(|_| {}).await;
    let suite = Arc::new(suite);
    let other = Arc::new(other);
    println!("\n## JoinTurn mid-turn, 50 turns running at once\n");
    println!(
        "| joined on | first replayed event p50 / p99 ms | first live event p50 / p99 ms | live lag p50 / p99 ms | events |"
    );
    println!("|---|---|---|---|---|");
    let mut lags = Vec::new();
    for remote in [false, true] {
        let mut threads = Vec::new();
        for _ in 0..50 {
            threads.push(suite.thread(1).await);
        }
        let runs = threads.into_iter().map(|thread| {
            let (suite, other) = (suite.clone(), other.clone());
            tokio::spawn(async move {
                let mut stream = suite
                    .client
                    .clone()
                    .run_turn(pb::RunTurnRequest {
                        on_disconnect: pb::DisconnectPolicy::Continue as i32,
                        ..turn(&thread, "Where do we grow next year?", "")
                    })
                    .await
                    .expect("RunTurn")
                    .into_inner();
                let mut own: Arrivals = Vec::new();
                let mut turn_id = String::new();
                let mut joiner = None;
                while let Some(item) = stream.next().await {
                    let item = item.expect("event");
                    own.push((item.event_index, Instant::now()));
                    if let Some(Event::TurnStarted(s)) = &item.event {
                        turn_id = s.turn_id.clone();
                    }
                    // Mid-turn: after a few deltas.
                    if joiner.is_none() && item.event_index == 6 {
                        let client = if remote {
                            other.client.clone()
                        } else {
                            suite.client.clone()
                        };
                        let (thread, turn_id) = (thread.clone(), turn_id.clone());
                        joiner = Some(tokio::spawn(async move {
                            let asked = Instant::now();
                            let stream = client
                                .clone()
                                .join_turn(pb::JoinTurnRequest {
                                    thread_id: thread,
                                    turn_id,
                                    after_event: 0,
                                })
                                .await
                                .expect("JoinTurn")
                                .into_inner();
                            (asked, follow(stream).await)
                        }));
                    }
                }
                let (asked, joined) = joiner.expect("joined").await.expect("joined");
                (own, asked, joined)
            })
        });
        let (mut first, mut first_live, mut lag) = (histogram(), histogram(), histogram());
        let mut events = 0;
        for run in futures::future::join_all(runs).await {
            let (own, asked, joined) = run.expect("ran");
            events += joined.len();
            assert_eq!(joined.len(), own.len(), "the joiner saw every event");
            first
                .record((joined[0].1 - asked).as_micros() as u64)
                .expect("record");
            let mut live_seen = false;
            for (index, at) in &joined {
                let Some((_, mine)) = own.iter().find(|(i, _)| i == index) else {
                    continue;
                };
                // Live: the turn emitted it after the join was asked for.
                if *mine > asked {
                    lag.record(at.saturating_duration_since(*mine).as_micros().max(1) as u64)
                        .expect("record");
                    if !live_seen {
                        live_seen = true;
                        first_live
                            .record((*at - asked).as_micros() as u64)
                            .expect("record");
                    }
                }
            }
        }
        let name = if remote {
            "the other replica (Redis Stream)"
        } else {
            "the instance running the turn (baseline)"
        };
        println!(
            "| {name} | {:.2} / {:.2} | {:.2} / {:.2} | {:.2} / {:.2} | {events} |",
            ms(&first, 0.5),
            ms(&first, 0.99),
            ms(&first_live, 0.5),
            ms(&first_live, 0.99),
            ms(&lag, 0.5),
            ms(&lag, 0.99)
        );
        lags.push(ms(&lag, 0.99));
    }
    println!(
        "\nother replica / same instance, live lag p99: {:.2}×",
        lags[1] / lags[0].max(0.001)
    );
}

fn main() {
    let part = std::env::var("REPLICAS_PART").unwrap_or_default();
    common::runtime().block_on(async {
        if part.is_empty() || part == "cancel" {
            cancelling().await;
        }
        if part.is_empty() || part == "join" {
            joining().await;
        }
    });
}
