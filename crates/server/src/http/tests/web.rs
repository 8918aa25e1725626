//! The web-agent role in-process: logins, regulation, the portal's forms, forward auth.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::json;
use tower::ServiceExt;

use super::{ADMIN_TOKEN, Harness, code, web_settings};
use crate::directory::{Directory, FileDirectory, hash_password};
use crate::http::app;

const PROXY: &str = "127.0.0.1:40000";
const BROWSER: &str = "192.0.2.50:51000";

fn users_file(dir: &std::path::Path) -> Arc<dyn Directory> {
    let path = dir.join("users.toml");
    let text = format!(
        "[users.alice]\npassword = \"{}\"\nuniversal_id = \"cust-1001\"\ngroups = [\"staff\", \"ops\"]\n\
[users.bob]\npassword = \"{}\"\n",
        hash_password("alice-pw").unwrap(),
        hash_password("bob-pw").unwrap()
    );
    std::fs::write(&path, text).unwrap();
    Arc::new(FileDirectory::load(&path).unwrap())
}

fn harness(dir: &std::path::Path) -> Harness {
    let mut s = web_settings();
    s.cookie.secure = false;
    s.cookie.name = "sid".into();
    s.allowed_redirect_hosts = vec!["app.example.com".into()];
    s.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    s.portal_url = Some("https://auth.example.com".into());
    s.passive_paths = vec!["/poll".into()];
    Harness::with_web(s, Some(users_file(dir)))
}

impl Harness {
    async fn raw(&self, req: Request<Body>) -> (Response<Body>, String) {
        let resp = app(self.state.clone()).oneshot(req).await.unwrap();
        let (parts, body) = resp.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        (
            Response::from_parts(parts, Body::empty()),
            String::from_utf8_lossy(&bytes).into_owned(),
        )
    }
}

fn from(peer: &str, req: axum::http::request::Builder) -> axum::http::request::Builder {
    req.extension(ConnectInfo(peer.parse::<SocketAddr>().unwrap()))
}

fn set_cookie(resp: &Response<Body>, name: &str) -> Option<String> {
    resp.headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(|v| {
            v[name.len() + 1..]
                .split(';')
                .next()
                .unwrap_or("")
                .to_owned()
        })
}

fn hidden(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html
        .find(&marker)
        .unwrap_or_else(|| panic!("no {name} in {html}"))
        + marker.len();
    html[start..].split('"').next().unwrap().to_owned()
}

