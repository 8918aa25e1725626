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
//! [`LOOKUP_PATH`] takes validate's request and does less: it reads the session id from the
//! token without checking its MAC, finds and touches the session, and answers the
//! baseline's body, so that the cost of finding one session among all held is measured
//! alone.
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
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustc_hash::FxHashMap;
use serde::Deserialize;
use sessiond_core::clock::{Clock, SystemClock};
use sessiond_core::token::{Minted, SECRET_LEN, TokenKey, TokenKeys, sha256};
use sessiond_core::{Policy, Session, SessionId, SessionStatus, Timestamp};
use sessiond_server::config::{HeaderNames, Settings};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;

use crate::servers::COOKIE_NAME;
use crate::workloads::SessionData;

/// Where validate's request gets the lookup alone (see the module docs).
pub const LOOKUP_PATH: &str = "/plain/lookup";

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
pub fn minted(keys: &TokenKeys, i: u64) -> (SessionId, Minted) {
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
}

/// Serves `sessions` sessions until killed; prints `plain: listening on http://ADDR` once
/// they are made and it is bound.
pub fn run(listen: SocketAddr, sessions: u64, agent_key: &str) -> Result<()> {
    let settings = Settings::load(None, &[], &Default::default()).context("default settings")?;
    let state = Arc::new(State {
        keys: keys(),
        authorization: format!("Bearer {agent_key}").into_bytes(),
        shards: populate(sessions),
        headers: settings.web.headers,
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(serve(listen, state))
}

/// Sessions `0..n` ([`SessionData::nth`]) under a policy of a day's idle timeout, so that
/// none ends during a run; one copy of each user agent, as sessiond's interner keeps.
fn populate(n: u64) -> Box<[Mutex<FxHashMap<SessionId, Session>>]> {
    let policy = Policy {
        idle_timeout: Duration::from_secs(24 * 3600),
        max_lifetime: Duration::from_secs(7 * 24 * 3600),
        ..Policy::default()
    };
    let now = SystemClock.now();
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

async fn serve(listen: SocketAddr, state: Arc<State>) -> Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    println!("plain: listening on http://{}", listener.local_addr()?);
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(_) => continue,
        };
        let state = state.clone();
        tokio::spawn(async move {
            let _ = http1::Builder::new()
                .serve_connection(
                    TokioIo::new(stream),
                    service_fn(|req| answer(state.clone(), req)),
                )
                .await;
        });
    }
}

type Answer = Response<Full<Bytes>>;

fn status(code: StatusCode) -> Answer {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = code;
    r
}

async fn answer(state: Arc<State>, req: Request<Incoming>) -> Result<Answer, Infallible> {
    let (parts, body) = req.into_parts();
    Ok(match (&parts.method, parts.uri.path()) {
        (&Method::POST, "/v1/sessions/validate") => {
            let presented = parts
                .headers
                .get(header::AUTHORIZATION)
                .map_or(&b""[..], HeaderValue::as_bytes);
            if !bool::from(presented.ct_eq(&state.authorization)) {
                return Ok(status(StatusCode::UNAUTHORIZED));
            }
            match Limited::new(body, MAX_BODY).collect().await {
                Ok(body) => validate(&state, &body.to_bytes()),
                Err(_) => status(StatusCode::BAD_REQUEST),
            }
        }
        (&Method::POST, LOOKUP_PATH) => match Limited::new(body, MAX_BODY).collect().await {
            Ok(body) => lookup_alone(&state, &body.to_bytes()),
            Err(_) => status(StatusCode::BAD_REQUEST),
        },
        (&Method::GET, "/auth/nginx") => forward(&state, &parts.headers),
        _ => status(StatusCode::NOT_FOUND),
    })
}

#[derive(Deserialize)]
struct ValidateRequest<'a> {
    token: &'a str,
}

fn validate(state: &State, body: &[u8]) -> Answer {
    let Ok(req) = serde_json::from_slice::<ValidateRequest>(body) else {
        return status(StatusCode::BAD_REQUEST);
    };
    match state.live(req.token, sessiond_server::json::session_envelope) {
        Some(json) => {
            let mut r = Response::new(Full::new(Bytes::from(json)));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r
        }
        None => status(StatusCode::UNAUTHORIZED),
    }
}

