use std::time::{Duration, Instant};

use boardroom_proto::session::v1 as pb;
use boardroom_proto::session::v1::session_service_client::SessionServiceClient;
use boardroom_runtime::config::Secret;
use boardroom_testkit::{FlakyProxy, TestDatabase, channel, metric_value, scrape_metrics};
use sea_orm::{
    ConnectionTrait, Database, DatabaseTransaction, DbBackend, Statement, TransactionTrait,
};
use tonic::Code;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};

use crate::helpers::{Backend, spawn_app, spawn_app_with};

/// Holds an exclusive lock on `sessions` in another connection, so that the next query on it
/// waits; returns once `waiters` queries are blocked behind it.
struct TableLock {
    txn: DatabaseTransaction,
    pid: i32,
    admin: sea_orm::DatabaseConnection,
}

impl TableLock {
    async fn take(db: &TestDatabase) -> Self {
        let conn = Database::connect(db.url.as_str()).await.expect("connect");
        let txn = conn.begin().await.expect("begin");
        txn.execute_unprepared("LOCK TABLE sessions IN ACCESS EXCLUSIVE MODE")
            .await
            .expect("lock");
        let row = txn
            .query_one_raw(Statement::from_string(
                DbBackend::Postgres,
                "SELECT pg_backend_pid() AS pid",
            ))
            .await
            .expect("pid")
            .expect("row");
        let pid: i32 = row.try_get("", "pid").expect("pid");
        let admin = Database::connect(db.url.as_str()).await.expect("connect");
        Self { txn, pid, admin }
    }

