//! Opaque keyset page tokens. A token holds the `(created_at, id)` of the last row of the page
//! and a fingerprint of the list's filters, so it cannot be replayed against another list.
//!
//! Layout before base64url: version (1) | fingerprint (8) | created_at µs (8) | id (16).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::error::SessionError;

const VERSION: u8 = 1;
const LEN: usize = 1 + 8 + 8 + 16;
const FIELD: &str = "page_token";

/// The position after which the next page starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub created_at: DateTime<Utc>,
    pub id: Uuid,
}

/// A stable fingerprint of a list's filters (FNV-1a; stable across processes and builds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint(u64);

impl Fingerprint {
    /// Fingerprints the parts that define a list, in order.
    pub fn of(parts: &[&[u8]]) -> Self {
        Fingerprint(boardroom_runtime::page::fingerprint(parts))
    }
}

/// Encodes the cursor of a page's last row.
pub fn encode(fingerprint: Fingerprint, cursor: Cursor) -> String {
    let mut bytes = [0u8; LEN];
    bytes[0] = VERSION;
    bytes[1..9].copy_from_slice(&fingerprint.0.to_be_bytes());
    bytes[9..17].copy_from_slice(&cursor.created_at.timestamp_micros().to_be_bytes());
    bytes[17..].copy_from_slice(cursor.id.as_bytes());
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Decodes a client's token; `None` for an empty one (the first page).
pub fn decode(
    token: Option<&str>,
    fingerprint: Fingerprint,
) -> Result<Option<Cursor>, SessionError> {
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        return Ok(None);
    };
    let invalid = || SessionError::invalid(FIELD, "is not a token this list returned");
    if token.len() > 64 {
        return Err(invalid());
    }
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
    if bytes.len() != LEN || bytes[0] != VERSION {
        return Err(invalid());
    }
    let stored = u64::from_be_bytes(bytes[1..9].try_into().map_err(|_| invalid())?);
    if stored != fingerprint.0 {
        return Err(SessionError::invalid(
            FIELD,
            "belongs to a list with other filters",
        ));
    }
    let micros = i64::from_be_bytes(bytes[9..17].try_into().map_err(|_| invalid())?);
    let created_at = DateTime::from_timestamp_micros(micros).ok_or_else(invalid)?;
    let id = Uuid::from_slice(&bytes[17..]).map_err(|_| invalid())?;
    Ok(Some(Cursor { created_at, id }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cursor() -> Cursor {
        Cursor {
            created_at: DateTime::from_timestamp_micros(1_790_000_000_123_456).expect("valid"),
            id: Uuid::now_v7(),
        }
    }

    #[test]
    fn round_trips() {
        let fp = Fingerprint::of(&[b"sessions", b"user-1"]);
        let c = cursor();
        assert_eq!(decode(Some(&encode(fp, c)), fp).expect("valid"), Some(c));
        assert_eq!(decode(Some(""), fp).expect("empty is first page"), None);
    }

    #[test]
    fn rejects_other_filters_and_garbage() {
        let token = encode(Fingerprint::of(&[b"sessions", b"user-1"]), cursor());
        let other = Fingerprint::of(&[b"sessions", b"user-2"]);
        assert!(
            matches!(decode(Some(&token), other), Err(SessionError::Invalid(v)) if v.fields().next() == Some("page_token"))
        );
        for garbage in ["%%%", "AAAA", &"A".repeat(200)] {
            assert!(decode(Some(garbage), other).is_err(), "{garbage}");
        }
    }

    #[test]
    fn fingerprint_separates_parts() {
        assert_ne!(
            Fingerprint::of(&[b"ab", b"c"]),
            Fingerprint::of(&[b"a", b"bc"])
        );
    }
}
