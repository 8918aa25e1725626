//! The people's view of admin answers: aligned plain-text tables.
//!
//! Every cell goes through [`printable`], so values agents set (attributes, user agents)
//! can neither break a table nor send escape sequences to the terminal.

use std::fmt::Write as _;

use sessiond_client::{EndReason, v1};

/// The API's JSON (pretty) with `--json`, else the people's view of it.
pub(super) fn render(
    json: bool,
    to_json: impl FnOnce() -> serde_json::Result<String>,
    text: impl FnOnce() -> String,
) -> String {
    match json.then(to_json) {
        Some(Ok(out)) => out + "\n",
        // Wire types always serialize; fall back to the text view rather than panic.
        Some(Err(_)) | None => text(),
    }
}

pub(super) fn sessions_table(sessions: &[v1::Session]) -> String {
    if sessions.is_empty() {
        return "no active sessions\n".to_owned();
    }
    let mut table = Table::new(&[
        "ID",
        "USER",
        "POLICY",
        "CREATED",
        "LAST ACCESS",
        "IDLE EXPIRES",
        "EXPIRES",
    ]);
    for s in sessions {
        table.row([
            &s.id,
            &s.user,
            &s.policy,
            &s.created_at,
            &s.last_access_at,
            &s.idle_expires_at,
            &s.expires_at,
        ]);
    }
    table.render("")
}

pub(super) fn session_details(s: &v1::Session) -> String {
    let or_dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".to_owned());
    let mut table = Table::without_header();
    table.row(["id", &s.id]);
    table.row(["user", &s.user]);
    table.row(["universal id", &or_dash(&s.universal_id)]);
    table.row(["auth level", &s.auth_level.to_string()]);
    table.row(["policy", &s.policy]);
    table.row(["client ip", &or_dash(&s.client.ip)]);
    table.row(["user agent", &or_dash(&s.client.user_agent)]);
    table.row(["created", &s.created_at]);
    table.row(["last access", &s.last_access_at]);
    table.row(["idle expires", &s.idle_expires_at]);
    table.row(["expires", &s.expires_at]);
    table.row(["version", &s.version.to_string()]);
    if s.attributes.is_empty() {
        table.row(["attributes", "-"]);
    }
    for (i, (key, value)) in s.attributes.iter().enumerate() {
        let label = if i == 0 { "attributes" } else { "" };
        table.row([label, &format!("{key} = {value}")]);
    }
    table.render("")
}

pub(super) fn explanation_text(e: &v1::Explanation) -> String {
    let mut out = printable(&e.summary);
    out.push('\n');
    let mut timeline = Table::without_header();
    for event in &e.timeline {
        let reason = event.reason.map_or("", EndReason::as_str);
        timeline.row([&event.at, &event.event, reason, &event.detail]);
    }
    out + &timeline.render("  ")
}

pub(super) fn stats_text(s: &v1::Stats) -> String {
    let mut summary = Table::without_header();
    summary.row(["store", &s.store]);
    summary.row(["nodes", &s.nodes.to_string()]);
    summary.row(["active sessions", &s.active_sessions.to_string()]);
    summary.row(["users with sessions", &s.users_with_sessions.to_string()]);

    let mut policies = Table::new(&["POLICY", "ACTIVE"]);
    for (policy, n) in &s.sessions_per_policy {
        policies.row([policy.as_str(), &n.to_string()]);
    }

    // Every known reason in the contract's order, then any the server added.
    let mut reasons = Table::new(&["ENDED BY REASON", "COUNT"]);
    for reason in EndReason::ALL {
        let n = s.ended_by_reason.get(reason.as_str()).copied().unwrap_or(0);
        reasons.row([reason.as_str(), &n.to_string()]);
    }
    for (reason, n) in &s.ended_by_reason {
        if reason.parse::<EndReason>().is_err() {
            reasons.row([reason.as_str(), &n.to_string()]);
        }
    }
    [summary.render(""), policies.render(""), reasons.render("")].join("\n")
}

/// Plain text columns, aligned on each column's widest cell, two spaces apart.
#[derive(Debug, Default)]
struct Table {
    /// Cells are stored already made printable, so widths are those shown.
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(header: &[&str]) -> Table {
        let mut table = Table::default();
        table.row(header.iter().copied());
        table
    }

    fn without_header() -> Table {
        Table::default()
    }

