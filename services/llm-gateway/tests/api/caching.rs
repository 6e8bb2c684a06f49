//! The exact cache and coalescing of identical requests in flight.

use std::time::Duration;

use boardroom_proto::llm::v1 as pb;
use boardroom_testkit::{Behavior, FakeOpenAi};
use tonic::Code;

use crate::helpers::{chat, drain, route, spawn_app, upstream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deterministic_request_is_answered_once_then_from_the_cache() {
    let fake = FakeOpenAi::start().await;
    let app = spawn_app(|c| route(c, "gpt", vec![("a", upstream(&fake.base_url()))])).await;
    let mut client = app.client.clone();
    let mut only = chat("gpt", "cached?", 0.0);
    only.cache_policy = pb::CachePolicy::CacheOnly as i32;
    assert_eq!(
        client.chat(only.clone()).await.expect_err("empty").code(),
        Code::NotFound
    );

    let first = client
        .chat(chat("gpt", "cached?", 0.0))
        .await
        .expect("miss")
        .into_inner();
    assert_eq!(first.cache, pb::CacheOutcome::Miss as i32);
    let mut with_id = chat("gpt", "cached?", 0.0);
    with_id.request_id = "another id".into();
    let second = client.chat(with_id).await.expect("hit").into_inner();
    assert_eq!(second.cache, pb::CacheOutcome::Exact as i32);
    assert_eq!(second.message, first.message);
    assert_eq!(
        second.usage.expect("usage").output_tokens,
        0,
        "a hit costs nothing"
    );
    assert_eq!(
        client
            .chat(only)
            .await
            .expect("cache only")
            .into_inner()
            .cache,
        pb::CacheOutcome::Exact as i32
    );
    assert_eq!(fake.calls(), 1);

    let mut bypass = chat("gpt", "cached?", 0.0);
    bypass.cache_policy = pb::CachePolicy::Bypass as i32;
    assert_eq!(
        client
            .chat(bypass)
            .await
            .expect("bypass")
            .into_inner()
            .cache,
        pb::CacheOutcome::Miss as i32
    );
    assert_eq!(fake.calls(), 2);
    let sampled = client
        .chat(chat("gpt", "cached?", 0.9))
        .await
        .expect("sampled")
        .into_inner();
    assert_eq!(
        sampled.cache,
        pb::CacheOutcome::Miss as i32,
        "temperature > 0 is not cached"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_answer_is_cached_assembled_and_a_broken_one_not_at_all() {
    let fake = FakeOpenAi::start().await;
    let app = spawn_app(|c| route(c, "gpt", vec![("a", upstream(&fake.base_url()))])).await;
    let mut client = app.client.clone();
    fake.script([Behavior::DropMidStream]);
    let (_, done, error) = drain(&mut client, chat("gpt", "stream me", 0.0)).await;
    assert!(done.is_none() && error.is_some());
    let (text, done, error) = drain(&mut client, chat("gpt", "stream me", 0.0)).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(
        done.expect("done").cache,
        pb::CacheOutcome::Miss as i32,
        "the broken one was not cached"
    );
    let unary = client
        .chat(chat("gpt", "stream me", 0.0))
        .await
        .expect("hit")
        .into_inner();
    assert_eq!(unary.cache, pb::CacheOutcome::Exact as i32);
    assert_eq!(
        unary.message.expect("message").content,
        text,
        "cached as the assembled message"
    );
    let (again, done, _) = drain(&mut client, chat("gpt", "stream me", 0.0)).await;
    assert_eq!(
        (again, done.expect("done").cache),
        (text, pb::CacheOutcome::Exact as i32)
    );
    assert_eq!(fake.calls(), 2);
}

async fn hundred_at_once(temperature: f32) -> (usize, Vec<i32>) {
    let fake = FakeOpenAi::start().await;
    // Long enough for all 100 calls to arrive while the first is in flight, on a busy machine.
    fake.set_latency(Duration::from_millis(2_000));
    let app = spawn_app(|c| route(c, "gpt", vec![("a", upstream(&fake.base_url()))])).await;
    let calls: Vec<_> = (0..100)
        .map(|_| {
            let mut client = app.client.clone();
            tokio::spawn(async move {
                client
                    .chat(chat("gpt", "the same question", temperature))
                    .await
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for call in calls {
        let answer = call.await.expect("joined").expect("answered").into_inner();
        assert_eq!(
            answer.message.expect("message").content,
            "echo: the same question"
        );
        outcomes.push(answer.cache);
    }
    (fake.calls(), outcomes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_identical_requests_in_flight_make_one_upstream_call() {
    let (calls, outcomes) = hundred_at_once(0.7).await;
    assert_eq!(calls, 1, "coalesced, though not cacheable");
    assert_eq!(
        outcomes
            .iter()
            .filter(|o| **o == pb::CacheOutcome::Miss as i32)
            .count(),
        1
    );
    assert_eq!(
        outcomes
            .iter()
            .filter(|o| **o == pb::CacheOutcome::Coalesced as i32)
            .count(),
        99
    );

    let (calls, _) = hundred_at_once(0.0).await;
    assert_eq!(calls, 1, "cacheable: single-flight through the cache");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coalesced_call_outlives_its_first_callers_deadline_for_the_next_one() {
    let fake = FakeOpenAi::start().await;
    fake.set_latency(Duration::from_millis(1_000));
    let app = spawn_app(|c| route(c, "gpt", vec![("a", upstream(&fake.base_url()))])).await;
    let mut request = tonic::Request::new(chat("gpt", "same", 0.5));
    request.set_timeout(Duration::from_millis(300));
    let err = app.client.clone().chat(request).await.expect_err("gave up");
    assert!(
        matches!(err.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{err:?}"
    );
    let answer = app
        .client
        .clone()
        .chat(chat("gpt", "same", 0.5))
        .await
        .expect("answered: the first caller's deadline is not the flight's")
        .into_inner();
    assert_eq!(answer.message.expect("message").content, "echo: same");
    assert!(
        fake.calls() <= 2,
        "joined the flight, or a new one after it was dropped"
    );
}
