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
.error{color:var(--err);font-weight:600}.muted{color:var(--muted);font-size:.9rem}table{width:100%;border-collapse:collapse;margin:1rem 0}\
th,td{text-align:left;padding:.5rem;border-bottom:1px solid #8884;vertical-align:top}.tag{font-size:.8rem;font-weight:700;color:var(--accent)}\
.row{display:flex;gap:.75rem;flex-wrap:wrap;align-items:center;justify-content:space-between}form.inline{display:inline}";

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
    page(
        "Sign in",
        true,
        &format!(
            "<h1>Sign in</h1>{error}<form method=\"post\" action=\"/login\">\
<input type=\"hidden\" name=\"csrf\" value=\"{}\"><input type=\"hidden\" name=\"rd\" value=\"{}\">\
<label for=\"username\">Username</label><input type=\"text\" id=\"username\" name=\"username\" value=\"{}\" autocomplete=\"username\" autocapitalize=\"none\" spellcheck=\"false\" required autofocus{described}>\
<label for=\"password\">Password</label><input type=\"password\" id=\"password\" name=\"password\" autocomplete=\"current-password\" required{described}>\
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

fn when(rfc3339: &str) -> String {
    // `2026-11-21T10:00:00.000Z` → `2026-11-21 10:00 UTC`
    match (rfc3339.get(..10), rfc3339.get(11..16)) {
        (Some(d), Some(t)) => format!("{d} {t} UTC"),
        _ => rfc3339.to_owned(),
    }
}

/// The self-service page: the user's sessions, this one marked, the others endable.
pub fn sessions(user: &str, sessions: &[v1::Session], current: &str, csrf: &str) -> String {
    let mut rows = String::new();
    for s in sessions {
        let device = s.client.user_agent.as_deref().unwrap_or("unknown device");
        let ip = s.client.ip.as_deref().unwrap_or("unknown address");
        let action = if s.id == current {
            "<span class=\"tag\">This session</span>".to_owned()
        } else {
            format!(
                "<form class=\"inline\" method=\"post\" action=\"/sessions/end\">\
<input type=\"hidden\" name=\"csrf\" value=\"{}\"><input type=\"hidden\" name=\"id\" value=\"{}\">\
<button type=\"submit\" class=\"quiet\" aria-label=\"Sign out the session from {} at {}\">Sign out</button></form>",
                escape(csrf),
                escape(&s.id),
                escape(device),
                escape(ip),
            )
        };
        rows.push_str(&format!(
            "<tr><td>{}<br><span class=\"muted\">{}</span></td><td>{}</td><td>{}</td><td>{action}</td></tr>",
            escape(device),
            escape(ip),
            escape(&when(&s.created_at)),
            escape(&when(&s.last_access_at)),
        ));
    }
    let others = sessions.iter().filter(|s| s.id != current).count();
    let end_all = if others > 0 {
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
<table><caption class=\"muted\">Where you are signed in</caption><thead><tr><th scope=\"col\">Device</th><th scope=\"col\">Signed in</th><th scope=\"col\">Last active</th><th scope=\"col\"><span class=\"muted\">Action</span></th></tr></thead>\
<tbody>{rows}</tbody></table>{end_all}",
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
