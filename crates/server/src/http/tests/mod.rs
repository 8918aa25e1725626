//! The router driven in-process with a manual clock: timeouts are exact, nothing sleeps.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use sessiond_core::{ManualClock, Policy, Timestamp, TokenKey, TokenKeys};
use sessiond_store::{LocalStore, StoreOptions};
use tower::ServiceExt;

use super::{AppState, MAX_BODY_BYTES, app};

mod connections;
mod web;
use crate::config::AgentCredential;
use crate::service::Service;

const AGENT_KEY: &str = "agent-key-for-tests-0123456789";
const ADMIN_TOKEN: &str = "admin-token-for-tests-0123456789";
const T0: Timestamp = Timestamp(1_800_000_000_000);
const MIN: Duration = Duration::from_secs(60);

struct Harness {
    state: AppState,
    clock: ManualClock,
}

impl Harness {
    fn new() -> Harness {
        Harness::with_web(web_settings(), None)
    }

    fn with_web(
        settings: crate::config::WebSettings,
        directory: Option<Arc<dyn crate::directory::Directory>>,
    ) -> Harness {
        let clock = ManualClock::new(T0);
        let short = Policy {
            idle_timeout: 5 * MIN,
            max_lifetime: 60 * MIN,
            max_per_user: 2,
            on_limit: sessiond_core::OnLimit::Deny,
        };
        let service = Service {
            store: Arc::new(LocalStore::memory(StoreOptions::default())),
            keys: TokenKeys::new(vec![TokenKey::new("k1", &[7u8; 32]).unwrap()]).unwrap(),
            default_policy: Policy::default(),
            policies: [("admin-console".to_string(), short)].into(),
            ended_retention: Duration::from_secs(86400),
            clock: Arc::new(clock.clone()),
        };
        let state = AppState::new(super::Shared {
            service: Arc::new(service),
            agents: vec![AgentCredential {
                name: "web1".into(),
                sha256: sessiond_core::token::sha256(AGENT_KEY.as_bytes()),
            }]
            .into(),
            admin_sha256: sessiond_core::token::sha256(ADMIN_TOKEN.as_bytes()),
            web: Arc::new(super::WebState {
                login: crate::login::Login {
                    directory,
                    regulator: crate::regulation::Regulator::new(settings.regulation),
                },
                settings,
            }),
            closing: Arc::new(tokio::sync::watch::channel(false).0),
        });
        Harness { state, clock }
    }

    async fn call(
        &self,
        method: &str,
        uri: &str,
        cred: Option<&str>,
        body: Option<String>,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(c) = cred {
            req = req.header(header::AUTHORIZATION, format!("Bearer {c}"));
        }
        let req = match body {
            Some(b) => req
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(b))
                .unwrap(),
            None => req.body(Body::empty()).unwrap(),
        };
        let resp = app(self.state.clone()).oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        (status, value)
    }

    async fn agent(&self, uri: &str, body: Value) -> (StatusCode, Value) {
        self.call("POST", uri, Some(AGENT_KEY), Some(body.to_string()))
            .await
    }

    async fn admin(&self, method: &str, uri: &str) -> (StatusCode, Value) {
        self.call(method, uri, Some(ADMIN_TOKEN), None).await
    }

    async fn login(&self, user: &str, policy: Option<&str>) -> (String, String) {
        let mut body = json!({"user": user});
        if let Some(p) = policy {
            body["policy"] = json!(p);
        }
        let (status, v) = self.agent("/v1/sessions", body).await;
        assert_eq!(status, StatusCode::CREATED, "{v}");
        (
            v["token"].as_str().unwrap().to_owned(),
            v["session"]["id"].as_str().unwrap().to_owned(),
        )
    }
}

fn web_settings() -> crate::config::WebSettings {
    crate::config::Settings::load(None, &[], &Default::default())
        .unwrap()
        .web
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("<none>")
}

