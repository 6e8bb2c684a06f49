//! Deliberation modes against PANEL, in the same run. The suite runs in process as in the API
//! tests (session service, gateway on its mock provider, conversation service; PostgreSQL and
//! Redis real). Five advisors.
//!
//! `cargo bench -p boardroom-conversation --bench deliberation` runs both parts;
//! `DELIBERATION_PART` picks `latency` or `overhead`.
//!
//! - latency: turn latency by mode at 200 ms to the first token (turns of the three modes
//!   interleaved, so that they share the machine's noise); baseline: PANEL. Rounds run in
//!   sequence and advisors within a round in parallel, so REVIEW should take about 3/2 of
//!   PANEL (three model rounds against two) and DEBATE with 2 rounds 4/2.
//! - overhead: at 0 ms model latency, each mode's RunTurn against the same number of model
//!   rounds made straight to the gateway; engine overhead per round = (turn − direct) / rounds.

// A benchmark owns the tasks it spawns: they end with its runtime.
#![allow(clippy::disallowed_methods)]

#[path = "support/mod.rs"]
mod common;
#[allow(dead_code)]
#[path = "../tests/api/helpers.rs"]
mod helpers;

use std::time::{Duration, Instant};

use boardroom_proto::llm::v1::llm_gateway_service_client::LlmGatewayServiceClient;
use boardroom_proto::session::v1 as spb;
use common::{direct_turn, histogram, ms};
use helpers::*;

const ADVISORS: usize = 5;

/// The modes measured: (name, boardroom mode, DEBATE rounds, model rounds incl. the moderator).
const MODES: [(&str, spb::DeliberationMode, u32, usize); 3] = [
    ("PANEL", spb::DeliberationMode::Panel, 0, 2),
    ("REVIEW", spb::DeliberationMode::Review, 0, 3),
    ("DEBATE, 2 rounds", spb::DeliberationMode::Debate, 2, 4),
];

async fn threads(suite: &Suite) -> Vec<String> {
    let names: Vec<String> = (0..ADVISORS).map(|i| format!("advisor{i}")).collect();
    let advisors: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "mock")).collect();
    let mut threads = Vec::new();
    for (_, mode, rounds, _) in MODES {
        threads.push(suite.thread_deliberating(&advisors, mode, rounds).await);
    }
    threads
}

async fn timed_turn(suite: &Suite, thread: &str, text: &str) -> Duration {
    let started = Instant::now();
    complete_turn(&suite.client, thread, text).await;
    started.elapsed()
}

async fn latency(turns: usize) {
    let suite = suite(|c| mock_latency(c, 200)).await;
    let threads = threads(&suite).await;
    for thread in &threads {
        timed_turn(&suite, thread, "warm-up").await;
    }
    let mut h: Vec<_> = MODES.iter().map(|_| histogram()).collect();
    for i in 0..turns {
        for (k, thread) in threads.iter().enumerate() {
            let took =
                timed_turn(&suite, thread, &format!("question {i}: where do we grow?")).await;
            h[k].record(took.as_micros() as u64).expect("record");
        }
    }
    println!(
        "\n## Turn latency by mode, {ADVISORS} advisors (model: 200 ms to first token), {turns} turns each\n"
    );
    println!("| mode | model rounds | p50 ms | p99 ms | vs PANEL (p50) | goal |");
    println!("|---|---|---|---|---|---|");
    let panel = ms(&h[0], 0.5);
    for (k, (name, _, _, rounds)) in MODES.iter().enumerate() {
        let goal = match k {
            1 => "≤ 2.1×",
            2 => "≤ 3.1×",
            _ => "baseline",
        };
        println!(
            "| {name} | {rounds} | {:.1} | {:.1} | {:.2}× | {goal} |",
            ms(&h[k], 0.5),
            ms(&h[k], 0.99),
            ms(&h[k], 0.5) / panel
        );
    }
}

async fn overhead(turns: usize) {
    let suite = suite(|c| mock_latency(c, 0)).await;
    let gateway =
        LlmGatewayServiceClient::new(boardroom_testkit::channel(suite.gateway_addr).await);
    let threads = threads(&suite).await;
    for i in 0..10 {
        for (k, thread) in threads.iter().enumerate() {
            timed_turn(&suite, thread, &format!("warm-up {i}")).await;
            direct_turn(&gateway, ADVISORS, MODES[k].3 - 1, &format!("warm-up {i}")).await;
        }
    }
    let mut runs: Vec<_> = MODES.iter().map(|_| histogram()).collect();
    let mut direct: Vec<_> = MODES.iter().map(|_| histogram()).collect();
    for i in 0..turns {
        for (k, thread) in threads.iter().enumerate() {
            let text = format!("question {i}: what is the risk?");
            let t = timed_turn(&suite, thread, &text).await;
            let d = direct_turn(&gateway, ADVISORS, MODES[k].3 - 1, &text).await;
            runs[k].record(t.as_micros() as u64).expect("record");
            direct[k].record(d.as_micros() as u64).expect("record");
        }
    }
    println!(
        "\n## Engine overhead per round (model: 0 ms), {ADVISORS} advisors, {turns} turns each\n"
    );
    println!(
        "| mode | rounds | RunTurn p50 / p99 ms | direct calls p50 / p99 ms | overhead per round p50 / p99 ms | the service's own (mean per round) ms |"
    );
    println!("|---|---|---|---|---|---|");
    let text = boardroom_testkit::scrape_metrics(suite.admin).await;
    for (k, (name, _, _, rounds)) in MODES.iter().enumerate() {
        let label = ["panel", "review", "debate"][k];
        let own = |what: &str| {
            boardroom_testkit::metric_value(
                &text,
                &[&format!(
                    "conversation_round_overhead_seconds_{what}{{mode=\"{label}\"}}"
                )],
            )
        };
        let per = |q: f64| (ms(&runs[k], q) - ms(&direct[k], q)) / *rounds as f64;
        println!(
            "| {name} | {rounds} | {:.2} / {:.2} | {:.2} / {:.2} | {:.2} / {:.2} | {:.2} |",
            ms(&runs[k], 0.5),
            ms(&runs[k], 0.99),
            ms(&direct[k], 0.5),
            ms(&direct[k], 0.99),
            per(0.5),
            per(0.99),
            own("sum") / own("count").max(1.0) * 1000.0
        );
    }
}

fn main() {
    let part = std::env::var("DELIBERATION_PART").unwrap_or_default();
    let turns: usize = std::env::var("DELIBERATION_TURNS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(20);
    common::runtime().block_on(async {
        if part.is_empty() || part == "latency" {
            latency(turns).await;
        }
        if part.is_empty() || part == "overhead" {
            overhead(turns * 5).await;
        }
    });
}
