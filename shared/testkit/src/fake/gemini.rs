//! Google's Gemini API: `POST /v1beta/models/{model}:generateContent`,
//! `:streamGenerateContent?alt=sse` (each `data:` a whole response chunk, CRLF-framed, the end
//! of the body its end) and `:batchEmbedContents`, with `x-goog-api-key`.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

use super::{
    Behavior, FakeState, InFlight, Protocol, Reported, StreamEnd, error_body, invalid, scripted,
    sse, status,
};

/// Prompt tokens (cached content included), cached ones, and thoughts every answer reports.
const PROMPT: u64 = 20;
const CACHED: u64 = 6;
const THOUGHTS: u64 = 2;

pub(super) fn router(state: Arc<FakeState>) -> Router {
    Router::new()
        .route("/v1beta/models/{call}", post(call))
        .with_state(state)
}

/// What the API itself refuses: roles other than `user`/`model`, `args` or `response` that
/// are not objects, function responses not right after the call turn or not matching its
/// calls in number and names.
fn check(body: &Value) -> Result<(), String> {
    let contents = body["contents"]
        .as_array()
        .filter(|c| !c.is_empty())
        .ok_or("contents is not specified")?;
    let mut calls: Vec<String> = Vec::new();
    for (i, content) in contents.iter().enumerate() {
        let role = content["role"].as_str().unwrap_or("user");
        if role != "user" && role != "model" {
            return Err(format!(
                "contents[{i}].role: Please use a valid role: user, model."
            ));
        }
        let parts = content["parts"]
            .as_array()
            .filter(|p| !p.is_empty())
            .ok_or_else(|| format!("contents[{i}].parts: must not be empty"))?;
        let mut responses: Vec<String> = Vec::new();
        let mut made: Vec<String> = Vec::new();
        for (j, part) in parts.iter().enumerate() {
            if let Some(call) = part.get("functionCall") {
                if role != "model" || !call["args"].is_object() {
                    return Err(format!(
                        "Invalid value at 'contents[{i}].parts[{j}].function_call.args' (type.googleapis.com/google.protobuf.Struct)"
                    ));
                }
                made.push(call["name"].as_str().unwrap_or_default().to_owned());
            }
            if let Some(response) = part.get("functionResponse") {
                if !response["response"].is_object() {
                    return Err(format!(
                        "Invalid value at 'contents[{i}].parts[{j}].function_response.response' (type.googleapis.com/google.protobuf.Struct)"
                    ));
                }
                responses.push(response["name"].as_str().unwrap_or_default().to_owned());
            }
        }
        if !responses.is_empty() {
            let (mut want, mut got) = (calls.clone(), responses);
            want.sort();
            got.sort();
            if want != got {
                return Err(
                    "Please ensure that the number of function response parts is equal to the number of function call parts of the function call turn, and that the function response turn comes immediately after the function call turn."
                        .into(),
                );
            }
        }
        calls = made;
    }
    Ok(())
}

fn last_text(body: &Value) -> String {
    body["contents"]
        .as_array()
        .and_then(|c| c.last())
        .and_then(|c| c["parts"].as_array())
        .map(|parts| {
            parts
                .iter()
                .filter_map(|p| p["text"].as_str())
                .collect::<String>()
        })
        .unwrap_or_default()
}

fn usage(candidates: u64) -> Value {
    json!({
        "promptTokenCount": PROMPT, "candidatesTokenCount": candidates,
        "cachedContentTokenCount": CACHED, "thoughtsTokenCount": THOUGHTS,
        "totalTokenCount": PROMPT + candidates + THOUGHTS,
    })
}

fn response(parts: Value, finish: Option<&str>, usage: Value) -> Value {
    let mut candidate = json!({"content": {"parts": parts, "role": "model"}, "index": 0});
    if let Some(finish) = finish {
        candidate["finishReason"] = json!(finish);
    }
    json!({"candidates": [candidate], "usageMetadata": usage, "modelVersion": "gemini-fake-001"})
}

