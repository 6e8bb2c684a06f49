//! The turn workflow's costs, each against a baseline measured in the same run. The suite runs
//! in process as in the API tests (session service, gateway on its mock provider, conversation
//! service; PostgreSQL and Redis real).
//!
//! `cargo bench -p boardroom-conversation --bench turns` runs every part; `TURNS_PART` picks
//! one of `parallel`, `overhead`, `length`.
//!
//! - parallel: turn latency with 1, 3 and 5 advisors at a fixed 200 ms model latency (time to
//!   first token); baseline: the 1-advisor turn, and the sum a sequential engine would take.
//! - overhead: turn latency at 0 ms model latency against the same model calls made straight
//!   to the gateway (advisors concurrently, then the moderator), per turn; overhead = turn −
//!   direct, at p50 and p99.
//! - length: GetState and RunTurn latency, and stored bytes per turn, at thread lengths 10, 100
//!   and 1000 turns.

// A benchmark owns the tasks it spawns: they end with its runtime.
#![allow(clippy::disallowed_methods)]

#[path = "support/mod.rs"]
mod common;
#[allow(dead_code)]
#[path = "../tests/api/helpers.rs"]
mod helpers;

use std::time::{Duration, Instant};

use boardroom_proto::conversation::v1 as pb;
use boardroom_proto::llm::v1::llm_gateway_service_client::LlmGatewayServiceClient;
use common::{direct_turn, histogram, ms};
use helpers::*;
use sea_orm::{ConnectionTrait, Statement};

async fn timed_turn(suite: &Suite, thread: &str, text: &str) -> Duration {
    let started = Instant::now();
    complete_turn(&suite.client, thread, text).await;
    started.elapsed()
}

async fn parallel() {
    let suite = suite(|c| mock_latency(c, 200)).await;
    println!("\n## Turn latency by panel size (model: 200 ms to first token)\n");
    println!(
        "| advisors | p50 ms | p99 ms | vs 1 advisor (p50) | a sequential engine would take |"
    );
    println!("|---|---|---|---|---|");
    let mut one = 0.0;
    for n in [1usize, 3, 5] {
        let thread = suite.thread(n).await;
        timed_turn(&suite, &thread, "warm-up").await;
        let mut h = histogram();
        for i in 0..15 {
            let took =
                timed_turn(&suite, &thread, &format!("question {i}: where do we grow?")).await;
            h.record(took.as_micros() as u64).expect("record");
        }
        let p50 = ms(&h, 0.5);
        if n == 1 {
            one = p50;
        }
        println!(
            "| {n} | {p50:.1} | {:.1} | {:.3}× | ≈ {} ms |",
            ms(&h, 0.99),
            p50 / one,
            (n + 1) * 200
        );
    }
}

async fn overhead() {
    let suite = suite(|c| mock_latency(c, 0)).await;
    let gateway =
        LlmGatewayServiceClient::new(boardroom_testkit::channel(suite.gateway_addr).await);
    println!("\n## Engine overhead per turn (model: 0 ms), 3 advisors, 300 turns\n");
    for advisors in [1usize, 3] {
        let thread = suite.thread(advisors).await;
        for i in 0..20 {
            timed_turn(&suite, &thread, &format!("warm-up {i}")).await;
            direct_turn(&gateway, advisors, 1, &format!("warm-up {i}")).await;
        }
        let (mut turns, mut direct) = (histogram(), histogram());
        for i in 0..300 {
            let text = format!("question {i}: what is the risk?");
            let t = timed_turn(&suite, &thread, &text).await;
            let d = direct_turn(&gateway, advisors, 1, &text).await;
            turns.record(t.as_micros() as u64).expect("record");
            direct.record(d.as_micros() as u64).expect("record");
        }
        println!("advisors: {advisors}");
        println!("| | p50 ms | p99 ms |");
        println!("|---|---|---|");
        println!(
            "| RunTurn (engine + model calls) | {:.2} | {:.2} |",
            ms(&turns, 0.5),
            ms(&turns, 0.99)
        );
        println!(
            "| the same model calls, direct | {:.2} | {:.2} |",
            ms(&direct, 0.5),
            ms(&direct, 0.99)
        );
        println!(
            "| engine overhead | {:.2} | {:.2} |\n",
            ms(&turns, 0.5) - ms(&direct, 0.5),
            ms(&turns, 0.99) - ms(&direct, 0.99)
        );
    }
    // Where a turn's time goes, from the service's own metrics (means).
    let text = boardroom_testkit::scrape_metrics(suite.admin).await;
    println!("| step (mean over the run) | calls | mean ms |");
    println!("|---|---|---|");
    for line in text
        .lines()
        .filter(|l| l.contains("_sum") && !l.starts_with('#'))
    {
        let wanted = ["conversation_", "db_client_operation_duration_seconds"];
        if !wanted.iter().any(|w| line.contains(w)) {
            continue;
        }
        let (sample, sum) = line.rsplit_once(' ').expect("sample");
        let (metric, labels) = sample.split_once('{').unwrap_or((sample, ""));
        let Some(metric) = metric.strip_suffix("_sum") else {
            continue;
        };
        let labels = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}")
        };
        let count = boardroom_testkit::metric_value(&text, &[&format!("{metric}_count{labels}")]);
        let sum: f64 = sum.parse().unwrap_or(0.0);
        if count > 0.0 {
            println!(
                "| {metric}{labels} | {count:.0} | {:.3} |",
                sum / count * 1000.0
            );
        }
    }
}

