//! The boardroom memory through the real servers: facts distilled after a turn (the mock
//! summary model states the user's statements as facts), recalled into a new session's
//! thread (an OpenAI-protocol fake advisor shows what its context held), restated and updated
//! without duplicates, kept apart per user, listed by keyset, deleted and forgotten; and the
//! store's optimistic lock and bound.

use std::time::Duration;

use boardroom_conversation::ConversationStore;
use boardroom_conversation::memory::{Change, FactSet, MemoryKey};
use boardroom_conversation::store::{Source, Written};
use boardroom_proto::conversation::v1 as pb;
use boardroom_runtime::db::Database;
use boardroom_testkit::{FakeOpenAi, TestDatabase};

use crate::helpers::*;

const OWNER: &str = "user";

/// A boardroom of a mock advisor and one on `echo` (the fake).
async fn boardroom(suite: &Suite) -> String {
    suite
        .boardroom_in(&[("cfo", "mock"), ("cto", "echo")], Default::default())
        .await
}

async fn memories(suite: &Suite, boardroom_id: &str, owner: &str) -> Vec<pb::Memory> {
    suite
        .client
        .clone()
        .list_memories(pb::ListMemoriesRequest {
            owner_id: owner.into(),
            boardroom_id: boardroom_id.into(),
            page_size: 100,
            page_token: String::new(),
        })
        .await
        .expect("ListMemories")
        .into_inner()
        .memories
}

/// Waits until the memory holds facts for which `done` holds (distillation runs after the
/// turn, in the background).
async fn memories_until(
    suite: &Suite,
    boardroom_id: &str,
    done: impl Fn(&[pb::Memory]) -> bool,
) -> Vec<pb::Memory> {
    eventually(Duration::from_secs(10), || async {
        let found = memories(suite, boardroom_id, OWNER).await;
        done(&found).then_some(found)
    })
    .await
}

fn facts(found: &[pb::Memory]) -> Vec<&str> {
    let mut facts: Vec<&str> = found.iter().map(|m| m.fact.as_str()).collect();
    facts.sort_unstable();
    facts
}

