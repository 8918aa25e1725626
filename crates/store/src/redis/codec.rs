//! How sessions and tombstones are laid out in Redis hashes, and read back.
//!
//! A session hash `P{T}:s:<id>` has the fields the scripts need to judge it, as decimal
//! text or raw bytes, plus the whole record:
//!
//! | field | value |
//! |---|---|
//! | `vf` | the 32-byte verifier (SHA-256 of the token's secret), raw |
//! | `user`, `pol` | user and policy name |
//! | `cr`, `la`, `exp` | `created_at`, `last_access_at`, `expires_at` in ms |
//! | `idle` | the idle timeout in ms |
//! | `ver` | the version |
//! | `d` | format byte `1`, then postcard of `core::Session` |
//!
//! `la` and `ver` are authoritative: touches and updates change them in place, so they
//! override what `d` says. A tombstone hash `P{T}:t:<id>` has `vf`, `user`, `pol`, `r` (the
//! end reason), `cr`, `la`, `at` (`ended_at`) and `pa` (`purge_at`).

use std::collections::HashMap;

use redis::Value;
use sessiond_core::{EndReason, Session, SessionId, Timestamp, Tombstone, Verifier};

use crate::StoreError;

/// The format byte in front of `d`.
const FORMAT: u8 = 1;

/// A hash as read by `HGETALL`.
pub(super) type Fields = HashMap<String, Vec<u8>>;

/// The `d` field of a session.
pub(super) fn encode_session(session: &Session) -> Result<Vec<u8>, StoreError> {
    let mut out = vec![FORMAT];
    let body = postcard::to_stdvec(session)
        .map_err(|e| StoreError::Corrupt(format!("cannot encode a session: {e}")))?;
    out.extend_from_slice(&body);
    Ok(out)
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(format!("redis: {what}"))
}

fn text<'a>(fields: &'a Fields, name: &str) -> Result<&'a str, StoreError> {
    let raw = fields
        .get(name)
        .ok_or_else(|| corrupt(&format!("field `{name}` is missing")))?;
    std::str::from_utf8(raw).map_err(|_| corrupt(&format!("field `{name}` is not text")))
}

fn number(fields: &Fields, name: &str) -> Result<i64, StoreError> {
    text(fields, name)?
        .parse()
        .map_err(|_| corrupt(&format!("field `{name}` is not a number")))
}

/// A session from its hash; `None` when the hash is empty (no such key).
pub(super) fn decode_session(fields: &Fields) -> Result<Option<Session>, StoreError> {
    if fields.is_empty() {
        return Ok(None);
    }
    let d = fields
        .get("d")
        .ok_or_else(|| corrupt("session without `d`"))?;
    let mut session: Session = match d.split_first() {
        Some((&FORMAT, body)) => postcard::from_bytes(body)
            .map_err(|e| corrupt(&format!("session record does not decode: {e}")))?,
        _ => return Err(corrupt("session record has an unknown format")),
    };
    session.last_access_at = Timestamp(number(fields, "la")?);
    session.version =
        u64::try_from(number(fields, "ver")?).map_err(|_| corrupt("negative session version"))?;
    Ok(Some(session))
}

/// A tombstone from its hash; `None` when the hash is empty.
pub(super) fn decode_tombstone(
    id: SessionId,
    fields: &Fields,
) -> Result<Option<Tombstone>, StoreError> {
    if fields.is_empty() {
        return Ok(None);
    }
    let vf = fields
        .get("vf")
        .ok_or_else(|| corrupt("tombstone without `vf`"))?;
    let verifier: [u8; 32] = vf
        .as_slice()
        .try_into()
        .map_err(|_| corrupt("tombstone verifier is not 32 bytes"))?;
    let reason: EndReason = text(fields, "r")?
        .parse()
        .map_err(|_| corrupt("tombstone has an unknown reason"))?;
    Ok(Some(Tombstone {
        id,
        verifier: Verifier(verifier),
        user: text(fields, "user")?.into(),
        policy: text(fields, "pol")?.into(),
        reason,
        created_at: Timestamp(number(fields, "cr")?),
        last_access_at: Timestamp(number(fields, "la")?),
        ended_at: Timestamp(number(fields, "at")?),
        purge_at: Timestamp(number(fields, "pa")?),
    }))
}

/// A flat `HGETALL` reply (field, value, field, value, ...) inside a script's reply.
pub(super) fn fields_of(value: &Value) -> Result<Fields, StoreError> {
    let items = array(value)?;
    let mut out = Fields::new();
    for pair in items.chunks(2) {
        if let [k, v] = pair {
            out.insert(string(k)?, bytes(v)?);
        }
    }
    Ok(out)
}

/// The elements of an array reply.
pub(super) fn array(value: &Value) -> Result<&[Value], StoreError> {
    match value {
        Value::Array(items) => Ok(items),
        Value::Nil => Ok(&[]),
        _ => Err(corrupt(
            "a script replied with something other than an array",
        )),
    }
}

pub(super) fn bytes(value: &Value) -> Result<Vec<u8>, StoreError> {
    match value {
        Value::BulkString(b) => Ok(b.clone()),
        Value::SimpleString(s) => Ok(s.as_bytes().to_vec()),
        Value::Int(n) => Ok(n.to_string().into_bytes()),
        _ => Err(corrupt("a script replied with an unexpected value")),
    }
}

pub(super) fn string(value: &Value) -> Result<String, StoreError> {
    String::from_utf8(bytes(value)?).map_err(|_| corrupt("a script replied with non-text"))
}

pub(super) fn int(value: &Value) -> Result<i64, StoreError> {
    string(value)?
        .parse()
        .map_err(|_| corrupt("a script replied with a non-number"))
}

/// A list of ids (as hex) in a script's reply.
pub(super) fn ids(value: &Value) -> Result<Vec<SessionId>, StoreError> {
    array(value)?
        .iter()
        .map(|v| {
            string(v)?
                .parse::<SessionId>()
                .map_err(|_| corrupt("a script replied with a bad session id"))
        })
        .collect()
}

/// A list of strings (the effects) in a script's reply.
pub(super) fn strings(value: &Value) -> Result<Vec<String>, StoreError> {
    array(value)?.iter().map(string).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sessiond_core::Policy;
    use sessiond_core::session::NewSession;

    #[test]
    fn a_session_round_trips_with_la_and_version_from_their_fields() {
        let new = NewSession {
            user: "alice".into(),
            ..NewSession::default()
        };
        let s = Session::create(
            new,
            SessionId::for_user("alice").unwrap(),
            Verifier([3; 32]),
            "default",
            &Policy::default(),
            Timestamp(1_000),
        );
        let mut fields = Fields::new();
        fields.insert("d".into(), encode_session(&s).unwrap());
        fields.insert("la".into(), b"2000".to_vec());
        fields.insert("ver".into(), b"4".to_vec());
        let back = decode_session(&fields).unwrap().unwrap();
        assert_eq!(back.last_access_at, Timestamp(2_000));
        assert_eq!(back.version, 4);
        assert_eq!(back.attributes, s.attributes);
        assert_eq!(decode_session(&Fields::new()).unwrap(), None);
    }

    #[test]
    fn a_garbled_record_is_corrupt_not_a_panic() {
        let mut fields = Fields::new();
        fields.insert("d".into(), vec![9, 9, 9]);
        fields.insert("la".into(), b"1".to_vec());
        fields.insert("ver".into(), b"1".to_vec());
        assert!(matches!(
            decode_session(&fields),
            Err(StoreError::Corrupt(_))
        ));
    }
}
