//! What the benchmark sends: the request workloads built on the synthetic sessions
//! ([`SessionData`], shared with the examples; the same ones go to sessiond and to Redis).

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use hyper::StatusCode;
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
    host: String,
    key: String,
}

impl Agent {
    pub fn new(addr: SocketAddr, key: &str) -> anyhow::Result<Agent> {
        anyhow::ensure!(
            key.bytes().all(|b| b.is_ascii_graphic()),
            "an agent key that cannot go in a header"
        );
        Ok(Agent {
            host: addr.to_string(),
            key: key.to_owned(),
        })
    }

    /// A JSON `POST` to `path` into `out`.
    fn post(&self, path: &str, body: &[u8], out: &mut Vec<u8>) {
        // Writes into a `Vec` cannot fail.
        let _ = write!(
            out,
            "POST {path} HTTP/1.1\r\nhost: {}\r\nauthorization: Bearer {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            self.host,
            self.key,
            body.len()
        );
        out.extend_from_slice(body);
    }

    /// The `POST /v1/sessions` of session `i` ([`SessionData::nth`]) into `out`.
    fn create(&self, i: u64, out: &mut Vec<u8>) {
        let body = create_body(&SessionData::nth(i));
        self.post("/v1/sessions", body.as_bytes(), out);
    }
}

/// A token drawn at random from all of them.
fn draw<'a>(tokens: &'a [String], rng: &mut fastrand::Rng) -> Option<&'a str> {
    tokens.get(rng.usize(..tokens.len())).map(String::as_str)
}

fn expect(status: StatusCode, want: StatusCode, body: &[u8]) -> Result<(), String> {
    if status == want {
        return Ok(());
    }
    let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
    Err(format!("answer {status}, wanted {want}: {text}"))
}

/// `POST /v1/sessions/validate` (touch on) with a token drawn at random from all of them.
#[derive(Clone)]
pub struct Validate {
    pub agent: Agent,
    pub tokens: std::sync::Arc<Vec<String>>,
}

impl Validate {
    /// Validate's request, with a token drawn at random, sent to `path`.
    fn request_to(&self, path: &str, rng: &mut fastrand::Rng, out: &mut Vec<u8>) -> bool {
        let Some(token) = draw(&self.tokens, rng) else {
            return false;
        };
        let body = format!(r#"{{"token":"{token}"}}"#);
        self.agent.post(path, body.as_bytes(), out);
        true
    }
}

impl Workload for Validate {
    fn request(&self, rng: &mut fastrand::Rng, out: &mut Vec<u8>) -> bool {
        self.request_to("/v1/sessions/validate", rng, out)
    }

    fn check(&self, status: StatusCode, body: &[u8]) -> Result<(), String> {
        expect(status, StatusCode::OK, body)
    }
}

/// Validate's or forward auth's requests, sent to another path (one of the plain session
/// server's, [`crate::plain`]), where the answer must be a `200` too.
pub struct Elsewhere {
    pub path: &'static str,
    pub requests: Requests,
}

/// Whose requests [`Elsewhere`] sends.
#[derive(Clone)]
pub enum Requests {
    Validate(Validate),
    Forward(ForwardAuth),
}

impl Workload for Elsewhere {
    fn request(&self, rng: &mut fastrand::Rng, out: &mut Vec<u8>) -> bool {
        match &self.requests {
            Requests::Validate(v) => v.request_to(self.path, rng, out),
            Requests::Forward(f) => f.request_to(self.path, rng, out),
        }
    }

