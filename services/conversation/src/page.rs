//! Opaque keyset page tokens: the seq (messages) or version (checkpoints) of a page's last row,
//! with a fingerprint of the list so that a token cannot be replayed against another list.
//!
//! Layout before base64url: format (1) | fingerprint (8) | position (8).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::error::ConversationError;

const FORMAT: u8 = 1;
const LEN: usize = 1 + 8 + 8;
const FIELD: &str = "page_token";

pub use boardroom_runtime::page::fingerprint;

/// The token of a page whose last row is at `position`.
pub fn encode(fingerprint: u64, position: i64) -> String {
    let mut bytes = [0u8; LEN];
    bytes[0] = FORMAT;
    bytes[1..9].copy_from_slice(&fingerprint.to_be_bytes());
    bytes[9..].copy_from_slice(&position.to_be_bytes());
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The position a client's token continues after; `None` for an empty token (first page).
pub fn decode(token: &str, fingerprint: u64) -> Result<Option<i64>, ConversationError> {
    if token.is_empty() {
        return Ok(None);
    }
    let invalid = || ConversationError::invalid(FIELD, "is not a token this list returned");
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
    let bytes: [u8; LEN] = bytes.try_into().map_err(|_| invalid())?;
    let mut print = [0u8; 8];
    print.copy_from_slice(&bytes[1..9]);
    if bytes[0] != FORMAT || u64::from_be_bytes(print) != fingerprint {
        return Err(invalid());
    }
    let mut position = [0u8; 8];
    position.copy_from_slice(&bytes[9..]);
    Ok(Some(i64::from_be_bytes(position)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_belong_to_their_list() {
        let list = fingerprint(&[b"thread-a", b"forward"]);
        let token = encode(list, 41);
        assert_eq!(decode(&token, list).ok().flatten(), Some(41));
        assert_eq!(decode("", list).ok().flatten(), None);
        let other = fingerprint(&[b"thread-b", b"forward"]);
        assert!(decode(&token, other).is_err());
        assert!(decode("%%%", list).is_err());
    }
}
