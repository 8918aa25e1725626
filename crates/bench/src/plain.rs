//! The plain session server: the work every validate and forward-auth check must do, done
//! the obvious way on the baseline's stack, as a second baseline for the serving rows.
//!
//! It is the baseline server ([`crate::baseline`]: hyper, the same runtime) plus, on each
//! request: the agent key compared in constant time (validate), the body read and its JSON
//! parsed (validate) or the cookie read (forward auth), the token's MAC checked and its
//! secret hashed ([`TokenKeys::verify`]), the session found among all held (one
//! `FxHashMap` per shard, behind a mutex, the record in the map's slot), the verifier
//! compared in constant time, the deadline checked, the last access written in place, and
//! the answer written (sessiond's own JSON writer, or forward auth's identity headers). It
//! keeps no journal, coalesces nothing, counts nothing and logs nothing.
//!
//! Three more paths take validate's request (a `POST`) or forward auth's (a `GET`) and do
//! part of it, so that the parts are measured apart:
//! - [`LOOKUP_PATH`] reads the session id from the token without checking its MAC, finds
//!   and touches the session, and answers the baseline's body: finding one session among
//!   all held, alone;
//! - [`WORK_PATH`] does the whole work (the agent key, the JSON or the cookie, the MAC and
//!   the hash, the lookup, the verifier, the deadline, the touch) and answers the
//!   baseline's body: everything but the answer;
//! - [`ANSWER_PATH`] does no work at all: it is the baseline (the body read, nothing
//!   parsed) answering what the contract has sessiond answer, made once at start from
//!   session 0: validate's `{"session":{...}}`, forward auth's identity headers. What
//!   those bytes cost the kernel, hyper and the load generator, alone.
//!
//! What it is for: if a server doing only this work costs more CPU per request than the
//! target allows, the target is out of reach on this machine for any server doing the work
//! the contract asks for; what sessiond costs beyond it is sessiond's own.
//!
//! Its sessions are made in-process at start ([`minted`]: ids and secrets derived from the
//! index, under a fixed key: a benchmark's keys guard nothing), and the benchmark computes
//! the same tokens ([`tokens`]) rather than reading them back.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use rustc_hash::FxHashMap;
use serde::Deserialize;
use sessiond_core::clock::{Clock, SystemClock};
use sessiond_core::token::{Minted, SECRET_LEN, TokenKey, TokenKeys, sha256};
use sessiond_core::{Policy, Session, SessionId, SessionStatus, Timestamp};
use sessiond_server::config::{HeaderNames, Settings};
use subtle::ConstantTimeEq;

use crate::baseline::{self, Answer};
use crate::servers::COOKIE_NAME;
use crate::workloads::SessionData;

/// Where validate's and forward auth's requests get the lookup alone (see the module docs).
pub const LOOKUP_PATH: &str = "/plain/lookup";
/// Where validate's and forward auth's requests get the whole work without its answer.
pub const WORK_PATH: &str = "/plain/work";
/// Where validate's and forward auth's requests get the answer alone (see the module docs).
pub const ANSWER_PATH: &str = "/plain/answer";

/// Shards of the session map, each behind its own lock.
const SHARDS: usize = 64;
/// Largest request body read.
const MAX_BODY: usize = 16 * 1024;

/// The key ring every token of the plain server is minted and checked under.
fn keys() -> TokenKeys {
    let key = TokenKey::new("k1", &[0x5a; 32]).expect("a 32-byte key");
    TokenKeys::new(vec![key]).expect("one key")
}

/// Session `i`'s id and token: both derived from `i`, so that the benchmark computes the
/// tokens the server holds.
fn minted(keys: &TokenKeys, i: u64) -> (SessionId, Minted) {
    let seed = sha256(&[b"plain-session-".as_slice(), &i.to_le_bytes()].concat());
    let mut id = [0u8; 16];
    id.copy_from_slice(&seed[..16]);
    let secret: [u8; SECRET_LEN] = sha256(&seed);
    let id = SessionId(id);
    (id, keys.mint_from(id, &secret))
}

