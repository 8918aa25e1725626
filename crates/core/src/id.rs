//! Session ids: public handles, separate from tokens.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// 128 bits naming a session. Safe to log and to show: knowing an id grants nothing.
/// Written as 32 lowercase hex digits; ordered by value, which gives admin listings a stable
/// order to page through.
///
/// An id made by [`SessionId::for_user`] starts with a 4-byte tag derived from the user
/// name, followed by 96 random bits. The tag lets a shared store keep all of a user's
/// sessions together (one Redis Cluster hash slot) and find a session's key from its token
/// alone, without a second lookup. A store may then replace bytes 4..8 with where it will
/// keep the session (the embedded store's slot number; `SessionStore::issue_slot`), which
/// leaves 64 random bits: ids need to be unique, not secret (the token's 256-bit secret
/// is what authenticates).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SessionId(pub [u8; 16]);

/// Random bytes in an id made for a user (after its 4-byte tag).
pub const ID_RANDOM_LEN: usize = 12;

impl SessionId {
    /// A fresh id from the OS random generator.
    pub fn random() -> Result<SessionId, getrandom::Error> {
        let mut b = [0u8; 16];
        getrandom::fill(&mut b)?;
        Ok(SessionId(b))
    }

    /// A fresh id for a session of `user`: the user's tag, then 96 random bits.
    pub fn for_user(user: &str) -> Result<SessionId, getrandom::Error> {
        let mut random = [0u8; ID_RANDOM_LEN];
        getrandom::fill(&mut random)?;
        Ok(SessionId::for_user_from(user, &random))
    }

    /// [`SessionId::for_user`] with its random bits given, for a caller that draws them
    /// from the OS together with other secrets (a create draws the token's in the same call).
    pub fn for_user_from(user: &str, random: &[u8; ID_RANDOM_LEN]) -> SessionId {
        let mut b = [0u8; 16];
        b[..4].copy_from_slice(&user_tag(user));
        b[4..].copy_from_slice(random);
        SessionId(b)
    }

    /// The 4-byte user tag an id made by [`SessionId::for_user`] starts with.
    pub fn tag(&self) -> [u8; 4] {
        [self.0[0], self.0[1], self.0[2], self.0[3]]
    }

    /// [`SessionId::tag`] as 8 hex digits.
    pub fn tag_hex(&self) -> String {
        tag_hex(self.tag())
    }

    pub const fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// The 32 lowercase hex digits of [`SessionId`]'s `Display`, without an allocation
    /// (every validate answer carries one).
    pub fn hex(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        write_hex(&self.0, &mut out);
        out
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(std::str::from_utf8(&self.hex()).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({self})")
    }
}

/// A string that is not 32 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a session id is 32 lowercase hex digits")]
pub struct ParseSessionIdError;

impl FromStr for SessionId {
    type Err = ParseSessionIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = s.as_bytes();
        if bytes.len() != 32 {
            return Err(ParseSessionIdError);
        }
        let mut out = [0u8; 16];
        for (i, pair) in bytes.chunks_exact(2).enumerate() {
            out[i] = (hex_digit(pair[0])? << 4) | hex_digit(pair[1])?;
        }
        Ok(SessionId(out))
    }
}

fn hex_digit(c: u8) -> Result<u8, ParseSessionIdError> {
    match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        _ => Err(ParseSessionIdError),
    }
}

/// The tag every session id of `user` starts with.
pub fn user_tag(user: &str) -> [u8; 4] {
    use sha2::Digest as _;
    let digest = sha2::Sha256::new()
        .chain_update(b"sessiond-user-tag\0")
        .chain_update(user.as_bytes())
        .finalize();
    [digest[0], digest[1], digest[2], digest[3]]
}

/// [`user_tag`] as 8 hex digits, as [`SessionId::tag_hex`] writes it.
pub fn user_tag_hex(user: &str) -> String {
    tag_hex(user_tag(user))
}

/// A user tag as 8 lowercase hex digits.
pub fn tag_hex(tag: [u8; 4]) -> String {
    let mut out = [0u8; 8];
    write_hex(&tag, &mut out);
    out.into_iter().map(char::from).collect()
}

/// `bytes` as lowercase hex digits, two per byte, into `out` (twice as long).
fn write_hex(bytes: &[u8], out: &mut [u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    debug_assert_eq!(out.len(), 2 * bytes.len());
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = HEX[usize::from(b >> 4)];
        pair[1] = HEX[usize::from(b & 0xf)];
    }
}

/// The tag [`tag_hex`] wrote, or `None` if `hex` is not 8 lowercase hex digits.
pub fn parse_tag_hex(hex: &str) -> Option<[u8; 4]> {
    let b = hex.as_bytes();
    if b.len() != 8 {
        return None;
    }
    let mut tag = [0u8; 4];
    for (i, t) in tag.iter_mut().enumerate() {
        *t = (hex_digit(b[2 * i]).ok()? << 4) | hex_digit(b[2 * i + 1]).ok()?;
    }
    Some(tag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_and_parse_round_trip() {
        let id = SessionId::random().unwrap();
        let s = id.to_string();
        assert_eq!(s.len(), 32);
        assert_eq!(s.parse::<SessionId>().unwrap(), id);
        let known = SessionId([
            0x00, 0x01, 0x7f, 0x80, 0xab, 0xcd, 0xef, 0xff, 0x10, 0x32, 0x54, 0x76, 0x98, 0xba,
            0xdc, 0xfe,
        ]);
        assert_eq!(known.to_string(), "00017f80abcdefff1032547698badcfe");
    }

    #[test]
    fn parse_refuses_anything_else() {
        for bad in ["", "abc", &"A".repeat(32), &"g".repeat(32), &"0".repeat(33)] {
            assert!(bad.parse::<SessionId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_users_ids_share_its_tag_and_differ_otherwise() {
        let a = SessionId::for_user("alice").unwrap();
        let b = SessionId::for_user("alice").unwrap();
        assert_ne!(a, b);
        assert_eq!(a.tag_hex(), b.tag_hex());
        assert_eq!(a.tag_hex(), user_tag_hex("alice"));
        assert_ne!(user_tag("alice"), user_tag("bob"));
    }

    #[test]
    fn a_tag_is_the_ids_first_four_bytes_in_hex_and_parses_back() {
        let id: SessionId = "00017f80abcdeffe1032547698badcfe".parse().unwrap();
        assert_eq!(id.tag(), [0x00, 0x01, 0x7f, 0x80]);
        assert_eq!(id.tag_hex(), "00017f80");
        assert_eq!(parse_tag_hex("00017f80"), Some(id.tag()));
        for bad in ["", "00017f8", "00017f800", "00017F80", "0001 f80"] {
            assert_eq!(parse_tag_hex(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn random_ids_differ() {
        assert_ne!(SessionId::random().unwrap(), SessionId::random().unwrap());
    }
}
