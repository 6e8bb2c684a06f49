//! L1 admission and eviction policies on the key traces the issue names, in one run:
//! moka's TinyLFU against moka's LRU (what an LRU cache such as Redis's
//! `allkeys-lru` approximates at the same memory), with L1 sized to 1 % and 10 % of 1M keys;
//! and the L1 + L2 hit ratio when L2 (Redis) holds every key loaded before.
//!
//! Traces: Zipf(0.99) over 1M keys, and a recency-heavy sliding working set (uniform over a
//! window of 5 % of the keys that slides across the key space).
//!
//! Run: `cargo bench -p boardroom-cache --bench hit_ratio`.

use std::collections::HashSet;

use moka::future::Cache;
use moka::policy::EvictionPolicy;

const KEYS: u64 = 1_000_000;
const REQUESTS: usize = 4_000_000;

/// xorshift64*: fast, deterministic.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// An endless Zipf(`s`) key stream over `KEYS` keys.
fn zipf_keys(s: f64) -> impl Iterator<Item = u64> {
    let mut cdf = Vec::with_capacity(KEYS as usize);
    let mut total = 0.0;
    for rank in 1..=KEYS {
        total += 1.0 / (rank as f64).powf(s);
        cdf.push(total);
    }
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    std::iter::repeat_with(move || {
        let target = rng.unit() * total;
        // Scatter ranks over the key space so that hot keys are not adjacent ids.
        let rank = cdf.partition_point(|c| *c < target) as u64;
        rank.wrapping_mul(0x9e37_79b9) % KEYS
    })
}

fn zipf_trace(s: f64) -> Vec<u64> {
    zipf_keys(s).take(REQUESTS).collect()
}

/// L1 + L2 in steady state: the share of the last `measured` of `total` requests whose key
/// was requested before (L2 holding every key loaded, as Redis does with room for them).
fn steady_l1_l2_hit_ratio(total: usize, measured: usize) -> f64 {
    let mut seen = HashSet::with_capacity(KEYS as usize);
    let mut hits = 0usize;
    for (i, key) in zipf_keys(0.99).take(total).enumerate() {
        if !seen.insert(key) && i >= total - measured {
            hits += 1;
        }
    }
    hits as f64 / measured as f64
}

fn sliding_trace() -> Vec<u64> {
    let window = KEYS / 20;
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    (0..REQUESTS)
        .map(|i| {
            let start = (i as u64 * KEYS / REQUESTS as u64) % KEYS;
            (start + rng.next() % window) % KEYS
        })
        .collect()
}

async fn l1_hit_ratio(trace: &[u64], capacity: u64, policy: EvictionPolicy) -> f64 {
    let cache: Cache<u64, ()> = Cache::builder()
        .max_capacity(capacity)
        .eviction_policy(policy)
        .build();
    let mut hits = 0u64;
    for (i, key) in trace.iter().enumerate() {
        if cache.get(key).await.is_some() {
            hits += 1;
        } else {
            cache.insert(*key, ()).await;
        }
        if i % 65_536 == 0 {
            cache.run_pending_tasks().await;
        }
    }
    hits as f64 / trace.len() as f64
}

/// Requests whose key was requested before: what L1 + an L2 holding every loaded key serves;
/// over the whole trace, and over its second half (steady state, after the cold start).
fn l1_l2_hit_ratio(trace: &[u64]) -> (f64, f64) {
    let mut seen = HashSet::with_capacity(KEYS as usize);
    let half = trace.len() / 2;
    let (mut all, mut second_half) = (0usize, 0usize);
    for (i, key) in trace.iter().enumerate() {
        if !seen.insert(*key) {
            all += 1;
            if i >= half {
                second_half += 1;
            }
        }
    }
    (
        all as f64 / trace.len() as f64,
        second_half as f64 / (trace.len() - half) as f64,
    )
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let traces = [
        ("Zipf(0.99)", zipf_trace(0.99)),
        ("sliding window (5 %)", sliding_trace()),
    ];
    println!("{REQUESTS} requests over {KEYS} keys per trace.\n");
    println!(
        "| trace | L1 size | L1 TinyLFU | L1 LRU | L1 + L2, whole trace | L1 + L2, second half |"
    );
    println!("|---|---|---|---|---|---|");
    for (name, trace) in &traces {
        let l1_l2 = l1_l2_hit_ratio(trace);
        for share in [0.01, 0.10] {
            let capacity = (KEYS as f64 * share) as u64;
            let tiny_lfu = l1_hit_ratio(trace, capacity, EvictionPolicy::tiny_lfu()).await;
            let lru = l1_hit_ratio(trace, capacity, EvictionPolicy::lru()).await;
            println!(
                "| {name} | {:.0} % | {:.1} % | {:.1} % | {:.1} % | {:.1} % |",
                share * 100.0,
                tiny_lfu * 100.0,
                lru * 100.0,
                l1_l2.0 * 100.0,
                l1_l2.1 * 100.0
            );
        }
    }
    let (total, measured) = (40_000_000, 10_000_000);
    println!(
        "\nZipf(0.99), L1 + L2 in steady state (the last {}M of {}M requests): {:.1} %",
        measured / 1_000_000,
        total / 1_000_000,
        steady_l1_l2_hit_ratio(total, measured) * 100.0
    );
}