/// The tokens of sessions `0..n`, as a plain server started with `n` sessions holds them.
pub fn tokens(n: u64) -> Vec<String> {
    let keys = keys();
    (0..n).map(|i| minted(&keys, i).1.token).collect()
}

struct State {
    keys: TokenKeys,
    /// `Bearer <agent key>`, the one `Authorization` value validate accepts.
    authorization: Vec<u8>,
    shards: Box<[Mutex<FxHashMap<SessionId, Session>>]>,
    headers: HeaderNames,
    /// Session 0's validate answer and identity headers, for [`ANSWER_PATH`].
    fixed: Fixed,
}

/// Answers made once: what [`ANSWER_PATH`] sends back.
struct Fixed {
    validate: Bytes,
    identity: Vec<(HeaderName, HeaderValue)>,
}

/// Serves `sessions` sessions until SIGTERM; prints `plain: listening on http://ADDR` once
/// they are made and it is bound.
pub fn run(listen: SocketAddr, sessions: u64, agent_key: &str) -> Result<()> {
    let settings = Settings::load(None, &[], &Default::default()).context("default settings")?;
    let state = State::new(
        format!("Bearer {agent_key}").into_bytes(),
        populate(sessions, SystemClock.now()),
        settings.web.headers,
    )?;
    let state = Arc::new(state);
    baseline::serve(listen, "plain", move |req| answer(state.clone(), req))
}

/// Sessions `0..n` ([`SessionData::nth`]) created at `now` under a policy of a day's idle
/// timeout, so that none ends during a run; one copy of each user agent, as sessiond's
/// interner keeps.
fn populate(n: u64, now: Timestamp) -> Box<[Mutex<FxHashMap<SessionId, Session>>]> {
    let policy = Policy {
        idle_timeout: Duration::from_secs(24 * 3600),
        max_lifetime: Duration::from_secs(7 * 24 * 3600),
        ..Policy::default()
    };
    let keys = keys();
    let per_shard = usize::try_from(n).unwrap_or(0) / SHARDS + 1;
    let mut shards: Vec<FxHashMap<SessionId, Session>> = (0..SHARDS)
        .map(|_| FxHashMap::with_capacity_and_hasher(per_shard, Default::default()))
        .collect();
    let mut agents: FxHashMap<&'static str, Arc<str>> = FxHashMap::default();
    for i in 0..n {
        let data = SessionData::nth(i);
        let agent = agents
            .entry(data.user_agent)
            .or_insert_with(|| Arc::from(data.user_agent))
            .clone();
        let mut s = data.into_session("default", &policy, now);
        let (id, minted) = minted(&keys, i);
        s.id = id;
        s.verifier = minted.verifier;
        s.user_agent = Some(agent);
        shards[shard(&id)].insert(id, s);
    }
    shards.into_iter().map(Mutex::new).collect()
}

fn shard(id: &SessionId) -> usize {
    usize::from(id.0[15]) % SHARDS
}

fn status(code: StatusCode) -> Answer {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = code;
    r
}

/// What a request asks of the plain server (see the module docs).
#[derive(Clone, Copy, PartialEq)]
enum Route {
    /// Validate's or forward auth's whole work and answer.
    Whole,
    /// The session found and touched, nothing checked; the baseline's body.
    Lookup,
    /// The whole work; the baseline's body.
    Work,
    /// No work; the contract's answer, made once.
    Answer,
}

