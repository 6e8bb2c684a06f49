//! Every migration goes up, down and up again on PostgreSQL and SQLite, and the indexes the
//! list queries rely on exist afterwards.

use boardroom_migrations::{Migrator, MigratorTrait};
use boardroom_testkit::TestDatabase;
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement};

async fn index_names(conn: &DatabaseConnection) -> Vec<String> {
    let sql = match conn.get_database_backend() {
        DbBackend::Postgres => {
            "SELECT indexname AS name FROM pg_indexes WHERE schemaname = current_schema() ORDER BY 1"
        }
        _ => {
            "SELECT name FROM sqlite_master WHERE type = 'index' AND name NOT LIKE 'sqlite_%' ORDER BY 1"
        }
    };
    conn.query_all_raw(Statement::from_string(conn.get_database_backend(), sql))
        .await
        .expect("listing indexes")
        .iter()
        .map(|row| row.try_get::<String>("", "name").expect("name column"))
        .collect()
}

async fn up_down_up(db: TestDatabase) {
    let conn = Database::connect(db.url.as_str()).await.expect("connect");
    Migrator::up(&conn, None).await.expect("first up");
    let after_up = index_names(&conn).await;
    for expected in [
        "ix_sessions_user_created",
        "ix_sessions_user_active",
        "ix_threads_session_open",
        "uq_sessions_user_request",
    ] {
        assert!(
            after_up.iter().any(|n| n == expected),
            "{expected} missing from {after_up:?}"
        );
    }
    Migrator::down(&conn, None).await.expect("down");
    let after_down = index_names(&conn).await;
    assert!(
        after_down
            .iter()
            .all(|n| !n.starts_with("ix_") && !n.starts_with("uq_")),
        "left behind: {after_down:?}"
    );
    assert!(
        Migrator::get_pending_migrations(&conn)
            .await
            .expect("pending")
            .len()
            == Migrator::migrations().len()
    );
    Migrator::up(&conn, None).await.expect("second up");
    assert_eq!(index_names(&conn).await, after_up);
    // Running again is a no-op.
    Migrator::up(&conn, None).await.expect("idempotent up");
}

#[tokio::test(flavor = "multi_thread")]
async fn up_down_up_on_postgres() {
    up_down_up(TestDatabase::postgres().await).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn up_down_up_on_sqlite() {
    up_down_up(TestDatabase::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn covering_index_is_rendered_with_include_and_where_on_postgres() {
    let db = TestDatabase::postgres().await;
    let conn = Database::connect(db.url.as_str()).await.expect("connect");
    Migrator::up(&conn, None).await.expect("up");
    let row = conn
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT indexdef FROM pg_indexes WHERE schemaname = current_schema() AND indexname = 'ix_sessions_user_active'",
        ))
        .await
        .expect("query")
        .expect("index exists");
    let def: String = row.try_get("", "indexdef").expect("indexdef");
    assert!(
        def.contains("INCLUDE (boardroom_id, title, is_active, ended_at)"),
        "{def}"
    );
    assert!(def.contains("WHERE (is_active = true)"), "{def}");
}
