use std::time::Duration;

use boardroom_proto::conversation::v1 as pb;
use boardroom_proto::session::v1 as spb;
use tonic::Code;

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_name_their_fields_and_write_nothing() {
    let suite = suite(|c| c.conversation.max_message_bytes = 100).await;
    let thread = suite.thread(2).await;
    let mut client = suite.client.clone();

    for (request, fields) in [
        (turn("", "hi", ""), vec!["thread_id"]),
        (turn("not-a-uuid", "hi", ""), vec!["thread_id"]),
        (turn(&thread, "", ""), vec!["content"]),
        (
            turn(&thread, &"x".repeat(101), &"r".repeat(129)),
            vec!["content", "request_id"],
        ),
        (
            pb::RunTurnRequest {
                advisors: vec!["advisor0".into(), "nobody".into(), "advisor0".into()],
                ..turn(&thread, "hi", "")
            },
            vec!["advisors[1]", "advisors[2]"],
        ),
        (
            pb::RunTurnRequest {
                double_text: 99,
                ..turn(&thread, "hi", "")
            },
            vec!["double_text"],
        ),
        (
            pb::RunTurnRequest {
                on_disconnect: 99,
                ..turn(&thread, "hi", "")
            },
            vec!["on_disconnect"],
        ),
    ] {
        let status = run(&client, request).await.expect_err("refused");
        assert_eq!(violated_fields(&status), fields);
    }
    let status = client
        .append_message(pb::AppendMessageRequest {
            thread_id: thread.clone(),
            role: pb::Role::Unspecified as i32,
            author: String::new(),
            content: String::new(),
            request_id: String::new(),
        })
        .await
        .expect_err("refused");
    assert_eq!(violated_fields(&status), ["role"]);
    let status = client
        .append_message(pb::AppendMessageRequest {
            thread_id: thread.clone(),
            role: pb::Role::Advisor as i32,
            author: String::new(),
            content: String::new(),
            request_id: String::new(),
        })
        .await
        .expect_err("refused");
    assert_eq!(violated_fields(&status), ["role"]);
    let status = client
        .append_message(pb::AppendMessageRequest {
            thread_id: thread.clone(),
            role: pb::Role::User as i32,
            author: String::new(),
            content: " ".into(),
            request_id: String::new(),
        })
        .await
        .expect_err("refused");
    assert_eq!(violated_fields(&status), ["content"]);
    let status = client
        .list_messages(pb::ListMessagesRequest {
            thread_id: thread.clone(),
            direction: 9,
            page_size: -1,
            page_token: String::new(),
        })
        .await
        .expect_err("refused");
    assert_eq!(violated_fields(&status), ["direction"]);
    let status = client
        .list_checkpoints(pb::ListCheckpointsRequest {
            thread_id: thread.clone(),
            page_size: 5000,
            page_token: String::new(),
        })
        .await
        .expect_err("refused");
    assert_eq!(violated_fields(&status), ["page_size"]);
    let status = client
        .fork_thread(pb::ForkThreadRequest {
            thread_id: thread.clone(),
            version: -1,
            title: String::new(),
            request_id: String::new(),
        })
        .await
        .expect_err("refused");
    assert_eq!(violated_fields(&status), ["version"]);
    let status = client
        .cancel_turn(pb::CancelTurnRequest {
            thread_id: thread.clone(),
            turn_id: "nope".into(),
        })
        .await
        .expect_err("refused");
    assert_eq!(violated_fields(&status), ["turn_id"]);
    for (turn_id, field) in [("", "turn_id"), ("nope", "turn_id")] {
        let status = client
            .join_turn(pb::JoinTurnRequest {
                thread_id: thread.clone(),
                turn_id: turn_id.into(),
                after_event: 0,
            })
            .await
            .expect_err("refused");
        assert_eq!(violated_fields(&status), [field]);
    }
    // A turn that never ran has no events to join. (UNAVAILABLE, while the turn log's Redis
    // client is still connecting after start, is retried as the contract allows.)
    let never_ran = uuid::Uuid::now_v7().to_string();
    let status = eventually(Duration::from_secs(5), || {
        let (mut client, thread, turn_id) = (client.clone(), thread.clone(), never_ran.clone());
        async move {
            let status = client
                .join_turn(pb::JoinTurnRequest {
                    thread_id: thread,
                    turn_id,
                    after_event: 0,
                })
                .await
                .expect_err("refused");
            (status.code() != Code::Unavailable).then_some(status)
        }
    })
    .await;
    assert_eq!(status.code(), Code::NotFound, "{status:?}");

    let state = suite.state(&thread).await;
    assert_eq!(
        (state.last_seq, state.state.expect("state").version),
        (0, 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_and_closed_threads_are_refused() {
    let suite = suite(|_| {}).await;
    let mut client = suite.client.clone();
    let unknown = uuid::Uuid::now_v7().to_string();
    let status = run(&client, turn(&unknown, "hi", ""))
        .await
        .expect_err("unknown");
    assert_eq!(status.code(), Code::NotFound);
    let status = client
        .get_state(pb::GetStateRequest {
            thread_id: unknown.clone(),
        })
        .await
        .expect_err("unknown");
    assert_eq!(status.code(), Code::NotFound);
    let status = client
        .fork_thread(pb::ForkThreadRequest {
            thread_id: unknown,
            version: 0,
            title: String::new(),
            request_id: String::new(),
        })
        .await
        .expect_err("unknown");
    assert_eq!(status.code(), Code::NotFound);

    let thread = suite.thread(1).await;
    // A thread without checkpoints cannot be forked.
    let status = client
        .fork_thread(pb::ForkThreadRequest {
            thread_id: thread.clone(),
            version: 0,
            title: String::new(),
            request_id: String::new(),
        })
        .await
        .expect_err("nothing to fork");
    assert_eq!(status.code(), Code::NotFound);
    // Closed before this service looked it up (a thread's status is reused for
    // `conversation.context_ttl_ms` once looked up).
    let closed = suite.thread(1).await;
    suite
        .sessions
        .clone()
        .update_thread_status(spb::UpdateThreadStatusRequest {
            id: closed.clone(),
            status: spb::ThreadStatus::Closed as i32,
        })
        .await
        .expect("closing");
    let status = run(&client, turn(&closed, "hi", ""))
        .await
        .expect_err("closed");
    assert_eq!(status.code(), Code::FailedPrecondition);
}
