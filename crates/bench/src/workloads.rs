//! What the benchmark sends: the synthetic sessions (the same ones go to sessiond and to
//! Redis) and the request workloads built on them.
//!
//! A session has the contract's default attributes: a user (two sessions per user on
//! average, the usual phone-plus-laptop), a 36-character universal id, a client IP from the
//! documentation ranges, and one of four real browser user agents (100-140 bytes).

use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, COOKIE, HOST, HeaderValue};
use hyper::{Method, Request, StatusCode};
use serde::Deserialize;
use sessiond_core::session::NewSession;
use sessiond_core::token::sha256;
use sessiond_core::{Policy, Session, SessionId, Timestamp, Verifier};

use crate::load::Workload;
use crate::servers::COOKIE_NAME;

const USER_AGENTS: [&str; 4] = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (X11; Linux x86_64; rv:127.0) Gecko/20100101 Firefox/127.0",
];

/// The attributes of synthetic session `i`.
#[derive(Clone, Debug)]
pub struct SessionData {
    pub user: String,
    pub universal_id: String,
    pub ip: String,
    pub user_agent: &'static str,
}

impl SessionData {
    pub fn nth(i: u64) -> SessionData {
        // A fixed odd multiplier spreads consecutive indexes over the id space.
        let mix = i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        SessionData {
            user: format!("user{:08}", i / 2),
            universal_id: format!(
                "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
                mix >> 32,
                (mix >> 16) & 0xffff,
                mix & 0xfff,
                (mix >> 12) & 0xfff,
                mix & 0xffff_ffff_ffff
            ),
            ip: format!("198.51.100.{}", i % 256),
            user_agent: USER_AGENTS[(i % 4) as usize],
        }
    }

    /// This session as the server makes it on a create at `now` under `policy` (named
    /// `policy_name`): a fresh id tagged with its user, the attributes, the policy's
    /// deadlines. Its verifier is SHA-256 of its id, since nothing validates these by token.
    pub fn into_session(
        self,
        policy_name: &str,
        policy: &Policy,
        now: Timestamp,
    ) -> anyhow::Result<Session> {
        let id = SessionId::for_user(&self.user)?;
        let new = NewSession {
            user: self.user,
            universal_id: Some(self.universal_id),
            client_ip: self.ip.parse().ok(),
            user_agent: Some(self.user_agent.to_owned()),
            ..NewSession::default()
        };
        let verifier = Verifier(sha256(&id.0));
        Ok(Session::create(new, id, verifier, policy_name, policy, now))
    }

    /// The `POST /v1/sessions` body.
    pub fn create_body(&self) -> String {
        serde_json::json!({
            "user": self.user,
            "universal_id": self.universal_id,
            "client": {"ip": self.ip, "user_agent": self.user_agent},
        })
        .to_string()
    }
}

/// Headers every agent request carries.
#[derive(Clone)]
pub struct Agent {
    host: HeaderValue,
    bearer: HeaderValue,
}

impl Agent {
    pub fn new(addr: SocketAddr, key: &str) -> anyhow::Result<Agent> {
        Ok(Agent {
            host: HeaderValue::from_str(&addr.to_string())?,
            bearer: HeaderValue::from_str(&format!("Bearer {key}"))?,
        })
    }

    fn post(&self, path: &str, body: String) -> Option<Request<Full<Bytes>>> {
        Request::builder()
            .method(Method::POST)
            .uri(path)
            .header(HOST, self.host.clone())
            .header(AUTHORIZATION, self.bearer.clone())
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .ok()
    }
}

fn expect(status: StatusCode, want: StatusCode, body: &Bytes) -> Result<(), String> {
    if status == want {
        return Ok(());
    }
    let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
    Err(format!("answer {status}, wanted {want}: {text}"))
}

/// `POST /v1/sessions/validate` (touch on) with a token drawn at random from all of them.
pub struct Validate {
    pub agent: Agent,
    pub tokens: std::sync::Arc<Vec<String>>,
}

