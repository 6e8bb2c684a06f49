//! Reads through a loader, coherence, Redis down, refresh-ahead.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use boardroom_cache::{CacheConfig, Invalidation, RawBytes, TieredCache};

use crate::helpers::{
    INVALIDATION_DELAY, TTL, barrier, cache, load, loader, next_invalidation, two_connected,
    wait_until,
};
use boardroom_testkit::{PrivateRedis, redis_url, unique_suffix};
use bytes::Bytes;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_on_one_instance_evicts_the_key_from_the_others_l1() {
    let (url, _) = redis_url().await;
    let prefix = format!("t{}:", unique_suffix());
    let stop = CancellationToken::new();
    let (a, b) = (
        cache(&url, &prefix, &stop).await,
        cache(&url, &prefix, &stop).await,
    );
    wait_until(b.l2_status(), true).await;
    let calls = Arc::new(AtomicUsize::new(0));

    assert_eq!(
        b.get_or_load("k", TTL, loader(&calls, Some("v1")))
            .await
            .expect("load"),
        Some(Bytes::from("v1"))
    );
    assert_eq!(
        b.get_or_load("k", TTL, loader(&calls, Some("never")))
            .await
            .expect("hit"),
        Some(Bytes::from("v1"))
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the second read is an L1 hit"
    );

    let mut events = b.invalidations();
    a.set("k", Bytes::from("v2"), TTL).await;
    // B also hears its own fill of "k": wait for a later write instead, pushes come in order.
    barrier(&a, &mut events).await;
    assert_eq!(
        b.get_or_load("k", TTL, loader(&calls, Some("never")))
            .await
            .expect("L2 hit"),
        Some(Bytes::from("v2"))
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "B read A's write from L2, not from the loader"
    );

    a.delete("k").await;
    barrier(&a, &mut events).await;
    assert_eq!(
        b.get_or_load("k", TTL, loader(&calls, Some("v3")))
            .await
            .expect("reload"),
        Some(Bytes::from("v3"))
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_misses_load_once() {
    let (url, _) = redis_url().await;
    let stop = CancellationToken::new();
    let cache = cache(&url, &format!("t{}:", unique_suffix()), &stop).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let (open, gate) = tokio::sync::watch::channel(false);
    let readers: Vec<_> = (0..1000)
        .map(|_| {
            let (cache, calls, gate) = (cache.clone(), calls.clone(), gate.clone());
            tokio::spawn(async move {
                cache
                    .get_or_load("hot", TTL, move || {
                        let (calls, mut gate) = (calls.clone(), gate.clone());
                        async move {
                            calls.fetch_add(1, Ordering::SeqCst);
                            let _ = gate.wait_for(|open| *open).await;
                            Ok::<_, anyhow::Error>(Some(Bytes::from_static(b"v")))
                        }
                    })
                    .await
            })
        })
        .collect();
    // Open the gate once the load has started; every other reader is waiting on it by then or
    // will find the value cached.
    while calls.load(Ordering::SeqCst) == 0 {
        tokio::task::yield_now().await;
    }
    open.send_replace(true);
    for reader in readers {
        assert_eq!(
            reader.await.expect("joined").expect("value"),
            Some(Bytes::from_static(b"v"))
        );
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_found_is_cached_in_both_levels() {
    let (url, _) = redis_url().await;
    let prefix = format!("t{}:", unique_suffix());
    let stop = CancellationToken::new();
    let (a, b) = (
        cache(&url, &prefix, &stop).await,
        cache(&url, &prefix, &stop).await,
    );
    let calls = Arc::new(AtomicUsize::new(0));
    assert_eq!(
        a.get_or_load("ghost", TTL, loader(&calls, None))
            .await
            .expect("load"),
        None
    );
    assert_eq!(
        a.get_or_load("ghost", TTL, loader(&calls, Some("no")))
            .await
            .expect("L1"),
        None
    );
    assert_eq!(
        b.get_or_load("ghost", TTL, loader(&calls, Some("no")))
            .await
            .expect("L2"),
        None
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loader_errors_reach_every_waiter_and_are_not_cached() {
    let stop = CancellationToken::new();
    let cache = TieredCache::<RawBytes>::new("test", CacheConfig::default(), stop.clone())
        .await
        .expect("L1 only");
    let err = cache
        .get_or_load("k", TTL, || async {
            Err::<Option<Bytes>, _>(anyhow::anyhow!("database down"))
        })
        .await
        .expect_err("error");
    assert!(err.to_string().contains("database down"));
    let calls = Arc::new(AtomicUsize::new(0));
    assert_eq!(
        cache
            .get_or_load("k", TTL, loader(&calls, Some("v")))
            .await
            .expect("ok"),
        Some(Bytes::from("v"))
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_every_call_succeeds_and_l2_resumes_when_it_returns() {
    let mut redis = PrivateRedis::start();
    let stop = CancellationToken::new();
    let prefix = "p:";
    let a = cache(&redis.url(), prefix, &stop).await;
    wait_until(a.l2_status(), true).await;
    let calls = Arc::new(AtomicUsize::new(0));
    a.get_or_load("before", TTL, loader(&calls, Some("v0")))
        .await
        .expect("load");

    redis.stop();
    wait_until(a.l2_status(), false).await;
    assert!(!a.l2_up());
    // Everything still answers, from the loader.
    assert_eq!(
        a.get_or_load("during", TTL, loader(&calls, Some("v1")))
            .await
            .expect("loader"),
        Some(Bytes::from("v1"))
    );
    a.set("written-during", Bytes::from("x"), TTL).await;
    a.delete("before").await;
    assert_eq!(
        a.get_or_load("before", TTL, loader(&calls, Some("v0b")))
            .await
            .expect("loader"),
        Some(Bytes::from("v0b"))
    );

    redis.restart();
    wait_until(a.l2_status(), true).await;
    a.set("after", Bytes::from("v2"), TTL).await;
    // A fresh instance finds it in L2: hits resumed without a restart of the cache.
    let fresh = cache(&redis.url(), prefix, &stop).await;
    let before = calls.load(Ordering::SeqCst);
    assert_eq!(
        fresh
            .get_or_load("after", TTL, loader(&calls, Some("never")))
            .await
            .expect("L2 hit"),
        Some(Bytes::from("v2"))
    );
    assert_eq!(calls.load(Ordering::SeqCst), before, "served by L2");
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_in_redis_clears_every_l1() {
    let redis = PrivateRedis::start();
    let stop = CancellationToken::new();
    let a = cache(&redis.url(), "f:", &stop).await;
    wait_until(a.l2_status(), true).await;
    let calls = Arc::new(AtomicUsize::new(0));
    a.get_or_load("k", TTL, loader(&calls, Some("v")))
        .await
        .expect("load");
    let mut events = a.invalidations();
    assert!(redis.command("FLUSHALL").await.starts_with("+OK"));
    next_invalidation(&mut events, &Invalidation::All).await;
    a.get_or_load("k", TTL, loader(&calls, Some("v")))
        .await
        .expect("reload");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "L1 was cleared by the flush"
    );
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_that_read_before_a_delete_cannot_store_the_old_value() {
    let (url, _) = redis_url().await;
    let prefix = format!("t{}:", unique_suffix());
    let stop = CancellationToken::new();
    let (a, b) = (
        cache(&url, &prefix, &stop).await,
        cache(&url, &prefix, &stop).await,
    );
    wait_until(a.l2_status(), true).await;
    // A's loader reads the old value, then the owner deletes (on B) before A's fill lands.
    let writer = b.clone();
    let stale = a
        .get_or_load("k", TTL, move || {
            let writer = writer.clone();
            async move {
                writer.delete("k").await;
                Ok::<_, anyhow::Error>(Some(Bytes::from_static(b"old")))
            }
        })
        .await
        .expect("load");
    assert_eq!(
        stale,
        Some(Bytes::from_static(b"old")),
        "the racing reader itself got what it read"
    );
    let calls = Arc::new(AtomicUsize::new(0));
    let fresh = cache(&url, &prefix, &stop).await;
    assert_eq!(
        fresh
            .get_or_load("k", TTL, loader(&calls, Some("new")))
            .await
            .expect("load"),
        Some(Bytes::from("new"))
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "L2 held a tombstone, not the old value"
    );
    assert_eq!(
        a.get_or_load("k", TTL, loader(&calls, Some("new")))
            .await
            .expect("reload"),
        Some(Bytes::from("new")),
        "A's raced L1 entry was discarded"
    );
    stop.cancel();
}

/// 64 clients read and write 256 keys (2 % writes) through two instances for two seconds. The
/// "database" is a version per key; a read that starts after a write was acknowledged (plus the
/// documented invalidation delay) must see that write or a later one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_load_no_instance_serves_a_value_older_than_the_last_acknowledged_write() {
    let private = PrivateRedis::start();
    let url = private.url();
    let prefix = format!("t{}:", unique_suffix());
    let stop = CancellationToken::new();
    let instances = [
        cache(&url, &prefix, &stop).await,
        cache(&url, &prefix, &stop).await,
    ];
    wait_until(instances[0].l2_status(), true).await;
    wait_until(instances[1].l2_status(), true).await;
    let report = load(&instances, Duration::from_secs(2), None).await;
    report.assert_fresh(INVALIDATION_DELAY);
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_entry_past_its_refresh_mark_is_reloaded_in_the_background() {
    let stop = CancellationToken::new();
    // Refresh at 0 % of the TTL: every hit qualifies, so the test needs no clock.
    let config = CacheConfig {
        refresh_ahead: Some(0.0),
        ..CacheConfig::default()
    };
    let cache = TieredCache::<RawBytes>::new("test", config, stop.clone())
        .await
        .expect("cache");
    let version = Arc::new(AtomicUsize::new(1));
    let load = {
        let version = version.clone();
        move || {
            let version = version.clone();
            async move {
                Ok::<_, anyhow::Error>(Some(Bytes::from(
                    version.load(Ordering::SeqCst).to_string(),
                )))
            }
        }
    };
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = {
        let (calls, load) = (calls.clone(), load.clone());
        move || {
            calls.fetch_add(1, Ordering::SeqCst);
            load()
        }
    };
    assert_eq!(
        cache
            .get_or_load_refreshing("k", TTL, counted.clone())
            .await
            .expect("miss"),
        Some(Bytes::from("1"))
    );
    version.store(2, Ordering::SeqCst);
    // A hit: answered from the cache at once, and a reload starts behind it.
    assert_eq!(
        cache
            .get_or_load_refreshing("k", TTL, counted.clone())
            .await
            .expect("hit"),
        Some(Bytes::from("1"))
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let value = cache
            .get_or_load("k", TTL, counted.clone())
            .await
            .expect("read");
        if value == Some(Bytes::from("2")) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the refresh never landed"
        );
        tokio::task::yield_now().await;
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "one load for the miss, one refresh; readers never waited on it"
    );
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_that_races_a_write_does_not_land() {
    let stop = CancellationToken::new();
    let config = CacheConfig {
        refresh_ahead: Some(0.0),
        ..CacheConfig::default()
    };
    let cache = TieredCache::<RawBytes>::new("test", config, stop.clone())
        .await
        .expect("cache");
    let (release, released) = tokio::sync::watch::channel(false);
    let calls = Arc::new(AtomicUsize::new(0));
    let load = {
        let calls = calls.clone();
        move || {
            let (calls, mut released) = (calls.clone(), released.clone());
            async move {
                // The first load answers at once; the refresh waits to be released.
                if calls.fetch_add(1, Ordering::SeqCst) > 0 {
                    let _ = released.wait_for(|r| *r).await;
                    return Ok::<_, anyhow::Error>(Some(Bytes::from_static(b"stale")));
                }
                Ok(Some(Bytes::from_static(b"v1")))
            }
        }
    };
    cache
        .get_or_load_refreshing("k", TTL, load.clone())
        .await
        .expect("miss");
    cache
        .get_or_load_refreshing("k", TTL, load.clone())
        .await
        .expect("hit starts a refresh");
    cache.delete("k").await; // a write lands while the refresh is loading
    release.send_replace(true);
    let fresh = || async { Ok::<_, anyhow::Error>(Some(Bytes::from_static(b"v2"))) };
    assert_eq!(
        cache.get_or_load("k", TTL, fresh).await.expect("read"),
        Some(Bytes::from_static(b"v2"))
    );
    // Whenever the refresh finishes, it must not replace what the write made current.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while calls.load(Ordering::SeqCst) < 2 {
        assert!(std::time::Instant::now() < deadline);
        tokio::task::yield_now().await;
    }
    for _ in 0..100 {
        assert_ne!(
            cache.get_or_load("k", TTL, fresh).await.expect("read"),
            Some(Bytes::from_static(b"stale"))
        );
        tokio::task::yield_now().await;
    }
    stop.cancel();
}

/// L1's entries once its pending maintenance has run.
async fn entries(cache: &TieredCache) -> u64 {
    cache.l1_bytes().await;
    cache.l1_entries()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_eviction_leaves_redis_alone() {
    let stop = CancellationToken::new();
    let (a, b) = two_connected(&stop).await;
    let calls = Arc::new(AtomicUsize::new(0));
    // B loads and fills Redis; A reads it from there (a read, no write: nothing evicts it).
    // B's fill is a write whose invalidation Redis pushes to A too: A reads once it has heard
    // it (pushes are ordered: after the barrier's), or that late push would evict A's copy.
    let mut heard = a.invalidations();
    for instance in [&b, &a] {
        if std::ptr::eq(instance, &a) {
            barrier(&b, &mut heard).await;
        }
        assert_eq!(
            instance
                .get_or_load("k", TTL, loader(&calls, Some("v1")))
                .await
                .expect("load"),
            Some(Bytes::from("v1"))
        );
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "A read B's fill from Redis"
    );
    assert_eq!(entries(&a).await, 1, "in A's L1");

    a.evict_local("k").await;
    assert_eq!(entries(&a).await, 0, "gone from A's L1");
    assert_eq!(
        a.get_or_load("k", TTL, loader(&calls, Some("never")))
            .await
            .expect("L2 hit"),
        Some(Bytes::from("v1"))
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "A read it back from Redis, not from the loader"
    );
    stop.cancel();
}
