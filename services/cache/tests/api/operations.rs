//! Reads, writes, batches, tags, the invalidation stream, Redis down.

use boardroom_proto::cache::v1 as pb;
use boardroom_proto::cache::v1::watch_invalidations_response::Invalidated;
use boardroom_runtime::config::Secret;
use boardroom_testkit::{PrivateRedis, redis_url};
use futures::StreamExt;

use crate::helpers::{entry, found, spawn_app};

fn ns() -> String {
    format!("t{}", boardroom_testkit::unique_suffix())
}

async fn next(stream: &mut tonic::Streaming<pb::WatchInvalidationsResponse>) -> Invalidated {
    tokio::time::timeout(std::time::Duration::from_secs(10), stream.next())
        .await
        .expect("an invalidation in time")
        .expect("stream open")
        .expect("no error")
        .invalidated
        .expect("set")
}

/// Every invalidation heard up to and including `wanted`.
async fn until(
    stream: &mut tonic::Streaming<pb::WatchInvalidationsResponse>,
    wanted: Invalidated,
) -> Vec<Invalidated> {
    let mut heard = Vec::new();
    loop {
        let event = next(stream).await;
        heard.push(event.clone());
        if event == wanted {
            return heard;
        }
    }
}

/// Both deployments: the embedded default (L1 only) and Redis as L2.
async fn batches_and_tags(redis: Option<String>) {
    let with_redis = redis.is_some();
    let app = spawn_app(|c| {
        if let Some(url) = redis {
            c.redis.url = Secret::new(url);
        }
    })
    .await;
    if with_redis {
        // Coherent from here (tracking on): `l2_up` and `replicated` agree.
        let mut up = app.cache.l2_status();
        tokio::time::timeout(std::time::Duration::from_secs(10), up.wait_for(|up| *up))
            .await
            .expect("L2 up within 10 s")
            .expect("status open");
    }
    let mut client = app.client.clone();
    let namespace = ns();
    let set = client
        .set_many(pb::SetManyRequest {
            namespace: namespace.clone(),
            entries: vec![
                entry("a", "1", &["even", "all"]),
                entry("b", "2", &["all"]),
                entry("c", "3", &[]),
            ],
        })
        .await
        .expect("set many")
        .into_inner();
    assert_eq!(set.replicated, app.cache.l2_up());

    let keys = |k: &[&str]| pb::GetManyRequest {
        namespace: namespace.clone(),
        keys: k.iter().map(|k| (*k).to_owned()).collect(),
    };
    let got = client
        .get_many(keys(&["c", "missing", "a", "b"]))
        .await
        .expect("get many")
        .into_inner()
        .lookups;
    assert_eq!(found(&got), [Some("3"), None, Some("1"), Some("2")]);
    assert_eq!(got[1].key, "missing", "answers in request order");

    client
        .invalidate_tags(pb::InvalidateTagsRequest {
            namespace: namespace.clone(),
            tags: vec!["all".into()],
        })
        .await
        .expect("invalidate");
    let got = client
        .get_many(keys(&["a", "b", "c"]))
        .await
        .expect("get many")
        .into_inner()
        .lookups;
    assert_eq!(found(&got), [None, None, Some("3")]);

    client
        .delete(pb::DeleteRequest {
            namespace: namespace.clone(),
            keys: vec!["c".into()],
        })
        .await
        .expect("delete");
    let one = client
        .get(pb::GetRequest {
            namespace: namespace.clone(),
            key: "c".into(),
        })
        .await
        .expect("get")
        .into_inner()
        .lookup
        .expect("lookup");
    assert!(!one.found);

    let stats = client
        .stats(pb::StatsRequest {
            namespace: namespace.clone(),
        })
        .await
        .expect("stats")
        .into_inner();
    assert_eq!(
        (
            stats.reads,
            stats.hits,
            stats.writes,
            stats.deletes,
            stats.tag_invalidations
        ),
        (8, 4, 3, 1, 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_and_tags_on_the_embedded_default() {
    batches_and_tags(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_and_tags_on_redis() {
    batches_and_tags(Some(redis_url().await.0)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_hears_its_namespaces_invalidations_from_any_replica_and_no_others() {
    let (url, _) = redis_url().await;
    let (a, mut b) = (
        spawn_app(|c| c.redis.url = Secret::new(url.clone())).await,
        spawn_app(|c| c.redis.url = Secret::new(url.clone())).await,
    );
    let mut l2 = b.cache.l2_status();
    tokio::time::timeout(std::time::Duration::from_secs(10), l2.wait_for(|up| *up))
        .await
        .expect("L2 up in time")
        .expect("status open");
    let (mine, other) = (ns(), ns());
    let mut watch = b
        .client
        .clone()
        .watch_invalidations(pb::WatchInvalidationsRequest {
            namespace: mine.clone(),
        })
        .await
        .expect("watch")
        .into_inner();

    // The other namespace uses other names, so that hearing one of them would show.
    let mut writer = a.client.clone();
    for (namespace, key, tag) in [(&other, "ko", "to"), (&mine, "k", "t")] {
        writer
            .set(pb::SetRequest {
                namespace: namespace.clone(),
                entry: Some(entry(key, "v", &[tag])),
            })
            .await
            .expect("set");
    }
    let heard = until(&mut watch, Invalidated::Key("k".into())).await;
    for (namespace, tag) in [(&other, "to"), (&mine, "t")] {
        writer
            .invalidate_tags(pb::InvalidateTagsRequest {
                namespace: namespace.clone(),
                tags: vec![tag.into()],
            })
            .await
            .expect("invalidate");
    }
    let heard = [heard, until(&mut watch, Invalidated::Tag("t".into())).await].concat();
    assert!(
        heard.iter().all(|event| matches!(event, Invalidated::Key(k) | Invalidated::Tag(k) if k == "k" || k == "t")),
        "only this namespace's key and tag: {heard:?}"
    );

    b.shutdown.cancel();
    let end = tokio::time::timeout(std::time::Duration::from_secs(10), watch.next())
        .await
        .expect("the stream ends with the server");
    assert!(!matches!(end, Some(Ok(_))), "no more events: {end:?}");
    tokio::time::timeout(std::time::Duration::from_secs(10), &mut b.task)
        .await
        .expect("an open stream does not hold the drain up")
        .expect("joined")
        .expect("served cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_calls_succeed_unreplicated_and_replication_resumes() {
    let mut redis = PrivateRedis::start();
    let app = spawn_app(|c| c.redis.url = Secret::new(redis.url())).await;
    let mut status = app.cache.l2_status();
    let mut client = app.client.clone();
    let wait = |wanted: bool| {
        let mut status = status.clone();
        async move {
            tokio::time::timeout(
                std::time::Duration::from_secs(20),
                status.wait_for(|up| *up == wanted),
            )
            .await
            .expect("L2 status in time")
            .map(|_| ())
            .expect("status open");
        }
    };
    wait(true).await;
    let set = |key: &str| pb::SetRequest {
        namespace: "n".into(),
        entry: Some(entry(key, "v", &[])),
    };
    assert!(
        client
            .set(set("a"))
            .await
            .expect("set")
            .into_inner()
            .replicated
    );

    redis.stop();
    wait(false).await;
    let during = client.set(set("b")).await.expect("set still succeeds");
    assert!(!during.into_inner().replicated);
    let got = client
        .get_many(pb::GetManyRequest {
            namespace: "n".into(),
            keys: vec!["a".into(), "b".into()],
        })
        .await
        .expect("get many still succeeds")
        .into_inner()
        .lookups;
    assert_eq!(
        found(&got),
        [None, Some("v")],
        "this replica's L1 serves its own write"
    );
    assert!(
        !client
            .invalidate_tags(pb::InvalidateTagsRequest {
                namespace: "n".into(),
                tags: vec!["t".into()],
            })
            .await
            .expect("invalidate still succeeds")
            .into_inner()
            .replicated
    );

    redis.restart();
    wait(true).await;
    assert!(
        client
            .set(set("c"))
            .await
            .expect("set")
            .into_inner()
            .replicated
    );
    status.mark_changed();
}
