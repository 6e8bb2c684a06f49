//! An L1 hit against an L2 (Redis) hit, in one run: p50/p99 of one `get_or_load` each, and the
//! ratio. Redis from REDIS_URL, else the local server, else one the test kit starts.
//!
//! Run: `cargo bench -p boardroom-cache --bench levels`.

use std::time::{Duration, Instant};

use boardroom_cache::{CacheConfig, RawBytes, RedisSettings, TieredCache};
use bytes::Bytes;
use hdrhistogram::Histogram;
use tokio_util::sync::CancellationToken;

const KEYS: usize = 1000;
const ROUNDS: usize = 100;
const TTL: Duration = Duration::from_secs(600);

async fn measure(cache: &TieredCache<RawBytes>) -> (f64, f64) {
    let value = Bytes::from(vec![7u8; 256]);
    let mut h = Histogram::<u64>::new_with_bounds(1, 10_000_000_000, 3).expect("histogram");
    for round in 0..ROUNDS + 1 {
        for key in 0..KEYS {
            let name = format!("k{key}");
            let started = Instant::now();
            let got = cache
                .get_or_load(&name, TTL, || {
                    let value = value.clone();
                    async move { Ok::<_, std::convert::Infallible>(Some(value)) }
                })
                .await
                .expect("value");
            // Round 0 fills both levels; later rounds are hits.
            if round > 0 {
                h.saturating_record(started.elapsed().as_nanos() as u64);
            }
            assert!(got.is_some());
        }
    }
    (
        h.value_at_quantile(0.5) as f64 / 1e3,
        h.value_at_quantile(0.99) as f64 / 1e3,
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let (url, _) = boardroom_testkit::redis_url().await;
    let stop = CancellationToken::new();
    let prefix = format!("bench{}:", boardroom_testkit::unique_suffix());
    let settings = RedisSettings {
        url,
        pool_size: 2,
        timeout: Duration::from_millis(200),
    };
    let l1 = TieredCache::<RawBytes>::new(
        "bench-l1",
        CacheConfig {
            prefix: prefix.clone(),
            redis: Some(settings.clone()),
            ..CacheConfig::default()
        },
        stop.clone(),
    )
    .await
    .expect("cache");
    // An L1 of one byte keeps nothing: every read goes to Redis.
    let l2_only = TieredCache::<RawBytes>::new(
        "bench-l2",
        CacheConfig {
            prefix,
            l1_max_bytes: 1,
            redis: Some(settings),
            ..CacheConfig::default()
        },
        stop.clone(),
    )
    .await
    .expect("cache");
    let (l1_p50, l1_p99) = measure(&l1).await;
    let (l2_p50, l2_p99) = measure(&l2_only).await;
    println!("| read (256-byte value, {KEYS} keys × {ROUNDS}) | p50 µs | p99 µs |");
    println!("|---|---|---|");
    println!("| L1 hit | {l1_p50:.2} | {l1_p99:.2} |");
    println!("| L2 (Redis) hit | {l2_p50:.2} | {l2_p99:.2} |");
    println!(
        "\nL2 ÷ L1 at p50: {:.0}×, at p99: {:.0}×",
        l2_p50 / l1_p50,
        l2_p99 / l1_p99
    );
    stop.cancel();
}
