//! Two conversation instances on one database and one Redis: turn control from either.

use std::time::{Duration, Instant};

use boardroom_proto::conversation::v1 as pb;
use boardroom_proto::conversation::v1::run_turn_response::Event;
use boardroom_testkit::{Behavior, FakeOpenAi};
use futures::StreamExt;

use crate::helpers::{Client, eventually, run, suite, turn, upstream_alias};

/// Starts a turn through `client` on a hanging upstream; its id and stream once the advisor
/// has started.
async fn hanging_turn_on(
    client: &Client,
    thread: &str,
) -> (String, tonic::Streaming<pb::RunTurnResponse>) {
    let mut stream = client
        .clone()
        .run_turn(turn(thread, "Think hard", ""))
        .await
        .expect("RunTurn")
        .into_inner();
    let mut turn_id = String::new();
    while let Some(event) = stream.next().await {
        match event.expect("event").event {
            Some(Event::TurnStarted(s)) => turn_id = s.turn_id,
            Some(Event::AdvisorStarted(_)) => break,
            other => panic!("{other:?}"),
        }
    }
    (turn_id, stream)
}

async fn cancel(client: &Client, thread: &str, turn_id: &str) -> bool {
    client
        .clone()
        .cancel_turn(pb::CancelTurnRequest {
            thread_id: thread.into(),
            turn_id: turn_id.into(),
        })
        .await
        .expect("CancelTurn")
        .into_inner()
        .cancelled
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_turn_through_another_replica_stops_the_turn_where_it_runs() {
    let slow = FakeOpenAi::start().await;
    slow.script(std::iter::repeat_n(Behavior::Hang, 10));
    let suite = suite(|c| upstream_alias(c, "slow", &slow.base_url())).await;
    let other = suite.replica(|_| {}).await;
    let thread = suite.thread_with(&[("cto", "slow")]).await;
    let (turn_id, mut stream) = hanging_turn_on(&suite.client, &thread).await;
    eventually(Duration::from_secs(5), || async {
        (slow.in_flight() == 1).then_some(())
    })
    .await;

    // Another turn's id, or a thread with nothing running, cancels nothing.
    assert!(!cancel(&other.client, &thread, &uuid::Uuid::now_v7().to_string()).await);
    let idle = suite.thread(1).await;
    assert!(!cancel(&other.client, &idle, "").await);

    let asked = Instant::now();
    assert!(cancel(&other.client, &thread, &turn_id).await, "it runs");
    let mut last = None;
    while let Some(event) = stream.next().await {
        last = event.expect("event").event;
    }
    let ended = asked.elapsed();
    match last {
        Some(Event::TurnFailed(f)) => assert_eq!(f.reason, pb::FailureReason::Cancelled as i32),
        other => panic!("{other:?}"),
    }
    // The contract's bound is 100 ms (the bench measures it); a loaded test machine gets
    // slack, but not a lease's worth.
    assert!(ended < Duration::from_secs(1), "{ended:?}");
    eventually(Duration::from_secs(5), || async {
        (slow.in_flight() == 0).then_some(())
    })
    .await;
    let state = suite.state(&thread).await;
    assert_eq!(state.last_seq, 0, "nothing stored");
    assert!(state.running_turn_id.is_empty());
    // Nothing runs any more, on either instance.
    assert!(!cancel(&other.client, &thread, "").await);
    assert!(!cancel(&suite.client, &thread, "").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_turn_renews_its_short_lease_and_holds_the_thread_against_other_replicas() {
    let slow = FakeOpenAi::start().await;
    slow.set_latency(Duration::from_millis(1_500));
    let suite = suite(|c| {
        upstream_alias(c, "slow", &slow.base_url());
        c.conversation.turn_lease_ms = 400;
    })
    .await;
    let other = suite.replica(|_| {}).await;
    let thread = suite.thread_with(&[("cto", "slow")]).await;
    let (_turn_id, mut stream) = hanging_turn_on(&suite.client, &thread).await;
    // Well past its 400 ms lease, the turn still holds the thread: the heartbeat renews it.
    let deadline = Instant::now() + Duration::from_millis(1_000);
    while Instant::now() < deadline {
        let refused = run(&other.client, turn(&thread, "me too", ""))
            .await
            .expect_err("refused while the first runs");
        assert_eq!(refused.code(), tonic::Code::Aborted, "{refused:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut last = None;
    while let Some(event) = stream.next().await {
        last = event.expect("event").event;
    }
    assert!(
        matches!(last, Some(Event::TurnCompleted(_))),
        "the renewed turn stores itself: {last:?}"
    );
}
