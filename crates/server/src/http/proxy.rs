//! Who is asking, and for what: the client address and the original request, believed from
//! `X-Forwarded-*` only when the direct peer is a configured trusted proxy.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::HeaderMap;
use axum::http::request::Parts;
use ipnet::IpNet;

use super::AppState;
use crate::error::ApiError;

/// Longest forwarded URI looked at.
const MAX_URI_LEN: usize = 4096;

/// The request's origin as far as it can be trusted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Origin {
    /// The user's address: the peer's, or the nearest untrusted one in `X-Forwarded-For`.
    pub client_ip: Option<IpAddr>,
    /// From a trusted proxy: `X-Forwarded-Proto` (`http` or `https`).
    pub proto: Option<String>,
    /// From a trusted proxy: `X-Forwarded-Host`.
    pub host: Option<String>,
    /// From a trusted proxy: `X-Forwarded-Uri` or `X-Original-URI`.
    pub uri: Option<String>,
    /// A trusted proxy sent a forwarded header that does not parse.
    pub malformed: bool,
}

fn trusted(ip: IpAddr, proxies: &[IpNet]) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    proxies.iter().any(|n| n.contains(&ip))
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, ()> {
    let mut values = headers.get_all(name).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(()); // repeated: ambiguous
    }
    let text = first.to_str().map_err(|_| ())?.trim();
    Ok((!text.is_empty()).then_some(text))
}

/// Reads the origin from `headers` given the direct peer.
pub fn origin(headers: &HeaderMap, peer: Option<IpAddr>, proxies: &[IpNet]) -> Origin {
    let Some(peer) = peer else {
        return Origin::default();
    };
    if !trusted(peer, proxies) {
        return Origin {
            client_ip: Some(peer),
            ..Origin::default()
        };
    }
    let mut o = Origin {
        client_ip: Some(peer),
        ..Origin::default()
    };
    match header(headers, "x-forwarded-for") {
        Ok(Some(list)) => {
            let mut hops = Vec::new();
            for part in list.split(',') {
                match part.trim().parse::<IpAddr>() {
                    Ok(ip) => hops.push(ip),
                    Err(_) => o.malformed = true,
                }
            }
            // The nearest address that is not one of our proxies is the client.
            if let Some(ip) = hops
                .iter()
                .rev()
                .find(|ip| !trusted(**ip, proxies))
                .or(hops.first())
            {
                o.client_ip = Some(*ip);
            }
        }
        Ok(None) => {}
        Err(()) => o.malformed = true,
    }
    match header(headers, "x-forwarded-proto") {
        Ok(Some(p)) if p.eq_ignore_ascii_case("https") || p.eq_ignore_ascii_case("http") => {
            o.proto = Some(p.to_ascii_lowercase());
        }
        Ok(None) => {}
        _ => o.malformed = true,
    }
    match header(headers, "x-forwarded-host") {
        Ok(Some(h))
            if h.len() <= 255
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b)) =>
        {
            o.host = Some(h.to_ascii_lowercase());
        }
        Ok(None) => {}
        _ => o.malformed = true,
    }
    let uri = match header(headers, "x-forwarded-uri") {
        Ok(None) => header(headers, "x-original-uri"),
        other => other,
    };
    match uri {
        Ok(Some(u))
            if u.starts_with('/')
                && !u.starts_with("//")
                && u.len() <= MAX_URI_LEN
                && u.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            o.uri = Some(u.to_owned());
        }
        Ok(None) => {}
        _ => o.malformed = true,
    }
    o
}

impl Origin {
    /// The origin of a request with `headers` from `peer`: the extractor, for a handler
    /// that reads the request itself.
    pub fn of(headers: &HeaderMap, peer: Option<SocketAddr>, state: &AppState) -> Origin {
        origin(
            headers,
            peer.map(|p| p.ip()),
            &state.web.settings.trusted_proxies,
        )
    }
}

impl FromRequestParts<AppState> for Origin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>();
        Ok(Origin::of(&parts.headers, peer.map(|c| c.0), state))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    fn proxies() -> Vec<IpNet> {
        vec!["127.0.0.1/32".parse().unwrap()]
    }

    #[test]
    fn forwarded_headers_from_an_untrusted_peer_are_ignored() {
        let h = headers(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-host", "evil.com"),
        ]);
        let o = origin(&h, "192.0.2.9".parse().ok(), &proxies());
        assert_eq!(o.client_ip, "192.0.2.9".parse().ok());
        assert_eq!(
            (o.host, o.proto, o.uri, o.malformed),
            (None, None, None, false)
        );
    }

    #[test]
    fn a_trusted_proxy_is_believed() {
        let h = headers(&[
            ("x-forwarded-for", "198.51.100.7, 127.0.0.1"),
            ("x-forwarded-proto", "HTTPS"),
            ("x-forwarded-host", "App.Example.com"),
            ("x-forwarded-uri", "/a?b=c"),
        ]);
        let o = origin(&h, "127.0.0.1".parse().ok(), &proxies());
        assert_eq!(o.client_ip, "198.51.100.7".parse().ok());
        assert_eq!(o.proto.as_deref(), Some("https"));
        assert_eq!(o.host.as_deref(), Some("app.example.com"));
        assert_eq!(o.uri.as_deref(), Some("/a?b=c"));
        assert!(!o.malformed);
    }

    #[test]
    fn garbage_from_a_trusted_proxy_is_flagged() {
        for (k, v) in [
            ("x-forwarded-for", "not-an-ip"),
            ("x-forwarded-proto", "gopher"),
            ("x-forwarded-host", "evil.com/path"),
            ("x-forwarded-uri", "//evil.com"),
            ("x-forwarded-uri", "no-slash"),
        ] {
            let o = origin(&headers(&[(k, v)]), "127.0.0.1".parse().ok(), &proxies());
            assert!(o.malformed, "{k}: {v}");
        }
        let twice = headers(&[("x-forwarded-host", "a.com"), ("x-forwarded-host", "b.com")]);
        assert!(origin(&twice, "127.0.0.1".parse().ok(), &proxies()).malformed);
    }
}
