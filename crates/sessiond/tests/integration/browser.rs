//! A real browser: headless Chromium from Debian, driven through ChromeDriver's W3C
//! WebDriver HTTP API, uses the site behind nginx as a person would. It logs in through the
//! portal, reaches the app, signs out another session from the self-service page, logs out,
//! and gets a wrong password refused. Each page is saved as a PNG under
//! `target/browser-screenshots/` for a person to look at.
//!
//! The WebDriver client is the few commands this test needs, over `reqwest`.

use std::future::Future;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use sessiond_client::{EndReason, v1};

use crate::common::web::{ALICE_PASSWORD, Site};
use crate::common::{free_port, require, wait_for_port};

/// The longest the test waits for any one thing the browser should show.
const WAIT: Duration = Duration::from_secs(10);

/// The key under which WebDriver hands out an element reference (W3C, fixed).
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Where the screenshots go: `target/browser-screenshots/`, beside cargo's `target/tmp`.
fn screenshot_dir() -> PathBuf {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent().unwrap_or(tmp).join("browser-screenshots")
}

/// ChromeDriver and the browser it starts, in a process group of their own: dropping this,
/// even while a failed test unwinds, stops every one of them.
struct DriverProcess(Child);

impl DriverProcess {
    /// Starts ChromeDriver on `port`; Chromium's crash handler keeps its database in
    /// `crash_dir` rather than under `$HOME`.
    fn start(chromedriver: &Path, port: u16, crash_dir: &Path) -> DriverProcess {
        let child = Command::new(chromedriver)
            .env("BREAKPAD_DUMP_LOCATION", crash_dir)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .arg("--log-level=WARNING")
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start chromedriver");
        DriverProcess(child)
    }

    /// `kill -SIGNAL -- -PGID`. Sent only while ChromeDriver is not yet reaped, so the
    /// group id cannot have been reused.
    fn signal_group(&self, signal: &str) {
        let group = format!("-{}", self.0.id());
        let _ = Command::new("kill")
            .args([signal, "--", &group])
            .stderr(Stdio::null())
            .status();
    }

    /// How many processes of the group still run (zombies do not count).
    fn running_in_group(&self) -> usize {
        let group = self.0.id().to_string();
        let Ok(procs) = std::fs::read_dir("/proc") else {
            return 0;
        };
        procs
            .filter_map(|p| std::fs::read_to_string(p.ok()?.path().join("stat")).ok())
            .filter(|stat| {
                // `pid (comm) state ppid pgrp ...`; comm may hold spaces and parentheses.
                let Some((_, fields)) = stat.rsplit_once(')') else {
                    return false;
                };
                let fields: Vec<&str> = fields.split_whitespace().take(3).collect();
                matches!(fields[..], [state, _, pgrp] if pgrp == group && state != "Z")
            })
            .count()
    }
}

impl Drop for DriverProcess {
    fn drop(&mut self) {
        // SIGTERM lets Chromium shut down cleanly; SIGKILL whatever is left after 5 s.
        // ChromeDriver is reaped last: until then its group id stays ours.
        self.signal_group("-TERM");
        for _ in 0..50 {
            if self.running_in_group() == 0 {
                break;
            }
            // Polling for processes to exit, not timing a rule under test.
            #[allow(clippy::disallowed_methods)]
            std::thread::sleep(Duration::from_millis(100));
        }
        self.signal_group("-KILL");
        let _ = self.0.wait();
    }
}

/// What ChromeDriver answered when a command failed.
struct WebDriverError {
    /// The HTTP status; 0 when no answer came.
    status: u16,
    /// WebDriver's error code, such as `no such element`.
    error: String,
    message: String,
}

impl std::fmt::Display for WebDriverError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.error, self.status, self.message)
    }
}

/// One WebDriver session: a headless Chromium with a fresh profile.
struct Browser {
    http: reqwest::Client,
    /// `http://127.0.0.1:<port>/session/<id>`: every command's URL starts here.
    session: String,
    /// Screenshots are written here.
    shots: PathBuf,
}

