//! 1000 threads with 100-turn histories held by one `boardroom serve`, and 50 RunTurn streams
//! at once: the whole suite's resident memory, and the latency of every streamed event. Run by
//! `bench/conversation-resident.sh`, which starts the server; this binary seeds the database
//! (SQL, on first use), loads every thread's state into the server (GetState), then runs one
//! turn on every thread, 50 at a time.
//!
//! Env: `RESIDENT_DATABASE_URL` (PostgreSQL, migrated), `RESIDENT_CONVERSATION` (gRPC address),
//! `RESIDENT_PID` (the server's pid, for /proc), `RESIDENT_THREADS` (1000),
//! `RESIDENT_CONCURRENCY` (50).

// A benchmark owns the tasks it spawns: they end with its runtime.
#![allow(clippy::disallowed_methods)]

use std::sync::{Arc, Mutex};
use std::time::Instant;

use boardroom_conversation::domain::{AdvisorMemory, ConversationState};
use boardroom_proto::conversation::v1 as pb;
use boardroom_proto::conversation::v1::conversation_service_client::ConversationServiceClient;
use boardroom_proto::conversation::v1::run_turn_response::Event;
use futures::StreamExt;
use hdrhistogram::Histogram;
use sea_orm::{ConnectionTrait, DatabaseConnection, Statement, Value};

const TURNS: i64 = 100;

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

/// The state a 100-turn thread has: a full summary, three advisors' memories.
fn seeded_state() -> ConversationState {
    let mut state = ConversationState {
        version: TURNS,
        covers_seq: TURNS * 4,
        summary: "The board weighed expansion into Spain against a price rise; the CFO wants \
                  runway above 18 months, the CTO a platform rewrite first. "
            .repeat(12),
        summarized_through_seq: TURNS * 4 - 48,
        turns: TURNS,
        ..ConversationState::default()
    };
    for name in ["CFO", "CTO", "COO"] {
        state.advisors.insert(
            name.into(),
            AdvisorMemory {
                last_answer: "Keep costs flat until the pricing test reads out. ".repeat(5),
                turns: TURNS,
            },
        );
    }
    state
}

