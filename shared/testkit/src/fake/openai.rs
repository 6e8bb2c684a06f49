//! The OpenAI wire format: `POST /v1/chat/completions` (unary, or SSE `data:` chunks ending
//! with `data: [DONE]`, usage in a last chunk with `stream_options.include_usage`),
//! `POST /v1/embeddings`, and Azure OpenAI's `/openai/deployments/{d}/…?api-version=`.

use std::collections::HashSet;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

use super::{
    Behavior, FakeState, InFlight, Protocol, Reported, StreamEnd, error_body, invalid, pieces,
    scripted, sse, status,
};

/// Prompt tokens every answer reports, and how many of them were cached.
const PROMPT: u64 = 10;
const CACHED: u64 = 4;

pub(super) fn router(state: Arc<FakeState>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/embeddings", post(embeddings))
        .route(
            "/openai/deployments/{deployment}/chat/completions",
            post(chat),
        )
        .route(
            "/openai/deployments/{deployment}/embeddings",
            post(embeddings),
        )
        .with_state(state)
}

/// Azure's paths need `api-version`.
fn azure_without_version(uri: &Uri) -> bool {
    uri.path().starts_with("/openai/")
        && !uri
            .query()
            .unwrap_or_default()
            .split('&')
            .any(|p| p.starts_with("api-version="))
}

/// What OpenAI itself would refuse: unknown roles, a tool message answering no call of the
/// history, arguments that are not a string.
fn check(body: &Value) -> Result<(), String> {
    let messages = body["messages"]
        .as_array()
        .filter(|m| !m.is_empty())
        .ok_or("messages: must be a non-empty array")?;
    let mut calls = HashSet::new();
    for (i, m) in messages.iter().enumerate() {
        match m["role"].as_str() {
            Some("system" | "developer" | "user") => {}
            Some("assistant") => {
                for call in m["tool_calls"].as_array().into_iter().flatten() {
                    if !call["function"]["arguments"].is_string() {
                        return Err(format!(
                            "messages[{i}].tool_calls: function.arguments must be a string"
                        ));
                    }
                    calls.insert(call["id"].as_str().unwrap_or_default().to_owned());
                }
            }
            Some("tool") => {
                let id = m["tool_call_id"].as_str().unwrap_or_default();
                if !calls.contains(id) {
                    return Err(format!(
                        "messages[{i}]: tool_call_id `{id}` answers no tool call of the conversation"
                    ));
                }
            }
            other => return Err(format!("messages[{i}].role: {other:?} is not a role")),
        }
    }
    Ok(())
}

fn last_message(body: &Value) -> String {
    body["messages"]
        .as_array()
        .and_then(|m| m.last())
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default()
        .to_owned()
}

