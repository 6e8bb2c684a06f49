//! How a state is stored: JSON compressed with LZ4 (block format, size prepended), in a
//! checkpoint row and in the hot-state cache alike.

use bytes::Bytes;

use crate::domain::ConversationState;

/// Encodes a state for a checkpoint or Redis.
pub fn encode(state: &ConversationState) -> Vec<u8> {
    // Serialising plain structs of strings and integers cannot fail.
    let json = serde_json::to_vec(state).unwrap_or_default();
    lz4_flex::compress_prepend_size(&json)
}

/// Decodes stored bytes; `None` when they are not a state (corrupt or another format).
pub fn decode(bytes: &[u8]) -> Option<ConversationState> {
    let json = lz4_flex::decompress_size_prepended(bytes).ok()?;
    serde_json::from_slice(&json).ok()
}

/// The hot-state cache's codec: states as themselves in L1, compressed in Redis.
#[derive(Debug, Clone, Copy)]
pub struct StateCodec;

impl boardroom_cache::Codec for StateCodec {
    type Value = std::sync::Arc<ConversationState>;

    fn encode(value: &Self::Value) -> Bytes {
        Bytes::from(encode(value))
    }

    fn decode(bytes: Bytes) -> Option<Self::Value> {
        decode(&bytes).map(std::sync::Arc::new)
    }

    fn weight(value: &Self::Value) -> usize {
        let memory: usize = value
            .advisors
            .iter()
            .map(|(name, m)| name.len() + m.last_answer.len() + 64)
            .sum();
        128 + value.summary.len() + memory
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_round_trips_and_garbage_is_refused() {
        let mut state = ConversationState {
            version: 7,
            covers_seq: 42,
            summary: "the board discussed pricing ".repeat(20),
            summarized_through_seq: 30,
            turns: 9,
            ..ConversationState::default()
        };
        state.advisors.insert("cfo".into(), Default::default());
        let bytes = encode(&state);
        assert!(
            bytes.len() < state.summary.len(),
            "repetitive text compresses"
        );
        assert_eq!(decode(&bytes), Some(state));
        assert_eq!(decode(b"not a state"), None);
    }
}
