//! Validate's and create's answers, written straight into bytes, and validate's request
//! read straight from them.
//!
//! Every validate answers with one session, so this is the hottest serializer in the
//! server; every create (each login) answers with its token and session. Going through
//! serde cost about 13% of validate's CPU (profiled at 20,000 sessions): every timestamp,
//! id and address went through `fmt` and serde_json's per-byte escaping, piece by piece.
//! Here the parts that can never need escaping (hex ids, RFC 3339 timestamps, IP
//! addresses, numbers) are copied as they are, and a string that came from a client is
//! scanned once and copied whole unless it holds a character JSON must escape, in which
//! case serde_json writes it. The output is byte for byte what serde writes for
//! `v1::SessionEnvelope` and `v1::CreatedSession` (tested below).

use std::io::Write;
use std::net::IpAddr;

use sessiond_core::{Session, Timestamp};

/// The token and touch of a validate request written as agents write it:
/// `{"token":"T"}` or `{"token":"T","touch":true}` (or `false`), with JSON whitespace
/// anywhere between the parts and `T` printable ASCII other than `"` and `\`, so that the
/// JSON string is its own content. Those bodies mean what serde_json reads from them as
/// `v1::ValidateRequest` (tested below); `None` for every other body, valid or not, which
/// is then serde_json's to read. serde_json took about 1,100 instructions of every
/// validate, a tenth of sessiond's own work (callgrind, twenty-ninth session).
///
/// The parts are taken off both ends, so the token is never searched for: without a quote
/// inside, it ends at the quote before the suffix, and the body has no other reading.
pub fn validate_request(body: &[u8]) -> Option<(&[u8], bool)> {
    let rest = after(body, b"{")?;
    let rest = after(rest, br#""token""#)?;
    let rest = after(rest, b":")?;
    let rest = after(rest, b"\"")?;
    let rest = before(rest, b"}")?;
    let (rest, touch) = match before(rest, b"true")
        .map(|r| (r, true))
        .or_else(|| before(rest, b"false").map(|r| (r, false)))
    {
        Some((r, touch)) => {
            let r = before(r, b":")?;
            let r = before(r, br#""touch""#)?;
            (before(r, b",")?, touch)
        }
        None => (rest, true),
    };
    let token = before(rest, b"\"")?;
    let printable = |b: u8| (0x20..0x7f).contains(&b) & (b != b'"') & (b != b'\\');
    crate::scan::every_byte(token, printable).then_some((token, touch))
}

/// JSON's whitespace: RFC 8259's four characters, not `trim_ascii`'s five.
fn json_space(b: &u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// `s` after `part`, itself after any whitespace.
fn after<'a>(s: &'a [u8], part: &[u8]) -> Option<&'a [u8]> {
    let start = s.iter().position(|b| !json_space(b)).unwrap_or(s.len());
    s[start..].strip_prefix(part)
}

/// `s` before `part`, itself before any whitespace.
fn before<'a>(s: &'a [u8], part: &[u8]) -> Option<&'a [u8]> {
    let end = s.iter().rposition(|b| !json_space(b)).map_or(0, |i| i + 1);
    s[..end].strip_suffix(part)
}

/// `{"session":{...}}` for `s`, as `v1::SessionEnvelope` serializes it.
pub fn session_envelope(s: &Session) -> Vec<u8> {
    let mut out = Vec::with_capacity(capacity(s));
    out.extend_from_slice(b"{\"session\":");
    session(&mut out, s);
    out.push(b'}');
    out
}

/// `{"token":"...","session":{...}}`, as `v1::CreatedSession` serializes it.
pub fn created(token: &str, s: &Session) -> Vec<u8> {
    let mut out = Vec::with_capacity(capacity(s) + 16 + token.len());
    out.extend_from_slice(b"{\"token\":");
    string(&mut out, token);
    out.extend_from_slice(b",\"session\":");
    session(&mut out, s);
    out.push(b'}');
    out
}

/// Room for `s`'s answer, so it is written without growing.
fn capacity(s: &Session) -> usize {
    384 + s.user.len()
        + s.universal_id.as_deref().map_or(0, str::len)
        + s.user_agent.as_deref().map_or(0, str::len)
        + s.attributes
            .iter()
            .map(|(k, v)| k.len() + v.len() + 6)
            .sum::<usize>()
}

