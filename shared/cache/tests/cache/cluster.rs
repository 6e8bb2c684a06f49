//! The tiered cache on a Redis Cluster (three primaries, three replicas, started by the test
//! kit): coherence on every shard, multi-key commands across slots, a primary's failover and
//! a slot migration under load.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use boardroom_cache::TieredCache;
use boardroom_testkit::{RedisCluster, unique_suffix};
use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use crate::helpers::{INVALIDATION_DELAY, TTL, cache_with, load, wait_until};

/// While the topology changes, a replaced value may be served longer than the usual
/// [`INVALIDATION_DELAY`] (README, "Redis Cluster"): in a slot migration, this long after the
/// write was acknowledged (a command that meets a moved slot can time out while fred reroutes
/// it, and the delete is retried); in a failover, this long after the shard has a primary
/// again (while it has none, writes to it cannot land, and the promoted replica may serve the
/// values they replace until the retries reach it).
const TOPOLOGY_BOUND: Duration = Duration::from_secs(1);

async fn start_cluster() -> Arc<Mutex<RedisCluster>> {
    // `RUST_LOG=boardroom_cache=debug` shows the followers at work.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    Arc::new(Mutex::new(
        tokio::task::spawn_blocking(RedisCluster::start)
            .await
            .expect("cluster"),
    ))
}

async fn two_instances(url: &str, stop: &CancellationToken) -> [TieredCache; 2] {
    two_instances_with(url, &format!("t{}:", unique_suffix()), stop).await
}

async fn two_instances_with(url: &str, prefix: &str, stop: &CancellationToken) -> [TieredCache; 2] {
    // Tombstones shorter than the load's gap between writes of a key (about 100 ms), so that
    // Redis mostly holds values, not tombstones: a stale value there would be read.
    let short_tombstones = |c: &mut boardroom_cache::CacheConfig| {
        c.tombstone_ttl = Duration::from_millis(20);
    };
    let instances = [
        cache_with(url, prefix, stop, short_tombstones).await,
        cache_with(url, prefix, stop, short_tombstones).await,
    ];
    wait_until(instances[0].l2_status(), true).await;
    wait_until(instances[1].l2_status(), true).await;
    instances
}

fn value(text: &str) -> Bytes {
    Bytes::copy_from_slice(text.as_bytes())
}

/// The regression of the issue: on a cluster, a second instance whose L1 held a key kept the
/// old value for every key on a shard other than the one tracking was enabled on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_on_one_instance_evicts_the_key_from_the_others_l1_on_every_shard() {
    let cluster = start_cluster().await;
    let url = cluster.lock().expect("cluster").url();
    let stop = CancellationToken::new();
    let prefix = format!("t{}:", unique_suffix());
    let [a, b] = two_instances_with(&url, &prefix, &stop).await;
    let keys: Vec<String> = (0..60).map(|i| format!("key-{i}")).collect();
    let shards: BTreeSet<u16> = {
        let cluster = cluster.lock().expect("cluster");
        // The key as stored: the cache's prefix is part of what is hashed.
        keys.iter()
            .map(|k| cluster.owner_of(&format!("{prefix}{k}")))
            .collect()
    };
    assert_eq!(shards.len(), 3, "the keys cover every primary");
    for key in &keys {
        assert!(a.set(key, value("old"), TTL).await, "L2 acknowledged {key}");
    }
    for key in &keys {
        assert_eq!(b.get(key).await, Some(value("old")), "b read {key}");
    }
    for key in &keys {
        assert!(a.set(key, value("new"), TTL).await);
    }
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut stale: Vec<&String> = keys.iter().collect();
    while !stale.is_empty() && Instant::now() < deadline {
        let mut still = Vec::new();
        for key in stale {
            if b.get(key).await != Some(value("new")) {
                still.push(key);
            }
        }
        stale = still;
        tokio::task::yield_now().await;
    }
    assert!(
        stale.is_empty(),
        "{} of 60 keys still old on b after 1 s: {stale:?}",
        stale.len()
    );
    stop.cancel();
}

/// MGET, tag versions and tag invalidation over keys of many slots: one command per slot,
/// never CROSSSLOT (which the cache would report as L2 unavailable: misses and no ack).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_key_reads_and_tag_invalidations_span_slots() {
    let cluster = start_cluster().await;
    let url = cluster.lock().expect("cluster").url();
    let stop = CancellationToken::new();
    let [a, b] = two_instances(&url, &stop).await;
    let keys: Vec<String> = (0..40).map(|i| format!("many-{i}")).collect();
    let items: Vec<boardroom_cache::Item<Bytes>> = keys
        .iter()
        .enumerate()
        .map(|(i, key)| boardroom_cache::Item {
            key: key.clone(),
            value: value(key),
            ttl: TTL,
            tags: vec![format!("tag-{}", i % 7).into()],
        })
        .collect();
    assert!(a.set_many(items).await, "one pipeline across slots");
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    // From L2 (b never saw them): one MGET per slot.
    let got = b.get_many(&refs).await;
    assert_eq!(got.len(), 40);
    for (key, got) in keys.iter().zip(&got) {
        assert_eq!(got.as_ref(), Some(&value(key)), "{key}");
    }
    let tags: Vec<String> = (0..7).map(|i| format!("tag-{i}")).collect();
    let tag_refs: Vec<&str> = tags.iter().map(String::as_str).collect();
    assert!(a.invalidate_tags(&tag_refs).await, "one DEL per slot");
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let left = b.get_many(&refs).await.iter().flatten().count();
        if left == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{left} of 40 values still served after their tags were invalidated"
        );
        tokio::task::yield_now().await;
    }
    stop.cancel();
}

