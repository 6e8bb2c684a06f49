//! The cache as a key-value store: batches, tags, Redis down.

use std::sync::Arc;
use std::time::Duration;

use boardroom_cache::{CacheConfig, Invalidation, Item, TieredCache};
use boardroom_testkit::PrivateRedis;
use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use crate::helpers::{TTL, barrier, cache, next_invalidation, two_connected, wait_until};

fn item(key: &str, value: &str, tags: &[&str]) -> Item<Bytes> {
    Item {
        key: key.to_owned(),
        value: Bytes::from(value.to_owned()),
        ttl: TTL,
        tags: tags.iter().map(|t| Arc::from(*t)).collect(),
    }
}

fn values(found: &[Option<Bytes>]) -> Vec<Option<&str>> {
    found
        .iter()
        .map(|v| v.as_ref().map(|b| std::str::from_utf8(b).expect("utf-8")))
        .collect()
}

/// `field` of `INFO commandstats` for `command`, e.g. `calls`.
async fn command_calls(redis: &PrivateRedis, command: &str) -> u64 {
    let stats = redis.command("INFO commandstats").await;
    stats
        .lines()
        .find_map(|line| line.strip_prefix(&format!("cmdstat_{command}:calls=")))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |calls| calls.parse().expect("a number"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_invalidation_on_one_instance_reaches_every_value_under_it_on_every_instance() {
    let stop = CancellationToken::new();
    let (a, b) = two_connected(&stop).await;
    let keys = ["x", "y", "z", "w"];
    assert!(
        a.set_many(vec![
            item("x", "1", &["t1"]),
            item("y", "2", &["t1", "t2"]),
            item("z", "3", &["t2"]),
            item("w", "4", &[]),
        ])
        .await,
        "acknowledged by Redis"
    );
    assert_eq!(
        values(&b.get_many(&keys).await),
        [Some("1"), Some("2"), Some("3"), Some("4")]
    );
    // Now in B's L1, with the tag versions B has read.
    assert_eq!(
        values(&b.get_many(&keys).await),
        [Some("1"), Some("2"), Some("3"), Some("4")]
    );

    let mut events = b.invalidations();
    assert!(a.invalidate_tags(&["t1"]).await);
    // B heard the DEL (not only the tag's creation): pushes are ordered.
    barrier(&a, &mut events).await;
    assert_eq!(
        values(&b.get_many(&keys).await),
        [None, None, Some("3"), Some("4")],
        "everything under t1 is gone from B's L1, and from L2 for any reader"
    );
    assert_eq!(
        values(&a.get_many(&keys).await),
        [None, None, Some("3"), Some("4")]
    );

    // A new write under the tag gets a new version: visible, and invalidated again.
    a.set_many(vec![item("x", "5", &["t1"])]).await;
    assert_eq!(b.get("x").await, Some(Bytes::from("5")));
    let mut a_events = a.invalidations();
    assert!(b.invalidate_tags(&["t1", "t2"]).await);
    barrier(&b, &mut a_events).await;
    assert_eq!(
        values(&a.get_many(&keys).await),
        [None, None, None, Some("4")]
    );
    stop.cancel();
}

#[tokio::test]
async fn tags_work_on_the_embedded_default_too() {
    let stop = CancellationToken::new();
    let cache: TieredCache = TieredCache::new("test", CacheConfig::default(), stop.clone())
        .await
        .expect("cache");
    let mut events = cache.invalidations();
    assert!(
        !cache
            .set_many(vec![item("x", "1", &["t"]), item("y", "2", &[])])
            .await,
        "no L2 to acknowledge"
    );
    next_invalidation(&mut events, &Invalidation::Key("x".into())).await;
    assert_eq!(
        values(&cache.get_many(&["x", "y"]).await),
        [Some("1"), Some("2")]
    );
    cache.invalidate_tags(&["t"]).await;
    next_invalidation(&mut events, &Invalidation::Tag("t".into())).await;
    assert_eq!(
        values(&cache.get_many(&["x", "y"]).await),
        [None, Some("2")]
    );
    cache.delete_many(&["y"]).await;
    assert_eq!(cache.get("y").await, None);
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_read_is_one_mget_and_a_batch_write_one_pipeline() {
    let redis = PrivateRedis::start();
    let stop = CancellationToken::new();
    let (a, b) = (
        cache(&redis.url(), "b:", &stop).await,
        cache(&redis.url(), "b:", &stop).await,
    );
    wait_until(a.l2_status(), true).await;
    wait_until(b.l2_status(), true).await;
    let mut b_events = b.invalidations();
    let items: Vec<Item<Bytes>> = (0..100)
        .map(|i| item(&format!("k{i}"), &format!("v{i}"), &["all"]))
        .collect();
    assert!(a.set_many(items).await);
    assert_eq!(
        command_calls(&redis, "set").await,
        101,
        "100 values + the tag version"
    );
    assert_eq!(
        command_calls(&redis, "pexpire").await,
        0,
        "the tag version is not touched"
    );

    // Reads after the invalidations of these writes reached B (they evict what B reads).
    next_invalidation(&mut b_events, &Invalidation::Key("k99".into())).await;
    let keys: Vec<String> = (0..100).map(|i| format!("k{i}")).collect();
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    let found = b.get_many(&keys).await;
    assert!(found.iter().all(Option::is_some), "every value found");
    assert_eq!(found[42], Some(Bytes::from("v42")));
    assert_eq!(
        command_calls(&redis, "mget").await,
        2,
        "the values, then the tag version"
    );
    assert_eq!(command_calls(&redis, "get").await, 0);

    // L1 now holds them: no Redis call at all.
    b.get_many(&keys).await;
    assert_eq!(command_calls(&redis, "mget").await, 2);

    assert!(a.delete_many(&keys[..10]).await);
    let found = a.get_many(&keys).await;
    assert_eq!(found.iter().filter(|v| v.is_none()).count(), 10);
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_writes_land_in_this_instances_l1_and_l2_resumes() {
    let mut redis = PrivateRedis::start();
    let stop = CancellationToken::new();
    let a = cache(&redis.url(), "d:", &stop).await;
    wait_until(a.l2_status(), true).await;
    assert!(a.set("before", Bytes::from("1"), TTL).await);

    redis.stop();
    wait_until(a.l2_status(), false).await;
    assert!(
        !a.set_many(vec![item("during", "2", &[]), item("tagged", "3", &["t"])])
            .await,
        "not acknowledged by Redis"
    );
    assert_eq!(
        a.get("during").await,
        Some(Bytes::from("2")),
        "served from L1"
    );
    assert_eq!(
        a.get("tagged").await,
        None,
        "a tag version Redis never had could not be invalidated later: not served"
    );
    assert_eq!(
        a.get("before").await,
        None,
        "Redis is gone: a miss, not an error"
    );

    redis.restart();
    wait_until(a.l2_status(), true).await;
    assert!(
        a.set("after", Bytes::from("3"), Duration::from_secs(5))
            .await
    );
    assert_eq!(a.get("after").await, Some(Bytes::from("3")));
    assert_eq!(
        a.get("during").await,
        None,
        "L1 was cleared when L2 came back: it missed invalidations meanwhile"
    );
    stop.cancel();
}
