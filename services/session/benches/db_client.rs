//! Where a list query's time goes on the client side, in one run against the seeded bench
//! database: the store (what the RPC runs), the same statement through sea-orm, and the same
//! SQL through sqlx directly; 64 concurrent callers on 2 runtime threads for 5 s each.
//!
//! Run after `list_queries` has seeded `boardroom_bench`:
//! `cargo bench -p boardroom-session --bench db_client`.

// A benchmark owns the tasks it spawns: they end with its runtime.
#![allow(clippy::disallowed_methods)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use boardroom_runtime::config::{DatabaseConfig, Secret};
use boardroom_runtime::db::Database;
use boardroom_session::SessionStore;
use boardroom_session::domain::PageRequest;
use boardroom_session::entity::session;
use boardroom_session::queries;
use boardroom_session::validate::Limits;
use sea_orm::sqlx;

const CALLERS: usize = 64;
const RUN: Duration = Duration::from_secs(5);
const SQL: &str = "SELECT id, boardroom_id, user_id, title, is_active, created_at, ended_at FROM sessions \
                   WHERE user_id = $1 ORDER BY created_at DESC, id DESC LIMIT 21";

type Row = (
    uuid::Uuid,
    uuid::Uuid,
    String,
    String,
    bool,
    chrono::DateTime<chrono::Utc>,
    Option<chrono::DateTime<chrono::Utc>>,
);

async fn rate<F, Fut>(name: &str, call: F)
where
    F: Fn(String) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
    let call = Arc::new(call);
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + RUN;
    let tasks: Vec<_> = (0..CALLERS)
        .map(|worker| {
            let (call, done) = (call.clone(), done.clone());
            tokio::spawn(async move {
                let mut n = worker as u64;
                while Instant::now() < deadline {
                    call(format!("user-{}", n % 9999)).await;
                    n += 7;
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("caller");
    }
    println!(
        "| {name} | {:.0} |",
        done.load(Ordering::Relaxed) as f64 / RUN.as_secs_f64()
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let (admin_url, _) = boardroom_testkit::postgres_admin_url().await;
    let url = format!(
        "{}/boardroom_bench",
        admin_url.rsplit_once('/').expect("url").0
    );
    let config = DatabaseConfig {
        url: Secret::new(url.clone()),
        max_connections: 16,
        ..DatabaseConfig::default()
    };
    let db = Database::connect(&config).await.expect("connect");
    let store = SessionStore::new(db.clone(), None, Limits { max_advisors: 16 });
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(16)
        .connect(&url)
        .await
        .expect("sqlx pool");

    println!("| path (ListSessions page of 20, {CALLERS} callers) | queries/s |");
    println!("|---|---|");
    rate(
        "SessionStore::list_sessions (what the RPC runs)",
        move |user| {
            let store = store.clone();
            async move {
                store
                    .list_sessions(
                        &user,
                        false,
                        PageRequest {
                            size: 20,
                            token: None,
                        },
                    )
                    .await
                    .expect("list");
            }
        },
    )
    .await;
    let conn = db.conn().clone();
    rate("sea-orm select (same statement)", move |user| {
        let conn = conn.clone();
        async move {
            queries::sessions_by_user(&user, false, None, 21)
                .into_model::<session::Row>()
                .all(&conn)
                .await
                .expect("list");
        }
    })
    .await;
    rate("sqlx query_as (same SQL)", move |user| {
        let pool = pool.clone();
        async move {
            sqlx::query_as::<_, Row>(SQL)
                .bind(user)
                .fetch_all(&pool)
                .await
                .expect("list");
        }
    })
    .await;
}