fn form(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| {
            format!(
                "{k}={}",
                percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC)
            )
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// Logs in through the portal; returns the session cookie's value.
async fn portal_login(h: &Harness, user: &str, password: &str) -> String {
    let (page, html) = h
        .raw(
            from(BROWSER, Request::get("/login?rd=https://app.example.com/x"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(page.status(), StatusCode::OK);
    let csrf_cookie = set_cookie(&page, "sid-csrf").expect("csrf cookie");
    let body = form(&[
        ("username", user),
        ("password", password),
        ("csrf", &hidden(&html, "csrf")),
        ("rd", &hidden(&html, "rd")),
    ]);
    let req = from(BROWSER, Request::post("/login"))
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::COOKIE, format!("sid-csrf={csrf_cookie}"))
        .header(header::USER_AGENT, "test-browser/1")
        .body(Body::from(body))
        .unwrap();
    let (resp, _) = h.raw(req).await;
    assert_eq!(resp.status(), StatusCode::FOUND);
    assert_eq!(
        resp.headers()[header::LOCATION],
        "https://app.example.com/x"
    );
    let set = resp
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect::<Vec<_>>();
    assert!(
        set.iter()
            .any(|c| c.starts_with("sid=") && c.contains("HttpOnly") && c.contains("SameSite=Lax")),
        "{set:?}"
    );
    set_cookie(&resp, "sid").unwrap()
}

#[tokio::test]
async fn api_login_answers_one_error_for_unknown_users_and_wrong_passwords() {
    let dir = tempfile::tempdir().unwrap();
    let h = harness(dir.path());
    let (s, v) = h
        .agent(
            "/v1/login",
            json!({"username": "alice", "password": "alice-pw"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["session"]["universal_id"], "cust-1001");
    assert_eq!(v["session"]["auth_level"], 1);
    let (s1, wrong) = h
        .agent(
            "/v1/login",
            json!({"username": "alice", "password": "nope"}),
        )
        .await;
    let (s2, unknown) = h
        .agent(
            "/v1/login",
            json!({"username": "mallory", "password": "nope"}),
        )
        .await;
    assert_eq!(
        (s1, s2),
        (StatusCode::UNAUTHORIZED, StatusCode::UNAUTHORIZED)
    );
    assert_eq!(wrong, unknown, "no difference an attacker could read");
    assert_eq!(code(&wrong), "invalid_credentials");
}

#[tokio::test]
async fn regulation_bans_after_three_failures_even_with_the_right_password() {
    let dir = tempfile::tempdir().unwrap();
    let h = harness(dir.path());
    for _ in 0..3 {
        h.agent(
            "/v1/login",
            json!({"username": "bob", "password": "x", "client": {"ip": "198.51.100.9"}}),
        )
        .await;
    }
    let (s, v) = h
        .agent(
            "/v1/login",
            json!({"username": "bob", "password": "bob-pw"}),
        )
        .await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::TOO_MANY_REQUESTS, "too_many_attempts")
    );
    assert_eq!(v["error"]["retry_after"], 300);
    // The IP is banned too, for another user.
    let (s, _) = h
        .agent(
            "/v1/login",
            json!({"username": "alice", "password": "alice-pw", "client": {"ip": "198.51.100.9"}}),
        )
        .await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
    h.clock.advance(std::time::Duration::from_secs(301));
    let (s, _) = h
        .agent(
            "/v1/login",
            json!({"username": "bob", "password": "bob-pw"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "the ban ends");
}

#[tokio::test]
async fn portal_login_needs_the_forms_csrf_and_redirects_only_to_allowed_hosts() {
    let dir = tempfile::tempdir().unwrap();
    let h = harness(dir.path());
    let sid = portal_login(&h, "alice", "alice-pw").await;
    assert!(sid.starts_with("k1."));

    // No csrf cookie: refused, no session cookie.
    let body = form(&[
        ("username", "alice"),
        ("password", "alice-pw"),
        ("csrf", "x"),
        ("rd", ""),
    ]);
    let req = from(BROWSER, Request::post("/login"))
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(body))
        .unwrap();
    let (resp, _) = h.raw(req).await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert!(set_cookie(&resp, "sid").is_none());

    // An rd off the allow-list is not echoed into the form.
    let (_, html) = h
        .raw(
            from(BROWSER, Request::get("/login?rd=https://evil.com/"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(hidden(&html, "rd"), "");
}

#[tokio::test]
async fn forward_auth_answers_identity_or_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let h = harness(dir.path());
    let sid = portal_login(&h, "alice", "alice-pw").await;

    let session = h.state.service.validate(&sid, false).await.unwrap();
    // GET is answered past the router; HEAD goes through the router's copy of the route.
    for check in [Request::get("/auth/nginx"), Request::head("/auth/nginx")] {
        let (resp, _) = h
            .raw(
                from(PROXY, check)
                    .header(header::COOKIE, format!("sid={sid}"))
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(resp.status(), StatusCode::OK);
        let hd = resp.headers();
        assert_eq!(hd["remote-user"], "alice");
        assert_eq!(hd["remote-groups"], "staff,ops");
        assert_eq!(hd["remote-universal-id"], "cust-1001");
        assert_eq!(hd["remote-auth-level"], "1");
        assert_eq!(hd["remote-session-id"], session.id.to_string().as_str());
        assert_eq!(
            hd[header::CACHE_CONTROL],
            "no-store",
            "a verdict is never reused"
        );
    }

    let bad_cookies = [
        String::new(),
        "sid=garbage".into(),
        format!("sid={}", "A".repeat(500)),
        format!("sid={sid}x"),
        format!("sid={sid}; sid=k1.other.cookie"),
        "sid=\"><script>".into(),
    ];
    for c in &bad_cookies {
        let mut req = from(PROXY, Request::get("/auth/nginx"));
        if !c.is_empty() {
            req = req.header(header::COOKIE, c);
        }
        let (resp, _) = h.raw(req.body(Body::empty()).unwrap()).await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{c}");
        assert!(resp.headers().get("remote-user").is_none());
        assert_eq!(resp.headers()[header::CACHE_CONTROL], "no-store", "{c}");
    }

    // /auth/forward: a redirect to the portal with rd from the trusted proxy.
    let req = from(PROXY, Request::get("/auth/forward"))
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "app.example.com")
        .header("x-forwarded-uri", "/page?a=1")
        .body(Body::empty())
        .unwrap();
    let (resp, _) = h.raw(req).await;
    assert_eq!(resp.status(), StatusCode::FOUND);
    assert_eq!(
        resp.headers()[header::LOCATION],
        "https://auth.example.com/login?rd=https%3A%2F%2Fapp%2Eexample%2Ecom%2Fpage%3Fa%3D1"
    );
    // The same headers from an untrusted address, or pointing off the allow-list: 401.
    for (peer, host) in [(BROWSER, "app.example.com"), (PROXY, "evil.com")] {
        let req = from(peer, Request::get("/auth/forward"))
            .header("x-forwarded-proto", "https")
            .header("x-forwarded-host", host)
            .header("x-forwarded-uri", "/")
            .body(Body::empty())
            .unwrap();
        let (resp, _) = h.raw(req).await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{peer} {host}");
    }
    // Garbage forwarded headers from the trusted proxy never pass, even with a good cookie.
    let req = from(PROXY, Request::get("/auth/nginx"))
        .header(header::COOKIE, format!("sid={sid}"))
        .header("x-forwarded-uri", "//evil")
        .body(Body::empty())
        .unwrap();
    assert_eq!(h.raw(req).await.0.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn passive_checks_do_not_slide_the_idle_timer() {
    let dir = tempfile::tempdir().unwrap();
    let h = harness(dir.path());
    let sid = portal_login(&h, "alice", "alice-pw").await;
    let id = sessiond_core::TokenKeys::verify(&h.state.service.keys, &sid)
        .unwrap()
        .0
        .to_string();
    let last_access = || async {
        h.call(
            "GET",
            &format!("/v1/admin/sessions/{id}"),
            Some(ADMIN_TOKEN),
            None,
        )
        .await
        .1["session"]["last_access_at"]
            .clone()
    };
    let before = last_access().await;
    h.clock.advance(std::time::Duration::from_secs(60));
    let req = |extra: Option<(&'static str, &'static str)>| {
        let mut r =
            from(PROXY, Request::get("/auth/nginx")).header(header::COOKIE, format!("sid={sid}"));
        if let Some((k, v)) = extra {
            r = r.header(k, v);
        }
        r.body(Body::empty()).unwrap()
    };
    assert_eq!(
        h.raw(req(Some(("x-sessiond-touch", "0")))).await.0.status(),
        StatusCode::OK
    );
    assert_eq!(
        h.raw(req(Some(("x-original-uri", "/poll/inbox"))))
            .await
            .0
            .status(),
        StatusCode::OK
    );
    assert_eq!(last_access().await, before, "polling is not activity");
    assert_eq!(h.raw(req(None)).await.0.status(), StatusCode::OK);
    assert_ne!(last_access().await, before);
}

#[tokio::test]
async fn self_service_ends_own_sessions_only_and_logout_ends_this_one() {
    let dir = tempfile::tempdir().unwrap();
    let h = harness(dir.path());
    let mine = portal_login(&h, "alice", "alice-pw").await;
    let other_mine = portal_login(&h, "alice", "alice-pw").await;
    let bobs = portal_login(&h, "bob", "bob-pw").await;
    let id_of = |t: &str| h.state.service.keys.verify(t).unwrap().0.to_string();

    let page = |sid: String| {
        from(BROWSER, Request::get("/sessions"))
            .header(header::COOKIE, format!("sid={sid}"))
            .body(Body::empty())
            .unwrap()
    };
    let (resp, html) = h.raw(page(mine.clone())).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(html.contains("This session") && html.contains(&id_of(&other_mine)));
    assert!(
        !html.contains(&id_of(&bobs)),
        "never another user's sessions"
    );
    let csrf = hidden(&html, "csrf");

    let post = |path: &'static str, body: String| {
        from(BROWSER, Request::post(path))
            .header(header::COOKIE, format!("sid={mine}"))
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(body))
            .unwrap()
    };
    // Bob's session id, with alice's valid form: refused, and bob is still signed in.
    let (resp, _) = h
        .raw(post(
            "/sessions/end",
            form(&[("csrf", &csrf), ("id", &id_of(&bobs))]),
        ))
        .await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let (resp, _) = h
        .raw(
            from(PROXY, Request::get("/auth/nginx"))
                .header(header::COOKIE, format!("sid={bobs}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    // A forged form: refused.
    let (resp, _) = h
        .raw(post(
            "/sessions/end",
            form(&[("csrf", "forged"), ("id", &id_of(&other_mine))]),
        ))
        .await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    // Her own other session: ended as terminated_by_user.
    let (resp, _) = h
        .raw(post(
            "/sessions/end",
            form(&[("csrf", &csrf), ("id", &id_of(&other_mine))]),
        ))
        .await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let (_, e) = h
        .call(
            "GET",
            &format!("/v1/admin/sessions/{}/explain", id_of(&other_mine)),
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(e["end_reason"], "terminated_by_user");

    let (resp, _) = h.raw(post("/logout", form(&[("csrf", &csrf)]))).await;
    assert_eq!(resp.status(), StatusCode::FOUND);
    assert!(
        resp.headers()
            .get_all(header::SET_COOKIE)
            .iter()
            .any(|v| v.to_str().unwrap().starts_with("sid=; Max-Age=0"))
    );
    let (resp, _) = h
        .raw(
            from(PROXY, Request::get("/auth/nginx"))
                .header(header::COOKIE, format!("sid={mine}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn answers_that_carry_a_token_may_not_be_stored_by_a_cache() {
    let dir = tempfile::tempdir().unwrap();
    let h = harness(dir.path());
    let post = |uri: &str, body: serde_json::Value| {
        Request::post(uri)
            .header(
                header::AUTHORIZATION,
                format!("Bearer {}", super::AGENT_KEY),
            )
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .unwrap()
    };
    let login = json!({"username": "alice", "password": "alice-pw"});
    for req in [
        post("/v1/sessions", json!({"user": "alice"})),
        post("/v1/login", login),
    ] {
        let uri = req.uri().clone();
        let (resp, body) = h.raw(req).await;
        assert_eq!(resp.status(), StatusCode::CREATED, "{uri}: {body}");
        assert!(body.contains("\"token\""), "{uri}: {body}");
        assert_eq!(
            resp.headers()
                .get(header::CACHE_CONTROL)
                .map(|v| v.as_bytes()),
            Some(&b"no-store"[..]),
            "{uri}"
        );
    }
}
