//! A fake sessiond for the client's tests: HTTP/1.1 spoken by hand over a real socket.
//!
//! It answers `POST /v1/sessions/validate` from a table of scripted answers and keeps
//! every `GET /v1/events` connection open, writing whatever the test pushes with
//! [`FakeServer::send`] to all of them, until [`FakeServer::close_streams`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, broadcast};

use crate::v1;

/// The head of a healthy event-stream answer; the body runs until the connection closes.
pub(crate) const SSE_HEAD: &str =
    "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n\r\n";

/// A session as the server would answer it.
pub(crate) fn session(id: &str, user: &str) -> v1::Session {
    serde_json::from_str(&session_json(id, user)).unwrap()
}

pub(crate) fn session_json(id: &str, user: &str) -> String {
    format!(
        r#"{{"id":"{id}","user":"{user}","auth_level":0,"attributes":{{}},"client":{{}},
        "policy":"default","created_at":"2025-01-01T00:00:00Z",
        "last_access_at":"2025-01-01T00:00:00Z","idle_expires_at":"2025-01-01T00:30:00Z",
        "expires_at":"2025-01-01T12:00:00Z","version":1}}"#
    )
}

/// One SSE event as the real server writes it.
pub(crate) fn sse(id: &str, kind: &str, session: &str) -> String {
    let data = match kind {
        "reset" => r#"{"reason":"history_unavailable"}"#.to_owned(),
        "ended" => format!(
            r#"{{"id":"{session}","user":"alice","version":2,"reason":"logged_out","at":"2026-11-21T10:00:00.000Z"}}"#
        ),
        _ => format!(
            r#"{{"id":"{session}","user":"alice","version":2,"at":"2026-11-21T10:00:00.000Z"}}"#
        ),
    };
    format!("id: {id}\nevent: {kind}\ndata: {data}\n\n")
}

/// Waits (for real, up to 10 s) until `cond` holds.
pub(crate) async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

#[derive(Clone, Debug)]
enum Feed {
    Send(String),
    Close,
}

/// What the fake saw and will answer.
#[derive(Default)]
pub(crate) struct Script {
    /// token → (status line, body) for validate; unknown tokens get `404`.
    pub(crate) answers: HashMap<String, (String, String)>,
    /// Every validate call: (token, touch).
    pub(crate) validations: Vec<(String, bool)>,
    /// The raw head of every events request.
    pub(crate) event_requests: Vec<String>,
    /// The head sent to events requests; `None` means [`SSE_HEAD`].
    pub(crate) events_head: Option<String>,
    /// When set, validate answers wait for a notification after recording the call.
    pub(crate) hold_validations: Option<Arc<Notify>>,
}

pub(crate) struct FakeServer {
    pub(crate) base: String,
    script: Arc<Mutex<Script>>,
    feed: broadcast::Sender<Feed>,
    open: Arc<AtomicUsize>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.accept.abort();
        let _ = self.feed.send(Feed::Close);
    }
}

impl FakeServer {
    pub(crate) async fn start() -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let script = Arc::new(Mutex::new(Script::default()));
        let (feed, _) = broadcast::channel(1024);
        let open = Arc::new(AtomicUsize::new(0));
        let accept = tokio::spawn({
            let (script, feed, open) = (script.clone(), feed.clone(), open.clone());
            async move {
                loop {
                    let Ok((socket, _)) = listener.accept().await else {
                        return;
                    };
                    let conn = Conn {
                        script: script.clone(),
                        feed: feed.clone(),
                        open: open.clone(),
                    };
                    tokio::spawn(conn.serve(socket));
                }
            }
        });
        FakeServer {
            base,
            script,
            feed,
            open,
            accept,
        }
    }

    /// Edits the script.
    pub(crate) fn script<R>(&self, f: impl FnOnce(&mut Script) -> R) -> R {
        f(&mut self.script.lock().unwrap())
    }

    /// Makes validate answer `session` for `token`.
    pub(crate) fn valid(&self, token: &str, id: &str) {
        let body = format!(r#"{{"session":{}}}"#, session_json(id, "alice"));
        self.answer(token, "200 OK", &body);
    }

    pub(crate) fn answer(&self, token: &str, status: &str, body: &str) {
        self.script(|s| {
            s.answers
                .insert(token.to_owned(), (status.to_owned(), body.to_owned()))
        });
    }

    pub(crate) fn validations(&self) -> Vec<(String, bool)> {
        self.script(|s| s.validations.clone())
    }

    pub(crate) fn event_requests(&self) -> Vec<String> {
        self.script(|s| s.event_requests.clone())
    }

    /// Writes `text` to every open event stream.
    pub(crate) fn send(&self, text: &str) {
        let _ = self.feed.send(Feed::Send(text.to_owned()));
    }

    /// Closes every open event stream.
    pub(crate) fn close_streams(&self) {
        let _ = self.feed.send(Feed::Close);
    }

    /// How many event streams are open.
    pub(crate) fn open_streams(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }
}

struct Conn {
    script: Arc<Mutex<Script>>,
    feed: broadcast::Sender<Feed>,
    open: Arc<AtomicUsize>,
}

impl Conn {
    async fn serve(self, mut socket: TcpStream) {
        let Some((head, body)) = read_request(&mut socket).await else {
            return;
        };
        if head.starts_with("GET /v1/events ") {
            self.stream(socket, head).await;
        } else if head.starts_with("POST /v1/sessions/validate ") {
            let request: v1::ValidateRequest = serde_json::from_slice(&body).unwrap();
            let hold = {
                let mut script = self.script.lock().unwrap();
                script
                    .validations
                    .push((request.token.clone(), request.touch));
                script.hold_validations.clone()
            };
            if let Some(hold) = hold {
                hold.notified().await;
            }
            let (status, body) = self
                .script
                .lock()
                .unwrap()
                .answers
                .get(&request.token)
                .cloned()
                .unwrap_or((
                    "404 Not Found".to_owned(),
                    r#"{"error":{"code":"session_not_found","message":"no such session"}}"#
                        .to_owned(),
                ));
            let response = format!(
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\n\
                 content-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = socket.write_all(response.as_bytes()).await;
            let _ = socket.shutdown().await;
        }
    }

    async fn stream(self, mut socket: TcpStream, head: String) {
        // Subscribe before answering, so nothing sent after the client sees the head is lost.
        let mut feed = self.feed.subscribe();
        let answer = {
            let mut script = self.script.lock().unwrap();
            script.event_requests.push(head);
            script
                .events_head
                .clone()
                .unwrap_or_else(|| SSE_HEAD.to_owned())
        };
        if socket.write_all(answer.as_bytes()).await.is_err() {
            return;
        }
        self.open.fetch_add(1, Ordering::SeqCst);
        let mut buf = [0u8; 512];
        loop {
            tokio::select! {
                msg = feed.recv() => match msg {
                    Ok(Feed::Send(text)) => {
                        if socket.write_all(text.as_bytes()).await.is_err() {
                            break;
                        }
                    }
                    Ok(Feed::Close) | Err(_) => break,
                },
                n = socket.read(&mut buf) => {
                    if !matches!(n, Ok(n) if n > 0) {
                        break;
                    }
                }
            }
        }
        self.open.fetch_sub(1, Ordering::SeqCst);
        let _ = socket.shutdown().await;
    }
}

/// Reads one request: its head (lower-cased header names kept as sent) and body.
pub(crate) async fn read_request(socket: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut request = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = socket.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        request.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&request).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            if request.len() >= end + 4 + length {
                return Some((text[..end].to_owned(), request[end + 4..].to_vec()));
            }
        }
    }
}