async fn answer(state: Arc<State>, req: Request<Incoming>) -> Result<Answer, Infallible> {
    let now = SystemClock.now();
    let (parts, body) = req.into_parts();
    let post = match parts.method {
        Method::POST => true,
        Method::GET => false,
        _ => return Ok(status(StatusCode::NOT_FOUND)),
    };
    let route = match parts.uri.path() {
        "/v1/sessions/validate" if post => Route::Whole,
        "/auth/nginx" if !post => Route::Whole,
        LOOKUP_PATH => Route::Lookup,
        WORK_PATH => Route::Work,
        ANSWER_PATH => Route::Answer,
        _ => return Ok(status(StatusCode::NOT_FOUND)),
    };
    // Forward auth's requests: the token is the session cookie.
    if !post {
        let token = cookie_token(&parts.headers);
        return Ok(match route {
            Route::Whole => state.forward(token, now),
            Route::Lookup => state.lookup_alone(token, now),
            Route::Work => state.work(token, now),
            Route::Answer => identified(state.fixed.identity.clone()),
        });
    }
    // Validate's: the token is in the JSON body, which only the agent key may send.
    let checked = matches!(route, Route::Whole | Route::Work);
    if checked && !state.agent_admitted(&parts.headers) {
        return Ok(status(StatusCode::UNAUTHORIZED));
    }
    let Ok(body) = Limited::new(body, MAX_BODY).collect().await else {
        return Ok(status(StatusCode::BAD_REQUEST));
    };
    let handler: fn(&State, Option<&str>, Timestamp) -> Answer = match route {
        Route::Whole => State::validate,
        Route::Lookup => State::lookup_alone,
        Route::Work => State::work,
        // The body read whole, as the baseline reads it, and nothing parsed.
        Route::Answer => return Ok(baseline::json(StatusCode::OK, state.fixed.validate.clone())),
    };
    let body = body.to_bytes();
    let Ok(req) = serde_json::from_slice::<ValidateRequest>(&body) else {
        return Ok(status(StatusCode::BAD_REQUEST));
    };
    Ok(handler(&state, Some(req.token), now))
}

/// The session cookie's value, if the request has one.
fn cookie_token(headers: &hyper::HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(COOKIE_NAME)?.strip_prefix('='))
}

/// The baseline's `200` and body.
fn ok() -> Answer {
    baseline::json(StatusCode::OK, Bytes::from_static(baseline::BODY))
}

/// Forward auth's `200` with `identity`'s headers.
fn identified(identity: Vec<(HeaderName, HeaderValue)>) -> Answer {
    let mut r = status(StatusCode::OK);
    let h = r.headers_mut();
    h.reserve(1 + identity.len());
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    for (name, value) in identity {
        h.insert(name, value);
    }
    r
}

/// `s`'s identity headers, the empty ones left out; `None` if one cannot be a header.
fn identity(headers: &HeaderNames, s: &Session) -> Option<Vec<(HeaderName, HeaderValue)>> {
    let hex = s.id.hex();
    let level = s.auth_level.to_string();
    let values: [(&HeaderName, &[u8]); 4] = [
        (&headers.user, s.user.as_bytes()),
        (
            &headers.universal_id,
            s.universal_id.as_deref().unwrap_or_default().as_bytes(),
        ),
        (&headers.session_id, &hex),
        (&headers.auth_level, level.as_bytes()),
    ];
    values
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(name, v)| Some((name.clone(), HeaderValue::from_bytes(v).ok()?)))
        .collect()
}

#[derive(Deserialize)]
struct ValidateRequest<'a> {
    token: &'a str,
}

impl State {
    fn new(
        authorization: Vec<u8>,
        shards: Box<[Mutex<FxHashMap<SessionId, Session>>]>,
        headers: HeaderNames,
    ) -> Result<State> {
        let keys = keys();
        let (id, _) = minted(&keys, 0);
        let fixed = shards[shard(&id)]
            .lock()
            .ok()
            .and_then(|shard| {
                let s = shard.get(&id)?;
                // Values from `'static` strings (kept for the process's life), so that
                // cloning them touches no reference count shared by the two cores.
                let identity = identity(&headers, s)?.into_iter().map(|(name, value)| {
                    let kept: &'static str = Box::leak(value.to_str().ok()?.into());
                    Some((name, HeaderValue::from_static(kept)))
                });
                Some(Fixed {
                    validate: Bytes::from(sessiond_server::json::session_envelope(s)),
                    identity: identity.collect::<Option<_>>()?,
                })
            })
            .context("session 0, whose answers the answer alone sends")?;
        Ok(State {
            keys,
            authorization,
            shards,
            headers,
            fixed,
        })
    }

