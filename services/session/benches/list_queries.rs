//! List queries at production scale on PostgreSQL: 1M sessions for 10k users, 3M threads.
//!
//! Seeds a dedicated database (`boardroom_bench`; kept between runs, `BENCH_RESEED=1` seeds
//! anew), builds the indexes the production way (the migration, CONCURRENTLY, on full tables),
//! then for every list query prints its plan (`EXPLAIN (ANALYZE, BUFFERS)`), p50/p99 of page 1,
//! and page 1000 by keyset against the same depth by OFFSET, in the same run.
//!
//! Run: `cargo bench -p boardroom-session --bench list_queries` (PostgreSQL from DATABASE_URL,
//! else the local server, else one the test kit starts).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use boardroom_migrations::{Migrator, MigratorTrait};
use boardroom_session::domain::{ThreadFilter, ThreadStatus};
use boardroom_session::entity::{session, thread};
use boardroom_session::page::Cursor;
use boardroom_session::queries;
use hdrhistogram::Histogram;
use sea_orm::{
    ConnectionTrait, Database, DatabaseConnection, DbBackend, EntityTrait, FromQueryResult,
    QuerySelect, QueryTrait, Select, Statement,
};

const PAGE: u64 = 20;
const DEPTH_PAGES: u64 = 1000;
const RUNS: usize = 300;

async fn exec(conn: &DatabaseConnection, sql: &str) {
    conn.execute_unprepared(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// A UUIDv7 (time-ordered) for timestamp expression `ts`, in SQL (PostgreSQL 15 has no uuidv7()).
fn uuid7(ts: &str) -> String {
    format!(
        "(lpad(to_hex((extract(epoch from {ts}) * 1000)::bigint), 12, '0') || '7' || substr(md5(random()::text), 1, 3) || '8' || substr(md5(random()::text), 1, 15))::uuid"
    )
}

async fn seed(conn: &DatabaseConnection) {
    let started = Instant::now();
    Migrator::up(conn, Some(1)).await.expect("tables");
    // Boardrooms: 1000, owned by 100 owners.
    exec(conn, &format!(
        "INSERT INTO boardrooms (id, owner_id, name, advisors, version, request_id, created_at, updated_at)
         SELECT {id}, 'owner-' || (i % 100), 'Board ' || i,
                '[{{\"name\":\"CFO\",\"role\":\"cfo\",\"system_prompt\":\"Be brief.\",\"model\":\"mock\"}}]'::jsonb, 1, NULL, ts, ts
         FROM (SELECT i, now() - interval '400 days' + i * interval '1 minute' AS ts FROM generate_series(1, 1000) i) s",
        id = uuid7("ts")
    )).await;
    // Sessions: 1M for 10k users; user-hot holds 1 in 16 (62.5k) for the deep-page runs, all in
    // the first boardroom. 30 % are active.
    exec(conn, &format!(
        "INSERT INTO sessions (id, boardroom_id, user_id, title, is_active, request_id, created_at, ended_at)
         SELECT {id}, b.id,
                CASE WHEN i % 16 = 0 THEN 'user-hot' ELSE 'user-' || (i % 9999) END,
                'Session ' || i, (i % 10) < 3, NULL, ts, CASE WHEN (i % 10) < 3 THEN NULL ELSE ts + interval '1 hour' END
         FROM (SELECT i, now() - interval '365 days' + i * interval '30 seconds' AS ts FROM generate_series(1, 1000000) i) s
         JOIN (SELECT id, row_number() OVER (ORDER BY created_at) - 1 AS n FROM boardrooms) b
           ON b.n = CASE WHEN i % 16 = 0 THEN 0 ELSE i % 1000 END",
        id = uuid7("ts")
    )).await;
    let sessions_at = started.elapsed();
    // Threads: 3 per session (3M), and one hot session with 50k more.
    exec(conn, &format!(
        "INSERT INTO threads (id, session_id, thread_type, status, title, request_id, created_at, updated_at)
         SELECT {id}, s.id, (ARRAY['main','breakout','private'])[k],
                (ARRAY['open','open','open','open','open','paused','paused','closed','closed','closed'])[1 + (abs(hashtext(s.id::text)) + k) % 10],
                'Thread ' || k, NULL, ts, ts
         FROM (SELECT id, created_at FROM sessions) s CROSS JOIN generate_series(1, 3) k,
              LATERAL (SELECT s.created_at + k * interval '1 second' AS ts) t",
        id = uuid7("ts")
    )).await;
    exec(conn, &format!(
        "INSERT INTO threads (id, session_id, thread_type, status, title, request_id, created_at, updated_at)
         SELECT {id}, (SELECT id FROM sessions WHERE user_id = 'user-hot' ORDER BY created_at DESC LIMIT 1),
                'breakout', CASE WHEN k % 2 = 0 THEN 'open' ELSE 'closed' END, 'Hot ' || k, NULL, ts, ts
         FROM (SELECT k, now() - interval '30 days' + k * interval '10 seconds' AS ts FROM generate_series(1, 50000) k) t",
        id = uuid7("ts")
    )).await;
    let seeded = started.elapsed();
    let index_start = Instant::now();
    Migrator::up(conn, None).await.expect("indexes");
    let indexed = index_start.elapsed();
    exec(conn, "VACUUM ANALYZE").await;
    println!(
        "seeded 1,000 boardrooms + 1,000,000 sessions in {:.1} s, + 3,050,000 threads: {:.1} s total; \
         7 list indexes built CONCURRENTLY in {:.1} s; VACUUM ANALYZE done at {:.1} s",
        sessions_at.as_secs_f64(),
        seeded.as_secs_f64(),
        indexed.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}

fn statement(select: impl QueryTrait) -> Statement {
    select.build(DbBackend::Postgres)
}

async fn explain(conn: &DatabaseConnection, stmt: &Statement) -> String {
    let sql = format!("EXPLAIN (ANALYZE, BUFFERS) {}", stmt.sql);
    let values = stmt.values.clone().map(|v| v.0).unwrap_or_default();
    let rows = conn
        .query_all_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            sql,
            values,
        ))
        .await
        .expect("explain");
    rows.iter()
        .map(|r| r.try_get::<String>("", "QUERY PLAN").expect("plan"))
        .collect::<Vec<_>>()
        .join("\n")
}

async fn time<F, Fut>(mut run: F) -> (f64, f64)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
    for _ in 0..10 {
        run().await; // warm caches and the statement cache
    }
    for _ in 0..RUNS {
        let t = Instant::now();
        run().await;
        h.saturating_record(t.elapsed().as_micros().max(1) as u64);
    }
    (
        h.value_at_quantile(0.5) as f64 / 1e3,
        h.value_at_quantile(0.99) as f64 / 1e3,
    )
}

