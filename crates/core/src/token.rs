//! Bearer tokens: minted with a MAC under a keyed id, verified before any store lookup.
//!
//! A token reads `<key id>.<body>.<mac>`, where `body` is base64url of the 16-byte session
//! id followed by 32 bytes from the OS random generator, and `mac` is base64url of
//! HMAC-SHA-256 under the named key over `"sessiond-token-v1" | key id | body`.
//!
//! - A garbled or forged token fails [`TokenKeys::verify`] with no store lookup.
//! - The store never sees the secret, only its SHA-256 ([`Verifier`]), compared in constant
//!   time.
//! - The first key signs; every key verifies, so keys rotate without logging anyone out.

use std::fmt;

use base64_simd::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::SessionId;

type HmacSha256 = Hmac<Sha256>;

const DOMAIN: &[u8] = b"sessiond-token-v1";
/// Random bytes in a token's secret (256 bits).
pub const SECRET_LEN: usize = 32;
const BODY_LEN: usize = 16 + SECRET_LEN;
const BODY_B64_LEN: usize = 64;
const MAC_B64_LEN: usize = 43;
/// Longer inputs are refused before any decoding.
pub const MAX_TOKEN_LEN: usize = 128;
/// Shortest secret accepted for a token key.
pub const MIN_KEY_LEN: usize = 32;

/// Why a token was refused. Callers answer `invalid_token` for every one of them; the
/// variants exist for tests and debug logs (which never print the token).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is not of the form key.body.mac")]
    Malformed,
    #[error("token names an unknown key")]
    UnknownKey,
    #[error("token MAC does not verify")]
    BadMac,
}

/// Problems with configured key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("token key id `{0}` must be 1 to 32 characters of A-Z a-z 0-9 _ -")]
    BadId(String),
    #[error("token key `{0}` is shorter than {MIN_KEY_LEN} bytes")]
    TooShort(String),
    #[error("token key id `{0}` is listed twice")]
    Duplicate(String),
    #[error("at least one token key is needed")]
    None,
    #[error("the OS random generator failed: {0}")]
    Random(String),
}

/// SHA-256 of a token's secret: what the store keeps instead of the token.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Verifier(pub [u8; 32]);

impl Verifier {
    /// Constant-time equality, for comparing a presented token against the stored hash
    /// (`constant_time_eq` compares words, where `subtle` compared bytes one at a time:
    /// 11 instructions against 251 for the 32-byte verifier, on every validate).
    pub fn matches(&self, other: &Verifier) -> bool {
        constant_time_eq::constant_time_eq_32(&self.0, &other.0)
    }
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Verifier(..)")
    }
}

/// One named MAC key.
#[derive(Clone)]
pub struct TokenKey {
    id: String,
    // Prepared once: cloning it skips re-deriving the HMAC pads on every verify.
    mac: HmacSha256,
}

impl TokenKey {
    pub fn new(id: &str, secret: &[u8]) -> Result<TokenKey, KeyError> {
        let id_ok = !id.is_empty()
            && id.len() <= 32
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !id_ok {
            return Err(KeyError::BadId(id.to_owned()));
        }
        if secret.len() < MIN_KEY_LEN {
            return Err(KeyError::TooShort(id.to_owned()));
        }
        let mac = HmacSha256::new_from_slice(secret).map_err(|_| KeyError::TooShort(id.into()))?;
        Ok(TokenKey {
            id: id.to_owned(),
            mac,
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    fn tag(&self, body: &[u8]) -> HmacSha256 {
        let mut mac = self.mac.clone();
        mac.update(DOMAIN);
        mac.update(self.id.as_bytes());
        mac.update(body);
        mac
    }
}

impl fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// The key ring: the first key signs, all verify.
#[derive(Clone, Debug)]
pub struct TokenKeys {
    keys: Vec<TokenKey>,
}

/// A freshly minted token and what the store keeps of it.
pub struct Minted {
    /// The bearer string, handed to the agent once and never stored or logged.
    pub token: String,
    pub verifier: Verifier,
}

impl fmt::Debug for Minted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Minted(..)")
    }
}

impl TokenKeys {
    pub fn new(keys: Vec<TokenKey>) -> Result<TokenKeys, KeyError> {
        if keys.is_empty() {
            return Err(KeyError::None);
        }
        for (i, k) in keys.iter().enumerate() {
            if keys[..i].iter().any(|o| o.id == k.id) {
                return Err(KeyError::Duplicate(k.id.clone()));
            }
        }
        Ok(TokenKeys { keys })
    }

