//! Anthropic's Messages API: `POST /v1/messages` with `x-api-key` and `anthropic-version`;
//! streams of typed events (`message_start`, `content_block_start`/`_delta`/`_stop`,
//! `message_delta` with cumulative usage, `message_stop`, `ping` anywhere), with an `error`
//! event possible on a 200.

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

/// Uncached prompt tokens, cache writes and cache reads every answer reports.
const INPUT: u64 = 10;
const CACHE_WRITE: u64 = 3;
const CACHE_READ: u64 = 5;

pub(super) fn router(state: Arc<FakeState>) -> Router {
    Router::new()
        .route("/v1/messages", post(messages))
        .with_state(state)
}

fn blocks(content: &Value) -> Vec<Value> {
    match content {
        Value::String(text) => vec![json!({"type": "text", "text": text})],
        Value::Array(blocks) => blocks.clone(),
        _ => Vec::new(),
    }
}

/// What the Messages API itself refuses: no `max_tokens`, a system role in `messages`, roles
/// not alternating from `user`, empty text blocks, a `tool_use` whose input is not an object,
/// a `tool_result` not answering a `tool_use` of the assistant message just before it, a
/// `tool_use` left unanswered.
fn check(body: &Value) -> Result<(), String> {
    if !body["max_tokens"].is_u64() {
        return Err("max_tokens: Field required".into());
    }
    let messages = body["messages"]
        .as_array()
        .filter(|m| !m.is_empty())
        .ok_or("messages: at least one message is required")?;
    let mut open: HashSet<String> = HashSet::new();
    let mut previous = "";
    for (i, m) in messages.iter().enumerate() {
        let role = m["role"].as_str().unwrap_or_default();
        match (i, role, previous) {
            (0, "user", _) => {}
            (0, _, _) => return Err("messages: the first message must use the user role".into()),
            (_, "user", "assistant") | (_, "assistant", "user") => {}
            (_, "user" | "assistant", _) => {
                return Err(format!(
                    "messages: roles must alternate between user and assistant (messages[{i}])"
                ));
            }
            _ => {
                return Err(format!(
                    "messages[{i}].role: Input should be 'user' or 'assistant'"
                ));
            }
        }
        let mut answered = HashSet::new();
        for block in blocks(&m["content"]) {
            match block["type"].as_str().unwrap_or_default() {
                "text" if block["text"].as_str().is_none_or(str::is_empty) => {
                    return Err(format!(
                        "messages[{i}]: text content blocks must be non-empty"
                    ));
                }
                "text" => {}
                "tool_use" if role == "assistant" => {
                    if !block["input"].is_object() {
                        return Err(format!("messages[{i}]: tool_use.input must be an object"));
                    }
                    open.insert(block["id"].as_str().unwrap_or_default().to_owned());
                }
                "tool_result" if role == "user" => {
                    let id = block["tool_use_id"].as_str().unwrap_or_default().to_owned();
                    if !open.contains(&id) {
                        return Err(format!(
                            "messages[{i}]: unexpected `tool_use_id` found in `tool_result` blocks: {id}. Each `tool_result` block must have a corresponding `tool_use` block in the previous message."
                        ));
                    }
                    answered.insert(id);
                }
                other => {
                    return Err(format!(
                        "messages[{i}]: a `{other}` block is not allowed in a {role} message"
                    ));
                }
            }
        }
        if role == "user" {
            if let Some(id) = open.iter().find(|id| !answered.contains(*id)) {
                return Err(format!(
                    "messages[{i}]: `tool_use` ids were found without `tool_result` blocks immediately after: {id}"
                ));
            }
            open.clear();
        }
        previous = role;
    }
    Ok(())
}

fn last_text(body: &Value) -> String {
    body["messages"]
        .as_array()
        .and_then(|m| m.last())
        .map(|m| {
            blocks(&m["content"])
                .iter()
                .filter_map(|b| b["text"].as_str().map(str::to_owned))
                .collect::<String>()
        })
        .unwrap_or_default()
}

fn event(kind: &str, data: Value) -> String {
    format!("event: {kind}\ndata: {data}\n\n")
}

