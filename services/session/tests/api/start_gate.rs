//! The start gate on CreateSession and CreateThread: past its rate a call is refused at once
//! (UNAVAILABLE with `retry-after`), after its validation and before it writes anything.

use std::time::Duration;

use boardroom_proto::session::v1 as pb;
use boardroom_proto::session::v1::session_service_server::SessionService;
use boardroom_runtime::admission::{RateGate, WorkAdmission};
use boardroom_runtime::db::Database;
use boardroom_session::grpc::SessionGrpc;
use boardroom_session::store::SessionStore;
use boardroom_session::validate::Limits;
use boardroom_testkit::{TestDatabase, test_config};
use tonic::{Code, Request};

use crate::helpers::advisor;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_past_the_start_gates_rate_are_refused_with_retry_after_and_write_nothing() {
    let db = TestDatabase::sqlite();
    let config = test_config(&db);
    let database = Database::connect(&config.database)
        .await
        .expect("connected");
    boardroom_migrations::up(database.conn())
        .await
        .expect("migrated");
    let store = SessionStore::new(database, None, Limits { max_advisors: 16 });
    // One start an hour, never adjusted (no target): the second start is past the rate.
    let gate = RateGate::start(
        "test_starts",
        WorkAdmission {
            target: Duration::ZERO,
            interval: Duration::from_secs(3600),
            min: 1,
            max: 1,
        },
        tokio_util::sync::CancellationToken::new(),
    );
    let grpc = SessionGrpc::new(store, 50, 1000).with_start_gate(gate);
    // Not a start: boardrooms are not gated.
    let board = grpc
        .create_boardroom(Request::new(pb::CreateBoardroomRequest {
            owner_id: "owner".into(),
            name: "Board".into(),
            advisors: vec![advisor("CFO")],
            ..Default::default()
        }))
        .await
        .expect("boardroom")
        .into_inner()
        .boardroom
        .expect("boardroom");
    let start = |title: &str| {
        Request::new(pb::CreateSessionRequest {
            boardroom_id: board.id.clone(),
            user_id: "u".into(),
            title: title.into(),
            request_id: String::new(),
        })
    };
    // Bad input is named as such, not refused, and does not use the rate.
    let bad = grpc
        .create_session(start(&"t".repeat(201)))
        .await
        .expect_err("invalid");
    assert_eq!(bad.code(), Code::InvalidArgument, "{bad:?}");
    let first = grpc
        .create_session(start("first"))
        .await
        .expect("admitted")
        .into_inner()
        .session
        .expect("session");
    let refused = grpc
        .create_session(start("second"))
        .await
        .expect_err("past the rate");
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert_eq!(
        boardroom_testkit::retry_after(&refused),
        Some("1"),
        "{refused:?}"
    );
    // CreateThread is a start too.
    let thread = grpc
        .create_thread(Request::new(pb::CreateThreadRequest {
            session_id: first.id.clone(),
            thread_type: pb::ThreadType::Main.into(),
            title: "pricing".into(),
            request_id: String::new(),
        }))
        .await
        .expect_err("past the rate");
    assert_eq!(thread.code(), Code::Unavailable, "{thread:?}");
    // Nothing of the refused calls was written.
    let sessions = grpc
        .list_sessions(Request::new(pb::ListSessionsRequest {
            user_id: "u".into(),
            ..Default::default()
        }))
        .await
        .expect("listed")
        .into_inner()
        .sessions;
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    let threads = grpc
        .list_threads(Request::new(pb::ListThreadsRequest {
            session_id: first.id,
            ..Default::default()
        }))
        .await
        .expect("listed")
        .into_inner()
        .threads;
    assert!(threads.is_empty(), "{threads:?}");
}