#[tokio::test]
async fn idle_timeout_on_the_api_is_exact() {
    let h = Harness::new();
    let (token, _) = h.login("alice", Some("admin-console")).await;
    h.clock.advance(4 * MIN);
    let (s, _) = h
        .agent("/v1/sessions/validate", json!({"token": token}))
        .await;
    assert_eq!(s, StatusCode::OK);
    h.clock.advance(5 * MIN - Duration::from_millis(1));
    let (s, _) = h
        .agent(
            "/v1/sessions/validate",
            json!({"token": token, "touch": false}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "touched at 4m, so live until 9m");
    h.clock.advance(Duration::from_millis(1));
    let (s, v) = h
        .agent("/v1/sessions/validate", json!({"token": token}))
        .await;
    assert_eq!((s, code(&v)), (StatusCode::GONE, "session_ended"));
    assert_eq!(v["error"]["reason"], "idle_timeout");
    assert_eq!(v["error"]["ended_at"], T0.plus(9 * MIN).to_rfc3339());
}

#[tokio::test]
async fn max_lifetime_on_the_api_is_exact() {
    let h = Harness::new();
    let (token, id) = h.login("alice", Some("admin-console")).await;
    for _ in 0..14 {
        h.clock.advance(4 * MIN);
        let (s, _) = h
            .agent("/v1/sessions/validate", json!({"token": token}))
            .await;
        assert_eq!(s, StatusCode::OK);
    }
    h.clock.advance(4 * MIN);
    let (s, v) = h
        .agent("/v1/sessions/validate", json!({"token": token}))
        .await;
    assert_eq!(
        (s, v["error"]["reason"].as_str()),
        (StatusCode::GONE, Some("max_lifetime"))
    );
    let (_, e) = h
        .admin("GET", &format!("/v1/admin/sessions/{id}/explain"))
        .await;
    assert_eq!(e["state"], "ended");
    assert_eq!(e["end_reason"], "max_lifetime");
    assert_eq!(e["end_at"], T0.plus(60 * MIN).to_rfc3339());
}

#[tokio::test]
async fn explain_tells_when_and_why_a_live_session_will_end() {
    let h = Harness::new();
    let (token, id) = h.login("bob", None).await;
    h.clock.advance(10 * MIN);
    h.agent("/v1/sessions/validate", json!({"token": token}))
        .await;
    let (s, e) = h
        .admin("GET", &format!("/v1/admin/sessions/{id}/explain"))
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(e["state"], "active");
    assert_eq!(e["end_reason"], "idle_timeout");
    assert_eq!(e["end_at"], T0.plus(40 * MIN).to_rfc3339());
    let events: Vec<&str> = e["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["event"].as_str().unwrap())
        .collect();
    assert_eq!(events, ["created", "last_access", "will_end"]);
    h.admin("DELETE", &format!("/v1/admin/sessions/{id}")).await;
    let (_, e) = h
        .admin("GET", &format!("/v1/admin/sessions/{id}/explain"))
        .await;
    assert_eq!(e["end_reason"], "terminated_by_admin");
    assert!(
        e["summary"].as_str().unwrap().contains("administrator"),
        "{e}"
    );
}

#[tokio::test]
async fn stats_never_count_an_expired_session() {
    let h = Harness::new();
    h.login("carol", Some("admin-console")).await;
    h.login("dave", None).await;
    let (_, s) = h.admin("GET", "/v1/admin/stats").await;
    assert_eq!(s["active_sessions"], 2);
    assert_eq!(s["store"], "memory");
    h.clock.advance(5 * MIN);
    let (_, s) = h.admin("GET", "/v1/admin/stats").await;
    assert_eq!(
        s["active_sessions"], 1,
        "counted out at its deadline, no sweep interval: {s}"
    );
    assert_eq!(s["ended_by_reason"]["idle_timeout"], 1);
    assert_eq!(s["sessions_per_policy"]["default"], 1);
}

#[tokio::test]
async fn limits_from_the_named_policy_apply() {
    let h = Harness::new();
    h.login("erin", Some("admin-console")).await;
    h.login("erin", Some("admin-console")).await;
    let (s, v) = h
        .agent(
            "/v1/sessions",
            json!({"user": "erin", "policy": "admin-console"}),
        )
        .await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::CONFLICT, "session_limit_reached")
    );
    assert_eq!(v["error"]["limit"], 2);
}

