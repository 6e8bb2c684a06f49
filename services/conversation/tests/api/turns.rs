use std::collections::BTreeSet;
use std::time::Duration;

use boardroom_proto::conversation::v1 as pb;
use boardroom_proto::conversation::v1::run_turn_response::Event;
use futures::StreamExt;
use tonic::Code;

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_streams_every_advisor_then_the_moderator_and_stores_it_all() {
    let suite = suite(|_| {}).await;
    let thread = suite.thread(3).await;
    let events = run(
        &suite.client,
        turn(&thread, "Should we expand to Spain?", ""),
    )
    .await
    .expect("RunTurn");
    let Some(Event::TurnStarted(started)) = events.first() else {
        panic!("first event: {:?}", events.first());
    };
    assert_eq!(started.advisors, ["advisor0", "advisor1", "advisor2"]);
    assert!(!started.replayed);
    let done = completed(&events);
    assert_eq!(done.state_version, 1);
    // user + 3 advisors + moderator
    assert_eq!((done.first_seq, done.last_seq), (1, 5));
    assert!(done.usage.expect("usage").output_tokens > 0);

    // Deltas are tagged by advisor and add up to what each advisor finished with.
    for name in ["advisor0", "advisor1", "advisor2"] {
        let streamed: String = events
            .iter()
            .filter_map(|e| match e {
                Event::AdvisorDelta(d) if d.advisor == name => Some(d.text.as_str()),
                _ => None,
            })
            .collect();
        let finished = events
            .iter()
            .find_map(|e| match e {
                Event::AdvisorFinished(f) if f.advisor == name => Some(f.content.clone()),
                _ => None,
            })
            .expect("finished");
        assert!(!streamed.is_empty());
        assert_eq!(streamed, finished);
    }
    let moderator: String = events
        .iter()
        .filter_map(|e| match e {
            Event::ModeratorDelta(d) => Some(d.text.as_str()),
            _ => None,
        })
        .collect();
    assert!(!moderator.is_empty());

    let messages = suite.messages(&thread).await;
    let roles: Vec<i32> = messages.iter().map(|m| m.role).collect();
    assert_eq!(
        roles,
        [
            pb::Role::User as i32,
            pb::Role::Advisor as i32,
            pb::Role::Advisor as i32,
            pb::Role::Advisor as i32,
            pb::Role::Moderator as i32
        ]
    );
    assert_eq!(messages[0].content, "Should we expand to Spain?");
    assert_eq!(messages[4].content, moderator);
    assert!(messages.iter().all(|m| m.turn_id == started.turn_id));

    let state = suite.state(&thread).await;
    let s = state.state.expect("state");
    assert_eq!((s.version, s.covers_seq, s.turns), (1, 5, 1));
    assert_eq!(s.advisors.len(), 3);
    assert_eq!(state.last_seq, 5);
    assert!(state.running_turn_id.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_turn_replays_its_recorded_outcome_without_running_again() {
    let suite = suite(|_| {}).await;
    let thread = suite.thread(2).await;
    let first = run(&suite.client, turn(&thread, "Price it at 10?", "req-1"))
        .await
        .expect("RunTurn");
    let done = completed(&first);
    // The turn's distillation into the boardroom memory calls the gateway in the background:
    // done before the count starts.
    eventually(Duration::from_secs(10), || async {
        let metrics = boardroom_testkit::scrape_metrics(suite.admin).await;
        (boardroom_testkit::metric_value(&metrics, &["conversation_memory_distillations_total"])
            >= 1.0)
            .then_some(())
    })
    .await;
    let calls_before = boardroom_testkit::metric_value(
        &boardroom_testkit::scrape_metrics(suite.gateway_admin).await,
        &["llm_requests_total"],
    );
    let again = run(&suite.client, turn(&thread, "Price it at 10?", "req-1"))
        .await
        .expect("RunTurn retried");
    let replay = completed(&again);
    assert!(replay.replayed);
    assert_eq!(
        (
            replay.turn_id.as_str(),
            replay.first_seq,
            replay.last_seq,
            replay.state_version
        ),
        (
            done.turn_id.as_str(),
            done.first_seq,
            done.last_seq,
            done.state_version
        )
    );
    let Some(Event::TurnStarted(started)) = again.first() else {
        panic!("{again:?}");
    };
    assert!(started.replayed);
    // The replay carries each advisor's whole answer and the moderator's synthesis.
    let answers = again
        .iter()
        .filter(|e| matches!(e, Event::AdvisorFinished(_)))
        .count();
    assert_eq!(answers, 2);
    assert!(again.iter().any(|e| matches!(e, Event::ModeratorDelta(_))));
    let calls_after = boardroom_testkit::metric_value(
        &boardroom_testkit::scrape_metrics(suite.gateway_admin).await,
        &["llm_requests_total"],
    );
    assert_eq!(calls_before, calls_after, "the replay called no model");
    assert_eq!(suite.messages(&thread).await.len(), 4);
    assert_eq!(suite.state(&thread).await.state.expect("state").version, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_queued_behind_its_first_run_replays_it_once_that_completes() {
    let suite = suite(|c| mock_latency(c, 1500)).await;
    let thread = suite.thread(1).await;
    let request = turn(&thread, "Price it at 10?", "req-queued");
    let mut first = suite
        .client
        .clone()
        .run_turn(request.clone())
        .await
        .expect("RunTurn")
        .into_inner();
    let started = first.next().await.expect("an event").expect("ok").event;
    assert!(
        matches!(started, Some(Event::TurnStarted(_))),
        "{started:?}"
    );
    // The first run holds the thread: the retry looks its request up (not stored yet) and
    // waits in the thread's queue.
    let retry = tokio::spawn({
        let client = suite.client.clone();
        let mut request = request.clone();
        request.double_text = pb::DoubleTextPolicy::Enqueue as i32;
        async move { run(&client, request).await }
    });
    eventually(Duration::from_secs(10), || async {
        let metrics = boardroom_testkit::scrape_metrics(suite.admin).await;
        (boardroom_testkit::metric_value(&metrics, &["conversation_turns_queued"]) >= 1.0)
            .then_some(())
    })
    .await;
    let mut events = Vec::new();
    while let Some(item) = first.next().await {
        events.push(item.expect("an event").event.expect("an event"));
    }
    let done = completed(&events);
    let again = retry.await.expect("joined").expect("the retry");
    let replay = completed(&again);
    assert!(
        replay.replayed,
        "the retry replays the first run: {again:?}"
    );
    assert_eq!(replay.turn_id, done.turn_id);
    assert_eq!(suite.messages(&thread).await.len(), 3, "stored once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_turns_on_fifty_threads_run_concurrently() {
    let suite = suite(|c| mock_latency(c, 20)).await;
    let mut threads = Vec::new();
    for _ in 0..50 {
        threads.push(suite.thread(3).await);
    }
    let turns = threads.iter().map(|thread| {
        let client = suite.client.clone();
        let thread = thread.clone();
        async move { complete_turn(&client, &thread, "What is our biggest risk?").await }
    });
    let done = futures::future::join_all(turns).await;
    for (thread, done) in threads.iter().zip(&done) {
        assert_eq!(
            (done.first_seq, done.last_seq, done.state_version),
            (1, 5, 1)
        );
        let seqs: Vec<i64> = suite.messages(thread).await.iter().map(|m| m.seq).collect();
        assert_eq!(seqs, [1, 2, 3, 4, 5]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_turns_racing_on_one_thread_never_share_a_seq() {
    let suite = suite(|c| mock_latency(c, 100)).await;
    let thread = suite.thread(2).await;
    let (a, b) = tokio::join!(
        run(&suite.client, turn(&thread, "first", "")),
        run(&suite.client, turn(&thread, "second", "")),
    );
    let mut ranges = Vec::new();
    for outcome in [a, b] {
        match outcome {
            Ok(events) => {
                let done = completed(&events);
                ranges.push((done.first_seq, done.last_seq));
            }
            // The defined outcome of a turn that finds another one running.
            Err(status) => assert_eq!(status.code(), Code::Aborted, "{status:?}"),
        }
    }
    assert!(!ranges.is_empty(), "at least one turn completes");
    let seqs: Vec<i64> = suite
        .messages(&thread)
        .await
        .iter()
        .map(|m| m.seq)
        .collect();
    let unique: BTreeSet<i64> = seqs.iter().copied().collect();
    assert_eq!(unique.len(), seqs.len(), "no duplicate seq");
    assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<_>>());
    assert_eq!(seqs.len(), ranges.len() * 4);
    // Once neither runs, the thread takes turns again.
    complete_turn(&suite.client, &thread, "third").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_get_distinct_consecutive_seqs_and_retries_are_deduplicated() {
    let suite = suite(|_| {}).await;
    let thread = suite.thread(1).await;
    let appends = (0..20).map(|i| {
        let mut client = suite.client.clone();
        let thread = thread.clone();
        async move {
            client
                .append_message(pb::AppendMessageRequest {
                    thread_id: thread,
                    role: pb::Role::User as i32,
                    author: "user".into(),
                    content: format!("note {i}"),
                    request_id: format!("note-{i}"),
                })
                .await
                .expect("append")
                .into_inner()
                .message
                .expect("message")
                .seq
        }
    });
    let mut seqs = futures::future::join_all(appends).await;
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=20).collect::<Vec<i64>>());
    // A retry answers with the first write.
    let retried = suite
        .client
        .clone()
        .append_message(pb::AppendMessageRequest {
            thread_id: thread.clone(),
            role: pb::Role::User as i32,
            author: "user".into(),
            content: "note 7".into(),
            request_id: "note-7".into(),
        })
        .await
        .expect("append")
        .into_inner()
        .message
        .expect("message");
    assert_eq!(retried.content, "note 7");
    assert_eq!(suite.messages(&thread).await.len(), 20);
    // A turn afterwards continues the numbering.
    let done = complete_turn(&suite.client, &thread, "now decide").await;
    assert_eq!(done.first_seq, 21);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_calls_of_a_round_run_as_a_batch_and_feed_the_answers() {
    let suite = suite(|_| {}).await;
    let thread = suite.thread(2).await;
    complete_turn(&suite.client, &thread, "Our churn was 4 percent in March.").await;
    let events = run(
        &suite.client,
        turn(&thread, "use tool calculator (120 - 20) * 3 / 4", ""),
    )
    .await
    .expect("RunTurn");
    let done = completed(&events);
    let results: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::ToolResult(r) => Some(r.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(results.len(), 2, "one call per advisor: {events:#?}");
    assert!(results.iter().all(|r| r.content == "75" && !r.is_error));
    let calls = events
        .iter()
        .filter(|e| matches!(e, Event::ToolCalled(c) if c.name == "calculator"))
        .count();
    assert_eq!(calls, 2);
    // Tool results are stored with the turn: user + 2 tool + 2 advisors + moderator.
    assert_eq!(done.last_seq - done.first_seq + 1, 6);

    let events = run(
        &suite.client,
        turn(&thread, "use tool search_thread churn", ""),
    )
    .await
    .expect("RunTurn");
    completed(&events);
    let found = events
        .iter()
        .find_map(|e| match e {
            Event::ToolResult(r) if r.name == "search_thread" => Some(r.content.clone()),
            _ => None,
        })
        .expect("a search result");
    assert!(
        found.contains("#1 [user user] Our churn was 4 percent"),
        "{found}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_allocates_seqs_and_runs_turns_the_same_way() {
    let suite = suite_on(boardroom_testkit::TestDatabase::sqlite(), |_| {}).await;
    let thread = suite.thread(2).await;
    let appends = (0..10).map(|i| {
        let mut client = suite.client.clone();
        let thread = thread.clone();
        async move {
            client
                .append_message(pb::AppendMessageRequest {
                    thread_id: thread,
                    role: pb::Role::System as i32,
                    author: String::new(),
                    content: format!("note {i}"),
                    request_id: String::new(),
                })
                .await
                .expect("append")
                .into_inner()
                .message
                .expect("message")
                .seq
        }
    });
    let mut seqs = futures::future::join_all(appends).await;
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=10).collect::<Vec<i64>>());
    let (a, b) = tokio::join!(
        run(&suite.client, turn(&thread, "one", "sqlite-1")),
        run(&suite.client, turn(&thread, "two", "sqlite-2")),
    );
    let completed_turns = [a, b]
        .into_iter()
        .filter_map(|outcome| match outcome {
            Ok(events) => Some(completed(&events)),
            Err(status) => {
                assert_eq!(status.code(), Code::Aborted, "{status:?}");
                None
            }
        })
        .count();
    let seqs: Vec<i64> = suite
        .messages(&thread)
        .await
        .iter()
        .map(|m| m.seq)
        .collect();
    assert_eq!(
        seqs,
        (1..=10 + 4 * completed_turns as i64).collect::<Vec<_>>()
    );
    let replay = run(&suite.client, turn(&thread, "one", "sqlite-1")).await;
    if let Ok(events) = replay {
        // Replayed if it had completed, else run now.
        completed(&events);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recent_messages_come_from_memory_and_appends_are_read_incrementally() {
    let suite = suite(|_| {}).await;
    let thread = suite.thread(1).await;
    let window = |result: &'static str| {
        let admin = suite.admin;
        async move {
            boardroom_testkit::metric_value(
                &boardroom_testkit::scrape_metrics(admin).await,
                &[
                    "conversation_recent_window_total",
                    &format!("result=\"{result}\""),
                ],
            )
        }
    };
    let (miss, hit, extended) = (
        window("miss").await,
        window("hit").await,
        window("extended").await,
    );
    complete_turn(&suite.client, &thread, "first").await;
    assert_eq!(window("miss").await - miss, 1.0);
    complete_turn(&suite.client, &thread, "second").await;
    assert_eq!(
        window("hit").await - hit,
        1.0,
        "the window the first turn left"
    );
    suite
        .client
        .clone()
        .append_message(pb::AppendMessageRequest {
            thread_id: thread.clone(),
            role: pb::Role::User as i32,
            author: "user".into(),
            content: "a note between turns".into(),
            request_id: String::new(),
        })
        .await
        .expect("append");
    let done = complete_turn(&suite.client, &thread, "third").await;
    assert_eq!(done.first_seq, 8);
    assert_eq!(
        window("extended").await - extended,
        1.0,
        "only the appended message was read"
    );
    complete_turn(&suite.client, &thread, "fourth").await;
    assert_eq!(window("hit").await - hit, 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thread_keeps_one_state_in_memory_and_finished_turns_stay_within_their_bound() {
    let log_bound = 48 * 1024;
    let suite = suite(|c| c.conversation.turn_log_memory_bytes = log_bound).await;
    let thread = suite.thread(1).await;
    // Each turn's state is read back (GetState keeps it in L1); the next turn supersedes it.
    for content in ["first", "second", "third", "fourth"] {
        complete_turn(&suite.client, &thread, content).await;
        suite.state(&thread).await;
    }
    // A turn keeps its new state warm after its caller has the answer: wait for the last one.
    let resident = eventually(Duration::from_secs(5), || async {
        let now = suite.resident().await;
        (now.hot_states <= 1 && now.turn_logs_running == 0).then_some(now)
    })
    .await;
    assert_eq!(
        resident.recent_windows, 1,
        "one thread, one window: {resident:?}"
    );
    assert!(
        resident.turn_log_bytes <= log_bound,
        "finished turns within their bound: {resident:?}"
    );
}