    /// The id of the key that signs new tokens.
    pub fn signing_key_id(&self) -> &str {
        &self.keys[0].id
    }

    /// Mints a token for session `id` under the signing key.
    pub fn mint(&self, id: SessionId) -> Result<Minted, KeyError> {
        let mut secret = [0u8; SECRET_LEN];
        getrandom::fill(&mut secret).map_err(|e| KeyError::Random(e.to_string()))?;
        Ok(self.mint_from(id, &secret))
    }

    /// [`TokenKeys::mint`] with the secret given: 256 bits the caller drew from the OS
    /// generator and uses for nothing else.
    pub fn mint_from(&self, id: SessionId, secret: &[u8; SECRET_LEN]) -> Minted {
        let mut body = [0u8; BODY_LEN];
        body[..16].copy_from_slice(id.as_bytes());
        body[16..].copy_from_slice(secret);
        let key = &self.keys[0];
        let tag = key.tag(&body).finalize().into_bytes();
        // Written straight into one string of the token's exact length (every create
        // mints one).
        let mut token = String::with_capacity(key.id.len() + 2 + BODY_B64_LEN + MAC_B64_LEN);
        token.push_str(&key.id);
        token.push('.');
        B64.encode_append(body, &mut token);
        token.push('.');
        B64.encode_append(tag, &mut token);
        let verifier = verifier_of(&body[16..]);
        Minted { token, verifier }
    }

    /// A MAC under the signing key for another purpose (e.g. a form's CSRF token bound to
    /// a session), domain-separated from tokens by `purpose`.
    pub fn tag(&self, purpose: &str, data: &[u8]) -> [u8; 32] {
        let mut mac = self.keys[0].mac.clone();
        mac.update(b"sessiond-tag-v1");
        mac.update(purpose.as_bytes());
        mac.update(&[0]);
        mac.update(data);
        mac.finalize().into_bytes().into()
    }

    /// Checks a presented token's shape and MAC, and returns the session id it names and
    /// the verifier to compare with the store's. No store is consulted.
    ///
    /// The body and MAC have fixed lengths, so the parts are found by position from the
    /// end rather than by splitting, and decoded with `base64-simd`: splitting and the
    /// `base64` crate's decoder were about 1,700 instructions a validate, against 800
    /// now (callgrind, twenty-ninth session).
    ///
    /// A token is taken as bytes, as the request carried it: a token is ASCII, so one that
    /// is not fails here like any other malformed token, and no caller need check it is
    /// text first.
    pub fn verify(&self, token: impl AsRef<[u8]>) -> Result<(SessionId, Verifier), TokenError> {
        self.verify_bytes(token.as_ref())
    }

