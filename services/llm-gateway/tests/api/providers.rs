//! The native providers against fakes of their wire formats: every translation path (text,
//! tools, tool results, stop, usage with cache tokens), unary and streamed; their failure
//! modes (429 with and without `Retry-After`, 529, an error event before and after the first
//! token, slow headers, a dropped stream); fallback across providers with a tool conversation;
//! accounting without drift; bad provider settings refused at start.

use boardroom_llm_gateway::settings::{
    AnthropicConfig, AzureConfig, GeminiConfig, OpenAiConfig, ProviderSettings,
};
use boardroom_proto::llm::v1 as pb;
use boardroom_runtime::Config;
use boardroom_runtime::config::{DeploymentConfig, Secret};
use boardroom_testkit::{Behavior, FakeProvider, metric_value, scrape_metrics};
use serde_json::{Value, json};
use tonic::Code;

use crate::helpers::{chat, route, spawn_app, streamed, user};

fn anthropic(fake: &FakeProvider) -> DeploymentConfig {
    ProviderSettings::Anthropic(AnthropicConfig {
        model: "claude-fake".into(),
        base_url: fake.base_url(),
        api_key: Secret::new("sk-ant-test"),
        ..AnthropicConfig::default()
    })
    .into()
}

fn gemini(fake: &FakeProvider) -> DeploymentConfig {
    ProviderSettings::Gemini(GeminiConfig {
        model: "gemini-fake".into(),
        base_url: fake.base_url(),
        api_key: Secret::new("goog-test"),
        ..GeminiConfig::default()
    })
    .into()
}

fn openai(fake: &FakeProvider) -> DeploymentConfig {
    ProviderSettings::Openai(OpenAiConfig {
        model: "gpt-fake".into(),
        base_url: fake.base_url(),
        ..OpenAiConfig::default()
    })
    .into()
}

fn azure(fake: &FakeProvider) -> DeploymentConfig {
    ProviderSettings::Azure(AzureConfig {
        endpoint: fake.root_url(),
        deployment: "gpt4o-prod".into(),
        api_key: Secret::new("azure-key"),
        ..AzureConfig::default()
    })
    .into()
}

const LOOKUP: &str =
    r#"{"type":"object","properties":{"name":{"type":"string"}},"required":["name"]}"#;

fn lookup_tool() -> pb::Tool {
    pb::Tool {
        name: "lookup_metric".into(),
        description: "Looks up a company metric".into(),
        parameters_json_schema: LOOKUP.into(),
    }
}

/// A CFO's conversation that called a tool and got its result, then a new question.
fn tool_conversation(model: &str) -> pb::ChatRequest {
    pb::ChatRequest {
        model: model.into(),
        messages: vec![
            pb::Message {
                role: pb::Role::System as i32,
                content: "You are the CFO.".into(),
                ..pb::Message::default()
            },
            user("What is our runway?"),
            pb::Message {
                role: pb::Role::Assistant as i32,
                tool_calls: vec![pb::ToolCall {
                    id: "call_1".into(),
                    name: "lookup_metric".into(),
                    arguments_json: r#"{"name":"runway"}"#.into(),
                }],
                ..pb::Message::default()
            },
            pb::Message {
                role: pb::Role::Tool as i32,
                content: "14 months".into(),
                tool_call_id: "call_1".into(),
                ..pb::Message::default()
            },
            user("And what does that mean for hiring?"),
        ],
        tools: vec![lookup_tool()],
        temperature: Some(0.5),
        stop: vec!["END".into()],
        ..pb::ChatRequest::default()
    }
}

