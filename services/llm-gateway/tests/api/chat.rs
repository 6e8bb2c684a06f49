//! Chat, ChatStream, Embed and ListModels on the mock provider and an OpenAI-compatible
//! upstream; bad input.

use std::time::{Duration, Instant};

use boardroom_llm_gateway::settings::{MockConfig, ProviderSettings};
use boardroom_proto::llm::v1 as pb;
use boardroom_runtime::Config;
use boardroom_testkit::FakeOpenAi;
use futures::StreamExt;
use tonic::Code;

use crate::helpers::{chat, drain, fields, route, spawn_app, upstream, user};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mock_provider_answers_from_the_prompt_with_usage_and_streams_the_same_text() {
    let app = spawn_app(|_| {}).await;
    let mut client = app.client.clone();
    let first = client
        .chat(chat("mock", "Should we expand to Europe?", 0.7))
        .await
        .expect("chat")
        .into_inner();
    let again = client
        .chat(chat("mock", "Should we expand to Europe?", 0.7))
        .await
        .expect("chat")
        .into_inner();
    let other = client
        .chat(chat("mock", "What about Asia?", 0.7))
        .await
        .expect("chat")
        .into_inner();
    let text = |r: &pb::ChatResponse| r.message.as_ref().expect("message").content.clone();
    assert!(!text(&first).is_empty());
    assert_eq!(text(&first), text(&again), "same prompt, same answer");
    assert_ne!(text(&first), text(&other));
    assert_eq!(
        (first.provider.as_str(), first.model.as_str()),
        ("mock", "mock-1")
    );
    assert_eq!(first.cache, pb::CacheOutcome::Miss as i32);
    let usage = first.usage.expect("usage");
    assert!(usage.input_tokens > 0 && usage.output_tokens > 0);

    let (streamed, done, error) = drain(
        &mut client,
        chat("mock", "Should we expand to Europe?", 0.7),
    )
    .await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(streamed, text(&first), "the deltas make the same text");
    let done = done.expect("a final event");
    assert_eq!(done.finish_reason, pb::FinishReason::Stop as i32);
    assert!(done.usage.expect("usage").output_tokens > 0);

    let models = client
        .list_models(pb::ListModelsRequest {})
        .await
        .expect("list")
        .into_inner()
        .models;
    assert_eq!(models.len(), 1);
    assert_eq!(
        (models[0].alias.as_str(), models[0].deployments.as_slice()),
        ("mock", &["mock".to_owned()][..])
    );

    let embedded = client
        .embed(pb::EmbedRequest {
            model: "mock".into(),
            inputs: vec![
                "raise prices".into(),
                "raise prices now".into(),
                "hire engineers".into(),
            ],
            request_id: String::new(),
        })
        .await
        .expect("embed")
        .into_inner();
    let v: Vec<&Vec<f32>> = embedded.embeddings.iter().map(|e| &e.values).collect();
    let cosine = |a: &Vec<f32>, b: &Vec<f32>| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
    assert!(
        cosine(v[0], v[1]) > cosine(v[0], v[2]),
        "shared words are closer"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_openai_compatible_upstream_serves_chat_streams_with_usage_and_embeddings() {
    let fake = FakeOpenAi::start().await;
    let app = spawn_app(|c| route(c, "gpt", vec![("fake", upstream(&fake.base_url()))])).await;
    let mut client = app.client.clone();
    let mut request = chat("gpt", "hello there", 0.3);
    request.max_tokens = Some(50);
    request.stop = vec!["END".into()];
    request.tools = vec![pb::Tool {
        name: "calc".into(),
        description: "arithmetic".into(),
        parameters_json_schema: r#"{"type":"object"}"#.into(),
    }];
    let answer = client
        .chat(request.clone())
        .await
        .expect("chat")
        .into_inner();
    assert_eq!(
        answer.message.expect("message").content,
        "echo: hello there"
    );
    assert_eq!(answer.provider, "fake");
    assert_eq!(answer.usage.expect("usage").input_tokens, 10);
    let body = fake.last_body().expect("a request");
    assert_eq!(body["model"], "gpt-fake");
    assert_eq!(body["max_tokens"], 50);
    assert_eq!(body["stop"][0], "END");
    assert_eq!(body["tools"][0]["function"]["parameters"]["type"], "object");

    let (text, done, error) = drain(&mut client, request).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(text, "echo: hello there");
    let body = fake.last_body().expect("a request");
    assert_eq!(body["stream"], true);
    assert_eq!(
        body["stream_options"]["include_usage"], true,
        "streams are accounted"
    );
    let usage = done.expect("done").usage.expect("usage");
    assert_eq!((usage.input_tokens, usage.output_tokens), (10, 3));

    let embedded = client
        .embed(pb::EmbedRequest {
            model: "gpt".into(),
            inputs: vec!["a".into(), "abc".into()],
            request_id: String::new(),
        })
        .await
        .expect("embed")
        .into_inner();
    assert_eq!(embedded.embeddings[1].values[0], 3.0, "in input order");

    let metrics = boardroom_testkit::scrape_metrics(app.admin).await;
    let opened = boardroom_testkit::metric_value(
        &metrics,
        &[
            "llm_upstream_connections_opened_total",
            "deployment=\"fake\"",
        ],
    );
    assert!(
        (1.0..3.0).contains(&opened),
        "three calls, kept-alive connections reused: {opened} opened"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_invalid_argument_naming_the_field() {
    let app = spawn_app(|_| {}).await;
    let mut client = app.client.clone();
    let mut bad = chat("", "x", 3.0);
    bad.messages.push(pb::Message {
        role: 0,
        ..user("y")
    });
    bad.messages.push(pb::Message {
        role: pb::Role::Tool as i32,
        ..user("result")
    });
    bad.top_p = Some(0.0);
    bad.max_tokens = Some(0);
    bad.cache_policy = 42;
    let err = client.chat(bad.clone()).await.expect_err("invalid");
    assert_eq!(
        fields(&err),
        [
            "messages[1].role",
            "messages[2].tool_call_id",
            "cache_policy",
            "model",
            "temperature",
            "top_p",
            "max_tokens",
        ]
    );
    let (_, _, streamed) = drain(&mut client, bad).await;
    assert_eq!(streamed.expect("refused").code(), Code::InvalidArgument);
    let err = client
        .chat(pb::ChatRequest {
            model: "mock".into(),
            ..pb::ChatRequest::default()
        })
        .await
        .expect_err("no messages");
    assert_eq!(fields(&err), ["messages"]);
    let err = client
        .chat(chat("nope", "x", 0.0))
        .await
        .expect_err("unknown");
    assert_eq!(err.code(), Code::NotFound);
    let err = client
        .embed(pb::EmbedRequest {
            model: "mock".into(),
            inputs: vec![],
            request_id: String::new(),
        })
        .await
        .expect_err("no inputs");
    assert_eq!(fields(&err), ["inputs"]);
}

/// Deltas of one ChatStream: (the time each arrived since the call, its text).
async fn deltas(client: &mut crate::helpers::Client, text: &str) -> Vec<(Duration, String)> {
    let started = Instant::now();
    let mut stream = client
        .chat_stream(pb::ChatStreamRequest {
            chat: Some(chat("mock", text, 0.7)),
        })
        .await
        .expect("stream")
        .into_inner();
    let mut out = Vec::new();
    while let Some(event) = stream.next().await {
        if let Some(pb::chat_stream_response::Event::Delta(delta)) = event.expect("event").event {
            out.push((started.elapsed(), delta));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_text_after_the_first_delta_is_sent_once_per_flush_window() {
    // 40 tokens at 200 tokens/s after 50 ms to the first: 5 ms apart, 245 ms in all.
    let pace = |c: &mut Config, flush_ms: u64| {
        c.llm.deployments.insert(
            "mock".into(),
            ProviderSettings::Mock(MockConfig {
                ttft_ms: 50,
                tokens_per_second: 200,
                output_tokens: 40,
                ..MockConfig::default()
            })
            .into(),
        );
        c.llm.stream_flush_ms = flush_ms;
    };
    let every = spawn_app(|c| pace(c, 0)).await;
    let windowed = spawn_app(|c| pace(c, 50)).await;
    let one = deltas(&mut every.client.clone(), "Plan the quarter").await;
    let batched = deltas(&mut windowed.client.clone(), "Plan the quarter").await;
    let text = |d: &[(Duration, String)]| d.iter().map(|(_, t)| t.as_str()).collect::<String>();
    assert_eq!(text(&batched), text(&one), "the same text");
    assert_eq!(one.len(), 40, "every token its own message");
    // The first token at once, the other 39 (195 ms of them) in 50 ms windows: about 5.
    assert!(
        (3..=8).contains(&batched.len()),
        "{} messages: {batched:?}",
        batched.len()
    );
    assert!(
        batched[0].0 < one[0].0 + Duration::from_millis(40),
        "the first token is not held back: {:?} vs {:?}",
        batched[0].0,
        one[0].0
    );
}
