//! What the benchmark sends: the request workloads built on the synthetic sessions
//! ([`SessionData`], shared with the examples; the same ones go to sessiond and to Redis).

use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, COOKIE, HOST, HeaderValue};
use hyper::{Method, Request, StatusCode};
use serde::Deserialize;

use crate::load::Workload;
use crate::servers::COOKIE_NAME;

pub use sessiond_store::testkit::SessionData;

/// The `POST /v1/sessions` body for `s`.
pub fn create_body(s: &SessionData) -> String {
    // Strings into a `String`: nothing here can fail.
    serde_json::to_string(&s.create_request()).unwrap_or_default()
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
            .post("/v1/sessions", create_body(&SessionData::nth(i)))
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
            .post("/v1/sessions", create_body(&SessionData::nth(i)))
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
        let body: serde_json::Value = serde_json::from_str(&create_body(&a)).unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "user": a.user,
                "universal_id": a.universal_id,
                "client": {"ip": "198.51.100.0", "user_agent": a.user_agent},
            })
        );
    }
}