fn usage(response: &pb::ChatResponse) -> (u32, u32, u32, u32) {
    let u = response.usage.expect("usage");
    (
        u.input_tokens,
        u.output_tokens,
        u.cache_read_tokens,
        u.cache_write_tokens,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_translates_system_tools_tool_results_and_usage() {
    let fake = FakeProvider::anthropic().await;
    let app = spawn_app(|c| route(c, "claude", vec![("a", anthropic(&fake))])).await;
    let mut client = app.client.clone();

    let answer = client
        .chat(tool_conversation("claude"))
        .await
        .expect("a valid Messages request")
        .into_inner();
    assert_eq!(
        answer.message.as_ref().expect("message").content,
        "echo: And what does that mean for hiring?"
    );
    assert_eq!(
        fake.last_header("x-api-key").as_deref(),
        Some("sk-ant-test")
    );
    assert_eq!(
        fake.last_header("anthropic-version").as_deref(),
        Some("2023-06-01")
    );
    let body = fake.last_body().expect("body");
    assert_eq!(body["system"], "You are the CFO.");
    assert_eq!(body["max_tokens"], 4096, "the deployment's default");
    assert_eq!(body["stop_sequences"], json!(["END"]));
    assert_eq!(body["temperature"], 0.5);
    assert_eq!(
        body["tools"][0]["input_schema"]["required"],
        json!(["name"])
    );
    let roles: Vec<&str> = body["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["role"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        roles,
        ["user", "assistant", "user"],
        "the tool result and the question merged"
    );
    assert_eq!(
        body["messages"][1]["content"][0],
        json!({"type": "tool_use", "id": "call_1", "name": "lookup_metric", "input": {"name": "runway"}})
    );
    assert_eq!(
        body["messages"][2]["content"][0],
        json!({"type": "tool_result", "tool_use_id": "call_1", "content": "14 months"})
    );
    // 10 uncached + 3 written + 5 read: the prompt is all three.
    assert_eq!(usage(&answer), (18, 8, 5, 3));

    let s = streamed(&mut client, tool_conversation("claude")).await;
    assert!(s.error.is_none(), "{:?}", s.error);
    assert_eq!(s.text, "echo: And what does that mean for hiring?");
    let done = s.done.expect("done");
    assert_eq!(
        usage(&done),
        (18, 8, 5, 3),
        "message_delta's usage is cumulative"
    );
    assert_eq!(done.finish_reason, pb::FinishReason::Stop as i32);

    // A tool call, streamed as input_json_delta pieces, arrives whole and parsed.
    let arguments = r#"{"name": "burn rate"}"#;
    for _ in 0..2 {
        fake.script([Behavior::ToolCall {
            name: "lookup_metric".into(),
            arguments: arguments.into(),
        }]);
    }
    let unary = client
        .chat(tool_conversation("claude"))
        .await
        .expect("tool call")
        .into_inner();
    let s = streamed(&mut client, tool_conversation("claude")).await;
    let unary_calls = unary.message.expect("message").tool_calls;
    for calls in [&unary_calls, &s.calls] {
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].id, "toolu_fake_1");
        assert_eq!(calls[0].name, "lookup_metric");
        let parsed: Value = serde_json::from_str(&calls[0].arguments_json).expect("JSON");
        assert_eq!(parsed, json!({"name": "burn rate"}));
    }
    assert_eq!(unary.finish_reason, pb::FinishReason::ToolCalls as i32);
    assert_eq!(
        s.done.expect("done").finish_reason,
        pb::FinishReason::ToolCalls as i32
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anthropic_error_event_fails_over_before_the_first_token_and_is_unavailable_after() {
    let (a, b) = (
        FakeProvider::anthropic().await,
        FakeProvider::anthropic().await,
    );
    let app = spawn_app(|c| {
        route(
            c,
            "claude",
            vec![("a", anthropic(&a)), ("b", anthropic(&b))],
        );
        c.llm.retry.max_attempts = 1;
    })
    .await;
    let mut client = app.client.clone();

    a.script([Behavior::ErrorEvent { after_words: 0 }]);
    let s = streamed(&mut client, chat("claude", "hello", 0.5)).await;
    assert!(s.error.is_none(), "{:?}", s.error);
    assert_eq!(s.done.expect("done").provider, "b", "failed over to b");
    assert_eq!((a.calls(), b.calls()), (1, 1));

    a.script([Behavior::ErrorEvent { after_words: 2 }]);
    let s = streamed(&mut client, chat("claude", "one two three", 0.5)).await;
    assert_eq!(s.text, "echo: one", "the tokens sent before the error");
    assert!(s.done.is_none(), "never a truncated success");
    let error = s.error.expect("the error");
    assert_eq!(error.code(), Code::Unavailable, "{error:?}");
    assert!(error.message().contains("overloaded_error"), "{error:?}");
    assert_eq!(b.calls(), 1, "no fallback after the first token");
    // The provider bills what it generated before the error: an estimate of it is accounted
    // ("echo: one", 9 bytes, 3 tokens), not nothing.
    let metrics = scrape_metrics(app.admin).await;
    assert_eq!(accounted(&metrics, "a")[3], 3.0, "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_429_and_529_are_retried_but_a_spend_limit_is_not() {
    let (a, b) = (
        FakeProvider::anthropic().await,
        FakeProvider::anthropic().await,
    );
    let app = spawn_app(|c| {
        route(
            c,
            "claude",
            vec![("a", anthropic(&a)), ("b", anthropic(&b))],
        )
    })
    .await;
    let mut client = app.client.clone();

    a.script([Behavior::Status(429, Some(0)), Behavior::Status(529, None)]);
    let answer = client
        .chat(chat("claude", "hi", 0.5))
        .await
        .expect("recovered")
        .into_inner();
    assert_eq!(
        (answer.provider.as_str(), a.calls(), b.calls()),
        ("a", 3, 0)
    );

    // A 429 without Retry-After is a spend limit, a 401 a revoked key: straight to the next
    // deployment.
    for (n, status) in [429, 401].into_iter().enumerate() {
        a.script([Behavior::Status(status, None)]);
        let answer = client
            .chat(chat("claude", &format!("again {n}"), 0.5))
            .await
            .expect("fallback")
            .into_inner();
        assert_eq!(
            (answer.provider.as_str(), a.calls(), b.calls()),
            ("b", 4 + n, 1 + n),
            "{status}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_skip_a_provider_without_them_and_refuse_an_alias_with_none() {
    let (a, o) = (FakeProvider::anthropic().await, FakeProvider::start().await);
    let app = spawn_app(|c| {
        route(
            c,
            "mixed",
            vec![("claude", anthropic(&a)), ("gpt", openai(&o))],
        );
        route(c, "claude", vec![("claude-only", anthropic(&a))]);
    })
    .await;
    let mut client = app.client.clone();
    let embed = |model: &str| pb::EmbedRequest {
        model: model.into(),
        inputs: vec!["runway".into()],
        request_id: String::new(),
    };
    let embedded = client
        .embed(embed("mixed"))
        .await
        .expect("from gpt")
        .into_inner();
    assert_eq!(embedded.provider, "gpt");
    let refused = client
        .embed(embed("claude"))
        .await
        .expect_err("no embeddings API");
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    // A caller asking for what a deployment lacks does not count against its circuit.
    for _ in 0..6 {
        let _ = client.embed(embed("claude")).await;
    }
    let answer = client
        .chat(chat("claude", "still healthy", 0.5))
        .await
        .expect("the circuit stayed closed")
        .into_inner();
    assert_eq!(answer.provider, "claude-only");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_and_dropped_streams_are_bounded_and_reported() {
    let (a, b) = (
        FakeProvider::anthropic().await,
        FakeProvider::gemini().await,
    );
    let app = spawn_app(|c| {
        route(c, "mixed", vec![("a", anthropic(&a)), ("b", gemini(&b))]);
        c.llm.timeouts.headers_ms = 300;
        c.llm.retry.max_attempts = 1;
    })
    .await;
    let mut client = app.client.clone();
    a.script([Behavior::SlowHeaders(2_000)]);
    let answer = client
        .chat(chat("mixed", "hi", 0.5))
        .await
        .expect("fallback")
        .into_inner();
    assert_eq!(answer.provider, "b", "a's headers came too late");

    for fake in [&a, &b] {
        fake.script([Behavior::DropMidStream]);
    }
    let s = streamed(&mut client, chat("mixed", "one two three", 0.5)).await;
    assert!(s.done.is_none());
    assert_eq!(s.error.expect("broken").code(), Code::Unavailable);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gemini_translates_contents_function_calls_responses_and_usage() {
    let fake = FakeProvider::gemini().await;
    let app = spawn_app(|c| route(c, "gem", vec![("g", gemini(&fake))])).await;
    let mut client = app.client.clone();

    let answer = client
        .chat(tool_conversation("gem"))
        .await
        .expect("a valid generateContent request")
        .into_inner();
    assert_eq!(
        answer.message.as_ref().expect("message").content,
        "echo: And what does that mean for hiring?"
    );
    assert!(
        fake.last_path()
            .contains("/models/gemini-fake:generateContent")
    );
    assert_eq!(
        fake.last_header("x-goog-api-key").as_deref(),
        Some("goog-test")
    );
    let body = fake.last_body().expect("body");
    assert_eq!(
        body["systemInstruction"]["parts"][0]["text"],
        "You are the CFO."
    );
    assert_eq!(
        body["contents"][1],
        json!({"role": "model", "parts": [{"functionCall": {"name": "lookup_metric", "args": {"name": "runway"}}}]})
    );
    assert_eq!(
        body["contents"][2]["parts"][0],
        json!({"functionResponse": {"name": "lookup_metric", "response": {"result": "14 months"}}})
    );
    assert_eq!(
        body["tools"][0]["functionDeclarations"][0]["name"],
        "lookup_metric"
    );
    assert_eq!(body["generationConfig"]["stopSequences"], json!(["END"]));
    // 8 words + 2 thought tokens; 6 of the 20 prompt tokens cached.
    assert_eq!(usage(&answer), (20, 10, 6, 0));
    assert_eq!(answer.model, "gemini-fake-001");

    let s = streamed(&mut client, tool_conversation("gem")).await;
    assert!(s.error.is_none(), "{:?}", s.error);
    assert!(fake.last_path().ends_with(":streamGenerateContent?alt=sse"));
    assert_eq!(s.text, "echo: And what does that mean for hiring?");
    assert_eq!(usage(&s.done.expect("done")), (20, 10, 6, 0));

    for _ in 0..2 {
        fake.script([Behavior::ToolCall {
            name: "lookup_metric".into(),
            arguments: r#"{"name":"burn"}"#.into(),
        }]);
    }
    let unary = client
        .chat(tool_conversation("gem"))
        .await
        .expect("tool call")
        .into_inner();
    assert_eq!(unary.finish_reason, pb::FinishReason::ToolCalls as i32);
    let s = streamed(&mut client, tool_conversation("gem")).await;
    let unary_calls = unary.message.expect("message").tool_calls;
    for calls in [&unary_calls, &s.calls] {
        assert_eq!(calls.len(), 1);
        assert!(!calls[0].id.is_empty(), "an id the tool result can answer");
        assert_eq!(calls[0].arguments_json, r#"{"name":"burn"}"#);
    }
    assert_eq!(
        s.done.expect("done").finish_reason,
        pb::FinishReason::ToolCalls as i32
    );

    let embedded = client
        .embed(pb::EmbedRequest {
            model: "gem".into(),
            inputs: vec!["ab".into(), "abcd".into()],
            request_id: String::new(),
        })
        .await
        .expect("batchEmbedContents")
        .into_inner();
    assert_eq!(embedded.embeddings[1].values, [4.0, 1.0, 0.0]);
    assert!(fake.last_path().ends_with(":batchEmbedContents"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gemini_error_chunk_is_a_failure_not_the_end_of_the_answer() {
    let fake = FakeProvider::gemini().await;
    let app = spawn_app(|c| {
        route(c, "gem", vec![("g", gemini(&fake))]);
        c.llm.retry.max_attempts = 1;
    })
    .await;
    fake.script([Behavior::ErrorEvent { after_words: 1 }]);
    let s = streamed(&mut app.client.clone(), chat("gem", "a b c", 0.5)).await;
    assert!(s.done.is_none());
    assert_eq!(s.error.expect("error").code(), Code::Unavailable);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_speaks_openai_on_its_deployment_path_with_an_api_key() {
    let fake = FakeProvider::start().await;
    let app = spawn_app(|c| route(c, "gpt", vec![("az", azure(&fake))])).await;
    let mut client = app.client.clone();
    let answer = client
        .chat(tool_conversation("gpt"))
        .await
        .expect("answer")
        .into_inner();
    assert_eq!(
        fake.last_path(),
        "/openai/deployments/gpt4o-prod/chat/completions?api-version=2024-10-21"
    );
    assert_eq!(fake.last_header("api-key").as_deref(), Some("azure-key"));
    assert_eq!(fake.last_header("authorization"), None);
    assert_eq!(
        usage(&answer),
        (10, 8, 4, 0),
        "cached_tokens is a cache read"
    );
    let s = streamed(&mut client, chat("gpt", "streamed", 0.5)).await;
    assert_eq!(s.text, "echo: streamed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_conversation_falls_back_anthropic_to_openai_to_gemini() {
    let (a, o, g) = (
        FakeProvider::anthropic().await,
        FakeProvider::start().await,
        FakeProvider::gemini().await,
    );
    let app = spawn_app(|c| {
        route(
            c,
            "board",
            vec![
                ("claude", anthropic(&a)),
                ("gpt", openai(&o)),
                ("gemini", gemini(&g)),
            ],
        );
        c.llm.retry.max_attempts = 1;
    })
    .await;
    let mut client = app.client.clone();
    // Each fake checks the history is valid for its protocol before answering (a 400 would
    // end the call as INVALID_ARGUMENT); the first two then fail.
    a.script([Behavior::Status(500, None), Behavior::Status(503, None)]);
    o.script([Behavior::Status(502, None), Behavior::Status(500, None)]);
    let answer = client
        .chat(tool_conversation("board"))
        .await
        .expect("gemini answered")
        .into_inner();
    assert_eq!(answer.provider, "gemini");
    let s = streamed(&mut client, tool_conversation("board")).await;
    assert!(s.error.is_none(), "{:?}", s.error);
    assert_eq!(s.done.expect("done").provider, "gemini");
    assert_eq!((a.calls(), o.calls(), g.calls()), (2, 2, 2));
    // And back: a Gemini-made tool call continues on Anthropic.
    g.script([Behavior::ToolCall {
        name: "lookup_metric".into(),
        arguments: r#"{"name":"headcount"}"#.into(),
    }]);
    let mut request = tool_conversation("board");
    a.script([Behavior::Status(500, None)]);
    o.script([Behavior::Status(500, None)]);
    let call = client
        .chat(request.clone())
        .await
        .expect("call")
        .into_inner()
        .message
        .expect("message")
        .tool_calls
        .remove(0);
    request.messages.push(pb::Message {
        role: pb::Role::Assistant as i32,
        tool_calls: vec![call.clone()],
        ..pb::Message::default()
    });
    request.messages.push(pb::Message {
        role: pb::Role::Tool as i32,
        content: r#"{"headcount": 42}"#.into(),
        tool_call_id: call.id,
        ..pb::Message::default()
    });
    let answer = client
        .chat(request)
        .await
        .expect("anthropic took the Gemini-made history")
        .into_inner();
    assert_eq!(answer.provider, "claude");
}

/// `llm_tokens_total` of `deployment` by direction.
fn accounted(metrics: &str, deployment: &str) -> [f64; 4] {
    let d = format!("deployment=\"{deployment}\"");
    ["input", "cache_read", "cache_write", "output"].map(|direction| {
        metric_value(
            metrics,
            &[
                "llm_tokens_total{",
                &d,
                &format!("direction=\"{direction}\""),
            ],
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounting_matches_what_each_provider_reported_streams_included() {
    let (a, o, g) = (
        FakeProvider::anthropic().await,
        FakeProvider::start().await,
        FakeProvider::gemini().await,
    );
    let app = spawn_app(|c: &mut Config| {
        route(c, "claude", vec![("claude", anthropic(&a))]);
        route(c, "gpt", vec![("gpt", openai(&o))]);
        route(c, "gemini", vec![("gemini", gemini(&g))]);
        c.llm.prices.insert(
            "claude-fake".into(),
            boardroom_runtime::config::Price {
                input_per_million_micros: 3_000_000,
                output_per_million_micros: 15_000_000,
                cache_read_per_million_micros: Some(300_000),
                cache_write_per_million_micros: Some(3_750_000),
            },
        );
    })
    .await;
    let mut client = app.client.clone();
    // Claude's usages and costs as the callers were told them.
    let mut claude: Vec<pb::Usage> = Vec::new();
    for model in ["claude", "gpt", "gemini"] {
        let mut told = Vec::new();
        for i in 0..3 {
            let text = format!("question {i} for the board");
            let answer = client
                .chat(chat(model, &text, 0.5))
                .await
                .expect("unary")
                .into_inner();
            told.push(answer.usage.expect("usage"));
            let s = streamed(&mut client, chat(model, &format!("streamed {text}"), 0.5)).await;
            assert!(s.error.is_none(), "{:?}", s.error);
            told.push(s.done.expect("done").usage.expect("usage"));
        }
        // One streamed tool call too: its usage is counted like any answer.
        let fake = match model {
            "claude" => &a,
            "gpt" => &o,
            _ => &g,
        };
        fake.script([Behavior::ToolCall {
            name: "lookup_metric".into(),
            arguments: r#"{"name":"x"}"#.into(),
        }]);
        let mut request = chat(model, "use a tool", 0.5);
        request.tools = vec![lookup_tool()];
        let s = streamed(&mut client, request).await;
        assert_eq!(s.calls.len(), 1, "{model}");
        told.push(s.done.expect("done").usage.expect("usage"));
        if model == "claude" {
            claude = told;
        }
    }
    let metrics = scrape_metrics(app.admin).await;
    for (deployment, fake) in [("claude", &a), ("gpt", &o), ("gemini", &g)] {
        let r = fake.reported();
        assert!(r.output > 0, "{deployment}");
        assert_eq!(
            accounted(&metrics, deployment),
            [
                (r.input - r.cache_read - r.cache_write) as f64,
                r.cache_read as f64,
                r.cache_write as f64,
                r.output as f64,
            ],
            "{deployment}: zero drift"
        );
    }
    // Each call's cost at the four rates, and the counter their sum.
    for u in &claude {
        let uncached = u.input_tokens - u.cache_read_tokens - u.cache_write_tokens;
        let exact = (u64::from(uncached) * 3_000_000
            + u64::from(u.cache_read_tokens) * 300_000
            + u64::from(u.cache_write_tokens) * 3_750_000
            + u64::from(u.output_tokens) * 15_000_000)
            / 1_000_000;
        assert_eq!(u.cost_micros, exact, "{u:?}");
    }
    let cost = metric_value(
        &metrics,
        &["llm_cost_micros_total{", "deployment=\"claude\""],
    );
    assert_eq!(
        cost as u64,
        claude.iter().map(|u| u.cost_micros).sum::<u64>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_provider_settings_stop_the_gateway_naming_the_key() {
    for (toml, key) in [
        (
            "provider = 'openai'\nbase_url = 'http://x/v1'\nmodel = 'm'\nversion = '2023-06-01'",
            "llm.deployments.bad.version",
        ),
        (
            "provider = 'mock'\nmock_ttft_ms = 5",
            "llm.deployments.bad.mock_ttft_ms",
        ),
        (
            "provider = 'gemini'\nmodel = ''",
            "llm.deployments.bad.model",
        ),
        (
            "provider = 'azure'\nendpoint = 'https://r'",
            "llm.deployments.bad.deployment",
        ),
        ("provider = 'cohere'", "llm.deployments.bad.provider"),
    ] {
        let dict: figment::value::Dict = figment::Figment::from(
            <figment::providers::Toml as figment::providers::Format>::string(toml),
        )
        .extract()
        .expect("toml");
        let mut config = boardroom_testkit::service_test_config();
        config
            .llm
            .deployments
            .insert("bad".into(), DeploymentConfig(dict));
        let err = boardroom_llm_gateway::Application::build(&config)
            .await
            .expect_err("refused");
        assert!(
            err.to_string().contains(&format!("`{key}`")),
            "{key}: {err}"
        );
    }
}
