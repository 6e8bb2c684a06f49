//! Memory pressure: L1 sheds its coldest entries when the process passes its limit.

use std::time::Duration;

use boardroom_cache::{CacheConfig, MemoryPressure, TieredCache, process_rss_bytes};
use bytes::Bytes;
use tokio_util::sync::CancellationToken;

const MIB: u64 = 1024 * 1024;
/// Above glibc's largest mmap threshold, so a dropped value's pages go back to the system.
const VALUE: usize = 40 * 1024 * 1024;

fn value(fill: u8) -> Bytes {
    // Not zeroes: calloc'd pages would not be resident.
    Bytes::from(vec![fill; VALUE])
}

/// One check of the watcher: virtual time moves one period and the watcher runs.
async fn tick() {
    tokio::time::advance(Duration::from_secs(1)).await;
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn past_its_share_of_the_limit_l1_sheds_the_least_recently_used_until_back_under() {
    let rss = process_rss_bytes().expect("Linux reports VmRSS");
    let ceiling = rss + 220 * MIB;
    let stop = CancellationToken::new();
    let config = CacheConfig {
        l1_max_bytes: 1024 * MIB,
        memory: Some(MemoryPressure {
            limit_share: 1.0,
            ceiling_bytes: Some(ceiling),
            check_every: Duration::from_secs(1),
        }),
        ..CacheConfig::default()
    };
    let cache: TieredCache = TieredCache::new("test", config, stop.clone())
        .await
        .expect("cache");
    let hour = Duration::from_secs(3600);
    for i in 0..4 {
        cache.set(&format!("cold{i}"), value(1), hour).await;
    }
    tick().await;
    assert!(process_rss_bytes().expect("rss") < ceiling, "160 MiB fit");
    for i in 0..4 {
        cache.set(&format!("hot{i}"), value(2), hour).await;
    }
    assert!(
        process_rss_bytes().expect("rss") > ceiling,
        "320 MiB do not fit under {} MiB",
        ceiling / MIB
    );

    let mut checks = 0;
    while process_rss_bytes().expect("rss") > ceiling {
        tick().await;
        checks += 1;
        assert!(checks < 30, "still over the ceiling after {checks} checks");
    }
    for i in 0..4 {
        assert!(
            cache.get(&format!("hot{i}")).await.is_some(),
            "hot{i} was kept"
        );
    }
    let mut cold_left = 0;
    for i in 0..4 {
        cold_left += usize::from(cache.get(&format!("cold{i}")).await.is_some());
    }
    assert!(cold_left < 4, "cold entries were shed first");
    assert!(cache.l1_bytes().await < 8 * VALUE as u64);
    stop.cancel();
}