async fn messages(
    State(state): State<Arc<FakeState>>,
    uri: Uri,
    headers: HeaderMap,
    body: axum::Json<Value>,
) -> Response {
    let body = body.0;
    let (behavior, _in_flight) = InFlight::begin(&state, &uri, &headers, &body);
    if headers.get("x-api-key").is_none() {
        return status(
            401,
            None,
            error_body(Protocol::Anthropic, 401, "x-api-key header is required"),
        );
    }
    if headers.get("anthropic-version").is_none() {
        return invalid(
            Protocol::Anthropic,
            "anthropic-version: header is required".into(),
        );
    }
    if let Err(message) = check(&body) {
        return invalid(Protocol::Anthropic, message);
    }
    if let Err(refused) = scripted(&state, Protocol::Anthropic, &behavior).await {
        return refused;
    }
    let model = body["model"].as_str().unwrap_or("claude-fake").to_owned();
    let words = state.words(&last_text(&body));
    let call = match &behavior {
        Behavior::ToolCall { name, arguments } => Some((name.clone(), arguments.clone())),
        _ => None,
    };
    let output = if call.is_some() {
        12
    } else {
        words.len() as u64
    };
    let usage_start = json!({"input_tokens": INPUT, "cache_creation_input_tokens": CACHE_WRITE, "cache_read_input_tokens": CACHE_READ, "output_tokens": 1});
    let stop_reason = if call.is_some() {
        "tool_use"
    } else {
        "end_turn"
    };
    if body["stream"].as_bool() != Some(true) {
        state.report(reported(output));
        let content = match &call {
            Some((name, arguments)) => json!([{
                "type": "tool_use", "id": "toolu_fake_1", "name": name,
                "input": serde_json::from_str::<Value>(arguments).unwrap_or(json!({})),
            }]),
            None => json!([{"type": "text", "text": words.concat()}]),
        };
        return axum::Json(json!({
            "id": "msg_fake", "type": "message", "role": "assistant", "model": model,
            "content": content, "stop_reason": stop_reason, "stop_sequence": null,
            "usage": {"input_tokens": INPUT, "cache_creation_input_tokens": CACHE_WRITE, "cache_read_input_tokens": CACHE_READ, "output_tokens": output},
        }))
        .into_response();
    }
    let mut events = vec![
        event(
            "message_start",
            json!({"type": "message_start", "message": {
                "id": "msg_fake", "type": "message", "role": "assistant", "content": [], "model": model,
                "stop_reason": null, "stop_sequence": null, "usage": usage_start,
            }}),
        ),
        event("ping", json!({"type": "ping"})),
    ];
    let text_start = event(
        "content_block_start",
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
    );
    let text = |w: &String| {
        event(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": w}}),
        )
    };
    let end = match &behavior {
        Behavior::StallAfterRole => StreamEnd::Stalled,
        Behavior::DropMidStream => {
            events.push(text_start);
            events.extend(words.iter().take(2).map(text));
            StreamEnd::Dropped
        }
        Behavior::ErrorEvent { after_words } => {
            if *after_words > 0 {
                events.push(text_start);
                events.extend(words.iter().take(*after_words).map(text));
            }
            events.push(event(
                "error",
                json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
            ));
            StreamEnd::Complete
        }
        _ => {
            match &call {
                Some((name, arguments)) => {
                    events.push(event(
                        "content_block_start",
                        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", "id": "toolu_fake_1", "name": name, "input": {}}}),
                    ));
                    for piece in pieces(arguments) {
                        events.push(event(
                            "content_block_delta",
                            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": piece}}),
                        ));
                    }
                }
                None => {
                    events.push(text_start);
                    events.extend(words.iter().map(text));
                }
            }
            events.push(event(
                "content_block_stop",
                json!({"type": "content_block_stop", "index": 0}),
            ));
            // Event types added later must be ignored by clients.
            events.push(event(
                "content_block_annotation",
                json!({"type": "content_block_annotation", "index": 0}),
            ));
            events.push(event(
                "message_delta",
                json!({"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": null}, "usage": {"output_tokens": output}}),
            ));
            events.push(event("message_stop", json!({"type": "message_stop"})));
            state.report(reported(output));
            StreamEnd::Complete
        }
    };
    sse(events, state.pace(), end)
}

fn reported(output: u64) -> Reported {
    Reported {
        input: INPUT + CACHE_WRITE + CACHE_READ,
        output,
        cache_read: CACHE_READ,
        cache_write: CACHE_WRITE,
    }
}