impl Browser {
    /// Opens a session on the ChromeDriver at `driver_port`, running `chromium` with its
    /// profile in `profile`.
    async fn start(driver_port: u16, chromium: &Path, profile: &Path, shots: PathBuf) -> Browser {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        let args = [
            "--headless=new".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--disable-quic".to_owned(),
            "--no-first-run".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            format!("--user-data-dir={}", profile.display()),
            "--window-size=1200,900".to_owned(),
            // Loopback only: anything Chromium tries to fetch elsewhere goes to a proxy
            // that is not there (loopback addresses always bypass a proxy).
            "--proxy-server=http://127.0.0.1:1".to_owned(),
        ];
        // A page load, like every wait here, takes at most WAIT.
        let wait_ms = WAIT.as_millis() as u64;
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "pageLoadStrategy": "normal",
            "timeouts": {"implicit": 0, "pageLoad": wait_ms, "script": wait_ms},
            "goog:chromeOptions": {"binary": chromium, "args": args},
        }}});
        let base = format!("http://127.0.0.1:{driver_port}/session");
        let answer = send(&http, Method::POST, &base, Some(capabilities))
            .await
            .unwrap_or_else(|e| panic!("ChromeDriver could not start Chromium: {e}"));
        let id = answer["sessionId"].as_str().expect("a session id");
        std::fs::create_dir_all(&shots).expect("screenshot dir");
        Browser {
            http,
            session: format!("{base}/{id}"),
            shots,
        }
    }

    /// One command on this session (`path` after `/session/<id>`).
    async fn try_call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, WebDriverError> {
        let url = format!("{}{path}", self.session);
        send(&self.http, method, &url, body).await
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let what = format!("{method} {path}");
        self.try_call(method, path, body)
            .await
            .unwrap_or_else(|e| panic!("WebDriver {what}: {e}"))
    }

    async fn goto(&self, url: &str) {
        self.call(Method::POST, "/url", Some(json!({ "url": url })))
            .await;
    }

    /// The page's URL; empty while the browser cannot say (it is between pages).
    async fn url(&self) -> String {
        match self.try_call(Method::GET, "/url", None).await {
            Ok(v) => v.as_str().unwrap_or_default().to_owned(),
            Err(_) => String::new(),
        }
    }

    /// Every element matching `css` on the page as it is now; none while the browser is
    /// between pages.
    async fn find_all(&self, css: &str) -> Vec<String> {
        let body = json!({"using": "css selector", "value": css});
        match self.try_call(Method::POST, "/elements", Some(body)).await {
            Ok(found) => element_ids(&found),
            Err(_) => Vec::new(),
        }
    }

    /// The elements matching `css` inside `element`.
    async fn find_in(&self, element: &str, css: &str) -> Vec<String> {
        let body = json!({"using": "css selector", "value": css});
        let path = format!("/element/{element}/elements");
        element_ids(&self.call(Method::POST, &path, Some(body)).await)
    }

    /// The one element matching `css`, waiting for it to appear (and to be the only one).
    async fn wait_for(&self, css: &str) -> String {
        self.until(&format!("an element {css}"), || async {
            let found = self.find_all(css).await;
            (found.len() == 1).then(|| found[0].clone())
        })
        .await
    }

    /// Waits until the browser shows `url` and, on it, an element matching `css`.
    async fn wait_for_page(&self, url_prefix: &str, css: &str) -> String {
        self.until(&format!("{url_prefix} showing {css}"), || async {
            if !self.url().await.starts_with(url_prefix) {
                return None;
            }
            let found = self.find_all(css).await;
            (found.len() == 1).then(|| found[0].clone())
        })
        .await
    }

    /// The rendered text of an element; empty if the page moved on under it.
    async fn text(&self, element: &str) -> String {
        let path = format!("/element/{element}/text");
        match self.try_call(Method::GET, &path, None).await {
            Ok(v) => v.as_str().unwrap_or_default().to_owned(),
            Err(_) => String::new(),
        }
    }

    async fn property(&self, element: &str, name: &str) -> Value {
        let path = format!("/element/{element}/property/{name}");
        self.call(Method::GET, &path, None).await
    }

    /// The element that has the keyboard focus.
    async fn active(&self) -> String {
        let found = self.call(Method::GET, "/element/active", None).await;
        found[ELEMENT].as_str().expect("an element id").to_owned()
    }

    async fn type_into(&self, css: &str, text: &str) {
        let element = self.wait_for(css).await;
        let path = format!("/element/{element}/value");
        self.call(Method::POST, &path, Some(json!({ "text": text })))
            .await;
    }

    async fn click(&self, element: &str) {
        let path = format!("/element/{element}/click");
        self.call(Method::POST, &path, Some(json!({}))).await;
    }

    /// Makes pages see `prefers-color-scheme: dark` (or light), through Chromium's DevTools.
    async fn dark(&self, on: bool) {
        let scheme = if on { "dark" } else { "light" };
        let body = json!({"cmd": "Emulation.setEmulatedMedia", "params": {
            "features": [{"name": "prefers-color-scheme", "value": scheme}]
        }});
        self.call(Method::POST, "/goog/cdp/execute", Some(body))
            .await;
    }

    /// Resizes the window (the page's viewport follows).
    async fn resize(&self, width: u32, height: u32) {
        let body = json!({"width": width, "height": height});
        self.call(Method::POST, "/window/rect", Some(body)).await;
    }

    /// Saves what the window shows as `<shots>/<name>`.
    async fn screenshot(&self, name: &str) {
        if let Err(e) = self.try_screenshot(name).await {
            panic!("screenshot {name}: {e}");
        }
    }

    async fn try_screenshot(&self, name: &str) -> Result<PathBuf, WebDriverError> {
        let png = self.try_call(Method::GET, "/screenshot", None).await?;
        let png = base64_decode(png.as_str().unwrap_or_default());
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "{name} is not a PNG");
        let path = self.shots.join(name);
        std::fs::write(&path, png).expect("write screenshot");
        Ok(path)
    }

    /// Polls `probe` until it yields a value, for at most `WAIT`. On timeout, saves a
    /// screenshot of what the browser showed instead and fails with its URL and source.
    async fn until<T, F, Fut>(&self, what: &str, mut probe: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Option<T>>,
    {
        let polled = tokio::time::timeout(WAIT, async {
            loop {
                if let Some(v) = probe().await {
                    return v;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        let Ok(found) = polled else {
            // What the browser showed instead, as far as it can still say.
            let shot = match self.try_screenshot("failed.png").await {
                Ok(path) => path.display().to_string(),
                Err(e) => format!("no screenshot: {e}"),
            };
            let url = self.url().await;
            let source = match self.try_call(Method::GET, "/source", None).await {
                Ok(v) => v.as_str().unwrap_or_default().to_owned(),
                Err(e) => format!("<no page source: {e}>"),
            };
            panic!(
                "waited {WAIT:?} for {what}; the browser is at {url} ({shot}), showing:\n{source}"
            );
        };
        found
    }

    /// Ends the session: ChromeDriver closes Chromium.
    async fn quit(self) {
        let _ = self.try_call(Method::DELETE, "", None).await;
    }
}

/// One WebDriver command: its `value`, or the error ChromeDriver reported.
async fn send(
    http: &reqwest::Client,
    method: Method,
    url: &str,
    body: Option<Value>,
) -> Result<Value, WebDriverError> {
    let mut req = http.request(method, url);
    if let Some(body) = body {
        req = req.json(&body);
    }
    let resp = req.send().await.map_err(|e| WebDriverError {
        status: 0,
        error: "transport".into(),
        message: e.to_string(),
    })?;
    let status = resp.status().as_u16();
    let mut answer: Value = resp.json().await.map_err(|e| WebDriverError {
        status,
        error: "not JSON".into(),
        message: e.to_string(),
    })?;
    let value = answer["value"].take();
    match value["error"].as_str() {
        Some(error) => Err(WebDriverError {
            status,
            error: error.to_owned(),
            message: value["message"].as_str().unwrap_or_default().to_owned(),
        }),
        None => Ok(value),
    }
}

fn element_ids(found: &Value) -> Vec<String> {
    found
        .as_array()
        .expect("a list of elements")
        .iter()
        .map(|e| e[ELEMENT].as_str().expect("an element id").to_owned())
        .collect()
}

/// Standard base64 (WebDriver's screenshot encoding).
fn base64_decode(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' | b'\r' | b'\n' => continue,
            _ => panic!("not base64: {:?}", c as char),
        };
        acc = ((acc << 6) | u32::from(v)) & 0xffff;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

#[test]
fn base64_decodes() {
    assert_eq!(base64_decode("aGVsbG8gd29ybGQ="), b"hello world");
    assert_eq!(base64_decode("iVBORw0KGgo="), b"\x89PNG\r\n\x1a\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_logs_in_signs_out_another_session_and_logs_out() {
    let (Some(nginx), Some(chromium), Some(chromedriver)) = (
        require("nginx"),
        require("chromium"),
        require("chromedriver"),
    ) else {
        return;
    };
    let site = Site::start(&nginx, "30m").await;
    let base = site.base.as_str();
    let admin = site.server.admin();

    // Another device signed in as alice earlier: this is the session to sign out.
    let other = site
        .server
        .agent()
        .create_session(&v1::CreateSessionRequest {
            user: "alice".into(),
            client: Some(v1::ClientInfo {
                ip: Some("198.51.100.23".into()),
                user_agent: Some("Other device/1.0".into()),
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .session;

    // Dropped in reverse: the browser stops before its profile directory goes.
    let profile = tempfile::tempdir().expect("profile dir");
    let driver_port = free_port();
    let _driver = DriverProcess::start(&chromedriver, driver_port, &profile.path().join("crash"));
    wait_for_port(driver_port).await;
    let shots = screenshot_dir();
    let _ = std::fs::remove_dir_all(&shots);
    let browser = Browser::start(
        driver_port,
        &chromium,
        &profile.path().join("profile"),
        shots,
    )
    .await;

    // An anonymous visit to the app lands on the portal's form, which knows where to go back.
    browser.goto(&format!("{base}/app/page")).await;
    browser
        .wait_for_page(&format!("{base}/login?rd="), "form[action='/login']")
        .await;
    let labels = browser.find_all("label").await;
    assert_eq!(labels.len(), 2, "a label for each field");
    assert_eq!(browser.text(&labels[0]).await, "Username");
    assert_eq!(browser.text(&labels[1]).await, "Password");
    browser.screenshot("01-login.png").await;

    // Sign in: the app answers, and it was told who is there.
    browser.type_into("#username", "alice").await;
    browser.type_into("#password", ALICE_PASSWORD).await;
    let submit = browser.wait_for("button[type=submit]").await;
    browser.click(&submit).await;
    let app = browser
        .wait_for_page(&format!("{base}/app/page"), "pre")
        .await;
    let echoed = browser.text(&app).await;
    assert!(echoed.starts_with("GET /app/page HTTP/1.1"), "{echoed}");
    assert!(echoed.contains("Remote-User: alice"), "{echoed}");
    assert!(echoed.contains("Remote-Groups: staff"), "{echoed}");
    browser.screenshot("02-app.png").await;

    // The self-service page lists both sessions and marks the browser's own.
    let mine = admin
        .list_sessions(Some("alice"), None, None)
        .await
        .unwrap()
        .sessions
        .into_iter()
        .find(|s| s.id != other.id)
        .expect("the browser's session");
    browser.goto(&format!("{base}/sessions")).await;
    browser
        .wait_for_page(&format!("{base}/sessions"), "h1")
        .await;
    let rows = browser.find_all("ul.sessions li").await;
    assert_eq!(rows.len(), 2, "two sessions listed");
    let (mut marked, mut other_row) = (false, None);
    for row in &rows {
        let text = browser.text(row).await;
        if text.contains("This session") {
            assert!(
                text.contains("Headless Chrome") && text.contains("on Linux"),
                "{text}"
            );
            assert!(text.contains("127.0.0.1"), "nginx's client address: {text}");
            marked = true;
        } else {
            assert!(text.contains("Other device/1.0"), "{text}");
            assert!(text.contains("198.51.100.23"), "{text}");
            other_row = Some(row.clone());
        }
    }
    assert!(marked, "one session is marked as this one");
    let other_row = other_row.expect("the other device's session");
    browser.screenshot("03-sessions.png").await;
    // The same page in the dark color scheme, and on a phone-sized window.
    browser.dark(true).await;
    browser.screenshot("03-sessions-dark.png").await;
    browser.dark(false).await;
    browser.resize(400, 900).await;
    browser.screenshot("03-sessions-narrow.png").await;
    browser.resize(1200, 900).await;

    // Sign out the other device: it is gone from the list, ended by the user.
    let buttons = browser.find_in(&other_row, "button").await;
    assert_eq!(buttons.len(), 1);
    assert_eq!(browser.text(&buttons[0]).await, "Sign out");
    browser.click(&buttons[0]).await;
    browser
        .until("one session left on /sessions", || async {
            let here = browser.url().await == format!("{base}/sessions");
            (here && browser.find_all("ul.sessions li").await.len() == 1).then_some(())
        })
        .await;
    let row = browser.wait_for("ul.sessions li").await;
    assert!(browser.text(&row).await.contains("This session"));
    let why = admin.explain(&other.id).await.unwrap();
    assert_eq!(why.state, v1::SessionState::Ended);
    assert_eq!(
        why.end_reason,
        EndReason::TerminatedByUser,
        "{}",
        why.summary
    );
    browser.screenshot("04-after-signout-other.png").await;

    // Log out: back to the portal, and the app is closed again.
    let logout = browser
        .wait_for("form[action='/logout'] button[type=submit]")
        .await;
    browser.click(&logout).await;
    browser
        .wait_for_page(&format!("{base}/login"), "form[action='/login']")
        .await;
    let why = admin.explain(&mine.id).await.unwrap();
    assert_eq!(why.end_reason, EndReason::LoggedOut, "{}", why.summary);
    browser.goto(&format!("{base}/app/page")).await;
    browser
        .wait_for_page(&format!("{base}/login?rd="), "form[action='/login']")
        .await;
    browser.screenshot("05-logged-out.png").await;

    // A wrong password: the form says so, keeps the username, and nobody is signed in.
    browser.type_into("#username", "alice").await;
    browser.type_into("#password", "not-the-password").await;
    let submit = browser.wait_for("button[type=submit]").await;
    browser.click(&submit).await;
    let error = browser
        .wait_for_page(&format!("{base}/login"), "#login-error[role=alert]")
        .await;
    assert_eq!(browser.text(&error).await, "Wrong username or password.");
    let username = browser.wait_for("#username").await;
    assert_eq!(browser.property(&username, "value").await, "alice");
    let focused = browser.active().await;
    assert_eq!(browser.property(&focused, "id").await, "password");
    browser.screenshot("06-wrong-password.png").await;
    browser.dark(true).await;
    browser.screenshot("06-wrong-password-dark.png").await;
    let left = admin
        .list_sessions(Some("alice"), None, None)
        .await
        .unwrap();
    assert!(left.sessions.is_empty(), "{:?}", left.sessions);

    browser.quit().await;
}
