//! A conversation instance killed mid-turn (SIGKILL: no drain, no lease given back) does not
//! lock its thread: the lease it held is short and no longer renewed, so another instance
//! takes the thread's next turn within one lease.

use std::time::{Duration, Instant};

use boardroom_proto::conversation::v1 as cpb;
use boardroom_proto::conversation::v1::conversation_service_client::ConversationServiceClient;
use boardroom_proto::conversation::v1::run_turn_response::Event;
use boardroom_testkit::{TestDatabase, channel};
use tokio_stream::StreamExt;

use crate::binary::{conversation_replica, new_thread, serve_on};

/// The lease this test runs with (the default is 5 s; the bound is the lease either way).
const LEASE_MS: u64 = 1_500;

fn run_turn(thread: &str, content: &str) -> cpb::RunTurnRequest {
    cpb::RunTurnRequest {
        thread_id: thread.into(),
        content: content.into(),
        author: "user".into(),
        ..cpb::RunTurnRequest::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_instance_frees_its_threads_within_one_lease() {
    // The mock model takes 60 s to its first token: the turn is mid-flight when killed.
    let env = [
        (
            "BOARDROOM_LLM__DEPLOYMENTS__MOCK__TTFT_MS",
            "60000".to_owned(),
        ),
        (
            "BOARDROOM_CONVERSATION__TURN_LEASE_MS",
            LEASE_MS.to_string(),
        ),
    ];
    let suite = serve_on(TestDatabase::postgres().await, &[], &env).await;
    let mut doomed = conversation_replica(
        &suite,
        &[(
            "BOARDROOM_CONVERSATION__TURN_LEASE_MS",
            LEASE_MS.to_string(),
        )],
    )
    .await;
    let thread = new_thread(suite.grpc, &["cfo"]).await;

    let on_doomed = ConversationServiceClient::new(channel(doomed.grpc).await);
    let mut stream = on_doomed
        .clone()
        .run_turn(run_turn(&thread, "Plan the launch"))
        .await
        .expect("RunTurn")
        .into_inner();
    loop {
        match stream.next().await.expect("an event").expect("event").event {
            Some(Event::AdvisorStarted(_)) => break,
            Some(Event::TurnStarted(_)) => {}
            other => panic!("{other:?}"),
        }
    }
    doomed.signal("KILL");
    let killed = Instant::now();
    doomed.child.wait().await.expect("killed");

    // The thread is held for now (the lease is still valid)...
    let survivor = ConversationServiceClient::new(
        channel(suite.conversation_grpc.expect("conversation")).await,
    );
    let refused = survivor
        .clone()
        .run_turn(run_turn(&thread, "Anyone?"))
        .await
        .expect_err("the dead instance's lease still holds");
    assert_eq!(refused.code(), tonic::Code::Aborted, "{refused:?}");
    // ...and free within one lease of the kill.
    let taken = loop {
        match survivor
            .clone()
            .run_turn(run_turn(&thread, "Anyone?"))
            .await
        {
            Ok(started) => break started.into_inner(),
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::Aborted, "{status:?}");
                assert!(
                    killed.elapsed() < Duration::from_millis(LEASE_MS + 2_000),
                    "still locked {:?} after the kill",
                    killed.elapsed()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let freed = killed.elapsed();
    let mut taken = taken;
    match taken.next().await.expect("an event").expect("event").event {
        Some(Event::TurnStarted(_)) => {}
        other => panic!("{other:?}"),
    }
    assert!(
        freed <= Duration::from_millis(LEASE_MS + 2_000),
        "freed after {freed:?}"
    );
    eprintln!("the thread took a new turn {freed:?} after the kill (lease {LEASE_MS} ms)");
}
