//! A turn's write on PostgreSQL: the one-statement path against the transaction path, and
//! what the one statement does when the head is not as the turn left it.

use std::sync::Arc;
use std::time::Duration;

use boardroom_migrations::{Migrator, MigratorTrait};
use boardroom_runtime::config::{DatabaseConfig, Secret};
use boardroom_testkit::TestDatabase;

use super::*;
use crate::domain::{Direction, NewMessage, Role, TurnOutcome};

async fn store(retention: u32) -> ConversationStore {
    store_on(TestDatabase::postgres().await, retention).await
}

/// A migrated store on `db` keeping `retention` checkpoints per thread.
pub(crate) async fn store_on(db: TestDatabase, retention: u32) -> ConversationStore {
    let config = DatabaseConfig {
        url: Secret::new(db.url.clone()),
        ..DatabaseConfig::default()
    };
    let database = Database::connect(&config).await.expect("database");
    Migrator::up(database.conn(), None).await.expect("migrated");
    let leases = Database::connect_relaxed(&config).await.expect("database");
    ConversationStore::new(database, leases, retention)
}

/// Takes `thread_id`'s lease for a new turn: the turn and the head it found.
pub(crate) async fn lease(store: &ConversationStore, thread_id: Uuid) -> (Uuid, Head) {
    let turn_id = Uuid::now_v7();
    let head = store
        .acquire_lease(
            thread_id,
            turn_id,
            lease_until(Duration::from_secs(60)),
            None,
        )
        .await
        .expect("lease")
        .expect("the thread is free");
    (turn_id, head)
}

/// Turn `i`'s write: the user's question, the CFO's answer, the moderator's summary.
async fn write(
    store: &ConversationStore,
    thread_id: Uuid,
    (turn_id, head): (Uuid, Head),
    i: usize,
    request_id: Option<String>,
) -> TurnWrite {
    let base = store
        .state_at(thread_id, head.state_version)
        .await
        .expect("the turn's base state");
    let message = |role, author: &str, content: String| NewMessage {
        role,
        author: author.into(),
        content,
    };
    TurnWrite {
        thread_id,
        turn_id,
        request_id,
        base: Arc::new(base),
        base_seq: head.last_seq,
        messages: vec![
            message(Role::User, "user", format!("question {i}")),
            message(Role::Advisor, "cfo", format!("answer {i}")),
            message(Role::Moderator, "moderator", format!("summary {i}")),
        ],
        memory: vec![("cfo".into(), format!("answer {i}"))],
        outcome: TurnOutcome {
            advisors: vec!["cfo".into()],
            ..TurnOutcome::default()
        },
    }
}

/// The one statement finds the head moved (or the lease lost) and writes nothing.
async fn declined_by_one_statement(store: &ConversationStore, write: &TurnWrite) {
    let stored = store
        .persist_in_one_statement(write)
        .await
        .expect("no error");
    assert!(stored.is_none(), "the head is not as the lease found it");
}

/// What a thread holds, without its ids and times: head, messages, checkpoints with their
/// states, turn records by request id.
async fn contents(store: &ConversationStore, thread_id: Uuid, requests: &[String]) -> String {
    let head = store.head(thread_id).await.expect("head").expect("a head");
    let mut out = format!(
        "head seq {} version {} running {}\n",
        head.last_seq,
        head.state_version,
        head.running_turn.is_some()
    );
    let messages = store
        .list_messages(thread_id, Direction::Forward, None, 100, Read::Primary)
        .await
        .expect("messages");
    for m in messages {
        out += &format!(
            "message {} {} {} {:?} turn {}\n",
            m.seq,
            m.role.as_str(),
            m.author,
            m.content,
            m.turn_id.is_some()
        );
    }
    for c in store
        .list_checkpoints(thread_id, None, 100)
        .await
        .expect("checkpoints")
    {
        let state = store.state_at(thread_id, c.version).await.expect("state");
        out += &format!(
            "checkpoint {} parent {:?} covers {} pinned {} bytes {} state {:?}\n",
            c.version, c.parent_version, c.covers_seq, c.pinned, c.stored_bytes, state
        );
    }
    for id in requests {
        let r = store
            .turn_by_request(thread_id, id)
            .await
            .expect("turn by request")
            .expect("a record");
        out += &format!(
            "turn {id} seqs {}..={} version {} outcome {:?}\n",
            r.first_seq, r.last_seq, r.state_version, r.outcome
        );
    }
    out
}

