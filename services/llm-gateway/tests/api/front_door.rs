//! The OpenAI-compatible front door over HTTP: the same caches, limits and fallback as the
//! gRPC API, OpenAI's error JSON, and a stream that breaks after its first token ending with
//! an `error` event instead of `[DONE]`. (The official `openai` SDK is the client of the
//! end-to-end test `tests/e2e/openai_sdk.rs`.)

use boardroom_llm_gateway::settings::{AnthropicConfig, GeminiConfig, ProviderSettings};
use boardroom_runtime::Config;
use boardroom_runtime::config::{CallerLimits, Secret};
use boardroom_testkit::{Behavior, FakeProvider};
use serde_json::{Value, json};

use crate::helpers::{route, spawn_app};

struct Door {
    url: String,
    http: reqwest::Client,
    _app: crate::helpers::TestApp,
}

async fn door(configure: impl FnOnce(&mut Config)) -> Door {
    let app = spawn_app(configure).await;
    Door {
        url: format!("http://{}/v1", app.openai.expect("the OpenAI API is on")),
        http: reqwest::Client::new(),
        _app: app,
    }
}

impl Door {
    async fn post(&self, path: &str, body: Value) -> reqwest::Response {
        self.http
            .post(format!("{}{path}", self.url))
            .json(&body)
            .send()
            .await
            .expect("the front door answers")
    }
}