async fn exec(db: &DatabaseConnection, sql: &str, values: Vec<Value>) {
    db.execute_raw(Statement::from_sql_and_values(
        db.get_database_backend(),
        sql,
        values,
    ))
    .await
    .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// Seeds `threads` threads with `TURNS` turns each (400 messages, the latest checkpoint),
/// unless already there; returns their ids.
async fn seed(db: &DatabaseConnection, threads: usize) -> Vec<String> {
    let ids = thread_ids(db).await;
    if ids.len() >= threads {
        return ids.into_iter().take(threads).collect();
    }
    println!("seeding {threads} threads × {TURNS} turns …");
    let advisors = serde_json::json!(["CFO", "CTO", "COO"]
        .iter()
        .map(|n| serde_json::json!({"name": n, "role": format!("the {n}"), "system_prompt": format!("You are the {n}."), "model": "mock"}))
        .collect::<Vec<_>>());
    exec(
        db,
        "INSERT INTO boardrooms (id, owner_id, name, advisors, version, created_at, updated_at) \
         VALUES ('0190f000-0000-7000-8000-000000000001', 'bench', 'Resident board', $1, 1, now(), now())",
        vec![advisors.into()],
    )
    .await;
    let sessions = threads.div_ceil(10) as i64;
    exec(
        db,
        "INSERT INTO sessions (id, boardroom_id, user_id, title, is_active, created_at) \
         SELECT gen_random_uuid(), '0190f000-0000-7000-8000-000000000001', 'user-' || s, 's', true, now() \
         FROM generate_series(1, $1) AS s",
        vec![sessions.into()],
    )
    .await;
    exec(
        db,
        "INSERT INTO threads (id, session_id, thread_type, status, title, created_at, updated_at) \
         SELECT gen_random_uuid(), s.id, 'main', 'open', 't' || n, now(), now() \
         FROM sessions s CROSS JOIN generate_series(1, 10) AS n \
         WHERE s.boardroom_id = '0190f000-0000-7000-8000-000000000001'",
        vec![],
    )
    .await;
    exec(
        db,
        "INSERT INTO conversation_threads (thread_id, last_seq, state_version, created_at, updated_at) \
         SELECT t.id, $1, $2, now(), now() FROM threads t JOIN sessions s ON s.id = t.session_id \
         WHERE s.boardroom_id = '0190f000-0000-7000-8000-000000000001'",
        vec![(TURNS * 4).into(), TURNS.into()],
    )
    .await;
    exec(
        db,
        "INSERT INTO messages (thread_id, seq, role, author, content, created_at) \
         SELECT h.thread_id, q.seq, \
                CASE q.seq % 4 WHEN 1 THEN 'user' WHEN 0 THEN 'moderator' ELSE 'advisor' END, \
                CASE q.seq % 4 WHEN 1 THEN 'user' WHEN 2 THEN 'CFO' WHEN 3 THEN 'CTO' ELSE 'moderator' END, \
                'message ' || q.seq || ': ' || repeat('growth runway pricing margin ', 6), now() \
         FROM conversation_threads h CROSS JOIN generate_series(1, $1) AS q(seq)",
        vec![(TURNS * 4).into()],
    )
    .await;
    let state = boardroom_conversation::state::encode(&seeded_state());
    exec(
        db,
        "INSERT INTO checkpoints (thread_id, version, parent_version, covers_seq, state, pinned, created_at) \
         SELECT thread_id, $1, $2, $3, $4, false, now() FROM conversation_threads",
        vec![TURNS.into(), (TURNS - 1).into(), (TURNS * 4).into(), state.into()],
    )
    .await;
    thread_ids(db).await.into_iter().take(threads).collect()
}

async fn thread_ids(db: &DatabaseConnection) -> Vec<String> {
    db.query_all_raw(Statement::from_string(
        db.get_database_backend(),
        "SELECT h.thread_id::text AS id FROM conversation_threads h JOIN threads t ON t.id = h.thread_id \
         JOIN sessions s ON s.id = t.session_id \
         WHERE s.boardroom_id = '0190f000-0000-7000-8000-000000000001' ORDER BY h.thread_id",
    ))
    .await
    .expect("thread ids")
    .iter()
    .map(|row| row.try_get::<String>("", "id").expect("id"))
    .collect()
}

/// Resident and peak resident memory of a process, in MB.
fn memory_mb(pid: &str) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (kb("VmRSS:") / 1024.0, kb("VmHWM:") / 1024.0)
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let threads: usize = env_or("RESIDENT_THREADS", "1000").parse().expect("a count");
        let concurrency: usize = env_or("RESIDENT_CONCURRENCY", "50")
            .parse()
            .expect("a count");
        let pid = env_or("RESIDENT_PID", "self");
        let db = sea_orm::Database::connect(env_or(
            "RESIDENT_DATABASE_URL",
            "postgres://postgres@127.0.0.1:5432/boardroom_resident",
        ))
        .await
        .expect("connect");
        let ids = seed(&db, threads).await;
        let channel = tonic::transport::Endpoint::from_shared(format!(
            "http://{}",
            env_or("RESIDENT_CONVERSATION", "127.0.0.1:50052")
        ))
        .expect("address")
        .connect()
        .await
        .expect("connect to the conversation service");
        let client = ConversationServiceClient::new(channel);
        let (rss, _) = memory_mb(&pid);
        println!("server RSS before: {rss:.1} MB");

        // Every thread's state into the server.
        let started = Instant::now();
        futures::stream::iter(ids.iter().cloned())
            .for_each_concurrent(concurrency, |id| {
                let mut client = client.clone();
                async move {
                    let state = client
                        .get_state(pb::GetStateRequest { thread_id: id })
                        .await
                        .expect("GetState")
                        .into_inner();
                    assert_eq!(state.last_seq, TURNS * 4);
                }
            })
            .await;
        let (rss, _) = memory_mb(&pid);
        println!(
            "GetState of {} threads: {:.1} s; server RSS: {rss:.1} MB",
            ids.len(),
            started.elapsed().as_secs_f64()
        );

        // One turn on every thread, `concurrency` streams at once.
        let gaps = Arc::new(Mutex::new(
            Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("histogram"),
        ));
        let firsts = Arc::new(Mutex::new(
            Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("histogram"),
        ));
        let turns = Arc::new(Mutex::new(
            Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("histogram"),
        ));
        let failures = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let started = Instant::now();
        futures::stream::iter(ids.iter().cloned())
            .for_each_concurrent(concurrency, |id| {
                let mut client = client.clone();
                let (gaps, firsts, turns, failures) = (
                    gaps.clone(),
                    firsts.clone(),
                    turns.clone(),
                    failures.clone(),
                );
                async move {
                    let sent = Instant::now();
                    let Ok(response) = client
                        .run_turn(pb::RunTurnRequest {
                            thread_id: id,
                            content: "Given all that, what do we do this quarter?".into(),
                            author: "user".into(),
                            ..pb::RunTurnRequest::default()
                        })
                        .await
                    else {
                        failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        return;
                    };
                    let mut stream = response.into_inner();
                    let mut last = sent;
                    let mut first = true;
                    let mut ok = false;
                    while let Some(event) = stream.next().await {
                        let now = Instant::now();
                        let micros = (now - last).as_micros() as u64;
                        if first {
                            firsts.lock().expect("lock").record(micros.max(1)).ok();
                            first = false;
                        } else {
                            gaps.lock().expect("lock").record(micros.max(1)).ok();
                        }
                        last = now;
                        if let Ok(pb::RunTurnResponse {
                            event: Some(Event::TurnCompleted(_)),
                            ..
                        }) = event
                        {
                            ok = true;
                        }
                    }
                    if ok {
                        turns
                            .lock()
                            .expect("lock")
                            .record(sent.elapsed().as_micros() as u64)
                            .ok();
                    } else {
                        failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            })
            .await;
        let elapsed = started.elapsed().as_secs_f64();
        let (rss, peak) = memory_mb(&pid);
        let q = |h: &Arc<Mutex<Histogram<u64>>>, q: f64| {
            h.lock().expect("lock").value_at_quantile(q) as f64 / 1000.0
        };
        println!(
            "{} turns, {concurrency} at once: {elapsed:.1} s, {} failed",
            ids.len(),
            failures.load(std::sync::atomic::Ordering::Relaxed)
        );
        println!("| | p50 ms | p99 ms | max ms |");
        println!("|---|---|---|---|");
        println!(
            "| first event (TurnStarted) | {:.2} | {:.2} | {:.2} |",
            q(&firsts, 0.5),
            q(&firsts, 0.99),
            q(&firsts, 1.0)
        );
        println!(
            "| between events | {:.2} | {:.2} | {:.2} |",
            q(&gaps, 0.5),
            q(&gaps, 0.99),
            q(&gaps, 1.0)
        );
        println!(
            "| whole turn | {:.1} | {:.1} | {:.1} |",
            q(&turns, 0.5),
            q(&turns, 0.99),
            q(&turns, 1.0)
        );
        println!("server RSS after: {rss:.1} MB, peak (VmHWM): {peak:.1} MB");
    });
}
