use std::time::Duration;

use boardroom_proto::conversation::v1 as pb;
use boardroom_proto::conversation::v1::run_turn_response::Event;
use boardroom_testkit::{Behavior, FakeOpenAi, FlakyProxy, TestDatabase};
use futures::StreamExt;

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_advisor_is_reported_and_the_turn_completes_with_the_others() {
    let broken = FakeOpenAi::start().await;
    broken.script(std::iter::repeat_n(Behavior::Status(500, None), 50));
    let suite = suite(|c| upstream_alias(c, "broken", &broken.base_url())).await;
    let thread = suite
        .thread_with(&[("cfo", "mock"), ("cto", "broken"), ("coo", "mock")])
        .await;
    let events = run(&suite.client, turn(&thread, "Cut costs?", "failing"))
        .await
        .expect("RunTurn");
    let done = completed(&events);
    let failed: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::AdvisorFailed(f) => Some(f.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(failed.len(), 1, "{events:#?}");
    assert_eq!(failed[0].advisor, "cto");
    assert_eq!(failed[0].reason, pb::FailureReason::Upstream as i32);
    // user + 2 answers + moderator
    assert_eq!(done.last_seq - done.first_seq + 1, 4);
    let authors: Vec<String> = suite
        .messages(&thread)
        .await
        .iter()
        .map(|m| m.author.clone())
        .collect();
    assert_eq!(authors, ["user", "cfo", "coo", "moderator"]);
    // The failure is part of the recorded outcome.
    let replay = run(&suite.client, turn(&thread, "Cut costs?", "failing"))
        .await
        .expect("replay");
    assert!(
        replay
            .iter()
            .any(|e| matches!(e, Event::AdvisorFailed(f) if f.advisor == "cto"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_advisor_past_its_deadline_times_out_and_the_others_answer() {
    let slow = FakeOpenAi::start().await;
    slow.script(std::iter::repeat_n(Behavior::Hang, 10));
    let suite = suite(|c| {
        upstream_alias(c, "slow", &slow.base_url());
        c.conversation.advisor_timeout_ms = 300;
    })
    .await;
    let thread = suite.thread_with(&[("cfo", "mock"), ("cto", "slow")]).await;
    let events = run(&suite.client, turn(&thread, "Hire now?", ""))
        .await
        .expect("RunTurn");
    completed(&events);
    assert!(events.iter().any(|e| matches!(e,
        Event::AdvisorFailed(f) if f.advisor == "cto" && f.reason == pb::FailureReason::Timeout as i32)));
    // The hung upstream call was cancelled, not left running.
    eventually(Duration::from_secs(5), || async {
        (slow.in_flight() == 0).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_advisor_fails_the_turn_fails_and_stores_nothing() {
    let broken = FakeOpenAi::start().await;
    broken.script(std::iter::repeat_n(Behavior::Status(500, None), 50));
    let suite = suite(|c| upstream_alias(c, "broken", &broken.base_url())).await;
    let thread = suite.thread_with(&[("cto", "broken")]).await;
    let events = run(&suite.client, turn(&thread, "Anything?", ""))
        .await
        .expect("RunTurn");
    match events.last() {
        Some(Event::TurnFailed(f)) => assert_eq!(f.reason, pb::FailureReason::NoAnswer as i32),
        other => panic!("{other:?}"),
    }
    let state = suite.state(&thread).await;
    assert_eq!(
        (state.last_seq, state.state.expect("state").version),
        (0, 0)
    );
    assert!(state.running_turn_id.is_empty(), "the lease was released");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_turn_cancels_the_upstream_calls_and_stores_nothing() {
    let slow = FakeOpenAi::start().await;
    slow.script(std::iter::repeat_n(Behavior::Hang, 10));
    let suite = suite(|c| upstream_alias(c, "slow", &slow.base_url())).await;
    let thread = suite.thread_with(&[("cto", "slow")]).await;
    let (turn_id, mut stream) = started_turn(&suite.client, &thread, "hanging").await;
    eventually(Duration::from_secs(5), || async {
        (slow.in_flight() == 1).then_some(())
    })
    .await;
    assert_eq!(suite.state(&thread).await.running_turn_id, turn_id);

    let cancelled = suite
        .client
        .clone()
        .cancel_turn(pb::CancelTurnRequest {
            thread_id: thread.clone(),
            turn_id: turn_id.clone(),
        })
        .await
        .expect("CancelTurn")
        .into_inner();
    assert!(cancelled.cancelled);
    let last = last_event(&mut stream).await;
    match last {
        Some(Event::TurnFailed(f)) => assert_eq!(f.reason, pb::FailureReason::Cancelled as i32),
        other => panic!("{other:?}"),
    }
    // Observable at the gateway's upstream: the call is gone.
    eventually(Duration::from_secs(5), || async {
        (slow.in_flight() == 0).then_some(())
    })
    .await;
    let state = suite.state(&thread).await;
    assert_eq!(state.last_seq, 0);
    assert!(state.running_turn_id.is_empty());
    // Nothing runs any more: cancelling again finds nothing.
    let again = suite
        .client
        .clone()
        .cancel_turn(pb::CancelTurnRequest {
            thread_id: thread,
            turn_id: String::new(),
        })
        .await
        .expect("CancelTurn")
        .into_inner();
    assert!(!again.cancelled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_cancels_its_turn() {
    let slow = FakeOpenAi::start().await;
    slow.script(std::iter::repeat_n(Behavior::Hang, 10));
    let suite = suite(|c| upstream_alias(c, "slow", &slow.base_url())).await;
    let thread = suite.thread_with(&[("cto", "slow"), ("cfo", "mock")]).await;
    let (_turn_id, stream) = started_turn(&suite.client, &thread, "hanging").await;
    eventually(Duration::from_secs(5), || async {
        (slow.in_flight() == 1).then_some(())
    })
    .await;
    drop(stream);
    eventually(Duration::from_secs(5), || async {
        (slow.in_flight() == 0).then_some(())
    })
    .await;
    // The lease is released: the thread takes a new turn at once.
    eventually(Duration::from_secs(5), || async {
        suite
            .state(&thread)
            .await
            .running_turn_id
            .is_empty()
            .then_some(())
    })
    .await;
    assert_eq!(suite.state(&thread).await.last_seq, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_whose_lease_expired_and_was_taken_cannot_store_itself() {
    use sea_orm::ConnectionTrait;
    let slow = FakeOpenAi::start().await;
    slow.set_latency(Duration::from_millis(600));
    let suite = suite(|c| upstream_alias(c, "slow", &slow.base_url())).await;
    let thread = suite.thread_with(&[("cto", "slow")]).await;
    let (first_id, mut first) = started_turn(&suite.client, &thread, "hanging").await;
    // The first turn's lease runs out (as if its instance had stalled past turn_timeout_ms).
    let db = sea_orm::Database::connect(suite.config.database.url.expose())
        .await
        .expect("connect");
    db.execute_unprepared(&format!(
        "UPDATE conversation_threads SET lease_until = now() - interval '1 second' WHERE thread_id = '{thread}'"
    ))
    .await
    .expect("expire the lease");
    let second = tokio::spawn({
        let client = suite.client.clone();
        let thread = thread.clone();
        async move { run(&client, turn(&thread, "second", "")).await }
    });
    let last = last_event(&mut first).await;
    match last {
        Some(Event::TurnFailed(f)) => {
            assert_eq!(f.reason, pb::FailureReason::Conflict as i32, "{f:?}")
        }
        other => panic!("the fenced turn ended with {other:?}"),
    }
    let second = second.await.expect("joined").expect("RunTurn");
    let done = completed(&second);
    assert_eq!((done.first_seq, done.state_version), (1, 1));
    let messages = suite.messages(&thread).await;
    assert!(
        messages.iter().all(|m| m.turn_id != first_id),
        "nothing of the fenced turn"
    );
    assert_eq!(messages.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_cut_off_from_the_database_stores_nothing_and_its_retry_runs_once_it_is_back() {
    let db = TestDatabase::postgres().await;
    let proxy = FlakyProxy::start(db.server_addr().expect("postgres address")).await;
    let slow = FakeOpenAi::start().await;
    slow.set_latency(Duration::from_millis(300));
    let suite = suite_on(db.via(proxy.addr()), |c| {
        c.database.acquire_timeout_ms = 300;
        upstream_alias(c, "slow", &slow.base_url());
    })
    .await;
    let thread = suite.thread_with(&[("cto", "slow")]).await;
    let mut stream = suite
        .client
        .clone()
        .run_turn(turn(&thread, "Plan the launch", "launch-1"))
        .await
        .expect("RunTurn")
        .into_inner();
    // Started (its lease taken); the database goes away while the model answers.
    loop {
        match stream.next().await.expect("an event").expect("event").event {
            Some(Event::AdvisorStarted(_)) => break,
            Some(Event::TurnStarted(_)) => {}
            other => panic!("{other:?}"),
        }
    }
    proxy.take_down();
    let last = last_event(&mut stream).await;
    match last {
        Some(Event::TurnFailed(f)) => assert_eq!(f.reason, pb::FailureReason::Storage as i32),
        other => panic!("{other:?}"),
    }
    // Back: the lease the failed turn could not give back is released without waiting for
    // it to expire, and the retry (same request id) runs and stores the turn once.
    proxy.bring_up();
    eventually(Duration::from_secs(10), || async {
        let state = suite
            .client
            .clone()
            .get_state(pb::GetStateRequest {
                thread_id: thread.clone(),
            })
            .await
            .ok()?
            .into_inner();
        state.running_turn_id.is_empty().then_some(())
    })
    .await;
    let done = completed(
        &run(&suite.client, turn(&thread, "Plan the launch", "launch-1"))
            .await
            .expect("the retry runs"),
    );
    assert!(!done.replayed);
    assert_eq!((done.first_seq, done.last_seq), (1, 3));
    let again = completed(
        &run(&suite.client, turn(&thread, "Plan the launch", "launch-1"))
            .await
            .expect("replayed"),
    );
    assert!(again.replayed);
    assert_eq!(suite.messages(&thread).await.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_advisor_the_gateway_refuses_is_rejected_not_retryable_and_so_is_a_turn_of_only_those() {
    let suite = suite(|_| {}).await;
    let thread = suite
        .thread_with(&[("cfo", "mock"), ("cto", "no-such-model")])
        .await;
    let events = run(&suite.client, turn(&thread, "Hire?", ""))
        .await
        .expect("RunTurn");
    completed(&events);
    let reasons: Vec<i32> = events
        .iter()
        .filter_map(|e| match e {
            Event::AdvisorFailed(f) if f.advisor == "cto" => Some(f.reason),
            _ => None,
        })
        .collect();
    assert_eq!(reasons, [pb::FailureReason::Rejected as i32], "{events:#?}");

    let only_refused = suite.thread_with(&[("cto", "no-such-model")]).await;
    let events = run(&suite.client, turn(&only_refused, "Hire?", ""))
        .await
        .expect("RunTurn");
    match events.last() {
        Some(Event::TurnFailed(f)) => assert_eq!(f.reason, pb::FailureReason::Rejected as i32),
        other => panic!("{other:?}"),
    }
    assert_eq!(suite.state(&only_refused).await.last_seq, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_past_the_running_limit_is_refused_before_it_writes_and_runs_once_there_is_room() {
    let slow = FakeOpenAi::start().await;
    slow.script(std::iter::repeat_n(Behavior::Hang, 10));
    let suite = suite(|c| {
        upstream_alias(c, "slow", &slow.base_url());
        c.conversation.max_running_turns = 1;
    })
    .await;
    let held = suite.thread_with(&[("cto", "slow")]).await;
    let waiting = suite.thread_with(&[("cfo", "mock")]).await;
    let (turn_id, mut stream) = started_turn(&suite.client, &held, "holding").await;

    let refused = run(&suite.client, turn(&waiting, "Hire?", "refused-first"))
        .await
        .expect_err("past the limit");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains("short of CPU"), "{refused:?}");
    assert_eq!(boardroom_testkit::retry_after(&refused), Some("1"));
    // Refused before anything was written or taken: no message, no lease, no state.
    assert!(suite.messages(&waiting).await.is_empty());
    let state = suite.state(&waiting).await;
    assert!(state.running_turn_id.is_empty());
    assert_eq!(state.last_seq, 0);
    let metrics = boardroom_testkit::scrape_metrics(suite.admin).await;
    assert_eq!(
        boardroom_testkit::metric_value(&metrics, &["admission_work_refused_total"]),
        1.0
    );

    // The running turn ends: its place is the retry's.
    assert!(cancel(&suite.client, &held, &turn_id).await);
    last_event(&mut stream).await;
    let events = eventually(Duration::from_secs(10), || async {
        run(&suite.client, turn(&waiting, "Hire?", "refused-first"))
            .await
            .ok()
    })
    .await;
    completed(&events);
    assert_eq!(user_messages(&suite, &waiting).await, ["Hire?"]);
}
