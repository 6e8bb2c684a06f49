//! Two conversation instances on one database and one Redis: turn control from either.

use std::time::{Duration, Instant};

use boardroom_proto::conversation::v1 as pb;
use boardroom_proto::conversation::v1::run_turn_response::Event;
use boardroom_testkit::{Behavior, FakeOpenAi};
use futures::StreamExt;

use crate::helpers::{
    Client, Replica, Suite, cancel, completed, eventually, last_event, run, started_turn, suite,
    turn, upstream_alias, user_messages,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_turn_through_another_replica_stops_the_turn_where_it_runs() {
    let slow = FakeOpenAi::start().await;
    slow.script(std::iter::repeat_n(Behavior::Hang, 10));
    let (suite, other, thread) = two_replicas(&slow, |_| {}).await;
    let (turn_id, mut stream) = started_turn(&suite.client, &thread, "").await;
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
    let last = last_event(&mut stream).await;
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
    let (suite, other, thread) = two_replicas(&slow, |c| {
        c.conversation.turn_lease_ms = 400;
    })
    .await;
    let (_turn_id, mut stream) = started_turn(&suite.client, &thread, "").await;
    // Well past its 400 ms lease, the turn still holds the thread: the heartbeat renews it.
    let deadline = Instant::now() + Duration::from_millis(1_000);
    while Instant::now() < deadline {
        let refused = run(&other.client, turn(&thread, "me too", ""))
            .await
            .expect_err("refused while the first runs");
        assert_eq!(refused.code(), tonic::Code::Aborted, "{refused:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let last = last_event(&mut stream).await;
    assert!(
        matches!(last, Some(Event::TurnCompleted(_))),
        "the renewed turn stores itself: {last:?}"
    );
}

/// The suite with its `cto` advisor on the fake upstream `slow` (alias "slow"), `configure`
/// applied, a second conversation instance, and a thread.
async fn two_replicas(
    slow: &FakeOpenAi,
    configure: impl FnOnce(&mut boardroom_runtime::Config),
) -> (Suite, Replica, String) {
    let suite = suite(|c| {
        upstream_alias(c, "slow", &slow.base_url());
        configure(c);
    })
    .await;
    let other = suite.replica(|_| {}).await;
    let thread = suite.thread_with(&[("cto", "slow")]).await;
    (suite, other, thread)
}

/// A RunTurn asked to continue without its caller (`on_disconnect: CONTINUE`), its stream.
async fn continuing_turn(client: &Client, thread: &str) -> tonic::Streaming<pb::RunTurnResponse> {
    client
        .clone()
        .run_turn(pb::RunTurnRequest {
            on_disconnect: pb::DisconnectPolicy::Continue as i32,
            ..turn(thread, "Plan the launch", "")
        })
        .await
        .expect("RunTurn")
        .into_inner()
}

/// A JoinTurn's stream. UNAVAILABLE (a replica whose Redis clients are still connecting) is
/// retried, as the contract allows, for 5 s.
async fn join_stream(
    client: &Client,
    thread: &str,
    turn_id: &str,
    after_event: u64,
) -> tonic::Streaming<pb::JoinTurnResponse> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let call = client
            .clone()
            .join_turn(pb::JoinTurnRequest {
                thread_id: thread.into(),
                turn_id: turn_id.into(),
                after_event,
            })
            .await;
        match call {
            Ok(stream) => return stream.into_inner(),
            Err(status)
                if status.code() == tonic::Code::Unavailable && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(status) => panic!("JoinTurn: {status:?}"),
        }
    }
}

/// Reads a JoinTurn stream to its end: (event_index, event) in order.
async fn joined(
    client: &Client,
    thread: &str,
    turn_id: &str,
    after_event: u64,
) -> Vec<(u64, Event)> {
    let mut stream = join_stream(client, thread, turn_id, after_event).await;
    let mut events = Vec::new();
    while let Some(item) = stream.next().await {
        let item = item.expect("event").event.expect("an event");
        events.push((item.event_index, item.event.expect("a kind")));
    }
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_asked_to_continue_outlives_its_caller_and_any_replica_can_join_it() {
    let slow = FakeOpenAi::start().await;
    slow.set_latency(Duration::from_millis(700));
    let suite = suite(|c| upstream_alias(c, "slow", &slow.base_url())).await;
    let other = suite.replica(|_| {}).await;
    let thread = suite.thread_with(&[("cto", "slow"), ("cfo", "mock")]).await;
    let mut stream = continuing_turn(&suite.client, &thread).await;
    let first = stream.next().await.expect("an event").expect("event");
    let turn_id = match first.event {
        Some(Event::TurnStarted(s)) => s.turn_id,
        other => panic!("{other:?}"),
    };
    assert_eq!(first.event_index, 1);
    // The caller goes away after the first event; the turn goes on.
    drop(stream);

    // From the other replica (through Redis): everything after event 1, live, to the end.
    let rest = joined(&other.client, &thread, &turn_id, 1).await;
    let indexes: Vec<u64> = rest.iter().map(|(i, _)| *i).collect();
    let expected: Vec<u64> = (2..2 + rest.len() as u64).collect();
    assert_eq!(indexes, expected, "in order, none missed: {rest:#?}");
    assert!(
        matches!(rest.last(), Some((_, Event::TurnCompleted(_)))),
        "{rest:#?}"
    );
    assert!(
        rest.iter()
            .any(|(_, e)| matches!(e, Event::AdvisorFinished(f) if f.advisor == "cto"))
    );
    assert_eq!(suite.messages(&thread).await.len(), 4, "stored once");

    // Just finished: both replicas replay it whole, the same events.
    let here = joined(&suite.client, &thread, &turn_id, 0).await;
    let there = joined(&other.client, &thread, &turn_id, 0).await;
    assert_eq!(here.len(), rest.len() + 1);
    assert_eq!(here, there);
    assert!(matches!(here[0], (1, Event::TurnStarted(_))));
}

/// A turn's log goes to Redis in one write at its end while nobody elsewhere follows it; a
/// JoinTurn on another replica asks the one running it, over the turn bus, for the short
/// window, and follows the turn live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_on_another_replica_hastens_the_turn_s_log_and_follows_it_live() {
    let slow = FakeOpenAi::start().await;
    slow.script(std::iter::repeat_n(Behavior::Hang, 10));
    // Unasked, the running replica would write nothing for a minute.
    let (suite, other, thread) = two_replicas(&slow, |c| {
        c.conversation.turn_log_idle_write_ms = 60_000;
    })
    .await;
    let (turn_id, mut stream) = started_turn(&suite.client, &thread, "").await;
    eventually(Duration::from_secs(5), || async {
        (slow.in_flight() == 1).then_some(())
    })
    .await;
    // The model hangs: the other replica sees the events so far only if the log hastened.
    let seen = tokio::time::timeout(
        Duration::from_secs(10),
        joined_events_until_advisor_started(&other.client, &thread, &turn_id),
    )
    .await
    .expect("the follower elsewhere got the running turn's events");
    assert!(seen >= 2, "{seen}");
    assert_eq!(slow.in_flight(), 1, "while the turn still runs");
    assert!(cancel(&other.client, &thread, &turn_id).await);
    let last = last_event(&mut stream).await;
    assert!(matches!(last, Some(Event::TurnFailed(_))), "{last:?}");
    // The last event goes at once: the whole turn, from the other replica.
    let there = tokio::time::timeout(
        Duration::from_secs(10),
        joined(&other.client, &thread, &turn_id, 0),
    )
    .await
    .expect("the finished turn's log, at once");
    assert!(matches!(there.first(), Some((1, Event::TurnStarted(_)))));
    assert!(
        matches!(there.last(), Some((_, Event::TurnFailed(_)))),
        "{there:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_reconnects_mid_turn_misses_nothing() {
    let slow = FakeOpenAi::start().await;
    slow.set_pace(40, 100);
    let suite = suite(|c| upstream_alias(c, "slow", &slow.base_url())).await;
    let thread = suite.thread_with(&[("cto", "slow")]).await;
    let mut stream = continuing_turn(&suite.client, &thread).await;
    let mut seen = Vec::new();
    let mut turn_id = String::new();
    // Read until the first delta, then the "network blip".
    while let Some(item) = stream.next().await {
        let item = item.expect("event");
        let event = item.event.expect("an event");
        if let Event::TurnStarted(s) = &event {
            turn_id = s.turn_id.clone();
        }
        let delta = matches!(event, Event::AdvisorDelta(_));
        seen.push((item.event_index, event));
        if delta {
            break;
        }
    }
    drop(stream);
    let last = seen.last().map(|(i, _)| *i).expect("events");
    seen.extend(joined(&suite.client, &thread, &turn_id, last).await);
    let indexes: Vec<u64> = seen.iter().map(|(i, _)| *i).collect();
    assert_eq!(indexes, (1..=seen.len() as u64).collect::<Vec<_>>());
    let answer: String = seen
        .iter()
        .filter_map(|(_, e)| match e {
            Event::AdvisorDelta(d) => Some(d.text.clone()),
            _ => None,
        })
        .collect();
    let stored = suite.messages(&thread).await;
    assert_eq!(
        stored[1].content, answer,
        "the deltas add up to the stored answer"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueued_turns_from_two_replicas_run_in_order_after_the_running_one() {
    use sea_orm::ConnectionTrait;
    let slow = FakeOpenAi::start().await;
    slow.set_latency(Duration::from_millis(1_500));
    let (suite, other, thread) = two_replicas(&slow, |c| {
        c.conversation.max_queued_turns = 2;
    })
    .await;
    let db = sea_orm::Database::connect(suite.config.database.url.expose())
        .await
        .expect("connect");
    let queued = || {
        let db = db.clone();
        let thread = thread.clone();
        async move {
            let row = db
                .query_one_raw(sea_orm::Statement::from_string(
                    db.get_database_backend(),
                    format!(
                        "SELECT count(*) AS n FROM conversation_turn_queue WHERE thread_id = '{thread}'"
                    ),
                ))
                .await
                .expect("count")
                .expect("a row");
            row.try_get::<i64>("", "n").expect("n")
        }
    };
    let (_first_id, first) = started_turn(&suite.client, &thread, "").await;
    let enqueue = |client: &Client, content: &str| {
        let client = client.clone();
        let request = pb::RunTurnRequest {
            double_text: pb::DoubleTextPolicy::Enqueue as i32,
            ..turn(&thread, content, "")
        };
        tokio::spawn(async move { run(&client, request).await })
    };
    let second = enqueue(&other.client, "second");
    eventually(Duration::from_secs(5), || async {
        (queued().await == 1).then_some(())
    })
    .await;
    let third = enqueue(&suite.client, "third");
    eventually(Duration::from_secs(5), || async {
        (queued().await == 2).then_some(())
    })
    .await;
    // The queue is full, and a turn that does not queue is refused as before.
    let full = run(
        &other.client,
        pb::RunTurnRequest {
            double_text: pb::DoubleTextPolicy::Enqueue as i32,
            ..turn(&thread, "fourth", "")
        },
    )
    .await
    .expect_err("full");
    assert_eq!(full.code(), tonic::Code::ResourceExhausted, "{full:?}");
    let refused = run(&suite.client, turn(&thread, "fifth", ""))
        .await
        .expect_err("taken");
    assert_eq!(refused.code(), tonic::Code::Aborted);

    let mut rest = first;
    while let Some(event) = rest.next().await {
        event.expect("event");
    }
    let second = completed(&second.await.expect("joined").expect("ran"));
    let third = completed(&third.await.expect("joined").expect("ran"));
    assert!(second.first_seq < third.first_seq);
    let users = user_messages(&suite, &thread).await;
    assert_eq!(users, ["Think hard", "second", "third"]);
    assert_eq!(queued().await, 0, "the queue is empty again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupting_turn_cancels_the_running_one_on_another_replica_and_runs() {
    let slow = FakeOpenAi::start().await;
    slow.script([Behavior::Hang]);
    let (suite, other, thread) = two_replicas(&slow, |_| {}).await;
    let (_id, mut first) = started_turn(&suite.client, &thread, "").await;
    let second = run(
        &other.client,
        pb::RunTurnRequest {
            double_text: pb::DoubleTextPolicy::Interrupt as i32,
            ..turn(&thread, "Actually, price it higher", "")
        },
    )
    .await
    .expect("the interrupting turn runs");
    completed(&second);
    let last = last_event(&mut first).await;
    match last {
        Some(Event::TurnFailed(f)) => assert_eq!(f.reason, pb::FailureReason::Cancelled as i32),
        other => panic!("{other:?}"),
    }
    let users = user_messages(&suite, &thread).await;
    assert_eq!(
        users,
        ["Actually, price it higher"],
        "nothing of the interrupted turn"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_boardroom_s_policy_applies_unless_the_request_names_one() {
    use boardroom_proto::session::v1 as spb;
    let slow = FakeOpenAi::start().await;
    slow.set_latency(Duration::from_millis(1_000));
    let suite = suite(|c| upstream_alias(c, "slow", &slow.base_url())).await;
    let other = suite.replica(|_| {}).await;
    let thread = suite
        .thread_with_policy(&[("cto", "slow")], spb::DoubleTextPolicy::Enqueue)
        .await;
    let (_id, mut first) = started_turn(&suite.client, &thread, "").await;
    // The request names REJECT: refused, whatever the boardroom says.
    let refused = run(
        &other.client,
        pb::RunTurnRequest {
            double_text: pb::DoubleTextPolicy::Reject as i32,
            ..turn(&thread, "no", "")
        },
    )
    .await
    .expect_err("refused");
    assert_eq!(refused.code(), tonic::Code::Aborted);
    // No policy in the request: the boardroom's ENQUEUE, so it waits and runs after.
    let second = run(&other.client, turn(&thread, "second", ""))
        .await
        .expect("queued, then run");
    completed(&second);
    while let Some(event) = first.next().await {
        event.expect("event");
    }
    assert_eq!(
        user_messages(&suite, &thread).await,
        ["Think hard", "second"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_turns_here_still_cancel_and_the_other_replica_answers_unavailable() {
    let mut redis = boardroom_testkit::PrivateRedis::start();
    let slow = FakeOpenAi::start().await;
    slow.script(std::iter::repeat_n(Behavior::Hang, 10));
    let (suite, other, thread) = two_replicas(&slow, |c| {
        c.redis.url = boardroom_runtime::config::Secret::new(redis.url());
    })
    .await;
    let (turn_id, mut stream) = started_turn(&suite.client, &thread, "").await;
    redis.stop();
    // The other replica cannot reach the instance running the turn: a retryable UNAVAILABLE,
    // not a false "nothing was running".
    let status = eventually(Duration::from_secs(5), || async {
        other
            .client
            .clone()
            .cancel_turn(pb::CancelTurnRequest {
                thread_id: thread.clone(),
                turn_id: turn_id.clone(),
            })
            .await
            .err()
    })
    .await;
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    let join = other
        .client
        .clone()
        .join_turn(pb::JoinTurnRequest {
            thread_id: thread.clone(),
            turn_id: turn_id.clone(),
            after_event: 0,
        })
        .await
        .expect_err("no turn log without Redis");
    assert_eq!(join.code(), tonic::Code::Unavailable, "{join:?}");
    // The instance running it needs no Redis to cancel it, nor to replay it.
    let here = joined_events_until_advisor_started(&suite.client, &thread, &turn_id).await;
    assert!(here >= 2);
    assert!(cancel(&suite.client, &thread, &turn_id).await);
    let last = last_event(&mut stream).await;
    assert!(matches!(last, Some(Event::TurnFailed(_))), "{last:?}");
}

/// Joins a running turn and reads until its first advisor started: how many events that took.
async fn joined_events_until_advisor_started(
    client: &Client,
    thread: &str,
    turn_id: &str,
) -> usize {
    let mut stream = join_stream(client, thread, turn_id, 0).await;
    let mut n = 0;
    while let Some(item) = stream.next().await {
        n += 1;
        let event = item.expect("event").event.and_then(|e| e.event);
        if matches!(event, Some(Event::AdvisorStarted(_))) {
            return n;
        }
    }
    n
}

/// Turn control on a Redis Cluster (three primaries, three replicas): the cancel bus and the
/// turn logs work from any replica as on one Redis (the turn log is one key per turn; the bus
/// one channel, which a cluster forwards to every node).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_redis_cluster_turns_are_joined_and_cancelled_from_another_replica() {
    let cluster = tokio::task::spawn_blocking(boardroom_testkit::RedisCluster::start)
        .await
        .expect("cluster");
    let slow = FakeOpenAi::start().await;
    slow.set_latency(Duration::from_millis(500));
    let url = cluster.url();
    let suite = suite(|c| {
        c.redis.url = boardroom_runtime::config::Secret::new(url);
        upstream_alias(c, "slow", &slow.base_url());
    })
    .await;
    let other = suite.replica(|_| {}).await;
    let thread = suite.thread_with(&[("cto", "slow")]).await;

    let mut stream = continuing_turn(&suite.client, &thread).await;
    let first = stream.next().await.expect("an event").expect("event");
    let Some(Event::TurnStarted(started)) = first.event else {
        panic!("{first:?}");
    };
    drop(stream);
    let rest = joined(&other.client, &thread, &started.turn_id, 1).await;
    assert!(
        matches!(rest.last(), Some((_, Event::TurnCompleted(_)))),
        "joined through the cluster to the end: {rest:#?}"
    );

    slow.script(std::iter::repeat_n(Behavior::Hang, 10));
    let (turn_id, mut stream) = started_turn(&suite.client, &thread, "").await;
    eventually(Duration::from_secs(5), || async {
        (slow.in_flight() == 1).then_some(())
    })
    .await;
    assert!(cancel(&other.client, &thread, &turn_id).await, "it runs");
    match last_event(&mut stream).await {
        Some(Event::TurnFailed(f)) => assert_eq!(f.reason, pb::FailureReason::Cancelled as i32),
        other => panic!("{other:?}"),
    }
}
