//! The admin CLI: `sessiond sessions ...` and `sessiond stats`, talking to the admin API
//! through `sessiond-client`.
//!
//! `main.rs` parses [`AdminCommand`] as part of its command line and hands it to [`run`],
//! which returns the exit code. Here live the command line and the commands; where the
//! server and the admin token come from is `connection`'s business (flags, then the
//! environment, then a local server's data dir), and turning answers into tables is
//! `render`'s. Only `run` prints.

mod connection;
mod render;

use std::fmt;
use std::future::Future;
use std::io::{self, Write as _};
use std::path::PathBuf;

use clap::{ArgGroup, Args, Subcommand};
use sessiond_client::{Client, ErrorCode, v1};

use connection::{Environment, Target, resolve};
use render::{explanation_text, printable, render, session_details, sessions_table, stats_text};

/// Listing stops after this many pages unless `--all` is given.
const MAX_PAGES: usize = 1_000;
/// Exit codes of [`run`].
const EXIT_FAILURE: i32 = 1;
const EXIT_USAGE: i32 = 2;

/// The admin commands, flattened into the binary's top-level commands.
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// List, show, terminate and explain sessions.
    Sessions {
        #[command(flatten)]
        conn: Connection,
        #[command(subcommand)]
        command: SessionsCommand,
    },
    /// Counts of active sessions, per policy, ended by reason.
    Stats {
        #[command(flatten)]
        conn: Connection,
    },
}

/// `sessiond sessions ...`.
#[derive(Debug, Subcommand)]
pub enum SessionsCommand {
    /// List active sessions: everyone's, or one user's.
    List {
        /// Only this user's sessions.
        #[arg(long, value_name = "USER")]
        user: Option<String>,
        /// Show at most N sessions.
        #[arg(long, value_name = "N", conflicts_with = "all",
              value_parser = clap::value_parser!(u32).range(1..))]
        limit: Option<u32>,
        /// Page through every session; without it, listing stops after 1,000 pages.
        #[arg(long)]
        all: bool,
        /// Continue an earlier listing from its `next_cursor`.
        #[arg(long, value_name = "CURSOR")]
        cursor: Option<String>,
    },
    /// Show one session.
    Show {
        /// The session's id.
        id: String,
    },
    /// End one session, or every session of a user (`terminated_by_admin`).
    #[command(group(ArgGroup::new("target").required(true).args(["id", "user"])))]
    Terminate {
        /// The session's id.
        id: Option<String>,
        /// End every session of this user instead.
        #[arg(long, value_name = "USER")]
        user: Option<String>,
    },
    /// Explain when and why a session ends, or ended.
    Explain {
        /// The session's id.
        id: String,
    },
}

/// Where the server is and how to authenticate; accepted anywhere after the command name.
#[derive(Clone, Default, Args)]
pub struct Connection {
    /// The server's URL, e.g. http://127.0.0.1:7480 [env: SESSIOND_SERVER]
    #[arg(long, global = true, value_name = "URL", help_heading = "Connection")]
    pub server: Option<String>,
    /// The admin token; prefer the environment, flags show in `ps` [env: SESSIOND_ADMIN_TOKEN]
    #[arg(long, global = true, value_name = "TOKEN", help_heading = "Connection")]
    pub token: Option<String>,
    /// A local server's data dir, holding server.url and admin.token
    /// [env: SESSIOND_DATA_DIR] [default: sessiond-data]
    #[arg(long, global = true, value_name = "DIR", help_heading = "Connection")]
    pub data_dir: Option<PathBuf>,
    /// Print the API's JSON instead of tables.
    #[arg(long, global = true, help_heading = "Connection")]
    pub json: bool,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("server", &self.server)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("data_dir", &self.data_dir)
            .field("json", &self.json)
            .finish()
    }
}

/// Runs one admin command; prints the result (tables for people, JSON with `--json`) on
/// stdout; on error prints ONE line `sessiond: <reason>` on stderr. Returns the process exit
/// code: 0 ok, 1 error, 2 usage.
pub async fn run(cmd: AdminCommand) -> i32 {
    let env = Environment::from_process();
    match execute(cmd, &env).await {
        Ok(output) => {
            for note in &output.notes {
                report(note);
            }
            let mut stdout = io::stdout().lock();
            match stdout
                .write_all(output.stdout.as_bytes())
                .and_then(|()| stdout.flush())
            {
                Ok(()) => 0,
                // `sessiond sessions list | head` is not an error.
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => 0,
                Err(e) => {
                    report(&format!("cannot write the output: {e}"));
                    EXIT_FAILURE
                }
            }
        }
        Err(err) => {
            report(&err.message);
            err.exit_code
        }
    }
}

