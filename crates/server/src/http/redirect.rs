//! Where a browser may be sent after login or logout: only to allowed hosts.
//!
//! A target is accepted when it is a plain absolute `http(s)://host[:port]/...` URL whose
//! host is on the allow-list (a leading dot admits subdomains), or a path on this host
//! (`/x`, not `//x`). Anything unusual is refused rather than interpreted: backslashes,
//! control characters or whitespace (raw or percent-encoded), userinfo, percent signs or
//! other odd characters in the host, other schemes, overlong input.

/// Longest redirect target considered.
const MAX_LEN: usize = 2048;

/// `rd` if it is safe to redirect to, else `None`.
pub fn safe_target(rd: &str, allowed_hosts: &[String]) -> Option<String> {
    if rd.is_empty() || rd.len() > MAX_LEN || rd.contains('\\') {
        return None;
    }
    if rd.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return None;
    }
    // Encoded control characters and whitespace could be decoded by a later hop.
    let lower = rd.to_ascii_lowercase();
    for bad in [
        "%0", "%1", "%7f", "%20", "%09", "%5c", "%2f%2f", "%e2%80", "%c2%a0", "%00",
    ] {
        if lower.contains(bad) {
            return None;
        }
    }
    if let Some(path) = rd.strip_prefix('/') {
        return (!path.starts_with('/')).then(|| rd.to_owned());
    }
    let rest = lower
        .strip_prefix("https://")
        .or_else(|| lower.strip_prefix("http://"))?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    let host = host_of(authority)?;
    host_allowed(&host, allowed_hosts).then(|| rd.to_owned())
}

/// The lower-case host of `host[:port]`, if both parts are plain.
fn host_of(authority: &str) -> Option<String> {
    if authority.is_empty() || authority.contains(['@', '%']) {
        return None;
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') || h.ends_with(']') => (h, Some(p)),
        _ => (authority, None),
    };
    if port.is_some_and(|p| {
        !p.bytes().all(|b| b.is_ascii_digit()) || !p.parse::<u16>().is_ok_and(|n| n > 0)
    }) {
        return None;
    }
    let plain = host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    let bracketed = host.starts_with('[') && host.ends_with(']');
    if host.is_empty() || host.ends_with('.') || host.starts_with('.') || !(plain || bracketed) {
        return None;
    }
    Some(host.to_owned())
}

/// `host` equals an allowed entry, or is a subdomain of a `.domain` entry.
pub fn host_allowed(host: &str, allowed: &[String]) -> bool {
    allowed.iter().any(|a| match a.strip_prefix('.') {
        Some(domain) => {
            host == domain || host.strip_suffix(domain).is_some_and(|p| p.ends_with('.'))
        }
        None => host == a,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed() -> Vec<String> {
        vec![
            "app.example.com".into(),
            ".example.org".into(),
            "127.0.0.1".into(),
        ]
    }

    #[test]
    fn allowed_targets_pass() {
        for ok in [
            "https://app.example.com/",
            "https://app.example.com",
            "https://APP.example.com/x?y=1#z",
            "http://app.example.com:8443/path",
            "https://example.org/",
            "https://deep.sub.example.org/a",
            "http://127.0.0.1:8080/app",
            "/dashboard",
            "/a/b?c=d",
        ] {
            assert_eq!(safe_target(ok, &allowed()).as_deref(), Some(ok), "{ok}");
        }
    }

    #[test]
    fn the_open_redirect_corpus_is_refused() {
        for bad in [
            "https://evil.com/",
            "//evil.com/",
            "///evil.com/",
            "/\\evil.com",
            "\\\\evil.com",
            "https:\\\\evil.com",
            "https://app.example.com\\@evil.com",
            "https://app.example.com@evil.com/",
            "https://user:pw@app.example.com/",
            "https://evil.com/.app.example.com",
            "https://app.example.com.evil.com/",
            "https://evilexample.org/",
            "https://example.org.evil.com/",
            "https://app.example.com%2eevil.com/",
            "https://app.example.com%00.evil.com/",
            "https://evil.com%23.app.example.com/",
            "javascript:alert(1)",
            "JaVaScRiPt:alert(1)",
            "data:text/html,<script>alert(1)</script>",
            "ftp://app.example.com/",
            " https://app.example.com/",
            "https://app.example.com/\nSet-Cookie: x=y",
            "%2f%2fevil.com",
            "/%2f%2fevil.com",
            "/%5cevil.com",
            "/%09/evil.com",
            "https://app.example.com/%0d%0aLocation:%20https://evil.com",
            "https://app.example.com./",
            "https://.example.org/",
            "https://app.example.com:99999/",
            "https://app.example.com:/",
            "https://[::1]/",
            "https:/evil.com",
            "https:evil.com",
            "http://",
            "",
        ] {
            assert_eq!(safe_target(bad, &allowed()), None, "{bad:?}");
        }
        assert_eq!(
            safe_target(&format!("/{}", "a".repeat(3000)), &allowed()),
            None
        );
    }

    #[test]
    fn a_leading_dot_admits_the_domain_and_its_subdomains_only() {
        let a = vec![".example.com".to_string()];
        assert!(host_allowed("example.com", &a));
        assert!(host_allowed("a.example.com", &a));
        assert!(!host_allowed("badexample.com", &a));
        assert!(!host_allowed("example.com.evil", &a));
    }
}
