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
