//! Two replicas of the session service on one database and one Redis: a write through one
//! evicts the entity from the other's cache.

use boardroom_cache::Invalidation;
use boardroom_proto::session::v1 as pb;
use boardroom_runtime::config::Secret;
use boardroom_testkit::{TestDatabase, redis_url};

use crate::helpers::spawn_app_with;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_through_one_replica_is_seen_by_the_other() {
    let db = TestDatabase::postgres().await;
    let (redis, _) = redis_url().await;
    let with_redis = |c: &mut boardroom_runtime::Config| c.redis.url = Secret::new(redis.clone());
    let mut a = spawn_app_with(db.clone(), with_redis).await;
    let mut b = spawn_app_with(db, with_redis).await;
    let board = a.boardroom("o").await;
    let session = a.session(&board.id, "u").await;

    // B caches the active session.
    let cached = b
        .client
        .get_session(pb::GetSessionRequest {
            id: session.id.clone(),
        })
        .await
        .expect("get");
    assert!(cached.into_inner().session.expect("session").active);

    let mut events = b.cache_events();
    a.client
        .end_session(pb::EndSessionRequest {
            id: session.id.clone(),
        })
        .await
        .expect("end");
    let key: std::sync::Arc<str> = format!("s:{}", session.id.replace('-', "")).into();
    tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            match events.recv().await.expect("events") {
                Invalidation::Key(k) if k == key => return,
                Invalidation::All => return,
                _ => {}
            }
        }
    })
    .await
    .expect("B heard of A's write");
    let seen = b
        .client
        .get_session(pb::GetSessionRequest {
            id: session.id.clone(),
        })
        .await
        .expect("get");
    assert!(
        !seen.into_inner().session.expect("session").active,
        "B no longer serves the active session"
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_entity_past_its_refresh_mark_is_reloaded_in_the_background_as_metrics_show() {
    use boardroom_testkit::{metric_value, scrape_metrics};
    use std::time::{Duration, Instant};

    let mut app = spawn_app_with(TestDatabase::sqlite(), |c| {
        c.session.cache.ttl_ms = 5_000;
        // Past 5 % of the TTL (250 ms), a hit reloads the entity in the background.
        c.session.cache.refresh_ahead = 0.05;
    })
    .await;
    let board = app.boardroom("owner").await;
    let get = || pb::GetBoardroomRequest {
        id: board.id.clone(),
    };
    let metric = |text: &str, name: &str| metric_value(text, &[name, "cache=\"session\""]);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = app.client.get_boardroom(get()).await.expect("get");
        assert_eq!(
            got.into_inner().boardroom.expect("boardroom").name,
            board.name
        );
        let text = scrape_metrics(app.admin).await;
        if metric(&text, "cache_refreshes_total") >= 1.0 {
            assert_eq!(
                metric(&text, "cache_loads_total"),
                1.0,
                "only the first read loaded in the foreground"
            );
            break;
        }
        assert!(Instant::now() < deadline, "no refresh within 20 s");
        // Polling: the refresh mark is a point in time the test waits to pass.
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    app.stop().await;
}
