//! Opaque keyset page tokens: the seq (messages) or version (checkpoints) of a page's last row,
//! with a fingerprint of the list so that a token cannot be replayed against another list.
//!
//! Layout before base64url: format (1) | fingerprint (8) | position (8 for a seq or a
//! version, 16 for an id).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::error::ConversationError;

/// Tokens of lists keyed by an i64 (seq, version).
const FORMAT: u8 = 1;
/// Tokens of lists keyed by a UUID (memories).
const FORMAT_ID: u8 = 2;
const FIELD: &str = "page_token";

pub use boardroom_runtime::page::fingerprint;

fn seal(format: u8, fingerprint: u64, position: &[u8]) -> String {
    let mut bytes = Vec::with_capacity(9 + position.len());
    bytes.push(format);
    bytes.extend_from_slice(&fingerprint.to_be_bytes());
    bytes.extend_from_slice(position);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The position bytes of a client's token; `None` for an empty token (first page).
fn open<const N: usize>(
    token: &str,
    format: u8,
    fingerprint: u64,
) -> Result<Option<[u8; N]>, ConversationError> {
    if token.is_empty() {
        return Ok(None);
    }
    let invalid = || ConversationError::invalid(FIELD, "is not a token this list returned");
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
    if bytes.len() != 9 + N || bytes[0] != format || bytes[1..9] != fingerprint.to_be_bytes() {
        return Err(invalid());
    }
    let mut position = [0u8; N];
    position.copy_from_slice(&bytes[9..]);
    Ok(Some(position))
}

/// The token of a page whose last row is at `position`.
pub fn encode(fingerprint: u64, position: i64) -> String {
    seal(FORMAT, fingerprint, &position.to_be_bytes())
}

/// The position a client's token continues after; `None` for an empty token (first page).
pub fn decode(token: &str, fingerprint: u64) -> Result<Option<i64>, ConversationError> {
    Ok(open::<8>(token, FORMAT, fingerprint)?.map(i64::from_be_bytes))
}

/// The token of a page whose last row has the id `position`.
pub fn encode_id(fingerprint: u64, position: uuid::Uuid) -> String {
    seal(FORMAT_ID, fingerprint, position.as_bytes())
}

/// The id a client's token continues after; `None` for an empty token (first page).
pub fn decode_id(token: &str, fingerprint: u64) -> Result<Option<uuid::Uuid>, ConversationError> {
    Ok(open::<16>(token, FORMAT_ID, fingerprint)?.map(uuid::Uuid::from_bytes))
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
        let id = uuid::Uuid::now_v7();
        let token = encode_id(list, id);
        assert_eq!(decode_id(&token, list).ok().flatten(), Some(id));
        assert!(decode_id(&token, other).is_err());
        // A seq's token is not an id's.
        assert!(decode_id(&encode(list, 41), list).is_err());
    }
}
