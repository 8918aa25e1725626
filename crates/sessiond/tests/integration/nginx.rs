//! End to end with a real nginx from Debian running `examples/nginx/sessiond.conf`, a small
//! upstream that echoes the headers it receives, and sessiond, all on loopback ports.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use reqwest::redirect::Policy;

use crate::common::{Reaper, Server, data_dir, echo_upstream, free_port, require, wait_for_port};

const EXAMPLE: &str = include_str!("../../../../examples/nginx/sessiond.conf");

fn users(dir: &Path, alice_disabled: bool) -> std::path::PathBuf {
    let path = dir.join("users.toml");
    let hash = sessiond_server::directory::hash_password("alice-pw").expect("hash");
    let text = format!(
        "[users.alice]\npassword = \"{hash}\"\ngroups = [\"staff\"]\ndisabled = {alice_disabled}\n"
    );
    // Written whole, then renamed: the server never reads half a file.
    let tmp = dir.join("users.toml.tmp");
    std::fs::write(&tmp, text).expect("write users");
    std::fs::rename(&tmp, &path).expect("rename users");
    path
}

/// nginx with the example config, its ports rewritten; killed on drop.
fn start_nginx(nginx: &Path, dir: &Path, port: u16, sessiond: &str, upstream: u16) -> Reaper {
    let site = EXAMPLE
        .replace("127.0.0.1:7480", sessiond)
        .replace("127.0.0.1:8081", &format!("127.0.0.1:{upstream}"))
        .replace("listen 127.0.0.1:8080", &format!("listen 127.0.0.1:{port}"));
    assert_ne!(site, EXAMPLE);
    std::fs::write(dir.join("sessiond.conf"), site).expect("site");
    for d in ["body", "proxy", "fastcgi", "uwsgi", "scgi"] {
        std::fs::create_dir_all(dir.join(d)).expect("temp dir");
    }
    let d = dir.display();
    let main = format!(
        "worker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\nuser root root;\n\
events {{ worker_connections 256; }}\nhttp {{\n access_log off;\n client_body_temp_path {d}/body;\n proxy_temp_path {d}/proxy;\n\
 fastcgi_temp_path {d}/fastcgi;\n uwsgi_temp_path {d}/uwsgi;\n scgi_temp_path {d}/scgi;\n include {d}/sessiond.conf;\n}}\n"
    );
    std::fs::write(dir.join("nginx.conf"), main).expect("nginx.conf");
    let child = Command::new(nginx)
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .stdin(Stdio::null())
        .spawn()
        .expect("start nginx");
    Reaper(child)
}

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
            req = req.header(COOKIE, format!("sid={sid}"));
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
        let csrf_cookie = cookie(&form, "sid-csrf").expect("csrf cookie");
        let html = form.text().await.unwrap();
        let resp = self
            .http
            .post(format!("{}/login", self.base))
            .header(COOKIE, format!("sid-csrf={csrf_cookie}"))
            .form(&[
                ("username", user),
                ("password", password),
                ("csrf", &hidden(&html, "csrf")),
                ("rd", &hidden(&html, "rd")),
            ])
            .send()
            .await
            .unwrap();
        if let Some(sid) = cookie(&resp, "sid") {
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
            .header(COOKIE, format!("sid={}", self.sid.as_deref().unwrap_or("")))
            .form(&[("csrf", hidden(&html, "csrf"))])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 302);
        assert_eq!(
            cookie(&resp, "sid").as_deref(),
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
    let (tmp, dir) = data_dir();
    let users_file = users(tmp.path(), false);
    let config = format!(
        "[session]\nidle_timeout = \"2s\"\n[users]\nfile = \"{}\"\n[portal]\nallowed_redirect_hosts = [\"127.0.0.1\"]\n\
trusted_proxies = [\"127.0.0.1/32\"]\n[cookie]\nname = \"sid\"\nsecure = false\n",
        users_file.display()
    );
    let server = Server::start(&dir, Some(&config));
    let upstream = echo_upstream().await;
    let port = free_port();
    let nginx_dir = tmp.path().join("nginx");
    std::fs::create_dir_all(&nginx_dir).unwrap();
    let sessiond_addr = server.url.trim_start_matches("http://").to_owned();
    let _nginx = start_nginx(&nginx, &nginx_dir, port, &sessiond_addr, upstream);
    wait_for_port(port).await;

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