fn hello(model: &str, temperature: f32, stream: bool) -> Value {
    json!({
        "model": model, "temperature": temperature, "stream": stream,
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Plan the quarter"}],
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deterministic_answers_come_from_the_cache_the_second_time() {
    let door = door(|_| {}).await;
    let first = door
        .post("/chat/completions", hello("mock", 0.0, false))
        .await;
    assert_eq!(first.headers()["x-boardroom-cache"], "miss");
    let first: Value = first.json().await.expect("JSON");
    let second = door
        .post("/chat/completions", hello("mock", 0.0, false))
        .await;
    assert_eq!(second.status(), 200);
    assert_eq!(second.headers()["x-boardroom-cache"], "exact");
    assert_eq!(second.headers()["x-boardroom-deployment"], "mock");
    let second: Value = second.json().await.expect("JSON");
    assert_eq!(
        first["choices"][0]["message"]["content"],
        second["choices"][0]["message"]["content"]
    );
    assert!(first["usage"]["completion_tokens"].as_u64() > Some(0));
    assert_eq!(
        second["usage"]["total_tokens"], 0,
        "a cached answer cost nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_openai_json_with_the_matching_status() {
    let door = door(|_| {}).await;
    let bad = door
        .post(
            "/chat/completions",
            json!({"model": "mock", "messages": [{"role": "robot", "content": "x"}], "top_p": 0}),
        )
        .await;
    assert_eq!(bad.status(), 400);
    let body: Value = bad.json().await.expect("JSON");
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert_eq!(body["error"]["param"], "messages[0].role");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("top_p"), "every field named: {message}");

    let unparsable = door
        .http
        .post(format!("{}/chat/completions", door.url))
        .body("{not json")
        .send()
        .await
        .expect("answer");
    assert_eq!(unparsable.status(), 400);

    let unknown = door
        .post("/chat/completions", hello("nope", 0.5, false))
        .await;
    assert_eq!(unknown.status(), 404);
    let body: Value = unknown.json().await.expect("JSON");
    assert_eq!(body["error"]["code"], "model_not_found");

    let lost = door.post("/completions", json!({})).await;
    assert_eq!(lost.status(), 404);

    let door = self::door(|c| {
        c.llm.limits.default = CallerLimits {
            requests_per_minute: 2,
            ..CallerLimits::default()
        };
    })
    .await;
    for _ in 0..2 {
        let ok = door
            .post("/chat/completions", hello("mock", 0.5, false))
            .await;
        assert_eq!(ok.status(), 200);
    }
    let limited = door
        .post("/chat/completions", hello("mock", 0.5, false))
        .await;
    assert_eq!(limited.status(), 429);
    assert!(limited.headers().contains_key("retry-after"));
    let body: Value = limited.json().await.expect("JSON");
    assert_eq!(body["error"]["type"], "rate_limit_error");
}

/// The `data:` payloads of an SSE body.
fn sse_data(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_carry_tool_calls_and_end_with_an_error_event_when_the_upstream_breaks() {
    let (a, g) = (
        FakeProvider::anthropic().await,
        FakeProvider::gemini().await,
    );
    let door = door(|c| {
        route(
            c,
            "claude",
            vec![(
                "a",
                ProviderSettings::Anthropic(AnthropicConfig {
                    model: "claude-fake".into(),
                    base_url: a.base_url(),
                    api_key: Secret::new("k"),
                    ..AnthropicConfig::default()
                })
                .into(),
            )],
        );
        route(
            c,
            "gemini",
            vec![(
                "g",
                ProviderSettings::Gemini(GeminiConfig {
                    model: "gemini-fake".into(),
                    base_url: g.base_url(),
                    api_key: Secret::new("k"),
                    ..GeminiConfig::default()
                })
                .into(),
            )],
        );
        c.llm.retry.max_attempts = 1;
    })
    .await;

    g.script([Behavior::ToolCall {
        name: "lookup_metric".into(),
        arguments: r#"{"name":"runway"}"#.into(),
    }]);
    let mut request = hello("gemini", 0.5, true);
    request["tools"] = json!([{"type": "function", "function": {"name": "lookup_metric", "parameters": {"type": "object"}}}]);
    request["stream_options"] = json!({"include_usage": true});
    let body = door
        .post("/chat/completions", request)
        .await
        .text()
        .await
        .expect("body");
    let events = sse_data(&body);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{body}");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).expect("JSON chunk"))
        .collect();
    let call = chunks
        .iter()
        .find_map(|c| c["choices"][0]["delta"]["tool_calls"].get(0).cloned())
        .expect("a tool call chunk");
    assert_eq!(call["index"], 0);
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "lookup_metric");
    assert_eq!(call["function"]["arguments"], r#"{"name":"runway"}"#);
    assert!(
        chunks
            .iter()
            .any(|c| c["choices"][0]["finish_reason"] == "tool_calls")
    );
    let usage = chunks.last().expect("usage chunk");
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["prompt_tokens_details"]["cached_tokens"], 6);

    // A forced tool, in each provider's words.
    let mut forced = hello("claude", 0.5, false);
    forced["tools"] = json!([{"type": "function", "function": {"name": "lookup_metric"}}]);
    forced["tool_choice"] = json!({"type": "function", "function": {"name": "lookup_metric"}});
    assert_eq!(
        door.post("/chat/completions", forced.clone())
            .await
            .status(),
        200
    );
    assert_eq!(
        a.last_body().expect("body")["tool_choice"],
        json!({"type": "tool", "name": "lookup_metric"})
    );
    forced["model"] = json!("gemini");
    assert_eq!(door.post("/chat/completions", forced).await.status(), 200);
    assert_eq!(
        g.last_body().expect("body")["toolConfig"],
        json!({"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["lookup_metric"]}})
    );

    a.script([Behavior::ErrorEvent { after_words: 2 }]);
    let body = door
        .post("/chat/completions", hello("claude", 0.5, true))
        .await
        .text()
        .await
        .expect("body");
    let events = sse_data(&body);
    assert!(
        !events.contains(&"[DONE]".to_owned()),
        "never a truncated success: {body}"
    );
    let last: Value = serde_json::from_str(events.last().expect("events")).expect("JSON");
    assert_eq!(last["error"]["code"], "stream_broken", "{body}");
    assert!(
        body.contains("Plan"),
        "the tokens sent before the error: {body}"
    );
}
