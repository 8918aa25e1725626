//! The session cookie: it carries the token and nothing else.

use axum::http::{HeaderMap, HeaderValue, header};

use crate::config::CookieSettings;

/// Cookie headers larger than this are not looked into.
const MAX_COOKIE_HEADER: usize = 8192;

/// What the request's cookies say about the session cookie.
#[derive(Debug, PartialEq, Eq)]
pub enum Presented<'a> {
    None,
    /// Only the characters a token is made of ([`token_chars`]), so ASCII; bytes, because
    /// that is how a token is checked (`TokenKeys::verify`).
    Token(&'a [u8]),
    /// Present but unusable (too long, odd characters, sent twice with different values).
    Malformed,
}

impl<'a> Presented<'a> {
    /// The token as text, for a caller that keeps it.
    pub fn text(&self) -> Option<&'a str> {
        match *self {
            Presented::Token(t) => std::str::from_utf8(t).ok(),
            Presented::None | Presented::Malformed => None,
        }
    }
}

/// Suffix of the login form's anti-forgery cookie's name (see [`csrf_name`]).
const CSRF_SUFFIX: &str = "-csrf";

/// The session cookie `name` and its anti-forgery companion ([`csrf_name`]), read in one
/// pass over the `Cookie` headers: forward auth reads them on every page view.
///
/// A header that is not all visible ASCII (what `HeaderValue::to_str` accepts) makes both
/// malformed. The check runs 32 bytes at a time and the header is then read as bytes,
/// split at `memchr`'s pace: `to_str` and splitting a `str` took about 600 instructions of
/// every forward auth (callgrind, twenty-ninth session).
pub fn read<'a>(headers: &'a HeaderMap, name: &str) -> (Presented<'a>, Presented<'a>) {
    let (mut session, mut csrf) = (Presented::None, Presented::None);
    let name = name.as_bytes();
    let visible = |b: u8| (0x20..0x7f).contains(&b) | (b == b'\t');
    for value in headers.get_all(header::COOKIE) {
        let value = value.as_bytes();
        if value.len() > MAX_COOKIE_HEADER || !crate::scan::every_byte(value, visible) {
            return (Presented::Malformed, Presented::Malformed);
        }
        let mut start = 0;
        for end in memchr::memchr_iter(b';', value).chain([value.len()]) {
            let pair = value[start..end].trim_ascii();
            start = end + 1;
            let Some(eq) = memchr::memchr(b'=', pair) else {
                continue;
            };
            let (k, v) = (&pair[..eq], &pair[eq + 1..]);
            if k == name {
                fold(&mut session, v);
            } else if k.len() == name.len() + CSRF_SUFFIX.len()
                && k.starts_with(name)
                && k.ends_with(CSRF_SUFFIX.as_bytes())
            {
                fold(&mut csrf, v);
            }
        }
    }
    (session, csrf)
}

/// One more value of a cookie: a token unless it cannot be one or differs from the last.
fn fold<'a>(seen: &mut Presented<'a>, v: &'a [u8]) {
    // Quotes around a value are not part of it (RFC 6265's cookie-value).
    let start = v.iter().position(|&b| b != b'"').unwrap_or(v.len());
    let end = v.iter().rposition(|&b| b != b'"').map_or(start, |i| i + 1);
    let v = &v[start..end];
    let token_like = v.len() <= sessiond_core::token::MAX_TOKEN_LEN && token_chars(v);
    *seen = match *seen {
        Presented::Malformed => Presented::Malformed,
        _ if !token_like => Presented::Malformed,
        Presented::Token(prev) if prev != v => Presented::Malformed,
        _ => Presented::Token(v),
    };
}

/// Only the characters a token is made of.
fn token_chars(v: &[u8]) -> bool {
    crate::scan::every_byte(v, |b| {
        b.is_ascii_alphanumeric() | (b == b'-') | (b == b'_') | (b == b'.')
    })
}

fn attributes(s: &CookieSettings) -> String {
    let mut a = format!("Path=/; HttpOnly; SameSite={}", s.same_site.as_str());
    if s.secure {
        a.push_str("; Secure");
    }
    if let Some(d) = &s.domain {
        a.push_str("; Domain=");
        a.push_str(d);
    }
    a
}

/// `Set-Cookie` for a new session (a browser-session cookie: no `Max-Age`).
pub fn set(s: &CookieSettings, name: &str, value: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(&format!("{name}={value}; {}", attributes(s))).ok()
}