type SessionList = Box<dyn Fn(Option<Cursor>, u64) -> Select<session::Entity>>;
type ThreadList = Box<dyn Fn(Option<Cursor>, u64) -> Select<thread::Entity>>;

/// A listed row's position, as a page token would carry it.
trait Keyed {
    fn cursor(&self) -> Cursor;
}

impl Keyed for session::Row {
    fn cursor(&self) -> Cursor {
        Cursor {
            created_at: self.created_at,
            id: self.id,
        }
    }
}

impl Keyed for thread::Row {
    fn cursor(&self) -> Cursor {
        Cursor {
            created_at: self.created_at,
            id: self.id,
        }
    }
}

/// Page 1, page `DEPTH_PAGES` by keyset and the same depth by OFFSET, timed in turn; prints a
/// table row and keeps both deep plans.
async fn compare<E, R>(
    conn: &DatabaseConnection,
    name: &str,
    build: &dyn Fn(Option<Cursor>, u64) -> Select<E>,
    plans: &mut Vec<(String, String)>,
) where
    E: EntityTrait,
    R: FromQueryResult + Keyed + Send + Sync,
{
    let depth = PAGE * (DEPTH_PAGES - 1);
    let deep = build(None, PAGE)
        .offset(depth - 1)
        .limit(1)
        .into_model::<R>()
        .one(conn)
        .await
        .expect("q")
        .expect("deep row")
        .cursor();
    let page1 = time(|| async {
        build(None, PAGE + 1)
            .into_model::<R>()
            .all(conn)
            .await
            .expect("page 1");
    })
    .await;
    let keyset = time(|| async {
        build(Some(deep), PAGE + 1)
            .into_model::<R>()
            .all(conn)
            .await
            .expect("keyset");
    })
    .await;
    let offset = time(|| async {
        build(None, PAGE)
            .offset(depth)
            .into_model::<R>()
            .all(conn)
            .await
            .expect("offset");
    })
    .await;
    println!(
        "| {name} | {:.3} / {:.3} | {:.3} / {:.3} | {:.3} / {:.3} | {:.0}× |",
        page1.0,
        page1.1,
        keyset.0,
        keyset.1,
        offset.0,
        offset.1,
        offset.0 / keyset.0
    );
    plans.push((
        format!("{name}, page {DEPTH_PAGES} keyset"),
        explain(conn, &statement(build(Some(deep), PAGE + 1))).await,
    ));
    plans.push((
        format!("{name}, page {DEPTH_PAGES} OFFSET"),
        explain(conn, &statement(build(None, PAGE).offset(depth))).await,
    ));
}

