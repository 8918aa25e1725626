//! Byte scans on the hot path.

/// Bytes checked at once by [`every_byte`].
const PIECE: usize = 32;

/// Whether every byte of `s` satisfies `ok`. Each 32-byte piece is checked whole, without
/// stopping at the first byte that fails, which the compiler turns into a few vector
/// instructions; a byte-at-a-time loop showed in validate's and forward auth's profiles
/// (a user agent is 100-odd bytes, a token 90). The last, shorter piece is filled out to
/// 32 with copies of its own first byte, so it too is checked as a whole piece: checked
/// byte by byte, it cost more than the whole pieces before it (callgrind, twenty-ninth
/// session).
#[inline]
pub(crate) fn every_byte(s: &[u8], ok: impl Fn(u8) -> bool) -> bool {
    let all = |piece: &[u8; PIECE]| piece.iter().fold(true, |all, &b| all & ok(b));
    let mut pieces = s.chunks_exact(PIECE);
    let whole = pieces
        .by_ref()
        .all(|piece| piece.try_into().is_ok_and(&all));
    let rest = pieces.remainder();
    let Some(&first) = rest.first() else {
        return whole;
    };
    let mut last = [first; PIECE];
    last[..rest.len()].copy_from_slice(rest);
    whole && all(&last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_byte_is_looked_at_whatever_the_length() {
        let ok = |b: u8| b != b'x';
        assert!(every_byte(b"", ok));
        for len in 1..=3 * PIECE + 1 {
            let s = vec![b'a'; len];
            assert!(every_byte(&s, ok), "{len}");
            for at in 0..len {
                let mut bad = s.clone();
                bad[at] = b'x';
                assert!(!every_byte(&bad, ok), "x at {at} of {len}");
            }
        }
    }
}
