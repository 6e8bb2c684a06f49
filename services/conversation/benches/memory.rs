//! The boardroom memory's cost, at 100, 1,000 and 10,000 facts per (user, boardroom).
//!
//! `cargo bench -p boardroom-conversation --bench memory` runs both parts; `MEMORY_PART` picks
//! `search` or `turn`.
//!
//! - search: what a recall costs once the message is embedded: the in-process search of the
//!   memory's vectors (the cached case, every turn after the first), at 256 dimensions (the
//!   mock's), 384 (all-MiniLM-L6-v2) and 1536 (text-embedding-3-small), p50/p99 over 2,000
//!   searches; and a cache miss, the memory loaded from PostgreSQL (p50/p99 over 50 loads).
//!   Baseline in the same run: the same vectors scanned by a plain scalar dot product with no
//!   top-k kept (what an exhaustive search written the obvious way costs).
//! - turn: through the real servers (PostgreSQL, Redis, the gateway's mock model at 0 ms), a
//!   turn of 3 advisors in a boardroom whose memory holds N facts against the same turn in a
//!   boardroom with none (baseline), interleaved: p50/p99 and the ratio, the service's own
//!   recall and search times (means), the facts recalled and the tokens they add to each
//!   advisor's context (input tokens per advisor call, with minus without).

// A benchmark owns the tasks it spawns: they end with its runtime.
#![allow(clippy::disallowed_methods)]

#[path = "support/mod.rs"]
mod common;
#[allow(dead_code)]
#[path = "../tests/api/helpers.rs"]
mod helpers;

use std::hint::black_box;
use std::time::Instant;

use boardroom_conversation::ConversationStore;
use boardroom_conversation::memory::{Change, FactSet, MemoryKey, unit};
use boardroom_conversation::store::{Source, Written};
use boardroom_llm_gateway::provider::mock::embed_text;
use boardroom_runtime::db::Database;
use common::{histogram, ms};
use helpers::*;
use uuid::Uuid;

const SIZES: [usize; 3] = [100, 1_000, 10_000];
const ADVISORS: usize = 3;

/// Deterministic pseudo-random unit vectors.
fn vectors(n: usize, dims: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut state = seed | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % 2_000) as f32 / 1_000.0 - 1.0
    };
    (0..n)
        .map(|_| unit((0..dims).map(|_| next()).collect()))
        .collect()
}

/// A fact as people state them, distinct for each `i`.
fn fact(i: usize) -> String {
    const TOPICS: [&str; 8] = [
        "runway",
        "churn",
        "headcount",
        "gross margin",
        "pipeline",
        "pricing",
        "burn rate",
        "net revenue retention",
    ];
    const SEGMENTS: [&str; 5] = ["enterprise", "mid-market", "SMB", "EMEA", "APAC"];
    format!(
        "Our {} in {} region {} was {} in quarter {}.",
        TOPICS[i % TOPICS.len()],
        SEGMENTS[(i / TOPICS.len()) % SEGMENTS.len()],
        i / 40,
        i % 97,
        i % 4 + 1
    )
}

fn set_of(vectors: &[Vec<f32>]) -> FactSet {
    let mut set = FactSet::empty(1);
    for (i, v) in vectors.iter().enumerate() {
        set.push(Uuid::now_v7(), fact(i), v.clone());
    }
    set
}

async fn search() {
    println!("\n## Recall search in process (message already embedded)\n");
    println!(
        "| facts | dims | top-5 search p50 / p99 µs | plain scalar scan p50 / p99 µs (baseline) | ratio p50 |"
    );
    println!("|---|---|---|---|---|");
    for dims in [256, 384, 1536] {
        for n in SIZES {
            let set = set_of(&vectors(n, dims, n as u64));
            let flat: Vec<f32> = set.vectors.clone();
            let queries = vectors(64, dims, 7);
            let (mut searched, mut scanned) = (histogram(), histogram());
            for i in 0..2_000 {
                let q = &queries[i % queries.len()];
                let t = Instant::now();
                black_box(set.search(black_box(q), 5, 0.25));
                searched
                    .record(t.elapsed().as_nanos() as u64 / 1_000 + 1)
                    .ok();
                let t = Instant::now();
                let mut best = f32::MIN;
                for chunk in flat.chunks_exact(dims) {
                    let s: f32 = chunk.iter().zip(q).map(|(a, b)| a * b).sum();
                    best = best.max(s);
                }
                black_box(best);
                scanned
                    .record(t.elapsed().as_nanos() as u64 / 1_000 + 1)
                    .ok();
            }
            let us = |h: &hdrhistogram::Histogram<u64>, q: f64| h.value_at_quantile(q);
            println!(
                "| {n} | {dims} | {} / {} | {} / {} | {:.2}× |",
                us(&searched, 0.5),
                us(&searched, 0.99),
                us(&scanned, 0.5),
                us(&scanned, 0.99),
                us(&searched, 0.5) as f64 / us(&scanned, 0.5).max(1) as f64
            );
        }
    }
}