/// The `v1::Session` object for `s`.
fn session(out: &mut Vec<u8>, s: &Session) {
    out.extend_from_slice(b"{\"id\":\"");
    out.extend_from_slice(&s.id.hex());
    out.extend_from_slice(b"\",\"user\":");
    string(out, &s.user);
    if let Some(u) = &s.universal_id {
        out.extend_from_slice(b",\"universal_id\":");
        string(out, u);
    }
    out.extend_from_slice(b",\"auth_level\":");
    out.extend_from_slice(itoa::Buffer::new().format(s.auth_level).as_bytes());
    out.extend_from_slice(b",\"attributes\":{");
    for (i, (k, v)) in s.attributes.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        string(out, k);
        out.push(b':');
        string(out, v);
    }
    out.extend_from_slice(b"},\"client\":{");
    if let Some(ip) = s.client_ip {
        // An address formats as digits, hex, dots and colons only.
        out.extend_from_slice(b"\"ip\":\"");
        match ip {
            // Four numbers and three dots, without `fmt` (which showed in the profile).
            IpAddr::V4(v4) => {
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        out.push(b'.');
                    }
                    out.extend_from_slice(itoa::Buffer::new().format(octet).as_bytes());
                }
            }
            IpAddr::V6(_) => {
                let _ = write!(out, "{ip}");
            }
        }
        out.push(b'"');
    }
    if let Some(ua) = &s.user_agent {
        if s.client_ip.is_some() {
            out.push(b',');
        }
        out.extend_from_slice(b"\"user_agent\":");
        string(out, ua);
    }
    out.extend_from_slice(b"},\"policy\":");
    string(out, &s.policy);
    for (name, at) in [
        (&b",\"created_at\":\""[..], s.created_at),
        (b"\",\"last_access_at\":\"", s.last_access_at),
        (b"\",\"idle_expires_at\":\"", s.idle_expires_at()),
        (b"\",\"expires_at\":\"", s.expires_at),
    ] {
        out.extend_from_slice(name);
        out.extend_from_slice(&Timestamp::rfc3339_bytes(at));
    }
    out.extend_from_slice(b"\",\"version\":");
    out.extend_from_slice(itoa::Buffer::new().format(s.version).as_bytes());
    out.push(b'}');
}

/// A JSON string: copied whole when nothing in it needs escaping (the common case), else
/// escaped by serde_json.
fn string(out: &mut Vec<u8>, s: &str) {
    if plain(s.as_bytes()) {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        // Writing a `str` into a `Vec` cannot fail.
        let _ = serde_json::to_writer(&mut *out, s);
    }
}