#[tokio::test]
async fn bad_bodies_get_contract_errors_and_change_nothing() {
    let h = Harness::new();
    let cases: Vec<(&str, String, &str)> = vec![
        ("/v1/sessions", "{not json".into(), "invalid_request"),
        (
            "/v1/sessions",
            json!({"user": "x", "colour": "red"}).to_string(),
            "invalid_request",
        ),
        ("/v1/sessions", json!({}).to_string(), "invalid_request"),
        (
            "/v1/sessions",
            json!({"user": ""}).to_string(),
            "invalid_request",
        ),
        (
            "/v1/sessions",
            json!({"user": "x", "policy": "nope"}).to_string(),
            "invalid_request",
        ),
        (
            "/v1/sessions",
            json!({"user": "x", "client": {"ip": "300.1.1.1"}}).to_string(),
            "invalid_request",
        ),
        (
            "/v1/sessions",
            json!({"user": "x", "auth_level": "high"}).to_string(),
            "invalid_request",
        ),
        (
            "/v1/sessions",
            format!("{{\"user\":\"{}\"}}", "a".repeat(MAX_BODY_BYTES)),
            "payload_too_large",
        ),
        (
            "/v1/sessions/validate",
            json!({"token": "garbage"}).to_string(),
            "invalid_token",
        ),
        (
            "/v1/sessions/validate",
            json!({"tokn": "x"}).to_string(),
            "invalid_request",
        ),
        (
            "/v1/sessions/logout",
            json!({"token": 5}).to_string(),
            "invalid_request",
        ),
    ];
    for (uri, body, want) in cases {
        let (_, v) = h
            .call("POST", uri, Some(AGENT_KEY), Some(body.clone()))
            .await;
        assert_eq!(code(&v), want, "{uri} {}", &body[..body.len().min(80)]);
    }
    let (_, s) = h.admin("GET", "/v1/admin/stats").await;
    assert_eq!(s["active_sessions"], 0);
}