    fn verify_bytes(&self, t: &[u8]) -> Result<(SessionId, Verifier), TokenError> {
        const TAIL: usize = 1 + BODY_B64_LEN + 1 + MAC_B64_LEN;
        if t.len() > MAX_TOKEN_LEN || t.len() < TAIL {
            return Err(TokenError::Malformed);
        }
        let kid_len = t.len() - TAIL;
        let (kid, rest) = t.split_at(kid_len);
        let (body_b64, mac_b64) = (&rest[1..=BODY_B64_LEN], &rest[BODY_B64_LEN + 2..]);
        // Exactly two dots, each where a part ends: neither base64url nor a key id holds one.
        if rest[0] != b'.' || rest[BODY_B64_LEN + 1] != b'.' || kid.contains(&b'.') {
            return Err(TokenError::Malformed);
        }
        let key = self
            .keys
            .iter()
            .find(|k| k.id.as_bytes() == kid)
            .ok_or(TokenError::UnknownKey)?;
        let mut body = [0u8; BODY_LEN];
        let mut tag = [0u8; 32];
        decode_exact(body_b64, &mut body)?;
        decode_exact(mac_b64, &mut tag)?;
        key.tag(&body)
            .verify_slice(&tag)
            .map_err(|_| TokenError::BadMac)?;
        let mut id = [0u8; 16];
        id.copy_from_slice(&body[..16]);
        Ok((SessionId(id), verifier_of(&body[16..])))
    }
}

/// Canonical unpadded base64url of exactly `out.len()` bytes; anything else is malformed.
fn decode_exact(b64: &[u8], out: &mut [u8]) -> Result<(), TokenError> {
    // The length is checked first: `decode` panics when `out` is too short.
    let len = out.len();
    match B64.decoded_length(b64) {
        Ok(n) if n == len => {}
        _ => return Err(TokenError::Malformed),
    }
    match B64.decode(b64, base64_simd::Out::from_slice(out)) {
        Ok(decoded) if decoded.len() == len => Ok(()),
        _ => Err(TokenError::Malformed),
    }
}

fn verifier_of(secret: &[u8]) -> Verifier {
    Verifier(Sha256::digest(secret).into())
}

/// Generates `n` bytes of secret material from the OS, base64url-encoded (for generated
/// keys and credentials).
pub fn random_secret(n: usize) -> Result<String, KeyError> {
    let mut b = vec![0u8; n];
    getrandom::fill(&mut b).map_err(|e| KeyError::Random(e.to_string()))?;
    Ok(B64.encode_to_string(b))
}

/// SHA-256 of a credential, as lowercase hex (for `key_sha256` and `token_sha256`).
pub fn sha256_hex(secret: &[u8]) -> String {
    Sha256::digest(secret)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// SHA-256 of a credential.
pub fn sha256(secret: &[u8]) -> [u8; 32] {
    Sha256::digest(secret).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    const B64_ALPHABET: &[u8; 64] =
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

    fn ring(ids: &[&str]) -> TokenKeys {
        TokenKeys::new(
            ids.iter()
                .map(|id| {
                    TokenKey::new(id, format!("{id}-secret-material-of-32-bytes!!").as_bytes())
                        .unwrap()
                })
                .collect(),
        )
        .unwrap()
    }

    #[test]
    fn a_minted_token_verifies_to_its_id_and_verifier() {
        let keys = ring(&["k1"]);
        let id = SessionId::random().unwrap();
        let m = keys.mint(id).unwrap();
        assert!(m.token.starts_with("k1."));
        assert!(m.token.len() <= MAX_TOKEN_LEN);
        let (got, v) = keys.verify(&m.token).unwrap();
        assert_eq!(got, id);
        assert!(v.matches(&m.verifier));
    }

    #[test]
    fn a_token_minted_from_a_given_secret_is_verified_by_that_secret() {
        let keys = ring(&["k1"]);
        let id = SessionId::for_user_from("alice", &[9; crate::id::ID_RANDOM_LEN]);
        assert_eq!(id.tag(), SessionId::for_user("alice").unwrap().tag());
        let m = keys.mint_from(id, &[7; SECRET_LEN]);
        let (got, v) = keys.verify(&m.token).unwrap();
        assert_eq!(got, id);
        assert!(v.matches(&Verifier(sha256(&[7; SECRET_LEN]))));
        assert!(!v.matches(&keys.mint_from(id, &[8; SECRET_LEN]).verifier));
        // The encoding itself: base64url of the id and secret, `-` and `_` where base64
        // would write `+` and `/`.
        let id = SessionId(std::array::from_fn(|i| i as u8));
        let m = keys.mint_from(id, &[0xfb; SECRET_LEN]);
        let (kid, rest) = m.token.split_once('.').unwrap();
        let (body, mac) = rest.split_once('.').unwrap();
        assert_eq!(kid, "k1");
        assert_eq!(
            body,
            "AAECAwQFBgcICQoLDA0OD_v7-_v7-_v7-_v7-_v7-_v7-_v7-_v7-_v7-_v7-_v7"
        );
        assert_eq!(mac.len(), MAC_B64_LEN);
        assert!(mac.bytes().all(|c| B64_ALPHABET.contains(&c)), "{mac}");
        let secret = random_secret(32).unwrap();
        assert_eq!(secret.len(), 43);
        assert!(
            secret.bytes().all(|c| B64_ALPHABET.contains(&c)),
            "{secret}"
        );
    }

    #[test]
    fn tokens_carry_256_random_bits() {
        let keys = ring(&["k1"]);
        let id = SessionId::random().unwrap();
        let a = keys.mint(id).unwrap();
        let b = keys.mint(id).unwrap();
        assert_ne!(a.token, b.token);
        assert!(!a.verifier.matches(&b.verifier));
    }

    #[test]
    fn every_flipped_byte_is_refused() {
        let keys = ring(&["k1"]);
        let m = keys.mint(SessionId::random().unwrap()).unwrap();
        let bytes = m.token.as_bytes();
        for i in 0..bytes.len() {
            for flip in [0x01u8, 0x20, 0x80] {
                let mut b = bytes.to_vec();
                b[i] ^= flip;
                let Ok(s) = String::from_utf8(b) else {
                    continue;
                };
                assert!(
                    keys.verify(&s).is_err(),
                    "byte {i} flipped by {flip:#x} verified"
                );
            }
        }
    }

    #[test]
    fn rotation_old_keys_verify_new_key_signs() {
        let old = ring(&["k1"]);
        let rotated = ring(&["k2", "k1"]);
        let t_old = old.mint(SessionId::random().unwrap()).unwrap().token;
        assert!(rotated.verify(&t_old).is_ok());
        let t_new = rotated.mint(SessionId::random().unwrap()).unwrap().token;
        assert!(t_new.starts_with("k2."));
        assert_eq!(old.verify(&t_new), Err(TokenError::UnknownKey));
        let removed = ring(&["k2"]);
        assert_eq!(removed.verify(&t_old), Err(TokenError::UnknownKey));
    }

    #[test]
    fn same_id_other_secret_key_is_a_bad_mac() {
        let a = TokenKeys::new(vec![TokenKey::new("k", &[1u8; 32]).unwrap()]).unwrap();
        let b = TokenKeys::new(vec![TokenKey::new("k", &[2u8; 32]).unwrap()]).unwrap();
        let t = a.mint(SessionId::random().unwrap()).unwrap().token;
        assert_eq!(b.verify(&t), Err(TokenError::BadMac));
    }

    #[test]
    fn garbage_is_malformed() {
        let keys = ring(&["k1"]);
        for bad in ["", ".", "k1..", "k1.a.b", "a.b.c.d", &"x".repeat(10_000)] {
            assert!(keys.verify(bad).is_err());
        }
    }

    #[test]
    fn a_token_out_of_shape_is_malformed_wherever_its_dots_fall() {
        let keys = ring(&["k1"]);
        let t = keys.mint(SessionId::random().unwrap()).unwrap().token;
        assert!(keys.verify(&t).is_ok());
        let (kid, rest) = t.split_once('.').unwrap();
        let (body, mac) = rest.split_once('.').unwrap();
        // The MAC's last character carries two spare bits, which must be zero: its index
        // in the alphabet is a multiple of four, and `| 1` sets the lower one.
        let last = mac.as_bytes()[MAC_B64_LEN - 1];
        let spare = B64_ALPHABET[B64_ALPHABET.iter().position(|&c| c == last).unwrap() | 1];
        let bad = [
            format!("{kid}.{body}{mac}"),
            format!("{kid}{body}.{mac}"),
            format!("{kid}.x.{body}.{mac}"),
            format!("x.{kid}.{body}.{mac}"),
            format!("{kid}.{body}.{mac}."),
            format!("{kid}.{body}.{}", &mac[1..]),
            format!("{kid}.{}.{mac}", &body[1..]),
            format!("{kid}.{body}A.{}", &mac[1..]),
            format!("{kid}.{}.A{mac}", &body[1..]),
            format!("{kid}.{}..{mac}", &body[1..]),
            format!("{kid}.{body}.{}=", &mac[..MAC_B64_LEN - 1]),
            format!("{kid}.{body}.{}+", &mac[..MAC_B64_LEN - 1]),
            format!("{kid}.{body}.{}{}", &mac[..MAC_B64_LEN - 1], spare as char),
            format!("{kid}.{}.{mac}", "=".repeat(BODY_B64_LEN)),
        ];
        for b in bad {
            assert_eq!(keys.verify(&b), Err(TokenError::Malformed), "{b}");
        }
        assert_eq!(
            keys.verify(format!("k2.{body}.{mac}")),
            Err(TokenError::UnknownKey)
        );
        assert_eq!(
            keys.verify(format!(".{body}.{mac}")),
            Err(TokenError::UnknownKey)
        );
    }

    #[test]
    fn key_material_is_checked() {
        assert!(matches!(
            TokenKey::new("", &[0; 32]),
            Err(KeyError::BadId(_))
        ));
        assert!(matches!(
            TokenKey::new("a.b", &[0; 32]),
            Err(KeyError::BadId(_))
        ));
        assert!(matches!(
            TokenKey::new("k", &[0; 31]),
            Err(KeyError::TooShort(_))
        ));
        let k = TokenKey::new("k", &[0; 32]).unwrap();
        assert!(matches!(
            TokenKeys::new(vec![k.clone(), k]),
            Err(KeyError::Duplicate(_))
        ));
        assert!(matches!(TokenKeys::new(vec![]), Err(KeyError::None)));
    }
}