impl Workload for Validate {
    fn request(&self, rng: &mut fastrand::Rng) -> Option<Request<Full<Bytes>>> {
        let token = self.tokens.get(rng.usize(..self.tokens.len()))?;
        self.agent
            .post("/v1/sessions/validate", format!(r#"{{"token":"{token}"}}"#))
    }

    fn check(&self, status: StatusCode, body: &Bytes) -> Result<(), String> {
        expect(status, StatusCode::OK, body)
    }
}

/// `GET /auth/nginx` with the session cookie of a token drawn at random from all of them.
pub struct ForwardAuth {
    pub host: HeaderValue,
    pub tokens: std::sync::Arc<Vec<String>>,
}

impl Workload for ForwardAuth {
    fn request(&self, rng: &mut fastrand::Rng) -> Option<Request<Full<Bytes>>> {
        let token = self.tokens.get(rng.usize(..self.tokens.len()))?;
        Request::builder()
            .method(Method::GET)
            .uri("/auth/nginx")
            .header(HOST, self.host.clone())
            .header(COOKIE, format!("{COOKIE_NAME}={token}"))
            .body(Full::new(Bytes::new()))
            .ok()
    }

    fn check(&self, status: StatusCode, body: &Bytes) -> Result<(), String> {
        expect(status, StatusCode::OK, body)
    }
}

/// Creates sessions `0..total` once each, keeping every token it is given.
pub struct Populate {
    pub agent: Agent,
    pub total: u64,
    next: AtomicU64,
    // Filled by every connection; a lock taken once per create costs nothing next to it.
    tokens: Mutex<Vec<String>>,
}

#[derive(Deserialize)]
struct Created {
    token: String,
}

impl Populate {
    pub fn new(agent: Agent, total: u64) -> Populate {
        Populate {
            agent,
            total,
            next: AtomicU64::new(0),
            tokens: Mutex::new(Vec::with_capacity(usize::try_from(total).unwrap_or(0))),
        }
    }

    /// The tokens collected so far.
    pub fn take_tokens(&self) -> Vec<String> {
        self.tokens
            .lock()
            .map(|mut t| std::mem::take(&mut *t))
            .unwrap_or_default()
    }
}

impl Workload for Populate {
    fn request(&self, _: &mut fastrand::Rng) -> Option<Request<Full<Bytes>>> {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        if i >= self.total {
            return None;
        }
        self.agent
            .post("/v1/sessions", SessionData::nth(i).create_body())
    }

    fn check(&self, status: StatusCode, body: &Bytes) -> Result<(), String> {
        expect(status, StatusCode::CREATED, body)?;
        let created: Created =
            serde_json::from_slice(body).map_err(|e| format!("create answer: {e}"))?;
        self.tokens
            .lock()
            .map_err(|_| "token list poisoned".to_owned())?
            .push(created.token);
        Ok(())
    }
}

/// Creates new sessions for as long as it runs, keeping nothing: the durable-create load.
pub struct Create {
    pub agent: Agent,
    pub next: AtomicU64,
}

impl Workload for Create {
    fn request(&self, _: &mut fastrand::Rng) -> Option<Request<Full<Bytes>>> {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        self.agent
            .post("/v1/sessions", SessionData::nth(i).create_body())
    }

    fn check(&self, status: StatusCode, body: &Bytes) -> Result<(), String> {
        expect(status, StatusCode::CREATED, body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_pair_up_by_user_and_have_default_attributes() {
        let (a, b, c) = (
            SessionData::nth(0),
            SessionData::nth(1),
            SessionData::nth(2),
        );
        assert_eq!(a.user, b.user);
        assert_ne!(a.user, c.user);
        assert_eq!(a.universal_id.len(), 36);
        assert_ne!(a.universal_id, b.universal_id);
        let body: serde_json::Value = serde_json::from_str(&a.create_body()).unwrap();
        assert_eq!(body["client"]["ip"], "198.51.100.0");
    }
}
