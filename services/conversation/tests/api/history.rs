use std::time::Duration;

use boardroom_proto::conversation::v1 as pb;
use boardroom_runtime::config::Secret;

use crate::helpers::*;

async fn checkpoints(suite: &Suite, thread: &str) -> Vec<pb::Checkpoint> {
    suite
        .client
        .clone()
        .list_checkpoints(pb::ListCheckpointsRequest {
            thread_id: thread.into(),
            page_size: 100,
            page_token: String::new(),
        })
        .await
        .expect("ListCheckpoints")
        .into_inner()
        .checkpoints
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_turn_thread_keeps_a_bounded_state_and_few_checkpoints() {
    let suite = suite(|c| {
        c.conversation.checkpoint_retention = 5;
        c.conversation.context_budget_tokens = 600;
        c.conversation.history_budget_tokens = 800;
        c.conversation.summary_max_tokens = 100;
    })
    .await;
    let thread = suite.thread(2).await;
    let mut sizes = Vec::new();
    for i in 1..=100 {
        let done = complete_turn(&suite.client, &thread, &format!("Turn {i}: what next?")).await;
        assert_eq!(done.last_seq - done.first_seq + 1, 4);
        if i % 25 == 0 {
            let newest = checkpoints(&suite, &thread).await;
            sizes.push(newest[0].stored_bytes);
        }
    }
    let messages = suite.messages(&thread).await;
    assert_eq!(messages.len(), 400);
    assert_eq!(
        messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        (1..=400).collect::<Vec<i64>>()
    );
    // Background summaries folded the old turns in; the state stays small.
    let state = eventually(Duration::from_secs(10), || async {
        let s = suite.state(&thread).await.state.expect("state");
        (s.summarized_through_seq > 300).then_some(s)
    })
    .await;
    assert!(!state.summary.is_empty());
    assert!(
        state.summary.len() <= 400,
        "summary is bounded: {}",
        state.summary.len()
    );
    assert_eq!(state.turns, 100);
    // The stored state does not grow with the thread.
    let (first, last) = (sizes[0], sizes[sizes.len() - 1]);
    assert!(last <= first * 2, "checkpoint sizes {sizes:?}");
    // Retention: the newest 5 versions only.
    let kept = checkpoints(&suite, &thread).await;
    assert_eq!(kept.len(), 5, "{kept:?}");
    let newest = kept[0].version;
    assert_eq!(
        kept.iter().map(|c| c.version).collect::<Vec<_>>(),
        (newest - 4..=newest).rev().collect::<Vec<_>>()
    );
    assert_eq!(kept[0].parent_version, newest - 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_starts_from_its_checkpoint_which_outlives_retention() {
    let suite = suite(|c| c.conversation.checkpoint_retention = 2).await;
    let thread = suite.thread(1).await;
    for i in 1..=3 {
        complete_turn(&suite.client, &thread, &format!("turn {i}")).await;
    }
    let forked = suite
        .client
        .clone()
        .fork_thread(pb::ForkThreadRequest {
            thread_id: thread.clone(),
            version: 2,
            title: "what if".into(),
            request_id: "fork-1".into(),
        })
        .await
        .expect("ForkThread")
        .into_inner();
    let state = forked.state.expect("state");
    assert_eq!((state.version, state.covers_seq, state.turns), (1, 6, 2));
    // The fork's history is the source's up to the checkpoint.
    let source = suite.messages(&thread).await;
    let copy = suite.messages(&forked.thread_id).await;
    assert_eq!(copy.len(), 6);
    for (a, b) in source.iter().zip(&copy) {
        assert_eq!(
            (a.seq, &a.content, &a.author),
            (b.seq, &b.content, &b.author)
        );
    }
    // A retried fork returns the same thread.
    let again = suite
        .client
        .clone()
        .fork_thread(pb::ForkThreadRequest {
            thread_id: thread.clone(),
            version: 2,
            title: "what if".into(),
            request_id: "fork-1".into(),
        })
        .await
        .expect("ForkThread")
        .into_inner();
    assert_eq!(again.thread_id, forked.thread_id);
    // Both threads go on independently.
    let done = complete_turn(&suite.client, &forked.thread_id, "on the fork").await;
    assert_eq!((done.first_seq, done.state_version), (7, 2));
    for i in 4..=6 {
        complete_turn(&suite.client, &thread, &format!("turn {i}")).await;
    }
    assert_eq!(suite.messages(&thread).await.len(), 18);
    // Retention keeps the newest two, and the pinned fork point.
    let kept: Vec<(i64, bool)> = checkpoints(&suite, &thread)
        .await
        .iter()
        .map(|c| (c.version, c.pinned))
        .collect();
    assert_eq!(kept, [(6, false), (5, false), (2, true)]);
    // Forking from a pruned version is NOT_FOUND.
    let status = suite
        .client
        .clone()
        .fork_thread(pb::ForkThreadRequest {
            thread_id: thread.clone(),
            version: 3,
            title: String::new(),
            request_id: String::new(),
        })
        .await
        .expect_err("pruned");
    assert_eq!(status.code(), tonic::Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_instance_resumes_a_thread_from_its_checkpoint() {
    // No Redis: the new instance can only find the state in its checkpoint.
    let mut suite = suite(|c| c.redis.url = Secret::new("")).await;
    let thread = suite.thread(2).await;
    for i in 1..=3 {
        complete_turn(&suite.client, &thread, &format!("turn {i}")).await;
    }
    let before = suite.state(&thread).await;
    suite.stop_conversation().await;
    suite.start_conversation().await;
    let after = suite.state(&thread).await;
    assert_eq!(before, after);
    let done = complete_turn(&suite.client, &thread, "turn 4").await;
    assert_eq!((done.first_seq, done.state_version), (13, 4));
    let state = suite.state(&thread).await.state.expect("state");
    assert_eq!(state.turns, 4);
    assert_eq!(
        state.advisors.iter().map(|a| a.turns).collect::<Vec<_>>(),
        [4, 4]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_page_both_ways_by_seq() {
    let suite = suite(|_| {}).await;
    let thread = suite.thread(1).await;
    for i in 1..=5 {
        complete_turn(&suite.client, &thread, &format!("turn {i}")).await;
    }
    let mut client = suite.client.clone();
    let (mut seen, mut token) = (Vec::new(), String::new());
    loop {
        let page = client
            .list_messages(pb::ListMessagesRequest {
                thread_id: thread.clone(),
                direction: pb::Direction::Backward as i32,
                page_size: 4,
                page_token: token,
            })
            .await
            .expect("ListMessages")
            .into_inner();
        assert!(page.messages.len() <= 4);
        seen.extend(page.messages.iter().map(|m| m.seq));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, (1..=15).rev().collect::<Vec<i64>>());
    // A token of one list is refused by another.
    let page = client
        .list_messages(pb::ListMessagesRequest {
            thread_id: thread.clone(),
            direction: pb::Direction::Forward as i32,
            page_size: 2,
            page_token: String::new(),
        })
        .await
        .expect("ListMessages")
        .into_inner();
    let status = client
        .list_messages(pb::ListMessagesRequest {
            thread_id: thread.clone(),
            direction: pb::Direction::Backward as i32,
            page_size: 2,
            page_token: page.next_page_token,
        })
        .await
        .expect_err("foreign token");
    assert_eq!(violated_fields(&status), ["page_token"]);
}
