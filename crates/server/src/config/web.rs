//! The web-agent part of the configuration: users file, portal, cookie, regulation and
//! identity header names.

use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::http::HeaderName;
use ipnet::IpNet;
use serde::Deserialize;

use super::{ConfigError, duration, invalid};
use crate::regulation::RegulationSettings;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsersSection {
    pub file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortalSection {
    pub default_redirect: Option<String>,
    #[serde(default)]
    pub allowed_redirect_hosts: Vec<String>,
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// The portal's external URL (e.g. `https://auth.example.com`), for redirects from
    /// `/auth/forward`; relative `/login` when absent.
    pub url: Option<String>,
    /// The policy portal logins are created under.
    pub policy: Option<String>,
    /// Path prefixes whose forward-auth checks do not slide the idle timer (polling).
    #[serde(default)]
    pub passive_paths: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CookieSection {
    pub name: Option<String>,
    pub domain: Option<String>,
    pub secure: Option<bool>,
    pub same_site: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegulationSection {
    pub max_retries: Option<u32>,
    pub find_time: Option<String>,
    pub ban_time: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadersSection {
    pub user: Option<String>,
    pub groups: Option<String>,
    pub universal_id: Option<String>,
    pub session_id: Option<String>,
    pub auth_level: Option<String>,
}

/// `SameSite` attribute of the session cookie.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SameSite {
    Lax,
    Strict,
    None,
}

impl SameSite {
    pub fn as_str(self) -> &'static str {
        match self {
            SameSite::Lax => "Lax",
            SameSite::Strict => "Strict",
            SameSite::None => "None",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CookieSettings {
    pub name: String,
    /// Empty: host-only.
    pub domain: Option<String>,
    pub secure: bool,
    pub same_site: SameSite,
}

/// Names of the identity headers forward auth answers with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderNames {
    pub user: HeaderName,
    pub groups: HeaderName,
    pub universal_id: HeaderName,
    pub session_id: HeaderName,
    pub auth_level: HeaderName,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebSettings {
    pub users_file: Option<PathBuf>,
    pub default_redirect: Option<String>,
    /// Lower-case hosts; a leading dot admits subdomains.
    pub allowed_redirect_hosts: Vec<String>,
    pub trusted_proxies: Vec<IpNet>,
    pub portal_url: Option<String>,
    pub policy: Option<String>,
    pub passive_paths: Vec<String>,
    pub cookie: CookieSettings,
    pub regulation: RegulationSettings,
    pub headers: HeaderNames,
}

/// Parsed here, once: forward auth sets these on every answer.
fn header_name(
    key: &str,
    value: &Option<String>,
    default: &str,
) -> Result<HeaderName, ConfigError> {
    let name = value.as_deref().unwrap_or(default);
    let refused = || invalid(format!("headers.{key}: `{name}` is not a header name"));
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(refused());
    }
    let parsed = HeaderName::from_bytes(name.as_bytes()).map_err(|_| refused())?;
    // Forward auth sends these names on every allowed page view. A name made from a
    // `'static` string is cloned without touching a reference count; the few bytes are
    // kept for the life of the process (settings are read once at start).
    let kept: &'static str = Box::leak(parsed.as_str().into());
    Ok(HeaderName::from_static(kept))
}

/// Resolves the web sections; relative paths are taken from `base` (the config file's
/// directory, or the working directory).
pub fn resolve(
    users: &UsersSection,
    portal: &PortalSection,
    cookie: &CookieSection,
    regulation: &RegulationSection,
    headers: &HeadersSection,
    base: &Path,
) -> Result<WebSettings, ConfigError> {
    let secure = cookie.secure.unwrap_or(true);
    let name = cookie.name.clone().unwrap_or_else(|| {
        if secure && cookie.domain.is_none() {
            "__Host-sessiond"
        } else {
            "sessiond_session"
        }
        .to_owned()
    });
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(invalid(format!(
            "cookie.name: `{name}` is not a cookie name"
        )));
    }
    if name.starts_with("__Host-")
        && (!secure || cookie.domain.as_deref().is_some_and(|d| !d.is_empty()))
    {
        return Err(invalid(
            "cookie.name: a `__Host-` cookie needs `secure = true` and no `domain`",
        ));
    }
    let same_site = match cookie
        .same_site
        .as_deref()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None | Some("lax") => SameSite::Lax,
        Some("strict") => SameSite::Strict,
        Some("none") if secure => SameSite::None,
        Some("none") => return Err(invalid("cookie.same_site: `none` needs `secure = true`")),
        Some(other) => {
            return Err(invalid(format!(
                "cookie.same_site: `{other}` is not one of lax, strict, none"
            )));
        }
    };
    let mut trusted_proxies = Vec::new();
    for (i, p) in portal.trusted_proxies.iter().enumerate() {
        let net = p
            .parse::<IpNet>()
            .or_else(|_| p.parse::<std::net::IpAddr>().map(IpNet::from))
            .map_err(|_| {
                invalid(format!(
                    "portal.trusted_proxies[{i}]: `{p}` is not an address or CIDR"
                ))
            })?;
        trusted_proxies.push(net);
    }
    for (i, h) in portal.allowed_redirect_hosts.iter().enumerate() {
        let host = h.trim_start_matches('.');
        if host.is_empty()
            || !host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
        {
            return Err(invalid(format!(
                "portal.allowed_redirect_hosts[{i}]: `{h}` is not a host name"
            )));
        }
    }
    if let Some(url) = &portal.default_redirect
        && !(url.starts_with("https://") || url.starts_with("http://") || url.starts_with('/'))
    {
        return Err(invalid(
            "portal.default_redirect: an absolute http(s) URL or a path",
        ));
    }
    let regulation = RegulationSettings {
        max_retries: regulation.max_retries.unwrap_or(3),
        find_time: duration(
            "regulation.find_time",
            &regulation.find_time,
            Duration::from_secs(120),
        )?,
        ban_time: duration(
            "regulation.ban_time",
            &regulation.ban_time,
            Duration::from_secs(300),
        )?,
    };
    Ok(WebSettings {
        users_file: users.file.as_ref().map(|f| base.join(f)),
        default_redirect: portal.default_redirect.clone(),
        allowed_redirect_hosts: portal
            .allowed_redirect_hosts
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect(),
        trusted_proxies,
        portal_url: portal
            .url
            .as_ref()
            .map(|u| u.trim_end_matches('/').to_owned()),
        policy: portal.policy.clone(),
        passive_paths: portal.passive_paths.clone(),
        cookie: CookieSettings {
            name,
            domain: cookie.domain.clone().filter(|d| !d.is_empty()),
            secure,
            same_site,
        },
        regulation,
        headers: HeaderNames {
            user: header_name("user", &headers.user, "Remote-User")?,
            groups: header_name("groups", &headers.groups, "Remote-Groups")?,
            universal_id: header_name(
                "universal_id",
                &headers.universal_id,
                "Remote-Universal-Id",
            )?,
            session_id: header_name("session_id", &headers.session_id, "Remote-Session-Id")?,
            auth_level: header_name("auth_level", &headers.auth_level, "Remote-Auth-Level")?,
        },
    })
}