/// Prints `sessiond: <message>` on stderr, on one line.
fn report(message: &str) {
    let line: String = message
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let _ = writeln!(io::stderr(), "sessiond: {line}");
}

/// What a command prints: `stdout`, plus notes for stderr.
#[derive(Debug, Default)]
struct Output {
    stdout: String,
    notes: Vec<String>,
}

impl Output {
    fn text(stdout: String) -> Output {
        Output {
            stdout,
            notes: Vec::new(),
        }
    }
}

/// A failed command: the one-line reason and the exit code.
#[derive(Debug)]
struct CliError {
    message: String,
    exit_code: i32,
}

impl CliError {
    fn usage(message: impl Into<String>) -> CliError {
        CliError {
            message: message.into(),
            exit_code: EXIT_USAGE,
        }
    }

    fn failed(message: impl Into<String>) -> CliError {
        CliError {
            message: message.into(),
            exit_code: EXIT_FAILURE,
        }
    }

    /// A client error, with a hint on where the URL or token came from when that is the
    /// likely culprit.
    fn from_client(err: sessiond_client::Error, target: &Target) -> CliError {
        use sessiond_client::Error;
        let message = match &err {
            Error::Transport(_) => format!("{err} (server URL from {})", target.server_from),
            Error::Api { detail, .. } if detail.code == ErrorCode::Unauthorized => {
                format!("{err} (admin token from {})", target.token_from)
            }
            _ => err.to_string(),
        };
        match err {
            Error::InvalidArgument(_) => CliError::usage(message),
            _ => CliError::failed(message),
        }
    }
}

async fn execute(cmd: AdminCommand, env: &Environment) -> Result<Output, CliError> {
    let (conn, command) = match cmd {
        AdminCommand::Sessions { conn, command } => (conn, Some(command)),
        AdminCommand::Stats { conn } => (conn, None),
    };
    let target = resolve(&conn, env)?;
    let client = Client::new(&target.server, &target.token)
        .map_err(|e| CliError::usage(format!("{e} (server URL from {})", target.server_from)))?;
    let result = match command {
        Some(command) => sessions(&client, command, conn.json).await,
        None => {
            let stats = client.stats().await;
            stats.map(|s| {
                Output::text(render(
                    conn.json,
                    || serde_json::to_string_pretty(&s),
                    || stats_text(&s),
                ))
            })
        }
    };
    result.map_err(|e| CliError::from_client(e, &target))
}

async fn sessions(
    client: &Client,
    command: SessionsCommand,
    json: bool,
) -> Result<Output, sessiond_client::Error> {
    match command {
        SessionsCommand::List {
            user,
            limit,
            all,
            cursor,
        } => {
            let max_pages = if all { usize::MAX } else { MAX_PAGES };
            let user = user.as_deref();
            let (page, capped) =
                collect_pages(limit, max_pages, cursor, |limit, cursor| async move {
                    client.list_sessions(user, limit, cursor.as_deref()).await
                })
                .await?;
            let mut output = Output::text(render(
                json,
                || serde_json::to_string_pretty(&page),
                || sessions_table(&page.sessions),
            ));
            if capped {
                output.notes.push(format!(
                    "note: stopped after {MAX_PAGES} pages; pass --all to list everything, \
                     or --user to narrow"
                ));
            } else if let (Some(next), false) = (&page.next_cursor, json) {
                output
                    .notes
                    .push(format!("note: more sessions follow; pass --cursor {next}"));
            }
            Ok(output)
        }
        SessionsCommand::Show { id } => {
            let session = v1::SessionEnvelope {
                session: client.get_session(&id).await?,
            };
            Ok(Output::text(render(
                json,
                || serde_json::to_string_pretty(&session),
                || session_details(&session.session),
            )))
        }
        SessionsCommand::Terminate { id, user } => {
            let (terminated, message) = match (id, user) {
                (_, Some(user)) => {
                    let n = client.terminate_user(&user).await?;
                    let plural = if n == 1 { "" } else { "s" };
                    (n, format!("terminated {n} session{plural} of user {user}"))
                }
                (Some(id), None) => {
                    client.terminate(&id).await?;
                    (1, format!("terminated session {id}"))
                }
                (None, None) => {
                    return Err(sessiond_client::Error::InvalidArgument(
                        "pass a session id or --user USER".to_owned(),
                    ));
                }
            };
            let answer = v1::Terminated { terminated };
            Ok(Output::text(render(
                json,
                || serde_json::to_string_pretty(&answer),
                || printable(&message) + "\n",
            )))
        }
        SessionsCommand::Explain { id } => {
            let explanation = client.explain(&id).await?;
            Ok(Output::text(render(
                json,
                || serde_json::to_string_pretty(&explanation),
                || explanation_text(&explanation),
            )))
        }
    }
}

