//! Per-caller limits: requests and tokens per minute, calls in flight.

use boardroom_runtime::config::CallerLimits;
use tonic::Code;

use crate::helpers::{chat, slow_mock, spawn_app};

fn retry_after(status: &tonic::Status) -> u64 {
    status
        .metadata()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("retry-after")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_over_its_requests_per_minute_is_told_when_to_come_back() {
    let app = spawn_app(|c| {
        c.llm.limits.callers.insert(
            "anonymous".into(),
            CallerLimits {
                requests_per_minute: 2,
                ..CallerLimits::default()
            },
        );
    })
    .await;
    let mut client = app.client.clone();
    for i in 0..2 {
        client
            .chat(chat("mock", &format!("q{i}"), 0.5))
            .await
            .expect("within the limit");
    }
    let err = client
        .chat(chat("mock", "q2", 0.5))
        .await
        .expect_err("over");
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(
        (1..=30).contains(&retry_after(&err)),
        "one request refills in 30 s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_cannot_overshoot_the_token_budget_because_tokens_are_reserved_first() {
    let app = spawn_app(|c| {
        c.llm.limits.default = CallerLimits {
            tokens_per_minute: 1_000,
            ..CallerLimits::default()
        };
        // Each call reserves its prompt (~2 tokens) + max_tokens 300: three fit, not four.
        slow_mock(c);
    })
    .await;
    let calls: Vec<_> = (0..10)
        .map(|i| {
            let mut client = app.client.clone();
            tokio::spawn(async move {
                let mut request = chat("mock", &format!("burst {i}"), 0.5);
                request.max_tokens = Some(300);
                client.chat(request).await
            })
        })
        .collect();
    let mut admitted = 0;
    for call in calls {
        match call.await.expect("joined") {
            Ok(_) => admitted += 1,
            Err(status) => assert_eq!(status.code(), Code::ResourceExhausted),
        }
    }
    assert_eq!(
        admitted, 3,
        "10 concurrent calls of ~302 tokens against 1000/min"
    );

    let mut whole = chat("mock", "too big", 0.5);
    whole.max_tokens = Some(5_000);
    let err = app
        .client
        .clone()
        .chat(whole)
        .await
        .expect_err("never fits");
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_beyond_max_concurrent_are_refused_while_the_first_runs() {
    let app = spawn_app(|c| {
        c.llm.limits.default = CallerLimits {
            max_concurrent: 1,
            ..CallerLimits::default()
        };
        slow_mock(c);
    })
    .await;
    let mut a = app.client.clone();
    let first = tokio::spawn(async move { a.chat(chat("mock", "one", 0.5)).await });
    // Wait until the first call holds the only slot (it is at the provider for 2 s).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while boardroom_testkit::metric_value(
        &boardroom_testkit::scrape_metrics(app.admin).await,
        &["llm_upstream_in_flight", "deployment=\"mock\""],
    ) < 1.0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the first call never started"
        );
        tokio::task::yield_now().await;
    }
    let second = app.client.clone().chat(chat("mock", "two", 0.5)).await;
    assert_eq!(second.expect_err("refused").code(), Code::ResourceExhausted);
    first.await.expect("joined").expect("the first runs");
    app.client
        .clone()
        .chat(chat("mock", "three", 0.5))
        .await
        .expect("the slot is free again");
}
