//! Every list query is served by the index built for it: the keyset predicate is an index
//! condition (flat cost at any depth), the order comes from the index (no Sort), and the
//! covering indexes give index-only scans. Checked on PostgreSQL with sequential scans off, so
//! that the tiny test tables cannot hide a query shape that no index fits.

use boardroom_session::domain::{ThreadFilter, ThreadStatus, ThreadType};
use boardroom_session::page::Cursor;
use boardroom_session::queries;
use sea_orm::{ConnectionTrait, Database, DbBackend, QueryTrait, Statement, TransactionTrait};

use crate::helpers::{Backend, spawn_app};
use boardroom_proto::session::v1 as pb;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_queries_use_their_indexes() {
    let mut app = spawn_app(Backend::Postgres).await;
    let board = app.boardroom("owner").await;
    let session = app.session(&board.id, "user").await;
    app.thread(&session.id, pb::ThreadType::Main).await;
    let conn = Database::connect(app.db.url.as_str())
        .await
        .expect("connect");
    conn.execute_unprepared("VACUUM ANALYZE")
        .await
        .expect("vacuum");

    let cursor = Some(Cursor {
        created_at: chrono::Utc::now(),
        id: uuid::Uuid::now_v7(),
    });
    let board_id: uuid::Uuid = board.id.parse().expect("uuid");
    let session_id: uuid::Uuid = session.id.parse().expect("uuid");
    let filter = |thread_type, status| ThreadFilter {
        session_id,
        thread_type,
        status,
    };
    let cases: Vec<(&str, sea_orm::Statement, &str, bool)> = vec![
        (
            "ListBoardrooms",
            queries::boardrooms_by_owner("owner", cursor, 51).build(DbBackend::Postgres),
            "ix_boardrooms_owner_created",
            false,
        ),
        (
            "ListSessions",
            queries::sessions_by_user("user", false, cursor, 51).build(DbBackend::Postgres),
            "ix_sessions_user_created",
            true,
        ),
        (
            "ListSessions active",
            queries::sessions_by_user("user", true, cursor, 51).build(DbBackend::Postgres),
            "ix_sessions_user_active",
            true,
        ),
        (
            "ListActiveSessions",
            queries::active_sessions_by_boardroom(board_id, cursor, 51).build(DbBackend::Postgres),
            "ix_sessions_boardroom_active_created",
            true,
        ),
        (
            "ListThreads",
            queries::threads_by_session(&filter(None, None), cursor, Some(51))
                .build(DbBackend::Postgres),
            "ix_threads_session_created",
            true,
        ),
        (
            "ListThreads open",
            queries::threads_by_session(&filter(None, Some(ThreadStatus::Open)), cursor, Some(51))
                .build(DbBackend::Postgres),
            "ix_threads_session_open",
            true,
        ),
        (
            "ListThreads type+status",
            queries::threads_by_session(
                &filter(Some(ThreadType::Main), Some(ThreadStatus::Paused)),
                cursor,
                Some(51),
            )
            .build(DbBackend::Postgres),
            "ix_threads_session_type_status",
            true,
        ),
        (
            "GetSessionTree",
            queries::threads_by_session(&filter(None, None), None, None).build(DbBackend::Postgres),
            "ix_threads_session_created",
            true,
        ),
    ];
    for (name, statement, index, index_only) in cases {
        let txn = conn.begin().await.expect("begin");
        txn.execute_unprepared("SET LOCAL enable_seqscan = off; SET LOCAL enable_bitmapscan = off")
            .await
            .expect("set");
        let explain = Statement::from_sql_and_values(
            DbBackend::Postgres,
            format!("EXPLAIN {}", statement.sql),
            statement.values.clone().map(|v| v.0).unwrap_or_default(),
        );
        let rows = txn.query_all_raw(explain).await.expect("explain");
        let plan: Vec<String> = rows
            .iter()
            .map(|r| r.try_get::<String>("", "QUERY PLAN").expect("plan line"))
            .collect();
        let plan = plan.join("\n");
        txn.rollback().await.expect("rollback");
        assert!(plan.contains(index), "{name}: expected {index}\n{plan}");
        assert!(
            !plan.contains("Sort"),
            "{name}: the index must give the order\n{plan}"
        );
        if index_only {
            assert!(
                plan.contains("Index Only Scan"),
                "{name}: expected an index-only scan\n{plan}"
            );
        }
        if name != "GetSessionTree" {
            assert!(
                plan.contains("Index Cond") && plan.contains("ROW(created_at, id)"),
                "{name}: keyset must be an index condition\n{plan}"
            );
        }
    }
    app.stop().await;
}