/// Bytes a thread's rows take in PostgreSQL (row sizes as stored, before page overhead).
async fn stored_bytes(suite: &Suite, thread: &str) -> (i64, i64, i64) {
    let db = sea_orm::Database::connect(suite.config.database.url.expose())
        .await
        .expect("connect");
    let mut sizes = [0i64; 3];
    for (i, table) in ["messages", "checkpoints", "turns"].iter().enumerate() {
        let row = db
            .query_one_raw(Statement::from_string(
                db.get_database_backend(),
                format!(
                    "SELECT COALESCE(SUM(pg_column_size(t.*)), 0)::bigint AS bytes FROM {table} t WHERE thread_id = '{thread}'"
                ),
            ))
            .await
            .expect("size")
            .expect("a row");
        sizes[i] = row.try_get::<i64>("", "bytes").expect("bytes");
    }
    (sizes[0], sizes[1], sizes[2])
}

async fn length() {
    let suite = suite(|c| mock_latency(c, 0)).await;
    println!("\n## Thread length: latency and storage (1 advisor, model 0 ms)\n");
    println!(
        "| turns | GetState p50 / p99 ms | RunTurn p50 / p99 ms | messages B/turn | checkpoints B/turn | turns B/turn | total B/turn |"
    );
    println!("|---|---|---|---|---|---|---|");
    let mut first: Option<(f64, f64)> = None;
    for length in [10usize, 100, 1000] {
        let thread = suite.thread(1).await;
        for i in 0..length {
            complete_turn(&suite.client, &thread, &format!("turn {i}: and then?")).await;
        }
        // Let background summaries settle before measuring.
        eventually(Duration::from_secs(30), || async {
            let s = suite.state(&thread).await.state.expect("state");
            (length < 100 || s.covers_seq - s.summarized_through_seq < 200).then_some(())
        })
        .await;
        let (messages, checkpoints, turns) = stored_bytes(&suite, &thread).await;
        let mut states = histogram();
        let mut client = suite.client.clone();
        for _ in 0..2000 {
            let started = Instant::now();
            client
                .get_state(pb::GetStateRequest {
                    thread_id: thread.clone(),
                })
                .await
                .expect("GetState");
            states
                .record(started.elapsed().as_micros() as u64)
                .expect("record");
        }
        let mut runs = histogram();
        for i in 0..50 {
            let took = timed_turn(&suite, &thread, &format!("measured {i}")).await;
            runs.record(took.as_micros() as u64).expect("record");
        }
        let per_turn = |bytes: i64| bytes as f64 / length as f64;
        println!(
            "| {length} | {:.3} / {:.3} | {:.2} / {:.2} | {:.0} | {:.0} | {:.0} | {:.0} |",
            ms(&states, 0.5),
            ms(&states, 0.99),
            ms(&runs, 0.5),
            ms(&runs, 0.99),
            per_turn(messages),
            per_turn(checkpoints),
            per_turn(turns),
            per_turn(messages + checkpoints + turns)
        );
        let now = (ms(&states, 0.5), ms(&runs, 0.5));
        match first {
            None => first = Some(now),
            Some((s, r)) => println!(
                "|  | ratio to 10 turns: {:.2}× | {:.2}× | | | | |",
                now.0 / s,
                now.1 / r
            ),
        }
    }
}

fn main() {
    let part = std::env::var("TURNS_PART").unwrap_or_default();
    common::runtime().block_on(async {
        if part.is_empty() || part == "parallel" {
            parallel().await;
        }
        if part.is_empty() || part == "overhead" {
            overhead().await;
        }
        if part.is_empty() || part == "length" {
            length().await;
        }
    });
}
