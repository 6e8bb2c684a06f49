//! Proto ↔ domain, with every field checked (all violations reported at once).

use boardroom_proto::llm::v1 as pb;
use boardroom_runtime::status::Violations;

pub use crate::api::RequestLimits;
use crate::api::check_bounds;
use crate::domain::{
    CacheOutcome, CachePolicy, ChatAnswer, ChatRequest, Completion, FinishReason, Message, Params,
    Role, ToolCall, ToolChoice, ToolDef, Usage,
};
use crate::error::GatewayError;

fn role(v: &mut Violations, field: String, role: i32) -> Role {
    match pb::Role::try_from(role) {
        Ok(pb::Role::System) => Role::System,
        Ok(pb::Role::User) => Role::User,
        Ok(pb::Role::Assistant) => Role::Assistant,
        Ok(pb::Role::Tool) => Role::Tool,
        Ok(pb::Role::Unspecified) | Err(_) => {
            v.add(field, "must be SYSTEM, USER, ASSISTANT or TOOL");
            Role::User
        }
    }
}

/// A checked chat request.
pub fn chat_request(
    request: pb::ChatRequest,
    limits: RequestLimits,
) -> Result<ChatRequest, GatewayError> {
    let mut v = Violations::default();
    let messages: Vec<Message> = request
        .messages
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            let role = role(&mut v, format!("messages[{i}].role"), m.role);
            if role == Role::Tool && m.tool_call_id.is_empty() {
                v.add(
                    format!("messages[{i}].tool_call_id"),
                    "required on a TOOL message",
                );
            }
            Message {
                role,
                content: m.content,
                tool_calls: m
                    .tool_calls
                    .into_iter()
                    .map(|c| ToolCall {
                        id: c.id,
                        name: c.name,
                        arguments: c.arguments_json,
                    })
                    .collect(),
                tool_call_id: (!m.tool_call_id.is_empty()).then_some(m.tool_call_id),
                name: (!m.name.is_empty()).then_some(m.name),
            }
        })
        .collect();
    let tools: Vec<ToolDef> = request
        .tools
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            if t.name.is_empty() {
                v.add(format!("tools[{i}].name"), "must not be empty");
            }
            if !t.parameters_json_schema.is_empty()
                && serde_json::from_str::<serde_json::Value>(&t.parameters_json_schema).is_err()
            {
                v.add(format!("tools[{i}].parameters_json_schema"), "must be JSON");
            }
            ToolDef {
                name: t.name,
                description: t.description,
                parameters: t.parameters_json_schema,
            }
        })
        .collect();
    let cache_policy = match pb::CachePolicy::try_from(request.cache_policy) {
        Ok(pb::CachePolicy::Unspecified) => CachePolicy::Default,
        Ok(pb::CachePolicy::Bypass) => CachePolicy::Bypass,
        Ok(pb::CachePolicy::CacheOnly) => CachePolicy::CacheOnly,
        Ok(pb::CachePolicy::Force) => CachePolicy::Force,
        Err(_) => {
            v.add("cache_policy", "unknown value");
            CachePolicy::Default
        }
    };
    let chat = ChatRequest {
        model: request.model,
        messages,
        tools,
        params: Params {
            temperature: request.temperature,
            top_p: request.top_p,
            max_tokens: request.max_tokens,
            stop: request.stop,
            seed: request.seed,
            tool_choice: ToolChoice::Auto,
        },
        request_id: request.request_id,
        cache_policy,
    };
    check_bounds(&chat, limits, &mut v);
    Ok(v.finish(chat)?)
}

fn finish_reason(reason: FinishReason) -> i32 {
    (match reason {
        FinishReason::Stop => pb::FinishReason::Stop,
        FinishReason::Length => pb::FinishReason::Length,
        FinishReason::ToolCalls => pb::FinishReason::ToolCalls,
        FinishReason::ContentFilter => pb::FinishReason::ContentFilter,
    }) as i32
}

fn cache_outcome(outcome: CacheOutcome) -> i32 {
    (match outcome {
        CacheOutcome::Miss => pb::CacheOutcome::Miss,
        CacheOutcome::Exact => pb::CacheOutcome::Exact,
        CacheOutcome::Coalesced => pb::CacheOutcome::Coalesced,
        CacheOutcome::Semantic => pb::CacheOutcome::Semantic,
    }) as i32
}

/// A tool call on the wire.
pub fn tool_call(call: ToolCall) -> pb::ToolCall {
    pb::ToolCall {
        id: call.id,
        name: call.name,
        arguments_json: call.arguments,
    }
}

/// Usage on the wire.
pub fn usage(usage: Usage, cost_micros: u64) -> pb::Usage {
    pb::Usage {
        input_tokens: usage.input_tokens,
        output_tokens: usage.output_tokens,
        cost_micros,
        cache_read_tokens: usage.cache_read_tokens,
        cache_write_tokens: usage.cache_write_tokens,
    }
}

/// The response of a completion; `with_content: false` for a stream's final event.
pub fn chat_response(
    completion: Completion,
    deployment: String,
    cache: CacheOutcome,
    cost_micros: u64,
    with_content: bool,
) -> pb::ChatResponse {
    let usage = if cache == CacheOutcome::Miss {
        usage(completion.usage, cost_micros)
    } else {
        pb::Usage::default()
    };
    pb::ChatResponse {
        message: Some(pb::Message {
            role: pb::Role::Assistant as i32,
            content: if with_content {
                completion.content
            } else {
                String::new()
            },
            tool_calls: if with_content {
                completion.tool_calls.into_iter().map(tool_call).collect()
            } else {
                Vec::new()
            },
            tool_call_id: String::new(),
            name: String::new(),
        }),
        finish_reason: finish_reason(completion.finish_reason),
        usage: Some(usage),
        model: completion.model,
        provider: deployment,
        cache: cache_outcome(cache),
    }
}

/// A unary answer on the wire.
pub fn answer(answer: ChatAnswer) -> pb::ChatResponse {
    chat_response(
        answer.completion,
        answer.deployment,
        answer.cache,
        answer.cost_micros,
        true,
    )
}
