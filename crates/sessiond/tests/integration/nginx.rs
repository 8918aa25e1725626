//! End to end with a real nginx from Debian running `examples/nginx/sessiond.conf`, a small
//! upstream that echoes the headers it receives, and sessiond, all on loopback ports.

use std::time::Duration;

use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use reqwest::redirect::Policy;

use crate::common::require;
use crate::common::web::{Site, users};

fn cookie(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get_all(SET_COOKIE)
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
        .unwrap_or_else(|| panic!("no {name} field"))
        + marker.len();
    html[start..]
        .split('"')
        .next()
        .unwrap_or("")
        .replace("&amp;", "&")
        .replace("&#39;", "'")
        .replace("&quot;", "\"")
}

struct Browser {
    http: reqwest::Client,
    base: String,
    sid: Option<String>,
}

impl Browser {
    async fn get(&self, path: &str, extra: &[(&str, &str)]) -> reqwest::Response {
        let mut req = self.http.get(format!("{}{path}", self.base));
        if let Some(sid) = &self.sid {
            req = req.header(COOKIE, format!("sessiond_session={sid}"));
        }
        for (k, v) in extra {
            req = req.header(*k, *v);
        }
        req.send().await.expect("GET")
    }

    /// Logs in through the portal behind nginx, following the redirect chain by hand.
    async fn login(&mut self, user: &str, password: &str) -> reqwest::Response {
        let anonymous = self.get("/app/page", &[]).await;
        assert_eq!(
            anonymous.status(),
            302,
            "anonymous requests go to the portal"
        );
        let location = anonymous.headers()[LOCATION].to_str().unwrap();
        // nginx makes the redirect absolute.
        let to = location
            .strip_prefix(&self.base)
            .unwrap_or(location)
            .to_owned();
        assert!(to.starts_with("/login?rd="), "{to}");
        let form = self.get(&to, &[]).await;
        let csrf_cookie = cookie(&form, "sessiond_session-csrf").expect("csrf cookie");
        let html = form.text().await.unwrap();
        let resp = self
            .http
            .post(format!("{}/login", self.base))
            .header(COOKIE, format!("sessiond_session-csrf={csrf_cookie}"))
            .form(&[
                ("username", user),
                ("password", password),
                ("csrf", &hidden(&html, "csrf")),
                ("rd", &hidden(&html, "rd")),
            ])
            .send()
            .await
            .unwrap();
        if let Some(sid) = cookie(&resp, "sessiond_session") {
            self.sid = Some(sid);
        }
        resp
    }

    async fn logout(&mut self) {
        let page = self.get("/sessions", &[]).await;
        assert_eq!(page.status(), 200);
        let html = page.text().await.unwrap();
        let resp = self
            .http
            .post(format!("{}/logout", self.base))
            .header(
                COOKIE,
                format!("sessiond_session={}", self.sid.as_deref().unwrap_or("")),
            )
            .form(&[("csrf", hidden(&html, "csrf"))])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 302);
        assert_eq!(
            cookie(&resp, "sessiond_session").as_deref(),
            Some(""),
            "the cookie is cleared"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_auth_request_protects_an_upstream() {
    let Some(nginx) = require("nginx") else {
        return;
    };
    let site = Site::start(&nginx, "2s").await;
    let (server, tmp, port) = (&site.server, &site.tmp, site.port);

    let http = reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .unwrap();
    let mut browser = Browser {
        http,
        base: format!("http://127.0.0.1:{port}"),
        sid: None,
    };

    // Login through the portal; the upstream sees who it is, and never a forged identity.
    let resp = browser.login("alice", "alice-pw").await;
    assert_eq!(resp.status(), 302);
    assert_eq!(
        resp.headers()[LOCATION],
        format!("http://127.0.0.1:{port}/app/page")
    );
    let seen = browser
        .get(
            "/app/page",
            &[("Remote-User", "mallory"), ("Remote-Groups", "admins")],
        )
        .await;
    assert_eq!(seen.status(), 200);
    let echoed = seen.text().await.unwrap().to_ascii_lowercase();
    assert!(echoed.contains("remote-user: alice"), "{echoed}");
    assert!(echoed.contains("remote-groups: staff"), "{echoed}");
    assert!(
        !echoed.contains("mallory") && !echoed.contains("admins"),
        "client-sent identity reached the upstream: {echoed}"
    );
    let token = browser.sid.clone().unwrap().to_ascii_lowercase();
    assert!(
        !echoed.contains(&token),
        "the session token reached the upstream: {echoed}"
    );
    let anonymous_forgery = reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .unwrap()
        .get(format!("http://127.0.0.1:{port}/app/page"))
        .header("Remote-User", "alice")
        .send()
        .await
        .unwrap();
    assert_eq!(
        anonymous_forgery.status(),
        302,
        "a Remote-User header alone gets nobody in"
    );

    // Logout makes the next request anonymous again.
    browser.logout().await;
    assert_eq!(browser.get("/app/page", &[]).await.status(), 302);

    // The idle timeout (2 s here) ends access. This one test waits in real time: the
    // binary runs on the wall clock; the rule itself is tested to the millisecond in-process.
    browser.login("alice", "alice-pw").await;
    assert_eq!(browser.get("/app/page", &[]).await.status(), 200);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        browser.get("/app/page", &[]).await.status(),
        302,
        "idle for longer than the timeout"
    );

    // A user disabled in the users file loses access (file watch; SIGHUP reloads too).
    browser.login("alice", "alice-pw").await;
    assert_eq!(browser.get("/app/page", &[]).await.status(), 200);
    users(tmp.path(), true);
    let mut refused = false;
    for _ in 0..50 {
        if browser.get("/app/page", &[]).await.status() == 302 {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        refused,
        "a disabled user still got in 10 s after the users file changed"
    );
    let why = server
        .admin()
        .list_sessions(Some("alice"), None, None)
        .await
        .unwrap();
    assert!(why.sessions.is_empty());
}