fn data(value: &Value) -> String {
    format!("data: {value}\r\n\r\n")
}

async fn call(
    State(state): State<Arc<FakeState>>,
    Path(call): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: axum::Json<Value>,
) -> Response {
    let body = body.0;
    let (behavior, _in_flight) = InFlight::begin(&state, &uri, &headers, &body);
    if headers.get("x-goog-api-key").is_none() {
        return status(
            403,
            None,
            error_body(
                Protocol::Gemini,
                403,
                "Method doesn't allow unregistered callers",
            ),
        );
    }
    let Some((_model, action)) = call.split_once(':') else {
        return status(404, None, error_body(Protocol::Gemini, 404, "not found"));
    };
    if action == "batchEmbedContents" {
        let embeddings: Vec<Value> = body["requests"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                let text = r["content"]["parts"][0]["text"]
                    .as_str()
                    .unwrap_or_default();
                json!({"values": [text.len() as f32, 1.0, 0.0]})
            })
            .collect();
        return axum::Json(json!({ "embeddings": embeddings })).into_response();
    }
    let stream = match action {
        "generateContent" => false,
        "streamGenerateContent" if uri.query() == Some("alt=sse") => true,
        _ => return status(404, None, error_body(Protocol::Gemini, 404, "not found")),
    };
    if let Err(message) = check(&body) {
        return invalid(Protocol::Gemini, message);
    }
    if let Err(refused) = scripted(&state, Protocol::Gemini, &behavior).await {
        return refused;
    }
    let words = state.words(&last_text(&body));
    let call = match &behavior {
        Behavior::ToolCall { name, arguments } => Some(json!({"functionCall": {
            "name": name, "args": serde_json::from_str::<Value>(arguments).unwrap_or(json!({})),
        }})),
        _ => None,
    };
    let candidates = if call.is_some() {
        5
    } else {
        words.len() as u64
    };
    if !stream {
        state.report(reported(candidates));
        let parts = match call {
            Some(call) => json!([call]),
            None => json!([{"text": words.concat()}]),
        };
        return axum::Json(response(parts, Some("STOP"), usage(candidates))).into_response();
    }
    let mut events = Vec::new();
    let end = match &behavior {
        Behavior::StallAfterRole => {
            events.push(data(&response(json!([{"text": ""}]), None, usage(0))));
            StreamEnd::Stalled
        }
        Behavior::DropMidStream => {
            events.extend(
                words
                    .iter()
                    .take(2)
                    .map(|w| data(&response(json!([{"text": w}]), None, usage(1)))),
            );
            StreamEnd::Dropped
        }
        Behavior::ErrorEvent { after_words } => {
            events.extend(
                words
                    .iter()
                    .take(*after_words)
                    .map(|w| data(&response(json!([{"text": w}]), None, usage(1)))),
            );
            events.push(data(&json!({"error": {"code": 503, "message": "The model is overloaded. Please try again later.", "status": "UNAVAILABLE"}})));
            StreamEnd::Complete
        }
        _ => {
            match call {
                Some(call) => {
                    events.push(data(&response(json!([call]), None, usage(candidates))));
                    events.push(data(&response(
                        json!([{"text": ""}]),
                        Some("STOP"),
                        usage(candidates),
                    )));
                }
                None => {
                    let n = words.len();
                    for (i, w) in words.iter().enumerate() {
                        let finish = (i + 1 == n).then_some("STOP");
                        events.push(data(&response(
                            json!([{"text": w}]),
                            finish,
                            usage(i as u64 + 1),
                        )));
                    }
                }
            }
            state.report(reported(candidates));
            StreamEnd::Complete
        }
    };
    sse(events, state.pace(), end)
}

fn reported(candidates: u64) -> Reported {
    Reported {
        input: PROMPT,
        output: candidates + THOUGHTS,
        cache_read: CACHED,
        cache_write: 0,
    }
}