    fn row(&mut self, cells: impl IntoIterator<Item = impl AsRef<str>>) {
        let cells = cells.into_iter().map(|c| printable(c.as_ref()));
        self.rows.push(cells.collect());
    }

    /// Every row on its own line, each prefixed with `indent`, without trailing spaces.
    fn render(&self, indent: &str) -> String {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|c| {
                self.rows
                    .iter()
                    .filter_map(|row| row.get(c))
                    .map(|cell| cell.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for row in &self.rows {
            let mut line = indent.to_owned();
            for (cell, width) in row.iter().zip(&widths) {
                let _ = write!(line, "{cell:<width$}  ");
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// `text` with control characters escaped, so that values set by agents (attributes, user
/// agents) can neither break a table nor send escape sequences to the terminal.
pub(super) fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::super::tests::session;
    use super::*;

    #[test]
    fn tables_align_columns_without_trailing_spaces() {
        let mut table = Table::new(&["ID", "USER", "NOTE"]);
        table.row(["s1", "jürgen", ""]);
        table.row(["session-2", "b", "x"]);
        assert_eq!(
            table.render(""),
            "ID         USER    NOTE\ns1         jürgen\nsession-2  b       x\n"
        );
        let mut table = Table::without_header();
        table.row(["a", "b"]);
        assert_eq!(table.render("  "), "  a  b\n");
        assert_eq!(Table::without_header().render(""), "");
    }

    #[test]
    fn cells_escape_control_characters() {
        let mut table = Table::without_header();
        table.row(["a\nb", "\u{1b}[31mred\t"]);
        assert_eq!(table.render(""), "a\\nb  \\u{1b}[31mred\\t\n");
    }

    #[test]
    fn sessions_render_as_tables() {
        let text = sessions_table(&[session("s1")]);
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].starts_with("ID  USER   POLICY   CREATED"),
            "{text}"
        );
        assert!(
            lines[1].starts_with("s1  alice  default  2025-01-01T00:00:00Z"),
            "{text}"
        );
        assert_eq!(sessions_table(&[]), "no active sessions\n");
        let details = session_details(&session("s1"));
        assert!(details.contains("universal id  -\n"), "{details}");
        assert!(details.contains("attributes    k = v\n"), "{details}");
    }

    #[test]
    fn stats_list_every_end_reason() {
        let stats = v1::Stats {
            store: "embedded".to_owned(),
            active_sessions: 2,
            sessions_per_policy: BTreeMap::from([("default".to_owned(), 2)]),
            ended_by_reason: BTreeMap::from([
                ("idle_timeout".to_owned(), 4),
                ("future_reason".to_owned(), 1),
            ]),
            users_with_sessions: 1,
            nodes: 1,
        };
        let text = stats_text(&stats);
        assert!(
            text.starts_with("store                embedded\n"),
            "{text}"
        );
        assert!(text.contains("active sessions      2\n"), "{text}");
        assert!(text.contains("POLICY   ACTIVE\ndefault  2\n"), "{text}");
        assert!(text.contains("idle_timeout         4\n"), "{text}");
        assert!(text.contains("user_disabled        0\n"), "{text}");
        assert!(text.contains("future_reason        1\n"), "{text}");
    }

    #[test]
    fn explain_prints_the_summary_then_one_event_per_line() {
        let explanation = v1::Explanation {
            id: "s1".to_owned(),
            user: "alice".to_owned(),
            state: v1::SessionState::Ended,
            policy: Some("default".to_owned()),
            end_at: "2025-01-01T00:40:00Z".to_owned(),
            end_reason: EndReason::IdleTimeout,
            timeline: vec![
                v1::TimelineEvent {
                    at: "2025-01-01T00:00:00Z".to_owned(),
                    event: "created".to_owned(),
                    reason: None,
                    detail: "created".to_owned(),
                },
                v1::TimelineEvent {
                    at: "2025-01-01T00:40:00Z".to_owned(),
                    event: "ended".to_owned(),
                    reason: Some(EndReason::IdleTimeout),
                    detail: "idle for 30m".to_owned(),
                },
            ],
            summary: "Ended by the idle timeout.".to_owned(),
        };
        assert_eq!(
            explanation_text(&explanation),
            "Ended by the idle timeout.\n\
             \x20 2025-01-01T00:00:00Z  created                created\n\
             \x20 2025-01-01T00:40:00Z  ended    idle_timeout  idle for 30m\n"
        );
    }
}