fn plan_summary(plan: &str) -> String {
    plan.lines()
        .filter(|l| {
            l.contains("Scan")
                || l.contains("Sort")
                || l.contains("Buffers")
                || l.contains("Heap Fetches")
                || l.contains("Execution Time")
        })
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(" | ")
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let (admin_url, _) = boardroom_testkit::postgres_admin_url().await;
    let admin = Database::connect(admin_url.as_str())
        .await
        .expect("admin connection");
    let reseed = std::env::var("BENCH_RESEED").is_ok_and(|v| v == "1");
    let exists = admin
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT 1 FROM pg_database WHERE datname = 'boardroom_bench'",
        ))
        .await
        .expect("pg_database")
        .is_some();
    if reseed && exists {
        exec(&admin, "DROP DATABASE boardroom_bench WITH (FORCE)").await;
    }
    if reseed || !exists {
        exec(&admin, "CREATE DATABASE boardroom_bench").await;
    }
    let url = match admin_url.rsplit_once('/') {
        Some((base, _)) => format!("{base}/boardroom_bench"),
        None => panic!("unexpected admin URL {admin_url}"),
    };
    let conn = Database::connect(url.as_str())
        .await
        .expect("bench database");
    let seeded = conn
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT to_regclass('sessions') IS NOT NULL AS t",
        ))
        .await
        .expect("q")
        .and_then(|r| r.try_get::<bool>("", "t").ok())
        .unwrap_or(false);
    if !seeded {
        seed(&conn).await;
    } else {
        println!("reusing the seeded boardroom_bench database (BENCH_RESEED=1 to seed anew)");
    }

    let first_board = conn
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT id FROM boardrooms ORDER BY created_at LIMIT 1",
        ))
        .await
        .expect("q")
        .expect("row")
        .try_get::<uuid::Uuid>("", "id")
        .expect("id");
    let hot_session = conn
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT session_id FROM threads GROUP BY session_id ORDER BY count(*) DESC LIMIT 1",
        ))
        .await
        .expect("q")
        .expect("row")
        .try_get::<uuid::Uuid>("", "session_id")
        .expect("id");

    println!(
        "\n| list | page 1 p50 / p99 (ms) | page {DEPTH_PAGES} keyset p50 / p99 | page {DEPTH_PAGES} OFFSET p50 / p99 | OFFSET ÷ keyset (p50) |"
    );
    println!("|---|---|---|---|---|");
    let mut plans = Vec::new();

    let hot_threads = ThreadFilter {
        session_id: hot_session,
        thread_type: None,
        status: None,
    };
    let hot_open = ThreadFilter {
        status: Some(ThreadStatus::Open),
        ..hot_threads.clone()
    };
    let session_lists: Vec<(&str, SessionList)> = vec![
        (
            "ListSessions (user-hot, 62.5k rows)",
            Box::new(|c, l| queries::sessions_by_user("user-hot", false, c, l)),
        ),
        (
            "ListSessions active_only (user-hot)",
            Box::new(|c, l| queries::sessions_by_user("user-hot", true, c, l)),
        ),
        (
            "ListActiveSessions (hot boardroom)",
            Box::new(move |c, l| queries::active_sessions_by_boardroom(first_board, c, l)),
        ),
    ];
    for (name, build) in &session_lists {
        compare::<_, session::Row>(&conn, name, build, &mut plans).await;
    }
    let thread_lists: Vec<(&str, ThreadList)> = vec![
        (
            "ListThreads (hot session, 50k rows)",
            Box::new(move |c, l| queries::threads_by_session(&hot_threads, c, Some(l))),
        ),
        (
            "ListThreads status=open (hot session)",
            Box::new(move |c, l| queries::threads_by_session(&hot_open, c, Some(l))),
        ),
    ];
    for (name, build) in &thread_lists {
        compare::<_, thread::Row>(&conn, name, build, &mut plans).await;
    }

    // Typical users (about 94 sessions each) and the tree of a typical session.
    let typical = time(|| async {
        let user = format!("user-{}", fastrand_user());
        queries::sessions_by_user(&user, false, None, PAGE + 1)
            .into_model::<session::Row>()
            .all(&conn)
            .await
            .expect("typical");
    })
    .await;
    println!(
        "| ListSessions (random typical user, ~94 rows) | {:.3} / {:.3} | – | – | – |",
        typical.0, typical.1
    );
    let owner_page = time(|| async {
        queries::boardrooms_by_owner("owner-7", None, PAGE + 1)
            .all(&conn)
            .await
            .expect("boardrooms");
    })
    .await;
    println!(
        "| ListBoardrooms (owner with 10 boardrooms) | {:.3} / {:.3} | – | – | – |",
        owner_page.0, owner_page.1
    );
    plans.push((
        "ListSessions typical user, page 1".into(),
        explain(
            &conn,
            &statement(queries::sessions_by_user("user-42", false, None, PAGE + 1)),
        )
        .await,
    ));
    plans.push((
        "ListBoardrooms, page 1".into(),
        explain(
            &conn,
            &statement(queries::boardrooms_by_owner("owner-7", None, PAGE + 1)),
        )
        .await,
    ));

    println!("\nPlans (EXPLAIN (ANALYZE, BUFFERS), scan lines):");
    for (name, plan) in plans {
        println!("- {name}: {}", plan_summary(&plan));
    }
}

/// A pseudo-random typical user id (xorshift; no extra dependency).
fn fastrand_user() -> u64 {
    static STATE: AtomicU64 = AtomicU64::new(0x9e37_79b9_7f4a_7c15);
    let mut x = STATE.load(Ordering::Relaxed);
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    STATE.store(x, Ordering::Relaxed);
    x % 9999
}
