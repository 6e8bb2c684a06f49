//! The exact response cache: answers keyed by a hash of the normalised request (alias,
//! messages, tools, parameters; not the request id or cache policy), in the tiered cache, so
//! replicas share them through Redis.

use std::sync::Arc;

use boardroom_cache::Codec;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::domain::{ChatRequest, Completion};

/// A cached answer and the deployment that produced it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CachedAnswer {
    /// The answer.
    pub completion: Completion,
    /// Who produced it.
    pub deployment: String,
}

/// JSON in Redis, shared `Arc`s in L1.
#[derive(Debug, Clone, Copy)]
pub struct AnswerCodec;

impl Codec for AnswerCodec {
    type Value = Arc<CachedAnswer>;

    fn encode(value: &Self::Value) -> Bytes {
        Bytes::from(serde_json::to_vec(value.as_ref()).unwrap_or_default())
    }

    fn decode(bytes: Bytes) -> Option<Self::Value> {
        serde_json::from_slice(&bytes).ok().map(Arc::new)
    }

    fn weight(value: &Self::Value) -> usize {
        256 + value.completion.content.len()
            + value
                .completion
                .tool_calls
                .iter()
                .map(|c| c.arguments.len() + c.name.len() + c.id.len())
                .sum::<usize>()
    }
}

/// `c:<hex>` of SHA-256 over the request's answer-determining parts.
pub fn cache_key(request: &ChatRequest) -> String {
    #[derive(Serialize)]
    struct Normalised<'a> {
        model: &'a str,
        messages: &'a [crate::domain::Message],
        tools: &'a [crate::domain::ToolDef],
        params: &'a crate::domain::Params,
    }
    let normalised = Normalised {
        model: &request.model,
        messages: &request.messages,
        tools: &request.tools,
        params: &request.params,
    };
    digest_key("c:", &serde_json::to_vec(&normalised).unwrap_or_default())
}

/// `prefix` + hex of the first 160 bits of SHA-256 of `bytes`: a cache key for content.
pub(crate) fn digest_key(prefix: &str, bytes: &[u8]) -> String {
    use std::fmt::Write;
    let digest = Sha256::digest(bytes);
    let mut key = String::with_capacity(prefix.len() + 40);
    key.push_str(prefix);
    for byte in &digest[..20] {
        let _ = write!(key, "{byte:02x}");
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{CachePolicy, Message, Params, Role};

    fn request(text: &str, id: &str) -> ChatRequest {
        ChatRequest {
            model: "m".into(),
            messages: vec![Message {
                role: Role::User,
                content: text.into(),
                tool_calls: vec![],
                tool_call_id: None,
                name: None,
            }],
            tools: vec![],
            params: Params {
                temperature: Some(0.0),
                ..Params::default()
            },
            request_id: id.into(),
            cache_policy: CachePolicy::Default,
        }
    }

    #[test]
    fn the_key_ignores_the_request_id_and_sees_the_prompt() {
        assert_eq!(cache_key(&request("a", "1")), cache_key(&request("a", "2")));
        assert_ne!(cache_key(&request("a", "1")), cache_key(&request("b", "1")));
        let mut warmer = request("a", "1");
        warmer.params.temperature = Some(0.5);
        assert_ne!(cache_key(&warmer), cache_key(&request("a", "1")));
    }
}
