//! The session cookie: it carries the token and nothing else.

use axum::http::{HeaderMap, HeaderValue, header};

use crate::config::CookieSettings;

/// Cookie headers larger than this are not looked into.
const MAX_COOKIE_HEADER: usize = 8192;

/// What the request's cookies say about the session cookie.
#[derive(Debug, PartialEq, Eq)]
pub enum Presented<'a> {
    None,
    Token(&'a str),
    /// Present but unusable (too long, odd characters, sent twice with different values).
    Malformed,
}

/// Suffix of the login form's anti-forgery cookie's name (see [`csrf_name`]).
const CSRF_SUFFIX: &str = "-csrf";

/// The session cookie `name` and its anti-forgery companion ([`csrf_name`]), read in one
/// pass over the `Cookie` headers: forward auth reads them on every page view.
pub fn read<'a>(headers: &'a HeaderMap, name: &str) -> (Presented<'a>, Presented<'a>) {
    let (mut session, mut csrf) = (Presented::None, Presented::None);
    for value in headers.get_all(header::COOKIE) {
        if value.len() > MAX_COOKIE_HEADER {
            return (Presented::Malformed, Presented::Malformed);
        }
        let Ok(text) = value.to_str() else {
            return (Presented::Malformed, Presented::Malformed);
        };
        for pair in text.split(';') {
            let Some((k, v)) = pair.trim().split_once('=') else {
                continue;
            };
            if k == name {
                fold(&mut session, v);
            } else if k.len() == name.len() + CSRF_SUFFIX.len()
                && k.starts_with(name)
                && k.ends_with(CSRF_SUFFIX)
            {
                fold(&mut csrf, v);
            }
        }
    }
    (session, csrf)
}

/// One more value of a cookie: a token unless it cannot be one or differs from the last.
fn fold<'a>(seen: &mut Presented<'a>, v: &'a str) {
    let v = v.trim_matches('"');
    let token_like = v.len() <= sessiond_core::token::MAX_TOKEN_LEN && token_chars(v.as_bytes());
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
        format!("{:?}", read(&h(v), "sid").0)
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
            (Presented::Token("k1"), Presented::Token("c1"))
        );
        let headers = h("sid-csrf=<x>; sid=k1");
        assert_eq!(
            read(&headers, "sid"),
            (Presented::Token("k1"), Presented::Malformed)
        );
    }

    #[test]
    fn forged_and_oversized_cookies_are_malformed() {
        assert_eq!(session(&format!("sid={}", "a".repeat(200))), "Malformed");
        assert_eq!(session("sid=<script>"), "Malformed");
        assert_eq!(session("sid=a; sid=b"), "Malformed");
        assert_eq!(session("sid=a; sid=<b>; sid=a"), "Malformed");
        assert_eq!(session("sid=a; sid=\"a\""), r#"Token("a")"#);
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
