//! Extractors: credentials and bodies are parsed here, once, into types.
//!
//! Handlers never read raw headers. A credential is checked by hashing what was presented
//! and comparing the hash with every configured one in constant time; on a connection
//! where an agent key passed, the same key is then compared with it in constant time
//! (`Agent::check`, `Connection`).

use std::sync::OnceLock;

use axum::BoxError;
use axum::body::{Bytes, HttpBody};
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::de::DeserializeOwned;
use subtle::ConstantTimeEq;

use super::AppState;
use crate::error::ApiError;

/// Longest `Authorization` header looked at.
const MAX_AUTHORIZATION_LEN: usize = 1024;

/// The credential of `Authorization: Bearer <credential>` (scheme in any case, spaces
/// around the credential trimmed), as bytes: it is only hashed or compared, so it need not
/// be text. Read by position rather than split and trimmed as `str`, which was about 550
/// instructions of every validate (callgrind, twenty-ninth session).
fn bearer(headers: &HeaderMap) -> Option<&[u8]> {
    const SCHEME: &[u8] = b"bearer ";
    let value = headers.get(AUTHORIZATION)?.as_bytes();
    if value.len() > MAX_AUTHORIZATION_LEN {
        return None;
    }
    let (scheme, credential) = value.split_at_checked(SCHEME.len())?;
    let credential = credential.trim_ascii();
    (scheme.eq_ignore_ascii_case(SCHEME) && !credential.is_empty()).then_some(credential)
}

/// Constant-time membership: every candidate is compared, whatever matched.
fn matches_any<'a>(presented: &[u8; 32], candidates: impl Iterator<Item = &'a [u8; 32]>) -> bool {
    let mut found = subtle::Choice::from(0);
    for c in candidates {
        found |= presented.ct_eq(c);
    }
    found.into()
}

/// The request carries a configured agent key.
#[derive(Debug)]
pub struct Agent;

impl Agent {
    /// Checks the `Authorization` header of a request: the extractor, for a handler that
    /// reads the request itself. With `known`, the connection's memory of the key that
    /// passed before (see `Connection`): the same bytes pass on a constant-time
    /// comparison, and a key that passes here is remembered if none was.
    pub fn check(
        headers: &HeaderMap,
        state: &AppState,
        known: Option<&OnceLock<Box<[u8]>>>,
    ) -> Result<Agent, ApiError> {
        let presented = bearer(headers).ok_or(ApiError::Unauthorized)?;
        // `constant_time_eq` compares words; `subtle` compared bytes one at a time, about
        // 700 instructions of every validate for a 43-byte key (callgrind). A length that
        // differs answers at once: a key's length is not its secret.
        if let Some(key) = known.and_then(OnceLock::get)
            && constant_time_eq::constant_time_eq(key, presented)
        {
            return Ok(Agent);
        }
        let hash = sessiond_core::token::sha256(presented);
        if !matches_any(&hash, state.agents.iter().map(|a| &a.sha256)) {
            return Err(ApiError::Unauthorized);
        }
        if let Some(known) = known {
            // Set once per connection; a connection that changes keys hashes each time.
            let _ = known.set(presented.into());
        }
        Ok(Agent)
    }
}

impl FromRequestParts<AppState> for Agent {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        Agent::check(&parts.headers, state, None)
    }
}

/// The request carries the admin token.
#[derive(Debug)]
pub struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let presented = bearer(&parts.headers).ok_or(ApiError::Unauthorized)?;
        let hash = sessiond_core::token::sha256(presented);
        if matches_any(&hash, std::iter::once(&state.admin_sha256)) {
            Ok(Admin)
        } else {
            Err(ApiError::Unauthorized)
        }
    }
}

/// A JSON body whose every failure is a contract error.
#[derive(Debug)]
pub struct Body<T>(pub T);

impl<T, S> FromRequest<S> for Body<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, _: &S) -> Result<Self, ApiError> {
        let (parts, body) = req.into_parts();
        json_body(&parts.headers, body).await.map(Body)
    }
}

/// What [`Body`] extracts, for a handler that reads the request itself: `axum::Json`'s
/// checks and answers, minus the parts a profile of validate found dear. The
/// `Content-Type` is compared as text rather than parsed as a MIME type, and the body is
/// read by serde_json alone; only a body that fails is read once more through
/// `axum::Json`, whose message names the field at fault.
pub async fn json_body<T, B>(headers: &HeaderMap, body: B) -> Result<T, ApiError>
where
    T: DeserializeOwned,
    B: HttpBody<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    parse_json(&json_bytes(headers, body).await?)
}

/// The first half of [`json_body`]: the `Content-Type` checked and the body read, within
/// [`super::MAX_BODY_BYTES`].
pub async fn json_bytes<B>(headers: &HeaderMap, body: B) -> Result<Bytes, ApiError>
where
    B: HttpBody<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    if !is_json(headers) {
        return Err(json_rejection(JsonRejection::MissingJsonContentType(
            Default::default(),
        )));
    }
    match Limited::new(body, super::MAX_BODY_BYTES).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if over_limit(&*e) => Err(too_large()),
        Err(e) => Err(ApiError::invalid(format!("failed to read the body: {e}"))),
    }
}

