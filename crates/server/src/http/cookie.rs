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

/// The value of cookie `name` in the request.
pub fn read<'a>(headers: &'a HeaderMap, name: &str) -> Presented<'a> {
    let mut found: Option<&str> = None;
    for value in headers.get_all(header::COOKIE) {
        if value.len() > MAX_COOKIE_HEADER {
            return Presented::Malformed;
        }
        let Ok(text) = value.to_str() else {
            return Presented::Malformed;
        };
        for pair in text.split(';') {
            let Some((k, v)) = pair.trim().split_once('=') else {
                continue;
            };
            if k != name {
                continue;
            }
            let v = v.trim_matches('"');
            if v.len() > sessiond_core::token::MAX_TOKEN_LEN
                || !v
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            {
                return Presented::Malformed;
            }
            match found {
                Some(prev) if prev != v => return Presented::Malformed,
                _ => found = Some(v),
            }
        }
    }
    found.map_or(Presented::None, Presented::Token)
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
    format!("{}-csrf", s.name)
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

    #[test]
    fn reads_the_named_cookie_only() {
        assert_eq!(
            read(&h("a=1; sid=k1.abc.def; b=2"), "sid"),
            Presented::Token("k1.abc.def")
        );
        assert_eq!(read(&h("a=1"), "sid"), Presented::None);
        assert_eq!(read(&HeaderMap::new(), "sid"), Presented::None);
    }

    #[test]
    fn forged_and_oversized_cookies_are_malformed() {
        assert_eq!(
            read(&h(&format!("sid={}", "a".repeat(200))), "sid"),
            Presented::Malformed
        );
        assert_eq!(read(&h("sid=<script>"), "sid"), Presented::Malformed);
        assert_eq!(read(&h("sid=a; sid=b"), "sid"), Presented::Malformed);
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
