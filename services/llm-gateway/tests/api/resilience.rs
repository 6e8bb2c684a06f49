//! Retries, fallback, timeouts, broken streams, circuit breakers.

use std::time::{Duration, Instant};

use boardroom_proto::llm::v1 as pb;
use boardroom_testkit::{Behavior, FakeOpenAi};
use tonic::Code;

use crate::helpers::{chat, drain, route, spawn_app, upstream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_with_retry_after_is_retried_on_the_same_deployment() {
    let fake = FakeOpenAi::start().await;
    fake.script([Behavior::Status(429, Some(0))]);
    let app = spawn_app(|c| route(c, "gpt", vec![("a", upstream(&fake.base_url()))])).await;
    let answer = app
        .client
        .clone()
        .chat(chat("gpt", "hi", 0.5))
        .await
        .expect("recovered")
        .into_inner();
    assert_eq!(answer.provider, "a");
    assert_eq!(fake.calls(), 2, "one retry");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundreds_and_hangs_fall_back_to_the_next_deployment() {
    let (a, b) = (FakeOpenAi::start().await, FakeOpenAi::start().await);
    let app = spawn_app(|c| {
        route(
            c,
            "gpt",
            vec![
                ("a", upstream(&a.base_url())),
                ("b", upstream(&b.base_url())),
            ],
        );
        c.llm.timeouts.headers_ms = 300;
        c.llm.timeouts.first_token_ms = 300;
        c.llm.retry.max_attempts = 2;
    })
    .await;
    let mut client = app.client.clone();

    a.script([Behavior::Status(500, None), Behavior::Status(503, None)]);
    let answer = client
        .chat(chat("gpt", "one", 0.5))
        .await
        .expect("fallback")
        .into_inner();
    assert_eq!(answer.provider, "b");
    assert_eq!((a.calls(), b.calls()), (2, 1), "two attempts on a, then b");

    a.script([Behavior::Hang, Behavior::Hang]);
    let started = Instant::now();
    let answer = client
        .chat(chat("gpt", "two", 0.5))
        .await
        .expect("fallback")
        .into_inner();
    assert_eq!(answer.provider, "b", "a's headers never came");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the headers timeout fired"
    );

    // A stream whose first token never comes (after a role-only event) falls back too.
    a.script([Behavior::StallAfterRole, Behavior::StallAfterRole]);
    let started = Instant::now();
    let (text, done, error) = drain(&mut client, chat("gpt", "stalled", 0.5)).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(
        (text.as_str(), done.expect("done").provider.as_str()),
        ("echo: stalled", "b")
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the first-token timeout fired"
    );

    // A stream falls back too, as long as nothing was sent.
    a.script([Behavior::Status(500, None), Behavior::Status(500, None)]);
    let (text, done, error) = drain(&mut client, chat("gpt", "three", 0.5)).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(text, "echo: three");
    assert_eq!(done.expect("done").provider, "b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_broken_midway_reaches_the_caller_as_an_error_and_is_not_retried() {
    let fake = FakeOpenAi::start().await;
    fake.script([Behavior::DropMidStream]);
    let app = spawn_app(|c| route(c, "gpt", vec![("a", upstream(&fake.base_url()))])).await;
    let (text, done, error) = drain(
        &mut app.client.clone(),
        chat("gpt", "tell me a long story", 0.5),
    )
    .await;
    assert!(!text.is_empty(), "deltas arrived before the break");
    assert!(done.is_none(), "no success after a break");
    assert_eq!(error.expect("an error").code(), Code::Unavailable);
    assert_eq!(fake.calls(), 1, "tokens were sent: never retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_deployment_failing_is_unavailable_with_retry_after() {
    let fake = FakeOpenAi::start().await;
    fake.script([Behavior::Status(429, Some(30))]);
    let app = spawn_app(|c| route(c, "gpt", vec![("a", upstream(&fake.base_url()))])).await;
    let err = app
        .client
        .clone()
        .chat(chat("gpt", "x", 0.5))
        .await
        .expect_err("unavailable");
    assert_eq!(err.code(), Code::Unavailable);
    assert_eq!(
        boardroom_testkit::retry_after(&err),
        Some("30"),
        "the upstream's Retry-After, longer than the backoff cap, is passed on"
    );
    assert_eq!(fake.calls(), 1, "a 30 s Retry-After is not waited for");

    fake.script([Behavior::Status(400, None)]);
    let err = app
        .client
        .clone()
        .chat(chat("gpt", "y", 0.5))
        .await
        .expect_err("rejected");
    assert_eq!(
        err.code(),
        Code::InvalidArgument,
        "the upstream rejected the request itself"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_circuit_opens_on_failures_without_a_success_skips_the_deployment_and_closes_after_a_good_probe()
 {
    let (a, b) = (FakeOpenAi::start().await, FakeOpenAi::start().await);
    let app = spawn_app(|c| {
        route(
            c,
            "gpt",
            vec![
                ("a", upstream(&a.base_url())),
                ("b", upstream(&b.base_url())),
            ],
        );
        c.llm.retry.max_attempts = 1;
        c.llm.breaker.failure_threshold = 2;
        c.llm.breaker.open_ms = 1_000;
    })
    .await;
    let mut client = app.client.clone();
    a.script([Behavior::Status(500, None), Behavior::Status(500, None)]);
    for i in 0..2 {
        let answer = client
            .chat(chat("gpt", &format!("q{i}"), 0.5))
            .await
            .expect("fallback");
        assert_eq!(answer.into_inner().provider, "b");
    }
    assert_eq!(a.calls(), 2);
    for i in 2..5 {
        let answer = client
            .chat(chat("gpt", &format!("q{i}"), 0.5))
            .await
            .expect("b serves");
        assert_eq!(answer.into_inner().provider, "b");
    }
    assert_eq!(a.calls(), 2, "the open circuit kept calls away from a");
    let metrics = boardroom_testkit::scrape_metrics(app.admin).await;
    assert_eq!(
        boardroom_testkit::metric_value(&metrics, &["llm_circuit_open{", "deployment=\"a\""]),
        1.0
    );

    // After `open_ms` one probe goes to a; a answers again, so the circuit closes.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut i = 5;
    loop {
        let answer = client
            .chat(chat("gpt", &format!("q{i}"), 0.5))
            .await
            .expect("answered");
        if answer.into_inner().provider == "a" {
            break;
        }
        assert!(Instant::now() < deadline, "a never got its probe");
        i += 1;
        // Polling: the probe is due once the open period has passed.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let metrics = boardroom_testkit::scrape_metrics(app.admin).await;
    assert_eq!(
        boardroom_testkit::metric_value(&metrics, &["llm_circuit_open{", "deployment=\"a\""]),
        0.0,
        "closed again"
    );
    let answer = client
        .chat(chat("gpt", "after", 0.5))
        .await
        .expect("answered");
    assert_eq!(answer.into_inner().provider, "a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_gives_up_cancels_the_upstream_call() {
    let fake = FakeOpenAi::start().await;
    fake.script([Behavior::Hang]);
    let app = spawn_app(|c| route(c, "gpt", vec![("a", upstream(&fake.base_url()))])).await;
    let mut request = tonic::Request::new(pb::ChatStreamRequest {
        chat: Some(chat("gpt", "slow", 0.5)),
    });
    request.set_timeout(Duration::from_millis(300));
    let err = app
        .client
        .clone()
        .chat_stream(request)
        .await
        .expect_err("gave up");
    assert!(
        matches!(err.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{err:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while fake.in_flight() > 0 {
        assert!(
            Instant::now() < deadline,
            "the upstream call was never cancelled"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(fake.calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balanced_deployments_send_most_calls_to_the_faster_one() {
    let (slow, fast) = (FakeOpenAi::start().await, FakeOpenAi::start().await);
    slow.set_latency(Duration::from_millis(150));
    let app = spawn_app(|c| {
        route(c, "gpt", vec![("slow", upstream(&slow.base_url()))]);
        c.llm
            .deployments
            .insert("fast".into(), upstream(&fast.base_url()));
        let alias = c.llm.models.get_mut("gpt").expect("alias");
        alias.deployments.push("fast".into());
    })
    .await;
    let mut client = app.client.clone();
    for i in 0..40 {
        client
            .chat(chat("gpt", &format!("q{i}"), 0.5))
            .await
            .expect("answered");
    }
    assert_eq!(slow.calls() + fast.calls(), 40);
    assert!(
        fast.calls() >= 35,
        "peak-EWMA steers to the fast one: {} / {}",
        fast.calls(),
        slow.calls()
    );
}