    /// Whether `headers` present the agent key, compared in constant time.
    fn agent_admitted(&self, headers: &hyper::HeaderMap) -> bool {
        let presented = headers
            .get(header::AUTHORIZATION)
            .map_or(&b""[..], HeaderValue::as_bytes);
        presented.ct_eq(&self.authorization).into()
    }

    /// Validate's answer: the session as sessiond writes it.
    fn validate(&self, token: Option<&str>, now: Timestamp) -> Answer {
        let session =
            token.and_then(|t| self.live(t, now, sessiond_server::json::session_envelope));
        match session {
            Some(session) => baseline::json(StatusCode::OK, Bytes::from(session)),
            None => status(StatusCode::UNAUTHORIZED),
        }
    }

    /// The session `token` names, found and touched, with no MAC checked and no hash made:
    /// what finding one session among all held costs. Answers the baseline's body.
    fn lookup_alone(&self, token: Option<&str>, now: Timestamp) -> Answer {
        let mut raw = [0u8; 48];
        let decoded = token
            .and_then(|t| t.split('.').nth(1))
            .and_then(|b64| URL_SAFE_NO_PAD.decode_slice(b64, &mut raw).ok());
        if decoded != Some(raw.len()) {
            return status(StatusCode::BAD_REQUEST);
        }
        let mut id = [0u8; 16];
        id.copy_from_slice(&raw[..16]);
        match self.touched(&SessionId(id), now, |_| true, |_| ()) {
            Some(()) => ok(),
            None => status(StatusCode::UNAUTHORIZED),
        }
    }

    /// Every check of validate and forward auth on `token`, and its session touched; the
    /// baseline's body instead of the session's answer.
    fn work(&self, token: Option<&str>, now: Timestamp) -> Answer {
        match token.and_then(|token| self.live(token, now, |_| ())) {
            Some(()) => ok(),
            None => status(StatusCode::UNAUTHORIZED),
        }
    }

    /// The identity headers of forward auth, as sessiond's `/auth/nginx` answers them.
    fn forward(&self, token: Option<&str>, now: Timestamp) -> Answer {
        let identity =
            token.and_then(|token| self.live(token, now, |s| identity(&self.headers, s)));
        match identity {
            Some(Some(identity)) => identified(identity),
            _ => status(StatusCode::UNAUTHORIZED),
        }
    }

    /// The live session `token` names, touched at `now` and handed to `answer` under its
    /// lock.
    fn live<T>(
        &self,
        token: &str,
        now: Timestamp,
        answer: impl FnOnce(&Session) -> T,
    ) -> Option<T> {
        let (id, verifier) = self.keys.verify(token).ok()?;
        let admit =
            |s: &Session| s.verifier.matches(&verifier) && s.status(now) == SessionStatus::Live;
        self.touched(&id, now, admit, answer)
    }