    fn check(&self, status: StatusCode, body: &[u8]) -> Result<(), String> {
        expect(status, StatusCode::OK, body)
    }
}

/// `GET /auth/nginx` with the session cookie of a token drawn at random from all of them.
#[derive(Clone)]
pub struct ForwardAuth {
    pub addr: SocketAddr,
    pub tokens: std::sync::Arc<Vec<String>>,
}

impl ForwardAuth {
    /// Forward auth's request, with a token drawn at random, sent to `path`.
    fn request_to(&self, path: &str, rng: &mut fastrand::Rng, out: &mut Vec<u8>) -> bool {
        let Some(token) = draw(&self.tokens, rng) else {
            return false;
        };
        // Writes into a `Vec` cannot fail.
        let _ = write!(
            out,
            "GET {path} HTTP/1.1\r\nhost: {}\r\ncookie: {COOKIE_NAME}={token}\r\n\r\n",
            self.addr
        );
        true
    }
}

impl Workload for ForwardAuth {
    fn request(&self, rng: &mut fastrand::Rng, out: &mut Vec<u8>) -> bool {
        self.request_to("/auth/nginx", rng, out)
    }

    fn check(&self, status: StatusCode, body: &[u8]) -> Result<(), String> {
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
    fn request(&self, _: &mut fastrand::Rng, out: &mut Vec<u8>) -> bool {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        if i >= self.total {
            return false;
        }
        self.agent.create(i, out);
        true
    }

    fn check(&self, status: StatusCode, body: &[u8]) -> Result<(), String> {
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
    fn request(&self, _: &mut fastrand::Rng, out: &mut Vec<u8>) -> bool {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        self.agent.create(i, out);
        true
    }

    fn check(&self, status: StatusCode, body: &[u8]) -> Result<(), String> {
        expect(status, StatusCode::CREATED, body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses the request `work` writes: method, path, headers (lowercased names) and body.
    fn written(work: &dyn Workload) -> (String, String, Vec<(String, String)>, Vec<u8>) {
        let mut out = Vec::new();
        assert!(work.request(&mut fastrand::Rng::with_seed(1), &mut out));
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut req = httparse::Request::new(&mut headers);
        let httparse::Status::Complete(head) = req.parse(&out).unwrap() else {
            panic!("a partial request");
        };
        let headers: Vec<(String, String)> = req
            .headers
            .iter()
            .map(|h| {
                let value = String::from_utf8(h.value.to_vec()).unwrap();
                (h.name.to_ascii_lowercase(), value)
            })
            .collect();
        let (method, path) = (req.method.unwrap().to_owned(), req.path.unwrap().to_owned());
        (method, path, headers, out[head..].to_vec())
    }

    fn header<'a>(headers: &'a [(String, String)], name: &str) -> &'a str {
        let found = headers.iter().find(|(n, _)| n == name);
        found
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("no {name}"))
    }

    #[test]
    fn requests_are_whole_http_1_1_requests_with_their_headers() {
        let addr: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let agent = Agent::new(addr, "k3y").unwrap();
        let tokens = std::sync::Arc::new(vec!["t0k".to_owned()]);
        let validate = Validate {
            agent: agent.clone(),
            tokens: tokens.clone(),
        };
        let (method, path, headers, body) = written(&validate);
        assert_eq!(
            (method.as_str(), path.as_str()),
            ("POST", "/v1/sessions/validate")
        );
        assert_eq!(header(&headers, "host"), "127.0.0.1:8080");
        assert_eq!(header(&headers, "authorization"), "Bearer k3y");
        assert_eq!(header(&headers, "content-type"), "application/json");
        assert_eq!(header(&headers, "content-length"), body.len().to_string());
        assert_eq!(body, br#"{"token":"t0k"}"#);

        let forward = ForwardAuth { addr, tokens };
        let (method, path, headers, body) = written(&forward);
        assert_eq!((method.as_str(), path.as_str()), ("GET", "/auth/nginx"));
        assert_eq!(header(&headers, "cookie"), format!("{COOKIE_NAME}=t0k"));
        assert!(body.is_empty());

        let create = Create {
            agent,
            next: AtomicU64::new(3),
        };
        let (method, path, _, body) = written(&create);
        assert_eq!((method.as_str(), path.as_str()), ("POST", "/v1/sessions"));
        assert_eq!(body, create_body(&SessionData::nth(3)).as_bytes());
        assert!(
            Agent::new(addr, "a key").is_err(),
            "a space cannot go in the header"
        );
    }

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