/// A primary SIGKILLed under load: its replica takes over; every call succeeds (the cache
/// falls back to the loader), the surviving instance follows the new primary, and no read
/// is stale past the documented bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_killed_under_load_fails_over_with_no_stale_read() {
    let cluster = start_cluster().await;
    let url = cluster.lock().expect("cluster").url();
    let stop = CancellationToken::new();
    let instances = two_instances(&url, &stop).await;
    let victim = cluster.lock().expect("cluster").primaries()[0].port;
    let fault = {
        let cluster = cluster.clone();
        Box::new(move || {
            let mut cluster = cluster.lock().expect("cluster");
            cluster.kill(victim);
            cluster.wait_until_ok();
        })
    };
    let report = load(&instances, Duration::from_secs(8), Some(fault)).await;
    report.assert_fresh_after_fault(INVALIDATION_DELAY, TOPOLOGY_BOUND);
    for instance in &instances {
        wait_until(instance.l2_status(), true).await;
    }
    stop.cancel();
}

/// Slots migrated (`redis-cli --cluster reshard`) under load: keys move between primaries
/// while both instances read and write them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_migrated_under_load_leave_no_stale_read() {
    let cluster = start_cluster().await;
    let url = cluster.lock().expect("cluster").url();
    let stop = CancellationToken::new();
    let instances = two_instances(&url, &stop).await;
    let fault = {
        let cluster = cluster.clone();
        Box::new(move || {
            let cluster = cluster.lock().expect("cluster");
            let primaries = cluster.primaries();
            cluster.reshard(primaries[0].port, primaries[1].port, 2000);
        })
    };
    let report = load(&instances, Duration::from_secs(6), Some(fault)).await;
    report.assert_fresh(TOPOLOGY_BOUND);
    stop.cancel();
}

/// A delete made while its key's shard has no primary (the old one dead, the replica not yet
/// promoted) cannot reach Redis; the promoted replica still holds the value it replaced. The
/// delete must land once the shard is back, or another instance would read the old value
/// from L2 until its TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_made_during_a_failover_lands_when_the_shard_is_back() {
    let cluster = start_cluster().await;
    let url = cluster.lock().expect("cluster").url();
    let stop = CancellationToken::new();
    let prefix = format!("t{}:", unique_suffix());
    let [a, b] = two_instances_with(&url, &prefix, &stop).await;
    let truth = Arc::new(Mutex::new("v1"));
    let read = |cache: &TieredCache| {
        let truth = truth.clone();
        let cache = cache.clone();
        async move {
            cache
                .get_or_load("fact", TTL, move || {
                    let current = *truth.lock().expect("truth");
                    std::future::ready(Ok::<_, anyhow::Error>(Some(value(current))))
                })
                .await
                .expect("read")
        }
    };
    assert_eq!(read(&a).await, Some(value("v1")));
    let owner = cluster
        .lock()
        .expect("cluster")
        .owner_of(&format!("{prefix}fact"));
    // Replicated before the kill: the promoted replica holds v1 (the only key there).
    let replica = cluster.lock().expect("cluster").replica_of(owner);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cluster
        .lock()
        .expect("cluster")
        .command(replica, &["info", "keyspace"])
        .contains("keys=1")
    {
        assert!(
            Instant::now() < deadline,
            "the fill never reached the replica"
        );
        tokio::task::yield_now().await;
    }
    {
        let cluster = cluster.clone();
        tokio::task::spawn_blocking(move || cluster.lock().expect("cluster").kill(owner))
            .await
            .expect("kill");
    }
    *truth.lock().expect("truth") = "v2";
    assert!(
        !a.delete("fact").await,
        "no primary for the key: not acknowledged"
    );
    {
        let cluster = cluster.clone();
        tokio::task::spawn_blocking(move || cluster.lock().expect("cluster").wait_until_ok())
            .await
            .expect("failover");
    }
    wait_until(b.l2_status(), true).await;
    let deadline = Instant::now() + TOPOLOGY_BOUND;
    loop {
        let seen = read(&b).await;
        if seen == Some(value("v2")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "b still reads {seen:?} from the promoted replica {TOPOLOGY_BOUND:?} after the failover"
        );
        tokio::task::yield_now().await;
    }
    stop.cancel();
}