    /// Waits (polling with a deadline) until `n` backends are blocked by this lock.
    async fn wait_for_waiters(&self, n: i64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let row = self
                .admin
                .query_one_raw(Statement::from_string(
                    DbBackend::Postgres,
                    format!("SELECT count(*) AS n FROM pg_stat_activity WHERE {} = ANY(pg_blocking_pids(pid))", self.pid),
                ))
                .await
                .expect("pg_stat_activity")
                .expect("row");
            if row.try_get::<i64>("", "n").expect("n") >= n {
                return;
            }
            assert!(Instant::now() < deadline, "no query blocked on the lock");
            tokio::task::yield_now().await;
        }
    }

    async fn release(self) {
        self.txn.commit().await.expect("unlock");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_down_is_unavailable_and_recovers() {
    let db = TestDatabase::postgres().await;
    // Migrate directly, then point the service at a proxy we can cut.
    let target = db.server_addr().expect("postgres address");
    let proxy = FlakyProxy::start(target).await;
    let mut app = spawn_app_with(db.via(proxy.addr()), |c| {
        c.database.acquire_timeout_ms = 500
    })
    .await;
    let board = app.boardroom("o").await;
    app.client
        .get_boardroom(pb::GetBoardroomRequest {
            id: board.id.clone(),
        })
        .await
        .expect("warms the cache");

    proxy.take_down();
    let err = app
        .client
        .get_session(pb::GetSessionRequest {
            id: uuid::Uuid::now_v7().to_string(),
        })
        .await
        .expect_err("db down");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert_eq!(boardroom_testkit::retry_after(&err), Some("1"));
    let err = app
        .client
        .create_session(pb::CreateSessionRequest {
            boardroom_id: uuid::Uuid::now_v7().to_string(),
            user_id: "u".into(),
            title: String::new(),
            request_id: String::new(),
        })
        .await
        .expect_err("db down");
    assert_eq!(err.code(), Code::Unavailable);
    // Cached reads keep working while the database is away.
    let cached = app
        .client
        .get_boardroom(pb::GetBoardroomRequest {
            id: board.id.clone(),
        })
        .await
        .expect("served from cache");
    assert_eq!(
        cached.into_inner().boardroom.expect("boardroom").id,
        board.id
    );

    proxy.bring_up();
    let session = app.session(&board.id, "u").await;
    assert!(session.active);
    proxy.stop();
    app.stop().await;
}

/// The pool does not ping a connection on every checkout (a round trip per query), yet a
/// database that dropped every connection costs one call, not one per pooled connection: the
/// first broken connection makes the pool ping every checkout for a while, which finds the
/// other dead ones before a call uses them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_the_database_dropped_cost_one_call_not_one_each() {
    let db = TestDatabase::postgres().await;
    let target = db.server_addr().expect("postgres address");
    let proxy = FlakyProxy::start(target).await;
    let app = spawn_app_with(db.via(proxy.addr()), |c| {
        c.database.min_connections = 4;
        c.database.max_connections = 4;
        // Never idle long enough to be pinged for that.
        c.database.ping_idle_after_ms = 600_000;
    })
    .await;
    // Every pooled connection open and idle (the pool's gauges, reported each second).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let metrics = scrape_metrics(app.admin).await;
        if metric_value(
            &metrics,
            &["db_client_connections_usage{", "state=\"idle\""],
        ) >= 4.0
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the pool never held 4 idle connections"
        );
        tokio::task::yield_now().await;
    }
    // The database drops every connection and is back at once: nothing noticed meanwhile.
    proxy.take_down();
    proxy.bring_up();
    let mut failed = 0;
    for _ in 0..8 {
        match app
            .client
            .clone()
            .get_session(pb::GetSessionRequest {
                id: uuid::Uuid::now_v7().to_string(),
            })
            .await
        {
            Err(err) if err.code() == Code::NotFound => {}
            Err(err) => {
                assert_eq!(err.code(), Code::Unavailable, "{err:?}");
                failed += 1;
            }
            Ok(found) => panic!("{found:?}"),
        }
    }
    assert!(
        failed <= 1,
        "{failed} calls failed on dead pooled connections"
    );
    proxy.stop();
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_a_call_in_flight() {
    let mut app = spawn_app(Backend::Postgres).await;
    let health_channel = channel(app.addr).await;
    let board = app.boardroom("o").await;
    let session = app.session(&board.id, "u").await;

    let lock = TableLock::take(&app.db).await;
    let mut client = app.client.clone();
    // Not cached yet by this id: EndSession must reach the locked table.
    let in_flight = tokio::spawn(async move {
        client
            .end_session(pb::EndSessionRequest { id: session.id })
            .await
    });
    lock.wait_for_waiters(1).await;

    app.shutdown.cancel();
    // Health turns NOT_SERVING before the drain; poll the existing connection for it.
    let mut health = HealthClient::new(health_channel);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match health
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
        {
            Ok(r) if r.get_ref().status() == ServingStatus::NotServing => break,
            Err(_) => break, // the listener already closed: also past the health flip
            Ok(_) => {}
        }
        assert!(Instant::now() < deadline, "health never left SERVING");
        tokio::task::yield_now().await;
    }
    assert!(
        !app.task.is_finished(),
        "the server must wait for the call in flight"
    );
    lock.release().await;
    let ended = in_flight
        .await
        .expect("joined")
        .expect("the in-flight call completes")
        .into_inner();
    assert!(!ended.session.expect("session").active);
    app.task.await.expect("joined").expect("clean shutdown");
    // And nothing listens any more.
    let refused = tonic::transport::Endpoint::from_shared(format!("http://{}", app.addr))
        .expect("uri")
        .connect()
        .await;
    assert!(refused.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_beyond_the_queue_is_shed() {
    let db = TestDatabase::postgres().await;
    let mut app = spawn_app_with(db, |c| {
        c.server.concurrency_limit = 1;
        c.server.max_pending = 0;
    })
    .await;
    let board = app.boardroom("o").await;
    let session = app.session(&board.id, "u").await;
    let lock = TableLock::take(&app.db).await;
    let mut client = app.client.clone();
    let holder = tokio::spawn(async move {
        client
            .end_session(pb::EndSessionRequest { id: session.id })
            .await
    });
    lock.wait_for_waiters(1).await;
    let shed = app
        .client
        .get_boardroom(pb::GetBoardroomRequest {
            id: board.id.clone(),
        })
        .await
        .expect_err("shed");
    assert_eq!(shed.code(), Code::Unavailable);
    assert!(shed.metadata().get("retry-after").is_some());
    lock.release().await;
    holder.await.expect("joined").expect("completes");
    app.client
        .get_boardroom(pb::GetBoardroomRequest { id: board.id })
        .await
        .expect("admitted again");
    let metrics = scrape_metrics(app.admin).await;
    assert!(metric_value(&metrics, &["rpc_server_shed_total"]) >= 1.0);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_need_a_known_token_but_probes_do_not() {
    let db = TestDatabase::sqlite();
    let app = spawn_app_with(db, |c| {
        c.auth.enabled = true;
        c.auth
            .tokens
            .insert("conversation".into(), Secret::new("s3cret-token"));
    })
    .await;
    let mut anonymous = app.client.clone();
    let request = || pb::GetBoardroomRequest {
        id: uuid::Uuid::now_v7().to_string(),
    };
    let err = anonymous
        .get_boardroom(request())
        .await
        .expect_err("no token");
    assert_eq!(err.code(), Code::Unauthenticated);

    let ch = channel(app.addr).await;
    let with_token = |token: &'static str| {
        move |mut req: tonic::Request<()>| {
            req.metadata_mut().insert(
                "authorization",
                format!("Bearer {token}").parse().expect("ascii"),
            );
            Ok(req)
        }
    };
    let mut wrong = SessionServiceClient::with_interceptor(ch.clone(), with_token("s3cret-tokeX"));
    assert_eq!(
        wrong
            .get_boardroom(request())
            .await
            .expect_err("wrong")
            .code(),
        Code::Unauthenticated
    );
    let mut right = SessionServiceClient::with_interceptor(ch.clone(), with_token("s3cret-token"));
    assert_eq!(
        right
            .get_boardroom(request())
            .await
            .expect_err("authenticated, then not found")
            .code(),
        Code::NotFound
    );

    let mut health = HealthClient::new(ch);
    let status = health
        .check(HealthCheckRequest {
            service: "boardroom.session.v1.SessionService".into(),
        })
        .await
        .expect("probe");
    assert_eq!(status.into_inner().status(), ServingStatus::Serving);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_calls_by_code_and_queries_by_name() {
    let mut app = spawn_app(Backend::Sqlite).await;
    let board = app.boardroom("o").await;
    for _ in 0..2 {
        app.client
            .get_boardroom(pb::GetBoardroomRequest {
                id: board.id.clone(),
            })
            .await
            .expect("get");
    }
    app.client
        .get_boardroom(pb::GetBoardroomRequest { id: "bad".into() })
        .await
        .expect_err("invalid");
    let text = scrape_metrics(app.admin).await;
    let calls = |code: &str| {
        metric_value(
            &text,
            &[
                "rpc_server_requests_total{",
                "rpc_method=\"GetBoardroom\"",
                &format!("rpc_grpc_status_code=\"{code}\""),
            ],
        )
    };
    assert_eq!(calls("0"), 2.0);
    assert_eq!(calls("3"), 1.0);
    assert!(text.contains("rpc_server_call_duration_seconds_bucket"));
    assert!(
        metric_value(
            &text,
            &[
                "db_client_operation_duration_seconds_count",
                "db_operation_name=\"boardroom.insert\""
            ]
        ) >= 1.0
    );
    assert!(
        metric_value(&text, &["cache_requests_total", "result=\"hit\""]) >= 1.0,
        "the second get is a cache hit"
    );
    assert!(
        text.contains("cache_l1_bytes{cache=\"session\"}"),
        "L1 size is reported"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_messages_are_refused() {
    let mut app = spawn_app_with(TestDatabase::sqlite(), |c| {
        c.server.max_message_bytes = 2048
    })
    .await;
    let err = app
        .client
        .create_boardroom(pb::CreateBoardroomRequest {
            owner_id: "o".into(),
            name: "n".into(),
            advisors: vec![pb::Advisor {
                name: "A".into(),
                role: String::new(),
                system_prompt: "x".repeat(4096),
                model: "m".into(),
            }],
            request_id: String::new(),
            double_text: pb::DoubleTextPolicy::Unspecified as i32,
            ..Default::default()
        })
        .await
        .expect_err("too large");
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    app.boardroom("o").await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_client_channels_balance_over_replicas_and_present_their_token() {
    use boardroom_runtime::client::{ChannelFactory, OutboundInterceptor};
    use boardroom_runtime::config::ClientConfig;

    let secure = |c: &mut boardroom_runtime::Config| {
        c.auth.enabled = true;
        c.auth
            .tokens
            .insert("conversation".into(), Secret::new("tok-conv"));
    };
    // Two replicas with a database each, so where a write landed tells which replica served it.
    let mut first = spawn_app_with(TestDatabase::sqlite(), secure).await;
    let mut second = spawn_app_with(TestDatabase::sqlite(), secure).await;
    let factory = ChannelFactory::new(ClientConfig::default());
    let balanced = factory
        .channel(&[
            format!("http://{}", first.addr),
            format!("http://{}", second.addr),
        ])
        .expect("channel");
    let token = OutboundInterceptor::new(&Secret::new("tok-conv")).expect("interceptor");
    let mut client = SessionServiceClient::with_interceptor(balanced, token.clone());
    for i in 0..40 {
        client
            .create_boardroom(pb::CreateBoardroomRequest {
                owner_id: "balanced".into(),
                name: format!("b{i}"),
                advisors: vec![crate::helpers::advisor("CFO")],
                request_id: String::new(),
                double_text: pb::DoubleTextPolicy::Unspecified as i32,
                ..Default::default()
            })
            .await
            .expect("authenticated call through the balanced channel");
    }
    let mut landed = Vec::new();
    for app in [&mut first, &mut second] {
        let mut direct =
            SessionServiceClient::with_interceptor(channel(app.addr).await, token.clone());
        let listed = direct
            .list_boardrooms(pb::ListBoardroomsRequest {
                owner_id: "balanced".into(),
                page_size: 100,
                page_token: String::new(),
            })
            .await
            .expect("list");
        landed.push(listed.into_inner().boardrooms.len());
    }
    assert_eq!(landed.iter().sum::<usize>(), 40);
    assert!(
        landed.iter().all(|n| *n > 0),
        "both replicas served calls: {landed:?}"
    );
    first.stop().await;
    second.stop().await;
}