/// Stores `n` facts (mock embeddings) in `key`'s memory.
async fn fill(store: &ConversationStore, key: &MemoryKey, n: usize) {
    let changes: Vec<Change> = (0..n)
        .map(|i| {
            let fact = fact(i);
            Change::Add {
                vector: embed_text(&fact),
                fact,
            }
        })
        .collect();
    let source = Source {
        thread_id: Uuid::now_v7(),
        turn_id: Uuid::now_v7(),
    };
    let written = store
        .apply_memory(key, &FactSet::empty(0), changes, source, n as u64)
        .await
        .expect("stored");
    assert!(matches!(written, Written::Stored(_)), "{written:?}");
}

async fn turn(turns: usize) {
    let suite = suite(|c| {
        mock_latency(c, 0);
        c.conversation.memory.max_facts = 20_000;
        c.conversation.memory.cache_max_bytes = 256 * 1024 * 1024;
    })
    .await;
    let db = Database::connect(&suite.config.database)
        .await
        .expect("database");
    let leases = Database::connect_relaxed(&suite.config.database)
        .await
        .expect("database");
    let store = ConversationStore::new(db, leases, 10);
    let names: Vec<String> = (0..ADVISORS).map(|i| format!("advisor{i}")).collect();
    let advisors: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "mock")).collect();
    println!(
        "\n## A turn with the boardroom memory ({ADVISORS} advisors, model 0 ms), {turns} turns each, interleaved with a boardroom without memory\n"
    );
    println!(
        "| facts | cold load from PostgreSQL p50 / p99 ms | turn p50 / p99 ms | without memory p50 / p99 ms | ratio p50 / p99 | service's recall / search (mean) ms | facts recalled | tokens added per advisor |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for n in SIZES {
        let with_memory = suite.boardroom_in(&advisors, Default::default()).await;
        let without = suite.boardroom_in(&advisors, Default::default()).await;
        let key = MemoryKey {
            owner_id: "user".into(),
            boardroom_id: with_memory.parse().expect("uuid"),
        };
        fill(&store, &key, n).await;
        let mut cold = histogram();
        for _ in 0..50 {
            let t = Instant::now();
            black_box(store.fact_set(&key).await.expect("loaded"));
            cold.record(t.elapsed().as_micros() as u64 + 1).ok();
        }
        let threads = [
            suite.thread_of(&with_memory, "user").await,
            suite.thread_of(&without, "user").await,
        ];
        for thread in &threads {
            complete_turn(&suite.client, thread, "What is our runway in EMEA?").await;
        }
        let before = boardroom_testkit::scrape_metrics(suite.admin).await;
        let (mut h, mut recalled, mut tokens) = ([histogram(), histogram()], 0u64, [0u64; 2]);
        for i in 0..turns {
            let question = format!(
                "What should we do about our churn in EMEA region {}?",
                i % 7
            );
            for (k, thread) in threads.iter().enumerate() {
                let t = Instant::now();
                let done = complete_turn(&suite.client, thread, &question).await;
                h[k].record(t.elapsed().as_micros() as u64).ok();
                if k == 0 {
                    recalled += u64::from(done.memories_recalled);
                }
                // The advisors' calls only: the last round is the moderator's.
                let first = done
                    .rounds
                    .first()
                    .and_then(|r| r.usage)
                    .unwrap_or_default();
                tokens[k] += u64::from(first.input_tokens);
            }
        }
        let after = boardroom_testkit::scrape_metrics(suite.admin).await;
        let mean = |family: &str| {
            let delta = |what: &str| {
                let name = format!("{family}_{what}");
                boardroom_testkit::metric_value(&after, &[&name])
                    - boardroom_testkit::metric_value(&before, &[&name])
            };
            delta("sum") / delta("count").max(1.0) * 1000.0
        };
        let per_advisor = (tokens[0] as f64 - tokens[1] as f64) / (turns * ADVISORS) as f64;
        println!(
            "| {n} | {:.2} / {:.2} | {:.2} / {:.2} | {:.2} / {:.2} | {:.2}× / {:.2}× | {:.3} / {:.3} | {:.1} | {:.0} |",
            ms(&cold, 0.5),
            ms(&cold, 0.99),
            ms(&h[0], 0.5),
            ms(&h[0], 0.99),
            ms(&h[1], 0.5),
            ms(&h[1], 0.99),
            ms(&h[0], 0.5) / ms(&h[1], 0.5),
            ms(&h[0], 0.99) / ms(&h[1], 0.99),
            mean("conversation_memory_recall_seconds"),
            mean("conversation_memory_search_seconds"),
            recalled as f64 / turns as f64,
            per_advisor
        );
    }
}

fn main() {
    let part = std::env::var("MEMORY_PART").unwrap_or_default();
    let turns: usize = std::env::var("MEMORY_TURNS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(100);
    common::runtime().block_on(async {
        if part.is_empty() || part == "search" {
            search().await;
        }
        if part.is_empty() || part == "turn" {
            turn(turns).await;
        }
    });
}