#[tokio::test]
async fn one_statement_stores_a_turn_as_the_transaction_does() {
    let store = store(2).await;
    let requests: Vec<String> = (0..4).map(|i| format!("request-{i}")).collect();
    let mut threads = Vec::new();
    for one_statement in [true, false] {
        let thread_id = Uuid::now_v7();
        for (i, request) in requests.iter().enumerate() {
            let turn = lease(&store, thread_id).await;
            let write = write(&store, thread_id, turn, i, Some(request.clone())).await;
            let stored = if one_statement {
                store.persist_in_one_statement(&write).await
            } else {
                store.persist_in_transaction(&write).await
            }
            .expect("stored")
            .expect("the turn held its lease");
            assert_eq!(stored.record.first_seq, 3 * i as i64 + 1);
            assert_eq!(stored.state.version, i as i64 + 1);
        }
        threads.push(contents(&store, thread_id, &requests).await);
    }
    assert_eq!(threads[0], threads[1], "both paths store the same rows");
    let stored = &threads[0];
    assert!(stored.starts_with("head seq 12 version 4 running false\n"));
    assert_eq!(stored.matches("message ").count(), 12);
    assert!(stored.contains("message 10 user user \"question 3\" turn true\n"));
    // Retention 2: versions 1 and 2 were pruned.
    assert_eq!(stored.matches("checkpoint ").count(), 2, "{stored}");
    assert!(stored.contains("checkpoint 4 parent Some(3) covers 12"));
    assert!(stored.contains("checkpoint 3 parent Some(2) covers 9"));
    assert!(stored.contains("last_answer: \"answer 3\", turns: 4"));
    assert!(stored.contains("turn request-2 seqs 7..=9 version 3"));
}

#[tokio::test]
async fn a_moved_head_is_stored_on_the_thread_as_it_is_now() {
    let store = store(10).await;
    let thread_id = Uuid::now_v7();
    let turn = lease(&store, thread_id).await;
    let write = write(&store, thread_id, turn, 0, None).await;
    // A message appended while the turn ran takes seq 1.
    store
        .append(
            thread_id,
            NewMessage {
                role: Role::User,
                author: "user".into(),
                content: "meanwhile".into(),
            },
            None,
        )
        .await
        .expect("appended");
    let before = contents(&store, thread_id, &[]).await;
    declined_by_one_statement(&store, &write).await;
    assert_eq!(
        contents(&store, thread_id, &[]).await,
        before,
        "nothing written"
    );
    let stored = store.persist_turn(write).await.expect("stored");
    assert_eq!((stored.record.first_seq, stored.record.last_seq), (2, 4));
    assert_eq!((stored.state.version, stored.state.covers_seq), (1, 4));
    let after = contents(&store, thread_id, &[]).await;
    assert!(
        after.starts_with("head seq 4 version 1 running false\n"),
        "{after}"
    );
    assert!(after.contains("message 1 user user \"meanwhile\" turn false\n"));
    assert!(after.contains("message 4 moderator moderator \"summary 0\" turn true\n"));
}

#[tokio::test]
async fn a_summary_stored_meanwhile_is_merged_by_a_rebased_statement() {
    let store = store(10).await;
    let mut results = Vec::new();
    for rebased in [true, false] {
        let thread_id = Uuid::now_v7();
        let first = lease(&store, thread_id).await;
        let first = write(&store, thread_id, first, 0, None).await;
        store.persist_turn(first).await.expect("stored");
        let turn = lease(&store, thread_id).await;
        let write = write(&store, thread_id, turn, 1, None).await;
        // The previous turn's summary lands while this turn runs.
        let summarized = store
            .apply_summary(thread_id, 0, 3, "the gist".into())
            .await
            .expect("summary")
            .expect("applied");
        assert_eq!(summarized.version, 2);
        let stored = if rebased {
            declined_by_one_statement(&store, &write).await;
            let rebased = store
                .rebase(&write)
                .await
                .expect("read")
                .expect("still its lease");
            assert_eq!((rebased.base.version, rebased.base_seq), (2, 3));
            store
                .persist_in_one_statement(&rebased)
                .await
                .expect("no error")
                .expect("stored on the summary")
        } else {
            store
                .persist_in_transaction(&write)
                .await
                .expect("no error")
                .expect("stored")
        };
        assert_eq!(stored.state.summary, "the gist");
        assert_eq!(stored.state.summarized_through_seq, 3);
        assert_eq!((stored.state.version, stored.state.turns), (3, 2));
        assert_eq!((stored.record.first_seq, stored.record.last_seq), (4, 6));
        results.push(contents(&store, thread_id, &[]).await);
    }
    assert_eq!(results[0], results[1], "as the transaction stores it");
}