fn chunk(model: &str, delta: Value, finish: Option<&str>) -> String {
    let event = json!({
        "id": "chatcmpl-fake", "object": "chat.completion.chunk", "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    });
    format!("data: {event}\n\n")
}

fn usage(completion: u64) -> Value {
    json!({
        "prompt_tokens": PROMPT, "completion_tokens": completion, "total_tokens": PROMPT + completion,
        "prompt_tokens_details": {"cached_tokens": CACHED},
    })
}

async fn chat(
    State(state): State<Arc<FakeState>>,
    uri: Uri,
    headers: HeaderMap,
    body: axum::Json<Value>,
) -> Response {
    let body = body.0;
    let (behavior, _in_flight) = InFlight::begin(&state, &uri, &headers, &body);
    if azure_without_version(&uri) {
        return status(
            404,
            None,
            error_body(Protocol::OpenAi, 404, "Resource not found"),
        );
    }
    if let Err(message) = check(&body) {
        return invalid(Protocol::OpenAi, message);
    }
    if let Err(refused) = scripted(&state, Protocol::OpenAi, &behavior).await {
        return refused;
    }
    let model = body["model"].as_str().unwrap_or("fake").to_owned();
    let stream = body["stream"].as_bool() == Some(true);
    let words = state.words(&last_message(&body));
    let (text, call) = match &behavior {
        Behavior::ToolCall { name, arguments } => (String::new(), Some((name, arguments))),
        _ => (words.concat(), None),
    };
    let completion = if call.is_some() {
        8
    } else {
        words.len() as u64
    };
    if !stream {
        state.report(reported(completion));
        let message = match call {
            Some((name, arguments)) => json!({"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_fake_1", "type": "function", "function": {"name": name, "arguments": arguments}}
            ]}),
            // Explicit nulls, as LiteLLM and others write them.
            None => {
                json!({"role": "assistant", "content": text, "tool_calls": null, "function_call": null})
            }
        };
        let finish = if call.is_some() { "tool_calls" } else { "stop" };
        return axum::Json(json!({
            "id": "chatcmpl-fake", "object": "chat.completion", "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": usage(completion),
        }))
        .into_response();
    }
    let include_usage = body["stream_options"]["include_usage"].as_bool() == Some(true);
    let mut events = vec![chunk(
        &model,
        json!({"role": "assistant", "content": ""}),
        None,
    )];
    let end = match &behavior {
        Behavior::StallAfterRole => StreamEnd::Stalled,
        Behavior::DropMidStream => {
            events.extend(
                words
                    .iter()
                    .take(2)
                    .map(|w| chunk(&model, json!({"content": w}), None)),
            );
            StreamEnd::Dropped
        }
        Behavior::ErrorEvent { after_words } => {
            events.extend(
                words
                    .iter()
                    .take(*after_words)
                    .map(|w| chunk(&model, json!({"content": w}), None)),
            );
            let error = json!({"error": {"message": "The server had an error while processing your request.", "type": "server_error", "code": 500}});
            events.push(format!("data: {error}\n\n"));
            StreamEnd::Complete
        }
        _ => {
            match call {
                Some((name, arguments)) => {
                    for (i, piece) in pieces(arguments).into_iter().enumerate() {
                        let function = if i == 0 {
                            json!({"name": name, "arguments": piece})
                        } else {
                            json!({"arguments": piece})
                        };
                        let mut call = json!({"index": 0, "function": function});
                        if i == 0 {
                            call["id"] = json!("call_fake_1");
                            call["type"] = json!("function");
                        }
                        events.push(chunk(&model, json!({"tool_calls": [call]}), None));
                    }
                    events.push(chunk(&model, json!({}), Some("tool_calls")));
                }
                None => {
                    events.extend(
                        words
                            .iter()
                            .map(|w| chunk(&model, json!({"content": w}), None)),
                    );
                    events.push(chunk(&model, json!({}), Some("stop")));
                }
            }
            if include_usage {
                let usage = json!({
                    "id": "chatcmpl-fake", "object": "chat.completion.chunk", "model": model,
                    "choices": [], "usage": usage(completion),
                });
                events.push(format!("data: {usage}\n\n"));
                state.report(reported(completion));
            }
            events.push("data: [DONE]\n\n".to_owned());
            StreamEnd::Complete
        }
    };
    sse(events, state.pace(), end)
}

fn reported(completion: u64) -> Reported {
    Reported {
        input: PROMPT,
        output: completion,
        cache_read: CACHED,
        cache_write: 0,
    }
}

async fn embeddings(
    State(state): State<Arc<FakeState>>,
    uri: Uri,
    headers: HeaderMap,
    body: axum::Json<Value>,
) -> Response {
    let body = body.0;
    state.begin(uri.to_string(), &headers, &body);
    if azure_without_version(&uri) {
        return status(
            404,
            None,
            error_body(Protocol::OpenAi, 404, "Resource not found"),
        );
    }
    let inputs: Vec<String> = body["input"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, text)| json!({"object": "embedding", "index": i, "embedding": [text.len() as f32, 1.0, 0.0]}))
        .collect();
    axum::Json(json!({"object": "list", "data": data, "model": body["model"], "usage": {"prompt_tokens": inputs.len(), "total_tokens": inputs.len()}}))
        .into_response()
}