/// The second half of [`json_body`]: `bytes` read as a `T`, with `axum::Json`'s messages.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if let Ok(v) = serde_json::from_slice(bytes) {
        return Ok(v);
    }
    match axum::Json::<T>::from_bytes(bytes) {
        Ok(axum::Json(v)) => Ok(v),
        Err(r) => Err(json_rejection(r)),
    }
}

/// The body passed [`super::MAX_BODY_BYTES`]: our limit's error, here or wrapped in the
/// errors of the bodies around it.
fn over_limit(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut at = Some(e);
    while let Some(e) = at {
        if e.is::<LengthLimitError>() {
            return true;
        }
        at = e.source();
    }
    false
}

/// `Content-Type: application/json`, or any `application/*+json`, parameters allowed: the
/// types `axum::Json` accepts.
fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(CONTENT_TYPE) else {
        return false;
    };
    // What agents send, answered without parsing (about 700 instructions of every
    // validate went to the parse below; callgrind, twenty-ninth session).
    if value.as_bytes().eq_ignore_ascii_case(b"application/json") {
        return true;
    }
    let Ok(value) = value.to_str() else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or_default().trim();
    let Some((kind, subtype)) = essence.split_once('/') else {
        return false;
    };
    let suffix = subtype.len().saturating_sub("+json".len());
    kind.eq_ignore_ascii_case("application")
        && (subtype.eq_ignore_ascii_case("json")
            || subtype.as_bytes()[suffix..].eq_ignore_ascii_case(b"+json"))
}

fn too_large() -> ApiError {
    ApiError::PayloadTooLarge(format!(
        "the body is larger than {} bytes",
        super::MAX_BODY_BYTES
    ))
}

fn json_rejection(r: JsonRejection) -> ApiError {
    if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return too_large();
    }
    match r {
        JsonRejection::MissingJsonContentType(_) => {
            ApiError::invalid("send the body as JSON with `Content-Type: application/json`")
        }
        JsonRejection::JsonSyntaxError(e) => {
            ApiError::invalid(format!("malformed JSON: {}", e.body_text()))
        }
        JsonRejection::JsonDataError(e) => {
            ApiError::invalid(format!("invalid body: {}", e.body_text()))
        }
        other => ApiError::invalid(other.body_text()),
    }
}

/// Query parameters whose every failure is `invalid_request`.
#[derive(Debug)]
pub struct Params<T>(pub T);

impl<T, S> FromRequestParts<S> for Params<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(v)) => Ok(Params(v)),
            Err(QueryRejection::FailedToDeserializeQueryString(e)) => Err(ApiError::invalid(
                format!("invalid query: {}", e.body_text()),
            )),
            Err(other) => Err(ApiError::invalid(other.body_text())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use axum::http::HeaderValue;

    #[test]
    fn json_bodies_are_told_by_their_content_type() {
        let is = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(CONTENT_TYPE, v.parse().unwrap());
            is_json(&h)
        };
        for yes in [
            "application/json",
            "Application/JSON; charset=utf-8",
            " application/json ;charset=utf-8",
            "application/vnd.api+json",
        ] {
            assert!(is(yes), "{yes}");
        }
        for no in [
            "text/plain",
            "application/jsonx",
            "application/x-json",
            "json",
            "application/",
            "text/json",
            "",
        ] {
            assert!(!is(no), "{no}");
        }
        assert!(!is_json(&HeaderMap::new()));
    }

    #[test]
    fn a_bearer_credential_is_read_as_the_scheme_defines_it() {
        let read = |v: &[u8]| {
            let mut h = HeaderMap::new();
            h.insert(AUTHORIZATION, HeaderValue::from_bytes(v).unwrap());
            bearer(&h).map(<[u8]>::to_vec)
        };
        for (value, want) in [
            (&b"Bearer abc"[..], Some(&b"abc"[..])),
            (b"bearer abc", Some(b"abc")),
            (b"BEARER   abc  ", Some(b"abc")),
            (b"Bearer a b", Some(b"a b")),
            (b"Bearer \xffk", Some(b"\xffk")),
            (b"Bearer", None),
            (b"Bearer ", None),
            (b"Bearer    ", None),
            (b"Bearer\tabc", None),
            (b" Bearer abc", None),
            (b"Basic abc", None),
            (b"Bearerabc", None),
            (b"Bearers abc", None),
        ] {
            assert_eq!(read(value).as_deref(), want, "{}", value.escape_ascii());
        }
        let long = [b"Bearer ".as_slice(), &[b'k'; MAX_AUTHORIZATION_LEN]].concat();
        assert_eq!(read(&long), None);
        assert_eq!(bearer(&HeaderMap::new()), None);
    }

    #[test]
    fn membership_is_exact() {
        let a = [1u8; 32];
        let b = [2u8; 32];
        assert!(matches_any(&a, [&b, &a].into_iter()));
        assert!(!matches_any(&a, [&b].into_iter()));
        assert!(!matches_any(&a, std::iter::empty()));
    }
}
