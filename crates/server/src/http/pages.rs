//! The portal's HTML: small, self-contained pages (no external assets, no scripts), with
//! every dynamic value escaped.

use sessiond_proto::v1;

/// Escapes text for HTML element content and quoted attributes.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "\
:root{color-scheme:light dark;--fg:#1b1f24;--bg:#f6f7f9;--card:#fff;--accent:#0b57d0;--muted:#5f6368;--err:#b3261e}\
@media (prefers-color-scheme:dark){:root{--fg:#e8eaed;--bg:#14161a;--card:#1f2228;--accent:#8ab4f8;--muted:#9aa0a6;--err:#f2b8b5}}\
*{box-sizing:border-box}body{margin:0;font:16px/1.5 system-ui,-apple-system,'Segoe UI',sans-serif;color:var(--fg);background:var(--bg)}\
main{max-width:44rem;margin:3rem auto;padding:0 1rem}.card{background:var(--card);border-radius:12px;padding:2rem;box-shadow:0 1px 3px #0003}\
main.narrow{max-width:24rem}h1{font-size:1.5rem;margin:0 0 1.25rem}label{display:block;font-weight:600;margin:1rem 0 .25rem}\
input[type=text],input[type=password]{width:100%;padding:.6rem .75rem;font:inherit;border:1px solid var(--muted);border-radius:8px;background:transparent;color:inherit}\
input:focus-visible,button:focus-visible{outline:3px solid var(--accent);outline-offset:2px}\
button{font:inherit;font-weight:600;padding:.6rem 1.1rem;border-radius:8px;border:0;background:var(--accent);color:var(--card);cursor:pointer}\
button.quiet{background:transparent;color:var(--accent);border:1px solid var(--accent)}.wide{width:100%;margin-top:1.5rem}\
.error{color:var(--err);font-weight:600}.muted{color:var(--muted);font-size:.9rem}h2{font-size:1rem;margin:1.5rem 0 .25rem}\
.sessions{list-style:none;padding:0;margin:0}.sessions+form{margin-top:1.5rem}.sessions li{padding:.75rem 0;border-bottom:1px solid #8884}.sessions li>div{flex:1 1 16rem}\
.device{font-weight:600}.tag{font-size:.9rem;font-weight:700;color:var(--accent);margin-left:.5rem}.tag,.nw,button{white-space:nowrap}\
.row{display:flex;gap:.75rem;flex-wrap:wrap;align-items:center;justify-content:space-between}\
@media (max-width:30rem){main{margin:1rem auto;padding:0 .5rem}.card{padding:1.25rem}}";

fn page(title: &str, narrow: bool, body: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><meta name=\"robots\" content=\"noindex\">\
<title>{} · sessiond</title><style>{STYLE}</style></head><body><main{}><div class=\"card\">{body}</div></main></body></html>",
        escape(title),
        if narrow { " class=\"narrow\"" } else { "" },
    )
}

/// The login form.
pub fn login(rd: &str, csrf: &str, error: Option<&str>, username: &str) -> String {
    let error = error
        .map(|e| {
            format!(
                "<p class=\"error\" role=\"alert\" id=\"login-error\">{}</p>",
                escape(e)
            )
        })
        .unwrap_or_default();
    let described = if error.is_empty() {
        ""
    } else {
        " aria-describedby=\"login-error\""
    };
    // Focus goes where typing starts: the password once the username is filled in.
    let (focus_user, focus_password) = if username.is_empty() {
        (" autofocus", "")
    } else {
        ("", " autofocus")
    };
    page(
        "Sign in",
        true,
        &format!(
            "<h1>Sign in</h1>{error}<form method=\"post\" action=\"/login\">\
<input type=\"hidden\" name=\"csrf\" value=\"{}\"><input type=\"hidden\" name=\"rd\" value=\"{}\">\
<label for=\"username\">Username</label><input type=\"text\" id=\"username\" name=\"username\" value=\"{}\" autocomplete=\"username\" autocapitalize=\"none\" spellcheck=\"false\" required{focus_user}{described}>\
<label for=\"password\">Password</label><input type=\"password\" id=\"password\" name=\"password\" autocomplete=\"current-password\" required{focus_password}{described}>\
<button type=\"submit\" class=\"wide\">Sign in</button></form>",
            escape(csrf),
            escape(rd),
            escape(username),
        ),
    )
}

/// A short message with a link onward.
pub fn message(title: &str, text: &str, link: (&str, &str)) -> String {
    page(
        title,
        true,
        &format!(
            "<h1>{}</h1><p>{}</p><p><a href=\"{}\">{}</a></p>",
            escape(title),
            escape(text),
            escape(link.0),
            escape(link.1)
        ),
    )
}

/// A timestamp as HTML: `2026-11-21T10:00:00.000Z` → `2026-11-21 10:00 UTC`, which may
/// wrap between date and time but never inside either.
fn when(rfc3339: &str) -> String {
    match (rfc3339.get(..10), rfc3339.get(11..16)) {
        (Some(d), Some(t)) => format!(
            "<time datetime=\"{}\"><span class=\"nw\">{}</span> <span class=\"nw\">{} UTC</span></time>",
            escape(rfc3339),
            escape(d),
            escape(t)
        ),
        _ => escape(rfc3339),
    }
}

/// A short name for a browser's user agent, such as `Firefox 128 on Windows`. A user agent
/// it does not recognise is shown as sent.
fn device(user_agent: &str) -> String {
    // First match wins: Edge and Opera also claim Chrome, Chrome also claims Safari.
    const BROWSERS: [(&str, &str); 9] = [
        ("Edg/", "Edge"),
        ("OPR/", "Opera"),
        ("Firefox/", "Firefox"),
        ("FxiOS/", "Firefox"),
        ("HeadlessChrome/", "Headless Chrome"),
        ("Chromium/", "Chromium"),
        ("Chrome/", "Chrome"),
        ("CriOS/", "Chrome"),
        ("Version/", "Safari"),
    ];
    // iOS also claims macOS; Android and ChromeOS also claim Linux.
    const SYSTEMS: [(&str, &str); 7] = [
        ("iPhone", "iOS"),
        ("iPad", "iPadOS"),
        ("Android", "Android"),
        ("CrOS", "ChromeOS"),
        ("Windows", "Windows"),
        ("Mac OS X", "macOS"),
        ("Linux", "Linux"),
    ];
    let browser = BROWSERS.iter().find_map(|(token, name)| {
        let version = &user_agent[user_agent.find(token)? + token.len()..];
        let major = version.split(|c: char| !c.is_ascii_digit()).next()?;
        (!major.is_empty()).then(|| format!("{name} {major}"))
    });
    let system = SYSTEMS
        .iter()
        .find(|(token, _)| user_agent.contains(token))
        .map(|(_, name)| name);
    match (user_agent.starts_with("Mozilla/5.0 ("), browser, system) {
        (true, Some(browser), Some(system)) => format!("{browser} on {system}"),
        _ => user_agent.to_owned(),
    }
}

/// The self-service page: the user's sessions, this one marked, the others endable.
pub fn sessions(user: &str, sessions: &[v1::Session], current: &str, csrf: &str) -> String {
    let mut items = String::new();
    // This session first: it is the one people look for.
    let (this, others): (Vec<_>, Vec<_>) = sessions.iter().partition(|s| s.id == current);
    for s in this.iter().chain(&others) {
        let user_agent = s.client.user_agent.as_deref().unwrap_or("unknown device");
        let device = device(user_agent);
        let ip = s.client.ip.as_deref().unwrap_or("unknown address");
        let (tag, action) = if s.id == current {
            ("<span class=\"tag\">This session</span>", String::new())
        } else {
            let form = format!(
                "<form method=\"post\" action=\"/sessions/end\">\
<input type=\"hidden\" name=\"csrf\" value=\"{}\"><input type=\"hidden\" name=\"id\" value=\"{}\">\
<button type=\"submit\" class=\"quiet\" aria-label=\"Sign out the session from {} at {}\">Sign out</button></form>",
                escape(csrf),
                escape(&s.id),
                escape(&device),
                escape(ip),
            );
            ("", form)
        };
        items.push_str(&format!(
            "<li class=\"row\"><div><span class=\"device\" title=\"{}\">{}</span>{tag}<br>\
<span class=\"muted\">{} · signed in {} · last active {}</span></div>{action}</li>",
            escape(user_agent),
            escape(&device),
            escape(ip),
            when(&s.created_at),
            when(&s.last_access_at),
        ));
    }
    let end_all = if !others.is_empty() {
        format!(
            "<form method=\"post\" action=\"/sessions/end-others\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
<button type=\"submit\" class=\"quiet\">Sign out all other sessions</button></form>",
            escape(csrf)
        )
    } else {
        String::new()
    };
    page(
        "Your sessions",
        false,
        &format!(
            "<div class=\"row\"><h1>Your sessions</h1><form method=\"post\" action=\"/logout\">\
<input type=\"hidden\" name=\"csrf\" value=\"{}\"><button type=\"submit\">Sign out</button></form></div>\
<p class=\"muted\">Signed in as <strong>{}</strong>. {} active session{}.</p>\
<h2 id=\"where\">Where you are signed in</h2><ul class=\"sessions\" aria-labelledby=\"where\">{items}</ul>{end_all}",
            escape(csrf),
            escape(user),
            sessions.len(),
            if sessions.len() == 1 { "" } else { "s" },
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_escaped() {
        let html = login("/\"><script>x</script>", "c", Some("<b>"), "<img src=x>");
        assert!(!html.contains("<script>x"));
        assert!(!html.contains("<img src=x>"));
        assert!(html.contains("&lt;b&gt;"));
    }

    #[test]
    fn devices_are_named_briefly_and_unknown_ones_as_sent() {
        let cases = [
            (
                "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/156.0.0.0 Safari/537.36",
                "Headless Chrome 156 on Linux",
            ),
            (
                "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36 Edg/124.0.2478.51",
                "Edge 124 on Windows",
            ),
            (
                "Mozilla/5.0 (Macintosh; Intel Mac OS X 10.15; rv:128.0) Gecko/20100101 Firefox/128.0",
                "Firefox 128 on macOS",
            ),
            (
                "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
                "Safari 17 on iOS",
            ),
            (
                "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Mobile Safari/537.36",
                "Chrome 124 on Android",
            ),
            ("Other device/1.0", "Other device/1.0"),
            ("curl/8.5.0", "curl/8.5.0"),
            (
                "Mozilla/5.0 (compatible; Something)",
                "Mozilla/5.0 (compatible; Something)",
            ),
        ];
        for (user_agent, name) in cases {
            assert_eq!(device(user_agent), name, "{user_agent}");
        }
    }

    #[test]
    fn times_wrap_between_date_and_time_only() {
        let html = when("2026-11-21T10:00:00.000Z");
        assert!(html.contains("datetime=\"2026-11-21T10:00:00.000Z\""));
        assert!(html.contains(">2026-11-21</span> <span class=\"nw\">10:00 UTC<"));
        assert_eq!(when("<odd>"), "&lt;odd&gt;");
    }

    #[test]
    fn focus_goes_to_the_password_once_the_username_is_known() {
        let fresh = login("/", "c", None, "");
        assert!(fresh.contains("autocomplete=\"username\" autocapitalize=\"none\" spellcheck=\"false\" required autofocus"));
        let retry = login("/", "c", Some("Wrong username or password."), "alice");
        assert!(retry.contains("autocomplete=\"current-password\" required autofocus"));
        assert_eq!(retry.matches("autofocus").count(), 1);
    }

    #[test]
    fn the_form_is_labelled_and_self_contained() {
        let html = login("/", "c", None, "");
        assert!(
            html.contains("<label for=\"username\">") && html.contains("<label for=\"password\">")
        );
        assert!(html.contains("autocomplete=\"current-password\""));
        assert!(
            !html.contains("http://") && !html.contains("https://"),
            "no external assets"
        );
        assert!(!html.contains("<script"));
    }
}