#[tokio::test]
async fn a_lost_lease_writes_nothing() {
    let store = store(10).await;
    let thread_id = Uuid::now_v7();
    // Turn A's lease has run out and turn B took the thread.
    let a = Uuid::now_v7();
    let head = store
        .acquire_lease(thread_id, a, now() - chrono::Duration::seconds(1), None)
        .await
        .expect("lease")
        .expect("free");
    let late = write(&store, thread_id, (a, head), 0, Some("late".into())).await;
    let (b, _) = lease(&store, thread_id).await;
    declined_by_one_statement(&store, &late).await;
    assert!(
        store.rebase(&late).await.expect("read").is_none(),
        "not its lease"
    );
    let err = store.persist_turn(late).await.expect_err("fenced");
    assert!(matches!(err, ConversationError::Aborted(_)), "{err:?}");
    let head = store.head(thread_id).await.expect("head").expect("a head");
    assert_eq!((head.last_seq, head.state_version), (0, 0));
    assert_eq!(head.running_turn, Some(b));
    assert!(
        store
            .turn_by_request(thread_id, "late")
            .await
            .expect("lookup")
            .is_none()
    );
}

#[tokio::test]
async fn a_request_stored_meanwhile_aborts_the_whole_statement() {
    let store = store(10).await;
    let thread_id = Uuid::now_v7();
    let first = lease(&store, thread_id).await;
    let first = write(&store, thread_id, first, 0, Some("same".into())).await;
    store.persist_turn(first).await.expect("stored");
    let second = lease(&store, thread_id).await;
    let second = write(&store, thread_id, second, 1, Some("same".into())).await;
    let before = contents(&store, thread_id, &[]).await;
    let err = store
        .persist_in_one_statement(&second)
        .await
        .expect_err("the request id is taken");
    assert!(is_unique_violation(&err), "{err}");
    assert_eq!(
        contents(&store, thread_id, &[]).await,
        before,
        "no message, checkpoint or head change"
    );
    let err = store.persist_turn(second).await.expect_err("taken");
    assert!(
        matches!(&err, ConversationError::Aborted(m) if m.contains("stored meanwhile")),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_request_lookup_reads_the_record_with_the_state_version() {
    for db in [TestDatabase::postgres().await, TestDatabase::sqlite()] {
        let store = store_on(db, 10).await;
        let thread_id = Uuid::now_v7();
        let (none, version) = store.request_lookup(thread_id, "r").await.expect("lookup");
        assert_eq!((none, version), (None, 0), "no head yet");
        for (i, request) in ["other", "r", "later"].into_iter().enumerate() {
            let turn = lease(&store, thread_id).await;
            let write = write(&store, thread_id, turn, i, Some(request.into())).await;
            store.persist_turn(write).await.expect("stored");
        }
        let (found, version) = store.request_lookup(thread_id, "r").await.expect("lookup");
        assert_eq!(version, 3);
        let expected = store
            .turn_by_request(thread_id, "r")
            .await
            .expect("by request")
            .expect("stored");
        assert_eq!(found, Some(expected));
        assert_eq!(found.map(|r| (r.first_seq, r.state_version)), Some((4, 2)));
        let (missing, version) = store
            .request_lookup(thread_id, "never")
            .await
            .expect("lookup");
        assert_eq!((missing, version), (None, 3));
    }
}