    /// Session `id`, if held and `admit` lets it in: touched at `now` and handed to
    /// `answer`, under its shard's lock.
    fn touched<T>(
        &self,
        id: &SessionId,
        now: Timestamp,
        admit: impl FnOnce(&Session) -> bool,
        answer: impl FnOnce(&Session) -> T,
    ) -> Option<T> {
        let mut shard = self.shards[shard(id)].lock().ok()?;
        let s = shard.get_mut(id).filter(|s| admit(s))?;
        s.last_access_at = now;
        Some(answer(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: Timestamp = Timestamp(1_795_000_000_000);

    fn state(n: u64) -> State {
        let headers = Settings::load(None, &[], &Default::default())
            .unwrap()
            .web
            .headers;
        State::new(b"Bearer k".to_vec(), populate(n, T0), headers).unwrap()
    }

    fn last_access(state: &State, token: &str) -> Timestamp {
        let (id, _) = state.keys.verify(token).unwrap();
        state.shards[shard(&id)].lock().unwrap()[&id].last_access_at
    }

    #[test]
    fn the_benchmark_computes_the_tokens_the_server_holds() {
        let state = state(100);
        let tokens = tokens(100);
        let now = T0.plus(Duration::from_secs(1));
        for (i, token) in tokens.iter().enumerate() {
            let user = state.live(token, now, |s| s.user.to_string());
            assert_eq!(user, Some(SessionData::nth(i as u64).user));
            assert_eq!(last_access(&state, token), now, "touched");
        }
        assert_eq!(
            state.validate(Some(&tokens[7]), now).status(),
            StatusCode::OK
        );
        let mut headers = hyper::HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("a=b; {COOKIE_NAME}={}", tokens[5])).unwrap(),
        );
        let r = state.forward(cookie_token(&headers), now);
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(
            r.headers()[&state.headers.user],
            SessionData::nth(5).user.as_str()
        );
    }

    #[test]
    fn the_answer_alone_is_session_0s() {
        let state = state(3);
        let answer: serde_json::Value = serde_json::from_slice(&state.fixed.validate).unwrap();
        let user = SessionData::nth(0).user;
        assert_eq!(answer["session"]["user"], user.as_str());
        assert!(answer["session"]["client"]["user_agent"].is_string());
        let identity = identified(state.fixed.identity.clone());
        assert_eq!(identity.status(), StatusCode::OK);
        assert_eq!(identity.headers()[&state.headers.user], user.as_str());
        assert_eq!(
            identity.headers().len(),
            5,
            "cache-control and four of identity"
        );
    }

    #[test]
    fn validate_admits_only_the_agent_key() {
        let state = state(1);
        let with = |value: &str| {
            let mut h = hyper::HeaderMap::new();
            h.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
            h
        };
        assert!(state.agent_admitted(&with("Bearer k")));
        assert!(!state.agent_admitted(&with("Bearer j")));
        assert!(!state.agent_admitted(&with("Bearer k ")));
        assert!(!state.agent_admitted(&hyper::HeaderMap::new()));
    }

    #[test]
    fn a_garbled_token_another_secret_or_a_past_deadline_is_refused() {
        let state = state(10);
        let tokens = tokens(10);
        let now = T0.plus(Duration::from_secs(1));
        let mut forged = tokens[3].clone();
        let last = forged.pop();
        forged.push(if last == Some('A') { 'B' } else { 'A' });
        assert!(state.live(&forged, now, |_| ()).is_none(), "bad MAC");
        // A token the key signed for session 3's id, with another secret.
        let (id, _) = minted(&state.keys, 3);
        let other = state.keys.mint_from(id, &[9; SECRET_LEN]).token;
        assert!(state.live(&other, now, |_| ()).is_none(), "wrong secret");
        assert_eq!(
            state.validate(Some(&other), now).status(),
            StatusCode::UNAUTHORIZED
        );
        // A day and a second idle: past the policy's idle timeout, and not touched.
        let later = T0.plus(Duration::from_secs(24 * 3600 + 1));
        assert!(state.live(&tokens[4], later, |_| ()).is_none(), "expired");
        assert_eq!(last_access(&state, &tokens[4]), T0, "left as it was");
        // The lookup alone checks no MAC: the forged token's id finds its session.
        assert_eq!(
            state.lookup_alone(Some(&forged), now).status(),
            StatusCode::OK
        );
        // The whole work without the answer checks what validate checks.
        assert_eq!(
            state.work(Some(&forged), now).status(),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            state.work(Some(&other), now).status(),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(state.work(None, now).status(), StatusCode::UNAUTHORIZED);
        let later_still = later.plus(Duration::from_secs(1));
        assert_eq!(
            state.work(Some(&tokens[4]), later_still).status(),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(state.work(Some(&tokens[5]), now).status(), StatusCode::OK);
        assert_eq!(last_access(&state, &tokens[3]), now, "touched");
    }
}
