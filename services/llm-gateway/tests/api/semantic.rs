//! The semantic cache: a prompt that means the same gets the cached answer; a look-alike the
//! guard rejects does not; replicas share the index through Redis.

use boardroom_proto::llm::v1 as pb;
use boardroom_runtime::config::Secret;
use boardroom_testkit::{FakeOpenAi, redis_url};

use crate::helpers::{chat, route, spawn_app, upstream};

fn semantic(c: &mut boardroom_runtime::Config, base_url: &str, redis: &str, model: &str) {
    route(c, model, vec![("a", upstream(base_url))]);
    c.llm.models.get_mut(model).expect("alias").semantic_cache = true;
    // The mock provider's bag-of-words embeddings: shared words, close vectors.
    c.llm.semantic.embedding_model = "mock".into();
    c.llm.semantic.threshold = 0.8;
    c.redis.url = Secret::new(redis);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paraphrase_is_served_from_the_semantic_cache_on_any_replica_and_a_look_alike_is_not() {
    let fake = FakeOpenAi::start().await;
    let (redis, _) = redis_url().await;
    let model = format!("gpt{}", boardroom_testkit::unique_suffix());
    let a = spawn_app(|c| semantic(c, &fake.base_url(), &redis, &model)).await;
    let b = spawn_app(|c| semantic(c, &fake.base_url(), &redis, &model)).await;
    let ask = |app: &crate::helpers::TestApp, text: &str| {
        let mut client = app.client.clone();
        let request = chat(&model, text, 0.0);
        async move { client.chat(request).await.expect("answered").into_inner() }
    };

    let first = ask(&a, "Should we raise prices for enterprise customers").await;
    assert_eq!(first.cache, pb::CacheOutcome::Miss as i32);
    let paraphrase = ask(&a, "Should we raise the prices for enterprise customers").await;
    assert_eq!(paraphrase.cache, pb::CacheOutcome::Semantic as i32);
    assert_eq!(paraphrase.message, first.message, "the cached answer");
    assert_eq!(fake.calls(), 1);

    let opposite = ask(&a, "Should we lower prices for enterprise customers").await;
    assert_eq!(
        opposite.cache,
        pb::CacheOutcome::Miss as i32,
        "similar enough, but the guard sees raise/lower"
    );
    assert_eq!(
        opposite.message.expect("message").content,
        "echo: Should we lower prices for enterprise customers"
    );
    assert_eq!(fake.calls(), 2);

    let elsewhere = ask(&b, "Should we raise prices for our enterprise customers").await;
    assert_eq!(
        elsewhere.cache,
        pb::CacheOutcome::Semantic as i32,
        "the index is shared"
    );
    assert_eq!(fake.calls(), 2);
}

/// A `/v1/rerank` fake that scores every pair `score`, counting its calls.
async fn reranker(score: f32) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = calls.clone();
    let app = axum::Router::new().route(
        "/v1/rerank",
        axum::routing::post(move |axum::Json(body): axum::Json<serde_json::Value>| {
            let counted = counted.clone();
            async move {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                assert!(body["query"].is_string() && body["documents"][0].is_string());
                axum::Json(serde_json::json!({"results": [{"index": 0, "relevance_score": score}]}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/v1/rerank", listener.local_addr().expect("addr"));
    #[allow(clippy::disallowed_methods)] // the fake lives as long as the test
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, calls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_verifier_confirms_or_refuses_a_hit_and_a_dead_verifier_refuses_it() {
    let (redis, _) = redis_url().await;
    let (same, same_calls) = reranker(0.9).await;
    let (different, _) = reranker(0.1).await;
    // Nothing listens on a port just closed: the verifier is down.
    let down = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        format!("http://{}/v1/rerank", listener.local_addr().expect("addr"))
    };
    for (url, served) in [(same, true), (different, false), (down, false)] {
        let fake = FakeOpenAi::start().await;
        let model = format!("gpt{}", boardroom_testkit::unique_suffix());
        let app = spawn_app(|c| {
            semantic(c, &fake.base_url(), &redis, &model);
            c.llm.semantic.verifier.url = url.clone();
        })
        .await;
        let ask = |text: &str| {
            let mut client = app.client.clone();
            let request = chat(&model, text, 0.0);
            async move { client.chat(request).await.expect("answered").into_inner() }
        };
        ask("Should we raise prices for enterprise customers").await;
        let paraphrase = ask("Should we raise the prices for enterprise customers").await;
        let expected = if served {
            pb::CacheOutcome::Semantic
        } else {
            pb::CacheOutcome::Miss
        };
        assert_eq!(paraphrase.cache, expected as i32, "verifier at {url}");
        assert_eq!(
            fake.calls(),
            if served { 1 } else { 2 },
            "verifier at {url}"
        );
    }
    // The confirmed pair was asked once; its verdict is cached.
    assert_eq!(same_calls.load(std::sync::atomic::Ordering::SeqCst), 1);
}