/// Nothing in `s` needs escaping.
fn plain(s: &[u8]) -> bool {
    crate::scan::every_byte(s, |b| (b >= 0x20) & (b != b'"') & (b != b'\\'))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use sessiond_core::session::NewSession;
    use sessiond_core::{Policy, SessionId, Verifier};
    use sessiond_proto::v1;

    use super::*;
    use crate::service::view;

    fn session(new: NewSession, at: Timestamp) -> Session {
        let id = SessionId::for_user(&new.user).unwrap();
        Session::create(
            new,
            id,
            Verifier([7; 32]),
            "default",
            &Policy::default(),
            at,
        )
    }

    fn serde_bytes(s: &Session) -> Vec<u8> {
        serde_json::to_vec(&v1::SessionEnvelope {
            session: view(s.clone()),
        })
        .unwrap()
    }

    #[test]
    fn a_validate_request_read_in_place_is_what_serde_reads() {
        let token = "k1.AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygpKissLS4v.MDEy";
        let read = |body: &str| {
            validate_request(body.as_bytes())
                .map(|(t, b)| (String::from_utf8(t.to_vec()).unwrap(), b))
        };
        let serde = |body: &str| {
            serde_json::from_str::<v1::ValidateRequest>(body)
                .ok()
                .map(|r| (r.token, r.touch))
        };
        // Read in place, each as serde reads it.
        for body in [
            format!(r#"{{"token":"{token}"}}"#),
            format!(r#"{{"token":"{token}","touch":true}}"#),
            format!(r#"{{"token":"{token}","touch":false}}"#),
            r#"{"token":""}"#.to_owned(),
            r#"{"token":"a b~!#$%&'()*+,-./:;<=>?@[]^_`{|}"}"#.to_owned(),
            r#"{"token":"true"}"#.to_owned(),
            r#"{"token":"x:true"}"#.to_owned(),
            r#"{"token":" ","touch" : false}"#.to_owned(),
            format!(r#"{{"token": "{token}"}}"#),
            format!(r#"{{"token": "{token}", "touch": false}}"#),
            format!(" \r\n\t{{ \"token\" :\t\"{token}\"\n,\r\"touch\"\n:\ntrue }}\n\t "),
        ] {
            assert!(read(&body).is_some(), "{body}");
            assert_eq!(read(&body), serde(&body), "{body}");
        }
        // Left to serde, whatever it makes of them.
        for body in [
            format!("\u{c}{{\"token\":\"{token}\"}}"),
            format!("{{\"token\":\"{token}\"}}\u{b}"),
            format!("{{\"token\":\"{token}\"\u{a0}}}"),
            format!(r#"{{"token":"{token}",}}"#),
            format!(r#"{{"token":"{token}","touch":}}"#),
            format!(r#"{{"token":"{token}","touch"false}}"#),
            format!(r#"{{"token":"{token}""touch":false}}"#),
            format!(r#"{{"token":"{token}",touch:false}}"#),
            format!(r#"{{"token":"{token}","touch":truefalse}}"#),
            format!(r#"{{"token":"{token}","touch":True}}"#),
            format!(r#"{{"token""{token}"}}"#),
            format!(r#"{{"token":{token}"}}"#),
            format!(r#"{{"Token":"{token}"}}"#),
            format!(r#"{{"token":"{token}"}}{{}}"#),
            format!(r#"[{{"token":"{token}"}}]"#),
            format!(r#"{{"touch":false,"token":"{token}"}}"#),
            format!(r#"{{"token":"{token}","touch":false,"touch":true}}"#),
            format!(r#"{{"token":"{token}","touch":true,"touch":false}}"#),
            format!(r#"{{"token":"{token}","touch":"false"}}"#),
            format!(r#"{{"token":"{token}","touch":0}}"#),
            format!(r#"{{"token":"{token}","other":1}}"#),
            format!(r#"{{"token":"{token}","token":"x"}}"#),
            r#"{"token":"a\"b"}"#.to_owned(),
            r#"{"token":"a\\b"}"#.to_owned(),
            r#"{"token":"a\u0041b"}"#.to_owned(),
            "{\"token\":\"a\tb\"}".to_owned(),
            "{\"token\":\"a\u{7f}b\"}".to_owned(),
            r#"{"token":"é"}"#.to_owned(),
            r#"{"token":"a","touch":true}}"#.to_owned(),
            r#"{"token":"a"}}"#.to_owned(),
            r#"{"token":"a""}"#.to_owned(),
            r#"{"token":"}"#.to_owned(),
            r#"{"token":"a"#.to_owned(),
            String::new(),
        ] {
            assert_eq!(read(&body), None, "{body}");
        }
        assert_eq!(validate_request(b"{\"token\":\"a\xffb\"}"), None);
    }

    #[test]
    fn a_byte_to_escape_is_found_anywhere_in_a_long_string() {
        let long = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko)";
        assert!(plain(long.as_bytes()));
        for at in [0, 1, 31, 32, 33, 63, 64, long.len() - 1] {
            for bad in [b'"', b'\\', b'\n', 0x1f] {
                let mut s = long.as_bytes().to_vec();
                s[at] = bad;
                assert!(!plain(&s), "{bad:#x} at {at}");
                let mut out = Vec::new();
                string(&mut out, std::str::from_utf8(&s).unwrap());
                assert_eq!(
                    out,
                    serde_json::to_vec(std::str::from_utf8(&s).unwrap()).unwrap()
                );
            }
        }
    }

    #[test]
    fn writes_what_serde_writes_for_the_wire_type() {
        let awkward = "q\"b\\s\n\t\u{1}\u{7f} é 漢 🦀 </script>";
        let cases = [
            NewSession {
                user: "bob".into(),
                ..NewSession::default()
            },
            NewSession {
                user: "alice@example.com".into(),
                universal_id: Some("0c9e5a7e-2b1d-4b8a-9a53-6a3b1f0e7d21".into()),
                auth_level: -3,
                attributes: BTreeMap::from([
                    ("dept".into(), "eng".into()),
                    ("z\n".into(), "</script>".into()),
                    (awkward.into(), awkward.into()),
                ]),
                client_ip: Some("2001:db8::1".parse().unwrap()),
                user_agent: Some("Mozilla/5.0 \\ test".into()),
            },
            NewSession {
                user: awkward.into(),
                universal_id: Some(awkward.into()),
                client_ip: Some("192.0.2.7".parse().unwrap()),
                ..NewSession::default()
            },
            NewSession {
                user: "carol".into(),
                user_agent: Some(awkward.into()),
                ..NewSession::default()
            },
            NewSession {
                user: "dave".into(),
                client_ip: Some("0.255.10.100".parse().unwrap()),
                user_agent: Some("curl/8.5.0".into()),
                ..NewSession::default()
            },
        ];
        for (i, new) in cases.into_iter().enumerate() {
            for at in [
                0,
                1_795_000_000_123,
                -62_167_219_200_000,
                253_402_300_799_999,
            ] {
                let mut s = session(new.clone(), Timestamp(at));
                s.version = u64::MAX - i as u64;
                let ours = session_envelope(&s);
                assert_eq!(
                    String::from_utf8_lossy(&ours),
                    String::from_utf8_lossy(&serde_bytes(&s)),
                    "case {i} at {at}"
                );
                let back: v1::SessionEnvelope = serde_json::from_slice(&ours).unwrap();
                assert_eq!(back.session, view(s.clone()));
                let token = "k1.AAAA_-bb.cc";
                assert_eq!(
                    String::from_utf8_lossy(&created(token, &s)),
                    serde_json::to_string(&v1::CreatedSession {
                        token: token.into(),
                        session: view(s),
                    })
                    .unwrap(),
                    "created, case {i} at {at}"
                );
            }
        }
    }
}