/// A bad body's message says what is wrong with it: the field at fault (the path
/// `axum::Json` reports, which the fast parse alone would lose) or the missing type.
#[tokio::test]
async fn body_errors_name_what_is_wrong() {
    let h = Harness::new();
    let message = |v: &Value| {
        v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    let (_, v) = h
        .agent("/v1/sessions", json!({"user": "x", "auth_level": "high"}))
        .await;
    assert_eq!(code(&v), "invalid_request");
    assert!(message(&v).contains("auth_level"), "{v}");
    let (_, v) = h
        .agent("/v1/sessions", json!({"user": "x", "client": {"ip": 5}}))
        .await;
    assert!(message(&v).contains("client.ip"), "{v}");
    let untyped = Request::post("/v1/sessions/validate")
        .header(header::AUTHORIZATION, format!("Bearer {AGENT_KEY}"))
        .body(Body::from(json!({"token": "k1.a.b"}).to_string()))
        .unwrap();
    let resp = app(h.state.clone()).oneshot(untyped).await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let v: Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(code(&v), "invalid_request");
    assert!(message(&v).contains("Content-Type"), "{v}");
}

#[tokio::test]
async fn credentials_are_kept_apart() {
    let h = Harness::new();
    let (s, v) = h
        .call("GET", "/v1/admin/stats", Some(AGENT_KEY), None)
        .await;
    assert_eq!((s, code(&v)), (StatusCode::UNAUTHORIZED, "unauthorized"));
    let (s, _) = h
        .call(
            "POST",
            "/v1/sessions",
            Some(ADMIN_TOKEN),
            Some(json!({"user": "x"}).to_string()),
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = h
        .call(
            "POST",
            "/v1/sessions",
            None,
            Some(json!({"user": "x"}).to_string()),
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = h
        .call(
            "POST",
            "/v1/sessions",
            Some("wrong"),
            Some(json!({"user": "x"}).to_string()),
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn oversized_headers_are_refused() {
    let h = Harness::new();
    // Through the router, and on each route that skips it.
    for (method, uri) in [
        ("GET", "/healthz"),
        ("POST", "/v1/sessions/validate"),
        ("POST", "/v1/sessions"),
        ("GET", "/auth/nginx"),
        ("GET", "/auth/forward"),
    ] {
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::AUTHORIZATION, format!("Bearer {AGENT_KEY}"))
            .header("x-junk", "a".repeat(super::MAX_HEADER_BYTES + 1))
            .body(Body::empty())
            .unwrap();
        let resp = app(h.state.clone()).oneshot(req).await.unwrap();
        assert_eq!(
            resp.status(),
            StatusCode::PAYLOAD_TOO_LARGE,
            "{method} {uri}"
        );
    }
}

/// The hot routes skip the router, which still knows their paths: another method on them
/// is `405`, not an unknown route.
#[tokio::test]
async fn the_hot_routes_answer_other_methods_as_the_router_does() {
    let h = Harness::new();
    for (method, uri) in [
        ("GET", "/v1/sessions/validate"),
        ("GET", "/v1/sessions"),
        ("POST", "/auth/nginx"),
        ("DELETE", "/auth/forward"),
    ] {
        let (s, _) = h.call(method, uri, Some(AGENT_KEY), None).await;
        assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED, "{method} {uri}");
    }
}

/// A connection remembers the agent key that passed on it, and nothing else: another key
/// of the same length is refused on it, and a key that failed first is never remembered.
#[tokio::test]
async fn a_connection_remembers_only_an_agent_key_that_passed() {
    let h = Harness::new();
    let (token, _) = h.login("alice", None).await;
    let validate = |key: &str| {
        Request::post("/v1/sessions/validate")
            .header(header::AUTHORIZATION, format!("Bearer {key}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(json!({ "token": token }).to_string()))
            .unwrap()
    };
    let forged = "x".repeat(AGENT_KEY.len());
    async fn on(h: &Harness, conn: &super::Connection, req: Request<Body>) -> StatusCode {
        app(h.state.clone()).handle_on(conn, req).await.status()
    }
    let conn = super::Connection::new(([127, 0, 0, 1], 50000).into());
    assert_eq!(on(&h, &conn, validate(AGENT_KEY)).await, StatusCode::OK);
    assert_eq!(on(&h, &conn, validate(AGENT_KEY)).await, StatusCode::OK);
    assert_eq!(
        on(&h, &conn, validate(&forged)).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        on(&h, &conn, validate("short")).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(on(&h, &conn, validate(AGENT_KEY)).await, StatusCode::OK);

    let conn = super::Connection::new(([127, 0, 0, 1], 50001).into());
    assert_eq!(
        on(&h, &conn, validate(&forged)).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        on(&h, &conn, validate(&forged)).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(on(&h, &conn, validate(AGENT_KEY)).await, StatusCode::OK);
}

#[tokio::test]
async fn oversized_bodies_are_refused_on_the_routes_that_skip_the_router() {
    let h = Harness::new();
    for (uri, field) in [("/v1/sessions/validate", "token"), ("/v1/sessions", "user")] {
        let body = format!("{{\"{field}\":\"{}\"}}", "a".repeat(MAX_BODY_BYTES));
        let (s, v) = h.call("POST", uri, Some(AGENT_KEY), Some(body)).await;
        assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{uri}");
        assert_eq!(v["error"]["code"], "payload_too_large", "{uri}");
    }
}

/// A store whose every call fails, as an unreachable store would.
#[derive(Debug)]
struct Unreachable;

#[async_trait::async_trait]
impl sessiond_store::SessionStore for Unreachable {
    fn kind(&self) -> &'static str {
        "unreachable"
    }
    async fn create(
        &self,
        _: sessiond_core::Session,
        _: sessiond_core::policy::UserLimit,
        _: Timestamp,
    ) -> Result<sessiond_store::Created, StoreError> {
        Err(down())
    }
    async fn validate(
        &self,
        _: sessiond_core::SessionId,
        _: &sessiond_core::Verifier,
        _: bool,
        _: Timestamp,
    ) -> Result<sessiond_store::Lookup, StoreError> {
        Err(down())
    }
    async fn get(
        &self,
        _: sessiond_core::SessionId,
        _: Timestamp,
    ) -> Result<sessiond_store::Lookup, StoreError> {
        Err(down())
    }
    async fn update(
        &self,
        _: sessiond_core::SessionId,
        _: &sessiond_core::Verifier,
        _: &sessiond_store::AttributeChange,
        _: Option<u64>,
        _: Timestamp,
    ) -> Result<sessiond_store::Updated, StoreError> {
        Err(down())
    }
    async fn end(
        &self,
        _: sessiond_core::SessionId,
        _: Option<&sessiond_core::Verifier>,
        _: sessiond_core::EndReason,
        _: Timestamp,
    ) -> Result<sessiond_store::Ended, StoreError> {
        Err(down())
    }
    async fn end_user(
        &self,
        _: &str,
        _: sessiond_core::EndReason,
        _: Timestamp,
    ) -> Result<u64, StoreError> {
        Err(down())
    }
    async fn list(
        &self,
        _: Option<&str>,
        _: Option<sessiond_core::SessionId>,
        _: usize,
        _: Timestamp,
    ) -> Result<sessiond_store::Page, StoreError> {
        Err(down())
    }
    async fn sweep(&self, _: Timestamp) -> Result<sessiond_store::SweepReport, StoreError> {
        Err(down())
    }
    async fn flush_touches(&self) -> Result<u64, StoreError> {
        Err(down())
    }
    async fn stats(&self) -> Result<sessiond_store::StoreStats, StoreError> {
        Err(down())
    }
    async fn events(&self, _: Option<&str>) -> Result<sessiond_store::Feed, StoreError> {
        Err(down())
    }
    async fn ping(&self) -> Result<(), StoreError> {
        Err(down())
    }
    async fn close(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

use sessiond_store::StoreError;

fn down() -> StoreError {
    StoreError::Unavailable("connection refused to 10.1.2.3:6379".into())
}

#[tokio::test]
async fn an_unreachable_store_fails_closed() {
    let mut h = Harness::new();
    // A token minted while the store was up.
    let (token, _) = h.login("zoe", None).await;
    let mut service = (*h.state.service).clone();
    service.store = Arc::new(Unreachable);
    h.state = AppState::new(super::Shared {
        service: Arc::new(service),
        ..(*h.state).clone()
    });

    let (s, v) = h
        .agent("/v1/sessions/validate", json!({"token": token}))
        .await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable")
    );
    assert!(
        !v.to_string().contains("10.1.2.3"),
        "no internals in the answer: {v}"
    );
    let (s, _) = h.agent("/v1/sessions", json!({"user": "zoe"})).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    let (s, _) = h.call("GET", "/readyz", None, None).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    let (s, _) = h.call("GET", "/healthz", None, None).await;
    assert_eq!(s, StatusCode::OK, "the process is up");
    // Forward auth with a well-formed cookie: 503, never 200.
    let req = Request::get("/auth/nginx")
        .header(header::COOKIE, format!("__Host-sessiond={token}"))
        .body(Body::empty())
        .unwrap();
    let resp = app(h.state.clone()).oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(resp.headers().get("remote-user").is_none());
    // A garbled token is still refused by its MAC, before the store is asked.
    let (s, v) = h
        .agent("/v1/sessions/validate", json!({"token": "k1.x.y"}))
        .await;
    assert_eq!((s, code(&v)), (StatusCode::UNAUTHORIZED, "invalid_token"));
}

/// Reads SSE frames from `body` until one contains `needle` (5 s at most).
async fn read_until(body: &mut Body, needle: &str) -> String {
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !text.contains(needle) {
        let frame = tokio::time::timeout_at(deadline, body.frame())
            .await
            .unwrap_or_else(|_| panic!("no `{needle}` within 5 s; got {text}"))
            .expect("stream open")
            .unwrap();
        if let Ok(data) = frame.into_data() {
            text.push_str(&String::from_utf8_lossy(&data));
        }
    }
    text
}

#[tokio::test]
async fn the_event_stream_tells_agents_what_changed_and_resumes() {
    let h = Harness::new();
    let req = |last: Option<&str>| {
        let mut r =
            Request::get("/v1/events").header(header::AUTHORIZATION, format!("Bearer {AGENT_KEY}"));
        if let Some(id) = last {
            r = r.header("last-event-id", id);
        }
        r.body(Body::empty()).unwrap()
    };
    let resp = app(h.state.clone()).oneshot(req(None)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()[header::CONTENT_TYPE], "text/event-stream");
    let mut body = resp.into_body();
    let (token, id) = h.login("yan", None).await;
    let created = read_until(&mut body, "event: created").await;
    assert!(created.contains(&id));
    assert!(!created.contains(&token), "never a token");
    let event_id = created
        .lines()
        .find_map(|l| l.strip_prefix("id: "))
        .expect("an event id")
        .to_owned();
    h.agent("/v1/sessions/logout", json!({"token": token}))
        .await;
    let ended = read_until(&mut body, "event: ended").await;
    assert!(ended.contains("\"reason\":\"logged_out\""), "{ended}");

    let mut resumed = app(h.state.clone())
        .oneshot(req(Some(&event_id)))
        .await
        .unwrap()
        .into_body();
    let replay = read_until(&mut resumed, "event: ended").await;
    assert!(
        !replay.contains("event: created"),
        "resumes after the last seen event: {replay}"
    );
    let mut reset = app(h.state.clone())
        .oneshot(req(Some("bogus")))
        .await
        .unwrap()
        .into_body();
    read_until(&mut reset, "event: reset").await;
    let (s, _) = h.call("GET", "/v1/events", Some(ADMIN_TOKEN), None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "agent credential only");
}
