//! What every service's page tokens share: a stable fingerprint of the list a token belongs
//! to, so that a token cannot be replayed against another list.

/// A stable fingerprint of the parts that define a list, in order (FNV-1a over the parts,
/// each followed by 0xff; the same across processes and builds).
pub fn fingerprint(parts: &[&[u8]]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in part.iter().chain(std::iter::once(&0xff)) {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::fingerprint;

    #[test]
    fn parts_are_separated_and_ordered() {
        assert_ne!(fingerprint(&[b"ab", b"c"]), fingerprint(&[b"a", b"bc"]));
        assert_ne!(fingerprint(&[b"a", b"b"]), fingerprint(&[b"b", b"a"]));
        assert_eq!(fingerprint(&[b"x"]), fingerprint(&[b"x"]));
    }
}