/// Fetches pages until there is no `next_cursor`, `limit` sessions are in hand, or
/// `max_pages` pages were read. Returns the sessions with the cursor to continue from, and
/// whether `max_pages` cut the listing short.
async fn collect_pages<F, Fut>(
    limit: Option<u32>,
    max_pages: usize,
    mut cursor: Option<String>,
    mut fetch: F,
) -> Result<(v1::SessionPage, bool), sessiond_client::Error>
where
    F: FnMut(Option<u32>, Option<String>) -> Fut,
    Fut: Future<Output = Result<v1::SessionPage, sessiond_client::Error>>,
{
    let mut sessions: Vec<v1::Session> = Vec::new();
    for _ in 0..max_pages {
        let remaining = limit.map(|n| n.saturating_sub(u32::try_from(sessions.len()).unwrap_or(n)));
        let page = fetch(remaining, cursor.clone()).await?;
        sessions.extend(page.sessions);
        let full = limit.is_some_and(|n| sessions.len() >= n as usize);
        if let Some(n) = limit {
            sessions.truncate(n as usize);
        }
        match page.next_cursor {
            None => {
                let page = v1::SessionPage {
                    sessions,
                    next_cursor: None,
                };
                return Ok((page, false));
            }
            Some(next) if cursor.as_ref() == Some(&next) => {
                return Err(sessiond_client::Error::Protocol {
                    status: 200,
                    message: "the server returned the same cursor twice".to_owned(),
                });
            }
            Some(next) => cursor = Some(next),
        }
        if full {
            let page = v1::SessionPage {
                sessions,
                next_cursor: cursor,
            };
            return Ok((page, false));
        }
    }
    let page = v1::SessionPage {
        sessions,
        next_cursor: cursor,
    };
    Ok((page, true))
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    use clap::{CommandFactory, Parser};

    use super::*;

    /// A stand-in for the binary's own parser.
    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        command: AdminCommand,
    }

    /// The shape `main.rs` uses: admin commands flattened beside `serve`.
    #[derive(Debug, Parser)]
    struct Top {
        #[command(subcommand)]
        command: TopCommand,
    }

    #[derive(Debug, Subcommand)]
    enum TopCommand {
        Serve,
        #[command(flatten)]
        Admin(AdminCommand),
    }

    fn parse(args: &[&str]) -> Result<AdminCommand, clap::Error> {
        let argv = std::iter::once("sessiond").chain(args.iter().copied());
        Cli::try_parse_from(argv).map(|cli| cli.command)
    }

    fn sessions_command(args: &[&str]) -> (Connection, SessionsCommand) {
        match parse(args).unwrap() {
            AdminCommand::Sessions { conn, command } => (conn, command),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
        Top::command().debug_assert();
    }

    #[test]
    fn terminate_takes_an_id_or_a_user_but_not_both() {
        let (_, command) = sessions_command(&["sessions", "terminate", "--user", "alice"]);
        assert!(matches!(
            command,
            SessionsCommand::Terminate { id: None, user: Some(u) } if u == "alice"
        ));
        let (_, command) = sessions_command(&["sessions", "terminate", "s1"]);
        assert!(matches!(
            command,
            SessionsCommand::Terminate { id: Some(id), user: None } if id == "s1"
        ));
        let err = parse(&["sessions", "terminate"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        assert_eq!(err.exit_code(), EXIT_USAGE);
        let err = parse(&["sessions", "terminate", "s1", "--user", "alice"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict);
    }

    #[test]
    fn connection_flags_are_accepted_before_and_after_the_subcommand() {
        let (conn, command) = sessions_command(&[
            "sessions",
            "list",
            "--json",
            "--server",
            "http://x:1",
            "--user",
            "bob",
            "--limit",
            "5",
        ]);
        assert!(conn.json);
        assert_eq!(conn.server.as_deref(), Some("http://x:1"));
        assert!(matches!(
            command,
            SessionsCommand::List { user: Some(u), limit: Some(5), all: false, cursor: None }
                if u == "bob"
        ));
        let (conn, _) = sessions_command(&["sessions", "--json", "--token", "t", "show", "s1"]);
        assert!(conn.json);
        assert_eq!(conn.token.as_deref(), Some("t"));
        let AdminCommand::Stats { conn } = parse(&["stats", "--data-dir", "/d"]).unwrap() else {
            panic!("not stats")
        };
        assert_eq!(conn.data_dir, Some(PathBuf::from("/d")));
        assert!(!conn.json);
    }

    #[test]
    fn list_refuses_a_zero_limit_and_limit_with_all() {
        assert!(parse(&["sessions", "list", "--limit", "0"]).is_err());
        assert!(parse(&["sessions", "list", "--limit", "5", "--all"]).is_err());
        let (_, command) = sessions_command(&["sessions", "list", "--all"]);
        assert!(matches!(command, SessionsCommand::List { all: true, .. }));
    }

    #[test]
    fn admin_commands_parse_when_flattened_like_main_does() {
        let argv = ["sessiond", "sessions", "terminate", "--user", "alice"];
        let top = Top::try_parse_from(argv).unwrap();
        assert!(matches!(
            top.command,
            TopCommand::Admin(AdminCommand::Sessions {
                command: SessionsCommand::Terminate { user: Some(_), .. },
                ..
            })
        ));
        assert!(Top::try_parse_from(["sessiond", "serve"]).is_ok());
        assert!(Top::try_parse_from(["sessiond", "stats", "--json"]).is_ok());
    }

    #[test]
    fn debug_output_hides_the_token() {
        let (conn, _) = sessions_command(&["sessions", "--token", "hunter2", "show", "s1"]);
        assert!(!format!("{conn:?}").contains("hunter2"));
    }

    /// A session as the server would send it, for tests of this module tree.
    pub(super) fn session(id: &str) -> v1::Session {
        v1::Session {
            id: id.to_owned(),
            user: "alice".to_owned(),
            universal_id: None,
            auth_level: 0,
            attributes: BTreeMap::from([("k".to_owned(), "v".to_owned())]),
            client: v1::ClientInfo::default(),
            policy: "default".to_owned(),
            created_at: "2025-01-01T00:00:00Z".to_owned(),
            last_access_at: "2025-01-01T00:10:00Z".to_owned(),
            idle_expires_at: "2025-01-01T00:40:00Z".to_owned(),
            expires_at: "2025-01-01T12:00:00Z".to_owned(),
            version: 3,
        }
    }

    // ----- paging -----

    /// A fake server of three pages of two sessions, cursors `c1` and `c2`.
    fn fake_page(limit: Option<u32>, cursor: Option<&str>) -> v1::SessionPage {
        let (first, next) = match cursor {
            None => (0, Some("c1")),
            Some("c1") => (2, Some("c2")),
            _ => (4, None),
        };
        let size = limit.map_or(2, |n| n.min(2) as usize);
        v1::SessionPage {
            sessions: (first..first + size)
                .map(|i| session(&format!("s{i}")))
                .collect(),
            next_cursor: next.map(str::to_owned),
        }
    }

    async fn collect(
        limit: Option<u32>,
        max_pages: usize,
    ) -> (v1::SessionPage, bool, Vec<(Option<u32>, Option<String>)>) {
        let calls = RefCell::new(Vec::new());
        let (page, capped) = collect_pages(limit, max_pages, None, |limit, cursor| {
            calls.borrow_mut().push((limit, cursor.clone()));
            std::future::ready(Ok(fake_page(limit, cursor.as_deref())))
        })
        .await
        .unwrap();
        (page, capped, calls.into_inner())
    }

    fn ids(page: &v1::SessionPage) -> Vec<&str> {
        page.sessions.iter().map(|s| s.id.as_str()).collect()
    }

    #[tokio::test]
    async fn listing_follows_cursors_to_the_end() {
        let (page, capped, calls) = collect(None, MAX_PAGES).await;
        assert_eq!(ids(&page), ["s0", "s1", "s2", "s3", "s4", "s5"]);
        assert_eq!((page.next_cursor, capped, calls.len()), (None, false, 3));
    }

    #[tokio::test]
    async fn a_limit_stops_early_and_keeps_the_cursor() {
        let (page, capped, calls) = collect(Some(3), MAX_PAGES).await;
        assert_eq!(ids(&page), ["s0", "s1", "s2"]);
        assert_eq!((page.next_cursor.as_deref(), capped), (Some("c2"), false));
        assert_eq!(calls, [(Some(3), None), (Some(1), Some("c1".to_owned()))]);
    }

    #[tokio::test]
    async fn listing_is_bounded_by_max_pages() {
        let (page, capped, _) = collect(None, 2).await;
        assert_eq!(ids(&page).len(), 4);
        assert_eq!((page.next_cursor.as_deref(), capped), (Some("c2"), true));
    }

    #[tokio::test]
    async fn a_repeated_cursor_is_an_error() {
        let result = collect_pages(None, MAX_PAGES, Some("c".to_owned()), |_, _| {
            std::future::ready(Ok(v1::SessionPage {
                sessions: Vec::new(),
                next_cursor: Some("c".to_owned()),
            }))
        })
        .await;
        assert!(matches!(
            result,
            Err(sessiond_client::Error::Protocol { .. })
        ));
    }
}
