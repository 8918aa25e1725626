//! Forward auth for reverse proxies: `GET /auth/nginx` (nginx `auth_request`) and
//! `GET /auth/forward` (Traefik `forwardAuth`, Caddy `forward_auth`).
//!
//! Both answer 200 with identity headers for a live session. Otherwise `/auth/nginx`
//! answers 401 (nginx turns that into a login redirect) and `/auth/forward` redirects to the
//! portal with `rd` rebuilt from the trusted proxy's `X-Forwarded-*`. Anything malformed is
//! 401; an unreachable store is 503. Never 200 unless a live session was found.

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};

use super::cookie::{self, Presented};
use super::proxy::Origin;
use super::redirect::safe_target;
use super::{AppState, Connection, NO_STORE};
use crate::error::ApiError;

/// Request header by which a proxy says "this check is not user activity".
pub const TOUCH_HEADER: &str = "x-sessiond-touch";

/// Whether the check should slide the idle timer: not when the proxy says `0`/`false`/`no`.
fn touch_wanted(headers: &HeaderMap) -> bool {
    // Parsed once, not on every check.
    const TOUCH: HeaderName = HeaderName::from_static(TOUCH_HEADER);
    let passive = headers
        .get(&TOUCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "0" | "false" | "no"));
    !passive
}

enum Check {
    Allowed(Response),
    Denied,
}

fn unauthorized() -> Response {
    let mut r = StatusCode::UNAUTHORIZED.into_response();
    r.headers_mut().insert(header::CACHE_CONTROL, NO_STORE);
    r
}

/// Forward auth reads the request's headers itself, as validate reads its request (see
/// `agent::validate`): these routes answer every page view.
async fn check(state: &AppState, origin: &Origin, headers: &HeaderMap) -> Result<Check, Response> {
    let (session, _) = cookie::read(headers, &state.web.settings.cookie.name);
    let Presented::Token(token) = session else {
        return Ok(Check::Denied);
    };
    if origin.malformed {
        return Ok(Check::Denied);
    }
    let touch = touch_wanted(headers);
    let passive_path = origin.uri.as_deref().is_some_and(|u| {
        state
            .web
            .settings
            .passive_paths
            .iter()
            .any(|p| u.starts_with(p.as_str()))
    });
    // Written from the store's own record, which it lends for this: none is copied.
    let mut allowed = None;
    let checked = state
        .service
        .validate_with(token, touch && !passive_path, &mut |s| {
            allowed = identity(state, s);
        })
        .await;
    match checked {
        Ok(()) => Ok(allowed.map_or(Check::Denied, Check::Allowed)),
        Err(e @ ApiError::Store(_)) => Err(e.into_response()),
        Err(_) => Ok(Check::Denied),
    }
}

/// The answer allowing `session`'s request, with its identity headers; `None` if a value
/// cannot be a header (the request is then denied).
fn identity(state: &AppState, session: &sessiond_core::Session) -> Option<Response> {
    let names = &state.web.settings.headers;
    let groups = state
        .web
        .login
        .directory
        .as_ref()
        .and_then(|d| d.user(&session.user))
        .map(|u| u.groups.join(","))
        .unwrap_or_default();
    let mut r = StatusCode::OK.into_response();
    let h = r.headers_mut();
    // Room for every header below at once, rather than growing the map as they come.
    h.reserve(6);
    h.insert(header::CACHE_CONTROL, NO_STORE);
    // Formatted on the stack: forward auth answers every page view.
    let hex = session.id.hex();
    let Ok(id) = std::str::from_utf8(&hex) else {
        return None;
    };
    let mut level = itoa::Buffer::new();
    let level = level.format(session.auth_level);
    let values: [(&HeaderName, &str); 5] = [
        (&names.user, &session.user),
        (&names.groups, &groups),
        (
            &names.universal_id,
            session.universal_id.as_deref().unwrap_or_default(),
        ),
        (&names.session_id, id),
        (&names.auth_level, level),
    ];
    for (name, value) in values {
        if value.is_empty() {
            continue;
        }
        let Ok(v) = HeaderValue::from_str(value) else {
            return None;
        };
        h.insert(name.clone(), v);
    }
    Some(r)
}

pub(super) async fn nginx(state: &AppState, conn: &Connection, headers: &HeaderMap) -> Response {
    match check(state, &Origin::of(headers, conn.peer, state), headers).await {
        Ok(Check::Allowed(r)) | Err(r) => r,
        Ok(Check::Denied) => unauthorized(),
    }
}

pub(super) async fn forward(state: &AppState, conn: &Connection, headers: &HeaderMap) -> Response {
    let origin = Origin::of(headers, conn.peer, state);
    match check(state, &origin, headers).await {
        Ok(Check::Allowed(r)) | Err(r) => r,
        Ok(Check::Denied) => login_redirect(state, &origin).unwrap_or_else(unauthorized),
    }
}

/// `302` to the portal with `rd` = the original URL, when the proxy told us it and it is
/// on the allow-list.
fn login_redirect(state: &AppState, origin: &Origin) -> Option<Response> {
    if origin.malformed {
        return None;
    }
    let (proto, host, uri) = (
        origin.proto.as_ref()?,
        origin.host.as_ref()?,
        origin.uri.as_ref()?,
    );
    let rd = safe_target(
        &format!("{proto}://{host}{uri}"),
        &state.web.settings.allowed_redirect_hosts,
    )?;
    let portal = state.web.settings.portal_url.as_deref().unwrap_or("");
    let to = format!(
        "{portal}/login?rd={}",
        utf8_percent_encode(&rd, NON_ALPHANUMERIC)
    );
    let mut r = StatusCode::FOUND.into_response();
    r.headers_mut()
        .insert(header::LOCATION, HeaderValue::from_str(&to).ok()?);
    r.headers_mut().insert(header::CACHE_CONTROL, NO_STORE);
    Some(r)
}