/// The session the token names, found and touched, with no MAC checked and no hash made:
/// what finding one session among all held costs.
fn lookup_alone(state: &State, body: &[u8]) -> Answer {
    let Ok(req) = serde_json::from_slice::<ValidateRequest>(body) else {
        return status(StatusCode::BAD_REQUEST);
    };
    let mut raw = [0u8; 48];
    let decoded = req
        .token
        .split('.')
        .nth(1)
        .and_then(|b64| URL_SAFE_NO_PAD.decode_slice(b64, &mut raw).ok());
    if decoded != Some(raw.len()) {
        return status(StatusCode::BAD_REQUEST);
    }
    let mut id = [0u8; 16];
    id.copy_from_slice(&raw[..16]);
    let id = SessionId(id);
    let now = SystemClock.now();
    let Ok(mut shard) = state.shards[shard(&id)].lock() else {
        return status(StatusCode::INTERNAL_SERVER_ERROR);
    };
    match shard.get_mut(&id) {
        Some(s) => {
            s.last_access_at = now;
            let mut r = Response::new(Full::new(Bytes::from_static(crate::baseline::BODY)));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r
        }
        None => status(StatusCode::UNAUTHORIZED),
    }
}

/// The identity headers of forward auth, as sessiond's `/auth/nginx` answers them.
fn forward(state: &State, headers: &hyper::HeaderMap) -> Answer {
    let token = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(COOKIE_NAME)?.strip_prefix('='));
    let Some(token) = token else {
        return status(StatusCode::UNAUTHORIZED);
    };
    let identity = state.live(token, |s| {
        let hex = s.id.hex();
        let level = s.auth_level.to_string();
        let values: [(&HeaderName, &[u8]); 4] = [
            (&state.headers.user, s.user.as_bytes()),
            (
                &state.headers.universal_id,
                s.universal_id.as_deref().unwrap_or_default().as_bytes(),
            ),
            (&state.headers.session_id, &hex),
            (&state.headers.auth_level, level.as_bytes()),
        ];
        values
            .into_iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(name, v)| Some((name.clone(), HeaderValue::from_bytes(v).ok()?)))
            .collect::<Option<Vec<_>>>()
    });
    let Some(Some(identity)) = identity else {
        return status(StatusCode::UNAUTHORIZED);
    };
    let mut r = status(StatusCode::OK);
    let h = r.headers_mut();
    h.reserve(1 + identity.len());
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    for (name, value) in identity {
        h.insert(name, value);
    }
    r
}

impl State {
    /// The live session `token` names, touched now and handed to `answer` under its lock.
    fn live<T>(&self, token: &str, answer: impl FnOnce(&Session) -> T) -> Option<T> {
        let (id, verifier) = self.keys.verify(token).ok()?;
        let now: Timestamp = SystemClock.now();
        let mut shard = self.shards[shard(&id)].lock().ok()?;
        let s = shard.get_mut(&id)?;
        if !s.verifier.matches(&verifier) || s.status(now) != SessionStatus::Live {
            return None;
        }
        s.last_access_at = now;
        Some(answer(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_benchmark_computes_the_tokens_the_server_holds() {
        let shards = populate(100);
        let state = State {
            keys: keys(),
            authorization: b"Bearer k".to_vec(),
            shards,
            headers: Settings::load(None, &[], &Default::default())
                .unwrap()
                .web
                .headers,
        };
        let tokens = tokens(100);
        for (i, token) in tokens.iter().enumerate() {
            let user = state.live(token, |s| s.user.to_string());
            assert_eq!(user, Some(SessionData::nth(i as u64).user));
        }
        let body = format!(r#"{{"token":"{}"}}"#, tokens[7]);
        assert_eq!(validate(&state, body.as_bytes()).status(), StatusCode::OK);
        // A token of another index's secret, or garbled, finds nothing.
        let mut forged = tokens[3].clone();
        let last = forged.pop();
        forged.push(if last == Some('A') { 'B' } else { 'A' });
        assert!(state.live(&forged, |_| ()).is_none());
        let mut headers = hyper::HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("a=b; {COOKIE_NAME}={}", tokens[5])).unwrap(),
        );
        // The lookup alone checks no MAC: the forged token's id finds its session.
        let body = format!(r#"{{"token":"{forged}"}}"#);
        assert_eq!(
            lookup_alone(&state, body.as_bytes()).status(),
            StatusCode::OK
        );
        let r = forward(&state, &headers);
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(
            r.headers()[&state.headers.user],
            SessionData::nth(5).user.as_str()
        );
    }
}
