//! The session service on a PostgreSQL primary with a streaming replica (started by the test
//! kit): lists from the replica, read-your-writes through the consistency token, the lag
//! bound, and a replica that goes away.

use std::time::{Duration, Instant};

use boardroom_proto::session::v1 as pb;
use boardroom_runtime::config::Secret;
use boardroom_runtime::consistency::{HEADER, Lsn};
use boardroom_testkit::{ReplicatedPostgres, TestDatabase, metric_value, scrape_metrics};

use crate::helpers::{TestApp, advisor, spawn_app_with};

async fn replicated(max_lag_ms: u64) -> (ReplicatedPostgres, TestApp) {
    let pg = tokio::task::spawn_blocking(ReplicatedPostgres::start)
        .await
        .expect("primary and replica");
    let db = TestDatabase {
        url: pg.primary_url(),
        schema: None,
    };
    let replica = pg.replica_url();
    let app = spawn_app_with(db, |c| {
        c.database.replica_urls = vec![Secret::new(replica)];
        c.database.max_replica_lag_ms = max_lag_ms;
        c.database.replica_wait_ms = 50;
    })
    .await;
    (pg, app)
}

/// Creates a boardroom of `owner`; its id and the consistency token of the write.
async fn create(app: &TestApp, owner: &str) -> (String, String) {
    let response = app
        .client
        .clone()
        .create_boardroom(pb::CreateBoardroomRequest {
            owner_id: owner.into(),
            name: "Board".into(),
            advisors: vec![advisor("CFO")],
            request_id: String::new(),
            double_text: pb::DoubleTextPolicy::Unspecified as i32,
            ..Default::default()
        })
        .await
        .expect("create");
    let token = response
        .metadata()
        .get(HEADER)
        .expect("a write answers with its commit position")
        .to_str()
        .expect("ascii")
        .to_owned();
    assert!(Lsn::parse(&token).is_some(), "a WAL position: {token}");
    let id = response.into_inner().boardroom.expect("boardroom").id;
    (id, token)
}

/// The ids of `owner`'s boardrooms, read with `token` (or none).
async fn list(app: &TestApp, owner: &str, token: Option<&str>) -> Vec<String> {
    let mut request = tonic::Request::new(pb::ListBoardroomsRequest {
        owner_id: owner.into(),
        page_size: 50,
        page_token: String::new(),
    });
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert(HEADER, token.parse().expect("ascii"));
    }
    let response = app
        .client
        .clone()
        .list_boardrooms(request)
        .await
        .expect("list");
    response
        .into_inner()
        .boardrooms
        .into_iter()
        .map(|b| b.id)
        .collect()
}

async fn until(within: Duration, what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "{what} within {within:?}");
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_with_the_write_s_token_sees_it_while_a_read_without_gets_the_replica_s_view() {
    let (pg, app) = replicated(60_000).await;
    // The replica is followed and serves token-less lists once it has replayed the first write.
    let (warm, _) = create(&app, "warm").await;
    until(Duration::from_secs(10), "the replica serves", async || {
        list(&app, "warm", None).await.contains(&warm)
    })
    .await;

    tokio::task::block_in_place(|| pg.set_apply_delay(Duration::from_secs(3)));
    // The replica takes the new delay when its recovery loop next reads its configuration:
    // the first write after the reload may still replay at once. No token: the replica's
    // view, which (once the delay holds) replays commits 3 s late.
    let mut attempt = 0;
    let (id, token, written) = loop {
        let (id, token) = create(&app, "owner").await;
        let written = Instant::now();
        if !list(&app, "owner", None).await.contains(&id) {
            break (id, token, written);
        }
        attempt += 1;
        assert!(
            attempt < 20,
            "a token-less read never went to the (lagging) replica"
        );
    };
    // The write's token: served by a replica that has replayed it, else by the primary.
    assert!(
        list(&app, "owner", Some(&token)).await.contains(&id),
        "read-your-writes"
    );
    assert!(
        written.elapsed() < Duration::from_secs(3),
        "before the replica caught up"
    );
    let metrics = scrape_metrics(app.admin).await;
    assert!(
        metric_value(&metrics, &["db_client_reads_total", "target=\"primary\""]) >= 1.0,
        "{metrics}"
    );
    assert!(metric_value(&metrics, &["db_client_reads_total", "target=\"replica\""]) >= 1.0);
    // Once replayed, the replica's view has it too.
    until(
        Duration::from_secs(10),
        "the replica replays the write",
        async || list(&app, "owner", None).await.contains(&id),
    )
    .await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_lagging_past_the_bound_or_down_is_skipped() {
    let (mut pg, app) = replicated(300).await;
    let (warm, _) = create(&app, "warm").await;
    until(Duration::from_secs(10), "the replica serves", async || {
        list(&app, "warm", None).await.contains(&warm)
    })
    .await;

    tokio::task::block_in_place(|| pg.set_apply_delay(Duration::from_secs(2)));
    let (id, _) = create(&app, "owner").await;
    let written = Instant::now();
    // 2 s behind, past the 300 ms bound: token-less reads go to the primary, well before the
    // replica has replayed the write.
    until(
        Duration::from_secs(1),
        "the lagging replica is skipped",
        async || list(&app, "owner", None).await.contains(&id),
    )
    .await;
    assert!(written.elapsed() < Duration::from_secs(2));
    let metrics = scrape_metrics(app.admin).await;
    let port = format!(":{}", pg.replica_port());
    assert!(
        metric_value(&metrics, &["db_replica_lag_seconds", &port]) > 0.3,
        "the lag is published: {}",
        metrics
            .lines()
            .filter(|l| l.contains("db_replica"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // Down: every read still answers (from the primary), and the replica is reported down.
    tokio::task::block_in_place(|| pg.set_apply_delay(Duration::ZERO));
    tokio::task::block_in_place(|| pg.stop_replica());
    let (after, _) = create(&app, "owner").await;
    let ids = list(&app, "owner", None).await;
    assert!(ids.contains(&id) && ids.contains(&after));
    until(
        Duration::from_secs(5),
        "the replica reported down",
        async || {
            let metrics = scrape_metrics(app.admin).await;
            metric_value(&metrics, &["db_replica_up", &port]) == 0.0
                && metrics.contains("db_replica_up")
        },
    )
    .await;
    // Back: followed again.
    tokio::task::block_in_place(|| pg.start_replica());
    until(
        Duration::from_secs(10),
        "the replica reported up",
        async || metric_value(&scrape_metrics(app.admin).await, &["db_replica_up", &port]) == 1.0,
    )
    .await;
    app.stop().await;
}
