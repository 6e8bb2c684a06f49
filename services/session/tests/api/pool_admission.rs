//! Admission by the database pool's queueing delay: while the pool has a standing queue, a
//! call whose first query waits past the target is refused at once; calls that have their
//! connection, and work outside calls, keep their place.

use std::time::Duration;

use boardroom_proto::session::v1 as pb;
use boardroom_proto::session::v1::session_service_client::SessionServiceClient;
use boardroom_runtime::db::Database;
use boardroom_testkit::{TestDatabase, channel, test_config};
use sea_orm::DbErr;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tonic::Code;

/// Takes one of the pool's permits (through the service's own pool) until `release` fires;
/// `began` fires once it holds it.
fn hold(
    db: &Database,
    began: oneshot::Sender<()>,
    release: oneshot::Receiver<()>,
) -> tokio::task::JoinHandle<Result<(), DbErr>> {
    let db = db.clone();
    tokio::spawn(async move {
        db.timed("test.hold", async {
            let _ = began.send(());
            let _ = release.await;
            Ok(())
        })
        .await
    })
}

/// Polls until `n` queries wait at the pool (a condition, with a deadline).
async fn until_waiting(db: &Database, n: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while db.gate().waiting() != n {
        assert!(
            std::time::Instant::now() < deadline,
            "{} queries wait at the pool, not {n}",
            db.gate().waiting()
        );
        tokio::task::yield_now().await;
    }
}

fn list(user: &str) -> pb::ListSessionsRequest {
    pb::ListSessionsRequest {
        user_id: user.into(),
        active_only: false,
        page_size: 10,
        page_token: String::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standing_pool_queue_refuses_a_call_s_first_query_and_spares_admitted_work() {
    let test_db = TestDatabase::postgres().await;
    let mut config = test_config(&test_db);
    // One connection; a query that waited over 1 ms for it, judged every 1 ms, is a standing
    // queue. A call that did wait may wait long (no pool timeout in this test's way).
    config.database.max_connections = 1;
    config.database.admission_target_ms = 1;
    config.database.admission_interval_ms = 1;
    config.database.acquire_timeout_ms = 30_000;
    let db = Database::connect(&config.database)
        .await
        .expect("connecting")
        .named("session");
    boardroom_migrations::up(db.conn()).await.expect("migrated");
    let app = boardroom_session::Application::with_database(&config, db.clone())
        .await
        .expect("building the session service");
    let addr = app.local_addr().expect("bound");
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(app.run_until_stopped(shutdown.clone()));
    let client = SessionServiceClient::new(channel(addr).await);
    client
        .clone()
        .list_sessions(list("u"))
        .await
        .expect("an idle pool admits");

    // The connection is taken. A call arrives while the pool is not overloaded: its query
    // queues for the connection. Work outside any call (a second holder) queues behind it.
    let (began, held) = oneshot::channel();
    let (release_first, released) = oneshot::channel();
    let first = hold(&db, began, released);
    held.await.expect("holding the pool");
    let waiting_call = tokio::spawn({
        let mut client = client.clone();
        async move { client.list_sessions(list("u")).await }
    });
    until_waiting(&db, 1).await;
    let (began, second_held) = oneshot::channel();
    let (release_second, released) = oneshot::channel();
    let second = hold(&db, began, released);
    until_waiting(&db, 2).await;
    // The queue stands for 20 ms: the delay under test, not a synchronisation.
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!db.gate().overloaded(), "nobody was admitted late yet");
    release_first.send(()).expect("first holder waits");
    first.await.expect("joined").expect("held");
    // The call that was queued gets the connection after its wait and answers; then the
    // second holder. Both waited past the target: the pool is overloaded.
    waiting_call
        .await
        .expect("joined")
        .expect("a call already queued keeps its place");
    second_held.await.expect("the second holder has the pool");
    assert!(db.gate().overloaded());

    // A new call's first query waits past the target: refused at once.
    let refused = client
        .clone()
        .list_sessions(list("u"))
        .await
        .expect_err("refused while the pool's queue stands");
    assert_eq!(refused.code(), Code::Unavailable);
    assert!(
        refused.message().contains("queue for the database"),
        "{}",
        refused.message()
    );
    assert_eq!(boardroom_testkit::retry_after(&refused), Some("1"));
    assert_eq!(db.gate().waiting(), 0, "the refused call left the queue");
    // Work outside a call is not refused: it waits for the connection.
    let (began, third_held) = oneshot::channel();
    let (release_third, released) = oneshot::channel();
    let third = hold(&db, began, released);
    until_waiting(&db, 1).await;
    release_second.send(()).expect("second holder waits");
    second.await.expect("joined").expect("held");
    third_held
        .await
        .expect("the third holder has the pool after its wait");
    release_third.send(()).expect("third holder waits");
    third.await.expect("joined").expect("held");

    // A free connection: calls are admitted again (a query that need not wait is never
    // refused).
    client
        .clone()
        .list_sessions(list("u"))
        .await
        .expect("admitted once the queue drained");
    shutdown.cancel();
    task.await.expect("joined").expect("clean shutdown");
}