async fn remembers_across_sessions_merges_and_forgets(db: TestDatabase) {
    let echo = FakeOpenAi::start().await;
    let suite = suite_on(db, |c| upstream_alias(c, "echo", &echo.base_url())).await;
    let boardroom_id = boardroom(&suite).await;
    let first = suite.thread_of(&boardroom_id, OWNER).await;
    let done = complete_turn(
        &suite.client,
        &first,
        "Our runway is 14 months. We sell to mid-market companies. Churn among small business customers is 5%. Should we raise prices?",
    )
    .await;
    assert_eq!(done.memories_recalled, 0, "nothing was remembered yet");
    let found = memories_until(&suite, &boardroom_id, |m| m.len() == 3).await;
    assert_eq!(
        facts(&found),
        [
            "Churn among small business customers is 5%.",
            "Our runway is 14 months.",
            "We sell to mid-market companies."
        ]
    );
    assert!(
        found
            .iter()
            .all(|m| m.turn_id == done.turn_id && m.thread_id == first)
    );
    assert!(
        found
            .iter()
            .all(|m| m.owner_id == OWNER && m.boardroom_id == boardroom_id)
    );

    // A new session's thread: the advisors are given the facts near the question.
    let second = suite.thread_of(&boardroom_id, OWNER).await;
    let asked = complete_turn(&suite.client, &second, "How long is our runway in months?").await;
    assert!(asked.memories_recalled >= 1, "{asked:?}");
    let body = echo
        .last_body()
        .expect("the echo advisor was called")
        .to_string();
    assert!(body.contains("What the board remembers"), "{body}");
    assert!(body.contains("- Our runway is 14 months."), "{body}");
    // Uses are counted after the turn.
    memories_until(&suite, &boardroom_id, |m| {
        m.iter()
            .any(|f| f.fact.contains("runway") && f.use_count >= 1 && f.last_use_time.is_some())
    })
    .await;

    // Another user of the same boardroom sees nothing of it.
    let stranger = suite.thread_of(&boardroom_id, "someone-else").await;
    let theirs = complete_turn(
        &suite.client,
        &stranger,
        "How long is our runway in months?",
    )
    .await;
    assert_eq!(theirs.memories_recalled, 0);
    let body = echo.last_body().expect("called").to_string();
    assert!(!body.contains("runway is 14"), "{body}");
    assert!(
        memories(&suite, &boardroom_id, "someone-else")
            .await
            .is_empty()
    );

    // A restatement merges into the fact it restates; an update replaces the value; a new
    // fact is added.
    let runway_id = found
        .iter()
        .find(|m| m.fact.contains("runway"))
        .map(|m| m.id.clone())
        .expect("runway");
    let restated = complete_turn(&suite.client, &second, "Our runway is 14 months.").await;
    let after = memories_until(&suite, &boardroom_id, |m| {
        m.iter()
            .any(|f| f.id == runway_id && f.turn_id == restated.turn_id)
    })
    .await;
    assert_eq!(after.len(), 3, "{after:?}");
    let updated = complete_turn(
        &suite.client,
        &second,
        "Our runway is 12 months. Our headcount is 40 people. Churn among enterprise customers is 5%.",
    )
    .await;
    let after = memories_until(&suite, &boardroom_id, |m| {
        m.iter()
            .any(|f| f.id == runway_id && f.turn_id == updated.turn_id)
    })
    .await;
    assert_eq!(
        facts(&after),
        // The enterprise churn is another fact than the small business one (though close
        // enough to be compared with it).
        [
            "Churn among enterprise customers is 5%.",
            "Churn among small business customers is 5%.",
            "Our headcount is 40 people.",
            "Our runway is 12 months.",
            "We sell to mid-market companies."
        ]
    );
    let runway = after.iter().find(|m| m.id == runway_id).expect("same id");
    assert_eq!(
        runway.create_time,
        found
            .iter()
            .find(|m| m.id == runway_id)
            .and_then(|m| m.create_time)
    );

    // Keyset pages, newest first.
    let mut client = suite.client.clone();
    let page = |token: String| pb::ListMemoriesRequest {
        owner_id: OWNER.into(),
        boardroom_id: boardroom_id.clone(),
        page_size: 2,
        page_token: token,
    };
    let one = client
        .list_memories(page(String::new()))
        .await
        .expect("page 1")
        .into_inner();
    assert_eq!(one.memories.len(), 2);
    assert!(one.memories[0].id > one.memories[1].id);
    let two = client
        .list_memories(page(one.next_page_token.clone()))
        .await
        .expect("page 2")
        .into_inner();
    assert_eq!(two.memories.len(), 2);
    assert!(two.memories[0].id < one.memories[1].id);
    let three = client
        .list_memories(page(two.next_page_token.clone()))
        .await
        .expect("page 3")
        .into_inner();
    assert_eq!(three.memories.len(), 1);
    assert!(three.next_page_token.is_empty());

    // Deleting is idempotent, and what is deleted is not recalled.
    let delete = |id: &str| pb::DeleteMemoryRequest {
        owner_id: OWNER.into(),
        boardroom_id: boardroom_id.clone(),
        id: id.into(),
    };
    assert!(
        client
            .delete_memory(delete(&runway_id))
            .await
            .expect("delete")
            .into_inner()
            .deleted
    );
    assert!(
        !client
            .delete_memory(delete(&runway_id))
            .await
            .expect("again")
            .into_inner()
            .deleted
    );
    let third = suite.thread_of(&boardroom_id, OWNER).await;
    let asked = complete_turn(&suite.client, &third, "How long is our runway in months?").await;
    let body = echo.last_body().expect("called").to_string();
    assert!(!body.contains("runway is 12 months"), "{body}");
    // The others still are.
    assert!(asked.memories_recalled >= 1, "{asked:?}");
    assert!(body.contains("- Our headcount is 40 people."), "{body}");
    assert_eq!(memories(&suite, &boardroom_id, OWNER).await.len(), 4);

    // Forgetting the boardroom removes everything, once.
    let forget = || pb::ForgetBoardroomRequest {
        owner_id: OWNER.into(),
        boardroom_id: boardroom_id.clone(),
    };
    let gone = client
        .forget_boardroom(forget())
        .await
        .expect("forget")
        .into_inner();
    assert_eq!(gone.deleted_count, 4);
    let again = client
        .forget_boardroom(forget())
        .await
        .expect("again")
        .into_inner();
    assert_eq!(again.deleted_count, 0);
    assert!(memories(&suite, &boardroom_id, OWNER).await.is_empty());
    let last = complete_turn(&suite.client, &third, "How many people work here?").await;
    assert_eq!(last.memories_recalled, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_boardroom_remembers_across_sessions_merges_restatements_and_forgets_on_postgres() {
    remembers_across_sessions_merges_and_forgets(TestDatabase::postgres().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_boardroom_remembers_across_sessions_merges_restatements_and_forgets_on_sqlite() {
    remembers_across_sessions_merges_and_forgets(TestDatabase::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_calls_name_every_bad_field() {
    let suite = suite(|_| {}).await;
    let mut client = suite.client.clone();
    let status = client
        .list_memories(pb::ListMemoriesRequest {
            owner_id: String::new(),
            boardroom_id: "nope".into(),
            ..Default::default()
        })
        .await
        .expect_err("refused");
    let mut fields = violated_fields(&status);
    fields.sort();
    assert_eq!(fields, ["boardroom_id", "owner_id"]);
    let status = client
        .delete_memory(pb::DeleteMemoryRequest {
            owner_id: OWNER.into(),
            boardroom_id: uuid::Uuid::now_v7().to_string(),
            id: String::new(),
        })
        .await
        .expect_err("refused");
    assert_eq!(violated_fields(&status), ["id"]);
    let status = client
        .list_memories(pb::ListMemoriesRequest {
            owner_id: OWNER.into(),
            boardroom_id: uuid::Uuid::now_v7().to_string(),
            page_token: "not-a-token".into(),
            page_size: 5,
        })
        .await
        .expect_err("refused");
    assert_eq!(violated_fields(&status), ["page_token"]);
    let status = client
        .forget_boardroom(pb::ForgetBoardroomRequest {
            owner_id: "x".repeat(129),
            boardroom_id: uuid::Uuid::now_v7().to_string(),
        })
        .await
        .expect_err("refused");
    assert_eq!(violated_fields(&status), ["owner_id"]);
}

async fn store_on(db: &TestDatabase) -> ConversationStore {
    use boardroom_migrations::{Migrator, MigratorTrait};
    let config = boardroom_testkit::test_config(db);
    let database = Database::connect(&config.database).await.expect("database");
    Migrator::up(database.conn(), None).await.expect("migrated");
    let leases = Database::connect_relaxed(&config.database)
        .await
        .expect("database");
    ConversationStore::new(database, leases, 10)
}

fn add(fact: &str) -> Change {
    Change::Add {
        fact: fact.into(),
        vector: vec![1.0, 0.0, fact.len() as f32],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_that_decided_on_an_old_memory_stores_nothing_and_the_least_used_leave_first() {
    for db in [TestDatabase::postgres().await, TestDatabase::sqlite()] {
        let store = store_on(&db).await;
        let key = MemoryKey {
            owner_id: OWNER.into(),
            boardroom_id: uuid::Uuid::now_v7(),
        };
        let source = Source {
            thread_id: uuid::Uuid::now_v7(),
            turn_id: uuid::Uuid::now_v7(),
        };
        // Another turn of the same thread.
        let turn = |turn_id| Source {
            thread_id: source.thread_id,
            turn_id,
        };
        let stored = |w: Written| match w {
            Written::Stored(applied) => applied,
            other => panic!("not stored: {other:?}"),
        };
        let empty = store.fact_set(&key).await.expect("read");
        assert_eq!((empty.generation, empty.len()), (0, 0));
        let first = store
            .apply_memory(&key, &empty, vec![add("a"), add("bb")], source, 3)
            .await
            .expect("stored");
        assert_eq!(stored(first).added, 2);
        // A second writer that read the memory before the first stored: refused, nothing
        // written; it decides again on what is there.
        let late = store
            .apply_memory(&key, &empty, vec![add("a")], source, 3)
            .await
            .expect("answered");
        assert_eq!(late, Written::Moved);
        let now = store.fact_set(&key).await.expect("read");
        assert_eq!(now.len(), 2);
        assert!(now.generation > empty.generation);
        let id_of = |set: &FactSet, fact: &str| {
            set.ids[set.facts.iter().position(|f| f == fact).expect(fact)]
        };
        // "a" was recalled once; two more facts overflow the bound of 3: "bb", unused and
        // the oldest unused, leaves.
        store
            .record_uses(&key, &[id_of(&now, "a")])
            .await
            .expect("used");
        let applied = stored(
            store
                .apply_memory(&key, &now, vec![add("ccc"), add("dddd")], source, 3)
                .await
                .expect("stored"),
        );
        assert_eq!((applied.added, applied.evicted), (2, 1));
        let full = store.fact_set(&key).await.expect("read");
        let mut kept = full.facts.clone();
        kept.sort();
        assert_eq!(kept, ["a", "ccc", "dddd"]);
        // Every fact used once: a new one still gets in (what it adds never leaves in the same
        // write); the longest unused goes.
        store
            .record_uses(&key, &[id_of(&full, "ccc"), id_of(&full, "dddd")])
            .await
            .expect("used");
        let applied = stored(
            store
                .apply_memory(&key, &full, vec![add("eeeee")], source, 3)
                .await
                .expect("stored"),
        );
        assert_eq!((applied.added, applied.evicted), (1, 1));
        let mut kept = store.fact_set(&key).await.expect("read").facts;
        kept.sort();
        assert_eq!(kept, ["ccc", "dddd", "eeeee"]);
        // A delete moves the generation too: a writer that read before it decides again.
        let before = store.fact_set(&key).await.expect("read");
        assert!(
            store
                .delete_memory(&key, id_of(&before, "ccc"))
                .await
                .expect("deleted")
        );
        let stale = store
            .apply_memory(&key, &before, vec![add("f")], source, 3)
            .await
            .expect("answered");
        assert_eq!(stale, Written::Moved);
        // Forgotten: a turn that started before stores nothing, even decided afresh; a later
        // one does.
        let running = turn(uuid::Uuid::now_v7());
        assert_eq!(store.forget_memory(&key).await.expect("forgotten"), 2);
        let after = store.fact_set(&key).await.expect("read");
        let written = store
            .apply_memory(&key, &after, vec![add("g")], running, 3)
            .await
            .expect("answered");
        assert_eq!(written, Written::Forgotten);
        assert!(store.fact_set(&key).await.expect("read").is_empty());
        // A turn started a second after the forget (ids hold milliseconds only).
        let later = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            + std::time::Duration::from_secs(1);
        let next = turn(uuid::Uuid::new_v7(uuid::Timestamp::from_unix(
            uuid::NoContext,
            later.as_secs(),
            later.subsec_nanos(),
        )));
        let after = store.fact_set(&key).await.expect("read");
        assert_eq!(
            stored(
                store
                    .apply_memory(&key, &after, vec![add("h")], next, 3)
                    .await
                    .expect("stored")
            )
            .added,
            1
        );
        // A fact embedded by another model (other dimensions) is stored but left out of the
        // set a recall searches.
        let set = store.fact_set(&key).await.expect("read");
        let other_model = Change::Add {
            fact: "j".into(),
            vector: vec![0.5; 4],
        };
        stored(
            store
                .apply_memory(&key, &set, vec![other_model], next, 3)
                .await
                .expect("stored"),
        );
        let loaded = store.fact_set(&key).await.expect("read");
        assert_eq!(loaded.facts, ["h"]);
        assert_eq!(loaded.dims, 3);
        // Forgetting a memory never written to still marks it.
        let fresh = MemoryKey {
            owner_id: OWNER.into(),
            boardroom_id: uuid::Uuid::now_v7(),
        };
        let early = turn(uuid::Uuid::now_v7());
        assert_eq!(store.forget_memory(&fresh).await.expect("forgotten"), 0);
        let set = store.fact_set(&fresh).await.expect("read");
        let written = store
            .apply_memory(&fresh, &set, vec![add("i")], early, 3)
            .await
            .expect("answered");
        assert_eq!(written, Written::Forgotten);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distillations_past_the_bound_are_shed_and_counted() {
    // One distillation at a time; the advisors answer at once, while the summary model (a fake
    // upstream) takes 5 s: the first turn's distillation still runs when the second turn ends.
    let slow = FakeOpenAi::start().await;
    slow.set_latency(Duration::from_secs(5));
    let suite = suite(|c| {
        upstream_alias(c, "slow", &slow.base_url());
        c.conversation.summary_model = "slow".into();
        c.conversation.memory.max_concurrent_distillations = 1;
    })
    .await;
    let boardroom_id = suite
        .boardroom_in(&[("cfo", "mock")], Default::default())
        .await;
    let thread = suite.thread_of(&boardroom_id, OWNER).await;
    let shed = |text: &str| {
        boardroom_testkit::metric_value(
            text,
            &["conversation_memory_distillations_total{outcome=\"shed\"}"],
        )
    };
    let before = boardroom_testkit::scrape_metrics(suite.admin).await;
    assert_eq!(shed(&before), 0.0, "counted from zero");
    complete_turn(&suite.client, &thread, "Our runway is 14 months.").await;
    complete_turn(&suite.client, &thread, "We sell to mid-market companies.").await;
    // A turn is distilled after its caller has the answer: the count follows the stream's end.
    // Within 4 s, while the first distillation (5 s) still holds the only permit.
    let after = eventually(Duration::from_secs(4), || async {
        let text = boardroom_testkit::scrape_metrics(suite.admin).await;
        (shed(&text) > 0.0).then_some(text)
    })
    .await;
    assert_eq!(shed(&after), 1.0, "the second turn's distillation is shed");
    assert!(
        slow.calls() <= 1,
        "the second turn never asked the summary model"
    );
}