/// `Set-Cookie` that removes the cookie.
pub fn clear(s: &CookieSettings, name: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(&format!("{name}=; Max-Age=0; {}", attributes(s))).ok()
}

/// The name of the login form's anti-forgery cookie.
pub fn csrf_name(s: &CookieSettings) -> String {
    format!("{}{CSRF_SUFFIX}", s.name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SameSite;

    fn h(v: &str) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert(header::COOKIE, v.parse().unwrap());
        m
    }

    /// What [`read`] makes of `Cookie: <v>` for the session cookie `sid`, as text.
    fn session(v: &str) -> String {
        match read(&h(v), "sid").0 {
            Presented::Token(t) => format!("Token({:?})", String::from_utf8_lossy(t)),
            other => format!("{other:?}"),
        }
    }

    #[test]
    fn reads_the_named_cookie_only() {
        assert_eq!(
            session("a=1; sid=k1.abc.def; b=2"),
            r#"Token("k1.abc.def")"#
        );
        assert_eq!(session("a=1; xsid=k1; sid-x=k2"), "None");
        assert_eq!(
            read(&HeaderMap::new(), "sid"),
            (Presented::None, Presented::None)
        );
    }

    #[test]
    fn the_anti_forgery_cookie_is_read_in_the_same_pass() {
        let headers = h("sid-csrf=c1; a=1; sid=k1");
        assert_eq!(
            read(&headers, "sid"),
            (Presented::Token(b"k1"), Presented::Token(b"c1"))
        );
        let headers = h("sid-csrf=<x>; sid=k1");
        assert_eq!(
            read(&headers, "sid"),
            (Presented::Token(b"k1"), Presented::Malformed)
        );
    }

    #[test]
    fn forged_and_oversized_cookies_are_malformed() {
        assert_eq!(session(&format!("sid={}", "a".repeat(200))), "Malformed");
        assert_eq!(session("sid=<script>"), "Malformed");
        assert_eq!(session("sid=a; sid=b"), "Malformed");
        assert_eq!(session("sid=a; sid=<b>; sid=a"), "Malformed");
        assert_eq!(session("sid=a; sid=\"a\""), r#"Token("a")"#);
        assert_eq!(session("sid=\"\"a\"\"; x=\"\""), r#"Token("a")"#);
        assert_eq!(session("sid=\"\""), r#"Token("")"#);
        assert_eq!(
            session("sid=a\t; \tx=1;;sid =b; =sid; sid"),
            r#"Token("a")"#
        );
        let mut odd = HeaderMap::new();
        odd.insert(
            header::COOKIE,
            HeaderValue::from_bytes(b"a=\xe9t\xe9; sid=k1").unwrap(),
        );
        assert_eq!(
            read(&odd, "sid"),
            (Presented::Malformed, Presented::Malformed)
        );
        let big = h(&format!("x={}; sid=a", "b".repeat(MAX_COOKIE_HEADER)));
        assert_eq!(
            read(&big, "sid"),
            (Presented::Malformed, Presented::Malformed)
        );
    }

    #[test]
    fn token_characters_are_checked_to_the_last_byte() {
        let token =
            "k1.AbCdEfGhIjKlMnOpQrStUvWxYz0123456789-_AbCdEfGhIjKlMnOpQrStUvWxYz.0123456789_-";
        assert!(token_chars(token.as_bytes()));
        for at in [0, 31, 32, 33, 64, token.len() - 1] {
            for bad in [b'<', b' ', b'=', b'/', b'+', 0x80] {
                let mut t = token.as_bytes().to_vec();
                t[at] = bad;
                assert!(!token_chars(&t), "{bad:#x} at {at}");
            }
        }
    }

    #[test]
    fn attributes_follow_the_settings() {
        let s = CookieSettings {
            name: "__Host-sessiond".into(),
            domain: None,
            secure: true,
            same_site: SameSite::Lax,
        };
        let v = set(&s, &s.name, "tok").unwrap();
        assert_eq!(
            v,
            "__Host-sessiond=tok; Path=/; HttpOnly; SameSite=Lax; Secure"
        );
        let d = CookieSettings {
            domain: Some(".example.com".into()),
            secure: false,
            name: "sid".into(),
            ..s
        };
        assert_eq!(
            clear(&d, "sid").unwrap(),
            "sid=; Max-Age=0; Path=/; HttpOnly; SameSite=Lax; Domain=.example.com"
        );
    }
}
